"""The shaped-sine learner ``f_ω(x) = sin(ω x)``: one parameter (ML3 §V-A, Fig. 5a/b)."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="models")
class SineFrequency(keras.layers.Layer):
    """``f_ω(x) = sin(ω x)`` with ``ω = omega0 + δ``; δ (shape ``(1,)``) is the trainable weight.

    δ is zero-initialised, so the standard learner reset (``FunctionalModel.init_params``:
    zero for rank-1 weights) starts every learner at ``ω = omega0`` (the authors' 0.1), and
    a learner that should start at ω is given ``δ = ω − omega0``. Gradients and SGD steps
    on δ are those on ω.

    Example:
        >>> layer = SineFrequency(omega0=0.1)
        >>> y = layer(tf.constant([[1.0], [2.0]]))   # sin(0.1·x)
    """

    def __init__(self, omega0: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.omega0 = float(omega0)
        self.delta = self.add_weight(shape=(1,), initializer="zeros", name="delta")

    def call(self, x: tf.Tensor) -> tf.Tensor:
        # (a Keras variable's dtype is a string; tf.cast to it breaks the gradient tape)
        return tf.sin((self.delta + self.omega0) * x)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "omega0": self.omega0}


def make_sine_frequency_learner(omega0: float = 0.1, name: str = "sine_frequency") -> keras.Sequential:
    """A built ``(N, 1) → (N, 1)`` model ``x ↦ sin(ω x)`` with ω starting at ``omega0``.

    Example:
        >>> learner = make_sine_frequency_learner(0.1)
        >>> learner.count_params()
        1
    """
    return keras.Sequential([keras.Input((1,)), SineFrequency(omega0, name="frequency")], name=name)
