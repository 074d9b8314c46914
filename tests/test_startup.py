"""The command's start-up: Hydra's mode probe (a whole extra composition of the config) is
skipped where the mode is known to be RUN, and only there."""

from __future__ import annotations

import pytest
from conftest import run_pgrun
from hydra._internal.hydra import Hydra

from pgrun.cli import skip_mode_probe


@pytest.fixture
def restore_get_mode(monkeypatch):
    monkeypatch.setattr(Hydra, "get_mode", Hydra.get_mode)  # undone after the test


@pytest.mark.parametrize(
    ("args", "skipped"),
    [
        ([], True),
        (["seed=3", "variant=rtg"], True),
        (["-m", "seed=0,1"], False),
        (["--multirun", "seed=0,1"], False),
        (["hydra.mode=MULTIRUN", "seed=0,1"], False),
        (["+hydra.mode=RUN"], False),
    ],
)
def test_the_probe_is_skipped_only_without_a_mode_request(restore_get_mode, args, skipped):
    original = Hydra.get_mode
    skip_mode_probe(args)
    assert (Hydra.get_mode is not original) == skipped
    if skipped:
        assert Hydra.get_mode(None, "config", args) is None  # Hydra: RUN unless --multirun


def test_a_mode_given_as_an_override_still_sweeps(tmp_path):
    done = run_pgrun(
        ["hydra.mode=MULTIRUN", "seed=0,1", "total_steps=100", "batch_episodes=2"], tmp_path
    )
    assert done.returncode == 0, done.stderr
    jobs = sorted(p.parent.name for p in tmp_path.glob("outputs/multirun/*/*/.hydra"))
    assert len(jobs) == 2, jobs
