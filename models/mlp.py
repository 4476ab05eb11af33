"""Multi-layer perceptrons used as learners (the paper's sine learner is 1→100→10→1 ReLU)."""

from __future__ import annotations

from collections.abc import Sequence

import keras


def make_mlp(
    input_dim: int,
    hidden_units: Sequence[int],
    output_dim: int = 1,
    activation: str = "relu",
    use_bias: bool = True,
    name: str = "mlp",
) -> keras.Sequential:
    """A built MLP ``input_dim → hidden_units… → output_dim`` (linear output).

    Kernels are Xavier-uniform, biases zero (the authors' learner reset).

    Example:
        >>> learner = make_mlp(1, (100, 10), 1)   # the paper's sine learner
        >>> learner.count_params()
        1231
    """
    if int(input_dim) < 1 or int(output_dim) < 1:
        raise ValueError(f"input_dim and output_dim must be >= 1, got {input_dim}, {output_dim}")
    if any(int(h) < 1 for h in hidden_units):
        raise ValueError(f"hidden_units must all be >= 1, got {tuple(hidden_units)!r}")
    keras.activations.get(activation)
    layers: list[keras.layers.Layer] = [keras.Input((int(input_dim),))]
    for i, h in enumerate(hidden_units):
        layers.append(keras.layers.Dense(int(h), activation=activation, use_bias=use_bias, name=f"dense_{i}"))
    layers.append(keras.layers.Dense(int(output_dim), use_bias=use_bias, name="out"))
    return keras.Sequential(layers, name=name)
