"""Inverse dynamics of a 2-link planar arm with a physics prior (ML3 §V-A, Algorithm 3, Fig. 5c).

The arm (uniform links of mass mᵢ, length lᵢ, centre of mass at lcᵢ = lᵢ/2, inertia
Iᵢ = mᵢlᵢ²/12 about it; joint angles q₁ from the horizontal, q₂ relative) obeys

    u = M(q) q̈ + F(q, q̇),      F = C(q, q̇) q̇ + g(q)

    M(q) = [[a + 2b cos q₂,  d + b cos q₂],      a = I₁ + I₂ + m₁lc₁² + m₂(l₁² + lc₂²)
            [d + b cos q₂,   d           ]]      b = m₂ l₁ lc₂,   d = I₂ + m₂ lc₂²
    C(q, q̇) q̇ = [−b sin q₂ (2 q̇₁q̇₂ + q̇₂²),  b sin q₂ q̇₁²]
    g(q) = [(m₁lc₁ + m₂l₁) g₀ cos q₁ + m₂lc₂ g₀ cos(q₁+q₂),  m₂lc₂ g₀ cos(q₁+q₂)]

Data (q, q̇, q̈, u) come from random smooth trajectories qⱼ(t) = Σₕ Aⱼₕ sin(ωⱼₕ t + ϕⱼₕ).
The learner is a Cholesky-factored inertia model M_θ(q) (``ml3tf.models.inertia``) predicting
û = M_θ(q) q̈ + F(q, q̇) from the inputs ``x = [q, q̈, F]`` (F is known; the inertia is
what is learned). The loss network sees the residual û − u (2 features, the default) or the
paper's (û, u) (4 features, ``loss_features="absolute"``).

Meta-objective (``MetaTrainConfig`` weights β, γ):

    L_task  = mean ‖û − u‖²                     torques, on a held-out trajectory
    L_extra = mean ‖M(q) − M_θ(q)‖²_F           the physics prior (analytic M, meta-train only)

Each meta-train task fits a fresh learner for K steps on 64 points of one trajectory and
scores it on 64 points of another. Meta-test: fresh learners trained on 64 points of one
trajectory with the learned loss or MSE; torque MSE and inertia error measured on
``n_heldout`` other trajectories.

Protocol (the paper gives none for this experiment): with the paper's form — (û, u) features,
a random φ, SGD lr 0.01, 300 meta-steps at Adam 3e-4 over 4 tasks (this task's earlier
defaults) — the meta-objective barely moved and the learned loss ended far behind MSE after
K steps. Three causes, three defaults:

* lr 0.01 is MSE's stability edge (it diverges at 0.02); meta-training then drives M_φ's
  steps past it and the inner loop blows up. SGD lr 0.005 leaves room, and the MSE arm of
  the same run uses the same lr (``bench/inverse_dynamics.py`` also reports MSE at 0.01);
* torques carry gravity (~15 N·m) while their errors are ~1 N·m: ``residual`` features;
* a random φ starts far from any useful loss: ``meta_loss_init="mse"`` fits it to ½‖û − u‖²
  first, then 600 meta-steps at Adam 1e-3 over 16 tasks, φ selected over windows of 50.

Example:
    >>> import ml3tf
    >>> from ml3tf import tasks
    >>> task = tasks.get("inverse_dynamics")
    >>> cfg = task.default_config().replace(extra_loss_weight=1.0)   # with the physics prior
    >>> run = ml3tf.train(task, cfg, out_dir="runs/inverse_dynamics")
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ml3tf.config import MetaTrainConfig
from ml3tf.data import fingerprint
from ml3tf.engine import architecture_key, engine_for, per_seed, phi_of, stateless_outputs
from ml3tf.losses import fit_network
from ml3tf.meta_loss import MetaLossNetwork
from ml3tf.models.inertia import make_inertia_learner
from ml3tf.results import summarize
from ml3tf.task import SupervisedTask, TaskBatch

log = logging.getLogger(__name__)

_TRAIN_STREAM, _EVAL_STREAM = 0, 1


@dataclass(frozen=True)
class ArmParameters:
    """Physical parameters of the 2-link arm (SI units)."""

    m1: float = 1.0
    m2: float = 1.0
    l1: float = 1.0
    l2: float = 1.0
    gravity: float = 9.81

    @property
    def abd(self) -> tuple[float, float, float]:
        """The constants a, b, d of M(q) (module docstring)."""
        lc1, lc2 = self.l1 / 2, self.l2 / 2
        i1, i2 = self.m1 * self.l1**2 / 12, self.m2 * self.l2**2 / 12
        a = i1 + i2 + self.m1 * lc1**2 + self.m2 * (self.l1**2 + lc2**2)
        return a, self.m2 * self.l1 * lc2, i2 + self.m2 * lc2**2


def inertia(q: np.ndarray, arm: ArmParameters) -> np.ndarray:
    """M(q), shape ``(N, 2, 2)`` for q ``(N, 2)``."""
    a, b, d = arm.abd
    c2 = np.cos(q[:, 1])
    m12 = d + b * c2
    return np.stack([np.stack([a + 2 * b * c2, m12], -1), np.stack([m12, np.full_like(c2, d)], -1)], -2)


def bias_forces(q: np.ndarray, qd: np.ndarray, arm: ArmParameters) -> np.ndarray:
    """F(q, q̇) = C(q, q̇) q̇ + g(q), shape ``(N, 2)``."""
    _, b, _ = arm.abd
    lc1, lc2 = arm.l1 / 2, arm.l2 / 2
    s2 = np.sin(q[:, 1])
    coriolis = np.stack([-b * s2 * (2 * qd[:, 0] * qd[:, 1] + qd[:, 1] ** 2), b * s2 * qd[:, 0] ** 2], -1)
    c12 = np.cos(q[:, 0] + q[:, 1])
    g = arm.gravity
    grav = np.stack(
        [
            (arm.m1 * lc1 + arm.m2 * arm.l1) * g * np.cos(q[:, 0]) + arm.m2 * lc2 * g * c12,
            arm.m2 * lc2 * g * c12,
        ],
        -1,
    )
    return coriolis + grav


def potential_energy(q: np.ndarray, arm: ArmParameters) -> np.ndarray:
    """V(q) (for the energy-balance check ``q̇ᵀu = dE/dt``)."""
    lc1, lc2 = arm.l1 / 2, arm.l2 / 2
    return arm.gravity * (
        (arm.m1 * lc1 + arm.m2 * arm.l1) * np.sin(q[:, 0]) + arm.m2 * lc2 * np.sin(q[:, 0] + q[:, 1])
    )


@dataclass(frozen=True)
class InverseDynamicsOptions:
    """Options of the inverse-dynamics task (CLI flags ``--n-points`` …)."""

    n_points: int = 64
    """Points per trajectory (support and query sets)."""
    n_harmonics: int = 3
    """Sinusoids per joint trajectory."""
    amplitude_range: tuple[float, float] = (0.1, 0.5)
    """Aⱼₕ ~ U[range] (rad)."""
    frequency_range: tuple[float, float] = (0.5, 2.5)
    """ωⱼₕ ~ U[range] (rad/s)."""
    horizon: float = 10.0
    """Time points t ~ U[0, horizon] (s)."""
    n_eval_tasks: int = 10
    """Meta-test learners per seed (one trajectory each to train on)."""
    n_heldout: int = 4
    """Held-out trajectories each meta-test learner is scored on."""
    learner_hidden: tuple[int, ...] = (32, 32)
    """Hidden widths of the inertia model's MLP."""
    meta_loss_hidden: tuple[int, ...] = (32, 32)
    """Hidden widths of the loss network (ELU, no bias, softplus output)."""
    loss_features: str = "residual"
    """What the loss network sees per point: ``absolute`` — ``[û, u]`` (4 features, the paper's
    ``M_φ(ŷ, y)``); ``residual`` — ``û − u`` (2 features). Torques carry gravity (~15 N·m)
    while their errors are ~1 N·m, so ``[û, u]`` makes the network resolve a small difference
    of two large inputs; ``residual`` hands it the error directly."""
    meta_loss_init: str = "mse"
    """φ before meta-training: ``random`` — the network's fresh draw (the paper); ``mse`` —
    that draw fitted so that ``M_φ(û, u) − M_φ(u, u) ≈ ½‖û − u‖²`` (the MSE arm's per-point
    loss; ``ml3tf.losses.fit_network``), so meta-training starts from MSE's learner."""

    def __post_init__(self) -> None:
        for name in ("n_points", "n_harmonics", "n_eval_tasks", "n_heldout"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        for name in ("amplitude_range", "frequency_range"):
            lo, hi = getattr(self, name)
            if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi):
                raise ValueError(
                    f"{name} must be a finite (low, high) with 0 <= low <= high, got {(lo, hi)!r}"
                )
        if not (math.isfinite(self.horizon) and self.horizon > 0):
            raise ValueError(f"horizon must be a positive finite number, got {self.horizon!r}")
        if self.loss_features not in ("absolute", "residual"):
            raise ValueError(f"loss_features must be 'absolute' or 'residual', got {self.loss_features!r}")
        if self.meta_loss_init not in ("random", "mse"):
            raise ValueError(f"meta_loss_init must be 'random' or 'mse', got {self.meta_loss_init!r}")
        if not self.learner_hidden or not self.meta_loss_hidden:
            raise ValueError("learner_hidden and meta_loss_hidden need at least one layer")


class InverseDynamicsTask(SupervisedTask):
    """The 2-link inverse-dynamics task with a physics prior (see the module docstring)."""

    name = "inverse_dynamics"
    Options = InverseDynamicsOptions

    def __init__(self, **options: Any) -> None:
        self.options = InverseDynamicsOptions(**options)
        self.arm = ArmParameters()

    def default_config(self) -> MetaTrainConfig:
        """K = 10 SGD steps at lr 0.005 (MSE diverges at 0.02: half its edge leaves a learned
        loss room to grow its steps), Adam 1e-3 for 600 meta-steps over 16 tasks, φ selected over
        windows of 50 meta-steps (the module docstring says why)."""
        return MetaTrainConfig(
            inner_steps=10,
            inner_lr=0.005,
            meta_lr=1e-3,
            meta_steps=600,
            meta_batch_size=16,
            select_every=50,
            eval_steps=100,
        )

    def make_learner(self) -> keras.Model:
        return make_inertia_learner(self.options.learner_hidden)

    def make_meta_loss(self) -> keras.Model:
        o = self.options
        n_features = 4 if o.loss_features == "absolute" else 2
        net = MetaLossNetwork(n_features, o.meta_loss_hidden, activation="elu", use_bias=False)
        if o.meta_loss_init == "mse":  # one fit per fresh draw (a trainer asks again on reset)
            fitted = self.__dict__.setdefault("_fitted", {})
            key = fingerprint(net.get_weights())
            if key not in fitted:
                features, anchor, target = self.mse_fit_rows()
                error = fit_network(net, features, target, anchor=anchor)
                log.info("loss network fitted to MSE (relative error %.3g)", error)
                fitted[key] = net.get_weights()
            net.set_weights(fitted[key])
        return net

    def mse_fit_rows(self, rows: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(features, anchor, target)`` for ``meta_loss_init="mse"``: torques u of random
        trajectories, predictions û = u + s·ε (ε ~ N(0, I), s ∈ {0.1, 0.3, 1, 3} N·m), the loss
        features of (û, u) and of (u, u), and ``½‖û − u‖²``. Deterministic."""
        rng = np.random.default_rng([7, 2])
        n = self.options.n_points
        u = np.concatenate([self.trajectory_points(rng)["y"] for _ in range(-(-rows // n))])[:rows]
        r = rng.choice([0.1, 0.3, 1.0, 3.0], size=(rows, 1)) * rng.standard_normal((rows, 2))
        pad = np.zeros((rows, 3))  # the inertia columns, not seen by the loss features
        feats = self.loss_features(tf.constant(np.c_[u + r, pad], tf.float32), tf.constant(np.c_[u, pad]))
        anchor = self.loss_features(tf.constant(np.c_[u, pad], tf.float32), tf.constant(np.c_[u, pad]))
        return feats.numpy(), anchor.numpy(), (0.5 * np.sum(r**2, 1)).astype(np.float32)

    # --- losses -------------------------------------------------------------------------
    def loss_features(self, y_pred, y_true):
        """``[û, u]`` (N, 4), the predicted torques and the measured ones; ``û − u`` (N, 2) with
        ``loss_features="residual"`` (the default)."""
        if self.options.loss_features == "residual":
            return y_pred[:, :2] - tf.cast(y_true[:, :2], y_pred.dtype)
        return super().loss_features(y_pred[:, :2], y_true[:, :2])

    def prediction_loss(self, y_pred, y_true):
        """Torque MSE, mean over points and joints."""
        return tf.reduce_mean(tf.square(y_pred[:, :2] - tf.cast(y_true[:, :2], y_pred.dtype)))

    def extra_loss(self, learner, params, state, data, extra):
        """The physics prior ``mean ‖M(q) − M_θ(q)‖²_F`` on the query points."""
        y_pred, _ = learner.apply(params, data["x"], state, training=True)
        return inertia_error(y_pred[:, 2:5], tf.cast(extra["inertia"], y_pred.dtype))

    # --- data ---------------------------------------------------------------------------
    def trajectory_points(self, rng: np.random.Generator, n: int | None = None) -> dict[str, np.ndarray]:
        """``n`` points of one random trajectory: ``x = [q, q̈, F]`` (n, 6), ``y = u`` (n, 2),
        ``inertia = [M₁₁, M₁₂, M₂₂]`` (n, 3), and ``q, qd, qdd, t``."""
        o = self.options
        n = o.n_points if n is None else n
        shape = (2, o.n_harmonics)
        amp = rng.uniform(*o.amplitude_range, size=shape)
        freq = rng.uniform(*o.frequency_range, size=shape)
        phase = rng.uniform(-np.pi, np.pi, size=shape)
        t = rng.uniform(0.0, o.horizon, size=n)
        return self.trajectory_at(t, amp, freq, phase)

    def trajectory_at(self, t, amp, freq, phase) -> dict[str, np.ndarray]:
        """The trajectory ``qⱼ(t) = Σₕ Aⱼₕ sin(ωⱼₕ t + ϕⱼₕ)`` and its dynamics at times ``t``."""
        arg = freq[None] * t[:, None, None] + phase[None]  # (n, 2, H)
        q = np.sum(amp * np.sin(arg), -1)
        qd = np.sum(amp * freq * np.cos(arg), -1)
        qdd = -np.sum(amp * freq**2 * np.sin(arg), -1)
        m = inertia(q, self.arm)
        f = bias_forces(q, qd, self.arm)
        u = np.einsum("nij,nj->ni", m, qdd) + f
        entries = np.stack([m[:, 0, 0], m[:, 0, 1], m[:, 1, 1]], -1)
        x = np.concatenate([q, qdd, f], -1)
        return {"x": x, "y": u, "inertia": entries, "q": q, "qd": qd, "qdd": qdd, "t": t}

    def sample(self, seed: int, step: int, batch_size: int) -> TaskBatch:
        """Per task: support = one trajectory, query = another (with its inertia in ``extra``)."""
        rng = np.random.default_rng([seed, _TRAIN_STREAM, step])
        sup, qry = [], []
        for _ in range(batch_size):
            sup.append(self.trajectory_points(rng))
            qry.append(self.trajectory_points(rng))

        def stack(parts, key):
            return np.stack([p[key] for p in parts]).astype(np.float32)

        return TaskBatch(
            support={"x": stack(sup, "x"), "y": stack(sup, "y")},
            query={"x": stack(qry, "x"), "y": stack(qry, "y")},
            extra={"inertia": stack(qry, "inertia")},
        )

    def eval_data(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Meta-test data of ``seed``: ``x (T, n + n·n_heldout, 6)`` and ``y (T, …, 6)`` with
        columns ``[u (2), M entries (3), fit mask (1)]``: the learner fits the rows with
        mask 1 (one trajectory) and is scored on the rows with mask 0 (held-out ones)."""
        o = self.options
        rng = np.random.default_rng([seed, _EVAL_STREAM])
        xs, ys = [], []
        for _ in range(o.n_eval_tasks):
            parts = [self.trajectory_points(rng) for _ in range(1 + o.n_heldout)]
            x = np.concatenate([p["x"] for p in parts])
            mask = np.concatenate([np.full(len(p["x"]), float(i == 0)) for i, p in enumerate(parts)])
            y = np.concatenate([np.concatenate([p["y"], p["inertia"]], -1) for p in parts])
            xs.append(x)
            ys.append(np.concatenate([y, mask[:, None]], -1))
        return np.stack(xs).astype(np.float32), np.stack(ys).astype(np.float32)

    # --- meta-test ----------------------------------------------------------------------
    def meta_test(
        self, meta_loss: keras.Model | None, seed: int, config: MetaTrainConfig, steps: int | None = None
    ) -> dict[str, np.ndarray]:
        """Fresh learners trained on the fit rows of ``eval_data(seed)`` with the learned loss (or
        MSE for ``meta_loss=None``) by the meta-test engine (``config``'s inner optimizer at
        ``inner_lr``); ``{"torque": (T, steps+1), "inertia": (T, steps+1)}`` are the held-out
        torque MSE and inertia error after each step."""
        engine = engine_for(self, config, steps, jit_compile=False)
        learner = engine.learner

        def forward(params, state, data):
            return learner.apply(params, data["x"], state, training=True)[0], data["y"]

        def heldout(values, y):
            return tf.reduce_sum(values * (1 - y[:, 5])) / tf.reduce_sum(1 - y[:, 5])

        def metric(params, state, data):
            out, y = forward(params, state, data)
            torque = heldout(tf.reduce_mean(tf.square(out[:, :2] - y[:, :2]), -1), y)
            return tf.stack([torque, heldout(inertia_error(out[:, 2:5], y[:, 2:5], reduce=False), y)])

        if meta_loss is None:
            key = "mse"

            def loss(params, state, data, _phi):
                out, y = forward(params, state, data)
                err = tf.reduce_sum(tf.square(out[:, :2] - y[:, :2]), -1) / 2
                return tf.reduce_sum(err * y[:, 5]) / tf.reduce_sum(y[:, 5]), state
        else:
            key = ("learned", architecture_key(meta_loss))
            m_phi = stateless_outputs(meta_loss, self.loss_features)

            def loss(params, state, data, phi):
                out, y = forward(params, state, data)
                per_example = m_phi(phi, out, y)
                return tf.reduce_sum(per_example[:, 0] * y[:, 5]) / tf.reduce_sum(y[:, 5]), state

        xs, ys = self.eval_data(seed)
        params0 = engine.initial_params(seed, len(xs))
        curves, _ = engine.run(key, loss, metric, params0, {"x": xs, "y": ys}, phi_of(meta_loss))
        return {"torque": curves[..., 0], "inertia": curves[..., 1]}

    def evaluate(
        self,
        meta_losses: list[keras.Model],
        config: MetaTrainConfig,
        seeds: list[int],
        steps: int | None = None,
    ) -> dict:
        """results.json schema: split ``heldout`` (torque MSE on held-out trajectories), learned
        loss vs MSE; plus ``inertia_error`` curves and finals in the same shape."""
        losses = per_seed(meta_losses, seeds, "meta-losses")
        steps = config.eval_steps if steps is None else int(steps)
        start = time.perf_counter()
        torque: dict[str, list] = {"learned": [], "baseline": []}
        inert: dict[str, list] = {"learned": [], "baseline": []}
        for seed, meta_loss in zip(seeds, losses, strict=True):
            for method, loss in (("learned", meta_loss), ("baseline", None)):
                out = self.meta_test(loss, seed, config, steps)
                torque[method].append(out["torque"].mean(0))
                inert[method].append(out["inertia"].mean(0))
        common = dict(
            task=self.name,
            higher_is_better=False,
            baseline=self.baseline_name,
            steps=steps,
            seeds=list(seeds),
            config=config.to_dict(),
        )
        res = summarize(metric="torque_mse", curves={"heldout": torque}, wall_seconds=0.0, **common)
        inertia_res = summarize(metric="inertia_error", curves={"heldout": inert}, wall_seconds=0.0, **common)
        res["inertia_error"] = {k: inertia_res[k] for k in ("curves", "final", "at_step_1")}
        res["task_options"] = self.describe_options()
        res["wall_seconds"] = time.perf_counter() - start
        return res


def inertia_error(pred: tf.Tensor, true: tf.Tensor, reduce: bool = True) -> tf.Tensor:
    """``‖M − M_θ‖²_F`` from the entries ``[M₁₁, M₁₂, M₂₂]`` (M₁₂ counted twice); mean if ``reduce``."""
    d = pred - true
    per_point = tf.square(d[:, 0]) + 2 * tf.square(d[:, 1]) + tf.square(d[:, 2])
    return tf.reduce_mean(per_point) if reduce else per_point
