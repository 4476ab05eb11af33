"""Small tasks for tests: a linear learner with an analytic loss, and a smooth MLP task."""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from ml3tf.meta_loss import MetaLossNetwork
from ml3tf.meta_trainer import MetaTrainConfig
from ml3tf.models.mlp import make_mlp
from ml3tf.task import SupervisedTask, TaskBatch


class ScaledSquare(keras.Model):
    """M_φ(ŷ, y) = φ · (ŷ − y)²: a one-parameter loss with a closed-form meta-gradient."""

    def __init__(self, phi=1.5, **kwargs):
        super().__init__(**kwargs)
        self.phi = self.add_weight(shape=(), initializer=keras.initializers.Constant(phi), name="phi")

    def call(self, feats):
        return self.phi * tf.square(feats[:, :1] - feats[:, 1:2])


@dataclasses.dataclass(frozen=True)
class ToyOptions:
    learner: str = "linear"
    meta_loss: str = "scaled_square"
    n: int = 16
    split: bool = False
    nan_at: int | None = None
    target: float = 2.0


class ToyTask(SupervisedTask):
    """y = 2x − 1 on fixed points; learner and loss network chosen by the test."""

    name = "toy"
    Options = ToyOptions

    def __init__(self, **options):
        self.options = o = ToyOptions(**options)
        self.learner_kind = o.learner
        self.meta_loss_kind = o.meta_loss
        self.n = o.n
        self.split = o.split
        self.nan_at = o.nan_at

    def default_config(self):
        return MetaTrainConfig(inner_steps=1, inner_lr=0.05, meta_lr=0.01, meta_steps=5, eval_steps=5)

    def make_learner(self):
        if self.learner_kind == "linear":
            return make_mlp(1, (), 1, use_bias=False, name="linear")
        return make_mlp(1, (8, 8), 1, activation="tanh", name="smooth")

    def make_meta_loss(self):
        if self.meta_loss_kind == "scaled_square":
            return ScaledSquare()
        return MetaLossNetwork(2, (6, 6), activation="tanh", use_bias=True)

    def _data(self, seed, step):
        rng = np.random.default_rng([seed, step])
        x = rng.uniform(-1, 1, size=(self.n, 1)).astype(np.float32)
        y = (2 * x - 1 + 0.3 * np.sin(3 * x)).astype(np.float32)
        return x, y

    def sample(self, seed, step, batch_size):
        xs, ys = zip(*[self._data(seed, step * batch_size + b) for b in range(batch_size)], strict=True)
        x, y = np.stack(xs), np.stack(ys)
        if self.nan_at is not None and step == self.nan_at:
            y = y * np.nan
        support = {"x": x, "y": y}
        if not self.split:
            return TaskBatch(support, support)
        xq, yq = zip(
            *[self._data(seed + 1000, step * batch_size + b) for b in range(batch_size)], strict=True
        )
        return TaskBatch(support, {"x": np.stack(xq), "y": np.stack(yq)})

    def eval_splits(self, seed):
        x, y = self._data(seed, 10**6)
        return {"train": (x[None], y[None]), "test": (x[None] * 2, y[None] * 2)}


class ToyExtraTask(ToyTask):
    """``ToyTask`` with meta-train-time information: L_extra = Σ (θ − target)² over all of θ."""

    name = "toy_extra"

    def __init__(self, **options):
        super().__init__(**options)
        self.target = self.options.target

    def extra_loss(self, learner, params, state, data, extra):
        return tf.add_n([tf.reduce_sum(tf.square(p - tf.cast(self.target, p.dtype))) for p in params])


def directional_check(trainer, batch, seeds, directions=3, eps=1e-5):
    """Max relative error of the meta-gradient along random directions vs central differences.

    Perturbs every variable of ``trainer.meta_variables`` (φ and/or a learned θ₀) along
    ``directions`` random directions; asserts the analytic derivative does not vanish.
    """
    variables = trainer.meta_variables
    grads, _ = trainer.meta_gradient(batch, seeds)
    rng = np.random.default_rng(0)
    originals = [v.numpy().copy() for v in variables]
    worst = 0.0
    for _ in range(directions):
        d = [rng.standard_normal(v.shape) for v in variables]
        analytic = sum(float(np.sum(g.numpy() * di)) for g, di in zip(grads, d, strict=True))
        values = []
        for sign in (1.0, -1.0):
            for v, o, di in zip(variables, originals, d, strict=True):
                v.assign(o + sign * eps * di)
            values.append(float(trainer.objective(batch, seeds)[0].numpy()))
        for v, o in zip(variables, originals, strict=True):
            v.assign(o)
        numeric = (values[0] - values[1]) / (2 * eps)
        assert abs(analytic) > 1e-8, "meta-gradient vanished; the check would be vacuous"
        worst = max(worst, abs(analytic - numeric) / max(abs(numeric), 1e-12))
    return worst
