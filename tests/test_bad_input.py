"""The bad-input battery: every mistake a user can make on the command line gets one line.

For each case the real `pgrun` command must exit non-zero, print no traceback, print exactly one
line on stderr (`pgrun: error: ...`) that names the offending key or value and what is accepted,
and leave no new run directory behind. A module fixture runs every case, each in a process of
its own forked from a server that has pgrun's imports loaded (tests/forkserver.py: the command
without its seconds of imports); each test then checks one of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from conftest import pgrun_env
from forkserver import ForkServer
from omegaconf import OmegaConf

BROKEN_MODULE = 'raise RuntimeError("this module is broken")\n'
BROKEN_CONSTRUCTOR = """
import gymnasium as gym


class Broken(gym.Env):
    def __init__(self, **kwargs):
        raise ValueError("the constructor failed")


gym.register(id="Broken-v0", entry_point=Broken, max_episode_steps=10)
"""
BAD_WEIGHTS = "def one_column(batch, gamma):\n    return batch.rew[:, :1]\n"
# An importable package named Box2D that fails like a missing install.
NO_BOX2D = 'raise ImportError("No module named Box2D")\n'
# An env that returns, as `mode` says, something its spaces or the gymnasium API do not allow.
BAD_OUTPUT = """
import gymnasium as gym
import numpy as np


class BadOutput(gym.Env):
    observation_space = gym.spaces.Box(-10.0, 10.0, (4,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, mode="ok"):
        self.mode, self.t = mode, 0

    def obs(self, where):
        if self.mode == "nan_obs" and self.t == 2:
            return np.full(4, np.nan, np.float32)
        if self.mode == f"shape_{where}":
            return np.zeros(3, np.float32)
        if self.mode == "none_obs" and where == "step":
            return None
        return np.zeros(4, np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.obs("reset"), {}

    def step(self, action):
        self.t += 1
        reward = {"str_reward": "high", "nan_reward": float("nan"), "inf_reward": float("inf")}
        return self.obs("step"), reward.get(self.mode, 1.0), False, False, {}


class Huge(BadOutput):
    observation_space = gym.spaces.Box(-1.0, 1.0, (1_000_000,), np.float32)

    def obs(self, where):
        return np.zeros(self.observation_space.shape, np.float32)


gym.register(id="BadOutput-v0", entry_point=BadOutput, max_episode_steps=10)
gym.register(id="Huge-v0", entry_point=Huge, max_episode_steps=100_000)
"""


@dataclass
class Case:
    args: list[str]
    says: list[str]  # substrings the error line must hold: the key or value, and the remedy
    env: dict[str, str] = field(default_factory=dict)
    needs_run: str | None = None  # a fabricated run directory to resume: "run" or "old", or
    # "run" damaged: "garbage_overrides", "no_config", "other_policy"; a fabricated sweep
    # ("sweep", or "damaged_sweep": its multirun.yaml cut short) or a directory with runs
    # below it ("nested")
    code: int = 2


def bad_env(mode: str) -> list[str]:
    return ["env.id=bad_env:BadOutput-v0", f"+env.kwargs.mode={mode}", "batch_episodes=2"]


CASES: dict[str, Case] = {
    "unknown env id": Case(["env.id=NoSuchEnv-v0"], ["NoSuchEnv-v0", "pick an id"]),
    "unknown env file": Case(["env=NoSuchEnv-v0"], ["env/NoSuchEnv-v0", "CartPole-v1"]),
    "unknown variant": Case(["variant=nope"], ["variant/nope", "rtg_baseline"]),
    "unknown policy": Case(["policy=nope"], ["policy/nope", "mlp"]),
    "unknown experiment": Case(["experiment=nope"], ["experiment/nope", "compare_variants"]),
    "unknown key": Case(["foo=1"], ["'foo'", "not in"]),
    "unknown nested key": Case(["variant.foo=1"], ["'foo'", "VariantConfig"]),
    "wrong type int": Case(["batch_episodes=abc"], ["batch_episodes=abc", "Integer"]),
    "wrong type float": Case(["gamma=high"], ["gamma=high", "Float"]),
    "wrong type list": Case(["policy.hidden_sizes=3"], ["policy.hidden_sizes=3", "list"]),
    "float for int": Case(["variant.inner_steps=1.5"], ["variant.inner_steps=1.5", "Integer"]),
    "bad weights": Case(["variant.weights=bogus"], ["bogus", "total, rtg"]),
    "bad vectorization": Case(["env.vectorization=fast"], ["fast", "sync"]),
    "bad backend": Case(["env.backend=fast"], ["fast", "gymnasium, envpool, auto"]),
    "envpool lacks the id": Case(
        ["env.backend=envpool", "env=Pendulum-v1"], ["Pendulum-v1", "env.backend=gymnasium"]
    ),
    "envpool lacks the option": Case(
        ["env.backend=envpool", "+env.kwargs.no_such=1"], ["no_such", "env.backend=gymnasium"]
    ),
    "N zero": Case(["batch_episodes=0"], ["batch_episodes=0", ">= 1"]),
    "K zero": Case(["variant.inner_steps=0"], ["variant.inner_steps=0", ">= 1"]),
    "gamma zero": Case(["gamma=0"], ["gamma=0", "(0, 1]"]),
    "gamma above one": Case(["gamma=1.5"], ["gamma=1.5", "(0, 1]"]),
    "lr zero": Case(["optim.lr=0"], ["optim.lr=0", "> 0"]),
    "lr negative": Case(["optim.lr=-1"], ["optim.lr=-1", "> 0"]),
    "horizon zero": Case(["env.horizon=0"], ["env.horizon=0", ">= 1"]),
    "total_steps zero": Case(["total_steps=0"], ["total_steps=0", ">= 1"]),
    "negative seed": Case(["seed=-1"], ["seed=-1", ">= 0"]),
    "clip negative": Case(["variant.clip=-0.1"], ["variant.clip=-0.1", "> 0"]),
    "lambda above one": Case(["variant.gae_lambda=1.5"], ["variant.gae_lambda=1.5", "[0, 1]"]),
    "minibatches zero": Case(["variant=ppo", "variant.minibatches=0"], ["minibatches=0", "[1,"]),
    "threads zero": Case(["threads=0"], ["threads=0", ">= 1"]),
    "checkpoint every negative": Case(["checkpoint.every=-1"], ["checkpoint.every=-1", ">= 0"]),
    "zero width layer": Case(["policy.hidden_sizes=[0]"], ["policy.hidden_sizes=[0]", "positive"]),
    "unknown activation": Case(["policy.activation=swish"], ["swish", "tanh"]),
    "unsupported space": Case(["env.id=Blackjack-v1"], ["Blackjack-v1", "Tuple", "not supported"]),
    "import path missing": Case(["env.id=no_such_module:Env-v0"], ["no_such_module", "PYTHONPATH"]),
    "import path raises": Case(["env.id=broken_module:Env-v0"], ["broken_module", "RuntimeError"]),
    "weights plug-in missing": Case(
        ["variant.weights=no_such_module:weights"], ["variant.weights=", "cannot import"]
    ),
    "weights plug-in raises": Case(
        ["variant.weights=broken_module:weights"], ["broken_module", "RuntimeError"]
    ),
    "weights plug-in shape": Case(
        ["variant.weights=bad_weights:one_column"], ["bad_weights:one_column", "shape"]
    ),
    "constructor raises": Case(["env.id=broken_ctor:Broken-v0"], ["Broken-v0", "ValueError"]),
    "missing extra": Case(["env=LunarLander-v3"], ["LunarLander-v3", ".[box2d]"]),
    "cnn on vectors": Case(["env=Pendulum-v1", "policy=cnn"], ["policy=cnn", "policy=mlp"]),
    "squash on discrete": Case(["policy.squash=true"], ["policy.squash", "Box"]),
    "resume of nothing": Case(["resume=nowhere"], ["resume=nowhere", "no such directory"]),
    "resume with a change": Case(
        ["resume=run", "seed=3"], ["seed=3", "total_steps"], needs_run="run"
    ),
    "resume as a sweep": Case(["-m", "resume=run"], ["-m"], needs_run="run"),
    "rerun-failed of a run": Case(
        ["resume=run", "--rerun-failed"],
        ["--rerun-failed goes with pgrun resume=<sweep dir> only", "pgrun resume=<run dir>"],
        needs_run="run",
    ),
    "rerun-failed without resume": Case(
        ["--rerun-failed", "variant=rtg"], ["--rerun-failed goes with pgrun resume=<sweep dir>"]
    ),
    "sweep into a directory of sweeps": Case(
        ["-m", "seed=0,1", "hydra.sweep.dir=outs"],
        ["outs holds runs below it already (outs/multirun/a_sweep/seed=0", "new hydra.sweep.dir"],
        needs_run="nested",
    ),
    # a sweep checks every job's config before it launches any (the battery puts -m after an
    # override, total_steps=200 -m ...: pgrun moves it first, where Hydra's parser takes it)
    "sweep wrong type": Case(["-m", "seed=0,abc"], ["seed=abc", "Integer"]),
    "sweep unknown variant": Case(["-m", "variant=rtg,nope"], ["variant/nope", "rtg_baseline"]),
    "sweep misspelt env id": Case(
        ["-m", "env.id=CartPol-v1,MountainCarr-v0", "seed=0,1"],
        ["env.id='CartPol-v1' is not a registered gymnasium environment", "`CartPole`"],
    ),
    "sweep unknown key": Case(["-m", "foo=1,2"], ["'foo'", "not in"]),
    # the command line's sweep as a whole: a list that does not expand, no jobs, a job named
    # twice (both would write one directory), a value out of range (before any job ran)
    "sweep range step zero": Case(["-m", "seed=range(0,10,0)"], ["range(0,10,0)", "step"]),
    "sweep of no jobs": Case(["-m", "seed=range(0)"], ["no jobs", "at least one value"]),
    "a CNN on a vector": Case(
        ["env=Pendulum-v1", "policy=cnn"],
        ["policy=cnn needs image observations", "a Box of shape (3,) and dtype float32"],
    ),
    "no steps per rollout": Case(
        ["rollout=steps", "rollout.steps=0", "variant=ppo"],
        ["rollout.steps=0 is out of range", "integer >= 1"],
    ),
    "a time baseline over one episode": Case(
        ["batch_episodes=1"], ["batch_episodes=1", "every weight is 0", "batch_episodes >= 2"]
    ),
    "an option without its key": Case(["rtg"], ["missing EQUAL", "write key=value: variant=rtg"]),
    "a word where a list goes": Case(["logger=tensorboard"], ["give a list: logger=[tensorboard]"]),
    "sweep repeats a seed": Case(
        ["-m", "seed=0,0,1", "hydra/launcher=batched"], ["seed=0", "twice", "each value once"]
    ),
    "sweep repeats a variant": Case(["-m", "variant=rtg,rtg", "seed=0,1"], ["twice"]),
    "sweep negative seed": Case(["-m", "seed=2,-1"], ["seed=-1", ">= 0"]),
    "batched n_jobs not a number": Case(
        ["-m", "seed=0,1", "hydra/launcher=batched", "hydra.launcher.n_jobs=abc"],
        ["hydra.launcher.n_jobs=abc", "integer other than 0"],
    ),
    "joblib n_jobs zero": Case(
        ["-m", "seed=0,1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=0"],
        ["hydra.launcher.n_jobs=0", "-1: one per core"],
    ),
    "sweep into a run": Case(
        ["-m", "seed=0,1", "hydra.sweep.dir=run"],
        ["holds a run", "pgrun resume=run"],
        needs_run="run",
    ),
    "resume of a sweep whose record is damaged": Case(
        ["resume=sweep"],
        ["its multirun.yaml cannot be read", "put it back from a copy", "pgrun resume=<job dir>"],
        needs_run="damaged_sweep",
    ),
    "run into a sweep": Case(
        ["hydra.run.dir=sweep"], ["sweep holds a sweep", "pgrun resume=sweep"], needs_run="sweep"
    ),
    "run into a directory of runs": Case(
        ["hydra.run.dir=outs"],
        ["outs holds runs (multirun/a_sweep/seed=0", "new hydra.run.dir"],
        needs_run="nested",
    ),
    "sweep added unknown key": Case(["-m", "seed=0,1", "+foo=1"], ["foo is not a pgrun setting"]),
    "batched sweep added unknown key": Case(
        ["-m", "seed=0,1", "+optim.lrr=1", "hydra/launcher=batched"], ["did you mean optim.lr?"]
    ),
    "batched sweep wrong type": Case(
        ["-m", "seed=0,abc", "hydra/launcher=batched"], ["seed=abc", "Integer"]
    ),
    "resume other version": Case(
        ["resume=old"], ["another config or pgrun version"], needs_run="old"
    ),
    # keys the schema does not have, added with + (Hydra adds any key that way)
    "added unknown key": Case(["+unknown.key=1"], ["unknown", "not a pgrun setting"]),
    "added typo'd key": Case(["+optim.lrr=0.1"], ["optim.lrr", "did you mean optim.lr"]),
    "typo'd key": Case(["batch_episode=8"], ["batch_episode", "did you mean batch_episodes"]),
    "steps with a unit": Case(["total_steps=2k"], ["total_steps=2k", "whole number in digits"]),
    "steps as a float": Case(["total_steps=1e6"], ["whole number: total_steps=1000000"]),
    "n_jobs on the default launcher": Case(
        ["-m", "seed=0,1", "hydra.launcher.n_jobs=2"], ["no n_jobs", "hydra/launcher=batched"]
    ),
    "lr infinite": Case(["optim.lr=inf"], ["optim.lr=inf", "finite"]),
    "group removed": Case(["~env"], ["env.id", "env=CartPole-v1"]),
    "seed too large": Case(["seed=99999999999999999999"], ["seed=99999999999999999999", "2**32"]),
    "unwritable run dir": Case(["hydra.run.dir=/proc/pgrun-run"], ["/proc/pgrun-run", "writable"]),
    "run dir name too long": Case([f"hydra.run.dir={'x' * 300}"], ["File name too long"]),
    "resume garbage overrides": Case(
        ["resume=run"], [".hydra/overrides.yaml", "damaged"], needs_run="garbage_overrides"
    ),
    "resume without config": Case(
        ["resume=run"], [".hydra/config.yaml", "missing"], needs_run="no_config"
    ),
    "resume another policy": Case(
        ["resume=run"], ["does not fit this run's policy"], needs_run="other_policy"
    ),
    "env obs nan": Case(bad_env("nan_obs"), ["non-finite observation", "fix the env"], code=3),
    "env reward nan": Case(bad_env("nan_reward"), ["non-finite reward", "fix the env"], code=3),
    "env reward inf": Case(bad_env("inf_reward"), ["non-finite reward", "inf"], code=3),
    "env obs shape reset": Case(bad_env("shape_reset"), ["BadOutput-v0", "reset"]),
    "env obs shape step": Case(bad_env("shape_step"), ["BadOutput-v0", "observation_space"]),
    # the vector env stores None as NaN
    "env obs none": Case(bad_env("none_obs"), ["non-finite observation", "fix the env"], code=3),
    "env reward string": Case(bad_env("str_reward"), ["BadOutput-v0", "a number as reward"]),
    "batch too big": Case(
        ["batch_episodes=200000", "env.horizon=100000000"],
        ["batch_episodes=200000", "available", "lower batch_episodes or env.horizon"],
    ),
    "observation too big": Case(
        ["env.id=bad_env:Huge-v0", "batch_episodes=2", "env.horizon=null"],
        ["needs about", "available"],
    ),
}
if not torch.cuda.is_available():  # the cuda case only exists on a machine without one
    CASES["cuda without cuda"] = Case(["device=cuda"], ["device='cuda'", "device=cpu"])


def fabricate_run(path: Path, cwd: Path, kind: str, server: ForkServer) -> None:
    """A run directory as pgrun leaves it (.hydra record and a checkpoint), made without
    training: its config is the default one, or one with a key this version does not have
    ("old"); "garbage_overrides", "no_config" and "other_policy" damage one part of it."""
    import pgrun

    (path / ".hydra").mkdir(parents=True)
    config = server.run(["--cfg", "job"], cwd=cwd, env=pgrun_env()).stdout
    if kind == "old":
        config += "legacy_key: 1\n"
    (path / ".hydra" / "config.yaml").write_text(config)
    (path / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml([]))
    state = {"version": "0.0.0", "iteration": 1}
    if kind == "garbage_overrides":
        (path / ".hydra" / "overrides.yaml").write_text("{[: not yaml\n")
    elif kind == "no_config":
        (path / ".hydra" / "config.yaml").unlink()
    elif kind == "other_policy":  # this version's checkpoint of another network
        state = {"version": pgrun.__version__, "iteration": 1, "policy": {"w": torch.zeros(3)}}
    torch.save(state, path / "checkpoint-00000001.pt")


def launch(name: str, case: Case, base: Path, plugins: Path, server: ForkServer):
    cwd = base / name.replace(" ", "_")
    cwd.mkdir()
    if case.needs_run in ("sweep", "damaged_sweep"):  # a sweep's directory: its record, a job
        fabricate_run(cwd / "sweep" / "seed=0", cwd, "run", server)
        record = "hydra: {}\n" if case.needs_run == "sweep" else "hydra: [\n"
        (cwd / "sweep" / "multirun.yaml").write_text(record)
    elif case.needs_run == "nested":  # a directory with runs two levels down
        fabricate_run(cwd / "outs" / "multirun" / "a_sweep" / "seed=0", cwd, "run", server)
    elif case.needs_run:
        where = "old" if case.needs_run == "old" else "run"
        fabricate_run(cwd / where, cwd, case.needs_run, server)
    before = sorted(p.relative_to(cwd) for p in cwd.rglob("*"))
    env = pgrun_env({"PYTHONPATH": str(plugins), **case.env})
    done = server.run(["total_steps=200", *case.args], cwd=cwd, env=env)
    return done, before, cwd


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("bad_input")
    plugins = base / "plugins"
    (plugins / "Box2D").mkdir(parents=True)
    (plugins / "Box2D" / "__init__.py").write_text(NO_BOX2D)
    (plugins / "broken_module.py").write_text(BROKEN_MODULE)
    (plugins / "broken_ctor.py").write_text(BROKEN_CONSTRUCTOR)
    (plugins / "bad_env.py").write_text(BAD_OUTPUT)
    (plugins / "bad_weights.py").write_text(BAD_WEIGHTS)
    with ForkServer(pgrun_env()) as server:
        return {name: launch(name, case, base, plugins, server) for name, case in CASES.items()}


def test_the_battery_has_at_least_25_cases():
    assert len(CASES) >= 25


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_clear_line(outcomes, name):
    case = CASES[name]
    done, before, cwd = outcomes[name]
    assert done.returncode == case.code, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("pgrun: error: ")
    for text in case.says:
        assert text in lines[0], (text, lines[0])
    # nothing new is left behind: no run directory, no half-written record in a resumed one
    after = sorted(p.relative_to(cwd) for p in cwd.rglob("*") if p.name != "pgrun.log")
    assert after == [p for p in before if p.name != "pgrun.log"], after
    assert not (cwd / "outputs").exists()
