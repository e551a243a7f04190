"""Trajectories from a real (tiny) diffusers pipeline: shapes, stored log-probs, branching."""
import dataclasses

import pytest
import torch

from diffrl.models.pipeline import load_pipeline
from diffrl.sampling import Policy, ddim_timesteps, encode_prompts, sample_trajectories


@pytest.fixture(scope="module")
def setup(tiny_pipeline_dir):
    pipe = load_pipeline(str(tiny_pipeline_dir))
    s = pipe.scheduler
    policy = Policy(unet=pipe.unet, alphas_cumprod=s.alphas_cumprod, final_alpha_cumprod=s.final_alpha_cumprod,
                    prediction_type=s.config.prediction_type, eta=1.0, guidance_scale=3.0)
    timesteps, prev = ddim_timesteps(s, 5, "cpu")
    embeds = encode_prompts(pipe, ["a red circle", "a blue square"], "cpu")
    uncond = encode_prompts(pipe, [""], "cpu")
    return pipe, policy, timesteps, prev, embeds, uncond


def sample(setup, seed=0, **kwargs):
    pipe, policy, timesteps, prev, embeds, uncond = setup
    calls = []
    traj = sample_trajectories(policy, pipe.vae, embeds, uncond, 3, timesteps, prev, (4, 8, 8),
                               torch.Generator().manual_seed(seed), on_step=lambda i, n: calls.append(n), **kwargs)
    return traj, calls


def test_trajectory_shapes_and_layout(setup):
    traj, calls = sample(setup)
    assert traj.latents.shape == (6, 6, 4, 8, 8)  # P*K samples, T+1 latents
    assert traj.log_probs.shape == (6, 5)
    assert traj.images.shape == (6, 16, 16, 3) and traj.images.dtype.name == "uint8"
    assert traj.prompt_index.tolist() == [0, 0, 0, 1, 1, 1]
    assert calls == [6] * 5  # K images per prompt in one batch: one UNet call per step
    assert torch.isfinite(traj.log_probs).all()


def test_sampling_is_reproducible_for_a_seed(setup):
    a, _ = sample(setup, seed=3)
    b, _ = sample(setup, seed=3)
    c, _ = sample(setup, seed=4)
    assert torch.equal(a.latents, b.latents)
    assert not torch.equal(a.latents, c.latents)


@pytest.mark.parametrize("chunk_size", [1, 4])
def test_chunked_sampling_draws_the_same_trajectories(setup, chunk_size):
    """Each step's noise is drawn for the whole batch before it is split, so chunks change no sample (here: 6
    samples in calls of 1, or of 4 and 2), only how many rows each denoiser call sees (and so the rounding)."""
    whole, _ = sample(setup, seed=5)
    chunked, _ = sample(setup, seed=5, chunk_size=chunk_size)
    torch.testing.assert_close(chunked.latents, whole.latents, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(chunked.log_probs, whole.log_probs, rtol=1e-4, atol=1e-4)
    assert chunked.prompt_index.tolist() == whole.prompt_index.tolist()
    branched, _ = sample(setup, seed=5, chunk_size=chunk_size, branch_step=2, branches=2)
    torch.testing.assert_close(branched.latents, sample(setup, seed=5, branch_step=2, branches=2)[0].latents,
                               rtol=1e-4, atol=1e-4)


def test_recomputed_log_probs_equal_stored_ones_batched_over_timesteps(setup):
    """With unchanged weights the importance ratio is exactly 1 (up to float rounding) at the first inner step."""
    pipe, policy, timesteps, prev, embeds, uncond = setup
    traj, _ = sample(setup)
    n, t = traj.log_probs.shape
    samples = torch.arange(n).repeat_interleave(t)  # every (sample, step) pair in ONE UNet call
    steps = torch.arange(t).repeat(n)
    with torch.no_grad():
        result = policy.step(traj.latents[samples, steps], timesteps[steps], prev[steps],
                             embeds[traj.prompt_index[samples]], uncond.expand(len(samples), -1, -1),
                             prev_sample=traj.latents[samples, steps + 1])
    ratio = torch.exp(result.log_prob - traj.log_probs[samples, steps])
    torch.testing.assert_close(ratio, torch.ones_like(ratio), rtol=0, atol=1e-5)


def test_branching_shares_prefix_and_diverges_after(setup):
    traj, calls = sample(setup, branch_step=2, branches=4)
    assert traj.latents.shape[0] == 2 * 3 * 4
    groups = traj.latents.reshape(6, 4, *traj.latents.shape[1:])  # (P*K, B, T+1, ...)
    prefix = groups[:, :, :3]  # x_T, and the latents after steps 0 and 1
    assert torch.equal(prefix, prefix[:, :1].expand_as(prefix))  # siblings share the prefix exactly
    after = groups[:, :, 3]
    assert not torch.equal(after[:, 0], after[:, 1])  # independent noise after the branch point
    assert torch.equal(traj.log_probs.reshape(6, 4, 5)[:, :, :2], traj.log_probs.reshape(6, 4, 5)[:, :1, :2].expand(6, 4, 2))
    # UNet evaluations: the prefix once per trajectory (6 samples x 2 steps), then 24 x 3 for the branches.
    assert calls == [6, 6, 24, 24, 24]
    assert traj.prompt_index.tolist() == [0] * 12 + [1] * 12


def test_guidance_one_skips_unconditional_pass(setup):
    pipe, policy, timesteps, prev, embeds, uncond = setup
    unguided = dataclasses.replace(policy, guidance_scale=1.0)
    x = torch.randn(2, 4, 8, 8)
    t = timesteps[:1].expand(2)
    with torch.no_grad():
        torch.testing.assert_close(unguided.guided_noise(x, t, embeds, uncond.expand(2, -1, -1)),
                                   pipe.unet(x, t, encoder_hidden_states=embeds).sample)
