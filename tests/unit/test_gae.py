"""Value-based estimators: TD errors, GAE, bootstrapped returns and their time-limit handling,
against numbers worked out by hand, and the identities lambda = 1 and lambda = 0."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from pgrun.estimators import (
    advantages,
    bootstrap_values,
    bootstrapped_reward_to_go,
    explained_variance,
    gae,
    last_step,
    next_values,
    reward_to_go,
    td_errors,
    value_targets,
)


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# Two episodes, T = 3, gamma = 0.5, lambda = 0.5 (gamma * lambda = 0.25).
#   episode 0: 3 steps, terminated:  r = [1, 2, 3], V = [0.5, 1, 2], nothing after the end
#   episode 1: 2 steps, truncated:   r = [1, 1],    V = [2, 4],     V(final obs) = 10
GAMMA, LAM = 0.5, 0.5
REW = t([[1, 2, 3], [1, 1, 0]])
VAL = t([[0.5, 1, 2], [2, 4, 0]])
MASK = t([[1, 1, 1], [1, 1, 0]])
FINAL_VAL = t([7.0, 10.0])  # episode 0's is never used: it terminated
TERMINATED = torch.tensor([True, False])
TRUNCATED = torch.tensor([False, True])
BOOT = t([0.0, 10.0])  # bootstrap_values(FINAL_VAL, TERMINATED, TRUNCATED, "bootstrap")

# delta_t = r_t + gamma V_{t+1} - V_t
#   episode 0: 1 + .5*1 - .5 = 1     2 + .5*2 - 1 = 2     3 + .5*0 - 2 = 1
#   episode 1: 1 + .5*4 - 2 = 1      1 + .5*10 - 4 = 2
DELTA = t([[1, 2, 1], [1, 2, 0]])
# A_t = delta_t + 0.25 A_{t+1}
#   episode 0: A_2 = 1, A_1 = 2 + .25*1 = 2.25, A_0 = 1 + .25*2.25 = 1.5625
#   episode 1: A_1 = 2, A_0 = 1 + .25*2 = 1.5
GAE = t([[1.5625, 2.25, 1], [1.5, 2, 0]])
# G_t = r_t + gamma G_{t+1}, G after the end = v_i
#   episode 0: G_2 = 3, G_1 = 2 + 1.5 = 3.5, G_0 = 1 + 1.75 = 2.75
#   episode 1: G_1 = 1 + .5*10 = 6, G_0 = 1 + .5*6 = 4
G = t([[2.75, 3.5, 3], [4, 6, 0]])


def test_bootstrap_values_only_for_truncated_episodes():
    assert_close(bootstrap_values(FINAL_VAL, TERMINATED, TRUNCATED, "bootstrap"), BOOT)
    # terminate: every end is terminal
    assert_close(bootstrap_values(FINAL_VAL, TERMINATED, TRUNCATED, "terminate"), t([0, 0]))
    # a terminal state is never bootstrapped, even if a time limit fell on the same step
    both = torch.tensor([True, True])
    assert_close(bootstrap_values(FINAL_VAL, both, both, "bootstrap"), t([0, 0]))
    with pytest.raises(ValueError, match="truncation"):
        bootstrap_values(FINAL_VAL, TERMINATED, TRUNCATED, "sometimes")
    with pytest.raises(ValueError, match="final_values"):
        bootstrap_values(VAL, TERMINATED, TRUNCATED)


def test_last_step_and_next_values_by_hand():
    assert_close(last_step(MASK), t([[0, 0, 1], [0, 1, 0]]))
    # V(s_{t+1}): inside the episode the next V, after the last step v_i, padding 0
    assert_close(next_values(VAL, MASK, BOOT), t([[1, 2, 0], [4, 10, 0]]))


def test_td_errors_by_hand():
    assert_close(td_errors(REW, VAL, MASK, BOOT, GAMMA), DELTA)


def test_gae_by_hand():
    assert_close(gae(REW, VAL, MASK, BOOT, GAMMA, LAM), GAE)


def test_gae_treats_a_truncation_as_terminal_when_told():
    # episode 1 without the bootstrap: delta_1 = 1 + 0 - 4 = -3, A_1 = -3, A_0 = 1 + .25*-3
    no_boot = t([0.0, 0.0])
    expected = t([[1.5625, 2.25, 1], [0.25, -3, 0]])
    assert_close(gae(REW, VAL, MASK, no_boot, GAMMA, LAM), expected)


def test_bootstrapped_reward_to_go_by_hand():
    assert_close(bootstrapped_reward_to_go(REW, MASK, BOOT, GAMMA), G)
    # without a bootstrap it is the plain discounted reward-to-go
    zero = t([0.0, 0.0])
    assert_close(bootstrapped_reward_to_go(REW, MASK, zero, GAMMA), reward_to_go(REW, GAMMA))


def test_lambda_one_is_reward_to_go_minus_v_by_hand():
    # gamma lambda = 0.5: episode 0: A_2 = 1, A_1 = 2 + .5, A_0 = 1 + .5*2.5 = 2.25 = G_0 - V_0
    assert_close(gae(REW, VAL, MASK, BOOT, GAMMA, 1.0), (G - VAL) * MASK)


def test_lambda_zero_is_the_td_error_by_hand():
    assert_close(gae(REW, VAL, MASK, BOOT, GAMMA, 0.0), DELTA)


def random_batch(seed: int, n: int = 7, horizon: int = 12):
    """Random rewards and values on episodes of random lengths 1..T (float64)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, horizon + 1, (n,), generator=g)
    lengths[0] = horizon  # one full-length episode
    mask = (torch.arange(horizon)[None, :] < lengths[:, None]).double()
    rew = torch.randn(n, horizon, generator=g, dtype=torch.float64) * mask
    val = torch.randn(n, horizon, generator=g, dtype=torch.float64) * mask
    boot = torch.randn(n, generator=g, dtype=torch.float64) * (torch.rand(n, generator=g) < 0.5)
    return rew, val, mask, boot


def gae_by_recursion(rew, val, mask, boot, gamma, lam):
    """A_t = delta_t + gamma lambda A_{t+1} episode by episode, step by step: the textbook loop."""
    adv = torch.zeros_like(rew)
    for i in range(rew.shape[0]):
        length = int(mask[i].sum())
        following = 0.0
        for step in reversed(range(length)):
            v_next = boot[i] if step == length - 1 else val[i, step + 1]
            delta = rew[i, step] + gamma * v_next - val[i, step]
            following = delta + gamma * lam * following
            adv[i, step] = following
    return adv


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("gamma, lam", [(0.99, 0.95), (1.0, 0.9), (0.9, 1.0), (0.8, 0.0)])
def test_gae_matches_the_step_by_step_recursion(seed, gamma, lam):
    rew, val, mask, boot = random_batch(seed)
    expected = gae_by_recursion(rew, val, mask, boot, gamma, lam)
    assert_close(gae(rew, val, mask, boot, gamma, lam), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("gamma", [1.0, 0.99, 0.7])
def test_lambda_one_reproduces_reward_to_go_minus_v(seed, gamma):
    """The telescoping sum: sum_k gamma^k delta_{t+k} = G_t - V_t, exactly (float64)."""
    rew, val, mask, boot = random_batch(seed)
    identity = (bootstrapped_reward_to_go(rew, mask, boot, gamma) - val) * mask
    assert_close(gae(rew, val, mask, boot, gamma, 1.0), identity, rtol=1e-12, atol=1e-12)
    # and the estimator's two paths agree: value baseline without GAE == GAE with lambda = 1
    plain = advantages(rew, mask, baseline="value", gamma=gamma, values=val, boot=boot)
    with_gae = advantages(
        rew, mask, baseline="value", gamma=gamma, values=val, boot=boot, gae_lambda=1.0
    )
    assert_close(with_gae, plain, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_lambda_zero_is_the_one_step_td_error(seed):
    rew, val, mask, boot = random_batch(seed)
    expected = gae_by_recursion(rew, val, mask, boot, 0.9, 0.0)
    assert_close(gae(rew, val, mask, boot, 0.9, 0.0), td_errors(rew, val, mask, boot, 0.9))
    assert_close(td_errors(rew, val, mask, boot, 0.9), expected, rtol=1e-12, atol=1e-12)


def test_value_targets_are_returns_or_lambda_returns():
    assert_close(value_targets(REW, VAL, MASK, BOOT, GAMMA, None), G)
    # lambda-return = A^GAE + V
    assert_close(value_targets(REW, VAL, MASK, BOOT, GAMMA, LAM), (GAE + VAL) * MASK)
    # lambda = 1: the lambda-return is the bootstrapped return itself
    assert_close(value_targets(REW, VAL, MASK, BOOT, GAMMA, 1.0), G)


def test_advantages_with_the_value_baseline_by_hand():
    adv = advantages(REW, MASK, baseline="value", gamma=GAMMA, values=VAL, boot=BOOT)
    assert_close(adv, (G - VAL) * MASK)
    adv = advantages(
        REW, MASK, baseline="value", gamma=GAMMA, values=VAL, boot=BOOT, gae_lambda=LAM
    )
    assert_close(adv, GAE)
    assert not adv.requires_grad


def test_advantages_refuse_what_has_no_meaning():
    with pytest.raises(ValueError, match="needs values"):
        advantages(REW, MASK, baseline="value")
    with pytest.raises(ValueError, match="gae_lambda"):
        advantages(REW, MASK, baseline="time", gae_lambda=0.9)
    with pytest.raises(ValueError, match="weights='rtg'"):
        advantages(REW, MASK, weights="total", baseline="value", values=VAL)
    with pytest.raises(ValueError, match="lam"):
        gae(REW, VAL, MASK, BOOT, GAMMA, 1.5)
    with pytest.raises(ValueError, match="values"):
        gae(REW, VAL[:, :2], MASK, BOOT, GAMMA, LAM)
    with pytest.raises(ValueError, match="boot"):
        gae(REW, VAL, MASK, t([1.0, 2.0, 3.0]), GAMMA, LAM)


def test_explained_variance_by_hand():
    target = t([[1, 2, 3], [4, 100, 0]])
    mask = t([[1, 1, 1], [1, 0, 0]])  # valid targets 1, 2, 3, 4: mean 2.5, variance 1.25
    assert explained_variance(target, target, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(target, 2.5), target, mask) == pytest.approx(0.0)
    # pred = target - 1: the residuals are all 1, their variance 0
    assert explained_variance(target - 1, target, mask) == pytest.approx(1.0)
    # pred = 0: residuals 1, 2, 3, 4 have the targets' variance: 1 - 1.25 / 1.25 = 0
    assert explained_variance(torch.zeros_like(target), target, mask) == pytest.approx(0.0)
    # pred = 5 - target (anti-correlated): residuals 2t - 5 = -3, -1, 1, 3: var 5 -> 1 - 4 = -3
    assert explained_variance(5 - target, target, mask) == pytest.approx(-3.0)
    ones = torch.ones_like(target)
    assert explained_variance(ones, ones, mask) != explained_variance(ones, ones, mask)  # NaN
