"""A functional view of any built Keras model: ``y = f(θ, x)`` with θ a list of tensors.

The inner loop of ML3 differentiates ``θ' = θ − α ∇_θ M_φ(f_θ(x), y)`` with respect
to φ, so θ must be plain tensors (never ``assign``-ed variables). Keras 3's
``stateless_call`` gives exactly that view; this module wraps it and adds the
non-trainable state (BatchNorm statistics) as explicit inputs and outputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

Params = list[tf.Tensor]


class FunctionalModel:
    """Stateless access to a built Keras model.

    ``apply(params, x, state)`` runs the model with ``params`` in place of its
    trainable variables and ``state`` in place of its non-trainable ones and
    returns ``(outputs, new_state)``; the model's own variables are never touched.

    Args:
        model: a built ``keras.Model`` (call it once, or give it an ``Input``).

    Example:
        >>> import keras, numpy as np
        >>> net = keras.Sequential([keras.Input((1,)), keras.layers.Dense(4), keras.layers.Dense(1)])
        >>> f = FunctionalModel(net)
        >>> theta = f.params()
        >>> y = f(theta, np.zeros((3, 1), "float32"))   # same as net(x)
    """

    def __init__(self, model: keras.Model) -> None:
        if not isinstance(model, keras.Model):
            raise ValueError(f"model must be a keras.Model, got {type(model).__name__}")
        if not model.built:
            raise ValueError(f"model {model.name!r} is not built: call it once or give it an Input first")
        self.model = model
        # What a fresh draw gives a vector or scalar parameter: the constant it holds now, when the
        # model is built but not trained (biases 0, BatchNorm/LayerNorm scales 1), else 0.
        self._fills = [_constant_of(v) if len(v.shape) < 2 else None for v in model.trainable_variables]

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the trainable parameters, aligned with ``model.trainable_variables``."""
        return [tuple(v.shape) for v in self.model.trainable_variables]

    def params(self) -> Params:
        """Current values of the trainable variables, as tensors."""
        return [tf.convert_to_tensor(v) for v in self.model.trainable_variables]

    def state(self) -> Params:
        """Current values of the non-trainable variables (e.g. BatchNorm statistics)."""
        return [tf.convert_to_tensor(v) for v in self.model.non_trainable_variables]

    def apply(
        self,
        params: Sequence[tf.Tensor],
        x: Any,
        state: Sequence[tf.Tensor] | None = None,
        training: bool = False,
    ) -> tuple[Any, Params]:
        """``(f_θ(x), new_state)``; ``state=None`` uses the model's current state."""
        if len(params) != len(self.model.trainable_variables):
            raise ValueError(
                f"params has {len(params)} tensors, the model has "
                f"{len(self.model.trainable_variables)} trainable variables"
            )
        if state is None:
            state = self.state()
        y, new_state = self.model.stateless_call(list(params), list(state), x, training=training)
        return y, list(new_state)

    def __call__(
        self,
        params: Sequence[tf.Tensor],
        x: Any,
        state: Sequence[tf.Tensor] | None = None,
        training: bool = False,
    ) -> Any:
        return self.apply(params, x, state, training)[0]

    def assign(self, params: Sequence[tf.Tensor]) -> None:
        """Write ``params`` into the model's trainable variables (outside any gradient)."""
        for v, p in zip(self.model.trainable_variables, params, strict=True):
            v.assign(p)

    def init_params(self, seed: Any) -> Params:
        """Fresh parameters: Xavier-uniform kernels, zero biases (the authors' reset).

        A vector or scalar parameter takes the constant its variable held when this view was
        made (a fresh model: 0 for biases, 1 for BatchNorm/LayerNorm scales), or 0 if it held
        several values.

        Deterministic in ``seed`` (a shape-``[2]`` int tensor or pair), graph-friendly
        (stateless random ops), so a compiled meta-step can re-initialise the learner.
        """
        seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)  # int64: no overflow (ml3tf.seeds)
        out = []
        for i, v in enumerate(self.model.trainable_variables):
            shape = tuple(v.shape)
            dtype = v.dtype
            if len(shape) < 2:
                out.append(tf.fill(shape, tf.constant(self._fills[i], dtype)))
                continue
            limit = glorot_limit(shape)
            sub = tf.random.experimental.stateless_fold_in(seed, i, alg="philox")
            out.append(
                tf.random.stateless_uniform(
                    shape, sub, minval=-limit, maxval=limit, dtype=dtype, alg="philox"
                )
            )
        return out


def glorot_limit(shape: Sequence[int]) -> float:
    """Bound of Xavier/Glorot uniform init: sqrt(6 / (fan_in + fan_out))."""
    receptive = math.prod(shape[:-2]) if len(shape) > 2 else 1
    fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
    return math.sqrt(6.0 / (fan_in + fan_out))


def _constant_of(variable: Any) -> float:
    """The one value every element of ``variable`` holds, or 0.0 if they differ."""
    values = keras.ops.convert_to_numpy(variable)
    if values.size and (values == values.flat[0]).all():
        return float(values.flat[0])
    return 0.0
