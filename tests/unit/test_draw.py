"""pgrun.draw, the rollout's draw in numpy: the policy's distribution, the noise torch's RNG gives
the per-step draws, a seed's draws in a group bit for bit its draws alone, and torch's
policy.act wherever numpy has no version of the policy.

The distribution tests fix the policy's output (zero weights, chosen biases) and draw
M = 40,000 rows in one step, with the tolerances of tests/unit/test_act.py: every probability
within Z = 4.5 standard errors of its frequency, a Gaussian's mean within Z std / sqrt(M) and
its standard deviation within Z std / sqrt(2M).
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from fixed_policies import BOX3, M, Spaces, Z, linear

from pgrun.batched import StackedPolicy
from pgrun.draw import NumpyDraw, batch_draw, noise
from pgrun.policies import make_policy


def one_step(policy, rows=M):
    torch.manual_seed(0)
    draw = batch_draw(policy, 1, rows)
    assert isinstance(draw, NumpyDraw)
    return draw(np.zeros((rows, 3), dtype=np.float32), 0)


@pytest.mark.parametrize("logits", [[0.3, -1.0, 1.2, 0.0], [0.7, -0.4]], ids=["four", "two"])
def test_categorical_draws_softmax_probabilities(logits):
    n = len(logits)
    act = one_step(linear(gym.spaces.Discrete(n), logits))
    assert act.shape == (M,) and act.dtype == np.int64
    counts = np.bincount(act, minlength=n)
    assert len(counts) == n, "a draw outside the choices"
    probs = torch.softmax(torch.tensor(logits, dtype=torch.float64), 0).tolist()
    for p, c in zip(probs, counts, strict=True):
        se = math.sqrt(p * (1 - p) / M)
        assert abs(c / M - p) <= Z * se, (c / M, p)


def test_two_actions_draw_as_the_general_inverse_cdf():
    """The two-action path does the general path's operations on the columns: the same draws,
    bit for bit, over 200,000 rows of logits of every scale and uniforms (ties included)."""
    from pgrun import draw

    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(200_000, 2)) * rng.choice([0.01, 1, 10, 80], (200_000, 1))).astype(
        np.float32
    )
    u = rng.random((200_000, 1), dtype=np.float32)
    u[:1000, 0] = 0.5  # equal logits below: p0 == u exactly
    logits[:1000] = 0.0
    general = (lambda z: z / z.sum(-1, keepdims=True))(
        np.exp(logits - logits.max(-1, keepdims=True))
    )
    want = (np.cumsum(general[..., :-1], -1) <= u).sum(-1, dtype=np.int64)
    assert np.array_equal(draw.categorical(logits, u), want)
    assert np.array_equal(draw.categorical(logits.reshape(4, -1, 2), u.reshape(4, -1, 1)),
                          want.reshape(4, -1))  # fmt: skip


@pytest.mark.parametrize("squash", [False, True])
def test_gaussian_draws_mean_and_std(squash):
    space = gym.spaces.Box(-2.0, 2.0, (2,), np.float32)
    act = one_step(linear(space, [0.5, -0.3], log_std_init=math.log(0.4), squash=squash))
    assert act.shape == (M, 2) and act.dtype == np.float32
    u = np.arctanh(act.astype(np.float64) / 2.0) if squash else act.astype(np.float64)
    for j, mu in enumerate([0.5, -0.3]):
        assert abs(u[:, j].mean() - mu) <= Z * 0.4 / math.sqrt(M)
        assert abs(u[:, j].std() - 0.4) <= Z * 0.4 / math.sqrt(2 * M)
    if squash:
        assert np.abs(act).max() <= 2.0


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_the_forward_is_the_policys_to_float_rounding(activation):
    env = Spaces(BOX3, gym.spaces.Box(-1.0, 1.0, (2,), np.float32))
    policy = make_policy(env, hidden_sizes=[64, 64], activation=activation)
    obs = np.random.default_rng(0).standard_normal((16, 3)).astype(np.float32)
    torch.manual_seed(0)
    draw = batch_draw(policy, 1, 16)
    got = draw(obs, 0) - policy.log_std.exp().detach().numpy() * draw.eps[0]
    with torch.no_grad():
        want = policy.mean(torch.from_numpy(obs)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_the_batchs_noise_is_what_per_step_draws_take():
    """torch draws uniforms one after the other: T steps' block holds T steps' draws."""
    torch.manual_seed(3)
    block = noise((50, 16, 1), normal=False)
    torch.manual_seed(3)
    steps = np.stack([torch.rand(16, 1).numpy() for _ in range(50)])
    assert np.array_equal(block, steps)


@pytest.mark.parametrize(
    "space", [gym.spaces.Discrete(3), gym.spaces.Box(-1.0, 1.0, (2,), np.float32)]
)
def test_a_seeds_draws_in_a_group_are_its_draws_alone(space):
    """K = 3 seeds' policies stacked: every step's draws bit for bit each seed's own."""
    T, N, K = 20, 16, 3
    policies = []
    for k in range(K):
        torch.manual_seed(k)
        policies.append(make_policy(Spaces(BOX3, space), hidden_sizes=[32]))
    obs = np.random.default_rng(0).standard_normal((T, K, N, 3)).astype(np.float32)
    stacked = StackedPolicy(policies).batch_draw(
        T, N, [torch.Generator().manual_seed(10 + k) for k in range(K)]
    )
    for k, policy in enumerate(policies):
        torch.manual_seed(10 + k)
        alone = batch_draw(policy, T, N)
        for t in range(T):
            assert np.array_equal(stacked(obs[t], t)[k], alone(obs[t, k], t)), (k, t)


@pytest.mark.parametrize(
    "make",
    [
        lambda: make_policy(Spaces(BOX3, gym.spaces.Discrete(2)), activation="gelu"),
        lambda: make_policy(Spaces(BOX3, gym.spaces.MultiDiscrete([2, 3]))),
        lambda: make_policy(Spaces(BOX3, gym.spaces.Discrete(2)), normalize_obs=True),
    ],
    ids=["gelu", "multidiscrete", "normalize_obs"],
)
def test_other_policies_keep_torchs_per_step_draw(make):
    policy = make()
    obs = np.zeros((8, 3), dtype=np.float32)
    torch.manual_seed(1)
    draw = batch_draw(policy, 5, 8)
    assert not isinstance(draw, NumpyDraw)
    got = draw(obs, 0)
    torch.manual_seed(1)
    with torch.inference_mode():
        want = policy.act(torch.from_numpy(obs)).numpy()
    assert np.array_equal(got, want)
