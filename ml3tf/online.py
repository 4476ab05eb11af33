"""Online loss learning during ``model.fit`` (AdaLFL-style): M_φ adapts while your model trains.

Every ``every`` training steps, before the model's own update, the loss network takes one
meta-step by the one-step look-ahead meta-gradient:

    θ'(φ) = θ − α ∇_θ mean M_φ(f_θ(x_b), y_b)                  (x_b, y_b: the training batch)
    φ     ← φ − η ∇_φ L_task(f_θ'(φ)(x_v), y_v)                 (x_v, y_v: a meta batch)

then the model's optimizer updates θ on ``mean M_φ(f_θ(x_b), y_b)`` with the new φ, as
``compile``/``fit`` always do. L_task is MSE (regression) or cross-entropy (classification).
The look-ahead differentiates **one plain SGD step** with α = the model optimizer's current
learning rate (or ``lookahead_lr``), whatever that optimizer is (SGD, Adam, …): the rule
AdaLFL uses; with Adam the model's real step differs from the look-ahead by its
preconditioning. The meta batch is ``meta_batch_size`` random rows of ``meta_data``: a
validation set ``(x_val, y_val)`` (default when given) or ``"train"`` (the training batch
itself, as AdaLFL does). φ starts from ``loss`` (e.g. a loss from ``ml3tf.learn_loss``: an
offline warm start) or from a fresh network. φ's optimizer is Adam at ``meta_lr``.

``OnlineLossLearning`` wraps your model; ``compile`` and ``fit`` take your optimizer, batch
size, metrics, callbacks, validation data and ``jit_compile``; the logs add ``meta_task_loss``
(L_task after the look-ahead) and ``loss`` is the learned loss. Your model's weights are the
wrapper's: save ``online.model`` as usual, and the loss as ``online.learned_loss()``.

Example:
    >>> online = ml3tf.OnlineLossLearning(model, kind="classification", validation_data=(xv, yv))
    >>> online.compile(optimizer=keras.optimizers.Adam(1e-3), metrics=["accuracy"])
    >>> online.fit(x, y, batch_size=32, epochs=10, validation_data=(xv, yv))
    >>> model.save("model.keras"); online.learned_loss().network.save("loss.keras")
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ml3tf.data import as_rows, outputs_logits
from ml3tf.functional import FunctionalModel
from ml3tf.losses import KINDS, LearnedLoss, default_meta_loss, fit_to_baseline, one_hot, prediction_loss

log = logging.getLogger("ml3tf")

META_DATA = ("validation", "train")


def _copy_network(network: keras.Model) -> keras.Model:
    """A new loss network of the same architecture holding the same weights."""
    copy = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(network))
    if not copy.built:
        copy.build(
            (None, network.input_dim if hasattr(network, "input_dim") else network.inputs[0].shape[-1])
        )
    copy.set_weights(network.get_weights())
    return copy


@keras.saving.register_keras_serializable(package="ml3tf")
class OnlineLossLearning(keras.Model):
    """Your Keras model, trained by ``fit`` on a loss network that learns online (module docstring).

    Args:
        model: your built Keras model (its variables are trained in place).
        kind: ``"regression"`` or ``"classification"``.
        loss: the starting loss: ``"baseline"`` (default: a fresh network of ``kind`` fitted to
            MSE / cross-entropy, ``ml3tf.losses.fit_to_baseline``), ``"random"`` (the fresh
            network as drawn), or a ``LearnedLoss`` or loss network (copied; never changed),
            e.g. from ``ml3tf.learn_loss`` (an offline warm start).
        validation_data: ``(x_val, y_val)``: the meta batches' rows (``meta_data="validation"``).
        meta_data: ``"validation"`` (default with ``validation_data``) or ``"train"``.
        meta_batch_size: rows per meta batch (at most the validation set's size).
        meta_lr: Adam learning rate of φ.
        every: one meta-step every N training steps (``0``: φ frozen, plain training on it).
        lookahead_lr: α of the look-ahead; default the model optimizer's current learning rate.
        from_logits: classification: the model outputs logits; default: its last layer has no
            softmax/sigmoid.
        target_mean, target_std: regression: the scale a fresh loss network sees targets on
            (default: the validation targets' mean and standard deviation, else 0 and 1).
        meta_loss_hidden: hidden widths of a fresh loss network.
        seed: seed of the meta batches' rows and of a fresh network's weights.
    """

    def __init__(
        self,
        model: keras.Model,
        kind: str = "regression",
        *,
        loss: LearnedLoss | keras.Model | str = "baseline",
        validation_data: tuple[Any, Any] | None = None,
        meta_data: str | None = None,
        meta_batch_size: int = 256,
        meta_lr: float = 1e-3,
        every: int = 1,
        lookahead_lr: float | None = None,
        from_logits: bool | None = None,
        target_mean: float | None = None,
        target_std: float | None = None,
        meta_loss_hidden: Sequence[int] = (50, 50),
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(model, keras.Model) or not model.built:
            raise ValueError(f"model must be a built keras.Model, got {type(model).__name__}")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        meta_data = meta_data or ("validation" if validation_data is not None else "train")
        if meta_data not in META_DATA:
            raise ValueError(f"meta_data must be one of {META_DATA}, got {meta_data!r}")
        if meta_data == "validation" and validation_data is None:
            raise ValueError("meta_data='validation' needs validation_data=(x_val, y_val)")
        for name, value, low in (("meta_batch_size", meta_batch_size, 1), ("every", every, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        for name, value in (("meta_lr", meta_lr), ("lookahead_lr", lookahead_lr)):
            if value is not None and not (
                isinstance(value, (int, float)) and np.isfinite(value) and value > 0
            ):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        self.model = model
        self.kind = kind
        self._init_args = {
            "kind": kind,
            "meta_batch_size": meta_batch_size,
            "meta_lr": meta_lr,
            "every": every,
            "lookahead_lr": lookahead_lr,
            "seed": seed,
        }
        self.meta_data = meta_data
        self.every = every
        self.meta_lr = float(meta_lr)
        self.lookahead_lr = None if lookahead_lr is None else float(lookahead_lr)
        self.seed = int(seed)
        self._functional = FunctionalModel(model)
        out_shape = tuple(model.outputs[0].shape[1:]) if getattr(model, "outputs", None) else None
        width = int(np.prod(out_shape)) if out_shape else None
        if kind == "classification":
            if from_logits is None:
                from_logits = outputs_logits(model)
            self.from_logits = bool(from_logits)
        else:
            self.from_logits = False
        self._meta_x = self._meta_y = None
        if validation_data is not None:
            if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
                raise ValueError("validation_data must be (x_val, y_val)")
            xv = as_rows("validation_data x", validation_data[0]).astype(np.float32)
            yv = as_rows("validation_data y", validation_data[1], len(xv))
            self._meta_x, self._meta_y = tf.constant(xv), tf.constant(yv)
            self.meta_batch_size = min(meta_batch_size, len(xv))
        else:
            self.meta_batch_size = meta_batch_size
        if isinstance(loss, str):
            if loss not in ("baseline", "random"):
                raise ValueError(
                    f"loss must be 'baseline', 'random', a LearnedLoss or a network, got {loss!r}"
                )
            from ml3tf.seeds import seeded

            classes, mean, std = 0, 0.0, 1.0
            if kind == "classification":
                if width is None:
                    raise ValueError("cannot tell the model's number of classes: give it an Input")
                classes = 2 if width == 1 else width
            else:
                ys = None if self._meta_y is None else np.asarray(validation_data[1], np.float64)
                if ys is not None:
                    mean, std = float(ys.mean()), float(ys.std()) or 1.0
                mean = mean if target_mean is None else float(target_mean)
                std = std if target_std is None else float(target_std)
            with seeded(self.seed):
                net = default_meta_loss(kind, classes, meta_loss_hidden, mean, std)
            if loss == "baseline":
                fit_to_baseline(net, kind, mean, std, seed=self.seed)
        else:
            source = loss.network if isinstance(loss, LearnedLoss) else loss
            if not isinstance(source, keras.Model):
                raise ValueError(f"loss must be a LearnedLoss or a loss network, got {type(loss).__name__}")
            net = _copy_network(source)
        self.learned = LearnedLoss(net, kind=kind, from_logits=self.from_logits)  # freezes net
        self.meta_loss_network = net
        self.num_classes = self.learned.input_dim // 2
        self.meta_optimizer = keras.optimizers.Adam(self.meta_lr)
        self.meta_optimizer.build(self._phi)
        self.meta_task_loss = keras.metrics.Mean(name="meta_task_loss")

    @property
    def trainable(self) -> bool:
        return keras.Model.trainable.fget(self)

    @trainable.setter
    def trainable(self, value: bool) -> None:
        keras.Model.trainable.fset(self, value)
        network = self.__dict__.get("meta_loss_network")  # absent while Keras' __init__ sets the flag
        if network is not None:  # φ is never trained by fit's optimizer, whatever the flag
            network.trainable = False

    @property
    def _phi(self) -> list:
        """φ: every weight of the loss network (frozen for ``fit``; updated by the meta-steps)."""
        return list(self.meta_loss_network.non_trainable_variables)

    # --- Keras plumbing --------------------------------------------------------------------
    def call(self, inputs: Any, training: bool | None = None) -> Any:
        return self.model(inputs, training=training)

    def compile(self, optimizer: Any = "rmsprop", loss: Any = None, **kwargs: Any) -> None:
        """``keras.Model.compile`` with the learned loss (``loss`` must be left out)."""
        if loss is not None:
            raise ValueError("OnlineLossLearning trains on its learned loss: leave loss= out of compile")
        super().compile(optimizer=optimizer, loss=self.learned, **kwargs)

    def learned_loss(self) -> LearnedLoss:
        """A copy of the loss as it is now (further training does not change it)."""
        return LearnedLoss(
            _copy_network(self.meta_loss_network), kind=self.kind, from_logits=self.from_logits
        )

    def get_config(self) -> dict[str, Any]:
        """The wrapped model, the loss (with its weights) and the meta-step settings. Not saved: the
        validation rows (a loaded wrapper takes its meta batches from the training batches,
        ``meta_data="train"``, unless it is built again with ``validation_data``) and the moments
        of φ's Adam (it starts afresh)."""
        config = super().get_config()
        config.update(
            self._init_args,
            model=keras.saving.serialize_keras_object(self.model),
            loss=keras.saving.serialize_keras_object(self.learned),
            from_logits=self.from_logits,
        )
        return config

    def get_compile_config(self) -> dict[str, Any] | None:
        config = super().get_compile_config()
        if config is not None:
            config = {k: v for k, v in config.items() if k != "loss"}  # the learned loss is in get_config
        return config

    def compile_from_config(self, config: dict[str, Any]) -> None:
        """``compile`` with a loaded compile config (optimizer, metrics …; the loss is the learned one)."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> OnlineLossLearning:
        config = dict(config)
        model = keras.saving.deserialize_keras_object(config.pop("model"))
        loss = keras.saving.deserialize_keras_object(config.pop("loss"))
        return cls(model, loss=loss, meta_data="train", **config)

    # --- the meta-step -----------------------------------------------------------------------
    def _meta_batch(self, x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        if self.meta_data == "train":
            return x, y
        n = tf.shape(self._meta_x)[0]
        seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(self.optimizer.iterations, tf.int64)])
        keys = tf.random.stateless_uniform((n,), seed, alg="philox")
        idx = tf.math.top_k(keys, self.meta_batch_size).indices  # rows without replacement
        return tf.gather(self._meta_x, idx), tf.gather(self._meta_y, idx)

    def meta_objective(self, x: tf.Tensor, y: tf.Tensor, phi: list) -> tf.Tensor:
        """``L_task(f_θ'(φ)(x_v), y_v)`` after the look-ahead step on ``(x, y)``; differentiable in φ."""
        f = self._functional
        theta = [tf.convert_to_tensor(v) for v in self.model.trainable_variables]
        state = [tf.convert_to_tensor(v) for v in self.model.non_trainable_variables]
        alpha = self.lookahead_lr if self.lookahead_lr is not None else self.optimizer.learning_rate
        with tf.GradientTape() as inner:
            inner.watch(theta)
            y_pred, _ = f.apply(theta, x, state, training=True)
            feats, _ = self.learned.features(y, y_pred)
            out, _ = self.meta_loss_network.stateless_call([], phi, feats)
            inner_loss = tf.reduce_mean(out)
        grads = inner.gradient(inner_loss, theta)
        alpha = tf.cast(alpha, theta[0].dtype)
        ahead = [t if g is None else t - alpha * g for t, g in zip(theta, grads, strict=True)]
        xq, yq = self._meta_batch(x, y)
        q_pred, _ = f.apply(ahead, xq, state, training=True)
        target = one_hot(yq, self.num_classes) if self.kind == "classification" else yq
        return prediction_loss(self.kind, self.from_logits, q_pred, target)

    def meta_step(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """One update of φ by the look-ahead meta-gradient; returns the meta task loss."""
        variables = self._phi
        phi = [tf.convert_to_tensor(v) for v in variables]
        with tf.GradientTape() as tape:
            tape.watch(phi)
            value = self.meta_objective(x, y, phi)
        grads = tape.gradient(value, phi)
        ok = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads if g is not None])
        ok = tf.logical_and(ok, tf.math.is_finite(value))

        def apply() -> tf.Tensor:
            self.meta_optimizer.apply(
                [tf.zeros_like(p) if g is None else g for p, g in zip(phi, grads, strict=True)], variables
            )
            return tf.constant(True)

        tf.cond(ok, apply, lambda: tf.constant(False))  # a non-finite meta-gradient is skipped
        return value

    def train_step(self, data: Any) -> dict[str, Any]:
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        if self.every:
            if self.every == 1:
                self.meta_task_loss.update_state(self.meta_step(x, y))
            else:

                def step() -> tf.Tensor:
                    self.meta_task_loss.update_state(self.meta_step(x, y))
                    return tf.constant(True)

                tf.cond(tf.equal(self.optimizer.iterations % self.every, 0), step, lambda: tf.constant(False))
        logs = super().train_step(data)
        return {**logs, "meta_task_loss": self.meta_task_loss.result()}
