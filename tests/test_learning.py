"""Learning: the default rtg_baseline run solves CartPole-v1.

One full training run through the installed command (about ten seconds of training). The run
is seeded, so it is the same run every time on a given set of library versions; the threshold
is CartPole-v1's own "solved" criterion (mean return >= 475 of at most 500) rather than a
statistical bound, and the default run ends well above it.
"""

from __future__ import annotations

import pytest
from conftest import describe, only_run_dir, read_scalars, run_pgrun

SOLVED = 475.0
WINDOW = 5  # last logged iterations averaged


@pytest.mark.slow
def test_rtg_baseline_solves_cartpole(tmp_path, pgrun_exe):
    done = run_pgrun(["variant=rtg_baseline", "env=CartPole-v1", "seed=0"], tmp_path, timeout=600)
    assert done.returncode == 0, describe(done)
    scalars = read_scalars(only_run_dir(tmp_path))
    returns = [value for _, value in scalars["charts/episodic_return"]]
    assert len(returns) >= WINDOW
    last = returns[-WINDOW:]
    mean = sum(last) / WINDOW
    assert mean >= SOLVED, f"mean return of the last {WINDOW} iterations: {mean:.1f} ({last})"
    # It learned: the first batches of a random policy are far below that.
    assert returns[0] < 100
    # The summary line agrees with the curves.
    assert "(solved)" in done.stdout.strip().splitlines()[-1]
