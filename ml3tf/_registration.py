"""Register every Keras class a saved ml3tf file may name, as soon as Keras is loaded.

Keras 3 deserialises a custom class (``"registered_name": "ml3tf>LearnedLoss"``) only if the
module that registered it has been imported: ``keras.saving.load_model`` imports ``keras*``
modules by itself, never ours. So ``import ml3tf`` must be enough to load a ``.keras`` file —
in either order with ``import keras``:

* Keras already imported (``import keras, ml3tf``, or ``import tensorflow`` first): the
  registering modules are imported at once.
* Keras not imported yet (``import ml3tf, keras``): importing TensorFlow here would make
  ``import ml3tf`` (and ``ml3tf --help``) cost seconds, and would fix ``tf.keras`` before an RL
  script can select Keras 2 for TF-Agents (``ml3tf.tasks.rl_env``). Instead a finder on
  ``sys.meta_path`` waits for ``keras``/``tensorflow`` to be imported by anyone, and registers
  right after both have finished executing. It changes nothing else about those imports (same
  spec, same loader object; only that loader instance's ``exec_module`` is wrapped) and takes
  itself off ``sys.meta_path`` once it has fired.

Example:
    >>> import ml3tf, keras                   # either order
    >>> keras.models.load_model("model.keras", safe_mode=True)   # compiled with a LearnedLoss
"""

from __future__ import annotations

import importlib
import importlib.abc
import logging
import sys
import threading
from collections.abc import Sequence
from types import ModuleType
from typing import Any

logger = logging.getLogger(__name__)

# Every module that calls keras.saving.register_keras_serializable. tests/test_imports.py checks
# that this list covers the whole package.
SERIALIZABLE_MODULES: tuple[str, ...] = (
    "ml3tf.meta_loss",
    "ml3tf.losses",
    "ml3tf.online",
    "ml3tf.models.dynamics",
    "ml3tf.models.inertia",
    "ml3tf.models.lenet",
    "ml3tf.models.sine_frequency",
)
# Top-level modules whose import means "Keras is (about to be) usable".
_WATCHED = frozenset({"keras", "tensorflow"})

_lock = threading.RLock()
_registered = False


def _initializing(name: str) -> bool:
    """Whether ``name`` is in ``sys.modules`` but its top-level code has not finished."""
    module = sys.modules.get(name)
    spec = getattr(module, "__spec__", None)
    return module is not None and bool(getattr(spec, "_initializing", False))


def register() -> None:
    """Import every registering module now (idempotent); Keras must be importable."""
    global _registered
    with _lock:
        if _registered:
            return
        _registered = True
        _remove_finder()
    for name in SERIALIZABLE_MODULES:
        importlib.import_module(name)


def _register_when_ready(finished: str) -> None:
    # Called right after `finished` executed; its spec still says _initializing. Wait until no
    # other watched module is half-imported (`import tensorflow` imports keras inside, and
    # `import keras` imports tensorflow inside): our modules need both whole.
    # Nor while one of ml3tf's own modules is half-imported (`import ml3tf.meta_loss` imports keras
    # inside): registering imports them all, and would meet that one half-done. The finder calls
    # this again when that module has finished.
    if _registered or "keras" not in sys.modules:
        return
    if any(_initializing(name) for name in _WATCHED - {finished}):
        return
    if any(_initializing(name) for name in list(sys.modules) if _own(name) and name != finished):
        return
    try:
        register()
    except Exception:  # never turn the user's `import keras` into an ml3tf failure
        logger.warning(
            "ml3tf could not register its Keras classes; import ml3tf.losses before loading "
            "a .keras file that names them",
            exc_info=True,
        )


def _own(name: str) -> bool:
    """A submodule of ml3tf (the package itself has finished its setup before it installs this)."""
    return name.startswith("ml3tf.")


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the real loader's ``exec_module`` of the watched modules
    (keras, tensorflow) and of ml3tf's own submodules, to register once all are whole."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None) -> Any:
        if (fullname not in _WATCHED and not _own(fullname)) or _registered:
            return None
        for finder in list(sys.meta_path):
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        original = getattr(loader, "exec_module", None)
        if original is None:
            return spec

        def exec_module(module: ModuleType) -> None:
            original(module)
            _register_when_ready(fullname)

        loader.exec_module = exec_module  # this loader instance serves this one module only
        return spec


_finder = _RegisterAfterImport()


def _remove_finder() -> None:
    try:
        sys.meta_path.remove(_finder)
    except ValueError:
        pass


def install() -> None:
    """Called by ``import ml3tf``: register now if Keras is loaded, else when it gets imported."""
    with _lock:
        if _registered:
            return
        keras_loaded = "keras" in sys.modules and not any(_initializing(name) for name in _WATCHED)
        if not keras_loaded:
            if _finder not in sys.meta_path:
                sys.meta_path.insert(0, _finder)
            return
    register()
