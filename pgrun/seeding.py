"""Derived seeds: every random stream of a run comes from (run seed, iteration, stream), so any
iteration can be replayed alone and a resumed run draws what the uninterrupted one drew."""

from __future__ import annotations

import numpy as np

# the streams of one iteration
RESETS, ACTIONS, MINIBATCHES, VALUE_MINIBATCHES = 0, 1, 2, 3


def derive_seed(seed: int, iteration: int, stream: int) -> int:
    """A 32-bit seed for (run seed, iteration, stream): any iteration can be replayed alone."""
    return int(np.random.SeedSequence([seed, iteration, stream]).generate_state(1)[0])
