"""Resumable meta-training: φ, the outer optimizer's moments and the step counter.

Everything else a run needs is a pure function of ``(seed, step)`` (task sampling
and learner inits use stateless seeds), so restoring these three is enough for a
resumed run to end with exactly the metrics of an uninterrupted one. When θ₀ is
meta-learned (MAML) the learner and its outer optimizer are saved too.
"""

from __future__ import annotations

import logging
import os

import keras
import tensorflow as tf

log = logging.getLogger("ml3tf")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


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
        """Restore the newest readable checkpoint; returns the completed meta-steps (0 if none).

        A newest checkpoint that cannot be read (truncated by a full disk, say) is skipped
        for the one before it, with a warning; ``ValueError`` when none can be read.
        """
        candidates = list(reversed(self._manager.checkpoints))  # newest first
        errors = []
        for path in candidates:
            try:
                self._checkpoint.restore(path).assert_existing_objects_matched()
            except Exception as exc:  # corrupt, truncated or foreign checkpoint
                errors.append(f"{path!r}: {_first_line(exc)}")
                continue
            if errors:
                log.warning(
                    "checkpoint %s could not be restored; resuming from the previous one, %s",
                    errors[0],
                    os.path.basename(path),
                )
            return int(self._step.numpy())
        if errors:
            raise ValueError(f"no checkpoint in {self.directory!r} could be restored: {'; '.join(errors)}")
        return 0

    def save(self, step: int) -> str:
        """Save after ``step`` completed meta-steps; returns the checkpoint path."""
        self._step.assign(step)
        return self._manager.save(checkpoint_number=step)
