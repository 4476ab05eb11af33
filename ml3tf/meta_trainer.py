"""The outer loop of ML3: ``φ ← φ − η ∇_φ L_T(f_{θ_K(φ)})``.

For each task in the meta-batch the learner is re-initialised (θ_0, Xavier
weights, zero biases, as in the authors' code), trained for K differentiable
steps on the learned loss,

    θ_{k+1} = θ_k − α ∇_θ E[ M_φ(f_{θ_k}(x), y) ]        (support set)

and scored by the meta-objective

    L(φ) = β · L_task(y, f_{θ_K}(x)) + γ · L_extra        (query set)

whose gradient reaches φ only through the inner gradients (the mixed second
derivative ∂/∂φ ∇_θ M_φ). There is deliberately no first-order / stop-gradient
mode for φ: it would leave φ without any gradient.

``config.method`` picks what the outer loop learns, with the same unroll:

* ``ml3``: φ, as above (θ_0 drawn fresh for every task);
* ``maml`` (Finn et al. 2017): θ_0 itself — the learner's trainable variables —
  with the task's hand-written baseline loss as the inner loss,
  ``θ_0 ← θ_0 − η_0 ∇_{θ_0} L_task(f_{θ_K(θ_0)}, query)``; second order by
  default, ``first_order=True`` stops the gradient through the inner gradients
  (then, with SGD, ``∇_{θ_0} ≈ ∇_{θ_K} L_task``);
* ``ml3+maml``: θ_0 and φ together, each with its own outer optimizer
  (``init_lr`` for θ_0, ``meta_lr`` for φ).

``config.meta_update="online"`` truncates the meta-gradient to one inner step
instead (the authors' shaped-sine protocol; memory independent of K): for each
task of the meta-batch in turn, θ_0 fresh, and for k = 0 … K−1

    θ_{k+1} = θ_k − α ∇_θ E[ M_φ(f_{θ_k}(x), y) ]        θ_k held constant
    φ ← φ − η ∇_φ [ β · L_task(f_{θ_{k+1}}) + γ · L_extra ]

(B·K updates of φ per meta-step; φ still reaches the objective through ∇_θ M_φ).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from ml3tf.config import MetaTrainConfig
from ml3tf.distribute import make_strategy
from ml3tf.functional import FunctionalModel
from ml3tf.inner import inner_step, make_inner_optimizer, unroll
from ml3tf.task import Task, TaskBatch


class MetaStepInfo(NamedTuple):
    """What one meta-step reports (scalars, averaged over the meta-batch).

    Attributes:
        objective: the meta-objective β·L_task + γ·L_extra that φ descends.
        task_loss: L_task after the inner steps, on the query set.
        extra_loss: L_extra after the inner steps (0 when the task has none).
        learned_loss: the inner loss at θ_0 on the support set: M_φ (``ml3``, ``ml3+maml``),
            the task's baseline loss (``maml``).
        meta_grad_norm: global norm of the meta-gradient (w.r.t. φ and/or θ_0).
    """

    objective: Any
    task_loss: Any
    extra_loss: Any
    learned_loss: Any
    meta_grad_norm: Any


class MetaTrainer:
    """Meta-trains a loss network (and/or, with ``config.method``, an initialisation) for a task.

    ``meta_gradient`` and ``meta_step`` run eagerly (debuggable); ``step`` is the
    same computation compiled with ``tf.function`` (``config.jit_compile`` adds
    XLA) and traced once per trainer; ``run_steps`` runs many meta-steps in one
    compiled call.

    Args:
        task: a ``Task`` (e.g. ``tasks.get("sine")``).
        config: a ``MetaTrainConfig``.
        meta_loss: an existing loss network to continue training; by default
            ``task.make_meta_loss()`` initialised from ``config.seed``.
        strategy: a ``tf.distribute.Strategy``; by default the one ``config.strategy``
            names (``ml3tf.distribute.make_strategy``).

    Example:
        >>> import ml3tf
        >>> from ml3tf import tasks
        >>> task = tasks.get("sine")
        >>> trainer = ml3tf.MetaTrainer(task, task.default_config().replace(meta_steps=10))
        >>> info = trainer.step(task.sample(seed=0, step=0, batch_size=1), step=0)
    """

    def __init__(
        self,
        task: Task,
        config: MetaTrainConfig,
        meta_loss: keras.Model | None = None,
        strategy: tf.distribute.Strategy | None = None,
    ):
        if not isinstance(config, MetaTrainConfig):
            raise ValueError(f"config must be a MetaTrainConfig, got {type(config).__name__}")
        self.task = task
        self.config = config
        self.strategy = strategy if strategy is not None else make_strategy(config.strategy)
        self.replicas = int(self.strategy.num_replicas_in_sync)
        if config.meta_batch_size % self.replicas:
            raise ValueError(
                f"meta_batch_size={config.meta_batch_size} must be a multiple of the "
                f"{self.replicas} replicas of strategy {config.strategy!r}"
            )
        self.distributed = self.replicas > 1 or isinstance(self.strategy, tf.distribute.TPUStrategy)
        if self.distributed and config.meta_update == "online":
            raise ValueError(f"meta_update='online' runs on one device; got strategy={config.strategy!r}")
        with self.strategy.scope():  # φ and the optimizer's slots are mirrored under a strategy
            keras.utils.set_random_seed(config.seed)
            self.meta_loss = meta_loss if meta_loss is not None else task.make_meta_loss()
            self.learner = task.make_learner()
            self.functional = FunctionalModel(self.learner)
            if config.meta_optimizer == "adam":
                self.optimizer = keras.optimizers.Adam(config.meta_lr)
            else:
                self.optimizer = keras.optimizers.SGD(config.meta_lr)
            self.optimizer.build(self.meta_loss.trainable_variables)
            # MAML: θ_0 is the learner's trainable variables, with its own outer optimizer.
            self.init_optimizer = None
            if config.learns_init:
                self.init_optimizer = keras.optimizers.Adam(config.init_lr)
                self.init_optimizer.build(self.learner.trainable_variables)
        self.inner_optimizer = make_inner_optimizer(
            config.inner_optimizer, config.inner_lr, config.inner_momentum
        )
        self._distributed_fn = tf.function(self._distributed_step)
        self._gradient_fn = tf.function(self._gradient, jit_compile=config.jit_compile)
        self._compiled = tf.function(self._graph_step)
        self._compiled_many = tf.function(self._graph_steps, reduce_retracing=True)
        self._online_gradient_fn = tf.function(self._online_gradient, jit_compile=config.jit_compile)

    def reset(self, seed: int) -> None:
        """Start over with ``seed``: fresh φ (as a new trainer would draw it) and fresh
        optimizer moments, keeping the compiled step (no new trace).

        ``tf.function`` captured this trainer's variables, so they are re-assigned,
        never replaced; the optimizer's learning rate is left alone.
        """
        self.config = self.config.replace(seed=seed)
        keras.utils.set_random_seed(seed)
        fresh = self.task.make_meta_loss()
        for v, w in zip(self.meta_loss.weights, fresh.weights, strict=True):
            v.assign(w)
        fresh_learner = self.task.make_learner()  # same draw order as __init__
        if self.config.learns_init:
            for v, w in zip(self.learner.weights, fresh_learner.weights, strict=True):
                v.assign(w)
        for opt in (self.optimizer, self.init_optimizer):
            for v in [] if opt is None else opt.variables:
                if v is not getattr(opt, "_learning_rate", None) and not v.path.endswith("learning_rate"):
                    v.assign(tf.zeros_like(v))

    # --- the math ------------------------------------------------------------------
    @property
    def meta_variables(self) -> list:
        """What the outer loop updates: φ (``ml3``), θ_0 (``maml``) or φ then θ_0 (``ml3+maml``)."""
        out = list(self.meta_loss.trainable_variables) if self.config.learns_loss else []
        if self.config.learns_init:
            out += list(self.learner.trainable_variables)
        return out

    def inner_loss_fn(self, data: dict):
        """``(θ, state) ↦ (mean M_φ(features(f_θ, support)), new_state)``.

        With ``method=maml`` the inner loss is the task's baseline loss instead
        (``task.baseline_inner_loss``, e.g. MSE).
        """
        if not self.config.learns_loss:
            baseline = getattr(self.task, "baseline_inner_loss", None)
            if baseline is None:
                raise ValueError(
                    f"method='maml' needs a task with baseline_inner_loss; "
                    f"{getattr(self.task, 'name', self.task)!r} has none"
                )
            return lambda params, state: baseline(self.functional, params, state, data)

        def loss_fn(params, state):
            feats, new_state = self.task.meta_loss_inputs(self.functional, params, state, data)
            per_example = self.meta_loss(feats)
            return tf.reduce_mean(per_example), new_state

        return loss_fn

    def adapt(self, params0: list, data: dict, state: list | None = None):
        """θ_K after ``config.inner_steps`` differentiable steps on the learned loss."""
        cfg = self.config
        state = self.functional.state() if state is None else state
        return unroll(
            self.inner_loss_fn(data),
            params0,
            self.inner_optimizer,
            cfg.inner_steps,
            state=state,
            loop=cfg.unroll_loop,
            backprop=cfg.backprop,
            segment_length=cfg.segment_length,
            truncate_steps=cfg.truncate_steps,
            first_order=cfg.first_order,
        )

    def initial_params(self, init_seeds: Any) -> list[list[tf.Tensor]]:
        """θ_0 of each task in the meta-batch from its stateless seed (``init_seeds``: ``(B, 2)``)."""
        return [self.functional.init_params(init_seeds[b]) for b in range(len(init_seeds))]

    def task_objective(self, one: TaskBatch, params0: list) -> tuple[tf.Tensor, ...]:
        """One task: ``(β·L_task + γ·L_extra, L_task, L_extra, M_φ at θ_0)`` after adapting θ_0."""
        cfg = self.config
        res = self.adapt(params0, one.support)
        lt = self.task.task_loss(self.functional, res.params, res.state, one.query)
        total = cfg.task_loss_weight * lt
        le = tf.zeros_like(lt)
        if cfg.extra_loss_weight:
            extra = self.task.extra_loss(self.functional, res.params, res.state, one.query, one.extra)
            if extra is None:
                raise ValueError(
                    f"extra_loss_weight={cfg.extra_loss_weight} but task "
                    f"{getattr(self.task, 'name', self.task)!r} has no extra_loss"
                )
            le = tf.cast(extra, lt.dtype)
            total = total + cfg.extra_loss_weight * le
        return total, lt, le, tf.cast(res.first_loss, lt.dtype)

    def objective(self, batch: TaskBatch, init_seeds: Any) -> tuple[tf.Tensor, dict]:
        """Meta-objective averaged over the meta-batch; differentiable w.r.t. φ.

        ``init_seeds`` is an int array ``(B, 2)``: the stateless seeds of each task's θ_0
        (or, already expanded, the list of θ_0 from ``initial_params``). When θ_0 is
        meta-learned (``maml``, ``ml3+maml``) every task starts from the learner's
        variables instead, read here so that the gradient reaches them. With
        ``config.vectorize_meta_batch`` and B > 1 the B tasks run as one batched
        computation (``tf.vectorized_map``); otherwise, and always under
        ``jit_compile`` (where XLA fuses the loop), one after the other.
        """
        b = batch.batch_size
        if self.config.learns_init:
            theta0 = [tf.identity(v) for v in self.learner.trainable_variables]
            params0s = [theta0] * b
        elif isinstance(init_seeds, list):
            params0s = init_seeds
        else:
            params0s = self.initial_params(init_seeds)
        # Under XLA the per-task loop is fused anyway, and the vectorised second-order
        # step was measured at ~650 ms per call against ~2 ms looped (bench/scale.py).
        if self.config.vectorize_meta_batch and not self.config.jit_compile and b > 1:
            stacked = [tf.stack(p) for p in zip(*params0s, strict=True)]

            def one(args):
                support, query, extra, params0 = args
                return self.task_objective(TaskBatch(support, query, extra), list(params0))

            parts = tf.vectorized_map(one, (batch.support, batch.query, batch.extra, stacked))
            total, lt, le, first = (tf.reduce_mean(p) for p in parts)
        else:
            per_task = [self.task_objective(batch.task(i), params0s[i]) for i in range(b)]
            total, lt, le, first = (tf.add_n(list(p)) / b for p in zip(*per_task, strict=True))
        return total, {"task_loss": lt, "extra_loss": le, "learned_loss": first}

    def meta_gradient(self, batch: TaskBatch, init_seeds: Any) -> tuple[list, MetaStepInfo]:
        """Gradient of the meta-objective w.r.t. ``meta_variables`` (eager unless called in a graph)."""
        variables = self.meta_variables
        with tf.GradientTape() as tape:
            total, parts = self.objective(batch, init_seeds)
        grads = meta_gradients(tape, total, variables)
        info = MetaStepInfo(
            objective=total,
            task_loss=parts["task_loss"],
            extra_loss=parts["extra_loss"],
            learned_loss=parts["learned_loss"],
            meta_grad_norm=tf.linalg.global_norm(grads),
        )
        return grads, info

    def _gradient(self, support, query, extra, params0s):
        return self.meta_gradient(TaskBatch(support, query, extra), params0s)

    def _apply(self, grads: list, info: MetaStepInfo) -> tf.Tensor:
        """Apply ``grads`` to φ if the step is finite; returns that predicate.

        A non-finite step must not touch φ (nor the optimizer's moments): the caller
        raises, and φ and the last checkpoint stay as they were. Only the gradient
        is XLA-compiled (``jit_compile``); this update runs in the plain graph.
        """
        finite = tf.math.is_finite(info.objective) & tf.math.is_finite(info.meta_grad_norm)

        def apply() -> tf.Tensor:
            self._apply_gradients(grads)
            return tf.constant(True)

        tf.cond(finite, apply, lambda: tf.constant(False))
        return finite

    def _apply_gradients(self, grads: list) -> None:
        """φ's part of ``grads`` to the φ optimizer, θ_0's part to the θ_0 optimizer."""
        n_phi = len(self.meta_loss.trainable_variables) if self.config.learns_loss else 0
        if n_phi:
            self.optimizer.apply_gradients(
                zip(grads[:n_phi], self.meta_loss.trainable_variables, strict=True)
            )
        if self.init_optimizer is not None:
            self.init_optimizer.apply_gradients(
                zip(grads[n_phi:], self.learner.trainable_variables, strict=True)
            )

    def _eager_step(self, support, query, extra, seeds):
        if self.config.meta_update == "online":
            return self._online_step(support, query, extra, self.initial_params(seeds), self._online_gradient)
        grads, info = self._gradient(support, query, extra, self.initial_params(seeds))
        return info, self._apply(grads, info)

    def _graph_step(self, support, query, extra, seeds):
        # θ_0 is drawn here, in the plain graph, and enters the (possibly XLA-)
        # compiled gradient as an input: XLA's stateless RNG gives other numbers
        # than the CPU kernels, and eager, tf.function and XLA steps must train
        # the same learners.
        params0s = self.initial_params(seeds)
        if self.config.meta_update == "online":
            return self._online_step(support, query, extra, params0s, self._online_gradient_fn)
        grads, info = self._gradient_fn(support, query, extra, params0s)
        return info, self._apply(grads, info)

    def _graph_steps(self, support, query, extra, seeds):
        """``len(seeds)`` meta-steps in one call (arrays carry a leading step axis).

        After a non-finite step no further update is applied (the remaining steps
        are computed but leave φ alone); ``ok[i]`` says whether step i was applied.
        """
        n = tf.shape(seeds)[0]
        batch_size = seeds.shape[1]
        fields = MetaStepInfo._fields
        traces = tuple(tf.TensorArray(tf.float64, size=n) for _ in fields)
        oks = tf.TensorArray(tf.bool, size=n)

        def body(i, ok, traces, oks):
            def pick(d):
                return {k: v[i] for k, v in d.items()}

            params0s = [self.functional.init_params(seeds[i, b]) for b in range(batch_size)]
            if self.config.meta_update == "online":
                info, finite = self._online_step(
                    pick(support), pick(query), pick(extra), params0s, self._online_gradient_fn, ok
                )
                ok = ok & finite
                traces = tuple(t.write(i, tf.cast(v, tf.float64)) for t, v in zip(traces, info, strict=True))
                return i + 1, ok, traces, oks.write(i, ok)
            grads, info = self._gradient_fn(pick(support), pick(query), pick(extra), params0s)
            finite = tf.math.is_finite(info.objective) & tf.math.is_finite(info.meta_grad_norm)
            ok = ok & finite

            def apply() -> tf.Tensor:
                self._apply_gradients(grads)
                return tf.constant(True)

            tf.cond(ok, apply, lambda: tf.constant(False))
            traces = tuple(t.write(i, tf.cast(v, tf.float64)) for t, v in zip(traces, info, strict=True))
            return i + 1, ok, traces, oks.write(i, ok)

        _, _, traces, oks = tf.while_loop(
            lambda i, *_: i < n, body, (tf.constant(0), tf.constant(True), traces, oks)
        )
        return MetaStepInfo(*(t.stack() for t in traces)), oks.stack()

    def _distributed_step(self, values):
        """One meta-step under ``self.strategy``: each replica takes B/R tasks; the
        per-replica meta-gradients (means over their tasks) are averaged, then one
        update is applied to the mirrored φ in cross-replica context."""

        def replica(args):
            support, query, extra, seeds = args
            params0s = [self.functional.init_params(seeds[i]) for i in range(seeds.shape[0])]
            return self._gradient_fn(support, query, extra, params0s)

        grads, info = self.strategy.run(replica, args=(values,))
        mean = tf.distribute.ReduceOp.MEAN
        grads = [self.strategy.reduce(mean, g, axis=None) for g in grads]
        info = MetaStepInfo(*(self.strategy.reduce(mean, v, axis=None) for v in info))
        info = info._replace(meta_grad_norm=tf.linalg.global_norm(grads))
        return info, self._apply(grads, info)

    def _distribute(self, batch: TaskBatch, seeds: np.ndarray):
        """Split the meta-batch (and the θ_0 seeds) into one shard per replica."""
        per = batch.batch_size // self.replicas

        def value_fn(ctx):
            part = slice(ctx.replica_id_in_sync_group * per, (ctx.replica_id_in_sync_group + 1) * per)

            def shard(d: dict) -> dict:
                return {k: tf.convert_to_tensor(np.asarray(v)[part]) for k, v in d.items()}

            return shard(batch.support), shard(batch.query), shard(batch.extra), tf.constant(seeds[part])

        return self.strategy.experimental_distribute_values_from_function(value_fn)

    # --- online, one-step-truncated meta-updates (meta_update="online") --------------
    def _online_gradient(self, params, state, opt_state, support, query, extra):
        """One truncated sub-update's gradient: θ_k (and the inner optimizer's state) held
        constant, θ_{k+1} = opt(θ_k, ∇_θ M_φ(θ_k)) on the support set, and
        ``∇_φ [β L_task(θ_{k+1}) + γ L_extra(θ_{k+1})]`` on the query set.

        Returns ``(grads, θ_{k+1}, state, opt_state, (objective, task_loss, extra_loss,
        learned_loss at θ_k, ‖grads‖))`` with θ_{k+1} detached.
        """
        cfg = self.config
        stop = tf.stop_gradient
        params, state = [stop(p) for p in params], [stop(s) for s in state]
        opt_state = tf.nest.map_structure(stop, opt_state)
        variables = self.meta_loss.trainable_variables
        with tf.GradientTape() as tape:
            params, state, opt_state, learned = inner_step(
                self.inner_loss_fn(support), params, state, self.inner_optimizer, opt_state
            )
            lt = self.task.task_loss(self.functional, params, state, query)
            total, le = cfg.task_loss_weight * lt, tf.zeros_like(lt)
            if cfg.extra_loss_weight:
                le = self.task.extra_loss(self.functional, params, state, query, extra)
                if le is None:
                    raise ValueError(
                        f"extra_loss_weight={cfg.extra_loss_weight} but task "
                        f"{getattr(self.task, 'name', self.task)!r} has no extra_loss"
                    )
                total = total + cfg.extra_loss_weight * le
        grads = meta_gradients(tape, total, variables)
        stats = (total, lt, le, learned, tf.linalg.global_norm(grads))
        params = [stop(p) for p in params]
        opt_state = tf.nest.map_structure(stop, opt_state)
        return grads, params, [stop(s) for s in state], opt_state, stats

    def _online_step(self, support, query, extra, params0s, gradient_fn, enabled=True):
        """One meta-step of ``meta_update="online"``: tasks in turn, K updates of φ each.

        Returns ``(MetaStepInfo, finite)``. The info averages over the meta-batch:
        objective, task_loss and extra_loss at θ_K (the last sub-update of each task),
        learned_loss at θ_0, meta_grad_norm the mean over the B·K sub-updates. A
        non-finite sub-update stops the updates, and φ and the outer optimizer are put
        back to where they were before this meta-step; nothing is applied unless
        ``enabled``.
        """
        variables = self.meta_loss.trainable_variables
        saved = [tf.identity(v.value) for v in [*variables, *self.optimizer.variables]]
        enabled = tf.convert_to_tensor(enabled)
        k_steps = self.config.inner_steps

        def sub_update(params, state, opt_state, ok, data):
            grads, params, state, opt_state, stats = gradient_fn(params, state, opt_state, *data)
            ok = ok & tf.math.is_finite(stats[0]) & tf.math.is_finite(stats[4])

            def apply() -> tf.Tensor:
                self.optimizer.apply_gradients(zip(grads, variables, strict=True))
                return tf.constant(True)

            tf.cond(enabled & ok, apply, lambda: tf.constant(False))
            return params, state, opt_state, ok, stats

        ok = tf.constant(True)
        per_task = []
        for b, params in enumerate(params0s):
            data = ({k: v[b] for k, v in support.items()}, {k: v[b] for k, v in query.items()})
            data = (*data, {k: v[b] for k, v in extra.items()})
            state = self.functional.state()
            opt_state = self.inner_optimizer.init(params)
            params, state, opt_state, ok, stats = sub_update(params, state, opt_state, ok, data)
            first_learned, norm_sum = stats[3], stats[4]
            if self.config.unroll_loop == "python" or (self.config.unroll_loop == "auto" and k_steps <= 10):
                for _ in range(k_steps - 1):
                    params, state, opt_state, ok, stats = sub_update(params, state, opt_state, ok, data)
                    norm_sum = norm_sum + stats[4]
            elif k_steps > 1:

                def body(i, p, s, o, ok, stats, norm_sum, data=data):
                    p, s, o, ok, stats = sub_update(p, s, o, ok, data)
                    return i + 1, p, s, o, ok, stats, norm_sum + stats[4]

                loop = (tf.constant(1), params, state, opt_state, ok, stats, norm_sum)
                _, params, state, opt_state, ok, stats, norm_sum = tf.while_loop(
                    lambda i, *_: i < k_steps, body, loop, maximum_iterations=k_steps - 1
                )
            per_task.append((stats[0], stats[1], stats[2], first_learned, norm_sum / k_steps))

        def restore() -> tf.Tensor:
            for v, value in zip([*variables, *self.optimizer.variables], saved, strict=True):
                v.assign(value)
            return tf.constant(True)

        tf.cond(enabled & tf.logical_not(ok), restore, lambda: tf.constant(False))
        means = [tf.add_n(list(col)) / len(per_task) for col in zip(*per_task, strict=True)]
        return MetaStepInfo(*means), ok

    # --- the steps -----------------------------------------------------------------
    def init_seeds(self, step: int, batch_size: int | None = None) -> np.ndarray:
        """Stateless seeds ``(B, 2)`` of the learners' θ_0 at ``step`` (resumable); with
        ``learner_init="fixed"`` the seeds of step 0, whatever ``step``."""
        b = self.config.meta_batch_size if batch_size is None else batch_size
        base = 0 if self.config.learner_init == "fixed" else (step * b) % (2**31 - 1)
        return np.array([[self.config.seed, base + i] for i in range(b)], dtype=np.int32)

    def meta_step(self, batch: TaskBatch, step: int) -> MetaStepInfo:
        """One eager outer update of φ."""
        return self._run(self._distributed_step if self.distributed else self._eager_step, batch, step)

    def step(self, batch: TaskBatch, step: int) -> MetaStepInfo:
        """One compiled outer update of φ (``tf.function``, XLA if configured)."""
        return self._run(self._distributed_fn if self.distributed else self._compiled, batch, step)

    def run_steps(self, first_step: int, count: int) -> list[MetaStepInfo]:
        """Meta-steps ``first_step … first_step + count − 1`` in one compiled call.

        The task's batches for those steps are sampled here and stacked; the loop over
        them runs inside the graph (one Python round trip instead of ``count``).

        If the task has a method ``before_meta_steps(trainer, first_step, count)`` it is
        called first, outside the compiled graph: a task may change what its compiled
        functions read between calls (e.g. refit a learned dynamics model whose variables
        the rollouts use) — variables only, never anything that would need a new trace.

        Raises:
            NonFiniteError: naming the first non-finite step; φ holds the updates of
                the steps before it and none after.
        """
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        hook = getattr(self.task, "before_meta_steps", None)
        if hook is not None:
            hook(self, first_step, count)
        steps = range(first_step, first_step + count)
        if self.distributed:  # one call per step: each step's shards are placed per replica
            return [
                self.step(self.task.sample(self.config.seed, s, self.config.meta_batch_size), s)
                for s in steps
            ]
        batches = [self.task.sample(self.config.seed, s, self.config.meta_batch_size) for s in steps]

        def stack(part: str) -> dict:
            first = getattr(batches[0], part)
            return {k: tf.convert_to_tensor(np.stack([getattr(b, part)[k] for b in batches])) for k in first}

        seeds = np.stack([self.init_seeds(s) for s in steps])
        infos, oks = self._compiled_many(stack("support"), stack("query"), stack("extra"), seeds)
        values = np.stack([v.numpy() for v in infos], axis=1)  # (count, fields)
        oks = oks.numpy()
        if not oks.all():
            bad = int(np.argmin(oks))
            info = MetaStepInfo(*values[bad])
            raise NonFiniteError(
                f"meta-step {first_step + bad}: non-finite meta-objective or meta-gradient "
                f"(objective={info.objective!r}, meta_grad_norm={info.meta_grad_norm!r}); "
                "φ was not updated by it"
            )
        return [MetaStepInfo(*(float(x) for x in row)) for row in values]

    def _run(self, fn, batch: TaskBatch, step: int) -> MetaStepInfo:
        seeds = self.init_seeds(step, batch.batch_size)
        if self.distributed:
            info, finite = fn(self._distribute(batch, seeds))
        else:
            info, finite = fn(_tensors(batch.support), _tensors(batch.query), _tensors(batch.extra), seeds)
        if not bool(finite):
            raise NonFiniteError(
                f"meta-step {step}: non-finite meta-objective or meta-gradient "
                f"(objective={float(info.objective)!r}, meta_grad_norm="
                f"{float(info.meta_grad_norm)!r}); φ was not updated"
            )
        return MetaStepInfo(*(float(v) for v in info))


def meta_gradients(tape: tf.GradientTape, total: tf.Tensor, variables: list) -> list[tf.Tensor]:
    """``tape.gradient(total, variables)`` with zeros for variables ``total`` does not reach.

    Done here rather than with ``UnconnectedGradients.ZERO``: TensorFlow builds those zeros
    from ``variable.dtype``, which for a Keras 3 variable is a string, and fails. An output
    bias of a loss network with a linear output is such a variable (∇_θ M_φ ignores it).
    """
    grads = tape.gradient(total, variables)
    return [tf.zeros(v.shape, v.dtype) if g is None else g for g, v in zip(grads, variables, strict=True)]


class NonFiniteError(ValueError):
    """A meta-step produced NaN/Inf; φ was left as it was before that step."""


def _tensors(d: dict) -> dict:
    return {k: tf.convert_to_tensor(v) for k, v in d.items()}
