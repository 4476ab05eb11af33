"""Shared fixtures. Tests run on CPU; gradient checks in float64."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The RL tests use TF-Agents, whose Keras-2 parts need this before TensorFlow is imported
# (tasks/rl_env.py). It changes only `tf.keras`; `import keras` stays Keras 3,
# so the rest of the suite runs exactly as a user's RL process would.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import logging

import keras
import pytest


@pytest.fixture(autouse=True)
def _root_log_handlers():
    """Root logging handlers a test adds are removed after it. TensorFlow's checkpointing gives
    the root logger a stream handler on the stderr of the moment, which under capsys is a
    capture file closed after the test: later tests' log records then fail to print."""
    root = logging.getLogger()
    before = list(root.handlers)
    yield
    for handler in list(root.handlers):
        if handler not in before:
            root.removeHandler(handler)


@pytest.fixture
def float64():
    """Build every Keras layer in float64 for the duration of a test."""
    # Keras caches its global dtype policy on first use: set and restore both.
    old_floatx, old_policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        yield
    finally:
        keras.config.set_floatx(old_floatx)
        keras.config.set_dtype_policy(old_policy)
