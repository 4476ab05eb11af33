"""LearnedLoss: values against a hand-written numpy forward pass, Keras integration, round trips."""

import json
import os
import shutil
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest

import ml3tf
from ml3tf import losses as losses_module
from ml3tf.losses import LearnedLoss, decode_weights, encode_weights
from ml3tf.meta_loss import MetaLossNetwork
from tests.numerics import ACT_REL_ULPS, U32, gamma, relative_bound

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def softplus(z):
    return np.logaddexp(0.0, z)


def np_forward(network, feats):
    """M_φ written out by hand: bias-free ReLU layers, softplus output (MetaLossNetwork)."""
    h = np.asarray(feats, np.float64)
    kernels = [w.astype(np.float64) for w in network.get_weights()]
    for k in kernels[:-1]:
        h = np.maximum(h @ k, 0.0)
    return softplus(h @ kernels[-1])[:, 0]


def np_regression(network, y_true, y_pred):
    """ℓ_i = mean_j M([ŷ_ij, y_ij])."""
    yp = np.asarray(y_pred, np.float64).reshape(len(y_pred), -1)
    yt = np.asarray(y_true, np.float64).reshape(len(y_true), -1)
    pairs = np.stack([yp, yt], -1).reshape(-1, 2)
    return np_forward(network, pairs).reshape(yp.shape).mean(-1)


def regression_rtol(network, y_true, y_pred):
    """The float32 error of ``LearnedLoss`` against ``np_regression`` (exact here), relative:
    the network's forward bound on these inputs (``tests.numerics``; ~1e-5 to 3e-5 for the
    pretrained sine loss, whose large weights give |W|·|h| ≫ |Wh|), then the per-example mean
    over the columns and any weighted reduction over the rows, ≤ 2·γ_{size+2} more. The values
    are positive (softplus), so relative bounds carry through the means. Measured errors are
    ~1e-7; a wrong reduction, weighting or feature order is off by ≥ 1e-2.
    """
    pairs = np.stack([np.ravel(y_pred), np.ravel(y_true)], -1)
    return relative_bound(network, pairs) + 2 * gamma(pairs.shape[0] + 2)


def reduce(per, w, reduction):
    w = np.ones_like(per) if w is None else np.asarray(w, np.float64)
    v = per * w
    return {
        "sum": v.sum(),
        "sum_over_batch_size": v.sum() / len(v),
        "mean": v.sum() / len(v),
        "mean_with_sample_weight": v.sum() / w.sum(),
        "none": v,
        None: v,
    }[reduction]


@pytest.fixture(scope="module")
def sine_loss():
    return LearnedLoss.pretrained("sine")


def rng_data(shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=shape).astype("float32"), rng.normal(size=shape).astype("float32")


# --- values ------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(7,), (7, 1), (7, 3), (7, 2, 2)])
@pytest.mark.parametrize(
    "reduction", ["sum", "sum_over_batch_size", "mean", "mean_with_sample_weight", "none"]
)
@pytest.mark.parametrize("weighted", [False, True])
def test_regression_values_by_hand(sine_loss, shape, reduction, weighted):
    y_true, y_pred = rng_data(shape)
    w = np.linspace(0.1, 2.0, shape[0]).astype("float32") if weighted else None
    loss = LearnedLoss(sine_loss.network, reduction=reduction)
    got = loss(y_true, y_pred, sample_weight=w).numpy()
    want = reduce(np_regression(sine_loss.network, y_true, y_pred), w, reduction)
    np.testing.assert_allclose(got, want, rtol=regression_rtol(sine_loss.network, y_true, y_pred))


def test_rank_difference_of_one_unit_axis(sine_loss):
    y_true, y_pred = rng_data((6, 1))
    a = sine_loss.per_example(y_true[:, 0], y_pred).numpy()
    b = sine_loss.per_example(y_true, y_pred[:, 0]).numpy()
    want = np_regression(sine_loss.network, y_true, y_pred)
    rtol = regression_rtol(sine_loss.network, y_true, y_pred)
    np.testing.assert_allclose(a, want, rtol=rtol)
    np.testing.assert_allclose(b, want, rtol=rtol)


def test_per_example_network_sees_whole_rows():
    net = MetaLossNetwork(input_dim=6, hidden_units=(8,))
    loss = LearnedLoss(net, reduction="none")
    y_true, y_pred = rng_data((5, 3))
    feats = np.concatenate([y_pred, y_true], -1)
    want = np_forward(net, feats)
    np.testing.assert_allclose(loss(y_true, y_pred).numpy(), want, rtol=relative_bound(net, feats))
    with pytest.raises(ValueError, match="takes 6 features"):
        loss(*rng_data((5, 2)))


@pytest.mark.parametrize("labels", ["int", "int_col", "onehot"])
@pytest.mark.parametrize("from_logits", [False, True])
def test_classification_values_by_hand(labels, from_logits):
    keras.utils.set_random_seed(1)
    net = MetaLossNetwork(input_dim=6, hidden_units=(8, 8))  # C = 3 classes
    loss = LearnedLoss(net, kind="classification", from_logits=from_logits, reduction="none")
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(5, 3)).astype("float32")
    probs = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
    y = np.array([0, 2, 1, 1, 0])
    onehot = np.eye(3, dtype="float32")[y]
    y_true = {"int": y, "int_col": y[:, None], "onehot": onehot}[labels]
    y_pred = scores if from_logits else probs
    feats = np.concatenate([probs, onehot], -1)
    want = np_forward(net, feats)
    # The network's float32 bound, with input probabilities that TF (softmax) and NumPy (exp,
    # sum of 3, divide) each compute within (ACT_REL_ULPS + 5)·u relative.
    rtol = relative_bound(net, feats, input_error=2 * (ACT_REL_ULPS + 5) * U32 * np.abs(feats))
    np.testing.assert_allclose(loss(y_true, y_pred).numpy(), want, rtol=rtol)


def test_binary_sigmoid_column():
    net = MetaLossNetwork(input_dim=4, hidden_units=(8,))
    s = np.array([0.1, 0.7, 0.4], "float32")
    y = np.array([0, 1, 1])
    want = np_forward(net, np.concatenate([np.stack([1 - s, s], -1), np.eye(2)[y]], -1))
    for from_logits, pred in ((False, s[:, None]), (True, np.log(s / (1 - s))[:, None])):
        loss = LearnedLoss(net, kind="classification", from_logits=from_logits, reduction="none")
        # float32: s, 1 − s and sigmoid(logit) within ~ACT_REL_ULPS·u ≈ 1e-6 of the float64
        # inputs (relative), then the network's own bound, ~3e-6 for this 8-unit layer: 1e-4
        # holds on any machine; another class order or a missing sigmoid is off by ≥ 1e-2.
        np.testing.assert_allclose(loss(y, pred).numpy(), want, rtol=1e-4)


# --- bad input ----------------------------------------------------------------------
def test_bad_shapes_and_dtypes(sine_loss):
    with pytest.raises(ValueError, match=r"same shape.*\(4, 2\).*\(4, 3\)"):
        sine_loss(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="must be numeric"):
        sine_loss(np.array(["a", "b"]), np.zeros((2,)))
    with pytest.raises(ValueError, match="y_pred must be a float"):
        sine_loss.per_example(np.zeros((2, 1)), np.zeros((2, 1), "int32"))
    with pytest.raises(ValueError, match="batch axis"):
        sine_loss(np.float32(1.0), np.float32(1.0))
    cls = LearnedLoss(MetaLossNetwork(input_dim=6), kind="classification")
    with pytest.raises(ValueError, match=r"y_pred must be \(N, 3\)"):
        cls(np.zeros((4,)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"one-hot \(N, 3\)"):
        cls(np.zeros((4, 5)), np.zeros((4, 3)))


def test_bad_constructor_arguments(sine_loss):
    with pytest.raises(ValueError, match="kind"):
        LearnedLoss(sine_loss.network, kind="ranking")
    with pytest.raises(ValueError, match="from_logits"):
        LearnedLoss(sine_loss.network, from_logits=True)
    with pytest.raises(ValueError, match=r"keras\.Model"):
        LearnedLoss("sine")
    with pytest.raises(ValueError, match="even"):
        LearnedLoss(MetaLossNetwork(input_dim=3))
    with pytest.raises(ValueError, match="one value per row"):
        LearnedLoss(keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)]))
    with pytest.raises(ValueError, match="2·C"):
        LearnedLoss(sine_loss.network, kind="classification")


def test_bad_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        LearnedLoss.from_file(tmp_path / "missing.keras")
    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match=r"not a \.keras archive"):
        LearnedLoss.from_file(garbage)
    src = os.path.join(ROOT, "models", "pretrained", "sine.keras")
    truncated = tmp_path / "truncated.keras"
    with open(src, "rb") as f:
        truncated.write_bytes(f.read()[:-2000])
    with pytest.raises(ValueError):
        LearnedLoss.from_file(truncated)
    foreign = tmp_path / "foreign.keras"
    with zipfile.ZipFile(foreign, "w") as z:
        z.writestr("config.json", json.dumps({"hello": "world"}))
    with pytest.raises(ValueError, match="could not be loaded"):
        LearnedLoss.from_file(foreign)
    classifier = tmp_path / "classifier.keras"
    keras.Sequential([keras.Input((2,)), keras.layers.Dense(10)]).save(classifier)
    with pytest.raises(ValueError, match="one value per row"):
        LearnedLoss.from_file(classifier)


def test_pretrained_checks_sha256(tmp_path, monkeypatch):
    zoo = tmp_path / "pretrained"
    shutil.copytree(os.path.join(ROOT, "models", "pretrained"), zoo)
    monkeypatch.setattr(losses_module, "zoo_dir", lambda: str(zoo))
    LearnedLoss.pretrained("sine")  # an intact copy loads
    with pytest.raises(ValueError, match=r"no pretrained loss 'cosine'.*'sine'"):
        LearnedLoss.pretrained("cosine")
    data = bytearray((zoo / "sine.keras").read_bytes())
    data[-100] ^= 0xFF
    (zoo / "sine.keras").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        LearnedLoss.pretrained("sine")
    (zoo / "sine.keras").unlink()
    with pytest.raises(ValueError, match="missing"):
        LearnedLoss.pretrained("sine")


def test_manifest_records_the_shipped_file():
    manifest = losses_module.pretrained_manifest()
    entry = manifest["sine"]
    assert (
        entry["task"] == "sine" and entry["config"]["seed"] == 0 and "make_pretrained.py" in entry["command"]
    )
    path = os.path.join(losses_module.zoo_dir(), entry["file"])
    assert losses_module.file_sha256(path) == entry["sha256"]
    assert set(entry["metrics"]["final"]) == {"train", "test"}


# --- serialization ----------------------------------------------------------------------
def test_weight_encoding_round_trip_and_errors():
    arrays = [np.arange(6, dtype="float32").reshape(2, 3) / 7, np.array([1.5], "float64")]
    back = decode_weights(json.loads(json.dumps(encode_weights(arrays))))
    for a, b in zip(arrays, back, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    with pytest.raises(ValueError, match=r"weights\[0\]"):
        decode_weights([{"dtype": "float32", "shape": [3], "data": "%%%"}])
    with pytest.raises(ValueError, match=r"weights\[0\]"):
        decode_weights([{"dtype": "object", "shape": [1], "data": ""}])


def test_config_round_trip_keeps_weights(sine_loss):
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(sine_loss)))
    fresh = MetaLossNetwork(input_dim=2)  # different random weights, same architecture
    back = keras.saving.deserialize_keras_object(config, safe_mode=True)
    assert isinstance(back, LearnedLoss) and back.network is not sine_loss.network
    y_true, y_pred = rng_data((9, 1))
    np.testing.assert_array_equal(back(y_true, y_pred).numpy(), sine_loss(y_true, y_pred).numpy())
    assert not np.allclose(LearnedLoss(fresh)(y_true, y_pred).numpy(), sine_loss(y_true, y_pred).numpy())
    bad = dict(config["config"])
    bad["network_weights"] = bad["network_weights"][:-1]
    with pytest.raises(ValueError, match="network_weights have shapes"):
        LearnedLoss.from_config(bad)


def sine_data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-5, 5, size=(n, 1)).astype("float32")
    return x, (2.0 * np.sin(x - 0.5)).astype("float32")


def three_layer_model():
    return keras.Sequential(
        [
            keras.Input((1,)),
            keras.layers.Dense(32, activation="tanh"),
            keras.layers.Dense(32, activation="tanh"),
            keras.layers.Dense(1),
        ]
    )


class Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.a = keras.layers.Dense(16, activation="relu")
        self.b = keras.layers.Dense(1)

    def call(self, x):
        return self.b(self.a(x))


def functional_model():
    inp = keras.Input((1,))
    return keras.Model(inp, keras.layers.Dense(1)(keras.layers.Dense(16, activation="relu")(inp)))


@pytest.mark.parametrize("make", [three_layer_model, functional_model, Subclassed])
def test_fit_trains_the_model_never_the_loss(sine_loss, make):
    keras.utils.set_random_seed(0)
    x, y = sine_data()
    model = make()
    # the learned loss is steep (large values and slopes): a small step keeps SGD monotone here
    model.compile(optimizer=keras.optimizers.SGD(1e-4), loss=sine_loss)
    before_loss = [w.copy() for w in sine_loss.network.get_weights()]
    first = model.evaluate(x, y, verbose=0)
    history = model.fit(x, y, batch_size=len(x), epochs=5, verbose=0, sample_weight=np.ones(len(x)))
    assert history.history["loss"][-1] < first
    assert len(model.trainable_variables) == sum(len(layer.trainable_variables) for layer in model.layers)
    ids = {id(v) for v in sine_loss.network.weights}
    assert not ids & {id(v) for v in model.trainable_variables}
    for a, b in zip(before_loss, sine_loss.network.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_jit_compile_fit_equals_plain_fit(sine_loss):
    x, y = sine_data()
    weights = []
    for jit in (False, True):
        keras.utils.set_random_seed(3)
        model = three_layer_model()
        model.compile(optimizer=keras.optimizers.SGD(1e-3), loss=sine_loss, jit_compile=jit)
        model.fit(x, y, batch_size=len(x), epochs=5, verbose=0, shuffle=False)
        weights.append(model.get_weights())
    # XLA fuses and reorders the float32 reductions (64 examples, 32-unit layers), so each of the
    # 5 gradients differs by its rounding, ~1e-6 relative; the 5 steps of lr 1e-3 pass that on
    # as ~5e-9·|g| (measured ≤ 6e-8 on weights ~0.3). The steps move the weights by up to 0.13,
    # so a wrong gradient or update under XLA is off by ~1e-2, far above rtol 1e-4 / atol 1e-5.
    for a, b in zip(*weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert not np.allclose(weights[0][0], three_layer_model().get_weights()[0])


def test_mixed_precision(sine_loss):
    x, y = sine_data()
    old = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        model = three_layer_model()
        assert model.layers[-1].compute_dtype == "float16"
        model.compile(optimizer=keras.optimizers.SGD(1e-3), loss=sine_loss)
        history = model.fit(x, y, batch_size=len(x), epochs=3, verbose=0)
        pred = model.predict(x, verbose=0)
    finally:
        keras.config.set_dtype_policy(old)
    assert np.all(np.isfinite(history.history["loss"]))
    want = np_regression(sine_loss.network, y, pred.astype("float32")).mean()
    np.testing.assert_allclose(model.evaluate(x, y, verbose=0), want, rtol=2e-3)


def test_keras_round_trip_in_process(sine_loss, tmp_path):
    keras.utils.set_random_seed(0)
    x, y = sine_data()
    model = three_layer_model()
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss=sine_loss)
    model.fit(x, y, batch_size=len(x), epochs=3, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    back = keras.models.load_model(path, safe_mode=True)
    assert isinstance(back.loss, LearnedLoss)
    for a, b in zip(sine_loss.network.get_weights(), back.loss.network.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    # exact: the reloaded model has bit-identical weights and the same layers, so evaluate runs
    # the same ops in the same order on the same machine
    assert back.evaluate(x, y, verbose=0) == model.evaluate(x, y, verbose=0)
    # training goes on identically after the reload
    model.fit(x, y, batch_size=len(x), epochs=2, verbose=0, shuffle=False)
    back.fit(x, y, batch_size=len(x), epochs=2, verbose=0, shuffle=False)
    for a, b in zip(model.get_weights(), back.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


FRESH = """
import json, sys
import keras, numpy as np
import ml3tf  # registers LearnedLoss (and every other ml3tf Keras class) with Keras
model = keras.models.load_model(sys.argv[1], safe_mode=True)
data = np.load(sys.argv[2])
print(json.dumps([type(model.loss).__name__, float(model.evaluate(data["x"], data["y"], verbose=0)),
                  model.loss(data["y"], data["p"], sample_weight=data["w"]).numpy().tolist()]))
"""


def test_keras_round_trip_in_a_fresh_process(sine_loss, tmp_path):
    """A user's 3-layer model compiled with the pretrained loss, trained, saved, reloaded elsewhere."""
    keras.utils.set_random_seed(0)
    x, y = sine_data()
    model = three_layer_model()
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss=ml3tf.LearnedLoss.pretrained("sine"))
    model.fit(x, y, batch_size=len(x), epochs=3, verbose=0)
    model.save(tmp_path / "m.keras")
    p = model.predict(x, verbose=0)
    w = np.linspace(0, 1, len(x)).astype("float32")
    np.savez(tmp_path / "d.npz", x=x, y=y, p=p, w=w)
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run(
        [sys.executable, "-c", FRESH, str(tmp_path / "m.keras"), str(tmp_path / "d.npz")],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        cwd=tmp_path,
    )
    name, evaluated, weighted = json.loads(out.stdout.strip().splitlines()[-1])
    assert name == "LearnedLoss"
    np.testing.assert_allclose(evaluated, model.evaluate(x, y, verbose=0), rtol=1e-6)
    np.testing.assert_allclose(weighted, model.loss(y, p, sample_weight=w).numpy(), rtol=1e-6)
