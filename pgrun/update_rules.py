"""Update rules: how one weighted batch changes the policy. One signature for every rule:

    stats = rule.step(policy, optimizer, batch, adv, generator=..., hooks=...)

- :class:`GradientStep`: the notes' on-policy step, one gradient step on pg_loss
  (pgrun.losses), the Monte-Carlo estimate itself.
- :class:`RatioEpochs`: K epochs of M minibatches of the ratio loss exp(logp - logp_old) A (the
  notes' off-policy loop) or PPO's clipped loss, stopped early once the approximate KL to the
  collecting policy exceeds `target_kl`.
- npg and trpo (pgrun.natural.NaturalGradient): the natural gradient F^-1 g by conjugate
  gradient, scaled to the KL radius `max_kl`; trpo with a backtracking line search on the
  surrogate under the KL constraint.
- `variant.rule=module:function`: your own, function(cfg) returning an object with `step`.

A rule reads the advantages as given (pgrun.learner computes them, once per batch) and never
touches V. Diagnostics observe a rule through hooks (pgrun.diagnostics.Diagnostics): a hook
receives detached tensors, returns tags to log, and changes nothing. A new rule is one class
with this `step` and one entry in RULES.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch

from pgrun.config import rule_name
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
    """K epochs, each shuffling the batch (with `generator`) into M minibatches and stepping on
    each: the ratio loss rho A with rho = exp(logp - logp_old) against the policy that
    collected the batch, or PPO's clipped one with `clip`. `target_kl` stops the whole loop
    before the first minibatch step whose approximate KL(pi_old || pi) on that minibatch
    exceeds it (stats/stopped_early, stats/gradient_steps).

    `shuffle` says what a minibatch is made of:
    - "rows": whole rows (episodes, for rollout=episodes), the loss of a minibatch divided by
      its own number of rows, as pg_loss divides the batch's by N;
    - "steps": single valid steps drawn from every row (rollout=steps, as PPO implementations
      shuffle a rollout), a minibatch of B of the batch's S valid steps weighted S / B:
      L_mb = -(1/N) (S/B) sum_{(i,t) in mb} rho A, an unbiased estimate of the whole batch's L
      on the same scale (equal to it when M = 1).
    """

    def __init__(
        self,
        epochs: int,
        minibatches: int = 1,
        *,
        clip: float | None = None,
        target_kl: float | None = None,
        entropy_coef: float = 0.0,
        max_grad_norm: float | None = None,
        shuffle: str = "rows",
    ):
        if shuffle not in SHUFFLES:
            raise ValueError(f"shuffle={shuffle!r}: use one of {', '.join(SHUFFLES)}")
        self.epochs, self.minibatches, self.shuffle = epochs, minibatches, shuffle
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
        m = self.minibatches
        first = None  # whole-batch epochs: the first epoch's forward is the collecting policy's
        if m > 1:
            with torch.no_grad():
                dist_old = policy(batch.obs)
                logp_old = dist_old.log_prob(batch.act)
        else:
            dist_old = policy(batch.obs)
            first = (dist_old, dist_old.log_prob(batch.act))
            logp_old = first[1].detach()
        stats = _before(hooks, policy, batch, adv)
        by_steps = self.shuffle == "steps" and m > 1
        valid = batch.mask.flatten().nonzero().squeeze(1) if by_steps else None
        taken, stopped, clip_fractions = 0, False, []
        for k in range(self.epochs):
            if not m > 1:
                groups: list[torch.Tensor | None] = [None]
            elif by_steps:  # flat indices into (N * T) of the valid steps
                order = torch.randperm(len(valid), generator=generator).to(valid.device)
                groups = list(valid[order].chunk(m))
            else:
                order = torch.randperm(batch.num_episodes, generator=generator)
                groups = list(order.to(adv.device).chunk(m))
            epoch_logp = torch.empty_like(logp_old)  # the log-probs epoch k's losses used
            for idx in groups:
                mb_obs, mb_act, mb_adv, mb_old, mb_mask = (
                    _select(x, idx, by_steps)
                    for x in (batch.obs, batch.act, adv, logp_old, batch.mask)
                )
                if first is not None:  # the same weights and numbers: not computed twice
                    (dist, logp), first = first, None
                else:
                    dist = policy(mb_obs)
                    logp = dist.log_prob(mb_act)
                kl_check = self.target_kl is not None and taken > 0
                if kl_check and ratio_stats(logp, mb_old, mb_mask)["approx_kl"] > self.target_kl:
                    stopped = True
                    break
                if idx is None:
                    epoch_logp = logp.detach()
                elif by_steps:
                    epoch_logp.view(-1)[idx] = logp.detach().view(-1)
                else:
                    epoch_logp[idx] = logp.detach()
                if self.entropy_coef or (taken == 0 and idx is None):
                    entropy = _entropy(dist, self.entropy_coef)
                else:  # the loss has no bonus and no statistic reads it
                    entropy = torch.zeros_like(logp)
                terms = policy_loss(
                    logp, entropy, mb_adv, mb_mask, self.entropy_coef, mb_old, self.clip
                )
                if by_steps:  # (1/N)(S/B) sum over the minibatch: the batch's scale
                    weight = len(valid) / (batch.num_episodes * len(idx))
                    terms = {name: term * weight for name, term in terms.items()}
                if self.clip is not None:
                    clip_fractions.append(clip_fraction(logp, mb_old, mb_mask, self.clip))
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


def _select(x: torch.Tensor, idx: torch.Tensor | None, by_steps: bool) -> torch.Tensor:
    """A minibatch of an (N, T, ...) tensor: all of it (idx None), its rows `idx`, or with
    `by_steps` its steps `idx` (flat indices into N * T) as one row, (1, B, ...)."""
    if idx is None:
        return x
    return x.flatten(0, 1)[idx].unsqueeze(0) if by_steps else x[idx]


def _natural_gradient(**kwargs):
    from pgrun.natural import NaturalGradient  # imported where a run uses it

    return NaturalGradient(**kwargs)


SHUFFLES = ("rows", "steps")
RULES = {
    "gradient": GradientStep,
    "ratio_epochs": RatioEpochs,
    "npg": _natural_gradient,
    "trpo": _natural_gradient,
}


def rule_from_config(cfg: Any):
    """The update rule of a composed config (variant and optim.max_grad_norm)."""
    v = cfg.variant
    name = rule_name(v)
    common = {"entropy_coef": float(v.entropy_coef), "max_grad_norm": cfg.optim.max_grad_norm}
    if name == "gradient":
        return GradientStep(**common)
    if name == "ratio_epochs":
        # rollout=steps: minibatches of single steps, as PPO implementations shuffle a
        # rollout; rollout=episodes: of whole episodes, each row one of the notes' samples
        shuffle = "steps" if cfg.rollout.name == "steps" else "rows"
        return RatioEpochs(
            v.inner_steps,
            v.minibatches,
            clip=v.clip,
            target_kl=v.target_kl,
            shuffle=shuffle,
            **common,
        )
    if name in ("npg", "trpo"):
        return _natural_gradient(
            max_kl=v.max_kl,
            line_search=name == "trpo",
            damping=v.cg_damping,
            cg_iters=v.cg_iters,
            shrink=v.line_search_shrink,
            max_tries=v.line_search_steps,
            entropy_coef=float(v.entropy_coef),
        )
    if ":" in name:  # your own: module:function, function(cfg) -> a rule
        from pgrun.plugins import load_rule

        return load_rule(name, cfg)
    raise ValueError(f"variant.rule={name!r}: use one of auto, {', '.join(RULES)}")
