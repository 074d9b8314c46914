"""The `pgrun` command: a Hydra app that composes the config, checks it, and trains.

Imports torch only once the config is known to be good, so `pgrun --help` and
`pgrun --cfg job` answer at once.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import io
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from pgrun import rundir, signals, sweep
from pgrun.config import (
    NAME_MAX,
    ConfigError,
    Diverged,
    Interrupted,
    UserError,
    slug,
    unknown_keys,
    validate,
)
from pgrun.hints import env_id_argv, value_gamma_warning
from pgrun.sweep import MULTIRUN_FILE, RERUN_FAILED, resume_sweep_argv

log = logging.getLogger("pgrun")

FAILED_FILE = "failed.txt"  # in a multirun job's directory when the job failed


def _fail(message: str, run_dir: Path, code: int = 2) -> None:
    """Report a bad input in one line, remove what this run made (pgrun.rundir.discard) unless it
    holds a checkpoint to resume from, and exit with `code`."""
    if not any(run_dir.glob("checkpoint-*.pt")):
        rundir.discard(run_dir)
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


_display = rundir.display


_EXTRA_CONFIGS = re.compile(
    r"Could not (find|load) 'hydra/(launcher/(joblib|submitit_local|submitit_slurm)|sweeper/optuna)'"
)


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
        elif line.startswith("To append to your config use +"):
            continue  # the key is not in the schema: adding it would only be ignored
        else:
            parts.append(line.rstrip("."))
    text = "; ".join(parts).replace("{options}", ", ".join(options))
    if _EXTRA_CONFIGS.search(text):  # a launcher or sweeper of the sweep extra, not installed
        text += "; it comes with the sweep extra: pip install -e '.[sweep]' (or make install)"
    if "Key 'n_jobs' not in 'BasicLauncherConf'" in text:  # hydra.launcher.n_jobs=4
        text += (
            "; the default launcher runs one job at a time and has no n_jobs: add "
            "hydra/launcher=batched (or joblib) to run jobs in parallel"
        )
    number = re.search(
        r"override (\S+?)=\S*?; Value '([^']*)' of type '(str|float)' could not be converted "
        r"to Integer",
        text,
    )
    if number:  # total_steps=2k or 1e6: an integer is written out in digits
        key, value = number.group(1), number.group(2)
        whole = number.group(3) == "float" and float(value).is_integer()
        text += (
            f"; write it as a whole number: {key}={int(float(value))}"
            if whole
            else "; write it as a whole number in digits (e.g. 20000 or 1_000_000)"
        )
    bare = re.search(r"Error parsing override '([\w.-]+)'; missing EQUAL at '<EOF>'", text)
    if bare:  # `pgrun rtg`: an option without its key
        from importlib import resources

        word = bare.group(1)
        root = resources.files("pgrun.configs")
        groups = [g.name for g in root.iterdir() if g.is_dir() and (g / f"{word}.yaml").is_file()]
        text += (
            f"; write key=value: {groups[0]}={word}"
            if groups
            else "; write key=value (pgrun --help lists the keys and options)"
        )
    listed = re.search(r"Error merging override (\w+)=([^;\[\]]+); Invalid value assigned: str is "
                       r"not a ListConfig", text)  # fmt: skip
    if listed:  # logger=tensorboard: the key takes a list
        text += f"; give a list: {listed.group(1)}=[{listed.group(2)}]"
    unknown = re.search(r"Key '(\w+)' not in '(\w+)'", text)
    if unknown:  # a typo'd key: name the closest one of the schema
        import dataclasses
        import difflib

        from pgrun import config

        schema = getattr(config, unknown.group(2), None)
        if dataclasses.is_dataclass(schema):
            names = [f.name for f in dataclasses.fields(schema)]
            close = difflib.get_close_matches(unknown.group(1), names, n=1)
            if close:
                text += f"; did you mean {close[0]}?"
    return text


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
    if sys.argv[1:] == ["--version"]:  # Hydra's flag names only Hydra's version
        from importlib.metadata import version

        import pgrun

        print(f"pgrun {pgrun.__version__} (Hydra {version('hydra-core')})")
        return
    signals.raise_on_signals()
    try:
        warn_replaced_sweeps(sys.argv[1:])
        sys.argv[1:] = prepare(env_id_argv(flags_first(sys.argv[1:])))
    except UserError as exc:
        print(f"pgrun: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except sweep.NothingToRun as ended:  # a resumed sweep whose jobs have all ended
        print(ended.line(), flush=True)
        if ended.compares:
            from pgrun.compare import compare_sweep

            sys.exit(compare_sweep(ended.sweep_dir))
        sys.exit(1 if ended.failed else 0)
    except signals.Interruption as exc:
        _interrupted(exc.signum)
    from hydra_plugins.pgrun_launcher import register

    register()  # hydra/launcher=batched, and slurm with the sweep extra
    _stderr, held = sys.stderr, io.StringIO()
    sys.stderr = held
    one_line_sweep_errors()
    # joblib's note, when a stop cancels the tasks its workers had not finished (the batched and
    # joblib launchers): the stop's own line says what was kept
    warnings.filterwarnings("ignore", message=r".*tasks which were still being processed")
    if "hydra/launcher=joblib" in sys.argv[1:]:
        forward_stops_to_joblib()
    if "hydra/launcher=submitit_local" in sys.argv[1:]:
        forward_stops_to_submitit_local()
    single = single_run(sys.argv[1:])
    if single:
        gc.disable()  # until the run is built: see settle_collector
    skip_mode_probe(sys.argv[1:])
    try:
        run()
    except KeyboardInterrupt as exc:  # SIGINT or SIGTERM (pgrun.signals.Interruption)
        signals.quiet_exit()  # stopping: a further signal must not cut the report short
        _release_stderr()
        # a batched sweep stopped before its launch: its idle workers would hold the exit
        if "pgrun.batched_launcher" in sys.modules:
            sys.modules["pgrun.batched_launcher"].stop_warm_up()
        _kill_local_jobs()  # submitit_local's, on a second signal: they stop at once
        signum = getattr(exc, "signum", signals.signal.SIGINT)
        if sweep.current is not None:  # a sweep waiting for its jobs (joblib, submitit)
            _discard_unstarted()
            if not sweep.current.is_dir():  # it had not launched: its directory is removed
                name = signals.signal.Signals(signum).name
                print(
                    f"pgrun: interrupted ({name}) before any job started: nothing was kept",
                    file=sys.stderr,
                )
            else:
                print(f"pgrun: interrupted{sweep.continue_hint()}", file=sys.stderr)
            sys.exit(128 + signum)
        _interrupted(signum)
    except SystemExit as exc:
        if exc.code not in (0, None):
            _discard_unstarted()
        if sys.stderr is held and exc.code not in (0, None) and held.getvalue().strip():
            sys.stderr = _stderr
            print(f"pgrun: error: {one_line(held.getvalue())}", file=sys.stderr)
            sys.exit(2)
        raise
    except signals.WorkerLost as exc:  # a launcher's worker process was killed
        _release_stderr()
        print(f"pgrun: error: {exc}{sweep.continue_hint()}", file=sys.stderr)
        sys.exit(1)
    except rundir.Refused as exc:  # raised while Hydra made the run directory
        _release_stderr()
        _discard_unstarted()
        print(f"pgrun: error: {exc.error}", file=sys.stderr)
        sys.exit(exc.error.exit_code)
    except ValueError as exc:  # Hydra's check of its flags, before anything runs
        if not str(exc).startswith("Only one of"):
            raise
        _release_stderr()
        print(f"pgrun: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:  # `pgrun --help | head`: the reader left, nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    finally:
        _release_stderr()
        signals.quiet_exit()
    if single:
        end_process()


_SWEPT = re.compile(r",|^(range|choice|glob|interval)\(")


def warn_replaced_sweeps(args: list[str]) -> None:
    """A sweep's key given twice where one of the two is swept (`seed=0,1 seed=2,3`): Hydra
    takes the last one and drops the other without a word, so the sweep would run fewer jobs
    than typed. The last one still holds (`make sweep ARGS="seed=0,1,2,3,4"` relies on it);
    this says so in one line."""
    if not any(a in ("-m", "--multirun") for a in args):
        return
    seen: dict[str, str] = {}
    for arg in args:
        if arg.startswith(("-", "~")) or "=" not in arg:
            continue
        key, _, value = arg.partition("=")
        key = key.lstrip("+")
        first = seen.get(key)
        seen[key] = arg
        if first is not None and (_SWEPT.search(first.partition("=")[2]) or _SWEPT.search(value)):
            print(
                f"pgrun: warning: {key} is given twice: {arg} replaces {first} (a sweep takes all "
                "its values in one list)",
                file=sys.stderr,
            )


# Hydra's flags that take no value
_SWITCHES = ("-m", "--multirun", "-r", "--run", "--resolve")


def flags_first(args: list[str]) -> list[str]:
    """`args` with the switches (-m, --resolve...) before the overrides: Hydra's parser takes
    them only there, and `pgrun variant=rtg -m seed=0,1` is as natural to type."""
    return [a for a in args if a in _SWITCHES] + [a for a in args if a not in _SWITCHES]


# Flags with which Hydra prints something and runs nothing.
_NO_RUN = ("--cfg", "-c", "--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion")


_SIBLINGS = ("compare", "play", "check", "variance")  # pgrun-compare, ... (pyproject.toml)


def prepare(args: list[str]) -> list[str]:
    """The command line Hydra gets, once the run's directory is known to be free for it:

    - `resume=RUN_DIR`: the run's own overrides (resume_argv), RUN_DIR locked by this process;
    - `hydra.run.dir=DIR`: DIR made or claimed and locked (refused when it holds a run);
    - `-m` without hydra.sweep.dir: a new, unique outputs/multirun/<date>_<time>.<ms>;
    - the sweep's directory (and a resumed sweep's) locked by this process, so that a second
      pgrun into it is refused, while the jobs' own directories are locked by whoever runs them.
    The default directory of a single run is made by the run_dir resolver (pgrun.config)."""
    if any(a.split("=", 1)[0] in _NO_RUN for a in args):
        return args
    for a in args:
        if a in _SIBLINGS:  # `pgrun compare DIR`: Hydra would say "missing EQUAL"
            raise UserError(
                f"'{a}' is not an override: the command is pgrun-{a} (pgrun-{a} --help)"
            )
    multirun = any(a in ("-m", "--multirun") for a in args)
    target = resume_target(args)
    if RERUN_FAILED in args and (target is None or not (target / MULTIRUN_FILE).is_file()):
        raise UserError(
            f"{RERUN_FAILED} goes with pgrun resume=<sweep dir> only (it runs that sweep's "
            "failed jobs again); a single run is continued with pgrun resume=<run dir>"
        )
    if target is not None:
        if (target / MULTIRUN_FILE).is_file():  # a sweep's: before resume_argv changes it
            rundir.acquire(target)  # its jobs lock their own as well
        args = resume_argv(args)
        rundir.acquire(target)
        return args
    if multirun:
        _check_n_jobs(_given(args, "hydra.launcher.n_jobs"))
        given = _given(args, "hydra.sweep.dir")
        if given is None:
            made = rundir.create_unique("outputs/multirun", sweep_name(args), lock=False)
            args = [*args, f"hydra.sweep.dir={quote(os.path.abspath(made))}"]
            _made_sweep.append(made)
            rundir.acquire(made)  # not create_unique's lock: a run's, which a failure removes
        elif "${" not in given:  # two sweeps into one directory: the second is refused
            path = Path(given).expanduser()
            if not path.exists():
                path.mkdir(parents=True, exist_ok=True)
                _made_sweep.append(path)
            rundir.acquire(path)
            _refuse_a_sweeps_directory(path)
        return args
    explicit = _given(args, "hydra.run.dir")
    if explicit is not None:
        rundir.claim(explicit, "give a new hydra.run.dir")
        if "${" not in explicit and not _plain_path.fullmatch(explicit):  # spaces, '=', ','...
            args = [a for a in args if not a.startswith("hydra.run.dir=")]
            args.append(f"hydra.run.dir={quote(explicit)}")
    return args


def sweep_name(args: list[str]) -> str:
    """The name after a new sweep directory's time stamp: the experiment, variant and env the
    sweep holds constant, e.g. 'rtg_CartPole-v1' for `pgrun -m variant=rtg seed=0,1` and
    'compare_variants' for `pgrun -m experiment=compare_variants` (whose file sets the rest),
    so that TensorBoard's run names (`<sweep>/seed=0`) say what the jobs' names leave out; a
    swept value (`variant=vanilla,rtg`) is in the jobs' names instead."""
    from importlib import resources

    import yaml

    given = {}
    for a in args:
        key, eq, value = a.partition("=")
        if eq and key in ("experiment", "variant", "env", "env.id"):
            given[key] = unquote(value)

    def constant(key: str) -> str | None:
        value = given.get(key)
        swept = value is not None and ("," in value or "(" in value)
        return None if swept or value in (None, "null") else value

    experiment = constant("experiment")
    defaults: dict[str, str] = {}
    if "experiment" not in given:  # the config's own choices hold
        root = resources.files("pgrun.configs")
        for entry in yaml.safe_load((root / "config.yaml").read_text())["defaults"]:
            if isinstance(entry, dict):
                defaults.update({str(k): str(v) for k, v in entry.items()})

    def chosen(*keys: str) -> str | None:  # the first key given, else the config's default
        given_key = next((k for k in keys if k in given), None)
        return constant(given_key) if given_key else defaults.get(keys[-1])

    parts = [p for p in (experiment, chosen("variant"), chosen("env.id", "env")) if p]
    return slug("_".join(parts))[:NAME_MAX] if parts else ""


def _check_n_jobs(value: str | None) -> None:
    """hydra.launcher.n_jobs (joblib's and the batched launcher's processes at once): an integer
    other than 0; joblib and the launchers' own checks would end in a traceback."""
    if value is None or "${" in value:
        return
    try:
        ok = int(value) != 0
    except ValueError:
        ok = False
    if not ok:
        raise UserError(
            f"hydra.launcher.n_jobs={value}: use an integer other than 0, the processes to run at "
            "once (-1: one per core)"
        )


def _refuse_a_sweeps_directory(path: Path) -> None:
    """A new sweep into a directory that holds one already would take the old jobs for its own
    wherever their names agree (a job is named by the overrides that vary: `seed=0` of a ppo
    sweep and of an rtg one), report them finished and replace the sweep's record: refused,
    as a hydra.run.dir that holds a run is. `pgrun resume=<dir>` continues the sweep there."""
    held = (path / MULTIRUN_FILE).is_file() or any(
        d.is_dir() and rundir.holds_run(d) for d in path.iterdir()
    )
    if held:
        where = rundir.shell(path)
        raise UserError(
            f"hydra.sweep.dir={where} holds a sweep already: continue it with "
            f"pgrun resume={where}, or give a new hydra.sweep.dir"
        )
    if rundir.holds_run(path):  # a run's own directory: the jobs would land among its files
        where = rundir.shell(path)
        raise UserError(
            f"hydra.sweep.dir={where} holds a run: continue it with pgrun resume={where}, or "
            "give a new hydra.sweep.dir"
        )
    below = rundir.run_inside(path)
    if below is not None:  # a directory of sweeps (outputs/multirun): its comparison would
        # pool their runs with this sweep's
        raise UserError(
            f"hydra.sweep.dir={rundir.shell(path)} holds runs below it already "
            f"({rundir.display(below)}): give a new hydra.sweep.dir (or leave it out: pgrun "
            "makes outputs/multirun/<time>_...)"
        )


_plain_path = re.compile(r"[A-Za-z0-9_./~+-]*")  # a value Hydra's grammar takes unquoted


_made_sweep: list[Path] = []  # the sweep directory prepare() made, removed if left empty


def _given(args: list[str], key: str) -> str | None:
    """The value of the last `key=VALUE` in `args` (without Hydra's quotes), or None."""
    values = [a.split("=", 1)[1] for a in args if a.split("=", 1)[0] == key]
    return unquote(values[-1]) if values else None


def one_line_sweep_errors() -> None:
    """A sweep composes every job's config before it launches any (Hydra's
    Sweeper.validate_batch_is_legal), after stderr was given back for the sweep's messages. A
    job that does not compose (`seed=0,abc`, `variant=rtg,nope`) is reported as a single run's
    bad override is: one line, exit status 2, before any job ran. The command line's sweep
    (Hydra's basic sweeper) is also refused there when a list does not expand
    (`seed='range(0,10,0)'`), when it has no jobs (`seed='range(0)'`), when it names one job
    twice (`seed=0,0,1`: both would write one directory), or when a job's value is out of range
    (`seed=-1`, as pgrun.config.validate says it); not a resumed one, whose jobs stand as they
    were begun."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.errors import ConfigCompositionException
    from hydra.plugins.sweeper import Sweeper

    check = Sweeper.validate_batch_is_legal
    if getattr(check, "one_line", False):
        return

    def refuse(exc: BaseException) -> NoReturn:
        report = "\n".join(str(e) for e in (exc, exc.__cause__) if e is not None)
        _release_stderr()
        print(f"pgrun: error: {one_line(report)}", file=sys.stderr)
        if "pgrun.batched_launcher" in sys.modules:  # its processes were importing torch
            sys.modules["pgrun.batched_launcher"].stop_warm_up()
        raise SystemExit(2) from None

    def validate_batch_is_legal(self: Sweeper, batch: Any) -> None:
        sweep.keep_record()  # written by the sweeper just before (a resume's goes beside it)
        try:
            # a resumed sweep keeps its jobs as they were begun (one a version before this
            # refused up front stays failed, as its job recorded it)
            basic = isinstance(self, BasicSweeper) and not sweep.resuming
            if basic:
                _check_command_line_sweep(batch)
            loader = self.hydra_context.config_loader
            jobs = [loader.load_sweep_config(self.config, list(o)) for o in batch]
            if basic:
                for job in jobs:
                    _check_values(job)
                _check_env_ids(jobs)
            if batch and any(o.lstrip("~").startswith("+") for o in batch[0]):
                # a key added with + (which the schema may lack) is in every job: check one
                job = jobs[0]
                with read_write(job), open_dict(job):
                    del job["hydra"]  # the task's config, as the job gets it
                unknown_keys(job)
        except (ConfigCompositionException, UserError) as exc:
            refuse(exc)

    split = BasicSweeper.split_arguments

    def split_arguments(overrides: Any, max_batch_size: int | None) -> Any:
        try:
            return split(overrides, max_batch_size)
        except ValueError as exc:  # a list that does not expand: range(0, 10, 0)
            names = [o.input_line for o in overrides if o.is_sweep_override()]
            refuse(
                UserError(
                    f"{' '.join(names)}: {exc}: give each swept key a list that expands "
                    "(range(start, stop[, step]) with a step other than 0)"
                )
            )

    validate_batch_is_legal.one_line = True  # type: ignore[attr-defined]
    Sweeper.validate_batch_is_legal = validate_batch_is_legal  # type: ignore[method-assign]
    BasicSweeper.split_arguments = staticmethod(split_arguments)  # type: ignore[method-assign]


def _check_command_line_sweep(batch: Sequence[Sequence[str]]) -> None:
    """The basic sweeper's jobs: at least one, and no job twice."""
    if not batch:
        raise UserError(
            "the sweep has no jobs: a swept list is empty (e.g. seed='range(0)'); give each "
            "swept key at least one value"
        )
    seen: set[tuple[str, ...]] = set()
    for overrides in batch:
        key = tuple(sorted(overrides))
        if key in seen:
            raise UserError(
                f"the sweep names the job {','.join(overrides)} twice (a value repeated in a "
                "swept list): both would write one directory; give each value once"
            )
        seen.add(key)


def _check_values(job: DictConfig) -> None:
    """pgrun.config.validate on a composed job, before any job runs: a value out of range
    (seed=-1) is the command line's error, not each job's failure. Values that need the job's
    own Hydra state to resolve are left to the job."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        validate(job)
    except ConfigError:
        raise
    except (OmegaConfBaseException, ValueError, TypeError, AttributeError):
        return


def _check_env_ids(jobs: Sequence[DictConfig]) -> None:
    """A gymnasium id without an env file (`env.id=CartPol-v1`) is looked up before any job
    runs: a misspelt id is the command line's error, not each of its jobs' failure. Ids of
    one's own module (module:EnvId) and Atari's are left to the jobs, which import them."""
    from pgrun.hints import env_file_exists

    ids = {str(job.env.id) for job in jobs if OmegaConf.select(job, "env.id") is not None}
    ids = {i for i in ids if ":" not in i and not i.startswith("ALE/") and not env_file_exists(i)}
    if not ids:
        return
    from pgrun.envs import env_spec

    for env_id in sorted(ids):
        env_spec(env_id)


_warned: set[str] = set()  # the config warnings this process has given (run)

# jobs in worker processes (submitit_local's: LocalLauncher)
_WORKER_LAUNCHERS = ("JoblibLauncher", "BatchedLauncher", "LocalLauncher")


def forward_stops_to_joblib() -> None:
    """hydra/launcher=joblib: a first SIGINT or SIGTERM while its jobs run is passed on to its
    worker processes (pgrun.signals.forwarding), and the sweep waits for them to checkpoint
    before it stops; joblib would otherwise end them at once, losing their last iterations."""
    try:
        from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
    except ImportError:  # without the sweep extra: Hydra reports the missing launcher
        return

    def joblib_pids() -> list[int]:
        from pgrun.batched_launcher import worker_pids

        return worker_pids()

    _forward_stops(JoblibLauncher, joblib_pids)


def _forward_stops(
    launcher: type, workers: Callable[[], list[int]], before: Callable[[], None] | None = None
) -> None:
    """`launcher`'s launch (after `before()`) inside pgrun.signals.wait_forwarding: a first
    signal while its jobs run goes on to `workers()`, and the sweep waits for their checkpoints."""
    launch = launcher.launch
    if getattr(launch, "forwarding", False):
        return

    def forwarding_launch(self: Any, *args: Any, **kwargs: Any) -> Any:
        if before is not None:
            before()
        return signals.wait_forwarding(lambda: launch(self, *args, **kwargs), workers)

    forwarding_launch.forwarding = True  # type: ignore[attr-defined]
    launcher.launch = forwarding_launch  # type: ignore[attr-defined]


class _OwnSession:
    """`subprocess` as submitit's local executor sees it in the sweep's process: the
    controller it starts for each job (which starts the job) gets a session of its own, so that
    the terminal's Ctrl-C reaches the sweep's process only. Left in the terminal's group, each
    controller printed a KeyboardInterrupt traceback and killed its job a second after
    passing the signal on (SIGKILL), where a job's iteration can take longer."""

    started: list[subprocess.Popen] = []
    """The controllers started, in the order they were."""

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    @staticmethod
    def Popen(*args: Any, **kwargs: Any) -> subprocess.Popen:  # noqa: N802 (subprocess's name)
        controller = subprocess.Popen(*args, start_new_session=True, **kwargs)
        _OwnSession.started.append(controller)
        return controller


def forward_stops_to_submitit_local() -> None:
    """hydra/launcher=submitit_local: its jobs' controllers start in sessions of their own
    (_OwnSession), and a first SIGINT or SIGTERM while the jobs run is passed on to the jobs
    (pgrun.signals.forwarding), as with joblib: each saves a checkpoint after its iteration,
    then the sweep stops; a second one kills them at once (_kill_local_jobs)."""
    try:
        from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher
    except ImportError:  # without the sweep extra: Hydra reports the missing launcher
        return

    def own_sessions() -> None:
        from submitit.local import local

        local.subprocess = _OwnSession()  # type: ignore[assignment]

    _forward_stops(LocalLauncher, _local_job_pids, before=own_sessions)


def _local_job_pids() -> list[int]:
    """The processes of submitit_local's running jobs: the children of its live controllers."""
    pids: list[int] = []
    for controller in _OwnSession.started:
        if controller.poll() is not None:
            continue
        children = Path(f"/proc/{controller.pid}/task/{controller.pid}/children")
        with contextlib.suppress(OSError, ValueError):
            pids += [int(pid) for pid in children.read_text().split()]
    return pids


def _kill_local_jobs() -> None:
    """submitit_local's jobs, killed (they keep their last checkpoints): their controllers,
    in sessions of their own, would train them on after the sweep's process has stopped."""
    for pid in _local_job_pids():
        with contextlib.suppress(OSError):
            os.kill(pid, signals.signal.SIGKILL)


def _discard_unstarted() -> None:
    """After a failure before training started: remove the directories this process made for
    the run (nothing in them can be resumed)."""
    for lock in list(rundir._held.values()):
        if not any(lock.run_dir.glob("checkpoint-*.pt")):
            rundir.discard(lock.run_dir)
    for made in _made_sweep:  # empty, or only the sweep's record of a sweep that never launched
        if made.is_dir() and {p.name for p in made.iterdir()} <= {MULTIRUN_FILE}:
            rundir.remove_made(made)


def _interrupted(signum: int) -> None:
    """SIGINT or SIGTERM outside the training loop: one line, the run kept if it can be
    resumed, removed if it has nothing yet; exit 128 + signum."""
    name = signals.signal.Signals(signum).name
    kept = [
        lock.run_dir for lock in rundir._held.values() if any(lock.run_dir.glob("checkpoint-*.pt"))
    ]
    _discard_unstarted()
    if kept:
        print(
            f"pgrun: interrupted ({name}); continue with: pgrun resume={rundir.shell(kept[0])}",
            file=sys.stderr,
        )
    else:
        print(
            f"pgrun: interrupted ({name}) before the first checkpoint: nothing was kept",
            file=sys.stderr,
        )
    sys.exit(128 + signum)


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


def single_run(args: list[str]) -> bool:
    """Whether the command line is one run: pgrun's configs never set hydra.mode, so without
    -m/--multirun and without a hydra.mode override the mode is RUN."""
    return not any(
        a in ("-m", "--multirun") or a.lstrip("+~").startswith("hydra.mode") for a in args
    )


def skip_mode_probe(args: list[str]) -> None:
    """Hydra composes the whole config once only to read hydra.mode (RUN or MULTIRUN), then
    again to run it: a third of the command's start-up beyond `import torch`. For a single run
    (single_run) Hydra's probe is answered with None, which Hydra reads as "RUN unless
    --multirun"."""
    if not single_run(args):
        return
    from hydra._internal.hydra import Hydra

    Hydra.get_mode = lambda self, config_name, overrides: None


def settle_collector() -> None:
    """Turn the cyclic garbage collector back on, once, after main() turned it off for a
    single run's start-up. Importing torch, Hydra and gymnasium and composing the config make
    about 300k objects that live as long as the process, and every full collection walks them
    all: during the imports, and again several times as the interpreter exits (about a second
    of a run's start-up and exit). They are frozen (gc.freeze: never walked again; the few
    thousand garbage objects among them, about 2 MB, are kept), so the collector walks only what
    training makes."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def end_process() -> None:
    """End the process of a single run that finished: its exit handlers run (the run
    directory's lock, logging's files, weakref finalizers), its streams are flushed, and it
    exits with status 0 without the interpreter's teardown, which would free the modules and
    objects of torch, Hydra and gymnasium one by one for nothing (about 0.3 s). Every file of
    the run is closed by then (the loggers, the env and the evaluator are closed by the
    trainer). With a thread of its own still running, the ordinary exit waits for it."""
    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    if any(not t.daemon for t in others):
        return
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a reader that left: nothing more to write
            stream.flush()
    os._exit(0)


def _release_stderr() -> None:
    """Give stderr back, with what was held (once a run starts, its messages go straight out)."""
    held = sys.stderr
    if isinstance(held, io.StringIO) and held is not _stderr:
        sys.stderr = _stderr
        sys.stderr.write(held.getvalue())


# What may change when a run is resumed: its budget and how it reports. Anything else would
# make the resumed run a different experiment.
RESUMABLE = ("total_steps", "stop_return", "progress", "checkpoint.every")


def quote(value: str) -> str:
    """`value` as one quoted string of Hydra's override grammar, whatever it holds (=, commas,
    spaces, quotes, backslashes, ${...}): 'outputs/multirun/t/seed=0,lr=0.1'."""
    value = re.sub(r"(\\+)(?='|$|\$\{)", lambda m: m.group(1) * 2, value)
    return "'" + value.replace("'", "\\'").replace("${", "\\${") + "'"


def unquote(value: str) -> str:
    """A value as the user gave it, without the quotes of Hydra's grammar if it has them."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        # the grammar's escapes: backslashes before a quote or at the end are doubled
        halve = lambda m: "\\" * (len(m.group(1)) // 2) + m.group(2)  # noqa: E731
        return re.sub(r"(\\+)(['\"]|$)", halve, value[1:-1])
    return value


def resume_target(args: list[str]) -> Path | None:
    """The run directory of `resume=RUN_DIR` in `args` (the last one), or None. The path is
    taken as it is: '=', ',', spaces and other characters are part of it."""
    given = [a.split("=", 1)[1] for a in args if a.startswith("resume=")]
    if not given:
        return None
    raw = given[-1]
    path = Path(raw).expanduser()
    if not path.exists() and unquote(raw) != raw:
        path = Path(unquote(raw)).expanduser()
    return path


def resume_argv(args: list[str]) -> list[str]:
    """`pgrun resume=RUN_DIR [total_steps=...]` -> the run's own overrides (from its
    .hydra/overrides.yaml), the allowed new ones, and resume='RUN_DIR' quoted for Hydra's
    grammar (so a sweep job's directory, 'seed=0,lr=0.1', is one value): Hydra then composes
    the run's config again and continues in RUN_DIR. Other arguments are returned unchanged.

    RUN_DIR is used as given, made absolute but not resolved: a symlink stays the symlink."""
    run_dir = resume_target(args)
    if run_dir is None:
        return args
    others = [a for a in args if not a.startswith("resume=") and a not in ("-m", "--multirun")]
    if (run_dir / MULTIRUN_FILE).is_file():  # a sweep: its jobs continue where each stands
        return resume_sweep_argv(run_dir.resolve(), others)
    shown = str(run_dir) if run_dir.is_absolute() else _display(run_dir)  # as typed
    if not run_dir.exists():
        raise UserError(
            f"resume={shown}: no such directory; give the directory of a run "
            "(outputs/runs/<name>) or of a sweep (outputs/multirun/<name>)"
        )
    if "${" in str(os.path.abspath(run_dir)):
        raise UserError(
            f"resume={shown}: Hydra reads '${{' in a path as an interpolation; resume through "
            "a symlink without it: ln -s <that directory> run && pgrun resume=run"
        )
    if not (run_dir / ".hydra" / "overrides.yaml").is_file():
        sweeps = (
            sorted(p.parent for p in run_dir.glob(f"*/{MULTIRUN_FILE}")) if run_dir.is_dir() else []
        )
        if sweeps:  # outputs/multirun: the sweeps' parent
            newest = max(sweeps, key=lambda p: (p / MULTIRUN_FILE).stat().st_mtime)
            raise UserError(
                f"resume={shown}: holds {len(sweeps)} sweep{'s' if len(sweeps) > 1 else ''}, "
                f"not one; resume one of them, e.g. the newest: pgrun "
                f"resume={rundir.shell(newest)}"
            )
        if run_dir.is_dir() and any(run_dir.glob("*/.hydra/overrides.yaml")):
            raise UserError(
                f"resume={shown}: holds runs but is neither a run nor a grid sweep (no "
                "multirun.yaml: an Optuna search's, or a directory of runs); resume each run: "
                f"pgrun resume={shown}/<run>"
            )
        raise UserError(
            f"resume={shown}: not a pgrun run directory (no .hydra/overrides.yaml); "
            "give the directory of a run, e.g. outputs/runs/<name>"
        )
    if not (run_dir / ".hydra" / "config.yaml").is_file():
        raise UserError(
            f"resume={shown}: its record .hydra/config.yaml is missing; the run cannot be "
            "composed again (restore the file from a copy of the run)"
        )
    if not any(run_dir.glob("checkpoint-*.pt")):
        raise UserError(
            f"resume={shown}: the run has no checkpoint to continue from (it stopped before "
            f"its first): remove it (rm -r {rundir.shell(run_dir)}) and start the run again"
        )
    if any(a in ("-m", "--multirun") for a in args):
        raise UserError("resume continues one run: drop -m/--multirun")
    others = [a for a in args if not a.startswith("resume=")]
    refused = [a for a in others if "=" in a and a.split("=", 1)[0].lstrip("+~") not in RESUMABLE]
    if refused:
        raise UserError(
            f"resume={shown} continues that run with its own config: drop "
            f"{' '.join(refused)} (only {', '.join(RESUMABLE)} may change)"
        )
    saved = _saved_overrides(run_dir)
    return saved + others + [f"resume={quote(os.path.abspath(run_dir))}"]


def _saved_overrides(run_dir: Path) -> list[str]:
    """The overrides a run was made with, from its .hydra/overrides.yaml."""
    from omegaconf import ListConfig, OmegaConf

    path = run_dir / ".hydra" / "overrides.yaml"
    try:
        saved = OmegaConf.load(path)
    except Exception as exc:
        saved = exc
    if not isinstance(saved, ListConfig) or not all(isinstance(o, str) for o in saved):
        raise UserError(
            f"resume={_display(run_dir)}: its record .hydra/overrides.yaml is damaged (not a "
            "list of overrides); restore it from a copy of the run"
        )
    return list(saved)


def check_resumable(cfg: DictConfig, run_dir: Path) -> None:
    """The config composed again for a resumed run must be the one the run was made with."""
    from omegaconf import OmegaConf

    try:
        saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
        before = OmegaConf.to_container(saved, resolve=True)
        assert isinstance(before, dict)
    except Exception:
        raise UserError(
            f"resume={_display(run_dir)}: its record .hydra/config.yaml is damaged; restore it "
            "from a copy of the run"
        ) from None
    now = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    keys = {k for k in now.keys() | before.keys() if k not in ("resume", *RESUMABLE)}
    differ = sorted(k for k in keys if now.get(k) != before.get(k) and k != "checkpoint")
    if differ:
        raise UserError(
            f"resume={run_dir}: the run was made with another config or pgrun version "
            f"(differs in: {', '.join(differ)}); resume it with the version that made it"
        )


def interrupted_line(run_dir: Path, exc: Interrupted) -> str:
    """A sweep's job stopped by the sweep's stop, as its worker reports it."""
    return (
        f"{_display(run_dir)}: interrupted at iteration {exc.iteration} ({exc.env_steps:,} env "
        "steps), checkpoint saved"
    )


def _drop_attempt_record(run_dir: Path) -> None:
    """A sweep job that does not run again (finished, or kept as failed): the record Hydra
    wrote for this attempt (`.hydra/resume-<time>/`) is removed, so that resuming a sweep again
    and again adds nothing to the jobs it leaves as they are. The job's own `.hydra` stays."""
    subdir = HydraConfig.get().output_subdir
    if subdir and subdir != ".hydra":
        shutil.rmtree(run_dir / subdir, ignore_errors=True)


@hydra.main(config_path="pkg://pgrun.configs", config_name="config", version_base="1.3")
def run(cfg: DictConfig) -> float | None:
    _release_stderr()
    logging.captureWarnings(True)  # an env's warnings go to the log (stdout, pgrun.log)
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    swept = OmegaConf.select(hydra_cfg, "sweeper.params", default=None) if not multirun else None
    if swept:  # experiment=compare_variants without -m: its sweep is not run
        keys = ", ".join(str(k) for k in swept)
        log.warning(
            f"pgrun: warning: the config sweeps {keys} (hydra.sweeper.params) but this is one "
            "run: add -m to run the sweep"
        )
    if multirun and hydra_cfg.launcher._target_.endswith(_WORKER_LAUNCHERS):
        signals.worker_listens()  # the sweep's process may ask this worker to stop
        if signals.sweep_stopping:
            log.info(f"{_display(run_dir)}: not started: the sweep was interrupted")
            return None
    if multirun and "SUBMITIT_FOLDER" in os.environ:  # a job that submitit started
        from pgrun.launcher import link_scheduler_log

        link_scheduler_log(run_dir)
    try:
        lock = rundir.acquire(run_dir)  # held already, except by a sweep's job
    except UserError as exc:
        if not multirun:
            _fail(str(exc), run_dir, exc.exit_code)
        if isinstance(exc, rundir.Busy):  # a job resumed on its own, say: its writer keeps it
            log.warning(
                f"{_display(run_dir)}: not run by this sweep, left to the pgrun that writes it "
                f"({rundir.holder(run_dir) or 'another process'}); the sweep's end names it"
            )
        else:
            log.error(f"pgrun: error: {exc}")  # the job's directory cannot be written
        return None
    try:
        resume = bool(cfg.resume)
        state = sweep.job_state(run_dir) if multirun and not resume else "new"
        if state == "finished" and sweep.trains_further(cfg, run_dir):
            state = "interrupted"  # its sweep resumed with a larger total_steps: it trains on
        if state in ("failed", "lost"):  # a job started again (requeued, or its sweep resumed)
            log.info(f"{_display(run_dir)}: kept as failed: {sweep.failure_line(run_dir)}")
            _drop_attempt_record(run_dir)
            from pgrun import batched_launcher

            if batched_launcher.pending is not None and sweep.diverged(run_dir):
                # a group's seed whose update stopped being finite: the others continue
                batched_launcher.defer(cfg, run_dir, resume=False, replay=True, diverged=True)
            return None
        if state == "finished":
            log.info(f"{_display(run_dir)}: finished before, not run again")
            _drop_attempt_record(run_dir)
            from pgrun import batched_launcher

            if batched_launcher.pending is not None:  # its group's other seeds continue
                batched_launcher.defer(cfg, run_dir, resume=False, replay=True)
            return sweep.finished_return(run_dir)
        unknown_keys(cfg)
        validate(cfg)
        from pgrun.envs import env_spec

        spec = env_spec(cfg.env.id)
        warning = value_gamma_warning(cfg, cfg.env.horizon or spec.max_episode_steps)
        if warning and warning not in _warned:  # once per process: a group's seeds share it
            _warned.add(warning)
            log.warning(warning)
        if ":" in str(cfg.variant.weights):  # an own estimator: try it before anything runs
            from pgrun.plugins import try_on_env

            try_on_env(str(cfg.variant.weights), cfg)
        if ":" in str(cfg.variant.rule):  # an own update rule
            from pgrun.plugins import load_rule

            load_rule(str(cfg.variant.rule), cfg)
        if state == "interrupted":  # continues from its checkpoint (its own: checked below)
            resume = True
        elif multirun and not resume:
            sweep.remove_stale_events(run_dir)
        if resume:
            check_resumable(cfg, run_dir)
        from pgrun import batched_launcher

        if batched_launcher.pending is not None:  # hydra/launcher=batched: trained in its group
            return batched_launcher.defer(cfg, run_dir, resume)
        from pgrun.trainer import train

        settle_collector()
        result = train(cfg, run_dir, resume=resume)
        if "finished_before" in result:  # nothing trained: the attempt leaves no record
            shutil.rmtree(run_dir / HydraConfig.get().output_subdir, ignore_errors=True)
            why, where = result["finished_before"], rundir.shell(run_dir)
            more = (
                "stop_return=null"
                if "stop_return" in why
                else f"total_steps={2 * result['env_steps']}"
            )
            log.info(
                f"{_display(run_dir)} had finished ({why}): nothing to train; pgrun "
                f"resume={where} {more} trains it on"
            )
            return result["final_return"]
        (run_dir / FAILED_FILE).unlink(missing_ok=True)  # a resumed sweep job that finished
    except Exception as exc:
        if multirun and isinstance(exc, Interrupted):  # the whole sweep stops
            if not hydra_cfg.launcher._target_.endswith("BasicLauncher"):
                log.info(interrupted_line(run_dir, exc))
                raise  # in a launcher's process: it requeues or reports the job
            print(
                f"pgrun: interrupted at iteration {exc.iteration} of {_display(run_dir)}, "
                f"checkpoint saved{sweep.continue_hint()}",
                file=sys.stderr,
            )
            sys.exit(128 + exc.signum)
        if multirun:  # one failed job must not end the sweep
            return _record_failure(exc, run_dir)
        if isinstance(exc, MemoryError):
            exc = UserError(
                "out of memory while training: lower batch_episodes, env.horizon or the "
                "policy's hidden_sizes"
            )
        if isinstance(exc, UserError):
            if cfg.resume:  # keep the resumed run as it was: drop this attempt's record
                shutil.rmtree(run_dir / HydraConfig.get().output_subdir, ignore_errors=True)
            elif kept := sorted(run_dir.glob("checkpoint-*.pt")):  # the run so far is kept
                if isinstance(exc, Diverged) and "checkpoint" not in str(exc):
                    exc = Diverged(f"{exc}; the last good checkpoint is {kept[-1].name}")
                elif not isinstance(exc, Diverged):
                    exc = type(exc)(
                        f"{exc}; then continue with: pgrun resume={rundir.shell(run_dir)}"
                    )
            _fail(str(exc), run_dir, exc.exit_code)
        if isinstance(exc, Interrupted):
            where = rundir.shell(run_dir)
            print(
                f"pgrun: interrupted at iteration {exc.iteration} ({exc.env_steps:,} env steps), "
                f"checkpoint saved; continue with: pgrun resume={where}",
                file=sys.stderr,
            )
            sys.exit(128 + exc.signum)
        raise
    finally:
        if multirun:  # the sweep's next job may run in this process
            rundir.release(lock)
            signals.exit_if_sweep_gone()
    report_done(cfg, run_dir, result)
    return result["final_return"]


def report_done(cfg: DictConfig, run_dir: Path, result: dict) -> None:
    """The run's last line: its final return, steps, time, directory and how to view it."""
    where = rundir.shell(run_dir)
    solved = cfg.env.solved_return
    verdict = (
        ""
        if solved is None or math.isnan(result["final_return"])
        else (" (solved)" if result["final_return"] >= solved else f" (below {solved:g})")
    )
    # a sweep's closing block names the TensorBoard command for the whole sweep; a run that
    # writes no event files (logger=[] or [csv]) has nothing to view there
    view = (
        ""
        if HydraConfig.get().mode == RunMode.MULTIRUN or "tensorboard" not in list(cfg.logger)
        else f" | view: tensorboard --logdir {where}"
    )
    from pgrun.config import count
    from pgrun.state import FINAL_WINDOW

    n = result.get("batches", FINAL_WINDOW)  # the batches with an episode's end it averages
    over = f"the last {n} batches"
    if n < FINAL_WINDOW:  # a short run; or with rollout=steps, few batches ended episodes
        batches = count(n, "batch", "batches")
        over = (
            f"{batches} with a finished episode"
            if cfg.rollout.name == "steps"
            else f"its {batches}"
        )
    what = f"return {result['final_return']:.1f}{verdict} over {over}"
    if math.isnan(result["final_return"]):  # rollout=steps with copies short of a time limit
        what = "no episode ended, so no return (a larger total_steps gives one)"
    log.info(
        f"done: {what} | {result['env_steps']:,} env steps | {result['wall_seconds']:.1f} s | "
        f"{where}{view}"
    )


if __name__ == "__main__":
    main()
