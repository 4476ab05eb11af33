"""Sine regression, the paper's first experiment (ML3 Fig. 2).

Tasks are ``y = A · sin(x − φ₀)`` (the authors' sampler: amplitude A, phase φ₀,
frequency 1). Paper protocol (``mode="paper"``, the default):

* meta-train on one task, A = 1, φ₀ = π, 100 points x ~ U[−2, 2] drawn once per seed;
  the task loss (MSE) is measured on the same points the inner step used;
* meta-test on 10 tasks A ~ U[0.2, 5], φ₀ ~ U[−π, π], 100 points x ~ U[−5, 5],
  fresh learners trained for 100 SGD steps on the learned loss vs on MSE.

``mode="family"`` meta-trains on a family of tasks instead: every meta-step samples
``meta_batch_size`` new tasks (A ~ ``amplitude_range``, φ₀ ~ ``phase_range``) with
disjoint support and query points — the usual meta-learning protocol. With
``support_points=K`` it is the few-shot protocol of MAML (Finn et al. 2017): K
support points per task, ``query_points`` held-out points, and the meta-test
adapts on the K support points and measures the MSE on the query points.

Example:
    >>> import ml3tf
    >>> from ml3tf import tasks
    >>> task = tasks.get("sine")
    >>> run = ml3tf.train(task, task.default_config(), out_dir="runs/sine")
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import numpy as np

from ml3tf.meta_loss import MetaLossNetwork
from ml3tf.meta_trainer import MetaTrainConfig
from ml3tf.models.mlp import make_mlp
from ml3tf.task import SupervisedTask, TaskBatch

# Independent random streams per seed: meta-train data, meta-test tasks, family-mode
# "train"-split evaluation tasks, pretraining data of the multi-task baseline.
_TRAIN_STREAM, _TEST_STREAM, _TRAIN_EVAL_STREAM, _PRETRAIN_STREAM = 0, 1, 2, 3


@dataclass(frozen=True)
class SineOptions:
    """Options of the sine task (CLI flags ``--mode``, ``--n-points`` …)."""

    mode: str = "paper"
    """``paper``: one fixed train task (the authors' protocol); ``family``: new tasks every meta-step."""
    n_points: int = 100
    """Points per task (support set; query set too in ``family`` mode)."""
    train_amplitude: float = 1.0
    """A of the paper-mode train task."""
    train_phase: float = math.pi
    """φ₀ of the paper-mode train task."""
    train_x_range: tuple[float, float] = (-2.0, 2.0)
    """x range of the meta-train points."""
    amplitude_range: tuple[float, float] = (0.2, 5.0)
    """A ~ U[range] for family-mode meta-train tasks and the meta-test tasks."""
    phase_range: tuple[float, float] = (-math.pi, math.pi)
    """φ₀ ~ U[range] for family-mode meta-train tasks and the meta-test tasks."""
    test_x_range: tuple[float, float] = (-5.0, 5.0)
    """x range of the meta-test tasks."""
    n_test_tasks: int = 10
    """Number of meta-test tasks per seed."""
    learner_hidden: tuple[int, ...] = (100, 10)
    """Hidden widths of the learner MLP."""
    learner_activation: str = "relu"
    """Activation of the learner MLP."""
    meta_loss_hidden: tuple[int, ...] = (50, 50)
    """Hidden widths of the loss network (bias-free ReLU, softplus output)."""
    support_points: int = 0
    """K-shot (family mode): support points per task; the meta-test then adapts on K points and
    measures on ``query_points`` held-out ones. 0: ``n_points``, measured on the same points."""
    query_points: int = 0
    """Query points per task in family mode (0: ``n_points``)."""

    def __post_init__(self) -> None:
        if self.mode not in ("paper", "family"):
            raise ValueError(f"mode must be 'paper' or 'family', got {self.mode!r}")
        for name in ("n_points", "n_test_tasks"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        for name in ("train_x_range", "amplitude_range", "phase_range", "test_x_range"):
            lo, hi = getattr(self, name)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise ValueError(f"{name} must be a finite (low, high) with low <= high, got {(lo, hi)!r}")
        for name in ("support_points", "query_points"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
            if v and self.mode != "family":
                raise ValueError(f"{name}={v} needs mode='family', got mode={self.mode!r}")
        if not self.learner_hidden or not self.meta_loss_hidden:
            raise ValueError("learner_hidden and meta_loss_hidden need at least one layer")


def sine(x: np.ndarray, amplitude: float, phase: float) -> np.ndarray:
    """``A · sin(x − φ₀)``, float32."""
    return (amplitude * np.sin(x - phase)).astype(np.float32)


class SineTask(SupervisedTask):
    """The ML3 sine-regression task (see the module docstring)."""

    name = "sine"
    Options = SineOptions

    def __init__(self, **options) -> None:
        self.options = SineOptions(**options)

    def default_config(self) -> MetaTrainConfig:
        # The paper: inner SGD 1e-3, one inner step, outer Adam 1e-3, 500 meta-steps,
        # 100 SGD steps at meta-test.
        return MetaTrainConfig(inner_steps=1, inner_lr=1e-3, meta_lr=1e-3, meta_steps=500, eval_steps=100)

    def pretrain_data(self, seed: int, tasks: int) -> tuple[np.ndarray, np.ndarray]:
        """Pooled ``(x, y)`` of ``tasks`` meta-train tasks (support and query points): the data
        of the "pretrained on all tasks" baseline (plain multi-task regression)."""
        rng = np.random.default_rng([seed, _PRETRAIN_STREAM])
        (xs, ys, xq, yq), _, _ = self._few_shot(rng, tasks, self.options.train_x_range)
        return np.concatenate([xs, xq], 1).reshape(-1, 1), np.concatenate([ys, yq], 1).reshape(-1, 1)

    def make_learner(self) -> keras.Model:
        o = self.options
        return make_mlp(1, o.learner_hidden, 1, o.learner_activation, name="sine_learner")

    def make_meta_loss(self) -> keras.Model:
        return MetaLossNetwork(
            input_dim=2,
            hidden_units=self.options.meta_loss_hidden,
            activation="relu",
            use_bias=False,
            output_activation="softplus",
        )

    # --- data -----------------------------------------------------------------
    def _tasks(self, rng: np.random.Generator, count: int, x_range) -> tuple[np.ndarray, np.ndarray]:
        o = self.options
        amp = rng.uniform(*o.amplitude_range, size=count)
        phase = rng.uniform(*o.phase_range, size=count)
        x = rng.uniform(*x_range, size=(count, o.n_points, 1)).astype(np.float32)
        y = np.stack([sine(x[i], amp[i], phase[i]) for i in range(count)])
        return x, y

    def train_task(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """The paper-mode train task of ``seed``: ``(x, y)`` of shape ``(n_points, 1)``."""
        o = self.options
        rng = np.random.default_rng([seed, _TRAIN_STREAM])
        x = rng.uniform(*o.train_x_range, size=(o.n_points, 1)).astype(np.float32)
        return x, sine(x, o.train_amplitude, o.train_phase)

    def sample(self, seed: int, step: int, batch_size: int) -> TaskBatch:
        o = self.options
        if o.mode == "paper":
            x, y = self.train_task(seed)
            xs = np.repeat(x[None], batch_size, axis=0)
            ys = np.repeat(y[None], batch_size, axis=0)
            data = {"x": xs, "y": ys}
            return TaskBatch(support=data, query=data)
        rng = np.random.default_rng([seed, _TRAIN_STREAM, step])
        if o.support_points or o.query_points:
            (xs, ys, xq, yq), amp, phase = self._few_shot(rng, batch_size, o.train_x_range)
            extra = {"amplitude": amp.astype(np.float32), "phase": phase.astype(np.float32)}
            return TaskBatch({"x": xs, "y": ys}, {"x": xq, "y": yq}, extra)
        amp = rng.uniform(*o.amplitude_range, size=batch_size)
        phase = rng.uniform(*o.phase_range, size=batch_size)
        x = rng.uniform(*o.train_x_range, size=(2, batch_size, o.n_points, 1)).astype(np.float32)
        y = np.stack([np.stack([sine(x[s, b], amp[b], phase[b]) for b in range(batch_size)]) for s in (0, 1)])
        extra = {
            "amplitude": amp.astype(np.float32),
            "phase": phase.astype(np.float32),
        }
        return TaskBatch({"x": x[0], "y": y[0]}, {"x": x[1], "y": y[1]}, extra)

    def _few_shot(
        self, rng: np.random.Generator, count: int, x_range
    ) -> tuple[tuple, np.ndarray, np.ndarray]:
        """``(x_s, y_s, x_q, y_q)`` of ``count`` tasks (K support, Q query points), amplitudes, phases."""
        o = self.options
        k, q = o.support_points or o.n_points, o.query_points or o.n_points
        amp = rng.uniform(*o.amplitude_range, size=count)
        phase = rng.uniform(*o.phase_range, size=count)
        xs = rng.uniform(*x_range, size=(count, k, 1)).astype(np.float32)
        xq = rng.uniform(*x_range, size=(count, q, 1)).astype(np.float32)
        ys = np.stack([sine(xs[i], amp[i], phase[i]) for i in range(count)])
        yq = np.stack([sine(xq[i], amp[i], phase[i]) for i in range(count)])
        return (xs, ys, xq, yq), amp, phase

    def eval_splits(self, seed: int) -> dict[str, tuple[np.ndarray, ...]]:
        """``train``: the meta-train task(s); ``test``: ``n_test_tasks`` unseen tasks.

        With ``support_points`` each split is ``(x_s, y_s, x_q, y_q)`` (adapt on the K
        support points, measure on the query points), otherwise ``(x, y)``.
        """
        o = self.options
        if o.support_points:
            rng = np.random.default_rng([seed, _TRAIN_EVAL_STREAM])
            train = self._few_shot(rng, o.n_test_tasks, o.train_x_range)[0]
            rng = np.random.default_rng([seed, _TEST_STREAM])
            return {"train": train, "test": self._few_shot(rng, o.n_test_tasks, o.test_x_range)[0]}
        if o.mode == "paper":
            x, y = self.train_task(seed)
            train = (x[None], y[None])
        else:
            rng = np.random.default_rng([seed, _TRAIN_EVAL_STREAM])
            train = self._tasks(rng, o.n_test_tasks, o.train_x_range)
        rng = np.random.default_rng([seed, _TEST_STREAM])
        test = self._tasks(rng, o.n_test_tasks, o.test_x_range)
        return {"train": train, "test": test}
