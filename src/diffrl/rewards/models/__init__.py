"""Model-backed rewards, registered by name; torch/transformers are imported only when one is built.

| name          | class (module)                 | weights (env var to point at a local dir/file)          |
|---------------|--------------------------------|---------------------------------------------------------|
| aesthetic     | AestheticScore (.clip)         | $DIFFRL_AESTHETIC_MODEL, $DIFFRL_AESTHETIC_HEAD         |
| clip-score    | ClipScore (.clip)              | $DIFFRL_CLIP_MODEL (or open_clip:ARCH/PRETRAINED)       |
| pickscore     | PickScore (.clip)              | $DIFFRL_PICKSCORE_MODEL, $DIFFRL_PICKSCORE_PROCESSOR    |
| vqa-binding   | VqaBinding (.vqa)              | $DIFFRL_VQA_MODEL                                       |
| spatial       | SpatialScore (.spatial)        | $DIFFRL_DETECTOR_MODEL                                  |
| imagereward, hps | not supported: raise DiffrlError                                              |

All take $DIFFRL_REWARD_DEVICE and $DIFFRL_REWARD_BATCH_SIZE; see docs/rewards.md.
"""
from __future__ import annotations

import importlib
import importlib.util

from diffrl.errors import DiffrlError
from diffrl.rewards.base import register_reward

_CLASSES = {
    "ClipScore": "clip", "PickScore": "clip", "AestheticScore": "clip", "AestheticMLP": "clip",
    "BlipVQA": "vqa", "VqaBinding": "vqa", "noun_phrases": "vqa",
    "OwlDetector": "spatial", "SpatialScore": "spatial", "parse_spatial": "spatial",
}


def __getattr__(name: str):
    """`from diffrl.rewards.models import ClipScore` without importing every model module up front."""
    if name in _CLASSES:
        return getattr(importlib.import_module(f"{__name__}.{_CLASSES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@register_reward("aesthetic")
def aesthetic():
    from diffrl.rewards.models.clip import AestheticScore

    return AestheticScore()


@register_reward("clip-score")
def clip_score():
    from diffrl.rewards.models.clip import ClipScore

    return ClipScore()


@register_reward("pickscore")
def pickscore():
    from diffrl.rewards.models.clip import PickScore

    return PickScore()


@register_reward("vqa-binding")
def vqa_binding():
    from diffrl.rewards.models.vqa import VqaBinding

    return VqaBinding()


@register_reward("spatial")
def spatial():
    from diffrl.rewards.models.spatial import SpatialScore

    return SpatialScore()


def _unsupported(name: str, module: str, package: str):
    def factory():
        installed = importlib.util.find_spec(module) is not None
        state = "is installed but fetches" if installed else f"needs {package} (not installed), which fetches"
        raise DiffrlError(f"reward {name!r} is not supported: it {state} its weights from the hub at run time; "
                          "wrap a local scorer as module:function, or serve one and use remote:URL")

    return factory


register_reward("imagereward")(_unsupported("imagereward", "ImageReward", "image-reward"))
register_reward("hps")(_unsupported("hps", "hpsv2", "hpsv2"))
