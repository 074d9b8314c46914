"""pgrun/hints.py: env.id=<id> takes that env's file when it has one, and the warning for a
learned value bootstrapped with gamma = 1 at a time limit."""

from __future__ import annotations

import pytest
from conftest import describe, run_pgrun
from omegaconf import OmegaConf

from pgrun.config import UserError
from pgrun.hints import env_id_argv, value_gamma_warning


def test_an_id_with_an_env_file_takes_the_file():
    assert env_id_argv(["env.id=MountainCar-v0", "seed=1"]) == ["env=MountainCar-v0", "seed=1"]
    assert env_id_argv(["env.id=ALE/Pong-v5"]) == ["env=ALE/Pong-v5"]
    assert env_id_argv(["-m", "env.id=Acrobot-v1,Pendulum-v1"]) == [
        "-m",
        "env=Acrobot-v1,Pendulum-v1",
    ]


def test_an_id_without_a_file_drops_the_default_files_threshold():
    assert env_id_argv(["env.id=FrozenLake-v1"]) == [
        "env.id=FrozenLake-v1",
        "env.solved_return=null",
        "env.random_return=null",
    ]
    given = ["env.id=my_pkg.envs:Line-v0", "env.solved_return=10"]
    assert env_id_argv(given) == [*given, "env.random_return=null"]


def test_other_arguments_are_left_alone():
    for args in (["seed=1"], ["env=Acrobot-v1", "env.id=Acrobot-v1"], ["--cfg", "job"]):
        assert env_id_argv(list(args)) == args
    with pytest.raises(UserError, match="CartPole-v1 has an env file"):
        env_id_argv(["-m", "env.id=CartPole-v1,FrozenLake-v1"])


def test_an_id_with_a_file_of_its_own_beside_another_env_file_is_named(capsys):
    args = ["env=CartPole-v1", "env.id=MountainCar-v0"]
    assert env_id_argv(list(args)) == args  # allowed: the file's settings for another id
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("pgrun: warning: env.id=MountainCar-v0 with env=CartPole-v1:")
    assert line.endswith("env=MountainCar-v0 takes its own")
    # a registered id without a file: Pendulum's threshold (-200) said "solved" of its returns
    env_id_argv(["env=Pendulum-v1", "env.id=FrozenLake-v1"])
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("pgrun: warning: env.id=FrozenLake-v1 with env=Pendulum-v1:")
    assert line.endswith(
        "env.id=FrozenLake-v1 alone takes none of them (FrozenLake-v1 has no env file)"
    )
    for quiet in (
        ["env=CartPole-v1", "env.id=my_pkg:Line-v0"],
        ["env=Acrobot-v1", "env.id=Acrobot-v1"],
    ):
        env_id_argv(quiet)
    assert capsys.readouterr().err == ""


def test_pgrun_env_id_composes_that_env_file(tmp_path):
    proc = run_pgrun(["env.id=MountainCar-v0", "--cfg", "job"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    env = OmegaConf.create(proc.stdout).env
    assert (env.id, env.horizon, env.solved_return, env.normalize_obs) == (
        "MountainCar-v0",
        200,
        -110,
        True,
    )


def cfg(**over):
    base = {
        "variant": {"baseline": "value"},
        "gamma": 1.0,
        "env": {"id": "CartPole-v1", "truncation": "bootstrap"},
    }
    return OmegaConf.merge(base, over)


def test_value_baseline_with_gamma_1_at_a_time_limit_warns_once():
    line = value_gamma_warning(cfg(), 500)
    assert line.startswith("pgrun: warning: variant.baseline=value with gamma=1")
    assert "CartPole-v1's time limit (500 steps)" in line and "\n" not in line
    assert value_gamma_warning(cfg(gamma=0.99), 500) is None
    assert value_gamma_warning(cfg(variant={"baseline": "time"}), 500) is None
    assert value_gamma_warning(cfg(env={"truncation": "terminate"}), 500) is None
    assert value_gamma_warning(cfg(), None) is None
