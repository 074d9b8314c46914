"""env.backend=envpool: the same episodes' statistics as gymnasium, seeded batches, one-line errors.

The statistical tests run one fixed policy (an untrained pgrun policy, torch seed 0) on both
backends, on the same batch seeds, and compare the episodes' returns and lengths:

- Welch's test on the means: |mean_g - mean_e| <= Z * sqrt(var_g / n_g + var_e / n_e) with
  Z = 3.29 (two-sided p = 0.001: a false alarm once in a thousand seeds; the seeds are fixed, so
  the test's outcome is too).
- The two-sample Kolmogorov-Smirnov statistic: D = max |F_g - F_e| <= 1.95 sqrt((n_g + n_e) /
  (n_g n_e)) (p = 0.001, asymptotic; conservative for the integer-valued lengths).

Power (from the measured spreads): CartPole-v1, 1024 episodes each, return std about 10: the mean
test has SE 0.44 and detects a shift of (3.29 + 1.64) x 0.44 = 2.2 steps (11% of the mean 19.6)
with 95% probability; Hopper-v5, 256 episodes each, return std about 2 (mean 6.5), length std
3.4 (mean 12.4): shifts of 0.86 in return (13%) and 1.5 steps in length (12%).

Atari through envpool's own preprocessing is checked for its layout and time limit only: the
Atari emulator steps at a few hundred agent steps per second on a 2-core machine, too slow for a
test of its return distribution in the suite.
"""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import pgrun
from pgrun.envs import EnvError, make_env, time_limit

pytest.importorskip("envpool", reason="the envpool extra is not installed")

Z = 3.29  # two-sided p = 0.001
KS_C = 1.95  # c(0.001) of the two-sample KS test


def episodes(backend: str, env_id: str, batches: int, n: int, horizon: int | None = None):
    """(returns, lengths) of `batches` batches of `n` episodes of a fixed untrained policy."""
    env = make_env(env_id, num_envs=n, seed=0, backend=backend, horizon=horizon)
    torch.manual_seed(0)
    policy = pgrun.make_policy(env)
    T = horizon or time_limit(env)
    returns, lengths = [], []
    torch.manual_seed(123)
    with torch.inference_mode():
        for b in range(batches):
            batch = pgrun.collect_episodes(env, policy, horizon=T, seed=1000 + b)
            returns.append(batch.returns.numpy())
            lengths.append(batch.lengths.numpy().astype(np.float64))
    env.close()
    return np.concatenate(returns), np.concatenate(lengths)


def assert_same_distribution(a: np.ndarray, b: np.ndarray, what: str) -> None:
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    assert abs(a.mean() - b.mean()) <= Z * se, (what, a.mean(), b.mean(), se)
    grid = np.union1d(a, b)
    cdf_a = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    d = np.abs(cdf_a - cdf_b).max()
    assert d <= KS_C * math.sqrt((len(a) + len(b)) / (len(a) * len(b))), (what, d)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_cartpole_episodes_match_gymnasium():
    gym_ret, gym_len = episodes("gymnasium", "CartPole-v1", 16, 64)
    pool_ret, pool_len = episodes("envpool", "CartPole-v1", 16, 64)
    assert len(gym_ret) == len(pool_ret) == 1024
    assert_same_distribution(gym_ret, pool_ret, "return")
    assert_same_distribution(gym_len, pool_len, "length")


def test_hopper_episodes_match_gymnasium():
    pytest.importorskip("mujoco")
    gym_ret, gym_len = episodes("gymnasium", "Hopper-v5", 8, 32)
    pool_ret, pool_len = episodes("envpool", "Hopper-v5", 8, 32)
    assert_same_distribution(gym_ret, pool_ret, "return")
    assert_same_distribution(gym_len, pool_len, "length")


def test_the_statistical_check_sees_a_different_env():
    """The same check tells CartPole-v1 from CartPole cut at 25 steps, whose mean return is 10%
    lower (17.5 against 19.5): the comparison has the power to fail."""
    gym_ret, _ = episodes("gymnasium", "CartPole-v1", 16, 64)
    cut_ret, _ = episodes("envpool", "CartPole-v1", 16, 64, horizon=25)
    with pytest.raises(AssertionError):
        assert_same_distribution(gym_ret, cut_ret, "return")


def test_seeded_batches_repeat_and_unseeded_ones_continue():
    env = make_env("CartPole-v1", num_envs=8, seed=0, backend="envpool")
    policy = pgrun.make_policy(env)

    def batch(seed):
        torch.manual_seed(7)
        return pgrun.collect_episodes(env, policy, 500, seed=seed)

    a, b, c = batch(3), batch(3), batch(4)
    assert torch.equal(a.obs, b.obs) and torch.equal(a.rew, b.rew) and torch.equal(a.act, b.act)
    assert not torch.equal(a.obs[:, 0], c.obs[:, 0])
    first, _ = env.reset(seed=5)
    again, _ = env.reset()  # no seed: the next starts of the same streams
    assert not np.array_equal(first, again)
    # copy i of a pool seeded s starts where copy 0 of a pool seeded s + i does
    single = make_env("CartPole-v1", num_envs=1, seed=0, backend="envpool")
    np.testing.assert_array_equal(single.reset(seed=5 + 3)[0][0], first[3])
    env.close()
    single.close()


def test_terminated_truncated_and_final_observations():
    env = make_env("CartPole-v1", num_envs=4, seed=0, backend="envpool", horizon=6)
    assert time_limit(env) == 6
    obs, _ = env.reset(seed=0)
    act = np.ones(4, dtype=np.int64)  # always push right: no pole falls within 6 steps
    for _ in range(5):
        obs, rew, term, trunc, _ = env.step(act)
        assert not (term.any() or trunc.any())
    final, rew, term, trunc, _ = env.step(act)
    assert trunc.all() and not term.any() and (rew == 1).all()
    after, rew, term, trunc, _ = env.step(act)  # the next step resets every copy (reward 0)
    assert (rew == 0).all() and not (term.any() or trunc.any())
    assert np.abs(after).max() <= 0.05 < np.abs(final).max()  # a fresh start, not a step on
    # In a batch: a pole that falls ends its episode as terminated, with its final observation.
    policy = pgrun.make_policy(env)
    torch.manual_seed(0)
    batch = pgrun.collect_episodes(make_env("CartPole-v1", 4, 0, backend="envpool"), policy, 500, 1)
    assert batch.terminated.any(1).all() and not batch.truncated.any()  # (N, T_b) per step
    assert (batch.final_obs[:, 2].abs() > 0.2).any() or (batch.final_obs[:, 0].abs() > 2.4).any()
    env.close()


def test_mujoco_spaces_and_options():
    pytest.importorskip("mujoco")
    pool = make_env("HalfCheetah-v5", num_envs=2, seed=0, backend="envpool", ctrl_cost_weight=0.5)
    ref = make_env("HalfCheetah-v5", num_envs=2, seed=0)
    assert pool.single_observation_space.shape == ref.single_observation_space.shape == (17,)
    assert pool.single_action_space.shape == ref.single_action_space.shape == (6,)
    np.testing.assert_array_equal(pool.single_action_space.low, ref.single_action_space.low)
    assert time_limit(pool) == time_limit(ref) == 1000
    obs, rew, term, trunc, _ = pool.step(np.zeros((2, 6), dtype=np.float32))
    assert obs.shape == (2, 17) and rew.shape == (2,) and term.dtype == trunc.dtype == bool
    pool.close()
    ref.close()


def test_atari_layout_matches_the_gymnasium_pipeline():
    pytest.importorskip("ale_py")
    pytest.importorskip("cv2")
    options = {"atari_preprocessing": True, "frame_stack": 4, "horizon": 3}
    pool = make_env("ALE/Pong-v5", num_envs=2, seed=0, backend="envpool", **options)
    ref = make_env("ALE/Pong-v5", num_envs=1, seed=0, **options)
    assert pool.single_observation_space == ref.single_observation_space  # (4, 84, 84) uint8
    assert pool.single_action_space == ref.single_action_space
    assert time_limit(pool) == 3
    obs, _ = pool.reset(seed=1)
    assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
    for _ in range(3):
        obs, rew, term, trunc, _ = pool.step(np.zeros(2, dtype=np.int64))
    assert trunc.all() and not term.any()
    pool.close()
    ref.close()


@pytest.mark.parametrize(
    ("env_id", "options", "says"),
    [
        ("Pendulum-v1", {}, ["Pendulum-v1", "env.backend=gymnasium"]),
        ("CartPole-v1", {"no_such_option": 1}, ["no_such_option", "env.kwargs"]),
        ("CartPole-v1", {"frame_stack": 2}, ["frame_stack", "gymnasium"]),
        ("CartPole-v1", {"vectorization": "sync"}, ["vectorization=sync", "auto"]),
        ("ALE/Pong-v5", {}, ["atari_preprocessing=true"]),
    ],
)
def test_what_envpool_cannot_do_is_one_line(env_id, options, says):
    with pytest.raises(EnvError) as info:
        make_env(env_id, num_envs=2, seed=0, backend="envpool", **options)
    message = str(info.value)
    assert "\n" not in message
    for part in says:
        assert part in message


def test_a_missing_extra_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "envpool", None)  # import envpool raises ImportError
    with pytest.raises(EnvError, match=r"needs envpool: pip install -e '\.\[envpool\]'"):
        make_env("CartPole-v1", num_envs=2, seed=0, backend="envpool")


def test_auto_picks_envpool_where_it_takes_the_id():
    from pgrun.envs import resolve_backend

    assert resolve_backend("auto", "CartPole-v1") == "envpool"
    assert resolve_backend("auto", "ALE/Pong-v5") == "envpool"
    assert resolve_backend("auto", "Pendulum-v1") == "gymnasium"
    assert resolve_backend("gymnasium", "CartPole-v1") == "gymnasium"
    assert resolve_backend("auto", "CartPole-v1", "async") == "gymnasium"  # a gymnasium option
    with pytest.raises(EnvError, match="gymnasium, envpool, auto"):
        resolve_backend("fast", "CartPole-v1")


def test_an_envpool_run_resumed_after_sigkill_is_bit_exact(tmp_path):
    from conftest import comparable_scalars
    from test_resume import PGRUN, checkpoints, pgrun, same_series

    args = ["env.backend=envpool", "batch_episodes=8", "total_steps=4000", "checkpoint.every=2"]
    args.append("progress=false")
    done = pgrun(*args, "hydra.run.dir=reference", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "run"
    proc = subprocess.Popen([PGRUN, *args, f"hydra.run.dir={run}"], cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not checkpoints(run) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it was killed"
    assert checkpoints(run), "no checkpoint before the kill"
    assert pgrun(f"resume={run}", cwd=tmp_path).returncode == 0
    same_series(comparable_scalars(run), comparable_scalars(tmp_path / "reference"))


def test_the_command_without_the_extra_says_so_in_one_line(tmp_path):
    from conftest import run_pgrun

    (tmp_path / "stub" / "envpool").mkdir(parents=True)  # an envpool that fails to import
    (tmp_path / "stub" / "envpool" / "__init__.py").write_text('raise ImportError("no envpool")\n')
    done = run_pgrun(
        ["env.backend=envpool", "total_steps=200"],
        tmp_path,
        env={"PYTHONPATH": str(tmp_path / "stub")},
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "pgrun: error: env.backend=envpool needs envpool: pip install -e '.[envpool]'"
    )
    assert not (tmp_path / "outputs").exists()


def test_the_steps_collector_runs_on_envpool():
    from pgrun.collectors import StepCollector

    env = make_env("CartPole-v1", num_envs=4, seed=0, backend="envpool")
    torch.manual_seed(0)
    policy = pgrun.make_policy(env)
    collector = StepCollector(env, steps=64, seed=0)
    lengths = []
    for iteration in range(3):
        batch, episodes = collector.collect(policy, iteration)
        assert batch.obs.shape == (4, 64, 4)
        # a copy's reset call after each episode end is masked, with reward 0: at most one
        # masked slot per ended episode, plus one per row carried from the previous batch
        assert (batch.rew[batch.mask == 0] == 0).all()
        assert 4 * 64 - len(episodes) - 4 <= batch.mask.sum() <= 4 * 64
        assert int(batch.terminated.sum()) == len(episodes)  # CartPole ends by falling here
        lengths += episodes.lengths.tolist()
    assert lengths and all(1 <= n <= 3 * 64 for n in lengths)
    env.close()
