"""Problem families for ML3; each module implements ``ml3tf.task.Task``.

    >>> from ml3tf import tasks
    >>> tasks.names()[:2]
    ['classification', 'inverse_dynamics']
    >>> task = tasks.get("sine", mode="family")

A task is found by name in three places, in this order:

1. the built-in tasks of this package (``_REGISTRY``);
2. plug-ins: entry points of group ``ml3tf.tasks`` (``ENTRY_POINT_GROUP``) that installed
   distributions declare, e.g. ``mytask = "mypkg.tasks:MyTask"``; a plug-in of a built-in
   task's name is ignored (logged as a warning);
3. a ``module:Class`` path (any name that contains ``:``), imported with importlib.

What is found must be a concrete ``ml3tf.task.Task`` subclass with an ``Options`` dataclass
and its own ``name`` (checked when the task is asked for; a broken plug-in raises
``ValueError`` then, never while other tasks are listed or loaded). docs/plugins.md describes
how to write one.

Modules are imported lazily: asking for one task never imports another's dependencies
(gymnasium, TF-Agents, scikit-learn …), and ``names()`` and ``describe(name, load=False)``
read the installed metadata only, so listing plug-ins imports none of them.
"""

from __future__ import annotations

# This folder is installed as ``ml3tf.tasks`` (setup.py ``package_dir``). Imported under any other
# name (``import tasks`` from the repository root) its modules would exist twice, with two
# copies of every registered Keras class: refuse that.
if __name__ != "ml3tf.tasks":
    raise ModuleNotFoundError(f"No module named {__name__!r}: this package is imported as ml3tf.tasks")


import dataclasses
import functools
import importlib
import inspect
import logging
from importlib import metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ml3tf.task import Task

logger = logging.getLogger(__name__)

#: The entry-point group plug-in tasks are declared in.
ENTRY_POINT_GROUP = "ml3tf.tasks"

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
        "model-based RL on the authors' 2-link robot or Reacher-v5 (paper MBRL reacher): policy through "
        "a learned dynamics model",
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
    """Task names, sorted: the built-in tasks and the installed plug-ins (none imported).

    Example:
        >>> "sine" in tasks.names()
        True
    """
    return sorted({*_REGISTRY, *_plugins()})


def describe(name: str, load: bool = True) -> str:
    """One line about the task ``name`` (a name of ``names()`` or a ``module:Class`` path).

    A plug-in is described by its class: its ``description`` attribute, else the first line of
    its docstring. ``load=False`` describes a plug-in without importing it, by its entry point
    and distribution (what ``ml3tf tasks`` prints).

    Example:
        >>> tasks.describe("sine")
        'sine regression (paper Fig. 2): learner 1→100→10→1, loss sees (ŷ, y)'
        >>> tasks.describe("mytask", load=False)  # an installed plug-in
        'plug-in mypkg.tasks:MyTask (mypkg 0.1)'
    """
    if isinstance(name, str) and name in _REGISTRY:
        return _REGISTRY[name][2]
    if not load:
        _check_name(name)
        if ":" in name:
            return f"plug-in {name}"
        ep = _entry_point(name)
        return f"plug-in {ep.value}{_distribution(ep)}"
    cls = task_class(name)
    for text in (getattr(cls, "description", None), cls.__doc__):
        if isinstance(text, str) and text.strip():
            return text.strip().splitlines()[0].strip()
    return f"task class {cls.__module__}.{cls.__qualname__}"


def task_class(name: str) -> type[Task]:
    """The task class ``name`` stands for (imports its module, and only its module).

    ``name`` is a built-in task, a plug-in's entry-point name, or a ``module:Class`` path.

    Raises:
        ValueError: an unknown name; a plug-in or path that cannot be imported, or that does
            not give a concrete ``Task`` subclass with an ``Options`` dataclass and a ``name``
            (the message names the entry point and the cause, on one line).

    Example:
        >>> tasks.task_class("sine").__name__
        'SineTask'
        >>> tasks.task_class("mypkg.tasks:MyTask")  # the class itself, imported
    """
    _check_name(name)
    if name in _REGISTRY:
        _plugins()  # a plug-in of the same name is logged (once) even when only this task is used
        module, cls, _ = _REGISTRY[name]
        if name in _NEEDS_TF_AGENTS:
            importlib.import_module("ml3tf.tasks.rl_env")
        return _checked(getattr(importlib.import_module(module), cls), f"built-in task {name!r}")
    if ":" in name:
        return _checked(_import_path(name), f"task {name!r}")
    ep = _entry_point(name)
    origin = f"plug-in task {name!r} ({_where(ep)})"
    try:
        obj = ep.load()
    except Exception as exc:  # whatever the plug-in's import raises: reported, not propagated
        raise ValueError(f"{origin} failed to import: {_cause(exc)}") from exc
    return _checked(obj, origin)


def get(name: str, **options: Any) -> Task:
    """A task instance; ``options`` are the fields of the task's options dataclass.

    Example:
        >>> task = tasks.get("sine", mode="family", n_points=20)
        >>> task = tasks.get("mypkg.tasks:MyTask", n=8)  # a plug-in by path
    """
    return task_class(name)(**options)


def refresh() -> None:
    """Forget the plug-ins found so far: call it after installing one into a running process.

    Example:
        >>> tasks.refresh(); "mytask" in tasks.names()
        True
    """
    _plugins.cache_clear()
    importlib.invalidate_caches()


# --- plug-ins ------------------------------------------------------------------------------
@functools.cache
def _plugins() -> dict[str, metadata.EntryPoint]:
    """The usable entry points of ``ENTRY_POINT_GROUP`` by name, read from the installed metadata
    (nothing is imported); clashes are logged once per process (until ``refresh()``)."""
    found: dict[str, metadata.EntryPoint] = {}
    for ep in _entry_points():
        if ep.name in _REGISTRY:
            logger.warning(
                "plug-in task %r (%s) is ignored: the built-in task of that name is used", ep.name, _where(ep)
            )
        elif ":" in ep.name or not ep.name or ep.name != ep.name.strip():
            logger.warning(
                "plug-in task %r (%s) is ignored: a task name must not contain ':' or surrounding blanks",
                ep.name,
                _where(ep),
            )
        elif ep.name in found:
            if found[ep.name].value != ep.value:
                logger.warning(
                    "plug-in task %r is declared twice: %s is used, %s is ignored",
                    ep.name,
                    _where(found[ep.name]),
                    _where(ep),
                )
        else:
            found[ep.name] = ep
    return found


def _entry_points() -> list[metadata.EntryPoint]:
    """The entry points of ``ENTRY_POINT_GROUP``, distribution by distribution in ``sys.path``
    order: one distribution with an unreadable entry_points.txt is skipped (logged), instead of
    failing every task lookup as ``metadata.entry_points()`` would."""
    out: list[metadata.EntryPoint] = []
    for dist in metadata.distributions():
        try:
            out.extend(dist.entry_points.select(group=ENTRY_POINT_GROUP))
        except Exception as exc:  # a malformed file of some installed distribution
            try:
                ours = f"[{ENTRY_POINT_GROUP}]" in (dist.read_text("entry_points.txt") or "")
                label = f"{dist.metadata.get('Name')} {dist.metadata.get('Version')}"
            except Exception:
                ours, label = False, "a distribution"
            logger.log(
                logging.WARNING if ours else logging.DEBUG,
                "the entry points of %s cannot be read (%s): its plug-in tasks are ignored",
                label,
                _cause(exc),
            )
    return out


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"task must be a non-empty string (a task name or 'module:Class'), got {name!r}")


def _entry_point(name: str) -> metadata.EntryPoint:
    ep = _plugins().get(name)
    if ep is None:
        raise ValueError(
            f"unknown task {name!r}; known tasks: {', '.join(names())} (or give a plug-in as 'module:Class')"
        )
    return ep


def _distribution(ep: metadata.EntryPoint) -> str:
    """`` (dist version)`` of the distribution that declares ``ep``; empty if unknown."""
    try:
        meta = ep.dist.metadata  # type: ignore[union-attr]
        return f" ({meta.get('Name')} {meta.get('Version')})"
    except Exception:  # no distribution attached (an EntryPoint made by hand), unreadable metadata
        return ""


def _where(ep: metadata.EntryPoint) -> str:
    source = _distribution(ep).strip(" ()")
    return f"entry point {ep.name} = {ep.value} in group {ENTRY_POINT_GROUP}" + (
        f" of {source}" if source else ""
    )


def _cause(exc: BaseException) -> str:
    """``Type: first line of the message``: the cause of a failed import, on one line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _import_path(spec: str) -> object:
    """The object a ``module:attr`` (``attr`` may be dotted) path names."""
    module_name, _, attr = spec.partition(":")
    parts = attr.split(".")
    if not all(p.isidentifier() for p in [*module_name.split("."), *parts]):
        raise ValueError(
            f"task {spec!r} is neither a task name nor a 'module:Class' path (e.g. 'mypkg.tasks:MyTask')"
        )
    try:
        obj: object = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name + ".").startswith(exc.name + "."):
            raise ValueError(f"task {spec!r}: importing {module_name!r} failed: {_cause(exc)}") from exc
        raise ValueError(
            f"task {spec!r}: no module named {exc.name!r} (install it, or put its folder on PYTHONPATH)"
        ) from exc
    except Exception as exc:  # whatever the module's import raises: reported, not propagated
        raise ValueError(f"task {spec!r}: importing {module_name!r} failed: {_cause(exc)}") from exc
    for part in parts:
        if not hasattr(obj, part):
            raise ValueError(f"task {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _checked(obj: object, origin: str) -> type[Task]:
    """``obj`` if it is a task class the CLI and ``ml3tf.train`` can use, else a ValueError."""
    from ml3tf.task import SupervisedTask, Task

    if not (inspect.isclass(obj) and issubclass(obj, Task)):
        what = (
            f"class {obj.__module__}.{obj.__qualname__}"
            if inspect.isclass(obj)
            else f"an object of type {type(obj).__name__}"
        )
        hint = " (name the Task class itself, not a factory)" if callable(obj) else ""
        raise ValueError(f"{origin} gives {what}, not a subclass of ml3tf.Task{hint}")
    label = f"{obj.__module__}.{obj.__qualname__}"
    if inspect.isabstract(obj):
        missing = ", ".join(sorted(obj.__abstractmethods__))
        raise ValueError(f"{origin}: {label} is abstract, it does not implement {missing}")
    options = getattr(obj, "Options", None)
    if not (inspect.isclass(options) and dataclasses.is_dataclass(options)):
        raise ValueError(
            f"{origin}: {label}.Options must be a dataclass (its fields are the task's options and CLI "
            f"flags), got {options!r}"
        )
    named = any("name" in vars(k) for k in obj.__mro__ if k not in (Task, SupervisedTask))
    if not named or not isinstance(obj.name, str) or not obj.name.strip():
        raise ValueError(
            f"{origin}: {label} must set a class attribute `name` (a non-empty string: the task name "
            f"its runs record), got {obj.name!r}"
        )
    return obj


__all__ = ["ENTRY_POINT_GROUP", "describe", "get", "names", "refresh", "task_class"]
