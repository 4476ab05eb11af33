"""``learn_loss``: meta-train a loss for your own Keras model and data, in one ``fit``-like call.

The offline ML3 algorithm on a task drawn from your data (``SupervisedTask.from_arrays``):

    inner:  θ_{k+1} = θ_k − α ∇_θ mean M_φ(f_θk(x_s), y_s)       (K steps, support mini-batch)
    outer:  φ ← φ − η ∇_φ L_task(f_θK(x_q), y_q)                (query rows of the validation split)

with a fresh θ_0 of your model for every task. Meta-training is organised in epochs of
``steps_per_epoch`` meta-steps, as ``model.fit`` is: a progress bar, a ``History`` of per-epoch
logs and Keras callbacks. The logs are, as Keras names them, ``loss``: the epoch mean of the
meta-training task loss L_task (with ``objective``, ``initial_loss`` and ``meta_grad_norm``),
and ``val_loss``: the task loss after the K inner steps on fixed validation tasks (the same
tasks and θ_0 every epoch). ``keras.callbacks.EarlyStopping`` and
``ModelCheckpoint(..., save_best_only=True)`` watch ``val_loss`` by default (their model is
the loss network M_φ; ``restore_best_weights=True`` returns the best φ). The run goes through
``ml3tf.train``'s one training loop: with ``out_dir`` it is checkpointed and resumable
(re-running continues from the last checkpoint; callbacks start afresh), and the data's sha256
is part of its identity.

Example:
    >>> loss = ml3tf.learn_loss(model, x, y, kind="classification", meta_steps=300)
    >>> fresh = keras.models.clone_model(model)
    >>> fresh.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    >>> fresh.fit(x, y, epochs=20)
    >>> loss.history.history["val_loss"]
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ml3tf.config import MetaTrainConfig
from ml3tf.losses import LearnedLoss
from ml3tf.meta_trainer import MetaTrainer
from ml3tf.seeds import meta_test_seeds
from ml3tf.task import SupervisedTask

log = logging.getLogger("ml3tf")

#: The step key of the fixed validation tasks (a meta-step no run reaches).
VALIDATION_STEP = 2**40
#: Epoch logs (Keras' names) ← ``MetaStepInfo`` fields.
_LOG_KEYS = {"loss": "task_loss", "objective": "objective", "initial_loss": "initial_loss",
             "meta_grad_norm": "meta_grad_norm"}  # fmt: skip


def learn_loss(
    learner: Any = None,
    x: Any = None,
    y: Any = None,
    *,
    kind: str = "regression",
    validation_data: Any = None,
    validation_split: float = 0.2,
    task: SupervisedTask | None = None,
    meta_steps: int = 500,
    inner_steps: int = 5,
    inner_lr: float = 1e-2,
    inner_optimizer: str = "sgd",
    meta_lr: float = 1e-3,
    meta_batch_size: int = 4,
    steps_per_epoch: int = 50,
    validation_tasks: int = 8,
    seed: int = 0,
    callbacks: Sequence[keras.callbacks.Callback] | None = None,
    verbose: int = 1,
    out_dir: str | os.PathLike | None = None,
    config: MetaTrainConfig | None = None,
    **task_options: Any,
) -> LearnedLoss:
    """Meta-train a loss network for ``learner`` on ``(x, y)``; returns it as a ``LearnedLoss``.

    Args:
        learner: your Keras model (cloned and re-initialised for every task) or a function
            building it.
        x, y: training arrays (or lists of arrays: several data sets), or ``x`` a finite
            ``tf.data.Dataset`` of ``(x, y)`` and ``y=None``.
        kind: ``"regression"`` (MSE is the task loss) or ``"classification"`` (cross-entropy).
        validation_data: ``(x_val, y_val)`` (or a data set) the task loss is measured on;
            default: ``validation_split`` of the rows, held out.
        task: a ready ``SupervisedTask`` instead of ``learner, x, y`` (any task works).
        meta_steps, inner_steps, inner_lr, inner_optimizer, meta_lr, meta_batch_size, seed:
            the ``MetaTrainConfig`` fields of those names (``config`` sets any other; these
            arguments override it).
        steps_per_epoch: meta-steps per epoch (logs, callbacks, checkpoints).
        validation_tasks: fixed tasks ``val_loss`` averages over.
        callbacks: Keras callbacks; their ``model`` is the loss network.
        verbose: 0 silent, 1 progress bar, 2 one line per epoch (as ``model.fit``).
        out_dir: a run folder (``ml3tf.train``'s layout; resumable); default: a temporary one,
            removed afterwards.
        **task_options: options of ``SupervisedTask.from_arrays`` (``batch_size``,
            ``query_size``, ``test_data``, ``from_logits`` …).

    Returns:
        The learned loss (``kind`` and ``from_logits`` set for your model), ready for
        ``model.compile(loss=...)``; its ``history`` attribute is the ``keras.callbacks.History``.

    Raises:
        ValueError: bad arguments or data (naming them), before anything is written.
    """
    from ml3tf import run as runs

    if task is None:
        if learner is None:
            raise ValueError("give learner and x, y (or task=)")
        if isinstance(x, tf.data.Dataset):
            if y is not None:
                raise ValueError("x is a tf.data.Dataset of (x, y): y must be None")
            task = SupervisedTask.from_dataset(
                x, learner, kind=kind, validation_data=validation_data, **task_options
            )
        else:
            if x is None or y is None:
                raise ValueError("give x and y (arrays), or x as a tf.data.Dataset of (x, y)")
            task = SupervisedTask.from_arrays(
                x,
                y,
                learner,
                kind=kind,
                validation_data=validation_data,
                validation_split=validation_split,
                **task_options,
            )
    elif not isinstance(task, SupervisedTask) or learner is not None or x is not None or task_options:
        raise ValueError("task= must be a SupervisedTask, given alone (no learner, x, y or task options)")
    if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be an integer >= 1, got {steps_per_epoch!r}")
    if isinstance(validation_tasks, bool) or not isinstance(validation_tasks, int) or validation_tasks < 1:
        raise ValueError(f"validation_tasks must be an integer >= 1, got {validation_tasks!r}")
    if verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
    base = task.default_config() if config is None else config
    if not isinstance(base, MetaTrainConfig):
        raise ValueError(f"config must be a MetaTrainConfig, got {type(base).__name__}")
    cfg = base.replace(
        meta_steps=meta_steps,
        inner_steps=inner_steps,
        inner_lr=inner_lr,
        inner_optimizer=inner_optimizer,
        meta_lr=meta_lr,
        meta_batch_size=meta_batch_size,
        seed=seed,
        eval_every=0,
        steps_per_call=min(base.steps_per_call, steps_per_epoch),
        checkpoint_every=steps_per_epoch,
    )
    if cfg.method != "ml3":
        raise ValueError(f"learn_loss learns a loss network: config.method must be 'ml3', got {cfg.method!r}")
    if cfg.select_every:
        raise ValueError(
            f"config.select_every={cfg.select_every}: learn_loss selects φ with callbacks, e.g. "
            "keras.callbacks.EarlyStopping(restore_best_weights=True)"
        )
    callbacks = list(callbacks or [])
    for cb in callbacks:
        if not isinstance(cb, keras.callbacks.Callback):
            raise ValueError(f"callbacks must be keras.callbacks.Callback objects, got {type(cb).__name__}")

    temporary = out_dir is None
    out = tempfile.mkdtemp(prefix="ml3tf-learn-loss-") if temporary else runs.check_out_dir(out_dir)
    try:
        record = runs._run_record(task, cfg, [cfg.seed])
        runs._check_resume(out, record)
        with runs._locked(out, keep=lambda: runs.holds_run(out)):
            network = _meta_train(task, cfg, out, callbacks, verbose, steps_per_epoch, validation_tasks)
    finally:
        if temporary:
            shutil.rmtree(out, ignore_errors=True)
    kind = task.loss_kind
    # A classification task's loss network sees softmax(learner output) unless it says otherwise.
    from_logits = kind == "classification" and bool(getattr(task.options, "from_logits", True))
    loss = LearnedLoss(network, kind=kind, from_logits=from_logits)
    loss.history = network.history
    loss.task = task
    return loss


def _meta_train(
    task: SupervisedTask,
    cfg: MetaTrainConfig,
    out: str,
    callbacks: list[keras.callbacks.Callback],
    verbose: int,
    steps_per_epoch: int,
    validation_tasks: int,
) -> keras.Model:
    """``train_one`` with epochs, callbacks and a validation objective; the trained network."""
    from ml3tf import run as runs

    trainer = MetaTrainer(task, cfg)
    network = trainer.meta_loss
    network.stop_training = False
    epochs = -(-cfg.meta_steps // steps_per_epoch)
    hooks = keras.callbacks.CallbackList(
        callbacks,
        add_history=True,
        add_progbar=verbose != 0,
        model=network,
        verbose=verbose,
        epochs=epochs,
        steps=steps_per_epoch,
    )
    batch = task.sample(cfg.seed, VALIDATION_STEP, validation_tasks)
    seeds = meta_test_seeds(cfg.seed, validation_tasks)
    validation = tf.function(lambda s, q, e, i: trainer.objective(type(batch)(s, q, e), i)[1]["task_loss"])
    sums: dict[str, list[float]] = {k: [] for k in _LOG_KEYS}

    def on_step(_seed: int, step: int, info: Any) -> None:
        if step % steps_per_epoch == 0:
            hooks.on_epoch_begin(step // steps_per_epoch)
        values = {k: float(getattr(info, field)) for k, field in _LOG_KEYS.items()}
        for k, v in values.items():
            sums[k].append(v)
        hooks.on_train_batch_end(step % steps_per_epoch, values)

    def on_chunk(step: int) -> bool:
        if step % steps_per_epoch and step != cfg.meta_steps:
            return False
        logs = {k: float(np.mean(v)) for k, v in sums.items() if v}
        logs["val_loss"] = float(validation(batch.support, batch.query, batch.extra, seeds))
        for v in sums.values():
            v.clear()
        hooks.on_epoch_end((step - 1) // steps_per_epoch, logs)
        return bool(getattr(network, "stop_training", False))

    hooks.on_train_begin()
    runs.train_one(task, cfg, out, on_step, trainer, on_chunk=on_chunk, chunk_every=steps_per_epoch)
    hooks.on_train_end()
    if not hasattr(network, "history"):  # resumed past the last epoch: no epoch ran
        network.history = keras.callbacks.History()
        network.history.history = {}
    runs.save_meta_loss(network, os.path.join(out, "meta_loss.keras"))  # the φ callbacks left (best)
    return network
