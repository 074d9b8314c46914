"""The pieces that keep runs apart, one at a time: checkpoint pruning by stored iteration and run,
atomic writes on a full disk, the run lock, the batch-memory estimate, and quoting a path for
Hydra's override grammar."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from pgrun import checkpoint, guards, rundir
from pgrun.cli import quote, unquote


def state(run_id: str, iteration: int) -> dict:
    return {"run_id": run_id, "iteration": iteration, "policy": {"w": torch.zeros(2)}}


def test_pruning_keeps_this_runs_newest_by_the_stored_iteration(tmp_path):
    # another run's checkpoint with a higher number, and one of this run under a lying name
    torch.save(state("other", 99), tmp_path / "checkpoint-00000099.pt")
    torch.save(state("mine", 1), tmp_path / "checkpoint-00000050.pt")
    for i in (2, 3, 4):
        checkpoint.save(tmp_path, i, state("mine", i))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["checkpoint-00000003.pt", "checkpoint-00000004.pt", "checkpoint-00000099.pt"]
    assert checkpoint.stored_iteration(tmp_path / "checkpoint-00000099.pt") == ("other", 99)


def test_a_run_does_not_read_back_the_checkpoints_it_wrote(tmp_path, monkeypatch):
    """Pruning asks every checkpoint of the run for its stored iteration at each save: the ones
    this process wrote are known without loading them; a file replaced since is read again."""
    checkpoint.save(tmp_path, 1, state("mine", 1))
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a[0]) or real_load(*a, **k))
    for i in (2, 3):
        checkpoint.save(tmp_path, i, state("mine", i))
    assert loads == []
    path = tmp_path / "checkpoint-00000003.pt"
    torch.save(state("other", 7), path)
    assert checkpoint.stored_iteration(path) == ("other", 7) and loads == [path]


def test_the_newest_checkpoint_is_the_highest_stored_iteration(tmp_path):
    torch.save(state("a", 7), tmp_path / "checkpoint-00000002.pt")
    torch.save(state("a", 5), tmp_path / "checkpoint-00000009.pt")
    (tmp_path / ".checkpoint-00000010.pt.123.tmp").write_bytes(b"partial")
    assert checkpoint.load_latest(tmp_path)["iteration"] == 7
    assert not list(tmp_path.glob(".*.tmp"))  # a killed writer's temporary file is gone


def test_a_full_disk_leaves_the_previous_file_whole_and_nothing_else(tmp_path, monkeypatch):
    target = tmp_path / "policy.pt"
    checkpoint.write_atomic(target, {"v": torch.ones(3)})
    before = target.read_bytes()

    def full_disk(obj, f):
        f.write(b"x" * 4096)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(checkpoint.WriteError, match="cannot write policy.pt .*No space left"):
        checkpoint.write_atomic(target, {"v": torch.zeros(3)})
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.pt"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_checkpoints_get_the_mode_of_the_runs_other_files(tmp_path, monkeypatch, umask):
    """A colleague who can read a run's metrics on a shared disk can load its checkpoints and
    policy.pt: they are made as open() makes a file, 0666 less the umask (not mkstemp's 0600)."""
    monkeypatch.setattr(checkpoint, "_UMASK", umask)  # the process's, read at import
    old = os.umask(umask)
    try:
        checkpoint.write_atomic(tmp_path / "policy.pt", 1)
        (tmp_path / "metrics.csv").write_text("")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes["policy.pt"] == modes["metrics.csv"] == 0o666 & ~umask


def test_temporary_files_are_unique_per_writer(tmp_path, monkeypatch):
    """Each write goes through its own temporary file (made with O_EXCL by mkstemp), so two
    processes writing the same checkpoint never share one."""
    renamed = []
    real = os.replace

    def spy(src, dst):
        renamed.append(Path(src).name)
        real(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    checkpoint.write_atomic(tmp_path / "a.pt", 1)
    checkpoint.write_atomic(tmp_path / "a.pt", 2)
    assert len(set(renamed)) == 2, renamed
    assert all(n.startswith(".a.pt.") and n.endswith(".tmp") for n in renamed), renamed


HOLD = """
import sys, time
from pgrun import rundir
rundir.acquire(sys.argv[1])
print("held", flush=True)
time.sleep(60)
"""


def test_the_lock_names_its_holder_and_dies_with_it(tmp_path):
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline() == "held\n"
        who = rundir.holder(tmp_path)
        assert who is not None and who.startswith(f"pid {child.pid} on ")
        with pytest.raises(rundir.Busy, match=f"pid {child.pid}"):
            rundir.acquire(tmp_path)
    finally:
        child.kill()
        child.wait()
    assert rundir.holder(tmp_path) is None  # released by the OS: the file left is no lock
    lock = rundir.acquire(tmp_path)
    assert rundir.holder(tmp_path).startswith(f"pid {os.getpid()} ")
    rundir.release(lock)
    assert not (tmp_path / rundir.LOCK_FILE).exists()


def test_a_holder_that_has_not_written_its_line_yet_is_named_once_it_has(tmp_path):
    """The instant between a holder's lock and its line in the lock file (two runs started
    together into one directory): the refused one waits for the line and names the holder;
    a holder that never writes one is 'another process'."""
    import fcntl
    import threading

    fd = os.open(tmp_path / rundir.LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(rundir.Busy, match=r"another pgrun \(another process\)"):
            rundir.acquire(tmp_path)
        line = b"pid=4242 host=elsewhere started=2026-01-01T00:00:00+0000\n"
        writer = threading.Timer(0.03, lambda: os.pwrite(fd, line, 0))
        writer.start()
        with pytest.raises(rundir.Busy, match="pid 4242 on elsewhere"):
            rundir.acquire(tmp_path)
        writer.join()
    finally:
        os.close(fd)


def test_a_directory_holding_a_run_is_not_claimed(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    rundir.release(rundir.held(rundir.claim(tmp_path / "run", "start over")))  # no run in it
    torch.save({}, tmp_path / "run" / "checkpoint-00000001.pt")
    with pytest.raises(rundir.RunDirError, match="holds a run already.*pgrun resume="):
        rundir.claim(tmp_path / "run", "start over")


def test_batch_bytes_counts_the_buffers():
    obs = gym.spaces.Box(-1, 1, (4,), np.float32)
    act = gym.spaces.Discrete(2)
    n, t = 16, 500
    # obs (T+1)N x 16 B, actions TN x 8 B, rewards and mask TN x 8 B, all twice; flags 8 B
    want = 2 * ((t + 1) * n * 16 + t * n * 8 + t * n * 8) + t * n * 8
    assert guards.batch_bytes(obs, act, n, t) == want
    frames = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    assert guards.batch_bytes(frames, act, 1, 1) == 2 * (2 * 4 * 84 * 84 + 8 + 8) + 8


@pytest.mark.parametrize(
    "path",
    ["outputs/multirun/t/seed=0,lr=0.1", "a run/ü", "it's", "a\\b", "end\\", "q\\'", "x${y}"],
)
def test_quote_gives_hydra_the_path_unchanged(path):
    value = OverridesParser.create().parse_override(f"resume={quote(path)}").value()
    assert OmegaConf.create({"resume": value}).resume == path  # as the config reads it
    if "${" not in path:
        assert unquote(quote(path)) == path


def test_the_reset_check_takes_any_numeric_layout_and_refuses_another_shape():
    box = gym.spaces.Box(-1, 1, (4,), np.float32)
    guards.check_reset(np.zeros((2, 4), np.float64), box, 2, "E")  # MuJoCo's float64
    guards.check_reset(np.zeros(2, np.int64), gym.spaces.Discrete(3), 2, "E")
    for bad in (np.zeros((2, 3)), None, np.array([None, None])):
        with pytest.raises(guards.EnvOutputError, match="E: reset returned"):
            guards.check_reset(bad, box, 2, "E")


def test_a_run_is_named_by_what_was_typed():
    """The default run directory's name: variant, env, seed, then the other overrides typed,
    not the two that pgrun adds for an env.id without an env file (its solved and random
    returns dropped), nor hydra.* ones."""
    from pgrun.config import run_name

    typed = ["env.id=FrozenLake-v1", "env.horizon=100", "hydra.run.dir=x"]
    added = ["env.solved_return=null", "env.random_return=null"]
    assert (
        run_name("rtg", "FrozenLake-v1", 0, typed + added)
        == "rtg_FrozenLake-v1_seed0_env.horizon=100"
    )
    assert (
        run_name("rtg", "CartPole-v1", 3, ["optim.lr=0.05"])
        == "rtg_CartPole-v1_seed3_optim.lr=0.05"
    )
    # lists: their items, or none (the brackets were dashes: logger=-)
    assert run_name("rtg", "CartPole-v1", 0, ["logger=[]"]) == "rtg_CartPole-v1_seed0_logger=none"
    assert (
        run_name("rtg", "CartPole-v1", 0, ["policy.hidden_sizes=[64, 32]", "logger=[csv]"])
        == "rtg_CartPole-v1_seed0_logger=csv,policy.hidden_sizes=64+32"
    )
