import math

import pytest
import torch
from diffusers import DDIMScheduler

from diffrl.core.ddim import (ddim_step_with_log_prob, gaussian_kl, gaussian_log_prob, noised_with_target,
                              schedule_noise_stds, schedule_x0_coefficients, trained_steps, x0_coefficient)


def make_scheduler():
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    scheduler.set_timesteps(10)
    return scheduler


def test_step_matches_diffusers_ddim_for_the_same_noise():
    scheduler = make_scheduler()
    torch.manual_seed(0)
    sample, eps, noise = torch.randn(3, 2, 4, 4, 4).unbind(0)[0], torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    sample = torch.randn(2, 4, 4, 4)
    for i, t in enumerate(scheduler.timesteps):
        for eta in (0.5, 1.0):
            expected = scheduler.step(eps, t, sample, eta=eta, variance_noise=noise).prev_sample
            prev_t = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
            ours = ddim_step_with_log_prob(eps, t.expand(2), prev_t.expand(2), sample, scheduler.alphas_cumprod,
                                           scheduler.final_alpha_cumprod, eta)
            torch.testing.assert_close(ours.mean + ours.std * noise, expected, rtol=1e-5, atol=1e-6)


def test_per_sample_timesteps_equal_separate_calls():
    scheduler = make_scheduler()
    sample, eps = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    t = torch.tensor([901, 101])
    prev = t - 100
    both = ddim_step_with_log_prob(eps, t, prev, sample, scheduler.alphas_cumprod, scheduler.final_alpha_cumprod, 1.0,
                                   prev_sample=sample * 0.9)
    for i in range(2):
        one = ddim_step_with_log_prob(eps[i:i + 1], t[i:i + 1], prev[i:i + 1], sample[i:i + 1],
                                      scheduler.alphas_cumprod, scheduler.final_alpha_cumprod, 1.0,
                                      prev_sample=sample[i:i + 1] * 0.9)
        torch.testing.assert_close(both.log_prob[i:i + 1], one.log_prob)


def test_last_step_uses_final_alpha_cumprod():
    scheduler = make_scheduler()
    sample, eps = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    out = ddim_step_with_log_prob(eps, torch.tensor([1]), torch.tensor([-99]), sample, scheduler.alphas_cumprod,
                                  scheduler.final_alpha_cumprod, 1.0)
    expected = scheduler.step(eps, torch.tensor(1), sample, eta=1.0, variance_noise=torch.zeros_like(sample))
    torch.testing.assert_close(out.mean, expected.prev_sample)


def test_gaussian_log_prob_hand_computed():
    # N(x=1; mu=0, sigma=2) per dim: -1/8 - log 2 - log sqrt(2 pi)
    x, mean, std = torch.ones(1, 3), torch.zeros(1, 3), torch.full((1, 1), 2.0)
    per_dim = -1 / 8 - math.log(2) - 0.5 * math.log(2 * math.pi)
    assert math.isclose(gaussian_log_prob(x, mean, std, "mean").item(), per_dim, rel_tol=1e-6)
    assert math.isclose(gaussian_log_prob(x, mean, std, "sum").item(), 3 * per_dim, rel_tol=1e-6)


def test_gaussian_kl_hand_computed_and_matches_torch():
    # means 1 and 0 on one dim, 3 and 3 on the other, sigma 2: per-dim KL 1/8 and 0
    mean, ref, std = torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 3.0]]), torch.full((1, 1), 2.0)
    assert math.isclose(gaussian_kl(mean, ref, std, "sum").item(), 1 / 8, rel_tol=1e-6)
    assert math.isclose(gaussian_kl(mean, ref, std, "mean").item(), 1 / 16, rel_tol=1e-6)
    p, q = torch.distributions.Normal(mean, 2.0), torch.distributions.Normal(ref, 2.0)
    torch.testing.assert_close(gaussian_kl(mean, ref, std, "sum"), torch.distributions.kl_divergence(p, q).sum(-1))


def test_log_prob_of_mean_is_highest():
    scheduler = make_scheduler()
    sample, eps = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    t, prev = torch.tensor([501]), torch.tensor([401])
    step = ddim_step_with_log_prob(eps, t, prev, sample, scheduler.alphas_cumprod, scheduler.final_alpha_cumprod, 1.0)
    at_mean = ddim_step_with_log_prob(eps, t, prev, sample, scheduler.alphas_cumprod, scheduler.final_alpha_cumprod,
                                      1.0, prev_sample=step.mean)
    assert at_mean.log_prob.item() > step.log_prob.item()


def test_eta_zero_is_diffusers_deterministic_ddim_over_the_whole_schedule():
    scheduler = make_scheduler()
    torch.manual_seed(0)
    sample = torch.randn(2, 4, 4, 4)
    for t in scheduler.timesteps:
        eps = torch.randn(2, 4, 4, 4)
        expected = scheduler.step(eps, t, sample, eta=0.0).prev_sample
        prev_t = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
        ours = ddim_step_with_log_prob(eps, t.expand(2), prev_t.expand(2), sample, scheduler.alphas_cumprod,
                                       scheduler.final_alpha_cumprod, 0.0, noise=torch.randn_like(sample))
        torch.testing.assert_close(ours.prev_sample, expected, rtol=1e-6, atol=1e-6)
        assert (ours.std == 0).all() and ours.log_prob.isnan().all()  # a point mass has no density
        sample = expected


def test_eta_zero_refuses_to_score_and_negative_eta_is_refused():
    scheduler = make_scheduler()
    x, t, prev = torch.randn(1, 4, 2, 2), torch.tensor([501]), torch.tensor([401])
    table = (scheduler.alphas_cumprod, scheduler.final_alpha_cumprod)
    with pytest.raises(ValueError, match="eta = 0"):
        ddim_step_with_log_prob(x, t, prev, x, *table, 0.0, prev_sample=x)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        ddim_step_with_log_prob(x, t, prev, x, *table, -1.0)


def test_v_prediction_converts_to_epsilon():
    scheduler = make_scheduler()
    sample, eps = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    abar = scheduler.alphas_cumprod[501]
    x0 = (sample - (1 - abar).sqrt() * eps) / abar.sqrt()
    v = abar.sqrt() * eps - (1 - abar).sqrt() * x0
    t, prev = torch.tensor([501]), torch.tensor([401])
    a = ddim_step_with_log_prob(eps, t, prev, sample, scheduler.alphas_cumprod, scheduler.final_alpha_cumprod, 1.0)
    b = ddim_step_with_log_prob(v, t, prev, sample, scheduler.alphas_cumprod, scheduler.final_alpha_cumprod, 1.0,
                                prediction_type="v_prediction")
    torch.testing.assert_close(a.mean, b.mean, rtol=1e-4, atol=1e-5)


def test_zero_terminal_snr_v_prediction_matches_diffusers_from_the_first_step():
    """abar_T = 0 (rescale_betas_zero_snr): x0 = -v there; the step stays finite and equals diffusers' DDIM."""
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=False, rescale_betas_zero_snr=True, timestep_spacing="trailing",
                              prediction_type="v_prediction")
    scheduler.set_timesteps(10)
    assert scheduler.timesteps[0] == 999 and scheduler.alphas_cumprod[999] == 0
    torch.manual_seed(0)
    sample, v, noise = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    for t in scheduler.timesteps[:3]:
        # eta 0.5: at eta 1 and abar_T = 0 diffusers takes the square root of a rounding-negative 0 (NaN); we clamp.
        for eta in (0.5, 1.0):
            ours = ddim_step_with_log_prob(v, t.expand(2), (t - 100).expand(2), sample, scheduler.alphas_cumprod,
                                           scheduler.final_alpha_cumprod, eta, noise=noise,
                                           prediction_type="v_prediction")
            assert torch.isfinite(ours.prev_sample).all() and torch.isfinite(ours.log_prob).all()
            if eta == 0.5:
                expected = scheduler.step(v, t, sample, eta=eta, variance_noise=noise).prev_sample
                torch.testing.assert_close(ours.prev_sample, expected, rtol=1e-5, atol=1e-5)
    first = ddim_step_with_log_prob(v, torch.tensor([999, 999]), torch.tensor([899, 899]), sample,
                                    scheduler.alphas_cumprod, scheduler.final_alpha_cumprod, 1.0, noise=noise,
                                    prediction_type="v_prediction")
    torch.testing.assert_close(first.mean, scheduler.alphas_cumprod[899].sqrt() * -v)  # DDPM posterior mean at abar_T=0


def test_schedule_noise_stds_match_diffusers_variance():
    scheduler = make_scheduler()
    timesteps = scheduler.timesteps
    prev = timesteps - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    stds = schedule_noise_stds(timesteps, prev, scheduler.alphas_cumprod, scheduler.final_alpha_cumprod, eta=1.0)
    expected = torch.stack([scheduler._get_variance(t, p).sqrt() for t, p in zip(timesteps, prev)])
    torch.testing.assert_close(stds, expected.float(), rtol=1e-5, atol=1e-7)
    # SD's leading spacing: the last two steps (t=101 -> 1, 1 -> final) are nearly deterministic
    assert stds[-2] < 0.05 and stds[-1] < 0.05 and stds[:-2].min() > 0.25


def test_trained_steps_hand_computed():
    stds = torch.tensor([0.8, 0.6, 0.4, 0.04, 0.02])
    assert trained_steps(0, 5, stds, 0.05).tolist() == [0, 1, 2]
    assert trained_steps(2, 5, stds, 0.05).tolist() == [2]  # a B2 interval: the last 3 steps
    assert trained_steps(0, 5, stds, 0.0).tolist() == [0, 1, 2, 3, 4]
    assert trained_steps(3, 5, stds, 0.05).tolist() == []


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_x0_coefficient_is_the_step_means_derivative_in_the_predicted_image(eta):
    abar_t, abar_prev = torch.tensor([0.3]), torch.tensor([0.6])
    x_t = torch.full((1, 1, 1, 1), 0.7)
    x0 = torch.full((1, 1, 1, 1), -0.4, requires_grad=True)
    eps = (x_t - abar_t.sqrt() * x0) / (1 - abar_t).sqrt()  # the model output that predicts x0
    alphas = torch.tensor([0.9, 0.6, 0.3])
    mean = ddim_step_with_log_prob(eps, torch.tensor([2]), torch.tensor([1]), x_t, alphas, 1.0, eta,
                                   noise=torch.zeros(1, 1, 1, 1)).mean
    (slope,) = torch.autograd.grad(mean.sum(), x0)
    coefficient = x0_coefficient(abar_t, abar_prev, eta)
    assert math.isclose(slope.item(), coefficient.item(), rel_tol=1e-5)
    if eta == 1.0:  # DDPM's posterior coefficient (abar_prev - abar_t) / (sqrt(abar_prev) (1 - abar_t))
        assert math.isclose(coefficient.item(), 0.3 / (math.sqrt(0.6) * 0.7), rel_tol=1e-5)


def test_schedule_x0_coefficients_are_small_at_the_first_steps():
    scheduler = make_scheduler()
    timesteps = scheduler.timesteps
    prev = timesteps - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    coefficients = schedule_x0_coefficients(timesteps, prev, scheduler.alphas_cumprod, scheduler.final_alpha_cumprod,
                                            eta=1.0)
    abar_t, abar_prev = scheduler.alphas_cumprod[timesteps], scheduler.alphas_cumprod[prev.clamp(min=0)]
    torch.testing.assert_close(coefficients[:-1], ((abar_prev - abar_t) / (abar_prev.sqrt() * (1 - abar_t)))[:-1])
    assert coefficients[0] < 0.15 and (coefficients[:-1].diff() > 0).all()  # the mean barely follows x0 at high noise


def test_noised_sample_and_target_by_hand():
    # abar = 0.25: z_t = 0.5 z0 + sqrt(0.75) eps; v = 0.5 eps - sqrt(0.75) z0; eps's target is eps itself
    z0, eps, abar = torch.tensor([[2.0]]), torch.tensor([[1.0]]), torch.tensor([[0.25]])
    noised, v = noised_with_target(z0, eps, abar, "v_prediction")
    torch.testing.assert_close(noised, torch.tensor([[1.0 + math.sqrt(0.75)]]))
    torch.testing.assert_close(v, torch.tensor([[0.5 - 2 * math.sqrt(0.75)]]))
    noised_eps, target = noised_with_target(z0, eps, abar, "epsilon")
    assert torch.equal(noised_eps, noised) and torch.equal(target, eps)
    with pytest.raises(ValueError, match="prediction_type"):
        noised_with_target(z0, eps, abar, "sample")
