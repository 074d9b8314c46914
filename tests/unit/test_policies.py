"""make_policy: the distribution family per action space, shapes, and the layer stack."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Categorical, Independent, Normal
from torch.testing import assert_close

import pgrun
from pgrun.policies import PolicyError, make_policy


class Spaces(gym.Env):
    """An env that only carries the two spaces make_policy looks at."""

    def __init__(self, observation_space, action_space):
        self.observation_space = observation_space
        self.action_space = action_space


BOX3 = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)


@pytest.fixture(scope="module")
def cartpole():
    env = pgrun.make_env("CartPole-v1", num_envs=2, seed=0)
    yield env
    env.close()


@pytest.fixture(scope="module")
def pendulum():
    env = pgrun.make_env("Pendulum-v1", num_envs=2, seed=0)
    yield env
    env.close()


def linears(policy: nn.Module) -> list[nn.Linear]:
    return [m for m in policy.modules() if isinstance(m, nn.Linear)]


def test_discrete_actions_get_a_categorical(cartpole):
    torch.manual_seed(0)
    policy = make_policy(cartpole, hidden_sizes=[8])
    obs = torch.randn(5, 7, 4)
    dist = policy(obs)
    assert isinstance(dist, Categorical)
    assert dist.batch_shape == (5, 7)
    act = dist.sample()
    assert act.shape == (5, 7) and act.dtype == torch.int64
    logp = dist.log_prob(act)
    assert logp.shape == (5, 7)
    # log pi(a|s) = log_softmax(logits)_a
    logits = policy.net(obs)
    assert_close(logp, torch.log_softmax(logits, -1).gather(-1, act[..., None])[..., 0])


def test_box_actions_get_an_independent_gaussian(pendulum):
    torch.manual_seed(0)
    policy = make_policy(pendulum, hidden_sizes=[8])
    obs = torch.randn(5, 7, 3)
    dist = policy(obs)
    assert isinstance(dist, Independent)
    assert isinstance(dist.base_dist, Normal)
    assert dist.batch_shape == (5, 7)
    assert dist.event_shape == (1,)
    act = dist.sample()
    assert act.shape == (5, 7, 1)
    assert dist.log_prob(act).shape == (5, 7)


def test_gaussian_log_prob_by_hand():
    # Linear policy with zero weights: mean = bias, std = exp(log_std_init), per dimension.
    env = Spaces(BOX3, gym.spaces.Box(-1.0, 1.0, (2,), np.float32))
    policy = make_policy(env, hidden_sizes=[], log_std_init=math.log(2.0))
    with torch.no_grad():
        policy.net[0].weight.zero_()
        policy.net[0].bias.copy_(torch.tensor([1.0, -1.0]))
    act = torch.tensor([[[3.0, -1.0], [1.0, 1.0]]])  # (N=1, T=2, act_dim=2)
    logp = policy(torch.zeros(1, 2, 3)).log_prob(act)
    # sum_d [ -(a_d - mu_d)^2 / (2 sigma^2) - log sigma - log(2 pi) / 2 ], sigma = 2
    const = 2 * (-math.log(2.0) - 0.5 * math.log(2 * math.pi))
    expected = torch.tensor([[-(2.0**2) / 8 + const, -(2.0**2) / 8 + const]])
    assert_close(logp, expected)


def test_log_std_init_is_used(pendulum):
    policy = make_policy(pendulum, log_std_init=-1.25)
    assert_close(policy(torch.zeros(3)).base_dist.scale, torch.full((1,), math.exp(-1.25)))


@pytest.mark.parametrize("env_name", ["cartpole", "pendulum"])
def test_empty_hidden_sizes_is_a_linear_policy(env_name, request):
    env = request.getfixturevalue(env_name)
    policy = make_policy(env, hidden_sizes=[])
    obs_dim = env.single_observation_space.shape[0]
    out_dim = 2 if env_name == "cartpole" else 1
    layers = linears(policy)
    assert [(m.in_features, m.out_features) for m in layers] == [(obs_dim, out_dim)]
    assert len(list(policy.net.children())) == 1  # no activation anywhere
    # Affine: f(x) + f(y) = f(x + y) + f(0)
    x, y = torch.randn(obs_dim), torch.randn(obs_dim)
    f = policy.net
    assert_close(f(x) + f(y), f(x + y) + f(torch.zeros(obs_dim)))


@pytest.mark.parametrize(
    ("activation", "cls"), [("tanh", nn.Tanh), ("relu", nn.ReLU), ("elu", nn.ELU)]
)
def test_hidden_layers_and_activation(cartpole, activation, cls):
    policy = make_policy(cartpole, hidden_sizes=[8, 5], activation=activation)
    kinds = [type(m) for m in policy.net.children()]
    assert kinds == [nn.Linear, cls, nn.Linear, cls, nn.Linear]
    assert [(m.in_features, m.out_features) for m in linears(policy)] == [(4, 8), (8, 5), (5, 2)]


def test_a_single_env_works_too():
    env = gym.make("CartPole-v1")
    policy = make_policy(env, hidden_sizes=[])
    assert isinstance(policy(torch.zeros(4)), Categorical)
    env.close()


@pytest.mark.parametrize(
    ("obs_space", "act_space"),
    [
        (gym.spaces.Dict({"x": BOX3}), gym.spaces.Discrete(2)),
        (gym.spaces.Tuple((gym.spaces.Discrete(2), BOX3)), gym.spaces.Discrete(2)),
        (gym.spaces.Text(5), gym.spaces.Discrete(2)),
        (BOX3, gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.Discrete(2)))),
        (BOX3, gym.spaces.Dict({"a": gym.spaces.Discrete(2)})),
    ],
    ids=["dict-obs", "tuple-obs", "text-obs", "tuple-act", "dict-act"],
)
def test_unsupported_spaces_raise_a_one_line_policy_error(obs_space, act_space):
    with pytest.raises(PolicyError) as info:
        make_policy(Spaces(obs_space, act_space))
    message = str(info.value)
    assert message and "\n" not in message
    assert "not supported" in message


def test_unknown_activation_raises_policy_error(cartpole):
    with pytest.raises(PolicyError, match="activation"):
        make_policy(cartpole, activation="swishy")


@pytest.mark.parametrize("env_name", ["cartpole", "pendulum"])
def test_sample_draws_what_the_distribution_would(env_name, request):
    env = request.getfixturevalue(env_name)
    torch.manual_seed(0)
    policy = make_policy(env, hidden_sizes=[8])
    obs = torch.randn(64, env.single_observation_space.shape[0])
    for seed in range(3):
        torch.manual_seed(seed)
        fast = policy.sample(obs)
        torch.manual_seed(seed)
        slow = policy(obs).sample()
        assert fast.shape == slow.shape
        assert torch.equal(fast, slow)
