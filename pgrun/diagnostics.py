"""Estimator diagnostics: how noisy is the gradient, and how far have the inner steps drifted.

Pure functions of a policy and a batch, no state:

- :func:`per_episode_grads` splits the batch estimate into one gradient per episode,
  g_i = sum_t m_{i,t} rho_{i,t} A_{i,t} grad log pi(a_{i,t}|s_{i,t}) (rho = 1 on-policy), so that
  (1/N) sum_i g_i is exactly -grad of :func:`pgrun.losses.pg_loss` on the whole batch: one
  backward pass per episode, each over that episode's own steps. (``torch.func.vmap`` would do it
  in one call, but its first use imports torch._dynamo, about 1.5 s; the loop costs a few ms
  per measurement at N = 16.)
- :func:`gradient_stats` turns those into the variance of the batch estimate and its
  signal-to-noise ratio.
- :func:`inner_step_stats` describes the importance ratios one inner step of the off-policy loop
  uses: mean, min, max, effective sample size, approximate KL.

:class:`Diagnostics` hands them to an update rule as hooks (pgrun.update_rules): they read the
policy and the batch and change nothing (no parameter, no optimizer state, no RNG draw).

TensorBoard layout (written by pgrun.trainer, x-axis = environment steps):

- ``stats/grad_variance``, ``stats/grad_snr``: every ``diagnostics.every`` iterations, computed at
  the policy that collected the batch (the first inner step's gradient).
- ``inner/<stat>/k<k>`` for k = 0..K-1 (K > 1 only): the ratios used by inner step k; a Custom
  Scalars chart per statistic holds one curve per inner step (pgrun.views.inner_step_layout).
  Step 0's ratios on the whole batch are exactly 1 by construction and are not logged.
"""

from __future__ import annotations

import math

import torch

from pgrun.losses import pg_loss, ratio_stats


def per_episode_grads(
    policy: torch.nn.Module,
    batch,
    adv: torch.Tensor,
    logp_old: torch.Tensor | None = None,
) -> torch.Tensor:
    """One gradient estimate per row (per episode in the notes' batch), flattened over the
    policy's parameters.

    g_i = -grad of pg_loss on episode i alone = sum_t m_{i,t} rho_{i,t} A_{i,t} grad log pi(a|s),
    so the rows average to the batch estimate -grad pg_loss(batch). The weights `adv` are taken
    as given (with a batch baseline, g_i depends on the other episodes through it).

    Args:
        policy: module with `policy(obs) -> Distribution`.
        batch: a pgrun.Batch with obs (N, T, obs_dim), act (N, T[, act_dim]), mask (N, T).
        adv: (N, T) float32 detached weights.
        logp_old: (N, T) float32 log-probs of the collecting policy; given, the ratios are used.
    Returns:
        (N, D) float32, D = number of policy parameters, in the order of policy.parameters()
        (zeros for a parameter the loss does not reach).
    """
    if batch.mask.dim() != 2 or adv.shape != batch.mask.shape:
        raise ValueError(
            f"adv and batch.mask must both be (N, T): got {tuple(adv.shape)}, "
            f"{tuple(batch.mask.shape)}"
        )
    stacked = _stacked_grads(policy, batch, adv, logp_old)
    if stacked is not None:
        return stacked
    params = list(policy.parameters())
    t = torch.arange(1, batch.mask.shape[1] + 1, device=batch.mask.device)
    ends = ((batch.mask > 0) * t).amax(1).tolist()  # 1 + each row's last valid step
    rows = []
    for i, end in enumerate(ends):
        steps = slice(i, i + 1), slice(0, max(end, 1))  # row i, up to its last valid step
        logp = policy(batch.obs[steps]).log_prob(batch.act[steps])
        lo = None if logp_old is None else logp_old[steps]
        loss = pg_loss(logp, adv[steps], batch.mask[steps], lo)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (torch.zeros_like(p) if g is None else g).reshape(-1)
                    for p, g in zip(params, grads, strict=True)
                ]
            )
        )
    return -torch.stack(rows)


def _stacked_grads(policy, batch, adv, logp_old) -> torch.Tensor | None:
    """per_episode_grads in one forward and one backward pass, for an MLP policy on vector
    observations (Categorical, or Gaussian over a vector without squashing) on the CPU: the policy copied once
    per row as stacked weights (pgrun.batched.StackedPolicy, batched matmuls), row i's loss on
    copy i, so the gradient of copy i is row i's. The same numbers as the loop's up to float
    rounding (tests/test_diagnostics.py); None for any other policy."""
    from pgrun.policies import CategoricalPolicy, GaussianPolicy

    enc = policy.encoder
    if not (
        type(policy) in (CategoricalPolicy, GaussianPolicy)
        and not getattr(policy, "squash", False)
        and len(getattr(policy, "shape", (1,))) == 1  # Gaussian: a vector of actions
        and enc.kind == "box"
        and enc.norm is None
        and batch.obs.dim() == 3
        and batch.obs.device.type == "cpu"
    ):
        return None
    from pgrun.batched import StackedPolicy

    n = batch.mask.shape[0]
    with torch.enable_grad():
        copies = StackedPolicy([policy] * n)
        logp = copies(batch.obs).log_prob(batch.act)  # (N, T): row i by copy i
        # pg_loss divides by the N rows: N times it is the sum of the rows' own losses
        loss = n * pg_loss(logp, adv, batch.mask, logp_old)
        grads = torch.autograd.grad(loss, copies.params, allow_unused=True)
    rows = []
    for p, g, dim in zip(copies.params, grads, copies.dims, strict=True):
        g = torch.zeros_like(p) if g is None else g
        rows.append((g.transpose(1, 2) if dim == 2 else g[:, 0]).reshape(n, -1))
    return -torch.cat(rows, 1)


def gradient_stats(g: torch.Tensor) -> dict[str, float]:
    """Variance and signal-to-noise ratio of the batch estimate g_bar = (1/N) sum_i g_i.

    grad_variance V = tr Cov(g_i) / N, with the unbiased (N - 1) sample covariance: the trace of
    the covariance of g_bar if the g_i were independent (a batch baseline couples them slightly).
    grad_snr = (||g_bar||^2 - V) / V, an estimate of ||E g_bar||^2 / tr Cov(g_bar): ||g_bar||^2
    alone overestimates the signal by V on average. It is near 0, and can be negative, when the
    batch cannot tell the gradient from noise.

    Args:
        g: (N, D) float per-episode gradients (see per_episode_grads).
    Returns:
        {"grad_variance", "grad_snr"}; both NaN when N < 2.
    """
    if g.dim() != 2:
        raise ValueError(f"g must be (N, D), got shape {tuple(g.shape)}")
    n = g.shape[0]
    if n < 2:
        return {"grad_variance": float("nan"), "grad_snr": float("nan")}
    with torch.no_grad():
        g = g.double()
        g_bar = g.mean(0)
        var = ((g - g_bar).pow(2).sum() / (n - 1) / n).item()
        signal = g_bar.pow(2).sum().item()
    snr = (signal - var) / var if var > 0 else float("nan")
    return {"grad_variance": var, "grad_snr": snr}


def effective_sample_size(logp: torch.Tensor, logp_old: torch.Tensor, mask: torch.Tensor) -> float:
    """(sum w)^2 / sum w^2 over the valid steps, divided by their number; w = exp(logp - logp_old).

    1 when every ratio is equal (e.g. all 1 at the first inner step), 1/n when one step carries
    all the weight.

    Args:
        logp, logp_old, mask: (N, T) float32.
    """
    if not logp.shape == logp_old.shape == mask.shape:
        raise ValueError(
            f"logp, logp_old and mask must have one shape: got {tuple(logp.shape)}, "
            f"{tuple(logp_old.shape)}, {tuple(mask.shape)}"
        )
    with torch.no_grad():
        w = (logp - logp_old)[mask > 0].double().exp()
        return (w.sum().pow(2) / w.pow(2).sum() / w.numel()).item()


def inner_step_stats(
    logp: torch.Tensor, logp_old: torch.Tensor, mask: torch.Tensor
) -> dict[str, float]:
    """The ratios one inner step uses: ratio_mean, ratio_min, ratio_max, ess, approx_kl.

    See pgrun.losses.ratio_stats (mean, min, max, approx KL(old || new)) and
    effective_sample_size.

    Args:
        logp: (N, T) float32 log-probs of the current policy.
        logp_old, mask: (N, T) float32.
    """
    return {**ratio_stats(logp, logp_old, mask), "ess": effective_sample_size(logp, logp_old, mask)}


def inner_step_tags(k: int, stats: dict[str, float]) -> dict[str, float]:
    """{"ratio_mean": x, ...} of inner step k -> {"inner/ratio_mean/k<k>": x, ...}; {} when
    every ratio is exactly 1 (step 0 on the whole batch: a flat line at 1, KL 0, ESS 1)."""
    if stats.get("ratio_min") == 1.0 and stats.get("ratio_max") == 1.0:
        return {}
    return {f"inner/{name}/k{k}": value for name, value in stats.items()}


class Diagnostics:
    """The diagnostics of one batch as an update hook: `grad_stats` adds stats/grad_variance and
    stats/grad_snr of the gradient at the collecting policy; `ratios` adds inner/<stat>/k<k>,
    the ratios each inner step k of a ratio rule used. Read-only."""

    def __init__(self, grad_stats: bool = False, ratios: bool = False):
        self.grad_stats, self.ratios = grad_stats, ratios

    def before_update(self, policy: torch.nn.Module, batch, adv: torch.Tensor) -> dict[str, float]:
        if not self.grad_stats:
            return {}
        measured = gradient_stats(per_episode_grads(policy, batch, adv)).items()
        return {f"stats/{k}": v for k, v in measured if math.isfinite(v)}  # NaN: undefined

    def after_epoch(
        self, k: int, logp: torch.Tensor, logp_old: torch.Tensor, mask: torch.Tensor
    ) -> dict[str, float]:
        if not self.ratios:
            return {}
        return inner_step_tags(k, inner_step_stats(logp, logp_old, mask))
