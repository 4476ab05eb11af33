"""The authors' MountainCar as a real environment, stepped through TF-Agents.

``AuthorsMountainCarEnv`` is a ``gymnasium.Env`` of exactly the physics of
``ml3tf.tasks.mountain_car.step_numpy`` (start (−0.55, 0), 35 steps, reward −‖s − s*‖ per
step, ``terminated`` never — the car may pass p = 0.5 and stay clipped there, as in
the authors' simulation); ``ml3tf.tasks.rl_env.GymnasiumEnvironment`` makes it a TF-Agents
``PyEnvironment``. ``run_policy`` rolls a policy (its Keras network and parameters θ)
out through ``KerasPolicy`` + ``collect_episodes``: the confirmation that the
policy trained by back-propagating through the TensorFlow rollout does the same in
the environment. ``run_policy`` also accepts gymnasium's ``MountainCarContinuous-v0``
(other physics: force 0.0015·a with a ∈ [−1, 1], gravity 0.0025·cos 3p, no friction,
999 steps), with the policy's action mapped by ``action_scale``.

Importing this module imports TF-Agents (through ``ml3tf.tasks.rl_env``, first).

Example:
    >>> import ml3tf.tasks.mountain_car_env as mce
    >>> out = mce.run_policy(policy_network, params)         # {"states", "actions", "return"}
"""

from __future__ import annotations

import ml3tf.tasks.rl_env as rl_env  # first: selects Keras 2 for tf.keras before TensorFlow

# isort: split

from typing import Any, ClassVar

import gymnasium
import keras
import numpy as np
import tensorflow as tf

from ml3tf.tasks.mountain_car import (
    GOAL,
    MAX_ACTION,
    MAX_POSITION,
    MAX_SPEED,
    MIN_ACTION,
    MIN_POSITION,
    START,
    check_action,
    step_numpy,
)


class AuthorsMountainCarEnv(gymnasium.Env):
    """The authors' MountainCar physics as a gymnasium environment (observation (p, v)).

    Args:
        horizon: steps per episode (``truncated`` after it).
        start: the start state (deterministic, as the authors').
        goal: s*, for the reward −‖s − s*‖.
    """

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self, horizon: int = 35, start=START, goal=GOAL) -> None:
        if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"horizon must be an integer >= 1, got {horizon!r}")
        self.horizon = horizon
        self.start = np.asarray(start, np.float64)
        self.goal = np.asarray(goal, np.float64)
        self.observation_space = gymnasium.spaces.Box(
            np.array([MIN_POSITION, -MAX_SPEED], np.float32), np.array([MAX_POSITION, MAX_SPEED], np.float32)
        )
        self.action_space = gymnasium.spaces.Box(MIN_ACTION, MAX_ACTION, (1,), np.float32)
        self.state = self.start.copy()
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.state, self.t = self.start.copy(), 0
        return self.state.astype(np.float32), {}

    def step(self, action):
        a = check_action(np.reshape(action, -1))
        self.state = step_numpy(self.state, a[0])
        self.t += 1
        reward = -float(np.linalg.norm(self.state - self.goal))
        return self.state.astype(np.float32), reward, False, self.t >= self.horizon, {}


def run_policy(
    network: keras.Model,
    params: list | None = None,
    env: str | gymnasium.Env | None = None,
    action_scale: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """One deterministic episode of the policy through TF-Agents.

    ``env``: ``None`` (``AuthorsMountainCarEnv()``), an instance, or a gymnasium id such as
    ``"MountainCarContinuous-v0"``. The action is ``clip(action_scale · f_θ(s))`` to the
    environment's bounds (``KerasPolicy``). Returns ``{"states": (T+1, 2)``, ``"actions": (T,)``,
    ``"return"``, ``"max_position"``}``; ``states`` are the observations and the last one.
    """
    if not (np.isfinite(action_scale) and action_scale > 0):
        raise ValueError(f"action_scale must be a positive finite number, got {action_scale!r}")
    env = AuthorsMountainCarEnv() if env is None else env
    if isinstance(env, str):
        env = gymnasium.make(env)
    recorder = _Recorder(env)
    tf_env = rl_env.make_tf_env(rl_env.GymnasiumEnvironment(recorder, seed=seed))
    try:
        scaled = _Scaled(network, action_scale) if action_scale != 1.0 else network
        policy = rl_env.KerasPolicy(scaled, tf_env.time_step_spec(), tf_env.action_spec(), params=params)
        ep = rl_env.collect_episodes(tf_env, policy, num_episodes=1)
    finally:
        tf_env.close()
    n = int(ep["mask"][0].sum())
    states = np.asarray(recorder.episodes[0], np.float64)[:, :2]
    return {
        "states": states,
        "actions": ep["action"][0, :n, 0].astype(np.float64),
        "return": float(ep["return"][0]),
        "max_position": float(states[:, 0].max()),
    }


class _Recorder(gymnasium.Wrapper):
    """Keeps every observation, including the last one of an episode (``episodes``)."""

    def __init__(self, env: gymnasium.Env) -> None:
        super().__init__(env)
        self.episodes: list[list[np.ndarray]] = []
        self._current: list[np.ndarray] = []

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._current = [np.asarray(obs, np.float64)]
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._current.append(np.asarray(obs, np.float64))
        if terminated or truncated:
            self.episodes.append(self._current)
        return obs, reward, terminated, truncated, info


class _Scaled(keras.Model):
    """``action_scale · network(x)``, with the network's own parameters (for ``params``)."""

    def __init__(self, network: keras.Model, scale: float) -> None:
        super().__init__()
        self.network = network
        self.scale = float(scale)
        self.build(network.inputs[0].shape if network.inputs else (None, 2))

    def build(self, input_shape):
        self.built = True

    def call(self, x, training=False):
        return self.network(x, training=training) * tf.constant(self.scale, self.compute_dtype)
