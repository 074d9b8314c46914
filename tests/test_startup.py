"""The command's start-up and exit: Hydra's mode probe (a whole extra composition of the
config) is skipped where the mode is known to be RUN, and only there; the collector is frozen
after a single run's start-up; a finished run's process ends after its exit handlers."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest
from conftest import run_pgrun
from hydra._internal.hydra import Hydra

from pgrun.cli import settle_collector, skip_mode_probe


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


def test_the_collector_is_frozen_and_turned_back_on_once():
    gc.disable()
    try:
        settle_collector()
        assert gc.isenabled() and gc.get_freeze_count() > 0
        frozen = gc.get_freeze_count()
        settle_collector()  # a sweep's next job in this process: nothing more is frozen
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
        gc.enable()


def test_the_process_ends_after_its_exit_handlers_with_its_output_flushed(tmp_path):
    marker = tmp_path / "handler-ran"
    code = (
        "import atexit, pathlib, sys\n"
        "from pgrun.cli import end_process\n"
        f"atexit.register(pathlib.Path({str(marker)!r}).write_text, 'yes')\n"
        "print('buffered', end='')\n"
        "sys.stderr.write('also buffered')\n"
        "end_process()\n"
        "raise SystemExit(5)  # not reached\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "buffered", "also buffered")
    assert marker.read_text() == "yes"


def test_a_thread_still_running_is_left_to_the_ordinary_exit(tmp_path):
    marker = tmp_path / "thread-finished"
    code = (
        "import pathlib, threading, time\n"
        "from pgrun.cli import end_process\n"
        f"done = lambda: (time.sleep(0.3), pathlib.Path({str(marker)!r}).write_text('yes'))\n"
        "threading.Thread(target=done).start()\n"
        "end_process()  # returns: the process would otherwise end under the thread\n"
        "raise SystemExit(7)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 7, done.stderr
    assert marker.read_text() == "yes"
