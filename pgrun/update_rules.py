"""Update rules: how one weighted batch changes the policy. One signature for every rule:

    stats = rule.step(policy, optimizer, batch, adv, generator=..., hooks=...)

- :class:`GradientStep`: the notes' on-policy step, one gradient step on pg_loss
  (pgrun.losses), the Monte-Carlo estimate itself.
- :class:`RatioEpochs`: K epochs of M minibatches of the ratio loss exp(logp - logp_old) A (the
  notes' off-policy loop) or PPO's clipped loss, stopped early once the approximate KL to the
  collecting policy exceeds `target_kl`.

A rule reads the advantages as given (pgrun.learner computes them, once per batch) and never
touches V. Diagnostics observe a rule through hooks (pgrun.diagnostics.Diagnostics): a hook
receives detached tensors, returns tags to log, and changes nothing. A new rule (a natural
gradient or TRPO step) is one class with this `step` and one entry in RULES.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch

from pgrun.losses import clip_fraction, policy_loss, ratio_stats
from pgrun.optim import Optimizer
from pgrun.rollout import Batch


class UpdateHook(Protocol):
    """What an update rule tells its observers; every method returns tags to log."""

    def before_update(
        self, policy: torch.nn.Module, batch: Batch, adv: torch.Tensor
    ) -> dict[str, float]:
        """At the collecting policy, before the first step."""
        ...

    def after_epoch(
        self, k: int, logp: torch.Tensor, logp_old: torch.Tensor, mask: torch.Tensor
    ) -> dict[str, float]:
        """The log-probs (N, T) inner step k's loss used, against the collecting policy's."""
        ...


def _before(hooks: Sequence[UpdateHook], policy, batch, adv) -> dict[str, float]:
    stats: dict[str, float] = {}
    for hook in hooks:
        stats.update(hook.before_update(policy, batch, adv))
    return stats


def gradient_step(
    policy: torch.nn.Module,
    optimizer: Optimizer,
    loss: torch.Tensor,
    max_grad_norm: float | None,
) -> torch.Tensor:
    """zero_grad, backward, clip the norm, step; the norm before clipping. Raises
    FloatingPointError naming what stopped being finite (loss, gradient, parameters)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    max_norm = float("inf") if max_grad_norm is None else max_grad_norm
    grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), max_norm)
    if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
        raise FloatingPointError("loss" if not torch.isfinite(loss) else "gradient")
    optimizer.step()
    if not all(torch.isfinite(p).all() for p in policy.parameters()):
        raise FloatingPointError("parameters")
    return grad_norm


def _first_step_stats(loss, entropy, mask, grad_norm) -> dict[str, float]:
    with torch.no_grad():
        h = (entropy * mask).sum() / mask.sum()
    return {
        "losses/policy": loss.item(),
        "stats/entropy": h.item(),
        "stats/grad_norm": grad_norm.item(),
    }


def _entropy(dist, entropy_coef: float) -> torch.Tensor:
    """H[pi(.|s)] (N, T): with gradient where the loss has the bonus, else without."""
    if entropy_coef:
        return dist.entropy()
    with torch.no_grad():
        return dist.entropy()


class GradientStep:
    """The on-policy update: one gradient step on L = -(1/N) sum m log pi A (minus the entropy
    bonus), the estimate of the notes."""

    def __init__(self, *, entropy_coef: float = 0.0, max_grad_norm: float | None = None):
        self.entropy_coef, self.max_grad_norm = entropy_coef, max_grad_norm

    def step(
        self,
        policy: torch.nn.Module,
        optimizer: Optimizer,
        batch: Batch,
        adv: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        hooks: Sequence[UpdateHook] = (),
    ) -> dict[str, float]:
        """One step on `batch` with the weights `adv` (N, T); returns the tags to log."""
        stats = _before(hooks, policy, batch, adv)
        dist = policy(batch.obs)
        entropy = dist.entropy()
        terms = policy_loss(dist.log_prob(batch.act), entropy, adv, batch.mask, self.entropy_coef)
        grad_norm = gradient_step(policy, optimizer, terms["loss"], self.max_grad_norm)
        return {
            **stats,
            **_first_step_stats(terms["loss"], entropy.detach(), batch.mask, grad_norm),
        }


class RatioEpochs:
    """K epochs, each shuffling the rows (with `generator`) into M minibatches and stepping on
    each, the loss of a minibatch divided by its own number of rows: the ratio loss
    rho A with rho = exp(logp - logp_old) against the policy that collected the batch, or PPO's
    clipped one with `clip`. `target_kl` stops the whole loop before the first minibatch step
    whose approximate KL(pi_old || pi) on that minibatch exceeds it (stats/stopped_early,
    stats/gradient_steps)."""

    def __init__(
        self,
        epochs: int,
        minibatches: int = 1,
        *,
        clip: float | None = None,
        target_kl: float | None = None,
        entropy_coef: float = 0.0,
        max_grad_norm: float | None = None,
    ):
        self.epochs, self.minibatches = epochs, minibatches
        self.clip, self.target_kl = clip, target_kl
        self.entropy_coef, self.max_grad_norm = entropy_coef, max_grad_norm

    def step(
        self,
        policy: torch.nn.Module,
        optimizer: Optimizer,
        batch: Batch,
        adv: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        hooks: Sequence[UpdateHook] = (),
    ) -> dict[str, float]:
        """K x M steps on `batch` with the weights `adv` (N, T); returns the tags to log."""
        with torch.no_grad():
            dist_old = policy(batch.obs)
            logp_old = dist_old.log_prob(batch.act)
        stats = _before(hooks, policy, batch, adv)
        n, m = batch.num_episodes, self.minibatches
        taken, stopped, clip_fractions = 0, False, []
        for k in range(self.epochs):
            if m > 1:
                order = torch.randperm(n, generator=generator).to(adv.device)
                groups: list[torch.Tensor | None] = list(order.chunk(m))
            else:
                groups = [None]
            epoch_logp = torch.empty_like(logp_old)  # the log-probs epoch k's losses used
            for idx in groups:
                mb = batch if idx is None else batch.rows(idx)
                mb_adv = adv if idx is None else adv[idx]
                mb_old = logp_old if idx is None else logp_old[idx]
                dist = policy(mb.obs)
                logp = dist.log_prob(mb.act)
                kl_check = self.target_kl is not None and taken > 0
                if kl_check and ratio_stats(logp, mb_old, mb.mask)["approx_kl"] > self.target_kl:
                    stopped = True
                    break
                if idx is None:
                    epoch_logp = logp.detach()
                else:
                    epoch_logp[idx] = logp.detach()
                entropy = _entropy(dist, self.entropy_coef)
                terms = policy_loss(
                    logp, entropy, mb_adv, mb.mask, self.entropy_coef, mb_old, self.clip
                )
                if self.clip is not None:
                    clip_fractions.append(clip_fraction(logp, mb_old, mb.mask, self.clip))
                grad_norm = gradient_step(policy, optimizer, terms["loss"], self.max_grad_norm)
                if taken == 0:  # the whole batch's entropy, at the collecting policy
                    whole = entropy.detach() if idx is None else dist_old.entropy()
                    stats.update(_first_step_stats(terms["loss"], whole, batch.mask, grad_norm))
                taken += 1
            if stopped:
                break
            for hook in hooks:
                stats.update(hook.after_epoch(k, epoch_logp, logp_old, batch.mask))
        with torch.no_grad():
            logp_new = policy(batch.obs).log_prob(batch.act)
        stats.update(
            {f"stats/{k}": v for k, v in ratio_stats(logp_new, logp_old, batch.mask).items()}
        )
        if clip_fractions:
            stats["stats/clip_fraction"] = sum(clip_fractions) / len(clip_fractions)
        if self.target_kl is not None:
            stats["stats/stopped_early"] = float(stopped)
            stats["stats/gradient_steps"] = float(taken)
        return stats


RULES = {"gradient": GradientStep, "ratio_epochs": RatioEpochs}


def rule_name(variant: Any) -> str:
    """variant.rule, with "auto" resolved: ratio_epochs where the variant reuses the batch
    (K > 1 inner steps, M > 1 minibatches or a clip), else gradient."""
    name = str(variant.rule)
    if name != "auto":
        return name
    reuses = variant.inner_steps > 1 or variant.minibatches > 1 or variant.clip is not None
    return "ratio_epochs" if reuses else "gradient"


def rule_from_config(cfg: Any):
    """The update rule of a composed config (variant and optim.max_grad_norm)."""
    v = cfg.variant
    name = rule_name(v)
    common = {"entropy_coef": float(v.entropy_coef), "max_grad_norm": cfg.optim.max_grad_norm}
    if name == "gradient":
        return GradientStep(**common)
    if name == "ratio_epochs":
        return RatioEpochs(
            v.inner_steps, v.minibatches, clip=v.clip, target_kl=v.target_kl, **common
        )
    raise ValueError(f"variant.rule={name!r}: use one of auto, {', '.join(RULES)}")
