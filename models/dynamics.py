"""A learned forward-dynamics model of a planar arm's joint state (model-based RL).

The state is ``q = [θ₁, θ₂, θ̇₁, θ̇₂]`` (joint angles and velocities), the action ``a`` the
joint torques (normalised to [−1, 1]). The network predicts the change of state over one
environment step from angle-periodic features,

    x      = [cos θ₁, sin θ₁, cos θ₂, sin θ₂, θ̇ / v_s, a]             (8 features)
    Δq̂     = σ ⊙ MLP(x)                                              (σ: per-dimension scale)
    q_{t+1} = q_t + Δq̂

σ (``delta_scale``) and v_s (``velocity_scale``) are non-trainable weights, set from the
training data before a fit (``set_delta_scale``); the MLP then regresses the unit-scale
target ``Δq / σ``. Everything is differentiable in ``q`` and ``a``, so a policy can be
trained by back-propagating through a rollout of this model.

Example:
    >>> model = make_dynamics_model(hidden_units=(128, 128))
    >>> q_next = model.next_state(np.zeros((5, 4), "float32"), np.zeros((5, 2), "float32"))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="models")
class JointDynamicsModel(keras.Model):
    """``Δq̂ = σ ⊙ MLP(features(q, a))`` for a 2-joint arm (see the module docstring).

    Args:
        hidden_units: widths of the hidden layers.
        activation: activation of the hidden layers.
        velocity_scale: v_s, dividing the joint velocities in the features.
        n_joints: joints of the arm (state ``2·n_joints``, action ``n_joints``).

    The model is called on ``concat([q, a], -1)`` of shape ``(N, 3·n_joints)`` and
    returns ``Δq̂`` ``(N, 2·n_joints)``.
    """

    def __init__(
        self,
        hidden_units: Sequence[int] = (128, 128),
        activation: str = "tanh",
        velocity_scale: float = 8.0,
        n_joints: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        hidden_units = tuple(int(h) for h in hidden_units)
        if not hidden_units or any(h < 1 for h in hidden_units):
            raise ValueError(
                f"hidden_units must be a non-empty sequence of integers >= 1, got {hidden_units!r}"
            )
        if not (isinstance(velocity_scale, (int, float)) and velocity_scale > 0):
            raise ValueError(f"velocity_scale must be a positive number, got {velocity_scale!r}")
        if isinstance(n_joints, bool) or not isinstance(n_joints, int) or n_joints < 1:
            raise ValueError(f"n_joints must be an integer >= 1, got {n_joints!r}")
        keras.activations.get(activation)
        self.hidden_units = hidden_units
        self.activation = activation
        self.velocity_scale = float(velocity_scale)
        self.n_joints = n_joints
        self.hidden_layers = [
            keras.layers.Dense(h, activation=activation, name=f"hidden_{i}")
            for i, h in enumerate(hidden_units)
        ]
        self.output_layer = keras.layers.Dense(2 * n_joints, name="out")
        self.delta_scale = self.add_weight(
            shape=(2 * n_joints,), initializer="ones", trainable=False, name="delta_scale"
        )
        self.build((None, 3 * n_joints))

    @property
    def state_dim(self) -> int:
        return 2 * self.n_joints

    def build(self, input_shape: Any) -> None:
        shape = (None, 4 * self.n_joints)  # cos, sin, θ̇, a
        for layer in self.hidden_layers:
            layer.build(shape)
            shape = (None, layer.units)
        self.output_layer.build(shape)
        self.built = True

    def features(self, inputs: Any) -> Any:
        """``[cos θ, sin θ, θ̇ / v_s, a]`` from ``[q, a]``."""
        n = self.n_joints
        angles, vel, act = inputs[:, :n], inputs[:, n : 2 * n], inputs[:, 2 * n :]
        return ops.concatenate([ops.cos(angles), ops.sin(angles), vel / self.velocity_scale, act], axis=-1)

    def normalized_delta(self, inputs: Any) -> Any:
        """``MLP(features)``: the prediction of ``Δq / σ`` (what a fit regresses)."""
        h = self.features(inputs)
        for layer in self.hidden_layers:
            h = layer(h)
        return self.output_layer(h)

    def call(self, inputs: Any) -> Any:
        return self.normalized_delta(inputs) * self.delta_scale

    def next_state(self, q: Any, a: Any) -> Any:
        """``q + Δq̂(q, a)``."""
        q = ops.convert_to_tensor(q, dtype=self.compute_dtype)
        a = ops.cast(a, q.dtype)
        return q + self(ops.concatenate([q, a], axis=-1))

    def set_delta_scale(self, deltas: np.ndarray, floor: float = 1e-3) -> None:
        """σ ← per-dimension standard deviation of observed ``Δq`` (at least ``floor``)."""
        deltas = np.asarray(deltas, dtype=np.float64).reshape(-1, self.state_dim)
        if not len(deltas):
            raise ValueError("deltas must hold at least one transition")
        self.delta_scale.assign(np.maximum(deltas.std(0), floor).astype(self.delta_scale.dtype))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            hidden_units=list(self.hidden_units),
            activation=self.activation,
            velocity_scale=self.velocity_scale,
            n_joints=self.n_joints,
        )
        return config


def make_dynamics_model(
    hidden_units: Sequence[int] = (128, 128), activation: str = "tanh", velocity_scale: float = 8.0
) -> JointDynamicsModel:
    """A built ``JointDynamicsModel`` for a 2-joint arm."""
    return JointDynamicsModel(hidden_units, activation, velocity_scale)
