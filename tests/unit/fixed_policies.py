"""Policies whose output is fixed (zero weights, chosen biases) for the tests of the rollout's
draws (test_act.py, test_draw.py), and the tolerances those tests share: M = 40,000 draws in
one batch, every frequency within Z = 4.5 standard errors."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from pgrun.policies import make_policy

M = 40_000
Z = 4.5
BOX3 = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)


class Spaces(gym.Env):
    def __init__(self, observation_space, action_space):
        self.observation_space, self.action_space = observation_space, action_space


def linear(action_space, bias, **kwargs):
    """A linear policy on BOX3 observations whose output is `bias` for every observation."""
    policy = make_policy(Spaces(BOX3, action_space), hidden_sizes=[], **kwargs)
    with torch.no_grad():
        policy.net[0].weight.zero_()
        policy.net[0].bias.copy_(torch.tensor(bias))
    return policy
