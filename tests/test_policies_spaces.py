"""Every space -> its policy: distribution family, shapes, log-probs by hand, the fast sample
drawing what the distribution draws, the deterministic mode, the tanh squash, the Nature CNN,
observation normalisation saved with the policy, reward scaling, and the one-line errors."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli, Categorical, Independent, Normal
from torch.testing import assert_close

import pgrun
from pgrun import diagnostics
from pgrun.normalization import RewardScaler, RunningNorm
from pgrun.policies import (
    BernoulliPolicy,
    CategoricalPolicy,
    GaussianPolicy,
    MultiCategoricalPolicy,
    NatureCNN,
    PolicyError,
    SquashedNormal,
    make_policy,
)
from pgrun.rollout import Batch, collect_episodes

BOX3 = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
TOY_ID = "pgrun_test/Spaces-v0"


class Spaces(gym.Env):
    """An env that only carries the two spaces make_policy looks at."""

    def __init__(self, observation_space, action_space):
        self.observation_space = observation_space
        self.action_space = action_space


class ToyEnv(gym.Env):
    """Any observation and action space: observations drawn from the observation space, reward
    = the sum of the action's entries (so a policy gradient has something to push), episodes of
    `length` steps. Checks every action it gets is in its action space."""

    def __init__(self, observation_space, action_space, length: int = 5):
        self.observation_space, self.action_space, self.length = (
            observation_space,
            action_space,
            length,
        )
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.observation_space.seed(int(self.np_random.integers(2**31)))
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        assert self.action_space.contains(action), (action, self.action_space)
        self.t += 1
        reward = float(np.sum(np.asarray(action, dtype=np.float64)))
        return self.observation_space.sample(), reward, self.t >= self.length, False, {}


if TOY_ID not in gym.registry:
    gym.register(TOY_ID, entry_point=ToyEnv)

SPACES = {
    "discrete": gym.spaces.Discrete(3),
    "discrete-start": gym.spaces.Discrete(3, start=-1),
    "multidiscrete": gym.spaces.MultiDiscrete([2, 4, 3]),
    "multibinary": gym.spaces.MultiBinary(4),
    "box": gym.spaces.Box(-2.0, 2.0, (2,), np.float32),
    "box-2d": gym.spaces.Box(-1.0, 1.0, (2, 2), np.float32),
}
OBS_SPACES = {
    "box": BOX3,
    "discrete": gym.spaces.Discrete(5),
    "multidiscrete": gym.spaces.MultiDiscrete([3, 2]),
    "multibinary": gym.spaces.MultiBinary(3),
}


def toy(obs_space, act_space, n=3, seed=0):
    return pgrun.make_env(
        TOY_ID, num_envs=n, seed=seed, observation_space=obs_space, action_space=act_space
    )


@pytest.mark.parametrize(
    ("act_name", "cls", "dist_cls", "event_shape", "dtype"),
    [
        ("discrete", CategoricalPolicy, Categorical, (), torch.int64),
        ("multidiscrete", MultiCategoricalPolicy, Independent, (3,), torch.int64),
        ("multibinary", BernoulliPolicy, Independent, (4,), torch.float32),
        ("box", GaussianPolicy, Independent, (2,), torch.float32),
        ("box-2d", GaussianPolicy, Independent, (2, 2), torch.float32),
    ],
)
def test_action_space_picks_the_distribution(act_name, cls, dist_cls, event_shape, dtype):
    torch.manual_seed(0)
    policy = make_policy(Spaces(BOX3, SPACES[act_name]), hidden_sizes=[8])
    assert type(policy) is cls
    dist = policy(torch.randn(5, 7, 3))
    assert isinstance(dist, dist_cls)
    assert dist.batch_shape == (5, 7) and dist.event_shape == event_shape
    act = dist.sample()
    assert act.shape == (5, 7, *event_shape) and act.dtype == dtype
    assert dist.log_prob(act).shape == (5, 7)
    assert dist.entropy().shape == (5, 7)


def test_multidiscrete_is_independent_categoricals_by_hand():
    # Linear policy, zero weights: logits = bias; component j has nvec[j] choices.
    policy = make_policy(Spaces(BOX3, gym.spaces.MultiDiscrete([2, 3])), hidden_sizes=[])
    bias = torch.tensor([0.0, 1.0, 99.0, 0.5, 0.0, -0.5])  # (k=2) x (max n=3); slot 3 unused
    with torch.no_grad():
        policy.net[0].weight.zero_()
        policy.net[0].bias.copy_(bias)
    dist = policy(torch.zeros(3))
    act = torch.tensor([1, 2])
    l0 = torch.log_softmax(torch.tensor([0.0, 1.0]), 0)[1]
    l1 = torch.log_softmax(torch.tensor([0.5, 0.0, -0.5]), 0)[2]
    assert_close(dist.log_prob(act), l0 + l1)
    # The padded slot (logit 99) is never drawn and never the mode.
    torch.manual_seed(0)
    draws = policy.sample(torch.zeros(2000, 3))
    assert draws[:, 0].max() <= 1 and draws[:, 1].max() <= 2
    assert policy.mode(torch.zeros(3)).tolist() == [1, 0]
    h0 = -(
        torch.softmax(torch.tensor([0.0, 1.0]), 0) * torch.log_softmax(torch.tensor([0.0, 1.0]), 0)
    ).sum()
    p1 = torch.tensor([0.5, 0.0, -0.5])
    h1 = -(torch.softmax(p1, 0) * torch.log_softmax(p1, 0)).sum()
    assert_close(dist.entropy(), h0 + h1)


def test_multibinary_is_bernoulli_by_hand():
    policy = make_policy(Spaces(BOX3, gym.spaces.MultiBinary(3)), hidden_sizes=[])
    with torch.no_grad():
        policy.net[0].weight.zero_()
        policy.net[0].bias.copy_(torch.tensor([0.0, 2.0, -1.0]))
    dist = policy(torch.zeros(3))
    assert isinstance(dist.base_dist, Bernoulli)
    act = torch.tensor([1.0, 0.0, 1.0])
    p = torch.sigmoid(torch.tensor([0.0, 2.0, -1.0]))
    expected = torch.log(p[0]) + torch.log(1 - p[1]) + torch.log(p[2])
    assert_close(dist.log_prob(act), expected)
    assert policy.mode(torch.zeros(3)).tolist() == [0.0, 1.0, 0.0]  # p > 1/2 only for logit 2


@pytest.mark.parametrize(
    ("act_name", "squash"), [(name, False) for name in SPACES] + [("box", True), ("box-2d", True)]
)
def test_sample_draws_exactly_what_the_distribution_draws(act_name, squash):
    torch.manual_seed(0)
    policy = make_policy(Spaces(BOX3, SPACES[act_name]), hidden_sizes=[8], squash=squash)
    obs = torch.randn(64, 3)
    for seed in range(3):
        torch.manual_seed(seed)
        fast = policy.sample(obs)
        torch.manual_seed(seed)
        slow = policy(obs).sample()
        assert fast.shape == slow.shape and fast.dtype == slow.dtype
        assert torch.equal(fast, slow)


@pytest.mark.parametrize("act_name", list(SPACES))
def test_mode_is_deterministic_and_most_likely(act_name):
    torch.manual_seed(1)
    policy = make_policy(Spaces(BOX3, SPACES[act_name]), hidden_sizes=[8])
    obs = torch.randn(16, 3)
    mode = policy.mode(obs)
    assert torch.equal(mode, policy.mode(obs))
    dist = policy(obs)
    # No sampled action is more likely than the mode.
    torch.manual_seed(0)
    samples = dist.sample((200,))
    assert (dist.log_prob(samples) <= dist.log_prob(mode) + 1e-5).all()


def test_squashed_gaussian_log_prob_has_the_tanh_correction():
    space = gym.spaces.Box(np.array([-1.0, 0.0], np.float32), np.array([3.0, 1.0], np.float32))
    policy = make_policy(Spaces(BOX3, space), hidden_sizes=[], squash=True, log_std_init=0.0)
    with torch.no_grad():
        policy.net[0].weight.zero_()
        policy.net[0].bias.copy_(torch.tensor([0.3, -0.2]))
    u = torch.tensor([0.5, -1.0])
    loc, scale = torch.tensor([1.0, 0.5]), torch.tensor([2.0, 0.5])
    act = loc + scale * torch.tanh(u)
    # log N(u; mu, 1) - log(scale) - log(1 - tanh(u)^2), summed over the action's entries
    gauss = Normal(torch.tensor([0.3, -0.2]), 1.0).log_prob(u)
    expected = (gauss - scale.log() - torch.log(1 - torch.tanh(u) ** 2)).sum()
    dist = policy(torch.zeros(3))
    assert isinstance(dist.base_dist, SquashedNormal)
    assert_close(dist.log_prob(act), expected, rtol=1e-5, atol=1e-5)
    # Every draw is inside the bounds, the mode is the squashed mean.
    torch.manual_seed(0)
    draws = policy.sample(torch.zeros(5000, 3))
    assert (draws >= torch.tensor(space.low)).all() and (draws <= torch.tensor(space.high)).all()
    assert_close(policy.mode(torch.zeros(3)), loc + scale * torch.tanh(torch.tensor([0.3, -0.2])))
    # An action exactly on a bound (float32 tanh saturates) still has a finite log-prob.
    assert torch.isfinite(dist.log_prob(torch.tensor([3.0, 0.0])))
    # Its entropy is that of the Gaussian before squashing (documented).
    assert_close(dist.entropy(), Normal(torch.zeros(2), 1.0).entropy().sum())


def test_squash_needs_finite_bounds():
    unbounded = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    with pytest.raises(PolicyError, match="policy.squash=true needs finite action bounds"):
        make_policy(Spaces(BOX3, unbounded), squash=True)


@pytest.mark.parametrize(
    ("obs_name", "obs", "features"),
    [
        ("discrete", torch.tensor([0, 4]), [[1, 0, 0, 0, 0], [0, 0, 0, 0, 1]]),
        ("multidiscrete", torch.tensor([[2, 0], [0, 1]]), [[0, 0, 1, 1, 0], [1, 0, 0, 0, 1]]),
        ("multibinary", torch.tensor([[1.0, 0.0, 1.0]]), [[1, 0, 1]]),
    ],
)
def test_discrete_observations_are_one_hot(obs_name, obs, features):
    policy = make_policy(Spaces(OBS_SPACES[obs_name], gym.spaces.Discrete(2)), hidden_sizes=[])
    assert policy.net[0].in_features == len(features[0])
    assert_close(policy.encoder(obs), torch.tensor(features, dtype=torch.float32))


@pytest.mark.parametrize("obs_name", list(OBS_SPACES))
@pytest.mark.parametrize("act_name", ["discrete-start", "multidiscrete", "multibinary", "box-2d"])
def test_rollout_loss_and_diagnostics_for_every_pair_of_spaces(obs_name, act_name):
    """A batch from a real vector env, its loss gradient, and the per-episode gradients of the
    diagnostics (torch.func.vmap through the policy) all work for the space pair."""
    env = toy(OBS_SPACES[obs_name], SPACES[act_name])
    torch.manual_seed(0)
    policy = make_policy(env, hidden_sizes=[8])
    batch = collect_episodes(env, policy, horizon=6, seed=0)  # the env checks every action
    env.close()
    assert batch.num_steps == 3 * 5 and bool(batch.terminated.any(1).all())
    logp = policy(batch.obs).log_prob(batch.act)
    assert logp.shape == (3, 5)
    adv = torch.randn(3, 5)
    (-(logp * adv).sum()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in policy.parameters())
    g = diagnostics.per_episode_grads(policy, batch, adv)
    assert g.shape == (3, sum(p.numel() for p in policy.parameters()))
    assert torch.isfinite(g).all()


def test_discrete_action_start_is_added_back_for_the_env():
    # Discrete(3, start=-1): the policy picks 0..2, the env gets -1..1 and pays it as reward.
    env = toy(BOX3, gym.spaces.Discrete(3, start=-1), n=2)
    policy = make_policy(env, hidden_sizes=[])
    with torch.no_grad():
        policy.net[0].weight.zero_()
        policy.net[0].bias.copy_(torch.tensor([0.0, 0.0, 50.0]))  # always index 2
    batch = collect_episodes(env, policy, horizon=5, seed=0)
    env.close()
    assert (batch.act == 2).all()
    assert_close(batch.rew, torch.ones(2, 5))  # action 2 - 1 = +1 each step


# The Nature CNN


def test_nature_cnn_layers_and_shapes():
    cnn = NatureCNN((4, 84, 84))
    convs = [m for m in cnn.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (4, 32, (8, 8), (4, 4)),
        (32, 64, (4, 4), (2, 2)),
        (64, 64, (3, 3), (1, 1)),
    ]
    fc = [m for m in cnn.modules() if isinstance(m, nn.Linear)]
    assert [(f.in_features, f.out_features) for f in fc] == [(64 * 7 * 7, 512)]
    assert cnn(torch.zeros(2, 4, 84, 84)).shape == (2, 512)


FRAMES = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)


def test_cnn_policy_scales_uint8_frames():
    torch.manual_seed(0)
    policy = make_policy(Spaces(FRAMES, gym.spaces.Discrete(6)), name="cnn", hidden_sizes=[])
    assert [(m.in_features, m.out_features) for m in policy.net] == [(512, 6)]
    frames = torch.randint(0, 256, (2, 3, 4, 84, 84), dtype=torch.uint8)  # (N, T, C, H, W)
    dist = policy(frames)
    assert dist.batch_shape == (2, 3)
    expected = policy.net(policy.encoder.cnn(frames.reshape(6, 4, 84, 84).float() / 255.0))
    assert_close(dist.logits, torch.log_softmax(expected, -1).reshape(2, 3, 6))


def test_cnn_reads_channels_last_frames():
    torch.manual_seed(0)
    space = gym.spaces.Box(0, 255, (96, 96, 3), np.uint8)
    policy = make_policy(Spaces(space, gym.spaces.Discrete(2)), name="cnn")
    assert policy.encoder.cnn.convs[0].in_channels == 3
    frame = torch.randint(0, 256, (1, 96, 96, 3), dtype=torch.uint8)
    direct = policy.encoder.cnn(frame.permute(0, 3, 1, 2).float() / 255.0)
    assert_close(policy.encoder(frame), direct)


def test_cnn_needs_frames():
    with pytest.raises(PolicyError, match="policy=cnn needs image observations"):
        make_policy(Spaces(BOX3, gym.spaces.Discrete(2)), name="cnn")
    tiny = gym.spaces.Box(0, 255, (4, 16, 16), np.uint8)
    with pytest.raises(PolicyError, match="too small"):
        make_policy(Spaces(tiny, gym.spaces.Discrete(2)), name="cnn")


def test_mlp_on_frames_flattens_and_scales():
    policy = make_policy(Spaces(FRAMES, gym.spaces.Discrete(2)), hidden_sizes=[])
    frame = torch.full((1, 4, 84, 84), 255, dtype=torch.uint8)
    assert_close(policy.encoder(frame), torch.ones(1, 4 * 84 * 84))


# Unsupported spaces


UNSUPPORTED = [
    (gym.spaces.Dict({"x": BOX3}), gym.spaces.Discrete(2), "Dict"),
    (gym.spaces.Text(5), gym.spaces.Discrete(2), "Text"),
    (gym.spaces.Graph(node_space=BOX3, edge_space=None), gym.spaces.Discrete(2), "Graph"),
    (gym.spaces.Tuple((BOX3, BOX3)), gym.spaces.Discrete(2), "Tuple"),
    (gym.spaces.Sequence(BOX3), gym.spaces.Discrete(2), "Sequence"),
    (BOX3, gym.spaces.Dict({"a": gym.spaces.Discrete(2)}), "Dict"),
    (BOX3, gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.Discrete(2))), "Tuple"),
    (BOX3, gym.spaces.Text(3), "Text"),
    (BOX3, gym.spaces.Box(0, 3, (2,), np.int64), "Box"),
]


@pytest.mark.parametrize(("obs_space", "act_space", "kind"), UNSUPPORTED)
def test_unsupported_spaces_say_so_in_one_line(obs_space, act_space, kind):
    env = Spaces(obs_space, act_space)
    env.spec = gym.envs.registration.EnvSpec("MyEnv-v0")
    with pytest.raises(PolicyError) as info:
        make_policy(env)
    message = str(info.value)
    assert "\n" not in message
    assert "not supported" in message
    assert message.startswith("MyEnv-v0: ") and kind in message


# Observation normalisation


def test_running_norm_matches_the_statistics_of_all_rows():
    rng = np.random.default_rng(0)
    chunks = [rng.normal(3.0, 2.0, (n, 2)) for n in (5, 1, 40, 7)]
    norm = RunningNorm(2)
    for x in chunks:
        norm.update(torch.as_tensor(x))
    every = np.concatenate(chunks)
    assert_close(norm.mean, torch.as_tensor(every.mean(0)))
    assert_close(norm.var, torch.as_tensor(every.var(0)))
    assert norm.count.item() == len(every)
    x = np.array([[3.0, -1.0]])
    expected = (x - every.mean(0)) / np.sqrt(every.var(0) + 1e-8)
    assert_close(norm(torch.tensor(x, dtype=torch.float32)), torch.tensor(expected).float())
    assert norm(torch.tensor([[1e9, -1e9]])).tolist() == [[10.0, -10.0]]  # clipped


def test_normalised_policy_updates_from_valid_steps_only_and_reloads_the_same(tmp_path):
    env = pgrun.make_env("Pendulum-v1", num_envs=4, seed=0)
    torch.manual_seed(0)
    policy = make_policy(env, hidden_sizes=[8], normalize_obs=True)
    batch = collect_episodes(env, policy, horizon=50, seed=0)
    env.close()
    # Identity statistics before the first update.
    assert_close(policy.encoder(batch.obs[0, :3]), batch.obs[0, :3])
    # Mask out the second half: only valid steps count.
    mask = batch.mask.clone()
    mask[:, 25:] = 0
    policy.update_obs_stats(batch.obs, mask)
    valid = batch.obs[:, :25].reshape(-1, 3).double()
    assert_close(policy.encoder.norm.mean, valid.mean(0))
    assert policy.encoder.norm.count.item() == 100
    # Saved and loaded into a fresh policy (as pgrun-play does), it acts the same.
    torch.save({"state_dict": policy.state_dict()}, tmp_path / "policy.pt")
    fresh = make_policy(env, hidden_sizes=[8], normalize_obs=True)
    fresh.load_state_dict(torch.load(tmp_path / "policy.pt", weights_only=True)["state_dict"])
    obs = torch.randn(10, 3)
    assert_close(fresh.mode(obs), policy.mode(obs))
    assert not torch.allclose(fresh.encoder(obs), obs)  # the statistics came along


def test_normalize_obs_is_refused_for_frames():
    with pytest.raises(PolicyError, match="env.normalize_obs"):
        make_policy(Spaces(FRAMES, gym.spaces.Discrete(2)), name="cnn", normalize_obs=True)


# Reward scaling


def test_reward_scaler_divides_by_the_running_std_of_discounted_returns():
    rew = torch.tensor([[1.0, 2.0, 0.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    z = torch.zeros(2)
    batch = Batch.from_episodes(
        rew[..., None], torch.zeros(2, 3), rew, mask, z.bool(), z.bool(), z[:, None]
    )
    scaler = RewardScaler(gamma=0.5)
    out = scaler(batch)
    returns = np.array([1.0 + 0.5 * 2.0, 4.0])  # G = sum_t gamma^t r_t
    assert_close(out.rew, rew / float(returns.std()))
    assert_close(batch.rew, rew)  # the input batch (its logged returns) is unchanged
    # A second batch merges into the same statistics.
    out2 = scaler(batch)
    both = np.concatenate([returns, returns])
    assert_close(out2.rew, rew / float(both.std()))


def test_reward_scaler_leaves_equal_returns_unscaled():
    rew = torch.ones(3, 2)
    z = torch.zeros(3)
    batch = Batch.from_episodes(rew, rew, rew, torch.ones(3, 2), z.bool(), z.bool(), z[:, None])
    assert_close(RewardScaler(1.0)(batch).rew, rew)


def test_gaussian_policy_is_still_the_plain_normal_without_squash():
    policy = make_policy(Spaces(BOX3, SPACES["box"]), hidden_sizes=[], log_std_init=math.log(0.5))
    dist = policy(torch.zeros(3))
    assert isinstance(dist.base_dist, Normal)
    assert_close(dist.base_dist.scale, torch.full((2,), 0.5))
