"""TF-Agents bridge for the RL tasks: gymnasium adapter, Keras policies, episode collection.

This module is the **one place** where ml3tf deals with TF-Agents 0.19's install quirks
(README "Reinforcement learning"). TF-Agents' own networks need Keras 2 (``tf-keras``), selected by
``TF_USE_LEGACY_KERAS=1`` *before TensorFlow is imported*; so importing this module
first sets that variable when TensorFlow is not imported yet. It changes only what
``tf.keras`` means: ``import keras`` stays Keras 3, which is all ml3tf uses. If
TensorFlow was imported earlier, ``tf.keras`` is already Keras 3 for the process; the
classes here still work (they never use ``tf.keras``), only TF-Agents' Keras-2 networks
and agents would not, and a warning says so. ``tasks.get`` imports this module before
any RL task module, and so does the ``ml3tf`` command.

What is here (the differentiable inner update never goes through ``agent.train()``):

* ``GymnasiumEnvironment`` — a gymnasium environment as a TF-Agents ``PyEnvironment``:
  specs from the spaces, seeding, time limits (``truncation``, discount kept) and
  episode ends (``termination``), actions outside the bounds refused with ``ValueError``.
* ``make_tf_env`` — the same wrapped in ``TFPyEnvironment`` for TF-Agents drivers.
* ``KerasPolicy`` — a Keras 3 network (from ``models/``) as a TF-Agents ``TFPolicy``:
  deterministic ``a = clip(f_θ(o))`` or Gaussian ``a ~ N(f_θ(o), exp(log_std)²)``,
  optionally with explicit parameters θ (e.g. the θ_K of an inner loop).
* ``collect_episodes`` — runs a ``DynamicEpisodeDriver`` and returns padded NumPy arrays.

Example:
    >>> import ml3tf.tasks.rl_env as rl_env                     # before tensorflow, in RL scripts
    >>> import keras
    >>> env = rl_env.make_tf_env("Pendulum-v1", seed=0)
    >>> net = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, activation="tanh")])
    >>> policy = rl_env.KerasPolicy(net, env.time_step_spec(), env.action_spec())
    >>> episodes = rl_env.collect_episodes(env, policy, num_episodes=2)
    >>> episodes["return"].shape
    (2,)
"""

from __future__ import annotations

import os
import sys

LEGACY_KERAS_VARIABLE = "TF_USE_LEGACY_KERAS"
if "tensorflow" not in sys.modules:  # must happen before TensorFlow resolves tf.keras
    os.environ.setdefault(LEGACY_KERAS_VARIABLE, "1")

import contextlib  # noqa: E402  (imports below must follow the environment variable)
import importlib  # noqa: E402
import io  # noqa: E402
import logging  # noqa: E402
import types  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from typing import Any  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

logger = logging.getLogger("ml3tf")

_TF_AGENTS_MODULES = (
    "tf_agents",
    "tf_agents.environments.py_environment",
    "tf_agents.environments.tf_py_environment",
    "tf_agents.specs.array_spec",
    "tf_agents.trajectories.time_step",
    "tf_agents.trajectories.policy_step",
    "tf_agents.trajectories.trajectory",
    "tf_agents.policies.tf_policy",
    "tf_agents.drivers.dynamic_episode_driver",
)


def legacy_keras_active() -> bool:
    """Whether ``tf.keras`` is Keras 2 (``tf_keras``) in this process, as TF-Agents' networks need."""
    # tf.keras is a lazy alias whose name varies; the file it resolves to does not.
    where = str(getattr(tf.keras, "__file__", "") or "")
    return f"{os.sep}tf_keras{os.sep}" in where


def import_tf_agents() -> types.ModuleType:
    """Import TF-Agents (and the submodules used here) with its import-time noise silenced.

    TF-Agents 0.19 imports ``distutils`` (a ``DeprecationWarning`` on Python 3.11, an
    error under ``-W error``) and, through ``gym``, prints a "Gym has been unmaintained"
    notice to stderr. Exactly those two are silenced here (the notice is logged at
    DEBUG level); anything else TF-Agents says still reaches the user.

    Raises:
        ImportError: TF-Agents is not installed, with the install command (README "RL").
    """
    if "tf_agents.drivers.dynamic_episode_driver" in sys.modules:
        return sys.modules["tf_agents"]
    captured = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(captured):
            warnings.filterwarnings("ignore", message=r".*distutils.*", category=DeprecationWarning)
            for name in _TF_AGENTS_MODULES:
                importlib.import_module(name)
    except ModuleNotFoundError as err:
        raise ImportError(
            f"RL tasks need TF-Agents ({err.name} is missing): install them as README.md 'RL' says: "
            'pip install -e ".[rl]" && pip install --no-deps -r requirements-rl.txt'
        ) from err
    noise = captured.getvalue()
    unexpected = [ln for ln in noise.splitlines() if ln.strip() and not _is_gym_notice(ln)]
    if unexpected:  # not ours to hide
        sys.stderr.write("\n".join(unexpected) + "\n")
    if noise:
        logger.debug("tf_agents import printed: %s", noise.strip())
    if not legacy_keras_active():
        logger.warning(
            "TensorFlow was imported before ml3tf.tasks.rl_env, so tf.keras is Keras 3: ml3tf's RL "
            "environments and policies work, TF-Agents' own Keras-2 networks/agents do not. Import "
            "ml3tf.tasks.rl_env (or set %s=1) before TensorFlow to use those too.",
            LEGACY_KERAS_VARIABLE,
        )
    return sys.modules["tf_agents"]


def _is_gym_notice(line: str) -> bool:
    return any(
        key in line for key in ("Gym has been unmaintained", "Please upgrade to Gymnasium", "migration guide")
    )


_tfa = import_tf_agents()
py_environment = sys.modules["tf_agents.environments.py_environment"]
tf_py_environment = sys.modules["tf_agents.environments.tf_py_environment"]
array_spec = sys.modules["tf_agents.specs.array_spec"]
ts = sys.modules["tf_agents.trajectories.time_step"]
policy_step = sys.modules["tf_agents.trajectories.policy_step"]
trajectory = sys.modules["tf_agents.trajectories.trajectory"]
tf_policy = sys.modules["tf_agents.policies.tf_policy"]
dynamic_episode_driver = sys.modules["tf_agents.drivers.dynamic_episode_driver"]


def space_to_spec(space: Any, name: str) -> Any:
    """A TF-Agents ``ArraySpec`` for a gymnasium ``Box`` or ``Discrete`` space.

    ``Box`` → ``BoundedArraySpec`` (plain ``ArraySpec`` when every bound is infinite);
    ``Discrete(n, start)`` → scalar int64 ``BoundedArraySpec`` ``[start, start + n − 1]``.
    """
    import gymnasium

    if isinstance(space, gymnasium.spaces.Box):
        low, high = np.asarray(space.low), np.asarray(space.high)
        if np.all(np.isinf(low)) and np.all(np.isinf(high)):
            return array_spec.ArraySpec(space.shape, space.dtype, name=name)
        return array_spec.BoundedArraySpec(space.shape, space.dtype, low, high, name=name)
    if isinstance(space, gymnasium.spaces.Discrete):
        start = int(space.start)
        return array_spec.BoundedArraySpec((), np.int64, start, start + int(space.n) - 1, name=name)
    raise ValueError(
        f"{name} space {space!r} is not supported: GymnasiumEnvironment handles Box and Discrete spaces"
    )


class GymnasiumEnvironment(py_environment.PyEnvironment):
    """A gymnasium environment as a TF-Agents ``PyEnvironment``.

    Episode ends map onto TF-Agents time steps as

        terminated            → ``termination`` (discount 0: no value beyond the end)
        truncated (time limit) → ``truncation``  (discount kept: the state is not terminal)
        otherwise             → ``transition``

    and the next ``step`` after an episode end resets (TF-Agents' auto-reset).

    Args:
        env: a gymnasium id (``gymnasium.make(env, max_episode_steps=…, **make_kwargs)``)
            or a ``gymnasium.Env`` instance.
        seed: seeds the first ``reset`` (and the action space); later resets continue
            the environment's own random stream, as in gymnasium.
        max_episode_steps: time limit; wraps an instance in ``TimeLimit``.
        discount: the discount of non-terminal steps.

    Example:
        >>> env = GymnasiumEnvironment("Pendulum-v1", seed=0)
        >>> env.reset().observation.shape
        (3,)
    """

    def __init__(
        self,
        env: Any,
        seed: int | None = None,
        max_episode_steps: int | None = None,
        discount: float = 1.0,
        **make_kwargs: Any,
    ) -> None:
        import gymnasium

        super().__init__(handle_auto_reset=False)
        if max_episode_steps is not None and int(max_episode_steps) < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps!r}")
        if not 0.0 <= float(discount) <= 1.0:
            raise ValueError(f"discount must be in [0, 1], got {discount!r}")
        if isinstance(env, str):
            try:
                env = gymnasium.make(env, max_episode_steps=max_episode_steps, **make_kwargs)
            except gymnasium.error.Error as err:
                raise ValueError(f"env: unknown or unusable gymnasium environment {env!r}: {err}") from None
        elif isinstance(env, gymnasium.Env):
            if make_kwargs:
                raise ValueError(f"make_kwargs {sorted(make_kwargs)} need an environment id, not an instance")
            if max_episode_steps is not None:
                env = gymnasium.wrappers.TimeLimit(env, int(max_episode_steps))
        else:
            raise ValueError(f"env must be a gymnasium id or gymnasium.Env, got {type(env).__name__}")
        self.gym = env
        self._seed = seed
        self._discount = np.float32(discount)
        self._observation_spec = space_to_spec(env.observation_space, "observation")
        self._action_spec = space_to_spec(env.action_space, "action")
        if seed is not None:
            env.action_space.seed(int(seed))
        self._first_reset = True

    def observation_spec(self) -> Any:
        return self._observation_spec

    def action_spec(self) -> Any:
        return self._action_spec

    def _observation(self, obs: Any) -> np.ndarray:
        return np.asarray(obs, dtype=self._observation_spec.dtype).reshape(self._observation_spec.shape)

    def _reset(self) -> Any:
        seed = self._seed if self._first_reset else None
        self._first_reset = False
        obs, _ = self.gym.reset(seed=None if seed is None else int(seed))
        return ts.restart(self._observation(obs))

    def check_action(self, action: Any) -> np.ndarray:
        """``action`` as an array of the action spec, or ``ValueError`` naming what is wrong."""
        spec = self._action_spec
        a = np.asarray(action)
        if a.shape != spec.shape:
            a = a.reshape(spec.shape) if a.size == int(np.prod(spec.shape)) else a
        if a.shape != spec.shape:
            raise ValueError(f"action has shape {np.shape(action)}, the action spec wants {spec.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action must be finite, got {a!r}")
        low, high = np.broadcast_to(spec.minimum, spec.shape), np.broadcast_to(spec.maximum, spec.shape)
        tol = 1e-6 * np.maximum(1.0, np.abs(high - low))
        if np.any(a < low - tol) or np.any(a > high + tol):
            raise ValueError(f"action {a.tolist()} is outside the bounds [{low.tolist()}, {high.tolist()}]")
        return np.clip(a, low, high).astype(spec.dtype)

    def _step(self, action: Any) -> Any:
        if self._current_time_step is None or self._current_time_step.is_last():
            return self.reset()
        obs, reward, terminated, truncated, _ = self.gym.step(self.check_action(action))
        obs, reward = self._observation(obs), np.float32(reward)
        if terminated:
            return ts.termination(obs, reward)
        if truncated:
            return ts.truncation(obs, reward, self._discount)
        return ts.transition(obs, reward, self._discount)

    def render(self, mode: str = "rgb_array") -> Any:
        return self.gym.render()

    def close(self) -> None:
        self.gym.close()


def make_tf_env(env: Any, seed: int | None = None, **kwargs: Any) -> Any:
    """``TFPyEnvironment`` of ``env`` (a gymnasium id/instance, or a ready ``PyEnvironment``).

    ``kwargs`` go to ``GymnasiumEnvironment`` (``max_episode_steps``, ``discount``, make kwargs).
    Call ``close()`` when done: ``TFPyEnvironment`` steps through a thread pool that is
    otherwise left running.
    """
    if isinstance(env, py_environment.PyEnvironment):
        if seed is not None or kwargs:
            raise ValueError("seed and kwargs apply to gymnasium environments, not to a PyEnvironment")
        return tf_py_environment.TFPyEnvironment(env)
    return tf_py_environment.TFPyEnvironment(GymnasiumEnvironment(env, seed=seed, **kwargs))


class KerasPolicy(tf_policy.TFPolicy):
    """A Keras 3 network as a TF-Agents policy (so TF-Agents drivers collect with it).

        deterministic (``log_std=None``):  a = clip(f_θ(g(o)))
        Gaussian:                          a = clip(f_θ(g(o)) + exp(log_std) · ε),  ε ~ N(0, I)

    with ``g`` the optional ``observation_fn`` (normalisation, feature maps) and the
    clip to the action spec's bounds done by ``TFPolicy.action``. ``params`` runs the
    network statelessly with those tensors (e.g. a learner's θ_K from an inner loop)
    instead of its own variables; ``set_params`` swaps them. Gaussian noise comes from
    the policy's own ``tf.random.Generator`` (``seed``), not TensorFlow's global seed.

    Example:
        >>> policy = KerasPolicy(net, tf_env.time_step_spec(), tf_env.action_spec(), log_std=-1.0, seed=0)
        >>> step = policy.action(tf_env.reset())
    """

    def __init__(
        self,
        network: keras.Model,
        time_step_spec: Any,
        action_spec: Any,
        *,
        params: Sequence[Any] | None = None,
        log_std: float | None = None,
        observation_fn: Callable[[tf.Tensor], tf.Tensor] | None = None,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        if not isinstance(network, keras.Model) or not network.built:
            raise ValueError(f"network must be a built keras.Model, got {network!r}")
        if not getattr(action_spec, "dtype", tf.int32).is_floating:
            raise ValueError(f"KerasPolicy needs a continuous action spec, got {action_spec!r}")
        if log_std is not None and not np.isfinite(float(log_std)):
            raise ValueError(f"log_std must be finite or None, got {log_std!r}")
        self._network = network
        self._observation_fn = observation_fn
        self._log_std = None if log_std is None else float(log_std)
        self._generator = tf.random.Generator.from_seed(int(seed))
        self._params: list[tf.Variable] | None = None
        super().__init__(time_step_spec, action_spec, clip=True, name=name)
        if params is not None:
            self.set_params(params)

    def set_params(self, params: Sequence[Any]) -> None:
        """Use ``params`` (one tensor per trainable variable of the network) from now on."""
        wanted = [tuple(v.shape) for v in self._network.trainable_variables]
        got = [tuple(np.shape(p)) for p in params]
        if got != wanted:
            raise ValueError(f"params shapes {got} do not match the network's trainable shapes {wanted}")
        if self._params is None:
            self._params = [tf.Variable(p, trainable=False) for p in params]
        else:
            for v, p in zip(self._params, params, strict=True):
                v.assign(p)

    def mean_action(self, observation: tf.Tensor) -> tf.Tensor:
        """``f_θ(g(o))`` in the action spec's dtype (before noise and clipping)."""
        x = observation if self._observation_fn is None else self._observation_fn(observation)
        if self._params is None:
            out = self._network(x, training=False)
        else:
            state = [tf.convert_to_tensor(v) for v in self._network.non_trainable_variables]
            out, _ = self._network.stateless_call(
                [tf.convert_to_tensor(p) for p in self._params], state, x, training=False
            )
        out = tf.cast(out, self.action_spec.dtype)
        return tf.reshape(out, tf.concat([tf.shape(out)[:1], self.action_spec.shape], 0))

    def _action(self, time_step: Any, policy_state: Any, seed: Any) -> Any:
        mean = self.mean_action(time_step.observation)
        if self._log_std is not None:
            noise = self._generator.normal(tf.shape(mean), dtype=mean.dtype)
            mean = mean + tf.cast(tf.exp(self._log_std), mean.dtype) * noise
        return policy_step.PolicyStep(mean, policy_state, ())

    def _distribution(self, time_step: Any, policy_state: Any) -> Any:
        raise NotImplementedError("KerasPolicy samples in _action; use mean_action for the mean")

    def _variables(self) -> list:
        own = [v.value for v in self._network.weights]
        return own + list(self._params or [])


def collect_episodes(tf_env: Any, policy: Any, num_episodes: int) -> dict[str, np.ndarray]:
    """Run ``num_episodes`` episodes with a TF-Agents ``DynamicEpisodeDriver``.

    Returns NumPy arrays padded to the longest episode ``T`` (episodes in the order they
    end; batched environments interleave): ``observation (E, T, …)`` (the observation
    each action was taken in), ``action (E, T, …)``, ``reward (E, T)``, ``mask (E, T)``
    (1 inside the episode) and ``return (E,)`` = Σ_t reward_t.
    """
    if int(num_episodes) < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes!r}")
    batch = int(tf_env.batch_size or 1)
    running: list[list[Any]] = [[] for _ in range(batch)]
    finished: list[list[Any]] = []

    def observe(traj: Any) -> None:
        for b in range(batch):
            frame = tf.nest.map_structure(lambda t, b=b: t[b].numpy(), traj)
            if frame.step_type == ts.StepType.LAST and frame.next_step_type == ts.StepType.FIRST:
                continue  # the boundary step between two episodes: no action was taken
            running[b].append(frame)
            if frame.next_step_type == ts.StepType.LAST:
                finished.append(running[b])
                running[b] = []

    driver = dynamic_episode_driver.DynamicEpisodeDriver(
        tf_env, policy, observers=[observe], num_episodes=int(num_episodes)
    )
    driver.run(tf_env.reset())
    episodes = finished[: int(num_episodes)]
    horizon = max(len(ep) for ep in episodes)

    def stack(field: str) -> np.ndarray:
        first = np.asarray(getattr(episodes[0][0], field))
        out = np.zeros((len(episodes), horizon, *first.shape), dtype=first.dtype)
        for i, ep in enumerate(episodes):
            out[i, : len(ep)] = np.stack([getattr(f, field) for f in ep])
        return out

    mask = np.zeros((len(episodes), horizon), np.float32)
    for i, ep in enumerate(episodes):
        mask[i, : len(ep)] = 1.0
    reward = stack("reward").astype(np.float64)
    return {
        "observation": stack("observation"),
        "action": stack("action"),
        "reward": reward,
        "mask": mask,
        "return": (reward * mask).sum(axis=1),
    }


__all__ = [
    "GymnasiumEnvironment",
    "KerasPolicy",
    "collect_episodes",
    "import_tf_agents",
    "legacy_keras_active",
    "make_tf_env",
    "space_to_spec",
]
