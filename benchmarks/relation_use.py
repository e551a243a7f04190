"""Does a ShapesWorld model's denoiser use the relation word at all? Its loss with the true prompt against edited ones.

Renders spatial train prompts, noises them (the same noise for every text), and compares the epsilon MSE of the
UNet given the true prompt with the same images given the relation inverted ("above" -> "below"), the subject and
object swapped, or the empty prompt, per band of timesteps. A model that uses relation words has a lower loss with
the true prompt than with the inverted one; "+0.0000" means the relation word changes nothing. Printed for the
noise estimate (eps) and for the clean latent it implies (x0): at high noise the eps loss scales x0's by about
alpha_bar_t, so only x0 shows whether the prompt decides the layout there. Epsilon and v-prediction models alike. Also prints how far
apart the text encoder puts the relation words themselves (norm of the difference of their token embeddings).

    python benchmarks/relation_use.py                              # the shipped model
    python benchmarks/relation_use.py --model runs/pretrain/nocb_v
"""
from __future__ import annotations

import numpy as np
import torch

from diffrl.core.ddim import x0_and_epsilon
from diffrl.models.pipeline import load_pipeline, resolve_model
from diffrl.pretraining_data import to_tensor
from diffrl.sampling import encode_images
from diffrl.shapes.pretrain import encode_prompts
from diffrl.shapes.world import INVERSE_RELATION, prompt_set, render, spatial
from probe import probe_parser

BANDS = ((900, 1000), (700, 900), (400, 700), (0, 400))


def inverted(spec):
    """The same spatial prompt with the opposite relation ("above" -> "below")."""
    return spatial(spec.objects[0], spec.objects[1], INVERSE_RELATION[spec.relation])


def edited_texts(specs) -> dict[str, list[str]]:
    """The prompts as written, with the relation inverted, with subject and object swapped, and empty."""
    return {"true": [s.text for s in specs],
            "inverted relation": [inverted(s).text for s in specs],
            "swapped subject/object": [spatial(s.objects[1], s.objects[0], s.relation).text for s in specs],
            "empty": [""] * len(specs)}


def implied_estimates(pipe, zt: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0_pred, eps_pred) the denoiser implies at (zt, t) given prompt embeddings, for epsilon and v models alike."""
    abar = pipe.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    return x0_and_epsilon(pipe.unet(zt, t, embeds).sample, zt, abar, pipe.scheduler.config.prediction_type)


def main() -> None:
    parser = probe_parser(__doc__, "shapes:spatial_train", reward=None)
    parser.add_argument("--images", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(resolve_model(args.model))
    rng, gen = np.random.default_rng(args.seed), torch.Generator().manual_seed(args.seed)
    pool = prompt_set("spatial", "train")
    specs = [pool[i] for i in rng.choice(len(pool), args.images)]
    z0 = encode_images(pipe.vae, to_tensor(np.stack([render(s, rng) for s in specs])))
    with torch.no_grad():
        embeds = {k: encode_prompts(pipe.tokenizer, pipe.text_encoder, v) for k, v in edited_texts(specs).items()}
        pairs = [("a red circle above a green square", "a red circle below a green square", 4),
                 ("a red circle to the left of a green square", "a red circle to the right of a green square", 6)]
        for a, b, token in pairs:
            ea, eb = encode_prompts(pipe.tokenizer, pipe.text_encoder, [a, b])
            print(f"text encoder: {a!r} vs {b!r}: relation token differs by {(ea[token] - eb[token]).norm():.2f} "
                  f"(token norm {ea[token].norm():.2f})")
        for lo, hi in BANDS:
            t = torch.randint(lo, hi, (len(specs),), generator=gen)
            eps = torch.randn(z0.shape, generator=gen)
            zt = pipe.scheduler.add_noise(z0, eps, t)
            estimates = {k: implied_estimates(pipe, zt, t, e) for k, e in embeds.items()}  # prompt -> (x0, eps)
            # x0: the layout error, which the eps loss scales by about SNR_t at high noise
            for space, index, truth in (("eps", 1, eps), ("x0", 0, z0)):
                loss = {k: ((est[index] - truth) ** 2).mean(dim=(1, 2, 3)) for k, est in estimates.items()}
                true = loss.pop("true")
                edits = "; ".join(f"{k} {(v - true).mean():+.4f} +- {(v - true).std() / len(v) ** 0.5:.4f}"
                                  for k, v in loss.items())
                print(f"t {lo}-{hi}: {space} loss with the true prompt {true.mean():.4f}; change with {edits}")


if __name__ == "__main__":
    main()
