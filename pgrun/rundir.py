"""Run directories: a new one per run, and one writer per directory.

A run directory is made with `os.mkdir`, which fails when the directory exists, so a new run
never lands in an existing run's directory. The default name is
`<date>_<time>.<ms>_<variant>_<env>_seed<seed>[_<other overrides>]`; two runs that would get
the same name in the same millisecond get `-2`, `-3`, ... appended.

The writer of a run directory (a training run, a resume, a sweep job) holds an exclusive
`fcntl.flock` on `RUN_DIR/.pgrun.lock` for its whole life; the file names it (pid, host, start
time) and is removed when it ends. The operating system releases the lock when the process
ends, however it ends (`kill -9` included), so a lock is never stale: the file a killed
process leaves is taken over by the next writer.

This module imports no torch: the command line uses it before a run starts.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import shlex
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from pgrun.config import UserError

LOCK_FILE = ".pgrun.lock"
# What makes a directory a run's: its Hydra record, a checkpoint, the final policy, events.
RUN_MARKERS = (".hydra", "policy.pt", "checkpoint-*.pt", "events.out.tfevents.*")


class RunDirError(UserError):
    """A run directory that cannot be made or written (one line naming the fix)."""


class Busy(RunDirError):
    """Another process writes this run directory."""


class Refused(BaseException):  # noqa: N818
    """Carries a RunDirError out of a config resolver: Hydra prints any Exception raised while
    it makes the run directory as a traceback; this passes through to the command."""

    def __init__(self, error: RunDirError):
        super().__init__(str(error))
        self.error = error


@dataclass
class Lock:
    """The lock on one run directory, held by this process until release() or its exit."""

    run_dir: Path
    fd: int
    made_dir: bool = False  # this process made the directory (discard() removes it whole)
    before: frozenset[str] | None = None  # its entries when claimed for a new run


_held: dict[str, Lock] = {}  # realpath of the run directory -> the lock this process holds


def _forget_in_child() -> None:
    """A forked child (an async env's worker) must not keep the parent's locks alive after the
    parent dies: close its copies of the descriptors (the lock stays the parent's)."""
    for lock in _held.values():
        with contextlib.suppress(OSError):
            os.close(lock.fd)
    _held.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def display(path: str | os.PathLike) -> str:
    """`path` relative to the working directory where that is shorter, as the user would type it."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return rel if len(rel) <= len(str(path)) else str(path)


def shell(path: str | os.PathLike) -> str:
    """display(path) quoted for a shell where it needs it: what a message tells the user to type."""
    return shlex.quote(display(path))


def _describe_holder(fd: int) -> str:
    """Who holds the lock file open as `fd`, from what it wrote there. A holder writes its line
    just after it takes the lock: an empty file is read again for up to a tenth of a second."""
    deadline = time.monotonic() + 0.1
    text = os.pread(fd, 4096, 0).decode(errors="replace")
    while "pid=" not in text and time.monotonic() < deadline:
        time.sleep(0.005)
        text = os.pread(fd, 4096, 0).decode(errors="replace")
    fields = dict(part.split("=", 1) for part in text.split() if "=" in part)
    if "pid" not in fields:
        return "another process"
    return f"pid {fields['pid']} on {fields.get('host', '?')}, started {fields.get('started', '?')}"


def holder(run_dir: str | os.PathLike) -> str | None:
    """Who holds the lock of `run_dir` ("pid 123 on host, started 2026-01-01 12:00:00"), or
    None when nobody does."""
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _describe_holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    """Is the open file `fd` still the file at `path` (and not one removed meanwhile)?"""
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def acquire(run_dir: str | os.PathLike) -> Lock:
    """Hold the lock of `run_dir` (an existing directory) until release() or the end of this
    process, or raise Busy naming the process that holds it. Acquiring a lock this process
    already holds returns it."""
    run_dir = Path(run_dir)
    key = os.path.realpath(run_dir)
    if key in _held:
        return _held[key]
    path = run_dir / LOCK_FILE
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise RunDirError(
                f"cannot write in {display(run_dir)} ({exc.strerror}): choose a writable directory"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = _describe_holder(fd)
            os.close(fd)
            raise Busy(
                f"{display(run_dir)} is being written by another pgrun ({who}): wait for it to "
                "end, or use another directory"
            ) from None
        if _same_file(fd, path):
            break
        os.close(fd)  # its last holder removed the file as it released it: lock the new one
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    info = f"pid={os.getpid()} host={socket.gethostname()} started={started}\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, info.encode(), 0)
    lock = Lock(run_dir, fd)
    _held[key] = lock
    return lock


def release(lock: Lock) -> None:
    """Give the lock up and remove its file (the end of the process releases it too, and a
    file left by a killed process is taken over by the next writer)."""
    if _held.pop(os.path.realpath(lock.run_dir), None) is None:
        return
    path = lock.run_dir / LOCK_FILE
    with contextlib.suppress(OSError):
        if _same_file(lock.fd, path):
            path.unlink()
        fcntl.flock(lock.fd, fcntl.LOCK_UN)
        os.close(lock.fd)


@atexit.register
def release_all() -> None:
    """Release every lock this process holds (at its exit)."""
    for lock in list(_held.values()):
        release(lock)


def held(run_dir: str | os.PathLike) -> Lock | None:
    """The lock this process holds on `run_dir`, or None."""
    return _held.get(os.path.realpath(run_dir))


def holds_run(path: str | os.PathLike) -> bool:
    """Does `path` hold (part of) a run: its Hydra record, a checkpoint, events, policy.pt?"""
    path = Path(path)
    return any(next(path.glob(marker), None) is not None for marker in RUN_MARKERS)


def run_inside(path: Path, depth: int = 3) -> Path | None:
    """A run in a directory below `path`, up to `depth` levels down (outputs/multirun/<sweep>/
    <job>), or None."""
    for level in range(1, depth + 1):
        for marker in RUN_MARKERS:
            found = next(path.glob("/".join(["*"] * level + [marker])), None)
            if found is not None:
                return found.parent
    return None


def _mkdir(path: Path) -> bool:
    """os.mkdir(path) with its parents; False when `path` exists already."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path)
    except FileExistsError:
        return False
    except OSError as exc:
        raise RunDirError(
            f"cannot make the run directory {display(path)} ({exc.strerror}): choose a "
            "writable place with a shorter name, e.g. hydra.run.dir=outputs/runs/<name>"
        ) from None
    return True


def stamp(now: float | None = None) -> str:
    """Local date and time to the millisecond, sortable: 2026-12-01_08-30-12.345."""
    now = time.time() if now is None else now
    return (
        time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"
    )


def create_unique(parent: str | os.PathLike, name: str = "", lock: bool = True) -> Path:
    """A new directory `parent/<stamp>[_<name>]` (with `-2`, `-3`, ... when that exists), made
    atomically, and locked by this process unless `lock` is False."""
    base = Path(parent) / (f"{stamp()}_{name}" if name else stamp())
    path, k = base, 1
    while not _mkdir(path):
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    if lock:
        acquire(path).made_dir = True
    return path


def claim(path: str | os.PathLike, how_to_start_over: str) -> Path:
    """Lock `path` for a new run: made when it does not exist; refused when another pgrun
    writes it or when it holds a run already (that run is continued with `pgrun resume=`)."""
    path = Path(path)
    made = _mkdir(path)
    if not made and not path.is_dir():
        raise RunDirError(f"{display(path)} exists and is not a directory: choose another path")
    lock = acquire(path)
    if not made and holds_run(path):
        release(lock)
        if not any(path.glob("checkpoint-*.pt")) and not (path / "policy.pt").is_file():
            raise RunDirError(
                f"{display(path)} holds a run that stopped before its first checkpoint "
                f"(nothing to continue): remove it (rm -r {shell(path)}) to start there "
                f"again, or {how_to_start_over}"
            )
        raise RunDirError(
            f"{display(path)} holds a run already: continue it with pgrun resume="
            f"{shell(path)}, or {how_to_start_over}"
        )
    from pgrun.sweep import MULTIRUN_FILE

    if not made and (path / MULTIRUN_FILE).is_file():
        release(lock)
        raise RunDirError(
            f"{display(path)} holds a sweep: continue it with pgrun resume={shell(path)}, or "
            f"{how_to_start_over}"
        )
    inner = None if made else run_inside(path)
    if inner is not None:  # a run's files beside other runs would be taken for one of them
        release(lock)
        raise RunDirError(
            f"{display(path)} holds runs ({inner.relative_to(path)}, ...): {how_to_start_over}"
        )
    lock.made_dir = made
    lock.before = frozenset(p.name for p in path.iterdir()) - {LOCK_FILE}
    return path


def remove_made(path: Path) -> None:
    """Remove `path`, a directory this process made, and the parents it leaves empty below the
    working directory (e.g. outputs/runs made for this run alone)."""
    shutil.rmtree(path, ignore_errors=True)
    cwd = Path.cwd().resolve()
    parent = path.absolute().parent
    while parent != cwd and cwd in parent.parents and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


def discard(run_dir: str | os.PathLike) -> None:
    """Remove what this process added to `run_dir` (the directory itself if it made it, and the
    parents it left empty below the working directory), then release the lock. For a run that
    stopped before it had anything worth keeping."""
    lock = held(run_dir)
    if lock is None:
        return
    run_dir = Path(run_dir)
    if not lock.made_dir and lock.before is None:  # a resume's or a job's: nothing to remove
        release(lock)
        return
    if lock.made_dir:
        remove_made(run_dir)
    else:
        for entry in run_dir.iterdir():
            if entry.name not in lock.before:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
    release(lock)
