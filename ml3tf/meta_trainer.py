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
from ml3tf.distribute import make_strategy, worker_errors
from ml3tf.functional import FunctionalModel
from ml3tf.inner import AUTO_PYTHON_LOOP_MAX, inner_step, make_inner_optimizer, unroll
from ml3tf.seeds import meta_train_seeds, seeded
from ml3tf.task import Task, TaskBatch


class MetaStepInfo(NamedTuple):
    """What one meta-step reports (scalars, averaged over the meta-batch).

    Attributes:
        objective: the meta-objective β·L_task + γ·L_extra that φ descends.
        task_loss: L_task after the inner steps, on the query set.
        extra_loss: L_extra after the inner steps (0 when the task has none).
        initial_loss: the inner loss at θ_0 on the support set: M_φ (``ml3``, ``ml3+maml``),
            the task's baseline loss (``maml``).
        meta_grad_norm: global norm of the meta-gradient (w.r.t. φ and/or θ_0).
    """

    objective: Any
    task_loss: Any
    extra_loss: Any
    initial_loss: Any
    meta_grad_norm: Any


class NonFiniteError(ValueError):
    """A meta-step produced NaN/Inf; φ was left as it was before that step."""

    @classmethod
    def at(cls, step: int, info: MetaStepInfo) -> NonFiniteError:
        return cls(
            f"meta-step {step}: non-finite meta-objective or meta-gradient (objective="
            f"{float(info.objective)!r}, meta_grad_norm={float(info.meta_grad_norm)!r}); "
            "φ was not updated by it"
        )


def finite(info: MetaStepInfo) -> tf.Tensor:
    """Whether a (sub-)update may be applied: a finite objective and a finite meta-gradient."""
    return tf.math.is_finite(info.objective) & tf.math.is_finite(info.meta_grad_norm)


# --- the one step ------------------------------------------------------------------------------
class MetaTrainer:
    """Meta-trains a loss network (and/or, with ``config.method``, an initialisation) for a task.

    Read top to bottom: the configuration and variables (``__init__``), the mathematics of one
    meta-step (``objective``, ``meta_gradient``), the update rule that turns it into a change of
    φ (``UnrolledUpdate`` or ``OnlineUpdate``, each with the one finite guard ``apply_if``), and
    the wrappers that execute that rule: ``meta_step`` (eager, debuggable), ``step`` (compiled
    with ``tf.function``, XLA with ``config.jit_compile``), ``run_steps`` (many meta-steps in one
    compiled call) — each also under a ``tf.distribute`` strategy.

    Attributes: ``meta_loss`` (M_φ, a Keras model), ``learner`` (the learner's ``FunctionalModel``,
    as every task method sees it; ``learner.model`` is the Keras model, whose variables are θ_0
    when ``config.learns_init``), ``optimizer`` / ``init_optimizer`` (the outer optimizers of φ
    and θ_0), ``update`` (the update rule), ``inner_optimizer``.

    Constructing a trainer does not touch the global random state: φ's initial weights are
    drawn as after ``keras.utils.set_random_seed(config.seed)`` inside ``ml3tf.seeds.seeded``.

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
        if not isinstance(task, Task):
            raise ValueError(f"task must be an ml3tf.task.Task, got {type(task).__name__}")
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
        # φ and its slots are mirrored under a strategy (multi_worker: broadcast from worker 0)
        with worker_errors(self.strategy, 0), self.strategy.scope(), seeded(config.seed):
            self.meta_loss = meta_loss if meta_loss is not None else task.make_meta_loss()
            self.learner = FunctionalModel(task.make_learner())
            if config.meta_optimizer == "adam":
                self.optimizer = keras.optimizers.Adam(config.meta_lr)
            else:
                self.optimizer = keras.optimizers.SGD(config.meta_lr)
            self.optimizer.build(self.meta_loss.trainable_variables)
            # MAML: θ_0 is the learner's trainable variables, with its own outer optimizer.
            self.init_optimizer = None
            if config.learns_init:
                self.init_optimizer = keras.optimizers.Adam(config.init_lr)
                self.init_optimizer.build(self.learner.model.trainable_variables)
        self.inner_optimizer = make_inner_optimizer(
            config.inner_optimizer, config.inner_lr, config.inner_momentum
        )
        rule = OnlineUpdate if config.meta_update == "online" else UnrolledUpdate
        self.update = rule(self)
        self._compiled = tf.function(self._local_step)
        self._compiled_many = tf.function(self._local_steps, reduce_retracing=True)
        self._distributed_fn = tf.function(self._distributed_step)

    def reset(self, seed: int) -> None:
        """Start over with ``seed``: fresh φ (as a new trainer would draw it) and fresh
        optimizer moments, keeping the compiled step (no new trace).

        ``tf.function`` captured this trainer's variables, so they are re-assigned,
        never replaced; the optimizer's learning rate is left alone.
        """
        self.config = self.config.replace(seed=seed)
        with seeded(seed):
            fresh = self.task.make_meta_loss()
            fresh_learner = self.task.make_learner()  # same draw order as __init__
        for v, w in zip(self.meta_loss.weights, fresh.weights, strict=True):
            v.assign(w)
        if self.config.learns_init:
            for v, w in zip(self.learner.model.weights, fresh_learner.weights, strict=True):
                v.assign(w)
        for opt in (self.optimizer, self.init_optimizer):
            for v in [] if opt is None else opt.variables:
                if v is not getattr(opt, "_learning_rate", None) and not v.path.endswith("learning_rate"):
                    v.assign(tf.zeros_like(v))

    # --- the mathematics of one meta-step -------------------------------------------------------
    @property
    def meta_variables(self) -> list:
        """What the outer loop updates: φ (``ml3``), θ_0 (``maml``) or φ then θ_0 (``ml3+maml``)."""
        out = list(self.meta_loss.trainable_variables) if self.config.learns_loss else []
        if self.config.learns_init:
            out += list(self.learner.model.trainable_variables)
        return out

    def inner_loss_fn(self, data: dict):
        """``(θ, state) ↦ (mean M_φ(features(f_θ, support)), new_state)``.

        With ``method=maml`` the inner loss is the task's baseline loss instead
        (``task.baseline_inner_loss``, e.g. MSE).
        """
        if not self.config.learns_loss:
            return lambda params, state: self.task.baseline_inner_loss(self.learner, params, state, data)

        def loss_fn(params, state):
            feats, new_state = self.task.meta_loss_inputs(self.learner, params, state, data)
            per_example = self.meta_loss(feats)
            return tf.reduce_mean(per_example), new_state

        return loss_fn

    def adapt(self, params0: list, data: dict, state: list | None = None):
        """θ_K after ``config.inner_steps`` differentiable steps on the learned loss."""
        cfg = self.config
        state = self.learner.state() if state is None else state
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
        return [self.learner.init_params(init_seeds[b]) for b in range(len(init_seeds))]

    def query_objective(
        self, params, state, query: dict, extra: dict
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """``(β·L_task + γ·L_extra, L_task, L_extra)`` of the adapted learner θ = ``params``."""
        cfg = self.config
        lt = self.task.task_loss(self.learner, params, state, query)
        le = tf.zeros_like(lt)
        if cfg.extra_loss_weight:
            extra_loss = self.task.extra_loss(self.learner, params, state, query, extra)
            if extra_loss is None:
                raise ValueError(
                    f"extra_loss_weight={cfg.extra_loss_weight} but task {self.task.name!r} has no extra_loss"
                )
            le = tf.cast(extra_loss, lt.dtype)
        return cfg.task_loss_weight * lt + cfg.extra_loss_weight * le, lt, le

    def task_objective(self, one: TaskBatch, params0: list) -> tuple[tf.Tensor, ...]:
        """One task: ``(β·L_task + γ·L_extra, L_task, L_extra, inner loss at θ_0)`` after adapting θ_0."""
        res = self.adapt(params0, one.support)
        total, lt, le = self.query_objective(res.params, res.state, one.query, one.extra)
        return total, lt, le, tf.cast(res.initial_loss, lt.dtype)

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
            theta0 = [tf.identity(v) for v in self.learner.model.trainable_variables]
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
        return total, {"task_loss": lt, "extra_loss": le, "initial_loss": first}

    def meta_gradient(self, batch: TaskBatch, init_seeds: Any) -> tuple[list, MetaStepInfo]:
        """Gradient of the meta-objective w.r.t. ``meta_variables`` (eager unless called in a graph)."""
        variables = self.meta_variables
        with tf.GradientTape() as tape:
            total, parts = self.objective(batch, init_seeds)
        grads = self.meta_gradients(tape, total, variables)
        info = MetaStepInfo(
            objective=total,
            task_loss=parts["task_loss"],
            extra_loss=parts["extra_loss"],
            initial_loss=parts["initial_loss"],
            meta_grad_norm=tf.linalg.global_norm(grads),
        )
        return grads, info

    def meta_gradients(self, tape: tf.GradientTape, total: tf.Tensor, variables: list) -> list[tf.Tensor]:
        """``tape.gradient(total, variables)``, zeros for single variables ``total`` does not reach.

        A loss network whose output layer is linear has such a variable (its output bias:
        ∇_θ M_φ ignores it). Done here rather than with ``UnconnectedGradients.ZERO``:
        TensorFlow builds those zeros from ``variable.dtype``, which for a Keras 3 variable is
        a string, and fails.

        Raises:
            ValueError: no variable of the loss network (or of θ_0) is reached at all: φ
                would never move. The usual cause is loss features cut from θ.
        """
        grads = tape.gradient(total, variables)
        n_phi = len(self.meta_loss.trainable_variables) if self.config.learns_loss else 0
        for name, part in (("loss network φ", grads[:n_phi]), ("initialisation θ_0", grads[n_phi:])):
            if part and all(g is None for g in part):
                raise ValueError(
                    f"task {self.task.name!r}: the meta-objective does not depend on any weight of the "
                    f"{name} (all {len(part)} gradients are None), so meta-training could never move it. "
                    "Likely cause: the loss features do not depend on the learner's params (a "
                    "tf.stop_gradient on the prediction, or features computed from data only)"
                )
        return [tf.zeros(v.shape, v.dtype) if g is None else g for g, v in zip(grads, variables, strict=True)]

    # --- the update rule, and the one finite guard ---------------------------------------------
    def apply_if(self, ok: tf.Tensor, grads: list) -> None:
        """The one finite guard: apply ``grads`` (φ's part to the φ optimizer, θ_0's part to the
        θ_0 optimizer) only where ``ok``; otherwise φ and the optimizers' moments stay untouched."""

        def apply() -> tf.Tensor:
            n_phi = len(self.meta_loss.trainable_variables) if self.config.learns_loss else 0
            if n_phi:
                self.optimizer.apply_gradients(
                    zip(grads[:n_phi], self.meta_loss.trainable_variables, strict=True)
                )
            if self.init_optimizer is not None:
                self.init_optimizer.apply_gradients(
                    zip(grads[n_phi:], self.learner.model.trainable_variables, strict=True)
                )
            return tf.constant(True)

        tf.cond(ok, apply, lambda: tf.constant(False))

    # --- wrappers: eager, compiled, chunked, distributed ---------------------------------------
    def init_seeds(self, step: int, batch_size: int | None = None) -> np.ndarray:
        """Stateless seeds ``(B, 2)`` (int64, ``ml3tf.seeds``) of the learners' θ_0 at ``step``;
        with ``learner_init="fixed"`` the seeds of step 0, whatever ``step``."""
        b = self.config.meta_batch_size if batch_size is None else batch_size
        return meta_train_seeds(self.config.seed, step, b, fixed=self.config.learner_init == "fixed")

    def _local_step(self, support, query, extra, seeds, enabled=True, eager=False):
        # θ_0 is drawn here, in the plain graph, and enters the (possibly XLA-) compiled
        # gradient as an input: XLA's stateless RNG gives other numbers than the CPU kernels,
        # and eager, tf.function and XLA steps must train the same learners.
        return self.update(support, query, extra, self.initial_params(seeds), enabled, eager)

    def _local_steps(self, support, query, extra, seeds):
        """``len(seeds)`` meta-steps in one call (arrays carry a leading step axis).

        After a non-finite step no further update is applied (the remaining steps are
        computed but leave φ alone); ``ok[i]`` says whether step i was applied.
        """
        n = tf.shape(seeds)[0]
        traces = tuple(tf.TensorArray(tf.float64, size=n) for _ in MetaStepInfo._fields)
        oks = tf.TensorArray(tf.bool, size=n)

        def body(i, ok, traces, oks):
            def pick(d):
                return {k: v[i] for k, v in d.items()}

            info, step_ok = self._local_step(pick(support), pick(query), pick(extra), seeds[i], ok)
            ok = ok & step_ok
            traces = tuple(t.write(i, tf.cast(v, tf.float64)) for t, v in zip(traces, info, strict=True))
            return i + 1, ok, traces, oks.write(i, ok)

        _, _, traces, oks = tf.while_loop(
            lambda i, *_: i < n, body, (tf.constant(0), tf.constant(True), traces, oks)
        )
        return MetaStepInfo(*(t.stack() for t in traces)), oks.stack()

    def _distributed_step(self, values):
        """One meta-step under ``self.strategy``: each replica takes B/R tasks; the per-replica
        meta-gradients (means over their tasks) are averaged, then one update is applied to the
        mirrored φ in cross-replica context."""

        def replica(args):
            support, query, extra, seeds = args
            return self.update.gradient(support, query, extra, self.initial_params(seeds))

        def reduced():
            grads, info = self.strategy.run(replica, args=(values,))
            mean = tf.distribute.ReduceOp.MEAN
            grads = [self.strategy.reduce(mean, g, axis=None) for g in grads]
            info = MetaStepInfo(*(self.strategy.reduce(mean, v, axis=None) for v in info))
            return grads, info._replace(meta_grad_norm=tf.linalg.global_norm(grads))

        return self.update.guarded(*reduced())

    def _distribute(self, batch: TaskBatch, seeds: np.ndarray):
        """Split the meta-batch (and the θ_0 seeds) into one shard per replica."""
        per = batch.batch_size // self.replicas

        def value_fn(ctx):
            part = slice(ctx.replica_id_in_sync_group * per, (ctx.replica_id_in_sync_group + 1) * per)

            def shard(d: dict) -> dict:
                return {k: tf.convert_to_tensor(np.asarray(v)[part]) for k, v in d.items()}

            return shard(batch.support), shard(batch.query), shard(batch.extra), tf.constant(seeds[part])

        return self.strategy.experimental_distribute_values_from_function(value_fn)

    def meta_step(self, batch: TaskBatch, step: int) -> MetaStepInfo:
        """One eager outer update of φ."""
        if self.distributed:
            return self._run(self._distributed_step, batch, step)
        return self._run(lambda *args: self._local_step(*args, eager=True), batch, step)

    def step(self, batch: TaskBatch, step: int) -> MetaStepInfo:
        """One compiled outer update of φ (``tf.function``, XLA if configured)."""
        return self._run(self._distributed_fn if self.distributed else self._compiled, batch, step)

    def run_steps(self, first_step: int, count: int) -> list[MetaStepInfo]:
        """Meta-steps ``first_step … first_step + count − 1`` in one compiled call.

        The task's batches for those steps are sampled here and stacked; the loop over
        them runs inside the graph (one Python round trip instead of ``count``). The task's
        ``before_meta_steps(trainer, first_step, count)`` runs first, outside the graph.

        Raises:
            NonFiniteError: naming the first non-finite step; φ holds the updates of
                the steps before it and none after.
        """
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        self.task.before_meta_steps(self, first_step, count)
        steps = range(first_step, first_step + count)
        batches = [self.task.sample(self.config.seed, s, self.config.meta_batch_size) for s in steps]
        if self.distributed:  # one call per step: each step's shards are placed per replica
            return [self.step(b, s) for b, s in zip(batches, steps, strict=True)]

        def stack(part: str) -> dict:
            first = getattr(batches[0], part)
            return {k: tf.convert_to_tensor(np.stack([getattr(b, part)[k] for b in batches])) for k in first}

        seeds = np.stack([self.init_seeds(s) for s in steps])
        infos, oks = self._compiled_many(stack("support"), stack("query"), stack("extra"), seeds)
        values = np.stack([v.numpy() for v in infos], axis=1)  # (count, fields)
        oks = oks.numpy()
        if not oks.all():
            bad = int(np.argmin(oks))
            raise NonFiniteError.at(first_step + bad, MetaStepInfo(*values[bad]))
        return [MetaStepInfo(*(float(x) for x in row)) for row in values]

    def _run(self, fn, batch: TaskBatch, step: int) -> MetaStepInfo:
        seeds = self.init_seeds(step, batch.batch_size)
        if self.distributed:
            with worker_errors(self.strategy, step):  # multi_worker: a lost worker is one clear error
                info, ok = fn(self._distribute(batch, seeds))
        else:
            info, ok = fn(_tensors(batch.support), _tensors(batch.query), _tensors(batch.extra), seeds)
        if not bool(ok):
            raise NonFiniteError.at(step, info)
        return MetaStepInfo(*(float(v) for v in info))


# --- the two update rules ----------------------------------------------------------------------
class UnrolledUpdate:
    """``meta_update="unrolled"``: one update per meta-step, differentiated through all K inner
    steps, ``φ ← φ − η ∇_φ mean_b L_b(θ_K(φ))`` (exact)."""

    def __init__(self, trainer: MetaTrainer) -> None:
        self.trainer = trainer
        self.gradient = tf.function(self._gradient, jit_compile=trainer.config.jit_compile)

    def _gradient(self, support, query, extra, params0s):
        return self.trainer.meta_gradient(TaskBatch(support, query, extra), params0s)

    def guarded(self, grads: list, info: MetaStepInfo, enabled: Any = True) -> tuple[MetaStepInfo, tf.Tensor]:
        """Apply ``grads`` if the step is finite (and ``enabled``); returns ``(info, finite)``."""
        ok = finite(info)
        self.trainer.apply_if(tf.convert_to_tensor(enabled) & ok, grads)
        return info, ok

    def __call__(self, support, query, extra, params0s, enabled=True, eager=False):
        """``(info, finite)`` of one meta-step; φ updated when finite and ``enabled``."""
        gradient = self._gradient if eager else self.gradient
        return self.guarded(*gradient(support, query, extra, params0s), enabled)


class OnlineUpdate:
    """``meta_update="online"``: for each task in turn, θ_0 fresh, a φ update after every inner
    step, differentiated through that one step only (θ_k held constant):

        θ_{k+1} = opt(θ_k, ∇_θ M_φ(θ_k));    φ ← φ − η ∇_φ [β L_task(θ_{k+1}) + γ L_extra(θ_{k+1})]

    B·K updates of φ per meta-step; memory independent of K. A non-finite sub-update stops
    the updates and puts φ and the outer optimizer back to where they were before the meta-step.
    """

    def __init__(self, trainer: MetaTrainer) -> None:
        self.trainer = trainer
        self.gradient = tf.function(self._gradient, jit_compile=trainer.config.jit_compile)

    def _gradient(self, params, state, opt_state, support, query, extra):
        """One truncated sub-update's gradient: θ_k (and the inner optimizer's state) held
        constant, θ_{k+1} = opt(θ_k, ∇_θ M_φ(θ_k)) on the support set, and
        ``∇_φ [β L_task(θ_{k+1}) + γ L_extra(θ_{k+1})]`` on the query set.

        Returns ``(grads, θ_{k+1}, state, opt_state, MetaStepInfo)`` with θ_{k+1} detached; the
        info's ``initial_loss`` is the inner loss at θ_k.
        """
        t = self.trainer
        stop = tf.stop_gradient
        params, state = [stop(p) for p in params], [stop(s) for s in state]
        opt_state = tf.nest.map_structure(stop, opt_state)
        variables = t.meta_loss.trainable_variables
        with tf.GradientTape() as tape:
            params, state, opt_state, inner = inner_step(
                t.inner_loss_fn(support), params, state, t.inner_optimizer, opt_state
            )
            total, lt, le = t.query_objective(params, state, query, extra)
        grads = t.meta_gradients(tape, total, variables)
        info = MetaStepInfo(total, lt, le, inner, tf.linalg.global_norm(grads))
        params = [stop(p) for p in params]
        opt_state = tf.nest.map_structure(stop, opt_state)
        return grads, params, [stop(s) for s in state], opt_state, info

    def __call__(self, support, query, extra, params0s, enabled=True, eager=False):
        """``(info, finite)`` of one meta-step. The info averages over the meta-batch: objective,
        task_loss and extra_loss at θ_K (the last sub-update of each task), initial_loss at θ_0,
        meta_grad_norm the mean over the B·K sub-updates."""
        t = self.trainer
        gradient_fn = self._gradient if eager else self.gradient
        variables = t.meta_loss.trainable_variables
        saved = [tf.identity(v.value) for v in [*variables, *t.optimizer.variables]]
        enabled = tf.convert_to_tensor(enabled)
        k_steps = t.config.inner_steps

        def sub_update(params, state, opt_state, ok, data):
            grads, params, state, opt_state, info = gradient_fn(params, state, opt_state, *data)
            ok = ok & finite(info)
            t.apply_if(enabled & ok, grads)
            return params, state, opt_state, ok, info

        ok = tf.constant(True)
        per_task = []
        for b, params in enumerate(params0s):
            data = tuple({k: v[b] for k, v in d.items()} for d in (support, query, extra))
            state = t.learner.state()
            opt_state = t.inner_optimizer.init(params)
            params, state, opt_state, ok, info = sub_update(params, state, opt_state, ok, data)
            first_inner, norm_sum = info.initial_loss, info.meta_grad_norm
            if t.config.unroll_loop == "python" or (
                t.config.unroll_loop == "auto" and k_steps <= AUTO_PYTHON_LOOP_MAX
            ):
                for _ in range(k_steps - 1):
                    params, state, opt_state, ok, info = sub_update(params, state, opt_state, ok, data)
                    norm_sum = norm_sum + info.meta_grad_norm
            elif k_steps > 1:

                def body(i, p, s, o, ok, info, norm_sum, data=data):
                    p, s, o, ok, info = sub_update(p, s, o, ok, data)
                    return i + 1, p, s, o, ok, info, norm_sum + info.meta_grad_norm

                loop = (tf.constant(1), params, state, opt_state, ok, info, norm_sum)
                _, params, state, opt_state, ok, info, norm_sum = tf.while_loop(
                    lambda i, *_: i < k_steps, body, loop, maximum_iterations=k_steps - 1
                )
            per_task.append(
                (info.objective, info.task_loss, info.extra_loss, first_inner, norm_sum / k_steps)
            )

        def restore() -> tf.Tensor:
            for v, value in zip([*variables, *t.optimizer.variables], saved, strict=True):
                v.assign(value)
            return tf.constant(True)

        tf.cond(enabled & tf.logical_not(ok), restore, lambda: tf.constant(False))
        means = [tf.add_n(list(col)) / len(per_task) for col in zip(*per_task, strict=True)]
        return MetaStepInfo(*means), ok


def _tensors(d: dict) -> dict:
    return {k: tf.convert_to_tensor(v) for k, v in d.items()}
