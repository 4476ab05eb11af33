"""bench/peers.py without its peers: the NumPy parts the peers share, ml3tf's reference file, the CLI.

The test environment has no torch or JAX, so the peers themselves only run in the benchmark;
what they rely on is checked here: the NumPy samplers give exactly ``task.sample`` /
``task.eval_splits``, the hand-written Adam is Keras's, the reference file holds what the peers
read, and a missing package is one line and exit code 2.
"""

import importlib.util
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from ml3tf import tasks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "peers.py")


@pytest.fixture(scope="module")
def peers():
    spec = importlib.util.spec_from_file_location("bench_peers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paper_sampler_is_the_tasks(peers):
    task = tasks.get("sine")
    batch = task.sample(peers.SEED, 3, 2)
    x, y = peers.sample_paper(peers.SEED, 2)
    np.testing.assert_array_equal(x, batch.support["x"])
    np.testing.assert_array_equal(y, batch.support["y"])
    np.testing.assert_array_equal(x, batch.query["x"])
    cfg = task.default_config()
    p = peers.PAPER
    assert (cfg.inner_lr, cfg.meta_lr, cfg.meta_batch_size, cfg.eval_steps) == (
        p["inner_lr"],
        p["meta_lr"],
        p["meta_batch_size"],
        p["eval_steps"],
    )
    assert cfg.inner_optimizer == "sgd" and cfg.meta_optimizer == "adam"


def test_few_shot_sampler_is_the_tasks(peers):
    task = tasks.get("sine", **peers.maml_task_options())
    batch = task.sample(peers.SEED, 7, 5)
    for got, want in zip(
        peers.sample_few_shot(peers.SEED, 7, 5),
        (batch.support["x"], batch.support["y"], batch.query["x"], batch.query["y"]),
        strict=True,
    ):
        np.testing.assert_array_equal(got, want)


def test_eval_tasks_are_the_eval_splits(peers):
    splits = tasks.get("sine").eval_splits(peers.SEED)
    x, y = peers.eval_tasks(peers.SEED)
    np.testing.assert_array_equal(x, np.concatenate([splits["train"][0], splits["test"][0]]))
    np.testing.assert_array_equal(y, np.concatenate([splits["train"][1], splits["test"][1]]))


def test_hand_written_adam_is_keras_adam(peers):
    rng = np.random.default_rng(0)
    params = [rng.normal(size=(3, 2)), rng.normal(size=(2,))]
    variables = [keras.Variable(p.astype("float32")) for p in params]
    opt = keras.optimizers.Adam(1e-2)
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    t = 0
    for _ in range(4):
        grads = [rng.normal(size=p.shape) for p in params]
        opt.apply_gradients(zip([g.astype("float32") for g in grads], variables, strict=True))
        params, m, v, t = peers.keras_adam(np, params, grads, m, v, t, 1e-2)
    for var, p in zip(variables, params, strict=True):
        np.testing.assert_allclose(var.numpy(), p, rtol=1e-5, atol=1e-6)


def test_rel_err_and_tolerance(peers):
    a = [np.ones((2, 2)), np.ones(3)]
    assert peers.rel_err(a, a) == 0.0
    assert peers.rel_err([x * (1 + 1e-6) for x in a], a) == pytest.approx(1e-6)
    assert peers.rel_err([np.ones(3)], a) == math.inf
    assert peers.f32_tolerance(4) == pytest.approx(2e-4)


def test_reference_file_holds_what_the_peers_read(peers, tmp_path):
    path = str(tmp_path / "ref.npz")
    own = peers.ml3tf_reference([1], path)
    ref = dict(np.load(path))
    ml3 = peers.load_case(ref, "ml3/k1")
    assert [w.shape for w in ml3["phi"]] == [(2, 50), (50, 50), (50, 1)]
    assert [w.shape for w in ml3["theta0"][0]] == [(1, 100), (100,), (100, 10), (10,), (10, 1), (1,)]
    assert [g.shape for g in ml3["grad32"]] == [w.shape for w in ml3["phi"]]
    assert ml3["grad64"][0].dtype == np.float64 and ml3["grad32"][0].dtype == np.float32
    maml = peers.load_case(ref, "maml/k1")
    assert [g.shape for g in maml["grad64"]] == [w.shape for w in maml["theta0"]]
    assert maml["support_x"].shape == (5, 10, 1) and maml["query_x"].shape == (5, 25, 1)
    # ml3tf's own float32 gradient is within the bound the peers are held to
    assert set(own) == {"ml3/k1", "maml/k1"}
    assert all(0 < e < peers.f32_tolerance(1) for e in own.values()), own
    assert keras.config.floatx() == "float32"


def test_help_needs_no_framework():
    done = subprocess.run([sys.executable, SCRIPT, "--help"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and "--skip-missing" in done.stdout


def test_a_missing_peer_is_one_line_and_exit_2():
    # torch blocked whether or not it is installed (sys.modules[name] = None makes it unimportable)
    code = (
        "import runpy, sys; sys.modules['torch'] = None; sys.argv = [sys.argv[1]]; "
        "runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    done = subprocess.run([sys.executable, "-c", code, SCRIPT], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "torch" in lines[0]
    assert 'pip install -c constraints.txt -e ".[cpu,bench]"' in lines[0]
