"""pgrun.cartpole.fast_step: bit-equal to gymnasium's CartPoleVectorEnv.step."""

import numpy as np
import pytest
from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv

from pgrun.cartpole import fast_step


@pytest.mark.parametrize(
    "options",
    [{}, {"sutton_barto_reward": True}, {"max_episode_steps": 30}],
    ids=["default", "sutton_barto", "short_limit"],
)
@pytest.mark.parametrize("integrator", ["euler", "semi-implicit-euler"])
def test_fast_step_is_gymnasiums_step_to_the_last_bit(options, integrator):
    """Two envs from one seed, the same random actions for 3000 steps (hundreds of episode
    ends, so terminations, truncations and autoresets all occur): every observation, reward
    and flag, the envs' states, step counts and RNGs stay exactly equal."""
    n = 16
    envs = []
    for _ in range(2):
        env = CartPoleVectorEnv(num_envs=n, **options)
        env.kinematics_integrator = integrator
        env.reset(seed=7)
        envs.append(env)
    ref, fast = envs
    step = fast_step(fast)
    rng = np.random.default_rng(0)
    ends = 0
    for t in range(3000):
        if t == 1500:  # a reset in between, as each batch of pgrun's episodes starts
            for env in envs:
                env.reset(seed=11)
        act = rng.integers(0, 2, size=n)
        want, got = ref.step(act), step(act)
        for a, b in zip(want[:4], got[:4], strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert np.array_equal(a, b), t
        ends += int(want[2].sum() + want[3].sum())
    assert np.array_equal(ref.state, fast.state) and np.array_equal(ref.steps, fast.steps)
    assert ref.np_random.random() == fast.np_random.random()
    assert ends > 500


def test_without_autoreset_each_copy_is_gymnasiums_until_its_first_end():
    """fast_step(autoreset=False), for batches of first episodes: against gymnasium's step with
    the same actions, every copy's observation, reward and flags are equal to the last bit up
    to and including the step its first episode ends; the env's RNG is not drawn from; the
    ended copies are marked, and the env's own step then resets them."""
    n = 32
    ref, fast = CartPoleVectorEnv(num_envs=n), CartPoleVectorEnv(num_envs=n)
    for env in (ref, fast):
        env.reset(seed=3)
    rng_before = fast.np_random.bit_generator.state
    step = fast_step(fast, autoreset=False)
    rng = np.random.default_rng(1)
    running = np.ones(n, dtype=bool)
    for _ in range(200):
        act = rng.integers(0, 2, size=n)
        want, got = ref.step(act), step(act)
        for a, b in zip(want[:4], got[:4], strict=True):
            assert np.array_equal(a[running], b[running])
        running &= ~(want[2] | want[3])
    assert not running.any()  # every copy ended (a random policy lasts about 20 steps)
    assert fast.np_random.bit_generator.state == rng_before
    assert fast.prev_done.all()
    obs, *_ = fast.step(np.zeros(n, dtype=np.int64))  # gymnasium's step: the autoresets
    assert np.abs(obs).max() <= 0.05 and not fast.prev_done.any()


def test_other_envs_keep_their_step():
    import gymnasium as gym

    env = gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync")
    assert fast_step(env) is None
    env.close()


@pytest.mark.parametrize("n", [16, 700], ids=["N16", "N700"])
def test_a_group_steps_each_seed_as_its_own_env(n):
    """pgrun.batched.CartPoleGroup: K = 3 seeds' envs stepped as one of 3 N copies, each
    copy's autoreset drawn from its own seed's env RNG (drawn ahead, a row of at least 4096
    doubles per seed), against the three envs stepped alone with the same random actions:
    every observation, reward and flag equal to the last bit, over enough steps that every
    seed's row is used up and drawn again, with each seed reset (a new
    generator) at its own times in between."""
    from pgrun.batched import CartPoleGroup

    K = 3
    alone = [CartPoleVectorEnv(num_envs=n, max_episode_steps=40) for _ in range(K)]
    merged = [CartPoleVectorEnv(num_envs=n, max_episode_steps=40) for _ in range(K)]
    for k in range(K):
        alone[k].reset(seed=100 + k)
        merged[k].reset(seed=100 + k)
    group = CartPoleGroup(merged)
    for k in range(K):
        group.load(k)
    rng = np.random.default_rng(1)
    resets = 0
    for t in range(3000):
        for k in range(K):
            if t == 700 * (k + 1):  # seed k's next batch restarts its copies
                alone[k].reset(seed=200 + k)
                merged[k].reset(seed=200 + k)
                group.load(k)
        act = rng.integers(0, 2, size=(K, n))
        got = group.step(act)
        for k in range(K):
            want = alone[k].step(act[k])
            for a, b in zip(want[:4], got, strict=True):
                assert np.array_equal(a, b[k]), (t, k)
        resets += int(np.count_nonzero(group.big.prev_done))
    assert resets * 4 > 2 * K * group.size  # every row used up and drawn again
