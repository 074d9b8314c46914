"""The training loop: collect a batch, weight it, take K gradient steps, log. The one place
where state changes; every number it logs comes from the pure functions it calls."""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from pgrun import __version__, checkpoint, diagnostics
from pgrun.config import ConfigError, Diverged, Interrupted
from pgrun.envs import env_from_config, time_limit
from pgrun.estimators import bootstrap_values, explained_variance, value_targets
from pgrun.evaluation import Evaluator
from pgrun.logger import Logger
from pgrun.losses import (
    batch_advantages,
    clip_fraction,
    clipped_loss,
    entropy_bonus,
    pg_loss,
    ratio_stats,
    value_loss,
)
from pgrun.normalization import RewardScaler
from pgrun.optim import Adam, Optimizer, make_optimizer
from pgrun.policies import policy_from_config
from pgrun.rollout import Batch, collect_episodes
from pgrun.value import fit_value, value_from_config

log = logging.getLogger(__name__)

FINAL_WINDOW = 5  # the final return is the mean over the last 5 batches


def _plain(value) -> str:
    """An enum member or a plain string, as the string the YAML files use."""
    return str(getattr(value, "value", value))


def derive_seed(seed: int, iteration: int, stream: int) -> int:
    """A 32-bit seed for (run seed, iteration, stream): any iteration can be replayed alone."""
    return int(np.random.SeedSequence([seed, iteration, stream]).generate_state(1)[0])


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but no CUDA device is available: use device=cpu or auto")
    return torch.device(name)


def episodes(batch: Batch, idx: torch.Tensor) -> Batch:
    """The episodes `idx` (K,) int64 of `batch`, every (N, ...) field indexed on its first dim."""
    return Batch(*(getattr(batch, f)[idx] for f in batch.__dataclass_fields__))


def set_lr(optimizer: Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def update(
    policy: torch.nn.Module,
    optimizer: Optimizer,
    batch: Batch,
    adv: torch.Tensor,
    inner_steps: int,
    *,
    grad_stats: bool = False,
    inner_stats: bool = False,
    clip: float | None = None,
    target_kl: float | None = None,
    minibatches: int = 1,
    entropy_coef: float = 0.0,
    max_grad_norm: float | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """K gradient steps on one batch (K x M with minibatches). K = 1 is the on-policy update;
    for K > 1, M > 1 or a `clip`, the loss uses the per-step ratios exp(logp - logp_old)
    against the policy that collected the batch (PPO's clipped objective with `clip`).

    Each inner step k shuffles the episodes (with `generator`) into M minibatches and steps on
    each, the loss of a minibatch divided by its own number of episodes. `target_kl` stops
    the whole loop before the first minibatch step whose approximate KL(pi_old || pi) on that
    minibatch exceeds it (stats/stopped_early, stats/gradient_steps). `entropy_coef` adds the
    entropy bonus (pgrun.losses.entropy_bonus); `max_grad_norm` clips the gradient's norm.

    Diagnostics (pgrun.diagnostics), read-only: `grad_stats` adds stats/grad_variance and
    stats/grad_snr of the first step's gradient; `inner_stats` (with ratios) adds
    inner/<stat>/k<k>, the ratios that inner step k uses."""
    uses_ratios = inner_steps > 1 or minibatches > 1 or clip is not None
    logp_old = None
    dist_old = None
    if uses_ratios:
        with torch.no_grad():
            dist_old = policy(batch.obs)
            logp_old = dist_old.log_prob(batch.act)
    stats: dict[str, float] = {}
    if grad_stats:
        g = diagnostics.per_episode_grads(policy, batch, adv)
        measured = diagnostics.gradient_stats(g).items()  # NaN where undefined: not logged
        stats.update({f"stats/{k}": v for k, v in measured if math.isfinite(v)})
    max_norm = float("inf") if max_grad_norm is None else max_grad_norm
    n = batch.num_episodes
    taken, stopped, clip_fractions = 0, False, []
    for k in range(inner_steps):
        if minibatches > 1:
            order = torch.randperm(n, generator=generator).to(adv.device)
            groups: list[torch.Tensor | None] = list(order.chunk(minibatches))
        else:
            groups = [None]
        epoch_logp = None  # the ratios of inner step k, gathered over its minibatches
        if inner_stats and logp_old is not None and minibatches > 1:
            epoch_logp = torch.empty_like(logp_old)
        for idx in groups:
            mb = batch if idx is None else episodes(batch, idx)
            mb_adv = adv if idx is None else adv[idx]
            mb_old = logp_old if idx is None or logp_old is None else logp_old[idx]
            dist = policy(mb.obs)
            logp = dist.log_prob(mb.act)
            kl = None if target_kl is None or taken == 0 else ratio_stats(logp, mb_old, mb.mask)
            if kl is not None and kl["approx_kl"] > target_kl:
                stopped = True
                break
            if inner_stats and mb_old is not None:
                if epoch_logp is None:
                    step_stats = diagnostics.inner_step_stats(logp, mb_old, mb.mask)
                    stats.update(diagnostics.inner_step_tags(k, step_stats))
                else:
                    epoch_logp[idx] = logp.detach()
            if clip is not None:
                loss = clipped_loss(logp, mb_old, mb_adv, mb.mask, clip)
                clip_fractions.append(clip_fraction(logp, mb_old, mb.mask, clip))
            else:
                loss = pg_loss(logp, mb_adv, mb.mask, mb_old)
            if entropy_coef:
                loss = loss - entropy_coef * entropy_bonus(dist.entropy(), mb.mask)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), max_norm)
            if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
                raise FloatingPointError("loss" if not torch.isfinite(loss) else "gradient")
            optimizer.step()
            if not all(torch.isfinite(p).all() for p in policy.parameters()):
                raise FloatingPointError("parameters")
            if taken == 0:
                with torch.no_grad():
                    d = dist if idx is None else dist_old  # the whole batch's
                    entropy = (d.entropy() * batch.mask).sum() / batch.mask.sum()
                stats.update(
                    {
                        "losses/policy": loss.item(),
                        "stats/entropy": entropy.item(),
                        "stats/grad_norm": grad_norm.item(),
                    }
                )
            taken += 1
        if stopped:
            break
        if epoch_logp is not None:
            step_stats = diagnostics.inner_step_stats(epoch_logp, logp_old, batch.mask)
            stats.update(diagnostics.inner_step_tags(k, step_stats))
    if logp_old is not None:
        with torch.no_grad():
            logp_new = policy(batch.obs).log_prob(batch.act)
        stats.update(
            {f"stats/{k}": v for k, v in ratio_stats(logp_new, logp_old, batch.mask).items()}
        )
    if clip_fractions:
        stats["stats/clip_fraction"] = sum(clip_fractions) / len(clip_fractions)
    if target_kl is not None:
        stats["stats/stopped_early"] = float(stopped)
        stats["stats/gradient_steps"] = float(taken)
    return stats


class StopRequest:
    """SIGINT / SIGTERM ask the loop to stop after the current iteration (a second signal stops
    at once). `signum` is the signal received, or None."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        self.signum = signum
        for sig, handler in self._previous.items():  # the next signal acts as usual
            signal.signal(sig, handler)
        log.warning(f"{signal.Signals(signum).name}: stopping after this iteration")

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(cfg: DictConfig, run_dir: Path, resume: bool = False) -> dict[str, float]:
    """Train the policy described by `cfg`, logging to TensorBoard in `run_dir`.

    Every `checkpoint.every` iterations, and at the end, the whole state is saved
    (pgrun.checkpoint). With `resume`, training continues from the newest readable checkpoint
    in `run_dir`, in the same TensorBoard run: points logged after that checkpoint are purged.

    Returns a summary: final_return (mean episodic return of the last 5 batches), env_steps,
    iterations, wall_seconds.
    Raises Diverged when the loss, the gradient or the parameters stop being finite, and
    Interrupted after SIGINT / SIGTERM (a checkpoint is written first).
    """
    run_dir = Path(run_dir)
    torch.set_num_threads(cfg.threads)
    device = resolve_device(str(cfg.device.value if hasattr(cfg.device, "value") else cfg.device))
    torch.manual_seed(cfg.seed)
    env = env_from_config(cfg, num_envs=cfg.batch_episodes, seed=cfg.seed)
    horizon = cfg.env.horizon or time_limit(env)
    if horizon is None:
        raise ConfigError(f"env.id={cfg.env.id!r} has no time limit: set env.horizon=<steps>")
    policy = policy_from_config(env, cfg).to(device)
    evaluator = Evaluator(cfg, policy, run_dir, horizon)  # eval.every, eval.video
    scaler = RewardScaler(cfg.gamma) if cfg.env.scale_rewards else None
    optimizer = make_optimizer(str(cfg.optim.name.value), policy.parameters(), cfg.optim.lr)
    variant = cfg.variant
    value_net, value_opt = None, None
    if _plain(variant.baseline) == "value":  # V(s) and its own optimizer (pgrun.value)
        value_net = value_from_config(env, cfg).to(device)
        value_opt = Adam(value_net.parameters(), lr=cfg.value.lr)

    recent: deque[float] = deque(maxlen=FINAL_WINDOW)
    env_steps, iteration, wall_before = 0, 0, 0.0
    if resume:
        state = checkpoint.load_latest(run_dir)
        if state.get("version") != __version__:
            raise checkpoint.CheckpointError(
                f"{run_dir}: its checkpoint was written by pgrun {state.get('version')}, this is "
                f"{__version__}; resume it with the version that made it"
            )
        policy.load_state_dict(state["policy"])
        optimizer.load_state_dict(state["optimizer"])
        if value_net is not None:
            value_net.load_state_dict(state["value"])
            value_opt.load_state_dict(state["value_optimizer"])
        if scaler is not None:
            scaler.stats.load_state_dict(state["reward_scaler"])
        checkpoint.set_rng_state(state["rng"])
        env_steps, iteration = state["env_steps"], state["iteration"]
        wall_before = state["wall_seconds"]
        recent.extend(state["recent_returns"])
        log.info(f"resuming {run_dir} at iteration {iteration}, {env_steps:,} env steps")

    def save_checkpoint() -> None:
        value_state = {}
        if value_net is not None:
            value_state = {
                "value": value_net.state_dict(),
                "value_optimizer": value_opt.state_dict(),
            }
        checkpoint.save(
            run_dir,
            iteration,
            {
                "version": __version__,
                "policy": policy.state_dict(),
                "optimizer": optimizer.state_dict(),
                **value_state,
                "reward_scaler": scaler.stats.state_dict() if scaler is not None else {},
                "rng": checkpoint.rng_state(),
                "iteration": iteration,
                "env_steps": env_steps,
                "wall_seconds": wall_before + time.perf_counter() - start,
                "recent_returns": list(recent),
            },
        )

    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    logger = Logger(
        run_dir,
        resolved,
        OmegaConf.to_yaml(cfg, resolve=True),
        purge_step=env_steps + 1 if resume else None,
    )
    final_return = None
    start = time.perf_counter()
    show = cfg.progress and sys.stderr.isatty()
    every = cfg.diagnostics.every
    truncation = _plain(cfg.env.truncation)
    try:
        with (
            StopRequest() as stop,
            logging_redirect_tqdm(),
            tqdm(
                total=cfg.total_steps,
                initial=min(env_steps, cfg.total_steps),
                unit="step",
                disable=not show,
                dynamic_ncols=True,
            ) as bar,
        ):
            while env_steps < cfg.total_steps:
                torch.manual_seed(derive_seed(cfg.seed, iteration, 1))
                batch = collect_episodes(
                    env, policy, horizon, seed=derive_seed(cfg.seed, iteration, 0)
                )
                weighted = scaler(batch) if scaler is not None else batch
                values, boot = None, None
                if value_net is not None:  # V(s_t) and the values after each episode's end
                    with torch.no_grad():
                        values = value_net(batch.obs) * batch.mask
                        final_values = value_net(batch.final_obs)
                    boot = bootstrap_values(
                        final_values, batch.terminated, batch.truncated, truncation
                    )
                adv = batch_advantages(
                    weighted, variant, cfg.gamma, cfg.discount_from_start, values=values, boot=boot
                )
                lr_now = {}
                if cfg.optim.anneal_lr:  # lr (1 - s / total_steps) after s env steps
                    frac = max(0.0, 1.0 - env_steps / cfg.total_steps)
                    set_lr(optimizer, cfg.optim.lr * frac)
                    if value_opt is not None:
                        set_lr(value_opt, cfg.value.lr * frac)
                    lr_now = {"charts/learning_rate": cfg.optim.lr * frac}
                try:
                    stats = update(
                        policy,
                        optimizer,
                        batch,
                        adv,
                        variant.inner_steps,
                        grad_stats=every > 0 and iteration % every == 0,
                        inner_stats=cfg.diagnostics.ratios,
                        clip=variant.clip,
                        target_kl=variant.target_kl,
                        minibatches=variant.minibatches,
                        entropy_coef=variant.entropy_coef,
                        max_grad_norm=cfg.optim.max_grad_norm,
                        generator=torch.Generator().manual_seed(
                            derive_seed(cfg.seed, iteration, 2)
                        ),
                    )
                    if value_net is not None:
                        target = value_targets(
                            weighted.rew, values, batch.mask, boot, cfg.gamma, variant.gae_lambda
                        )
                        # the V the advantages used, against this batch's targets
                        stats["losses/value"] = value_loss(values, target, batch.mask).item()
                        ev = explained_variance(values, target, batch.mask)
                        if math.isfinite(ev):
                            stats["stats/explained_variance"] = ev
                        fit_value(
                            value_net,
                            value_opt,
                            batch.obs,
                            target,
                            batch.mask,
                            cfg.value.steps,
                            minibatches=cfg.value.minibatches,
                            max_grad_norm=cfg.optim.max_grad_norm,
                            generator=torch.Generator().manual_seed(
                                derive_seed(cfg.seed, iteration, 3)
                            ),
                        )
                        value_net.update_obs_stats(batch.obs, batch.mask)
                except FloatingPointError as exc:
                    kept = checkpoint.checkpoints(run_dir)
                    raise Diverged(
                        f"non-finite {exc} at iteration {iteration} ({env_steps:,} env steps); "
                        + (f"the last good checkpoint is {kept[0].name}; " if kept else "")
                        + "lower optim.lr or set variant.normalize_advantages=true"
                    ) from None
                policy.update_obs_stats(batch.obs, batch.mask)  # env.normalize_obs

                steps = batch.num_steps
                env_steps += steps
                iteration += 1
                returns = batch.returns
                recent.append(returns.mean().item())
                sps = env_steps / (wall_before + time.perf_counter() - start)
                logger.log(
                    {
                        "charts/episodic_return": recent[-1],
                        "charts/episodic_return_std": returns.std(unbiased=False).item(),
                        "charts/episodic_length": batch.lengths.float().mean().item(),
                        "charts/SPS": sps,
                        **lr_now,
                        **stats,
                    },
                    env_steps,
                )
                solved = (
                    cfg.stop_return is not None
                    and len(recent) == FINAL_WINDOW
                    and float(np.mean(recent)) >= cfg.stop_return
                )
                evaluator.after_iteration(
                    logger, iteration, env_steps, solved or env_steps >= cfg.total_steps
                )
                bar.update(min(steps, cfg.total_steps - bar.n))
                bar.set_postfix(ret=f"{recent[-1]:.1f}", refresh=False)
                if stop.signum is not None:
                    save_checkpoint()
                    raise Interrupted(stop.signum, iteration, env_steps)
                if solved:
                    log.info(
                        f"final return {np.mean(recent):.1f} >= stop_return={cfg.stop_return:g} "
                        f"after {env_steps:,} env steps: stopping"
                    )
                    break
                if cfg.checkpoint.every > 0 and iteration % cfg.checkpoint.every == 0:
                    save_checkpoint()
        final_return = float(np.mean(recent))
        save_checkpoint()
    finally:
        logger.close(final_return, env_steps)
        env.close()
        evaluator.close()
    torch.save(
        {"state_dict": policy.state_dict(), "config": resolved},
        run_dir / "policy.pt",
    )
    return {
        "final_return": final_return,
        "env_steps": env_steps,
        "iterations": iteration,
        "wall_seconds": wall_before + time.perf_counter() - start,
    }
