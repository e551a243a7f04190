import numpy as np
import torch

from diffrl.core import b2


def test_code_preset_schedule_table():
    # The public code: N = 20 steps, n_start = 14, S = 100 stages.
    counts = {s: b2.trained_step_count(s, 20, 14, 100) for s in (0, 14, 15, 28, 29, 99)}
    assert counts == {0: 14, 14: 14, 15: 15, 28: 15, 29: 16, 99: 20}
    assert b2.trained_interval(0, 20, 14, 100) == (6, 20)
    assert b2.trained_interval(99, 20, 14, 100) == (0, 20)
    counts = [b2.trained_step_count(s, 20, 14, 100) for s in range(100)]
    assert counts == sorted(counts)


def test_stage_of_epoch_stays_at_last_stage():
    assert [b2.stage_of_epoch(e, 2, 3) for e in range(8)] == [0, 0, 1, 1, 2, 2, 2, 2]


def test_select_siblings_hand_computed():
    z = torch.tensor([[1.0, 0.0, -1.0],   # best and worst both pass
                      [0.4, 0.0, -0.4],   # neither passes
                      [2.0, 1.0, 0.6],    # only best (worst is positive)
                      [float("nan"), -2.0, 0.1]])  # NaN never kept
    keep = b2.select_siblings(z, 0.5)
    expected = torch.tensor([[True, False, True], [False, False, False], [True, False, False], [False, True, False]])
    assert torch.equal(keep, expected)


def test_stage_reward_history_zscores_over_recent_stages():
    h = b2.StageRewardHistory(history_stages=1)
    h.add(0, ["p", "p"], np.array([0.0, 2.0]))
    h.add(1, ["p", "p"], np.array([4.0, 6.0]))
    z = h.zscores(["p"], np.array([3.0]))
    pool = [0.0, 2.0, 4.0, 6.0]
    np.testing.assert_allclose(z, (3.0 - np.mean(pool)) / (np.std(pool) + 1e-6))
    h.add(2, ["p"], np.array([6.0]))  # stage 0 falls out of a 1-stage history
    np.testing.assert_allclose(h.zscores(["p"], np.array([6.0])), (6.0 - 16 / 3) / (np.std([4, 6, 6]) + 1e-6))
    restored = b2.StageRewardHistory()
    restored.load_state_dict(h.state_dict())
    assert restored.state_dict() == h.state_dict()
