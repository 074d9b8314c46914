"""pgrun.workers: the batched launcher's processes; a worker that dies costs its own task only."""

from __future__ import annotations

import os
import signal

import pytest

from pgrun.workers import Lost, Pool


def twice_or_die(x: int) -> int:
    if x == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would
    return 2 * x


def test_a_dead_worker_costs_its_own_task_only():
    """Four tasks on two workers; the second kills its worker. The others' results come back in
    the tasks' order, the dead one's is a Lost (reported once, with the signal), and a new
    worker took the waiting tasks."""
    pool = Pool(2)
    first = set(pool.pids())
    lost: list[tuple[int, str]] = []
    try:
        out = pool.map(
            lambda x: twice_or_die(x),
            [(0,), (1,), (2,), (3,)],
            on_lost=lambda i, how: lost.append((i, how.how)),
        )
        assert set(pool.pids()) != first  # the dead one was replaced
    finally:
        pool.close()
    assert out[0] == 0 and out[2] == 4 and out[3] == 6, out
    assert out[1] == Lost("SIGKILL(-9)")
    assert lost == [(1, "SIGKILL(-9)")]


def test_an_error_is_raised_once_the_running_tasks_are_done():
    def fail(x: int) -> int:
        if x == 0:
            raise ValueError("bad task")
        return x

    pool = Pool(2)
    try:
        with pytest.raises(ValueError, match="bad task"):
            pool.map(fail, [(0,), (1,)])
    finally:
        pool.close()
