"""Checkpoints: written atomically, the run's last two kept, read without running code from the file.

A checkpoint holds what the next iteration needs to continue exactly as an uninterrupted run
would: the policy and optimizer states, the counters, the recent returns, and the RNG states
(python, numpy, torch). The env resets and the action draws of iteration i are seeded from
(seed, i), so with these the replay is bit-exact on the CPU.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pgrun.config import UserError
from pgrun.rundir import display

log = logging.getLogger(__name__)

PATTERN = re.compile(r"^checkpoint-(\d{8})\.pt$")
KEEP = 2


class CheckpointError(UserError):
    """No usable checkpoint (one-line message)."""


def rng_state() -> dict[str, Any]:
    """The python, numpy and torch RNG states, as plain data and tensors."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (global RNG, saved as is)
    version, words, gauss = random.getstate()
    return {
        # the Mersenne Twister's 625 words as one tensor: torch.save pickles a tuple of ints
        # through a Python call per int, 1-2 ms of each checkpoint
        "python": (version, torch.tensor(words, dtype=torch.int64), gauss),
        "numpy": [kind, torch.from_numpy(keys.copy()), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, words, gauss = state["python"]
    if isinstance(words, torch.Tensor):
        words = tuple(words.tolist())
    random.setstate((version, words, gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))  # noqa: NPY002
    torch.set_rng_state(state["torch"])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_UMASK = os.umask(0o022)  # the process's umask, read once (reading it means setting it)
os.umask(_UMASK)


class WriteError(UserError):
    """A file of the run could not be written (disk full, read-only, quota)."""


def write_atomic(path: str | Path, obj: Any) -> Path:
    """torch.save `obj` as `path`: into a temporary file of this process beside it, fsync,
    rename, so that a crash or a full disk leaves either the old file or the new one, whole.
    Raises WriteError (one line) when the file cannot be written; nothing is left behind."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # as open() makes the run's other files, not mkstemp's 0600
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        # torch.save reports a failed write as a RuntimeError raised while handling the OSError
        cause = next(
            (e for e in (exc, exc.__cause__, exc.__context__) if isinstance(e, OSError)), None
        )
        if cause is None:
            raise
        where = display(path.parent)
        raise WriteError(
            f"cannot write {path.name} in {where} ({cause.strerror or cause}): free some space "
            "or fix the permissions"
        ) from None
    _fsync_dir(path.parent)
    return path


_stored: dict[tuple, tuple[Any, int] | None] = {}  # stored_iteration's answers, by file version


def _version(path: Path) -> tuple | None:
    """The key of a file's version (its path, inode, size and modification time), or None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return str(path), st.st_ino, st.st_size, st.st_mtime_ns


def _store(key: tuple, answer: tuple[Any, int] | None) -> None:
    if len(_stored) > 4096:
        _stored.clear()
    _stored[key] = answer


def stored_iteration(path: Path) -> tuple[Any, int] | None:
    """(run_id, iteration) saved in the checkpoint `path`, read without loading its tensors
    (memory-mapped), or None when the file is unreadable. A file is read once per version
    (its inode, size and modification time): every save of a run asks about the run's
    earlier checkpoints again."""
    key = _version(path)
    if key is None:
        return None
    if key not in _stored:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            _store(key, (state.get("run_id"), int(state["iteration"])))
        except Exception:
            _store(key, None)
    return _stored[key]


def _remember(path: Path, state: dict[str, Any]) -> None:
    """stored_iteration's answer for the file just written from `state`, without reading it."""
    key = _version(path)
    if key is not None and "iteration" in state:
        _store(key, (state.get("run_id"), int(state["iteration"])))


def save(run_dir: str | Path, iteration: int, state: dict[str, Any], keep: int = KEEP) -> Path:
    """Write `state` as run_dir/checkpoint-<iteration>.pt (write_atomic). Then keep the newest
    `keep` checkpoints of this run, by the iteration stored in each file: files of another run
    (another `run_id`) are never removed."""
    run_dir = Path(run_dir)
    final = write_atomic(run_dir / f"checkpoint-{iteration:08d}.pt", state)
    _remember(final, state)
    own = []
    for path in checkpoints(run_dir):
        saved = stored_iteration(path)
        if saved is not None and saved[0] == state.get("run_id"):
            own.append((saved[1], path))
    own.sort(key=lambda item: item[0], reverse=True)
    for _, old in own[keep:]:
        old.unlink(missing_ok=True)
    return final


def checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's checkpoint files, newest first."""
    found = [p for p in Path(run_dir).iterdir() if PATTERN.match(p.name)]
    return sorted(found, key=lambda p: p.name, reverse=True)


def rewind(run_dir: str | Path, state: dict[str, Any]) -> list[str]:
    """A run resumed from `state`, one of its checkpoints, where it has later ones (a group of
    seeds continues from the iteration they all have): its later checkpoints, and its
    policy.pt where it had ended, are removed, as its loggers drop what it logged after
    `state`, so that its directory holds one history. Left there, a later resume of the run
    alone would continue from the newest and leave a gap in its curve, and the comparison
    would take it as ended. The names removed, in order. The caller holds the run's lock."""
    run_dir = Path(run_dir)
    later = []
    for path in checkpoints(run_dir):
        saved = stored_iteration(path)
        if saved is not None and saved[0] == state.get("run_id") and saved[1] > state["iteration"]:
            later.append(path)
    if not later:
        return []
    removed = [p.name for p in reversed(later)]
    # newest first and policy.pt last: a kill -9 in between leaves a run that a resume takes
    # on from the newest checkpoint left, or one still finished with its curve whole
    for path in later:
        path.unlink(missing_ok=True)
    end = run_dir / "policy.pt"
    if end.is_file():
        removed.append(end.name)
        end.unlink()
    return removed


def remove_temporary(run_dir: str | Path) -> None:
    """Remove the temporary files a killed writer left in `run_dir`. The caller holds the run's
    lock (pgrun.rundir), so no other process is writing them."""
    for tmp in Path(run_dir).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    for tmp in Path(run_dir).glob("checkpoint-*.pt.tmp"):  # older versions' name
        tmp.unlink(missing_ok=True)


def load_latest(run_dir: str | Path) -> dict[str, Any]:
    """The newest readable checkpoint of `run_dir`, by the iteration stored in it. A corrupt or
    truncated file is reported and the previous one is used. Files are read with
    weights_only=True: tensors and plain data, never code."""
    return load_readable(run_dir)[0]


def load_readable(run_dir: str | Path, tidy: bool = True) -> list[dict[str, Any]]:
    """The readable checkpoints of `run_dir` (as load_latest reads them), newest iteration
    first. `tidy`: remove a killed writer's temporary files first (the caller holds the run's
    lock); without it nothing in `run_dir` changes."""
    files = checkpoints(run_dir)
    if not files:
        raise CheckpointError(f"{run_dir} has no checkpoint to resume from")
    if tidy:
        remove_temporary(run_dir)
    by_iteration = []
    for i, path in enumerate(files):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or corrupt file, or one that needs code to load
            reason = str(exc).strip().split(". ")[0] or type(exc).__name__
            if i + 1 < len(files):
                log.warning(
                    f"checkpoint {path.name} is unreadable ({reason}); "
                    f"falling back to {files[i + 1].name}"
                )
                continue
            if by_iteration:
                break
            raise CheckpointError(
                f"no readable checkpoint in {run_dir}: {path.name}: {reason}"
            ) from None
        if not isinstance(state, dict) or not isinstance(state.get("iteration"), int):
            raise CheckpointError(f"{path.name} in {run_dir} is not a pgrun checkpoint")
        by_iteration.append((state["iteration"], i, state))
    by_iteration.sort(key=lambda item: (-item[0], item[1]))
    return [state for _, _, state in by_iteration]


@contextlib.contextmanager
def restoring(run_dir: str | Path) -> Iterator[None]:
    """Around loading a checkpoint's states into the policy, optimizers and normalisers: a
    state that does not fit them (another network, another version) is one CheckpointError."""
    try:
        yield
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
        first = " ".join(str(exc).split())[:160]
        raise CheckpointError(
            f"the checkpoint in {display(run_dir)} does not fit this run's policy or optimizer "
            f"({type(exc).__name__}: {first}); resume it with the config and pgrun version "
            "that made it"
        ) from None
