"""ml3tf: Meta-Learning via Learned Loss (ML3, Bechtle et al., ICPR 2021) on TF2 / Keras 3.

    inner:  θ' = θ − α ∇_θ E[ M_φ(f_θ(x), y) ]        (K differentiable steps)
    outer:  φ  ← φ − η ∇_φ L_T(y, f_θ'(x))             (through the K steps)

Example:
    >>> import ml3tf
    >>> from ml3tf import tasks
    >>> task = tasks.get("sine")
    >>> run = ml3tf.train(task, task.default_config(), out_dir="runs/sine", seeds=[0, 1, 2, 3, 4])
    >>> run.results["final"]["test"]

Names are loaded on first use, so ``ml3tf --help`` answers without importing TensorFlow. The
Keras classes a saved file may name (``LearnedLoss``, ``MetaLossNetwork``, the learners of
``ml3tf.models``) are registered as soon as Keras is imported, before or after ``ml3tf``, so
``import ml3tf`` is all ``keras.models.load_model(..., safe_mode=True)`` needs.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

_EXPORTS = {
    "Adam": "ml3tf.inner",
    "Checkpointer": "ml3tf.checkpoint",
    "FunctionalModel": "ml3tf.functional",
    "InnerOptimizer": "ml3tf.inner",
    "LearnedLoss": "ml3tf.losses",
    "MetaLossNetwork": "ml3tf.meta_loss",
    "MetaStepInfo": "ml3tf.meta_trainer",
    "MetaTestEngine": "ml3tf.engine",
    "MetaTrainConfig": "ml3tf.config",
    "MetaTrainer": "ml3tf.meta_trainer",
    "Momentum": "ml3tf.inner",
    "NonFiniteError": "ml3tf.meta_trainer",
    "OnlineLossLearning": "ml3tf.online",
    "SGD": "ml3tf.inner",
    "SupervisedTask": "ml3tf.task",
    "Task": "ml3tf.task",
    "TaskBatch": "ml3tf.task",
    "TrainResult": "ml3tf.run",
    "evaluate_files": "ml3tf.run",
    "export_saved_model": "ml3tf.export",
    "learn_loss": "ml3tf.learn",
    "load_meta_loss": "ml3tf.meta_loss",
    "make_inner_optimizer": "ml3tf.inner",
    "train": "ml3tf.run",
    "unroll": "ml3tf.inner",
}

__all__ = [
    "SGD",
    "Adam",
    "Checkpointer",
    "FunctionalModel",
    "InnerOptimizer",
    "LearnedLoss",
    "MetaLossNetwork",
    "MetaStepInfo",
    "MetaTestEngine",
    "MetaTrainConfig",
    "MetaTrainer",
    "Momentum",
    "NonFiniteError",
    "OnlineLossLearning",
    "SupervisedTask",
    "Task",
    "TaskBatch",
    "TrainResult",
    "evaluate_files",
    "export_saved_model",
    "learn_loss",
    "load_meta_loss",
    "make_inner_optimizer",
    "train",
    "unroll",
]

if TYPE_CHECKING:  # pragma: no cover
    from ml3tf.checkpoint import Checkpointer
    from ml3tf.config import MetaTrainConfig
    from ml3tf.export import export_saved_model
    from ml3tf.functional import FunctionalModel
    from ml3tf.inner import SGD, Adam, InnerOptimizer, Momentum, make_inner_optimizer, unroll
    from ml3tf.learn import learn_loss
    from ml3tf.losses import LearnedLoss
    from ml3tf.meta_loss import MetaLossNetwork, load_meta_loss
    from ml3tf.meta_trainer import MetaStepInfo, MetaTrainer, NonFiniteError
    from ml3tf.online import OnlineLossLearning
    from ml3tf.run import TrainResult, evaluate_files, train
    from ml3tf.task import SupervisedTask, Task, TaskBatch


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ml3tf' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def _require_tensorflow() -> None:
    # TensorFlow comes from an extra (setup.py), so that ml3tf never replaces a user's GPU/TPU
    # build; without one, say so in one line instead of failing deep inside an import.
    try:
        found = importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ImportError(
            "ml3tf needs TensorFlow 2.20 or 2.21 and none is importable: install one with "
            'pip install "ml3tf[cpu]" (or "ml3tf[gpu]", "ml3tf[tpu]"), or pip install tensorflow'
        )


_require_tensorflow()

from ml3tf import _registration  # noqa: E402  (after __getattr__: registering imports ml3tf.*)

_registration.install()
