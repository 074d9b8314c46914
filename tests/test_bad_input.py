"""The bad-input battery: every mistake a user can make on the command line gets one line.

For each case the real `pgrun` command must exit non-zero, print no traceback, print exactly one
line on stderr (`pgrun: error: ...`) that names the offending key or value and what is accepted,
and leave no new run directory behind. All cases are launched at once (four at a time) by a
module fixture; each test then checks one of them.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from conftest import run_pgrun
from omegaconf import OmegaConf

BROKEN_MODULE = 'raise RuntimeError("this module is broken")\n'
BROKEN_CONSTRUCTOR = """
import gymnasium as gym


class Broken(gym.Env):
    def __init__(self, **kwargs):
        raise ValueError("the constructor failed")


gym.register(id="Broken-v0", entry_point=Broken, max_episode_steps=10)
"""
# An importable package named Box2D that fails like a missing install.
NO_BOX2D = 'raise ImportError("No module named Box2D")\n'


@dataclass
class Case:
    args: list[str]
    says: list[str]  # substrings the error line must hold: the key or value, and the remedy
    env: dict[str, str] = field(default_factory=dict)
    needs_run: str | None = None  # a fabricated run directory to resume: "run" or "old"
    code: int = 2


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
    "constructor raises": Case(["env.id=broken_ctor:Broken-v0"], ["Broken-v0", "ValueError"]),
    "missing extra": Case(["env=LunarLander-v3"], ["LunarLander-v3", ".[box2d]"]),
    "cnn on vectors": Case(["env=Pendulum-v1", "policy=cnn"], ["policy=cnn", "policy=mlp"]),
    "squash on discrete": Case(["policy.squash=true"], ["policy.squash", "Box"]),
    "resume not a run": Case(["resume=nowhere"], ["resume=nowhere", "not a pgrun run"]),
    "resume with a change": Case(
        ["resume=run", "seed=3"], ["seed=3", "total_steps"], needs_run="run"
    ),
    "resume as a sweep": Case(["-m", "resume=run"], ["-m"], needs_run="run"),
    "resume other version": Case(
        ["resume=old"], ["another config or pgrun version"], needs_run="old"
    ),
}
if not torch.cuda.is_available():  # the cuda case only exists on a machine without one
    CASES["cuda without cuda"] = Case(["device=cuda"], ["device='cuda'", "device=cpu"])


def fabricate_run(path: Path, cwd: Path, other_version: bool) -> None:
    """A run directory as pgrun leaves it (.hydra record and a checkpoint), made without
    training: its config is the default one, or one with a key this version does not have."""
    (path / ".hydra").mkdir(parents=True)
    config = run_pgrun(["--cfg", "job"], cwd=cwd).stdout
    if other_version:
        config += "legacy_key: 1\n"
    (path / ".hydra" / "config.yaml").write_text(config)
    (path / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml([]))
    torch.save({"version": "0.0.0"}, path / "checkpoint-00000001.pt")


def launch(name: str, case: Case, base: Path, plugins: Path) -> tuple[str, object, Path]:
    cwd = base / name.replace(" ", "_")
    cwd.mkdir()
    if case.needs_run:
        fabricate_run(cwd / case.needs_run, cwd, other_version=case.needs_run == "old")
    before = sorted(p.relative_to(cwd) for p in cwd.rglob("*"))
    done = run_pgrun(["total_steps=200", *case.args], cwd=cwd, env={"PYTHONPATH": str(plugins)})
    return name, (done, before), cwd


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("bad_input")
    plugins = base / "plugins"
    (plugins / "Box2D").mkdir(parents=True)
    (plugins / "Box2D" / "__init__.py").write_text(NO_BOX2D)
    (plugins / "broken_module.py").write_text(BROKEN_MODULE)
    (plugins / "broken_ctor.py").write_text(BROKEN_CONSTRUCTOR)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = pool.map(lambda item: launch(*item, base, plugins), CASES.items())
        return {name: (done, before, cwd) for name, (done, before), cwd in results}


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
