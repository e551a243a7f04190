"""diffrl: RL fine-tuning of text-to-image diffusion models (LOOP, PPO/DDPO, REINFORCE, GRPO, B2-DiffuRL).

    from diffrl import load_config, train
    run_dir = train(load_config(overrides={"train.algo": "ppo", "run.epochs": 5}))
"""
from diffrl.config import Config, load_config
from diffrl.errors import DiffrlError

__version__ = "0.1.0"
__all__ = ["Config", "DiffrlError", "load_config", "train"]


def train(config: Config, resume: bool = False):
    """Run RL fine-tuning (see `diffrl.trainer.train`); imported lazily to keep `import diffrl` light."""
    from diffrl.trainer import train as _train

    return _train(config, resume=resume)
