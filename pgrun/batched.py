"""Many seeds in one process: K runs that differ only in `seed`, trained as one computation.

`hydra/launcher=batched` (pgrun.batched_launcher) hands a group of such runs to `train_group`.
Each seed keeps its own run: its TrainState built by pgrun.trainer.build (the same initial
weights, envs, collector, learner, RNG streams and files as when it runs alone), its loggers,
checkpoints and policy.pt. What is shared is the arithmetic:

- the K policies (and V) as stacked weights, a Linear layer's (out, in) weight of seed k
  held as W[k] = weight.T in W (K, in, out), its bias as b (K, 1, out), and one forward
  torch.baddbmm(b, x, W) on x (K, B, in) for all seeds;
- one draw per env step for all K x N copies (each seed's noise from its own generator,
  seeded as its single run seeds torch's), the K vector envs stepped together;
- one backward and one Adam step over the stacked tensors (`StackedAdam`: Adam is
  element-wise, so it is K independent Adams; each seed has its own step count and learning
  rate, and a seed that takes no step keeps its parameters and moments as they are);
- what is not element-wise is per seed: the gradient-norm clipping (the norm of each seed's
  slice), the KL stop of the ratio epochs, stop_return and total_steps.

The estimators run per seed on the seed's own batch (pgrun.learner, bit for bit the single
run's), and each seed's loss is its own mean: the loss minimised is the sum over seeds, so
each seed's gradient is its own. The diagnostics and the evaluation read each seed's own
policy module, which holds the seed's slice of the stacked weights after every update.

A stacked matmul does not always add in the order of the single one (the sums of a small
layer can differ in the last bit), so a seed in a group follows its single run to float
rounding, not bit for bit (docs/batched.md, tests/test_batched.py).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, Normal

from pgrun import checkpoint, guards, signals
from pgrun.cartpole import fast_step
from pgrun.collectors import EpisodeCollector, Episodes, StepCollector
from pgrun.config import Interrupted, yaml_text
from pgrun.diagnostics import Diagnostics
from pgrun.draw import Draw, NumpyDraw, mlp_layers
from pgrun.draw import noise as draw_noise
from pgrun.logger import FINAL_METRIC, Loggers, make_loggers
from pgrun.losses import clip_fraction, policy_loss, ratio_stats, value_loss
from pgrun.optim import Adam
from pgrun.policies import CategoricalPolicy, GaussianPolicy
from pgrun.rollout import Batch, _running_copies_step, episodes_batch
from pgrun.rundir import display
from pgrun.seeding import ACTIONS, MINIBATCHES, RESETS, VALUE_MINIBATCHES, derive_seed
from pgrun.state import TrainState
from pgrun.update_rules import _select, rule_name

log = logging.getLogger(__name__)


class NotBatchable(Exception):  # noqa: N818
    """The group's spaces cannot be stacked: its jobs run one after the other (the reason)."""


def space_blocker(env: gym.vector.VectorEnv) -> str | None:
    """Why the spaces of `env` cannot be stacked (None when they can)."""
    obs, act = env.single_observation_space, env.single_action_space
    if not (
        isinstance(obs, gym.spaces.Box)
        and len(obs.shape) == 1
        and np.issubdtype(obs.dtype, np.floating)
    ):
        return f"observations {obs} (a group takes a 1-D float Box)"
    if isinstance(act, gym.spaces.Discrete):
        return None
    if isinstance(act, gym.spaces.Box) and len(act.shape) == 1:
        return None
    return f"actions {act} (a group takes Discrete or 1-D Box actions)"


# ------------------------------------------------------------------------- stacked weights


def _to_stacked(p: torch.Tensor) -> torch.Tensor:
    """One seed's parameter in the stacked layout: a Linear weight (out, in) -> (in, out), a
    vector (n,) -> (1, n)."""
    return p.detach().T if p.dim() == 2 else p.detach()[None]


class Stacked:
    """The parameters of K modules of one architecture (their `parameters()` order), as K-leading
    leaf tensors: params[j] (K, ...) stacks _to_stacked of parameter j of each module."""

    def __init__(self, modules: Sequence[nn.Module]):
        self.modules = list(modules)
        self.K = len(self.modules)
        self.names = [n for n, _ in self.modules[0].named_parameters()]
        self.dims = [p.dim() for p in self.modules[0].parameters()]
        if all(m is self.modules[0] for m in self.modules):  # K copies of one module
            per_param = [[_to_stacked(p)] * self.K for p in self.modules[0].parameters()]
        else:
            per_param = [
                [_to_stacked(p) for p in ps]
                for ps in zip(*(m.parameters() for m in self.modules), strict=True)
            ]
        self.params = [torch.stack(ps).contiguous().requires_grad_() for ps in per_param]
        self.by_name = dict(zip(self.names, self.params, strict=True))

    def single(self, j: int, k: int) -> torch.Tensor:
        """Parameter j of seed k in its module's layout (a view)."""
        x = self.params[j][k]
        return x.T if self.dims[j] == 2 else x[0]

    @torch.no_grad()
    def write_back(self, seeds: Sequence[int] | None = None) -> None:
        """Copy each seed's slice (of `seeds`, all by default) into its own module (what
        policy.pt and checkpoints save)."""
        for k in range(self.K) if seeds is None else seeds:
            for j, p in enumerate(self.modules[k].parameters()):
                p.copy_(self.single(j, k))

    def mlp(self, net: nn.Sequential, prefix: str, x: torch.Tensor) -> torch.Tensor:
        """The stacked forward of `net` (each seed's copy) on x (K, B, in) -> (K, B, out)."""
        for i, layer in enumerate(net):
            if isinstance(layer, nn.Linear):
                w, b = self.by_name[f"{prefix}{i}.weight"], self.by_name[f"{prefix}{i}.bias"]
                x = torch.baddbmm(b, x, w)
            else:
                x = layer(x)
        return x


class StackedPolicy(Stacked):
    """K Categorical or Gaussian MLP policies (pgrun.policies) as one: obs (K, *lead, obs_dim)
    -> a Distribution with batch shape (K, *lead)."""

    def __init__(self, policies: Sequence[nn.Module]):
        super().__init__(policies)
        first = self.modules[0]
        self.gaussian = isinstance(first, GaussianPolicy)
        if not (self.gaussian or isinstance(first, CategoricalPolicy)):
            raise TypeError(f"cannot stack {type(first).__name__}")
        self.net = first.net

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """obs (K, *lead, d) -> (K, *lead, out)."""
        lead = obs.shape[1:-1]
        x = obs.reshape(self.K, -1, obs.shape[-1])
        x = x if x.is_floating_point() else x.to(torch.float32)
        out = self.mlp(self.net, "net.", x)
        return out.reshape(self.K, *lead, out.shape[-1])

    def _std(self, lead: int) -> torch.Tensor:
        """exp(log_std) (K, 1, ..., d) with `lead` ones: broadcast against (K, *lead, d)."""
        std = self.by_name["log_std"].exp()  # (K, 1, d)
        return std.reshape(self.K, *([1] * lead), std.shape[-1])

    def __call__(self, obs: torch.Tensor) -> Distribution:
        """The K seeds' distributions, without torch's argument checks: they cost as much as
        the log-probabilities on a whole batch, and every step checks each seed's loss,
        gradient and parameters for finiteness instead (a seed that fails stops alone, where a
        check of the stacked logits would stop them all)."""
        out = self.features(obs)
        if not self.gaussian:
            return Categorical(logits=out, validate_args=False)
        std = self._std(out.dim() - 2)
        return Independent(Normal(out, std, validate_args=False), 1, validate_args=False)

    def act(self, obs: torch.Tensor, noise: list[torch.Generator | None]) -> torch.Tensor:
        """The rollout's draw of every seed, obs (K, N, d) -> (K, N) int64 or (K, N, d): each
        seed's noise drawn from its generator as its single policy's `act` draws it from torch's
        (one uniform per row for the inverse CDF; N(0, I) per action dimension). A None
        generator (a seed that takes no step) draws nothing and gets zeros."""
        out = self.features(obs)
        K, N = out.shape[:2]
        if self.gaussian:
            eps = torch.zeros_like(out)
            for k, g in enumerate(noise):
                if g is not None:
                    eps[k].normal_(generator=g)
            return torch.addcmul(out, self._std(1), eps)
        cdf = out.softmax(-1).cumsum(-1)[..., :-1]
        u = torch.ones(K, N, 1)
        for k, g in enumerate(noise):
            if g is not None:
                u[k].uniform_(generator=g)
        return (cdf <= u).sum(-1)

    def batch_draw(self, T: int, N: int, noise: list[torch.Generator | None]) -> Draw:
        """The draws of a batch of at most T steps, obs (K, N, d) -> (K, N) or (K, N, d): in
        numpy where pgrun.draw has the policy's layers, each seed's noise drawn at the batch's
        start from its generator as its single run draws it from torch's (a seed's draws are
        then bit for bit its single run's); else `act` once per step."""
        mlp = mlp_layers(self.net)
        if mlp is None:
            return lambda obs, t: self.act(torch.from_numpy(obs), noise).numpy()
        at = {id(layer): i for i, layer in enumerate(self.net)}
        layers = [
            (
                self.by_name[f"net.{at[id(lin)]}.weight"].detach().numpy(),
                self.by_name[f"net.{at[id(lin)]}.bias"].detach().numpy(),
                act,
            )
            for lin, act in mlp
        ]
        K = self.K
        if not self.gaussian:
            eps = np.ones((T, K, N, 1), dtype=np.float32)
        else:
            eps = np.zeros((T, K, N, *self.modules[0].shape), dtype=np.float32)
        for k, g in enumerate(noise):
            if g is not None:
                eps[:, k] = draw_noise(eps[:, k].shape, self.gaussian, g)
        if not self.gaussian:
            return NumpyDraw(layers, False, eps)
        std = self.by_name["log_std"].detach().exp().numpy()  # (K, 1, d)
        return NumpyDraw(layers, True, eps, std)


class StackedValue(Stacked):
    """K value networks' heads (pgrun.value.ValueNetwork.head) as one: x (K, B, d) -> (K, B)."""

    def __init__(self, values: Sequence[nn.Module]):
        super().__init__(values)
        self.net = self.modules[0].net

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.net, "net.", x).squeeze(-1)


class StackedAdam:
    """Adam over stacked parameters: K independent Adams, one per seed's slice, each with its
    own step count t_k and learning rate (read from the seed's own optimizer, which a schedule
    changes), starting from and written back to those optimizers' states. `step(active)`
    steps the seeds where active (K,) is True; the others' parameters, moments and t stay as
    they are. The update is pgrun.optim.Adam's, operation for operation."""

    def __init__(self, stacked: Stacked, singles: Sequence[Adam]):
        self.stacked, self.singles = stacked, list(singles)
        self.betas, self.eps = singles[0].betas, singles[0].eps
        self.t = [opt.t for opt in singles]
        self.last_norms = torch.zeros(stacked.K)  # each seed's gradient norm at the last step
        self.m = [
            torch.stack([_to_stacked(o.m[j]) for o in singles]) for j in range(len(stacked.params))
        ]
        self.v = [
            torch.stack([_to_stacked(o.v[j]) for o in singles]) for j in range(len(stacked.params))
        ]

    def zero_grad(self) -> None:
        for p in self.stacked.params:
            p.grad = None

    @torch.no_grad()
    def step(self, active: Sequence[bool]) -> None:
        b1, b2 = self.betas
        K = self.stacked.K
        lr_c1 = torch.zeros(K)  # -lr / (1 - b1^t) of each seed
        sqrt_c2 = torch.ones(K)
        for k in range(K):
            if active[k]:
                self.t[k] += 1
                t = self.t[k]
                lr_c1[k] = -self.singles[k].lr / (1 - b1**t)
                sqrt_c2[k] = math.sqrt(1 - b2**t)
        on = torch.tensor(list(active), dtype=torch.bool)
        for p, m, v in zip(self.stacked.params, self.m, self.v, strict=True):
            if p.grad is None:
                continue
            view = (K,) + (1,) * (p.dim() - 1)
            keep = on.view(view)
            g = p.grad
            m_new = m.lerp(g, 1 - b1)
            v_new = (v * b2).addcmul_(g, g, value=1 - b2)
            denom = (v_new.sqrt() / sqrt_c2.view(view)).add_(self.eps)
            p_new = p + m_new * lr_c1.view(view) / denom  # addcdiv: p + (value * m) / denom
            m.copy_(torch.where(keep, m_new, m))
            v.copy_(torch.where(keep, v_new, v))
            p.copy_(torch.where(keep, p_new, p))

    def write_back(self, seeds: Sequence[int] | None = None) -> None:
        """Each seed's moments and step count (of `seeds`, all by default) into its own
        optimizer (its checkpoint)."""
        for k in range(len(self.singles)) if seeds is None else seeds:
            opt = self.singles[k]
            opt.t = self.t[k]
            for j in range(len(self.m)):
                opt.m[j].copy_(self.stacked_single(self.m[j], j, k))
                opt.v[j].copy_(self.stacked_single(self.v[j], j, k))

    def stacked_single(self, x: torch.Tensor, j: int, k: int) -> torch.Tensor:
        return x[k].T if self.stacked.dims[j] == 2 else x[k][0]


def clip_per_seed(stacked: Stacked, max_norm: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.nn.utils.clip_grad_norm_ for each seed's slice of the gradients: the norm of
    seed k's gradient over all parameters, and its gradient scaled by
    min(1, max_norm / (norm + 1e-6)). Returns the norms before clipping (K,) and whether
    each is finite (K,) bool."""
    grads = [p.grad for p in stacked.params if p.grad is not None]
    K = stacked.K
    per = torch.stack([g.reshape(K, -1).norm(dim=1) for g in grads], 1)  # (K, P)
    norms = per.norm(dim=1)
    if max_norm is not None:
        coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef.view((K,) + (1,) * (g.dim() - 1)))
    return norms, torch.isfinite(norms)


# ---------------------------------------------------------------------------- collection


def _draws(states: Sequence[TrainState], active: Sequence[bool]) -> list[torch.Generator | None]:
    """The action noise of each active seed this iteration, seeded as its single run seeds
    torch's RNG: derive_seed(seed, iteration, ACTIONS)."""
    return [
        torch.Generator().manual_seed(derive_seed(s.seed, s.iteration, ACTIONS)) if on else None
        for s, on in zip(states, active, strict=True)
    ]


class CartPoleGroup:
    """K of gymnasium's CartPoleVectorEnv (N copies each, one per seed) stepped as one of K x N
    copies: CartPole's dynamics are element-wise, so every copy moves exactly as in its own
    env; one numpy step for all seeds instead of K. Each seed's env stays the source of its
    resets: after envs[k].reset(seed=...) `load(k)` takes its copies' states, and a copy that
    autoresets (gymnasium's next-step autoreset) draws its new state from its own seed's
    env RNG, as alone."""

    def __init__(self, envs: Sequence[gym.vector.VectorEnv]):
        from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv

        self.envs, self.K, self.N = list(envs), len(envs), envs[0].num_envs
        first = envs[0]
        self.big = CartPoleVectorEnv(
            num_envs=self.K * self.N,
            max_episode_steps=first.max_episode_steps,
            sutton_barto_reward=first._sutton_barto_reward,
        )
        self.big.reset(seed=0)  # allocates its state; every block is loaded before it steps
        self._step = fast_step(self.big, autoreset=False)  # batches of first episodes
        self._own_step = fast_step(self.big, reset=self._reset_states)  # each from its seed's
        # The autoresets' uniforms, drawn ahead from each seed's env RNG (see _reset_states)
        self.low, self.span = float(first.low), float(first.high) - float(first.low)
        self.size = max(4096, 8 * self.N)  # uniforms drawn at a time per seed: 2 steps' worth
        self.ahead = np.empty((self.K, self.size))
        self.used = np.full(self.K, self.size, dtype=np.int64)  # all used: draw at first need
        self.row_start = np.arange(self.K) * self.size  # flat index of each seed's row
        self.ranks = np.arange(self.K * self.N)
        self.rows4 = np.arange(4)[:, None]
        self.source: list[Any] = [None] * self.K  # the generator each row was drawn from

    @staticmethod
    def fits(envs: Sequence[gym.vector.VectorEnv]) -> bool:
        """The envs are plain CartPoleVectorEnvs of one configuration."""
        from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv

        def key(e):
            return (
                e.num_envs,
                e.max_episode_steps,
                e._sutton_barto_reward,
                e.kinematics_integrator,
            )

        return all(type(e) is CartPoleVectorEnv for e in envs) and len({key(e) for e in envs}) == 1

    def block(self, k: int) -> slice:
        return slice(k * self.N, (k + 1) * self.N)

    def load(self, k: int) -> None:
        """Seed k's copies as its env has them (just reset)."""
        env, b = self.envs[k], self.block(k)
        self.big.state[:, b] = env.state
        self.big.steps[b] = env.steps
        self.big.prev_done[b] = env.prev_done
        self.used[k] = self.size  # its reset seeded a new generator: draw from it

    def step(self, act: np.ndarray, own_resets: bool = True):
        """act (K, N) int -> obs (K, N, 4) float32, rew (K, N) float32, terminated, truncated
        (K, N) bool: CartPoleVectorEnv.step of every copy, the autoresets drawn per seed (with
        `own_resets`; without, no autoresets: for batches of first episodes, which mask every
        step after a copy's end and reset each seed's copies from its seed at the next batch)."""
        K, N = self.K, self.N
        step = self._own_step if own_resets else self._step
        obs, rew, term, trunc, _ = step(act.reshape(-1))
        return obs.reshape(K, N, -1), rew.reshape(K, N), term.reshape(K, N), trunc.reshape(K, N)

    def _reset_states(self, idx: np.ndarray) -> np.ndarray:
        """The new states (4, len(idx)) of the copies idx (ascending flat indices) that
        autoreset: for seed k's n of them, what its env draws,
        `np_random.uniform(low, high, size=(4, n))`, which is low + (high - low) * u for the
        next 4n doubles u of its generator in row-major order (numpy's uniform, bit for bit).
        Those doubles come from `ahead`, drawn `size` at a time from the seed's generator, so
        that one gather serves every seed where a call per seed cost about 8 us each. Nothing
        else draws from a merged env's generator while the group steps it; a reset reseeds it,
        and `load` then discards the seed's row."""
        seed_of = idx // self.N
        counts = np.bincount(seed_of, minlength=self.K)
        used = self.used + 4 * counts
        if (used > self.size).any():
            for k in np.flatnonzero(used > self.size).tolist():
                self._draw_ahead(k)
            used = self.used + 4 * counts
        # the flat index in `ahead` of copy i's first double: its seed's row and next unused
        # double, plus its rank among its seed's copies in idx (which starts at cumsum - counts)
        start = self.row_start + self.used - (np.cumsum(counts) - counts)
        at = (start[seed_of] + self.ranks[: idx.size]) + self.rows4 * counts[seed_of]
        self.used = used
        return self.low + self.span * self.ahead.take(at)

    def _draw_ahead(self, k: int) -> None:
        """Refill seed k's row: the doubles not yet used first, then the next ones of its
        env's generator (the stream in order); a new generator discards the old row."""
        rng, row = self.envs[k].np_random, self.ahead[k]
        if rng is not self.source[k]:
            self.source[k], self.used[k] = rng, self.size
        left = self.size - int(self.used[k])
        row[:left] = row[self.size - left :]
        row[left:] = rng.random(self.size - left)
        self.used[k] = 0

    def close(self) -> None:
        self.big.close()


def _env_id(env) -> str:
    return env.spec.id if env.spec is not None else type(env).__name__


def collect_episodes_group(
    collectors: Sequence[EpisodeCollector],
    policy: StackedPolicy,
    states: Sequence[TrainState],
    active: Sequence[bool],
    merged: CartPoleGroup | None = None,
) -> list[tuple[Batch, Episodes] | None]:
    """pgrun.rollout.collect_episodes for each active seed at once: its N copies reset with its
    own seed, stepped until each of its copies' first episode ended or T steps; one stacked
    draw per step (and one env step for all, with `merged`). Each seed's batch is cut at its
    own length, as alone."""
    from pgrun.envs import action_converter, obs_converter

    K = len(collectors)
    T = collectors[0].horizon
    envs = [c.env for c in collectors]
    N = envs[0].num_envs
    to_batch = obs_converter(envs[0].single_observation_space)
    to_env = action_converter(envs[0].single_action_space)
    obs0, steps = [None] * K, [None] * K
    ended = np.ones((K, N), dtype=bool)  # copy i of seed k's first episode has ended
    for k, env in enumerate(envs):
        if not active[k]:
            continue
        seed = derive_seed(collectors[k].seed, states[k].iteration, RESETS)
        try:
            obs, _ = env.reset(seed=seed)
        except (ValueError, TypeError, AttributeError, IndexError) as exc:
            raise guards.reset_failure(exc, _env_id(env)) from None
        guards.check_reset(obs, env.single_observation_space, N, _env_id(env))
        ended[k] = False
        if merged is not None:
            merged.load(k)
        else:
            steps[k] = _running_copies_step(env, obs, ended[k]) or env.step
        obs0[k] = to_batch(obs)
    first = next(o for o in obs0 if o is not None)
    obs_buf = np.zeros((T + 1, K, *first.shape), dtype=first.dtype)
    for k, o in enumerate(obs0):
        if o is not None:
            obs_buf[0, k] = o
    act_buf = None
    rew_buf = np.zeros((T, K, N), dtype=np.float32)
    term_buf = np.zeros((T, K, N), dtype=bool)
    done_buf = np.zeros((T, K, N), dtype=bool)
    length = np.full(K, T)  # each seed's T_b
    running = np.array([bool(a) for a in active])
    draw = policy.batch_draw(T, N, _draws(states, active))
    t = 0
    with torch.inference_mode():
        try:
            for t in range(T):  # noqa: B007 (t names the failing step)
                act = draw(obs_buf[t], t)
                if act_buf is None:
                    act_buf = np.zeros((T, *act.shape), dtype=act.dtype)
                act_buf[t] = act
                if merged is not None:
                    obs, rew_buf[t], term_buf[t], trunc = merged.step(to_env(act), False)
                    obs_buf[t + 1] = obs
                else:
                    trunc = np.zeros((K, N), dtype=bool)
                    for k in np.flatnonzero(running):
                        obs, rew_buf[t, k], term_buf[t, k], trunc[k], _ = steps[k](to_env(act[k]))
                        obs_buf[t + 1, k] = to_batch(obs)
                np.logical_or(term_buf[t], trunc, out=done_buf[t])
                ended |= done_buf[t]
                finished = running & ended.all(1)
                length[finished] = t + 1
                running &= ~finished
                if not np.count_nonzero(running):
                    break
        except (RuntimeError, ValueError, TypeError, AttributeError, IndexError) as exc:
            k = int(np.flatnonzero(running)[0]) if running.any() else 0
            raise guards.step_failure(exc, obs_buf[: t + 2, k], _env_id(envs[k])) from None
    out: list[tuple[Batch, Episodes] | None] = []
    for k, env in enumerate(envs):
        if not active[k]:
            out.append(None)
            continue
        batch = episodes_batch(
            obs_buf[:, k], act_buf[:, k], rew_buf[:, k], term_buf[:, k], done_buf[:, k],
            ended[k], int(length[k]), _env_id(env),
        )  # fmt: skip
        out.append((batch, Episodes(batch.returns, batch.lengths)))
    return out


def collect_steps_group(
    collectors: Sequence[StepCollector],
    policy: StackedPolicy,
    states: Sequence[TrainState],
    active: Sequence[bool],
    merged: CartPoleGroup | None = None,
) -> list[tuple[Batch, Episodes] | None]:
    """StepCollector.collect for each active seed at once (T steps of its N copies, carried
    between batches by the seed's own collector), one stacked draw per step (and one env step
    for all, with `merged`). StepCollector.advance's bookkeeping runs on the seeds' copies as
    one (K, N) array, operation for operation, and goes back into each seed's collector and
    run at the end."""
    K = len(collectors)
    runs = []
    for c, s, on in zip(collectors, states, active, strict=True):
        restart = c.obs is None
        runs.append(c.begin(s.iteration) if on else None)
        if on and restart and merged is not None:
            merged.load(len(runs) - 1)
    first = next(r for r in runs if r is not None)
    T, N = collectors[0].steps, first.obs.shape[1]
    on = [k for k, r in enumerate(runs) if r is not None]
    stepping = np.array([r is not None for r in runs])  # (K,) the seeds in `on`
    obs = np.zeros((T + 1, K, *first.obs.shape[1:]), dtype=first.obs.dtype)
    rew = np.zeros((T, K, N), dtype=np.float32)
    term, trunc, valid = (np.zeros((T, K, N), dtype=bool) for _ in range(3))
    pending = np.zeros((K, N), dtype=bool)
    # A collector's `elapsed` and `ep_length` are zeroed together (a restart, an episode's
    # end) and both count the live steps: they are equal, and one array serves for both.
    ep_return = np.zeros((K, N), dtype=np.float64)
    ep_length = np.zeros((K, N), dtype=np.int64)
    for k in on:
        c = collectors[k]
        obs[0, k] = runs[k].obs[0]
        pending[k], ep_return[k], ep_length[k] = c.pending, c.ep_return, c.ep_length
    act_buf = None
    to_env, to_batch = collectors[0].to_env, collectors[0].to_batch
    draw = policy.batch_draw(T, N, _draws(states, active))
    k = on[0]
    t = 0
    with torch.inference_mode():
        try:
            for t in range(T):  # noqa: B007 (t names the failing step)
                act = draw(obs[t], t)
                if act_buf is None:
                    act_buf = np.zeros((T, *act.shape), dtype=act.dtype)
                act_buf[t] = act
                live = np.logical_not(pending, out=valid[t])  # a resetting copy takes no step
                if merged is not None:
                    # the merged step gives a copy that resets on this call (its env's
                    # prev_done, which is `pending`) reward 0 and no flags already
                    obs[t + 1], rew[t], term[t], trunc[t] = merged.step(to_env(act))
                    ended = term[t] | trunc[t]
                else:
                    r = np.zeros((K, N), dtype=np.float64)
                    te, tr = np.zeros((K, N), dtype=bool), np.zeros((K, N), dtype=bool)
                    for k in on:
                        o, r[k], te[k], tr[k], _ = collectors[k]._step(to_env(act[k]))
                        obs[t + 1, k] = to_batch(o)
                    rew[t] = np.where(live, r, 0.0)
                    term[t], trunc[t] = te & live, tr & live
                    ended = (te | tr) & live
                ep_return += rew[t]
                ep_length += live
                if np.count_nonzero(ended):
                    for k in np.flatnonzero(ended.any(1) & stepping).tolist():
                        runs[k].returns.extend(ep_return[k][ended[k]].tolist())
                        runs[k].lengths.extend(ep_length[k][ended[k]].tolist())
                    ep_return[ended], ep_length[ended] = 0, 0
                pending = ended
        except (RuntimeError, ValueError, TypeError, AttributeError, IndexError) as exc:
            raise guards.step_failure(exc, obs[: t + 2, k], runs[k].env_id) from None
    out: list[tuple[Batch, Episodes] | None] = [None] * K
    device = torch.device("cpu")
    for k in on:
        c, run = collectors[k], runs[k]
        run.obs, run.act, run.rew = obs[:, k], act_buf[:, k], rew[:, k]
        run.term, run.trunc, run.valid = term[:, k], trunc[:, k], valid[:, k]
        c.pending, c.elapsed = pending[k].copy(), ep_length[k].copy()
        c.ep_return, c.ep_length = ep_return[k].copy(), ep_length[k].copy()
        out[k] = c.finish(run, device)
    return out


# ------------------------------------------------------------------------- stacked batches


def _pad(xs: Sequence[torch.Tensor], T: int) -> torch.Tensor:
    """(N, T_k, ...) tensors of the K seeds -> (K, N, T, ...), zero after each T_k."""
    first = xs[0]
    out = torch.zeros((len(xs), first.shape[0], T, *first.shape[2:]), dtype=first.dtype)
    for k, x in enumerate(xs):
        out[k, :, : x.shape[1]] = x
    return out


@dataclass
class GroupBatch:
    """The seeds' batches side by side: obs (K, N, T, d), act (K, N, T[, d]), zero-padded
    after each seed's own T_k (the seeds that take no step this iteration hold zeros).
    batches[k] is seed k's own Batch (N, T_k), adv[k] its (N, T_k) weights.

    `at` (K, M) holds each seed's valid steps as flat indices into its (N * T) slots, padded
    with slot 0 to the longest M_k, and `keep` (K, M) is 1 on the real ones: with batches of
    first episodes the longest episode of K x N sets T, and about a quarter of the (K, N, T)
    slots are steps (CartPole's compare_variants), so the whole-batch terms are computed on
    the steps alone (`terms`)."""

    batches: list[Batch | None]
    adv: list[torch.Tensor | None]
    obs: torch.Tensor
    act: torch.Tensor
    at: torch.Tensor
    keep: torch.Tensor

    @classmethod
    def of(cls, batches, adv) -> GroupBatch:
        real = [b for b in batches if b is not None]
        T = max(b.mask.shape[1] for b in real)
        like = real[0]
        fill = [b if b is not None else _empty_like(like) for b in batches]
        steps = [(_pad([b.mask], T)[0].flatten() > 0).nonzero().squeeze(1) for b in fill]
        M = max(max(len(s) for s in steps), 1)
        at = torch.zeros((len(fill), M), dtype=torch.int64)
        keep = torch.zeros((len(fill), M))
        for k, s in enumerate(steps):
            at[k, : len(s)] = s
            keep[k, : len(s)] = 1.0
        return cls(
            list(batches),
            list(adv),
            _pad([b.obs for b in fill], T),
            _pad([b.act for b in fill], T),
            at,
            keep,
        )

    def terms(
        self, policy: StackedPolicy, entropy: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """log pi(a|s) and the entropy (None without `entropy`) of every slot, (K, N, T) each:
        computed on the valid steps only (the policy's forward on (K, M) rows), 0 in the other
        slots, which every loss and statistic masks out."""
        K, N, T = self.obs.shape[:3]

        def rows(x: torch.Tensor) -> torch.Tensor:  # (K, N, T, ...) -> (K, M, ...)
            flat = x.reshape(K, N * T, *x.shape[3:])
            idx = self.at.reshape(K, -1, *([1] * (flat.dim() - 2))).expand(
                K, self.at.shape[1], *flat.shape[2:]
            )
            return flat.gather(1, idx)

        dist = policy(rows(self.obs))
        logp = dist.log_prob(rows(self.act))

        def slots(x: torch.Tensor) -> torch.Tensor:  # (K, M) -> (K, N, T)
            out = torch.zeros((K, N * T), dtype=x.dtype)
            return out.scatter_add(1, self.at, x * self.keep).reshape(K, N, T)

        return slots(logp), slots(dist.entropy()) if entropy else None


def _empty_like(b: Batch) -> Batch:
    return Batch(
        *(torch.zeros_like(getattr(b, f)) for f in ("obs", "act", "rew", "mask")),
        torch.zeros_like(b.terminated),
        torch.zeros_like(b.truncated),
        b.final_obs[:0],
        torch.zeros_like(b.start),
    )


def _first_step_stats(loss, entropy, mask, grad_norm) -> dict[str, float]:
    h = (entropy * mask).sum() / mask.sum()
    return {
        "losses/policy": loss.item(),
        "stats/entropy": h.item(),
        "stats/grad_norm": grad_norm.item(),
    }


def _finite_params(stacked: Stacked) -> list[bool]:
    """Whether each seed's parameters are all finite, (K,)."""
    ok = torch.stack([torch.isfinite(p).flatten(1).all(1) for p in stacked.params]).all(0)
    return ok.tolist()


def gradient_step_group(
    policy: StackedPolicy,
    opt: StackedAdam,
    group: GroupBatch,
    active: list[bool],
    entropy_coef: float,
    max_grad_norm: float | None,
    stats: list[dict[str, float]],
    failed: dict[int, str],
) -> None:
    """GradientStep for every active seed: one step on the sum of the seeds' own losses."""
    logp, entropy = group.terms(policy)
    losses = {}
    for k, b in enumerate(group.batches):
        if active[k]:
            T = b.mask.shape[1]
            terms = policy_loss(
                logp[k, :, :T], entropy[k, :, :T], group.adv[k], b.mask, entropy_coef
            )
            losses[k] = terms["loss"]
    _step(policy, opt, losses, active, max_grad_norm, failed)
    with torch.no_grad():
        for k, loss in losses.items():
            if k not in failed:
                b = group.batches[k]
                T = b.mask.shape[1]
                stats[k].update(
                    _first_step_stats(loss, entropy[k, :, :T].detach(), b.mask, opt.last_norms[k])
                )


def _step(
    stacked: Stacked,
    opt: StackedAdam,
    losses: dict[int, torch.Tensor],
    active: list[bool],
    max_grad_norm: float | None,
    failed: dict[int, str],
) -> None:
    """zero_grad, backward of the sum of the seeds' losses, clip each seed's norm, step the
    seeds whose loss and gradient are finite (pgrun.update_rules.gradient_step per seed); a
    seed whose loss, gradient or parameters stop being finite is named in `failed`."""
    opt.zero_grad()
    total = sum(losses.values())
    total.backward()
    norms, finite = clip_per_seed(stacked, max_grad_norm)
    opt.last_norms = norms
    stepping = list(active)
    each = torch.stack(list(losses.values())).isfinite().tolist()
    finite_loss = dict(zip(losses, each, strict=True))
    finite_grad = finite.tolist()
    for k in losses:
        if not finite_loss[k]:
            failed[k] = "loss"
        elif not finite_grad[k]:
            failed[k] = "gradient"
        if k in failed:
            stepping[k] = False
    opt.step(stepping)
    finite_params = _finite_params(stacked)
    for k in losses:
        if stepping[k] and not finite_params[k]:
            failed[k] = "parameters"


def ratio_epochs_group(
    policy: StackedPolicy,
    opt: StackedAdam,
    group: GroupBatch,
    active: list[bool],
    rule: Any,
    generators: list[torch.Generator | None],
    hooks: list[Diagnostics | None],
    stats: list[dict[str, float]],
    failed: dict[int, str],
) -> None:
    """RatioEpochs for every active seed: the same epochs and minibatches (each seed's rows
    shuffled by its own generator), and a seed whose KL stop fires takes no more steps."""
    K = policy.K
    batches = group.batches
    n, m = batches[next(k for k in range(K) if active[k])].num_episodes, rule.minibatches
    # the collecting policy's terms: with whole-batch epochs, the first epoch's forward (the
    # same weights, the same numbers) with gradient; else a forward of their own
    first = None
    if m > 1:
        with torch.no_grad():
            logp_old_all, entropy_old = group.terms(policy)
    else:
        first = group.terms(policy)
        logp_old_all, entropy_old = (x.detach() for x in first)
    Ts = [b.mask.shape[1] if b is not None else 0 for b in batches]
    logp_old = [logp_old_all[k, :, : Ts[k]] if active[k] else None for k in range(K)]
    by_steps = getattr(rule, "shuffle", "rows") == "steps" and m > 1
    valid = [  # flat indices into (N * T_k) of each seed's valid steps
        b.mask.flatten().nonzero().squeeze(1) if by_steps and on else None
        for b, on in zip(batches, active, strict=True)
    ]
    stepping = list(active)
    taken = [0] * K
    stopped = [False] * K
    clip_fractions: list[list[float]] = [[] for _ in range(K)]
    for ep in range(rule.epochs):
        if not any(stepping):
            break
        # each seed's minibatches: None (the whole batch), rows (R,) or flat steps (B_k,)
        if not m > 1:
            plan = [[None] * K]
        elif by_steps:
            parts = [
                list(valid[k][torch.randperm(len(valid[k]), generator=generators[k])].chunk(m))
                if stepping[k]
                else []
                for k in range(K)
            ]
            plan = [
                [p[j] if j < len(p) else None for p in parts]
                for j in range(max(len(p) for p in parts))
            ]
        else:
            orders = [
                torch.randperm(n, generator=generators[k]) if stepping[k] else torch.arange(n)
                for k in range(K)
            ]
            plan = [list(c) for c in torch.stack(orders).chunk(m, dim=1)]  # (n / m) rows each
        epoch_logp = [torch.empty_like(lo) if lo is not None else None for lo in logp_old]
        for sels in plan:
            if not m > 1:  # the whole batch: its steps alone
                # the entropy only counts in the loss with a bonus (the statistics take the
                # collecting policy's, entropy_old): without one it is not computed
                if first is not None:
                    (logp_all, entropy_all), first = first, None
                    if not rule.entropy_coef:
                        entropy_all = None
                else:
                    logp_all, entropy_all = group.terms(policy, entropy=bool(rule.entropy_coef))
            else:
                if by_steps:
                    obs, act = _gather_steps(batches, sels)
                else:
                    rows = torch.arange(K)[:, None]
                    idx = torch.stack(sels)
                    obs, act = group.obs[rows, idx], group.act[rows, idx]
                dist = policy(obs)
                logp_all = dist.log_prob(act)
                entropy_all = dist.entropy() if rule.entropy_coef else None
            if entropy_all is None:  # the loss has no bonus: its entropy term is unused
                entropy_all = torch.zeros_like(logp_all)
            losses = {}
            for k in range(K):
                if not stepping[k] or (by_steps and sels[k] is None):
                    continue
                b, sel = batches[k], sels[k]

                def mine(x: torch.Tensor, k=k, sel=sel) -> torch.Tensor:
                    """Seed k's part of a stacked output: (R, T_k), or (1, B_k) for steps."""
                    return x[k, : len(sel)][None] if by_steps else x[k, :, : Ts[k]]

                if by_steps:
                    mb_mask, mb_adv, mb_old = (
                        _select(x, sel, True) for x in (b.mask, group.adv[k], logp_old[k])
                    )
                else:
                    sel = slice(None) if sel is None else sel
                    mb_mask, mb_adv, mb_old = b.mask[sel], group.adv[k][sel], logp_old[k][sel]
                logp = mine(logp_all)
                kl_check = rule.target_kl is not None and taken[k] > 0
                if kl_check and ratio_stats(logp, mb_old, mb_mask)["approx_kl"] > rule.target_kl:
                    stopped[k], stepping[k] = True, False  # no more steps for this seed
                    continue
                if by_steps:
                    epoch_logp[k].view(-1)[sel] = logp.detach().view(-1)
                else:
                    epoch_logp[k][sel] = logp.detach()
                entropy = mine(entropy_all)  # with gradient where the loss has the bonus
                terms = policy_loss(
                    logp, entropy, mb_adv, mb_mask, rule.entropy_coef, mb_old, rule.clip
                )
                if by_steps:  # (1/N)(S/B) sum over the minibatch: the batch's scale
                    weight = len(valid[k]) / (b.num_episodes * len(sel))
                    terms = {name: term * weight for name, term in terms.items()}
                if rule.clip is not None:
                    clip_fractions[k].append(clip_fraction(logp, mb_old, mb_mask, rule.clip))
                losses[k] = terms["loss"]
            if not losses:
                break
            _step(policy, opt, losses, stepping, rule.max_grad_norm, failed)
            for k, loss in losses.items():
                if k in failed:
                    stepping[k] = False
                    continue
                if taken[k] == 0:
                    b = batches[k]
                    whole = entropy_old[k, :, : Ts[k]]
                    stats[k].update(_first_step_stats(loss, whole, b.mask, opt.last_norms[k]))
                taken[k] += 1
        for k in range(K):
            if active[k] and k not in failed and not stopped[k] and hooks[k] is not None:
                stats[k].update(
                    hooks[k].after_epoch(ep, epoch_logp[k], logp_old[k], batches[k].mask)
                )
    with torch.no_grad():
        logp_new_all = group.terms(policy, entropy=False)[0]
    for k in range(K):
        if not active[k] or k in failed:
            continue
        b = batches[k]
        new = logp_new_all[k, :, : Ts[k]]
        stats[k].update({f"stats/{s}": v for s, v in ratio_stats(new, logp_old[k], b.mask).items()})
        if clip_fractions[k]:
            stats[k]["stats/clip_fraction"] = sum(clip_fractions[k]) / len(clip_fractions[k])
        if rule.target_kl is not None:
            stats[k]["stats/stopped_early"] = float(stopped[k])
            stats[k]["stats/gradient_steps"] = float(taken[k])


def _gather_steps(
    batches: list[Batch | None], sels: list[torch.Tensor | None]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The minibatch steps of every seed, sels[k] (B_k,) flat indices into its (N * T_k),
    as obs (K, B, *obs) and act (K, B, ...) zero-padded to the longest B_k."""
    real = next(b for b in batches if b is not None)
    B = max((len(s) for s in sels if s is not None), default=1)
    K = len(batches)
    obs = torch.zeros((K, B, *real.obs.shape[2:]), dtype=real.obs.dtype)
    act = torch.zeros((K, B, *real.act.shape[2:]), dtype=real.act.dtype)
    for k, (b, sel) in enumerate(zip(batches, sels, strict=True)):
        if b is not None and sel is not None:
            obs[k, : len(sel)] = b.obs.flatten(0, 1)[sel]
            act[k, : len(sel)] = b.act.flatten(0, 1)[sel]
    return obs, act


def fit_value_group(
    value: StackedValue,
    opt: StackedAdam,
    batches: list[Batch | None],
    targets: list[Any],
    active: list[bool],
    steps: int,
    minibatches: int,
    max_grad_norm: float | None,
    generators: list[torch.Generator | None],
    failed: dict[int, str],
) -> None:
    """pgrun.value.fit_value for every active seed: `steps` Adam steps of each seed's V on its
    own valid steps (its targets merged into its own running target statistics first), the
    minibatches of each seed drawn by its own generator; one stacked forward per step."""
    K = value.K
    xs, ys = [None] * K, [None] * K
    for k in range(K):
        if not active[k]:
            continue
        b, tg, v = batches[k], targets[k], value.modules[k]
        valid = b.mask > 0
        x, y = b.obs[valid], tg.target[valid].detach()
        if v.target_norm is not None:
            v.target_norm.update(y[:, None])
        mean, std = v.scale()
        xs[k], ys[k] = x, (y - mean) / std
    parts: list[list[torch.Tensor]] = [[] for _ in range(K)]
    d = next(x for x in xs if x is not None).shape[-1]
    for _ in range(steps):
        chosen = [None] * K
        for k in range(K):
            if xs[k] is None or k in failed:
                continue
            if minibatches > 1:
                if not parts[k]:
                    order = torch.randperm(ys[k].shape[0], generator=generators[k])
                    parts[k] = list(order.chunk(minibatches))
                chosen[k] = parts[k].pop(0)
        sizes = [
            0 if xs[k] is None else (xs[k].shape[0] if chosen[k] is None else chosen[k].shape[0])
            for k in range(K)
        ]
        xb = torch.zeros(K, max(max(sizes), 1), d)
        for k in range(K):
            if sizes[k]:
                xb[k, : sizes[k]] = xs[k] if chosen[k] is None else xs[k][chosen[k]]
        h = value.head(xb)
        losses = {}
        for k in range(K):
            if xs[k] is None or k in failed:
                continue
            yb = ys[k] if chosen[k] is None else ys[k][chosen[k]]
            losses[k] = value_loss(h[k, : sizes[k]], yb, torch.ones_like(yb))
        if not losses:
            return
        stepping = [k in losses for k in range(K)]
        sub: dict[int, str] = {}
        _step(value, opt, losses, stepping, max_grad_norm, sub)
        for k, what in sub.items():
            failed[k] = "value loss" if what == "loss" else "value gradient"


# ------------------------------------------------------------------------------- the loop


@dataclass
class Job:
    """One run of a group: its composed config, its directory, whether it resumes, and
    whether it ended before (`replay`: it finished, or with `diverged` its update stopped
    being finite): a resumed group keeps such a seed in its place, trained again from the
    others' checkpoint to its end where it ended after it, writing nothing, so that the others
    continue exactly as the group did uninterrupted (the stacked computations pad every seed
    to the group's longest batch)."""

    cfg: DictConfig
    run_dir: Path
    resume: bool = False
    replay: bool = False
    diverged: bool = False


def train_group(jobs: Sequence[Job]) -> list[dict[str, float] | BaseException | None]:
    """Train the runs `jobs` (configs that differ only in `seed`) as one computation; each
    run's directory is written as pgrun.trainer.train writes it. Returns, per job, train's
    summary or the exception that ended it (Diverged for a seed whose update stopped being
    finite; Interrupted for every unfinished run after SIGINT / SIGTERM); None for a job
    finished before (Job.replay)."""
    points, trains, keep, exact = resume_points(jobs)
    kept = [k for k in range(len(jobs)) if keep[k]]
    replayed = [k for k in kept if jobs[k].replay]
    if replayed:
        n, again = len(replayed), sum(trains[k] for k in replayed)
        ended = "finished" if not any(jobs[k].diverged for k in replayed) else "ended"
        if not again:  # each ended at the others' checkpoint
            how = "nothing written to " + ("it" if n == 1 else "them")
        else:
            who = ("it is" if n == 1 else "they are") if again == n else f"{again} of them"
            who += " is" if again < n and again == 1 else " are" if again < n else ""
            how = f"{who} trained again to the end, writing nothing"
        log.info(
            f"the group keeps its {n} {ended} seed{'s' * (n > 1)} in place ({how}): the "
            f"others continue {'exactly as before' if exact else 'as before to float rounding'}"
        )
    out: list[Any] = [None] * len(jobs)
    results = _train_group(
        [jobs[k] for k in kept], [points[k] for k in kept], [trains[k] for k in kept]
    )
    for k, r in zip(kept, results, strict=True):
        out[k] = None if jobs[k].replay else r
    return out


def _train_group(
    jobs: Sequence[Job], points: Sequence[dict[str, Any] | None], trains: Sequence[bool]
) -> list[Any]:
    from pgrun import trainer

    K = len(jobs)
    quiet = [j.replay for j in jobs]  # trained (if at all) for the others' sake: no output
    cfgs = [j.cfg for j in jobs]
    cfg0 = cfgs[0]
    built = []
    try:
        for j in jobs:
            built.append(trainer.build(j.cfg, j.run_dir))
    except BaseException:
        for state, _, evaluator in built:
            state.collector.env.close()
            evaluator.close()
        raise
    states = [b[0] for b in built]
    from pgrun.batched_launcher import blocker  # what the launcher checks, for direct callers

    reason = blocker(cfg0) or space_blocker(states[0].collector.env)
    if reason is not None:
        for state, _, evaluator in built:
            state.collector.env.close()
            evaluator.close()
        raise NotBatchable(reason)
    evaluators = [b[2] for b in built]
    for s, c in zip(states, cfgs, strict=True):
        s.seed = int(c.seed)
    for s, j, saved in zip(states, jobs, points, strict=True):
        if saved is not None:
            s.load_state_dict(saved, j.run_dir)
            if not j.replay:
                removed = checkpoint.rewind(j.run_dir, saved)
                past = (
                    ", the last its group's seeds share (removed after it, to be trained "
                    f"again: {', '.join(removed)})"
                    if removed
                    else ""
                )
                log.info(
                    f"resuming {j.run_dir} at iteration {s.iteration}, {s.env_steps:,} env "
                    f"steps{past}"
                )
    results: list[Any] = [None] * K
    loggers = []
    resolved = []
    for s, j in zip(states, jobs, strict=True):
        res = OmegaConf.to_container(j.cfg, resolve=True, enum_to_str=True)
        resolved.append(res)
        if j.replay:
            loggers.append(Loggers([]))
            continue
        loggers.append(
            make_loggers(
                list(j.cfg.logger),
                j.run_dir,
                res,
                yaml_text(res),
                purge_step=s.env_steps + 1 if j.resume else None,
            )
        )
    policy = StackedPolicy([s.policy for s in states])
    opt = StackedAdam(policy, [s.optimizer for s in states])
    has_value = states[0].learner.value is not None
    if has_value:
        value = StackedValue([s.learner.value for s in states])
        value_opt = StackedAdam(value, [s.learner.value_optimizer for s in states])
    rule = trainer.rule_from_config(cfg0)
    ratio = rule_name(cfg0.variant) == "ratio_epochs"
    steps_rollout = isinstance(states[0].collector, StepCollector)
    envs = [s.collector.env for s in states]
    merged = CartPoleGroup(envs) if CartPoleGroup.fits(envs) else None
    for s in states:
        s.started = time.perf_counter()
    every = cfg0.diagnostics.every
    # what the loop reads of each config at every iteration, read once (a DictConfig lookup
    # costs tens of microseconds)
    total = [int(c.total_steps) for c in cfgs]
    stop_return = [c.stop_return for c in cfgs]
    save_every = [int(c.checkpoint.every) for c in cfgs]
    ratios = [c.diagnostics.ratios for c in cfgs]
    annealed = [bool(c.optim.anneal_lr) for c in cfgs]
    active = [go and s.env_steps < t for s, t, go in zip(states, total, trains, strict=True)]
    final = [None] * K
    try:
        with trainer.StopRequest() as stop:
            while any(active):
                collect = collect_steps_group if steps_rollout else collect_episodes_group
                got = collect([s.collector for s in states], policy, states, active, merged)
                batches = [g[0] if g else None for g in got]
                episodes = [g[1] if g else None for g in got]
                targets = [
                    s.learner.targets(b) if on else None
                    for s, b, on in zip(states, batches, active, strict=True)
                ]
                lr_now = [
                    trainer.anneal(c, s) if on and a else {}
                    for c, s, on, a in zip(cfgs, states, active, annealed, strict=True)
                ]
                hooks = [
                    Diagnostics(every > 0 and s.iteration % every == 0, r) if on else None
                    for r, s, on in zip(ratios, states, active, strict=True)
                ]
                stats: list[dict[str, float]] = [{} for _ in range(K)]
                for k in range(K):
                    if active[k]:
                        stats[k].update(
                            hooks[k].before_update(states[k].policy, batches[k], targets[k].adv)
                        )
                stepped = [k for k in range(K) if active[k]]  # the seeds this update changes
                group = GroupBatch.of(batches, [t.adv if t else None for t in targets])
                failed: dict[int, str] = {}
                if ratio:
                    gens = [
                        trainer.generator(c, s, MINIBATCHES) if on else None
                        for c, s, on in zip(cfgs, states, active, strict=True)
                    ]
                    ratio_epochs_group(
                        policy, opt, group, list(active), rule, gens, hooks, stats, failed
                    )
                else:
                    gradient_step_group(
                        policy, opt, group, list(active), rule.entropy_coef,
                        rule.max_grad_norm, stats, failed,
                    )  # fmt: skip
                if has_value:
                    fitting = [on and k not in failed for k, on in enumerate(active)]
                    for k in range(K):
                        if fitting[k]:
                            stats[k] |= _value_stats(batches[k], targets[k])
                    gens = [
                        trainer.generator(c, s, VALUE_MINIBATCHES) if on else None
                        for c, s, on in zip(cfgs, states, fitting, strict=True)
                    ]
                    fit_value_group(
                        value, value_opt, batches, targets, fitting, cfg0.value.steps,
                        cfg0.value.minibatches, cfg0.optim.max_grad_norm, gens, failed,
                    )  # fmt: skip
                    value.write_back(stepped)
                policy.write_back(stepped)
                for k, what in failed.items():
                    s = states[k]
                    kept = checkpoint.checkpoints(jobs[k].run_dir)
                    results[k] = guards.diverged(what, s.iteration, s.env_steps, kept)
                    active[k] = False
                for k in range(K):
                    if not active[k]:
                        continue
                    s, b, ep = states[k], batches[k], episodes[k]
                    s.env_steps += b.num_steps
                    s.iteration += 1
                    if len(ep):
                        s.recent.append(ep.returns.mean().item())
                    solved = s.solved(stop_return[k])
                    if not quiet[k]:
                        loggers[k].log(
                            {**trainer.charts(ep, s), **lr_now[k], **stats[k]}, s.env_steps
                        )
                        evaluators[k].after_iteration(
                            loggers[k], s.iteration, s.env_steps,
                            solved or s.env_steps >= total[k],
                        )  # fmt: skip
                    if solved and not quiet[k]:
                        log.info(
                            f"{jobs[k].run_dir.name}: final return {s.final_return():.1f} >= "
                            f"stop_return={stop_return[k]:g} after {s.env_steps:,} env steps: "
                            "stopping"
                        )
                    if solved or s.env_steps >= total[k]:
                        active[k] = False
                        final[k] = s.final_return()
                for k in range(K):
                    if final[k] is not None and results[k] is None and not quiet[k]:
                        _finish(states[k], opt, value_opt if has_value else None, jobs[k], k,
                                resolved[k], loggers[k], final[k])  # fmt: skip
                        results[k] = {
                            "final_return": final[k],
                            "env_steps": states[k].env_steps,
                            "iterations": states[k].iteration,
                            "wall_seconds": states[k].wall_seconds(),
                            "batches": len(states[k].recent),
                        }
                if stop.signum is not None:
                    for k in range(K):
                        if results[k] is None and final[k] is None and not quiet[k]:
                            _save(states[k], opt, value_opt if has_value else None, jobs[k], k)
                            results[k] = Interrupted(
                                stop.signum, states[k].iteration, states[k].env_steps
                            )
                            active[k] = False
                    break
                for k in range(K):
                    s = states[k]
                    due = save_every[k] > 0 and s.iteration % save_every[k] == 0
                    if active[k] and due and not quiet[k]:
                        _save(s, opt, value_opt if has_value else None, jobs[k], k)
    finally:
        with signals.deferred("closing the runs"):
            for k in range(K):
                loggers[k].close()
                states[k].collector.env.close()
                evaluators[k].close()
            if merged is not None:
                merged.close()
    return results


def resume_points(
    jobs: Sequence[Job],
) -> tuple[list[dict[str, Any] | None], list[bool], list[bool], bool]:
    """The checkpoint each resumed job continues from (None for a job that starts): the newest
    iteration that every resumed job of the group has. A group checkpoints its seeds one after
    the other at the same iterations, so a group killed between two of them has seeds one
    checkpoint apart; continuing all from the one they share repeats what the group did after
    it, as it did it. Where they share none, each continues from its newest.

    A job that ended before (Job.replay) is kept in the group where the others share an
    iteration, and where none of the others has a checkpoint (they all start again from
    iteration 0, as the group began beside it: it is built again and trains to its end). Where
    they share one, it gets its own checkpoint of that iteration if it ended after it (it
    trains again to its end, as it did beside them), else its last (it waits as it ended). A finished seed's last checkpoint is its end; a
    diverged seed's is the last good one, and since every seed checkpoints at the same
    iterations, it ended after the shared iteration exactly when it has that checkpoint (one
    that diverged before its first checkpoint waits as it was built). The second list says
    which jobs train, the third which are in the group; the last value whether the others
    continue exactly as the group did (not where a seed that ended after the shared iteration
    has no checkpoint of it)."""
    saved: dict[int, list[dict[str, Any]]] = {}
    for k, j in enumerate(jobs):
        if j.replay:
            with contextlib.suppress(checkpoint.CheckpointError):  # none left
                saved[k] = checkpoint.load_readable(j.run_dir, tidy=False)
        elif j.resume:
            saved[k] = checkpoint.load_readable(j.run_dir)
    going = [k for k in saved if not jobs[k].replay]
    if not going and not all(j.replay for j in jobs):
        # every seed that trains starts again from iteration 0 (none had checkpointed): the
        # group began so, beside the seeds that ended since; those are built again and train
        # to their end as they did, writing nothing
        return [None] * len(jobs), [True] * len(jobs), [True] * len(jobs), True
    shared = [{c["iteration"] for c in saved[k]} for k in going]
    at = max(set.intersection(*shared), default=None) if shared else None
    out: list[dict[str, Any] | None] = [None] * len(jobs)
    exact = True
    trains = [not j.replay for j in jobs]
    keep = [not j.replay or (at is not None and (k in saved or j.diverged))
            for k, j in enumerate(jobs)]  # fmt: skip
    for k, cs in saved.items():
        if not jobs[k].replay:
            out[k] = cs[0] if at is None else next(c for c in cs if c["iteration"] == at)
        elif at is not None:
            out[k] = cs[0]  # its end, or a diverged seed's last good checkpoint
            ended_after = cs[0]["iteration"] >= at if jobs[k].diverged else cs[0]["iteration"] > at
            if ended_after:
                out[k] = next((c for c in cs if c["iteration"] == at), None) or cs[0]
                trains[k] = out[k]["iteration"] == at
                if not trains[k]:
                    exact = False
                    log.info(
                        f"{display(jobs[k].run_dir)} has no checkpoint of iteration {at}: it "
                        "waits as it ended, and the others continue to float rounding"
                    )
    return out, trains, keep, exact


def _value_stats(batch: Batch, targets: Any) -> dict[str, float]:
    """Learner.fit's tags: the loss and explained variance of the V the advantages used."""
    from pgrun.estimators import explained_variance

    values, target, mask = targets.values, targets.target, batch.mask
    stats = {"losses/value": value_loss(values, target, mask).item()}
    ev = explained_variance(values, target, mask)
    if math.isfinite(ev):
        stats["stats/explained_variance"] = ev
    return stats


def _save(
    state: TrainState, opt: StackedAdam, value_opt: StackedAdam | None, job: Job, k: int
) -> None:
    """Seed k's checkpoint, its optimizers' states taken from the stacked ones."""
    opt.write_back([k])
    if value_opt is not None:
        value_opt.write_back([k])
    checkpoint.save(job.run_dir, state.iteration, state.state_dict())


def _finish(state, opt, value_opt, job: Job, k: int, resolved: dict, logger, final) -> None:
    """The end of a seed's run, when it ends (its group may train on): its last checkpoint,
    final metric and policy.pt, in train's order (policy.pt, which marks the run finished,
    last: a group killed before it resumes the seed from its last checkpoint). The group's
    StopRequest holds a SIGINT until the iteration ends."""
    _save(state, opt, value_opt, job, k)
    logger.hparams(logger.params, {FINAL_METRIC: final}, state.env_steps)
    policy_file = {"state_dict": state.policy.state_dict(), "config": resolved}
    checkpoint.write_atomic(job.run_dir / "policy.pt", policy_file)
