"""A parametrised inertia model for inverse dynamics (ML3 §V-A, physics prior, Fig. 5c).

    M_θ(q) = L_θ(q) L_θ(q)ᵀ,   L_θ = [[softplus(z₁) + ε, 0], [z₂, softplus(z₃) + ε]],
    z = MLP_θ(cos q, sin q)
    û = M_θ(q) q̈ + F(q, q̇)

M_θ is symmetric positive definite for every θ and q (a Cholesky factor with a
positive diagonal). F (Coriolis, centrifugal and gravity torques) is known and given
as an input, so the model only has to learn the inertia.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="models")
class CholeskyInertia(keras.layers.Layer):
    """Inputs ``[q (2), q̈ (2), F (2)]`` → outputs ``[û (2), M₁₁, M₁₂, M₂₂]`` (see the module docstring).

    Example:
        >>> layer = CholeskyInertia(hidden_units=(32, 32))
        >>> out = layer(tf.zeros((5, 6)))   # (5, 5): torques, then the inertia entries
    """

    def __init__(self, hidden_units: Sequence[int] = (32, 32), epsilon: float = 1e-3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hidden_units = tuple(int(h) for h in hidden_units)
        if any(h < 1 for h in self.hidden_units):
            raise ValueError(f"hidden_units must all be >= 1, got {self.hidden_units!r}")
        self.epsilon = float(epsilon)
        self.hidden = [
            keras.layers.Dense(h, activation="tanh", name=f"dense_{i}")
            for i, h in enumerate(self.hidden_units)
        ]
        self.factor = keras.layers.Dense(3, name="factor")

    def build(self, input_shape: Any) -> None:
        shape = (input_shape[0], 4)
        for layer in self.hidden:
            layer.build(shape)
            shape = (shape[0], layer.units)
        self.factor.build(shape)
        self.built = True

    def inertia(self, q: tf.Tensor) -> tf.Tensor:
        """``[M₁₁, M₁₂, M₂₂]`` of M_θ(q), shape ``(N, 3)``."""
        h = tf.concat([tf.cos(q), tf.sin(q)], axis=-1)
        for layer in self.hidden:
            h = layer(h)
        z = self.factor(h)
        l11 = tf.math.softplus(z[:, 0:1]) + self.epsilon
        l21 = z[:, 1:2]
        l22 = tf.math.softplus(z[:, 2:3]) + self.epsilon
        return tf.concat([l11 * l11, l11 * l21, l21 * l21 + l22 * l22], axis=-1)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        q, qdd, f = inputs[:, 0:2], inputs[:, 2:4], inputs[:, 4:6]
        m = self.inertia(q)
        u1 = m[:, 0:1] * qdd[:, 0:1] + m[:, 1:2] * qdd[:, 1:2] + f[:, 0:1]
        u2 = m[:, 1:2] * qdd[:, 0:1] + m[:, 2:3] * qdd[:, 1:2] + f[:, 1:2]
        return tf.concat([u1, u2, m], axis=-1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "hidden_units": list(self.hidden_units), "epsilon": self.epsilon}


def make_inertia_learner(
    hidden_units: Sequence[int] = (32, 32), name: str = "inertia_model"
) -> keras.Sequential:
    """A built ``(N, 6) → (N, 5)`` model: ``[q, q̈, F] ↦ [M_θ(q) q̈ + F, M_θ entries]``.

    Example:
        >>> learner = make_inertia_learner((32, 32))
        >>> learner.output_shape
        (None, 5)
    """
    return keras.Sequential([keras.Input((6,)), CholeskyInertia(hidden_units, name="inertia")], name=name)
