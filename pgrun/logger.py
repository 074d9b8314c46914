"""TensorBoard logging: namespaced scalars against environment steps, the config, HPARAMS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

FINAL_METRIC = "hparams/final_return"


def flatten(cfg: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}, with lists and None as strings (HPARAMS takes scalars)."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


class Logger:
    """One TensorBoard run in `run_dir`: scalars, the resolved config, and its HPARAMS entry."""

    def __init__(
        self, run_dir: str | Path, config: dict, config_yaml: str, purge_step: int | None = None
    ):
        """`purge_step` (when resuming): TensorBoard drops the points this run logged at steps
        >= purge_step before the restart, so the resumed curve continues without duplicates."""
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)
        self.hparams = flatten(config)
        # HPARAMS in the run's own directory (SummaryWriter.add_hparams would make a sub-run):
        # the experiment and session-start records at the start, the session-end one in close().
        exp, ssi, sei = hparams(self.hparams, {FINAL_METRIC: 0.0})
        self._session_end = sei
        if purge_step is None:  # a resumed run has them from its start
            self.writer.add_text("config", "    " + config_yaml.replace("\n", "\n    "), 0)
            for summary in (exp, ssi):
                self.writer.file_writer.add_summary(summary)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)

    def close(self, final_return: float | None, step: int) -> None:
        if final_return is not None:
            self.writer.add_scalar(FINAL_METRIC, final_return, step)
            self.writer.file_writer.add_summary(self._session_end)
        self.writer.close()
