"""Every estimator against the exact gradient of a small finite MDP.

The oracle is pgrun.exact: a random MDP (S = 4 one-hot states, A = 3 actions, stochastic
transitions, rewards of both signs plus noise, termination, time limit T = 6), J and grad J by
dynamic programming for the linear softmax policy, the per-time terms g_t and what the plain
time baseline averages to (see its docstring). Every batch comes from pgrun.collect_episodes on
the registered tabular env, and every estimate is -grad of pgrun.surrogate_loss(...) after
.backward().

Tolerance. An estimate is averaged over M independent batches; for each coordinate j,
SE_j = sample std_j / sqrt(M). A comparison passes when |mean_j - expected_j| <= Z * SE_j for
all D coordinates, with Z the two-sided normal quantile at family-wise error ALPHA = 1e-3
(Bonferroni over the D coordinates of one comparison): a correct estimator fails one comparison
with probability <= 1e-3, and the whole file's ~12 comparisons with probability <= ~1.2%. The
seeds are fixed, so the outcome is reproducible.
"""

from __future__ import annotations

from statistics import NormalDist

import gymnasium as gym
import numpy as np
import pytest
import torch

import pgrun
from pgrun.config import load_variant
from pgrun.diagnostics import Diagnostics
from pgrun.exact import exact_gradient, make_tabular_env, random_mdp, tabular_policy
from pgrun.losses import batch_advantages
from pgrun.rollout import Batch
from pgrun.update_rules import GradientStep, RatioEpochs

ALPHA = 1e-3  # family-wise error rate of one comparison (Bonferroni over its coordinates)
BANDIT_ID = "pgrun-test/QuadraticBandit-v0"
T = 6  # the MDP's time limit


def z_crit(dim: int, alpha: float = ALPHA) -> float:
    """Two-sided normal quantile with Bonferroni over `dim` coordinates."""
    return NormalDist().inv_cdf(1 - alpha / (2 * dim))


# ------------------------------------------------------------------ a Gaussian test env


class QuadraticBanditVectorEnv(gym.vector.VectorEnv):
    """One step: observation [1], a 2-d action a, reward -||a - c||^2, then the episode ends."""

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.DISABLED}

    def __init__(self, num_envs: int, c=(0.5, -1.0), max_episode_steps: int = 1):
        self.num_envs = num_envs
        self.c = np.asarray(c, dtype=np.float64)
        self.single_observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
        self.single_action_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.observation_space = gym.vector.utils.batch_space(
            self.single_observation_space, num_envs
        )
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)

    def reset(self, *, seed=None, options=None):
        return np.ones((self.num_envs, 1), np.float32), {}

    def step(self, actions):
        rew = -((np.asarray(actions, np.float64) - self.c) ** 2).sum(-1)
        done = np.ones(self.num_envs, bool)
        return np.ones((self.num_envs, 1), np.float32), rew.astype(np.float32), done, ~done, {}


if BANDIT_ID not in gym.registry:
    gym.register(BANDIT_ID, vector_entry_point=QuadraticBanditVectorEnv, max_episode_steps=1)


# ---------------------------------------------------------------------------- estimates


def sub_batch(batch: Batch, lo: int, hi: int) -> Batch:
    """Episodes lo..hi-1 of `batch` (padding after an episode's end is masked, so harmless)."""
    return batch.rows(slice(lo, hi))


def packed(batch: Batch, per_row: int) -> Batch:
    """The episodes of a one-per-row batch laid out `per_row` to a row, back to back (episode
    2i then 2i + 1 for per_row = 2), padded: a batch whose rows hold several episodes, each
    with its own terminated / truncated flag on its last step."""
    lengths = batch.lengths.tolist()
    groups = [range(i, min(i + per_row, len(lengths))) for i in range(0, len(lengths), per_row)]
    width = max(sum(lengths[i] for i in g) for g in groups)

    def row(x: torch.Tensor, g) -> torch.Tensor:
        parts = [x[i, : lengths[i]] for i in g]
        used = sum(lengths[i] for i in g)
        pad = torch.zeros((width - used, *x.shape[2:]), dtype=x.dtype)
        return torch.cat([*parts, pad])

    fields = ("obs", "act", "rew", "mask", "terminated", "truncated")
    out = {f: torch.stack([row(getattr(batch, f), g) for g in groups]) for f in fields}
    return Batch(**out, final_obs=batch.final_obs, start=torch.zeros(len(groups)).long())


def flat_grad(policy: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in policy.parameters()])


def collect(env, policy, seed: int) -> Batch:
    """Independent episodes, one per copy of `env`, from one pgrun.collect_episodes call."""
    torch.manual_seed(seed)
    return pgrun.collect_episodes(env, policy, seed=seed)


def estimates(
    policy,
    pool: Batch,
    n: int,
    variant,
    gamma=1.0,
    discount_from_start=False,
    off_policy=False,
    per_row=1,
) -> torch.Tensor:
    """(M, D) float64: -grad of pgrun.surrogate_loss on M = len(pool) // n disjoint batches of n.

    off_policy: the loss uses the ratios against the collecting policy's log-probs, as the first
    inner step of the off-policy loop does. per_row > 1: each batch's episodes are packed that
    many to a row (see `packed`); the loss divides by the rows, so the estimate is rescaled by
    rows / episodes to the per-episode scale."""
    if isinstance(variant, str):
        variant = load_variant(variant)  # read the preset once, not once per batch
    params = list(policy.parameters())
    out = []
    for lo in range(0, pool.num_episodes - n + 1, n):
        batch = sub_batch(pool, lo, lo + n)
        if per_row > 1:
            batch = packed(batch, per_row)
        logp_old = None
        if off_policy:
            with torch.no_grad():
                logp_old = policy(batch.obs).log_prob(batch.act)
        for p in params:
            p.grad = None
        loss = pgrun.surrogate_loss(
            policy,
            batch,
            variant,
            gamma,
            discount_from_start=discount_from_start,
            logp_old=logp_old,
        )
        loss.backward()
        scale = batch.num_episodes / n
        out.append(-torch.cat([p.grad.reshape(-1) for p in params]).double() * scale)
    return torch.stack(out)


def z_scores(est: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """(D,) (mean - expected) / SE per coordinate."""
    se = est.std(0) / est.shape[0] ** 0.5
    assert (se > 0).all(), "every coordinate must vary for the SE to make sense"
    return (est.mean(0) - expected) / se


def assert_matches(est: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    z = z_scores(est, expected)
    zc = z_crit(len(z))
    assert z.abs().max() <= zc, f"{what}: max |z| = {z.abs().max():.2f} > {zc:.2f}; z = {z}"


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a, b, dim=0).item()


TIME = {"weights": "rtg", "baseline": "time"}
TIME_LOO = {"weights": "rtg", "baseline": "time_loo"}
RTG = {"weights": "rtg", "baseline": "none"}


# ------------------------------------------------------------------------------- the tests

M = 1500  # independent batches per comparison
N = 8  # episodes per batch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one torch thread is fastest, and much faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup():
    """The MDP, a random linear softmax policy, its exact gradient (gamma = 1), and a pool of
    M * N independent episodes that the tests split into batches."""
    mdp = random_mdp(0)
    policy = tabular_policy(mdp, 0)
    exact = exact_gradient(policy, mdp)
    pool = collect(make_tabular_env(mdp, M * N, seed=1), policy, seed=1)
    return mdp, policy, exact, pool


def test_public_api_as_written():
    """The calls of the README on CartPole, and -grad equal to the notes' literal reading: one
    backward pass per (i, t) of log pi(a_{i,t}|s_{i,t}) times its weight, summed, over N."""
    torch.manual_seed(0)
    env = pgrun.make_env("CartPole-v1", num_envs=3, seed=0)
    policy = pgrun.make_policy(env, hidden_sizes=[64, 64])
    batch = pgrun.collect_episodes(env, policy, horizon=30, seed=0)
    loss = pgrun.surrogate_loss(policy, batch, variant="rtg_baseline", gamma=1.0)
    loss.backward()
    estimate = -flat_grad(policy)

    adv = batch_advantages(batch, "rtg_baseline")
    literal = torch.zeros_like(estimate)
    for i in range(batch.num_episodes):
        for t in range(int(batch.lengths[i])):
            policy.zero_grad()
            policy(batch.obs[i, t]).log_prob(batch.act[i, t]).backward()
            literal += flat_grad(policy) * adv[i, t]
    torch.testing.assert_close(estimate, literal / batch.num_episodes, rtol=1e-4, atol=1e-5)
    assert batch.lengths.unique().numel() > 1  # episodes of different lengths, masked


def test_reference_is_consistent(setup):
    """The DP reference itself: sum_t g_t = grad J (policy-gradient theorem, exact), and the mean
    return of the collected episodes matches J within the Bonferroni z of one coordinate."""
    mdp, policy, exact, pool = setup
    torch.testing.assert_close(exact.g_t.sum(0), exact.grad_J, rtol=1e-10, atol=1e-12)
    ret = pool.returns.double()
    z = (ret.mean() - exact.J) / (ret.std() / len(ret) ** 0.5)
    assert abs(z) <= z_crit(1), f"mean return {ret.mean():.4f} vs exact J {exact.J:.4f}"
    assert 1 < pool.lengths.float().mean() < T, "episodes should end at different times"
    assert pool.terminated.any() and pool.truncated.any()


@pytest.mark.parametrize(
    "variant, expectation",
    [
        ("vanilla", "grad_J"),
        ("rtg", "grad_J"),
        (TIME_LOO, "grad_J"),
        ("rtg_baseline", "time_baseline"),
        ("off_policy", "time_baseline"),
    ],
    ids=["vanilla", "rtg", "time_loo", "rtg_baseline", "off_policy"],
)
def test_estimator_mean_matches_exact_gradient(setup, variant, expectation):
    """Batches of N = 8: the mean of M = 1500 estimates matches its exact expectation in every
    coordinate (grad J for the unbiased variants; sum_t (1 - E[1/n_t]) g_t for the plain time
    baseline, see the next test) and points along grad J (cosine >= 0.99). off_policy is its
    first inner step: ratios against the collecting policy, whose gradient is rtg_baseline's."""
    mdp, policy, exact, pool = setup
    est = estimates(policy, pool, N, variant, off_policy=variant == "off_policy")
    assert est.shape[0] == M
    expected = exact.grad_J if expectation == "grad_J" else exact.time_baseline_mean(N)
    assert_matches(est, expected, f"{variant} N={N}")
    assert cosine(est.mean(0), exact.grad_J) >= 0.99


@pytest.mark.parametrize(
    "variant, expectation",
    [("vanilla", "grad_J"), (TIME_LOO, "grad_J"), ("rtg_baseline", "time_baseline")],
    ids=["vanilla", "time_loo", "rtg_baseline"],
)
def test_rows_with_several_episodes_estimate_the_same_gradient(setup, variant, expectation):
    """The same batches of N = 8 episodes packed two to a row (4 rows, per-step boundaries):
    each estimate equals the one-per-row estimate of the same episodes (the time baselines
    are taken at the time within each episode), and their mean matches the exact expectation."""
    mdp, policy, exact, pool = setup
    est = estimates(policy, pool, N, variant, per_row=2)
    one_per_row = estimates(policy, sub_batch(pool, 0, 20 * N), N, variant)
    torch.testing.assert_close(est[:20], one_per_row, rtol=1e-4, atol=1e-6)
    expected = exact.grad_J if expectation == "grad_J" else exact.time_baseline_mean(N)
    assert_matches(est, expected, f"{variant} N={N}, two episodes per row")
    assert cosine(est.mean(0), exact.grad_J) >= 0.99


def test_time_baseline_bias_shrinks_with_n(setup):
    """The plain time baseline scales the step-t term by 1 - E[1/n_t], about 1 - 1/N. At N = 2
    the mean estimate is detectably off grad J and on its predicted biased value; at N = 16
    the measured bias is on the predicted value and over 4 times smaller (predicted: about 6;
    the threshold leaves room for the noise of 750 batches). The leave-one-out baseline on the
    same N = 2 batches is unbiased."""
    mdp, policy, exact, pool = setup
    pool2 = sub_batch(pool, 0, 2 * M)
    est2 = estimates(policy, pool2, 2, "rtg_baseline")
    est16 = estimates(policy, pool, 16, "rtg_baseline")
    assert_matches(est2, exact.time_baseline_mean(2), "time baseline N=2 vs its prediction")
    assert_matches(est16, exact.time_baseline_mean(16), "time baseline N=16 vs its prediction")
    assert z_scores(est2, exact.grad_J).abs().max() > z_crit(len(exact.grad_J)), (
        "the O(1/N) bias at N=2 should be detectable"
    )
    bias2 = (est2.mean(0) - exact.grad_J).norm()
    bias16 = (est16.mean(0) - exact.grad_J).norm()
    predicted2 = (exact.time_baseline_mean(2) - exact.grad_J).norm()
    predicted16 = (exact.time_baseline_mean(16) - exact.grad_J).norm()
    assert predicted2 / predicted16 > 5
    assert bias2 / bias16 > 4, f"bias N=2 {bias2:.4f}, N=16 {bias16:.4f}"

    loo2 = estimates(policy, pool2, 2, TIME_LOO)
    assert_matches(loo2, exact.grad_J, "time_loo N=2")
    assert cosine(loo2.mean(0), exact.grad_J) >= 0.99


def test_discounting_which_gradient(setup):
    """gamma = 0.7. Reward-to-go weights times gamma^t (discount_from_start) estimate
    grad J_gamma, J_gamma = E[sum_t gamma^t r_t]. The usual discounted reward-to-go estimates
    sum_t g_t instead: a different vector (checked exactly), and the estimates tell them apart."""
    mdp, policy, _, pool = setup
    gamma = 0.7
    exact = exact_gradient(policy, mdp, gamma)
    usual = exact.g_t.sum(0)
    assert (usual - exact.grad_J).norm() > 0.2 * exact.grad_J.norm()

    with_t = estimates(policy, pool, N, RTG, gamma, discount_from_start=True)
    without = estimates(policy, pool, N, RTG, gamma, discount_from_start=False)
    assert_matches(with_t, exact.grad_J, "rtg, discount_from_start")
    assert cosine(with_t.mean(0), exact.grad_J) >= 0.99
    assert_matches(without, usual, "usual discounted rtg vs sum_t g_t")
    assert z_scores(without, exact.grad_J).abs().max() > z_crit(len(usual)), (
        "the usual discounted rtg should be told apart from grad J_gamma"
    )
    loo = estimates(policy, pool, N, TIME_LOO, gamma, discount_from_start=True)
    assert_matches(loo, exact.grad_J, "time_loo, discount_from_start")


class RecordingSGD(torch.optim.SGD):
    """SGD that keeps a copy of the gradient at every step."""

    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.grads: list[torch.Tensor] = []

    def step(self, closure=None):
        params = [p for group in self.param_groups for p in group["params"]]
        self.grads.append(torch.cat([p.grad.reshape(-1).clone() for p in params]))
        return super().step(closure)


def test_off_policy_inner_steps(setup):
    """Through the update rules: K = 1 (GradientStep) takes the rtg_baseline step; K = 4 takes the same
    first step with ratios exactly 1 (not logged), and the later steps' ratios move."""
    mdp, policy, _, pool = setup
    batch = sub_batch(pool, 0, 16)
    policy.zero_grad()
    pgrun.surrogate_loss(policy, batch, "rtg_baseline").backward()
    rtg_baseline_grad = flat_grad(policy).clone()
    adv = batch_advantages(batch, "off_policy")

    for k in (1, 4):
        p = tabular_policy(mdp, 0)
        opt = RecordingSGD(p.parameters(), lr=0.5)
        rule = GradientStep() if k == 1 else RatioEpochs(k)
        stats = rule.step(p, opt, batch, adv, hooks=[Diagnostics(ratios=True)])
        assert len(opt.grads) == k
        torch.testing.assert_close(opt.grads[0], rtg_baseline_grad)
    # step 0's ratios are exactly 1, so its tags are left out (inner_step_tags)
    assert not any(tag.endswith("/k0") for tag in stats)
    for k in (1, 2, 3):
        assert stats[f"inner/ratio_max/k{k}"] > 1.0 > stats[f"inner/ratio_min/k{k}"]
        assert stats[f"inner/approx_kl/k{k}"] > 0.0
    assert not torch.allclose(opt.grads[1], opt.grads[0])


def test_gaussian_quadratic_closed_form():
    """pi(a) = N(mu, diag(sigma^2)) with mu = W*1 + b, reward -||a - c||^2, one step:
    J = -sum_d (mu_d - c_d)^2 + sigma_d^2, so dJ/dW_d = dJ/db_d = -2 (mu_d - c_d) and
    dJ/dlog_std_d = -2 sigma_d^2. rtg and time_loo estimate it; the time baseline estimates
    exactly (1 - 1/N) times it (all N episodes run at t = 0)."""
    c = torch.tensor([0.5, -1.0], dtype=torch.float64)
    env = pgrun.make_env(BANDIT_ID, num_envs=1)
    policy = pgrun.make_policy(env, hidden_sizes=[])
    with torch.no_grad():
        policy.net[0].weight.copy_(torch.tensor([[0.4], [0.3]]))
        policy.net[0].bias.copy_(torch.tensor([-0.2, 0.1]))
        policy.log_std.copy_(torch.tensor([-0.3, 0.2]))
    mu = (policy.net[0].weight[:, 0] + policy.net[0].bias).detach().double()
    sigma2 = policy.log_std.detach().double().exp() ** 2
    by_name = {"net.0.weight": -2 * (mu - c), "net.0.bias": -2 * (mu - c), "log_std": -2 * sigma2}
    exact = torch.cat([by_name[name] for name, _ in policy.named_parameters()])

    pool = collect(pgrun.make_env(BANDIT_ID, num_envs=M * N, seed=3), policy, seed=3)
    for variant, scale in (("rtg", 1.0), (TIME_LOO, 1.0), ("rtg_baseline", 1 - 1 / N)):
        est = estimates(policy, pool, N, variant)
        assert_matches(est, scale * exact, f"gaussian {variant}")
        assert cosine(est.mean(0), exact) >= 0.99


def test_natural_gradient_direction(setup):
    """The expected NPG direction is F^-1 grad J. F (pgrun.exact) is singular (the softmax's
    logits are shift-invariant), so the direction is d* = F^+ grad J, and F d* = grad J exactly.
    Per batch, the estimate g and the Fisher-vector product of pgrun.natural at d* (rescaled
    from the mean over steps to the sum over steps per episode, F_ep = F_mean * sum m / N) are
    both unbiased, so u = g - F_ep d* has mean grad J - F d* = 0 in every coordinate: d* is the
    solution of the expected system F x = E g. The test's own power: the plain gradient
    direction grad J in place of d* is rejected. On the whole pool, conjugate gradient gives a
    direction along d* (cosine >= 0.99)."""
    from pgrun.natural import conjugate_gradient, fisher_vector_product, flat_grad, mean_kl

    mdp, policy, exact, pool = setup
    d_star = exact.natural_gradient()
    torch.testing.assert_close(exact.fisher @ d_star, exact.grad_J, rtol=1e-8, atol=1e-10)
    params = list(policy.parameters())

    def terms(batch: Batch):
        dist = policy(batch.obs)
        with torch.no_grad():
            old = policy(batch.obs)
        adv = batch_advantages(batch, TIME_LOO)
        loss = pgrun.pg_loss(dist.log_prob(batch.act), adv, batch.mask)
        g = -flat_grad(loss, params, retain_graph=True)
        fvp = fisher_vector_product(mean_kl(old, dist, batch.mask), params)
        return g, fvp, batch.mask.sum() / batch.num_episodes

    u, u_plain = [], []
    for lo in range(0, pool.num_episodes, N):
        g, fvp, steps_per_episode = terms(sub_batch(pool, lo, lo + N))
        u.append((g - fvp(d_star.float()) * steps_per_episode).double())
        u_plain.append((g - fvp(exact.grad_J.float()) * steps_per_episode).double())
    u, u_plain = torch.stack(u), torch.stack(u_plain)
    zero = torch.zeros_like(d_star)
    assert_matches(u, zero, "g - F d* (NPG direction)")
    assert z_scores(u_plain, zero).abs().max() > z_crit(len(zero)), "grad J is not F^-1 grad J"

    g, fvp, _ = terms(pool)
    x = conjugate_gradient(fvp, g, iters=10)  # TRPO's usual count (F has rank 8 here)
    assert cosine(x.double(), d_star) >= 0.99
