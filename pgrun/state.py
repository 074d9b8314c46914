"""One training state: everything a run changes as it trains, and its checkpoint.

`TrainState.state_dict()` is the checkpoint (pgrun.checkpoint writes it); `load_state_dict`
reads the same keys back: the list of what is saved is written once, in `state_dict`.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pgrun import __version__, checkpoint
from pgrun.learner import Learner
from pgrun.optim import Optimizer

FINAL_WINDOW = 5  # the final return is the mean over the last 5 batches


@dataclass
class TrainState:
    """The policy and its optimizer, the learner (V, its optimizer, the reward scaler), the
    collector's carried state, the counters and the recent returns; with the RNG states (taken
    when saved) the whole state of a run.

    Attributes:
        collector: an object with state_dict() / load_state_dict() (pgrun.collectors).
        iteration: batches learnt from; env_steps: environment steps collected.
        wall_before: seconds trained before this process (a resumed run's earlier time).
        started: time.perf_counter() when this process's training started.
        recent: the mean episodic returns of the last FINAL_WINDOW batches.
    """

    policy: torch.nn.Module
    optimizer: Optimizer
    learner: Learner
    collector: Any
    iteration: int = 0
    env_steps: int = 0
    wall_before: float = 0.0
    recent: deque = field(default_factory=lambda: deque(maxlen=FINAL_WINDOW))
    started: float = field(default_factory=time.perf_counter)
    run_id: str | None = field(default_factory=lambda: uuid.uuid4().hex)
    """Names the run in its checkpoints: pruning removes only the files with this id."""

    def wall_seconds(self) -> float:
        """Seconds trained so far, this process and the earlier ones."""
        return self.wall_before + time.perf_counter() - self.started

    def final_return(self) -> float:
        """The mean episodic return of the last FINAL_WINDOW batches."""
        return float(np.mean(self.recent)) if self.recent else float("nan")

    def solved(self, stop_return: float | None) -> bool:
        """The final return over a full window reaches `stop_return` (None: never)."""
        full = len(self.recent) == FINAL_WINDOW
        return stop_return is not None and full and self.final_return() >= stop_return

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint: plain data and tensors (read back with weights_only=True)."""
        return {
            "version": __version__,
            "run_id": self.run_id,
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            **self.learner.state_dict(),  # value, value_optimizer, reward_scaler
            "collector": self.collector.state_dict(),
            "rng": checkpoint.rng_state(),
            "iteration": self.iteration,
            "env_steps": self.env_steps,
            "wall_seconds": self.wall_seconds(),
            "recent_returns": list(self.recent),
        }

    def load_state_dict(self, state: dict[str, Any], where: Any = "") -> None:
        """Continue from a checkpoint of `state_dict` (written by this version of pgrun)."""
        if state.get("version") != __version__:
            raise checkpoint.CheckpointError(
                f"{where}: its checkpoint was written by pgrun {state.get('version')}, this is "
                f"{__version__}; resume it with the version that made it"
            )
        with checkpoint.restoring(where):  # a state of another network: one line
            self.policy.load_state_dict(state["policy"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.learner.load_state_dict(state)
            self.collector.load_state_dict(state.get("collector", {}))
            checkpoint.set_rng_state(state["rng"])
            self.iteration, self.env_steps = state["iteration"], state["env_steps"]
            self.wall_before, self.started = state["wall_seconds"], time.perf_counter()
            self.recent.clear()
            self.recent.extend(state["recent_returns"])
            self.run_id = state.get("run_id")
