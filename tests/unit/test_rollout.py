"""collect_episodes: shapes, masks, episode ends and seeding, on real and hand-made envs."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.testing import assert_close

import pgrun
from pgrun.rollout import Batch, collect_episodes

# --- hand-made environments -------------------------------------------------------------------------


class Countdown(gym.Env):
    """An episode of L = 1 + (reset seed % 4) steps; step t pays 10 * L + t.

    The observation is [t, L] (t = steps taken so far); the action is ignored. A reset without a
    seed keeps L, so after an autoreset a copy runs the same episode again.
    """

    observation_space = gym.spaces.Box(0.0, 100.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self):
        self.length = 1
        self.t = 0

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


class Echo(gym.Env):
    """Pays the action it receives (a 1-D Box in [-1, 1]); three steps per episode."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(1, np.float32), float(action[0]), self.t >= 3, False, {}


COUNTDOWN = "PgrunTest/Countdown-v0"
COUNTDOWN_LIMIT2 = "PgrunTest/CountdownLimit2-v0"  # the env's own time limit: 2 steps
ECHO = "PgrunTest/Echo-v0"


@pytest.fixture(scope="module", autouse=True)
def registered_envs():
    specs = {
        COUNTDOWN: (Countdown, None),
        COUNTDOWN_LIMIT2: (Countdown, 2),
        ECHO: (Echo, None),
    }
    for env_id, (entry_point, limit) in specs.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point, max_episode_steps=limit)
    yield
    for env_id in specs:
        gym.registry.pop(env_id, None)


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def countdown_batch(env_id=COUNTDOWN, horizon=6, num_envs=3, seed=0) -> Batch:
    env = pgrun.make_env(env_id, num_envs=num_envs, seed=seed)
    torch.manual_seed(0)
    policy = pgrun.make_policy(env, hidden_sizes=[])
    try:
        return collect_episodes(env, policy, horizon=horizon, seed=seed)
    finally:
        env.close()


# --- the hand-made Countdown env: every number is known --------------------------------------------


def test_countdown_batch_exactly():
    # seeds 0, 1, 2 -> lengths 1, 2, 3; rewards 10, 20 21, 30 31 32; T_b = 3 < horizon 6.
    b = countdown_batch()
    assert_close(b.rew, t([[10, 0, 0], [20, 21, 0], [30, 31, 32]]))
    assert_close(b.mask, t([[1, 0, 0], [1, 1, 0], [1, 1, 1]]))
    assert b.terminated.any(1).tolist() == [True, True, True]
    assert b.truncated.any(1).tolist() == [False, False, False]
    assert b.lengths.tolist() == [1, 2, 3]
    assert_close(b.returns, t([10, 41, 93]))
    assert b.num_steps == 6
    assert b.num_episodes == 3
    # s_t = [t, L] on valid steps; the final observation is [L, L].
    for i, length in enumerate([1, 2, 3]):
        assert_close(b.obs[i, :length], t([[s, length] for s in range(length)]))
    assert_close(b.final_obs, t([[1, 1], [2, 2], [3, 3]]))


def test_countdown_horizon_cut():
    # horizon 2: the 3-step episode is cut (truncated); the 2-step one ends on its own exactly
    # at the horizon and stays terminated.
    b = countdown_batch(horizon=2)
    assert_close(b.rew, t([[10, 0], [20, 21], [30, 31]]))
    assert_close(b.mask, t([[1, 0], [1, 1], [1, 1]]))
    assert b.terminated.any(1).tolist() == [True, True, False]
    assert b.truncated.any(1).tolist() == [False, False, True]
    assert_close(b.final_obs, t([[1, 1], [2, 2], [2, 3]]))


def test_countdown_env_time_limit_is_a_truncation():
    # The env's own 2-step limit: the 3-step episode is truncated by the env; the 2-step one
    # terminates on the same step the limit is hit, which counts as a termination.
    b = countdown_batch(COUNTDOWN_LIMIT2, horizon=6)
    assert_close(b.rew, t([[10, 0], [20, 21], [30, 31]]))
    assert b.terminated.any(1).tolist() == [True, True, False]
    assert b.truncated.any(1).tolist() == [False, False, True]


def test_horizon_defaults_to_the_env_time_limit():
    b = countdown_batch(COUNTDOWN_LIMIT2, horizon=None)
    assert b.rew.shape == (3, 2)
    assert b.truncated.any(1).tolist() == [False, False, True]


def test_no_time_limit_and_no_horizon_is_an_error():
    with pytest.raises(ValueError, match="horizon"):
        countdown_batch(COUNTDOWN, horizon=None)


def test_padding_rewards_are_zero_although_the_env_keeps_paying():
    # After its end a copy is reset and runs again (paying 10 * L + t); none of that may leak.
    b = countdown_batch(num_envs=4)  # lengths 1, 2, 3, 4
    assert b.lengths.tolist() == [1, 2, 3, 4]
    assert torch.all(b.rew[b.mask == 0] == 0)
    assert_close(b.returns, t([10, 20 + 21, 30 + 31 + 32, 40 + 41 + 42 + 43]))


def test_padding_observations_are_zero_as_documented():
    b = countdown_batch()
    assert torch.all(b.obs[b.mask == 0] == 0)


# --- CartPole ----------------------------------------------------------------------------------------


def cartpole_batch(num_envs=6, horizon=None, seed=0, policy_seed=0) -> Batch:
    env = pgrun.make_env("CartPole-v1", num_envs=num_envs, seed=seed)
    torch.manual_seed(policy_seed)
    policy = pgrun.make_policy(env, hidden_sizes=[16])
    try:
        return collect_episodes(env, policy, horizon=horizon, seed=seed)
    finally:
        env.close()


@pytest.fixture(scope="module")
def cartpole() -> Batch:
    return cartpole_batch()


def test_cartpole_shapes_and_dtypes(cartpole):
    b = cartpole
    n, tb = b.rew.shape
    assert n == 6
    assert tb == int(b.lengths.max())
    assert b.obs.shape == (n, tb, 4) and b.obs.dtype == torch.float32
    assert b.act.shape == (n, tb) and b.act.dtype == torch.int64
    assert b.mask.shape == (n, tb) and b.rew.dtype == torch.float32
    assert b.terminated.shape == b.truncated.shape == (n, tb)
    assert b.final_obs.shape == (n, 4) and b.start.tolist() == [0] * n


def test_episode_flags_sit_on_each_rows_last_step(cartpole):
    """The notes' batch: one episode per row, so the per-step flags mark its last valid step,
    exactly one of them, and `done` is that step."""
    b = cartpole
    last = torch.arange(b.rew.shape[1])[None, :] == (b.lengths - 1)[:, None]
    assert torch.equal(b.terminated | b.truncated, last)
    assert not torch.any(b.terminated & b.truncated)
    assert torch.equal(b.done, last)


def test_mask_is_a_prefix_of_ones(cartpole):
    b = cartpole
    tb = b.rew.shape[1]
    for i, length in enumerate(b.lengths.tolist()):
        assert length >= 1
        expected = torch.cat([torch.ones(length), torch.zeros(tb - length)])
        assert_close(b.mask[i], expected)


def test_cartpole_rewards(cartpole):
    b = cartpole
    assert torch.all(b.rew[b.mask == 0] == 0)
    assert torch.all(b.rew[b.mask == 1] == 1)  # CartPole pays +1 a step
    assert_close(b.returns, b.rew.sum(1))
    assert_close(b.returns, b.lengths.float())
    assert b.num_steps == int(b.lengths.sum())


def test_every_episode_ends_exactly_once(cartpole):
    b = cartpole
    assert not torch.any(b.terminated.any(1) & b.truncated.any(1))
    assert torch.all(b.terminated.any(1) | b.truncated.any(1))


def test_cartpole_horizon_cut():
    b = cartpole_batch(num_envs=8, horizon=10)
    assert b.rew.shape[1] <= 10
    assert not torch.any(b.terminated.any(1) & b.truncated.any(1))
    assert torch.all(b.terminated.any(1) | b.truncated.any(1))
    assert b.truncated.any(1).any(), "a random CartPole policy keeps most poles up for 10 steps"
    assert torch.all(b.lengths[b.truncated.any(1)] == 10)
    assert torch.all(b.terminated.any(1)[b.lengths < 10])


def test_same_seed_same_batch(cartpole):
    again = cartpole_batch()
    for name in Batch.__dataclass_fields__:
        assert torch.equal(getattr(again, name), getattr(cartpole, name)), name


def test_another_seed_another_batch(cartpole):
    other = cartpole_batch(seed=1)
    assert not torch.equal(other.obs[:, 0], cartpole.obs[:, 0])


def test_seeded_collection_repeats_on_the_same_env():
    env = pgrun.make_env("CartPole-v1", num_envs=4, seed=0)
    policy = pgrun.make_policy(env, hidden_sizes=[])
    batches = []
    for _ in range(2):
        torch.manual_seed(3)
        batches.append(collect_episodes(env, policy, seed=7))
    env.close()
    for name in Batch.__dataclass_fields__:
        assert torch.equal(getattr(batches[0], name), getattr(batches[1], name)), name


# --- Box actions -----------------------------------------------------------------------------------


def far_out_policy(env, mean: float, log_std: float = -0.5):
    """A linear Gaussian policy whose mean is `mean` whatever the observation."""
    policy = pgrun.make_policy(env, hidden_sizes=[], log_std_init=log_std)
    with torch.no_grad():
        policy.net[0].weight.zero_()
        policy.net[0].bias.fill_(mean)
    return policy


def test_pendulum_keeps_the_unclipped_sample():
    env = pgrun.make_env("Pendulum-v1", num_envs=3, seed=0)
    policy = far_out_policy(env, mean=10.0)
    torch.manual_seed(0)
    b = collect_episodes(env, policy, horizon=20, seed=0)
    env.close()
    assert b.act.shape == (3, 20, 1) and b.act.dtype == torch.float32
    assert b.obs.shape == (3, 20, 3)
    # mean 10, std exp(-0.5) ~ 0.61: every sample is far above the bound 2.
    assert torch.all(b.act > 5.0)
    assert torch.all(b.truncated.any(1)) and not torch.any(b.terminated.any(1))

    # Replaying copy 0 with the clipped actions reproduces its rewards and observations.
    single = gym.make("Pendulum-v1")
    obs, _ = single.reset(seed=0)
    for step in range(20):
        assert_close(b.obs[0, step], torch.as_tensor(obs, dtype=torch.float32))
        obs, rew, *_ = single.step(np.clip(b.act[0, step].numpy(), -2.0, 2.0))
        assert b.rew[0, step].item() == pytest.approx(rew, rel=1e-5, abs=1e-5)
    single.close()


@pytest.mark.parametrize(("mean", "paid"), [(5.0, 1.0), (-5.0, -1.0)])
def test_the_env_receives_clipped_actions(mean, paid):
    env = pgrun.make_env(ECHO, num_envs=2, seed=0)
    policy = far_out_policy(env, mean=mean)
    torch.manual_seed(0)
    b = collect_episodes(env, policy, horizon=5, seed=0)
    env.close()
    assert b.act.shape == (2, 3, 1)
    assert torch.all(b.act.abs() > 2.0)  # the batch keeps the sample...
    assert_close(b.rew, torch.full((2, 3), paid))  # ...the env saw it clipped to the bound


def test_actions_inside_the_bounds_pass_unchanged():
    env = pgrun.make_env(ECHO, num_envs=2, seed=0)
    policy = far_out_policy(env, mean=0.2, log_std=-3.0)  # std 0.05: inside [-1, 1]
    torch.manual_seed(0)
    b = collect_episodes(env, policy, horizon=5, seed=0)
    env.close()
    assert torch.all(b.act.abs() < 1.0)
    assert_close(b.rew, b.act[..., 0])


class DistributionOnly(torch.nn.Module):
    """Wraps a policy and hides its `sample` method: only `policy(obs)` is left."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, obs):
        return self.inner(obs)


class SampleOnly(DistributionOnly):
    """Wraps a policy and keeps its `sample` (the Distribution's draw) but hides `act` (the
    rollout's cheaper draw, from the same distribution: tests/unit/test_act.py)."""

    def sample(self, obs):
        return self.inner.sample(obs)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_a_policy_without_sample_gives_the_same_batch(env_id):
    batches = []
    for wrap in (False, True):
        env = pgrun.make_env(env_id, num_envs=3, seed=0)
        torch.manual_seed(0)
        policy = pgrun.make_policy(env, hidden_sizes=[8])
        torch.manual_seed(1)
        batches.append(
            collect_episodes(
                env, DistributionOnly(policy) if wrap else SampleOnly(policy), horizon=30, seed=0
            )
        )
        env.close()
    for name in Batch.__dataclass_fields__:
        assert torch.equal(getattr(batches[0], name), getattr(batches[1], name)), name


class CountingCountdown(Countdown):
    """Countdown that counts the steps it is asked for."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def step(self, action):
        self.calls += 1
        return super().step(action)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_finished_copies_are_not_stepped_in_a_sync_env(mode):
    """A SyncVectorEnv's copy stops being stepped when its episode ends (lengths 1..4 here,
    the batch lasts 4 steps); the batch is the same as through env.step (the async env)."""
    vec = gym.vector.SyncVectorEnv if mode == "sync" else gym.vector.AsyncVectorEnv
    env = vec([CountingCountdown for _ in range(4)])
    policy = pgrun.make_policy(env, hidden_sizes=[])
    torch.manual_seed(0)
    batch = collect_episodes(env, policy, horizon=10, seed=0)  # copy i: seed i, length 1 + i
    assert batch.lengths.tolist() == [1, 2, 3, 4]
    assert batch.terminated.any(1).all()
    assert batch.rew.tolist() == [
        [10.0, 0.0, 0.0, 0.0],
        [20.0, 21.0, 0.0, 0.0],
        [30.0, 31.0, 32.0, 0.0],
        [40.0, 41.0, 42.0, 43.0],
    ]
    assert batch.final_obs.tolist() == [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]]
    if mode == "sync":
        assert [copy.unwrapped.calls for copy in env.envs] == [1, 2, 3, 4]
        batch = collect_episodes(env, policy, horizon=10, seed=0)  # reset, the same again
        assert [copy.unwrapped.calls for copy in env.envs] == [2, 4, 6, 8]
        assert batch.lengths.tolist() == [1, 2, 3, 4]
    env.close()
