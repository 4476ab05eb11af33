"""SavedModel export: same values as the Keras loss, TF-only loading, saved_model_cli, the CLI."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from ml3tf import export as export_module
from ml3tf.cli import main
from ml3tf.export import export_saved_model
from ml3tf.losses import LearnedLoss
from ml3tf.meta_loss import MetaLossNetwork
from tests.numerics import ACT_REL_ULPS, U32, gamma, relative_bound

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


@pytest.fixture(scope="module")
def sine_loss():
    return LearnedLoss.pretrained("sine")


@pytest.fixture(scope="module")
def exported(sine_loss, tmp_path_factory):
    return export_saved_model(sine_loss, tmp_path_factory.mktemp("export") / "sine")


def data(shape=(11, 1), seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=shape).astype("float32"), rng.normal(size=shape).astype("float32")


def export_rtol(network, feats, input_error=0.0):
    """How far two float32 evaluations of the loss may differ, relative: the served graph and the
    eager Keras loss run the same network, but grappler/oneDNN may pick other kernels (and the
    TF-only process other threads), so each is within the network's forward bound on these
    features (``tests.numerics``; ~1e-5 to 2e-5 for the pretrained sine loss) plus γ of the
    per-example and batch means (positive values), and the two within twice that. Measured:
    bit-identical. Another network, feature order or reduction is off by ≥ 1e-2.
    """
    return 2 * (relative_bound(network, feats, input_error) + gamma(len(feats) + 2))


def _pairs(y_true, y_pred):
    return np.stack([np.ravel(y_pred), np.ravel(y_true)], -1)


def test_signature_matches_the_keras_loss(sine_loss, exported):
    served = tf.saved_model.load(exported).signatures["serving_default"]
    for shape in ((11, 1), (3, 4), (1, 1)):
        y_pred, y_true = data(shape)
        out = served(y_pred=tf.constant(y_pred), y_true=tf.constant(y_true))
        want = sine_loss.per_example(y_true, y_pred).numpy()
        rtol = export_rtol(sine_loss.network, _pairs(y_true, y_pred))
        np.testing.assert_allclose(out["loss"].numpy(), want, rtol=rtol)
        np.testing.assert_allclose(out["mean_loss"].numpy(), sine_loss(y_true, y_pred).numpy(), rtol=rtol)


def test_classification_export(tmp_path):
    net = MetaLossNetwork(input_dim=4, hidden_units=(8,))
    loss = LearnedLoss(net, kind="classification", from_logits=True)
    served = tf.saved_model.load(export_saved_model(loss, tmp_path / "cls")).signatures["serving_default"]
    logits = np.array([[0.3, -1.0], [2.0, 0.5], [0.0, 0.0]], "float32")
    onehot = np.eye(2, dtype="float32")[[1, 0, 1]]
    out = served(y_pred=tf.constant(logits), y_true=tf.constant(onehot))
    feats = np.concatenate([np.exp(logits) / np.exp(logits).sum(-1, keepdims=True), onehot], -1)
    # each side's float32 softmax is within (ACT_REL_ULPS + 4)·u of the exact probabilities
    rtol = export_rtol(net, feats, input_error=(ACT_REL_ULPS + 4) * U32 * feats)
    np.testing.assert_allclose(out["loss"].numpy(), loss.per_example(onehot, logits).numpy(), rtol=rtol)
    spec = served.structured_input_signature[1]["y_pred"]
    assert spec.shape.as_list() == [None, 2]


TF_ONLY = """
import json, sys

BLOCKED = {"ml3tf", "models", "tasks"}


class Absent:
    # as on a machine where ml3tf was never installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(name + " is absent in this test")


sys.meta_path.insert(0, Absent())
import numpy as np
import tensorflow as tf

keras_before = {m for m in sys.modules if m.split(".")[0] == "keras"}
served = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
d = np.load(sys.argv[2])
out = served(y_pred=tf.constant(d["y_pred"]), y_true=tf.constant(d["y_true"]))
new_keras = sorted({m for m in sys.modules if m.split(".")[0] == "keras"} - keras_before)
ours = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps({"loss": out["loss"].numpy().tolist(), "mean": float(out["mean_loss"]),
                  "new_keras": new_keras, "ours": ours}))
"""


def test_loads_in_a_tensorflow_only_process(sine_loss, exported, tmp_path):
    """TensorFlow alone runs it: ml3tf is unimportable, and loading imports no further Keras module."""
    y_pred, y_true = data((17, 1), seed=5)
    np.savez(tmp_path / "d.npz", y_pred=y_pred, y_true=y_true)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", TF_ONLY, str(exported), str(tmp_path / "d.npz")],
        capture_output=True,
        text=True,
        check=True,
        env={**env, "TF_CPP_MIN_LOG_LEVEL": "2"},
        cwd=tmp_path,
    )
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["ours"] == [] and res["new_keras"] == []
    rtol = export_rtol(sine_loss.network, _pairs(y_true, y_pred))
    np.testing.assert_allclose(res["loss"], sine_loss.per_example(y_true, y_pred).numpy(), rtol=rtol)
    np.testing.assert_allclose(res["mean"], sine_loss(y_true, y_pred).numpy(), rtol=rtol)


def _cli():
    cli = os.path.join(BIN, "saved_model_cli")
    cli = cli if os.path.exists(cli) else shutil.which("saved_model_cli")
    assert cli, "saved_model_cli ships with tensorflow"
    return cli


def test_saved_model_cli_show(exported):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    show = subprocess.run(
        [_cli(), "show", "--dir", str(exported), "--all"], capture_output=True, text=True, check=True, env=env
    ).stdout
    serving = show.split("signature_def['serving_default']")[1]
    for expected in ("inputs['y_pred']", "inputs['y_true']", "outputs['loss']", "outputs['mean_loss']"):
        assert expected in serving
    assert "shape: (-1, -1)" in serving and "shape: (-1)" in serving


@pytest.mark.slow
def test_saved_model_cli_run(sine_loss, exported):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    run = subprocess.run(
        [
            _cli(),
            "run",
            "--dir",
            str(exported),
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
            "--input_exprs",
            "y_pred=[[0.1],[0.5],[-2.0]];y_true=[[0.0],[1.0],[-1.5]]",
        ],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    values = run.split("Result for output key loss:")[1].split("Result for output key mean_loss:")[0]
    got = np.array(values.strip().strip("[]").split(), float)
    want = sine_loss.per_example(
        np.array([[0.0], [1.0], [-1.5]]), np.array([[0.1], [0.5], [-2.0]], "float32")
    )
    # NumPy prints 8 decimals (≤ 5e-9 off); the rest is ``export_rtol``
    rtol = export_rtol(sine_loss.network, _pairs([0.0, 1.0, -1.5], np.float32([0.1, 0.5, -2.0])))
    np.testing.assert_allclose(got, want.numpy(), rtol=rtol, atol=1e-8)


def test_refuses_to_overwrite_and_leaves_nothing_half_written(sine_loss, tmp_path, monkeypatch):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        export_saved_model(sine_loss, full)
    assert os.listdir(full) == ["keep.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        export_saved_model(sine_loss, tmp_path / "file")
    with pytest.raises(ValueError, match="LearnedLoss"):
        export_saved_model("sine", tmp_path / "x")

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export_module.tf.saved_model, "save", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_saved_model(sine_loss, tmp_path / "new")
    assert sorted(os.listdir(tmp_path)) == ["file", "full"]  # no output, no temporary folder
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.undo()
    assert export_saved_model(sine_loss, empty) == str(empty)
    assert os.path.isfile(empty / "saved_model.pb")


def test_public_names():
    import ml3tf

    assert ml3tf.export_saved_model is export_saved_model and ml3tf.LearnedLoss is LearnedLoss
    assert {"LearnedLoss", "export_saved_model"} <= set(ml3tf.__all__)


def test_cli_export(tmp_path, capsys):
    src = os.path.join(ROOT, "models", "pretrained", "sine.keras")
    out = tmp_path / "exp"
    assert main(["export", src, "--out-dir", str(out)]) == 0
    assert "serving_default" in capsys.readouterr().out
    assert os.path.isfile(out / "saved_model.pb")
    assert main(["export", src, "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ml3tf: error: out_dir") and "not empty" in err[0]
    assert main(["export", str(tmp_path / "nope.keras"), "--out-dir", str(tmp_path / "e2")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", "pretrained:sine", "--out-dir", str(tmp_path / "e3")]) == 0
    assert not os.path.exists(tmp_path / "e2")
