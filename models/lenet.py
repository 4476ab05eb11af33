"""A small LeNet-style convolutional learner for flattened square images (digits 8×8, MNIST 28×28)."""

from __future__ import annotations

import math

import keras


@keras.saving.register_keras_serializable(package="ml3tf_models")
class ShiftConv2D(keras.layers.Layer):
    """A 3×3 "same" convolution written as 9 shifted copies and one matmul.

    ``y[i, j] = act(Σ_{a,b} x[i+a−1, j+b−1] · W[a, b] + c)`` — the same function
    as ``Conv2D(filters, 3, padding="same")`` (kernel ``(3, 3, C_in, filters)``),
    built only from pad/slice/concat/matmul. Those vectorise under
    ``tf.vectorized_map``, which the meta-test uses to train many learners at once;
    ``Conv2D``'s filter gradient does not (it falls back to a slow while-loop).
    """

    def __init__(self, filters: int, activation: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.activation = keras.activations.get(activation)
        self._activation_name = activation

    def build(self, input_shape) -> None:
        cin = int(input_shape[-1])
        self.kernel = self.add_weight(
            shape=(3, 3, cin, self.filters), initializer="glorot_uniform", name="kernel"
        )
        self.bias = self.add_weight(shape=(self.filters,), initializer="zeros", name="bias")

    def call(self, x):
        h, w = x.shape[1], x.shape[2]
        padded = keras.ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
        patches = keras.ops.concatenate(
            [padded[:, a : a + h, b : b + w, :] for a in range(3) for b in range(3)], axis=-1
        )
        kernel = keras.ops.reshape(self.kernel, (-1, self.filters))  # (9·C_in, filters), (a, b, c) order
        return self.activation(keras.ops.matmul(patches, kernel) + self.bias)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.filters)

    def get_config(self) -> dict:
        return {**super().get_config(), "filters": self.filters, "activation": self._activation_name}


def make_lenet(
    input_dim: int,
    num_classes: int,
    filters: tuple[int, int] = (6, 16),
    hidden: int = 32,
    activation: str = "relu",
    name: str = "lenet",
) -> keras.Sequential:
    """A built LeNet-style net: ``(N, side²)`` pixels → ``(N, num_classes)`` logits.

    reshape to ``side×side×1`` → conv3×3(filters[0]) → maxpool2 → conv3×3(filters[1])
    → maxpool2 → flatten → dense(hidden) → dense(num_classes), with ``activation``
    after every conv and hidden dense layer ("same" padding, so 8×8 digits work).

    Example:
        >>> net = make_lenet(64, 10)        # sklearn digits, 10 classes
        >>> net.output_shape
        (None, 10)
    """
    side = math.isqrt(int(input_dim))
    if side * side != int(input_dim) or side < 4:
        raise ValueError(f"input_dim must be a square number >= 16 (a flattened image), got {input_dim!r}")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes!r}")
    keras.activations.get(activation)
    return keras.Sequential(
        [
            keras.Input((side * side,)),
            keras.layers.Reshape((side, side, 1)),
            ShiftConv2D(int(filters[0]), activation=activation, name="conv_0"),
            keras.layers.MaxPooling2D(2),
            ShiftConv2D(int(filters[1]), activation=activation, name="conv_1"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(int(hidden), activation=activation, name="dense_0"),
            keras.layers.Dense(int(num_classes), name="out"),
        ],
        name=name,
    )
