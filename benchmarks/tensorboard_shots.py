"""TensorBoard as a user sees it: run a small sweep, serve it on 127.0.0.1 and render each view
in headless Chromium (Debian's `chromium` package), writing one PNG per view.

    make tensorboard-shots                    # PNGs into docs/tensorboard/
    make tensorboard-shots ARGS="--out /tmp/shots --keep"

The sweep: rtg_baseline and off_policy (K = 4 inner steps, for the inner-step charts) on
CartPole-v1, 4 seeds each, 10k env steps a run, one job after the other (about a minute on two
cores). Each view is loaded with a fresh browser profile and given 20 s of virtual time to
draw. Exits non-zero, naming what failed, when a step fails: a view that does not render is an
error, not a skipped picture.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SWEEP = [
    "-m",
    "variant=rtg_baseline,off_policy",
    "seed=0,1,2,3",
    "total_steps=10000",
    "progress=false",
]
# (file name, URL fragment, window size): TensorBoard's dashboards, unsmoothed. The legacy
# SCALARS dashboard takes its tag filter from the URL.
VIEWS = [
    ("scalars", "#scalars&tagFilter=episodic_return%24&_smoothingWeight=0", "1400,760"),
    ("custom_scalars", "#custom_scalars&_smoothingWeight=0", "1400,900"),
    (
        "inner_steps",
        "#custom_scalars&regexInput=off_policy%2Cseed%3D0&_smoothingWeight=0",
        "1400,1500",
    ),
    ("hparams", "#hparams", "1400,640"),
]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--virtual-time-budget=20000",
]


def fail(message: str) -> None:
    print(f"tensorboard-shots: error: {message}", file=sys.stderr)
    sys.exit(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium() -> str:
    """Debian's chromium, installed from the distribution's packages when it is missing and
    this runs as root with apt-get (as the cluster test installs SLURM)."""
    for attempt in range(2):
        for name in ("chromium", "chromium-browser"):
            path = shutil.which(name)
            if path:
                return path
        if attempt or os.geteuid() != 0 or not shutil.which("apt-get"):
            break
        print("installing chromium (apt-get install chromium)", flush=True)
        quiet = {"stdout": subprocess.DEVNULL, "check": False}
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, **quiet)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, **quiet)
    fail("no chromium on PATH: install it (apt-get install -y chromium) and run again")
    raise AssertionError


def wait_for_runs(base: str, expected: int, server: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    runs: list = []
    while time.monotonic() < deadline:
        if server.poll() is not None:
            fail(f"tensorboard exited with status {server.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/data/runs", timeout=5) as response:
                runs = json.loads(response.read())
        except OSError:
            runs = []
        if len(runs) >= expected:
            return
        time.sleep(1)
    fail(f"tensorboard listed {len(runs)} of {expected} runs after {timeout:.0f} s")


def shoot(browser: str, url: str, out: Path, size: str) -> None:
    with tempfile.TemporaryDirectory(prefix="pgrun-chromium-") as profile:
        cmd = [
            browser,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={size}",
            f"--screenshot={out}",
            url,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0 or not out.is_file() or out.stat().st_size < 10_000:
        fail(f"chromium did not render {url}: {proc.stderr.strip()[-500:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "tensorboard")
    parser.add_argument("--keep", action="store_true", help="keep the sweep (its path printed)")
    args = parser.parse_args(argv)
    browser = chromium()
    work = Path(tempfile.mkdtemp(prefix="pgrun-shots-"))
    sweep = work / "sweep"
    print(f"sweep: pgrun {' '.join(SWEEP)} into {sweep}", flush=True)
    done = subprocess.run(
        [str(BIN / "pgrun"), *SWEEP, f"hydra.sweep.dir={sweep}"],
        cwd=work,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        fail(f"the sweep failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    closing = done.stdout[done.stdout.find("comparison of") :]
    print(closing.strip(), flush=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(  # --logdir relative: the pictures show "sweep", not a path
        [
            str(BIN / "tensorboard"),
            "--logdir",
            "sweep",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=work,
        start_new_session=True,  # its data server stops with it
    )
    try:
        wait_for_runs(base, expected=8 + 2, server=server)
        args.out.mkdir(parents=True, exist_ok=True)
        for name, fragment, size in VIEWS:
            path = args.out / f"{name}.png"
            shoot(browser, f"{base}/{fragment}", path, size)
            print(f"{path}: {fragment}", flush=True)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        if args.keep:
            print(f"kept: {sweep}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
