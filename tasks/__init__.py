"""Problem families for ML3; each module implements ``ml3tf.task.Task``.

    >>> from ml3tf import tasks
    >>> tasks.names()
    ['classification', 'sine']
    >>> task = tasks.get("sine", mode="family")

Modules are imported lazily: asking for one task never imports another's
dependencies (gymnasium, TF-Agents, scikit-learn …).
"""

from __future__ import annotations

# This folder is installed as ``ml3tf.tasks`` (setup.py ``package_dir``). Imported under any other
# name (``import tasks`` from the repository root) its modules would exist twice, with two
# copies of every registered Keras class: refuse that.
if __name__ != "ml3tf.tasks":
    raise ModuleNotFoundError(f"No module named {__name__!r}: this package is imported as ml3tf.tasks")


import importlib
from typing import Any

# name -> (module, class, one-line description)
_REGISTRY: dict[str, tuple[str, str, str]] = {
    "classification": (
        "ml3tf.tasks.classification",
        "ClassificationTask",
        "digit classification (paper's binary MNIST): class pairs or 10-way, loss sees (p, one-hot y)",
    ),
    "sine": (
        "ml3tf.tasks.sine",
        "SineTask",
        "sine regression (paper Fig. 2): learner 1→100→10→1, loss sees (ŷ, y)",
    ),
    "shaped_sine": (
        "ml3tf.tasks.shaped_sine",
        "ShapedSineTask",
        "shaped sine (paper Fig. 5a/b): learner sin(ωx), loss sees (x, ŷ, y), extra loss (ω − v)²",
    ),
    "reacher": (
        "ml3tf.tasks.reacher",
        "ReacherTask",
        "model-based RL on MuJoCo Reacher-v5 (paper MBRL reacher): policy through a learned dynamics model",
    ),
    "inverse_dynamics": (
        "ml3tf.tasks.inverse_dynamics",
        "InverseDynamicsTask",
        "2-link arm inverse dynamics (paper Fig. 5c): Cholesky inertia model, physics prior extra loss",
    ),
    "mountain_car": (
        "ml3tf.tasks.mountain_car",
        "MountainCarTask",
        "MountainCar, the authors' physics (paper Fig. 6): policy by backprop through the rollout, "
        "loss sees (s, a, ‖s_T − goal‖), extra loss: swing-back sub-goal",
    ),
    "point_mass": (
        "ml3tf.tasks.point_mass",
        "PointMassTask",
        "model-free RL, 2-D point mass to a goal: loss sees (s, a, G, Â, μ_θ, log π_θ), task loss REINFORCE",
    ),
}


# Tasks that use TF-Agents: ml3tf.tasks.rl_env is imported before them, so that it can select
# Keras 2 for tf.keras before TensorFlow is first imported.
_NEEDS_TF_AGENTS: frozenset[str] = frozenset({"point_mass", "reacher"})


def names() -> list[str]:
    """Registered task names, sorted."""
    return sorted(_REGISTRY)


def describe(name: str) -> str:
    """One line about the task ``name``."""
    return _entry(name)[2]


def _entry(name: str) -> tuple[str, str, str]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(names())}")
    return _REGISTRY[name]


def task_class(name: str) -> type:
    """The task class registered as ``name`` (imports its module)."""
    module, cls, _ = _entry(name)
    if name in _NEEDS_TF_AGENTS:
        importlib.import_module("ml3tf.tasks.rl_env")
    return getattr(importlib.import_module(module), cls)


def get(name: str, **options: Any) -> Any:
    """A task instance; ``options`` are the fields of the task's options dataclass."""
    return task_class(name)(**options)


__all__ = ["describe", "get", "names", "task_class"]
