"""hydra/launcher=batched: seeds trained as one computation (pgrun.batched) against the same
seeds trained alone (pgrun.train), in-process on short budgets; one sweep through the command.

What holds, and the tolerances:

- The pieces that are element-wise or per seed are bit for bit: the K independent Adams
  (StackedAdam against pgrun.optim.Adam), each seed's resets, action noise, draws (numpy's,
  pgrun.draw), batch and estimator, and the episodes the seeds collect over the first
  iterations.
- The stacked matmul (torch.baddbmm) does not always add in the order of nn.Linear's addmm:
  a layer's outputs and gradients can differ in the last bit (float32, eps = 1.2e-7). So the
  scalars a seed logs in a group equal those it logs alone to float rounding: relative 2e-3
  and absolute 1e-5, the measured worst case (5.5e-4 relative, on PPO's approx_kl, a
  difference of near-equal numbers after 40 Adam steps) with a margin of four. Adam's first
  steps are about lr sign(g), so a gradient component at rounding level can flip a step:
  with Box actions PPO's per-step minibatches amplify that within a few dozen steps, and that
  case is compared over 2 epochs a batch.
- A group that is stopped and resumed continues bit for bit as the same group uninterrupted.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from conftest import run_pgrun
from hydra import compose, initialize_config_module

import pgrun
from pgrun import checkpoint, trainer
from pgrun.batched import Job, Stacked, StackedAdam, clip_per_seed, train_group
from pgrun.batched_launcher import blocker, group_key, spread
from pgrun.logger import FINAL_METRIC
from pgrun.optim import Adam

RTOL, ATOL = 2e-3, 1e-5


def cfg_of(*overrides: str):
    with initialize_config_module("pgrun.configs", version_base="1.3"):
        return compose("config", overrides=["progress=false", "logger=[csv]", *overrides])


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.csv as {tag: [(step, value), ...]}, without the wall-clock charts/SPS."""
    out: dict[str, list[tuple[int, float]]] = {}
    with open(run_dir / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["tag"] != "charts/SPS":
                out.setdefault(row["tag"], []).append((int(row["step"]), float(row["value"])))
    return out


def alone_and_grouped(tmp_path: Path, overrides: list[str], seeds=(0, 1)):
    """Each seed trained alone, then all of them as one group: (alone, grouped) scalars."""
    alone, jobs = [], []
    for s in seeds:
        d = tmp_path / f"alone{s}"
        d.mkdir()
        pgrun.train(cfg_of(*overrides, f"seed={s}"), d)
        alone.append(scalars(d))
        g = tmp_path / f"group{s}"
        g.mkdir()
        jobs.append(Job(cfg_of(*overrides, f"seed={s}"), g))
    results = train_group(jobs)
    assert all(isinstance(r, dict) for r in results), results
    return alone, [scalars(j.run_dir) for j in jobs], results


def assert_same_curves(a, b, discrete: bool = True) -> None:
    """The same tags at the same steps, equal to float rounding; the first batch's episodes
    exactly (the same weights and noise, the same numpy draws), and with Discrete actions the
    second's too (Box actions carry the first update's rounding into the actions, so their
    later returns agree to rounding only)."""
    assert a.keys() == b.keys()
    exact = 2 if discrete else 1
    assert a["charts/episodic_return"][:exact] == b["charts/episodic_return"][:exact]
    for tag in a:
        assert [s for s, _ in a[tag]] == [s for s, _ in b[tag]], tag
        for (_, x), (_, y) in zip(a[tag], b[tag], strict=True):
            assert math.isclose(x, y, rel_tol=RTOL, abs_tol=ATOL), (tag, x, y)


CASES = {
    "vanilla": ["variant=vanilla", "total_steps=1500"],
    "rtg": ["variant=rtg", "total_steps=1500", "optim.max_grad_norm=0.5"],
    "rtg_baseline": ["variant=rtg_baseline", "total_steps=1500", "stop_return=25"],
    "off_policy": ["variant=off_policy", "total_steps=1500"],
    "value_baseline": ["variant=value_baseline", "total_steps=1500", "env.scale_rewards=true"],
    "gae_box": ["variant=gae", "env=Pendulum-v1", "total_steps=1600", "batch_episodes=4"],
    "ppo_steps": ["variant=ppo", "rollout=steps", "rollout.steps=32", "total_steps=1024",
                  "batch_episodes=8", "variant.target_kl=0.005", "optim.anneal_lr=true"],
    # PPO on Box actions amplifies rounding the most (Adam's first steps are about lr sign(g),
    # and a gradient component at rounding level flips its sign): 2 epochs a batch
    "ppo_steps_box": ["variant=ppo", "rollout=steps", "env=Pendulum-v1", "rollout.steps=64",
                      "batch_episodes=4", "total_steps=1024", "variant.inner_steps=2"],
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_a_seed_in_a_group_follows_its_run_alone(tmp_path, case):
    """Every variant, both collectors, Discrete (CartPole) and Box (Pendulum) actions, with
    clipping, reward scaling, stop_return, a KL stop and a learning-rate schedule: each seed
    logs the same tags at the same steps as alone, equal to float rounding."""
    alone, grouped, _ = alone_and_grouped(tmp_path, CASES[case])
    discrete = not any(o.startswith("env=Pendulum") for o in CASES[case])
    for a, b in zip(alone, grouped, strict=True):
        assert_same_curves(a, b, discrete)


def test_each_seed_stops_on_its_own(tmp_path):
    """stop_return per seed: the seeds of one group stop after as many steps as alone, and a
    stopped seed's directory is complete (policy.pt) while the others go on."""
    overrides = ["variant=rtg_baseline", "total_steps=6000", "stop_return=40"]
    alone, grouped, results = alone_and_grouped(tmp_path, overrides, seeds=(0, 1, 2))
    steps = [r["env_steps"] for r in results]
    assert steps == [a["charts/episodic_return"][-1][0] for a in alone]
    assert len(set(steps)) > 1  # they did stop at different points
    for s in range(3):
        assert (tmp_path / f"group{s}" / "policy.pt").is_file()


def test_a_run_has_its_final_return_on_disk_before_policy_pt_marks_it_finished(
    tmp_path, monkeypatch
):
    """policy.pt marks a job finished (a resumed sweep does not run it again), so the final
    return the comparison reads must be logged before it: alone, and in a group whose first
    seeds to stop wait for the others (a kill -9 in that wait lost those seeds' results)."""
    from pgrun.compare import FINAL_TAG
    from pgrun.logger import read_scalars

    written, real = [], checkpoint.write_atomic

    def spy(path, obj):
        path = Path(path)
        if path.name == "policy.pt":
            final = read_scalars(path.parent, (FINAL_TAG,))[0].get(FINAL_TAG, [])
            written.append((path.parent.name, [value for _, value, _ in final]))
        return real(path, obj)

    monkeypatch.setattr(checkpoint, "write_atomic", spy)
    overrides = ["variant=rtg_baseline", "total_steps=6000", "stop_return=40"]
    _, _, results = alone_and_grouped(tmp_path, overrides, seeds=(0, 1, 2))
    assert sorted(name for name, _ in written) == [*(f"alone{s}" for s in range(3)),
                                                   *(f"group{s}" for s in range(3))]  # fmt: skip
    finals = dict(written)
    for s, result in enumerate(results):
        assert finals[f"group{s}"] == [pytest.approx(result["final_return"])]
        assert len(finals[f"alone{s}"]) == 1


def test_final_returns_have_one_distribution(tmp_path):
    """Eight seeds of rtg_baseline: the mean final return in a group and alone differ by less
    than 3 standard errors of the difference (a two-sided z test at the 0.3 % level)."""
    seeds = tuple(range(8))
    overrides = ["variant=rtg_baseline", "total_steps=4000", "batch_episodes=8"]
    alone, jobs = [], []
    for s in seeds:
        d = tmp_path / f"alone{s}"
        d.mkdir()
        alone.append(pgrun.train(cfg_of(*overrides, f"seed={s}"), d)["final_return"])
        g = tmp_path / f"group{s}"
        g.mkdir()
        jobs.append(Job(cfg_of(*overrides, f"seed={s}"), g))
    grouped = [r["final_return"] for r in train_group(jobs)]
    a, b = torch.tensor(alone), torch.tensor(grouped)
    se = (a.var() / len(a) + b.var() / len(b)).sqrt()
    assert abs(a.mean() - b.mean()) <= 3 * se + 1e-6


def seed_jobs(root: Path, overrides: list[str], resume: bool = False) -> list[Job]:
    """Seeds 0 and 1 of `overrides` as the jobs of a group, in root/seed0 and root/seed1."""
    out = []
    for s in (0, 1):
        d = root / f"seed{s}"
        d.mkdir(parents=True, exist_ok=True)
        out.append(Job(cfg_of(*overrides, f"seed={s}"), d, resume))
    return out


def stop_after(rounds: int):
    """A pgrun.trainer.StopRequest that asks a group to stop (as SIGINT does) once its loop has
    looked `rounds` times: the group then checkpoints every seed at the same iteration."""
    import signal

    class StopAfter(trainer.StopRequest):
        looked = 0

        @property
        def signum(self):
            StopAfter.looked += 1
            return signal.SIGINT if StopAfter.looked > rounds else None

        @signum.setter
        def signum(self, value):
            pass

    return StopAfter


def test_a_stopped_group_resumes_bit_for_bit(tmp_path, monkeypatch):
    """A group stopped after a few iterations (as Ctrl-C or SLURM's signal stops it: every
    seed checkpointed at the same iteration) and resumed logs exactly what the same group logs
    uninterrupted; a job of it resumes alone too."""
    overrides = ["variant=ppo", "total_steps=2000", "checkpoint.every=1", "batch_episodes=4"]

    train_group(seed_jobs(tmp_path / "whole", overrides))
    with monkeypatch.context() as m:
        m.setattr(trainer, "StopRequest", stop_after(3))
        stopped = train_group(seed_jobs(tmp_path / "cut", overrides))
    assert all(type(r).__name__ == "Interrupted" for r in stopped), stopped
    train_group(seed_jobs(tmp_path / "cut", overrides, resume=True))
    for s in (0, 1):
        cut, uncut = (scalars(tmp_path / p / f"seed{s}") for p in ("cut", "whole"))
        assert cut == uncut
    single = tmp_path / "cut" / "seed0"
    result = pgrun.train(cfg_of(*overrides, "total_steps=3000", "seed=0"), single, resume=True)
    assert result["env_steps"] >= 3000


def test_a_group_killed_between_its_seeds_checkpoints_resumes_bit_for_bit(tmp_path, monkeypatch):
    """A group checkpoints its seeds one after the other: a kill -9 between two of them leaves
    seed 0 at iteration n and seed 1 at n - 1 (here: a stop after a few rounds, then seed
    1's newest checkpoint removed). The resumed group continues both from the iteration they
    share and logs exactly what the group logs uninterrupted (continuing each from its own
    newest would shift the seeds' rounds and change the sums in their last bits)."""
    overrides = ["variant=rtg", "total_steps=1500", "checkpoint.every=1", "batch_episodes=4"]

    train_group(seed_jobs(tmp_path / "whole", overrides))
    with monkeypatch.context() as m:
        m.setattr(trainer, "StopRequest", stop_after(4))
        train_group(seed_jobs(tmp_path / "cut", overrides))
    seed0, seed1 = tmp_path / "cut" / "seed0", tmp_path / "cut" / "seed1"
    n = checkpoint.load_latest(seed0)["iteration"]
    assert checkpoint.load_latest(seed1)["iteration"] == n and not (seed0 / "policy.pt").exists()
    checkpoint.checkpoints(seed1)[0].unlink()
    assert checkpoint.load_latest(seed1)["iteration"] == n - 1
    train_group(seed_jobs(tmp_path / "cut", overrides, resume=True))
    for s in (0, 1):
        cut, uncut = (scalars(tmp_path / p / f"seed{s}") for p in ("cut", "whole"))
        assert cut == uncut, s


def test_a_group_trained_on_from_the_iteration_its_seeds_share_keeps_one_history(
    tmp_path, monkeypatch
):
    """Seeds of a finished group end at different iterations; trained on to a larger
    total_steps, the group continues all of them from the newest iteration they share, and
    each one's checkpoints after it and its policy.pt go with what its loggers drop. Left,
    a resume of the group stopped at once left each seed's old end as its newest checkpoint
    (a resume of it alone continued from there: a gap in its curve) and its policy.pt beside a
    curve without its final metric (the comparison took it as ended, or failed on it). The
    group resumed to the end logs what a group begun with the larger budget logs."""
    first = ["variant=rtg", "total_steps=1500", "checkpoint.every=6", "batch_episodes=4"]
    on = [*first[:1], "total_steps=3000", *first[2:]]
    train_group(seed_jobs(tmp_path / "cut", first))
    ends = [checkpoint.load_latest(tmp_path / "cut" / f"seed{s}")["iteration"] for s in (0, 1)]
    shared = max(set.intersection(*(
        {c["iteration"] for c in checkpoint.load_readable(tmp_path / "cut" / f"seed{s}")}
        for s in (0, 1)
    )))  # fmt: skip
    assert max(ends) > shared, (ends, shared)  # a seed goes back past its end
    with monkeypatch.context() as m:
        m.setattr(trainer, "StopRequest", stop_after(1))
        stopped = train_group(seed_jobs(tmp_path / "cut", on, resume=True))
    assert all(type(r).__name__ == "Interrupted" for r in stopped), stopped
    for s in (0, 1):
        run = tmp_path / "cut" / f"seed{s}"
        logged = max(step for series in scalars(run).values() for step, _ in series)
        newest = checkpoint.load_latest(run)
        assert newest["iteration"] == stopped[s].iteration > shared, (s, newest["iteration"])
        assert newest["env_steps"] <= logged, (s, newest["env_steps"], logged)
        assert not (run / "policy.pt").exists(), s  # interrupted, as its curve says
        assert not scalars(run).get(FINAL_METRIC), s
    train_group(seed_jobs(tmp_path / "cut", on, resume=True))
    train_group(seed_jobs(tmp_path / "whole", on))
    for s in (0, 1):
        cut, uncut = (scalars(tmp_path / p / f"seed{s}") for p in ("cut", "whole"))
        assert cut == uncut, s


def test_a_finished_seed_without_the_shared_checkpoint_is_said_to_cost_exactness(tmp_path, caplog):
    """A finished seed that ended after the iteration its group's others continue from, with
    no checkpoint of it (its own resume alone moved on, say), waits as it ended: the others then
    continue to float rounding, and resume_points says so (the group's line had said they
    continue 'exactly as before' right after). With that checkpoint it trains again to its end
    and they continue exactly."""
    from pgrun.batched import resume_points

    def saved(run_dir: Path, iterations) -> Path:
        run_dir.mkdir(parents=True, exist_ok=True)
        for i in iterations:
            torch.save({"iteration": i, "run_id": run_dir.name}, run_dir / f"checkpoint-{i:08d}.pt")
        return run_dir

    going = Job(None, saved(tmp_path / "going", (6, 7)), resume=True)
    for ends, exact in (((5, 8), False), ((7, 8), True)):
        ended = Job(None, saved(tmp_path / f"ended{exact}", ends), replay=True)
        caplog.clear()
        with caplog.at_level("INFO", logger="pgrun.batched"):
            points, trains, keep, same = resume_points([going, ended])
        assert [p["iteration"] for p in points] == [7, 7 if exact else 8]
        assert (trains, keep, same) == ([True, exact], [True, True], exact)
        waits = "waits as it ended, and the others continue to float rounding"
        assert (waits in caplog.text) is not exact, caplog.text


def files_of(run_dir: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of a run: its bytes and modification time."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.iterdir()}


def test_a_group_stopped_after_a_seed_finished_resumes_bit_for_bit(tmp_path, monkeypatch):
    """Seeds stop on their own (stop_return), and a finished seed waits while the others train
    on. A group stopped after seed s finished resumes with s kept in its place, s's files
    untouched, and the others log exactly what they log uninterrupted: both where the others
    continue from an iteration after s's end (s waits as it ended), where they continue from
    one before it (a kill -9 between checkpoints: s trains again to its end, writing nothing),
    and where they had no checkpoint yet (they start again from iteration 0: s is built again
    beside them and trains to its end, writing nothing). Without s in place the others'
    stacked computations change shape and can add in another order."""
    # The case a trial of kill -9 found: seed 1 of compare_variants' off_policy ends at
    # iteration 12 with episodes of 500 steps, the longest batch of the group, and the others
    # checkpoint every 10 iterations.
    overrides = ["experiment=compare_variants", "variant=off_policy", "checkpoint.every=10"]
    seeds = tuple(range(5))

    def jobs(root, again=False):
        """The group's jobs; `again`: as a resumed sweep hands them over (a finished job
        replays, one with checkpoints resumes, one without starts again)."""
        out = []
        for s in seeds:
            d = root / f"seed{s}"
            d.mkdir(parents=True, exist_ok=True)
            done = again and (d / "policy.pt").exists()
            resume = again and not done and bool(checkpoint.checkpoints(d))
            out.append(Job(cfg_of(*overrides, f"seed={s}"), d, resume, replay=done))
        return out

    whole = train_group(jobs(tmp_path / "whole"))
    ends = [r["iterations"] for r in whole]
    first = min(ends)
    assert sorted(ends)[1] > first + 2, ends  # the others train on after the first stops
    finished = ends.index(first)
    for where in ("after its end", "before its end", "before any checkpoint"):
        stop_at = first if where != "after its end" else first + 2
        cut = tmp_path / where.replace(" ", "_")
        with monkeypatch.context() as m:
            m.setattr(trainer, "StopRequest", stop_after(stop_at - 1))
            train_group(jobs(cut))
        going = [s for s in seeds if s != seeds[finished]]
        for s in going:
            assert checkpoint.load_latest(cut / f"seed{s}")["iteration"] == stop_at
        if where == "before its end":  # killed before the others' checkpoints of stop_at
            for s in going:
                checkpoint.checkpoints(cut / f"seed{s}")[0].unlink()
        if where == "before any checkpoint":  # killed before the others' first checkpoint:
            for s in going:  # they start again from iteration 0 (pgrun.sweep clears events)
                for path in checkpoint.checkpoints(cut / f"seed{s}"):
                    path.unlink()
                for path in (cut / f"seed{s}").glob("events.out.tfevents.*"):
                    path.unlink()
        kept = files_of(cut / f"seed{seeds[finished]}")
        again = train_group(jobs(cut, again=True))
        assert again[finished] is None
        assert files_of(cut / f"seed{seeds[finished]}") == kept
        for s in seeds:
            assert scalars(cut / f"seed{s}") == scalars(tmp_path / "whole" / f"seed{s}"), (where, s)


def test_a_group_stopped_after_a_seed_diverged_resumes_bit_for_bit(tmp_path, monkeypatch):
    """A seed whose update stops being finite fails alone and the others train on (as in
    test_a_seed_that_diverges_fails_alone). Resumed, the group keeps the diverged seed in its
    place, its files untouched, and the others log exactly what they log uninterrupted: where
    they continue from after the divergence (it waits) and from the checkpoint before it (a
    kill -9 between checkpoints: it trains again from that checkpoint and diverges again,
    writing nothing)."""
    from pgrun.config import Diverged

    # compare_variants' off_policy, seed 1 (the group's longest batches) diverging at
    # iteration 11, checkpoints every 10: without the seed in place the others continue from
    # iteration 10 with other padding, and seeds 3 and 4 part from the uninterrupted group.
    overrides = ["experiment=compare_variants", "variant=off_policy", "checkpoint.every=10"]
    seeds, bad, at = tuple(range(5)), 1, 11
    build = trainer.build

    def nan_advantages_at(cfg, run_dir):
        state, learner, evaluator = build(cfg, run_dir)
        if run_dir.name == f"seed{bad}":
            targets = state.learner.targets

            def poisoned(batch):
                t = targets(batch)
                if state.iteration == at:
                    t.adv = t.adv * float("nan")
                return t

            state.learner.targets = poisoned
        return state, learner, evaluator

    monkeypatch.setattr(trainer, "build", nan_advantages_at)

    def jobs(root, failed=()):
        out = []
        for s in seeds:
            d = root / f"seed{s}"
            d.mkdir(parents=True, exist_ok=True)
            resume, ended = bool(checkpoint.checkpoints(d)), s in failed
            out.append(Job(cfg_of(*overrides, f"seed={s}"), d, resume and not ended,
                           replay=ended, diverged=ended))  # fmt: skip
        return out

    whole = train_group(jobs(tmp_path / "whole"))
    assert isinstance(whole[bad], Diverged) and f"iteration {at} " in str(whole[bad])
    going = [s for s in seeds if s != bad]
    assert all(whole[s]["iterations"] > at + 2 for s in going)
    for where in ("after it diverged", "before it diverged"):
        stop_at = at + 2 if where == "after it diverged" else at + 1
        cut = tmp_path / where.replace(" ", "_")
        with monkeypatch.context() as m:
            m.setattr(trainer, "StopRequest", stop_after(stop_at - 1))
            first = train_group(jobs(cut))
        assert isinstance(first[bad], Diverged)
        if where == "before it diverged":  # killed before the others' checkpoints of stop_at
            for s in going:
                checkpoint.checkpoints(cut / f"seed{s}")[0].unlink()
                assert checkpoint.load_latest(cut / f"seed{s}")["iteration"] < at
        kept = files_of(cut / f"seed{bad}")
        again = train_group(jobs(cut, failed=(bad,)))
        assert again[bad] is None
        assert files_of(cut / f"seed{bad}") == kept
        for s in seeds:
            assert scalars(cut / f"seed{s}") == scalars(tmp_path / "whole" / f"seed{s}"), (where, s)


def test_only_a_diverged_update_keeps_a_failed_seed_in_its_group(tmp_path):
    """pgrun.sweep.diverged: the failure a group's seed has alone (a non-finite update, of the
    policy or of V) is told from the others, which end the whole group."""
    from pgrun import guards, sweep

    lines = {
        str(guards.diverged("loss", 11, 36806, [])): True,
        str(guards.diverged("value loss", 3, 900, [Path("checkpoint-00000002.pt")])): True,
        str(guards.diverged("parameters", 0, 200, [])): True,
        "non-finite reward from the env Foo-v0 (nan at step 3 of episode 1 of the batch)": False,
        "RuntimeError: out of memory": False,
        "scheduler: the job was preempted": False,
    }
    for line, expected in lines.items():
        (tmp_path / sweep.FAILED_FILE).write_text(line + "\n")
        assert sweep.diverged(tmp_path) is expected, line


def test_a_batched_sweep_killed_with_sigkill_resumes_bit_for_bit(tmp_path):
    """`pgrun -m hydra/launcher=batched`, killed (SIGKILL to its process group: the sweep's
    process and the group's) once both seeds have checkpoints, then `pgrun resume=<sweep
    dir>`: every job logs exactly what the same sweep logs uninterrupted."""
    import os
    import signal
    import subprocess
    import time

    from conftest import PGRUN, pgrun_env

    args = ["-m", "hydra/launcher=batched", "hydra.launcher.n_jobs=1", "seed=0,1",
            "variant=rtg", "total_steps=4000", "batch_episodes=4", "checkpoint.every=1",
            "progress=false"]  # fmt: skip
    whole = run_pgrun([*args, f"hydra.sweep.dir={tmp_path / 'whole'}"], tmp_path)
    assert whole.returncode == 0, whole.stderr
    cut = tmp_path / "cut"
    proc = subprocess.Popen(
        [str(PGRUN), *args, f"hydra.sweep.dir={cut}"], cwd=tmp_path, env=pgrun_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    jobs = [cut / "seed=0", cut / "seed=1"]  # named by what varies
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if all(d.is_dir() and checkpoint.checkpoints(d) for d in jobs):
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the sweep ended before it was killed"
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not any((d / "policy.pt").exists() for d in jobs)
    again = run_pgrun([f"resume={cut}"], tmp_path)
    assert again.returncode == 0, again.stderr
    for d in jobs:
        assert scalars(d) == scalars(tmp_path / "whole" / d.name), d.name


def test_stacked_adam_is_k_adams():
    """One StackedAdam over K = 3 seeds' weights takes each seed's Adam step bit for bit, with
    each seed's own learning rate; a seed that is not stepped keeps weights, moments and t."""
    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
            for _ in range(3)]  # fmt: skip
    ref = [torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
           for _ in range(3)]  # fmt: skip
    for r, n in zip(ref, nets, strict=True):
        r.load_state_dict(n.state_dict())
    adams = [Adam(n.parameters(), lr) for n, lr in zip(nets, (0.1, 0.01, 0.001), strict=True)]
    ref_adams = [Adam(r.parameters(), o.lr) for r, o in zip(ref, adams, strict=True)]
    stacked = Stacked(nets)
    opt = StackedAdam(stacked, adams)
    for it in range(4):
        active = [True, it % 2 == 0, True]
        grads = [[torch.randn_like(p) for p in n.parameters()] for n in nets]
        for k, (r, o) in enumerate(zip(ref, ref_adams, strict=True)):
            if active[k]:
                for p, g in zip(r.parameters(), grads[k], strict=True):
                    p.grad = g.clone()
                o.step()
        for j, p in enumerate(stacked.params):
            p.grad = torch.stack([g[j].T if g[j].dim() == 2 else g[j][None] for g in grads])
        opt.step(active)
    stacked.write_back()
    opt.write_back()
    for n, r, o, ro in zip(nets, ref, adams, ref_adams, strict=True):
        for p, q in zip(n.parameters(), r.parameters(), strict=True):
            assert torch.equal(p, q)
        assert o.t == ro.t
        assert all(torch.equal(x, y) for x, y in zip(o.m + o.v, ro.m + ro.v, strict=True))


def test_gradient_norm_is_clipped_per_seed():
    """Each seed's gradient is clipped by its own norm: a large gradient of one seed leaves
    the others' untouched."""
    nets = [torch.nn.Linear(2, 2) for _ in range(2)]
    stacked = Stacked(nets)
    stacked.params[0].grad = torch.stack([torch.full((2, 2), 100.0), torch.full((2, 2), 0.01)])
    stacked.params[1].grad = torch.zeros(2, 1, 2)
    norms, finite = clip_per_seed(stacked, max_norm=1.0)
    torch.testing.assert_close(norms, torch.tensor([200.0, 0.02]))
    assert finite.all()
    assert math.isclose(stacked.params[0].grad[0].norm().item(), 1.0, rel_tol=1e-5)
    assert torch.equal(stacked.params[0].grad[1], torch.full((2, 2), 0.01))


def test_grouping_and_what_cannot_be_batched():
    """Jobs that differ only in seed share a group; a CNN policy or SGD is named as the reason
    its jobs run alone."""
    assert group_key(["variant=rtg", "seed=3"]) == group_key(["variant=rtg", "seed=4"])
    assert group_key(["variant=rtg", "seed=3"]) != group_key(["variant=vanilla", "seed=3"])
    assert blocker(cfg_of("variant=rtg")) is None
    assert "optim.name=sgd" in blocker(cfg_of("optim.name=sgd"))
    assert "policy=cnn" in blocker(cfg_of("policy=cnn"))
    # env.backend=auto where it resolves to gymnasium (an id envpool lacks) is batched
    assert blocker(cfg_of("env=Pendulum-v1", "env.backend=auto")) is None
    assert "env.backend=envpool" in blocker(cfg_of("env.backend=envpool"))


@pytest.mark.parametrize(
    "first, then, seed",
    [
        (["variant=rtg", "seed=0"], ["variant=rtg", "seed=3"], 3),
        (["seed=12", "optim.lr=0.01", "env=Acrobot-v1"], ["seed=0", "optim.lr=0.01", "env=Acrobot-v1"], 0),
    ],
)  # fmt: skip
def test_a_seed_variant_is_the_config_hydra_composes(first, then, seed):
    """SeedVariants puts a job's seed into the config of the group's job composed before it:
    the same config, Hydra's node included (its task overrides, its directory name), as
    composing it; other overrides are composed as they are."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from pgrun.batched_launcher import SeedVariants

    GlobalHydra.instance().clear()
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path("pkg://pgrun.configs"))
    excluded = "hydra.job.config.override_dirname.exclude_keys=[optim.lr]"
    master = loader.load_configuration("config", [excluded], run_mode=RunMode.MULTIRUN)
    variants = SeedVariants(loader)
    before = variants.load_sweep_config(master, first)
    assert len(variants.composed) == 1
    derived = variants.load_sweep_config(master, then)
    composed = loader.load_sweep_config(master, then)
    assert derived.seed == composed.seed == seed != before.seed
    assert OmegaConf.to_container(derived) == OmegaConf.to_container(composed)
    assert derived.hydra.job.override_dirname == composed.hydra.job.override_dirname
    assert derived.hydra.job.override_dirname != before.hydra.job.override_dirname
    other = variants.load_sweep_config(master, ["variant=vanilla", "seed=1"])
    assert other.variant.name == "vanilla" and len(variants.composed) == 2


def test_groups_are_split_to_fill_the_cores():
    """2 configs x 6 seeds on 8 processes: the groups are halved until every process has one
    (every job once, pieces of one job run plain); more processes than jobs change nothing."""
    units = [([(i, []) for i in range(6)], True, 1.0), ([(i, []) for i in range(6, 12)], True, 1.0)]
    out = spread(units, 8)
    assert len(out) == 8
    assert sorted(i for items, _, _ in out for i, _ in items) == list(range(12))
    assert all(grouped == (len(items) > 1) for items, grouped, _ in out)
    assert len(spread(units, 2)) == 2 and len(spread([([(0, [])], False, 1.0)], 4)) == 1


def test_the_costliest_units_start_first():
    """Units start in the order of their estimated cost (jobs x env steps x work per batch), so
    that on 2 processes the 4-inner-step group does not start last behind three cheaper ones;
    on more processes the costliest group is the one halved."""
    from pgrun.batched_launcher import cost

    variants = ["vanilla", "rtg", "rtg_baseline", "off_policy"]
    costs = {v: cost(cfg_of(f"variant={v}", "total_steps=40000")) for v in variants}
    assert costs["off_policy"] == 2.5 * costs["vanilla"] == 2.5 * 80000
    units = [([(i, [v])], False, costs[v]) for i, v in enumerate(variants)]
    assert [u[0][0][1] for u in spread(units, 2)] == [["off_policy"], ["vanilla"], ["rtg"],
                                                      ["rtg_baseline"]]  # fmt: skip
    groups = [([(i, []), (i + 10, [])], True, costs[v]) for i, v in enumerate(variants)]
    out = spread(groups, 5)
    assert len(out) == 5 and [len(u[0]) for u in out] == [1, 1, 2, 2, 2]
    assert {i for u in out[:2] for i, _ in u[0]} == {3, 13}  # off_policy's group, halved


def test_a_group_is_halved_where_that_ends_the_sweep_sooner():
    """On 2 processes, 50 PPO seeds (cost 15 a job: 10 epochs, V's 16 steps at a quarter) and 50
    rtg_baseline seeds (cost 2): PPO's group is halved and the halves start first, on both
    processes; rtg_baseline's group follows whole. The sweep's estimated end is then
    375 + 100 = 475 (an even split is 425), where the two groups as they came kept one process
    on all of PPO's seeds (750) while the other idled after 100; halving again would not end it
    sooner. A split that would not end the sweep sooner is not made: compare_variants' four
    groups on 2 processes stay whole."""
    from pgrun.batched_launcher import cost

    ppo = cost(cfg_of("variant=ppo", "total_steps=10000"))
    rtgb = cost(cfg_of("variant=rtg_baseline", "total_steps=10000"))
    assert (ppo, rtgb) == (150000, 20000)
    units = [
        ([(i, ["rtg_baseline"]) for i in range(50)], True, rtgb),
        ([(i, ["ppo"]) for i in range(50, 100)], True, ppo),
    ]
    out = spread(units, 2)
    assert [(u[0][0][1][0], len(u[0])) for u in out] == [("ppo", 25), ("ppo", 25),
                                                         ("rtg_baseline", 50)]  # fmt: skip
    assert sorted(i for items, _, _ in out for i, _ in items) == list(range(100))
    ends = [0.0, 0.0]  # list scheduling in that order, as the launcher's workers take units
    for items, _, each in out:
        ends[ends.index(min(ends))] += len(items) * each
    assert max(ends) == 475 * 10000
    variants = ["vanilla", "rtg", "rtg_baseline", "off_policy"]
    groups = [
        ([(5 * i + s, [v]) for s in range(5)], True, cost(cfg_of(f"variant={v}")))
        for i, v in enumerate(variants)
    ]
    assert sorted(len(u[0]) for u in spread(groups, 2)) == [5, 5, 5, 5]


def test_sweep_through_the_launcher(tmp_path):
    """`pgrun -m hydra/launcher=batched`: the adam jobs train as one group, the sgd ones one
    process each (said in one line); every job directory is complete and the sweep compared;
    resuming the finished sweep runs nothing again."""
    sweep = tmp_path / "sweep"
    proc = run_pgrun(
        ["-m", "hydra/launcher=batched", "hydra.launcher.n_jobs=1", "optim.name=adam,sgd",
         "seed=0,1", "total_steps=600", "batch_episodes=4", f"hydra.sweep.dir={sweep}"],
        tmp_path,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "2 jobs run one process each: optim.name=sgd" in out
    jobs = [d for d in sweep.iterdir() if (d / ".hydra").is_dir()]
    assert len(jobs) == 4
    for d in jobs:
        assert (d / "policy.pt").is_file() and (d / "metrics.csv").is_file()
        assert any(d.glob("events.out.tfevents.*")) and any(d.glob("checkpoint-*.pt"))
        assert not (d / ".pgrun.lock").exists()
    assert (sweep / "summary.csv").is_file()
    again = run_pgrun([f"resume={sweep}"], tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.startswith("sweep: nothing to run: all 4 jobs finished before ("), (
        again.stdout + again.stderr
    )


def test_n_jobs_above_the_cores_and_the_jobs_starts_no_more_processes(tmp_path):
    """hydra.launcher.n_jobs=64 for 4 seeds: the groups are split to fill the cores, not 64
    processes, and no more processes start than there are units (it started 64 processes, each
    importing torch, and trained every seed alone)."""
    import os

    sweep = tmp_path / "sweep"
    proc = run_pgrun(
        ["-m", "hydra/launcher=batched", "hydra.launcher.n_jobs=64", "seed=0,1,2,3",
         "total_steps=600", "batch_episodes=4", f"hydra.sweep.dir={sweep}"],
        tmp_path,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    cores = min(os.cpu_count() or 1, 4)
    assert f"{cores} processes;" in out, out
    if cores > 1:  # the line says that the group was split, and into how many
        assert f"(1 group of seeds split into {cores} to keep the {cores} processes" in out, out


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_a_seed_with_non_finite_weights_leaves_the_others_log_probs(env_id):
    """A seed whose parameters went non-finite stays in the stack (it no longer steps): the
    stacked distribution still gives the other seeds their log-probabilities, where torch's
    argument check of the stacked logits would have raised for all of them."""
    import gymnasium as gym

    from pgrun.batched import StackedPolicy
    from pgrun.policies import make_policy

    env = gym.make(env_id)
    policies = [make_policy(env, [8]) for _ in range(2)]
    with torch.no_grad():
        for p in policies[1].parameters():
            p.fill_(float("nan"))
    stacked = StackedPolicy(policies)
    obs = torch.zeros(2, 5, env.observation_space.shape[0])
    act = torch.zeros((2, 5, *env.action_space.shape), dtype=torch.float32)
    if isinstance(env.action_space, gym.spaces.Discrete):
        act = act.long()
    logp = stacked(obs).log_prob(act)
    assert torch.allclose(logp[0], policies[0](obs[0]).log_prob(act[0]))
    assert torch.isnan(logp[1]).all()


def test_a_seed_that_diverges_fails_alone():
    """A non-finite loss of one seed names that seed only; it takes no step (weights, moments
    and step count untouched) while the other seed steps."""
    from pgrun.batched import _step

    nets = [torch.nn.Linear(2, 1) for _ in range(2)]
    stacked = Stacked(nets)
    opt = StackedAdam(stacked, [Adam(n.parameters(), 0.1) for n in nets])
    before = [p.detach().clone() for p in stacked.params]
    x = torch.ones(2, 3, 2)
    out = torch.baddbmm(stacked.params[1], x, stacked.params[0]).sum((1, 2))  # (K,)
    failed: dict[int, str] = {}
    _step(stacked, opt, {0: out[0], 1: out[1] * float("nan")}, [True, True], None, failed)
    assert failed == {1: "loss"}
    assert opt.t == [1, 0]
    for p, q in zip(stacked.params, before, strict=True):
        assert not torch.equal(p[0], q[0]) and torch.equal(p[1], q[1])
    assert all(torch.equal(m[1], torch.zeros_like(m[1])) for m in opt.m)


def test_a_group_that_cannot_be_stacked_leaves_its_finished_seeds_alone(tmp_path, monkeypatch):
    """Where a group's spaces turn out not to stack (NotBatchable in its process), its jobs run
    one after the other: a seed that finished before (kept in place for a stacked group) is
    not trained again into its own directory."""
    from pgrun import batched, batched_launcher

    def not_batchable(jobs):
        raise batched.NotBatchable("a space that does not stack")

    trained = []
    monkeypatch.setattr(batched, "train_group", not_batchable)
    monkeypatch.setattr(trainer, "train", lambda cfg, run_dir, resume: trained.append(run_dir))
    jobs = [Job(cfg_of("seed=0"), tmp_path / "seed0", replay=True),
            Job(cfg_of("seed=1"), tmp_path / "seed1", resume=True)]  # fmt: skip
    for j in jobs:
        j.run_dir.mkdir()
    batched_launcher._train(jobs, [])
    assert trained == [tmp_path / "seed1"]
