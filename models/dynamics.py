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
def _hidden_units(value: Sequence[int]) -> tuple[int, ...]:
    """``value`` as a tuple of widths; ``ValueError`` unless non-empty and all >= 1."""
    units = tuple(int(h) for h in value)
    if not units or any(h < 1 for h in units):
        raise ValueError(f"hidden_units must be a non-empty sequence of integers >= 1, got {units!r}")
    return units


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
        hidden_units = _hidden_units(hidden_units)
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


@keras.saving.register_keras_serializable(package="models")
class VelocityEnsembleDynamics(keras.Model):
    """An ensemble of probabilistic MLPs predicting the change of joint velocity (the authors' model).

    Each member maps the scaled input ``x = [q, a] / s`` (s = (1, 1, 8, 8, 1, 1): velocities / 8)
    through tanh layers to a mean μ_k(x) and a variance σ²_k(x) = max(softplus(·), 1e-3) of
    Δθ̇; the ensemble's prediction is the mean of the members' means, integrated semi-implicitly:

        Δθ̇̂ = (1/K) Σ_k μ_k(x)
        θ̇_{t+1} = clip(θ̇_t + Δθ̇̂, −v_max, v_max),   θ_{t+1} = clip(θ_t + dt (θ̇_t + Δθ̇̂), −θ_max, θ_max)

    (the angle update uses the unclipped new velocity). A member is fitted by the Gaussian negative
    log-likelihood ``½ log σ² + ½ (μ − Δθ̇)² / σ²`` (``member_nll``).

    Args:
        hidden_units: widths of each member's hidden layers (the authors': 100, 30).
        ensemble_size: K (the authors': 3).
        dt: the environment's time step (s).
        angle_limit, velocity_limit: θ_max and v_max of the clipping (the authors': 3 rad, 4 rad/s).
        input_scale: s (the authors': (1, 1, 8, 8, 1, 1)).
        n_joints: joints of the arm.

    Example:
        >>> model = VelocityEnsembleDynamics((100, 30), ensemble_size=3, dt=0.01)
        >>> q_next = model.next_state(np.zeros((5, 4), "float32"), np.zeros((5, 2), "float32"))
    """

    def __init__(
        self,
        hidden_units: Sequence[int] = (100, 30),
        ensemble_size: int = 3,
        dt: float = 0.01,
        angle_limit: float = 3.0,
        velocity_limit: float = 4.0,
        input_scale: Sequence[float] = (1.0, 1.0, 8.0, 8.0, 1.0, 1.0),
        n_joints: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        hidden_units = _hidden_units(hidden_units)
        if isinstance(ensemble_size, bool) or not isinstance(ensemble_size, int) or ensemble_size < 1:
            raise ValueError(f"ensemble_size must be an integer >= 1, got {ensemble_size!r}")
        for name, v in (("dt", dt), ("angle_limit", angle_limit), ("velocity_limit", velocity_limit)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        if isinstance(n_joints, bool) or not isinstance(n_joints, int) or n_joints < 1:
            raise ValueError(f"n_joints must be an integer >= 1, got {n_joints!r}")
        input_scale = tuple(float(s) for s in input_scale)
        if len(input_scale) != 3 * n_joints or not all(s > 0 for s in input_scale):
            raise ValueError(f"input_scale must be {3 * n_joints} positive numbers, got {input_scale!r}")
        self.hidden_units = hidden_units
        self.ensemble_size = ensemble_size
        self.dt = float(dt)
        self.angle_limit = float(angle_limit)
        self.velocity_limit = float(velocity_limit)
        self.input_scale = input_scale
        self.n_joints = n_joints
        self.members = []
        for k in range(ensemble_size):
            layers = [
                keras.layers.Dense(h, activation="tanh", name=f"m{k}_hidden_{i}")
                for i, h in enumerate(hidden_units)
            ]
            self.members.append(
                (
                    layers,
                    keras.layers.Dense(n_joints, name=f"m{k}_mean"),
                    keras.layers.Dense(n_joints, name=f"m{k}_var"),
                )
            )
        self.build((None, 3 * n_joints))

    @property
    def state_dim(self) -> int:
        return 2 * self.n_joints

    def build(self, input_shape: Any) -> None:
        for layers, mean, var in self.members:
            shape = (None, 3 * self.n_joints)
            for layer in layers:
                layer.build(shape)
                shape = (None, layer.units)
            mean.build(shape)
            var.build(shape)
        self.built = True

    def member(self, k: int, inputs: Any) -> tuple[Any, Any]:
        """Member k's (μ, σ²) of Δθ̇ for unscaled ``[q, a]``."""
        layers, mean, var = self.members[k]
        h = inputs / ops.convert_to_tensor(self.input_scale, inputs.dtype)
        for layer in layers:
            h = layer(h)
        return mean(h), ops.maximum(ops.softplus(var(h)), 1e-3)

    def member_nll(self, k: int, inputs: Any, target: Any) -> Any:
        """Mean Gaussian negative log-likelihood of member k on Δθ̇ targets (constant dropped)."""
        mu, var = self.member(k, inputs)
        return ops.mean(0.5 * ops.log(var) + 0.5 * ops.square(mu - target) / var)

    def call(self, inputs: Any) -> Any:
        """Δθ̇̂: the ensemble mean of the members' means."""
        return ops.mean(ops.stack([self.member(k, inputs)[0] for k in range(self.ensemble_size)]), axis=0)

    def next_state(self, q: Any, a: Any) -> Any:
        """The semi-implicit step of the class docstring."""
        q = ops.convert_to_tensor(q, dtype=self.compute_dtype)
        a = ops.cast(a, q.dtype)
        n = self.n_joints
        vel = q[:, n:] + self(ops.concatenate([q, a], axis=-1))
        pos = ops.clip(q[:, :n] + self.dt * vel, -self.angle_limit, self.angle_limit)
        return ops.concatenate([pos, ops.clip(vel, -self.velocity_limit, self.velocity_limit)], axis=-1)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            hidden_units=list(self.hidden_units),
            ensemble_size=self.ensemble_size,
            dt=self.dt,
            angle_limit=self.angle_limit,
            velocity_limit=self.velocity_limit,
            input_scale=list(self.input_scale),
            n_joints=self.n_joints,
        )
        return config
