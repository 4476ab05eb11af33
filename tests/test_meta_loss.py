"""MetaLossNetwork: architecture options, .keras round trips compared by values, bad files."""

import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from ml3tf.meta_loss import MetaLossNetwork, load_meta_loss
from tests.numerics import U64, gamma, relative_bound


def _feats(n=64, d=2):
    return np.random.default_rng(1).standard_normal((n, d)).astype("float32")


def test_paper_architecture():
    net = MetaLossNetwork(2, (50, 50), use_bias=False)
    assert [tuple(v.shape) for v in net.trainable_variables] == [(2, 50), (50, 50), (50, 1)]
    out = net(_feats()).numpy()
    assert out.shape == (64, 1) and np.all(out >= 0)  # softplus output
    with_bias = MetaLossNetwork(3, (4,), activation="elu", use_bias=True, output_activation="linear")
    assert len(with_bias.trainable_variables) == 4
    # The same network on the same (64, 2) float32 input gives the same 64 rows; the two means
    # of those positive values (TensorFlow's reduction, NumPy's pairwise sum) are each within
    # γ_64 of the exact mean, so within 2·γ_64 = 7.6e-6 of each other (measured 8e-8; 1e-6 was
    # under that bound). Swapped features or a sum instead of a mean are off by O(1).
    np.testing.assert_allclose(
        net.loss_value(_feats()[:, :1], _feats()[:, 1:]), out.mean(), rtol=2 * gamma(64)
    )


def test_keras_round_trip_keeps_weights(tmp_path):
    net = MetaLossNetwork(2, (8, 8), activation="tanh", use_bias=True)
    for v in net.trainable_variables:  # move away from any initialiser
        v.assign(v + 0.25)
    path = str(tmp_path / "m.keras")
    net.save(path)
    loaded = load_meta_loss(path)
    np.testing.assert_allclose(loaded(_feats()).numpy(), net(_feats()).numpy(), rtol=1e-6)
    again = str(tmp_path / "again.keras")
    loaded.save(again)
    code = (
        "import numpy as np, ml3tf;"
        f"m = ml3tf.load_meta_loss({again!r});"
        "x = np.random.default_rng(1).standard_normal((64, 2)).astype('float32');"
        "print(repr(float(m(x).numpy().sum())))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # Another process may pick other float32 kernels (threads, oneDNN or not): each sum of the 64
    # positive outputs is within the network's forward bound plus γ_64 of the exact one
    # (``tests.numerics``), the two within twice that (1e-4; measured: bit-identical). Weights
    # that did not survive the two round trips would be off by ~0.25·|∂M/∂φ| ≫ that.
    rtol = 2 * (relative_bound(net, _feats()) + gamma(64))
    np.testing.assert_allclose(
        float(out.stdout.strip().splitlines()[-1]), net(_feats()).numpy().sum(), rtol=rtol
    )


def test_bad_files_and_arguments(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_meta_loss(str(tmp_path / "missing.keras"))
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"not a \.keras archive"):
        load_meta_loss(str(junk))
    import zipfile

    foreign = tmp_path / "foreign.keras"
    with zipfile.ZipFile(foreign, "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(ValueError, match="could not be loaded"):
        load_meta_loss(str(foreign))
    with pytest.raises(ValueError, match="output_activation"):
        MetaLossNetwork(2, output_activation="sigmoidish")
    with pytest.raises(ValueError, match="input_dim"):
        MetaLossNetwork(0)
    with pytest.raises(ValueError):
        MetaLossNetwork(2, activation="no_such_activation")


def test_safe_mode_refuses_lambda_layers(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Lambda(lambda t: t * 2)])
    path = str(tmp_path / "lambda.keras")
    model.save(path)
    with pytest.raises(ValueError, match="could not be loaded"):
        load_meta_loss(path)


def test_anchored_loss_is_zero_at_the_target_and_matches_its_formula(tmp_path, float64):
    """``anchor_pairs``: M(f) = (m(f) − m(f|ŷ←y))² — non-negative, exactly 0 with zero gradient
    where ŷ = y, its input gradient 2(m(f) − m(f_ref))·∂m/∂ŷ (float64 central differences), and it
    survives a .keras round trip by value."""
    kw = dict(use_bias=True, output_activation="linear")
    net = MetaLossNetwork(3, (8, 8), "tanh", anchor_pairs=[(1, 2)], **kw)
    plain = MetaLossNetwork(3, (8, 8), "tanh", **kw)
    plain.set_weights(net.get_weights())
    f = np.random.default_rng(2).standard_normal((16, 3))
    ref = f.copy()
    ref[:, 1] = ref[:, 2]
    m, m_ref = plain(f).numpy(), plain(ref).numpy()
    # the formula itself. Both networks run the same float64 layers on the same rows; however a
    # kernel orders its 8-term dot products, each m is within ~γ_8·Σ|terms| ≈ 1e-14·|m| of
    # exact, and m − m_ref magnifies that by |m| / |m − m_ref| (the square doubles it)
    rtol = 4 * 10 * gamma(8, U64) * np.max(np.abs(m)) / np.min(np.abs(m - m_ref))
    np.testing.assert_allclose(net(f).numpy(), (m - m_ref) ** 2, rtol=rtol)
    assert np.all(net(f).numpy() > 0)  # (a random f has ŷ ≠ y) and never negative
    at_target = tf.constant(ref)
    with tf.GradientTape() as tape:
        tape.watch(at_target)
        value = net(at_target)
    grad = tape.gradient(value, at_target).numpy()
    assert np.all(value.numpy() == 0.0) and np.all(grad == 0.0)  # (m − m)² and 2·0·∂m: exact zeros

    x = tf.constant(f)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = tf.reduce_sum(net(x))
    grad = tape.gradient(value, x).numpy()
    h = 1e-6
    fd = np.zeros_like(f)
    for col in range(3):
        e = np.zeros_like(f)
        e[:, col] = h
        fd[:, col] = (net(f + e).numpy() - net(f - e).numpy())[:, 0] / (2 * h)
    # central differences of a smooth function: O(h²·M''') truncation + O(u/h) rounding ≈ 1e-10
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)

    path = str(tmp_path / "anchored.keras")
    net.save(path)
    loaded = load_meta_loss(path)
    assert loaded.anchor_pairs == ((1, 2),)
    np.testing.assert_array_equal(loaded(f).numpy(), net(f).numpy())


@pytest.mark.parametrize(
    "bad", [[], [(1, 1)], [(1, 2), (1, 0)], [(0, 3)], [(1, 2), (2, 0)], [(True, 2)], "ab"]
)
def test_bad_anchor_pairs(bad):
    with pytest.raises(ValueError, match="anchor_pairs"):
        MetaLossNetwork(3, (4,), anchor_pairs=bad)
