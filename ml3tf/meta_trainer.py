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
from ml3tf.inner import inner_step, make_inner_optimizer, resolve_loop, unroll
from ml3tf.outer import OuterOptimizer
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
    φ (``UnrolledUpdate`` or ``OnlineUpdate``, each with the one finite guard ``where``), and
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
        # φ's (then θ_0's) outer optimizer as a pure update of tensors (ml3tf.outer).
        self.outer = [OuterOptimizer(self.optimizer)] if config.learns_loss else []
        if self.init_optimizer is not None:
            self.outer.append(OuterOptimizer(self.init_optimizer))
        rule = OnlineUpdate if config.meta_update == "online" else UnrolledUpdate
        self.update = rule(self)
        #: The inner loop ``unroll_loop`` stands for (``resolve_loop``): under XLA the meta-batch's
        #: tasks run one after the other in one graph, so "auto" counts their unrolls.
        self.unroll_loop = resolve_loop(
            config.unroll_loop, config.inner_steps, config.jit_compile, config.meta_batch_size
        )
        # Traced once; a chunk calls it once per seed and step (autograph is not needed: the
        # loops are explicit tf.while_loop, and converting the code would double the trace).
        self._step_fn = tf.function(self._one_step, autograph=False)
        self._compiled_chunk = tf.function(self._chunk, jit_compile=config.jit_compile, autograph=False)
        self._draw = tf.function(self._draw_params0, autograph=False)
        self._distributed_fn = tf.function(self._distributed_step, autograph=False)

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

    @property
    def n_phi(self) -> int:
        """How many of ``meta_variables`` are φ (the rest are θ_0)."""
        return len(self.meta_loss.trainable_variables) if self.config.learns_loss else 0

    def inner_loss_fn(self, data: dict, phi: list | None = None):
        """``(θ, state) ↦ (mean M_φ(features(f_θ, support)), new_state)``.

        ``phi``: the loss network's weights as tensors, trainable then non-trainable (default:
        its variables' current values), so that a compiled step can thread φ as a value.
        With ``method=maml`` the inner loss is the task's baseline loss instead
        (``task.baseline_inner_loss``, e.g. MSE).
        """
        if not self.config.learns_loss:
            return lambda params, state: self.task.baseline_inner_loss(self.learner, params, state, data)
        model = self.meta_loss
        phi = self._phi() if phi is None else list(phi)
        weights = [*model.trainable_variables, *model.non_trainable_variables]
        mapping = list(zip(weights, phi, strict=True))

        def loss_fn(params, state):
            feats, new_state = self.task.meta_loss_inputs(self.learner, params, state, data)
            # ``model.stateless_call``, but through ``__call__``: a subclassed loss network that
            # creates its weights in __init__ is built by its first call, as a plain call does.
            with keras.StatelessScope(state_mapping=mapping):
                per_example = model(feats)
            return tf.reduce_mean(per_example), new_state

        return loss_fn

    def adapt(self, params0: list, data: dict, state: list | None = None, phi: list | None = None):
        """θ_K after ``config.inner_steps`` differentiable steps on the learned loss (φ = ``phi``,
        default the loss network's current weights)."""
        cfg = self.config
        state = self.learner.state() if state is None else state
        phi = self._phi() if phi is None else list(phi)
        return unroll(
            self.inner_loss_fn(data, phi),
            params0,
            self.inner_optimizer,
            cfg.inner_steps,
            state=state,
            loop=self.unroll_loop,
            backprop=cfg.backprop,
            segment_length=cfg.segment_length,
            truncate_steps=cfg.truncate_steps,
            first_order=cfg.first_order,
            captured=phi if cfg.learns_loss else (),
        )

    def initial_params(self, init_seeds: Any) -> list[list[tf.Tensor]]:
        """θ_0 of each task in the meta-batch from its stateless seed (``init_seeds``: ``(B, 2)``)."""
        return [self.learner.init_params(init_seeds[b]) for b in range(int(np.shape(init_seeds)[0]))]

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

    def task_objective(
        self, one: TaskBatch, params0: list, phi: list | None = None, state: list | None = None
    ) -> tuple[tf.Tensor, ...]:
        """One task: ``(β·L_task + γ·L_extra, L_task, L_extra, inner loss at θ_0)`` after adapting θ_0."""
        res = self.adapt(params0, one.support, state, phi)
        total, lt, le = self.query_objective(res.params, res.state, one.query, one.extra)
        return total, lt, le, tf.cast(res.initial_loss, lt.dtype)

    def objective(
        self, batch: TaskBatch, init_seeds: Any, values: SeedValues | None = None
    ) -> tuple[tf.Tensor, dict]:
        """Meta-objective averaged over the meta-batch; differentiable w.r.t. φ.

        ``init_seeds`` is an int array ``(B, 2)``: the stateless seeds of each task's θ_0
        (or, already expanded, the list of θ_0 from ``initial_params``). When θ_0 is
        meta-learned (``maml``, ``ml3+maml``) every task starts from θ_0 instead, so that the
        gradient reaches it. ``values``: φ, θ_0 and the learner's state as tensors
        (``SeedValues``; default this trainer's variables). With ``config.vectorize_meta_batch``
        and B > 1 the B tasks run as one batched computation (``tf.vectorized_map``); otherwise,
        and always under ``jit_compile`` (where XLA fuses the loop), one after the other.
        """
        values = self.values() if values is None else values
        b = batch.batch_size
        phi = [*values.params[: self.n_phi], *values.phi_state]
        if self.config.learns_init:
            params0s = [list(values.params[self.n_phi :])] * b
        elif isinstance(init_seeds, list):
            params0s = init_seeds
        else:
            params0s = self.initial_params(init_seeds)
        state = list(values.learner_state)
        # Under XLA the per-task loop is fused anyway, and the vectorised second-order
        # step was measured at ~650 ms per call against ~2 ms looped (bench/scale.py).
        if self.config.vectorize_meta_batch and not self.config.jit_compile and b > 1:
            stacked = [tf.stack(p) for p in zip(*params0s, strict=True)]

            def one(args):
                support, query, extra, params0 = args
                return self.task_objective(TaskBatch(support, query, extra), list(params0), phi, state)

            parts = tf.vectorized_map(one, (batch.support, batch.query, batch.extra, stacked))
            total, lt, le, first = (tf.reduce_mean(p) for p in parts)
        else:
            per_task = [self.task_objective(batch.task(i), params0s[i], phi, state) for i in range(b)]
            total, lt, le, first = (tf.add_n(list(p)) / b for p in zip(*per_task, strict=True))
        return total, {"task_loss": lt, "extra_loss": le, "initial_loss": first}

    def meta_gradient(
        self, batch: TaskBatch, init_seeds: Any, values: SeedValues | None = None
    ) -> tuple[list, MetaStepInfo]:
        """Gradient of the meta-objective w.r.t. ``meta_variables`` (or, given ``values``, w.r.t.
        ``values.params``), eager unless called in a graph."""
        values = self.values() if values is None else values
        with tf.GradientTape() as tape:
            tape.watch(values.params)
            total, parts = self.objective(batch, init_seeds, values)
        grads = self.meta_gradients(tape, total, list(values.params))
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
        n_phi = self.n_phi
        for name, part in (("loss network φ", grads[:n_phi]), ("initialisation θ_0", grads[n_phi:])):
            if part and all(g is None for g in part):
                raise ValueError(
                    f"task {self.task.name!r}: the meta-objective does not depend on any weight of the "
                    f"{name} (all {len(part)} gradients are None), so meta-training could never move it. "
                    "Likely cause: the loss features do not depend on the learner's params (a "
                    "tf.stop_gradient on the prediction, or features computed from data only)"
                )
        return [
            tf.zeros(v.shape, tf.as_dtype(v.dtype)) if g is None else g
            for g, v in zip(grads, variables, strict=True)
        ]

    # --- φ (and θ_0) as values, the outer update, and the one finite guard ---------------------
    def values(self) -> SeedValues:
        """This trainer's φ, θ_0 (``meta_variables``), optimizer moments and constants as tensors."""
        return SeedValues(
            params=[tf.convert_to_tensor(v) for v in self.meta_variables],
            slots=[o.read() for o in self.outer],
            phi_state=[tf.convert_to_tensor(v) for v in self.meta_loss.non_trainable_variables],
            learner_state=self.learner.state(),
        )

    def assign(self, values: SeedValues) -> None:
        """Store ``values`` (params and optimizer slots) in this trainer's variables."""
        for v, x in zip(self.meta_variables, values.params, strict=True):
            v.assign(x)
        for o, slots in zip(self.outer, values.slots, strict=True):
            o.write(slots)

    def _phi(self) -> list[tf.Tensor]:
        m = self.meta_loss
        return [tf.convert_to_tensor(v) for v in [*m.trainable_variables, *m.non_trainable_variables]]

    def updated(self, values: SeedValues, grads: list) -> SeedValues:
        """``values`` after one outer update with ``grads``: φ's part by φ's optimizer, θ_0's part by
        θ_0's (``ml3tf.outer``: Keras' Adam/SGD arithmetic on tensors)."""
        n = self.n_phi
        parts = ([(0, n)] if n else []) + ([(n, len(values.params))] if self.config.learns_init else [])
        params, slots = list(values.params), []
        for (lo, hi), opt, opt_slots in zip(parts, self.outer, values.slots, strict=True):
            params[lo:hi], new = opt.apply(grads[lo:hi], params[lo:hi], opt_slots)
            slots.append(new)
        return values._replace(params=params, slots=slots)

    @staticmethod
    def where(ok: tf.Tensor, new: SeedValues, old: SeedValues) -> SeedValues:
        """The one finite guard: ``new`` where ``ok``, else ``old`` (φ and the moments untouched)."""
        pick = lambda a, b: tf.where(ok, a, b)  # noqa: E731
        return old._replace(
            params=tf.nest.map_structure(pick, list(new.params), list(old.params)),
            slots=tf.nest.map_structure(pick, list(new.slots), list(old.slots)),
        )

    # --- wrappers: eager, compiled, chunked, distributed ---------------------------------------
    def init_seeds(self, step: int, batch_size: int | None = None) -> np.ndarray:
        """Stateless seeds ``(B, 2)`` (int64, ``ml3tf.seeds``) of the learners' θ_0 at ``step``;
        with ``learner_init="fixed"`` the seeds of step 0, whatever ``step``."""
        b = self.config.meta_batch_size if batch_size is None else batch_size
        return meta_train_seeds(self.config.seed, step, b, fixed=self.config.learner_init == "fixed")

    def _draw_params0(self, seeds: tf.Tensor) -> list[tf.Tensor]:
        """θ_0 of every seed in ``seeds`` ``(N, 2)``, stacked ``(N, …)``: one traced draw mapped over
        the seeds, in the plain graph (XLA's stateless RNG draws other numbers)."""
        signature = [tf.TensorSpec(s, tf.as_dtype(keras.config.floatx())) for s in self.learner.shapes]
        return tf.map_fn(self.learner.init_params, seeds, fn_output_signature=signature)

    def _one_step(self, values: SeedValues, support, query, extra, params0, enabled):
        """``(values, info, finite)`` of one meta-step of one seed (``params0``: θ_0 stacked ``(B, …)``)."""
        b = int(tf.nest.flatten(support)[0].shape[0])
        params0s = [[p[i] for p in params0] for i in range(b)] if params0 else None
        return self.update(values, support, query, extra, params0s, enabled)

    def _chunk(self, trainers_values, support, query, extra, params0, step_fn=None):
        """``count`` meta-steps of each of S seeds in one graph (every array carries a leading step
        axis, per seed); the seeds are independent computations of one traced step, so each
        equals its seed's run alone. After a seed's non-finite step no further update is
        applied to it; ``oks[s][i]`` says whether step i of seed s was applied."""
        step_fn = self._step_fn if step_fn is None else step_fn
        seeds = len(trainers_values)
        n = int(tf.nest.flatten(support[0])[0].shape[0])
        fields = len(MetaStepInfo._fields)
        traces = [tuple(tf.TensorArray(tf.float64, size=n) for _ in range(fields)) for _ in range(seeds)]
        oks = [tf.TensorArray(tf.bool, size=n) for _ in range(seeds)]

        def body(i, values, ok, traces, oks):
            values, ok, traces, oks = list(values), list(ok), list(traces), list(oks)
            for s in range(seeds):
                pick = lambda d: {k: v[i] for k, v in d.items()}  # noqa: E731
                p0 = [p[i] for p in params0[s]]
                values[s], info, step_ok = step_fn(
                    values[s], pick(support[s]), pick(query[s]), pick(extra[s]), p0, ok[s]
                )
                ok[s] = ok[s] & step_ok
                traces[s] = tuple(
                    t.write(i, tf.cast(v, tf.float64)) for t, v in zip(traces[s], info, strict=True)
                )
                oks[s] = oks[s].write(i, ok[s])
            return i + 1, values, ok, traces, oks

        start = (tf.constant(0), list(trainers_values), [tf.constant(True)] * seeds, traces, oks)
        _, values, _, traces, oks = tf.while_loop(lambda i, *_: i < n, body, start, maximum_iterations=n)
        infos = [MetaStepInfo(*(t.stack() for t in tr)) for tr in traces]
        return values, infos, [o.stack() for o in oks]

    def _distributed_step(self, values):
        """One meta-step under ``self.strategy``: each replica takes B/R tasks; the per-replica
        meta-gradients (means over their tasks) are averaged, then one update is applied to the
        mirrored φ in cross-replica context."""

        def replica(args):
            support, query, extra, seeds = args
            return self.meta_gradient(TaskBatch(support, query, extra), self.initial_params(seeds))

        grads, info = self.strategy.run(replica, args=(values,))
        mean = tf.distribute.ReduceOp.MEAN
        grads = [self.strategy.reduce(mean, g, axis=None) for g in grads]
        info = MetaStepInfo(*(self.strategy.reduce(mean, v, axis=None) for v in info))
        info = info._replace(meta_grad_norm=tf.linalg.global_norm(grads))
        ok = finite(info)
        old = self.values()
        self.assign(self.where(ok, self.updated(old, grads), old))
        return info, ok

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
            return self._run_distributed(self._distributed_step, batch, step)
        return _one(self._run_local([self], [[batch]], [[step]], compiled=False))[0]

    def step(self, batch: TaskBatch, step: int) -> MetaStepInfo:
        """One compiled outer update of φ (``tf.function``, XLA if configured)."""
        if self.distributed:
            return self._run_distributed(self._distributed_fn, batch, step)
        return _one(self._run_local([self], [[batch]], [[step]]))[0]

    def run_steps(self, first_step: int, count: int) -> list[MetaStepInfo]:
        """Meta-steps ``first_step … first_step + count − 1`` in one compiled call.

        The task's batches for those steps are sampled here and stacked; the loop over
        them runs inside the graph (one Python round trip instead of ``count``; with
        ``jit_compile`` one XLA computation: gradients, outer updates and the guard). The
        task's ``before_meta_steps(trainer, first_step, count)`` runs first, outside the graph.

        Raises:
            NonFiniteError: naming the first non-finite step; φ holds the updates of
                the steps before it and none after.
        """
        return _one(run_seeds([self], first_step, count))

    def _run_distributed(self, fn, batch: TaskBatch, step: int) -> MetaStepInfo:
        with worker_errors(self.strategy, step):  # multi_worker: a lost worker is one clear error
            info, ok = fn(self._distribute(batch, self.init_seeds(step, batch.batch_size)))
        if not bool(ok):
            raise NonFiniteError.at(step, info)
        return MetaStepInfo(*(float(v) for v in info))

    def _run_local(
        self,
        trainers: list[MetaTrainer],
        batches: list[list[TaskBatch]],
        steps: list[list[int]],
        compiled: bool = True,
    ) -> list[list[MetaStepInfo] | NonFiniteError]:
        """Run ``batches[s]`` (meta-steps ``steps[s]``) of every trainer ``s`` as one chunk; each
        trainer's variables hold its result afterwards. Per seed: its infos, or the
        ``NonFiniteError`` of its first non-finite step (its φ then holds the steps before)."""

        def stack(part: str, s: int) -> dict:
            first = getattr(batches[s][0], part)
            return {
                k: tf.convert_to_tensor(np.stack([getattr(b, part)[k] for b in batches[s]])) for k in first
            }

        params0 = []
        for t, s_steps in zip(trainers, steps, strict=True):
            if self.config.learns_init:
                params0.append([])
                continue
            b = batches[0][0].batch_size
            seeds = np.concatenate([t.init_seeds(s, b) for s in s_steps])
            drawn = self._draw(tf.constant(seeds))
            params0.append([tf.reshape(p, (len(s_steps), b, *p.shape[1:])) for p in drawn])
        args = (
            [t.values() for t in trainers],
            [stack("support", s) for s in range(len(trainers))],
            [stack("query", s) for s in range(len(trainers))],
            [stack("extra", s) for s in range(len(trainers))],
            params0,
        )
        if compiled:
            values, infos, oks = self._compiled_chunk(*args)
        else:
            values, infos, oks = self._chunk(*args, step_fn=self._one_step)
        out: list[list[MetaStepInfo] | NonFiniteError] = []
        for t, v, info, ok, s_steps in zip(trainers, values, infos, oks, steps, strict=True):
            t.assign(v)
            rows = np.stack([x.numpy() for x in info], axis=1)  # (count, fields)
            ok = ok.numpy()
            if not ok.all():
                bad = int(np.argmin(ok))
                out.append(NonFiniteError.at(s_steps[bad], MetaStepInfo(*rows[bad])))
            else:
                out.append([MetaStepInfo(*(float(x) for x in row)) for row in rows])
        return out


class SeedValues(NamedTuple):
    """One seed's meta-training state as tensors, threaded through a compiled chunk.

    Attributes:
        params: ``meta_variables``' values (φ, then θ_0 with ``learns_init``).
        slots: per outer optimizer (φ's, then θ_0's), its state (``ml3tf.outer``).
        phi_state: the loss network's non-trainable weights (constant during meta-training).
        learner_state: the learner's non-trainable state at θ_0 (``FunctionalModel.state``).
    """

    params: list
    slots: list
    phi_state: list
    learner_state: list


def can_batch_seeds(trainer: MetaTrainer) -> bool:
    """Whether several seeds of ``trainer``'s task and config can share one graph: one device
    and a task without per-seed state between chunks (``before_meta_steps``, ``checkpoint_state``)."""
    task = trainer.task
    return (
        not trainer.distributed
        and type(task).before_meta_steps is Task.before_meta_steps
        and not task.checkpoint_state()
    )


def run_seeds(
    trainers: list[MetaTrainer], first_step: int, count: int
) -> list[list[MetaStepInfo] | NonFiniteError]:
    """Meta-steps ``first_step … first_step + count − 1`` of several seeds as one compiled call.

    ``trainers``: one ``MetaTrainer`` per seed, all of one task and config (but its seed); the
    step is traced once (by the first) and the seeds run side by side in one graph, each
    bit for bit the computation it does alone. Returns per seed its ``MetaStepInfo`` list, or the
    ``NonFiniteError`` of its first non-finite step (that seed's φ then holds the steps before it).

    Example:
        >>> trainers = [MetaTrainer(task, cfg.replace(seed=s)) for s in range(5)]
        >>> infos = run_seeds(trainers, 0, 50)     # 50 meta-steps of 5 seeds, one call
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if not trainers:
        raise ValueError("trainers must hold at least one MetaTrainer")
    lead = trainers[0]
    for t in trainers[1:]:
        if t.task is not lead.task or t.config.replace(seed=lead.config.seed) != lead.config:
            raise ValueError(
                "run_seeds: every trainer must have the task and config of the first (but its seed)"
            )
    if len(trainers) > 1 and not can_batch_seeds(lead):
        raise ValueError(
            f"run_seeds: task {lead.task.name!r} under strategy {lead.config.strategy!r} cannot run several "
            "seeds in one graph (per-seed task state or several devices); run them one after the other"
        )
    steps = list(range(first_step, first_step + count))
    for t in trainers:
        t.task.before_meta_steps(t, first_step, count)
    if lead.distributed:  # one call per step: each step's shards are placed per replica
        t = trainers[0]
        try:
            return [[t.step(t.task.sample(t.config.seed, s, t.config.meta_batch_size), s) for s in steps]]
        except NonFiniteError as exc:
            return [exc]
    batches = [[t.task.sample(t.config.seed, s, t.config.meta_batch_size) for s in steps] for t in trainers]
    return lead._run_local(trainers, batches, [steps] * len(trainers))


# --- the two update rules ----------------------------------------------------------------------
class UnrolledUpdate:
    """``meta_update="unrolled"``: one update per meta-step, differentiated through all K inner
    steps, ``φ ← φ − η ∇_φ mean_b L_b(θ_K(φ))`` (exact)."""

    def __init__(self, trainer: MetaTrainer) -> None:
        self.trainer = trainer

    def __call__(self, values: SeedValues, support, query, extra, params0s, enabled=True):
        """``(values, info, finite)`` of one meta-step; ``values`` updated when finite and ``enabled``."""
        t = self.trainer
        grads, info = t.meta_gradient(TaskBatch(support, query, extra), params0s, values)
        ok = finite(info)
        return t.where(tf.convert_to_tensor(enabled) & ok, t.updated(values, grads), values), info, ok


class OnlineUpdate:
    """``meta_update="online"``: for each task in turn, θ_0 fresh, a φ update after every inner
    step, differentiated through that one step only (θ_k held constant):

        θ_{k+1} = opt(θ_k, ∇_θ M_φ(θ_k));    φ ← φ − η ∇_φ [β L_task(θ_{k+1}) + γ L_extra(θ_{k+1})]

    B·K updates of φ per meta-step; memory independent of K. A non-finite sub-update stops
    the updates and puts φ and the outer optimizer back to where they were before the meta-step.
    """

    def __init__(self, trainer: MetaTrainer) -> None:
        self.trainer = trainer

    def gradient(self, values: SeedValues, params, state, opt_state, support, query, extra):
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
        phi_params = list(values.params)
        with tf.GradientTape() as tape:
            tape.watch(phi_params)
            phi = [*phi_params, *values.phi_state]
            params, state, opt_state, inner = inner_step(
                t.inner_loss_fn(support, phi), params, state, t.inner_optimizer, opt_state
            )
            total, lt, le = t.query_objective(params, state, query, extra)
        grads = t.meta_gradients(tape, total, phi_params)
        info = MetaStepInfo(total, lt, le, inner, tf.linalg.global_norm(grads))
        params = [stop(p) for p in params]
        opt_state = tf.nest.map_structure(stop, opt_state)
        return grads, params, [stop(s) for s in state], opt_state, info

    def __call__(self, values: SeedValues, support, query, extra, params0s, enabled=True):
        """``(values, info, finite)`` of one meta-step. The info averages over the meta-batch:
        objective, task_loss and extra_loss at θ_K (the last sub-update of each task),
        initial_loss at θ_0, meta_grad_norm the mean over the B·K sub-updates."""
        t = self.trainer
        saved = values
        enabled = tf.convert_to_tensor(enabled)
        k_steps = t.config.inner_steps

        def sub_update(values, params, state, opt_state, ok, data):
            grads, params, state, opt_state, info = self.gradient(values, params, state, opt_state, *data)
            ok = ok & finite(info)
            values = t.where(enabled & ok, t.updated(values, grads), values)
            return values, params, state, opt_state, ok, info

        ok = tf.constant(True)
        per_task = []
        for b, params in enumerate(params0s):
            data = tuple({k: v[b] for k, v in d.items()} for d in (support, query, extra))
            state = list(values.learner_state)
            opt_state = t.inner_optimizer.init(params)
            values, params, state, opt_state, ok, info = sub_update(
                values, params, state, opt_state, ok, data
            )
            first_inner, norm_sum = info.initial_loss, info.meta_grad_norm
            if t.unroll_loop == "python":
                for _ in range(k_steps - 1):
                    values, params, state, opt_state, ok, info = sub_update(
                        values, params, state, opt_state, ok, data
                    )
                    norm_sum = norm_sum + info.meta_grad_norm
            elif k_steps > 1:

                def body(i, v, p, s, o, ok, info, norm_sum, data=data):
                    v, p, s, o, ok, info = sub_update(v, p, s, o, ok, data)
                    return i + 1, v, p, s, o, ok, info, norm_sum + info.meta_grad_norm

                loop = (tf.constant(1), values, params, state, opt_state, ok, info, norm_sum)
                _, values, params, state, opt_state, ok, info, norm_sum = tf.while_loop(
                    lambda i, *_: i < k_steps, body, loop, maximum_iterations=k_steps - 1
                )
            per_task.append(
                (info.objective, info.task_loss, info.extra_loss, first_inner, norm_sum / k_steps)
            )
        # A non-finite sub-update puts φ and the moments back to where the meta-step began.
        values = t.where(enabled & tf.logical_not(ok), saved, values)
        means = [tf.add_n(list(col)) / len(per_task) for col in zip(*per_task, strict=True)]
        return values, MetaStepInfo(*means), ok


def _one(results: list[list[MetaStepInfo] | NonFiniteError]) -> list[MetaStepInfo]:
    """The infos of a one-seed run; its ``NonFiniteError`` raised."""
    if isinstance(results[0], NonFiniteError):
        raise results[0]
    return results[0]
