"""The surrogate loss whose gradient is the policy-gradient estimate (pure functions)."""

from __future__ import annotations

import torch


def pg_loss(
    logp: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    logp_old: torch.Tensor | None = None,
) -> torch.Tensor:
    """L = -(1/N) sum_i sum_t m_{i,t} rho_{i,t} A_{i,t}.

    On-policy (logp_old is None) rho_{i,t} = log pi(a_{i,t}|s_{i,t}), so
    -grad L = (1/N) sum_i sum_t grad log pi(a|s) A, the notes' Monte-Carlo estimate.
    Off-policy rho_{i,t} = exp(logp - logp_old) = pi_new(a|s) / pi_old(a|s), the notes'
    per-timestep importance ratio; its gradient at pi_new = pi_old is the on-policy one.

    The sum over t is divided by N (episodes), not by N*T as `.mean()` would: the gradient is
    then the estimate itself and does not shrink when episodes get longer.

    Args:
        logp: (N, T) float32, log pi_theta(a|s), with gradient.
        adv: (N, T) float32, detached weights.
        mask: (N, T) float32.
        logp_old: (N, T) float32, detached log-probs of the policy that collected the batch.
    Returns:
        scalar.
    """
    if logp.shape != adv.shape or mask.shape != adv.shape or logp.dim() != 2:
        raise ValueError(
            f"logp, adv and mask must all be (N, T): got {tuple(logp.shape)}, "
            f"{tuple(adv.shape)}, {tuple(mask.shape)}"
        )
    if logp_old is None:
        rho = logp
    else:
        if logp_old.shape != logp.shape:
            raise ValueError(f"logp_old must be {tuple(logp.shape)}, got {tuple(logp_old.shape)}")
        rho = (logp - logp_old).exp()
    return -(rho * adv * mask).sum() / logp.shape[0]


def clipped_loss(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    clip: float,
) -> torch.Tensor:
    """PPO's clipped objective, L = -(1/N) sum_i sum_t m_{i,t} min(rho A, clip(rho, 1-eps, 1+eps) A).

    rho_{i,t} = exp(logp - logp_old) as in pg_loss's off-policy form. While every ratio lies in
    [1 - eps, 1 + eps] the two terms are equal and L is pg_loss(logp, adv, mask, logp_old); a
    step whose ratio has left the range in the direction its advantage pushes contributes a
    constant (no gradient), so the policy is not pulled further from pi_old on it.

    Args:
        logp: (N, T) float32, with gradient.
        logp_old: (N, T) float32, detached.
        adv: (N, T) float32, detached.
        mask: (N, T) float32.
        clip: eps > 0.
    Returns:
        scalar.
    """
    if not logp.shape == logp_old.shape == adv.shape == mask.shape or logp.dim() != 2:
        raise ValueError(
            f"logp, logp_old, adv and mask must all be (N, T): got {tuple(logp.shape)}, "
            f"{tuple(logp_old.shape)}, {tuple(adv.shape)}, {tuple(mask.shape)}"
        )
    if not clip > 0:
        raise ValueError(f"clip={clip!r}: use a value > 0")
    rho = (logp - logp_old).exp()
    surrogate = torch.min(rho * adv, rho.clamp(1 - clip, 1 + clip) * adv)
    return -(surrogate * mask).sum() / logp.shape[0]


def entropy_bonus(entropy: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(1/N) sum_i sum_t m_{i,t} H_{i,t}: the entropy on the per-episode scale of pg_loss.

    Args:
        entropy: (N, T) float32, H[pi(.|s_{i,t})], with gradient.
        mask: (N, T) float32.
    Returns:
        scalar.
    """
    if entropy.shape != mask.shape or entropy.dim() != 2:
        raise ValueError(
            f"entropy and mask must both be (N, T): got {tuple(entropy.shape)}, {tuple(mask.shape)}"
        )
    return (entropy * mask).sum() / entropy.shape[0]


def policy_loss(
    logp: torch.Tensor,
    entropy: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    entropy_coef: float = 0.0,
    logp_old: torch.Tensor | None = None,
    clip: float | None = None,
) -> dict[str, torch.Tensor]:
    """The policy's loss as named terms: "policy" (pg_loss, its ratio form with `logp_old`, or
    clipped_loss with `clip`), "entropy" (entropy_bonus) and "loss" = policy - c * entropy, the
    scalar a rule minimises.

    Args:
        logp, entropy: (N, T) float32, with gradient; adv, mask: (N, T) float32.
        entropy_coef: c >= 0; logp_old: (N, T) detached, needed by `clip`.
    Returns:
        {"loss", "policy", "entropy"}: scalars.
    """
    if clip is not None:
        if logp_old is None:
            raise ValueError("clip needs logp_old: the collecting policy's log-probs")
        pol = clipped_loss(logp, logp_old, adv, mask, clip)
    else:
        pol = pg_loss(logp, adv, mask, logp_old)
    bonus = entropy_bonus(entropy, mask)
    loss = pol - entropy_coef * bonus if entropy_coef else pol
    return {"loss": loss, "policy": pol, "entropy": bonus}


def clip_fraction(
    logp: torch.Tensor, logp_old: torch.Tensor, mask: torch.Tensor, clip: float
) -> float:
    """Fraction of the valid steps whose ratio rho lies outside [1 - eps, 1 + eps].

    Args:
        logp, logp_old, mask: (N, T) float32.
    """
    with torch.no_grad():
        rho = (logp - logp_old)[mask > 0].exp()
        return ((rho - 1).abs() > clip).float().mean().item()


def value_loss(v: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the value estimates over the valid steps,
    sum m (V - target)^2 / sum m.

    Args:
        v: (...) float32, V(s), with gradient; target, mask: the same shape.
    Returns:
        scalar.
    """
    if not v.shape == target.shape == mask.shape:
        raise ValueError(
            f"v, target and mask must have one shape: got {tuple(v.shape)}, "
            f"{tuple(target.shape)}, {tuple(mask.shape)}"
        )
    return ((v - target).pow(2) * mask).sum() / mask.sum().clamp(min=1)


def ratio_stats(logp: torch.Tensor, logp_old: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Mean, min and max of rho = exp(logp - logp_old) over valid steps, and approx KL(old||new).

    approx_kl = mean of (rho - 1) - log rho, a non-negative estimator of KL(pi_old || pi_new).

    Args:
        logp, logp_old, mask: (N, T) float32.
    """
    with torch.no_grad():
        log_rho = (logp - logp_old)[mask > 0]
        rho = log_rho.exp()
        return {
            "ratio_mean": rho.mean().item(),
            "ratio_min": rho.min().item(),
            "ratio_max": rho.max().item(),
            "approx_kl": ((rho - 1) - log_rho).mean().item(),
        }


def surrogate_loss(
    policy: torch.nn.Module,
    batch,
    variant="rtg_baseline",
    gamma: float = 1.0,
    *,
    discount_from_start: bool = False,
    adv: torch.Tensor | None = None,
    logp_old: torch.Tensor | None = None,
    values: torch.Tensor | None = None,
    boot: torch.Tensor | None = None,
) -> torch.Tensor:
    """The variant's surrogate loss on `batch`; `-grad` of it is the variant's gradient estimate.

    Args:
        policy: module with `policy(obs) -> Distribution`.
        batch: a pgrun.Batch.
        variant: a preset name (configs/variant/<name>.yaml), or an object / mapping with the
            knobs `weights`, `baseline`, `normalize_advantages` (and optionally `gae_lambda`,
            `clip`, `entropy_coef`).
        gamma: discount of the weights.
        discount_from_start: multiply step t's weight by gamma^t (see pgrun.config.Config.gamma).
        adv: precomputed weights (N, T); computed from the batch when None.
        logp_old: (N, T) log-probs of the collecting policy; given, the loss uses the ratios
            (clipped when the variant sets `clip`).
        values: (N, T) V(s_t) for baseline "value"; boot: (N, T) values after each episode's
            end (pgrun.estimators.bootstrap_values).
    Returns:
        scalar loss, differentiable in the policy's parameters.
    """
    v = _variant_knobs(variant)
    if adv is None:
        adv = batch_advantages(batch, v, gamma, discount_from_start, values=values, boot=boot)
    dist = policy(batch.obs)
    clip = v["clip"] if logp_old is not None else None
    terms = policy_loss(
        dist.log_prob(batch.act), dist.entropy(), adv, batch.mask, v["entropy_coef"], logp_old, clip
    )
    return terms["loss"]


def batch_advantages(
    batch,
    variant="rtg_baseline",
    gamma: float = 1.0,
    discount_from_start: bool = False,
    *,
    values: torch.Tensor | None = None,
    boot: torch.Tensor | None = None,
) -> torch.Tensor:
    """The variant's detached weights (N, T) for `batch` (see pgrun.estimators.advantages).

    `values` (N, T) and `boot` (N, T) are the value estimates a variant with baseline "value"
    needs (V(s_t), and the values after each episode's end from bootstrap_values); the batch's
    per-step episode boundaries (batch.done, batch.start) say where each episode begins and ends.
    A variant whose `weights` is a plug-in, 'module:function' (pgrun.plugins), takes its
    weights from that function, and its baseline and normalisation apply to them."""
    from pgrun.estimators import advantages
    from pgrun.plugins import is_plugin, plugin_weights

    v = _variant_knobs(variant)
    given = plugin_weights(v["weights"], batch, gamma) if is_plugin(v["weights"]) else None
    return advantages(
        batch.rew,
        batch.mask,
        weights=v["weights"],
        baseline=v["baseline"],
        gamma=gamma,
        discount_from_start=discount_from_start,
        normalize=v["normalize_advantages"],
        values=values,
        boot=boot,
        gae_lambda=v["gae_lambda"],
        done=batch.done,
        start=batch.start,
        given=given,
    )


def _variant_knobs(variant) -> dict:
    if isinstance(variant, str):
        from pgrun.config import load_variant

        variant = load_variant(variant)
    get = variant.get if isinstance(variant, dict) else lambda k, d=None: getattr(variant, k, d)
    return {
        "weights": str(getattr(get("weights"), "value", get("weights"))),
        "baseline": str(getattr(get("baseline"), "value", get("baseline"))),
        "normalize_advantages": bool(get("normalize_advantages", False)),
        "gae_lambda": get("gae_lambda", None),
        "clip": get("clip", None),
        "entropy_coef": float(get("entropy_coef", 0.0) or 0.0),
    }
