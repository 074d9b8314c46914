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
import signal
import threading
from collections.abc import Iterator

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interruption(KeyboardInterrupt):  # noqa: N818 (a signal, as KeyboardInterrupt)
    """SIGINT or SIGTERM outside the training loop: a KeyboardInterrupt, so that what stops on
    Ctrl-C (a launcher waiting for its jobs cancels them) stops on SIGTERM too."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise(signum: int, frame) -> None:
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
