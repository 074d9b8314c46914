"""pgrun against Stable-Baselines3 and the raw environment, measured side by side.

    make bench                          # the full table (installs the `bench` extra first)
    python benchmarks/bench.py --quick  # 2 seeds, short throughput runs, no sweep row
    python benchmarks/bench.py --rows 2,4 --no-sb3

Prints one markdown table. Every row is measured in this invocation, on this machine, so the
ratios compare like with like; each row states the target of the benchmark issue and whether it
is met. The rows:

1. Time to solve CartPole-v1: training wall seconds and environment steps until the mean
   episodic return first reaches 475, median and range over the seeds.
   - pgrun (rtg_baseline and off_policy, the default config otherwise) is trained in this
     process by pgrun.trainer.train on a config composed with Hydra's compose API. A batch
     "solves" when its charts/episodic_return (the mean return of its N = 16 episodes) is
     >= 475; the time is read back from the run's TensorBoard file as env_steps / charts/SPS
     at that batch, i.e. seconds since the trainer's clock started (after the env, the policy
     and the logger are built), collection and updates included. `whole budget` is the
     trainer's own env steps/s over its full budget (its last charts/SPS), at N = 16.
   - pgrun trpo runs `experiment=cartpole_trpo` (GAE with a learned V, one TRPO step a batch).
   - SB3 PPO and A2C, and sb3-contrib's TRPO, run the RL-Zoo CartPole-v1 hyper-parameters
     (below). A callback keeps the returns of the last 20 finished episodes and stops training
     the first time their mean is >= 475; its clock starts when learn() starts training (after
     the model is built).
   - pgrun rtg_baseline again with env.backend=envpool (where the envpool extra is installed);
     the speed-up row gives SB3 PPO's median time over each pgrun backend's.
   The seeds are interleaved (seed 0 of every method, then seed 1, ...) so that load from
   elsewhere on the machine falls on all methods alike. torch runs on one thread throughout
   (pgrun's default `threads=1`; SB3 is given the same).
2. Throughput on CartPole-v1 at N copies (N = batch_episodes), counting valid environment
   steps (steps that belong to an episode of a batch), against the raw vector env with random
   actions, and against the raw env plus the policy's per-step draw as pgrun's collectors make
   it (pgrun.draw: the MLP's forward and the draw in numpy from a copy of the weights), the
   floor for a runner that steps this env from Python with that draw; every step of it counts.
   - `training run`: a whole default run (`pgrun batch_episodes=N`, 150k env steps; collection,
     updates, diagnostics, logging and checkpoints), env steps / training seconds: the speed a
     user sees, with the episodes growing from about 20 steps to 500 as the policy learns.
   - `untrained`: collect_episodes + batch_advantages + trainer.update on the freshly
     initialised policy with the learning rate 0, so the episodes stay about 20 steps long: the
     worst case for N copies in lockstep, since a batch lasts as long as its longest episode.
     `lockstep` is the fraction of the stepped env slots (N x the batch's longest episode) that
     were valid steps.
   Each N is measured on each backend (gymnasium, and envpool where installed), one row each.
   Rows 2 and 3 report the best of 5 measuring windows, the one least disturbed by other load.
3. HalfCheetah-v5 (needs mujoco), N = 16: pgrun's collect_episodes against raw gymnasium
   SyncVectorEnv stepping; and pgrun's collect + update (collect_episodes, advantages, one
   policy step) with env.backend=envpool on CHEETAH_THREADS threads against that same raw
   gymnasium stepping.
4. Whole process: `pgrun variant=rtg_baseline env=CartPole-v1` wall and peak RSS; its start-up
   and exit (wall minus the training seconds of its closing line) against `python -c "import
   torch"` (interleaved, best of 3 each); `pgrun --help` and `pgrun --cfg job` wall (best of 3)
   and whether torch got imported.
5. `pgrun -m experiment=compare_variants` wall with hydra/launcher=joblib and with
   hydra/launcher=batched (its seeds trained as groups, pgrun.batched), one after the other in
   this invocation, and their ratio.
6. Seeds trained as one group (pgrun.batched.train_group) against the same seeds trained
   alone one after the other in this process: CartPole-v1 with K = 8 seeds at N = 16 with
   either collector (rollout=episodes: a group's batch lasts until the last of its K x N
   first episodes ends, so most of the stepped slots are padding; rollout=steps: every slot
   is a step), and HalfCheetah-v5 with K = 4 (needs mujoco), env steps / s, build and files
   included.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

SOLVED = 475.0  # CartPole-v1's threshold on the mean episodic return
SB3_WINDOW = 20  # SB3 "solves" when the mean return of its last 20 finished episodes >= 475

# RL-Zoo (rl-baselines3-zoo, hyperparams/ppo.yml, entry CartPole-v1, marked "Tuned"); the
# `lin_x` values are linear schedules from x at the start to 0 at the end of n_timesteps.
PPO_ZOO = {
    "n_envs": 8,
    "n_timesteps": 100_000,
    "policy": "MlpPolicy",
    "n_steps": 32,
    "batch_size": 256,
    "gae_lambda": 0.8,
    "gamma": 0.98,
    "n_epochs": 20,
    "ent_coef": 0.0,
    "learning_rate": "lin_0.001",
    "clip_range": "lin_0.2",
}
# RL-Zoo (hyperparams/a2c.yml, entry CartPole-v1): only these four keys; everything else is
# SB3's A2C default (n_steps 5, RMSprop lr 7e-4, gamma 0.99, gae_lambda 1.0, vf_coef 0.5,
# max_grad_norm 0.5). No observation normalisation for CartPole (the zoo's `normalize: true`
# is set for MountainCar and Acrobot, not for CartPole).
A2C_ZOO = {
    "n_envs": 8,
    "n_timesteps": 500_000,
    "policy": "MlpPolicy",
    "ent_coef": 0.0,
}

# RL-Zoo (hyperparams/trpo.yml, entry CartPole-v1, marked "Tuned") for sb3-contrib's TRPO.
TRPO_ZOO = {
    "n_envs": 2,
    "n_timesteps": 100_000,
    "policy": "MlpPolicy",
    "n_steps": 512,
    "batch_size": 512,
    "cg_damping": 1e-3,
    "gae_lambda": 0.98,
    "gamma": 0.99,
    "learning_rate": 1e-3,
    "n_critic_updates": 20,
}

# Targets of the benchmark issue (medians on the reference 2-core machine).
TARGET_SOLVE_S = 1.5
TARGET_SB3_RATIO = 15.0  # SB3 PPO time / pgrun time, the faster backend
TARGET_SPS = 150_000  # at N >= 32, the faster backend
TARGET_FLOOR_RATIO = 2.0  # pgrun within 2x of raw env + forward
TARGET_CHEETAH_RATIO = 1.5
TARGET_CHEETAH_SPEEDUP = 2.0  # pgrun collect + update (envpool) / gymnasium SyncVectorEnv raw
CHEETAH_THREADS = 2  # envpool's threads in row 3
TARGET_RUN_WALL_S = 6.0
TARGET_HELP_WALL_S = 0.5
TARGET_RSS_MB = 600.0
TARGET_STARTUP_OVER_TORCH_S = 0.7  # whole wall - training - `python -c "import torch"`
TARGET_BATCHED_SWEEP_S = 10.0  # compare_variants with hydra/launcher=batched
TARGET_BATCHED_SWEEP_RATIO = 4.0  # joblib's wall / batched's
TARGET_GROUP_SPS = 300_000  # CartPole, one group of K = 8 seeds at N = 16


@dataclass
class Settings:
    seeds: int
    sb3: bool
    rate_seconds: float  # minimum measuring time of one throughput figure
    cheetah_horizon: int
    budget: int | None  # pgrun total_steps override (smoke runs only); None: the config's
    sb3_budget_cap: int | None  # cap on SB3's total timesteps (smoke runs only)
    sweep: bool  # run row 5
    ns: tuple[int, ...]  # the N of row 2
    ppo_only: bool = False  # row 1: pgrun rtg_baseline and SB3 PPO only (the speed-up figure)
    repeats: int = 3  # row 4: `pgrun --help` and `pgrun --cfg job` are timed best of this many
    group: tuple[int, int] = (8, 4)  # row 6: the K of the CartPole and HalfCheetah groups


@dataclass
class Row:
    what: str
    measured: str
    target: str = "-"
    met: str = "-"


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "**no**")


# ---------------------------------------------------------------------------------------------
# Small helpers


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (C libraries print there: mujoco's model-compiler warnings)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def backends() -> tuple[str, ...]:
    """The env backends measured side by side: gymnasium, and envpool where it is installed."""
    return ("gymnasium", "envpool") if have("envpool") else ("gymnasium",)


def have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def median_range(values: list[float], fmt: Callable[[float], str]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(statistics.median(values))} ({fmt(min(values))}-{fmt(max(values))})"


def secs(x: float) -> str:
    return f"{x:.2f} s"


def ksteps(x: float) -> str:
    return f"{x / 1000:.1f}k"


def rate(x: float) -> str:
    return f"{x / 1000:,.0f}k/s" if x >= 10_000 else f"{x / 1000:,.1f}k/s"


def measure_rate(step: Callable[[], int], seconds: float, windows: int = 5) -> float:
    """Env steps/s of `step` (a callable that returns the env steps it did): the best of
    `windows` windows of at least seconds / windows each, after one warm-up call. The best
    window is the one least disturbed by other processes on the machine."""
    step()  # warm-up: first calls pay for lazy imports and allocations
    best = 0.0
    for _ in range(windows):
        steps, start = 0, time.perf_counter()
        while True:
            steps += step()
            elapsed = time.perf_counter() - start
            if elapsed >= seconds / windows:
                break
        best = max(best, steps / elapsed)
    return best


def pgrun_config(overrides: list[str]):
    """pgrun's composed config, as the `pgrun` command would build it from `overrides`."""
    from hydra import compose, initialize_config_module

    import pgrun.config  # noqa: F401  (registers the schema and resolvers)

    with initialize_config_module(config_module="pgrun.configs", version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = [f"Python {platform.python_version()}"]
    for name in ("torch", "gymnasium", "numpy", "stable_baselines3", "sb3_contrib", "mujoco"):
        if have(name):
            module = __import__(name)
            versions.append(f"{name} {getattr(module, '__version__', '?')}")
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    load_text = f"; load average at start {load[0]:.1f}" if load else ""
    return (
        f"{cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}; "
        f"{', '.join(versions)}{load_text}"
    )


# ---------------------------------------------------------------------------------------------
# 1. Time to solve CartPole-v1


@dataclass
class Solve:
    seconds: float | None  # training wall seconds to the first solved batch / window
    steps: int | None
    run_sps: float | None = None  # pgrun: env steps/s over the whole run (its last charts/SPS)


def solve_pgrun(variant: str, seed: int, settings: Settings, backend: str = "gymnasium") -> Solve:
    """`variant` is a preset (with CartPole-v1's defaults) or `experiment=<name>`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pgrun.trainer import train

    what = [variant] if variant.startswith("experiment=") else [f"variant={variant}"]
    overrides = [*what, "env=CartPole-v1", f"seed={seed}", "progress=false"]
    overrides.append(f"env.backend={backend}")
    if settings.budget is not None:
        overrides.append(f"total_steps={settings.budget}")
    cfg = pgrun_config(overrides)
    with tempfile.TemporaryDirectory(prefix="pgrun-bench-") as run_dir:
        train(cfg, Path(run_dir))
        events = EventAccumulator(run_dir, size_guidance={"scalars": 0})
        events.Reload()
        returns = events.Scalars("charts/episodic_return")
        sps_events = events.Scalars("charts/SPS")
    sps = {e.step: e.value for e in sps_events}
    run_sps = sps_events[-1].value
    for event in returns:
        if event.value >= SOLVED:
            # charts/SPS = env_steps / seconds since the trainer's clock started
            return Solve(event.step / sps[event.step], event.step, run_sps)
    return Solve(None, None, run_sps)


def zoo_schedule(value: str | float) -> float | Callable[[float], float]:
    """RL-Zoo's `lin_<x>`: x * progress_remaining (SB3 passes it, from 1 down to 0)."""
    if isinstance(value, str) and value.startswith("lin_"):
        start = float(value[4:])
        return lambda progress_remaining: progress_remaining * start
    return float(value)


def solve_sb3(algo: str, seed: int, settings: Settings) -> Solve:
    import torch
    from stable_baselines3 import A2C, PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    class StopWhenSolved(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.returns: deque[float] = deque(maxlen=SB3_WINDOW)
            self.result = Solve(None, None)

        def _on_training_start(self) -> None:
            self.start = time.perf_counter()

        def _on_step(self) -> bool:
            finished = [info["episode"]["r"] for info in self.locals["infos"] if "episode" in info]
            if not finished:  # "episode": the Monitor wrapper's record of a finished episode
                return True
            self.returns.extend(float(r) for r in finished)
            if len(self.returns) == SB3_WINDOW and np.mean(self.returns) >= SOLVED:
                self.result = Solve(time.perf_counter() - self.start, self.num_timesteps)
                return False
            return True

    torch.set_num_threads(1)
    hp = {"ppo": PPO_ZOO, "a2c": A2C_ZOO, "trpo": TRPO_ZOO}[algo]
    env = make_vec_env("CartPole-v1", n_envs=hp["n_envs"], seed=seed)
    if algo == "trpo":
        from sb3_contrib import TRPO

        model = TRPO(
            hp["policy"],
            env,
            n_steps=hp["n_steps"],
            batch_size=hp["batch_size"],
            cg_damping=hp["cg_damping"],
            gae_lambda=hp["gae_lambda"],
            gamma=hp["gamma"],
            learning_rate=hp["learning_rate"],
            n_critic_updates=hp["n_critic_updates"],
            seed=seed,
            device="cpu",
        )
    elif algo == "ppo":
        model = PPO(
            hp["policy"],
            env,
            n_steps=hp["n_steps"],
            batch_size=hp["batch_size"],
            gae_lambda=hp["gae_lambda"],
            gamma=hp["gamma"],
            n_epochs=hp["n_epochs"],
            ent_coef=hp["ent_coef"],
            learning_rate=zoo_schedule(hp["learning_rate"]),
            clip_range=zoo_schedule(hp["clip_range"]),
            seed=seed,
            device="cpu",
        )
    else:
        model = A2C(hp["policy"], env, ent_coef=hp["ent_coef"], seed=seed, device="cpu")
    budget = hp["n_timesteps"]
    if settings.sb3_budget_cap is not None:
        budget = min(budget, settings.sb3_budget_cap)
    callback = StopWhenSolved()
    model.learn(total_timesteps=budget, callback=callback)
    env.close()
    return callback.result


def solve_rows(settings: Settings) -> list[Row]:
    methods: dict[str, Callable[[int], Solve]] = {
        "pgrun rtg_baseline": lambda s: solve_pgrun("rtg_baseline", s, settings),
        "pgrun off_policy": lambda s: solve_pgrun("off_policy", s, settings),
        "pgrun trpo": lambda s: solve_pgrun("experiment=cartpole_trpo", s, settings),
    }
    if "envpool" in backends():
        methods["pgrun rtg_baseline, envpool"] = lambda s: solve_pgrun(
            "rtg_baseline", s, settings, "envpool"
        )
    trpo_note = None
    if not settings.sb3:
        trpo_note = "skipped (--no-sb3)"
    elif not have("sb3_contrib"):
        trpo_note = "skipped: sb3-contrib is not installed (`make bench` installs it)"
    else:
        methods["SB3-contrib TRPO (RL-Zoo)"] = lambda s: solve_sb3("trpo", s, settings)
    sb3_note = None
    if not settings.sb3:
        sb3_note = "skipped (--no-sb3)"
    elif not have("stable_baselines3"):
        sb3_note = "skipped: stable-baselines3 is not installed (`make bench` installs it)"
    else:
        methods["SB3 PPO (RL-Zoo)"] = lambda s: solve_sb3("ppo", s, settings)
        methods["SB3 A2C (RL-Zoo)"] = lambda s: solve_sb3("a2c", s, settings)
    if settings.ppo_only:
        kept = ("pgrun rtg_baseline", "pgrun rtg_baseline, envpool", "SB3 PPO (RL-Zoo)")
        methods = {name: run for name, run in methods.items() if name in kept}

    results: dict[str, list[Solve]] = {name: [] for name in methods}
    for seed in range(settings.seeds):  # interleaved: every method's seed s, then s + 1
        for name, run in methods.items():
            results[name].append(run(seed))
            print(f"  [1] {name} seed {seed}: {results[name][-1]}", file=sys.stderr)

    def describe(name: str) -> tuple[str, list[float], int]:
        runs = results[name]
        solved = [r for r in runs if r.seconds is not None]
        times = [r.seconds for r in solved]
        text = (
            f"{median_range(times, secs)}, "
            f"{median_range([float(r.steps) for r in solved], ksteps)} steps, "
            f"{len(solved)}/{len(runs)} seeds solved"
        )
        run_sps = [r.run_sps for r in runs if r.run_sps is not None]
        if run_sps:
            text += f"; whole budget at {median_range(run_sps, rate)}"
        return text, times, len(solved)

    rows = []
    text, pg_times, pg_solved = describe("pgrun rtg_baseline")
    ok = bool(pg_times) and statistics.median(pg_times) <= TARGET_SOLVE_S
    ok = ok and pg_solved == settings.seeds
    rows.append(
        Row(
            "1. CartPole-v1 solved: pgrun rtg_baseline (default config)",
            text,
            f"<= {TARGET_SOLVE_S} s median, all seeds",
            verdict(ok),
        )
    )
    fastest = {"gymnasium": pg_times}
    if "pgrun rtg_baseline, envpool" in results:
        text, fastest["envpool"], _ = describe("pgrun rtg_baseline, envpool")
        rows.append(Row("1. CartPole-v1 solved: pgrun rtg_baseline, env.backend=envpool", text))
    if not settings.ppo_only:  # --ppo-only leaves out off_policy, trpo, SB3's TRPO and A2C
        text, _, _ = describe("pgrun off_policy")
        rows.append(Row("1. CartPole-v1 solved: pgrun off_policy", text))
        text, pg_trpo, _ = describe("pgrun trpo")
        rows.append(Row("1. CartPole-v1 solved: pgrun trpo (experiment=cartpole_trpo)", text))
        if trpo_note is not None:
            rows.append(Row("1. CartPole-v1 solved: SB3-contrib TRPO", trpo_note))
        else:
            text, sb3_trpo, _ = describe("SB3-contrib TRPO (RL-Zoo)")
            rows.append(Row("1. CartPole-v1 solved: SB3-contrib TRPO (RL-Zoo)", text, "reference"))
            if pg_trpo and sb3_trpo:
                ratio = statistics.median(sb3_trpo) / statistics.median(pg_trpo)
                rows.append(
                    Row(
                        "1. speed-up: SB3-contrib TRPO / pgrun trpo (median times)", f"{ratio:.1f}x"
                    )
                )
            else:
                rows.append(
                    Row("1. speed-up: SB3-contrib TRPO / pgrun trpo", "n/a (a method never solved)")
                )
    if sb3_note is not None:
        rows.append(Row("1. CartPole-v1 solved: SB3 PPO / A2C", sb3_note))
        return rows
    text, ppo_times, _ = describe("SB3 PPO (RL-Zoo)")
    rows.append(Row("1. CartPole-v1 solved: SB3 PPO (RL-Zoo)", text, "reference"))
    if not settings.ppo_only:
        text, _, _ = describe("SB3 A2C (RL-Zoo)")
        rows.append(Row("1. CartPole-v1 solved: SB3 A2C (RL-Zoo)", text, "reference"))
    ratios = {
        backend: statistics.median(ppo_times) / statistics.median(times)
        for backend, times in fastest.items()
        if times and ppo_times
    }
    if ratios:
        rows.append(
            Row(
                "1. speed-up: SB3 PPO / pgrun rtg_baseline (median times)",
                ", ".join(f"{r:.1f}x ({backend})" for backend, r in ratios.items()),
                f">= {TARGET_SB3_RATIO:g}x",
                verdict(max(ratios.values()) >= TARGET_SB3_RATIO),
            )
        )
    else:
        rows.append(Row("1. speed-up: SB3 PPO / pgrun rtg_baseline", "n/a (a method never solved)"))
    return rows


# ---------------------------------------------------------------------------------------------
# 2. Throughput on CartPole-v1


def throughput(
    n: int, seconds: float, backend: str = "gymnasium"
) -> tuple[float, float, float, float]:
    """(raw env, raw env + forward, pgrun collect + update, lockstep fraction) at N = n."""
    import torch

    import pgrun
    from pgrun.losses import batch_advantages
    from pgrun.optim import make_optimizer
    from pgrun.update_rules import GradientStep

    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    env = pgrun.make_env("CartPole-v1", num_envs=n, seed=0, backend=backend)
    policy = pgrun.make_policy(env)
    actions = rng.integers(0, 2, size=(1024, n))

    def raw() -> int:
        for a in actions[:256]:
            env.step(a)
        return 256 * n

    from pgrun.draw import batch_draw

    obs_holder = [env.reset(seed=0)[0]]

    def raw_forward() -> int:
        obs = obs_holder[0]
        draw = batch_draw(policy, 256, n)  # the per-step draw as the collectors make it
        with torch.inference_mode():
            for t in range(256):
                obs = env.step(draw(obs.astype(np.float32, copy=False), t))[0]
        obs_holder[0] = obs
        return 256 * n

    raw_rate = measure_rate(raw, seconds)
    floor_rate = measure_rate(raw_forward, seconds)

    # lr = 0: every update is computed in full but leaves the policy as it is, so the episode
    # lengths (and the work per batch) do not drift while measuring.
    optimizer = make_optimizer("adam", policy.parameters(), 0.0)
    slots = [0, 0]  # valid steps, stepped slots (N x T_b)
    seed = iter(range(10**9))

    def collect_update() -> int:
        batch = pgrun.collect_episodes(env, policy, horizon=500, seed=next(seed))
        adv = batch_advantages(batch, "rtg_baseline", 1.0)
        GradientStep().step(policy, optimizer, batch, adv)
        slots[0] += batch.num_steps
        slots[1] += batch.mask.numel()
        return batch.num_steps

    pg_rate = measure_rate(collect_update, seconds)
    env.close()
    return raw_rate, floor_rate, pg_rate, slots[0] / slots[1]


def training_rate(n: int, settings: Settings, backend: str = "gymnasium") -> float:
    """Env steps / training seconds of a whole default run at batch_episodes = n."""
    from pgrun.trainer import train

    overrides = [f"batch_episodes={n}", "progress=false", f"env.backend={backend}"]
    if settings.budget is not None:
        overrides.append(f"total_steps={settings.budget}")
    with tempfile.TemporaryDirectory(prefix="pgrun-bench-") as run_dir:
        summary = train(pgrun_config(overrides), Path(run_dir))
    return summary["env_steps"] / summary["wall_seconds"]


def throughput_rows(settings: Settings) -> list[Row]:
    rows = []
    for n in settings.ns:
        for backend in backends():  # side by side at each N
            raw, floor, pg, lockstep = throughput(n, settings.rate_seconds, backend)
            run = training_rate(n, settings, backend)
            print(
                f"  [2] N={n} {backend}: raw {raw:.0f}, floor {floor:.0f}, training run "
                f"{run:.0f}, untrained {pg:.0f}",
                file=sys.stderr,
            )
            targets = [f"within {TARGET_FLOOR_RATIO:g}x of raw env + forward"]
            ok = floor / run <= TARGET_FLOOR_RATIO
            if n >= 32:
                targets.insert(0, f">= {TARGET_SPS // 1000}k/s")
                ok = ok and run >= TARGET_SPS
            rows.append(
                Row(
                    f"2. CartPole-v1 collect + update, N={n}, env.backend={backend}",
                    f"training run {rate(run)} (raw + forward / run {floor / run:.1f}); "
                    f"untrained {rate(pg)} (lockstep {lockstep:.0%}, raw + forward / untrained "
                    f"{floor / pg:.1f}); raw env {rate(raw)}; raw env + forward {rate(floor)}",
                    "; ".join(targets) + " (training run)",
                    verdict(ok),
                )
            )
    return rows


# ---------------------------------------------------------------------------------------------
# 3. HalfCheetah-v5 collection


def cheetah_rows(settings: Settings) -> list[Row]:
    what = "3. HalfCheetah-v5 collection, N=16"
    target = f"within {TARGET_CHEETAH_RATIO:g}x of raw env"
    if not have("mujoco"):
        return [Row(what, "skipped: mujoco is not installed (`make bench` installs it)", target)]
    import torch

    import pgrun
    from pgrun.losses import batch_advantages
    from pgrun.optim import make_optimizer
    from pgrun.update_rules import GradientStep

    torch.set_num_threads(1)
    n, horizon = 16, settings.cheetah_horizon
    rng = np.random.default_rng(0)
    seed = iter(range(10**9))
    rates: dict[str, dict[str, float]] = {}
    for backend in backends():
        torch.manual_seed(0)
        threads = CHEETAH_THREADS if backend == "envpool" else 1
        with quiet_stderr():
            env = pgrun.make_env(
                "HalfCheetah-v5", n, seed=0, horizon=horizon, backend=backend, num_threads=threads
            )
        policy = pgrun.make_policy(env)
        optimizer = make_optimizer("adam", policy.parameters(), 0.0)
        shape = (64, n, *env.single_action_space.shape)
        actions = rng.uniform(-1, 1, size=shape).astype(np.float32)

        def raw(env=env, actions=actions) -> int:
            for a in actions:
                env.step(a)
            return len(actions) * n

        def collect(env=env, policy=policy) -> int:
            return pgrun.collect_episodes(env, policy, horizon=horizon, seed=next(seed)).num_steps

        def collect_update(env=env, policy=policy, optimizer=optimizer) -> int:
            batch = pgrun.collect_episodes(env, policy, horizon=horizon, seed=next(seed))
            adv = batch_advantages(batch, "rtg_baseline", 0.99)
            GradientStep().step(policy, optimizer, batch, adv)
            return batch.num_steps

        env.reset(seed=0)
        rates[backend] = {
            "raw": measure_rate(raw, settings.rate_seconds),
            "collect": measure_rate(collect, settings.rate_seconds),
            "train": measure_rate(collect_update, settings.rate_seconds),
        }
        env.close()
        print(f"  [3] {backend}: {rates[backend]}", file=sys.stderr)
    gym_rates = rates["gymnasium"]
    ratio = gym_rates["raw"] / gym_rates["collect"]
    rows = [
        Row(
            f"{what}, T={horizon}, env.backend=gymnasium",
            f"pgrun {rate(gym_rates['collect'])}; raw env {rate(gym_rates['raw'])} "
            f"(raw / pgrun {ratio:.2f}); collect + update {rate(gym_rates['train'])}",
            target,
            verdict(ratio <= TARGET_CHEETAH_RATIO),
        )
    ]
    if "envpool" in rates:
        pool = rates["envpool"]
        speedup = pool["train"] / gym_rates["raw"]
        rows.append(
            Row(
                f"3. HalfCheetah-v5 collect + update, N=16, env.backend=envpool "
                f"(env.num_threads={CHEETAH_THREADS})",
                f"{rate(pool['train'])} (collection {rate(pool['collect'])}, envpool raw "
                f"{rate(pool['raw'])}); / gymnasium SyncVectorEnv raw {speedup:.2f}x",
                f">= {TARGET_CHEETAH_SPEEDUP:g}x gymnasium raw",
                verdict(speedup >= TARGET_CHEETAH_SPEEDUP),
            )
        )
    return rows


# ---------------------------------------------------------------------------------------------
# 4. and 5. Whole processes


def pgrun_command() -> list[str]:
    script = Path(sys.executable).with_name("pgrun")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pgrun.cli"]


# Starts the measured command and reports its wall time, peak RSS and status. Linux keeps a
# process's peak RSS across exec, and a child starts with its parent's (fork and vfork alike):
# started from this process, which has trained and imported much by then, the command would
# report this process's peak. Started from this small one, it reports its own.
_MEASURE = """
import os, subprocess, sys, time
out, cmd = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
proc = subprocess.Popen(cmd)
_, status, usage = os.wait4(proc.pid, 0)
wall = time.perf_counter() - start
with open(out, "w") as f:
    f.write(f"{wall} {usage.ru_maxrss} {os.waitstatus_to_exitcode(status)}")
"""


def run_process(cmd: list[str], cwd: str) -> tuple[float, float, int, str]:
    """Run `cmd`; (wall seconds, peak RSS in MB of the process itself, exit status, output)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    with tempfile.TemporaryFile("w+") as output, tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result"
        measure = [sys.executable, "-c", _MEASURE, str(result), *cmd]
        subprocess.run(measure, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT)
        output.seek(0)
        text = output.read()
        wall, rss_kib, status = result.read_text().split()
    return float(wall), int(rss_kib) / 1024, int(status), text  # ru_maxrss: KiB on Linux


def training_seconds(output: str) -> float | None:
    """The training wall time from pgrun's closing line `done: ... | 6.9 s | ...`, if found."""
    match = re.search(r"^done: .*?\| ([0-9.]+) s \|", output, re.MULTILINE)
    return float(match.group(1)) if match else None


# Runs pgrun's entry point in-process and records, at exit, whether torch was imported.
TORCH_PROBE = """
import atexit, sys
report_path = sys.argv[1]
def _report():
    with open(report_path, "w") as f:
        f.write(str("torch" in sys.modules))
atexit.register(_report)
sys.argv = ["pgrun", *sys.argv[2:]]
from pgrun.cli import main
main()
"""


def torch_imported(args: list[str], cwd: str) -> str:
    out = Path(cwd) / "torch-probe.txt"
    subprocess.run(
        [sys.executable, "-c", TORCH_PROBE, str(out), *args],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    return out.read_text() if out.exists() else "unknown"


def process_rows(settings: Settings) -> list[Row]:
    rows = []
    cmd = pgrun_command()
    run_args = ["variant=rtg_baseline", "env=CartPole-v1"]
    if settings.budget is not None:
        run_args.append(f"total_steps={settings.budget}")
    with tempfile.TemporaryDirectory(prefix="pgrun-bench-") as cwd:
        # interleaved: the run, then `python -c "import torch"`, `repeats` times; the least
        # disturbed of each (the minimum) is compared
        overheads, torch_walls = [], []
        for _ in range(settings.repeats):
            wall, rss, status, output = run_process([*cmd, *run_args], cwd)
            trained = training_seconds(output)
            if trained is not None:
                overheads.append(wall - trained)
            torch_walls.append(run_process([sys.executable, "-c", "import torch"], cwd)[0])
        failed = "" if status == 0 else f" (exit status {status})"
        split = ""
        if trained is not None:
            split = f" ({trained:.1f} s training, {wall - trained:.1f} s start-up and exit)"
        rows.append(
            Row(
                f"4. `pgrun {' '.join(run_args)}`, whole process",
                f"{wall:.1f} s wall{split}, peak RSS {rss:.0f} MB{failed}",
                f"<= {TARGET_RUN_WALL_S:g} s; <= {TARGET_RSS_MB:g} MB",
                verdict(status == 0 and wall <= TARGET_RUN_WALL_S and rss <= TARGET_RSS_MB),
            )
        )
        if overheads:
            extra = min(overheads) - min(torch_walls)
            rows.append(
                Row(
                    '4. start-up and exit (whole wall - training) over `python -c "import torch"`',
                    f"{min(overheads):.2f} s - {min(torch_walls):.2f} s = {extra:.2f} s "
                    f"(best of {len(torch_walls)} each, interleaved)",
                    f"<= {TARGET_STARTUP_OVER_TORCH_S:g} s",
                    verdict(extra <= TARGET_STARTUP_OVER_TORCH_S),
                )
            )
        for args, target in ((["--help"], TARGET_HELP_WALL_S), (["--cfg", "job"], None)):
            walls = [run_process([*cmd, *args], cwd)[0] for _ in range(settings.repeats)]
            loaded = torch_imported(args, cwd)
            ok = loaded == "False" and (target is None or min(walls) <= target)
            rows.append(
                Row(
                    f"4. `pgrun {' '.join(args)}`",
                    f"{min(walls):.2f} s wall (best of {len(walls)}); torch imported: {loaded.lower()}",
                    (f"<= {target:g} s; " if target else "") + "no torch",
                    verdict(ok),
                )
            )
    return rows


def sweep_rows(settings: Settings) -> list[Row]:
    what = "5. `pgrun -m experiment=compare_variants`, batched vs joblib launcher"
    target = (
        f"batched <= {TARGET_BATCHED_SWEEP_S:g} s and >= {TARGET_BATCHED_SWEEP_RATIO:g}x faster"
    )
    if not settings.sweep:
        return [Row(what, "skipped (--quick / --smoke / --rows)", target)]
    experiment = resources.files("pgrun.configs") / "experiment" / "compare_variants.yaml"
    if not experiment.is_file():
        return [Row(what, "skipped: the compare_variants experiment does not exist yet", target)]
    if not have("hydra_plugins.hydra_joblib_launcher"):
        return [Row(what, "skipped: hydra-joblib-launcher is not installed (the `sweep` extra)")]
    walls, notes = {}, []
    for launcher in ("joblib", "batched"):  # one after the other, in this invocation
        with tempfile.TemporaryDirectory(prefix="pgrun-bench-") as cwd:
            args = ["-m", "experiment=compare_variants", f"hydra/launcher={launcher}"]
            wall, _, status, _ = run_process([*pgrun_command(), *args], cwd)
            jobs = len(list(Path(cwd).glob("outputs/multirun/*/*/.hydra")))
        walls[launcher] = wall
        failed = "" if status == 0 else f", exit status {status}"
        notes.append(f"{launcher} {wall:.1f} s ({jobs} jobs{failed})")
    ratio = walls["joblib"] / walls["batched"]
    ok = walls["batched"] <= TARGET_BATCHED_SWEEP_S and ratio >= TARGET_BATCHED_SWEEP_RATIO
    return [Row(what, f"{'; '.join(notes)}; {ratio:.1f}x; load {load()}", target, verdict(ok))]


def load() -> str:
    """The 1-minute load average (the machine may be shared)."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "?"


def group_rate(overrides: list[str], k: int) -> tuple[float, float]:
    """Env steps / s of K seeds trained as one group (pgrun.batched.train_group) and of the same
    K seeds trained alone one after the other in this process (what each process of the joblib
    launcher trains at on its core); build and files included in both."""
    from pgrun import train
    from pgrun.batched import Job, train_group

    base = ["progress=false", "logger=[csv]", "diagnostics.every=0", *overrides]
    with tempfile.TemporaryDirectory(prefix="pgrun-bench-") as root:
        start, steps = time.perf_counter(), 0
        for seed in range(k):
            run_dir = Path(root) / f"alone{seed}"
            run_dir.mkdir()
            steps += train(pgrun_config([*base, f"seed={seed}"]), run_dir)["env_steps"]
        alone = steps / (time.perf_counter() - start)
        jobs = []
        for seed in range(k):
            run_dir = Path(root) / f"group{seed}"
            run_dir.mkdir()
            jobs.append(Job(pgrun_config([*base, f"seed={seed}"]), run_dir))
        start = time.perf_counter()
        results = train_group(jobs)
        steps = sum(r["env_steps"] for r in results)
        grouped = steps / (time.perf_counter() - start)
    return grouped, alone


def group_rows(settings: Settings) -> list[Row]:
    import torch

    torch.set_num_threads(1)
    budget = settings.budget or (20_000 if settings.sweep else 8_000)
    rows = []
    for rollout in ("episodes", "steps"):
        overrides = ["variant=rtg_baseline", f"rollout={rollout}", f"total_steps={budget}"]
        grouped, alone = group_rate(overrides, settings.group[0])
        rows.append(
            Row(
                f"6. CartPole-v1 training, one group of K={settings.group[0]} seeds at N=16 "
                "(rtg_baseline, "
                f"rollout={rollout})",
                f"{rate(grouped)} (the seeds alone, one after the other: {rate(alone)}; "
                f"{grouped / alone:.1f}x); load {load()}",
                f">= {rate(TARGET_GROUP_SPS)}",
                verdict(grouped >= TARGET_GROUP_SPS),
            )
        )
    what = (
        f"6. HalfCheetah-v5 training, one group of K={settings.group[1]} seeds at N=16 "
        "(value_baseline)"
    )
    if not have("mujoco"):
        return [*rows, Row(what, "skipped: mujoco is not installed (`make bench` installs it)")]
    horizon = settings.cheetah_horizon
    # without the env file's observation normalisation, which a group does not stack (both
    # sides the same computation)
    cheetah = ["experiment=half_cheetah_value_baseline", f"env.horizon={horizon}",
               f"total_steps={2 * 16 * horizon}", "eval.every=0",
               "env.normalize_obs=false"]  # fmt: skip
    grouped, alone = group_rate(cheetah, settings.group[1])
    rows.append(
        Row(
            what,
            f"{rate(grouped)}; alone (joblib's per process): {rate(alone)}; "
            f"{grouped / alone:.1f}x; load {load()}",
        )
    )
    return rows


# ---------------------------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    lines = ["| benchmark | measured | target | met |", "|---|---|---|---|"]
    lines += [f"| {r.what} | {r.measured} | {r.target} | {r.met} |" for r in rows]
    return "\n".join(lines)


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, Settings, set[int]]:
    parser = argparse.ArgumentParser(
        description="Benchmark pgrun against Stable-Baselines3 and the raw environment; "
        "prints one markdown table.",
    )
    parser.add_argument("--seeds", type=int, help="seeds per method in row 1 (default 10)")
    parser.add_argument(
        "--quick", action="store_true", help="2 seeds, short throughput runs, no sweep row"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="check that every row runs (tiny budgets: the figures mean nothing)",
    )
    parser.add_argument("--no-sb3", action="store_true", help="leave out the SB3 rows")
    parser.add_argument(
        "--ppo-only",
        action="store_true",
        help="row 1 with pgrun rtg_baseline and SB3 PPO only (the speed-up figure, a few "
        "minutes): no off_policy, trpo, A2C or SB3-contrib TRPO",
    )
    parser.add_argument(
        "--rows",
        help="comma-separated rows to measure, e.g. 2,4 (default: all; "
        "--quick and --smoke leave out row 5 unless it is named here)",
    )
    args = parser.parse_args(argv)
    try:
        rows = {int(r) for r in (args.rows or "1,2,3,4,5,6").split(",") if r.strip()}
    except ValueError:
        rows = set()
    if not rows or not rows <= {1, 2, 3, 4, 5, 6}:
        parser.error("--rows takes numbers from 1 to 6, e.g. --rows 2,4")
    if args.smoke:
        settings = Settings(
            1, not args.no_sb3, 0.05, 20, 2000, 2000, False, (16,), repeats=1, group=(2, 2)
        )
    elif args.quick:
        settings = Settings(2, not args.no_sb3, 0.5, 200, None, None, False, (16, 32, 64, 256))
    else:
        settings = Settings(10, not args.no_sb3, 2.0, 1000, None, None, True, (16, 32, 64, 256))
    settings.ppo_only = args.ppo_only
    if args.seeds is not None:
        if args.seeds < 1:
            parser.error("--seeds takes an integer >= 1")
        settings.seeds = args.seeds
    if args.rows is not None:
        settings.sweep = 5 in rows
    return args, settings, rows


def main(argv: list[str] | None = None) -> None:
    args, settings, selected = parse(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    start = time.perf_counter()
    print(f"Machine: {machine()}", flush=True)
    mode = (
        "smoke run (tiny budgets: the figures mean nothing)"
        if args.smoke
        else ("quick run" if args.quick else "full run")
    )
    seeds = f"; {settings.seeds} seed(s) per method in row 1" if 1 in selected else ""
    rows_text = ",".join(str(r) for r in sorted(selected))
    print(f"Mode: {mode}; rows {rows_text}{seeds}; progress goes to stderr\n")
    sections: dict[int, Callable[[Settings], list[Row]]] = {
        1: solve_rows,
        2: throughput_rows,
        3: cheetah_rows,
        4: process_rows,
        5: sweep_rows,
        6: group_rows,
    }
    rows: list[Row] = []
    for number, section in sections.items():
        if number in selected:
            rows += section(settings)
    if args.smoke:  # the budgets are cut: no figure says anything about a target
        rows = [
            Row(r.what, r.measured, r.target, "n/a (smoke)" if r.met != "-" else "-") for r in rows
        ]
    print(table(rows))
    print(f"\n(benchmark took {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
