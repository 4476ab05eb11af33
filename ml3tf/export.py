"""Export a ``LearnedLoss`` as a TensorFlow SavedModel with a serving signature.

    serving_default(y_pred, y_true) → {"loss": ℓ (N,), "mean_loss": mean_i ℓ_i ()}

``ℓ_i`` is exactly ``LearnedLoss.per_example`` (see ``ml3tf.losses``): the graph is
traced from the same code, with the network's weights as plain ``tf.Variable``s,
so the SavedModel loads and runs with TensorFlow alone (no ml3tf, no Keras), in
TF Serving, and in ``saved_model_cli``. The batch axis is dynamic.

Example:
    >>> loss = ml3tf.LearnedLoss.pretrained("sine")
    >>> ml3tf.export_saved_model(loss, "export/sine")
    >>> served = tf.saved_model.load("export/sine").signatures["serving_default"]
    >>> served(y_pred=tf.zeros((3, 1)), y_true=tf.ones((3, 1)))["loss"]   # shape (3,)
"""

from __future__ import annotations

import os
import shutil
import tempfile

import tensorflow as tf

from ml3tf.losses import LearnedLoss


class _LossModule(tf.Module):
    """Plain variables + one traced function: nothing in it needs Keras to load."""

    def __init__(self, loss: LearnedLoss) -> None:
        super().__init__(name="learned_loss")
        net = loss.network
        # stateless_call takes (trainable, non_trainable) values; a frozen network has
        # only the latter. Copies: the module holds nothing of Keras.
        self.trainable = [tf.Variable(v.numpy(), trainable=False) for v in net.trainable_variables]
        self.non_trainable = [tf.Variable(v.numpy(), trainable=False) for v in net.non_trainable_variables]
        self._loss = loss

    def serve(self, y_pred: tf.Tensor, y_true: tf.Tensor) -> dict[str, tf.Tensor]:
        network = self._loss.network
        feats, n = self._loss.features(y_true, y_pred)
        out, _ = network.stateless_call(list(self.trainable), list(self.non_trainable), feats)
        per_example = tf.reduce_mean(tf.reshape(tf.cast(out, tf.float32), (n, -1)), axis=-1)
        return {"loss": per_example, "mean_loss": tf.reduce_mean(per_example)}


def _signature_specs(loss: LearnedLoss) -> tuple[tf.TensorSpec, tf.TensorSpec]:
    if loss.kind == "classification":
        classes = loss.input_dim // 2
        return (
            tf.TensorSpec((None, classes), tf.float32, name="y_pred"),
            tf.TensorSpec((None, classes), tf.float32, name="y_true"),
        )
    d = None if loss.input_dim == 2 else loss.input_dim // 2
    return tf.TensorSpec((None, d), tf.float32, name="y_pred"), tf.TensorSpec(
        (None, d), tf.float32, name="y_true"
    )


def export_saved_model(loss: LearnedLoss, out_dir: str | os.PathLike) -> str:
    """Write ``loss`` as a SavedModel into ``out_dir`` (new or empty); returns its absolute path.

    Signature ``serving_default``: ``y_pred``, ``y_true`` float32 of shape ``(None, d)``
    (regression; ``d`` free for a per-element network) or ``(None, C)`` (classification:
    scores as the loss was configured, ``from_logits`` included, and one-hot labels);
    outputs ``loss`` ``(None,)`` and ``mean_loss`` ``()``. The folder appears complete
    or not at all (written beside it, then renamed).

    Raises:
        ValueError: ``loss`` is not a ``LearnedLoss``, or ``out_dir`` is a file, a
            non-empty folder, or not writable.
    """
    if not isinstance(loss, LearnedLoss):
        raise ValueError(f"loss must be an ml3tf.LearnedLoss, got {type(loss).__name__}")
    if not isinstance(out_dir, (str, os.PathLike)) or not os.fspath(out_dir):
        raise ValueError(f"out_dir must be a non-empty path, got {out_dir!r}")
    path = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise ValueError(f"out_dir {os.fspath(out_dir)!r} exists and is not a directory")
        if os.listdir(path):
            raise ValueError(f"out_dir {os.fspath(out_dir)!r} is not empty; refusing to overwrite it")
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"out_dir {os.fspath(out_dir)!r}: cannot create its parent ({exc})") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"out_dir {os.fspath(out_dir)!r} is not writable ({parent!r} is read-only)")

    module = _LossModule(loss)
    y_pred_spec, y_true_spec = _signature_specs(loss)
    serve = tf.function(module.serve, input_signature=[y_pred_spec, y_true_spec])
    tmp = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(path)}-", dir=parent)
    try:
        tf.saved_model.save(module, tmp, signatures={"serving_default": serve.get_concrete_function()})
        if os.path.isdir(path):
            os.rmdir(path)  # empty, checked above
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return path
