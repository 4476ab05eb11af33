"""``import ml3tf`` is enough to load any saved file: registration of the Keras classes."""

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

import ml3tf
from ml3tf import _registration
from ml3tf.models.sine_frequency import SineFrequency

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The fresh process imports nothing of ml3tf but the top-level package (never ml3tf.losses), in the
# order given, then loads: a model compiled with a LearnedLoss that has an ml3tf.models layer,
# and the zoo's MetaLossNetwork file.
FRESH = """
import json, sys
{imports}
import numpy as np
import keras
model = keras.models.load_model(sys.argv[1], safe_mode=True)
network = keras.models.load_model(sys.argv[2], safe_mode=True)
data = np.load(sys.argv[3])
print(json.dumps({{
    "loss": type(model.loss).__name__,
    "layer": type(model.layers[0]).__name__,
    "network": type(network).__name__,
    "evaluate": float(model.evaluate(data["x"], data["y"], verbose=0)),
    "predict": model.predict(data["x"], verbose=0).tolist(),
    "network_out": network(data["f"]).numpy().tolist(),
}}))
"""

ORDERS = {
    "ml3tf-then-keras": "import ml3tf\nimport keras",
    "keras-then-ml3tf": "import keras\nimport ml3tf",
    "tensorflow-then-ml3tf": "import tensorflow\nimport ml3tf",
    "ml3tf-then-tensorflow": "import ml3tf\nimport tensorflow",
    # a submodule that imports keras itself: registering must wait until it has finished
    "meta_loss-then-keras": "import ml3tf.meta_loss\nimport keras",
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("registration")
    keras.utils.set_random_seed(0)
    x = np.linspace(-2, 2, 32, dtype="float32")[:, None]
    y = np.sin(x)
    model = keras.Sequential([keras.Input((1,)), SineFrequency(omega0=0.5), keras.layers.Dense(1)])
    loss = ml3tf.LearnedLoss.pretrained("sine")
    model.compile(optimizer=keras.optimizers.SGD(1e-2), loss=loss)
    model.fit(x, y, batch_size=len(x), epochs=2, verbose=0)
    model.save(tmp / "m.keras")
    features = np.random.default_rng(0).normal(size=(5, 2)).astype("float32")
    np.savez(tmp / "d.npz", x=x, y=y, f=features)
    zoo_file = os.path.join(ROOT, "models", "pretrained", "sine.keras")
    want = {
        "evaluate": float(model.evaluate(x, y, verbose=0)),
        "predict": model.predict(x, verbose=0),
        "network_out": loss.network(features).numpy(),
    }
    return tmp, zoo_file, want


@pytest.mark.parametrize("order", sorted(ORDERS))
def test_import_ml3tf_is_enough_to_load(saved, order):
    tmp, zoo_file, want = saved
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_USE_LEGACY_KERAS", None)  # a plain user process
    files = [str(tmp / "d.npz")]
    out = subprocess.run(
        [sys.executable, "-c", FRESH.format(imports=ORDERS[order]), str(tmp / "m.keras"), zoo_file, *files],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert (got["loss"], got["layer"], got["network"]) == ("LearnedLoss", "SineFrequency", "MetaLossNetwork")
    # Same weights, same float32 graph: equal up to the rounding of another summation order if the
    # other process picks other kernels (the 2→50→50→1 network's forward-error bound, about 4e-5
    # relative; tests/numerics.py). Lost weights or a re-initialised loss give O(1) differences.
    np.testing.assert_allclose(got["evaluate"], want["evaluate"], rtol=1e-4)
    np.testing.assert_allclose(got["predict"], want["predict"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got["network_out"], want["network_out"], rtol=1e-4, atol=1e-6)


def test_import_ml3tf_alone_imports_no_tensorflow():
    code = "import sys, ml3tf; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False False"


def test_rl_bridge_still_selects_keras_2_after_import_ml3tf():
    """``import ml3tf.tasks.rl_env`` runs ml3tf/__init__ first: that must not import TensorFlow."""
    pytest.importorskip("tf_keras")
    code = (
        "import os; os.environ.pop('TF_USE_LEGACY_KERAS', None)\n"
        "import ml3tf.tasks.rl_env\n"
        "import tensorflow as tf, keras\n"
        "print('/tf_keras/' in tf.keras.__file__, keras.__version__.startswith('3.'),"
        " keras.saving.get_registered_object('ml3tf>LearnedLoss') is not None)"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "True True True"


def test_every_registering_module_is_listed():
    """A new ``register_keras_serializable`` class must be added to SERIALIZABLE_MODULES."""
    found = set()
    for folder, package in (("ml3tf", "ml3tf"), ("models", "ml3tf.models"), ("tasks", "ml3tf.tasks")):
        for name in sorted(os.listdir(os.path.join(ROOT, folder))):
            if not name.endswith(".py"):
                continue
            with open(os.path.join(ROOT, folder, name), encoding="utf-8") as f:
                if re.search(r"^\s*@keras\.saving\.register_keras_serializable", f.read(), re.M):
                    found.add(f"{package}.{name[:-3]}")
    assert found == set(_registration.SERIALIZABLE_MODULES)


def test_finder_is_gone_once_registered():
    assert _registration._registered
    assert _registration._finder not in sys.meta_path


def test_no_tensorflow_is_one_clear_import_error():
    code = (
        "import sys\n"
        "class Absent:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'tensorflow':\n"
        "            raise ModuleNotFoundError(name + ' is absent in this test')\n"
        "sys.meta_path.insert(0, Absent())\n"
        "try:\n"
        "    import ml3tf\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, '|', exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith("ImportError | ml3tf needs TensorFlow 2.20 or 2.21"), line
    assert all(extra in line for extra in ('"ml3tf[cpu]"', '"ml3tf[gpu]"', '"ml3tf[tpu]"'))
    assert "\n" not in line
