"""The exact policy gradient of small random MDPs, by dynamic programming: the oracle that every
estimator is checked against (tests/test_exact_gradient.py, pgrun-check).

The MDP (random, from a seed): S one-hot states, A actions, stochastic transitions P(s'|s,a),
rewards R(s,a) of both signs plus zero-mean Gaussian noise, termination with probability
q(s,a) after each step (so episodes have different lengths) and a time limit T. For the linear
softmax policy of `make_policy(env, hidden_sizes=[])`, dynamic programming over (t, s) gives

    d_t(s)      = P(s_t = s, episode running at t),     d_0 = p0
    d_{t+1}(s') = sum_{s,a} d_t(s) pi(a|s) (1 - q(s,a)) P(s'|s,a)
    J_gamma     = sum_t gamma^t sum_s d_t(s) sum_a pi(a|s) R(s,a)
    Q_t(s,a)    = R(s,a) + gamma (1 - q(s,a)) sum_s' P(s'|s,a) V_{t+1}(s'),  V_t = sum_a pi Q_t,
                  V_T = 0

and grad J_gamma by autograd on that J_gamma. The per-time terms
g_t = sum_s d_t(s) sum_a grad pi(a|s) Q_t(s,a) (d and Q held fixed) give what each estimator
averages to: sum_t gamma^t g_t = grad J_gamma, sum_t g_t for the discounted reward-to-go
without the gamma^t factor, and sum_t (1 - E[1/n_t]) g_t for the plain time baseline, whose
b_t contains the episode's own reward-to-go (n_t = 1 + Binomial(N-1, p_t) counts the episodes
running at t, p_t = sum_s d_t(s)). The Fisher information of the episode's steps is

    F = sum_t sum_s d_t(s) sum_a pi(a|s) grad log pi(a|s) grad log pi(a|s)^T.

The environment is registered with gymnasium as pgrun/TabularMDP-v0 (a numpy VectorEnv stepping
the N copies; make_tabular_env), so every batch comes from
pgrun.collect_episodes like any other.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

TABULAR_ID = "pgrun/TabularMDP-v0"


@dataclass(frozen=True)
class TabularMDP:
    p0: np.ndarray  # (S,) initial state distribution
    P: np.ndarray  # (S, A, S) transition probabilities
    R: np.ndarray  # (S, A) expected reward
    q: np.ndarray  # (S, A) probability that the episode terminates after (s, a)
    horizon: int = 6  # T, the time limit
    reward_noise: float = 0.5  # std of the zero-mean Gaussian noise added to each reward

    @property
    def num_states(self) -> int:
        return self.R.shape[0]

    @property
    def num_actions(self) -> int:
        return self.R.shape[1]


def random_mdp(seed: int, states: int = 4, actions: int = 3, horizon: int = 6) -> TabularMDP:
    """A random MDP: Dirichlet(1) start and transitions, N(0, 1) rewards, termination
    probabilities uniform in [0.05, 0.35]."""
    rng = np.random.default_rng(seed)
    return TabularMDP(
        p0=rng.dirichlet(np.ones(states)),
        P=rng.dirichlet(np.ones(states), size=(states, actions)),
        R=rng.normal(0.0, 1.0, size=(states, actions)),
        q=rng.uniform(0.05, 0.35, size=(states, actions)),
        horizon=horizon,
    )


class TabularVectorEnv(gym.vector.VectorEnv):
    """N copies of a TabularMDP stepped together in numpy; observations are one-hot states.

    No autoreset: a copy whose episode has ended keeps moving (pgrun masks those steps)."""

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.DISABLED}

    def __init__(self, num_envs: int, mdp: TabularMDP, max_episode_steps: int | None = None):
        S, A = mdp.num_states, mdp.num_actions
        self.num_envs = num_envs
        self.mdp = mdp
        self.max_episode_steps = max_episode_steps or mdp.horizon
        self.single_observation_space = gym.spaces.Box(0.0, 1.0, (S,), np.float32)
        self.single_action_space = gym.spaces.Discrete(A)
        self.observation_space = gym.vector.utils.batch_space(
            self.single_observation_space, num_envs
        )
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self._cum_p0 = np.cumsum(mdp.p0)
        self._cum_P = np.cumsum(mdp.P, axis=-1)
        self._eye = np.eye(S, dtype=np.float32)
        self._rng = np.random.default_rng()

    def _obs(self) -> np.ndarray:
        return self._eye[self._s]

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        S = self.mdp.num_states
        u = self._rng.random(self.num_envs)
        self._s = np.minimum(np.searchsorted(self._cum_p0, u, side="right"), S - 1)
        self._t = 0
        return self._obs(), {}

    def step(self, actions):
        s, a, n = self._s, np.asarray(actions), self.num_envs
        rew = self.mdp.R[s, a] + self.mdp.reward_noise * self._rng.standard_normal(n)
        term = self._rng.random(n) < self.mdp.q[s, a]
        u = self._rng.random(n)[:, None]
        self._s = np.minimum((u > self._cum_P[s, a]).sum(-1), self.mdp.num_states - 1)
        self._t += 1
        trunc = np.full(n, self._t >= self.max_episode_steps) & ~term
        return self._obs(), rew.astype(np.float32), term, trunc, {}


if TABULAR_ID not in gym.registry:
    gym.register(TABULAR_ID, vector_entry_point=TabularVectorEnv)


def make_tabular_env(mdp: TabularMDP, num_envs: int, seed: int | None = None):
    """pgrun.make_env for `mdp`: N copies, time limit T = mdp.horizon (read by the rollout)."""
    from pgrun.envs import make_env

    return make_env(
        TABULAR_ID, num_envs=num_envs, seed=seed, mdp=mdp, max_episode_steps=mdp.horizon
    )


def tabular_policy(mdp: TabularMDP, seed: int, scale: float = 0.7) -> torch.nn.Module:
    """make_policy's linear softmax policy for `mdp`, with N(0, scale^2) (non-uniform) weights."""
    from pgrun.policies import make_policy

    env = make_tabular_env(mdp, 1)
    policy = make_policy(env, hidden_sizes=[])
    env.close()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return policy


@dataclass
class Exact:
    """The exact quantities of one (MDP, policy, gamma), float64."""

    J: float  # J_gamma(theta)
    grad_J: torch.Tensor  # (D,) autograd on the DP value of J_gamma
    g_t: torch.Tensor  # (T, D) per-time terms sum_s d_t(s) sum_a grad pi(a|s) Q_t(s,a)
    p_t: torch.Tensor  # (T,) P(episode running at t)
    d_t: torch.Tensor  # (T, S) P(s_t = s, running at t)
    V: torch.Tensor  # (T + 1, S) V_t(s), V_T = 0
    pi: torch.Tensor  # (S, A) the policy's probabilities
    scores: torch.Tensor  # (S, A, D) grad log pi(a|s)
    fisher: torch.Tensor  # (D, D) sum_t sum_s d_t(s) sum_a pi grad log pi grad log pi^T

    def time_baseline_mean(self, n: int) -> torch.Tensor:
        """Expectation of the plain time-baseline estimate with batches of n episodes:
        sum_t (1 - E[1/(1 + Bin(n-1, p_t))]) g_t, E[1/(1+Bin(m,p))] = (1 - (1-p)^(m+1)) / ((m+1) p)."""
        p = self.p_t
        inv_count = (1 - (1 - p) ** n) / (n * p)
        return ((1 - inv_count)[:, None] * self.g_t).sum(0)

    def natural_gradient(self) -> torch.Tensor:
        """(D,) F^+ grad J: the pseudo-inverse, as the softmax's logits are shift-invariant
        (F is singular; grad J lies in its range)."""
        return torch.linalg.pinv(self.fisher, hermitian=True) @ self.grad_J


def exact_gradient(policy: torch.nn.Module, mdp: TabularMDP, gamma: float = 1.0) -> Exact:
    """DP over (t, s) in float64 for the linear softmax policy `policy` (left unchanged)."""
    S, A, T = mdp.num_states, mdp.num_actions, mdp.horizon
    twin = copy.deepcopy(policy).double()
    params = list(twin.parameters())

    def grad(y: torch.Tensor) -> torch.Tensor:
        gs = torch.autograd.grad(y, params, retain_graph=True, allow_unused=True)
        return torch.cat(
            [
                (torch.zeros_like(p) if g is None else g).reshape(-1)
                for p, g in zip(params, gs, strict=True)
            ]
        )

    pi = twin(torch.eye(S, dtype=torch.float64)).probs  # (S, A)
    p0, P, R, q = (torch.as_tensor(x, dtype=torch.float64) for x in (mdp.p0, mdp.P, mdp.R, mdp.q))
    go = (1 - q)[..., None] * P  # (S, A, S): continue and move to s'

    d = [p0]
    for _ in range(T - 1):
        d.append(torch.einsum("s,sa,sat->t", d[-1], pi, go))
    J = sum(gamma**t * (d[t] @ (pi * R).sum(1)) for t in range(T))
    grad_J = grad(J)

    V = [torch.zeros(S, dtype=torch.float64)]
    Q = [None] * T
    for t in reversed(range(T)):
        Q[t] = R + gamma * go @ V[0]
        V.insert(0, (pi * Q[t]).sum(1))
    g_t = torch.stack([grad((d[t].detach()[:, None] * pi * Q[t].detach()).sum()) for t in range(T)])

    logpi = pi.log()
    scores = torch.stack([torch.stack([grad(logpi[s, a]) for a in range(A)]) for s in range(S)])
    d_t = torch.stack([x.detach() for x in d])  # (T, S)
    visits = d_t.sum(0)  # (S,) expected steps in s per episode
    pi = pi.detach()
    weight = visits[:, None] * pi  # (S, A)
    fisher = torch.einsum("sa,sai,saj->ij", weight, scores, scores)
    return Exact(
        J=float(J.detach()),
        grad_J=grad_J,
        g_t=g_t,
        p_t=d_t.sum(1),
        d_t=d_t,
        V=torch.stack([v.detach() for v in V]),
        pi=pi,
        scores=scores,
        fisher=fisher,
    )
