"""Shaped sine: extra information at meta-train time shapes the learned loss (ML3 Fig. 5a/b).

The learner has one parameter, ``f_ω(x) = sin(ω x)`` with ω₀ = 0.1; a task is a
frequency v ~ U[−5, 5] and 64 points x ~ U[−5, 5], ``y = sin(v x)``. The loss network
sees ``(x, ŷ, y)`` (3 → 10 → 10 → 10 → 1, ELU, biases, linear output, like the
authors' ``Ml3_loss_shaped_sine``). The authors' protocol (``run_shaped_sine_exp.py``):
4 tasks per meta-step, 10 inner SGD steps at lr 1.0, φ updated by Adam (3e-3) after
*every* inner step with the learner detached (``meta_update="online"``), 1500 meta-steps.
Two meta-objectives (``MetaTrainConfig`` weights):

    MSE task loss     β = 1, γ = 0:   L = mean (f_ω(x) − y)²
    shaped task loss  β = 0, γ = 1:   L = L_extra = (ω − v)²    (v known only at meta-train time)

The MSE landscape in ω is badly non-convex (``sin`` aliases); the shaped objective
teaches M_φ a loss that is convex around the true frequency. Meta-test at v = 0.7 on
x = −5, −4.9, …, 4.9, where v is unknown and the learner sees only (x, ŷ, y).

Option beside the protocol: ``anchored_loss=True`` makes the loss network
``M_φ = (m_φ(x, ŷ, y) − m_φ(x, y, y))²``, zero exactly at ŷ = y, so that ω = v is always the
lowest point of the meta-test landscape (the protocol's failing seeds have a convex basin whose
lowest point sits 0.05–0.1 from v, outside the success tolerance).

Example:
    >>> import ml3tf
    >>> from ml3tf import tasks
    >>> task = tasks.get("shaped_sine")
    >>> cfg = task.default_config().replace(task_loss_weight=0.0, extra_loss_weight=1.0)
    >>> run = ml3tf.train(task, cfg, out_dir="runs/shaped_sine", evaluate=False)
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
from ml3tf.meta_loss import MetaLossNetwork
from ml3tf.models.sine_frequency import make_sine_frequency_learner
from ml3tf.results import summarize_task
from ml3tf.task import SupervisedTask, TaskBatch

_TRAIN_STREAM, _INIT_STREAM = 0, 1


@dataclass(frozen=True)
class ShapedSineOptions:
    """Options of the shaped-sine task (CLI flags ``--n-points``, ``--test-frequency`` …)."""

    n_points: int = 64
    """Points x per meta-train task."""
    x_range: tuple[float, float] = (-5.0, 5.0)
    """x ~ U[range] at meta-train time."""
    frequency_range: tuple[float, float] = (-5.0, 5.0)
    """v ~ U[range]: the meta-train task frequencies."""
    omega0: float = 0.1
    """ω₀: where every learner starts (meta-train and the default meta-test)."""
    test_frequency: float = 0.7
    """v of the meta-test task."""
    test_x_step: float = 0.1
    """Meta-test points x = −5, −5 + step, …, < 5."""
    init_range: tuple[float, float] = (-5.0, 5.0)
    """Initial ω ~ U[range] of the success-rate learners."""
    n_inits: int = 100
    """Random initial ω per seed for the success rate."""
    tolerance: float = 0.05
    """A learner succeeds when |ω − v| ≤ tolerance after the meta-test steps."""
    meta_loss_hidden: tuple[int, ...] = (10, 10, 10)
    """Hidden widths of the loss network (ELU, biases, linear output)."""
    anchored_loss: bool = False
    """False (the authors'): M_φ(x, ŷ, y) = m_φ(x, ŷ, y). True: M_φ = (m_φ(x, ŷ, y) − m_φ(x, y, y))²
    (``MetaLossNetwork(anchor_pairs=[(1, 2)])``), zero exactly where ŷ = y: ω = v is then always a
    global minimum of the learned loss and meta-training shapes only the landscape around it."""

    def __post_init__(self) -> None:
        for name in ("n_points", "n_inits"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        for name in ("x_range", "frequency_range", "init_range"):
            lo, hi = getattr(self, name)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise ValueError(f"{name} must be a finite (low, high) with low <= high, got {(lo, hi)!r}")
        for name in ("test_x_step", "tolerance"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive finite number, got {v!r}")
        if not (math.isfinite(self.omega0) and math.isfinite(self.test_frequency)):
            raise ValueError("omega0 and test_frequency must be finite")
        if not self.meta_loss_hidden:
            raise ValueError("meta_loss_hidden needs at least one layer")
        if not isinstance(self.anchored_loss, bool):
            raise ValueError(f"anchored_loss must be a bool, got {self.anchored_loss!r}")


class ShapedSineTask(SupervisedTask):
    """The shaped-sine task (see the module docstring)."""

    name = "shaped_sine"
    Options = ShapedSineOptions

    def __init__(self, **options: Any) -> None:
        self.options = ShapedSineOptions(**options)

    def default_config(self) -> MetaTrainConfig:
        # The authors: 10 inner SGD steps at lr 1.0, online φ updates (Adam 3e-3), 4 tasks
        # per meta-step; they run 1000 meta-steps, the paper's text 1500. 100 meta-test steps.
        return MetaTrainConfig(
            inner_steps=10,
            inner_lr=1.0,
            meta_lr=3e-3,
            meta_steps=1500,
            meta_batch_size=4,
            meta_update="online",
            unroll_loop="while",  # 4 loops in the graph instead of 40 unrolled sub-updates: fast to trace
            eval_steps=100,
        )

    def make_learner(self) -> keras.Model:
        return make_sine_frequency_learner(self.options.omega0)

    def make_meta_loss(self) -> keras.Model:
        return MetaLossNetwork(
            input_dim=3,
            hidden_units=self.options.meta_loss_hidden,
            activation="elu",
            use_bias=True,
            output_activation="linear",
            anchor_pairs=[(1, 2)] if self.options.anchored_loss else None,
        )

    # --- what the loss sees, task and extra loss ---------------------------------------
    def omega(self, params: list) -> tf.Tensor:
        """ω of a learner from its parameters ``[δ]`` (``ω = ω₀ + δ``), a scalar."""
        delta = params[0]
        return tf.cast(self.options.omega0, delta.dtype) + tf.reshape(delta, ())

    def meta_loss_inputs(self, learner, params, state, data):
        """Features ``[x, ŷ, y]`` (N, 3)."""
        y_pred, new_state = learner.apply(params, data["x"], state, training=True)
        x = tf.cast(data["x"], y_pred.dtype)
        return tf.concat([x, self.loss_features(y_pred, data["y"])], axis=-1), new_state

    def extra_loss(self, learner, params, state, data, extra):
        """The shaped task loss ``(ω − v)²`` (v = ``extra["frequency"]``)."""
        omega = self.omega(params)
        return tf.square(omega - tf.cast(extra["frequency"], omega.dtype))

    # --- data ---------------------------------------------------------------------------
    def sample(self, seed: int, step: int, batch_size: int) -> TaskBatch:
        """``batch_size`` tasks v ~ U[frequency_range], x ~ U[x_range]; query = support (the authors')."""
        o = self.options
        rng = np.random.default_rng([seed, _TRAIN_STREAM, step])
        v = rng.uniform(*o.frequency_range, size=batch_size)
        x = rng.uniform(*o.x_range, size=(batch_size, o.n_points, 1))
        y = np.sin(v[:, None, None] * x)
        data = {"x": x.astype(np.float32), "y": y.astype(np.float32)}
        return TaskBatch(support=data, query=data, extra={"frequency": v.astype(np.float32)})

    def test_points(self) -> tuple[np.ndarray, np.ndarray]:
        """The meta-test task: x = −5, −4.9, …, 4.9 and y = sin(v x), each ``(100, 1)``."""
        o = self.options
        x = np.arange(-5.0, 5.0 - 1e-9, o.test_x_step)[:, None]
        return x.astype(np.float32), np.sin(o.test_frequency * x).astype(np.float32)

    def initial_omegas(self, seed: int) -> np.ndarray:
        """``[ω₀, n_inits draws from U[init_range]]`` of the meta-test learners of ``seed``."""
        o = self.options
        rng = np.random.default_rng([seed, _INIT_STREAM])
        return np.concatenate([[o.omega0], rng.uniform(*o.init_range, size=o.n_inits)])

    # --- meta-test ----------------------------------------------------------------------
    def landscape(self, meta_loss: keras.Model | None, omegas: np.ndarray) -> np.ndarray:
        """The loss of a learner at each ω on the meta-test points: MSE (``meta_loss=None``)
        or ``mean M_φ(x, sin(ωx), y)``."""
        x, y = self.test_points()
        w = tf.constant(np.asarray(omegas, np.float32)[:, None, None])
        y_pred = tf.sin(w * x[None])  # (W, N, 1)
        if meta_loss is None:
            return tf.reduce_mean(tf.square(y_pred - y[None]), axis=[1, 2]).numpy()
        n = len(x)
        xs = np.broadcast_to(x[None], y_pred.shape)
        ys = np.broadcast_to(y[None], y_pred.shape)
        feats = tf.reshape(tf.concat([xs, y_pred, ys], axis=-1), (-1, 3))
        return tf.reduce_mean(tf.reshape(meta_loss(feats), (-1, n)), axis=1).numpy()

    def meta_test(
        self, meta_loss: keras.Model | None, seed: int, config: MetaTrainConfig, steps: int | None = None
    ) -> dict[str, np.ndarray]:
        """Fresh learners from ``initial_omegas(seed)`` trained on the meta-test task with the learned
        loss (or MSE for ``meta_loss=None``), by the meta-test engine (``config``'s inner optimizer
        at ``inner_lr``).

        Returns ``{"mse": (T, steps + 1), "omega": (T, steps + 1)}``: the MSE and ω after each
        step; row 0 starts at ω₀.
        """
        engine = engine_for(self, config, steps, jit_compile=False)
        learner = engine.learner
        omega0 = self.options.omega0

        def predict(params, state, data):
            return learner.apply(params, data["x"], state, training=True)[0]

        def metric(params, state, data):
            mse = tf.reduce_mean(tf.square(predict(params, state, data) - data["y"]))
            return tf.stack([mse, tf.cast(omega0, mse.dtype) + tf.reshape(params[0], ())])

        if meta_loss is None:
            key = "mse"

            def loss(params, state, data, _phi):
                return tf.reduce_mean(tf.square(predict(params, state, data) - data["y"])), state
        else:
            key = ("learned", architecture_key(meta_loss))
            mean_m = stateless_loss(meta_loss, lambda x, y_pred, y: tf.concat([x, y_pred, y], axis=-1))

            def loss(params, state, data, phi):
                return mean_m(phi, data["x"], predict(params, state, data), data["y"]), state

        x, y = self.test_points()
        omegas = self.initial_omegas(seed)
        t = len(omegas)
        params0 = [tf.constant((omegas - omega0).astype(np.float32)[:, None])]
        data = {"x": np.repeat(x[None], t, axis=0), "y": np.repeat(y[None], t, axis=0)}
        curves, _ = engine.run(key, loss, metric, params0, data, phi_of(meta_loss))
        return {"mse": curves[..., 0], "omega": curves[..., 1]}

    def evaluate(
        self,
        meta_losses: list[keras.Model],
        config: MetaTrainConfig,
        seeds: list[int],
        steps: int | None = None,
    ) -> dict:
        """results.json schema, split ``test`` (v = ``test_frequency``, start ω₀): MSE vs step of
        the learned loss and of MSE; plus ``success_rate``: the fraction of the
        ``n_inits`` random initial ω ending within ``tolerance`` of v, per method."""
        losses = per_seed(meta_losses, seeds, "meta-losses")
        steps = config.eval_steps if steps is None else int(steps)
        start = time.perf_counter()
        curves: dict[str, list[np.ndarray]] = {"learned": [], "baseline": []}
        success: dict[str, list[float]] = {"learned": [], "baseline": []}
        for seed, meta_loss in zip(seeds, losses, strict=True):
            for method, loss in (("learned", meta_loss), ("baseline", None)):
                out = self.meta_test(loss, seed, config, steps)
                curves[method].append(out["mse"][0])
                success[method].append(self.success_rate(out["omega"][1:, -1]))
        res = summarize_task(
            self,
            steps=steps,
            seeds=seeds,
            curves={"test": curves},
            config=config.to_dict(),
            wall_seconds=time.perf_counter() - start,
        )
        res["success_rate"] = {
            m: {"mean": float(np.mean(v)), "std": float(np.std(v)), "per_seed": [float(s) for s in v]}
            for m, v in success.items()
        }
        res["task_options"] = self.describe_options()
        return res

    def success_rate(self, final_omegas: np.ndarray) -> float:
        """Fraction of learners with |ω − v| ≤ tolerance."""
        o = self.options
        return float(np.mean(np.abs(np.asarray(final_omegas) - o.test_frequency) <= o.tolerance))
