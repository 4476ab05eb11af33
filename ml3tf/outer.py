"""The outer optimizers of φ and θ₀ as pure functions of tensors.

Meta-training keeps φ and the optimizer's moments in Keras variables (what checkpoints save
and ``meta_loss.keras`` holds), but a compiled chunk of meta-steps — or several seeds' chunks
in one graph — threads them as plain tensors and writes them back once at the end. This module
is the update of a Keras ``Adam`` / ``SGD`` written on tensors, step for step the arithmetic
Keras itself performs (so a chunk gives the same φ as ``optimizer.apply_gradients`` would):

    Adam:  t ← t + 1,  α_t = η √(1 − β₂ᵗ) / (1 − β₁ᵗ)
           m ← m + (g − m)(1 − β₁),   v ← v + (g² − v)(1 − β₂),   φ ← φ − α_t m / (√v + ε)
    SGD:   t ← t + 1,  φ ← φ − η g

Keras' own ``optimizer.stateless_apply`` would do this, but its TensorFlow backend refuses it.

Example:
    >>> opt = keras.optimizers.Adam(1e-3); opt.build(model.trainable_variables)
    >>> outer = OuterOptimizer(opt)
    >>> params, slots = outer.apply(grads, params, outer.read())
    >>> outer.write(slots)
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf


class OuterOptimizer:
    """A built Keras ``Adam`` (no AMSGrad) or ``SGD`` (no momentum), as ``apply(grads, params, slots)``.

    ``slots`` are the optimizer's state as tensors: the iteration count, then (Adam) the first
    and the second moments in the order of the variables it was built for. The learning rate is
    read from the optimizer when the update is traced (a variable: changing it needs no retrace).

    Raises:
        ValueError: another optimizer, or one with options this update does not implement
            (gradient clipping, weight decay, EMA, AMSGrad, momentum).
    """

    def __init__(self, optimizer: keras.optimizers.Optimizer) -> None:
        self.optimizer = optimizer
        self.kind = {keras.optimizers.Adam: "adam", keras.optimizers.SGD: "sgd"}.get(type(optimizer))
        unsupported = [
            name
            for name in ("clipnorm", "clipvalue", "global_clipnorm", "weight_decay")
            if getattr(optimizer, name, None)
        ]
        if getattr(optimizer, "use_ema", False):
            unsupported.append("use_ema")
        if getattr(optimizer, "amsgrad", False):
            unsupported.append("amsgrad")
        if getattr(optimizer, "momentum", 0.0):
            unsupported.append("momentum")
        if self.kind is None or unsupported:
            raise ValueError(
                f"optimizer must be a plain keras Adam or SGD, got {type(optimizer).__name__}"
                + (f" with {', '.join(unsupported)}" if unsupported else "")
            )
        if not optimizer.built:
            raise ValueError("optimizer must be built (optimizer.build(variables)) before OuterOptimizer")
        self.slot_variables = [optimizer.iterations]
        if self.kind == "adam":
            self.slot_variables += [*optimizer._momentums, *optimizer._velocities]

    def read(self) -> list[tf.Tensor]:
        """The slots' current values."""
        return [tf.convert_to_tensor(v) for v in self.slot_variables]

    def write(self, slots: Sequence[tf.Tensor]) -> None:
        """Store ``slots`` (from ``apply``) in the optimizer's variables."""
        for v, value in zip(self.slot_variables, slots, strict=True):
            v.assign(value)

    def apply(
        self, grads: Sequence[tf.Tensor], params: Sequence[tf.Tensor], slots: Sequence[tf.Tensor]
    ) -> tuple[list[tf.Tensor], list[tf.Tensor]]:
        """``(new params, new slots)`` after one update with ``grads``."""
        opt = self.optimizer
        iterations = slots[0]
        lr_value = tf.convert_to_tensor(opt.learning_rate)
        new_params = []
        if self.kind == "sgd":
            for g, p in zip(grads, params, strict=True):
                lr = tf.cast(lr_value, p.dtype)
                new_params.append(p - tf.cast(g, p.dtype) * lr)
            return new_params, [iterations + 1]
        n = len(params)
        ms, vs = list(slots[1 : 1 + n]), list(slots[1 + n : 1 + 2 * n])
        new_m, new_v = [], []
        for g, p, m, v in zip(grads, params, ms, vs, strict=True):
            dtype = p.dtype
            lr = tf.cast(lr_value, dtype)
            g = tf.cast(g, dtype)
            local_step = tf.cast(iterations + 1, dtype)
            beta_1_power = tf.pow(tf.cast(opt.beta_1, dtype), local_step)
            beta_2_power = tf.pow(tf.cast(opt.beta_2, dtype), local_step)
            alpha = lr * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)
            m = m + (g - m) * (1 - opt.beta_1)
            v = v + (tf.square(g) - v) * (1 - opt.beta_2)
            new_params.append(p - (m * alpha) / (tf.sqrt(v) + opt.epsilon))
            new_m.append(m)
            new_v.append(v)
        return new_params, [iterations + 1, *new_m, *new_v]
