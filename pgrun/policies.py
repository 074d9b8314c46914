"""Policies: an observation encoder and a torso mapping observations to a distribution over actions.

`policy(obs)` returns a `torch.distributions.Distribution` whose batch shape is the leading
shape of `obs`, exactly as in the notes' code: `policy(states).log_prob(actions)` is (N, T).

One policy per action space:

    Discrete       Categorical                       act (...,) int64
    MultiDiscrete  independent Categoricals          act (..., k) int64
    MultiBinary    independent Bernoullis            act (..., n) float32 in {0, 1}
    Box            diagonal Gaussian, state-independent log-std; the rollout clips the action
                   to the bounds, or (squash=True) a tanh-squashed Gaussian inside the bounds
                                                     act (..., *shape) float32

Observations arrive in the layout of a batch (pgrun.envs.batch_obs): float Box vectors, uint8
frames (scaled to [0, 1]), Discrete / MultiDiscrete indices (one-hot encoded) or MultiBinary
vectors. `policy=cnn` puts the Nature-DQN convolutional torso in front for image observations.
Every policy also has `sample(obs)`, the same draw as `policy(obs).sample()` without building
the Distribution; `act(obs)`, the rollout's draw once per time step, from the same distribution
by a cheaper route (an inverse-CDF draw from one uniform per row instead of torch.multinomial,
Gaussian noise into a buffer kept between steps); and `mode(obs)`, the deterministic action used
for evaluation. The update's log-probabilities always come from `policy(obs)`, the Distribution.
The collectors draw from the MLP policies in numpy instead (pgrun.draw), and with `act` for the
rest.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.distributions import (
    AffineTransform,
    Bernoulli,
    Categorical,
    Distribution,
    Independent,
    Normal,
    TanhTransform,
    TransformedDistribution,
)

from pgrun.config import UserError
from pgrun.envs import is_image
from pgrun.normalization import RunningNorm

ACTIVATIONS = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
}
POLICIES = ("mlp", "cnn")

log = logging.getLogger(__name__)


class PolicyError(UserError):
    """An observation or action space the policies cannot handle (one-line message)."""


class MLP(nn.Sequential):
    """nn.Sequential that calls each layer's forward directly: the same computation without the
    per-layer module-call machinery (forward hooks, which pgrun never registers). The rollout
    calls the policy once per env step, where that machinery is a tenth of the policy's time."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer.forward(x)
        return x


def mlp(sizes: Sequence[int], activation: str) -> MLP:
    """Linear layers of the given sizes with `activation` between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(pairwise(sizes)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return MLP(*layers)


# Observations -> features


def _image_layout(shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, int, int]] | None:
    """How to turn a frame of `shape` into (C, H, W): the permutation and the (C, H, W) shape,
    for (H, W), (C, H, W), (H, W, C) and stacked (S, H, W, C); None for other shapes."""
    if len(shape) == 2:
        return (0, 1), (1, *shape)
    if len(shape) == 3:
        if shape[-1] <= 4 < min(shape[0], shape[1]):  # channels last
            return (2, 0, 1), (shape[2], shape[0], shape[1])
        return (0, 1, 2), shape
    if len(shape) == 4 and shape[-1] <= 4:  # a stack of channels-last frames
        return (0, 3, 1, 2), (shape[0] * shape[3], shape[1], shape[2])
    return None


class NatureCNN(nn.Module):
    """The Nature-DQN torso (Mnih et al. 2015): conv 32 8x8/4, 64 4x4/2, 64 3x3/1, then a
    512-unit layer, ReLU after each. Input (B, C, H, W) float in [0, 1] -> (B, 512)."""

    def __init__(self, chw: tuple[int, int, int]):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(chw[0], 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.convs(torch.zeros(1, *chw)).shape[1]
        self.fc = nn.Sequential(nn.Linear(flat, 512), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.convs(x))


class ObsEncoder(nn.Module):
    """Observations in a batch's layout -> float32 features (..., out_dim).

    uint8 Box: scaled to [0, 1], then flattened (mlp) or through the Nature CNN (cnn);
    float Box: as is (flattened by the rollout); Discrete: one-hot of n; MultiDiscrete: the
    one-hots of each component, concatenated; MultiBinary: as is. With `normalize`, features
    go through a RunningNorm (vector observations only).
    """

    def __init__(self, space: gym.Space, cnn: bool = False, normalize: bool = False):
        super().__init__()
        self.obs_ndim = 0  # event dims of one observation in the batch layout
        self.chw: tuple[int, int, int] | None = None
        self.perm: tuple[int, ...] = ()
        self.cnn: NatureCNN | None = None
        self.norm: RunningNorm | None = None
        self.one_hot_sizes: list[int] = []
        if is_image(space):
            self.kind = "image"
            self.obs_ndim = len(space.shape)
            self.out_dim = math.prod(space.shape)
            if cnn:
                layout = _image_layout(space.shape)
                if layout is None:
                    raise PolicyError(
                        f"policy=cnn: cannot read observations of shape {space.shape} as frames"
                    )
                self.perm, self.chw = layout
                try:
                    self.cnn = NatureCNN(self.chw)
                except RuntimeError:
                    raise PolicyError(
                        f"policy=cnn: frames of shape {space.shape} are too small for the Nature "
                        "CNN (it needs at least 36x36)"
                    ) from None
                self.out_dim = 512
        elif isinstance(space, gym.spaces.Box):
            self.kind, self.obs_ndim, self.out_dim = "box", 1, math.prod(space.shape)
        elif isinstance(space, gym.spaces.Discrete):
            self.kind, self.one_hot_sizes = "one_hot", [int(space.n)]
        elif isinstance(space, gym.spaces.MultiDiscrete):
            if len(space.shape) != 1:
                raise PolicyError(
                    f"observation space {space} is not supported: use a 1-D MultiDiscrete"
                )
            self.kind, self.obs_ndim = "one_hot", 1
            self.one_hot_sizes = [int(n) for n in space.nvec]
        elif isinstance(space, gym.spaces.MultiBinary):
            self.kind, self.obs_ndim, self.out_dim = "box", 1, math.prod(space.shape)
        else:
            raise ValueError(f"unsupported observation space {space}")
        if self.kind == "one_hot":
            self.out_dim = sum(self.one_hot_sizes)
            self.register_buffer("_arange", torch.arange(max(self.one_hot_sizes)), persistent=False)
        if cnn and self.cnn is None:
            raise PolicyError(
                "policy=cnn needs image observations (a uint8 Box of frames), not a "
                f"{type(space).__name__} of shape {tuple(space.shape or ())} and dtype "
                f"{getattr(space, 'dtype', None)}; use policy=mlp"
            )
        if normalize:
            if self.kind == "image":
                raise PolicyError(
                    "env.normalize_obs=true is for vector observations; frames are already "
                    "scaled to [0, 1]: set env.normalize_obs=false"
                )
            self.norm = RunningNorm(self.out_dim)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = self.encode(obs)
        return x if self.norm is None else self.norm(x)

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """The features before the observation normalisation."""
        lead = obs.shape[: obs.dim() - self.obs_ndim]
        if self.kind == "image":
            x = obs.to(torch.float32) / 255.0
            if self.cnn is None:
                return x.reshape(*lead, self.out_dim)
            x = x.reshape(-1, *obs.shape[obs.dim() - self.obs_ndim :]).permute(
                0, *(p + 1 for p in self.perm)
            )
            return self.cnn(x.reshape(-1, *self.chw)).reshape(*lead, 512)
        if self.kind == "one_hot":
            idx = obs if self.obs_ndim else obs.unsqueeze(-1)  # (..., k)
            parts = [
                (idx[..., i : i + 1] == self._arange[:n]).to(torch.float32)
                for i, n in enumerate(self.one_hot_sizes)
            ]
            return torch.cat(parts, -1)
        return obs if obs.is_floating_point() else obs.to(torch.float32)


# Action heads


class Policy(nn.Module):
    """features = net(encoder(obs)); subclasses turn the features into a distribution."""

    def __init__(
        self, encoder: ObsEncoder, out_dim: int, hidden_sizes: Sequence[int], activation: str
    ):
        super().__init__()
        self.encoder = encoder
        self.net = mlp([encoder.out_dim, *hidden_sizes, out_dim], activation)
        self._noise_key: tuple | None = None  # act's noise buffer (see _noise)
        self._noise_buf: torch.Tensor | None = None

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(self.encoder(obs))

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """The rollout's draw a ~ pi(.|s), once per env step: obs (B, *obs) -> actions (B, ...),
        the layout of `sample`. The distribution is `sample`'s; subclasses draw it more cheaply
        from torch's RNG (no Distribution, no multinomial, noise drawn into a buffer kept
        between steps), so the draws differ from `sample`'s. Call it under inference_mode."""
        return self.sample(obs)

    def _noise(self, shape: torch.Size, like: torch.Tensor, normal: bool = False) -> torch.Tensor:
        """U[0, 1) (or N(0, 1) with `normal`) noise of `shape`, drawn from torch's RNG into a
        buffer that is allocated once and reused while the shape, device and mode stay."""
        key = (shape, like.device, normal, torch.is_inference_mode_enabled())
        if self._noise_key != key:
            self._noise_key, self._noise_buf = key, torch.empty(shape, device=like.device)
        return self._noise_buf.normal_() if normal else self._noise_buf.uniform_()

    def update_obs_stats(self, obs: torch.Tensor, mask: torch.Tensor) -> None:
        """Merge the valid steps of a batch's observations, obs (N, T, ...) where mask (N, T)
        is 1, into the running observation statistics (no-op without env.normalize_obs)."""
        norm = self.encoder.norm
        if norm is None:
            return
        with torch.no_grad():
            norm.update(self.encoder.encode(obs[mask.bool()]))


def inverse_cdf(probs: torch.Tensor, policy: Policy) -> torch.Tensor:
    """One draw from each row of `probs` (..., n): with u ~ U[0, 1) from the policy's noise
    buffer, a = #{j < n - 1 : cdf_j <= u}, i.e. P(a = j) = cdf_j - cdf_{j-1} = probs_j. Counting
    at most n - 1 entries keeps a float32 cdf that ends just below 1 from giving n.
    -> (...,) int64."""
    cdf = probs.cumsum(-1)[..., :-1]
    u = policy._noise(cdf.shape[:-1] + (1,), cdf)
    return (cdf <= u).sum(-1)


class CategoricalPolicy(Policy):
    """pi(a|s) = softmax(f(s))_a for a Discrete action space."""

    def forward(self, obs: torch.Tensor) -> Distribution:
        """obs: (..., *obs) -> Categorical with batch shape (...)."""
        return Categorical(logits=self.features(obs))

    def sample(self, obs: torch.Tensor) -> torch.Tensor:
        """Draw a ~ pi(.|s): the same draw as `self(obs).sample()` from the same RNG state,
        without building the Distribution. obs: (B, *obs) -> (B,) int64."""
        # softmax is shift-invariant: Categorical's normalisation (logits - logsumexp) gives
        # the same probabilities, and the test checks the draws are equal.
        return torch.multinomial(self.features(obs).softmax(-1), 1, True).squeeze(-1)

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """a ~ pi(.|s) by the inverse CDF: one uniform u per row, a = #{j : cdf_j <= u}.
        obs: (B, *obs) -> (B,) int64."""
        return inverse_cdf(self.features(obs).softmax(-1), self)

    def mode(self, obs: torch.Tensor) -> torch.Tensor:
        """The most likely action: (...,) int64."""
        return self.features(obs).argmax(-1)


class MultiCategoricalPolicy(Policy):
    """pi(a|s) = prod_j softmax(f_j(s))_{a_j}: one Categorical per MultiDiscrete component j
    with nvec[j] choices. The logits are held as (..., k, max_n), the slots past nvec[j] at
    -inf (probability 0)."""

    def __init__(self, encoder: ObsEncoder, nvec: Sequence[int], hidden_sizes, activation):
        k, n = len(nvec), max(nvec)
        super().__init__(encoder, k * n, hidden_sizes, activation)
        self.k, self.n = k, n
        valid = torch.arange(n)[None, :] < torch.tensor(list(nvec))[:, None]
        self.register_buffer("valid", valid, persistent=False)

    def logits(self, obs: torch.Tensor) -> torch.Tensor:
        out = self.features(obs)
        out = out.reshape(*out.shape[:-1], self.k, self.n)
        return out.masked_fill(~self.valid, float("-inf"))

    def forward(self, obs: torch.Tensor) -> Distribution:
        """obs: (..., *obs) -> independent Categoricals, batch shape (...), event shape (k,)."""
        return Independent(Categorical(logits=self.logits(obs)), 1)

    def sample(self, obs: torch.Tensor) -> torch.Tensor:
        """The same draw as `self(obs).sample()`. obs: (B, *obs) -> (B, k) int64."""
        probs = self.logits(obs).softmax(-1)  # the -inf slots get probability 0
        return torch.multinomial(probs.reshape(-1, self.n), 1, True).reshape(probs.shape[:-1])

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """Inverse-CDF draws, one uniform per component. obs: (B, *obs) -> (B, k) int64."""
        return inverse_cdf(self.logits(obs).softmax(-1), self)

    def mode(self, obs: torch.Tensor) -> torch.Tensor:
        """(..., k) int64."""
        return self.logits(obs).argmax(-1)


class BernoulliPolicy(Policy):
    """pi(a|s) = prod_j sigmoid(f_j(s))^a_j (1 - sigmoid(f_j(s)))^(1 - a_j) for MultiBinary."""

    def __init__(self, encoder: ObsEncoder, shape: Sequence[int], hidden_sizes, activation):
        super().__init__(encoder, math.prod(shape), hidden_sizes, activation)
        self.shape = tuple(shape)

    def logits(self, obs: torch.Tensor) -> torch.Tensor:
        out = self.features(obs)
        return out.reshape(*out.shape[:-1], *self.shape)

    def forward(self, obs: torch.Tensor) -> Distribution:
        """obs: (..., *obs) -> independent Bernoullis, batch shape (...), event shape `shape`."""
        return Independent(Bernoulli(logits=self.logits(obs)), len(self.shape))

    def sample(self, obs: torch.Tensor) -> torch.Tensor:
        """The same draw as `self(obs).sample()`. obs: (B, *obs) -> (B, *shape) float32."""
        return torch.bernoulli(torch.sigmoid(self.logits(obs)))

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """a_j = 1 where u_j < sigmoid(f_j(s)). obs: (B, *obs) -> (B, *shape) float32."""
        p = torch.sigmoid(self.logits(obs))
        return (self._noise(p.shape, p) < p).to(torch.float32)

    def mode(self, obs: torch.Tensor) -> torch.Tensor:
        """1 where p > 1/2: (..., *shape) float32."""
        return (self.logits(obs) > 0).to(torch.float32)


class _ClampedTanh(TanhTransform):
    """tanh, whose inverse clamps to the open interval (-1, 1) first: a float32 action sampled
    exactly at a bound still has a finite log-probability."""

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        eps = torch.finfo(y.dtype).eps
        return torch.atanh(y.clamp(-1.0 + eps, 1.0 - eps))


class SquashedNormal(TransformedDistribution):
    """a = loc + scale * tanh(u), u ~ N(mu, sigma^2), elementwise, with
    log pi(a) = log N(u; mu, sigma^2) - log(scale) - log(1 - tanh(u)^2).

    `entropy()` is that of the Gaussian before squashing (the squashed one has no closed form);
    stats/entropy of a squashed policy reports it.
    """

    def __init__(self, mean, std, loc, scale, validate_args=None):
        super().__init__(
            Normal(mean, std),
            [_ClampedTanh(), AffineTransform(loc, scale)],
            validate_args=validate_args,
        )

    def entropy(self) -> torch.Tensor:
        return self.base_dist.entropy()

    @property
    def mode(self) -> torch.Tensor:
        loc, scale = self.transforms[1].loc, self.transforms[1].scale
        return loc + scale * torch.tanh(self.base_dist.mean)


class GaussianPolicy(Policy):
    """pi(a|s) = N(a; mu(s), diag(exp(log_std))^2) with a state-independent log_std (Box actions).

    With `squash`, a = (high + low)/2 + (high - low)/2 * tanh(u) for u ~ N(mu(s), std^2), inside
    the bounds, and log pi(a|s) carries the tanh change-of-variables correction.
    """

    def __init__(
        self,
        encoder: ObsEncoder,
        space: gym.spaces.Box,
        hidden_sizes: Sequence[int],
        activation: str,
        log_std_init: float = -0.5,
        squash: bool = False,
    ):
        shape = tuple(space.shape)
        super().__init__(encoder, math.prod(shape), hidden_sizes, activation)
        self.shape, self.squash = shape, squash
        self.log_std = nn.Parameter(torch.full(shape, float(log_std_init)))
        if squash:
            low, high = (torch.as_tensor(b, dtype=torch.float32) for b in (space.low, space.high))
            self.register_buffer("loc", (high + low) / 2, persistent=False)
            self.register_buffer("scale", (high - low) / 2, persistent=False)

    def mean(self, obs: torch.Tensor) -> torch.Tensor:
        out = self.features(obs)
        return out.reshape(*out.shape[:-1], *self.shape)

    def forward(self, obs: torch.Tensor) -> Distribution:
        """obs: (..., *obs) -> diagonal Gaussian over `shape` with batch shape (...)."""
        mean, std = self.mean(obs), self.log_std.exp()
        if self.squash:
            base = SquashedNormal(mean, std.expand_as(mean), self.loc, self.scale)
        else:
            base = Normal(mean, std)
        return Independent(base, len(self.shape))

    def sample(self, obs: torch.Tensor) -> torch.Tensor:
        """Draw a ~ pi(.|s): the same draw as `self(obs).sample()` from the same RNG state,
        without building the Distribution. obs: (B, *obs) -> (B, *shape) float32."""
        mean = self.mean(obs)
        u = torch.normal(mean, self.log_std.exp().expand_as(mean))
        return self.loc + self.scale * torch.tanh(u) if self.squash else u

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """u = mu(s) + std * eps with eps ~ N(0, I) drawn into the kept buffer (squashed with
        `squash`). obs: (B, *obs) -> (B, *shape) float32."""
        mean = self.mean(obs)
        u = torch.addcmul(mean, self.log_std.exp(), self._noise(mean.shape, mean, normal=True))
        return self.loc + self.scale * torch.tanh(u) if self.squash else u

    def mode(self, obs: torch.Tensor) -> torch.Tensor:
        """The mean action (squashed into the bounds with `squash`): (..., *shape) float32."""
        mean = self.mean(obs)
        return self.loc + self.scale * torch.tanh(mean) if self.squash else mean


def _describe(space: gym.Space) -> str:
    text = " ".join(str(space).split())
    return text if len(text) <= 120 else text[:117] + "..."


def make_policy(
    env: gym.vector.VectorEnv | gym.Env,
    hidden_sizes: Sequence[int] = (32,),
    activation: str = "tanh",
    log_std_init: float = -0.5,
    *,
    name: str = "mlp",
    squash: bool = False,
    normalize_obs: bool = False,
) -> Policy:
    """The policy for `env`'s spaces (see the module docstring for the table).

    Args:
        env: a vector env (its single spaces are used) or a single env.
        hidden_sizes: widths of the hidden layers after the encoder; [] is linear.
        activation: between the hidden layers.
        log_std_init: initial log standard deviation of a Gaussian policy.
        name: "mlp", or "cnn" for the Nature-DQN torso in front (image observations).
        squash: Box actions tanh-squashed into the bounds instead of clipped by the rollout.
        normalize_obs: a running mean/std normalisation of the observations, saved with it.
    """
    obs_space = getattr(env, "single_observation_space", env.observation_space)
    act_space = getattr(env, "single_action_space", env.action_space)
    spec = getattr(env, "spec", None)
    env_name = spec.id if spec is not None else type(env).__name__
    if activation not in ACTIVATIONS:
        raise PolicyError(f"policy.activation={activation!r}: use one of {', '.join(ACTIVATIONS)}")
    if name not in POLICIES:
        raise PolicyError(f"policy.name={name!r}: use one of {', '.join(POLICIES)}")
    obs_ok = (gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary)
    if not isinstance(obs_space, obs_ok):
        raise PolicyError(
            f"{env_name}: observation space {type(obs_space).__name__} ({_describe(obs_space)}) "
            "is not supported; pgrun's policies take Box, Discrete, MultiDiscrete and MultiBinary "
            "observations (flatten others with a gymnasium wrapper in your own env)"
        )
    encoder = ObsEncoder(obs_space, cnn=name == "cnn", normalize=normalize_obs)
    if encoder.kind == "image" and name == "mlp" and len(obs_space.shape) >= 2:
        log.warning(f"{env_name}: frames {obs_space.shape} into an MLP; policy=cnn suits them")
    if squash and not isinstance(act_space, gym.spaces.Box):
        raise PolicyError(
            f"policy.squash=true applies to Box actions; {env_name} has "
            f"{_describe(act_space)}: drop policy.squash"
        )
    if isinstance(act_space, gym.spaces.Discrete):
        return CategoricalPolicy(encoder, int(act_space.n), hidden_sizes, activation)
    if isinstance(act_space, gym.spaces.MultiDiscrete):
        nvec = [int(n) for n in np.asarray(act_space.nvec).reshape(-1)]
        if len(act_space.shape) != 1:
            raise PolicyError(
                f"{env_name}: action space {_describe(act_space)} is not supported; use a 1-D MultiDiscrete"
            )
        return MultiCategoricalPolicy(encoder, nvec, hidden_sizes, activation)
    if isinstance(act_space, gym.spaces.MultiBinary):
        return BernoulliPolicy(encoder, act_space.shape, hidden_sizes, activation)
    if isinstance(act_space, gym.spaces.Box):
        if not np.issubdtype(act_space.dtype, np.floating):
            raise PolicyError(
                f"{env_name}: action space {_describe(act_space)} is not supported; Box actions must be floats"
            )
        if squash and not (np.isfinite(act_space.low).all() and np.isfinite(act_space.high).all()):
            raise PolicyError(
                f"policy.squash=true needs finite action bounds; {env_name} has "
                f"{_describe(act_space)}: set policy.squash=false"
            )
        return GaussianPolicy(encoder, act_space, hidden_sizes, activation, log_std_init, squash)
    raise PolicyError(
        f"{env_name}: action space {type(act_space).__name__} ({_describe(act_space)}) is not "
        "supported; pgrun's policies take Discrete, MultiDiscrete, MultiBinary and Box actions"
    )


def policy_from_config(env: gym.vector.VectorEnv | gym.Env, cfg: Any) -> Policy:
    """make_policy with the `policy` and `env` parts of a composed pgrun config."""
    p = cfg.policy
    return make_policy(
        env,
        list(p.hidden_sizes),
        p.activation,
        p.log_std_init,
        name=str(p.get("name", "mlp")),
        squash=bool(p.get("squash", False)),
        normalize_obs=bool(cfg.env.get("normalize_obs", False)),
    )
