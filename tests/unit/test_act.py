"""policy.act, the rollout's per-step draw: the distribution of policy(obs), drawn without it.

act draws from torch's RNG by a cheaper route than Distribution.sample, so its draws are not the
Distribution's; what must hold is the distribution. Each test fixes the policy's output (zero
weights, chosen biases) and draws M = 40,000 actions in one batch:

- discrete choices: every probability within Z = 4.5 standard errors sqrt(p (1 - p) / M)
  (at most 0.011 here) of its frequency: with all the choices of the file, a false alarm
  less often than once in 10^4 seeds (the seeds are fixed, so the outcome is too);
- Gaussian: the mean within Z std / sqrt(M) and the standard deviation within Z std / sqrt(2M).
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from fixed_policies import M, Z, linear

from pgrun.policies import inverse_cdf


def draw(policy, rows=M):
    torch.manual_seed(0)
    with torch.inference_mode():
        return policy.act(torch.zeros(rows, 3))


def assert_frequencies(draws: torch.Tensor, probs: torch.Tensor) -> None:
    """draws (M,) int64 in [0, n); probs (n,)."""
    counts = torch.bincount(draws, minlength=len(probs)).double()
    assert len(counts) == len(probs), "a draw outside the choices"
    for p, c in zip(probs.double(), counts, strict=True):
        se = math.sqrt(max(p * (1 - p), 1e-12) / M)
        assert abs(c / M - p) <= Z * se, (c / M, p)


def test_categorical_draws_softmax_probabilities():
    logits = [0.3, -1.0, 1.2, 0.0]
    policy = linear(gym.spaces.Discrete(4), logits)
    act = draw(policy)
    assert act.shape == (M,) and act.dtype == torch.int64
    assert_frequencies(act, torch.softmax(torch.tensor(logits), 0))


def test_multidiscrete_never_draws_a_padded_slot():
    # nvec [2, 3]: logits held as (2, 3), slot (0, 2) padded; bias 99 there must never win.
    bias = [0.0, 1.0, 99.0, 0.5, 0.0, -0.5]
    policy = linear(gym.spaces.MultiDiscrete([2, 3]), bias)
    act = draw(policy)
    assert act.shape == (M, 2) and act.dtype == torch.int64
    assert_frequencies(act[:, 0], torch.softmax(torch.tensor([0.0, 1.0]), 0))
    assert_frequencies(act[:, 1], torch.softmax(torch.tensor([0.5, 0.0, -0.5]), 0))


def test_multibinary_draws_sigmoid_probabilities():
    bias = [0.0, 2.0, -1.0]
    policy = linear(gym.spaces.MultiBinary(3), bias)
    act = draw(policy)
    assert act.shape == (M, 3) and act.dtype == torch.float32
    for j, p in enumerate(torch.sigmoid(torch.tensor(bias))):
        assert_frequencies(act[:, j].long(), torch.stack([1 - p, p]))


@pytest.mark.parametrize("squash", [False, True])
def test_gaussian_draws_mean_and_std(squash):
    space = gym.spaces.Box(-2.0, 2.0, (2,), np.float32)
    policy = linear(space, [0.5, -0.3], log_std_init=math.log(0.4), squash=squash)
    act = draw(policy)
    assert act.shape == (M, 2) and act.dtype == torch.float32
    u = torch.atanh(act / 2.0) if squash else act  # back to the Gaussian before the squash
    for j, mu in enumerate([0.5, -0.3]):
        assert abs(u[:, j].mean().item() - mu) <= Z * 0.4 / math.sqrt(M)
        assert abs(u[:, j].std().item() - 0.4) <= Z * 0.4 / math.sqrt(2 * M)
    if squash:
        assert act.abs().max() <= 2.0


def test_draws_repeat_from_the_same_seed_and_do_not_alias_the_buffer():
    policy = linear(gym.spaces.Discrete(3), [0.0, 0.0, 0.0])
    with torch.inference_mode():
        torch.manual_seed(5)
        a = policy.act(torch.zeros(64, 3))
        b = policy.act(torch.zeros(64, 3))  # reuses the noise buffer
        torch.manual_seed(5)
        c = policy.act(torch.zeros(64, 3))
    assert torch.equal(a, c) and not torch.equal(a, b)


def test_act_also_runs_outside_inference_mode():
    """A buffer made under inference_mode is not reused outside it (in-place on an inference
    tensor would fail there)."""
    policy = linear(gym.spaces.Box(-1.0, 1.0, (2,), np.float32), [0.0, 0.0])
    with torch.inference_mode():
        policy.act(torch.zeros(4, 3))
    with torch.no_grad():
        assert policy.act(torch.zeros(4, 3)).shape == (4, 2)


def test_inverse_cdf_never_returns_n_for_a_cdf_short_of_one():
    policy = linear(gym.spaces.Discrete(2), [0.0, 0.0])
    probs = torch.tensor([[0.3, 0.6999999]]).expand(10_000, 2)  # sums to just below 1
    torch.manual_seed(0)
    with torch.inference_mode():
        draws = inverse_cdf(probs, policy)
    assert draws.max() <= 1 and draws.min() >= 0
