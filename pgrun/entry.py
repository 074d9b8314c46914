"""The console scripts. Each imports its command's module (torch, Hydra: most of the first
half second) with SIGINT and SIGTERM already turned into one line and status 128 + signal,
as they are once the command runs; Python's own handler would print a traceback of the
import. Only the interpreter's start, before this module, is left to Python."""

from __future__ import annotations

import signal
import sys
from importlib import import_module
from typing import Any

from pgrun import signals


def _start(prog: str, module: str) -> Any:
    """Run `module`'s main as the command `prog`; its return value is the exit status."""
    signals.raise_on_signals()
    try:
        main = import_module(module).main
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        signals.quiet_exit()
        print(f"{prog}: interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        raise SystemExit(128 + signum) from None
    return main()


def pgrun() -> Any:
    return _start("pgrun", "pgrun.cli")


def compare() -> Any:
    return _start("pgrun-compare", "pgrun.compare")


def play() -> Any:
    return _start("pgrun-play", "pgrun.play")


def check() -> Any:
    return _start("pgrun-check", "pgrun.check")


def variance() -> Any:
    return _start("pgrun-variance", "pgrun.variance")
