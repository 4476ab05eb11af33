"""The Task protocol: the one contract between ``tasks/`` and the algorithm.

A task says what is sampled, what the learner is, what the loss network sees and
what "good" means. ML3's meta-objective for one meta-step is

    θ_K = unroll_K(θ_0; ∇_θ mean M_φ(task.meta_loss_inputs(f_θ, support)))
    L   = β · task.task_loss(f_{θ_K}, query) + γ · task.extra_loss(f_{θ_K}, query, extra)

and everything outside those two lines (sampling, evaluation) belongs to the task.
``SupervisedTask`` implements the protocol for regression/classification-style
problems, where the loss network sees ``(ŷ, y)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import keras
import numpy as np
import tensorflow as tf

from ml3tf.functional import FunctionalModel

if TYPE_CHECKING:  # pragma: no cover
    from ml3tf.meta_trainer import MetaTrainConfig

Data = dict[str, Any]


@dataclass(frozen=True)
class TaskBatch:
    """One meta-step's data; every array has a leading meta-batch axis ``B``.

    Attributes:
        support: what the inner steps train on (e.g. ``{"x": (B,N,1), "y": (B,N,1)}``).
        query: what the task loss is measured on after the inner steps. The paper's
            sine protocol uses the support set again; a support/query split is the
            usual meta-learning protocol.
        extra: information available only at meta-train time (true parameters, a
            physics model …), read by ``Task.extra_loss``.
    """

    support: Data
    query: Data
    extra: Data = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        first = next(iter(self.support.values()))
        return int(np.shape(first)[0])

    def task(self, b: int) -> TaskBatch:
        """The ``b``-th task of the meta-batch (arrays without the leading axis)."""

        def pick(d: Data) -> Data:
            return {k: v[b] for k, v in d.items()}

        return TaskBatch(pick(self.support), pick(self.query), pick(self.extra))


@runtime_checkable
class Task(Protocol):
    """What ``MetaTrainer`` and ``ml3tf.train`` need from a problem family."""

    name: str

    def default_config(self) -> MetaTrainConfig:
        """The paper-faithful meta-training configuration for this task."""

    def sample(self, seed: int, step: int, batch_size: int) -> TaskBatch:
        """Meta-training data for ``step``; deterministic in ``(seed, step)`` (resumable)."""

    def make_learner(self) -> keras.Model:
        """A built learner ``f_θ``."""

    def make_meta_loss(self) -> keras.Model:
        """A built loss network ``M_φ`` (features → per-example loss)."""

    def meta_loss_inputs(
        self, learner: FunctionalModel, params: list, state: list, data: Data
    ) -> tuple[tf.Tensor, list]:
        """Features ``(N, F)`` the loss network sees, and the learner's new state."""

    def task_loss(self, learner: FunctionalModel, params: list, state: list, data: Data) -> tf.Tensor:
        """The real objective L_task after the inner steps (scalar)."""

    def extra_loss(
        self, learner: FunctionalModel, params: list, state: list, data: Data, extra: Data
    ) -> tf.Tensor | None:
        """Optional L_extra (meta-train-time information); ``None`` when the task has none."""

    def evaluate(
        self,
        meta_losses: list[keras.Model],
        config: MetaTrainConfig,
        seeds: list[int],
        steps: int | None = None,
    ) -> dict:
        """Meta-test: fresh learners trained on each meta-loss vs the baseline (results.json schema).

        ``meta_losses[i]`` belongs to ``seeds[i]`` (or one loss serves all seeds);
        ``steps`` defaults to ``config.eval_steps``.
        """


class SupervisedTask:
    """Base class for tasks where the loss network sees ``(ŷ, y)``.

    Subclasses provide ``make_learner``, ``make_meta_loss``, ``sample``,
    ``default_config`` and ``eval_splits(seed)``; they may override ``metric``
    (the task loss, MSE here), ``eval_metric`` (what meta-test reports as
    ``metric_name``; by default the task loss — classification reports accuracy
    but must meta-train on a differentiable loss), ``baseline_loss`` (the
    hand-written loss the learned one is compared with) and ``loss_features``.
    """

    name = "supervised"
    #: What a ``LearnedLoss`` of this task's loss network scores: ``"regression"`` (ŷ, y) or
    #: ``"classification"`` (class probabilities, one-hot y). ``ml3tf export`` reads it.
    loss_kind = "regression"
    metric_name = "mse"
    baseline_name = "mse"
    higher_is_better = False

    # --- what the loss network sees and what is optimised --------------------------
    def loss_features(self, y_pred: tf.Tensor, y_true: tf.Tensor) -> tf.Tensor:
        """``[ŷ, y]`` concatenated on the last axis, flattened to ``(N, F)``."""
        y_true = tf.cast(y_true, y_pred.dtype)
        n = tf.shape(y_pred)[0]
        return tf.concat([tf.reshape(y_pred, (n, -1)), tf.reshape(y_true, (n, -1))], axis=-1)

    def metric(self, y_pred: tf.Tensor, y_true: tf.Tensor) -> tf.Tensor:
        """Mean squared error; the task loss and the reported metric."""
        return tf.reduce_mean(tf.square(y_pred - tf.cast(y_true, y_pred.dtype)))

    def eval_metric(self, y_pred: tf.Tensor, y_true: tf.Tensor) -> tf.Tensor:
        """The metric meta-test reports (named ``metric_name``); by default ``metric``."""
        return self.metric(y_pred, y_true)

    def baseline_loss(self, y_pred: tf.Tensor, y_true: tf.Tensor) -> tf.Tensor:
        """The hand-written loss the learned one is compared with (MSE)."""
        return self.metric(y_pred, y_true)

    def meta_loss_inputs(self, learner, params, state, data):
        y_pred, new_state = learner.apply(params, data["x"], state, training=True)
        return self.loss_features(y_pred, data["y"]), new_state

    def task_loss(self, learner, params, state, data):
        y_pred, _ = learner.apply(params, data["x"], state, training=True)
        return self.metric(y_pred, data["y"])

    def baseline_inner_loss(self, learner, params, state, data):
        """``(baseline_loss(f_θ(x), y), new_state)``: MAML's inner loss on the support set."""
        y_pred, new_state = learner.apply(params, data["x"], state, training=True)
        return self.baseline_loss(y_pred, data["y"]), new_state

    def extra_loss(self, learner, params, state, data, extra):
        return None

    # --- meta-test --------------------------------------------------------------
    def eval_splits(self, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{split: (x (T,N,…), y (T,N,…))}`` of meta-test tasks for ``seed``.

        A split may also be ``(x, y, x_query, y_query)``: learners train on ``(x, y)``
        and the metric is measured on the held-out ``(x_query, y_query)``.
        """
        raise NotImplementedError

    def evaluate(
        self,
        meta_losses: list[keras.Model],
        config: MetaTrainConfig,
        seeds: list[int],
        steps: int | None = None,
        initial_params: list | None = None,
    ) -> dict:
        """Train fresh learners with each learned loss and with the baseline, side by side.

        ``meta_losses[i]`` is used for ``seeds[i]`` (one loss for all seeds is fine).
        Learners start from the same Xavier init for both methods and are trained
        with SGD at ``config.inner_lr`` for ``steps`` (default ``config.eval_steps``).
        ``initial_params`` (one θ₀ per seed, or one for all; MAML): the learned arm
        starts from it instead; with ``meta_losses=[]`` it trains on the baseline loss.
        Compiled curves are cached on the task, so repeated evaluations (``eval_every``)
        do not trace again.
        """
        from ml3tf.evaluation import SupervisedEvaluator

        steps = config.eval_steps if steps is None else int(steps)
        key = (config.inner_lr, steps, config.eval_jit_compile)
        cache = self.__dict__.setdefault("_evaluators", {})
        if key not in cache:
            cache[key] = SupervisedEvaluator(self, config.inner_lr, steps, config.eval_jit_compile)
        return cache[key].evaluate(meta_losses, seeds, config.to_dict(), initial_params=initial_params)
