"""Checks of what a user gives ml3tf: arrays, ``tf.data`` data sets, Keras models.

Shared by tasks built from user data (``SupervisedTask.from_arrays``) and by online loss learning
(``ml3tf.OnlineLossLearning``); every failure is a ``ValueError`` naming the argument.

Example:
    >>> as_rows("x", [[1.0, 2.0], [3.0, float("nan")]])
    Traceback (most recent call last):
    ValueError: x holds NaN or infinite values (first in row 1)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf


def as_rows(name: str, value: Any, rows: int | None = None) -> np.ndarray:
    """``value`` as a finite numeric array with a leading row axis; ``ValueError`` naming ``name``."""
    try:
        a = np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise ValueError(f"{name} is not an array: {exc}") from None
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise ValueError(f"{name} must be numeric, got dtype {a.dtype}")
    if a.ndim == 0:
        raise ValueError(f"{name} needs a leading row axis, got a scalar")
    if rows is not None and len(a) != rows:
        raise ValueError(f"{name} has {len(a)} rows, x has {rows}")
    if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
        bad = int(np.argwhere(~np.isfinite(a.reshape(len(a), -1)))[0][0])
        raise ValueError(f"{name} holds NaN or infinite values (first in row {bad})")
    return a


def fingerprint(arrays: Sequence[np.ndarray]) -> str:
    """sha256 of the arrays' dtypes, shapes and bytes (in order)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(json.dumps([a.dtype.str, list(a.shape)]).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def dataset_arrays(dataset: tf.data.Dataset, name: str = "dataset") -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of a finite ``tf.data.Dataset`` of ``(x, y)`` elements, batched or not."""
    if not isinstance(dataset, tf.data.Dataset):
        raise ValueError(f"{name} must be a tf.data.Dataset, got {type(dataset).__name__}")
    if int(dataset.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
        raise ValueError(f"{name} is infinite (e.g. .repeat()); give a finite data set")
    spec = dataset.element_spec
    if not (isinstance(spec, tuple) and len(spec) in (2, 3)):
        raise ValueError(f"{name} must yield (x, y) pairs, its elements are {spec}")
    batched = spec[0].shape.rank is not None and spec[0].shape.rank >= 1 and spec[0].shape[0] is None
    xs, ys = [], []
    for element in dataset.as_numpy_iterator():
        xs.append(element[0])
        ys.append(element[1])
    if not xs:
        raise ValueError(f"{name} is empty")
    join = np.concatenate if batched else np.stack
    return join(xs), join(ys)


def layers_of(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer nested in ``model`` (not the model itself), in order."""
    return list(model._flatten_layers(include_self=False))


def outputs_logits(model: keras.Model) -> bool:
    """Whether ``model``'s last layer outputs logits (no softmax/sigmoid activation)."""
    layers = [layer for layer in layers_of(model) if not isinstance(layer, keras.layers.InputLayer)]
    if not layers:
        return True
    last = layers[-1]
    if isinstance(last, keras.layers.Softmax):
        return False
    activation = getattr(last, "activation", None)
    return getattr(activation, "__name__", "linear") not in ("softmax", "sigmoid")
