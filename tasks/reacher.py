"""Model-based ML3 on a 2-link reacher (paper §V-B "MBRL reacher"; authors' ``run_mbrl_reacher_exp.py``).

The real environment is stepped through TF-Agents (``ml3tf.tasks.rl_env``:
``GymnasiumEnvironment`` + ``KerasPolicy`` + ``collect_episodes``). ``robot`` picks it:

* ``"authors"`` (default): the authors' own robot, ``ml3tf.tasks.reacher_robot_env.AuthorsReacherEnv``
  (MuJoCo; torques in [−1, 1] N m plus bias-force compensation, dt = 0.01 s); the observation is
  the joint state q itself. Its dynamics model is the authors' (``VelocityEnsembleDynamics``):
  K = 3 probabilistic members (tanh 100, 30) predict Δθ̇ from [q, a] / (1, 1, 8, 8, 1, 1), each
  fitted by Gaussian NLL on all but one of K random chunks of the data (``fit_velocity_ensemble``:
  Adam 1e-3, batch 64, 500 epochs, a fresh Adam per fit), and a rollout integrates

      θ̇_{t+1} = clip(θ̇_t + Δθ̇̂, ±4),   θ_{t+1} = clip(θ_t + dt (θ̇_t + Δθ̇̂), ±3);

  as the authors, the model is fitted after each babbling rollout (on all rollouts so far) and
  refitted on θ₁'s real rollout at step 0 and every ``refit_every`` (300) meta-steps with all
  ``dynamics_epochs``; meta-test takes 2 SGD steps.
* ``"reacher_v5"``: gymnasium's ``Reacher-v5`` (below), with a ``JointDynamicsModel`` of Δq.

**Joint state from the observation** (Reacher-v5). Its observation is
``[cos θ₁, cos θ₂, sin θ₁, sin θ₂, target_x, target_y, θ̇₁, θ̇₂, Δx, Δy]``; the joint state is

    q = [atan2(obs[2], obs[0]), atan2(obs[3], obs[1]), obs[6], obs[7]]      (``joint_state``)

(angles in (−π, π]; a model rollout continues θ₁ unwrapped from there).

**Goals.** A goal is a fingertip position (x, y); the goal joint state q* = (θ₁*, θ₂*, 0, 0)
comes from the 2-link inverse kinematics with the link lengths read from the MuJoCo model
(l₁ = body1's offset, l₂ = the fingertip's offset: 0.1 and 0.11 m),

    cos θ₂* = (x² + y² − l₁² − l₂²) / (2 l₁ l₂),  θ₂* = elbow · arccos(·)
    θ₁*     = atan2(y, x) − atan2(l₂ sin θ₂*, l₁ + l₂ cos θ₂*)

Reacher-v5 draws a random target on every reset; ``FixedGoalReacher`` (a gymnasium
wrapper) overrides it after each reset: the target's two slide joints (``qpos[2:4]``) are
set to the goal and the arm to a fixed start state (``qpos[:2]``, ``qvel[:2]``, default 0),
via ``MujocoEnv.set_state``; the returned observation is recomputed. Every real rollout is
then deterministic given the policy.

**Learned dynamics** (Reacher-v5). ``ml3tf.models.dynamics.JointDynamicsModel`` predicts Δq
from (q, a); it is fitted (``fit_dynamics``, Adam on the normalised Δq) on ``babbling_rollouts`` real rollouts
of uniform random actions, and refitted every ``refit_every`` meta-steps on all data so far
plus one real rollout per training goal of the adapted policy θ₁ (as the authors do every
300 meta-steps). The refit runs between compiled calls of ``MetaTrainer.run_steps``, through
the generic task hook ``before_meta_steps(trainer, first_step, count)``. The model's weights,
its Adam state, the transitions and the refit counters go into every checkpoint
(``checkpoint_state``/``restore_state``), so a killed run resumes exactly where it stopped.

**Meta-train** (per goal; the policy is the learner, re-initialised every meta-step):

    rollout through the model: a_t = clip(π_θ([q_t, q*] / n), −1, 1),  q_{t+1} = q_t + Δq̂(q_t, a_t)
    loss network features:      [q_t / n_s, a_t, ‖q_T − q*‖]     (7; q_t and the distance detached)
    θ₁ = θ₀ − α ∇_θ mean_t M_φ(features)                           (1 SGD step, α = 1e-4)
    L_task(θ₁) = 10 ‖θ_T − θ*‖ + mean_t ‖θ_t − θ*‖ + 1e-4 mean_t ‖θ̇_t‖   (rollout of θ₁ through the model)

with n = (1, 1, 8, 8, 1, 1, 1, 1) the authors' input normalisation (n_s its first four), and
the policy's state input detached as in the authors' code (the gradient reaches θ through
the actions and the model).

Beside the authors' protocol (defaults unchanged): ``loss_features="goal_relative"`` replaces
``q_t / n_s`` in the loss features by ``[wrap(θ_t − θ*), θ̇_t / 8]`` (``wrap`` to (−π, π]), and
``meta_loss_output="linear"`` drops the softplus of the loss network's output.

**Meta-test** (``evaluate``): per seed, a dynamics model fitted on fresh babbling (meta-test's
own instance, ``meta_test_dynamics``: an evaluation during meta-training leaves meta-training's
model, transitions and refit counters as they were); for each goal a fresh policy is trained
``steps`` SGD steps through that model on (a) the learned loss at ``inner_lr``, (b) the task
cost at ``inner_lr`` (``baseline``, the same optimisation), and (c) the task cost at the best
learning rate of ``baseline_lrs`` (chosen per seed on the training goal by the model-predicted
task cost; ``baseline_best_lr``). After every step the
policy is rolled out in the real MuJoCo environment through TF-Agents; the metric is the
final fingertip distance to the goal (m). On the authors' robot a fourth arm,
``learned_real``, is the authors' own meta-test (``meta_test_real``): no model at all — each SGD
step on the learned loss uses the states of the policy's last real episode, the gradient
reaching θ through the actions only. Splits: ``train`` (the meta-training goals) and
``test`` (held-out goals; the authors' test goal first).

Example:
    >>> import ml3tf
    >>> from ml3tf import tasks
    >>> task = tasks.get("reacher")
    >>> run = ml3tf.train(task, task.default_config().replace(meta_steps=300), "runs/reacher")
"""

from __future__ import annotations

# ml3tf.tasks.rl_env first: it sets up TF-Agents' Keras 2 before anything imports TensorFlow.
import ml3tf.tasks.rl_env as rl_env

# isort: split

import io
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

import ml3tf.tasks.reacher_robot_env as robot_env
from ml3tf.config import MetaTrainConfig
from ml3tf.engine import architecture_key, engine_for, per_seed, phi_of, stateless_loss
from ml3tf.functional import FunctionalModel
from ml3tf.meta_loss import MetaLossNetwork
from ml3tf.models.dynamics import JointDynamicsModel, VelocityEnsembleDynamics
from ml3tf.models.mlp import make_mlp
from ml3tf.results import summarize_task
from ml3tf.seeds import META_TEST_OFFSET, meta_test_seeds, meta_train_seeds
from ml3tf.task import Task, TaskBatch

log = logging.getLogger("ml3tf")

ENV_ID = "Reacher-v5"
#: The real environments of the task (``ReacherOptions.robot``).
ROBOTS = ("authors", "reacher_v5")
#: The authors' normalisation of the policy input [q, q*] (velocities / 8).
POLICY_INPUT_SCALE = (1.0, 1.0, 8.0, 8.0, 1.0, 1.0, 1.0, 1.0)
#: The authors' training goal and test goal (fingertip x, y in m).
AUTHORS_TRAIN_GOAL = (0.02534078, 0.19863741)
AUTHORS_TEST_GOAL = (0.05534078, 0.150863741)
_BABBLE_STREAM, _REFIT_STREAM = 11, 12


# --- geometry ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArmGeometry:
    """Link lengths of the reacher's 2-link arm (m)."""

    l1: float = 0.1
    l2: float = 0.11

    @classmethod
    def from_mujoco(cls, env: Any) -> ArmGeometry:
        """Read l₁ (body1's offset from body0) and l₂ (the fingertip's offset from body1)
        from a gymnasium MuJoCo reacher (wrapped or not)."""
        u = env.unwrapped
        body1 = np.asarray(u.model.body("body1").pos)
        tip = np.asarray(u.model.body("fingertip").pos)
        return cls(float(np.linalg.norm(body1[:2])), float(np.linalg.norm(tip[:2])))


def joint_state(observation: Any) -> np.ndarray:
    """``q = [θ₁, θ₂, θ̇₁, θ̇₂]`` from Reacher-v5 observations ``(…, 10)`` (module docstring)."""
    obs = np.asarray(observation, dtype=np.float64)
    if obs.shape[-1:] != (10,):
        raise ValueError(f"observation must have a last axis of 10 (Reacher-v5), got shape {obs.shape}")
    angles = np.arctan2(obs[..., 2:4], obs[..., 0:2])
    return np.concatenate([angles, obs[..., 6:8]], axis=-1)


def joint_state_tf(observation: tf.Tensor) -> tf.Tensor:
    """``joint_state`` in TensorFlow (for the TF-Agents policy's observation function)."""
    obs = tf.convert_to_tensor(observation)
    return tf.concat([tf.atan2(obs[..., 2:4], obs[..., 0:2]), obs[..., 6:8]], axis=-1)


def fingertip(q: Any, geometry: ArmGeometry = ArmGeometry()) -> np.ndarray:
    """Forward kinematics: fingertip (x, y) of joint angles ``q[..., :2]``."""
    q = np.asarray(q, dtype=np.float64)
    t1, t12 = q[..., 0], q[..., 0] + q[..., 1]
    x = geometry.l1 * np.cos(t1) + geometry.l2 * np.cos(t12)
    y = geometry.l1 * np.sin(t1) + geometry.l2 * np.sin(t12)
    return np.stack([x, y], axis=-1)


def inverse_kinematics(goal: Any, geometry: ArmGeometry = ArmGeometry(), elbow: int = 1) -> np.ndarray:
    """Joint angles ``(θ₁, θ₂)`` that put the fingertip at ``goal = (x, y)`` (module docstring).

    ``elbow`` = +1 or −1 picks the sign of θ₂ (the two solutions).

    Raises:
        ValueError: ``goal`` is outside the annulus l₁ − l₂ ≤ ‖goal‖ ≤ l₁ + l₂, or ``elbow`` is not ±1.
    """
    if elbow not in (1, -1):
        raise ValueError(f"elbow must be +1 or -1, got {elbow!r}")
    g = np.asarray(goal, dtype=np.float64)
    if g.shape != (2,) or not np.all(np.isfinite(g)):
        raise ValueError(f"goal must be a finite (x, y) pair, got {goal!r}")
    l1, l2 = geometry.l1, geometry.l2
    r2 = float(g @ g)
    c2 = (r2 - l1**2 - l2**2) / (2 * l1 * l2)
    if not -1.0 - 1e-9 <= c2 <= 1.0 + 1e-9:
        raise ValueError(
            f"goal {tuple(g.tolist())!r} is out of reach: its distance {math.sqrt(r2):.4g} m must lie in "
            f"[{abs(l1 - l2):.4g}, {l1 + l2:.4g}]"
        )
    t2 = elbow * math.acos(min(1.0, max(-1.0, c2)))
    t1 = math.atan2(g[1], g[0]) - math.atan2(l2 * math.sin(t2), l1 + l2 * math.cos(t2))
    return np.array([t1, t2])


def goal_joint_state(goal: Any, geometry: ArmGeometry = ArmGeometry(), elbow: int = 1) -> np.ndarray:
    """q* = (θ₁*, θ₂*, 0, 0) for a fingertip goal."""
    return np.concatenate([inverse_kinematics(goal, geometry, elbow), [0.0, 0.0]])


# --- the real environment -------------------------------------------------------------------
def _wrapper_base() -> type:
    import gymnasium

    return gymnasium.Wrapper


class FixedGoalReacher:
    """Factory of a gymnasium wrapper around ``Reacher-v5`` with a deterministic goal and start.

    ``FixedGoalReacher.make(goal, start, horizon)`` returns the wrapped env; after every
    ``reset`` the target's slide joints are set to ``goal`` and the arm to ``start``
    (θ₁, θ₂, θ̇₁, θ̇₂). ``env.fingertip_distance`` is the fingertip–goal distance now,
    ``env.episode_end_distance`` the one at the end of the last finished episode (TF-Agents'
    driver resets the environment right after an episode's last step).
    """

    @staticmethod
    def make(goal: Any, start: Any = (0.0, 0.0, 0.0, 0.0), horizon: int = 65) -> Any:
        import gymnasium

        goal = np.asarray(goal, dtype=np.float64)
        start = np.asarray(start, dtype=np.float64)
        if goal.shape != (2,) or start.shape != (4,):
            raise ValueError(f"goal must be (x, y) and start (θ₁, θ₂, θ̇₁, θ̇₂), got {goal!r}, {start!r}")
        base = gymnasium.make(ENV_ID, max_episode_steps=int(horizon))

        class _Fixed(_wrapper_base()):
            def __init__(self, env):
                super().__init__(env)
                self.goal = goal
                self.start = start
                self.fingertip_distance = float("nan")
                self.episode_end_distance = float("nan")

            def reset(self, **kwargs):
                super().reset(**kwargs)
                u = self.env.unwrapped
                qpos, qvel = u.data.qpos.copy(), u.data.qvel.copy()
                qpos[:2], qpos[2:4] = self.start[:2], self.goal
                qvel[:2], qvel[2:] = self.start[2:], 0.0
                u.set_state(qpos, qvel)
                self.fingertip_distance = self._distance()
                return u._get_obs(), {}

            def step(self, action):
                out = super().step(action)
                self.fingertip_distance = self._distance()
                if out[2] or out[3]:  # the episode ended (a driver may reset right after)
                    self.episode_end_distance = self.fingertip_distance
                return out

            def _distance(self) -> float:
                u = self.env.unwrapped
                return float(np.linalg.norm((u.get_body_com("fingertip") - u.get_body_com("target"))[:2]))

        return _Fixed(base)


def make_reacher_environment(goal: Any, start: Any = (0.0,) * 4, horizon: int = 65, seed: int = 0):
    """A TF-Agents ``GymnasiumEnvironment`` of ``FixedGoalReacher`` (episodes of ``horizon`` steps)."""
    return rl_env.GymnasiumEnvironment(FixedGoalReacher.make(goal, start, horizon), seed=seed)


def transitions(episodes: dict, state_fn: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(q_t, a_t, q_{t+1})`` from ``collect_episodes`` output (consecutive in-episode steps).

    ``state_fn`` maps observations to joint states (default ``joint_state``: Reacher-v5's; the
    authors' robot observes the joint state itself). θ differences are wrapped to (−π, π] (an
    angle may cross ±π between two observations).
    """
    state_fn = joint_state if state_fn is None else state_fn
    q = state_fn(episodes["observation"])  # (E, T, 4)
    a = np.asarray(episodes["action"], dtype=np.float64)
    mask = np.asarray(episodes["mask"], dtype=bool)
    ok = mask[:, :-1] & mask[:, 1:]
    q0, q1, a0 = q[:, :-1][ok], q[:, 1:][ok], a[:, :-1][ok]
    delta = q1 - q0
    delta[:, :2] = np.arctan2(np.sin(delta[:, :2]), np.cos(delta[:, :2]))
    return q0, a0, q0 + delta


def babble(env: Any, rollouts: int, seed: int) -> dict:
    """``rollouts`` episodes of uniform random actions in [−1, 1]² through TF-Agents.

    ``env`` is a ``GymnasiumEnvironment`` (closed afterwards); returns ``collect_episodes``' dict.
    """
    rl_env.import_tf_agents()
    from tf_agents.environments import tf_py_environment
    from tf_agents.policies import random_tf_policy

    tf_env = tf_py_environment.TFPyEnvironment(env)
    tf.random.set_seed(int(seed))  # RandomTFPolicy draws with stateful ops: global + op seed
    policy = random_tf_policy.RandomTFPolicy(tf_env.time_step_spec(), tf_env.action_spec())
    try:
        return rl_env.collect_episodes(tf_env, policy, rollouts)
    finally:
        tf_env.close()  # joins TF-Agents' thread pool (and closes ``env``)


def fit_dynamics(
    model: JointDynamicsModel,
    q: np.ndarray,
    a: np.ndarray,
    q_next: np.ndarray,
    epochs: int = 100,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    seed: int = 0,
    fresh_optimizer: bool = False,
) -> float:
    """Fit ``model`` to transitions: σ ← std(Δq), then Adam on ``mean ((Δq̂ − Δq) / σ)²``.

    Continues from the model's current weights (a refit) and, unless ``fresh_optimizer``, from the
    Adam moments of the previous fit; returns the final mini-batch loss. The first call fixes the
    learning rate (one compiled fit per model).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs!r}")
    delta = np.asarray(q_next) - np.asarray(q)
    if not len(delta):
        raise ValueError("fit_dynamics needs at least one transition")
    model.set_delta_scale(delta)
    x = np.concatenate([q, a], -1).astype(np.float32)
    y = (delta / model.delta_scale.numpy()).astype(np.float32)
    fit = _dynamics_fit(model, learning_rate)
    if fresh_optimizer:
        for v in fit[0].variables:
            if not v.path.endswith("learning_rate"):
                v.assign(tf.zeros_like(v))
    rng = np.random.default_rng(seed)
    n = len(x)
    bs = min(batch_size, n)
    per_epoch = max(1, n // bs)
    order = np.stack([rng.permutation(n)[: per_epoch * bs].reshape(per_epoch, bs) for _ in range(epochs)])
    return float(fit[1](tf.constant(x), tf.constant(y), tf.constant(order.reshape(-1, bs), tf.int32)))


def _dynamics_fit(model: JointDynamicsModel, learning_rate: float = 1e-3):
    """``(Adam, compiled fit)`` of ``model``, made on the first call (which fixes the rate)."""
    fit = model.__dict__.get("_ml3tf_fit")
    if fit is not None:
        return fit
    opt = keras.optimizers.Adam(learning_rate)
    opt.build(model.trainable_variables)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 3 * model.n_joints], tf.float32),
            tf.TensorSpec([None, 2 * model.n_joints], tf.float32),
            tf.TensorSpec([None, None], tf.int32),
        ]
    )
    def run(x, y, order):
        def body(i, total):
            idx = order[i]
            xb, yb = tf.gather(x, idx), tf.gather(y, idx)
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(model.normalized_delta(xb) - yb))
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return i + 1, loss

        _, last = tf.while_loop(lambda i, _: i < tf.shape(order)[0], body, (0, tf.constant(0.0)))
        return last

    fit = model.__dict__["_ml3tf_fit"] = (opt, run)
    return fit


def fit_velocity_ensemble(
    model: VelocityEnsembleDynamics,
    q: np.ndarray,
    a: np.ndarray,
    q_next: np.ndarray,
    epochs: int = 500,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    seed: int = 0,
) -> float:
    """Fit the authors' ensemble to transitions: member k on all but the k-th of K random chunks.

    The transitions are permuted once and cut into K chunks of ⌈N/K⌉; member k trains on the other
    chunks (in that order; K = 1: all, unpermuted) for ``epochs`` passes of mini-batches of
    ``batch_size`` (the last one smaller), each step Adam on the member's Gaussian NLL of
    Δθ̇ = θ̇_{t+1} − θ̇_t. Every fit starts a fresh Adam and continues from the current weights (a
    refit, as the authors' ensemble is trained again on all data so far). Returns the mean over
    members of the last mini-batch's NLL.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    q, a, q_next = (np.asarray(v, np.float64) for v in (q, a, q_next))
    n = len(q)
    if not n:
        raise ValueError("fit_velocity_ensemble needs at least one transition")
    j = model.n_joints
    x = tf.constant(np.concatenate([q, a], -1), tf.float32)
    y = tf.constant(q_next[:, j:] - q[:, j:], tf.float32)
    k_all = model.ensemble_size
    rng = np.random.default_rng(seed)
    if k_all == 1:
        subsets = [np.arange(n)]
    else:
        perm, chunk = rng.permutation(n), math.ceil(n / k_all)
        subsets = [np.delete(perm, range(k * chunk, min((k + 1) * chunk, n))) for k in range(k_all)]
    losses = []
    for k, idx in enumerate(subsets):
        if not len(idx):  # fewer transitions than members: this member has nothing to learn from
            continue
        per_epoch = math.ceil(len(idx) / batch_size)
        padded = np.zeros(per_epoch * batch_size, np.int64)
        padded[: len(idx)] = idx
        weight = np.zeros(per_epoch * batch_size, np.float32)
        weight[: len(idx)] = 1.0
        order = np.tile(padded.reshape(per_epoch, batch_size), (epochs, 1))
        mask = np.tile(weight.reshape(per_epoch, batch_size), (epochs, 1))
        opt, run = _ensemble_fit(model, k, learning_rate)
        for v in opt.variables:  # a fresh Adam per fit
            if not v.path.endswith("learning_rate"):
                v.assign(tf.zeros_like(v))
        losses.append(float(run(x, y, tf.constant(order, tf.int32), tf.constant(mask))))
    return float(np.mean(losses))


def _ensemble_fit(model: VelocityEnsembleDynamics, k: int, learning_rate: float = 1e-3):
    """``(Adam, compiled fit)`` of member ``k`` of ``model``, made on the first call."""
    fits = model.__dict__.setdefault("_ml3tf_member_fits", {})
    if k in fits:
        return fits[k]
    layers, mean, var = model.members[k]
    variables = [v for layer in (*layers, mean, var) for v in layer.trainable_variables]
    opt = keras.optimizers.Adam(learning_rate)
    opt.build(variables)
    dim = 3 * model.n_joints

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, dim], tf.float32),
            tf.TensorSpec([None, model.n_joints], tf.float32),
            tf.TensorSpec([None, None], tf.int32),
            tf.TensorSpec([None, None], tf.float32),
        ]
    )
    def run(x, y, order, mask):
        def body(i, last):
            xb, yb, wb = tf.gather(x, order[i]), tf.gather(y, order[i]), mask[i]
            with tf.GradientTape() as tape:
                mu, v = model.member(k, xb)
                nll = tf.reduce_mean(0.5 * tf.math.log(v) + 0.5 * tf.square(mu - yb) / v, -1)
                loss = tf.reduce_sum(wb * nll) / tf.reduce_sum(wb)
            grads = tape.gradient(loss, variables)
            opt.apply_gradients(zip(grads, variables, strict=True))
            return i + 1, loss

        _, last = tf.while_loop(lambda i, _: i < tf.shape(order)[0], body, (0, tf.constant(0.0)))
        return last

    fits[k] = (opt, run)
    return fits[k]


class _PythonSide(tf.train.experimental.PythonState):
    """The reacher's Python-side state in a checkpoint, serialised when it is saved: the
    transitions so far (float64, as collected), the seed the dynamics model was fitted for,
    the last refit's step and the fit log. A restore leaves it in ``loaded`` for
    ``ReacherTask.restore_state``."""

    def __init__(self, task: ReacherTask) -> None:
        self._task = task
        self.loaded: tuple[dict[str, np.ndarray], dict] | None = None

    def serialize(self) -> bytes:
        t = self._task
        empty = (np.zeros((0, 4)), np.zeros((0, 2)), np.zeros((0, 4)))
        q, a, q_next = (np.concatenate(p) for p in zip(*t._dataset, strict=True)) if t._dataset else empty
        meta = {"fitted_seed": t._fitted_seed, "last_refit": t._last_refit, "dynamics_log": t.dynamics_log}
        out = io.BytesIO()
        np.savez(out, q=q, a=a, q_next=q_next, meta=np.array(json.dumps(meta)))
        return out.getvalue()

    def deserialize(self, string_value: bytes) -> None:
        with np.load(io.BytesIO(string_value), allow_pickle=False) as z:
            self.loaded = {k: z[k] for k in ("q", "a", "q_next")}, json.loads(str(z["meta"]))


# --- the task -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReacherOptions:
    """Options of the reacher task (CLI flags ``--horizon`` …)."""

    train_goals: tuple[tuple[float, float], ...] = (AUTHORS_TRAIN_GOAL,)
    """Fingertip goals (x, y) of meta-training (the authors': one); flat ``x1 y1 x2 y2`` is paired."""
    test_goals: tuple[tuple[float, float], ...] = (AUTHORS_TEST_GOAL, (-0.08, 0.15), (0.15, 0.08))
    """Held-out fingertip goals of meta-test (the authors' test goal first)."""
    horizon: int = 65
    """Steps per rollout (model and real environment)."""
    start: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    """Start joint state (θ₁, θ₂, θ̇₁, θ̇₂) of every rollout."""
    elbow: int = 1
    """Inverse-kinematics solution: sign of θ₂*."""
    robot: str = "authors"
    """The real environment: ``authors`` (the authors' own 2-link robot, ``reacher_robot_env``, with
    their dynamics ensemble) or ``reacher_v5`` (gymnasium's Reacher-v5 with a Δq model)."""
    dt: float = 0.01
    """Time step (s) of the ``authors`` robot (the authors' MJCF loader: 0.01)."""
    babbling_rollouts: int = 3
    """Random-action rollouts the dynamics model is first fitted on."""
    refit_every: int = 300
    """Refit the dynamics model every N meta-steps on the adapted policy's real rollouts (0: never)."""
    refit_at_start: bool | None = None
    """Also refit at step 0 on θ₁'s real rollout (None: the robot's default; ``authors``: yes)."""
    dynamics_hidden: tuple[int, ...] = ()
    """Hidden widths of the dynamics model (empty: the robot's default; ``authors``: 100, 30 per
    ensemble member; ``reacher_v5``: 128, 128)."""
    dynamics_epochs: int = 0
    """Epochs of a fit (0: the robot's default; ``authors``: 500; ``reacher_v5``: 150)."""
    refit_epochs: int = 0
    """Epochs of a refit (0: the robot's default; ``authors``: all of ``dynamics_epochs``;
    ``reacher_v5``: a third of it)."""
    dynamics_batch_size: int = 0
    """Mini-batch of the dynamics fits (0: the robot's default, 64 for both; the authors' config says
    128, but their data loader uses 64)."""
    ensemble_size: int = 0
    """Members of the ``authors`` dynamics ensemble (0: the authors' 3; ``reacher_v5``: 1)."""
    policy_hidden: tuple[int, ...] = (64, 64)
    """Hidden widths of the tanh policy (the authors': 64, 64)."""
    meta_loss_hidden: tuple[int, ...] = (400, 400)
    """Hidden widths of the ELU loss network (the authors': 400, 400)."""
    rollout_loop: str = "while"
    """Rollouts as a ``tf.while_loop`` (small graph, fast to trace) or a ``python`` loop (unrolled)."""
    baseline_lrs: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)
    """Learning rates tried for the ``baseline_best_lr`` arm of meta-test."""
    loss_features: str = "absolute"
    """State features of the loss network: ``absolute`` (the authors': ``q_t / n_s``) or
    ``goal_relative`` (``[wrap(θ_t − θ*), θ̇_t / 8]``: bounded angles, and the goal's direction)."""
    meta_loss_output: str = "softplus"
    """Output activation of the loss network (the authors': ``softplus``; or ``linear``)."""

    def __post_init__(self) -> None:
        if self.robot not in ROBOTS:
            raise ValueError(f"robot must be one of {ROBOTS}, got {self.robot!r}")
        authors = self.robot == "authors"
        if isinstance(self.dt, bool) or not isinstance(self.dt, (int, float)) or not 0 < self.dt <= 0.05:
            raise ValueError(f"dt must be a number in (0, 0.05] s, got {self.dt!r}")
        for name in ("dynamics_epochs", "refit_epochs", "dynamics_batch_size", "ensemble_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0 (0: the robot's default), got {v!r}")
        if not authors and self.ensemble_size > 1:
            raise ValueError(f"ensemble_size > 1 needs robot='authors', got {self.ensemble_size!r}")
        if not (self.refit_at_start is None or isinstance(self.refit_at_start, bool)):
            raise ValueError(f"refit_at_start must be True, False or None, got {self.refit_at_start!r}")
        resolved = {
            "dynamics_hidden": tuple(int(h) for h in self.dynamics_hidden)
            or ((100, 30) if authors else (128, 128)),
            "dynamics_epochs": self.dynamics_epochs or (500 if authors else 150),
            "dynamics_batch_size": self.dynamics_batch_size or 64,
            "ensemble_size": self.ensemble_size or (3 if authors else 1),
            "refit_at_start": authors if self.refit_at_start is None else self.refit_at_start,
        }
        resolved["refit_epochs"] = self.refit_epochs or (
            resolved["dynamics_epochs"] if authors else max(1, resolved["dynamics_epochs"] // 3)
        )
        for name, value in resolved.items():
            object.__setattr__(self, name, value)
        for name in ("horizon", "babbling_rollouts", "dynamics_epochs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if (
            isinstance(self.refit_every, bool)
            or not isinstance(self.refit_every, int)
            or self.refit_every < 0
        ):
            raise ValueError(f"refit_every must be an integer >= 0, got {self.refit_every!r}")
        if self.elbow not in (1, -1):
            raise ValueError(f"elbow must be +1 or -1, got {self.elbow!r}")
        if self.loss_features not in ("absolute", "goal_relative"):
            raise ValueError(
                f"loss_features must be 'absolute' or 'goal_relative', got {self.loss_features!r}"
            )
        if self.meta_loss_output not in ("softplus", "linear"):
            raise ValueError(
                f"meta_loss_output must be 'softplus' or 'linear', got {self.meta_loss_output!r}"
            )
        if self.rollout_loop not in ("while", "python"):
            raise ValueError(f"rollout_loop must be 'while' or 'python', got {self.rollout_loop!r}")
        if len(self.start) != 4 or not all(math.isfinite(float(s)) for s in self.start):
            raise ValueError(f"start must be 4 finite numbers (θ₁, θ₂, θ̇₁, θ̇₂), got {self.start!r}")
        for name in ("train_goals", "test_goals"):
            goals = getattr(self, name)
            flat = [g for g in goals if isinstance(g, (int, float))]
            if goals and len(flat) == len(goals) and len(flat) % 2 == 0:  # CLI: --train-goals x1 y1 x2 y2
                goals = tuple(zip(flat[::2], flat[1::2], strict=True))
            try:
                goals = tuple((float(g[0]), float(g[1])) if len(g) == 2 else tuple(g) for g in goals)
            except TypeError:
                raise ValueError(f"{name} must be (x, y) pairs, got {getattr(self, name)!r}") from None
            object.__setattr__(self, name, goals)
            if not goals:
                raise ValueError(f"{name} must hold at least one (x, y) goal, got {goals!r}")
            for g in goals:
                try:
                    inverse_kinematics(g, ArmGeometry(), self.elbow)
                except ValueError as exc:
                    raise ValueError(f"{name}: {exc}") from None
        if not self.baseline_lrs or not all(
            isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in self.baseline_lrs
        ):
            raise ValueError(f"baseline_lrs must be positive numbers, got {self.baseline_lrs!r}")
        if not self.policy_hidden or not self.meta_loss_hidden or not self.dynamics_hidden:
            raise ValueError("policy_hidden, meta_loss_hidden and dynamics_hidden need at least one layer")


class ReacherTask(Task):
    """Model-based ML3 on the MuJoCo reacher (module docstring)."""

    name = "reacher"
    metric_name = "final_distance"
    baseline_name = "task_cost"
    higher_is_better = False
    Options = ReacherOptions

    def __init__(self, **options: Any) -> None:
        self.options = ReacherOptions(**options)
        o = self.options
        if o.robot == "authors":
            self.geometry = ArmGeometry(*robot_env.LINK_LENGTHS)
        else:
            env = FixedGoalReacher.make(o.train_goals[0], o.start, o.horizon)
            self.geometry = ArmGeometry.from_mujoco(env)
            env.close()
        self.train_targets = np.stack([goal_joint_state(g, self.geometry, o.elbow) for g in o.train_goals])
        self.test_targets = np.stack([goal_joint_state(g, self.geometry, o.elbow) for g in o.test_goals])
        self.dynamics = self.make_dynamics()
        #: Meta-test's own dynamics model (fitted on fresh babbling per seed by ``evaluate``): an
        #: evaluation during meta-training (``eval_every``) leaves ``dynamics``, its data and counters.
        self.meta_test_dynamics = self.make_dynamics()
        #: One record per meta-test fit: ``{"seed", "transitions", "loss"}``.
        self.meta_test_dynamics_log: list[dict] = []
        self._dataset: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        #: One record per dynamics fit: ``{"step", "transitions", "loss", "fresh"}`` (fresh: babbling).
        self.dynamics_log: list[dict] = []
        self._fitted_seed: int | None = None
        self._last_refit = -1
        self._python_side = _PythonSide(self)
        self._state_missing = False  # resumed from a checkpoint without the state below
        self.input_scale = tf.constant(POLICY_INPUT_SCALE, tf.float32)

    def make_dynamics(self) -> JointDynamicsModel | VelocityEnsembleDynamics:
        """A fresh dynamics model of the robot: the authors' ensemble predicting Δθ̇
        (``VelocityEnsembleDynamics``, K × hidden, dt) or a ``JointDynamicsModel`` of Δq (Reacher-v5)."""
        o = self.options
        if o.robot == "authors":
            return VelocityEnsembleDynamics(o.dynamics_hidden, ensemble_size=o.ensemble_size, dt=o.dt)
        return JointDynamicsModel(o.dynamics_hidden)

    def make_environment(self, goal: Any, seed: int = 0) -> Any:
        """A TF-Agents environment of the robot with the fingertip goal ``goal`` (start, horizon: the
        options')."""
        o = self.options
        if o.robot == "authors":
            return robot_env.make_environment(goal, o.start, o.horizon, seed=seed, dt=o.dt)
        return make_reacher_environment(goal, o.start, o.horizon, seed=seed)

    def state_of(self, observation: Any) -> np.ndarray:
        """Joint states q of the robot's observations (NumPy)."""
        if self.options.robot == "authors":
            return np.asarray(observation, np.float64)[..., :4]
        return joint_state(observation)

    def _state_of_tf(self, observation: tf.Tensor) -> tf.Tensor:
        if self.options.robot == "authors":
            return tf.cast(observation, tf.float32)[..., :4]
        return joint_state_tf(tf.cast(observation, tf.float32))

    def _fit(self, model: Any, q: Any, a: Any, q1: Any, epochs: int, seed: int, fresh: bool) -> float:
        o = self.options
        if isinstance(model, VelocityEnsembleDynamics):
            return fit_velocity_ensemble(model, q, a, q1, epochs, o.dynamics_batch_size, seed=seed)
        return fit_dynamics(
            model, q, a, q1, epochs=epochs, batch_size=o.dynamics_batch_size, seed=seed, fresh_optimizer=fresh
        )

    def default_config(self) -> MetaTrainConfig:
        return MetaTrainConfig(
            inner_steps=1,
            inner_lr=1e-4,
            meta_lr=1e-2,
            meta_steps=3000,
            meta_batch_size=1,
            steps_per_call=50,
            checkpoint_every=100,
            eval_jit_compile=False,
            learner_init="fixed",
            # the authors test their loss with 2 SGD steps on the test goal
            eval_steps=2 if self.options.robot == "authors" else 10,
        )

    def make_learner(self) -> keras.Model:
        return make_mlp(8, self.options.policy_hidden, 2, activation="tanh", name="reacher_policy")

    def make_meta_loss(self) -> keras.Model:
        return MetaLossNetwork(
            7,
            self.options.meta_loss_hidden,
            activation="elu",
            use_bias=True,
            output_activation=self.options.meta_loss_output,
        )

    # --- data ------------------------------------------------------------------------------
    def sample(self, seed: int, step: int, batch_size: int) -> TaskBatch:
        """Goals cycle through ``train_goals``; nothing is random (the policy init is the trainer's)."""
        n = len(self.train_targets)
        idx = [(step * batch_size + b) % n for b in range(batch_size)]
        goal = self.train_targets[idx].astype(np.float32)
        start = np.tile(np.asarray(self.options.start, np.float32), (batch_size, 1))
        data = {"goal": goal, "start": start}
        return TaskBatch(support=data, query=dict(data))

    # --- rollouts through the learned model ------------------------------------------------------
    def rollout(
        self,
        learner: FunctionalModel,
        params: list,
        start: tf.Tensor,
        goal: tf.Tensor,
        dynamics: JointDynamicsModel | None = None,
    ):
        """States ``(T+1, N, 4)`` and actions ``(T, N, 4)`` of the policy through ``dynamics``
        (default: meta-training's ``self.dynamics``; meta-test passes ``self.meta_test_dynamics``)."""
        model = self.dynamics if dynamics is None else dynamics
        goal = tf.reshape(tf.cast(goal, tf.float32), (-1, 4))
        q = tf.reshape(tf.cast(start, tf.float32), (-1, 4))
        horizon = self.options.horizon

        def one_step(q):
            x = tf.concat([tf.stop_gradient(q), goal], -1) / self.input_scale
            a = tf.clip_by_value(learner(params, x), -1.0, 1.0)
            return model.next_state(q, a), a

        if self.options.rollout_loop == "python":
            states, actions = [q], []
            for _ in range(horizon):
                q, a = one_step(q)
                states.append(q)
                actions.append(a)
            return tf.stack(states), tf.stack(actions)
        # tf.while_loop: a small graph (fast to trace), differentiable to second order
        s_arr = tf.TensorArray(tf.float32, size=horizon + 1, element_shape=q.shape).write(0, q)
        a_arr = tf.TensorArray(tf.float32, size=horizon, element_shape=(q.shape[0], 2))

        def body(t, q, s_arr, a_arr):
            q, a = one_step(q)
            return t + 1, q, s_arr.write(t + 1, q), a_arr.write(t, a)

        _, _, s_arr, a_arr = tf.while_loop(
            lambda t, *_: t < horizon, body, (tf.constant(0), q, s_arr, a_arr), maximum_iterations=horizon
        )
        return s_arr.stack(), a_arr.stack()

    def loss_features(self, states: tf.Tensor, actions: tf.Tensor, goal: tf.Tensor) -> tf.Tensor:
        """``[q_t / n_s, a_t, ‖q_T − q*‖]`` (T·N, 7) with states and the distance detached.

        With ``loss_features="goal_relative"`` the state part is ``[wrap(θ_t − θ*), θ̇_t / 8]``
        (``wrap`` to (−π, π] by ``atan2(sin, cos)``).
        """
        goal = tf.reshape(tf.cast(goal, tf.float32), (-1, 4))
        if self.options.loss_features == "goal_relative":
            d = tf.stop_gradient(states[:-1]) - goal
            s = tf.concat([tf.atan2(tf.sin(d[..., :2]), tf.cos(d[..., :2])), d[..., 2:] / 8.0], -1)
        else:
            s = tf.stop_gradient(states[:-1]) / self.input_scale[:4]
        dist = tf.stop_gradient(_norm(states[-1] - goal))  # (N,)
        t = tf.shape(actions)[0]
        d = tf.tile(dist[None, :, None], [t, 1, 1])
        return tf.reshape(tf.concat([s, actions, d], -1), (-1, 7))

    def cost(self, states: tf.Tensor, goal: tf.Tensor) -> tf.Tensor:
        """The authors' task loss ``10‖θ_T − θ*‖ + mean_t ‖θ_t − θ*‖ + 1e-4 mean_t ‖θ̇_t‖`` (mean over N)."""
        goal = tf.reshape(tf.cast(goal, tf.float32), (-1, 4))
        err = _norm(states[..., :2] - goal[:, :2])  # (T+1, N)
        per = 10.0 * err[-1] + tf.reduce_mean(err, 0) + 1e-4 * tf.reduce_mean(_norm(states[..., 2:]), 0)
        return tf.reduce_mean(per)

    def meta_loss_inputs(self, learner, params, state, data):
        states, actions = self.rollout(learner, params, data["start"], data["goal"])
        return self.loss_features(states, actions, data["goal"]), state

    def task_loss(self, learner, params, state, data):
        states, _ = self.rollout(learner, params, data["start"], data["goal"])
        return self.cost(states, data["goal"])

    def baseline_inner_loss(self, learner, params, state, data):
        return self.task_loss(learner, params, state, data), state

    def extra_loss(self, learner, params, state, data, extra):
        return None

    # --- the learned dynamics model: fitted before, refitted between compiled calls -----------------
    def fit_babbling(self, seed: int, model: JointDynamicsModel | None = None) -> float:
        """Fresh dynamics weights (from ``seed``) fitted on ``babbling_rollouts`` random rollouts.

        ``model``: meta-training's ``self.dynamics`` (default: its transitions start over with the
        babbling, the fit goes into ``dynamics_log``) or another one (meta-test's
        ``meta_test_dynamics``: nothing of meta-training is touched; ``meta_test_dynamics_log``).
        """
        o = self.options
        target = self.dynamics if model is None else model
        keras.utils.set_random_seed(seed)
        fresh = self.make_dynamics()
        for v, w in zip(target.weights, fresh.weights, strict=True):
            v.assign(w)
        env = self.make_environment(o.train_goals[0], seed=seed)
        episodes = babble(env, o.babbling_rollouts, seed=_BABBLE_STREAM * 1000 + seed)
        if o.robot == "authors":
            # the authors fit after each babbling rollout, on all rollouts so far
            parts = [
                transitions({k: v[i : i + 1] for k, v in episodes.items()}, self.state_of)
                for i in range(o.babbling_rollouts)
            ]
        else:
            parts = [transitions(episodes, self.state_of)]
        if model is None:
            self._dataset = []
            for part in parts:
                self._dataset.append(part)
                loss = self._refit(o.dynamics_epochs, seed, fresh=True)
            return loss
        for i in range(len(parts)):
            data = [np.concatenate(p) for p in zip(*parts[: i + 1], strict=True)]
            loss = self._fit(model, *data, o.dynamics_epochs, seed, fresh=True)
        self.meta_test_dynamics_log.append({"seed": seed, "transitions": len(data[0]), "loss": loss})
        return loss

    def _refit(self, epochs: int, seed: int, fresh: bool = False, step: int = 0) -> float:
        q, a, q1 = (np.concatenate(parts) for parts in zip(*self._dataset, strict=True))
        loss = self._fit(self.dynamics, q, a, q1, epochs, seed, fresh)
        self.dynamics_log.append({"step": step, "transitions": len(q), "loss": loss, "fresh": fresh})
        log.info("reacher: dynamics model fitted on %d transitions (loss %.4g)", len(q), loss)
        return loss

    # --- resumable runs: the dynamics model and its data go into every checkpoint ------------------
    def checkpoint_state(self) -> dict[str, Any]:
        """What a resumed run needs besides φ (``ml3tf.run`` saves it in every checkpoint): the
        dynamics model's weights (σ too), the Adam state its refits continue from, and the Python
        side (transitions, fitted seed, last refit, fit log; ``_PythonSide``).

        The weights go in as a list: TensorFlow's checkpoint does not see into the Keras 3
        model's list of hidden layers (only ``output_layer`` and σ would be saved by name).
        """
        state = {"dynamics_weights": list(self.dynamics.weights), "python_side": self._python_side}
        if isinstance(self.dynamics, JointDynamicsModel):  # the authors' ensemble: a fresh Adam per fit
            state["dynamics_optimizer"] = _dynamics_fit(self.dynamics)[0]
        return state

    def restore_state(self, step: int, restored: bool) -> None:
        """After a checkpoint of ``step`` meta-steps was restored: the Python side back from it.

        ``restored=False`` with ``step > 0`` (a checkpoint written before the reacher saved its
        state): the next chunk refits the dynamics model on babbling only, with a warning.
        """
        loaded, self._python_side.loaded = self._python_side.loaded, None
        if restored and loaded is not None:
            arrays, meta = loaded
            self._dataset = [(arrays["q"], arrays["a"], arrays["q_next"])] if len(arrays["q"]) else []
            self._fitted_seed, self._last_refit = meta["fitted_seed"], meta["last_refit"]
            self.dynamics_log[:] = meta["dynamics_log"]
            self._state_missing = False
        elif step:
            self._fitted_seed, self._state_missing = None, True

    def before_meta_steps(self, trainer: Any, first_step: int, count: int) -> None:
        """MetaTrainer hook, run before each compiled chunk of meta-steps.

        At step 0 (or for a new seed) the dynamics model is fitted on fresh babbling; when
        the chunk contains a multiple of ``refit_every``, the adapted policy θ₁ of every
        training goal (θ₀ as the trainer draws it at that step) is rolled out in the real
        environment and the model refitted on all transitions so far. A run resumed by
        ``ml3tf.run`` has its model, data and counters back (``restore_state``) and goes on.
        """
        seed = int(trainer.config.seed)
        if first_step == 0 or self._fitted_seed != seed:
            if first_step and self._state_missing:
                log.warning(
                    "reacher: resumed at step %d from a checkpoint without the dynamics model's state "
                    "(an older ml3tf): it is refitted on babbling only, so the run will not match an "
                    "uninterrupted one",
                    first_step,
                )
            elif first_step:
                log.warning(
                    "reacher: at step %d the dynamics model does not hold seed %d's fit (another "
                    "seed's run in this task?): refitted on babbling only",
                    first_step,
                    seed,
                )
            self.fit_babbling(seed)
            # refit_at_start (the authors'): step 0 is due too
            self._fitted_seed, self._last_refit = seed, (-1 if self.options.refit_at_start else 0)
            self._state_missing = False
        every = self.options.refit_every
        if not every:
            return
        due = [s for s in range(first_step, first_step + count) if s % every == 0 and s > self._last_refit]
        if not due:
            return
        step = due[0]
        batch = self.sample(seed, step, len(self.train_targets))
        seeds = trainer.init_seeds(step, len(self.train_targets))
        o = self.options
        for b in range(len(self.train_targets)):
            one = batch.task(b)
            params = trainer.adapt(trainer.learner.init_params(seeds[b]), _tensors(one.support)).params
            env = self.make_environment(o.train_goals[b], seed=seed)
            episodes = self.real_rollouts(env, trainer.learner.model, params, self.train_targets[b], 1)
            self._dataset.append(transitions(episodes, self.state_of))
        self._refit(o.refit_epochs, _REFIT_STREAM * 1000 + step, step=step)
        self._last_refit = step

    # --- the real environment ---------------------------------------------------------------
    def real_rollouts(self, env: Any, learner: keras.Model, params: list, target: np.ndarray, episodes: int):
        """Episodes of the policy θ = ``params`` in the real env (a ``GymnasiumEnvironment``, closed
        afterwards) through a TF-Agents ``KerasPolicy``."""
        rl_env.import_tf_agents()
        from tf_agents.environments import tf_py_environment

        tf_env = tf_py_environment.TFPyEnvironment(env)
        goal = tf.constant(np.asarray(target, np.float32)[None])
        scale = self.input_scale

        def observation_fn(obs):
            q = self._state_of_tf(obs)
            return tf.concat([q, tf.broadcast_to(goal, tf.shape(q))], -1) / scale

        policy = rl_env.KerasPolicy(
            learner,
            tf_env.time_step_spec(),
            tf_env.action_spec(),
            params=[tf.convert_to_tensor(p) for p in params],
            observation_fn=observation_fn,
        )
        try:
            return rl_env.collect_episodes(tf_env, policy, episodes)
        finally:
            tf_env.close()  # joins TF-Agents' thread pool (and closes ``env``)

    def final_distance(self, learner: keras.Model, params: list, goal_xy: Any, target: np.ndarray) -> float:
        """Fingertip distance to ``goal_xy`` after one real episode of the policy θ = ``params``."""
        return self.real_episode(learner, params, goal_xy, target)[1]

    def real_episode(
        self, learner: keras.Model, params: list, goal_xy: Any, target: np.ndarray
    ) -> tuple[np.ndarray, float]:
        """One real episode of the policy θ = ``params``: the joint states ``(T+1, 4)`` it passed
        through (float32; the authors' robot only — Reacher-v5's last state is not observed) and
        the final fingertip distance to ``goal_xy``."""
        env = self.make_environment(goal_xy)
        episodes = self.real_rollouts(env, learner, params, target, 1)
        distance = float(env.gym.episode_end_distance)
        if self.options.robot != "authors":
            return np.zeros((0, 4), np.float32), distance
        mask = np.asarray(episodes["mask"][0], bool)
        q = self.state_of(episodes["observation"][0][mask])  # the states each action was taken in
        return np.concatenate([q, env.gym.episode_end_state[None]]).astype(np.float32), distance

    # --- meta-test ------------------------------------------------------------------------------
    def meta_test(
        self,
        meta_loss: keras.Model | None,
        params0: list,
        targets: np.ndarray,
        config: MetaTrainConfig,
        steps: int | None = None,
    ) -> tuple[np.ndarray, list[list[np.ndarray]]]:
        """Policies ``params0`` (stacked, one per goal joint state in ``targets``) trained through the
        dynamics model by the meta-test engine (``config``'s inner optimizer at ``inner_lr``) on the
        learned loss (``None``: the task cost); returns the model-predicted task cost after each step
        ``(G, steps + 1)`` and, per policy, θ_k for k = 0 … steps."""
        # one policy after the other: vectorized_map cannot convert the while-loop rollout
        engine = engine_for(self, config, steps, jit_compile=False, vectorize=False)
        learner = engine.learner
        start = tf.constant(np.asarray(self.options.start, np.float32))
        dynamics = self.meta_test_dynamics  # never meta-training's model

        def metric(params, _state, data):
            states, _ = self.rollout(learner, params, start, data["goal"], dynamics)
            return self.cost(states, data["goal"])

        if meta_loss is None:
            key = "task_cost"

            def loss(params, state, data, _phi):
                states, _ = self.rollout(learner, params, start, data["goal"], dynamics)
                return self.cost(states, data["goal"]), state
        else:
            key = ("learned", architecture_key(meta_loss))
            mean_m = stateless_loss(meta_loss, self.loss_features)

            def loss(params, state, data, phi):
                states, actions = self.rollout(learner, params, start, data["goal"], dynamics)
                return mean_m(phi, states, actions, data["goal"]), state

        data = {"goal": np.asarray(targets, np.float32)}
        costs, path = engine.run(key, loss, metric, params0, data, phi_of(meta_loss), record_params=True)
        paths = [[[p[g, k] for p in path] for k in range(engine.steps + 1)] for g in range(len(targets))]
        return costs, paths

    def meta_test_real(
        self,
        meta_loss: keras.Model,
        params0: list,
        goals: Any,
        targets: np.ndarray,
        config: MetaTrainConfig,
        steps: int | None = None,
    ) -> np.ndarray:
        """The authors' meta-test: the real robot in the loop, no dynamics model. For k = 0 … steps−1
        the policy θ_k runs one real episode (states q_t), then

            θ_{k+1} = θ_k − α ∇_θ mean_t M_φ([q_t / n_s, π_θ([q_t, q*] / n), ‖q_T − q*‖])

        with the real states held constant (the gradient reaches θ through the actions only; a
        simulator gives no derivative). Policies ``params0`` (stacked, one per goal), one SGD step
        of the meta-test engine per episode. Returns the real final fingertip distances
        ``(G, steps + 1)`` of θ_0 … θ_steps. The authors' robot only.

        Raises:
            ValueError: ``robot`` is not ``"authors"``.
        """
        if self.options.robot != "authors":
            raise ValueError(f"meta_test_real needs robot='authors', got robot={self.options.robot!r}")
        steps = config.eval_steps if steps is None else int(steps)
        engine = engine_for(self, config, 1, jit_compile=False, vectorize=False)  # one step a call
        learner = engine.learner
        mean_m = stateless_loss(meta_loss, self.loss_features)
        key = ("learned_real", architecture_key(meta_loss))

        def loss(params, state, data, phi):
            q, goal = data["states"], data["goal"]
            x = tf.concat([q[:-1], tf.broadcast_to(goal, tf.shape(q[:-1]))], -1) / self.input_scale
            actions = tf.clip_by_value(learner(params, x), -1.0, 1.0)
            return mean_m(phi, q[:, None], actions[:, None], goal), state

        def metric(params, _state, data):
            return tf.zeros(())

        params = [np.asarray(p) for p in params0]
        goal_joints = np.asarray(targets, np.float32)
        distances = []
        for k in range(steps + 1):
            episodes = [
                self.real_episode(learner.model, [p[g] for p in params], goal_xy, goal_joints[g])
                for g, goal_xy in enumerate(goals)
            ]
            distances.append([d for _, d in episodes])
            if k < steps:
                data = {"states": np.stack([q for q, _ in episodes]), "goal": goal_joints}
                _, params = engine.run(key, loss, metric, params, data, phi_of(meta_loss))
        return np.asarray(distances, np.float64).T

    def evaluate(
        self,
        meta_losses: list[keras.Model],
        config: MetaTrainConfig,
        seeds: list[int],
        steps: int | None = None,
    ) -> dict:
        """Learned loss vs the task cost (module docstring); results.json schema, metric
        ``final_distance`` (m, real MuJoCo) with the extra method ``baseline_best_lr``."""
        losses = per_seed(meta_losses, seeds, "meta-losses")
        steps = config.eval_steps if steps is None else int(steps)
        t0 = time.perf_counter()
        o = self.options
        splits = {"train": (o.train_goals, self.train_targets), "test": (o.test_goals, self.test_targets)}
        methods = ("learned", "baseline", "baseline_best_lr")
        if o.robot == "authors":
            methods += ("learned_real",)  # the authors' meta-test: the real robot in the loop
        curves: dict[str, dict[str, list]] = {s: {m: [] for m in methods} for s in splits}
        chosen = []
        policy = FunctionalModel(self.make_learner())
        for seed, meta_loss in zip(seeds, losses, strict=True):
            self.fit_babbling(META_TEST_OFFSET + seed, self.meta_test_dynamics)
            best_lr = self._pick_lr(seed, config, steps)
            chosen.append(best_lr)
            for split, (goals, targets) in splits.items():
                # learner_init="fixed" (the authors' protocol): the θ₀ of meta-training
                if config.learner_init == "fixed":
                    init_seeds = np.repeat(meta_train_seeds(seed, 0, 1), len(goals), axis=0)
                else:
                    init_seeds = meta_test_seeds(seed, len(goals))
                params0 = [
                    tf.stack(p) for p in zip(*[policy.init_params(s) for s in init_seeds], strict=True)
                ]
                arms = {
                    "learned": (meta_loss, config),
                    "baseline": (None, config),
                    "baseline_best_lr": (None, config.replace(inner_lr=best_lr)),
                }
                for method, (loss, cfg) in arms.items():
                    _, paths = self.meta_test(loss, params0, targets, cfg, steps)
                    per_goal = [
                        [self.final_distance(policy.model, p, goal_xy, target) for p in path]
                        for path, goal_xy, target in zip(paths, goals, targets, strict=True)
                    ]
                    curves[split][method].append(np.mean(per_goal, axis=0))
                if "learned_real" in methods:
                    real = self.meta_test_real(meta_loss, params0, goals, targets, config, steps)
                    curves[split]["learned_real"].append(real.mean(axis=0))
        res = summarize_task(
            self, steps=steps, seeds=seeds, curves=curves, config=config.to_dict(), wall_seconds=0.0
        )
        res["baseline_best_lr"] = [float(v) for v in chosen]
        res["task_options"] = self.describe_options()
        res["wall_seconds"] = time.perf_counter() - t0
        return res

    def _pick_lr(self, seed: int, config: MetaTrainConfig, steps: int) -> float:
        """The rate of ``baseline_lrs`` with the lowest model-predicted task cost on the first training
        goal after ``steps`` steps (non-finite costs lose)."""
        policy = FunctionalModel(self.make_learner())
        params0 = [p[None] for p in policy.init_params(meta_test_seeds(seed, 1, first=999)[0])]
        target = self.train_targets[:1]
        best, best_cost = self.options.baseline_lrs[0], math.inf
        for lr in self.options.baseline_lrs:
            costs, _ = self.meta_test(None, params0, target, config.replace(inner_lr=lr), steps)
            cost = float(costs[0, -1])  # the engine's metric: the model-predicted cost after the steps
            if math.isfinite(cost) and cost < best_cost:
                best, best_cost = lr, cost
        return float(best)


def _norm(x: tf.Tensor) -> tf.Tensor:
    """Euclidean norm over the last axis, smooth at 0."""
    return tf.sqrt(tf.reduce_sum(tf.square(x), -1) + 1e-12)


def _tensors(d: dict) -> dict:
    return {k: tf.convert_to_tensor(v) for k, v in d.items()}
