"""MountainCar with extra information (ML3 paper, Sec. V-C; the authors' ``run_mountain_car_exp.py``).

The authors' physics — *not* gymnasium's: position p ∈ [−1.2, 0.5], velocity
v ∈ [−1.5, 1.5], action a clipped to [−0.25, 0.25], and per step (dt = 0.1)

    v' = v + (g·m·cos 3p + a/m − k·v)·dt          m = 0.2, g = −9.8, k = 0.3
    p' = p + v'·dt
    v' ← clip(v', ±1.5);  p' ← clip(p', −1.2, 0.5);  v' ← 0 if p' = −1.2 and v' < 0

The car starts at rest at (−0.55, 0) near the valley bottom (p = −π/6); a/m is
weaker than gravity, so it must swing back to the left before it can climb to
the goal state s* = (0.5, 1.0375) within the horizon of 35 steps.

The learner is a policy a = f_θ(s), 2 → 200 → 1 linear, no biases; it is trained by
back-propagating through the rollout (the dynamics are differentiable TensorFlow).
The loss network sees, per step, ``[s_t, a_t, ‖s_T − s*‖]`` (4 features; 4 → 400 →
400 → 1 ELU, biases, linear output, as the authors' ``Ml3_loss_mountain_car``).
Meta-objectives (``MetaTrainConfig`` weights, the pattern of ``tasks/shaped_sine.py``):

    task loss (β = 1, γ = 0):          L_task  = mean_{t=0..T} ‖s_t − s*‖
    extra information (β = 0, γ = 1):  L_extra = mean_{t<15} ‖s_t − s_sub‖ + mean_{t≥15} ‖s_t − s*‖

with the sub-goal s_sub = (−0.947, −0.0055): "swing back first", known only at
meta-train time. The policy θ₀ is drawn once per seed and kept for every meta-step
(``learner_init="fixed"``, as the authors' policy, which is never re-initialised).
Meta-test (``evaluate``): policies trained a few SGD steps on the learned loss alone,
from that θ₀ (split ``train``, the authors' test) and from fresh Xavier draws (split
``test``); success = the car reaches p ≥ 0.5 within the horizon; the reported metric
is the final distance ‖s_T − s*‖ (lower is better). The baseline curve is the same
SGD on the plain task loss; the iLQR baseline is ``ilqr_baseline``.

Clipping and gradients: the authors clip with ``tensor.data = …``, which keeps the
value clipped but lets the gradient pass as if nothing had been clipped
(straight-through); ``straight_through=True`` (default) does the same, ``False``
uses the true derivative of the clipped map (zero where a bound is active). The
policy's own action clamp has the true (zero outside) derivative, as theirs.

Example:
    >>> import ml3tf
    >>> from ml3tf import tasks
    >>> task = tasks.get("mountain_car")
    >>> cfg = task.default_config().replace(task_loss_weight=0.0, extra_loss_weight=1.0)
    >>> run = ml3tf.train(task, cfg, out_dir="runs/mountain_car", seeds=[0, 1, 2, 3, 4])
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ml3tf.config import MetaTrainConfig
from ml3tf.engine import architecture_key, engine_for, per_seed, phi_of, stateless_loss
from ml3tf.functional import FunctionalModel
from ml3tf.meta_loss import MetaLossNetwork
from ml3tf.models.mlp import make_mlp
from ml3tf.results import summarize_task
from ml3tf.seeds import meta_test_seeds, meta_train_seeds
from ml3tf.task import Task, TaskBatch

# --- the authors' physics ---------------------------------------------------------------
MASS = 0.2
GRAVITY = -9.8
FRICTION = 0.3
DT = 0.1
MIN_POSITION, MAX_POSITION = -1.2, 0.5
MAX_SPEED = 1.5
MIN_ACTION, MAX_ACTION = -0.25, 0.25
START = (-0.55, 0.0)
GOAL = (0.5, 1.0375)
SUBGOAL = (-0.947, -0.0055)


def step_numpy(state: np.ndarray, action: np.ndarray) -> np.ndarray:
    """One step of the authors' physics in plain NumPy (float64), the reference transcription.

    ``state``: ``(..., 2)`` = (p, v); ``action``: ``(...)`` or ``(..., 1)``, clipped to
    [−0.25, 0.25]. Returns the next state ``(..., 2)``.

    Example:
        >>> step_numpy(np.array([-0.55, 0.0]), np.array(0.25))
        array([-0.5387..., 0.1130...])
    """
    state = np.asarray(state, np.float64)
    a = np.clip(np.reshape(np.asarray(action, np.float64), state.shape[:-1]), MIN_ACTION, MAX_ACTION)
    p, v = state[..., 0], state[..., 1]
    v = v + (GRAVITY * MASS * np.cos(3.0 * p) + a / MASS - FRICTION * v) * DT
    p = p + v * DT
    v = np.clip(v, -MAX_SPEED, MAX_SPEED)
    p = np.clip(p, MIN_POSITION, MAX_POSITION)
    v = np.where((p == MIN_POSITION) & (v < 0), 0.0, v)
    return np.stack([p, v], axis=-1)


def _clip(x: tf.Tensor, lo: float, hi: float, straight_through: bool) -> tf.Tensor:
    clipped = tf.clip_by_value(x, tf.cast(lo, x.dtype), tf.cast(hi, x.dtype))
    # value exactly ``clipped`` (x − x is exactly 0), gradient 1: the authors' ``.data`` clip
    return tf.stop_gradient(clipped) + (x - tf.stop_gradient(x)) if straight_through else clipped


def step(state: tf.Tensor, action: tf.Tensor, straight_through: bool = True) -> tf.Tensor:
    """One differentiable, batched step of the authors' physics in TensorFlow.

    ``state``: ``(..., 2)``; ``action``: ``(...)`` or ``(..., 1)`` (clipped to [−0.25, 0.25]
    with the true derivative). The state clipping is straight-through when
    ``straight_through`` (the authors' ``.data`` assignment), exact otherwise.
    Equal to ``step_numpy`` (see the module docstring for the equations).
    """
    state = tf.convert_to_tensor(state)
    dtype = state.dtype
    a = tf.reshape(tf.cast(action, dtype), tf.shape(state)[:-1])
    a = tf.clip_by_value(a, tf.cast(MIN_ACTION, dtype), tf.cast(MAX_ACTION, dtype))
    p, v = state[..., 0], state[..., 1]
    c = tf.constant
    v = v + (
        c(GRAVITY * MASS, dtype) * tf.cos(c(3.0, dtype) * p) + a / c(MASS, dtype) - c(FRICTION, dtype) * v
    ) * c(DT, dtype)
    p = p + v * c(DT, dtype)
    v = _clip(v, -MAX_SPEED, MAX_SPEED, straight_through)
    p = _clip(p, MIN_POSITION, MAX_POSITION, straight_through)
    at_wall = (p <= c(MIN_POSITION, dtype)) & (v < 0)
    v = tf.where(at_wall, v - tf.stop_gradient(v) if straight_through else tf.zeros_like(v), v)
    return tf.stack([p, v], axis=-1)


def check_action(action: Any) -> np.ndarray:
    """``action`` as a float array if every entry is finite and inside [−0.25, 0.25].

    Raises:
        ValueError: naming the action and the bounds.
    """
    a = np.asarray(action, np.float64)
    if not np.all(np.isfinite(a)) or np.any(a < MIN_ACTION) or np.any(a > MAX_ACTION):
        raise ValueError(f"action must lie in [{MIN_ACTION}, {MAX_ACTION}], got {action!r}")
    return a


def rollout_numpy(policy, start=START, horizon: int = 35) -> tuple[np.ndarray, np.ndarray]:
    """States ``(T+1, 2)`` and actions ``(T,)`` of ``policy(s) -> a`` under ``step_numpy``."""
    s = np.asarray(start, np.float64)
    states, actions = [s], []
    for _ in range(horizon):
        a = float(np.clip(np.reshape(policy(s), ()), MIN_ACTION, MAX_ACTION))
        s = step_numpy(s, a)
        states.append(s)
        actions.append(a)
    return np.stack(states), np.asarray(actions)


@dataclass(frozen=True)
class MountainCarOptions:
    """Options of the MountainCar task (CLI flags ``--horizon``, ``--n-test-policies`` …)."""

    horizon: int = 35
    """T: steps per rollout."""
    start: tuple[float, float] = START
    """(p, v) the car starts from."""
    goal: tuple[float, float] = GOAL
    """s*: the goal state (task loss, the loss network's ‖s_T − s*‖ feature, the metric)."""
    subgoal: tuple[float, float] = SUBGOAL
    """s_sub: the extra information's sub-goal (the swing back)."""
    subgoal_steps: int = 15
    """States s_0 … s_{n−1} are pulled towards the sub-goal by the extra loss."""
    policy_hidden: int = 200
    """Width of the policy's linear hidden layer (2 → hidden → 1, no biases)."""
    meta_loss_hidden: tuple[int, ...] = (400, 400)
    """Hidden widths of the loss network (ELU, biases, linear output)."""
    straight_through: bool = True
    """Clip the state with a straight-through gradient (the authors'); False: exact derivative."""
    n_test_policies: int = 10
    """Fresh policies per seed at meta-test."""
    success_position: float = 0.5
    """A rollout succeeds when the car reaches p ≥ this within the horizon."""

    def __post_init__(self) -> None:
        for name in ("horizon", "subgoal_steps", "policy_hidden", "n_test_policies"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if self.subgoal_steps > self.horizon:
            raise ValueError(f"subgoal_steps must be <= horizon={self.horizon}, got {self.subgoal_steps!r}")
        for name in ("start", "goal", "subgoal"):
            v = getattr(self, name)
            if (
                not isinstance(v, (tuple, list))
                or len(v) != 2
                or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in v)
            ):
                raise ValueError(f"{name} must be a finite (position, velocity) pair, got {v!r}")
        p, v = self.start
        if not (MIN_POSITION <= p <= MAX_POSITION and -MAX_SPEED <= v <= MAX_SPEED):
            raise ValueError(f"start must lie inside the state bounds, got {self.start!r}")
        if not self.meta_loss_hidden or any(int(h) < 1 for h in self.meta_loss_hidden):
            raise ValueError(f"meta_loss_hidden must be non-empty widths >= 1, got {self.meta_loss_hidden!r}")
        if not isinstance(self.straight_through, bool):
            raise ValueError(f"straight_through must be a bool, got {self.straight_through!r}")
        if not (
            math.isfinite(self.success_position) and MIN_POSITION < self.success_position <= MAX_POSITION
        ):
            raise ValueError(f"success_position must lie in (−1.2, 0.5], got {self.success_position!r}")


class MountainCarTask(Task):
    """The MountainCar task (see the module docstring)."""

    name = "mountain_car"
    metric_name = "final_distance"
    baseline_name = "task_loss"
    higher_is_better = False
    Options = MountainCarOptions

    def __init__(self, **options: Any) -> None:
        self.options = MountainCarOptions(**options)

    def default_config(self) -> MetaTrainConfig:
        # The authors: inner SGD lr 1e-3, 1 inner step, Adam 1e-3 on φ, one policy θ₀ that is
        # never re-initialised (learner_init="fixed"); the 300 meta-steps (their script
        # runs 1000). Meta-test: as many SGD steps as at meta-train time (they print 2).
        return MetaTrainConfig(
            inner_steps=1,
            inner_lr=1e-3,
            meta_lr=1e-3,
            meta_steps=300,
            meta_batch_size=1,
            learner_init="fixed",
            eval_steps=1,
            eval_jit_compile=False,
            steps_per_call=100,
        )

    # --- networks -----------------------------------------------------------------------
    def make_learner(self) -> keras.Model:
        """The policy a = W₂ W₁ s: 2 → ``policy_hidden`` → 1, linear, no biases."""
        return make_mlp(
            2,
            (self.options.policy_hidden,),
            1,
            activation="linear",
            use_bias=False,
            name="mountain_car_policy",
        )

    def make_meta_loss(self) -> keras.Model:
        return MetaLossNetwork(
            input_dim=4,
            hidden_units=self.options.meta_loss_hidden,
            activation="elu",
            use_bias=True,
            output_activation="linear",
        )

    # --- the differentiable rollout ---------------------------------------------------------
    def rollout(self, learner: FunctionalModel, params: list, start: Any) -> tuple[tf.Tensor, tf.Tensor]:
        """States ``(T+1, 2)`` and actions ``(T, 1)`` of the policy ``params`` from ``start``."""
        dtype = params[0].dtype
        s = tf.reshape(tf.cast(start, dtype), (1, 2))
        states, actions = [s], []
        for _ in range(self.options.horizon):
            a, _ = learner.apply(params, s)
            a = tf.clip_by_value(a, tf.cast(MIN_ACTION, dtype), tf.cast(MAX_ACTION, dtype))
            s = step(s, a, self.options.straight_through)
            states.append(s)
            actions.append(a)
        return tf.concat(states, axis=0), tf.concat(actions, axis=0)

    def features(self, states: tf.Tensor, actions: tf.Tensor) -> tf.Tensor:
        """``[s_t, a_t, ‖s_T − s*‖]`` for t = 0 … T−1: ``(T, 4)`` (the authors' meta-loss input)."""
        goal = tf.constant(self.options.goal, states.dtype)
        dist = tf.norm(states[-1] - goal)
        g = tf.fill((tf.shape(actions)[0], 1), dist)
        return tf.concat([states[:-1], actions, g], axis=-1)

    def trajectory_task_loss(self, states: tf.Tensor) -> tf.Tensor:
        """L_task = mean_{t=0..T} ‖s_t − s*‖."""
        goal = tf.constant(self.options.goal, states.dtype)
        return tf.reduce_mean(_norm(states - goal))

    def trajectory_extra_loss(self, states: tf.Tensor) -> tf.Tensor:
        """L_extra = mean_{t<n} ‖s_t − s_sub‖ + mean_{t≥n} ‖s_t − s*‖ (n = ``subgoal_steps``)."""
        o = self.options
        sub = tf.constant(o.subgoal, states.dtype)
        goal = tf.constant(o.goal, states.dtype)
        n = o.subgoal_steps
        return tf.reduce_mean(_norm(states[:n] - sub)) + tf.reduce_mean(_norm(states[n:] - goal))

    # --- the Task protocol ----------------------------------------------------------------
    def meta_loss_inputs(self, learner, params, state, data):
        states, actions = self.rollout(learner, params, data["start"])
        return self.features(states, actions), state

    def task_loss(self, learner, params, state, data):
        states, _ = self.rollout(learner, params, data["start"])
        return self.trajectory_task_loss(states)

    def baseline_inner_loss(self, learner, params, state, data):
        return self.task_loss(learner, params, state, data), state

    def extra_loss(self, learner, params, state, data, extra):
        states, _ = self.rollout(learner, params, data["start"])
        return self.trajectory_extra_loss(states)

    def sample(self, seed: int, step: int, batch_size: int) -> TaskBatch:
        """One fixed start state per task (the authors' single start); deterministic."""
        start = np.tile(np.asarray(self.options.start, np.float32), (batch_size, 1))
        data = {"start": start}
        return TaskBatch(support=data, query=data, extra={})

    # --- meta-test ------------------------------------------------------------------------
    def train_params(self, seed: int) -> list[np.ndarray]:
        """θ₀ of the meta-train policy of ``seed`` with ``learner_init="fixed"`` (stacked, 1 policy):
        the authors' meta-test starts from it (their policy is never re-initialised)."""
        f = FunctionalModel(self.make_learner())
        return [p.numpy()[None] for p in f.init_params(meta_train_seeds(seed, 0, 1)[0])]

    def test_params(self, seed: int) -> list[np.ndarray]:
        """θ₀ of the ``n_test_policies`` fresh meta-test policies of ``seed`` (stacked, Xavier)."""
        f = FunctionalModel(self.make_learner())
        draws = [f.init_params(s) for s in meta_test_seeds(seed, self.options.n_test_policies)]
        return [np.stack([d[j].numpy() for d in draws]) for j in range(len(f.shapes))]

    def meta_test(
        self,
        meta_loss: keras.Model | None,
        params0: list[np.ndarray],
        config: MetaTrainConfig,
        steps: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Policies ``params0`` (stacked, N of them) trained by the meta-test engine (``config``'s
        inner optimizer at ``inner_lr``) on the learned loss alone (``meta_loss=None``: on the task
        loss, the baseline).

        Returns ``{"final_distance": (N, steps+1), "max_position": (N, steps+1),
        "positions": (N, steps+1, T+1), "velocities": (N, steps+1, T+1), "params": θ_steps}``,
        index k = after k steps.
        """
        engine = engine_for(self, config, steps, jit_compile=False)
        learner = engine.learner
        goal = tf.constant(self.options.goal, tf.float32)

        def metric(params, _state, data):
            states, _ = self.rollout(learner, params, data["start"])
            return tf.concat(
                [[tf.norm(states[-1] - goal), tf.reduce_max(states[:, 0])], states[:, 0], states[:, 1]],
                axis=0,
            )

        if meta_loss is None:
            key = "task_loss"

            def loss(params, state, data, _phi):
                return self.task_loss(learner, params, state, data), state
        else:
            key = ("learned", architecture_key(meta_loss))
            mean_m = stateless_loss(meta_loss, self.features)

            def loss(params, state, data, phi):
                states, actions = self.rollout(learner, params, data["start"])
                return mean_m(phi, states, actions), state

        n = int(np.shape(params0[0])[0])
        starts = np.tile(np.asarray(self.options.start, np.float32), (n, 1))
        out, params = engine.run(key, loss, metric, params0, {"start": starts}, phi_of(meta_loss))
        t1 = self.options.horizon + 1
        return {
            "final_distance": out[..., 0],
            "max_position": out[..., 1],
            "positions": out[..., 2 : 2 + t1],
            "velocities": out[..., 2 + t1 :],
            "params": params,
        }

    def evaluate(
        self,
        meta_losses: list[keras.Model],
        config: MetaTrainConfig,
        seeds: list[int],
        steps: int | None = None,
    ) -> dict:
        """results.json schema; metric: final distance ‖s_T − s*‖ vs SGD step of policies trained
        on the learned loss (``learned``) and on the task loss (``baseline``). Splits:
        ``train`` — the meta-train policy θ₀ of each seed (``train_params``; the authors'
        meta-test, meaningful with ``learner_init="fixed"``) — and ``test`` — the
        ``n_test_policies`` fresh policies (``test_params``). Adds ``success_rate[split][method]``
        (the car reached p ≥ ``success_position``; ``curve``: after each step, ``mean``/``std``/
        ``per_seed``: after the last, ``per_seed_curve``: per seed after each step) and the mean
        position trajectory after each step (``trajectories[split][method]``, ``(steps+1, T+1)``)."""
        losses = per_seed(meta_losses, seeds, "meta-losses")
        steps = config.eval_steps if steps is None else int(steps)
        start = time.perf_counter()
        splits = {"train": self.train_params, "test": self.test_params}
        curves = {sp: {"learned": [], "baseline": []} for sp in splits}
        success = {sp: {"learned": [], "baseline": []} for sp in splits}
        positions = {sp: {"learned": [], "baseline": []} for sp in splits}
        for seed, meta_loss in zip(seeds, losses, strict=True):
            # both splits in one call (one trace per method, not one per split shape)
            parts = {split: params_of(seed) for split, params_of in splits.items()}
            params0 = [np.concatenate(ps) for ps in zip(*parts.values(), strict=True)]
            bounds = np.cumsum([0] + [len(p[0]) for p in parts.values()])
            for method, loss in (("learned", meta_loss), ("baseline", None)):
                out = self.meta_test(loss, params0, config, steps)
                for split, lo, hi in zip(parts, bounds[:-1], bounds[1:], strict=True):
                    curves[split][method].append(out["final_distance"][lo:hi].mean(axis=0))
                    reached = out["max_position"][lo:hi] >= self.options.success_position  # (N, steps+1)
                    success[split][method].append(reached.mean(axis=0))
                    positions[split][method].append(out["positions"][lo:hi].mean(axis=0))
        res = summarize_task(
            self,
            steps=steps,
            seeds=seeds,
            curves=curves,
            config=config.to_dict(),
            wall_seconds=time.perf_counter() - start,
        )
        res["success_rate"] = {
            split: {
                m: {
                    "mean": float(np.mean([c[-1] for c in v])),
                    "std": float(np.std([c[-1] for c in v])),
                    "per_seed": [float(c[-1]) for c in v],
                    "curve": np.mean(v, axis=0).tolist(),
                    "per_seed_curve": [[float(x) for x in c] for c in v],
                }
                for m, v in per.items()
            }
            for split, per in success.items()
        }
        res["trajectories"] = {
            split: {m: np.mean(v, axis=0).tolist() for m, v in per.items()}
            for split, per in positions.items()
        }
        res["task_options"] = self.describe_options()
        return res

    # --- the iLQR baseline ----------------------------------------------------------------
    def ilqr_baseline(self, iterations: int = 100, u_init: np.ndarray | None = None, **kwargs: Any) -> dict:
        """iLQR (``ml3tf.tasks.ilqr``) on the same dynamics from the same start, open loop.

        Cost: ``state_weight``·Σ_{t<T} ‖s_t − s*‖² + ``terminal_weight``·‖s_T − s*‖²
        + ``action_weight``·Σ a_t²; the defaults (1, 1, 1e-4) weigh every state alike, the
        quadratic analogue of the task loss mean_t ‖s_t − s*‖. Other ``kwargs`` go to
        ``ml3tf.tasks.ilqr.ilqr``. Returns ``{"states" (T+1, 2), "actions" (T,), "costs"}``.
        """
        from ml3tf.tasks.ilqr import ilqr, quadratic_cost

        o = self.options
        weights = {"state_weight": 1.0, "terminal_weight": 1.0, "action_weight": 1e-4}
        for k in list(weights):
            weights[k] = float(kwargs.pop(k, weights[k]))
        cost = quadratic_cost(
            np.eye(2) * weights["state_weight"],
            np.eye(1) * weights["action_weight"],
            np.eye(2) * weights["terminal_weight"],
            np.asarray(o.goal, np.float64),
        )
        u0 = (
            np.zeros((o.horizon, 1))
            if u_init is None
            else np.reshape(np.asarray(u_init, np.float64), (o.horizon, 1))
        )
        sol = ilqr(
            lambda x, u: step_numpy(x, u[0]),
            _jacobians,
            cost,
            np.asarray(o.start, np.float64),
            u0,
            iterations=iterations,
            u_bounds=(MIN_ACTION, MAX_ACTION),
            **kwargs,
        )
        return {"states": sol.states, "actions": sol.controls[:, 0], "costs": sol.costs}


def _jacobians(x: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """∂s'/∂s and ∂s'/∂a of the unclipped step at (x, u) (the clip is ignored, as iLQR usually does)."""
    p = x[0]
    dvdp = -3.0 * GRAVITY * MASS * np.sin(3.0 * p) * DT
    dvdv = 1.0 - FRICTION * DT
    dvda = DT / MASS
    a = np.array([[1.0 + dvdp * DT, dvdv * DT], [dvdp, dvdv]])
    b = np.array([[dvda * DT], [dvda]])
    return a, b


def _norm(x: tf.Tensor) -> tf.Tensor:
    """Row-wise Euclidean norm with a finite gradient at 0."""
    sq = tf.reduce_sum(tf.square(x), axis=-1)
    safe = tf.where(sq > 0, sq, tf.ones_like(sq))
    return tf.where(sq > 0, tf.sqrt(safe), tf.zeros_like(sq))
