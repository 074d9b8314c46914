"""The surrogate losses: values and gradients against hand-worked numbers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Categorical
from torch.testing import assert_close

from pgrun.losses import batch_advantages, pg_loss, ratio_stats, surrogate_loss
from pgrun.rollout import Batch


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


LOGP = t([[-0.5, -1.0, -2.0], [-0.25, -3.0, -7.0]])
ADV = t([[2.0, -1.0, 4.0], [3.0, 0.5, 0.0]])
MASK = t([[1, 1, 1], [1, 1, 0]])  # the second episode has 2 steps; its third is padding


def test_pg_loss_value_by_hand():
    # -(1/N) sum m * logp * adv, N = 2 episodes:
    #   episode 0: -0.5*2 + -1*-1 + -2*4 = -1 + 1 - 8 = -8
    #   episode 1: -0.25*3 + -3*0.5       = -0.75 - 1.5 = -2.25  (padding left out)
    loss = pg_loss(LOGP, ADV, MASK)
    assert_close(loss, torch.tensor(-(-8.0 - 2.25) / 2))


def test_pg_loss_gradient_is_minus_adv_times_mask_over_n():
    logp = LOGP.clone().requires_grad_(True)
    pg_loss(logp, ADV, MASK).backward()
    assert_close(logp.grad, -ADV * MASK / 2)


def test_padding_with_garbage_does_not_change_the_loss():
    logp = LOGP.clone()
    logp[1, 2] = -1e3
    adv = ADV.clone()
    adv[1, 2] = 1e3
    assert_close(pg_loss(logp, adv, MASK), pg_loss(LOGP, ADV, MASK))


def test_ratio_loss_at_the_collecting_policy():
    # With logp_old = logp the ratios are 1: L = -(1/N) sum m * adv = -(2 - 1 + 4 + 3 + 0.5)/2
    logp = LOGP.clone().requires_grad_(True)
    loss = pg_loss(logp, ADV, MASK, logp_old=logp.detach())
    assert_close(loss, torch.tensor(-8.5 / 2))
    loss.backward()
    # d/dlogp exp(logp - logp_old) = ratio = 1: the on-policy gradient.
    assert_close(logp.grad, -ADV * MASK / 2)


def test_ratio_loss_away_from_the_collecting_policy():
    # ratio = exp(logp - logp_old); L = -(1/N) sum m * ratio * adv, dL/dlogp = -m * ratio * adv / N
    logp_old = LOGP - t([[math.log(2.0), 0.0, 0.0], [-math.log(2.0), 0.0, 0.0]])
    ratio = t([[2.0, 1.0, 1.0], [0.5, 1.0, 1.0]])
    logp = LOGP.clone().requires_grad_(True)
    loss = pg_loss(logp, ADV, MASK, logp_old=logp_old)
    # episode 0: 2*2 - 1 + 4 = 7; episode 1: 0.5*3 + 0.5 = 2
    assert_close(loss, torch.tensor(-(7.0 + 2.0) / 2))
    loss.backward()
    assert_close(logp.grad, -ratio * ADV * MASK / 2)


@pytest.mark.parametrize(
    "shapes",
    [
        ((2, 3), (2, 4), (2, 3)),
        ((2, 3), (2, 3), (3, 2)),
        ((6,), (6,), (6,)),
        ((2, 3, 1), (2, 3, 1), (2, 3, 1)),
    ],
)
def test_pg_loss_rejects_mismatched_shapes(shapes):
    logp, adv, mask = (torch.zeros(s) for s in shapes)
    with pytest.raises(ValueError, match="logp"):
        pg_loss(logp, adv, mask)


def test_pg_loss_rejects_a_mismatched_logp_old():
    with pytest.raises(ValueError, match="logp_old"):
        pg_loss(LOGP, ADV, MASK, logp_old=torch.zeros(2, 4))


def test_ratio_stats_by_hand():
    # valid log-ratios: log 2, 0, 0, log(1/2), 0  (the padded step is left out)
    logp_old = LOGP - t([[math.log(2.0), 0.0, 0.0], [-math.log(2.0), 0.0, 99.0]])
    stats = ratio_stats(LOGP, logp_old, MASK)
    # rho = [2, 1, 1, 0.5, 1]; (rho - 1) - log rho = [1 - ln 2, 0, 0, -0.5 + ln 2, 0]
    expected = {
        "ratio_mean": 5.5 / 5,
        "ratio_min": 0.5,
        "ratio_max": 2.0,
        "approx_kl": 0.5 / 5,
    }
    assert set(stats) == set(expected)
    for key, value in expected.items():
        assert stats[key] == pytest.approx(value, rel=1e-6), key


def test_ratio_stats_at_the_collecting_policy():
    stats = ratio_stats(LOGP, LOGP.clone(), MASK)
    assert stats == {"ratio_mean": 1.0, "ratio_min": 1.0, "ratio_max": 1.0, "approx_kl": 0.0}


# --- surrogate_loss on a hand-made batch -----------------------------------------------------------
#
# Three episodes of lengths 1, 2 and 4 (rewards [3], [2, 2], [1, 0, 3, 2]) and a policy whose
# probability of the taken action is the same at every step of an episode: 1/2, 1/4 and 3/4.

REW3 = t([[3, 0, 0, 0], [2, 2, 0, 0], [1, 0, 3, 2]])
MASK3 = t([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
LOGP3 = [math.log(0.5), math.log(0.25), math.log(0.75)]

# Per-episode sums of the weights over valid steps (see test_estimators for the tensors):
#   vanilla      R_i * len_i:           3, 8, 24
#   rtg          sum_t rtg:             3, 6, 18
#   rtg_baseline sum_t (rtg - b_t):     3 - 13/3, (4 - 13/3) + (2 - 7/2), (6 - 13/3) + (5 - 7/2)
#   total - time sum_t (R_i - b_t):     3 - 13/3, (4 - 13/3) + (4 - 5), (6 - 13/3) + (6 - 5)
ADV_SUMS = {
    "vanilla": [3.0, 8.0, 24.0],
    "rtg": [3.0, 6.0, 18.0],
    "rtg_baseline": [3 - 13 / 3, (4 - 13 / 3) + (2 - 7 / 2), (6 - 13 / 3) + (5 - 7 / 2)],
    "off_policy": [3 - 13 / 3, (4 - 13 / 3) + (2 - 7 / 2), (6 - 13 / 3) + (5 - 7 / 2)],
    "total_time": [3 - 13 / 3, (4 - 13 / 3) + (4 - 5), (6 - 13 / 3) + (6 - 5)],
}


class FixedLogits(nn.Module):
    """A policy that ignores the observation: its logits are a parameter of shape (N, T, 2)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = nn.Parameter(logits)

    def forward(self, obs: torch.Tensor) -> Categorical:
        return Categorical(logits=self.logits.expand(*obs.shape[:-1], 2))


def hand_batch() -> tuple[Batch, FixedLogits]:
    # logits [0, 0]: p = 1/2 for either action; [0, ln 3]: p(0) = 1/4, p(1) = 3/4.
    logits = torch.zeros(3, 4, 2)
    logits[1:, :, 1] = math.log(3.0)
    act = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    batch = Batch.from_episodes(
        obs=torch.zeros(3, 4, 1),
        act=act,
        rew=REW3,
        mask=MASK3,
        terminated=torch.ones(3, dtype=torch.bool),
        truncated=torch.zeros(3, dtype=torch.bool),
        final_obs=torch.zeros(3, 1),
    )
    return batch, FixedLogits(logits)


def expected_loss(sums: list[float]) -> float:
    # L = -(1/N) sum_i log p_i * sum_t A_{i,t}, N = 3
    return -sum(lp * s for lp, s in zip(LOGP3, sums, strict=True)) / 3


@pytest.mark.parametrize("variant", ["vanilla", "rtg", "rtg_baseline", "off_policy"])
def test_surrogate_loss_of_each_preset_by_hand(variant):
    batch, policy = hand_batch()
    loss = surrogate_loss(policy, batch, variant=variant)
    assert_close(loss, torch.tensor(expected_loss(ADV_SUMS[variant])))


@pytest.mark.parametrize(
    ("knobs", "sums"),
    [
        ({"weights": "total", "baseline": "none"}, "vanilla"),
        ({"weights": "rtg", "baseline": "none", "normalize_advantages": False}, "rtg"),
        ({"weights": "rtg", "baseline": "time"}, "rtg_baseline"),
        ({"weights": "total", "baseline": "time"}, "total_time"),
    ],
)
def test_surrogate_loss_with_a_dict_of_knobs(knobs, sums):
    batch, policy = hand_batch()
    loss = surrogate_loss(policy, batch, variant=knobs)
    assert_close(loss, torch.tensor(expected_loss(ADV_SUMS[sums])))


def test_surrogate_loss_with_normalized_advantages():
    # rtg over valid steps: [3, 4, 2, 6, 5, 5, 2]: mean 27/7, sample std s.
    vals = [3.0, 4.0, 2.0, 6.0, 5.0, 5.0, 2.0]
    mean = sum(vals) / 7
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / 6)
    z = [(v - mean) / std for v in vals]
    sums = [z[0], z[1] + z[2], sum(z[3:])]
    batch, policy = hand_batch()
    loss = surrogate_loss(
        policy, batch, variant={"weights": "rtg", "baseline": "none", "normalize_advantages": True}
    )
    assert_close(loss, torch.tensor(expected_loss(sums)))


def test_surrogate_loss_gradient_by_hand():
    # d log softmax(z)_a / dz = onehot(a) - p, so dL/dlogits_{i,t} = -(1/N) A_{i,t} (onehot - p).
    batch, policy = hand_batch()
    surrogate_loss(policy, batch, variant="rtg").backward()
    adv = t([[3, 0, 0, 0], [4, 2, 0, 0], [6, 5, 5, 2]])
    p = torch.softmax(policy.logits.detach(), -1)
    onehot = nn.functional.one_hot(batch.act, 2).float()
    assert_close(policy.logits.grad, -(adv * MASK3)[..., None] * (onehot - p) / 3)


def test_off_policy_gradient_at_k1_equals_rtg_baseline():
    batch, policy = hand_batch()
    with torch.no_grad():
        policy.logits.add_(torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(0)))
        logp_old = policy(batch.obs).log_prob(batch.act)
    surrogate_loss(policy, batch, variant="rtg_baseline").backward()
    on_policy = policy.logits.grad.clone()
    policy.logits.grad = None
    loss = surrogate_loss(policy, batch, variant="off_policy", logp_old=logp_old)
    loss.backward()
    assert_close(policy.logits.grad, on_policy)
    assert on_policy.abs().sum() > 0
    # The ratio loss at the collecting policy is -(1/N) sum A (= 0 for the time baseline).
    assert_close(loss, torch.tensor(0.0), atol=1e-6, rtol=0)


def test_precomputed_advantages_are_used_as_given():
    batch, policy = hand_batch()
    adv = torch.ones(3, 4) * MASK3
    loss = surrogate_loss(policy, batch, variant="vanilla", adv=adv)
    # sum_t 1 over valid steps: lengths 1, 2, 4
    assert_close(loss, torch.tensor(expected_loss([1.0, 2.0, 4.0])))


def test_batch_advantages_accept_the_composed_variant_node():
    from hydra import compose, initialize_config_module

    import pgrun.config  # noqa: F401  (registers the schema)

    with initialize_config_module(config_module="pgrun.configs", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["variant=rtg"])
    batch, _ = hand_batch()
    assert_close(
        batch_advantages(batch, cfg.variant), t([[3, 0, 0, 0], [4, 2, 0, 0], [6, 5, 5, 2]])
    )
