"""The `pgrun` command, many times, without paying its imports each time.

A server process imports pgrun's command and trainer once (torch, Hydra and gymnasium with
them); for each request it forks a child that becomes `pgrun <args>`: its own working
directory, environment (PYTHONPATH entries go first on sys.path, as at a start), stdin from
/dev/null, stdout and stderr into files, and `pgrun.cli.main()` called as the console script
calls it. The child exits with the command's status after the exit handlers ran, as the
process would. Nothing of one command reaches the next: each is a fresh fork of a server that
never ran one. A command is thus the real one in a process of its own, started in
milliseconds instead of the seconds its imports take.

    with ForkServer() as server:
        done = server.run(["total_steps=200", "seed=-1"], cwd=tmp, env=pgrun_env())

The server itself: `python tests/forkserver.py`, one JSON request per line on stdin, one
JSON answer per line on stdout.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path


class ForkServer:
    """A running server; `run` is subprocess.run(["pgrun", *args]) through it."""

    def __init__(self, env: Mapping[str, str] | None = None):
        self.env = dict(env if env is not None else os.environ)
        self.tmp = tempfile.TemporaryDirectory(prefix="pgrun-forkserver-")
        self.proc = subprocess.Popen(
            [sys.executable, __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=self.env,
            text=True,
        )
        self.count = 0

    def run(
        self, args: Sequence[str], cwd: Path, env: Mapping[str, str]
    ) -> subprocess.CompletedProcess[str]:
        self.count += 1
        out = Path(self.tmp.name) / f"{self.count}.out"
        err = Path(self.tmp.name) / f"{self.count}.err"
        request = {"args": list(args), "cwd": str(cwd), "env": dict(env)}
        request.update(stdout=str(out), stderr=str(err))
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError(f"the fork server ended (status {self.proc.wait()})")
        code = json.loads(answer)["returncode"]
        return subprocess.CompletedProcess(["pgrun", *args], code, out.read_text(), err.read_text())

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.tmp.cleanup()

    def __enter__(self) -> ForkServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _become_pgrun(request: dict) -> int:
    """In the forked child: set the process up as `pgrun` would start, run it, its status."""
    import atexit
    import logging
    import traceback

    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for entry in reversed(request["env"].get("PYTHONPATH", "").split(os.pathsep)):
        if entry:
            sys.path.insert(0, entry)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    os.dup2(os.open(request["stdout"], flags, 0o644), 1)
    os.dup2(os.open(request["stderr"], flags, 0o644), 2)
    sys.argv = ["pgrun", *request["args"]]
    try:
        from pgrun.cli import main

        main()
        code = 0
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
        logging.shutdown()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a closed stream: nothing left to write
                stream.flush()
    return code


def warm_up() -> None:
    """What every command builds on its first use and keeps, built once here: the parsers of
    Hydra's overrides and OmegaConf's interpolations (their ANTLR tables fill as they parse),
    Hydra's registry of plugins, and the imports a composition makes: one composition of the
    default config, then Hydra's global state cleared, as a new process has it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.plugins import Plugins
    from omegaconf import OmegaConf

    OverridesParser.create().parse_overrides(
        ["a=1", "+b=[1,2]", "~c", "d=${a}", "e=x,y", "f=range(1,3)", "g='q'", "h={k:v}", "i=1.5e-3"]
    )
    cfg = OmegaConf.create({"a": 1, "b": "${a}", "c": "x_${b}", "d": "${oc.env:HOME,/}"})
    OmegaConf.to_container(cfg, resolve=True)
    Plugins.instance()
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_module("pgrun.configs", version_base="1.3"):
        OmegaConf.to_yaml(
            compose("config", overrides=["total_steps=200"], return_hydra_config=True),
            resolve=False,
        )
    GlobalHydra.instance().clear()


def serve() -> None:
    import pgrun.cli  # noqa: F401  what every command imports
    import pgrun.trainer  # noqa: F401

    warm_up()

    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _become_pgrun(request)
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        sys.stdout.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve()
