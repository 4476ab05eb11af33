"""Resumable meta-training: φ, the outer optimizer's moments and the step counter.

Everything else a run needs is a pure function of ``(seed, step)`` (task sampling
and learner inits use stateless seeds), so restoring these three is enough for a
resumed run to end with exactly the metrics of an uninterrupted one. When θ₀ is
meta-learned (MAML) the learner and its outer optimizer are saved too.

A task that carries state of its own across meta-steps (the reacher's learned dynamics
model, its optimizer and its growing transition data) hands it over as ``task_state``:
named trackables saved under ``task/`` in every checkpoint and restored with it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import keras
import tensorflow as tf

log = logging.getLogger("ml3tf")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _container(kind: str, state: Mapping[str, Any]) -> tf.Module:
    """A ``tf.Module`` holding ``state``'s trackables as attributes (its checkpoint node)."""
    container = tf.Module(name=kind)
    for name, value in state.items():
        if not name.isidentifier() or name.startswith("_") or hasattr(container, name):
            what = kind.replace("_", " ")
            raise ValueError(f"{what} name {name!r} must be a public identifier, not a tf.Module attribute")
        setattr(container, name, value)
    return container


class Checkpointer:
    """``tf.train.CheckpointManager`` over a meta-loss network and its optimizer.

    Args:
        directory: where checkpoints go (``<run dir>/checkpoints``).
        meta_loss: the loss network whose variables are φ.
        optimizer: the built outer Keras optimizer.
        max_to_keep: how many checkpoints to keep.
        learner: the learner whose variables are a meta-learned θ₀ (MAML), or ``None``.
        init_optimizer: θ₀'s outer optimizer (with ``learner``).
        task_state: the task's own state, ``{name: trackable}`` (variables, Keras models and
            optimizers, ``tf.train.experimental.PythonState`` …), saved under ``task/``; what
            they hold at each ``save`` is what a ``restore`` puts back. A checkpoint written
            without it (an older ml3tf) still restores the rest: ``task_state_restored`` says which.
        run_state: the run's own state beyond φ, ``{name: trackable}`` (``select_every``'s selected
            φ and window scores, ``ml3tf.run``), saved under ``run/`` and restored with φ: a
            checkpoint without it is not one of this run.

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
        task_state: Mapping[str, Any] | None = None,
        run_state: Mapping[str, Any] | None = None,
    ) -> None:
        self.directory = os.fspath(directory)
        self._step = tf.Variable(0, dtype=tf.int64, trainable=False)
        extra = {}
        if learner is not None:
            extra["learner"] = learner
        if init_optimizer is not None:
            extra["init_optimizer"] = init_optimizer
        if run_state:
            extra["run"] = _container("run_state", run_state)
        core = dict(meta_loss=meta_loss, optimizer=optimizer, step=self._step, **extra)
        # Restored on their own roots: a checkpoint without task/ (written before tasks had
        # state) restores the core and reports the task state missing instead of failing.
        self._core = tf.train.Checkpoint(**core)
        self._task: tf.train.Checkpoint | None = None
        #: Whether the last ``restore`` put the task state back (False: none given, no
        #: checkpoint, or a checkpoint without it).
        self.task_state_restored = False
        if task_state:
            container = _container("task_state", task_state)
            self._task = tf.train.Checkpoint(task=container)
            self._checkpoint = tf.train.Checkpoint(**core, task=container)
        else:
            self._checkpoint = self._core
        self._manager = tf.train.CheckpointManager(self._checkpoint, self.directory, max_to_keep=max_to_keep)

    @property
    def latest(self) -> str | None:
        """Path prefix of the newest checkpoint, or ``None``."""
        return self._manager.latest_checkpoint

    def restore(self) -> int:
        """Restore the newest readable checkpoint; returns the completed meta-steps (0 if none).

        A newest checkpoint that cannot be read (truncated by a full disk, say) is skipped
        for the one before it, with a warning; ``ValueError`` when none can be read. The task
        state comes from the same checkpoint as the rest (``task_state_restored``).
        """
        candidates = list(reversed(self._manager.checkpoints))  # newest first
        errors = []
        self.task_state_restored = False
        for path in candidates:
            try:
                self._core.restore(path).expect_partial().assert_existing_objects_matched()
                self.task_state_restored = self._restore_task(path)
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

    def _restore_task(self, path: str) -> bool:
        if self._task is None:
            return False
        names = tf.train.load_checkpoint(path).get_variable_to_shape_map()
        if not any(name.startswith("task/") for name in names):
            return False  # written before the task had state (or without it)
        try:
            self._task.restore(path).expect_partial().assert_existing_objects_matched()
        except AssertionError as exc:  # the task's state changed shape since (another ml3tf)
            log.warning(
                "checkpoint %s: the task's state does not match it (%s); it is not restored",
                os.path.basename(path),
                _first_line(exc),
            )
            return False
        return True

    def save(self, step: int) -> str:
        """Save after ``step`` completed meta-steps; returns the checkpoint path."""
        self._step.assign(step)
        return self._manager.save(checkpoint_number=step)
