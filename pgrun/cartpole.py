"""A cheaper step for gymnasium's CartPoleVectorEnv, with the same results to the last bit.

gymnasium's step checks every action against the action space (a fifth of its time at N = 16),
then builds each intermediate array anew. `fast_step(env)` returns a replacement for env.step
that does the same arithmetic, operation for operation in the same order and dtypes (so every
state, reward and flag is bit-equal, tests/unit/test_cartpole.py), into arrays allocated once,
and updates the env's own state, step counts and autoreset flags as env.step does: the env can
be stepped, reset or closed as usual afterwards. The actions are trusted: they come from a
policy over Discrete(2), 0 or 1.

The dynamics are the cart-pole equations of Barto, Sutton and Anderson (1983) in Florian's
corrected form (2005), integrated with step tau, as gymnasium implements them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Step = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]]


def fast_step(
    env: Any,
    reset: Callable[[np.ndarray], np.ndarray] | None = None,
    autoreset: bool = True,
) -> Step | None:
    """A replacement for `env.step` where env is exactly a gymnasium CartPoleVectorEnv (not a
    subclass, not wrapped); None for any other env. Call env.reset before the first step.

    `reset(idx)` gives the new states (4, len(idx)) of the copies idx (ascending) that
    autoreset; by default they are drawn as gymnasium draws them, from env.np_random
    (pgrun.batched.CartPoleGroup draws each seed's copies from its own seed's env).

    Without `autoreset` a copy whose episode has ended goes on from its last state (its
    flags, rewards and states are then meaningless, and the env's RNG is not drawn from):
    for a batch of first episodes, which masks every step after a copy's end and resets the
    env with a seed before the next batch. The ended copies stay marked (prev_done), so a
    later env.step resets them as gymnasium does."""
    from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv

    if type(env) is not CartPoleVectorEnv:
        return None
    n = env.num_envs
    tmp = np.empty(n)  # scratch for the products
    cos, sin = np.empty(n), np.empty(n)
    temp = np.empty(n)
    # the four time derivatives (x_dot, xacc, theta_dot, thetaacc): the accelerations are
    # computed into rows 1 and 3, and Euler's update is then one operation on the whole state
    deriv = np.empty((4, n))
    xacc, thetaacc = deriv[1], deriv[3]
    forces = np.array([-env.force_mag, env.force_mag])  # by action: sign(a - 0.5) * force_mag
    ones = np.ones(n, dtype=np.float32)
    limits = np.array([[env.x_threshold], [env.theta_threshold_radians]])  # for rows x, theta
    over, beyond = np.empty((2, n)), np.empty((2, n), dtype=bool)
    gravity, length, masspole = env.gravity, env.length, env.masspole
    total_mass, pml, tau = env.total_mass, env.polemass_length, env.tau
    euler = env.kinematics_integrator == "euler"

    def step(action: np.ndarray):
        state = env.state
        theta, theta_dot = state[2], state[3]  # rows of env.state: updated in place
        if action.dtype.kind in "iu":
            force = forces[action]
        else:
            force = np.where(action == 1, forces[1], forces[0])
        np.cos(theta, out=cos)
        np.sin(theta, out=sin)
        # temp = (force + pml * theta_dot^2 * sin) / total_mass
        np.square(theta_dot, out=tmp)
        np.multiply(pml, tmp, out=tmp)
        np.multiply(tmp, sin, out=tmp)
        np.add(force, tmp, out=temp)
        np.divide(temp, total_mass, out=temp)
        # thetaacc = (gravity * sin - cos * temp) / (length * (4/3 - masspole * cos^2 / total))
        np.square(cos, out=tmp)
        np.multiply(masspole, tmp, out=tmp)
        np.divide(tmp, total_mass, out=tmp)
        np.subtract(4.0 / 3.0, tmp, out=tmp)
        np.multiply(length, tmp, out=tmp)
        np.multiply(gravity, sin, out=thetaacc)
        np.subtract(thetaacc, np.multiply(cos, temp, out=xacc), out=thetaacc)
        np.divide(thetaacc, tmp, out=thetaacc)
        # xacc = temp - pml * thetaacc * cos / total_mass
        np.multiply(pml, thetaacc, out=tmp)
        np.multiply(tmp, cos, out=tmp)
        np.divide(tmp, total_mass, out=tmp)
        np.subtract(temp, tmp, out=xacc)
        if euler:  # every row from the derivatives before the step
            deriv[0::2] = state[1::2]
            state += np.multiply(tau, deriv, out=deriv)
        else:  # semi-implicit Euler: the velocities first, then the positions from them
            state[1::2] += np.multiply(tau, deriv[1::2], out=deriv[1::2])
            state[0::2] += np.multiply(tau, state[1::2], out=deriv[0::2])
        # (x < -x_lim) | (x > x_lim) | ...: the same flags, NaN included (never terminated)
        np.greater(np.abs(state[0::2], out=over), limits, out=beyond)
        terminated = np.logical_or(beyond[0], beyond[1])
        env.steps += 1
        truncated = env.steps >= env.max_episode_steps
        if env._sutton_barto_reward:
            reward = -np.array(terminated, dtype=np.float32)
        else:
            reward = ones.copy()
        # the copies that ended at the previous step start again (next-step autoreset); with
        # none, gymnasium's draw of no numbers leaves the RNG as it is
        done = env.prev_done
        ended = np.count_nonzero(done) if autoreset else 0
        if ended:
            if reset is None:
                state[:, done] = env.np_random.uniform(low=env.low, high=env.high, size=(4, ended))
            else:
                state[:, done] = reset(np.flatnonzero(done))
            env.steps[done] = 0
            reward[done] = 0.0
            terminated[done] = False
            truncated[done] = False
        ends = np.logical_or(terminated, truncated)
        env.prev_done = ends if autoreset else np.logical_or(ends, done, out=ends)
        return state.T.astype(np.float32), reward, terminated, truncated, {}

    return step
