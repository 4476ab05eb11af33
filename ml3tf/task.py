"""The Task contract: the one interface between ``tasks/`` and the algorithm (an ABC).

A task says what is sampled, what the learner is, what the loss network sees and
what "good" means. ML3's meta-objective for one meta-step is

    θ_K = unroll_K(θ_0; ∇_θ mean M_φ(task.meta_loss_inputs(f_θ, support)))
    L   = β · task.task_loss(f_{θ_K}, query) + γ · task.extra_loss(f_{θ_K}, query, extra)

and everything outside those two lines (sampling, evaluation) belongs to the task.
``Task`` declares every hook ``MetaTrainer``, ``ml3tf.train`` and the meta-test engine
(``ml3tf.engine``) call; ``SupervisedTask`` implements it for regression/classification-style
problems, where the loss network sees ``(ŷ, y)``.

Example:
    >>> from ml3tf import tasks
    >>> task = tasks.get("sine")
    >>> isinstance(task, Task), task.describe_options()["mode"]
    (True, 'paper')
"""

from __future__ import annotations

import abc
import dataclasses
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
import tensorflow as tf

from ml3tf.engine import architecture_key
from ml3tf.functional import FunctionalModel

if TYPE_CHECKING:  # pragma: no cover
    from ml3tf.config import MetaTrainConfig

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


class Task(abc.ABC):
    """The contract between a problem family and the algorithm: every hook ``MetaTrainer``,
    ``ml3tf.train`` and the meta-test engine may call is declared here, with its default.

    Names, the same from code to CLI flags to JSON: the **learner** f is the network trained in
    the inner loop (here always its functional view, a ``FunctionalModel``), **params** θ its
    weights as tensors, **state** its non-trainable variables (BatchNorm statistics), the
    **meta-loss** M_φ the loss network, **task_loss** L_task, **extra_loss** L_extra,
    **baseline_loss** the hand-written loss the learned one is compared with; the
    **initial_loss** is the inner loss at θ₀ (what a meta-step reports beside L_task).

    Required: ``name``, ``default_config``, ``sample``, ``make_learner``, ``make_meta_loss``,
    ``meta_loss_inputs``, ``task_loss``, ``evaluate``. The data a task generates is defined by
    its ``options`` (an instance of its ``Options`` dataclass, set in ``__init__``):
    ``describe_options`` returns them, and they are part of a run's resume identity for every
    task by construction (a run folder cannot be resumed with other options).
    """

    name: str = "task"
    #: The dataclass of the task's options; ``self.options`` holds an instance.
    Options: type = None  # type: ignore[assignment]
    #: What meta-test reports: the metric's name, the baseline's name, and the direction.
    metric_name: str = "loss"
    baseline_name: str = "baseline"
    higher_is_better: bool = False

    # --- required ---------------------------------------------------------------------
    @abc.abstractmethod
    def default_config(self) -> MetaTrainConfig:
        """The paper-faithful meta-training configuration for this task."""

    @abc.abstractmethod
    def sample(self, seed: int, step: int, batch_size: int) -> TaskBatch:
        """Meta-training data for ``step``; deterministic in ``(seed, step)`` (resumable)."""

    @abc.abstractmethod
    def make_learner(self) -> keras.Model:
        """A built learner network ``f_θ``."""

    @abc.abstractmethod
    def make_meta_loss(self) -> keras.Model:
        """A built loss network ``M_φ`` (features → per-example loss)."""

    @abc.abstractmethod
    def meta_loss_inputs(
        self, learner: FunctionalModel, params: list, state: list, data: Data
    ) -> tuple[tf.Tensor, list]:
        """Features ``(N, F)`` the loss network sees at θ = ``params``, and the learner's new state."""

    @abc.abstractmethod
    def task_loss(self, learner: FunctionalModel, params: list, state: list, data: Data) -> tf.Tensor:
        """The real objective L_task after the inner steps (scalar)."""

    @abc.abstractmethod
    def evaluate(
        self,
        meta_losses: list[keras.Model],
        config: MetaTrainConfig,
        seeds: list[int],
        steps: int | None = None,
    ) -> dict:
        """Meta-test (through ``ml3tf.engine.MetaTestEngine``): fresh learners trained on each
        meta-loss vs the baseline; the results.json schema.

        ``meta_losses[i]`` belongs to ``seeds[i]`` (or one loss serves all seeds); ``steps``
        defaults to ``config.eval_steps``; learners adapt with ``config.inner_optimizer``.
        """

    # --- optional, with defaults ---------------------------------------------------------
    def extra_loss(
        self, learner: FunctionalModel, params: list, state: list, data: Data, extra: Data
    ) -> tf.Tensor | None:
        """L_extra (meta-train-time information), or ``None`` (the default): the task has none."""
        return None

    def baseline_inner_loss(
        self, learner: FunctionalModel, params: list, state: list, data: Data
    ) -> tuple[tf.Tensor, list]:
        """``(baseline_loss at θ, new_state)`` on the support set: the inner loss of ``method='maml'``.

        The default raises: a task without a hand-written baseline cannot run MAML.
        """
        raise ValueError(f"method='maml' needs a task with a baseline loss; task {self.name!r} has none")

    def before_meta_steps(self, trainer: Any, first_step: int, count: int) -> None:
        """Called by ``MetaTrainer.run_steps`` before each compiled chunk of meta-steps, outside
        the graph: a task may change what its compiled functions read (variables only, e.g. a
        refitted dynamics model). Default: nothing."""
        return None

    def checkpoint_state(self) -> dict[str, Any]:
        """Trackables (variables, Keras models/optimizers, ``tf.train.experimental.PythonState``)
        saved with every checkpoint and restored on resume, for tasks whose meta-training state is
        more than φ (default: none). The objects are live (restored in place); anything built
        lazily must exist when this returns; values are read at save time."""
        return {}

    def restore_state(self, step: int, restored: bool) -> None:
        """Called after a resume from the checkpoint of ``step`` (0: a fresh run); ``restored``:
        whether ``checkpoint_state()`` was found in it (``False`` for checkpoints written
        before the task had state)."""
        return None

    def describe_options(self) -> dict[str, Any]:
        """The task's options as a JSON-able dict (``dataclasses.asdict(self.options)``): written to
        config.json and results.json, and compared on resume."""
        options = getattr(self, "options", None)
        if options is None or not dataclasses.is_dataclass(options):
            raise ValueError(
                f"task {self.name!r} has no options dataclass: set self.options = self.Options(...) in "
                "__init__ (its fields define the task's data and its runs' resume identity)"
            )
        return dataclasses.asdict(options)


class SupervisedTask(Task):
    """Base class for tasks where the loss network sees ``(ŷ, y)``.

    Subclasses provide ``make_learner``, ``make_meta_loss``, ``sample``,
    ``default_config`` and ``eval_splits(seed)``; they may override ``prediction_loss``
    (L_task on predictions, MSE here), ``eval_metric`` (what meta-test reports as
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

    # --- a task from the user's own data -------------------------------------------
    @staticmethod
    def from_arrays(
        x: Any, y: Any, learner: Any, *, kind: str = "regression", **options: Any
    ) -> SupervisedTask:
        """A task drawn from your arrays, training your Keras model (``ml3tf.tasks.user_data``).

        Support sets are random mini-batches of the training rows, query sets random rows of a
        held-out validation split (``validation_data=(x_val, y_val)``, or ``validation_split``
        of the rows); ``x`` and ``y`` may be lists of data sets (a multi-task distribution).
        ``learner``: a built Keras model (cloned and re-initialised) or a function building one.
        Other options: ``test_data``, ``batch_size``, ``query_size``, ``eval_tasks``,
        ``eval_rows``, ``from_logits``, ``meta_loss_hidden``, ``meta_loss_init``, ``name``.

        Example:
            >>> task = ml3tf.SupervisedTask.from_arrays(x, y, learner=model, kind="classification")
            >>> run = ml3tf.train(task, task.default_config(), out_dir="runs/mine")
        """
        from ml3tf.tasks.user_data import UserDataTask

        return UserDataTask(x, y, learner, kind=kind, **options)

    @staticmethod
    def from_dataset(
        dataset: Any, learner: Any, *, kind: str = "regression", validation_data: Any = None, **options: Any
    ) -> SupervisedTask:
        """``from_arrays`` on the rows of a finite ``tf.data.Dataset`` of ``(x, y)`` (batched or
        not); ``validation_data`` and ``test_data`` may be data sets too.

        Example:
            >>> ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
            >>> task = ml3tf.SupervisedTask.from_dataset(ds, learner=model, kind="regression")
        """
        from ml3tf.data import dataset_arrays

        x, y = dataset_arrays(dataset, "dataset")
        if isinstance(validation_data, tf.data.Dataset):
            validation_data = dataset_arrays(validation_data, "validation_data")
        if isinstance(options.get("test_data"), tf.data.Dataset):
            options["test_data"] = dataset_arrays(options["test_data"], "test_data")
        return SupervisedTask.from_arrays(
            x, y, learner, kind=kind, validation_data=validation_data, **options
        )

    # --- what the loss network sees and what is optimised --------------------------
    def loss_features(self, y_pred: tf.Tensor, y_true: tf.Tensor) -> tf.Tensor:
        """``[ŷ, y]`` concatenated on the last axis, flattened to ``(N, F)``."""
        y_true = tf.cast(y_true, y_pred.dtype)
        n = tf.shape(y_pred)[0]
        return tf.concat([tf.reshape(y_pred, (n, -1)), tf.reshape(y_true, (n, -1))], axis=-1)

    def prediction_loss(self, y_pred: tf.Tensor, y_true: tf.Tensor) -> tf.Tensor:
        """L_task on predictions (mean squared error here): ``task_loss`` is this at f_θ(x)."""
        return tf.reduce_mean(tf.square(y_pred - tf.cast(y_true, y_pred.dtype)))

    def eval_metric(self, y_pred: tf.Tensor, y_true: tf.Tensor) -> tf.Tensor:
        """The metric meta-test reports (named ``metric_name``); by default ``metric``."""
        return self.prediction_loss(y_pred, y_true)

    def baseline_loss(self, y_pred: tf.Tensor, y_true: tf.Tensor) -> tf.Tensor:
        """The hand-written loss the learned one is compared with (MSE)."""
        return self.prediction_loss(y_pred, y_true)

    def meta_loss_inputs(self, learner, params, state, data):
        y_pred, new_state = learner.apply(params, data["x"], state, training=True)
        return self.loss_features(y_pred, data["y"]), new_state

    def task_loss(self, learner, params, state, data):
        y_pred, _ = learner.apply(params, data["x"], state, training=True)
        return self.prediction_loss(y_pred, data["y"])

    def baseline_inner_loss(self, learner, params, state, data):
        """``(baseline_loss(f_θ(x), y), new_state)``: MAML's inner loss on the support set."""
        y_pred, new_state = learner.apply(params, data["x"], state, training=True)
        return self.baseline_loss(y_pred, data["y"]), new_state

    # --- meta-test --------------------------------------------------------------
    def eval_splits(self, seed: int) -> dict[str, tuple[np.ndarray, ...]]:
        """``{split: (x (T,N,…), y (T,N,…))}`` of meta-test tasks for ``seed``.

        A split may also be ``(x, y, x_query, y_query)``: learners train on ``(x, y)``
        and the metric is measured on the held-out ``(x_query, y_query)``.
        """
        raise NotImplementedError(f"task {self.name!r} does not define eval_splits")

    def _split_curves(
        self, engine, key, loss, metric, seeds, splits, phis, inits
    ) -> list[dict[str, np.ndarray]]:
        """Per seed, per split, the mean curve over its tasks: the splits of every seed with equal
        shapes run as one batch of learners.

        ``splits[i]``: seed ``seeds[i]``'s ``eval_splits``; ``phis``: one φ (``phi_of``) shared by
        all, or with several seeds one per seed (each seed's learners then descend their own,
        ``phi_per_learner``); ``inits[i]``: one θ₀ (list of arrays) every task of seed i starts
        from, or ``None`` for fresh Xavier inits (``engine.initial_params(seed, count)``).
        """
        layouts = [[(n, [np.shape(a)[1:] for a in arrays]) for n, arrays in sp.items()] for sp in splits]
        if any(layout != layouts[0] for layout in layouts[1:]):  # seeds of other shapes: one by one
            return [
                self._split_curves(
                    engine, key, loss, metric, [seed], [sp], [phis[min(i, len(phis) - 1)]], [init]
                )[0]
                for i, (seed, sp, init) in enumerate(zip(seeds, splits, inits, strict=True))
            ]
        groups: dict[tuple, list[str]] = {}
        for i, seed_splits in enumerate(splits):
            for name, arrays in seed_splits.items():
                if len(arrays) not in (2, 4):
                    raise ValueError(
                        f"split {name!r} must be (x, y) or (x_s, y_s, x_q, y_q), got {len(arrays)}"
                    )
                group = groups.setdefault(tuple(np.shape(a)[1:] for a in arrays), [])
                if i == 0:
                    group.append(name)
        per_learner = len(phis) > 1
        out: list[dict[str, np.ndarray]] = [{} for _ in seeds]
        for names in groups.values():
            n_cols = len(splits[0][names[0]])
            cols, params0, phi, counts = [[] for _ in range(n_cols)], [], [], []
            for i, seed in enumerate(seeds):
                for c in range(n_cols):
                    cols[c].extend(splits[i][n][c] for n in names)
                count = sum(len(splits[i][n][0]) for n in names)
                counts.append(count)
                p0 = engine.initial_params(seed, count) if inits[i] is None else engine.stack(inits[i], count)
                params0.append(p0)
                if per_learner:
                    phi.append([tf.stack([w] * count) for w in phis[i]])
            cols = [np.concatenate(c) for c in cols]
            data = {"x": cols[0], "y": cols[1]}
            if n_cols == 4:
                data.update(xq=cols[2], yq=cols[3])
            params0 = [tf.concat(p, 0) for p in zip(*params0, strict=True)]
            phi = [tf.concat(w, 0) for w in zip(*phi, strict=True)] if per_learner else phis[0]
            total = sum(counts)
            state = [tf.stack([s] * total) for s in engine.learner.state()]
            c, _ = engine.run(
                (key, n_cols), loss, metric, params0, data, phi, state, phi_per_learner=per_learner
            )
            start = 0
            for i in range(len(seeds)):
                for n in names:
                    size = len(splits[i][n][0])
                    out[i][n] = c[start : start + size].mean(axis=0)
                    start += size
        return out

    def evaluate(
        self,
        meta_losses: list[keras.Model],
        config: MetaTrainConfig,
        seeds: list[int],
        steps: int | None = None,
        initial_params: list | None = None,
        metric: Any = None,
        metric_name: str | None = None,
    ) -> dict:
        """Train fresh learners with each learned loss and with the baseline, side by side.

        ``meta_losses[i]`` is used for ``seeds[i]`` (one loss for all seeds is fine).
        Learners start from the same Xavier init for both methods and adapt with
        ``config.inner_optimizer`` at ``config.inner_lr`` for ``steps`` (default
        ``config.eval_steps``). ``initial_params`` (one θ₀ per seed, or one for all; MAML):
        the learned arm starts from it instead; with ``meta_losses=[]`` it trains on the
        baseline loss. ``metric`` ``(ŷ, y) ↦ scalar`` (default ``eval_metric``) and
        ``metric_name`` (default ``metric_name``) choose what the curves record.
        """
        from ml3tf.engine import engine_for, per_seed, phi_of, stateless_loss
        from ml3tf.results import summarize

        if not meta_losses and initial_params is None:
            raise ValueError("meta_losses must hold at least one loss network (or give initial_params)")
        losses = per_seed(meta_losses or None, seeds, "meta-losses")
        inits = per_seed(initial_params, seeds, "initial_params")
        engine = engine_for(self, config, steps)
        if inits is not None:
            engine.check_params(inits)
        measure = self.eval_metric if metric is None else metric
        learner = engine.learner

        def metric_fn(params, state, data):
            x, y = (data["xq"], data["yq"]) if "xq" in data else (data["x"], data["y"])
            return measure(learner.apply(params, x, state, training=True)[0], y)

        def baseline(params, state, data, _phi):
            y_pred, new_state = learner.apply(params, data["x"], state, training=True)
            return self.baseline_loss(y_pred, data["y"]), new_state

        def learned_fn(meta_loss):
            mean_m = stateless_loss(meta_loss, self.loss_features)

            def loss(params, state, data, phi):
                y_pred, new_state = learner.apply(params, data["x"], state, training=True)
                return mean_m(phi, y_pred, data["y"]), new_state

            return loss

        metric_key = metric_name or "eval_metric"
        base_cache = self.__dict__.setdefault("_baseline_curves", {})
        start = time.perf_counter()
        splits = [self.eval_splits(seed) for seed in seeds]
        inits = [None] * len(seeds) if inits is None else inits
        if losses is not None:
            arch = {architecture_key(m) for m in losses}
            # Every seed's learners in one run, each with its own φ, where that is faster: on
            # accelerators. On CPU one seed at a time shares φ across its learners (one large
            # matrix product per layer instead of many small ones) and the engine already spreads
            # each run over the cores; that measured faster (bench/sine.py).
            if len(arch) == 1 and len(seeds) > 1 and engine.seeds_together:
                learned = self._split_curves(
                    engine,
                    ("learned", arch.pop(), metric_key),
                    learned_fn(losses[0]),
                    metric_fn,
                    seeds,
                    splits,
                    [phi_of(m) for m in losses],
                    inits,
                )
            else:
                learned = [
                    self._split_curves(
                        engine,
                        ("learned", architecture_key(m), metric_key),
                        learned_fn(m),
                        metric_fn,
                        [seed],
                        [sp],
                        [phi_of(m)],
                        [init],
                    )[0]
                    for m, seed, sp, init in zip(losses, seeds, splits, inits, strict=True)
                ]
        else:
            learned = self._split_curves(
                engine, ("baseline", metric_key), baseline, metric_fn, seeds, splits, [[]], inits
            )
        # A baseline curve never changes: one per seed and engine, the missing seeds in one run.
        missing = [i for i, seed in enumerate(seeds) if (id(engine), metric_key, seed) not in base_cache]
        if missing:
            fresh = self._split_curves(
                engine,
                ("baseline", metric_key),
                baseline,
                metric_fn,
                [seeds[i] for i in missing],
                [splits[i] for i in missing],
                [[]],
                [None] * len(missing),
            )
            for i, curves_i in zip(missing, fresh, strict=True):
                base_cache[(id(engine), metric_key, seeds[i])] = curves_i
        curves: dict[str, dict[str, list[np.ndarray]]] = {}
        for i, seed in enumerate(seeds):
            for split in splits[i]:
                per = curves.setdefault(split, {"learned": [], "baseline": []})
                per["learned"].append(learned[i][split])
                per["baseline"].append(base_cache[(id(engine), metric_key, seed)][split])
        return summarize(
            task=self.name,
            metric=metric_name or self.metric_name,
            higher_is_better=self.higher_is_better,
            baseline=self.baseline_name,
            steps=engine.steps,
            seeds=list(seeds),
            curves=curves,
            config=config.to_dict(),
            wall_seconds=time.perf_counter() - start,
        )
