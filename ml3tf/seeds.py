"""Seeds: the one scheme behind every learner initialisation, and seeding without side effects.

Every θ₀ ml3tf draws comes from a stateless seed pair ``[run_seed, key]`` (int64; see
``ml3tf.functional.FunctionalModel.init_params``), so a run is a pure function of its seed
and any meta-step can be recomputed (resume, ``run_steps`` chunks, eager = compiled).
The key space is split into disjoint ranges, one per purpose, so that no meta-train learner
ever starts where a meta-test learner starts, at any step or meta-batch size:

=================  ==========================================================  ==============
purpose            key                                                         index range
=================  ==========================================================  ==============
meta-train         ``i`` for ``i < 10⁶``, ``i + 10⁶`` above (``i = step·B + b``)  ``0 … 2⁶²``
meta-test          ``10⁶ + t`` (learner ``t`` of a seed's meta-test)              ``0 … 10⁶ − 1``
=================  ==========================================================  ==============

The meta-test block ``[10⁶, 2·10⁶)`` is the one earlier versions used (offset 10⁶), and the
meta-train keys below 10⁶ are unchanged, so runs of fewer than 10⁶ learner draws keep their
numbers. Keys are int64: no overflow for any reachable ``step·B``.

``seeded(seed)`` builds Keras objects (φ's initial weights) exactly as after
``keras.utils.set_random_seed(seed)``, then puts the global Python, NumPy and Keras random
state back: constructing a ``MetaTrainer`` leaves the user's random streams alone.

Example:
    >>> meta_train_seeds(run_seed=0, step=3, batch_size=2)
    array([[0, 6],
           [0, 7]])
    >>> meta_test_seeds(run_seed=0, count=2)
    array([[      0, 1000000],
           [      0, 1000001]])
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np

#: First key of the meta-test block; the block holds ``META_TEST_BLOCK`` learners per seed.
META_TEST_OFFSET = 1_000_000
META_TEST_BLOCK = 1_000_000
_MAX_INDEX = 2**62


def _check(name: str, value: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < high:
        raise ValueError(f"{name} must be an integer in [0, {high}), got {value!r}")
    return int(value)


def meta_train_key(index: int) -> int:
    """Key of the ``index``-th meta-train learner draw (``index = step·B + b``), skipping the
    meta-test block."""
    index = _check("index", index, _MAX_INDEX)
    return index if index < META_TEST_OFFSET else index + META_TEST_BLOCK


def meta_train_seeds(run_seed: int, step: int, batch_size: int, fixed: bool = False) -> np.ndarray:
    """Seeds ``(B, 2)`` int64 of the meta-batch's θ₀ at ``step``; ``fixed``: those of step 0."""
    run_seed = _check("seed", run_seed, 2**63)
    first = 0 if fixed else _check("step", step, _MAX_INDEX) * _check("batch_size", batch_size, 2**31)
    keys = [meta_train_key(first + b) for b in range(batch_size)]
    return np.array([[run_seed, k] for k in keys], dtype=np.int64)


def meta_test_seeds(run_seed: int, count: int, first: int = 0) -> np.ndarray:
    """Seeds ``(count, 2)`` int64 of meta-test learners ``first … first + count − 1`` of ``run_seed``."""
    run_seed = _check("seed", run_seed, 2**63)
    first = _check("first", first, META_TEST_BLOCK)
    _check("first + count", first + count, META_TEST_BLOCK + 1)
    return np.array([[run_seed, META_TEST_OFFSET + first + t] for t in range(count)], dtype=np.int64)


_KERAS_SEED_ATTRIBUTES = ("global_random_seed", "global_seed_generator")


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Inside: Python, NumPy and Keras global random state as ``keras.utils.set_random_seed(seed)``
    leaves it (TensorFlow's global seed is not touched); afterwards: as it was before.

    Example:
        >>> with seeded(0):
        ...     net = task.make_meta_loss()      # the same weights for the same seed, always
    """
    from keras.src.backend.common import global_state

    seed = _check("seed", seed, 2**32)
    saved_python, saved_numpy = random.getstate(), np.random.get_state()
    saved_keras = {a: global_state.get_global_attribute(a) for a in _KERAS_SEED_ATTRIBUTES}
    try:
        global_state.set_global_attribute("global_random_seed", seed)
        global_state.set_global_attribute("global_seed_generator", None)
        random.seed(seed)
        np.random.seed(seed)
        yield
    finally:
        random.setstate(saved_python)
        np.random.set_state(saved_numpy)
        for a, v in saved_keras.items():
            global_state.set_global_attribute(a, v)
