"""The `pgrun` command: a Hydra app that composes the config, checks it, and trains.

Imports torch only once the config is known to be good, so `pgrun --help` and
`pgrun --cfg job` answer at once.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from pgrun import sweep
from pgrun.config import Interrupted, UserError, validate
from pgrun.sweep import MULTIRUN_FILE, resume_sweep_argv

log = logging.getLogger("pgrun")

FAILED_FILE = "failed.txt"  # in a multirun job's directory when the job failed


def _fail(message: str, run_dir: Path, code: int = 2) -> None:
    """Report a bad input in one line, remove the run directory this call just made (if it holds
    nothing but Hydra's own files), and exit with `code`."""
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".hydra", "pgrun.log"}:
        shutil.rmtree(run_dir, ignore_errors=True)
        cwd = Path.cwd().resolve()
        parent = run_dir.resolve().parent
        while parent != cwd and cwd in parent.parents and not any(parent.iterdir()):
            parent.rmdir()  # outputs/runs/ made for this run alone
            parent = parent.parent
    print(f"pgrun: error: {message}", file=sys.stderr)
    sys.exit(code)


def _record_failure(exc: Exception, run_dir: Path) -> None:
    """A multirun job that fails writes `failed.txt` (one line, then a traceback for unexpected
    errors) into its directory and returns None instead of exiting or raising: Hydra's launchers
    stop the whole sweep at a job that exits, its basic sweeper raises after the batch for one
    that raises, and the Optuna sweeper stops at a NaN. All would lose the other jobs' results
    and the comparison (pgrun/compare.py); the Optuna sweeper records None as a failed trial."""
    line = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
    text = line + "\n"
    if not isinstance(exc, UserError):
        text += "\n" + "".join(traceback.format_exception(exc))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / FAILED_FILE).write_text(text)
    log.error(f"pgrun: error: {line} (job recorded as failed in {_display(run_dir)})")
    return None


def _display(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


def one_line(report: str) -> str:
    """Hydra's multi-line report of a bad command line (unknown key, wrong type, missing
    preset), reduced to one line: its sentences joined, the available options listed."""
    parts: list[str] = []
    options: list[str] = []
    for raw in report.splitlines():
        line = raw.strip()
        if line.startswith("Config search path") or line.startswith("Set the environment"):
            break
        if not line or line.startswith(("full_key:", "object_type=", "reference_type=")):
            continue
        if raw.startswith("\t"):
            options.append(line)
        elif line.startswith("Available options"):
            parts.append(line.rstrip(":") + ": {options}")
        else:
            parts.append(line.rstrip("."))
    return "; ".join(parts).replace("{options}", ", ".join(options))


_stderr = sys.stderr  # the real stderr while main() holds Hydra's reports back


def main() -> None:
    """The `pgrun` command. Hydra's own errors about the command line come before the run
    starts; they are held back and printed as one line `pgrun: error: ...`, exit status 2."""
    global _stderr
    if sys.argv[1:] in (["--help"], ["-h"]):
        try:
            print(quick_help())
        except BrokenPipeError:  # `pgrun --help | head`
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    try:
        sys.argv[1:] = resume_argv(sys.argv[1:])
    except UserError as exc:
        print(f"pgrun: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    try:
        from pgrun.launcher import register
    except ImportError:  # without the sweep extra: no SLURM launcher
        pass
    else:
        register()
    _stderr, held = sys.stderr, io.StringIO()
    sys.stderr = held
    skip_mode_probe(sys.argv[1:])
    try:
        run()
    except KeyboardInterrupt:  # Ctrl-C while a sweep waits for its jobs (joblib, submitit)
        _release_stderr()
        print(f"pgrun: interrupted{sweep.continue_hint()}", file=sys.stderr)
        sys.exit(130)
    except SystemExit as exc:
        if sys.stderr is held and exc.code not in (0, None) and held.getvalue().strip():
            sys.stderr = _stderr
            print(f"pgrun: error: {one_line(held.getvalue())}", file=sys.stderr)
            sys.exit(2)
        raise
    except BrokenPipeError:  # `pgrun --help | head`: the reader left, nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    finally:
        _release_stderr()


def quick_help() -> str:
    """`pgrun --help` without overrides: the header, every group's options read straight from
    the packaged configs, and the footer. Hydra's own help composes the whole config first
    (about two seconds); `pgrun <overrides> --help` still shows it, composed config included."""
    from importlib import resources

    import yaml

    root = resources.files("pgrun.configs")
    help_cfg = yaml.safe_load((root / "config.yaml").read_text())["hydra"]["help"]
    lines = [help_cfg["header"], "", "== Configuration groups (group=option) =="]
    for group in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "hydra"):
        options = sorted(_yaml_names(group))
        if options:
            lines.append(f"{group.name}: {', '.join(options)}")
    lines += ["", help_cfg["footer"]]
    return "\n".join(lines)


def _yaml_names(folder, prefix: str = "") -> list[str]:
    names = []
    for entry in folder.iterdir():
        if entry.is_dir():
            names += _yaml_names(entry, f"{prefix}{entry.name}/")
        elif entry.name.endswith(".yaml"):
            names.append(prefix + entry.name[: -len(".yaml")])
    return names


def skip_mode_probe(args: list[str]) -> None:
    """Hydra composes the whole config once only to read hydra.mode (RUN or MULTIRUN), then
    again to run it: a third of the command's start-up beyond `import torch`. pgrun's configs
    never set hydra.mode, so without -m/--multirun and without a hydra.mode override the mode
    is RUN: Hydra's probe is answered with None, which Hydra reads as "RUN unless --multirun"."""
    if any(a in ("-m", "--multirun") or a.lstrip("+~").startswith("hydra.mode") for a in args):
        return
    from hydra._internal.hydra import Hydra

    Hydra.get_mode = lambda self, config_name, overrides: None


def _release_stderr() -> None:
    """Give stderr back, with what was held (once a run starts, its messages go straight out)."""
    held = sys.stderr
    if isinstance(held, io.StringIO) and held is not _stderr:
        sys.stderr = _stderr
        sys.stderr.write(held.getvalue())


# What may change when a run is resumed: its budget and how it reports. Anything else would
# make the resumed run a different experiment.
RESUMABLE = ("total_steps", "stop_return", "progress", "checkpoint.every")


def resume_argv(args: list[str]) -> list[str]:
    """`pgrun resume=RUN_DIR [total_steps=...]` -> the run's own overrides (from its
    .hydra/overrides.yaml), the allowed new ones, and resume=RUN_DIR: Hydra then composes the
    run's config again and continues in RUN_DIR. Other arguments are returned unchanged."""
    given = [a for a in args if a.startswith("resume=")]
    if not given:
        return args
    run_dir = Path(given[-1].split("=", 1)[1]).expanduser()
    others = [a for a in args if not a.startswith("resume=") and a not in ("-m", "--multirun")]
    if (run_dir / MULTIRUN_FILE).is_file():  # a sweep: its jobs continue where each stands
        return resume_sweep_argv(run_dir.resolve(), others)
    if not (run_dir / ".hydra" / "overrides.yaml").is_file():
        raise UserError(
            f"resume={run_dir}: not a pgrun run directory (no .hydra/overrides.yaml); "
            "give the directory of a run, e.g. outputs/runs/<name>"
        )
    if not any(run_dir.glob("checkpoint-*.pt")):
        raise UserError(f"resume={run_dir}: the run has no checkpoint to continue from")
    if any(a in ("-m", "--multirun") for a in args):
        raise UserError("resume continues one run: drop -m/--multirun")
    others = [a for a in args if not a.startswith("resume=")]
    refused = [a for a in others if "=" in a and a.split("=", 1)[0].lstrip("+~") not in RESUMABLE]
    if refused:
        raise UserError(
            f"resume={run_dir} continues that run with its own config: drop "
            f"{' '.join(refused)} (only {', '.join(RESUMABLE)} may change)"
        )
    from omegaconf import OmegaConf

    saved = [str(o) for o in OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")]
    return saved + others + [f"resume={run_dir.resolve()}"]


def check_resumable(cfg: DictConfig, run_dir: Path) -> None:
    """The config composed again for a resumed run must be the one the run was made with."""
    from omegaconf import OmegaConf

    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    now = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    before = OmegaConf.to_container(saved, resolve=True)
    keys = {k for k in now.keys() | before.keys() if k not in ("resume", *RESUMABLE)}
    differ = sorted(k for k in keys if now.get(k) != before.get(k) and k != "checkpoint")
    if differ:
        raise UserError(
            f"resume={run_dir}: the run was made with another config or pgrun version "
            f"(differs in: {', '.join(differ)}); resume it with the version that made it"
        )


@hydra.main(config_path="pkg://pgrun.configs", config_name="config", version_base="1.3")
def run(cfg: DictConfig) -> float | None:
    _release_stderr()
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if multirun and "SUBMITIT_FOLDER" in os.environ:  # a job that submitit started
        from pgrun.launcher import link_scheduler_log

        link_scheduler_log(run_dir)
    try:
        resume = bool(cfg.resume)
        state = sweep.job_state(run_dir) if multirun and not resume else "new"
        if state in ("failed", "lost"):  # a job started again (requeued, or its sweep resumed)
            log.info(f"{_display(run_dir)}: kept as failed: {sweep.failure_line(run_dir)}")
            return None
        if state == "finished":
            log.info(f"{_display(run_dir)}: finished before, not run again")
            return sweep.finished_return(run_dir)
        validate(cfg)
        from pgrun.envs import env_spec

        env_spec(cfg.env.id)
        if state == "interrupted":  # continues from its checkpoint (its own: checked below)
            resume = True
        elif multirun and not resume:
            sweep.remove_stale_events(run_dir)
        if resume:
            check_resumable(cfg, run_dir)
        from pgrun.trainer import train

        result = train(cfg, run_dir, resume=resume)
    except Exception as exc:
        if multirun and isinstance(exc, Interrupted):  # the whole sweep stops
            if not hydra_cfg.launcher._target_.endswith("BasicLauncher"):
                raise  # in a launcher's process: it requeues or reports the job
            print(
                f"pgrun: interrupted at iteration {exc.iteration} of {_display(run_dir)}, "
                f"checkpoint saved{sweep.continue_hint()}",
                file=sys.stderr,
            )
            sys.exit(128 + exc.signum)
        if multirun:  # one failed job must not end the sweep
            return _record_failure(exc, run_dir)
        if isinstance(exc, UserError):
            if cfg.resume:  # keep the resumed run as it was: drop this attempt's record
                shutil.rmtree(run_dir / HydraConfig.get().output_subdir, ignore_errors=True)
            _fail(str(exc), run_dir, exc.exit_code)
        if isinstance(exc, Interrupted):
            where = _display(run_dir)
            print(
                f"pgrun: interrupted at iteration {exc.iteration} ({exc.env_steps:,} env steps), "
                f"checkpoint saved; continue with: pgrun resume={where}",
                file=sys.stderr,
            )
            sys.exit(128 + exc.signum)
        raise
    where = _display(run_dir)
    solved = cfg.env.solved_return
    verdict = (
        ""
        if solved is None
        else (" (solved)" if result["final_return"] >= solved else f" (below {solved:g})")
    )
    log.info(
        f"done: return {result['final_return']:.1f}{verdict} over the last batches | "
        f"{result['env_steps']:,} env steps | {result['wall_seconds']:.1f} s | {where} | "
        f"view: tensorboard --logdir {where}"
    )
    return result["final_return"]


if __name__ == "__main__":
    main()
