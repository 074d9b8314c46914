"""The `pgrun` command: a Hydra app that composes the config, checks it, and trains.

Imports torch only once the config is known to be good, so `pgrun --help` and
`pgrun --cfg job` answer at once.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from pgrun.config import UserError, validate

log = logging.getLogger("pgrun")


def _fail(message: str, run_dir: Path) -> None:
    """Report a bad input in one line, remove the run directory this call just made (if it holds
    nothing but Hydra's own files), and exit with status 2."""
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".hydra", "pgrun.log"}:
        shutil.rmtree(run_dir, ignore_errors=True)
    print(f"pgrun: error: {message}", file=sys.stderr)
    sys.exit(2)


def _display(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


@hydra.main(config_path="pkg://pgrun.configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        validate(cfg)
        from pgrun.envs import env_spec

        env_spec(cfg.env.id)
        from pgrun.trainer import train

        result = train(cfg, run_dir)
    except UserError as exc:
        _fail(str(exc), run_dir)
    where = _display(run_dir)
    solved = cfg.env.solved_return
    verdict = "" if solved is None else (" (solved)" if result["final_return"] >= solved else
                                         f" (below {solved:g})")
    log.info(
        f"done: return {result['final_return']:.1f}{verdict} over the last batches | "
        f"{result['env_steps']:,} env steps | {result['wall_seconds']:.1f} s | {where} | "
        f"view: tensorboard --logdir {where}"
    )
    return result["final_return"]


if __name__ == "__main__":
    main()
