"""The batched launcher's worker processes: each runs one task at a time, and a worker that dies
(the out-of-memory killer, kill -9) costs its own task only. joblib's pool, when one of its
workers dies, stops all the others with it; here the other tasks go on, the dead worker's task
is reported as lost (Lost), and a new worker takes its place while tasks are left.

Workers are started with multiprocessing's "spawn" (a fresh interpreter: no copy of the
parent's threads or locks), run `initializer` once (the imports every task needs), and then
take tasks (a function and its arguments, pickled with cloudpickle) over a pipe until told to
stop or until the parent's end of the pipe closes (the parent died). SIGINT and SIGTERM are
ignored while they start (pgrun.signals.spawning), until the initializer sets its own handlers.

This module imports no torch.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

import cloudpickle

from pgrun import signals

_STOP = b""


def _serve(conn: Connection, initializer: Callable[[], None] | None) -> None:
    """A worker's life: the initializer, then tasks until _STOP or the parent's end."""
    if initializer is not None:
        initializer()
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):  # the parent is gone
            return
        if data == _STOP:
            return
        fn, args = cloudpickle.loads(data)
        try:
            out = ("ok", fn(*args))
        except BaseException as exc:  # noqa: BLE001 (raised again in the parent)
            out = ("error", exc)
        try:
            payload = cloudpickle.dumps(out)
        except Exception as exc:  # noqa: BLE001 (an exception that does not pickle)
            payload = cloudpickle.dumps(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))
        try:
            conn.send_bytes(payload)
        except OSError:  # the parent is gone (killed): nobody to report to
            return


@dataclass
class Lost:
    """A task whose worker process died before returning: `how`, e.g. 'SIGKILL(-9)'."""

    how: str


def _how(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        with contextlib.suppress(ValueError):
            return f"{signal.Signals(-exitcode).name}({exitcode})"
    return f"exit status {exitcode}"


class _Worker:
    def __init__(self, ctx: Any, initializer: Callable[[], None] | None) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, initializer), name="pgrun-worker")
        with signals.spawning():
            self.process.start()
        child.close()
        self.task: int | None = None

    def send(self, data: bytes) -> None:
        """Its next task; a worker that died meanwhile is found by the pool's wait."""
        with contextlib.suppress(BrokenPipeError, OSError):
            self.conn.send_bytes(data)


class Pool:
    """`n` worker processes, started at once (their initializer runs while the caller goes on)."""

    def __init__(self, n: int, initializer: Callable[[], None] | None = None) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self._initializer = initializer
        self._workers = [_Worker(self._ctx, initializer) for _ in range(max(n, 1))]

    def resize(self, n: int) -> None:
        """`n` workers: new ones started, or idle ones stopped (fewer tasks than workers)."""
        n = max(n, 1)
        while len(self._workers) < n:
            self._workers.append(_Worker(self._ctx, self._initializer))
        for w in self._workers[n:]:
            w.send(_STOP)
            w.conn.close()
        del self._workers[n:]

    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    def map(
        self,
        fn: Callable[..., Any],
        tasks: Sequence[tuple],
        on_lost: Callable[[int, Lost], None] | None = None,
    ) -> list[Any]:
        """fn(*task) for each task, in that order of starting, each on the first free worker;
        the results in the tasks' order. A task whose worker died is a Lost (after
        `on_lost(index, lost)`), and a new worker replaces the dead one while tasks wait. An
        exception that fn raised is raised here once the running tasks are done."""
        results: list[Any] = [None] * len(tasks)
        waiting = list(range(len(tasks)))
        error: BaseException | None = None
        try:
            while True:
                for w in self._workers:
                    if w.task is None and waiting and error is None:
                        i = waiting.pop(0)
                        w.task = i
                        w.send(cloudpickle.dumps((fn, tasks[i])))  # if it died: seen below
                busy = [w for w in self._workers if w.task is not None]
                if not busy:
                    break
                ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
                for w in busy:
                    if w.conn not in ready and w.process.sentinel not in ready:
                        continue
                    i = w.task
                    assert i is not None
                    try:
                        kind, value = cloudpickle.loads(w.conn.recv_bytes())
                    except (EOFError, OSError):  # died without a result
                        w.process.join()
                        lost = Lost(_how(w.process.exitcode))
                        results[i] = lost
                        self._workers.remove(w)
                        w.conn.close()
                        if on_lost is not None:
                            on_lost(i, lost)
                        if waiting and error is None:
                            self._workers.append(_Worker(self._ctx, self._initializer))
                        continue
                    w.task = None
                    if kind == "ok":
                        results[i] = value
                    elif error is None:
                        error = value
        except BaseException:
            self.close(kill=True)
            raise
        if error is not None:
            raise error
        return results

    def close(self, kill: bool = False) -> None:
        """Stop the workers: they end once their task is done (`kill`: at once, as a second
        Ctrl-C stops a sweep). Nothing waits for their exit here."""
        for w in self._workers:
            if kill:
                with contextlib.suppress(OSError):
                    os.kill(w.process.pid, signal.SIGKILL)
            else:
                w.send(_STOP)
            w.conn.close()
        self._workers = []
