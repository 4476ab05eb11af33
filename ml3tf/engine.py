"""The meta-test engine: fresh learners trained on a loss, a metric recorded after every step.

Every task's meta-test runs through ``MetaTestEngine``. For a loss ℓ — the learned
``mean M_φ`` or the task's hand-written baseline — and T learners (tasks, goals, policies …)
with data ``d_t`` and start ``θ₀_t``, it runs

    θ_{k+1} = opt(θ_k, ∇_θ ℓ(θ_k, d_t; φ))        k = 0 … steps − 1

with **the configured inner optimizer** (``MetaTrainConfig.inner_optimizer`` at ``inner_lr``,
the optimizer the loss was meta-trained with) and returns the curves
``c[t, k] = metric(θ_k, d_t)`` for k = 0 … steps (``c[:, 1]``: after one step). All T learners
train together: one compiled ``tf.while_loop`` over the steps, a ``tf.vectorized_map`` over the
learners inside it. The update is elementwise, so the inner optimizers apply to the stacked
parameters unchanged.

A task supplies two closures over one learner:

* ``loss(params, state, data, phi) -> (scalar, new_state)``: what the learner descends;
  ``phi`` are the loss network's weights as tensors (``[]`` for a baseline), so one trace
  serves every network of one architecture (``architecture_key``) — and one that keeps
  training, with ``eval_every``;
* ``metric(params, state, data) -> tensor``: what the curve records (any fixed shape).

``data`` is a dict of arrays with a leading learner axis; keys in ``per_step`` carry a second,
step axis (fresh noise for every update, as REINFORCE's rollouts need). The engine also owns
the meta-test learners' θ₀ (``initial_params``, seeds from ``ml3tf.seeds``), the check of
"one loss, or one per seed" (``per_seed``) and of a given θ₀'s shapes (``check_params``).

Example:
    >>> engine = MetaTestEngine.for_config(learner, config)
    >>> curves, _ = engine.run("mse", loss, metric, params0, data)      # (T, steps + 1)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
import tensorflow as tf

from ml3tf.config import EVAL_XLA_MIN_EVALUATIONS
from ml3tf.functional import FunctionalModel
from ml3tf.inner import InnerOptimizer, make_inner_optimizer
from ml3tf.seeds import meta_test_seeds

if TYPE_CHECKING:  # pragma: no cover
    from ml3tf.config import MetaTrainConfig

Params = list[tf.Tensor]
#: ``(params, state, data, phi) ↦ (scalar loss, new_state)``.
EngineLoss = Callable[[Params, Params, dict, Sequence[tf.Tensor]], tuple[tf.Tensor, Params]]
#: ``(params, state, data) ↦ tensor``.
EngineMetric = Callable[[Params, Params, dict], tf.Tensor]


def architecture_key(meta_loss: keras.Model) -> str:
    """A string equal for loss networks that one compiled curve can evaluate (class, config
    without the name, weight shapes)."""
    config = {k: v for k, v in meta_loss.get_config().items() if k not in ("name", "trainable")}
    shapes = [tuple(v.shape) for v in meta_loss.trainable_variables]
    return json.dumps([type(meta_loss).__qualname__, config, shapes], sort_keys=True, default=str)


def phi_of(meta_loss: keras.Model | None) -> list[tf.Tensor]:
    """The weights of ``meta_loss`` as tensors, trainable (φ) then non-trainable (e.g. BatchNorm
    statistics), so that one trace evaluates any network of the architecture with its own
    values; ``[]`` for ``None``, a baseline."""
    if meta_loss is None:
        return []
    return [
        tf.convert_to_tensor(v) for v in [*meta_loss.trainable_variables, *meta_loss.non_trainable_variables]
    ]


def per_seed(given: Sequence[Any] | None, seeds: Sequence[int], what: str) -> list[Any] | None:
    """``given`` aligned with ``seeds``: one item serves all, or one per seed; ``None`` stays ``None``.

    Raises:
        ValueError: neither one nor ``len(seeds)`` items.
    """
    if given is None:
        return None
    given = list(given)
    if len(given) not in (1, len(seeds)):
        raise ValueError(f"got {len(given)} {what} for {len(seeds)} seeds: give one, or one per seed")
    return given * len(seeds) if len(given) == 1 else given


def stateless_outputs(meta_loss: keras.Model, features: Callable[..., tf.Tensor]) -> Callable:
    """``(phi, *args) ↦ M_φ(features(*args))`` (per example) for any network of ``meta_loss``'s
    architecture, ``phi`` as ``phi_of`` gives it."""
    n = len(meta_loss.trainable_variables)

    def outputs(phi, *args):
        phi = list(phi)
        out, _ = meta_loss.stateless_call(phi[:n], phi[n:], features(*args))
        return out

    return outputs


def stateless_loss(meta_loss: keras.Model, features: Callable[..., tf.Tensor]) -> Callable:
    """``(phi, *args) ↦ mean M_φ(features(*args))`` (see ``stateless_outputs``)."""
    outputs = stateless_outputs(meta_loss, features)
    return lambda phi, *args: tf.reduce_mean(outputs(phi, *args))


@dataclass
class MetaTestEngine:
    """Trains stacked fresh learners of one architecture; the one meta-test loop of ml3tf.

    Args:
        learner: the learner's functional view (anything with ``apply(params, x, state,
            training)`` and ``init_params(seed)`` for ``initial_params``).
        optimizer: the inner optimizer of the meta-test learners.
        steps: updates per learner.
        jit_compile: compile the curves with XLA.
        vectorize: batch the learners with ``tf.vectorized_map`` (default); ``False`` loops over
            them inside the graph, for learners whose step ``vectorized_map`` cannot convert
            (a ``tf.while_loop`` of ``TensorArray``s, as reacher's model rollout).
    """

    learner: Any
    optimizer: InnerOptimizer
    steps: int
    jit_compile: bool = False
    vectorize: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {self.steps!r}")
        self._fns: dict[Any, Callable] = {}
        self._init_fn: Callable | None = None

    @classmethod
    def for_config(
        cls,
        learner: Any,
        config: MetaTrainConfig,
        steps: int | None = None,
        learning_rate: float | None = None,
        jit_compile: bool | None = None,
        vectorize: bool = True,
    ) -> MetaTestEngine:
        """The engine ``config`` asks for: its inner optimizer at ``inner_lr`` (or
        ``learning_rate``), ``eval_steps`` (or ``steps``), ``eval_jit_compile``."""
        lr = config.inner_lr if learning_rate is None else float(learning_rate)
        return cls(
            learner,
            make_inner_optimizer(config.inner_optimizer, lr, config.inner_momentum),
            config.eval_steps if steps is None else int(steps),
            eval_jit_compile(config) if jit_compile is None else bool(jit_compile),
            vectorize,
        )

    @property
    def seeds_together(self) -> bool:
        """Whether several seeds' learners (each with its own φ) should share one run: not on a
        CPU, where a run is split across the cores instead (``_cpu_parts``)."""
        return not self.jit_compile or _cpu_parts() == 1

    # --- θ₀ ------------------------------------------------------------------------------
    def initial_params(self, seed: int, count: int) -> list[tf.Tensor]:
        """Stacked θ₀ ``(count, …)`` of meta-test learners ``0 … count − 1`` of ``seed`` (Xavier,
        zero biases; in the plain graph: XLA's stateless RNG draws other numbers). One traced
        draw mapped over the learners' seeds, whatever ``count``."""
        if self._init_fn is None:
            dtype = tf.as_dtype(keras.config.floatx())
            signature = [tf.TensorSpec(s, dtype) for s in self.learner.shapes]

            def init(seeds):
                return tf.map_fn(self.learner.init_params, seeds, fn_output_signature=signature)

            self._init_fn = tf.function(init, autograph=False)
        return self._init_fn(tf.constant(meta_test_seeds(seed, count)))

    def check_params(self, params: Sequence[Sequence[Any]]) -> None:
        """Raise ``ValueError`` unless every θ₀ in ``params`` has the shapes of the learner's weights."""
        want = [tuple(s) for s in self.learner.shapes]
        for p in params:
            got = [tuple(np.shape(x)) for x in p]
            if got != want:
                raise ValueError(f"initial_params shapes {got} do not match the learner's {want}")

    @staticmethod
    def stack(params: Sequence[Any], count: int) -> list[tf.Tensor]:
        """One θ₀ repeated for ``count`` learners (stacked)."""
        return [tf.stack([tf.convert_to_tensor(p)] * count) for p in params]

    # --- the loop ------------------------------------------------------------------------
    def run(
        self,
        key: Any,
        loss: EngineLoss,
        metric: EngineMetric,
        params0: Sequence[tf.Tensor],
        data: dict[str, Any],
        phi: Sequence[tf.Tensor] = (),
        state: Sequence[tf.Tensor] = (),
        per_step: Sequence[str] = (),
        record_params: bool = False,
        phi_per_learner: bool = False,
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Curves ``(T, steps + 1, …)`` and the parameters: θ_steps stacked ``(T, …)``, or with
        ``record_params`` every θ_k ``(T, steps + 1, …)``.

        ``key`` names ``(loss, metric)``: the compiled loop is traced once per key (and per
        argument shapes); the same key must always come with the same closures.
        ``phi_per_learner``: every tensor of ``phi`` carries a leading learner axis ``(T, …)``,
        learner t descends the loss with its own φ_t (several seeds' loss networks in one run).
        """
        cache_key = (key, tuple(per_step), bool(record_params), bool(phi_per_learner))
        fn = self._fns.get(cache_key)
        if fn is None:
            fn = self._fns[cache_key] = self._compile(
                loss, metric, tuple(per_step), bool(record_params), bool(phi_per_learner)
            )
        data = {k: tf.convert_to_tensor(v) for k, v in data.items()}
        state = [tf.convert_to_tensor(s) for s in state]
        curves, params = fn([tf.convert_to_tensor(p) for p in params0], state, data, list(phi))
        return curves.numpy(), [p.numpy() for p in params]

    def _compile(self, loss, metric, per_step, record_params, phi_per_learner=False):
        steps, optimizer = self.steps, self.optimizer
        vectorize = self.vectorize

        def each(fn, elems):
            if vectorize:
                return tf.vectorized_map(fn, elems)
            count = tf.nest.flatten(elems)[0].shape[0]
            outs = [fn(tf.nest.map_structure(lambda x, t=t: x[t], elems)) for t in range(count)]
            return tf.nest.map_structure(lambda *xs: tf.stack(xs), *outs)

        def curves(params, state, data, phi):
            fixed = {k: v for k, v in data.items() if k not in per_step}
            varying = {k: v for k, v in data.items() if k in per_step}

            def one(args):
                p, s, d, d_step, phi_t = args
                d = {**d, **d_step}
                with tf.GradientTape() as tape:
                    tape.watch(p)
                    value, s_new = loss(p, s, d, phi_t if phi_per_learner else phi)
                g = tape.gradient(value, p, unconnected_gradients=tf.UnconnectedGradients.ZERO)
                return g, list(s_new), tf.cast(metric(p, s, d), tf.float32)

            def last(args):
                p, s, d = args
                return tf.cast(metric(p, s, d), tf.float32)

            trace = tf.TensorArray(tf.float32, size=steps + 1)
            path = [tf.TensorArray(p.dtype, size=steps + 1) for p in params] if record_params else []

            def body(i, p, s, o, tr, path):
                step_data = {k: v[:, i] for k, v in varying.items()}
                g, s_new, m = each(one, (p, s, fixed, step_data, list(phi) if phi_per_learner else []))
                if record_params:
                    path = [a.write(i, x) for a, x in zip(path, p, strict=True)]
                p, o = optimizer.update(g, o, p)
                return i + 1, p, s_new, o, tr.write(i, m), path

            _, params, state, _, trace, path = tf.while_loop(
                lambda i, *_: i < steps,
                body,
                (tf.constant(0), list(params), list(state), optimizer.init(list(params)), trace, path),
                maximum_iterations=steps,
            )
            last_data = {**fixed, **{k: v[:, -1] for k, v in varying.items()}}
            trace = trace.write(steps, each(last, (params, state, last_data)))
            out = trace.stack()  # (steps + 1, T, …)
            out = tf.transpose(out, [1, 0, *range(2, len(out.shape))])
            if record_params:
                path = [a.write(steps, x).stack() for a, x in zip(path, params, strict=True)]
                params = [tf.transpose(x, [1, 0, *range(2, len(x.shape))]) for x in path]
            return out, params

        compiled = tf.function(curves, jit_compile=self.jit_compile, autograph=False)
        parts = _cpu_parts() if self.jit_compile else 1
        if parts == 1:
            return compiled

        def split(params, state, data, phi):
            # One XLA computation keeps to about one core on CPU; ``parts`` equal slices of the
            # learners run as independent computations, side by side on the inter-op threads.
            # (The learner count is padded to a multiple of the slice size with copies of learner 0.)
            count = int(params[0].shape[0])
            if count < 2:
                return compiled(params, state, data, phi)
            size = -(-count // parts)  # learners per slice; the slices used, and the padding
            used = -(-count // size)
            pad = size * used - count

            def padded(x):
                return tf.concat([x, tf.repeat(x[:1], pad, axis=0)], 0) if pad else x

            per_learner = (list(params), list(state), dict(data), list(phi) if phi_per_learner else [])
            per_learner = tf.nest.map_structure(padded, per_learner)
            outs = []
            for i in range(used):
                part = tf.nest.map_structure(lambda x, i=i: x[i * size : (i + 1) * size], per_learner)
                p, s, d, f = part
                outs.append(compiled(p, s, d, f if phi_per_learner else list(phi)))
            curves_out = tf.concat([o[0] for o in outs], 0)[:count]
            params_out = [tf.concat(list(xs), 0)[:count] for xs in zip(*[o[1] for o in outs], strict=True)]
            return curves_out, params_out

        return tf.function(split, autograph=False)


def _on_accelerator() -> bool:
    """Whether TensorFlow sees a GPU or a TPU."""
    return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))


def eval_jit_compile(config: MetaTrainConfig) -> bool:
    """Whether the meta-tests of a run with ``config`` compile with XLA: ``config.eval_jit_compile``
    when it is set; when it is ``None`` (auto), on a GPU or TPU always, on a CPU when the run
    meta-tests at least ``EVAL_XLA_MIN_EVALUATIONS`` times (every ``eval_every`` meta-steps and
    at the end), where XLA's one-off compile costs less than it then saves.

    >>> from ml3tf.config import MetaTrainConfig
    >>> eval_jit_compile(MetaTrainConfig(eval_jit_compile=False, eval_every=10))
    False
    """
    if config.eval_jit_compile is not None:
        return config.eval_jit_compile
    if _on_accelerator():
        return True
    evaluations = (config.meta_steps // config.eval_every if config.eval_every else 0) + 1
    return evaluations >= EVAL_XLA_MIN_EVALUATIONS


def _cpu_parts() -> int:
    """How many independent XLA computations a meta-test splits its learners into: the usable
    CPU cores (at most 4) when TensorFlow sees no GPU or TPU, else 1."""
    if _on_accelerator():
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def functional_learner(task: Any) -> FunctionalModel:
    """A functional view of a fresh ``task.make_learner()`` (the meta-test learners' architecture),
    built under a fixed seed: its state (a Dropout layer's seed) is the same in every process."""
    from ml3tf.seeds import seeded

    with seeded(0):
        return FunctionalModel(task.make_learner())


def engine_for(
    task: Any,
    config: MetaTrainConfig,
    steps: int | None = None,
    jit_compile: bool | None = None,
    vectorize: bool = True,
) -> MetaTestEngine:
    """The meta-test engine of ``task``'s learner for ``config`` (inner optimizer, ``inner_lr``,
    ``eval_steps`` or ``steps``, ``eval_jit_compile`` or ``jit_compile``), cached on the task so
    that repeated evaluations (``eval_every``) reuse its traces."""
    steps = config.eval_steps if steps is None else int(steps)
    jit = eval_jit_compile(config) if jit_compile is None else bool(jit_compile)
    key = (config.inner_optimizer, config.inner_lr, config.inner_momentum, steps, jit, vectorize)
    cache = task.__dict__.setdefault("_meta_test_engines", {})
    if key not in cache:
        learner = functional_learner(task)
        cache[key] = MetaTestEngine.for_config(learner, config, steps, jit_compile=jit, vectorize=vectorize)
    return cache[key]
