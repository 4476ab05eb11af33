"""Meta-test: train fresh learners on a loss and record the metric after every step.

For a loss ℓ (learned ``mean M_φ`` or a hand-written baseline), each learner is
trained by SGD, ``θ_{k+1} = θ_k − α ∇_θ ℓ(f_{θ_k}(x), y)``, and the curve
``c_k = metric(f_{θ_k}(x_q), y_q)`` for k = 0 … steps is returned: ``c[1]`` is the
metric after one step, ``c[steps]`` the final one (the authors' ``loss_trace``
plus the final value). The metric is the task's ``eval_metric`` (its task loss
unless the task reports something else, e.g. accuracy). All tasks of a seed train
together: one compiled ``tf.while_loop`` over the steps with a
``tf.vectorized_map`` over the tasks.

A split is ``(x, y)`` — trained and measured on the same points — or
``(x_support, y_support, x_query, y_query)``: trained on the support points
(K-shot) and measured on held-out query points (the few-shot protocol). The
learned arm may start from a meta-learned θ₀ (MAML) instead of a fresh init.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
import tensorflow as tf

from ml3tf.functional import FunctionalModel
from ml3tf.inner import SGD, InnerOptimizer

if TYPE_CHECKING:  # pragma: no cover
    from ml3tf.task import SupervisedTask

#: ``(ŷ, y, loss_params) ↦ scalar``; ``loss_params`` are φ for a learned loss, ``[]`` otherwise.
LossFn = Callable[[tf.Tensor, tf.Tensor, Sequence[tf.Tensor]], tf.Tensor]
CurveFn = Callable[[list, Any, Any, list, list], tf.Tensor]

#: Offset of the stateless seeds of meta-test learners (never used at meta-train time).
EVAL_SEED_OFFSET = 1_000_000


def learned_loss_fn(task: SupervisedTask, template: keras.Model) -> LossFn:
    """``(ŷ, y, φ) ↦ mean M_φ(task.loss_features(ŷ, y))``, φ given as tensors.

    ``template`` fixes the architecture; any network of the same architecture is
    evaluated by passing its weights as φ (one trace serves all of them).
    """
    non_trainable = [tf.convert_to_tensor(v) for v in template.non_trainable_variables]

    def loss(y_pred, y_true, phi):
        out, _ = template.stateless_call(list(phi), non_trainable, task.loss_features(y_pred, y_true))
        return tf.reduce_mean(out)

    return loss


def fixed_loss_fn(fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]) -> LossFn:
    """A hand-written loss ``(ŷ, y) ↦ scalar`` in the ``LossFn`` form (no parameters)."""
    return lambda y_pred, y_true, _params: fn(y_pred, y_true)


def make_curve_fn(
    functional: FunctionalModel,
    loss_fn: LossFn,
    metric_fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor],
    steps: int,
    optimizer: InnerOptimizer,
    jit_compile: bool = False,
) -> CurveFn:
    """Compiled ``(θ_0, xs, ys, state, loss_params[, xq, yq]) ↦ curves (T, steps + 1)`` for T tasks.

    ``θ_0``, ``xs``, ``ys`` and ``state`` have a leading task axis T. With query
    points ``xq, yq`` the metric is measured on them (training stays on ``xs, ys``). One
    ``tf.while_loop`` over the steps; inside it, ``tf.vectorized_map`` computes all
    T learners' gradients in one batched computation. The update is elementwise,
    so the inner optimizers apply to the stacked parameters unchanged.
    """

    def curves(params, xs, ys, state, loss_params, xq=None, yq=None):
        query = xq is not None
        if not query:
            xq, yq = xs, ys

        def measure(p, s, x, y):
            y_pred, _ = functional.apply(p, x, s, training=True)
            return tf.cast(metric_fn(y_pred, y), tf.float32)

        def one(args):
            p, s, x, y, x_q, y_q = args
            with tf.GradientTape() as tape:
                tape.watch(p)
                y_pred, s_new = functional.apply(p, x, s, training=True)
                loss = loss_fn(y_pred, y, loss_params)
            g = tape.gradient(loss, p, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            metric = measure(p, s, x_q, y_q) if query else tf.cast(metric_fn(y_pred, y), tf.float32)
            return g, s_new, metric

        def final_metric(args):
            p, s, _x, _y, x_q, y_q = args
            return measure(p, s, x_q, y_q)

        params, state = list(params), list(state)
        opt_state = optimizer.init(params)
        trace = tf.TensorArray(tf.float32, size=steps + 1)

        def body(i, p, s, o, tr):
            g, s_new, metric = tf.vectorized_map(one, (p, s, xs, ys, xq, yq))
            p, o = optimizer.update(g, o, p)
            return i + 1, p, s_new, o, tr.write(i, metric)

        _, params, state, _, trace = tf.while_loop(
            lambda i, *_: i < steps,
            body,
            (tf.constant(0), params, state, opt_state, trace),
            maximum_iterations=steps,
        )
        trace = trace.write(steps, tf.vectorized_map(final_metric, (params, state, xs, ys, xq, yq)))
        return tf.transpose(trace.stack())

    return tf.function(curves, jit_compile=jit_compile)


class SupervisedEvaluator:
    """Learned loss(es) vs the task's baseline on ``task.eval_splits(seed)``.

    One compiled curve function per loss architecture (φ is an argument, so every
    trained network of that architecture — and one that keeps training, with
    ``eval_every`` — reuses the trace); the splits of a seed run as one batch when
    their shapes agree; baseline curves, which never change, are cached per seed.

    Args:
        task: a ``SupervisedTask``.
        learning_rate: SGD learning rate of the meta-test learners.
        steps: meta-test SGD steps.
        jit_compile: compile the curves with XLA (pays off when evaluating often).
        metric: ``(ŷ, y) ↦ scalar`` recorded along the curves; default the task's
            ``eval_metric`` (its task loss ``metric`` unless it reports another one).
        metric_name: the name written to ``results["metric"]``; default ``task.metric_name``.
    """

    def __init__(
        self,
        task: SupervisedTask,
        learning_rate: float,
        steps: int,
        jit_compile: bool = False,
        metric: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = None,
        metric_name: str | None = None,
    ) -> None:
        if int(steps) < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.task = task
        self.metric = metric if metric is not None else getattr(task, "eval_metric", task.metric)
        self.metric_name = metric_name if metric_name is not None else task.metric_name
        self.steps = int(steps)
        self.jit_compile = bool(jit_compile)
        self.functional = FunctionalModel(task.make_learner())
        self._sgd = SGD(learning_rate)
        self._baseline_fn = self._curve_fn(fixed_loss_fn(task.baseline_loss))
        self._learned_fns: dict[str, CurveFn] = {}
        self._baseline_curves: dict[int, dict[str, np.ndarray]] = {}
        self._init_fns: dict[int, Callable] = {}

    def _curve_fn(self, loss_fn: LossFn) -> CurveFn:
        return make_curve_fn(self.functional, loss_fn, self.metric, self.steps, self._sgd, self.jit_compile)

    def _learned_fn(self, meta_loss: keras.Model) -> CurveFn:
        config = {k: v for k, v in meta_loss.get_config().items() if k not in ("name", "trainable")}
        shapes = [tuple(v.shape) for v in meta_loss.trainable_variables]
        key = json.dumps([type(meta_loss).__qualname__, config, shapes], sort_keys=True, default=str)
        if key not in self._learned_fns:
            self._learned_fns[key] = self._curve_fn(learned_loss_fn(self.task, meta_loss))
        return self._learned_fns[key]

    def _initial_params(self, seed: int, count: int) -> list[tf.Tensor]:
        """Stacked θ_0 ``(count, …)`` of the meta-test learners of ``seed`` (plain graph, no XLA)."""
        fn = self._init_fns.get(count)
        if fn is None:

            def init(seeds):
                inits = [self.functional.init_params(seeds[t]) for t in range(count)]
                return [tf.stack(p) for p in zip(*inits, strict=True)]

            fn = self._init_fns[count] = tf.function(init)
        seeds = np.array([[seed, EVAL_SEED_OFFSET + t] for t in range(count)], np.int32)
        return fn(seeds)

    def _curves(
        self, fn: CurveFn, seed: int, splits: dict, loss_params: list, init: list | None = None
    ) -> dict[str, np.ndarray]:
        """Per split, the mean curve over its tasks; splits of equal shapes run as one batch.

        ``init``: one θ₀ (list of arrays) every task starts from; default fresh Xavier inits.
        """
        groups: dict[tuple, list[str]] = {}
        for name, arrays in splits.items():
            if len(arrays) not in (2, 4):
                raise ValueError(f"split {name!r} must be (x, y) or (x_s, y_s, x_q, y_q), got {len(arrays)}")
            groups.setdefault(tuple(np.shape(a)[1:] for a in arrays), []).append(name)
        out = {}
        for names in groups.values():
            arrays = [
                tf.convert_to_tensor(np.concatenate([splits[n][i] for n in names]))
                for i in range(len(splits[names[0]]))
            ]
            count = int(arrays[0].shape[0])
            if init is None:
                params0 = self._initial_params(seed, count)
            else:
                params0 = [tf.stack([tf.convert_to_tensor(p)] * count) for p in init]
            state = [tf.stack([s] * count) for s in self.functional.state()]
            c = fn(params0, arrays[0], arrays[1], state, loss_params, *arrays[2:]).numpy()
            start = 0
            for n in names:
                count = len(splits[n][0])
                out[n] = c[start : start + count].mean(axis=0)
                start += count
        return out

    def evaluate(
        self,
        meta_losses: list[keras.Model],
        seeds: list[int],
        config: dict | None = None,
        initial_params: list | None = None,
    ) -> dict:
        """Results in the results.json schema; ``meta_losses[i]`` serves ``seeds[i]`` (or one serves all).

        ``initial_params`` (MAML): θ₀ per seed (or one for all), each a list of arrays
        aligned with the learner's trainable variables; the ``learned`` arm starts
        from it instead of a fresh init. With ``meta_losses=[]`` that arm trains on
        the baseline loss (plain MAML); the ``baseline`` arm is always a fresh init.
        """
        from ml3tf.results import summarize

        if not meta_losses and initial_params is None:
            raise ValueError("meta_losses must hold at least one loss network (or give initial_params)")
        for name, given in (("meta-losses", meta_losses), ("initial_params", initial_params)):
            if given and len(given) not in (1, len(seeds)):
                raise ValueError(f"got {len(given)} {name} for {len(seeds)} seeds: give one, or one per seed")
        if initial_params is not None:
            shapes = [tuple(s) for s in self.functional.shapes]
            for init in initial_params:
                got = [tuple(np.shape(p)) for p in init]
                if got != shapes:
                    raise ValueError(f"initial_params shapes {got} do not match the learner's {shapes}")
        start = time.perf_counter()
        curves: dict[str, dict[str, list[np.ndarray]]] = {}
        for i, seed in enumerate(seeds):
            splits = self.task.eval_splits(seed)
            init = None
            if initial_params is not None:
                init = initial_params[i if len(initial_params) > 1 else 0]
            if meta_losses:
                meta_loss = meta_losses[i if len(meta_losses) > 1 else 0]
                phi = [tf.convert_to_tensor(v) for v in meta_loss.trainable_variables]
                learned = self._curves(self._learned_fn(meta_loss), seed, splits, phi, init)
            else:
                learned = self._curves(self._baseline_fn, seed, splits, [], init)
            if seed not in self._baseline_curves:
                self._baseline_curves[seed] = self._curves(self._baseline_fn, seed, splits, [])
            for split in splits:
                per = curves.setdefault(split, {"learned": [], "baseline": []})
                per["learned"].append(learned[split])
                per["baseline"].append(self._baseline_curves[seed][split])
        return summarize(
            task=self.task.name,
            metric=self.metric_name,
            higher_is_better=self.task.higher_is_better,
            baseline=self.task.baseline_name,
            steps=self.steps,
            seeds=list(seeds),
            curves=curves,
            config=config or {},
            wall_seconds=time.perf_counter() - start,
        )
