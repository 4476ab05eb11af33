"""Classification with a learned loss (ML3's binary MNIST experiment, on data that ships).

Data: scikit-learn's ``load_digits`` (1797 images 8×8, 10 classes) by default, or a
real MNIST file in the ``keras.datasets`` format (``mnist.npz`` with ``x_train``,
``y_train``, ``x_test``, ``y_test``) given by path — nothing is ever downloaded.

Images are split once into a **meta-train pool** and a **meta-test pool** (digits:
a fixed per-class split, ``test_fraction`` of each class held out; MNIST: its own
train/test split). Meta-training only ever sees the meta-train pool; every
meta-test learner trains on a support set and is scored on a disjoint query set,
both drawn from the meta-test pool.

Modes:

* ``binary`` (paper): meta-train on one class pair (``train_pair``), meta-test on
  unseen pairs of **held-out classes** (``test_pairs``; default every pair of
  classes outside ``train_pair``). The loss network sees (class probabilities,
  one-hot label) — 4 inputs — through 4→40→40→1, ReLU hidden layers with biases and
  a bias-free softplus output (the authors' ``MnistLearnedLoss``).
* ``multiclass``: 10-way; the loss sees 20 inputs; held-out *images*, not classes.

Per meta-step the inner steps train on ``k_shot`` support images per class and the
task loss (cross-entropy, the differentiable meta-objective) is measured on
``query_shot`` other images per class. The reported meta-test metric is test
accuracy (``eval_metric``); ``results["loss"]`` adds cross-entropy curves.

Example:
    >>> import ml3tf
    >>> from ml3tf import tasks
    >>> task = tasks.get("classification", learner="mlp:64:relu")
    >>> run = ml3tf.train(task, task.default_config(), out_dir="runs/digits")
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ml3tf.meta_loss import MetaLossNetwork
from ml3tf.meta_trainer import MetaTrainConfig
from ml3tf.models.spec import build_learner, parse_learner_spec
from ml3tf.task import SupervisedTask, TaskBatch

_TRAIN_STREAM, _TEST_STREAM, _TRAIN_EVAL_STREAM, _SPLIT_STREAM = 0, 1, 2, 3
MNIST_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True)
class ClassificationOptions:
    """Options of the classification task (CLI flags ``--mode``, ``--learner`` …)."""

    mode: str = "binary"
    """``binary``: one train class pair, unseen test pairs (paper); ``multiclass``: 10-way."""
    dataset: str = "digits"
    """``digits`` (scikit-learn, 8×8, ships with the package) or ``mnist`` (needs ``mnist_path``)."""
    mnist_path: str = ""
    """A keras.datasets-format ``mnist.npz`` (x_train, y_train, x_test, y_test); never downloaded."""
    train_pair: tuple[int, ...] = (4, 9)
    """Binary mode: the class pair meta-training sees (labels 0 and 1, in this order)."""
    test_pairs: tuple[str, ...] = ("all",)
    """Binary mode: meta-test pairs as ``A-B`` strings; ``all``: every pair of held-out classes."""
    k_shot: int = 20
    """Support images per class (what the learner trains on)."""
    query_shot: int = 20
    """Query images per class (what the task loss / test accuracy is measured on)."""
    test_fraction: float = 0.5
    """Digits: fraction of each class held out as the meta-test image pool."""
    eval_draws: int = 1
    """Meta-test tasks drawn per class pair (binary) or for the 10-way task, per seed."""
    learner: str = "lenet"
    """Learner spec: ``lenet[:act]`` or ``mlp:W1-W2-…[:act]`` (e.g. ``mlp:64-64:tanh``)."""
    meta_loss_hidden: tuple[int, ...] = (40, 40)
    """Hidden widths of the loss network (ReLU with bias, bias-free softplus output)."""

    def __post_init__(self) -> None:
        if self.mode not in ("binary", "multiclass"):
            raise ValueError(f"mode must be 'binary' or 'multiclass', got {self.mode!r}")
        if self.dataset not in ("digits", "mnist"):
            raise ValueError(f"dataset must be 'digits' or 'mnist', got {self.dataset!r}")
        if self.dataset == "mnist" and not self.mnist_path:
            raise ValueError("dataset='mnist' needs mnist_path (a keras.datasets mnist.npz; no download)")
        for name in ("k_shot", "query_shot", "eval_draws"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction!r}")
        parse_learner_spec(self.learner)
        if not self.meta_loss_hidden:
            raise ValueError("meta_loss_hidden needs at least one layer")


def parse_pair(text: str | tuple, num_classes: int, name: str) -> tuple[int, int]:
    """``"3-5"`` or ``(3, 5)`` → ``(3, 5)``; ValueError naming ``name`` unless two distinct known classes."""
    try:
        pair = tuple(int(c) for c in (text.split("-") if isinstance(text, str) else text))
    except (TypeError, ValueError):
        pair = ()
    if len(pair) != 2 or pair[0] == pair[1] or not all(0 <= c < num_classes for c in pair):
        raise ValueError(
            f"{name} must be two distinct classes in 0..{num_classes - 1} (e.g. '3-5'), got {text!r}"
        )
    return pair  # type: ignore[return-value]


def load_mnist_npz(path: str) -> dict[str, np.ndarray]:
    """Read a keras.datasets ``mnist.npz`` (``x_train, y_train, x_test, y_test``) without pickles.

    Returns the four arrays with images as float32 in [0, 1], flattened to ``(N, H·W)``
    for square ``H = W``, and labels as int64.

    Raises:
        ValueError: naming ``mnist_path`` if the file is missing, not an npz, lacks a
            key, or has inconsistent shapes.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"mnist_path {path!r} does not exist (no download is attempted)")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in MNIST_KEYS if k not in f.files]
            if missing:
                raise ValueError(f"mnist_path {path!r} lacks arrays {missing}")
            raw = {k: np.asarray(f[k]) for k in MNIST_KEYS}
    except ValueError:
        raise
    except Exception as exc:  # zipfile / format errors
        raise ValueError(f"mnist_path {path!r} is not a readable .npz file: {exc}") from None
    out = {}
    for part in ("train", "test"):
        x, y = raw[f"x_{part}"], raw[f"y_{part}"]
        if x.ndim != 3 or x.shape[1] != x.shape[2] or y.ndim != 1 or len(x) != len(y):
            raise ValueError(
                f"mnist_path {path!r}: x_{part} must be (N, H, H) and y_{part} (N,), "
                f"got {x.shape} and {y.shape}"
            )
        scale = 255.0 if x.dtype == np.uint8 or x.max() > 1.0 else 1.0
        out[f"x_{part}"] = (x.reshape(len(x), -1) / scale).astype(np.float32)
        out[f"y_{part}"] = y.astype(np.int64)
    return out


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: ``x (1797, 64)`` float32 in [0, 1], ``y (1797,)`` int64."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - depends on the environment
        raise ValueError("dataset='digits' needs scikit-learn: pip install 'ml3tf[classification]'") from None
    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)


class ClassificationTask(SupervisedTask):
    """Binary (class pairs) or 10-way image classification (see the module docstring)."""

    name = "classification"
    loss_kind = "classification"
    Options = ClassificationOptions
    metric_name = "accuracy"
    baseline_name = "cross_entropy"
    higher_is_better = True

    def __init__(self, **options: Any) -> None:
        self.options = o = ClassificationOptions(**options)
        if o.dataset == "digits":
            x, y = load_digits_arrays()
            rng = np.random.default_rng([0, _SPLIT_STREAM])  # fixed: the same pools for every seed
            test_idx = []
            for c in np.unique(y):
                idx = rng.permutation(np.flatnonzero(y == c))
                test_idx.append(idx[: round(o.test_fraction * len(idx))])
            test_mask = np.zeros(len(y), bool)
            test_mask[np.concatenate(test_idx)] = True
            self.x, self.y = x, y
            self.train_pool = np.flatnonzero(~test_mask)
            self.test_pool = np.flatnonzero(test_mask)
        else:
            d = load_mnist_npz(o.mnist_path)
            self.x = np.concatenate([d["x_train"], d["x_test"]])
            self.y = np.concatenate([d["y_train"], d["y_test"]])
            self.train_pool = np.arange(len(d["y_train"]))
            self.test_pool = np.arange(len(d["y_train"]), len(self.y))
        self.num_classes = int(self.y.max()) + 1
        if self.num_classes < 2:
            raise ValueError(f"the {o.dataset} data has fewer than 2 classes")
        if o.mode == "binary":
            self.train_classes = parse_pair(o.train_pair, self.num_classes, "train_pair")
            held = [c for c in range(self.num_classes) if c not in self.train_classes]
            if tuple(o.test_pairs) == ("all",):
                pairs = list(itertools.combinations(held, 2))
            else:
                pairs = [parse_pair(p, self.num_classes, "test_pairs") for p in o.test_pairs]
            if not pairs:
                raise ValueError(
                    f"train_pair {self.train_classes} leaves fewer than 2 held-out classes for test pairs"
                )
            for p in pairs:
                if set(p) & set(self.train_classes):
                    raise ValueError(
                        f"test_pairs must use held-out classes only (not {self.train_classes}), got {p!r}"
                    )
            self.test_classes: list[tuple[int, ...]] = pairs
        else:
            self.train_classes = tuple(range(self.num_classes))
            self.test_classes = [self.train_classes]
        # Per class, its images in each pool (sorted, so draws are reproducible).
        self._by_class = {
            pool: {c: idx[self.y[idx] == c] for c in range(self.num_classes)}
            for pool, idx in (("train", self.train_pool), ("test", self.test_pool))
        }
        need = o.k_shot + o.query_shot
        for pool in ("train", "test"):
            used = self.train_classes if pool == "train" else sorted(set().union(*self.test_classes))
            smallest = min(len(self._by_class[pool][c]) for c in used)
            if need > smallest:
                raise ValueError(
                    f"k_shot + query_shot = {o.k_shot} + {o.query_shot} exceeds the smallest class of "
                    f"the meta-{pool} pool ({smallest} images): lower k_shot (got {o.k_shot})"
                )

    # --- protocol -----------------------------------------------------------------
    @property
    def n_way(self) -> int:
        return len(self.train_classes)

    @property
    def held_out_classes(self) -> tuple[int, ...]:
        """Classes meta-training never sees (binary mode); empty in 10-way mode."""
        return tuple(c for c in range(self.num_classes) if c not in self.train_classes)

    def default_config(self) -> MetaTrainConfig:
        # The authors' binary MNIST run: inner SGD 1e-3, outer Adam 1e-3, 100 SGD steps at eval.
        # XLA compiles the conv learner's vectorised meta-test slowly on CPU (minutes): off for it.
        lenet = parse_learner_spec(self.options.learner).kind == "lenet"
        return MetaTrainConfig(
            inner_steps=1,
            inner_lr=1e-3,
            meta_lr=1e-3,
            meta_steps=500,
            eval_steps=100,
            eval_jit_compile=not lenet,
        )

    def make_learner(self) -> keras.Model:
        return build_learner(self.options.learner, self.x.shape[1], self.n_way, name="classifier")

    def make_meta_loss(self) -> keras.Model:
        return MetaLossNetwork(
            input_dim=2 * self.n_way,
            hidden_units=self.options.meta_loss_hidden,
            activation="relu",
            use_bias=True,
            output_use_bias=False,
            output_activation="softplus",
        )

    def loss_features(self, y_pred: tf.Tensor, y_true: tf.Tensor) -> tf.Tensor:
        """``[softmax(logits), one-hot y]``: class probabilities and label, ``(N, 2C)``."""
        return tf.concat([tf.nn.softmax(y_pred, axis=-1), tf.cast(y_true, y_pred.dtype)], axis=-1)

    def prediction_loss(self, y_pred: tf.Tensor, y_true: tf.Tensor) -> tf.Tensor:
        """Cross-entropy of the logits: the (differentiable) task loss."""
        return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(tf.cast(y_true, y_pred.dtype), y_pred))

    def eval_metric(self, y_pred: tf.Tensor, y_true: tf.Tensor) -> tf.Tensor:
        """Accuracy: the reported meta-test metric."""
        hit = tf.equal(tf.argmax(y_pred, axis=-1), tf.argmax(y_true, axis=-1))
        return tf.reduce_mean(tf.cast(hit, tf.float32))

    def baseline_loss(self, y_pred: tf.Tensor, y_true: tf.Tensor) -> tf.Tensor:
        return self.prediction_loss(y_pred, y_true)

    # --- data ---------------------------------------------------------------------
    def draw_indices(
        self, rng: np.random.Generator, pool: str, classes: tuple[int, ...]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Disjoint support (``k_shot`` per class) and query (``query_shot``) image indices."""
        o = self.options
        support, query = [], []
        for c in classes:
            idx = rng.permutation(self._by_class[pool][c])
            support.append(idx[: o.k_shot])
            query.append(idx[o.k_shot : o.k_shot + o.query_shot])
        return np.concatenate(support), np.concatenate(query)

    def arrays(self, indices: np.ndarray, classes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """``(x, one-hot y)`` of ``indices``, labels numbered in the order of ``classes``."""
        label = {c: i for i, c in enumerate(classes)}
        y = np.eye(len(classes), dtype=np.float32)[[label[int(c)] for c in self.y[indices]]]
        return self.x[indices], y

    def sample_indices(self, seed: int, step: int, batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per task of the meta-batch, the (support, query) image indices of ``sample``."""
        rng = np.random.default_rng([seed, _TRAIN_STREAM, step])
        return [self.draw_indices(rng, "train", self.train_classes) for _ in range(batch_size)]

    def sample(self, seed: int, step: int, batch_size: int) -> TaskBatch:
        """Meta-train batch from the meta-train pool and ``train_classes`` only."""
        parts = {"support": ([], []), "query": ([], [])}
        for s_idx, q_idx in self.sample_indices(seed, step, batch_size):
            for part, idx in (("support", s_idx), ("query", q_idx)):
                x, y = self.arrays(idx, self.train_classes)
                parts[part][0].append(x)
                parts[part][1].append(y)
        data = {p: {"x": np.stack(xs), "y": np.stack(ys)} for p, (xs, ys) in parts.items()}
        classes = np.tile(np.asarray(self.train_classes, np.int32), (batch_size, 1))
        return TaskBatch(data["support"], data["query"], {"classes": classes})

    def eval_tasks(self, seed: int, split: str) -> list[tuple[tuple[int, ...], np.ndarray, np.ndarray]]:
        """``[(classes, support indices, query indices)]`` of a meta-test split, all from the test pool."""
        stream = _TEST_STREAM if split == "test" else _TRAIN_EVAL_STREAM
        rng = np.random.default_rng([seed, stream])
        groups = self.test_classes if split == "test" else [self.train_classes]
        return [
            (cls, *self.draw_indices(rng, "test", cls))
            for cls in groups
            for _ in range(self.options.eval_draws)
        ]

    def eval_splits(self, seed: int) -> dict[str, tuple[np.ndarray, ...]]:
        """``train``: the meta-train classes; ``test``: the held-out pairs (binary) — both on
        meta-test-pool images, trained on support and scored on disjoint query images."""
        out = {}
        for split in ("train", "test"):
            cols: list[list[np.ndarray]] = [[], [], [], []]
            for cls, s_idx, q_idx in self.eval_tasks(seed, split):
                for i, arr in enumerate((*self.arrays(s_idx, cls), *self.arrays(q_idx, cls))):
                    cols[i].append(arr)
            out[split] = tuple(np.stack(c) for c in cols)
        return out

    def evaluate(
        self,
        meta_losses: list[keras.Model],
        config: MetaTrainConfig,
        seeds: list[int],
        steps: int | None = None,
        initial_params: list | None = None,
    ) -> dict:
        """Accuracy results (results.json schema) plus ``results["loss"]``: cross-entropy after the steps."""
        results = super().evaluate(meta_losses, config, seeds, steps, initial_params)
        loss = super().evaluate(
            meta_losses,
            config,
            seeds,
            steps,
            initial_params,
            metric=self.prediction_loss,
            metric_name="cross_entropy",
        )
        results["loss"] = {k: loss[k] for k in ("metric", "higher_is_better", "final", "at_step_1", "curves")}
        results["wall_seconds"] += loss["wall_seconds"]
        return results
