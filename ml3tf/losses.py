"""A trained loss network ``M_φ`` used as an ordinary Keras loss.

At meta-test time ML3's loss is a fixed function: a learner is trained by
``θ ← θ − α ∇_θ mean_i M_φ(features_i)``. ``LearnedLoss`` packages ``M_φ`` as a
``keras.losses.Loss`` so that any Keras model can be compiled with it:

    regression      ℓ_i = mean_j M_φ([ŷ_ij, y_ij])           (each element pair, as the sine loss saw)
    classification  ℓ_i = M_φ([p_i, onehot(y_i)])             (class probabilities and one-hot label)
    batch loss      L   = reduce(w_i · ℓ_i)                   (Keras reduction, sample weights w)

The network's weights are frozen (``fit`` trains the model, never the loss) and are
stored *inside* the loss's config (base64 of the raw little-endian arrays, no pickle),
so a model compiled with it survives ``model.save("m.keras")`` →
``keras.models.load_model("m.keras")`` (``safe_mode=True``) with identical values.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ml3tf.meta_loss import MetaLossNetwork, load_meta_loss
from ml3tf.results import file_sha256

KINDS = ("regression", "classification")

#: Where ``LearnedLoss.pretrained`` looks: ``models/pretrained/`` of the installed ``models`` package.
ZOO_PACKAGE, ZOO_FOLDER, ZOO_MANIFEST = "ml3tf.models", "pretrained", "manifest.json"


def encode_weights(arrays: list[np.ndarray]) -> list[dict[str, Any]]:
    """Arrays → JSON-safe records ``{"dtype", "shape", "data": base64(little-endian bytes)}``."""
    out = []
    for a in arrays:
        a = np.asarray(a)
        data = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()
        out.append({"dtype": a.dtype.name, "shape": list(a.shape), "data": base64.b64encode(data).decode()})
    return out


def decode_weights(records: Any) -> list[np.ndarray]:
    """Inverse of ``encode_weights``; ``ValueError`` on anything malformed."""
    if not isinstance(records, list):
        raise ValueError(f"weights must be a list of encoded arrays, got {type(records).__name__}")
    out = []
    for i, r in enumerate(records):
        try:
            dtype = np.dtype(r["dtype"]).newbyteorder("<")
            if dtype.kind not in "fiub":
                raise ValueError(f"dtype {r['dtype']!r} is not numeric")
            shape = tuple(int(s) for s in r["shape"])
            raw = base64.b64decode(r["data"], validate=True)
            out.append(np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.name))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"weights[{i}] is not an encoded array: {exc}") from None
    return out


def freeze(network: keras.Model) -> None:
    """Make every weight of ``network`` non-trainable. ``network.trainable = False`` alone does not
    reach the variables of a network deserialized with ``trainable=False`` in its config (its
    sublayers were built after the flag was set, and the setter sees no change)."""
    network.trainable = False
    for layer in network._flatten_layers():
        layer.trainable = False
    for v in network.weights:
        v.trainable = False


def _input_dim(network: keras.Model) -> int:
    dim = getattr(network, "input_dim", None)
    if dim is None:
        try:
            dim = network.inputs[0].shape[-1]
        except (AttributeError, IndexError, ValueError):
            dim = None
    if dim is None:
        raise ValueError(f"cannot tell the input size of the loss network {network.name!r}; build it first")
    return int(dim)


@keras.saving.register_keras_serializable(package="ml3tf")
class LearnedLoss(keras.losses.Loss):
    """A trained ML3 loss network as a Keras loss (weights frozen, saved with the loss).

    Per-example loss ``ℓ_i`` (then Keras' ``reduction`` with ``sample_weight``):

    * ``kind="regression"`` (default): ``y_pred`` and ``y_true`` of equal shape
      ``(N,)``, ``(N, 1)`` or ``(N, d…)`` (a rank difference of one trailing unit axis
      is tolerated). With a loss network of input size 2 (the paper's sine loss)
      every element pair is scored on its own and averaged over the example,
      ``ℓ_i = mean_j M_φ([ŷ_ij, y_ij])`` — the network sees exactly the pairs it saw
      during meta-training. A network of input size ``2·d`` sees the whole example,
      ``ℓ_i = M_φ([ŷ_i, y_i])``.
    * ``kind="classification"``: ``ℓ_i = M_φ([p_i, onehot(y_i)])`` with a network of
      input size ``2·C`` (the paper's binary loss: ``C = 2``). ``y_pred`` is ``(N, C)``
      probabilities, or logits with ``from_logits=True`` (softmax); with ``C = 2`` a
      single sigmoid column ``(N,)``/``(N, 1)`` is accepted too (``p = [1 − s, s]``).
      ``y_true`` is integer labels ``(N,)``/``(N, 1)`` or one-hot ``(N, C)``.

    Args:
        network: the loss network ``M_φ`` (a built ``keras.Model``, e.g. from
            ``ml3tf.load_meta_loss``); it is not copied, but never trained by ``fit``.
        kind: ``"regression"`` or ``"classification"``.
        from_logits: classification only: ``y_pred`` holds logits.
        reduction, name, dtype: as for every ``keras.losses.Loss``.

    Example:
        >>> loss = ml3tf.LearnedLoss.pretrained("sine")         # or .from_file("runs/sine/meta_loss.keras")
        >>> model.compile(optimizer=keras.optimizers.SGD(1e-3), loss=loss)
        >>> model.fit(x, y, batch_size=len(x), epochs=100)
        >>> model.save("m.keras"); keras.models.load_model("m.keras")  # the loss comes back, weights too
    """

    def __init__(
        self,
        network: keras.Model,
        kind: str = "regression",
        from_logits: bool = False,
        reduction: str | None = "sum_over_batch_size",
        name: str = "learned_loss",
        dtype: Any = None,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not isinstance(network, keras.Model):
            raise ValueError(f"network must be a built keras.Model, got {type(network).__name__}")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if not network.built:
            raise ValueError(f"network {network.name!r} must be built")
        self.network = network
        freeze(network)
        self.kind = kind
        self.from_logits = bool(from_logits)
        if self.from_logits and kind != "classification":
            raise ValueError("from_logits=True needs kind='classification'")
        self.input_dim = _input_dim(network)
        if self.input_dim < 2 or self.input_dim % 2:
            raise ValueError(
                f"a loss network sees [ŷ, y] pairs, so its input size must be even and >= 2; "
                f"network {network.name!r} takes {self.input_dim}"
            )
        try:
            out_shape = tuple(network.compute_output_shape((None, self.input_dim)))
        except Exception:  # not every model can tell; the call will
            out_shape = None
        if out_shape is not None and out_shape[-1] not in (1, None):
            raise ValueError(
                f"a loss network returns one value per row, shape (N, 1); network {network.name!r} "
                f"returns {out_shape}"
            )
        if kind == "classification" and (self.input_dim < 4 or self.input_dim % 2):
            raise ValueError(
                f"a classification loss network needs input size 2·C (C >= 2 classes), got {self.input_dim}"
            )

    # --- constructors ---------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | os.PathLike, **kwargs: Any) -> LearnedLoss:
        """The loss network in a ``meta_loss.keras`` written by ``ml3tf train`` (``safe_mode``).

        Raises:
            ValueError: the file is missing, corrupt, or not a loss network.
        """
        network = load_meta_loss(os.fspath(path))
        return cls(network, **kwargs)

    @classmethod
    def pretrained(cls, name: str, **kwargs: Any) -> LearnedLoss:
        """A loss from the zoo in ``models/pretrained/`` (``manifest.json``), sha256-checked.

        Example:
            >>> loss = LearnedLoss.pretrained("sine")    # the paper's sine loss, seed 0
        """
        entry, path = pretrained_entry(name)
        digest = file_sha256(path)
        if digest != entry["sha256"]:
            raise ValueError(
                f"pretrained loss {name!r}: sha256 of {path!r} is {digest}, the manifest says "
                f"{entry['sha256']}; the file is damaged or was replaced"
            )
        kwargs.setdefault("kind", entry.get("kind", "regression"))
        return cls.from_file(path, **kwargs)

    # --- the loss -------------------------------------------------------------
    def features(self, y_true: Any, y_pred: Any) -> tuple[tf.Tensor, tf.Tensor]:
        """Features ``(M, input_dim)`` the network sees and the batch size ``N``.

        Regression with an input size of 2 gives ``M = N·d`` rows (one per element);
        otherwise ``M = N``. Raises ``ValueError`` on shapes or dtypes that do not fit.
        """
        y_pred = tf.convert_to_tensor(y_pred)
        y_true = tf.convert_to_tensor(y_true)
        if not y_pred.dtype.is_floating:
            raise ValueError(f"y_pred must be a float tensor, got dtype {y_pred.dtype.name}")
        if not (y_true.dtype.is_floating or y_true.dtype.is_integer or y_true.dtype == tf.bool):
            raise ValueError(f"y_true must be numeric, got dtype {y_true.dtype.name}")
        dtype = self.network.compute_dtype
        if y_pred.shape.rank is None or y_true.shape.rank is None:
            raise ValueError("y_true and y_pred need a known rank")
        if y_pred.shape.rank == 0 or y_true.shape.rank == 0:
            raise ValueError(
                f"y_true and y_pred need a batch axis, got shapes {y_true.shape} and {y_pred.shape}"
            )
        for arg, value in (("y_true", y_true), ("y_pred", y_pred)):
            if value.shape[0] == 0:
                raise ValueError(f"{arg} is an empty batch (shape {value.shape}); a loss needs >= 1 example")
        if y_true.shape[0] is not None and y_pred.shape[0] is not None and y_true.shape[0] != y_pred.shape[0]:
            raise ValueError(
                f"y_true and y_pred must have the same batch size, got y_true {y_true.shape} and "
                f"y_pred {y_pred.shape}"
            )
        n = tf.shape(y_pred)[0]
        if self.kind == "classification":
            return self._classification_features(y_true, y_pred, dtype), n
        y_pred = tf.cast(y_pred, dtype)
        y_true = tf.cast(y_true, dtype)
        if y_pred.shape.rank == y_true.shape.rank + 1 and y_pred.shape[-1] == 1:
            y_pred = tf.squeeze(y_pred, -1)
        elif y_true.shape.rank == y_pred.shape.rank + 1 and y_true.shape[-1] == 1:
            y_true = tf.squeeze(y_true, -1)
        if y_pred.shape.rank != y_true.shape.rank or not y_pred.shape[1:].is_compatible_with(
            y_true.shape[1:]
        ):
            raise ValueError(
                f"y_true and y_pred must have the same shape for a regression LearnedLoss, "
                f"got y_true {y_true.shape} and y_pred {y_pred.shape}"
            )
        y_pred = tf.reshape(y_pred, (n, -1))
        y_true = tf.reshape(y_true, (n, -1))
        if self.input_dim == 2:  # per element: the pairs (ŷ_ij, y_ij)
            return tf.reshape(tf.stack([y_pred, y_true], axis=-1), (-1, 2)), n
        d = y_pred.shape[-1]
        if d is not None and 2 * d != self.input_dim:
            raise ValueError(
                f"this loss network takes {self.input_dim} features: 2 per element, or "
                f"[ŷ, y] of {self.input_dim // 2} values each per example; got {d} values per example"
            )
        return tf.concat([y_pred, y_true], axis=-1), n

    def _classification_features(self, y_true: tf.Tensor, y_pred: tf.Tensor, dtype: str) -> tf.Tensor:
        classes = self.input_dim // 2
        y_pred = tf.cast(y_pred, dtype)
        if y_pred.shape.rank == 1 or (y_pred.shape.rank == 2 and y_pred.shape[-1] == 1 and classes == 2):
            s = tf.reshape(y_pred, (-1, 1))  # one sigmoid column: p(class 1)
            s = tf.sigmoid(s) if self.from_logits else s
            probs = tf.concat([1.0 - s, s], axis=-1)
        elif y_pred.shape.rank == 2 and y_pred.shape[-1] == classes:
            probs = tf.nn.softmax(y_pred, axis=-1) if self.from_logits else y_pred
        else:
            raise ValueError(
                f"y_pred must be (N, {classes}) class scores"
                + (" or (N,)/(N, 1) one sigmoid column" if classes == 2 else "")
                + f" for this loss network, got shape {y_pred.shape}"
            )
        if y_true.shape.rank == 2 and y_true.shape[-1] == classes and classes > 1:
            onehot = tf.cast(y_true, dtype)
        elif y_true.shape.rank == 1 or (y_true.shape.rank == 2 and y_true.shape[-1] == 1):
            labels = self._checked_labels(tf.reshape(y_true, (-1,)), classes)
            onehot = tf.one_hot(labels, classes, dtype=dtype)
        else:
            raise ValueError(
                f"y_true must be integer labels (N,)/(N, 1) or one-hot (N, {classes}), "
                f"got shape {y_true.shape}"
            )
        return tf.concat([probs, onehot], axis=-1)

    @staticmethod
    def _checked_labels(y_true: tf.Tensor, classes: int) -> tf.Tensor:
        """Integer labels in ``[0, classes)``; anything else is an error, never a silent zero row.

        Known values (eager calls, constants) raise ``ValueError``; inside a compiled graph
        the same checks are assertions (``InvalidArgumentError`` naming y_true).
        """
        values = tf.get_static_value(y_true)
        if values is not None:
            values = np.asarray(values)
            if values.dtype.kind == "f" and not np.all(values == np.round(values)):
                bad = [float(f"{v:.6g}") for v in values[values != np.round(values)][:3]]
                raise ValueError(f"y_true labels must be integers, got {bad}")
            out = values[(values < 0) | (values >= classes)] if values.dtype.kind != "b" else values[:0]
            if out.size:
                shown = [int(v) for v in out[:3]]
                raise ValueError(f"y_true labels must lie in [0, {classes}), got {shown}")
            return tf.constant(values.astype(np.int32))
        if y_true.dtype.is_floating:
            tf.debugging.assert_equal(y_true, tf.round(y_true), message="y_true labels must be integers")
        labels = tf.cast(y_true, tf.int32)
        tf.debugging.assert_non_negative(labels, message=f"y_true labels must lie in [0, {classes})")
        tf.debugging.assert_less(labels, classes, message=f"y_true labels must lie in [0, {classes})")
        return labels

    def per_example(self, y_true: Any, y_pred: Any) -> tf.Tensor:
        """``ℓ_i`` of shape ``(N,)`` (no reduction, no sample weights)."""
        feats, n = self.features(y_true, y_pred)
        out = tf.reshape(self.network(feats), (n, -1))
        return tf.reduce_mean(out, axis=-1)

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> tf.Tensor:
        for arg, value in (("y_true", y_true), ("y_pred", y_pred)):
            dtype = getattr(value, "dtype", None)
            if dtype is None:
                continue
            try:
                dtype = tf.as_dtype(dtype)
            except TypeError:
                raise ValueError(f"{arg} must be numeric, got dtype {dtype}") from None
            if not (dtype.is_floating or dtype.is_integer or dtype.is_bool):
                raise ValueError(f"{arg} must be numeric, got dtype {dtype.name}")
        return super().__call__(y_true, y_pred, sample_weight)

    def call(self, y_true: Any, y_pred: Any) -> tf.Tensor:
        return tf.cast(self.per_example(y_true, y_pred), self.dtype)

    # --- persistence ----------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            network=keras.saving.serialize_keras_object(self.network),
            network_weights=encode_weights(self.network.get_weights()),
            kind=self.kind,
            from_logits=self.from_logits,
            dtype=self._dtype_policy.name,
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LearnedLoss:
        config = dict(config)
        net_config = config.pop("network", None)
        weights = config.pop("network_weights", None)
        if not isinstance(net_config, dict) or weights is None:
            raise ValueError("a LearnedLoss config needs 'network' and 'network_weights'")
        network = keras.saving.deserialize_keras_object(net_config)
        if not isinstance(network, keras.Model):
            raise ValueError(f"'network' must deserialize to a keras.Model, got {type(network).__name__}")
        arrays = decode_weights(weights)
        expected = [tuple(w.shape) for w in network.weights]
        if [a.shape for a in arrays] != expected:
            raise ValueError(
                f"network_weights have shapes {[a.shape for a in arrays]}, the network needs {expected}"
            )
        network.set_weights(arrays)
        return cls(network, **config)


# --- what a learned loss of each kind is compared with and starts from ---------------------
def default_meta_loss(
    kind: str, num_classes: int, hidden: Sequence[int], target_mean: float = 0.0, target_std: float = 1.0
) -> MetaLossNetwork:
    """The loss network of ``kind``: classification ``[p, onehot y]`` (2·C inputs, ReLU with biases,
    bias-free softplus output, as the authors' classification loss); regression ``(ŷ, y)`` pairs
    (2 inputs, shifted by ``target_mean`` and scaled by ``1 / target_std``, softplus output
    times ``target_std²``: values in the units of the squared error)."""
    if kind == "classification":
        return MetaLossNetwork(2 * num_classes, tuple(hidden), "relu", use_bias=True,
                               output_use_bias=False, output_activation="softplus")  # fmt: skip
    scale = 1.0 / target_std
    return MetaLossNetwork(
        2,
        tuple(hidden),
        "relu",
        use_bias=True,
        output_activation="softplus",
        input_shift=(target_mean, target_mean),
        input_scale=(scale, scale),
        output_scale=target_std**2,
    )


def fit_to_baseline(
    network: keras.Model,
    kind: str,
    target_mean: float = 0.0,
    target_std: float = 1.0,
    steps: int = 500,
    rows: int = 4096,
    seed: int = 0,
) -> float:
    """Fit ``network``'s weights so that M_φ ≈ the hand-written loss of ``kind`` (a warm start).

    Regression: ``M(ŷ, y) ≈ (ŷ − y)²`` on pairs ``y ~ N(μ, σ²)``, ``ŷ = y + σ·s·ε`` with
    ``s ∈ {0.1, 0.5, 1, 2}``; classification: ``M(p, onehot y) ≈ −log p_y`` on softmax
    probabilities of N(0, 3²) logits with random labels (half of them the arg-max class).
    ``steps`` full-batch Adam steps (lr 1e-2) on the mean relative squared error
    ``mean (M − ℓ)² / (ℓ + ℓ̄)²`` (``fit_network``), which it returns. Deterministic in ``seed``.

    Example:
        >>> net = default_meta_loss("classification", 10, (50, 50))
        >>> fit_to_baseline(net, "classification") < 0.1
        True
    """
    rng = np.random.default_rng([seed, 7])
    if kind == "classification":
        classes = _input_dim(network) // 2
        logits = 3.0 * rng.standard_normal((rows, classes))
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        labels = np.where(rng.random(rows) < 0.5, p.argmax(1), rng.integers(classes, size=rows))
        feats = np.concatenate([p, np.eye(classes)[labels]], axis=1)
        target = -np.log(np.maximum(p[np.arange(rows), labels], 1e-7))
    elif kind == "regression":
        y = target_mean + target_std * rng.standard_normal(rows)
        spread = rng.choice([0.1, 0.5, 1.0, 2.0], size=rows)
        y_hat = y + target_std * spread * rng.standard_normal(rows)
        feats = np.stack([y_hat, y], axis=1)
        target = (y_hat - y) ** 2
    else:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return fit_network(network, feats, target, steps=steps)


def fit_network(
    network: keras.Model,
    features: np.ndarray,
    target: np.ndarray,
    steps: int = 500,
    anchor: np.ndarray | None = None,
) -> float:
    """Fit ``network``'s weights so that ``M(features) ≈ target`` (a loss network's warm start).

    Minimises the mean relative squared error ``mean (D − ℓ)² / (ℓ + ℓ̄)²`` with
    ``D = M(x) − M(anchor)`` (``anchor`` rows pair with ``features`` rows; ``None``: ``D = M(x)``)
    by ``steps`` full-batch Adam steps (lr 1e-2) and returns it. The anchor lets a network
    whose value at a perfect prediction is not zero (no biases and a softplus output: M(0) =
    log 2) match a loss up to a constant, which its gradients do not see.

    Example:
        >>> net = MetaLossNetwork(2, (16,), "elu", use_bias=False)
        >>> r = np.random.default_rng(0).normal(size=(512, 2)).astype("float32")
        >>> fit_network(net, r, 0.5 * (r**2).sum(1), anchor=np.zeros_like(r)) < 0.1
        True
    """
    dtype = network.compute_dtype
    feats = tf.constant(features, dtype)
    target = tf.constant(np.reshape(target, (-1, 1)), dtype)
    base = None if anchor is None else tf.constant(anchor, dtype)
    was = network.trainable
    network.trainable = True  # a LearnedLoss freezes its network; fitting needs its gradient
    try:
        variables = list(network.trainable_variables)
        optimizer = keras.optimizers.Adam(1e-2)
        optimizer.build(variables)
        weight = 1.0 / tf.square(target + tf.reduce_mean(target))  # relative for large values

        @tf.function
        def fit(count):
            error = tf.constant(0.0, dtype)
            for _ in tf.range(count):
                with tf.GradientTape() as tape:
                    value = network(feats) if base is None else network(feats) - network(base)
                    error = tf.reduce_mean(weight * tf.square(value - target))
                optimizer.apply(tape.gradient(error, variables), variables)
            return error

        return float(fit(tf.constant(steps)))
    finally:
        network.trainable = was


def log_probabilities(y_pred: tf.Tensor, from_logits: bool) -> tf.Tensor:
    """``log p`` ``(N, C)`` of a classifier's output: logits or probabilities ``(N, C)``, or one
    sigmoid column ``(N, 1)``/``(N,)`` read as ``p = [1 − s, s]`` (as ``LearnedLoss`` reads it)."""
    y_pred = tf.reshape(y_pred, (tf.shape(y_pred)[0], -1))
    if y_pred.shape[-1] == 1:
        if from_logits:
            return tf.concat([-tf.math.softplus(y_pred), -tf.math.softplus(-y_pred)], axis=-1)
        s = tf.clip_by_value(y_pred, 1e-7, 1 - 1e-7)
        return tf.concat([tf.math.log(1 - s), tf.math.log(s)], axis=-1)
    if from_logits:
        return tf.nn.log_softmax(y_pred, axis=-1)
    return tf.math.log(tf.clip_by_value(y_pred, 1e-7, 1.0))


def prediction_loss(kind: str, from_logits: bool, y_pred: tf.Tensor, y_true: tf.Tensor) -> tf.Tensor:
    """The hand-written loss of ``kind``: MSE, or cross-entropy against one-hot ``y_true``."""
    n = tf.shape(y_pred)[0]
    if kind == "regression":
        diff = tf.reshape(y_pred, (n, -1)) - tf.reshape(tf.cast(y_true, y_pred.dtype), (n, -1))
        return tf.reduce_mean(tf.square(diff))
    logp = log_probabilities(y_pred, from_logits)
    return -tf.reduce_mean(tf.reduce_sum(tf.cast(y_true, logp.dtype) * logp, axis=-1))


def one_hot(y_true: tf.Tensor, num_classes: int) -> tf.Tensor:
    """Integer labels ``(N,)``/``(N, 1)`` → one-hot float32 ``(N, C)``; one-hot ``(N, C)`` stays."""
    if y_true.shape.rank == 2 and y_true.shape[-1] == num_classes and num_classes > 1:
        return tf.cast(y_true, tf.float32)
    return tf.one_hot(tf.cast(tf.reshape(y_true, (-1,)), tf.int32), num_classes)


# --- the pretrained zoo ---------------------------------------------------------
def zoo_dir() -> str:
    """``pretrained/`` of the installed ``ml3tf.models`` package (found without importing it)."""
    spec = importlib.util.find_spec(ZOO_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the pretrained zoo needs the {ZOO_PACKAGE!r} package (pip install ml3tf)")
    for location in spec.submodule_search_locations:
        path = os.path.join(location, ZOO_FOLDER)
        if os.path.isfile(os.path.join(path, ZOO_MANIFEST)):
            return path
    raise ValueError(f"no {ZOO_FOLDER}/{ZOO_MANIFEST} in the {ZOO_PACKAGE!r} package")


def pretrained_manifest() -> dict[str, Any]:
    """The zoo's ``manifest.json``: name → {file, sha256, task, config, metrics, command, …}."""
    path = os.path.join(zoo_dir(), ZOO_MANIFEST)
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path!r} is not a readable manifest: {exc}") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path!r} is not a manifest (a JSON object)")
    return manifest


def pretrained_entry(name: str) -> tuple[dict[str, Any], str]:
    """The manifest entry of ``name`` and the absolute path of its file."""
    manifest = pretrained_manifest()
    entry = manifest.get(name)
    if not isinstance(entry, dict) or "file" not in entry or "sha256" not in entry:
        raise ValueError(f"no pretrained loss {name!r}; available: {sorted(manifest)}")
    path = os.path.join(zoo_dir(), os.path.basename(entry["file"]))
    if not os.path.isfile(path):
        raise ValueError(f"pretrained loss {name!r}: {path!r} is missing")
    return entry, path
