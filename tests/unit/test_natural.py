"""pgrun.natural: Fisher-vector products, conjugate gradient, the KL-scaled step, the line search.

Deterministic checks in float64 against explicit constructions (tolerances: float64 rounding);
the one statistical check (the KL of an NPG step against its quadratic model) is exact up to
the third-order term of the KL, stated below.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import pgrun
from pgrun.natural import (
    conjugate_gradient,
    fisher_vector_product,
    flat,
    flat_grad,
    kl_scaled_step,
    line_search,
    mean_kl,
    natural_step,
    set_flat,
)


class Spaces:
    """Just the spaces make_policy reads."""

    def __init__(self, obs_dim: int, action_space: gym.Space):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (obs_dim,), np.float32)
        self.action_space = action_space


def small_policy(kind: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if kind == "categorical":
        space = gym.spaces.Discrete(3)
    else:
        space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    squash = kind == "squashed"
    return pgrun.make_policy(Spaces(3, space), hidden_sizes=[4], squash=squash).double()


def states(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """obs (N=3, T=4, 3) float64 and a mask with episodes of lengths 4, 2, 3."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(3, 4, 3, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.float64)
    return obs, mask


def kl_at_old(policy, obs, mask) -> torch.Tensor:
    with torch.no_grad():
        old = policy(obs)
    return mean_kl(old, policy(obs), mask)


def explicit_fisher(policy, obs, mask, kind) -> torch.Tensor:
    """(D, D): sum over the valid states of E_a[score score^T], over the number of valid states.

    Categorical: the exact sum over the 3 actions. Gaussian: F = J^T diag(1/sigma^2) J for the
    mean mu(s) (J its Jacobian) plus 2 I for the log-stds, cross terms 0 (the Fisher of a
    normal in (mu, log sigma)); the squashed Gaussian's Fisher is its Gaussian's."""
    params = list(policy.parameters())
    D = sum(p.numel() for p in params)
    F = torch.zeros(D, D, dtype=torch.float64)
    for i, t in (mask > 0).nonzero().tolist():
        s = obs[i, t]
        if kind == "categorical":
            probs = policy(s).probs
            for a in range(3):
                score = flat_grad(policy(s).log_prob(torch.tensor(a)), params)
                F += probs[a].item() * torch.outer(score, score)
        else:
            sigma2 = policy.log_std.exp().detach() ** 2
            mu = policy.mean(s)
            J = torch.stack([flat_grad(mu[d], params, retain_graph=True) for d in range(2)])
            F += J.T @ torch.diag(1 / sigma2) @ J
            sizes = {n: p.numel() for n, p in policy.named_parameters()}
            names = list(sizes)
            lo = sum(sizes[n] for n in names[: names.index("log_std")])
            F[lo : lo + 2, lo : lo + 2] += 2 * torch.eye(2, dtype=torch.float64)
    return F / mask.sum()


@pytest.mark.parametrize("kind", ["categorical", "gaussian", "squashed"])
def test_fisher_vector_product_matches_the_explicit_fisher(kind):
    policy = small_policy(kind)
    obs, mask = states()
    params = list(policy.parameters())
    F = explicit_fisher(policy, obs, mask, kind)
    fvp = fisher_vector_product(kl_at_old(policy, obs, mask), params, damping=0.0)
    g = torch.Generator().manual_seed(2)
    for _ in range(3):
        v = torch.randn(F.shape[0], generator=g, dtype=torch.float64)
        torch.testing.assert_close(fvp(v), F @ v, rtol=1e-9, atol=1e-12)
    damped = fisher_vector_product(kl_at_old(policy, obs, mask), params, damping=0.1)
    torch.testing.assert_close(damped(v), F @ v + 0.1 * v, rtol=1e-9, atol=1e-12)


def test_conjugate_gradient_solves_a_positive_definite_system():
    g = torch.Generator().manual_seed(0)
    B = torch.randn(8, 8, generator=g, dtype=torch.float64)
    A = B @ B.T + 0.5 * torch.eye(8, dtype=torch.float64)
    b = torch.randn(8, generator=g, dtype=torch.float64)
    x = conjugate_gradient(lambda v: A @ v, b, iters=8)  # exact in D steps (up to rounding)
    torch.testing.assert_close(x, torch.linalg.solve(A, b), rtol=1e-8, atol=1e-10)
    few = conjugate_gradient(lambda v: A @ v, b, iters=3)
    assert (A @ few - b).norm() < b.norm()  # three steps: closer, not there
    assert not torch.allclose(few, x)


def test_conjugate_gradient_on_a_singular_system_gives_the_pseudo_inverse_solution():
    g = torch.Generator().manual_seed(1)
    B = torch.randn(6, 3, generator=g, dtype=torch.float64)
    A = B @ B.T  # rank 3
    b = A @ torch.randn(6, generator=g, dtype=torch.float64)  # in the range of A
    x = conjugate_gradient(lambda v: A @ v, b, iters=6)
    torch.testing.assert_close(x, torch.linalg.pinv(A) @ b, rtol=1e-7, atol=1e-9)


def test_kl_scaled_step_meets_the_quadratic_model():
    A = torch.diag(torch.tensor([1.0, 4.0], dtype=torch.float64))
    x = torch.tensor([1.0, 1.0], dtype=torch.float64)
    s = kl_scaled_step(x, A @ x, max_kl=0.01)
    assert 0.5 * (s @ A @ s).item() == pytest.approx(0.01, rel=1e-12)
    assert torch.equal(kl_scaled_step(torch.zeros(2), torch.zeros(2), 0.01), torch.zeros(2))


def surrogate_setup(kind: str, seed: int = 0):
    """A policy, a batch of 32 episodes of up to 8 steps (obs, act, mask), advantages, the old
    log-probs and distribution."""
    policy = small_policy(kind, seed)
    g = torch.Generator().manual_seed(seed + 2)
    obs = torch.randn(32, 8, 3, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, 9, (32,), generator=g)
    mask = (torch.arange(8)[None, :] < lengths[:, None]).double()
    with torch.no_grad():
        old = policy(obs)
        torch.manual_seed(seed + 3)
        act = old.sample()
        logp_old = old.log_prob(act)
    adv = torch.randn(mask.shape, generator=g, dtype=torch.float64) * mask
    return policy, obs, act, mask, adv, old, logp_old


def objectives(policy, obs, act, mask, adv, old, logp_old):
    def surrogate() -> float:
        with torch.no_grad():
            return -pgrun.pg_loss(policy(obs).log_prob(act), adv, mask, logp_old).item()

    def kl() -> float:
        with torch.no_grad():
            return mean_kl(old, policy(obs), mask).item()

    return surrogate, kl


@pytest.mark.parametrize("kind", ["categorical", "gaussian"])
def test_npg_step_lands_on_the_kl_radius(kind):
    """Without damping s^T F s / 2 = delta, and KL(theta_old + s) = s^T F s / 2 + O(||s||^3)
    with ||s|| ~ sqrt(delta): the true KL is delta to a relative error O(sqrt(delta)), within
    5% at delta = 1e-6 and shrinking (by about 10 in theory) to delta = 1e-8."""
    errors = []
    for delta in (1e-6, 1e-8):
        policy, obs, act, mask, adv, old, logp_old = surrogate_setup(kind)
        params = list(policy.parameters())
        loss = pgrun.pg_loss(policy(obs).log_prob(act), adv, mask, logp_old)
        step = natural_step(loss, kl_at_old(policy, obs, mask), params, delta, damping=0.0)
        assert step.quadratic_kl == pytest.approx(delta, rel=1e-9)
        surrogate, kl = objectives(policy, obs, act, mask, adv, old, logp_old)
        before = surrogate()
        set_flat(params, flat(params) + step.step)
        errors.append(abs(kl() / delta - 1))
        assert surrogate() > before  # a small step along F^-1 g raises the surrogate
    assert errors[0] < 0.05
    assert errors[1] < errors[0] / 3


def test_line_search_takes_the_full_step_when_it_qualifies():
    policy, obs, act, mask, adv, old, logp_old = surrogate_setup("categorical")
    params = list(policy.parameters())
    theta_old = flat(params).clone()
    loss = pgrun.pg_loss(policy(obs).log_prob(act), adv, mask, logp_old)
    step = natural_step(loss, kl_at_old(policy, obs, mask), params, 1e-3)
    surrogate, kl = objectives(policy, obs, act, mask, adv, old, logp_old)
    result = line_search(params, step.step, surrogate, kl, max_kl=1e-3)
    assert result.accepted and result.fraction == 1.0 and result.tries == 1
    torch.testing.assert_close(flat(params), theta_old + step.step)
    assert result.improvement > 0 and 0 < result.kl <= 1e-3


def test_line_search_shrinks_a_step_that_breaks_the_constraint():
    """A step 10 times the radius' size: the search shrinks it until the true KL is within."""
    policy, obs, act, mask, adv, old, logp_old = surrogate_setup("categorical")
    params = list(policy.parameters())
    theta_old = flat(params).clone()
    loss = pgrun.pg_loss(policy(obs).log_prob(act), adv, mask, logp_old)
    step = natural_step(loss, kl_at_old(policy, obs, mask), params, 1e-3, damping=0.0)
    surrogate, kl = objectives(policy, obs, act, mask, adv, old, logp_old)
    big = 10 * step.step  # quadratic KL 100 delta
    result = line_search(params, big, surrogate, kl, max_kl=1e-3, shrink=0.5, max_tries=10)
    assert result.accepted and result.fraction < 1 and result.tries > 1
    assert result.kl <= 1e-3 and result.improvement > 0
    torch.testing.assert_close(flat(params), theta_old + result.fraction * big)
    # the try before it (twice as long) broke the constraint or did not improve
    before = surrogate_at(theta_old, params, surrogate)
    set_flat(params, theta_old + 2 * result.fraction * big)
    assert kl() > 1e-3 or surrogate() <= before


def surrogate_at(theta: torch.Tensor, params, surrogate) -> float:
    set_flat(params, theta)
    return surrogate()


def test_line_search_rejects_a_step_that_lowers_the_surrogate():
    """-s points downhill: every shrunk step lowers L, so none is taken and theta stays."""
    policy, obs, act, mask, adv, old, logp_old = surrogate_setup("gaussian")
    params = list(policy.parameters())
    theta_old = flat(params).clone()
    loss = pgrun.pg_loss(policy(obs).log_prob(act), adv, mask, logp_old)
    step = natural_step(loss, kl_at_old(policy, obs, mask), params, 1e-3, damping=0.0)
    surrogate, kl = objectives(policy, obs, act, mask, adv, old, logp_old)
    result = line_search(params, -step.step, surrogate, kl, max_kl=1.0, max_tries=5)
    assert not result.accepted and result.tries == 5 and result.fraction == 0.0
    assert torch.equal(flat(params), theta_old)


def test_line_search_rejects_every_step_outside_the_radius():
    """An uphill step whose every shrink stays outside a tiny radius: none is taken."""
    policy, obs, act, mask, adv, old, logp_old = surrogate_setup("categorical")
    params = list(policy.parameters())
    theta_old = flat(params).clone()
    loss = pgrun.pg_loss(policy(obs).log_prob(act), adv, mask, logp_old)
    step = natural_step(loss, kl_at_old(policy, obs, mask), params, 1e-2, damping=0.0)
    surrogate, kl = objectives(policy, obs, act, mask, adv, old, logp_old)
    # after 3 tries the step is 0.8^2 = 0.64 of s: quadratic KL 0.41e-2 > 1e-4
    result = line_search(params, step.step, surrogate, kl, max_kl=1e-4, max_tries=3)
    assert not result.accepted
    assert torch.equal(flat(params), theta_old)


@pytest.mark.parametrize("line_search", [False, True], ids=["npg", "trpo"])
def test_the_update_rule_steps_to_the_kl_radius(line_search):
    """NaturalGradient.step on a CartPole batch: the surrogate improves; TRPO's KL is within
    the radius (the line search guarantees it), NPG's is the radius up to the quadratic
    model's error (within 50% at max_kl = 0.01 with damping 0.1, which shrinks the step)."""
    from pgrun.losses import batch_advantages
    from pgrun.natural import NaturalGradient

    env = pgrun.make_env("CartPole-v1", num_envs=8, seed=0)
    torch.manual_seed(0)
    policy = pgrun.make_policy(env, hidden_sizes=[16])
    batch = pgrun.collect_episodes(env, policy, horizon=100, seed=0)
    adv = batch_advantages(batch, "rtg_baseline")
    with torch.no_grad():
        old = policy(batch.obs)
        logp_old = old.log_prob(batch.act)
    rule = NaturalGradient(max_kl=0.01, line_search=line_search)
    stats = rule.step(policy, None, batch, adv)
    surrogate, kl = objectives(policy, batch.obs, batch.act, batch.mask, adv, old, logp_old)
    assert kl() == pytest.approx(stats["stats/kl"])
    assert -pgrun.pg_loss(logp_old, adv, batch.mask, logp_old).item() < surrogate()
    if line_search:
        assert kl() <= 0.01 and stats["stats/step_fraction"] > 0
    else:
        assert 0.005 < kl() < 0.015
    assert stats["stats/quadratic_kl"] == pytest.approx(0.01, rel=1e-4)
