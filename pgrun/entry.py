"""The console scripts. Each imports its command's module (torch, Hydra: most of the first
half second) with SIGINT and SIGTERM already turned into one line and status 128 + signal,
as they are once the command runs; Python's own handler would print a traceback of the
import. Only the interpreter's start, before this module, is left to Python."""

from __future__ import annotations

import signal
import sys
from importlib import import_module

from pgrun import signals


def _start(prog: str, module: str) -> None:
    signals.raise_on_signals()
    try:
        main = import_module(module).main
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        signals.quiet_exit()
        print(f"{prog}: interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        raise SystemExit(128 + signum) from None
    main()


def pgrun() -> None:
    _start("pgrun", "pgrun.cli")


def compare() -> None:
    _start("pgrun-compare", "pgrun.compare")


def play() -> None:
    _start("pgrun-play", "pgrun.play")


def check() -> None:
    _start("pgrun-check", "pgrun.check")


def variance() -> None:
    _start("pgrun-variance", "pgrun.variance")
