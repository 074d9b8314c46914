"""SIGINT and SIGTERM outside the training loop.

Inside the loop the trainer's StopRequest finishes the iteration and saves a checkpoint. Before
it (config, env construction) a signal raises Interruption, a KeyboardInterrupt, which passes
every `except Exception`, so the command can remove a run that has nothing to keep yet and say
so in one line. After the final checkpoint (closing the envs and the logger) signals are
deferred: the run is complete, and a signal then must not cost it its policy.pt.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interruption(KeyboardInterrupt):  # noqa: N818 (a signal, as KeyboardInterrupt)
    """SIGINT or SIGTERM outside the training loop: a KeyboardInterrupt, so that what stops on
    Ctrl-C (a launcher waiting for its jobs cancels them) stops on SIGTERM too."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


ECHO_S = 0.5
"""A SIGINT or SIGTERM this soon after the first stop request is the same request again, not
a second one: GNU timeout sends its signal to the command and then to its process group, so
pgrun gets it twice at once, and a sweep's worker can get it after its sweep's own stop
(SWEEP_STOP). Only a signal after this acts at once."""

_first_request: float | None = None
"""time.monotonic() when this process got its first stop request, or None."""


def note_request() -> None:
    """A stop request arrived (its first handler calls this)."""
    global _first_request
    if _first_request is None:
        _first_request = time.monotonic()


def echo() -> bool:
    """Whether a signal now repeats the first stop request (ECHO_S): it is ignored."""
    return _first_request is not None and time.monotonic() - _first_request < ECHO_S


def _raise(signum: int, frame) -> None:
    if echo():
        return
    note_request()
    raise Interruption(signum)


def raise_on_signals() -> None:
    """From now on SIGINT and SIGTERM raise Interruption (in the main thread)."""
    if threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            signal.signal(sig, _raise)


@contextlib.contextmanager
def deferred(what: str) -> Iterator[None]:
    """Inside, a first SIGINT or SIGTERM is only reported; a second one acts as before."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}

    def note(signum: int, frame) -> None:
        if echo():
            return
        note_request()
        log.warning(f"{signal.Signals(signum).name} while {what}: finishing that first")
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    for sig in SIGNALS:
        signal.signal(sig, note)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def spawning() -> Iterator[None]:
    """While worker processes are started: SIGINT and SIGTERM ignored, a disposition the
    workers inherit until their first code sets its own (worker_listens), so that a Ctrl-C
    while they import does not print a traceback from each of them."""
    starts_workers()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def quiet_exit() -> None:
    """The command is done (its runs complete, or stopped and reported): SIGINT and SIGTERM are
    ignored while the interpreter exits, where a KeyboardInterrupt would only print a traceback
    from the thread joins of a launcher's exit."""
    if threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


# ------------------------------------------------------------------ a sweep's worker processes

SWEEP_STOP = signal.SIGUSR1
"""What a sweep's process sends its worker processes (the joblib and batched launchers') when it
gets SIGINT or SIGTERM: stop after the current iteration and save a checkpoint, as the signal
would stop a run of its own. It is a signal of its own so that a worker that got the first
signal itself too (Ctrl-C reaches the terminal's whole process group) does not take the second
as one that stops it at once: it never escalates."""

sweep_stopping = False
"""In a worker process: its sweep's process asked it to stop (no further job is started)."""

SWEEP_PID = "PGRUN_SWEEP_PID"
"""The environment variable that names a sweep's process to the worker processes it starts."""

PARENT_POLL_S = 0.5
"""How often a sweep's worker looks whether its sweep's process still lives."""

sweep_gone = False
"""In a worker process: its sweep's process ended without stopping it (kill -9, a crash)."""

_watching = False


def starts_workers() -> None:
    """In a sweep's process, before it starts worker processes: they watch it (watch_sweep)."""
    os.environ[SWEEP_PID] = str(os.getpid())


def watch_sweep() -> None:
    """In a sweep's worker process: when the sweep's process that started it ends without
    stopping it (kill -9 of that process alone, a crash), stop as on its SWEEP_STOP: the job
    saves a checkpoint after its iteration and the worker, with nobody to report to, exits,
    where it would train on unseen, holding its job's lock against the next `pgrun resume=`.
    Nothing is watched in the sweep's own process (a launcher running its jobs in it)."""
    global _watching
    parent = os.getppid()
    if _watching or os.environ.get(SWEEP_PID) != str(parent):
        return
    _watching = True

    def watch() -> None:
        global sweep_gone
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        sweep_gone = True
        os.kill(os.getpid(), SWEEP_STOP)

    threading.Thread(target=watch, name="pgrun-watch-sweep", daemon=True).start()


def exit_if_sweep_gone() -> None:
    """In a sweep's worker whose sweep's process is gone (watch_sweep), once its job has
    stopped and released its directory: exit, where the launcher's worker would wait for ever
    to report to nobody (joblib's does)."""
    if sweep_gone:
        logging.shutdown()
        os._exit(128 + SWEEP_STOP)


def note_sweep_stop(signum: int, frame) -> None:
    global sweep_stopping
    sweep_stopping = True
    note_request()


def _worker_signal(signum: int, frame) -> None:
    """SIGINT or SIGTERM in a worker outside a training loop: the first is noted as a stop of
    the sweep (a job being prepared stops after its first iteration, with a checkpoint; the
    next job is not started), a second (also the second in a loop) ends the worker at once:
    its sweep's process is stopping too, and an exception would only print a traceback from
    wherever the worker is (its exit, a library's clean-up). A killed writer's temporary files
    and locks are cleared by the next one. A signal that only repeats the first (echo) is
    ignored."""
    if echo():
        return
    if sweep_stopping:
        os._exit(128 + signum)
    note_sweep_stop(signum, frame)


def worker_listens() -> None:
    """In a sweep's worker process, before its jobs: SWEEP_STOP, and a first SIGINT or SIGTERM
    outside a training loop, are noted (pgrun.trainer's StopRequest stops the loop on it; a job
    not started yet is not started), where a KeyboardInterrupt would end the job, and the
    launcher then every other job at once."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(SWEEP_STOP, note_sweep_stop)
        for sig in SIGNALS:
            signal.signal(sig, _worker_signal)
        watch_sweep()


@contextlib.contextmanager
def forwarding(workers: Callable[[], Iterable[int]]) -> Iterator[list[int]]:
    """In a sweep's process while its jobs run in worker processes (`workers()`: their pids): a
    first SIGINT or SIGTERM is passed to the workers as SWEEP_STOP and recorded in the list
    this yields, while the sweep waits for its jobs to checkpoint and return; a second acts as
    before (Interruption: the launcher stops its workers at once)."""
    got: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    ended = threading.Event()

    def first(signum: int, frame) -> None:
        if echo():
            return
        note_request()
        got.append(signum)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        name = signal.Signals(signum).name
        print(
            f"pgrun: {name}: stopping the sweep: a running job saves a checkpoint after its "
            f"iteration, and no other job starts ({name} again stops them at once)",
            file=sys.stderr,
            flush=True,
        )

    # The workers are told by a thread of its own, started now: a handler that started one
    # (or took any lock) could wait for ever on a lock the main thread held when the signal
    # came, as Thread.start's own does while another thread starts.
    teller = threading.Thread(
        target=_tell_workers_once_stopped,
        args=(got, workers, ended),
        name="pgrun-sweep-stop",
        daemon=True,
    )
    teller.start()
    for sig in SIGNALS:
        signal.signal(sig, first)
    try:
        yield got
    finally:
        ended.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


TELL_POLL_S = 0.05
"""How often a sweep's launcher looks whether it was stopped, and then for workers that were
not yet listening for its stop."""


def listens(pid: int, signum: int) -> bool | None:
    """Whether process `pid` has a handler for `signum` (Linux's /proc/<pid>/status, SigCgt);
    None where that cannot be read (no /proc, the process gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except (OSError, ValueError):
        return None
    return None


def tell_workers(workers: Callable[[], Iterable[int]], told: set[int]) -> None:
    """SWEEP_STOP to each worker in `workers()` not in `told` that listens for it (then added to
    `told`). A worker still starting (importing, or a job's process its controller has just
    started) would die of it, or miss it if it ignores it, and then start its job as if the
    sweep went on: it is told once it listens (_tell_workers_once_stopped)."""
    for pid in workers():
        if pid in told or listens(pid, SWEEP_STOP) is False:
            continue
        told.add(pid)
        with contextlib.suppress(OSError):
            os.kill(pid, SWEEP_STOP)


def _tell_workers_once_stopped(
    got: list[int], workers: Callable[[], Iterable[int]], ended: threading.Event
) -> None:
    """While a sweep's launcher waits for its workers (until `ended`): once its first stop is
    in `got`, each worker is told as it listens, those that were still starting or started
    since included (tell_workers)."""
    told: set[int] = set()
    while not ended.wait(TELL_POLL_S):
        if got:
            with contextlib.suppress(Exception):  # a pool changing under the look: the next one
                tell_workers(workers, told)


class WorkerLost(BaseException):  # noqa: N818
    """A launcher's worker process died (SIGKILL: the out-of-memory killer, kill -9) and joblib
    stopped the sweep's other workers with it. A BaseException: Hydra prints any Exception of
    a sweep as a traceback; this passes through to the command's one line."""

    def __init__(self, error: BaseException):
        import re

        codes = re.search(r"exit codes of the workers are \{([^}]*)\}", str(error))
        how = f" ({codes.group(1)})" if codes else ""
        super().__init__(
            f"a worker process of the sweep was killed{how}, e.g. by the out-of-memory killer: "
            "the sweep stopped, and its jobs keep their last checkpoints"
        )


def wait_forwarding(call: Callable[[], Any], workers: Callable[[], Iterable[int]]) -> Any:
    """call() (a launcher waiting for its workers' jobs) inside `forwarding`; once it returns
    after a first signal, Interruption for that signal (the sweep stops as a run does). An
    error of the pool after the signal (a worker it reached before its set-up ended with it,
    having no job yet) is part of the stop."""
    starts_workers()
    with forwarding(workers) as stopped:
        try:
            result = call()
        except Exception as exc:
            if not stopped:
                if type(exc).__name__ == "TerminatedWorkerError":  # joblib's, at a worker's death
                    raise WorkerLost(exc) from None
                raise
    if stopped:
        raise Interruption(stopped[0])
    return result


def interruptible(prog: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A console script's main, with Ctrl-C (and SIGTERM) as one line and status 128 + signal
    instead of a KeyboardInterrupt's traceback; the handlers it had are back when main ends."""
    import functools

    def wrap(main: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(main)
        def run(*args: Any, **kwargs: Any) -> Any:
            main_thread = threading.current_thread() is threading.main_thread()
            before = {sig: signal.getsignal(sig) for sig in SIGNALS} if main_thread else {}
            raise_on_signals()
            try:
                return main(*args, **kwargs)
            except KeyboardInterrupt as exc:
                signum = getattr(exc, "signum", signal.SIGINT)
                quiet_exit()
                print(f"{prog}: interrupted ({signal.Signals(signum).name})", file=sys.stderr)
                raise SystemExit(128 + signum) from None
            finally:
                for sig, handler in before.items():
                    signal.signal(sig, handler)

        return run

    return wrap
