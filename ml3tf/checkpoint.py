"""Resumable meta-training: φ, the outer optimizer's moments and the step counter.

Everything else a run needs is a pure function of ``(seed, step)`` (task sampling
and learner inits use stateless seeds), so restoring these three is enough for a
resumed run to end with exactly the metrics of an uninterrupted one. When θ₀ is
meta-learned (MAML) the learner and its outer optimizer are saved too.
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf


class Checkpointer:
    """``tf.train.CheckpointManager`` over a meta-loss network and its optimizer.

    Args:
        directory: where checkpoints go (``<run dir>/checkpoints``).
        meta_loss: the loss network whose variables are φ.
        optimizer: the built outer Keras optimizer.
        max_to_keep: how many checkpoints to keep.
        learner: the learner whose variables are a meta-learned θ₀ (MAML), or ``None``.
        init_optimizer: θ₀'s outer optimizer (with ``learner``).

    Example:
        >>> ck = Checkpointer("runs/sine/checkpoints", trainer.meta_loss, trainer.optimizer)
        >>> start = ck.restore()      # 0 when there is nothing to resume
        >>> ck.save(step=100)
    """

    def __init__(
        self,
        directory: str,
        meta_loss: keras.Model,
        optimizer: keras.optimizers.Optimizer,
        max_to_keep: int = 2,
        learner: keras.Model | None = None,
        init_optimizer: keras.optimizers.Optimizer | None = None,
    ) -> None:
        self.directory = os.fspath(directory)
        self._step = tf.Variable(0, dtype=tf.int64, trainable=False)
        extra = {}
        if learner is not None:
            extra["learner"] = learner
        if init_optimizer is not None:
            extra["init_optimizer"] = init_optimizer
        self._checkpoint = tf.train.Checkpoint(
            meta_loss=meta_loss, optimizer=optimizer, step=self._step, **extra
        )
        self._manager = tf.train.CheckpointManager(self._checkpoint, self.directory, max_to_keep=max_to_keep)

    @property
    def latest(self) -> str | None:
        """Path prefix of the newest checkpoint, or ``None``."""
        return self._manager.latest_checkpoint

    def restore(self) -> int:
        """Restore the newest checkpoint; returns the number of completed meta-steps (0 if none)."""
        path = self._manager.latest_checkpoint
        if path is None:
            return 0
        try:
            self._checkpoint.restore(path).assert_existing_objects_matched()
        except Exception as exc:  # corrupt or foreign checkpoint
            raise ValueError(f"checkpoint {path!r} could not be restored: {exc}") from None
        return int(self._step.numpy())

    def save(self, step: int) -> str:
        """Save after ``step`` completed meta-steps; returns the checkpoint path."""
        self._step.assign(step)
        return self._manager.save(checkpoint_number=step)
