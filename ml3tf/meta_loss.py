"""The learned loss network M_φ.

ML3 (Bechtle et al., ICPR 2021) replaces a hand-written loss by a small network

    M_φ(ŷ, y [, g]) = softplus( W_L σ( … σ( W_1 [ŷ, y, g] ) … ) )

evaluated per example; the learner's loss is the mean over the batch. The
softplus output keeps the loss non-negative, which the paper uses for all of its
supervised losses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

_OUTPUT_ACTIVATIONS = ("softplus", "linear", "relu", "exp")


@keras.saving.register_keras_serializable(package="ml3tf")
class MetaLossNetwork(keras.Model):
    """An MLP loss network ``M_φ``: features ``(N, input_dim)`` → per-example loss ``(N, 1)``.

    The features are whatever the task lets the loss see, concatenated along the
    last axis: ``[ŷ, y]`` for supervised learning, ``[x, ŷ, y]`` when the input is
    extra information, ``[s, a, g]`` for reinforcement learning.

    Args:
        input_dim: number of input features (2 for the paper's sine loss ``(ŷ, y)``).
        hidden_units: width of each hidden layer, e.g. ``(50, 50)``.
        activation: Keras activation name of the hidden layers.
        use_bias: whether the dense layers have biases (the paper's sine loss has none).
        output_activation: ``"softplus"`` (non-negative loss, the paper's choice),
            ``"linear"``, ``"relu"`` or ``"exp"``.
        kernel_initializer: Keras initializer name for the kernels (Xavier uniform,
            as in the authors' code).
        output_use_bias: bias of the output layer; ``None`` (default) follows
            ``use_bias``. The authors' classification loss has hidden biases and a
            bias-free output (``use_bias=True, output_use_bias=False``).
        input_shift, input_scale: an optional fixed affine map of the features before the first
            layer, ``(features − shift) · scale`` (one value per feature, saved with the network;
            not learned): puts regression targets of any units on the scale the network was
            initialised for (``SupervisedTask.from_arrays`` sets them from the training targets).
        output_scale: an optional fixed factor on the output (saved, not learned): with
            ``input_scale = 1/σ`` and ``output_scale = σ²`` a loss network reads and returns
            values in the targets' units (``M(ŷ, y) = σ² · g((ŷ − μ)/σ, (y − μ)/σ)``).
        anchor_pairs: optional pairs ``(i, j)`` of feature columns, column ``i`` a prediction
            and column ``j`` its target. The network then returns

                M_φ(f) = (m_φ(f) − m_φ(f|ŷ←y))²

            where ``m_φ`` is the MLP above and ``f|ŷ←y`` the features with every column ``i``
            replaced by its column ``j``: a loss that is non-negative and exactly 0 wherever
            every prediction equals its target, so fitting the data is always a global
            minimiser of the learned loss — meta-training shapes the loss around that
            minimum but cannot move it. ``None`` (default): the plain network.

    Example:
        >>> import numpy as np
        >>> net = MetaLossNetwork(input_dim=2, hidden_units=(50, 50), use_bias=False)
        >>> per_example = net(np.zeros((4, 2), "float32"))   # shape (4, 1)
        >>> value = net.loss_value(np.zeros((4, 1)), np.ones((4, 1)))  # mean over the batch
        >>> anchored = MetaLossNetwork(2, (16,), "elu", use_bias=True, anchor_pairs=[(0, 1)])
        >>> anchored(np.ones((4, 2), "float32"))  # ŷ = y: exactly 0 for any φ
    """

    def __init__(
        self,
        input_dim: int,
        hidden_units: Sequence[int] = (50, 50),
        activation: str = "relu",
        use_bias: bool = False,
        output_activation: str = "softplus",
        kernel_initializer: str = "glorot_uniform",
        output_use_bias: bool | None = None,
        input_shift: Sequence[float] | None = None,
        input_scale: Sequence[float] | None = None,
        output_scale: float | None = None,
        anchor_pairs: Sequence[Sequence[int]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if int(input_dim) < 1:
            raise ValueError(f"input_dim must be >= 1, got {input_dim!r}")
        hidden_units = tuple(int(h) for h in hidden_units)
        if any(h < 1 for h in hidden_units):
            raise ValueError(f"hidden_units must all be >= 1, got {hidden_units!r}")
        if output_activation not in _OUTPUT_ACTIVATIONS:
            raise ValueError(
                f"output_activation must be one of {_OUTPUT_ACTIVATIONS}, got {output_activation!r}"
            )
        keras.activations.get(activation)  # raises a clear ValueError on unknown names
        self.input_dim = int(input_dim)
        self.hidden_units = hidden_units
        self.activation = activation
        self.use_bias = bool(use_bias)
        self.output_activation = output_activation
        self.kernel_initializer = kernel_initializer
        self.output_use_bias = self.use_bias if output_use_bias is None else bool(output_use_bias)
        self.input_shift = self._affine("input_shift", input_shift)
        self.input_scale = self._affine("input_scale", input_scale)
        if output_scale is not None and not (math.isfinite(float(output_scale)) and float(output_scale) > 0):
            raise ValueError(f"output_scale must be a positive finite number, got {output_scale!r}")
        self.output_scale = None if output_scale is None else float(output_scale)
        self.anchor_pairs = self._anchor_pairs(anchor_pairs)
        self.hidden_layers = [
            keras.layers.Dense(
                h,
                activation=activation,
                use_bias=self.use_bias,
                kernel_initializer=kernel_initializer,
                name=f"hidden_{i}",
            )
            for i, h in enumerate(hidden_units)
        ]
        self.output_layer = keras.layers.Dense(
            1, use_bias=self.output_use_bias, kernel_initializer=kernel_initializer, name="output"
        )
        self.build((None, self.input_dim))

    def build(self, input_shape: Any) -> None:
        shape = tuple(input_shape)
        for layer in self.hidden_layers:
            layer.build(shape)
            shape = (shape[0], layer.units)
        self.output_layer.build(shape)
        self.built = True

    def _affine(self, name: str, values: Sequence[float] | None) -> tuple[float, ...] | None:
        if values is None:
            return None
        try:
            out = tuple(float(v) for v in values)
        except (TypeError, ValueError):
            out = ()
        if len(out) != self.input_dim or not all(math.isfinite(v) for v in out):
            raise ValueError(f"{name} must hold {self.input_dim} finite numbers, got {values!r}")
        return out

    def _anchor_pairs(self, pairs: Sequence[Sequence[int]] | None) -> tuple[tuple[int, int], ...] | None:
        if pairs is None:
            return None
        try:
            out = tuple((i, j) for i, j in pairs)
        except (TypeError, ValueError):
            out = ()
        columns = [v for pair in out for v in pair]
        predictions = [i for i, _ in out]
        if (
            not out
            or not all(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v < self.input_dim for v in columns
            )
            or any(i == j for i, j in out)
            or len(set(predictions)) != len(predictions)
            or set(predictions) & {j for _, j in out}
        ):
            raise ValueError(
                "anchor_pairs must be non-empty (prediction, target) pairs of integer columns in "
                f"[0, {self.input_dim}), each prediction once and never also a target; got {pairs!r}"
            )
        return out

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        out = self._mlp(inputs)
        if self.anchor_pairs is not None:
            columns = list(range(self.input_dim))
            for i, j in self.anchor_pairs:
                columns[i] = j
            out = tf.square(out - self._mlp(tf.gather(inputs, columns, axis=-1)))
        if self.output_scale is not None:
            out = out * tf.constant(self.output_scale, out.dtype)
        return out

    def _mlp(self, inputs: tf.Tensor) -> tf.Tensor:
        """``m_φ``: the affine input map, the layers and the output activation."""
        h = inputs
        if self.input_shift is not None:
            h = h - tf.constant(self.input_shift, h.dtype)
        if self.input_scale is not None:
            h = h * tf.constant(self.input_scale, h.dtype)
        for layer in self.hidden_layers:
            h = layer(h)
        out = self.output_layer(h)
        if self.output_activation == "softplus":
            out = tf.math.softplus(out)
        elif self.output_activation == "relu":
            out = tf.nn.relu(out)
        elif self.output_activation == "exp":
            out = tf.exp(out)
        return out

    def loss_value(self, y_pred: Any, y_true: Any, extra: Any = None) -> tf.Tensor:
        """Mean of ``M_φ([ŷ, y(, extra)])`` over the batch (rank-2 inputs)."""
        parts = [y_pred, y_true] + ([] if extra is None else [extra])
        dtype = self.compute_dtype
        feats = tf.concat([tf.cast(p, dtype) for p in parts], axis=-1)
        return tf.reduce_mean(self(feats))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            input_dim=self.input_dim,
            hidden_units=list(self.hidden_units),
            activation=self.activation,
            use_bias=self.use_bias,
            output_activation=self.output_activation,
            kernel_initializer=self.kernel_initializer,
            output_use_bias=self.output_use_bias,
        )
        for name in ("input_shift", "input_scale"):  # absent when unset: older files stay as they were
            if getattr(self, name) is not None:
                config[name] = list(getattr(self, name))
        if self.output_scale is not None:
            config["output_scale"] = self.output_scale
        if self.anchor_pairs is not None:
            config["anchor_pairs"] = [list(p) for p in self.anchor_pairs]
        return config


def load_meta_loss(path: str) -> keras.Model:
    """Load a meta-loss network saved as ``.keras`` (``safe_mode=True``: no code runs).

    Raises:
        ValueError: the file is missing, not a ``.keras`` archive, or holds no loss network.
    """
    import os
    import zipfile

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"meta-loss file {path!r} does not exist")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"meta-loss file {path!r} is not a .keras archive")
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # keras raises many types for foreign/corrupt archives
        raise ValueError(f"meta-loss file {path!r} could not be loaded: {exc}") from None
    if not isinstance(model, keras.Model):
        raise ValueError(f"meta-loss file {path!r} does not hold a Keras model")
    return model
