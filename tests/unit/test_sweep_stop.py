"""pgrun.signals.forwarding: a sweep's first stop reaches every worker once it listens for it,
one still starting when the stop came and one started after it alike."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pgrun import signals

# A worker that listens for the sweep's stop only after `delay` seconds (as a job's process does
# once its imports are done); told, it writes `told` and exits 0; never told, it exits 3.
WORKER = """
import signal, sys, time
delay, told = float(sys.argv[1]), sys.argv[2]
time.sleep(delay)
def stop(signum, frame):
    open(told, "w").close()
    sys.exit(0)
signal.signal(signal.SIGUSR1, stop)
time.sleep(15)
sys.exit(3)
"""


def start_worker(delay: float, told: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WORKER, str(delay), str(told)])


def test_a_worker_not_yet_listening_or_started_later_is_told_once_it_listens(
    tmp_path: Path, monkeypatch
):
    """The stop comes while one worker is still starting (it listens 1 s later) and before the
    other exists. The first would die of the signal (SIGUSR1's default) and the second never
    hear of it and train on; both are told once they listen, once each (a second SIGUSR1
    would find no handler in them: they exit after the first)."""
    monkeypatch.setattr(signals, "_first_request", None)  # no earlier stop in this process
    starting = start_worker(1.0, tmp_path / "starting")
    workers = [starting]
    with signals.forwarding(lambda: [w.pid for w in workers]) as stopped:
        os.kill(os.getpid(), signal.SIGINT)  # the sweep's Ctrl-C
        deadline = time.monotonic() + 5
        while not stopped and time.monotonic() < deadline:
            time.sleep(0.01)  # the handler runs in this (the main) thread
        assert stopped == [signal.SIGINT]
        later = start_worker(0.5, tmp_path / "later")
        workers.append(later)
        codes = [w.wait(timeout=30) for w in workers]
    assert codes == [0, 0], codes
    assert (tmp_path / "starting").is_file() and (tmp_path / "later").is_file()
