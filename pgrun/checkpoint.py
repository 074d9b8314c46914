"""Checkpoints: written atomically, the last two kept, read without running code from the file.

A checkpoint holds what the next iteration needs to continue exactly as an uninterrupted run
would: the policy and optimizer states, the counters, the recent returns, and the RNG states
(python, numpy, torch). The env resets and the action draws of iteration i are seeded from
(seed, i), so with these the replay is bit-exact on the CPU.
"""

from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pgrun.config import UserError

log = logging.getLogger(__name__)

PATTERN = re.compile(r"^checkpoint-(\d{8})\.pt$")
KEEP = 2


class CheckpointError(UserError):
    """No usable checkpoint (one-line message)."""


def rng_state() -> dict[str, Any]:
    """The python, numpy and torch RNG states, as plain data and tensors."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (global RNG, saved as is)
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.copy()), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))  # noqa: NPY002
    torch.set_rng_state(state["torch"])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(run_dir: str | Path, iteration: int, state: dict[str, Any], keep: int = KEEP) -> Path:
    """Write `state` as run_dir/checkpoint-<iteration>.pt: to a temporary file, fsync, rename,
    so a crash leaves either the old or the new file whole. Keeps the newest `keep` files."""
    run_dir = Path(run_dir)
    final = run_dir / f"checkpoint-{iteration:08d}.pt"
    tmp = final.with_suffix(".pt.tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    _fsync_dir(run_dir)
    for old in checkpoints(run_dir)[keep:]:
        old.unlink(missing_ok=True)
    return final


def checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's checkpoint files, newest first."""
    found = [p for p in Path(run_dir).iterdir() if PATTERN.match(p.name)]
    return sorted(found, key=lambda p: p.name, reverse=True)


def load_latest(run_dir: str | Path) -> dict[str, Any]:
    """The newest readable checkpoint of `run_dir`. A corrupt or truncated file is reported and
    the previous one is used. Files are read with weights_only=True: tensors and plain data,
    never code."""
    files = checkpoints(run_dir)
    if not files:
        raise CheckpointError(f"{run_dir} has no checkpoint to resume from")
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
            raise CheckpointError(
                f"no readable checkpoint in {run_dir}: {path.name}: {reason}"
            ) from None
        return state
    raise AssertionError("unreachable")
