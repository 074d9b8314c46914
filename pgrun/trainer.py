"""The training loop, the notes' loop: collect a batch, weight it, step, log, evaluate,
checkpoint. The one place where state changes; every number it logs comes from the pieces it
calls: a collector (pgrun.collectors), the learner that owns V (pgrun.learner), an update rule
(pgrun.update_rules), the loggers (pgrun.logger), all of it held in one TrainState
(pgrun.state) whose state_dict is the checkpoint."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from pgrun import checkpoint, guards, signals
from pgrun.collectors import Episodes, collector_from_config
from pgrun.config import ConfigError, Interrupted, yaml_text
from pgrun.diagnostics import Diagnostics
from pgrun.envs import env_from_config, time_limit
from pgrun.evaluation import Evaluator
from pgrun.learner import Learner, plain
from pgrun.logger import FINAL_METRIC, make_loggers
from pgrun.optim import Optimizer, make_optimizer
from pgrun.policies import policy_from_config
from pgrun.seeding import ACTIONS, MINIBATCHES, VALUE_MINIBATCHES, derive_seed
from pgrun.state import FINAL_WINDOW, TrainState
from pgrun.update_rules import rule_from_config

log = logging.getLogger(__name__)

__all__ = ["FINAL_WINDOW", "derive_seed", "train"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but no CUDA device is available: use device=cpu or auto")
    return torch.device(name)


def set_lr(optimizer: Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def anneal(cfg: DictConfig, state: TrainState) -> dict[str, float]:
    """optim.anneal_lr: the learning rates (policy and V) for this batch, lr (1 - s / total)
    after s env steps; the tag to log."""
    if not cfg.optim.anneal_lr:
        return {}
    frac = max(0.0, 1.0 - state.env_steps / cfg.total_steps)
    set_lr(state.optimizer, cfg.optim.lr * frac)
    if state.learner.value_optimizer is not None:
        set_lr(state.learner.value_optimizer, cfg.value.lr * frac)
    return {"charts/learning_rate": cfg.optim.lr * frac}


def charts(episodes: Episodes, state: TrainState) -> dict[str, float]:
    """The episodes that ended in the batch: mean and std of their returns, mean length (none
    where no episode ended); and the env steps per second so far."""
    sps = {"charts/SPS": state.env_steps / state.wall_seconds()}
    if not len(episodes):
        return sps
    return {
        "charts/episodic_return": episodes.returns.mean().item(),
        "charts/episodic_return_std": episodes.returns.std(unbiased=False).item(),
        "charts/episodic_length": episodes.lengths.float().mean().item(),
        **sps,
    }


def generator(cfg: DictConfig, state: TrainState, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(cfg.seed, state.iteration, stream))


# Ctrl-C, kill / scancel, and SLURM's warning before a preemption or the time limit
# (submitit's signal: the job checkpoints, then the launcher requeues it)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)


class StopRequest:
    """SIGINT / SIGTERM / SIGUSR2 ask the loop to stop after the current iteration (a second
    signal acts at once). `signum` is the signal received, or None."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        self.signum = signum
        signals.note_sweep_stop(signum, frame)  # in a sweep's worker: no further job starts
        for sig in STOP_SIGNALS:  # the next signal acts as usual
            signal.signal(sig, self._previous[sig])
        log.warning(f"{signal.Signals(signum).name}: stopping after this iteration")

    def _sweep_stop(self, signum: int, frame) -> None:
        """A sweep's worker: its sweep's process was interrupted (pgrun.signals.SWEEP_STOP),
        once or more: stop after this iteration, never at once."""
        signals.note_sweep_stop(signum, frame)
        if self.signum is None:
            self.signum = signal.SIGINT
            why = "the sweep's process ended" if signals.sweep_gone else "the sweep was interrupted"
            log.warning(f"{why}: stopping after this iteration")

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
            self._previous[signals.SWEEP_STOP] = signal.signal(signals.SWEEP_STOP, self._sweep_stop)
            if signals.sweep_stopping:  # asked before this loop began
                self._sweep_stop(signals.SWEEP_STOP, None)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def build(cfg: DictConfig, run_dir: Path) -> tuple[TrainState, object, Evaluator]:
    """The run's pieces from its config: env, policy and optimizer, learner, collector (in a
    TrainState), the update rule and the evaluator."""
    torch.set_num_threads(cfg.threads)
    device = resolve_device(plain(cfg.device))
    torch.manual_seed(cfg.seed)
    env = env_from_config(cfg, num_envs=cfg.batch_episodes, seed=cfg.seed)
    horizon = cfg.env.horizon or time_limit(env)
    if horizon is None:
        env.close()
        raise ConfigError(f"env.id={cfg.env.id!r} has no time limit: set env.horizon=<steps>")
    try:  # the buffers of one batch: N x T steps (rollout=steps: T = rollout.steps)
        steps = cfg.rollout.steps if plain(cfg.rollout.name) == "steps" else horizon
        guards.check_batch_memory(env, steps)
    except ConfigError:
        env.close()
        raise
    policy = policy_from_config(env, cfg).to(device)
    evaluator = Evaluator(cfg, policy, run_dir, horizon)  # eval.every, eval.video
    optimizer = make_optimizer(plain(cfg.optim.name), policy.parameters(), cfg.optim.lr)
    learner = Learner.from_config(cfg, env, device)
    collector = collector_from_config(cfg, env, horizon)
    state = TrainState(policy, optimizer, learner, collector)
    return state, rule_from_config(cfg), evaluator


def _finished_before(cfg: DictConfig, state: TrainState, run_dir: Path) -> str | None:
    """Why a resumed run that had finished (its policy.pt is written) has nothing to train at
    this command's total_steps and stop_return; None when it trains on."""
    if not (run_dir / "policy.pt").is_file():  # killed before its end was written: it is
        return None
    if state.env_steps >= cfg.total_steps:
        return f"{state.env_steps:,} env steps, total_steps={cfg.total_steps}"
    if state.solved(cfg.stop_return):
        return f"final return {state.final_return():.1f} >= stop_return={cfg.stop_return:g}"
    return None


def train(cfg: DictConfig, run_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Train the policy described by `cfg`, logging to `run_dir` (TensorBoard, metrics.csv).

    Every `checkpoint.every` iterations, and at the end, the whole state is saved
    (pgrun.checkpoint). With `resume`, training continues from the newest readable checkpoint
    in `run_dir`, in the same TensorBoard run: points logged after that checkpoint are purged.

    Returns a summary: final_return (mean episodic return of the last 5 batches), env_steps,
    iterations, wall_seconds; and finished_before (why) where a resumed run had finished
    at this total_steps and stop_return, which then trains and writes nothing.
    Raises Diverged when the loss, the gradient or the parameters stop being finite, and
    Interrupted after SIGINT / SIGTERM (a checkpoint is written first).
    """
    run_dir = Path(run_dir)
    state, rule, evaluator = build(cfg, run_dir)
    policy, learner, collector = state.policy, state.learner, state.collector
    if resume:
        state.load_state_dict(checkpoint.load_latest(run_dir), run_dir)
        done = _finished_before(cfg, state, run_dir)
        if done is not None:  # nothing to train: nothing is written
            collector.env.close()
            evaluator.close()
            return {
                "final_return": state.final_return(),
                "env_steps": state.env_steps,
                "iterations": state.iteration,
                "wall_seconds": 0.0,
                "batches": len(state.recent),
                "finished_before": done,
            }
        log.info(
            f"resuming {run_dir} at iteration {state.iteration}, {state.env_steps:,} env steps"
        )
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    logger = make_loggers(  # logger=[tensorboard,csv]
        list(cfg.logger),
        run_dir,
        resolved,
        yaml_text(resolved),
        purge_step=state.env_steps + 1 if resume else None,
    )
    state.started = time.perf_counter()  # the clock of charts/SPS: from here, built and ready
    final_return = None
    every = cfg.diagnostics.every
    show = cfg.progress and sys.stderr.isatty()
    try:
        with (
            StopRequest() as stop,
            logging_redirect_tqdm(),
            tqdm(
                total=cfg.total_steps,
                initial=min(state.env_steps, cfg.total_steps),
                unit="step",
                disable=not show,
                dynamic_ncols=True,
            ) as bar,
        ):
            while state.env_steps < cfg.total_steps:
                torch.manual_seed(derive_seed(cfg.seed, state.iteration, ACTIONS))
                batch, episodes = collector.collect(policy, state.iteration)  # collect
                targets = learner.targets(batch)  # weight: advantages and V's targets, once
                lr_now = anneal(cfg, state)
                diagnostics = Diagnostics(every > 0 and state.iteration % every == 0,
                                          cfg.diagnostics.ratios)  # fmt: skip
                try:  # step: the policy, then V
                    stats = rule.step(
                        policy,
                        state.optimizer,
                        batch,
                        targets.adv,
                        generator=generator(cfg, state, MINIBATCHES),
                        hooks=[diagnostics],
                    )
                    stats |= learner.fit(batch, targets, generator(cfg, state, VALUE_MINIBATCHES))
                except FloatingPointError as exc:
                    kept = checkpoint.checkpoints(run_dir)
                    raise guards.diverged(
                        str(exc), state.iteration, state.env_steps, kept
                    ) from None
                policy.update_obs_stats(batch.obs, batch.mask)  # env.normalize_obs
                state.env_steps += batch.num_steps
                state.iteration += 1
                if len(episodes):
                    state.recent.append(episodes.returns.mean().item())
                logger.log({**charts(episodes, state), **lr_now, **stats}, state.env_steps)  # log
                solved = state.solved(cfg.stop_return)
                evaluator.after_iteration(  # evaluate
                    logger, state.iteration, state.env_steps,
                    solved or state.env_steps >= cfg.total_steps,
                )  # fmt: skip
                # the real step count (the last batch overshoots the budget) and the closing
                # line's return (the final return)
                bar.total = max(bar.total, state.env_steps)
                bar.update(batch.num_steps)
                if state.recent:
                    bar.set_postfix(ret=f"{state.final_return():.1f}", refresh=False)
                if stop.signum is not None:
                    checkpoint.save(run_dir, state.iteration, state.state_dict())
                    raise Interrupted(stop.signum, state.iteration, state.env_steps)
                if solved:
                    log.info(
                        f"final return {state.final_return():.1f} >= stop_return="
                        f"{cfg.stop_return:g} after {state.env_steps:,} env steps: stopping"
                    )
                    break
                if cfg.checkpoint.every > 0 and state.iteration % cfg.checkpoint.every == 0:
                    checkpoint.save(run_dir, state.iteration, state.state_dict())  # checkpoint
        final_return = state.final_return()
        checkpoint.save(run_dir, state.iteration, state.state_dict())
        # the final metric before policy.pt, which marks the run finished (pgrun.sweep): a run
        # killed between the two resumes from its last checkpoint and writes both again
        with signals.deferred("finishing the run"):
            logger.hparams(logger.params, {FINAL_METRIC: final_return}, state.env_steps)
            policy_file = {"state_dict": policy.state_dict(), "config": resolved}
            checkpoint.write_atomic(run_dir / "policy.pt", policy_file)
    finally:
        with signals.deferred("closing the run"):  # a complete run keeps its policy.pt
            logger.close()
            collector.env.close()
            evaluator.close()
    return {
        "final_return": final_return,
        "env_steps": state.env_steps,
        "iterations": state.iteration,
        "wall_seconds": state.wall_seconds(),
        "batches": len(state.recent),  # the final return's
    }
