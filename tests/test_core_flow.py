import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from diffrl.core.flow import flow_noise_std, flow_noised_with_target, flow_sde_step_with_log_prob, flow_x0_coefficient


def make_scheduler():
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)  # SD3's scheduler config
    scheduler.set_timesteps(10)
    return scheduler


def test_hand_computed_step():
    # sigma = 0.5, sigma_next = 0.3, a = 0.7, x = 2, v = -1, noise = 0.5, per the module docstring:
    s, s_next, a, x, v, z = 0.5, 0.3, 0.7, 2.0, -1.0, 0.5
    dt = s_next - s
    sigma_t = a * math.sqrt(s / (1 - s))  # 0.7
    mean = x * (1 + sigma_t**2 / (2 * s) * dt) + v * (1 + sigma_t**2 * (1 - s) / (2 * s)) * dt
    std = sigma_t * math.sqrt(-dt)
    x_next = mean + std * z
    log_prob = -0.5 * z**2 - math.log(std) - 0.5 * math.log(2 * math.pi)

    out = flow_sde_step_with_log_prob(torch.full((1, 1, 1, 1), v), torch.tensor([s]), torch.tensor([s_next]),
                                      torch.full((1, 1, 1, 1), x), a, noise=torch.full((1, 1, 1, 1), z))
    # by hand: sigma_t^2 = 0.49, so mean = 2 (1 - 0.49 * 0.2) + (-1)(1 + 0.49 * 0.5)(-0.2) = 1.804 + 0.249
    assert math.isclose(mean, 2.053, rel_tol=1e-12) and math.isclose(std, 0.7 * math.sqrt(0.2), rel_tol=1e-12)
    assert math.isclose(out.mean.item(), mean, rel_tol=1e-6)
    assert math.isclose(out.std.item(), std, rel_tol=1e-6)
    assert math.isclose(out.prev_sample.item(), x_next, rel_tol=1e-6)
    assert math.isclose(out.log_prob.item(), log_prob, rel_tol=1e-5)
    assert math.isclose(flow_noise_std(torch.tensor(s), torch.tensor(s_next), a).item(), std, rel_tol=1e-6)


def test_first_step_at_sigma_one_uses_next_sigma_in_the_denominator():
    # Flow-GRPO: sqrt(sigma / (1 - sigma_max)) with sigma_max = sigmas[1], which is this step's sigma_next.
    scheduler = make_scheduler()
    sigma, sigma_next = scheduler.sigmas[0], scheduler.sigmas[1]
    assert sigma == 1
    expected = 0.7 * math.sqrt(1 / (1 - sigma_next.item())) * math.sqrt(1 - sigma_next.item())
    std = flow_noise_std(sigma.reshape(1), sigma_next.reshape(1), 0.7)
    assert torch.isfinite(std).all() and math.isclose(std.item(), expected, rel_tol=1e-5)


def test_noise_level_zero_is_diffusers_euler_step_over_the_whole_schedule():
    scheduler = make_scheduler()
    torch.manual_seed(0)
    sample = torch.randn(2, 4, 8, 8)
    assert len(scheduler.sigmas) == len(scheduler.timesteps) + 1 and scheduler.sigmas[-1] == 0
    for i, t in enumerate(scheduler.timesteps):
        velocity = torch.randn(2, 4, 8, 8)
        expected = scheduler.step(velocity, t, sample).prev_sample
        sigma, sigma_next = scheduler.sigmas[i].expand(2), scheduler.sigmas[i + 1].expand(2)
        ours = flow_sde_step_with_log_prob(velocity, sigma, sigma_next, sample, 0.0, noise=torch.randn_like(sample))
        torch.testing.assert_close(ours.prev_sample, expected, rtol=1e-6, atol=1e-6)
        assert (ours.std == 0).all() and ours.log_prob.isnan().all()  # a point mass has no density
        sample = expected


def test_noise_level_zero_refuses_to_score_a_given_sample():
    x = torch.randn(1, 4, 2, 2)
    with pytest.raises(ValueError, match="noise_level"):
        flow_sde_step_with_log_prob(x, torch.tensor([0.5]), torch.tensor([0.3]), x, 0.0, prev_sample=x)
    with pytest.raises(ValueError, match="noise_level"):
        flow_sde_step_with_log_prob(x, torch.tensor([0.5]), torch.tensor([0.3]), x, -0.1)


def test_small_noise_level_approaches_the_euler_step():
    x, v = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    s, s_next = torch.tensor([0.6]), torch.tensor([0.4])
    euler = x + (s_next - s).reshape(-1, 1, 1, 1) * v
    out = flow_sde_step_with_log_prob(v, s, s_next, x, 1e-4)
    torch.testing.assert_close(out.prev_sample, euler, rtol=0, atol=1e-3)


def test_per_sample_sigmas_equal_separate_calls():
    scheduler = make_scheduler()
    sample, velocity, target = torch.randn(3, 3, 4, 4, 4).unbind(0)
    index = torch.tensor([0, 4, 9])  # the first (sigma = 1), a middle and the last (sigma_next = 0) step
    sigma, sigma_next = scheduler.sigmas[index], scheduler.sigmas[index + 1]
    both = flow_sde_step_with_log_prob(velocity, sigma, sigma_next, sample, 0.7, prev_sample=target)
    for i in range(3):
        one = flow_sde_step_with_log_prob(velocity[i:i + 1], sigma[i:i + 1], sigma_next[i:i + 1], sample[i:i + 1],
                                          0.7, prev_sample=target[i:i + 1])
        torch.testing.assert_close(both.log_prob[i:i + 1], one.log_prob)
        torch.testing.assert_close(both.mean[i:i + 1], one.mean)
        torch.testing.assert_close(both.std[i:i + 1], one.std)
    assert both.std.shape == (3, 1, 1, 1)


@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_log_prob_equals_torch_normal(reduce):
    sample, velocity = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    sigma, sigma_next = torch.tensor([0.9, 0.3]), torch.tensor([0.8, 0.1])
    out = flow_sde_step_with_log_prob(velocity, sigma, sigma_next, sample, 0.7, reduce=reduce,
                                      generator=torch.Generator().manual_seed(0))
    density = torch.distributions.Normal(out.mean, out.std).log_prob(out.prev_sample)
    expected = density.mean(dim=(1, 2, 3)) if reduce == "mean" else density.sum(dim=(1, 2, 3))
    torch.testing.assert_close(out.log_prob, expected)
    torch.testing.assert_close(out.std.flatten(), flow_noise_std(sigma, sigma_next, 0.7))


def test_given_prev_sample_is_scored_not_drawn():
    sample, velocity, target = torch.randn(3, 2, 4, 2, 2).unbind(0)
    sigma, sigma_next = torch.tensor([0.7, 0.5]), torch.tensor([0.6, 0.3])
    a = flow_sde_step_with_log_prob(velocity, sigma, sigma_next, sample, 0.7, prev_sample=target,
                                    generator=torch.Generator().manual_seed(1))
    b = flow_sde_step_with_log_prob(velocity, sigma, sigma_next, sample, 0.7, prev_sample=target,
                                    generator=torch.Generator().manual_seed(2))
    assert torch.equal(a.prev_sample, target) and torch.equal(a.log_prob, b.log_prob)
    at_mean = flow_sde_step_with_log_prob(velocity, sigma, sigma_next, sample, 0.7, prev_sample=a.mean)
    assert (at_mean.log_prob > a.log_prob).all()


def test_drawn_sample_uses_generator_or_noise():
    sample, velocity, noise = torch.randn(3, 2, 4, 2, 2).unbind(0)
    sigma, sigma_next = torch.tensor([0.7, 0.5]), torch.tensor([0.6, 0.3])
    step = lambda **kw: flow_sde_step_with_log_prob(velocity, sigma, sigma_next, sample, 0.7, **kw)  # noqa: E731
    torch.testing.assert_close(step(generator=torch.Generator().manual_seed(3)).prev_sample,
                               step(generator=torch.Generator().manual_seed(3)).prev_sample)
    given = step(noise=noise)
    torch.testing.assert_close(given.prev_sample, given.mean + given.std * noise)


def test_gradients_flow_only_through_the_mean():
    sample = torch.randn(2, 4, 2, 2)
    velocity = torch.randn(2, 4, 2, 2, requires_grad=True)
    sigma, sigma_next = torch.tensor([0.8, 0.4]), torch.tensor([0.6, 0.2])
    out = flow_sde_step_with_log_prob(velocity, sigma, sigma_next, sample, 0.7,
                                      generator=torch.Generator().manual_seed(0))
    (grad,) = torch.autograd.grad(out.log_prob.sum(), velocity)
    # d/dv of mean over dims of -(x - mu)^2 / (2 std^2), with mu linear in v (coefficient c) and x held fixed
    dt = (sigma_next - sigma).reshape(-1, 1, 1, 1)
    sigma_t2 = 0.49 * (sigma / (1 - sigma)).reshape(-1, 1, 1, 1)
    c = (1 + sigma_t2 * (1 - sigma.reshape(-1, 1, 1, 1)) / (2 * sigma.reshape(-1, 1, 1, 1))) * dt
    expected = (out.prev_sample.detach() - out.mean.detach()) / out.std**2 * c / out.mean[0].numel()
    torch.testing.assert_close(grad, expected)
    assert not out.std.requires_grad


def test_float64_stays_float64_and_bf16_is_upcast():
    x = torch.randn(1, 4, 2, 2, dtype=torch.float64)
    assert flow_sde_step_with_log_prob(x, 0.5, 0.3, x, 0.7).prev_sample.dtype == torch.float64
    out = flow_sde_step_with_log_prob(x.bfloat16(), 0.5, 0.3, x.bfloat16(), 0.7)
    assert out.mean.dtype == torch.float32 and out.log_prob.dtype == torch.float32


def test_tiny_sd3_pipeline_runs_and_round_trips(tmp_path):
    import numpy as np
    from diffusers import StableDiffusion3Pipeline

    from diffrl.models.tiny_sd3 import tiny_sd3_pipeline

    pipe = tiny_sd3_pipeline()
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(prompt="a red circle", num_inference_steps=2, height=32, width=32, output_type="np")
    image = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()
    assert pipe.vae.config.shift_factor == 0.0609 and pipe.scheduler.config.shift == 3.0

    pipe.save_pretrained(tmp_path)
    loaded = StableDiffusion3Pipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    for name in ("tokenizer", "tokenizer_2", "tokenizer_3"):
        assert getattr(loaded, name)("a red circle").input_ids == getattr(pipe, name)("a red circle").input_ids
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        saved, reloaded = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert saved.keys() == reloaded.keys() and all(torch.equal(saved[k], reloaded[k]) for k in saved), name
    # The same weights, but reloaded tensors may take other CPU kernel paths: equal to float32 rounding, not bitwise.
    np.testing.assert_allclose(loaded(**kwargs, generator=torch.Generator().manual_seed(0)).images, image,
                               rtol=0, atol=1e-5)


def test_x0_coefficient_is_the_step_means_derivative_in_the_predicted_image():
    s, s_next, a = 0.5, 0.3, 0.7
    x = torch.full((1, 1, 1, 1), 2.0)
    x0 = torch.full((1, 1, 1, 1), 0.4, requires_grad=True)
    v = (x - x0) / s  # the velocity that predicts x0 = x - sigma v
    mean = flow_sde_step_with_log_prob(v, torch.tensor([s]), torch.tensor([s_next]), x, a,
                                       noise=torch.zeros(1, 1, 1, 1)).mean
    (slope,) = torch.autograd.grad(mean.sum(), x0)
    coefficient = flow_x0_coefficient(torch.tensor(s), torch.tensor(s_next), a).item()
    # by hand: (-dt / sigma) (1 + sigma_t^2 (1 - sigma) / (2 sigma)) = 0.4 * (1 + 0.49 * 0.5) = 0.498
    assert math.isclose(coefficient, 0.498, rel_tol=1e-6)
    assert math.isclose(slope.item(), coefficient, rel_tol=1e-5)


def test_noised_sample_and_velocity_target_by_hand():
    # sigma = 0.25: x_t = 0.75 x0 + 0.25 eps = 1.75; v = eps - x0 = -1; at sigma 1 pure noise, at 0 the data
    x0, eps = torch.tensor([2.0, 2.0, 2.0]), torch.tensor([1.0, 1.0, 1.0])
    noised, v = flow_noised_with_target(x0, eps, torch.tensor([0.25, 1.0, 0.0]))
    torch.testing.assert_close(noised, torch.tensor([1.75, 1.0, 2.0]))
    torch.testing.assert_close(v, torch.tensor([-1.0, -1.0, -1.0]))
