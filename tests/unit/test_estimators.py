"""Returns, reward-to-go, baselines and advantages, against tensors worked out by hand."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from pgrun.estimators import (
    BASELINES,
    WEIGHTS,
    advantages,
    loo_time_baseline,
    reward_to_go,
    time_baseline,
    total_return,
)


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# The notes' single trajectory.
NOTES_REW = t([[1.0, 0.0, 3.0, 2.0]])

# Three episodes of lengths 1, 2 and 4, padded to T = 4 (padding is zero reward, zero mask).
#   episode 0: r = [3]            R = 3   rtg = [3]
#   episode 1: r = [2, 2]         R = 4   rtg = [4, 2]
#   episode 2: r = [1, 0, 3, 2]   R = 6   rtg = [6, 5, 5, 2]
REW3 = t([[3, 0, 0, 0], [2, 2, 0, 0], [1, 0, 3, 2]])
MASK3 = t([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
RTG3 = t([[3, 0, 0, 0], [4, 2, 0, 0], [6, 5, 5, 2]])
RET3 = t([3, 4, 6])

# time baseline of the reward-to-go, over the episodes still running at t:
#   t=0: (3+4+6)/3 = 13/3   t=1: (2+5)/2 = 7/2   t=2: 5/1   t=3: 2/1
B_RTG3 = t([13 / 3, 7 / 2, 5, 2])
# time baseline of the whole return R_i:
#   t=0: (3+4+6)/3 = 13/3   t=1: (4+6)/2 = 5   t=2: 6   t=3: 6
B_TOTAL3 = t([13 / 3, 5, 6, 6])

# Every (weights, baseline) pair on the 3-episode batch, gamma = 1, by hand.
EXPECTED_ADV3 = {
    ("total", "none"): t([[3, 0, 0, 0], [4, 4, 0, 0], [6, 6, 6, 6]]),
    ("total", "time"): t(
        [
            [3 - 13 / 3, 0, 0, 0],
            [4 - 13 / 3, 4 - 5, 0, 0],
            [6 - 13 / 3, 6 - 5, 6 - 6, 6 - 6],
        ]
    ),
    # leave-one-out: mean over the OTHER running episodes (0 when none is left)
    ("total", "time_loo"): t(
        [
            [3 - (4 + 6) / 2, 0, 0, 0],
            [4 - (3 + 6) / 2, 4 - 6, 0, 0],
            [6 - (3 + 4) / 2, 6 - 4, 6 - 0, 6 - 0],
        ]
    ),
    ("rtg", "none"): RTG3,
    ("rtg", "time"): t(
        [
            [3 - 13 / 3, 0, 0, 0],
            [4 - 13 / 3, 2 - 7 / 2, 0, 0],
            [6 - 13 / 3, 5 - 7 / 2, 5 - 5, 2 - 2],
        ]
    ),
    ("rtg", "time_loo"): t(
        [
            [3 - (4 + 6) / 2, 0, 0, 0],
            [4 - (3 + 6) / 2, 2 - 5, 0, 0],
            [6 - (3 + 4) / 2, 5 - 2, 5 - 0, 2 - 0],
        ]
    ),
}


# --- reward-to-go and returns ------------------------------------------------------------------


def test_reward_to_go_matches_the_notes_example():
    assert_close(reward_to_go(NOTES_REW), t([[6, 5, 5, 2]]))


def test_discounted_reward_to_go_by_hand():
    # gamma = 0.5, r = [1, 0, 3, 2]:
    #   t=3: 2
    #   t=2: 3 + 0.5*2            = 4
    #   t=1: 0 + 0.5*3 + 0.25*2   = 2
    #   t=0: 1 + 0 + 0.25*3 + 0.125*2 = 2
    assert_close(reward_to_go(NOTES_REW, gamma=0.5), t([[2, 2, 4, 2]]))


@pytest.mark.parametrize("gamma", [1.0, 0.9, 0.5])
def test_reward_to_go_satisfies_the_backward_recursion(gamma):
    # rtg_t = r_t + gamma * rtg_{t+1}, rtg_{T-1} = r_{T-1}, on a random batch.
    g = torch.Generator().manual_seed(0)
    rew = torch.randn(5, 7, generator=g)
    rtg = reward_to_go(rew, gamma)
    assert rtg.shape == rew.shape
    assert_close(rtg[:, -1], rew[:, -1])
    assert_close(rtg[:, :-1], rew[:, :-1] + gamma * rtg[:, 1:])


def test_reward_to_go_of_padded_episodes():
    assert_close(reward_to_go(REW3), RTG3)


@pytest.mark.parametrize(
    ("gamma", "expected"),
    [
        (1.0, t([3, 4, 6])),
        # 0.5: [3] -> 3; [2, 2] -> 2 + 1 = 3; [1, 0, 3, 2] -> 1 + 0 + 0.75 + 0.25 = 2
        (0.5, t([3, 3, 2])),
    ],
)
def test_total_return_by_hand(gamma, expected):
    assert_close(total_return(REW3, gamma), expected)


def test_total_return_of_the_notes_example():
    assert_close(total_return(NOTES_REW), t([6]))


# --- baselines ----------------------------------------------------------------------------------


def test_time_baseline_is_the_mean_over_running_episodes():
    assert_close(time_baseline(RTG3, MASK3), B_RTG3)


def test_time_baseline_ignores_whatever_sits_in_the_padding():
    # Garbage where the mask is 0 must not move the baseline.
    w = RTG3 + 100.0 * (1 - MASK3)
    assert_close(time_baseline(w, MASK3), B_RTG3)


def test_time_baseline_is_zero_where_no_episode_runs():
    mask = MASK3.clone()
    mask[:, 3] = 0
    w = RTG3 * mask
    assert_close(time_baseline(w, mask), t([13 / 3, 7 / 2, 5, 0]))


def test_loo_time_baseline_by_hand():
    b = loo_time_baseline(RTG3, MASK3)
    assert b.shape == RTG3.shape
    expected = t(
        [
            [(4 + 6) / 2, 0, 0, 0],
            [(3 + 6) / 2, 5, 0, 0],
            [(3 + 4) / 2, 2, 0, 0],  # t=2, 3: nobody else is running -> 0
        ]
    )
    assert_close(b * MASK3, expected)


def test_loo_time_baseline_leaves_the_own_episode_out():
    # Changing episode i's own weight must not change b_{i,t}, only the others'.
    w = RTG3.clone()
    w[2, 0] += 30.0
    before, after = loo_time_baseline(RTG3, MASK3), loo_time_baseline(w, MASK3)
    assert_close(after[2, 0], before[2, 0])
    assert_close(after[:2, 0], before[:2, 0] + 30.0 / 2)


# --- advantages -----------------------------------------------------------------------------------


def test_every_combination_is_covered():
    # baseline "value" needs a V (and weights "rtg"): its hand-worked cases are in test_gae.py
    sample_baselines = [b for b in BASELINES if b != "value"]
    assert set(EXPECTED_ADV3) == {(w, b) for w in WEIGHTS for b in sample_baselines}


@pytest.mark.parametrize(("weights", "baseline"), sorted(EXPECTED_ADV3))
def test_advantages_by_hand(weights, baseline):
    adv = advantages(REW3, MASK3, weights=weights, baseline=baseline)
    assert_close(adv, EXPECTED_ADV3[(weights, baseline)])


@pytest.mark.parametrize(("weights", "baseline"), sorted(EXPECTED_ADV3))
def test_advantages_are_detached_and_zero_on_padding(weights, baseline):
    rew = REW3.clone().requires_grad_(True)
    for normalize in (False, True):
        adv = advantages(rew, MASK3, weights=weights, baseline=baseline, normalize=normalize)
        assert not adv.requires_grad
        assert adv.grad_fn is None
        assert torch.all(adv[MASK3 == 0] == 0)


@pytest.mark.parametrize(("weights", "baseline"), sorted(EXPECTED_ADV3))
def test_extra_padding_changes_nothing(weights, baseline):
    # Two more padded time steps: the values on the valid steps stay the same.
    rew = torch.cat([REW3, torch.zeros(3, 2)], dim=1)
    mask = torch.cat([MASK3, torch.zeros(3, 2)], dim=1)
    adv = advantages(rew, mask, weights=weights, baseline=baseline)
    assert_close(adv[:, :4], EXPECTED_ADV3[(weights, baseline)])
    assert torch.all(adv[:, 4:] == 0)


def test_time_baseline_advantages_sum_to_zero_at_every_step():
    adv = advantages(REW3, MASK3, weights="rtg", baseline="time")
    assert_close(adv.sum(0), torch.zeros(4))


def test_discounted_advantages_by_hand():
    # rtg with gamma = 0.5 of the 3 episodes: [3], [2 + 1, 2] = [3, 2], [2, 2, 4, 2]
    adv = advantages(REW3, MASK3, weights="rtg", baseline="none", gamma=0.5)
    assert_close(adv, t([[3, 0, 0, 0], [3, 2, 0, 0], [2, 2, 4, 2]]))


def test_discount_from_start_multiplies_step_t_by_gamma_to_the_t():
    # rtg_0.5 = [2, 2, 4, 2], times [1, 0.5, 0.25, 0.125]
    ones = torch.ones(1, 4)
    adv = advantages(
        NOTES_REW, ones, weights="rtg", baseline="none", gamma=0.5, discount_from_start=True
    )
    assert_close(adv, t([[2, 1, 1, 0.25]]))


def test_discount_from_start_with_a_baseline():
    # gamma = 0.5, rtg = [[3, 0, 0, 0], [3, 2, 0, 0], [2, 2, 4, 2]]; leave-one-out baseline
    #   t=0: ep0 (3+2)/2, ep1 (3+2)/2, ep2 (3+3)/2;  t=1: ep1 2, ep2 2;  t=2, 3: ep2 0;
    # then step t is multiplied by 0.5^t.
    adv = advantages(
        REW3, MASK3, weights="rtg", baseline="time_loo", gamma=0.5, discount_from_start=True
    )
    expected = t(
        [
            [3 - 5 / 2, 0, 0, 0],
            [3 - 5 / 2, (2 - 2) * 0.5, 0, 0],
            [2 - 3, (2 - 2) * 0.5, 4 * 0.25, 2 * 0.125],
        ]
    )
    assert_close(adv, expected)


@pytest.mark.parametrize("weights", WEIGHTS)
def test_discount_from_start_is_a_no_op_at_gamma_one(weights):
    a = advantages(REW3, MASK3, weights=weights, baseline="none", discount_from_start=True)
    assert_close(a, EXPECTED_ADV3[(weights, "none")])


def test_normalized_advantages_by_hand():
    # rtg = [6, 5, 5, 2]: mean 4.5, deviations [1.5, 0.5, 0.5, -2.5],
    # sample variance (2.25 + 0.25 + 0.25 + 6.25) / 3 = 3, std sqrt(3).
    adv = advantages(NOTES_REW, torch.ones(1, 4), weights="rtg", baseline="none", normalize=True)
    assert_close(adv, t([[1.5, 0.5, 0.5, -2.5]]) / 3**0.5)


@pytest.mark.parametrize(("weights", "baseline"), sorted(EXPECTED_ADV3))
def test_normalized_advantages_have_zero_mean_unit_std_over_valid_steps(weights, baseline):
    adv = advantages(REW3, MASK3, weights=weights, baseline=baseline, normalize=True)
    valid = adv[MASK3 > 0]
    raw = EXPECTED_ADV3[(weights, baseline)][MASK3 > 0]
    assert_close(valid.mean(), torch.tensor(0.0), atol=1e-6, rtol=0)
    assert_close(valid.std(), torch.tensor(1.0))
    assert_close(valid, (raw - raw.mean()) / raw.std())


# --- input checks ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: reward_to_go(torch.zeros(4)), "rew"),
        (lambda: reward_to_go(torch.zeros(2, 3, 4)), "rew"),
        (lambda: advantages(torch.zeros(4), torch.ones(4)), "rew"),
        (lambda: advantages(torch.zeros(2, 4), torch.ones(2, 3)), "mask"),
        (lambda: advantages(torch.zeros(2, 4), torch.ones(8)), "mask"),
        (lambda: time_baseline(torch.zeros(2, 4, 1), torch.ones(2, 4)), "w"),
        (lambda: time_baseline(torch.zeros(2, 4), torch.ones(3, 4)), "mask"),
        (lambda: loo_time_baseline(torch.zeros(4), torch.ones(4)), "w"),
        (lambda: loo_time_baseline(torch.zeros(2, 4), torch.ones(2, 5)), "mask"),
    ],
)
def test_shape_errors_name_the_argument(call, name):
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        call()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"weights": "return"}, "weights"), ({"baseline": "mean"}, "baseline")],
)
def test_unknown_knob_values_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        advantages(REW3, MASK3, **kwargs)


@pytest.mark.parametrize("gamma", [1.0, 0.99])
def test_the_backward_recursion_is_the_textbook_loop_to_the_bit(gamma):
    """_discounted_sum's numpy loop (CPU, no autograd) gives exactly torch's per-step loop
    y_t = x_t + gamma (1 - done_t) y_{t+1}; with autograd it is that loop, and differentiable."""
    from pgrun.estimators import _discounted_sum

    g = torch.Generator().manual_seed(3)
    x = torch.randn(16, 200, generator=g)
    done = torch.rand(16, 200, generator=g) < 0.05
    keep = gamma * (~done).float()
    want, acc = torch.empty_like(x), torch.zeros(16)
    for t in range(199, -1, -1):
        acc = x[:, t] + keep[:, t] * acc
        want[:, t] = acc
    assert torch.equal(_discounted_sum(x, gamma, done), want)
    leaf = x.clone().requires_grad_()
    got = _discounted_sum(leaf, gamma, done)
    assert torch.equal(got.detach(), want)
    got.sum().backward()
    assert leaf.grad is not None
