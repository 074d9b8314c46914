"""The natural gradient and TRPO's step: pure functions of a policy's parameters and a batch.

Notation: theta the policy's D parameters (flattened in the order of policy.parameters()),
pi_old the policy that collected the batch, and over the batch's valid steps (s, a)

    surrogate  L(theta)  = (1/N) sum_i sum_t m_{i,t} rho_{i,t} A_{i,t},
               rho = pi_theta(a|s) / pi_old(a|s)        (-pgrun.losses.pg_loss with logp_old)
    mean KL    KL(theta) = sum m KL(pi_old(.|s) || pi_theta(.|s)) / sum m
    Fisher     F         = Hessian of KL(theta) at theta_old
                         = E_s E_{a ~ pi_old} [grad log pi(a|s) grad log pi(a|s)^T]
    gradient   g         = grad L(theta_old) (the batch's policy-gradient estimate)

The natural gradient is x = F^-1 g (Kakade 2001). It is solved by conjugate gradient from
Fisher-vector products F v, each one double backward pass through the KL (Schulman et al. 2015,
appendix C): F v = grad_theta (grad_theta KL . v), never forming F. The step is scaled to the
KL radius delta of the quadratic model KL(theta_old + s) ~ s^T F s / 2:

    s = sqrt(2 delta / (x^T F x)) x

The natural policy gradient (NPG) takes s. TRPO takes the first of s, beta s, beta^2 s, ...
whose true mean KL is at most delta and whose surrogate improves on L(theta_old); none of
them: no step. This module uses torch.autograd.grad only (no torch.func, which imports
torch._dynamo, 1.5 s of start-up).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.distributions import Distribution, Independent, TransformedDistribution, kl_divergence


def flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The tensors flattened and concatenated: (D,)."""
    return torch.cat([t.reshape(-1) for t in tensors])


def flat_grad(
    y: torch.Tensor,
    params: Sequence[torch.Tensor],
    *,
    create_graph: bool = False,
    retain_graph: bool | None = None,
) -> torch.Tensor:
    """grad_theta y as a (D,) vector, zeros for a parameter y does not depend on."""
    grads = torch.autograd.grad(
        y, params, create_graph=create_graph, retain_graph=retain_graph, allow_unused=True
    )
    return flat(
        [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
    )


@torch.no_grad()
def set_flat(params: Sequence[torch.Tensor], theta: torch.Tensor) -> None:
    """Write the (D,) vector theta into params, in order."""
    i = 0
    for p in params:
        n = p.numel()
        p.copy_(theta[i : i + n].view_as(p))
        i += n
    if i != theta.numel():
        raise ValueError(f"theta has {theta.numel()} entries, the parameters {i}")


def _base(dist: Distribution) -> Distribution:
    """A tanh-squashed Gaussian's KL is its Gaussian's (KL is invariant under a bijection)."""
    if isinstance(dist, TransformedDistribution):
        return dist.base_dist
    if isinstance(dist, Independent) and isinstance(dist.base_dist, TransformedDistribution):
        return Independent(dist.base_dist.base_dist, dist.reinterpreted_batch_ndims)
    return dist


def mean_kl(dist_old: Distribution, dist: Distribution, mask: torch.Tensor) -> torch.Tensor:
    """sum m KL(pi_old(.|s) || pi(.|s)) / sum m, the mean KL over the valid steps.

    Args:
        dist_old: the collecting policy's distribution, batch shape (N, T), no gradient.
        dist: the current policy's, batch shape (N, T).
        mask: (N, T) float32.
    Returns:
        scalar.
    """
    kl = kl_divergence(_base(dist_old), _base(dist))
    if kl.shape != mask.shape:
        raise ValueError(f"the KL is {tuple(kl.shape)} per step, the mask {tuple(mask.shape)}")
    return (kl * mask).sum() / mask.sum().clamp(min=1)


def fisher_vector_product(
    kl: torch.Tensor, params: Sequence[torch.Tensor], damping: float = 0.0
) -> Callable[[torch.Tensor], torch.Tensor]:
    """v -> (F + damping I) v with F the Hessian of `kl` at the current parameters.

    `kl` is the mean KL(pi_old || pi_theta) computed at theta = theta_old (it is 0 there and
    so is its gradient; its Hessian is the Fisher information). One backward pass builds
    grad KL with its graph; each product is one more backward pass through it.

    Args:
        kl: scalar, with its graph to params.
        params: the D parameters.
        damping: lambda >= 0 added to F's diagonal (keeps CG stable where F is near singular).
    Returns:
        fvp: (D,) -> (D,).
    """
    grad_kl = flat_grad(kl, params, create_graph=True)

    def fvp(v: torch.Tensor) -> torch.Tensor:
        return flat_grad(grad_kl @ v, params, retain_graph=True) + damping * v

    return fvp


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    iters: int = 10,
    tol: float = 1e-10,
) -> torch.Tensor:
    """x ~ A^-1 b for a symmetric positive (semi-)definite A given by v -> A v.

    Conjugate gradient from x = 0, at most `iters` products, stopping once the residual
    r = b - A x has ||r||^2 <= tol ||b||^2 (beyond that, rounding error grows). For
    a singular A with b in its range (a Fisher with redundant parameters) the iterates stay in
    that range and converge to the pseudo-inverse solution A^+ b.

    Args:
        matvec: (D,) -> (D,).
        b: (D,).
    Returns:
        (D,).
    """
    x = torch.zeros_like(b)
    r = b.clone()  # b - A x
    p = r.clone()
    rr = r @ r
    stop = tol * rr
    for _ in range(iters):
        if rr <= stop:
            break
        Ap = matvec(p)
        pAp = p @ Ap
        if pAp <= 0:  # no curvature left along p (rounding in a singular direction)
            break
        alpha = rr / pAp
        x = x + alpha * p
        r = r - alpha * Ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def kl_scaled_step(x: torch.Tensor, Fx: torch.Tensor, max_kl: float) -> torch.Tensor:
    """s = sqrt(2 delta / (x^T F x)) x: the step along x whose quadratic KL model s^T F s / 2
    equals delta = max_kl. Zero when x^T F x <= 0 (no direction to go).

    Args:
        x: (D,) direction (F^-1 g); Fx: (D,) F x.
    Returns:
        (D,).
    """
    xFx = float(x @ Fx)
    if not xFx > 0:
        return torch.zeros_like(x)
    return math.sqrt(2 * max_kl / xFx) * x


@dataclass
class LineSearch:
    """What a backtracking line search did."""

    accepted: bool
    fraction: float  # beta^j of the step taken; 0 when none was accepted
    tries: int  # steps evaluated
    improvement: float  # L(theta_new) - L(theta_old); 0 when none was accepted
    kl: float  # mean KL at the parameters kept (0 when none was accepted)


@torch.no_grad()
def line_search(
    params: Sequence[torch.Tensor],
    step: torch.Tensor,
    surrogate: Callable[[], float],
    kl: Callable[[], float],
    max_kl: float,
    *,
    shrink: float = 0.8,
    max_tries: int = 10,
) -> LineSearch:
    """Backtracking on the surrogate under the KL constraint (TRPO's step).

    Tries theta_old + beta^j s for j = 0, 1, ..., max_tries - 1 and keeps the first with
    L(theta) > L(theta_old) and KL(theta) <= max_kl; when none qualifies the parameters are
    left at theta_old.

    Args:
        params: the parameters, at theta_old on entry.
        step: (D,) the full step s.
        surrogate: () -> L at the current parameters.
        kl: () -> mean KL(pi_old || pi) at the current parameters.
        max_kl: delta > 0.
        shrink: beta in (0, 1).
    """
    if not 0 < shrink < 1:
        raise ValueError(f"shrink={shrink!r}: use a value in (0, 1)")
    theta_old = flat(params).clone()
    before = surrogate()
    for j in range(max_tries):
        fraction = shrink**j
        set_flat(params, theta_old + fraction * step)
        gain, divergence = surrogate() - before, kl()
        if math.isfinite(gain) and gain > 0 and divergence <= max_kl:
            return LineSearch(True, fraction, j + 1, gain, divergence)
    set_flat(params, theta_old)
    return LineSearch(False, 0.0, max_tries, 0.0, 0.0)


@dataclass
class NaturalStep:
    """The pieces of one natural-gradient step, for logging."""

    direction: torch.Tensor  # (D,) x ~ F^-1 g
    step: torch.Tensor  # (D,) s, the full KL-scaled step
    grad_norm: float  # ||g||
    quadratic_kl: float  # s^T F s / 2 (delta unless x^T F x <= 0)


def natural_step(
    loss: torch.Tensor,
    kl: torch.Tensor,
    params: Sequence[torch.Tensor],
    max_kl: float,
    *,
    damping: float = 0.1,
    cg_iters: int = 10,
) -> NaturalStep:
    """The NPG step for the surrogate `loss` (= -L, minimised) under the mean KL `kl`.

    g = -grad loss; x = (F + damping I)^-1 g by `cg_iters` CG steps; s = sqrt(2 delta / x^T F x) x.

    Args:
        loss: scalar, -L(theta) at theta_old, with its graph.
        kl: scalar mean KL(pi_old || pi_theta) at theta_old, with its graph.
        params: the D parameters.
    """
    g = -flat_grad(loss, params, retain_graph=True)
    fvp = fisher_vector_product(kl, params, damping)
    x = conjugate_gradient(fvp, g, cg_iters)
    Fx = fvp(x)
    s = kl_scaled_step(x, Fx, max_kl)
    scale = float(s.norm() / x.norm()) if x.norm() > 0 else 0.0
    return NaturalStep(x, s, float(g.norm()), 0.5 * scale**2 * float(x @ Fx))


class NaturalGradient:
    """The update rule of variant=npg (line_search False) and variant=trpo (True).

    On the batch's weights A (from the learner: GAE, a value baseline, any estimator), at the
    collecting policy pi_old: g = grad L, x = (F + damping I)^-1 g by `cg_iters` conjugate
    gradient steps, s = sqrt(2 max_kl / x^T F x) x. NPG takes s; TRPO takes the first of
    s, shrink s, shrink^2 s, ... (at most `max_tries`) whose mean KL(pi_old || pi) is at most
    max_kl and whose surrogate improves, and no step when none does. The policy optimizer's
    learning rate plays no part: the step's size is the KL radius.
    """

    def __init__(
        self,
        max_kl: float = 0.01,
        *,
        line_search: bool = False,
        damping: float = 0.1,
        cg_iters: int = 10,
        shrink: float = 0.8,
        max_tries: int = 10,
        entropy_coef: float = 0.0,
    ):
        if not max_kl > 0:
            raise ValueError(f"max_kl={max_kl!r}: use a value > 0")
        self.max_kl, self.line_search = max_kl, line_search
        self.damping, self.cg_iters = damping, cg_iters
        self.shrink, self.max_tries = shrink, max_tries
        self.entropy_coef = entropy_coef

    def _loss(self, dist, batch, adv, logp_old) -> torch.Tensor:
        """-L(theta): the ratio surrogate (its gradient at pi_old is the on-policy estimate),
        minus the entropy bonus."""
        from pgrun.losses import entropy_bonus, pg_loss

        loss = pg_loss(dist.log_prob(batch.act), adv, batch.mask, logp_old)
        if self.entropy_coef:
            loss = loss - self.entropy_coef * entropy_bonus(dist.entropy(), batch.mask)
        return loss

    def step(self, policy, optimizer, batch, adv, *, generator=None, hooks=()) -> dict[str, float]:
        """One natural-gradient (or TRPO) step on `batch` with the weights `adv` (N, T)."""
        stats: dict[str, float] = {}
        for hook in hooks:
            stats.update(hook.before_update(policy, batch, adv))
        params = [p for p in policy.parameters() if p.requires_grad]
        with torch.no_grad():
            dist_old = policy(batch.obs)
            logp_old = dist_old.log_prob(batch.act)
        dist = policy(batch.obs)
        loss = self._loss(dist, batch, adv, logp_old)
        kl = mean_kl(dist_old, dist, batch.mask)
        nat = natural_step(
            loss, kl, params, self.max_kl, damping=self.damping, cg_iters=self.cg_iters
        )
        if not (torch.isfinite(loss) and torch.isfinite(nat.step).all()):
            raise FloatingPointError("loss" if not torch.isfinite(loss) else "gradient")
        with torch.no_grad():
            entropy = (dist_old.entropy() * batch.mask).sum() / batch.mask.sum()

        def surrogate() -> float:
            with torch.no_grad():
                return -self._loss(policy(batch.obs), batch, adv, logp_old).item()

        def kl_now() -> float:
            with torch.no_grad():
                return mean_kl(dist_old, policy(batch.obs), batch.mask).item()

        if self.line_search:
            found = line_search(
                params, nat.step, surrogate, kl_now, self.max_kl,
                shrink=self.shrink, max_tries=self.max_tries,
            )  # fmt: skip
            stats["stats/step_fraction"] = found.fraction
            stats["stats/line_search_tries"] = float(found.tries)
        else:
            set_flat(params, flat(params) + nat.step)
        if not all(torch.isfinite(p).all() for p in params):
            raise FloatingPointError("parameters")
        stats.update(
            {
                "losses/policy": loss.item(),
                "stats/entropy": entropy.item(),
                "stats/grad_norm": nat.grad_norm,
                "stats/kl": kl_now(),
                "stats/quadratic_kl": nat.quadratic_kl,
            }
        )
        return stats
