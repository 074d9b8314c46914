"""`pgrun-check`: is an estimator unbiased? Its mean against the exact gradient of small MDPs.

    pgrun-check my_estimators:weights              # your own weights (pgrun.plugins)
    pgrun-check my_estimators.py:weights --episodes 8
    pgrun-check variant=rtg_baseline               # a built-in preset (knobs may follow:
    pgrun-check variant=gae variant.normalize_advantages=false)

For each of several random MDPs of pgrun.exact (stochastic transitions, rewards of both signs
plus noise, termination, a time limit) and a random linear softmax policy, it collects M
independent batches of N episodes with pgrun.collect_episodes, computes the estimator's
weights A on each batch and the batch's estimate

    g_m = (1/N) sum_i sum_t m_{i,t} A_{i,t} grad log pi(a_{i,t}|s_{i,t})

(-grad of pgrun.losses.pg_loss, here from the exact score table of the tabular policy), and
compares the mean over the M batches with the exact grad J_gamma by dynamic programming:

    z_j       = (mean_j - grad J_j) / (std_j / sqrt(M))      per coordinate j
    cosine    = cos(mean g, grad J)
    rel. bias = ||mean g - grad J|| / ||grad J||, with +- its noise floor sqrt(tr Cov / M) / ||grad J||
    tr Cov    = sum_j Var g_j, the noise of one batch's estimate

An unbiased estimator has every z_j ~ N(0, 1). The verdict takes two independent samples:

    screen:  every MDP on its first sample; a coordinate is flagged when |z_j| exceeds the
             two-sided normal quantile at level a = sqrt(alpha), Bonferroni over the D
             coordinates of all MDPs (threshold z_1 = Phi^-1(1 - a / 2D))
    confirm: each MDP with a flag, strongest first, on a fresh sample of the same size (new
             seeds for the episodes and the actions); a flagged coordinate is confirmed when
             its z has the same sign again and |z| > z_2 = Phi^-1(1 - a / K), one-sided,
             Bonferroni over the K flagged coordinates

The estimator is called biased only when some flag is confirmed. The two samples are
independent, so an unbiased estimator is called biased with probability at most
a * a = alpha (--alpha, default 1%), while one unlucky sample alone (a 1-in-100 event that a
fixed seed can hit) is not enough. Exit status 0: unbiased within that tolerance; 1: biased;
2: bad input (a plug-in that does not load or returns unusable weights).

A preset whose baseline is a value function gets the exact V_t(s) of the MDP as its values, so
what is checked is the estimator with a perfect critic. A preset's normalize_advantages (a
per-batch rescaling of the step, which no longer estimates grad J) is turned off unless given
on the command line. The runs are seeded (--seed): the same command gives the same numbers.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from statistics import NormalDist

from pgrun import signals

SIZES = {"quick": 10_000, "default": 40_000, "thorough": 160_000}  # episodes per MDP
# Batches per MDP at least: the verdict's thresholds (about 3.5-4.5 standard errors) are normal
# quantiles; with M batches z is Student-t-like with M - 1 degrees of freedom, whose tail there
# is 8x the normal's at M = 25 and within 7 per cent of it from M = 1,000.
MIN_BATCHES = 1_000
MDPS = ((0, 4, 3, 6), (1, 5, 2, 8), (2, 3, 4, 5), (3, 6, 3, 10))  # (seed, S, A, T)
# the built-ins whose noise is shown beside the estimator's: name -> preset and knobs
COMPARE = {
    "vanilla": ("vanilla", []),
    "rtg": ("rtg", []),
    "rtg_baseline": ("rtg_baseline", []),
    "time_loo": ("rtg", ["variant.baseline=time_loo"]),
    "value_baseline": ("value_baseline", []),
}
COMPARE_BATCHES = 500  # batches for the built-ins' tr Cov (relative SE about 6-10%)


def z_crit(tests: int, alpha: float, sides: int = 2) -> float:
    """The normal quantile at level alpha / tests (Bonferroni), two-sided or one-sided."""
    return NormalDist().inv_cdf(1 - alpha / (sides * tests))


@dataclass
class Verdict:
    """What pgrun-check found on one MDP's sample."""

    z: object  # (D,) float64 per-coordinate z
    cosine: float
    rel_bias: float
    rel_noise: float  # sqrt(tr Cov / M) / ||grad J||, the noise floor of rel_bias
    tr_cov: float

    @property
    def max_z(self) -> float:
        return float(self.z.abs().max())

    @property
    def worst(self) -> int:  # the coordinate with the largest |z|
        return int(self.z.abs().argmax())


def judge(est, target) -> Verdict:
    """est: (M, D) float64 batch estimates; target: (D,) the exact gradient."""
    import torch

    M = est.shape[0]
    mean, std = est.mean(0), est.std(0)
    se = std / math.sqrt(M)
    diff = mean - target
    # a coordinate that never varies is exactly right or infinitely wrong
    inf = torch.where(diff.abs() > 1e-12, diff.sign() * math.inf, 0.0)
    z = torch.where(se > 0, diff / se.clamp(min=1e-300), inf)
    tr_cov = float(std.pow(2).sum())
    norm = float(target.norm())
    return Verdict(
        z=z,
        cosine=float(torch.nn.functional.cosine_similarity(mean, target, dim=0)),
        rel_bias=float(diff.norm()) / norm,
        rel_noise=math.sqrt(tr_cov / M) / norm,
        tr_cov=tr_cov,
    )


def estimator(what: str, overrides: list[str]):
    """(label, weights(batch, gamma, values) -> (N, T), notes) for a plug-in or a preset."""
    from pgrun.plugins import PluginError, is_plugin, load, plugin_weights

    if what.startswith("variant="):
        from omegaconf import OmegaConf

        from pgrun.config import VariantConfig, load_variant
        from pgrun.losses import batch_advantages

        name = what.split("=", 1)[1]
        variant = load_variant(name)
        notes = []
        given = {o.split("=", 1)[0].removeprefix("variant.") for o in overrides}
        dotlist = [o.removeprefix("variant.") for o in overrides]
        if variant.normalize_advantages and "normalize_advantages" not in given:
            dotlist.append("normalize_advantages=false")
            notes.append(
                f"{name}'s normalize_advantages is off here: a per-batch rescaling of the step, "
                "not an estimate of grad J (give variant.normalize_advantages=true to check it)"
            )
        if dotlist:
            try:
                node = OmegaConf.merge(
                    OmegaConf.structured(VariantConfig),
                    OmegaConf.structured(variant),
                    OmegaConf.from_dotlist(dotlist),
                )
                variant = OmegaConf.to_object(node)
            except Exception as exc:
                first = str(exc).strip().splitlines()[0]
                raise PluginError(f"{' '.join(overrides)}: {first}") from None
        if is_plugin(variant.weights):
            load(variant.weights)
        label = " ".join([what, *overrides])

        baseline = str(getattr(variant.baseline, "value", variant.baseline))
        uses_v = baseline == "value"

        def weights(batch, gamma, values):
            import torch

            boot = torch.zeros_like(batch.rew[:, 0])  # the time limit ends every episode
            return batch_advantages(
                batch,
                variant,
                gamma,
                discount_from_start=gamma != 1.0,
                values=values if uses_v else None,
                boot=boot if uses_v else None,
            )

        # each episode's weights from that episode alone: computed on all batches in one call
        weights.rowwise = (
            baseline in ("none", "value")
            and not variant.normalize_advantages
            and variant.weights in ("rtg", "total")
        )
        return label, weights, notes
    if overrides:
        raise PluginError(f"{' '.join(overrides)}: knobs go with variant=<preset>, not a plug-in")
    if not is_plugin(what):
        raise PluginError(
            f"{what!r}: give module:function (your weights) or variant=<preset> (a built-in)"
        )
    load(what, "")

    def weights(batch, gamma, values):  # masked and checked finite in batch_estimates
        return plugin_weights(what, batch, gamma, "", finite=False)

    weights.label = what
    return what, weights, []


@dataclass
class Case:
    """One MDP with its policy, exact quantities, episode pool and score table."""

    label: str
    dims: int
    pool: object  # Batch of M * N episodes
    exact: object  # pgrun.exact.Exact
    values: object  # (M * N, T) V_t(s_{i,t}) float32
    step_scores: object  # (M * N, T, D) float64 grad log pi(a_{i,t}|s_{i,t})
    seed: int  # of the episodes (env and actions)


def pool_seed(seed: int, sample: int) -> int:
    """The seed of the episodes of MDP `seed`'s sample 0 (screen) or 1 (confirm)."""
    return 10_000 * (sample + 1) + seed


def make_case(seed: int, states: int, actions: int, horizon: int, episodes: int, gamma: float,
              sample: int = 0) -> Case:  # fmt: skip
    import torch

    import pgrun
    from pgrun.exact import exact_gradient, make_tabular_env, random_mdp, tabular_policy

    mdp = random_mdp(seed, states, actions, horizon)
    policy = tabular_policy(mdp, seed)
    exact = exact_gradient(policy, mdp, gamma)
    at = pool_seed(seed, sample)
    env = make_tabular_env(mdp, episodes, seed=at)
    torch.manual_seed(at)  # the actions' draws
    pool = pgrun.collect_episodes(env, policy, seed=at)
    env.close()
    s = pool.obs.argmax(-1)  # (E, T) state index (0 on padding, masked)
    t = torch.arange(pool.rew.shape[1]).expand_as(s)
    values = exact.V[t, s].float() * pool.mask
    return Case(
        label=f"S={states} A={actions} T={horizon}",
        dims=exact.grad_J.numel(),
        pool=pool,
        exact=exact,
        values=values,
        step_scores=exact.scores[s, pool.act] * pool.mask[..., None].double(),
        seed=at,
    )


def batch_estimates(case: Case, weights, n: int, gamma: float, batches: int | None = None):
    """(M, D) float64: the estimate of each of M disjoint batches of n episodes.

    Each batch is the pool's episodes lo..lo+n-1, cut to its own longest episode, as
    pgrun.collect_episodes returns a batch. Weights marked `rowwise` (a preset whose weights
    of an episode depend on that episode only) are computed on all M batches at once."""
    import torch

    from pgrun.rollout import Batch

    pool = case.pool
    M = pool.num_episodes // n if batches is None else min(batches, pool.num_episodes // n)
    T = pool.rew.shape[1]
    if getattr(weights, "rowwise", False):  # the same weights as batch by batch, in one call
        with torch.no_grad():
            some = pool if M * n == pool.num_episodes else pool.rows(slice(0, M * n))
            w = weights(some, gamma, case.values[: M * n]).double()
        g = (w[..., None] * case.step_scores[: M * n]).sum(1)
        return g.reshape(M, n, -1).mean(1)
    lengths = pool.lengths[: M * n].reshape(M, n).max(1).values.tolist()
    # every field as (M, n, ...): batch m is a view; the per-step fields are cut to its length
    stepwise = {"obs", "act", "rew", "mask", "terminated", "truncated"}
    grouped = {
        f: getattr(pool, f)[: M * n].reshape(M, n, *getattr(pool, f).shape[1:])
        for f in Batch.__dataclass_fields__
    }
    values = case.values[: M * n].reshape(M, n, T)
    w_all = torch.zeros(M, n, T, dtype=torch.float64)
    with torch.no_grad():
        for m, L in enumerate(lengths):
            cut = {f: x[m, :, :L] if f in stepwise else x[m] for f, x in grouped.items()}
            w_all[m, :, :L] = weights(Batch(**cut), gamma, values[m, :, :L])
    valid = grouped["mask"] > 0
    bad = ~torch.isfinite(w_all) & valid
    if bad.any():
        from pgrun.plugins import PluginError

        m, i, t = (int(x) for x in bad.nonzero()[0])
        raise PluginError(
            f"{getattr(weights, 'label', 'the estimator')} returned "
            f"{w_all[m, i, t].item()} in batch {m} at episode {i}, step {t} "
            f"({int(bad.sum())} non-finite weights on valid steps)"
        )
    w_all = torch.where(valid, w_all, 0.0).reshape(M * n, T)
    g = (w_all[..., None] * case.step_scores[: M * n]).sum(1)  # (M n, D) per episode
    return g.reshape(M, n, -1).mean(1)


@dataclass
class Confirmation:
    """The retest of one flagged MDP on a fresh sample."""

    case: Case
    coordinate: int  # the flagged coordinate that came closest to (or past) confirmation
    first: float  # its z on the first sample
    again: float  # its z on the fresh sample
    confirmed: bool


def confirm(mdp, first: Verdict, flagged, weights, n: int, gamma: float, episodes: int,
            z2: float) -> Confirmation:  # fmt: skip
    """Retest MDP `mdp` = (seed, S, A, T) on a fresh sample of `episodes` episodes: is one of
    the coordinates `flagged` ((D,) bool) on the first sample off the same way again, by a
    one-sided z > z2?"""
    fresh = make_case(*mdp, episodes=episodes, gamma=gamma, sample=1)
    again = judge(batch_estimates(fresh, weights, n, gamma), fresh.exact.grad_J)
    same_sign = again.z * first.z.sign()  # > 0 where it is off the same way again
    j = int(same_sign.masked_fill(~flagged, -math.inf).argmax())
    return Confirmation(fresh, j, float(first.z[j]), float(again.z[j]), bool(same_sign[j] > z2))


def run(what: str, overrides: list[str], n: int, episodes: int, alpha: float, gamma: float,
        seed: int, out=None, compare: bool = True) -> bool:  # fmt: skip
    """Print the report (to `out`, default stdout); True when the estimator is judged unbiased.
    compare=False leaves out the built-ins' tr Cov columns."""
    import torch

    out = out or sys.stdout
    label, weights, notes = estimator(what, overrides)
    torch.set_num_threads(1)  # tiny tensors
    builtins = (
        {name: estimator(f"variant={p}", knobs)[1] for name, (p, knobs) in COMPARE.items()}
        if compare
        else {}
    )
    start = time.perf_counter()
    mdps = [(seed + s, S, A, T) for s, S, A, T in MDPS]
    cases = [make_case(*m, episodes=episodes, gamma=gamma) for m in mdps]
    tests = sum(c.dims for c in cases)
    a = math.sqrt(alpha)  # the level of each of the two samples
    z1 = z_crit(tests, a)
    M = episodes // n
    # a plug-in that raises or returns bad weights says so before the report begins
    batch_estimates(cases[0], weights, n, gamma, 1)
    print(
        f"pgrun-check {label}: the mean of its estimates against the exact grad J "
        f"(gamma={gamma:g}) of {len(cases)} random MDPs (stochastic transitions, "
        f"rewards of both signs, termination, a time limit) with a random linear softmax "
        f"policy; batches of N={n} episodes, {M:,} batches ({M * n:,} episodes) per MDP, "
        f"{len(cases) * M * n:,} episodes in all, and as many again for each MDP retested",
        file=out,
    )
    for note in notes:
        print(f"note: {note}", file=out)
    print(file=out)
    names = list(builtins)
    head = f"{'MDP':<14} {'cosine':>7} {'max|z|':>7} {'rel. bias':>12} {'tr Cov':>8}"
    if names:
        print(f"{'':<53}| tr Cov of the built-ins at N={n}", file=out)
        head += " | " + "  ".join(names)
    print(head, file=out)
    results = []
    for c in cases:
        v = judge(batch_estimates(c, weights, n, gamma), c.exact.grad_J)
        results.append(v)
        others = [
            judge(batch_estimates(c, fn, n, gamma, COMPARE_BATCHES), c.exact.grad_J).tr_cov
            for fn in builtins.values()
        ]
        flag = "  <- flagged" if v.max_z > z1 else ""
        bias = f"{100 * v.rel_bias:.1f}+-{100 * v.rel_noise:.1f}%"
        line = f"{c.label:<14} {v.cosine:>7.4f} {v.max_z:>7.2f} {bias:>12} {v.tr_cov:>8.4g}"
        if names:
            line += " | " + "  ".join(
                f"{x:>{len(name)}.4g}" for x, name in zip(others, names, strict=True)
            )
        print(line + flag, file=out)
    print(file=out)
    flags = [v.z.abs() > z1 for v in results]
    K = int(sum(int(f.sum()) for f in flags))
    z2 = z_crit(max(K, 1), a, sides=1)
    print(
        f"Screen: each |z| against {z1:.2f}, the two-sided level {a / tests:.2g} per "
        f"coordinate (Bonferroni over the {tests} coordinates of the {len(cases)} MDPs, "
        f"level {a:.2g} in all).",
        file=out,
    )
    confirmed = None
    if K:
        print(
            f"Confirm: each flagged MDP, strongest first, on {M * n:,} fresh episodes (new "
            f"seeds); a flagged coordinate is confirmed when it is off the same way again with "
            f"|z| > {z2:.2f} (one-sided level {a / K:.2g}, Bonferroni over the {K} flagged).",
            file=out,
        )
        order = sorted((i for i, f in enumerate(flags) if f.any()), key=lambda i: -results[i].max_z)
        for i in order:
            c = confirm(mdps[i], results[i], flags[i], weights, n, gamma, episodes, z2)
            print(
                f"  {cases[i].label}: coordinate {c.coordinate}, z = {c.first:.2f} on the first "
                f"sample, {c.again:.2f} on the fresh one (episode seed {c.case.seed}): "
                + ("confirmed" if c.confirmed else "not confirmed"),
                file=out,
            )
            if c.confirmed:
                confirmed = (i, c)
                break  # one confirmed flag decides the verdict
    print(
        f"An unbiased estimator is called biased with probability at most {a:.2g} x {a:.2g} "
        f"= {alpha:g} (two independent samples). {time.perf_counter() - start:.1f} s.",
        file=out,
    )
    if confirmed is None:
        why = f"every |z| <= {z1:.2f}" if not K else "no flag confirmed on a fresh sample"
        print(f"verdict: unbiased ({why})", file=out)
        return True
    i, c = confirmed
    v = results[i]
    flagged = sum(1 for f in flags if f.any())
    print(
        f"verdict: BIASED, flagged on {flagged} of {len(cases)} MDPs and confirmed on "
        f"{cases[i].label}: coordinate {c.coordinate} off by z = {c.first:.1f}, then "
        f"{c.again:.1f} on fresh episodes; relative bias {100 * v.rel_bias:.1f}% (noise floor "
        f"{100 * v.rel_noise:.1f}%)",
        file=out,
    )
    return False


@signals.interruptible("pgrun-check")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="pgrun-check",
        description="Check an estimator against the exact gradient of small random MDPs: "
        "exit 0 unbiased, 1 biased, 2 bad input.",
    )
    parser.add_argument(
        "estimator",
        nargs="?",
        help="module:function (your weights) or variant=<preset> (a built-in)",
    )
    parser.add_argument(
        "knobs",
        nargs="*",
        help="variant.<knob>=<value> overrides of a preset (e.g. variant.baseline=time_loo)",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help=f"{SIZES['quick']:,} episodes per MDP")
    size.add_argument(
        "--thorough", action="store_true", help=f"{SIZES['thorough']:,} episodes per MDP"
    )
    size.add_argument("--samples", type=int, help="episodes per MDP (default 40,000)")
    parser.add_argument("--episodes", "-N", type=int, default=2, help="N, episodes per batch")
    parser.add_argument("--alpha", type=float, default=0.01, help="family-wise false-alarm level")
    parser.add_argument("--gamma", type=float, default=1.0, help="discount of J_gamma")
    parser.add_argument("--seed", type=int, default=0, help="seeds the MDPs and the episodes")
    args = parser.parse_args(argv)
    if args.estimator is None:  # argparse would also call the optional knobs required
        parser.error("give the estimator: module:function (your weights) or variant=<preset>")
    episodes = (
        args.samples
        if args.samples is not None
        else SIZES["quick" if args.quick else "thorough" if args.thorough else "default"]
    )
    problems = [
        (args.episodes >= 1, f"--episodes {args.episodes}: use N >= 1"),
        (
            episodes >= MIN_BATCHES * max(args.episodes, 1),
            f"--samples {episodes}: use at least {MIN_BATCHES:,} batches of N, "
            f"{MIN_BATCHES * max(args.episodes, 1):,} episodes (with fewer, the z-scores' tails "
            "are heavier than the normal ones the verdict's levels assume)",
        ),
        (0 < args.alpha < 1, f"--alpha {args.alpha}: use a level in (0, 1)"),
        (0 < args.gamma <= 1, f"--gamma {args.gamma}: use a value in (0, 1]"),
        (args.seed >= 0, f"--seed {args.seed}: use an integer >= 0"),
    ]
    for ok, message in problems:
        if not ok:
            print(f"pgrun-check: error: {message}", file=sys.stderr)
            sys.exit(2)
    from pgrun.config import UserError

    try:
        unbiased = run(
            args.estimator, args.knobs, args.episodes, episodes, args.alpha, args.gamma, args.seed
        )
    except UserError as exc:
        print(f"pgrun-check: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    sys.exit(0 if unbiased else 1)


if __name__ == "__main__":
    main()
