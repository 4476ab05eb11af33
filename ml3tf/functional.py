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

        Deterministic in ``seed`` (a shape-``[2]`` int tensor or pair), graph-friendly
        (stateless random ops), so a compiled meta-step can re-initialise the learner.
        """
        seed = tf.cast(tf.convert_to_tensor(seed), tf.int32)
        out = []
        for i, v in enumerate(self.model.trainable_variables):
            shape = tuple(v.shape)
            dtype = v.dtype
            if len(shape) < 2:
                out.append(tf.zeros(shape, dtype))
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


class BatchedFunctionalModel:
    """B independent copies of a Dense-only learner as one batched computation.

    With θ_b stacked on a leading axis (kernels ``(B, in, out)``, biases ``(B, out)``)
    and inputs ``x`` of shape ``(B, N, in)``, every Dense layer becomes one batched
    matmul ``h_b ← act(h_b W_b + c_b)`` for all b at once — the same number of ops as
    one task, which is what makes a meta-batch cheap (``bench/scale.py``). Outputs
    come back flattened task-major to ``(B·N, out)``: the B·N examples of the
    meta-batch as one set, which is how a ``SupervisedTask`` with per-example-mean
    losses sees them (``MetaTrainer`` rescales the inner loss by B so that each θ_b
    gets exactly its own task's gradient).

    Only ``keras.Sequential`` models of ``Dense`` and ``Activation`` layers are
    supported (``supports``); other learners use ``tf.vectorized_map``.

    Example:
        >>> net = keras.Sequential([keras.Input((1,)), keras.layers.Dense(8, activation="tanh"),
        ...                         keras.layers.Dense(1)])
        >>> f = BatchedFunctionalModel(net)
        >>> theta = [tf.stack([p] * 4) for p in FunctionalModel(net).params()]   # B = 4
        >>> f(theta, tf.zeros((4, 10, 1))).shape
        TensorShape([40, 1])
    """

    def __init__(self, model: keras.Model) -> None:
        if not self.supports(model):
            raise ValueError(
                f"model {getattr(model, 'name', model)!r} is not a built Sequential of Dense/Activation "
                "layers: BatchedFunctionalModel cannot batch it"
            )
        self.model = model
        index = {id(v): i for i, v in enumerate(model.trainable_variables)}
        self._plan: list[tuple[Any, int | None, int | None]] = []  # (activation, kernel index, bias index)
        for layer in model.layers:
            if isinstance(layer, keras.layers.Dense):
                bias = index[id(layer.bias)] if layer.use_bias else None
                self._plan.append((layer.activation, index[id(layer.kernel)], bias))
            else:
                self._plan.append((layer.activation, None, None))

    @staticmethod
    def supports(model: Any) -> bool:
        """Whether ``model`` is a built ``Sequential`` of trainable ``Dense``/``Activation`` layers."""
        if not isinstance(model, keras.Sequential) or not model.built or model.non_trainable_variables:
            return False
        for layer in model.layers:
            if isinstance(layer, keras.layers.Dense):
                if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
                    return False
            elif not isinstance(layer, keras.layers.Activation):
                return False
        return True

    def apply(
        self,
        params: Sequence[tf.Tensor],
        x: Any,
        state: Sequence[tf.Tensor] | None = None,
        training: bool = False,
    ) -> tuple[tf.Tensor, Params]:
        """``(f_θ_b(x_b) for all b, flattened to (B·N, out); state)`` — see the class docstring."""
        if len(params) != len(self.model.trainable_variables):
            raise ValueError(
                f"params has {len(params)} tensors, the model has "
                f"{len(self.model.trainable_variables)} trainable variables"
            )
        h = tf.convert_to_tensor(x, dtype=params[0].dtype)
        for activation, k, b in self._plan:
            if k is not None:
                h = tf.matmul(h, params[k])
                if b is not None:
                    h = h + params[b][:, None, :]
            h = activation(h)
        return tf.reshape(h, (-1, h.shape[-1])), list(state or [])

    def __call__(
        self,
        params: Sequence[tf.Tensor],
        x: Any,
        state: Sequence[tf.Tensor] | None = None,
        training: bool = False,
    ) -> tf.Tensor:
        return self.apply(params, x, state, training)[0]
