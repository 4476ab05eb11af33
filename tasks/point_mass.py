"""Model-free ML3 on a 2-D point mass: a learned loss vs REINFORCE (ML3 §V-C, model-free RL).

**Environment** (``PointMassEnv``, gymnasium id ``ml3tf/PointMass-v0``; the same dynamics in
TensorFlow, batched, in ``point_mass_step`` / ``rollout``):

    p_0 = 0,   ā_t = clip(a_t, −1, 1)²,   p_{t+1} = clip(p_t + dt·ā_t, −bound, bound)
    observation s_t = [p_t, g] (4 numbers),   reward r_t = −‖p_{t+1} − g‖,   t = 0 … T−1

**Learner**: a Gaussian policy π_θ(a|s) = N(μ_θ(s), σ²I) with μ_θ an MLP 4 → hidden → 2
(``ml3tf.models.mlp.make_mlp``, tanh) and σ = exp(``log_std``) fixed. A rollout of E episodes draws
a_t = μ_θ(s_t) + σ ε_t, with ε read from the ``TaskBatch`` (drawn with numpy in ``sample``:
the same numbers in eager, graph and XLA runs; the rollout itself runs inside the graph).
Return-to-go G_t = Σ_{t'≥t} r_{t'}; advantage Â_t = G_t − mean_e G_t (a per-step baseline
over the E episodes; ``advantage_baseline=False`` gives Â_t = G_t).

**What the loss network sees**, one row per (episode, step), 11 features:

    [p_t (2), g (2), a_t (2), G_t / T, Â_t / T, μ_θ(s_t) (2), log π_θ(a_t|s_t)]

The trajectory part (p, g, a, G, Â) is ``tf.stop_gradient``-ed; μ_θ(s_t) and log π_θ(a_t|s_t)
are recomputed from θ, so ``∇_θ mean M_φ`` exists (the inner gradient).

**Inner step** (K of them): θ ← θ − α ∇_θ mean M_φ(features of E rollouts of π_θ).

**Task loss**: the REINFORCE surrogate on E *fresh* rollouts of the updated policy π_θK (query
noise; trajectory data stop-gradient'ed), in return-to-go form:

    L_task(θ_K) = − mean_{e,t} Â_t · log π_θK(a_t | s_t)

whose gradient is the REINFORCE estimate of −∇J(θ_K)/T (J the expected return; unbiased with
``advantage_baseline=False``; the batch-mean baseline is the usual variance reduction).
φ gets its gradient through θ_K(φ). ``baseline_inner_loss`` is the same surrogate on the
support rollouts (the ``reinforce`` baseline, and MAML's inner loss).

**Meta-train / meta-test**: goals g = r(cos ϑ, sin ϑ), r ~ U[goal_radius]; meta-train goals
have ϑ ∈ ``train_angles`` (degrees), the held-out ``test`` split ϑ ∈ ``test_angles``.
Meta-test: for each of ``n_eval_goals`` goals per split, a fresh policy (the same θ₀ for both
arms) is trained for N = ``eval_steps`` SGD updates at ``inner_lr``, each update on E fresh
rollouts (the same noise for both arms), on the learned loss or on REINFORCE; the metric is
the return of the deterministic policy μ_θ after each update ("return", higher is better).
The final returns are measured again in the real gymnasium environment through TF-Agents
(``ml3tf.tasks.rl_env``: adapter, ``KerasPolicy``, ``collect_episodes``).

Example:
    >>> import ml3tf
    >>> from ml3tf import tasks
    >>> task = tasks.get("point_mass")
    >>> run = ml3tf.train(task, task.default_config(), out_dir="runs/point_mass", seeds=[0, 1])
    >>> run.results["final"]["test"]   # return after N updates: learned vs reinforce
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium
import keras
import numpy as np
import tensorflow as tf

from ml3tf.config import MetaTrainConfig
from ml3tf.engine import architecture_key, engine_for, per_seed, phi_of, stateless_loss
from ml3tf.functional import FunctionalModel
from ml3tf.meta_loss import MetaLossNetwork
from ml3tf.models.mlp import make_mlp
from ml3tf.results import summarize_task
from ml3tf.task import Task, TaskBatch

ENV_ID = "ml3tf/PointMass-v0"
OBS_DIM, ACT_DIM, N_FEATURES = 4, 2, 11
_TRAIN_STREAM, _EVAL_GOAL_STREAM, _EVAL_NOISE_STREAM = 0, 1, 2
_SPLITS = ("train", "test")


# --- the environment: gymnasium and TensorFlow ----------------------------------------------
def _check_dynamics(horizon: Any, dt: Any, position_bound: Any) -> None:
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise ValueError(f"horizon must be an integer >= 1, got {horizon!r}")
    for name, v in (("dt", dt), ("position_bound", position_bound)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a positive finite number, got {v!r}")


class PointMassEnv(gymnasium.Env):
    """A point mass in the plane driven to a goal (the dynamics of the module docstring).

    Args:
        goal: the goal position g (2 numbers inside ``[−position_bound, position_bound]²``).
        horizon: T; the episode is truncated after T steps (it never terminates).
        dt: time step.
        position_bound: positions are clipped to ``[−bound, bound]²``.

    Example:
        >>> env = PointMassEnv(goal=(0.5, 0.5))
        >>> obs, _ = env.reset(seed=0)
        >>> obs, reward, terminated, truncated, _ = env.step(np.ones(2, np.float32))
    """

    metadata = {"render_modes": []}  # noqa: RUF012 (gymnasium's class attribute)

    def __init__(
        self,
        goal: Sequence[float] = (1.0, 0.0),
        horizon: int = 20,
        dt: float = 0.1,
        position_bound: float = 2.0,
    ) -> None:
        _check_dynamics(horizon, dt, position_bound)
        goal_arr = np.asarray(goal, dtype=np.float32)
        if goal_arr.shape != (2,) or not np.all(np.abs(goal_arr) <= position_bound):
            raise ValueError(f"goal must be 2 numbers within ±position_bound={position_bound}, got {goal!r}")
        self.goal = goal_arr
        self.horizon, self.dt, self.position_bound = horizon, float(dt), float(position_bound)
        b = self.position_bound
        self.observation_space = gymnasium.spaces.Box(-b, b, (OBS_DIM,), np.float32)
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32)
        self._p = np.zeros(2, np.float32)
        self._t = 0

    def _obs(self) -> np.ndarray:
        return np.concatenate([self._p, self.goal]).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._p = np.zeros(2, np.float32)
        self._t = 0
        return self._obs(), {}

    def step(self, action):
        a = np.clip(np.asarray(action, np.float32).reshape(ACT_DIM), -1.0, 1.0)
        b = np.float32(self.position_bound)
        self._p = np.clip(self._p + np.float32(self.dt) * a, -b, b).astype(np.float32)
        self._t += 1
        reward = -float(np.sqrt(np.sum(np.square(self._p - self.goal))))
        return self._obs(), reward, False, self._t >= self.horizon, {}


if ENV_ID not in gymnasium.registry:
    gymnasium.register(ENV_ID, entry_point=PointMassEnv)


def point_mass_step(p: tf.Tensor, action: tf.Tensor, dt: float, position_bound: float) -> tf.Tensor:
    """``p_{t+1} = clip(p_t + dt·clip(a_t, −1, 1), −bound, bound)``, batched ``(…, 2)``."""
    a = tf.clip_by_value(action, -1.0, 1.0)
    return tf.clip_by_value(p + tf.constant(float(dt), p.dtype) * a, -position_bound, position_bound)


def rollout(
    mean_fn: Callable[[tf.Tensor], tf.Tensor],
    goal: tf.Tensor,
    noise: tf.Tensor,
    log_std: float,
    dt: float = 0.1,
    position_bound: float = 2.0,
) -> dict[str, tf.Tensor]:
    """E episodes of the policy ``a_t = mean_fn(s_t) + exp(log_std)·noise[:, t]``, in TensorFlow.

    Args:
        mean_fn: ``(E, 4) ↦ (E, 2)``, the policy mean μ_θ.
        goal: ``(2,)`` (all episodes) or ``(E, 2)``.
        noise: ``(E, T, 2)`` standard normal draws (zeros: the deterministic policy).
        log_std: log σ of the Gaussian policy.

    Returns:
        ``{"observation": (E, T, 4), "action": (E, T, 2), "reward": (E, T)}``, gradients stopped:
        the action is the sampled (unclipped) one, the environment applies its clipped value.
    """
    noise = tf.convert_to_tensor(noise)
    dtype = noise.dtype
    e, horizon = tf.shape(noise)[0], int(noise.shape[1])
    goal = tf.broadcast_to(tf.cast(goal, dtype), tf.stack([e, 2]))
    sigma = tf.exp(tf.constant(float(log_std), dtype))
    p = tf.zeros_like(goal)
    obs, acts, rews = [], [], []
    for t in range(horizon):
        s = tf.concat([p, goal], axis=-1)
        a = tf.cast(mean_fn(s), dtype) + sigma * noise[:, t]
        p = point_mass_step(p, a, dt, position_bound)
        obs.append(s)
        acts.append(a)
        rews.append(-tf.sqrt(tf.reduce_sum(tf.square(p - goal), axis=-1)))
    out = {"observation": tf.stack(obs, 1), "action": tf.stack(acts, 1), "reward": tf.stack(rews, 1)}
    return {k: tf.stop_gradient(v) for k, v in out.items()}


def gaussian_log_prob(action: tf.Tensor, mean: tf.Tensor, log_std: float) -> tf.Tensor:
    """``log N(a; μ, σ²I) = −½‖(a − μ)/σ‖² − d·log σ − (d/2)·log 2π`` over the last axis."""
    d = int(action.shape[-1])
    log_std = tf.constant(float(log_std), mean.dtype)  # not tf.cast: that rounds to float32 first
    z = (tf.cast(action, mean.dtype) - mean) / tf.exp(log_std)
    return -0.5 * tf.reduce_sum(tf.square(z), -1) - d * log_std - 0.5 * d * math.log(2 * math.pi)


def returns_to_go(reward: tf.Tensor, baseline: bool = True) -> tuple[tf.Tensor, tf.Tensor]:
    """``(G, Â)`` of rewards ``(E, T)``: ``G_t = Σ_{t'≥t} r_t'``; ``Â_t = G_t − mean_e G_t``
    (or ``G_t`` with ``baseline=False``)."""
    g = tf.math.cumsum(reward, axis=1, reverse=True)
    adv = g - tf.reduce_mean(g, axis=0, keepdims=True) if baseline else g
    return g, adv


def reinforce_surrogate(
    mean_fn: Callable[[tf.Tensor], tf.Tensor], trajectory: dict, log_std: float, baseline: bool = True
) -> tf.Tensor:
    """``L = − mean_{e,t} Â_t · log π_θ(a_t|s_t)`` on a (stop-gradient'ed) trajectory.

    ``∇_θ L = −(1/(E·T)) Σ_{e,t} Â_t ∇_θ log π_θ(a_t|s_t)``: the REINFORCE estimate of −∇J/T.
    """
    obs, act = trajectory["observation"], trajectory["action"]
    e, horizon = tf.shape(obs)[0], tf.shape(obs)[1]
    mean = mean_fn(tf.reshape(obs, (-1, OBS_DIM)))
    logp = gaussian_log_prob(tf.reshape(act, (-1, ACT_DIM)), mean, log_std)
    _, adv = returns_to_go(trajectory["reward"], baseline)
    adv = tf.stop_gradient(tf.cast(tf.reshape(adv, [e * horizon]), logp.dtype))
    return -tf.reduce_mean(adv * logp)


# --- the task ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class PointMassOptions:
    """Options of the point-mass task (CLI flags ``--horizon``, ``--episodes`` …)."""

    horizon: int = 20
    """T: steps per episode."""
    dt: float = 0.1
    """Time step of the dynamics."""
    position_bound: float = 2.0
    """Positions are clipped to [−bound, bound]²."""
    episodes: int = 10
    """E: rollouts per policy update (inner step, task loss, every meta-test update)."""
    log_std: float = -0.5
    """log σ of the Gaussian policy (fixed)."""
    goal_radius: tuple[float, float] = (0.5, 1.0)
    """Goal distance from the start ~ U[range]."""
    train_angles: tuple[float, float] = (0.0, 270.0)
    """Goal direction (degrees) ~ U[range] for meta-training and the ``train`` split."""
    test_angles: tuple[float, float] = (270.0, 360.0)
    """Goal direction (degrees) of the held-out ``test`` split."""
    n_eval_goals: int = 8
    """Meta-test goals per split and seed."""
    policy_hidden: tuple[int, ...] = (32,)
    """Hidden widths of the policy-mean MLP (tanh)."""
    meta_loss_hidden: tuple[int, ...] = (50, 50)
    """Hidden widths of the loss network (ELU, biases, linear output)."""
    advantage_baseline: bool = True
    """Subtract the per-step mean return-to-go over the E episodes (Â_t = G_t − mean_e G_t)."""
    env_id: str = ENV_ID
    """Gymnasium id of the real environment the final returns are measured in (TF-Agents)."""
    real_env_check: bool = True
    """Measure the final returns also in the real environment through TF-Agents."""

    def __post_init__(self) -> None:
        for name in ("horizon", "episodes", "n_eval_goals"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        _check_dynamics(self.horizon, self.dt, self.position_bound)
        if isinstance(self.log_std, bool) or not (
            isinstance(self.log_std, (int, float)) and math.isfinite(self.log_std)
        ):
            raise ValueError(f"log_std must be a finite number, got {self.log_std!r}")
        for name in ("goal_radius", "train_angles", "test_angles"):
            rng = getattr(self, name)
            if len(rng) != 2 or not all(math.isfinite(x) for x in rng) or not rng[0] <= rng[1]:
                raise ValueError(f"{name} must be a finite (low, high) with low <= high, got {rng!r}")
        if self.goal_radius[0] < 0 or self.goal_radius[1] > self.position_bound:
            raise ValueError(
                f"goal_radius must lie in [0, position_bound={self.position_bound}], got {self.goal_radius!r}"
            )
        for name in ("policy_hidden", "meta_loss_hidden"):
            widths = getattr(self, name)
            if not widths or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in widths):
                raise ValueError(f"{name} must be one or more integers >= 1, got {widths!r}")
        if not isinstance(self.env_id, str) or self.env_id not in gymnasium.registry:
            raise ValueError(
                f"env_id must be a registered gymnasium environment id (e.g. {ENV_ID!r}), got {self.env_id!r}"
            )


class PointMassTask(Task):
    """Model-free ML3 on the point mass (see the module docstring)."""

    name = "point_mass"
    Options = PointMassOptions
    metric_name = "return"
    baseline_name = "reinforce"
    higher_is_better = True

    def __init__(self, **options: Any) -> None:
        self.options = PointMassOptions(**options)

    def default_config(self) -> MetaTrainConfig:
        # One inner step per meta-step, 4 goals per meta-step; meta Adam 3e-3 (1e-3 learned
        # much more slowly in a 1000-step probe); SGD lr 0.2 (REINFORCE at 0.05 was far from
        # its best in bench/model_free.py's sweep); meta-test: 20 updates of fresh policies.
        return MetaTrainConfig(
            inner_steps=1, inner_lr=0.2, meta_lr=3e-3, meta_steps=2000, meta_batch_size=4, eval_steps=20
        )

    def make_learner(self) -> keras.Model:
        return make_mlp(OBS_DIM, self.options.policy_hidden, ACT_DIM, "tanh", name="point_mass_policy")

    def make_meta_loss(self) -> keras.Model:
        return MetaLossNetwork(
            input_dim=N_FEATURES,
            hidden_units=self.options.meta_loss_hidden,
            activation="elu",
            use_bias=True,
            output_activation="linear",
        )

    # --- rollouts and features -------------------------------------------------------------
    def _mean_fn(self, learner: FunctionalModel, params: list, state: list) -> Callable:
        return lambda s: learner.apply(params, s, state, training=False)[0]

    def rollout(self, learner: FunctionalModel, params: list, state: list, goal, noise) -> dict:
        """E episodes of π_θ for ``goal`` with ``noise`` ``(E, T, 2)`` (see ``rollout``)."""
        o = self.options
        return rollout(self._mean_fn(learner, params, state), goal, noise, o.log_std, o.dt, o.position_bound)

    def features(self, learner: FunctionalModel, params: list, state: list, trajectory: dict) -> tf.Tensor:
        """``(E·T, 11)``: ``[p, g, a, G/T, Â/T]`` (stopped) and ``[μ_θ(s), log π_θ(a|s)]`` (carry θ)."""
        o = self.options
        obs = tf.reshape(trajectory["observation"], (-1, OBS_DIM))
        act = tf.reshape(trajectory["action"], (-1, ACT_DIM))
        g, adv = returns_to_go(trajectory["reward"], o.advantage_baseline)
        mean = self._mean_fn(learner, params, state)(obs)
        logp = gaussian_log_prob(act, mean, o.log_std)
        scale = 1.0 / o.horizon
        traj = [obs, act, tf.reshape(g, (-1, 1)) * scale, tf.reshape(adv, (-1, 1)) * scale]
        traj = [tf.stop_gradient(tf.cast(x, mean.dtype)) for x in traj]
        return tf.concat([*traj, mean, logp[:, None]], axis=-1)

    def meta_loss_inputs(self, learner, params, state, data):
        """Features of E rollouts of π_θ on the support noise (θ-dependent through μ_θ, log π_θ)."""
        traj = self.rollout(learner, params, state, data["goal"], data["noise"])
        return self.features(learner, params, state, traj), state

    def surrogate(self, learner: FunctionalModel, params: list, state: list, data: dict) -> tf.Tensor:
        """The REINFORCE surrogate on E rollouts of π_θ itself (``data``: goal, noise)."""
        traj = self.rollout(learner, params, state, data["goal"], data["noise"])
        o = self.options
        return reinforce_surrogate(
            self._mean_fn(learner, params, state), traj, o.log_std, o.advantage_baseline
        )

    def task_loss(self, learner, params, state, data):
        """REINFORCE surrogate of π_θK on fresh rollouts (the query noise)."""
        return self.surrogate(learner, params, state, data)

    def baseline_inner_loss(self, learner, params, state, data):
        """``(REINFORCE surrogate on the support rollouts, state)``: plain REINFORCE; MAML's inner loss."""
        return self.surrogate(learner, params, state, data), state

    def extra_loss(self, learner, params, state, data, extra):
        return None

    # --- data --------------------------------------------------------------------------------
    def goals(self, rng: np.random.Generator, count: int, split: str = "train") -> np.ndarray:
        """``count`` goals ``(count, 2)`` of ``split`` (``train`` or ``test`` angles)."""
        o = self.options
        angles = o.train_angles if split == "train" else o.test_angles
        theta = np.deg2rad(rng.uniform(*angles, size=count))
        r = rng.uniform(*o.goal_radius, size=count)
        return np.stack([r * np.cos(theta), r * np.sin(theta)], axis=-1).astype(np.float32)

    def sample(self, seed: int, step: int, batch_size: int) -> TaskBatch:
        """``batch_size`` train goals; support and query noise ``(B, E, T, 2)``, independent."""
        o = self.options
        rng = np.random.default_rng([seed, _TRAIN_STREAM, step])
        goal = self.goals(rng, batch_size, "train")
        shape = (batch_size, o.episodes, o.horizon, ACT_DIM)
        support = {"goal": goal, "noise": rng.standard_normal(shape).astype(np.float32)}
        query = {"goal": goal, "noise": rng.standard_normal(shape).astype(np.float32)}
        return TaskBatch(support=support, query=query, extra={"goal": goal})

    def eval_goals(self, seed: int, split: str) -> np.ndarray:
        """The ``n_eval_goals`` meta-test goals of ``split`` for ``seed``."""
        rng = np.random.default_rng([seed, _EVAL_GOAL_STREAM, _SPLITS.index(split)])
        return self.goals(rng, self.options.n_eval_goals, split)

    def eval_noise(self, seed: int, split: str, steps: int) -> np.ndarray:
        """Noise ``(G, steps, E, T, 2)`` of the meta-test updates (shared by both arms)."""
        o = self.options
        rng = np.random.default_rng([seed, _EVAL_NOISE_STREAM, _SPLITS.index(split)])
        return rng.standard_normal((o.n_eval_goals, steps, o.episodes, o.horizon, ACT_DIM)).astype(np.float32)

    # --- meta-test ---------------------------------------------------------------------------
    def deterministic_return(self, learner: FunctionalModel, params: list, goal) -> tf.Tensor:
        """Return of one episode of the mean policy μ_θ (no noise)."""
        noise = tf.zeros((1, self.options.horizon, ACT_DIM), tf.float32)
        traj = self.rollout(learner, params, [], goal, noise)
        return tf.reduce_sum(traj["reward"])

    def meta_test(
        self,
        meta_loss: keras.Model | None,
        seed: int,
        split: str,
        config: MetaTrainConfig,
        steps: int | None = None,
        init: Sequence[np.ndarray] | None = None,
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Returns after 0 … N updates ``(G, N + 1)`` and the final θ_N (stacked) of ``split``.

        The G goals' policies train side by side in the meta-test engine (``config``'s inner
        optimizer at ``inner_lr``), each update on fresh rollouts (``eval_noise``).
        ``meta_loss=None`` trains with REINFORCE; ``init`` (one θ₀, e.g. MAML's) replaces the
        fresh Xavier θ₀ of every goal's policy.
        """
        engine = engine_for(self, config, steps, jit_compile=False)
        learner = engine.learner

        def metric(params, _state, data):
            return self.deterministic_return(learner, params, data["goal"])

        if meta_loss is None:
            key = "reinforce"

            def loss(params, state, data, _phi):
                return self.surrogate(learner, params, [], data), state
        else:
            key = ("learned", architecture_key(meta_loss))
            mean_m = stateless_loss(meta_loss, lambda feats: feats)

            def loss(params, state, data, phi):
                traj = self.rollout(learner, params, [], data["goal"], data["noise"])
                return mean_m(phi, self.features(learner, params, [], traj)), state

        goals = self.eval_goals(seed, split)
        noise = self.eval_noise(seed, split, engine.steps)
        if init is None:
            params0 = engine.initial_params(seed, len(goals))
        else:
            params0 = engine.stack([np.asarray(p, np.float32) for p in init], len(goals))
        data = {"goal": goals, "noise": noise}
        return engine.run(key, loss, metric, params0, data, phi_of(meta_loss), per_step=("noise",))

    def real_env_returns(self, goals: np.ndarray, params: list[np.ndarray]) -> np.ndarray:
        """Return of the deterministic policy θ_N[i] on goal i, in the gymnasium environment
        ``env_id`` stepped through TF-Agents (``ml3tf.tasks.rl_env``: adapter, KerasPolicy, driver)."""
        import ml3tf.tasks.rl_env as rl_env

        o = self.options
        learner = FunctionalModel(self.make_learner()).model
        out = []
        for i, goal in enumerate(goals):
            tf_env = rl_env.make_tf_env(
                o.env_id,
                goal=tuple(float(x) for x in goal),
                horizon=o.horizon,
                dt=o.dt,
                position_bound=o.position_bound,
            )
            try:
                policy = rl_env.KerasPolicy(
                    learner,
                    tf_env.time_step_spec(),
                    tf_env.action_spec(),
                    params=[tf.constant(p[i]) for p in params],
                    log_std=None,
                )
                out.append(float(rl_env.collect_episodes(tf_env, policy, 1)["return"][0]))
            finally:
                tf_env.close()
        return np.asarray(out)

    def evaluate(
        self,
        meta_losses: list[keras.Model],
        config: MetaTrainConfig,
        seeds: list[int],
        steps: int | None = None,
        initial_params: list | None = None,
    ) -> dict:
        """results.json schema: return after each of N updates, learned loss vs REINFORCE, on the
        ``train`` and held-out ``test`` goals; plus ``final_real_env`` (TF-Agents) when
        ``real_env_check``, with the largest gap to the in-graph returns.

        ``initial_params`` (MAML; one θ₀ per seed or one for all): the ``learned`` arm starts
        from it, and trains with REINFORCE when ``meta_losses`` is empty; the ``baseline``
        arm is always REINFORCE from a fresh θ₀.
        """
        if not meta_losses and initial_params is None:
            raise ValueError("meta_losses must hold at least one loss network (or give initial_params)")
        losses = per_seed(meta_losses or None, seeds, "meta-losses")
        inits = per_seed(initial_params, seeds, "initial_params")
        if inits is not None:
            engine = engine_for(self, config, steps, jit_compile=False)
            engine.check_params(inits)
        steps = config.eval_steps if steps is None else int(steps)
        start = time.perf_counter()
        curves: dict[str, dict[str, list[np.ndarray]]] = {s: {"learned": [], "baseline": []} for s in _SPLITS}
        real: dict[str, dict[str, list[float]]] = {s: {"learned": [], "baseline": []} for s in _SPLITS}
        gap = 0.0
        for i, seed in enumerate(seeds):
            meta_loss = None if losses is None else losses[i]
            init = None if inits is None else inits[i]
            for split in _SPLITS:
                for method, loss, theta0 in (("learned", meta_loss, init), ("baseline", None, None)):
                    returns, params = self.meta_test(loss, seed, split, config, steps, theta0)
                    curves[split][method].append(returns.mean(axis=0))
                    if self.options.real_env_check:
                        env_returns = self.real_env_returns(self.eval_goals(seed, split), params)
                        real[split][method].append(float(env_returns.mean()))
                        gap = max(gap, float(np.max(np.abs(env_returns - returns[:, -1]))))
        res = summarize_task(
            self,
            steps=steps,
            seeds=seeds,
            curves=curves,
            config=config.to_dict(),
            wall_seconds=time.perf_counter() - start,
        )
        if self.options.real_env_check:
            res["final_real_env"] = {
                split: {
                    "learned": float(np.mean(m["learned"])),
                    "learned_std": float(np.std(m["learned"])),
                    "baseline": float(np.mean(m["baseline"])),
                    "baseline_std": float(np.std(m["baseline"])),
                }
                for split, m in real.items()
            }
            res["real_env_max_abs_gap"] = gap
        res["task_options"] = self.describe_options()
        return res
