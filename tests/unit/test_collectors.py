"""The collectors: rollout=steps on a hand-made env whose every number is known (auto-reset,
carried observations, per-step flags, final observations, episode statistics), its
bootstrapping through the learner, and rollout=episodes as the notes' batch."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

import pgrun
from pgrun.collectors import EpisodeCollector, StepCollector
from pgrun.learner import Learner


class Countdown(gym.Env):
    """An episode of L = 1 + (reset seed % 4) steps; step t pays 10 L + t; observation [t, L].
    A reset without a seed keeps L, so after an auto-reset a copy runs the same episode again."""

    observation_space = gym.spaces.Box(0.0, 100.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self):
        self.length, self.t = 1, 0

    def _obs(self):
        return np.array([self.t, self.length], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self.length = 1 + seed % 4
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        reward = float(10 * self.length + self.t)
        self.t += 1
        return self._obs(), reward, self.t >= self.length, False, {}


COUNTDOWN = "PgrunTestCollect/Countdown-v0"
LIMIT2 = "PgrunTestCollect/CountdownLimit2-v0"  # the env's own time limit: 2 steps


@pytest.fixture(scope="module", autouse=True)
def registered_envs():
    for env_id, limit in ((COUNTDOWN, None), (LIMIT2, 2)):
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=Countdown, max_episode_steps=limit)
    yield
    for env_id in (COUNTDOWN, LIMIT2):
        gym.registry.pop(env_id, None)


def step_batches(env_id: str, steps: int, batches: int, num_envs: int = 4):
    env = pgrun.make_env(env_id, num_envs=num_envs, seed=0)
    torch.manual_seed(0)
    policy = pgrun.make_policy(env, hidden_sizes=[])
    collector = StepCollector(env, steps, seed=0)
    out = [collector.collect(policy, i) for i in range(batches)]
    env.close()
    return out, collector


# What one copy of Countdown does over 2 batches of T = 5 calls, by its episode length L:
# mask (0: the call that resets the copy), terminated steps, the row's first step's time in
# its episode (start), and the observations after each done step (row ends included).
EXPECTED = {
    1: ([1, 0, 1, 0, 1], [0, 2, 4], 0, [[1, 1], [1, 1], [1, 1]]),
    2: ([1, 1, 0, 1, 1], [1, 4], 0, [[2, 2], [2, 2]]),
    3: ([1, 1, 1, 0, 1], [2], 0, [[3, 3], [1, 3]]),
    4: ([1, 1, 1, 1, 0], [3], 0, [[4, 4]]),
}
EXPECTED_2 = {  # the second batch
    1: ([0, 1, 0, 1, 0], [1, 3], 0, [[1, 1], [1, 1]]),
    2: ([0, 1, 1, 0, 1], [2], 0, [[2, 2], [1, 2]]),
    3: ([1, 1, 0, 1, 1], [1], 1, [[3, 3], [2, 3]]),
    4: ([1, 1, 1, 1, 0], [3], 0, [[4, 4]]),
}


class ValueOfObs(nn.Module):
    """V([t, L]) = 100 t + L: every bootstrap value says which observation it came from."""

    def forward(self, obs):
        return 100 * obs[..., 0] + obs[..., 1]


def test_steps_by_hand():
    """Auto-reset, the carried observation, every per-step field, for each episode length."""
    (first, second), _ = step_batches(COUNTDOWN, 5, 2)
    for (batch, _), expected in ((first, EXPECTED), (second, EXPECTED_2)):
        lengths = batch.obs[:, :, 1].max(1).values.long().tolist()
        assert sorted(lengths) == [1, 2, 3, 4]
        finals = batch.final_obs.tolist()
        counts = batch.done.sum(1).tolist()
        for i, length in enumerate(lengths):
            mask, terminal, start, final = expected[length]
            assert batch.mask[i].tolist() == mask, length
            assert torch.nonzero(batch.terminated[i]).flatten().tolist() == terminal, length
            assert not batch.truncated[i].any()
            assert int(batch.start[i]) == start
            lo = sum(counts[:i])
            assert finals[lo : lo + counts[i]] == final, length
            # rewards 10 L + t at the valid steps, t the time within the episode
            valid = batch.mask[i] > 0
            t_in_episode = batch.obs[i, :, 0][valid]
            assert batch.rew[i][valid].tolist() == (10 * length + t_in_episode).tolist()
            assert batch.rew[i][~valid].abs().sum() == 0
        assert batch.num_steps == int(batch.mask.sum())
    # the episodes that ended in the first batch: 3 + 2 + 1 + 1, their whole returns
    _, episodes = first
    assert sorted(episodes.lengths.tolist()) == [1, 1, 1, 2, 2, 3, 4]
    assert sorted(episodes.returns.tolist()) == [10, 10, 10, 41, 41, 93, 166]
    # the cut at the end of the batch is bootstrapped with V of the carried observation
    batch = first[0]
    variant = type("V", (), {"weights": "rtg", "baseline": "value", "normalize_advantages": 0,
                             "gae_lambda": None})()  # fmt: skip
    boot = Learner(variant, 0.9, value=ValueOfObs()).boot(batch)
    i = batch.obs[:, 0, 1].tolist().index(3.0)
    assert boot[i].tolist() == [0, 0, 0, 0, 103.0]  # V([1, 3]); the terminal end at 2 gets 0
    assert boot.sum() == 103.0
    # the second batch ends L = 3's carried episode (steps 1 and 2 of it are in it): 30 + 31 + 32
    _, episodes = second
    assert 93.0 in episodes.returns.tolist() and 3 in episodes.lengths.tolist()


def test_time_limits_and_rollout_ends_are_bootstrapped_with_v():
    """Limit 2: episodes of L = 3, 4 are truncated after 2 steps, inside the batch; each gets
    V(the observation after it) = V([2, L]); an episode cut by the end of the batch gets V of
    the carried observation; a terminated one gets 0 (L = 1, 2)."""
    ((batch, _),), _ = step_batches(LIMIT2, 5, 1)
    variant = type("V", (), {"weights": "rtg", "baseline": "value", "normalize_advantages": 0,
                             "gae_lambda": 0.95})()  # fmt: skip
    learner = Learner(variant, 0.9, value=ValueOfObs())
    boot = learner.boot(batch)
    lengths = batch.obs[:, :, 1].max(1).values.long().tolist()
    finals = iter(ValueOfObs()(batch.final_obs).tolist())
    for i, length in enumerate(lengths):
        for d in torch.nonzero(batch.done[i]).flatten().tolist():
            v = next(finals)  # V of the observation after done step d
            assert boot[i, d] == (0.0 if batch.terminated[i, d] else v)
        if length >= 3:  # cut by the limit after 2 steps, twice (a reset call in between)
            assert torch.nonzero(batch.truncated[i]).flatten().tolist() == [1, 4]
            assert not batch.terminated[i].any()
            assert boot[i, 1] == boot[i, 4] == 200 + length
        else:  # L = 1, 2 terminate (L = 2 at the limit too): never bootstrapped
            assert boot[i, batch.terminated[i]].abs().sum() == 0
    # L = 3 at the end of the batch: (t = 1, truncated at 4): row end and time limit coincide
    assert boot.sum() > 0
    targets = learner.targets(batch)
    assert targets.adv.shape == batch.rew.shape and torch.isfinite(targets.target).all()


def test_episodes_collector_is_the_notes_batch():
    env = pgrun.make_env("CartPole-v1", num_envs=5, seed=0)
    torch.manual_seed(0)
    policy = pgrun.make_policy(env, hidden_sizes=[8])
    batch, episodes = EpisodeCollector(env, 30, seed=0).collect(policy, 0)
    assert torch.equal(episodes.returns, batch.returns) and torch.equal(
        episodes.lengths, batch.lengths
    )
    assert batch.done.sum(1).tolist() == [1] * 5 and batch.start.tolist() == [0] * 5
    env.close()


def test_steps_collector_restarts_its_copies_after_load():
    """Resume: the copies' episodes restart, seeded from the iteration, exactly as a fresh
    collector's first batch at that iteration."""
    env = pgrun.make_env("CartPole-v1", num_envs=3, seed=0)
    torch.manual_seed(0)
    policy = pgrun.make_policy(env, hidden_sizes=[8])
    c = StepCollector(env, 20, seed=0)
    c.collect(policy, 0)
    c.load_state_dict(c.state_dict())
    torch.manual_seed(1)
    resumed, _ = c.collect(policy, 1)
    fresh = StepCollector(env, 20, seed=0)
    torch.manual_seed(1)
    again, _ = fresh.collect(policy, 1)
    assert torch.equal(resumed.obs, again.obs) and torch.equal(resumed.act, again.act)
    assert resumed.start.tolist() == [0, 0, 0]
    env.close()
