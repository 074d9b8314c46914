"""PPO's pieces: the clipped objective, the entropy bonus, the value loss, and the inner loop of
the update rules (clipping, minibatches, early stop on KL, gradient-norm clipping), by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Categorical
from torch.testing import assert_close

from pgrun.losses import (
    clip_fraction,
    clipped_loss,
    entropy_bonus,
    pg_loss,
    surrogate_loss,
    value_loss,
)
from pgrun.rollout import Batch
from pgrun.update_rules import GradientStep, RatioEpochs


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


LOGP_OLD = t([[-1.0, -1.0, -1.0], [-2.0, -2.0, -2.0]])
ADV = t([[1.0, -1.0, 2.0], [1.0, -1.0, 5.0]])
MASK = t([[1, 1, 1], [1, 1, 0]])  # the last step of episode 1 is padding


def with_ratios(ratios) -> torch.Tensor:
    """logp with exp(logp - LOGP_OLD) = ratios, as a leaf with gradient."""
    return (LOGP_OLD + t(ratios).log()).requires_grad_(True)


def test_clipped_loss_equals_the_ratio_loss_inside_the_clip_range():
    logp = with_ratios([[1.1, 0.9, 1.0], [0.85, 1.15, 3.0]])  # 3.0 sits on padding
    clipped = clipped_loss(logp, LOGP_OLD, ADV, MASK, clip=0.2)
    (g_clipped,) = torch.autograd.grad(clipped, logp)
    plain = pg_loss(logp, ADV, MASK, LOGP_OLD)
    (g_plain,) = torch.autograd.grad(plain, logp)
    assert_close(clipped, plain)
    assert_close(g_clipped, g_plain)


def test_clipped_loss_by_hand_outside_the_range():
    # eps = 0.2; min(rho A, clip(rho) A) per valid step:
    #   episode 0: rho 1.5, A  1 -> min(1.5, 1.2)   =  1.2  clipped (no gradient)
    #              rho 1.5, A -1 -> min(-1.5, -1.2) = -1.5  not clipped
    #              rho 0.5, A  2 -> min(1.0, 1.6)   =  1.0  not clipped
    #   episode 1: rho 1.1, A  1 -> min(1.1, 1.1)   =  1.1  inside the range
    #              rho 0.5, A -1 -> min(-0.5, -0.8) = -0.8  clipped (no gradient)
    logp = with_ratios([[1.5, 1.5, 0.5], [1.1, 0.5, 1.0]])
    loss = clipped_loss(logp, LOGP_OLD, ADV, MASK, clip=0.2)
    assert_close(loss, torch.tensor(-(1.2 - 1.5 + 1.0 + 1.1 - 0.8) / 2))
    loss.backward()
    # d/dlogp (rho A) = rho A where not clipped, 0 where clipped; times -1/N
    expected = -t([[0.0, 1.5 * -1, 0.5 * 2], [1.1 * 1, 0.0, 0.0]]) / 2
    assert_close(logp.grad, expected)
    # 4 of the 5 valid ratios are outside [0.8, 1.2] (clipped in the objective or not)
    assert clip_fraction(logp, LOGP_OLD, MASK, 0.2) == pytest.approx(4 / 5)


def test_clipped_loss_rejects_bad_input():
    with pytest.raises(ValueError, match="clip"):
        clipped_loss(LOGP_OLD, LOGP_OLD, ADV, MASK, clip=0.0)
    with pytest.raises(ValueError, match="logp_old"):
        clipped_loss(LOGP_OLD, LOGP_OLD[:, :2], ADV, MASK, clip=0.2)


def test_entropy_bonus_and_value_loss_by_hand():
    entropy = t([[1.0, 2.0, 3.0], [4.0, 5.0, 99.0]])
    # (1/N) sum m H = (6 + 9) / 2
    assert_close(entropy_bonus(entropy, MASK), torch.tensor(7.5))
    v = t([[1.0, 2.0, 3.0], [0.0, 0.0, 50.0]])
    target = t([[1.0, 0.0, 6.0], [1.0, -1.0, 0.0]])
    # squared errors on valid steps: 0, 4, 9, 1, 1 -> mean 3
    assert_close(value_loss(v, target, MASK), torch.tensor(3.0))


# --- update rules on a policy that ignores the observation ---------------------------------------


class FixedLogits(nn.Module):
    """pi(a | episode i, step t) = softmax(logits[i, t]); the observation is ignored."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, obs: torch.Tensor) -> Categorical:
        # obs holds (episode, step) indices, so a minibatch of episodes picks its own rows
        return Categorical(logits=self.logits[obs[..., 0].long(), obs[..., 1].long()])


def toy(n: int = 4, horizon: int = 3, seed: int = 0) -> tuple[Batch, torch.Tensor, FixedLogits]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, horizon)
    mask[1, 2:] = 0
    episode, step = torch.meshgrid(torch.arange(n), torch.arange(horizon), indexing="ij")
    batch = Batch.from_episodes(
        obs=torch.stack([episode, step], dim=-1).float(),
        act=torch.randint(0, 2, (n, horizon), generator=g),
        rew=torch.randn(n, horizon, generator=g) * mask,
        mask=mask,
        terminated=torch.ones(n, dtype=torch.bool),
        truncated=torch.zeros(n, dtype=torch.bool),
        final_obs=torch.zeros(n, 2),
    )
    adv = torch.randn(n, horizon, generator=g) * mask
    policy = FixedLogits(torch.randn(n, horizon, 2, generator=g) * 0.1)
    return batch, adv, policy


def params_after(policy, batch, adv, lr, inner_steps=1, generator=None, **kwargs):
    """The logits after the rule the knobs pick (as variant.update=auto does), and its stats."""
    opt = torch.optim.SGD(policy.parameters(), lr=lr)
    reuses = inner_steps > 1 or kwargs.get("minibatches", 1) > 1 or "clip" in kwargs
    if reuses:
        rule = RatioEpochs(inner_steps, kwargs.pop("minibatches", 1), **kwargs)
    else:
        rule = GradientStep(**kwargs)
    stats = rule.step(policy, opt, batch, adv, generator=generator)
    return policy.logits.detach().clone(), stats


def test_clip_with_one_inner_step_takes_the_on_policy_step():
    """At the collecting policy every ratio is 1: the clipped loss's gradient is pg_loss's."""
    batch, adv, policy = toy()
    on_policy, _ = params_after(FixedLogits(policy.logits.data), batch, adv, lr=0.5)
    clipped, stats = params_after(FixedLogits(policy.logits.data), batch, adv, lr=0.5, clip=0.2)
    assert_close(clipped, on_policy)
    assert stats["stats/clip_fraction"] == 0.0  # the one step saw ratios of exactly 1


def test_minibatches_split_the_episodes_and_average_over_their_own():
    """M = 2 SGD steps on halves of the batch, each loss divided by its 2 episodes. Every episode
    has its own logits here, so each step moves only its own episodes' rows: if each episode is
    in exactly one minibatch, every row moves by 2 x what the full-batch step (divided by 4
    episodes) moves it, exactly."""
    batch, adv, policy = toy()
    start = policy.logits.data.clone()
    full, _ = params_after(FixedLogits(start), batch, adv, lr=1.0)
    halves, _ = params_after(
        FixedLogits(start), batch, adv, lr=1.0, minibatches=2, generator=torch.Generator()
    )
    assert_close(halves - start, 2 * (full - start))
    assert (full - start).abs().sum(dim=(1, 2)).min() > 0  # every episode's rows moved


def test_minibatches_of_steps_take_every_valid_step_once_on_the_batch_scale():
    """shuffle="steps" (rollout=steps): the S = 11 valid steps of the toy batch shuffled into
    M = 2 minibatches of B = 6 and 5 steps, each loss weighted S / B. Every (episode, step) has
    its own logits, so an SGD step moves only its minibatch's steps, each by S / B times what
    the full-batch step moves it; the padded step never moves."""
    batch, adv, policy = toy()
    start = policy.logits.data.clone()
    full, _ = params_after(FixedLogits(start), batch, adv, lr=1.0)
    steps, stats = params_after(
        FixedLogits(start), batch, adv, lr=1.0, minibatches=2, shuffle="steps",
        generator=torch.Generator().manual_seed(3),
    )  # fmt: skip
    valid = batch.mask > 0
    moved, moved_full = (steps - start)[..., 0], (full - start)[..., 0]
    assert moved_full[valid].abs().min() > 0
    ratio = moved[valid] / moved_full[valid]
    for weight, count in ((11 / 6, 6), (11 / 5, 5)):
        assert int(torch.isclose(ratio, torch.tensor(weight)).sum()) == count, ratio
    assert (steps - start)[~valid].abs().max() == 0  # the padding
    assert "stats/ratio_mean" in stats
    with pytest.raises(ValueError, match="shuffle='frames'"):
        RatioEpochs(1, 2, shuffle="frames")


def test_rollout_steps_picks_minibatches_of_steps():
    from omegaconf import OmegaConf

    from pgrun.update_rules import rule_from_config

    def rule(rollout: str):
        cfg = OmegaConf.create(
            {
                "rollout": {"name": rollout},
                "optim": {"max_grad_norm": None},
                "variant": {"rule": "auto", "inner_steps": 10, "minibatches": 4, "clip": 0.2,
                            "target_kl": None, "entropy_coef": 0.0},
            }
        )  # fmt: skip
        return rule_from_config(cfg)

    assert rule("steps").shuffle == "steps"
    assert rule("episodes").shuffle == "rows"


def test_target_kl_stops_the_inner_loop_early():
    batch, adv, policy = toy()
    # lr 50 moves the policy far after the first step: the second step's KL is large
    _, stats = params_after(policy, batch, adv, lr=50.0, inner_steps=4, target_kl=0.01)
    assert stats["stats/stopped_early"] == 1.0
    assert stats["stats/gradient_steps"] == 1.0
    _, stats = params_after(
        toy()[2], batch, adv, lr=1e-3, inner_steps=4, minibatches=2, target_kl=10.0,
        generator=torch.Generator(),
    )  # fmt: skip
    assert stats["stats/stopped_early"] == 0.0
    assert stats["stats/gradient_steps"] == 8.0  # K x M


def test_max_grad_norm_clips_the_step():
    batch, adv, policy = toy()
    start = policy.logits.data.clone()
    after, stats = params_after(policy, batch, adv, lr=1.0, max_grad_norm=1e-3)
    assert stats["stats/grad_norm"] > 1e-3  # the logged norm is the one before clipping
    assert (after - start).norm().item() == pytest.approx(1e-3, rel=1e-4)


def test_entropy_bonus_raises_the_entropy():
    batch, _, policy = toy()
    zero_adv = torch.zeros_like(batch.rew)
    before = policy(batch.obs).entropy().mean().item()
    params_after(policy, batch, zero_adv, lr=1.0, entropy_coef=0.1)
    assert policy(batch.obs).entropy().mean().item() > before
    # and the loss of surrogate_loss carries the same term
    batch, adv, policy = toy()
    knobs = {"weights": "rtg", "baseline": "none", "entropy_coef": 0.5}
    with_bonus = surrogate_loss(policy, batch, knobs, adv=adv)
    without = surrogate_loss(policy, batch, {**knobs, "entropy_coef": 0.0}, adv=adv)
    h = entropy_bonus(policy(batch.obs).entropy(), batch.mask)
    assert_close(with_bonus, without - 0.5 * h)


def test_surrogate_loss_clips_when_the_variant_says_so():
    batch, adv, policy = toy()
    with torch.no_grad():
        logp_old = policy(batch.obs).log_prob(batch.act) - math.log(2.0)  # every ratio is 2
    knobs = {"weights": "rtg", "baseline": "none", "clip": 0.2}
    loss = surrogate_loss(policy, batch, knobs, adv=adv, logp_old=logp_old)
    expected = -(torch.min(2 * adv, 1.2 * adv) * batch.mask).sum() / batch.mask.shape[0]
    assert_close(loss, expected)
