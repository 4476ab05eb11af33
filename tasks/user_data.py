"""Your own model and data as an ML3 task: ``SupervisedTask.from_arrays`` builds one.

A meta-training task is drawn from the user's data (arrays, or a finite ``tf.data.Dataset``):

    support  a random mini-batch of ``batch_size`` rows of the **training** split
    query    ``query_size`` random rows of the **validation** split (disjoint from training)

The inner steps train a fresh copy of the user's Keras model on the support rows with the
learned loss M_φ; the task loss (MSE for regression, cross-entropy for classification) is
measured on the query rows. The validation split is ``validation_data`` if given, else the
last ``validation_split`` fraction of a fixed permutation of the rows (the same for every
seed, so the data identity of a run does not depend on its seed). Several data sets
(``x`` and ``y`` as lists) give a multi-task distribution: each task draws one of them.

What the loss network sees is exactly what ``ml3tf.LearnedLoss`` of the same kind feeds it
in ``model.compile(loss=...)``:

    regression      (ŷ_ij, y_ij) per output element, shifted and scaled by the training targets'
                    mean and standard deviation (fixed, saved inside the loss network)
    classification  [p_i, onehot(y_i)]: class probabilities (softmax of the logits, or the
                    model's own probabilities; one sigmoid column p ↦ [1 − p, p]) and the label

Meta-test (``evaluate``, ``ml3tf train`` / ``ml3tf eval``) trains ``eval_tasks`` fresh learners
per seed for ``eval_steps`` full-batch steps on ``eval_rows`` training rows, with the learned
loss and with the hand-written one, and measures MSE / accuracy on the validation split
(``train``) and on ``test_data`` if given (``test``).

Example:
    >>> import keras, numpy as np, ml3tf
    >>> x = np.random.rand(500, 8).astype("float32"); y = x.sum(1, keepdims=True)
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(32, "relu"), keras.layers.Dense(1)])
    >>> task = ml3tf.SupervisedTask.from_arrays(x, y, learner=model, kind="regression")
    >>> task.sample(seed=0, step=0, batch_size=2).support["x"].shape
    (2, 32, 8)
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ml3tf.data import as_rows, fingerprint, layers_of, outputs_logits
from ml3tf.functional import FunctionalModel
from ml3tf.losses import LearnedLoss, default_meta_loss, fit_to_baseline, log_probabilities, prediction_loss
from ml3tf.meta_trainer import MetaTrainConfig
from ml3tf.task import SupervisedTask, TaskBatch

log = logging.getLogger("ml3tf")

KINDS = ("regression", "classification")
META_LOSS_INITS = ("random", "baseline")
_TRAIN_STREAM, _EVAL_STREAM, _SPLIT_STREAM = 0, 1, 2
#: Layers a learner is known to run with (tested); others are tried and refused by name if they fail.
TESTED_LAYERS = frozenset(
    {
        "InputLayer", "Dense", "Conv1D", "Conv2D", "Conv3D", "BatchNormalization", "LayerNormalization",
        "Dropout", "Flatten", "Reshape", "Activation", "MaxPooling1D", "MaxPooling2D", "AveragePooling1D",
        "AveragePooling2D", "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalMaxPooling2D",
        "Rescaling", "Normalization", "Concatenate", "Add", "ReLU", "LeakyReLU", "Sequential", "Functional",
    }
)  # fmt: skip
#: Fewest training and validation rows a task can be drawn from.
MIN_ROWS = 2


@dataclass(frozen=True)
class UserDataOptions:
    """Options of a task built from the user's data (``SupervisedTask.from_arrays``)."""

    kind: str = "regression"
    """``regression`` (the loss sees (ŷ, y) pairs) or ``classification`` ([p, one-hot y])."""
    batch_size: int = 32
    """Training rows per task: the support mini-batch the inner steps train on."""
    query_size: int = 256
    """Validation rows per task the task loss is measured on (at most the validation split's size)."""
    eval_tasks: int = 4
    """Meta-test learners per seed."""
    eval_rows: int = 256
    """Training rows each meta-test learner trains on (full batch; at most the training split)."""
    from_logits: bool = True
    """Classification: the learner outputs logits (``False``: probabilities, softmax or sigmoid)."""
    meta_loss_hidden: tuple[int, ...] = (50, 50)
    """Hidden widths of the loss network (ReLU, softplus output)."""
    meta_loss_init: str = "baseline"
    """φ_0: ``baseline`` (the Xavier draw fitted to the hand-written loss first,
    ``ml3tf.losses.fit_to_baseline``: meta-training starts from MSE / CE) or ``random`` (the draw
    as it is, the paper's start: a loss tuned only for K steps from a random network can train a
    long run badly; ``bench/own_data.py`` compares)."""
    validation_split: float = 0.2
    """Fraction of the rows held out as the validation split when no ``validation_data`` is given."""
    num_classes: int = 0
    """Classification: the number of classes (the learner's output width; 2 for one sigmoid column)."""
    outputs: int = 1
    """Regression: target values per row."""
    target_mean: float = 0.0
    """Regression: mean of the training targets (the loss network's input shift)."""
    target_std: float = 1.0
    """Regression: standard deviation of the training targets (its input scale is 1 / this)."""
    data: str = ""
    """sha256 of every array (training, validation, test; shapes, dtypes, values): the data identity."""
    learner: str = ""
    """sha256 of the learner's architecture (its Keras config)."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("batch_size", "query_size", "eval_tasks", "eval_rows", "outputs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if not 0.0 < self.validation_split < 1.0:
            raise ValueError(f"validation_split must be in (0, 1), got {self.validation_split!r}")
        if not self.meta_loss_hidden or any(int(h) < 1 for h in self.meta_loss_hidden):
            raise ValueError(f"meta_loss_hidden must be widths >= 1, got {self.meta_loss_hidden!r}")
        if self.meta_loss_init not in META_LOSS_INITS:
            raise ValueError(f"meta_loss_init must be one of {META_LOSS_INITS}, got {self.meta_loss_init!r}")
        if not (np.isfinite(self.target_std) and self.target_std > 0):
            raise ValueError(f"target_std must be a positive finite number, got {self.target_std!r}")


# --- the user's model -----------------------------------------------------------------------
def architecture(model: keras.Model) -> str:
    """``model``'s Keras config as JSON, its own and its layers' names replaced by their order
    (``dense_3`` is ``#1`` whichever name Keras counted up to): equal for equal architectures."""
    text = json.dumps(keras.saving.serialize_keras_object(model), sort_keys=True, default=str)
    names = [model.name] + [layer.name for layer in layers_of(model)]
    for i, name in sorted(enumerate(names), key=lambda item: -len(item[1])):  # longest first
        text = text.replace(json.dumps(name), json.dumps(f"#{i}"))
    return text


def learner_builder(learner: Any, sample: np.ndarray) -> Callable[[], keras.Model]:
    """A function returning a fresh built copy of ``learner`` (a Keras model, or a function
    building one); the copy is re-initialised by its layers' initialisers."""
    if isinstance(learner, keras.Model):

        def build() -> keras.Model:
            try:
                model = keras.models.clone_model(learner)
            except Exception as exc:
                raise ValueError(
                    f"learner {learner.name!r} cannot be cloned ({type(exc).__name__}: {exc}); pass a "
                    "function that builds the model instead"
                ) from None
            return _built(model, sample)

    elif callable(learner):

        def build() -> keras.Model:
            model = learner()
            if not isinstance(model, keras.Model):
                raise ValueError(f"learner() must return a keras.Model, got {type(model).__name__}")
            return _built(model, sample)

    else:
        raise ValueError(
            f"learner must be a keras.Model or a function returning one, got {type(learner).__name__}"
        )
    return build


def _built(model: keras.Model, sample: np.ndarray) -> keras.Model:
    if not model.built:
        model(sample)
    return model


def check_learner(model: keras.Model, x: np.ndarray) -> tf.Tensor:
    """Run ``model`` as ml3tf's inner loop does (``stateless_call``, training mode, gradient to
    every weight) on rows ``x``; its output. ``ValueError`` naming the layer that cannot."""
    for layer in layers_of(model):
        if getattr(layer, "stateful", False):
            raise ValueError(
                f"learner layer {layer.name!r} ({type(layer).__name__}) is stateful (stateful=True): "
                "a learner's inner steps must be functions of its weights"
            )
    f = FunctionalModel(model)
    params = f.params()
    try:
        with tf.GradientTape() as tape:
            tape.watch(params)
            out, _ = f.apply(params, tf.constant(x), f.state(), training=True)
            total = tf.reduce_sum(tf.cast(out, tf.float32))
        grads = tape.gradient(total, params)
    except Exception as exc:
        untested = [f"{layer.name!r} ({type(layer).__name__})" for layer in layers_of(model)
                    if type(layer).__name__ not in TESTED_LAYERS]  # fmt: skip
        where = f"layer {untested[0]}" if untested else f"model {model.name!r}"
        raise ValueError(
            f"learner {where} cannot run as a stateless function of its weights "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    owners = {id(v): layer for layer in layers_of(model) for v in layer.trainable_variables}
    for v, g in zip(model.trainable_variables, grads, strict=True):
        if g is None:
            layer = owners.get(id(v))
            who = f"layer {layer.name!r} ({type(layer).__name__})" if layer is not None else "the model"
            raise ValueError(
                f"learner weight {v.path!r} of {who} gets no gradient from the model's output: "
                "ml3tf cannot train it (make it non-trainable or remove it)"
            )
    return out


# --- the task --------------------------------------------------------------------------------
class UserDataTask(SupervisedTask):
    """A task drawn from the user's arrays and Keras model (see the module docstring).

    Build it with ``ml3tf.SupervisedTask.from_arrays`` or ``from_dataset``.
    """

    name = "user_data"
    Options = UserDataOptions

    def __init__(
        self,
        x: Any,
        y: Any,
        learner: Any,
        *,
        kind: str = "regression",
        validation_data: tuple[Any, Any] | Sequence[tuple[Any, Any]] | None = None,
        validation_split: float = 0.2,
        test_data: tuple[Any, Any] | None = None,
        batch_size: int = 32,
        query_size: int = 256,
        eval_tasks: int = 4,
        eval_rows: int = 256,
        from_logits: bool | None = None,
        meta_loss_hidden: Sequence[int] = (50, 50),
        meta_loss_init: str = "baseline",
        name: str = "user_data",
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self.name = name
        many = isinstance(x, list) and len(x) > 0 and all(np.ndim(xi) >= 2 for xi in x)  # several data sets
        xs, ys = (list(x), list(y)) if many else ([x], [y])
        if many and (not isinstance(y, (list, tuple)) or len(y) != len(xs)):
            raise ValueError(f"x is a list of {len(xs)} data sets; y must be a list of as many")
        if validation_data is not None:
            vals = list(validation_data) if many else [validation_data]
            if len(vals) != len(xs) or not all(isinstance(v, (tuple, list)) and len(v) == 2 for v in vals):
                raise ValueError("validation_data must be (x_val, y_val)" + (" per data set" if many else ""))
        else:
            if not 0.0 < validation_split < 1.0:
                raise ValueError(f"validation_split must be in (0, 1), got {validation_split!r}")
            vals = None
        tag = (lambda i, s: f"{s}[{i}]") if many else (lambda i, s: s)
        self.train_sets: list[tuple[np.ndarray, np.ndarray]] = []
        self.val_sets: list[tuple[np.ndarray, np.ndarray]] = []
        for i, (xi, yi) in enumerate(zip(xs, ys, strict=True)):
            xa = as_rows(tag(i, "x"), xi)
            ya = as_rows(tag(i, "y"), yi, len(xa))
            if vals is not None:
                xv = as_rows(tag(i, "validation_data x"), vals[i][0])
                yv = as_rows(tag(i, "validation_data y"), vals[i][1], len(xv))
            else:
                rng = np.random.default_rng([0, _SPLIT_STREAM, i])  # fixed: the same split for every seed
                order = rng.permutation(len(xa))
                n_val = round(validation_split * len(xa))
                if n_val < MIN_ROWS or len(xa) - n_val < MIN_ROWS:
                    raise ValueError(
                        f"{tag(i, 'x')} has {len(xa)} rows: too few for validation_split={validation_split} "
                        f"(each split needs >= {MIN_ROWS} rows)"
                    )
                xa, ya, xv, yv = xa[order[n_val:]], ya[order[n_val:]], xa[order[:n_val]], ya[order[:n_val]]
            for part, rows in (("training", len(xa)), ("validation", len(xv))):
                if rows < MIN_ROWS:
                    raise ValueError(
                        f"the {part} split of {tag(i, 'x')} has {rows} rows; it needs >= {MIN_ROWS}"
                    )
            self.train_sets.append((xa.astype(np.float32), ya))
            self.val_sets.append((xv.astype(np.float32), yv))
        shapes = {a[0].shape[1:] for a in self.train_sets + self.val_sets}
        if len(shapes) != 1:
            raise ValueError(f"every data set's rows must have one shape, got {sorted(shapes)}")
        self.test_set = None
        if test_data is not None:
            if not (isinstance(test_data, (tuple, list)) and len(test_data) == 2):
                raise ValueError("test_data must be (x_test, y_test)")
            xt = as_rows("test_data x", test_data[0]).astype(np.float32)
            yt = as_rows("test_data y", test_data[1], len(xt))
            if xt.shape[1:] != self.train_sets[0][0].shape[1:]:
                raise ValueError(
                    f"test_data x rows are {xt.shape[1:]}, x rows are {self.train_sets[0][0].shape[1:]}"
                )
            self.test_set = (xt, yt)

        sample = self.train_sets[0][0][:2]
        self._build = learner_builder(learner, sample)
        model = self._build()
        out = check_learner(model, sample)
        width = int(np.prod(out.shape[1:])) if out.shape.rank > 1 else 1
        if kind == "regression":
            from_logits = False
        elif from_logits is None:
            from_logits = outputs_logits(model)
        all_y = [s[1] for s in self.train_sets + self.val_sets] + (
            [self.test_set[1]] if self.test_set else []
        )
        if kind == "classification":
            num_classes = 2 if width == 1 else width
            if out.shape.rank > 2:
                raise ValueError(
                    f"a classifier must output (N, classes), the learner outputs {tuple(out.shape)}"
                )
            for ya in all_y:
                _check_labels(ya, num_classes, width)
            self.num_classes = num_classes
            target_mean, target_std, outputs = 0.0, 1.0, 1
        else:
            outputs = width
            for ya in all_y:
                if int(np.prod(ya.shape[1:])) != width:
                    per_row = int(np.prod(ya.shape[1:]))
                    raise ValueError(f"y has {per_row} target values per row, the learner outputs {width}")
            train_y = np.concatenate([s[1].reshape(len(s[1]), -1) for s in self.train_sets]).astype(
                np.float64
            )
            target_mean = float(train_y.mean())
            target_std = float(train_y.std()) or 1.0
            self.num_classes = 0
        self.out_shape = tuple(out.shape[1:])
        conv = keras.layers.Conv1D | keras.layers.Conv2D | keras.layers.Conv3D
        self.has_conv = any(isinstance(layer, conv) for layer in layers_of(model))
        self.width = width
        arrays = [a for s in self.train_sets + self.val_sets for a in s] + list(self.test_set or ())
        config = architecture(model)
        self.options = UserDataOptions(
            kind=kind,
            batch_size=batch_size,
            query_size=query_size,
            eval_tasks=eval_tasks,
            eval_rows=eval_rows,
            from_logits=bool(from_logits),
            meta_loss_hidden=tuple(int(h) for h in meta_loss_hidden),
            meta_loss_init=meta_loss_init,
            validation_split=float(validation_split),
            num_classes=self.num_classes,
            outputs=outputs,
            target_mean=target_mean,
            target_std=target_std,
            data=fingerprint(arrays),
            learner=hashlib.sha256(config.encode()).hexdigest(),
        )
        o = self.options
        smallest = min(len(s[0]) for s in self.train_sets)
        if o.batch_size > smallest:
            raise ValueError(f"batch_size={o.batch_size} exceeds the {smallest} rows of the training split")
        self.query_rows = min(o.query_size, min(len(s[0]) for s in self.val_sets))
        self.eval_rows = min(o.eval_rows, smallest)
        self.loss_kind = kind
        if kind == "classification":
            self.metric_name, self.baseline_name, self.higher_is_better = "accuracy", "cross_entropy", True
        self._view = LearnedLoss(self._fresh_meta_loss(), kind=kind, from_logits=o.from_logits)

    # --- the Task contract ---------------------------------------------------------------
    def default_config(self) -> MetaTrainConfig:
        """5 inner SGD steps at 0.01 on the support mini-batch, 4 tasks per meta-step, Adam 1e-3 on φ;
        the meta-test compiled with XLA unless the learner has convolutions (slow to compile on CPU)."""
        return MetaTrainConfig(
            inner_steps=5,
            inner_lr=1e-2,
            meta_lr=1e-3,
            meta_steps=500,
            meta_batch_size=4,
            eval_steps=100,
            eval_jit_compile=not self.has_conv,
        )

    def make_learner(self) -> keras.Model:
        """A fresh copy of the user's model (re-initialised)."""
        return self._build()

    def _fresh_meta_loss(self) -> keras.Model:
        o = self.options
        return default_meta_loss(o.kind, o.num_classes, o.meta_loss_hidden, o.target_mean, o.target_std)

    def make_meta_loss(self) -> keras.Model:
        """``default_meta_loss`` of the kind; with ``meta_loss_init="baseline"`` fitted to MSE / CE."""
        net = self._fresh_meta_loss()
        o = self.options
        if o.meta_loss_init == "baseline":  # one fit per initial draw (a trainer asks again on reset)
            fitted = self.__dict__.setdefault("_fitted", {})
            key = fingerprint(net.get_weights())
            if key not in fitted:
                error = fit_to_baseline(net, o.kind, o.target_mean, o.target_std)
                log.info("loss network fitted to the %s baseline (relative error %.3g)", o.kind, error)
                fitted[key] = net.get_weights()
            net.set_weights(fitted[key])
        return net

    def loss_features(self, y_pred: tf.Tensor, y_true: tf.Tensor) -> tf.Tensor:
        """What ``ml3tf.LearnedLoss`` of this kind feeds the network (one definition for both)."""
        return self._view.features(y_true, y_pred)[0]

    def prediction_loss(self, y_pred: tf.Tensor, y_true: tf.Tensor) -> tf.Tensor:
        """MSE (regression) or cross-entropy (classification, one-hot ``y_true``)."""
        return prediction_loss(self.options.kind, self.options.from_logits, y_pred, y_true)

    def eval_metric(self, y_pred: tf.Tensor, y_true: tf.Tensor) -> tf.Tensor:
        """MSE (regression) or accuracy (classification)."""
        if self.options.kind == "regression":
            return self.prediction_loss(y_pred, y_true)
        hit = tf.equal(
            tf.argmax(log_probabilities(y_pred, self.options.from_logits), -1), tf.argmax(y_true, -1)
        )
        return tf.reduce_mean(tf.cast(hit, tf.float32))

    # --- data ----------------------------------------------------------------------------
    def targets(self, y: np.ndarray) -> np.ndarray:
        """``y`` as the task feeds it: one-hot float32 (classification) or float32 ``(N, d…)``."""
        if self.options.kind == "classification":
            if y.ndim == 2 and y.shape[1] == self.num_classes and self.num_classes > 1:
                return y.astype(np.float32)
            return np.eye(self.num_classes, dtype=np.float32)[y.reshape(-1).astype(np.int64)]
        return y.reshape((len(y), *self.out_shape)).astype(np.float32)

    def sample_indices(
        self, seed: int, step: int, batch_size: int
    ) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """Per task of the meta-batch: ``(data set, training-row indices, validation-row indices)``."""
        rng = np.random.default_rng([seed, _TRAIN_STREAM, step])
        out = []
        for _ in range(batch_size):
            d = int(rng.integers(len(self.train_sets))) if len(self.train_sets) > 1 else 0
            support = rng.choice(len(self.train_sets[d][0]), self.options.batch_size, replace=False)
            query = rng.choice(len(self.val_sets[d][0]), self.query_rows, replace=False)
            out.append((d, support, query))
        return out

    def sample(self, seed: int, step: int, batch_size: int) -> TaskBatch:
        """Support rows from the training split, query rows from the validation split."""
        parts: dict[str, tuple[list, list]] = {"support": ([], []), "query": ([], [])}
        for d, s_idx, q_idx in self.sample_indices(seed, step, batch_size):
            for part, (x, y), idx in (
                ("support", self.train_sets[d], s_idx),
                ("query", self.val_sets[d], q_idx),
            ):
                parts[part][0].append(x[idx])
                parts[part][1].append(self.targets(y[idx]))
        data = {p: {"x": np.stack(xs), "y": np.stack(ys)} for p, (xs, ys) in parts.items()}
        return TaskBatch(data["support"], data["query"])

    def eval_splits(self, seed: int) -> dict[str, tuple[np.ndarray, ...]]:
        """``train``: learners train on training rows, scored on the validation split; ``test``
        (with ``test_data``): the same learners' data, scored on the test split."""
        rng = np.random.default_rng([seed, _EVAL_STREAM])
        o = self.options
        support: list[tuple[np.ndarray, np.ndarray]] = []
        datasets = [t % len(self.train_sets) for t in range(o.eval_tasks)]
        for d in datasets:
            x, y = self.train_sets[d]
            idx = rng.choice(len(x), self.eval_rows, replace=False)
            support.append((x[idx], self.targets(y[idx])))
        xs = np.stack([s[0] for s in support])
        ys = np.stack([s[1] for s in support])
        n_val = min(len(s[0]) for s in self.val_sets)
        xv = np.stack([self.val_sets[d][0][:n_val] for d in datasets])
        yv = np.stack([self.targets(self.val_sets[d][1][:n_val]) for d in datasets])
        out = {"train": (xs, ys, xv, yv)}
        if self.test_set is not None:
            xt, yt = self.test_set
            count = o.eval_tasks
            out["test"] = (xs, ys, np.stack([xt] * count), np.stack([self.targets(yt)] * count))
        return out


def _check_labels(y: np.ndarray, num_classes: int, width: int) -> None:
    """Class labels in ``[0, num_classes)`` (integers ``(N,)``/``(N, 1)``) or one-hot ``(N, C)``."""
    if y.ndim == 2 and y.shape[1] == num_classes and num_classes > 1:
        if not np.all((y == 0) | (y == 1)) or not np.all(y.sum(1) == 1):
            raise ValueError("one-hot y must hold exactly one 1 per row")
        return
    if not (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)):
        raise ValueError(
            f"classification y must be integer labels (N,) or one-hot (N, {num_classes}), got shape {y.shape}"
        )
    if np.issubdtype(y.dtype, np.floating) and not np.all(y == np.round(y)):
        raise ValueError(
            "classification y must hold integer class labels; got non-integer values (kind='regression'?)"
        )
    labels = y.astype(np.int64)
    if labels.min() < 0 or labels.max() >= num_classes:
        found = sorted(set(labels.reshape(-1).tolist()))[:10]
        raise ValueError(
            f"classification y must hold labels in [0, {num_classes}) for a learner with {width} "
            f"output{'s' if width != 1 else ''}, got labels {found}"
        )
