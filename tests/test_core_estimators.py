import math

import numpy as np
import pytest
import torch

from diffrl.core import advantages as adv
from diffrl.core.estimators import ESTIMATORS, compute_advantages
from diffrl.core.losses import calibrated_clip_range, clipped_surrogate, noise_aware_step_weights, policy_gradient


def test_leave_one_out_hand_computed():
    # r = (1, 2, 3): baselines (2+3)/2, (1+3)/2, (1+2)/2
    a = adv.leave_one_out(torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 2.0]]))
    torch.testing.assert_close(a, torch.tensor([[-1.5, 0.0, 1.5], [3.0, -3.0, 0.0]]))


def test_leave_one_out_equals_scaled_centered_reward():
    r = torch.randn(5, 4)
    k = r.shape[1]
    torch.testing.assert_close(adv.leave_one_out(r), k / (k - 1) * (r - r.mean(dim=1, keepdim=True)))


def test_leave_one_out_skips_invalid_samples():
    r = torch.tensor([[1.0, float("nan"), 3.0], [5.0, float("nan"), float("inf")]])
    a = adv.leave_one_out(r)
    torch.testing.assert_close(a, torch.tensor([[-2.0, 0.0, 2.0], [0.0, 0.0, 0.0]]))


def test_leave_one_out_refuses_k1():
    with pytest.raises(ValueError, match="K >= 2"):
        adv.leave_one_out(torch.ones(3, 1))


def test_group_normalized_hand_computed():
    a = adv.group_normalized(torch.tensor([[1.0, 3.0]]), eps=0.0)  # mean 2, population std 1
    torch.testing.assert_close(a, torch.tensor([[-1.0, 1.0]]))


def test_scale_by_std_modes():
    a = torch.tensor([[-1.5, 0.0, 1.5]])
    valid = torch.ones_like(a, dtype=torch.bool)
    assert torch.equal(adv.scale_by_std(a, valid, "none"), a)
    std = math.sqrt((1.5**2 * 2) / 3)
    torch.testing.assert_close(adv.scale_by_std(a, valid, "group", eps=0.0), a / std)
    torch.testing.assert_close(adv.scale_by_std(a, valid, "batch", eps=0.0), a / std)


def test_per_prompt_stat_tracker_uses_batch_stats_until_min_count():
    tracker = adv.PerPromptStatTracker(buffer_size=4, min_count=3)
    a = tracker.update(["x", "x", "y"], np.array([1.0, 3.0, 5.0]))
    mean, std = 3.0, np.std([1.0, 3.0, 5.0])
    np.testing.assert_allclose(a, (np.array([1.0, 3.0, 5.0]) - mean) / (std + 1e-6))
    a = tracker.update(["x"], np.array([5.0]))  # buffer x = 1, 3, 5 -> own statistics
    np.testing.assert_allclose(a, (5.0 - 3.0) / (np.std([1.0, 3.0, 5.0]) + 1e-6))
    state = tracker.state_dict()
    other = adv.PerPromptStatTracker()
    other.load_state_dict(state)
    assert other.state_dict() == state


def test_clipped_surrogate_hand_computed():
    # ratio = e; clip 0.2: positive advantage is capped at 1.2, negative keeps e (pessimistic bound).
    logp, old = torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.0])
    terms = clipped_surrogate(logp, old, torch.tensor([1.0, -1.0]), clip_range=0.2)
    assert math.isclose(terms.loss.item(), (-1.2 + math.e) / 2, rel_tol=1e-6)
    assert terms.clip_fraction.item() == 1.0
    assert math.isclose(terms.approx_kl.item(), 0.5, rel_tol=1e-6)
    assert math.isclose(terms.ratio_mean.item(), math.e, rel_tol=1e-6)


def test_clipped_surrogate_ratio_extremes_hand_computed():
    # log-ratios 0.5, -0.25, 0: only the first two leave [0.9, 1.1].
    terms = clipped_surrogate(torch.tensor([0.5, -0.25, 0.0]), torch.zeros(3), torch.ones(3), clip_range=0.1)
    assert math.isclose(terms.ratio_min.item(), math.exp(-0.25), rel_tol=1e-6)
    assert math.isclose(terms.ratio_max.item(), math.exp(0.5), rel_tol=1e-6)
    assert math.isclose(terms.clip_fraction.item(), 2 / 3, rel_tol=1e-6)
    # loss: max(-rho, -clip(rho)) per pair = -1.1, -exp(-0.25), -1 -> mean
    assert math.isclose(terms.loss.item(), (-1.1 - math.exp(-0.25) - 1.0) / 3, rel_tol=1e-6)


def test_clipped_surrogate_gradient_at_ratio_one_is_policy_gradient():
    logp = torch.tensor([0.3, -0.2], requires_grad=True)
    a = torch.tensor([2.0, -1.0])
    clipped_surrogate(logp, logp.detach(), a, 1e-4).loss.backward()
    g1 = logp.grad.clone()
    logp.grad = None
    policy_gradient(logp, logp.detach(), a).loss.backward()
    torch.testing.assert_close(g1, logp.grad)
    torch.testing.assert_close(g1, -a / 2)


def test_compute_advantages_per_estimator():
    r = np.array([1.0, 2.0, 3.0, 10.0, 10.0, 10.0])
    prompts = ["p"] * 3 + ["q"] * 3
    np.testing.assert_allclose(compute_advantages(ESTIMATORS["reinforce"], r, prompts, 3, clip=100), r)
    np.testing.assert_allclose(compute_advantages(ESTIMATORS["loop"], r, prompts, 3), [-1.5, 0, 1.5, 0, 0, 0])
    np.testing.assert_allclose(compute_advantages(ESTIMATORS["reinforce-loo"], r, prompts, 3), [-1.5, 0, 1.5, 0, 0, 0])
    grpo = compute_advantages(ESTIMATORS["grpo"], r, prompts, 3)
    np.testing.assert_allclose(grpo[:3], np.array([-1, 0, 1]) / np.sqrt(2 / 3), rtol=1e-5)
    tracker = adv.PerPromptStatTracker(16, 16)
    ppo = compute_advantages(ESTIMATORS["ppo"], r, prompts, 3, tracker=tracker)
    np.testing.assert_allclose(ppo, np.clip((r - r.mean()) / (r.std() + 1e-6), -5, 5))
    assert np.abs(compute_advantages(ESTIMATORS["reinforce"], r * 100, prompts, 3, clip=5.0)).max() == 5.0


def test_calibrated_clip_range_hand_computed():
    assert math.isclose(calibrated_clip_range(256, "mean"), 0.015 / 16)
    assert math.isclose(calibrated_clip_range(256, "sum"), 0.015 * 16)
    assert math.isclose(calibrated_clip_range(4 * 64 * 64, "mean", kappa=0.0128), 1e-4)  # DDPO's range on SD
    with pytest.raises(ValueError):
        calibrated_clip_range(256, "max")


def test_calibrated_clip_range_matches_the_log_ratio_of_a_kappa_sized_mean_shift():
    # Move every dimension's mean by kappa * sigma: the log-ratio's spread over draws is ~ the calibrated range.
    torch.manual_seed(0)
    d, kappa, sigma = 1024, 0.015, 0.5
    eps = torch.randn(4000, d)
    x = sigma * eps  # drawn around mean 0
    shifted = kappa * sigma
    log_ratio = (-(x - shifted) ** 2 + x**2) / (2 * sigma**2)  # per dimension
    for reduce, reduced in (("mean", log_ratio.mean(1)), ("sum", log_ratio.sum(1))):
        assert math.isclose(float(reduced.std()), calibrated_clip_range(d, reduce, kappa), rel_tol=0.05)


def test_noise_aware_step_weights_hand_computed():
    stds, coefficients = torch.tensor([0.8, 0.6, 0.4, 0.04]), torch.tensor([0.1, 0.3, 0.4, 0.9])
    steps = torch.tensor([0, 1, 2])  # the last step is not trained (min_noise_std)
    # sigma / c = 8, 2, 1 on the trained steps, mean 11/3
    torch.testing.assert_close(noise_aware_step_weights(stds, coefficients, steps, 1.0),
                               torch.tensor([24 / 11, 6 / 11, 3 / 11, 0.0]))
    # power 0.5: sqrt(8), sqrt(2), 1 over their mean
    root = torch.tensor([8.0, 2.0, 1.0]).sqrt()
    torch.testing.assert_close(noise_aware_step_weights(stds, coefficients, steps, 0.5)[:3], root / root.mean())
    torch.testing.assert_close(noise_aware_step_weights(stds, coefficients, steps, 0.0), torch.tensor([1.0, 1, 1, 0]))
    one = noise_aware_step_weights(stds, coefficients, torch.tensor([1]), 1.0)  # one trained step: weight 1
    torch.testing.assert_close(one, torch.tensor([0.0, 1, 0, 0]))
