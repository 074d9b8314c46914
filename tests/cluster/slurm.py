"""A real one-node SLURM for the cluster tests: munged, slurmctld and slurmd started by hand
(no systemd) with a generated config in a temporary directory, stopped by their PIDs.

    with Cluster(tmp) as cluster:       # SLURM_CONF is set for this process and its children
        cluster.run("squeue")

`ensure_installed()` installs Debian's `slurm-wlm` and `munge` when slurmctld is missing (as
root). The config: the node as `slurmd -C` reports it, partition `debug`, `DefMemPerCPU` so
that one job does not take the node's memory, a small `MaxArraySize` (so that a sweep has to
be split), no accounting (`sacct` fails, as on many small clusters).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

MAX_ARRAY_SIZE = 4  # tasks 0..3 in one array: a larger sweep is split
DEF_MEM_PER_CPU = 1024  # MB
PACKAGES = ("slurm-wlm", "munge")


def ensure_installed() -> None:
    """Install SLURM and munge from Debian's packages when slurmctld is missing."""
    if shutil.which("slurmctld") and shutil.which("munged"):
        return
    if os.geteuid() != 0:
        raise RuntimeError("SLURM is not installed and installing it needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
        check=True,
        env=env,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_line() -> str:
    """`slurmd -C`'s first line (NodeName=... CPUs=... RealMemory=...)."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    return out.splitlines()[0].strip()


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a daemon that is our child stays a zombie until reaped: reap it)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Cluster:
    """munged, slurmctld and slurmd on this machine, configured under `root`."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.pids: dict[str, int] = {}
        self._saved_env: dict[str, str | None] = {}

    def config(self, node: str) -> str:
        r = self.root
        host = node.split()[0].split("=", 1)[1]
        return "\n".join(
            [
                "ClusterName=pgrun-test",
                f"SlurmctldHost={host}",
                "SlurmUser=root",
                "SlurmdUser=root",
                f"SlurmctldPort={_free_port()}",
                f"SlurmdPort={_free_port()}",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                f"AuthInfo=socket={r}/munge/munge.socket",
                f"StateSaveLocation={r}/state",
                f"SlurmdSpoolDir={r}/spool",
                f"SlurmctldPidFile={r}/slurmctld.pid",
                f"SlurmdPidFile={r}/slurmd.pid",
                f"SlurmctldLogFile={r}/slurmctld.log",
                f"SlurmdLogFile={r}/slurmd.log",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "SwitchType=switch/none",
                "MpiDefault=none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core_Memory",
                f"DefMemPerCPU={DEF_MEM_PER_CPU}",
                f"MaxArraySize={MAX_ARRAY_SIZE}",
                "AccountingStorageType=accounting_storage/none",
                "JobAcctGatherType=jobacct_gather/none",
                "JobCompType=jobcomp/none",
                "SchedulerType=sched/backfill",
                "SchedulerParameters=sched_interval=1",
                "ReturnToService=2",
                "KillWait=15",
                "MinJobAge=600",
                "SlurmctldTimeout=30",
                "SlurmdTimeout=60",
                f"{node} State=UNKNOWN",
                "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=60)

    def __enter__(self) -> Cluster:
        ensure_installed()
        r = self.root
        for sub in ("munge", "state", "spool"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(r / "munge", 0o700)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        self.conf.write_text(self.config(_node_line()))
        for name in ("SLURM_CONF",):
            self._saved_env[name] = os.environ.get(name)
        os.environ["SLURM_CONF"] = str(self.conf)
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        r = self.root
        m = r / "munge"
        subprocess.run(
            [
                "munged",
                "--force",
                f"--key-file={m / 'munge.key'}",
                f"--socket={m / 'munge.socket'}",
                f"--pid-file={m / 'munged.pid'}",
                f"--log-file={m / 'munged.log'}",
                f"--seed-file={m / 'munged.seed'}",
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        self.pids["munged"] = self._read_pid(m / "munged.pid")
        subprocess.run(["slurmctld", "-f", str(self.conf)], check=True)
        self.pids["slurmctld"] = self._read_pid(r / "slurmctld.pid")
        subprocess.run(["slurmd", "-f", str(self.conf)], check=True)
        self.pids["slurmd"] = self._read_pid(r / "slurmd.pid")
        self._wait_idle()

    def _read_pid(self, path: Path, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.is_file() and path.read_text().strip():
                return int(path.read_text().split()[0])
            time.sleep(0.2)
        raise RuntimeError(f"no pid file {path}: see the logs in {self.root}")

    def _wait_idle(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            out = self.run("sinfo", "-h", "-o", "%T", check=False)
            state = out.stdout.strip()
            if out.returncode == 0 and state in ("idle", "mixed", "allocated"):
                return
            time.sleep(0.5)
        raise RuntimeError(f"the node is not up ({state!r}): see the logs in {self.root}")

    def __exit__(self, *exc) -> None:
        if self.pids:
            self.run("scancel", "--full", "-u", "root", check=False)
        for name in ("slurmd", "slurmctld", "munged"):
            pid = self.pids.pop(name, None)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 20
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
