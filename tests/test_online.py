"""``ml3tf.OnlineLossLearning``: the loss network learns during ``model.fit`` (look-ahead meta-steps)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import ml3tf
from ml3tf.losses import default_meta_loss


def _data(n=64, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (np.argmax(x[:, :classes], axis=1)).astype(np.int64)
    return x, y


def _model(outputs=3):
    return keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(6, activation="tanh"), keras.layers.Dense(outputs)]
    )


def test_meta_gradient_matches_finite_differences_float64(float64):
    """∇_φ L_task(θ − α∇_θ M_φ) against central differences, in float64."""
    x, y = _data()
    xv, yv = _data(32, seed=1)
    model = _model()
    net = ml3tf.MetaLossNetwork(6, (5,), "tanh", use_bias=True, output_use_bias=False)
    online = ml3tf.OnlineLossLearning(
        model, "classification", loss=net, validation_data=(xv.astype(np.float64), yv), lookahead_lr=0.5
    )
    online.compile(optimizer=keras.optimizers.SGD(0.1))
    xb, yb = tf.constant(x.astype(np.float64)), tf.constant(y)
    phi = [tf.convert_to_tensor(v) for v in online._phi]
    assert all(p.dtype == tf.float64 for p in phi), [p.dtype for p in phi]
    assert model.trainable_variables[0].dtype == "float64"
    with tf.GradientTape() as tape:
        tape.watch(phi)
        value = online.meta_objective(xb, yb, phi)
    grads = tape.gradient(value, phi)
    rng = np.random.default_rng(0)
    eps = 1e-6
    for _ in range(3):
        d = [tf.constant(rng.standard_normal(p.shape)) for p in phi]
        analytic = sum(float(tf.reduce_sum(g * di)) for g, di in zip(grads, d, strict=True))
        plus = online.meta_objective(xb, yb, [p + eps * di for p, di in zip(phi, d, strict=True)])
        minus = online.meta_objective(xb, yb, [p - eps * di for p, di in zip(phi, d, strict=True)])
        numeric = float(plus - minus) / (2 * eps)
        assert abs(analytic) > 1e-6
        # central differences: O(eps²) truncation, O(1e-16 / eps) rounding of values ~1
        assert abs(analytic - numeric) <= 1e-6 * max(1.0, abs(numeric))


def test_the_look_ahead_is_one_sgd_step_at_the_optimizers_learning_rate():
    """The meta objective is the task loss (CE) of the model at θ − α ∇_θ M_φ, α the model
    optimizer's learning rate, computed here with a second model holding those weights."""
    x, y = _data()
    model = _model()
    online = ml3tf.OnlineLossLearning(model, "classification", meta_data="train")
    online.compile(optimizer=keras.optimizers.Adam(0.05))
    phi = [tf.convert_to_tensor(v) for v in online._phi]
    theta = [tf.convert_to_tensor(v) for v in model.trainable_variables]
    with tf.GradientTape() as tape:
        tape.watch(theta)
        out = online.learned(tf.constant(y), ml3tf.FunctionalModel(model)(theta, x, training=True))
    grads = tape.gradient(out, theta)
    ahead = _model()
    ahead.set_weights([(t - 0.05 * g).numpy() for t, g in zip(theta, grads, strict=True)])
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, ahead(x))
    np.testing.assert_allclose(
        float(online.meta_objective(tf.constant(x), tf.constant(y), phi)), float(ce), rtol=1e-5
    )


@pytest.mark.parametrize(("optimizer", "jit"), [("sgd", False), ("adam", True)])
def test_fit_trains_the_model_and_the_loss(optimizer, jit):
    x, y = _data()
    xv, yv = _data(32, seed=1)
    model = _model()
    online = ml3tf.OnlineLossLearning(model, "classification", validation_data=(xv, yv), meta_lr=1e-2)
    phi0 = [v.numpy().copy() for v in online._phi]
    theta0 = [v.numpy().copy() for v in model.trainable_variables]
    opt = keras.optimizers.SGD(0.1) if optimizer == "sgd" else keras.optimizers.Adam(1e-2)
    online.compile(optimizer=opt, metrics=["accuracy"], jit_compile=jit)
    history = online.fit(x, y, batch_size=16, epochs=2, verbose=0, validation_data=(xv, yv))
    logs = history.history
    assert {"loss", "accuracy", "meta_task_loss", "val_accuracy"} <= set(logs)
    assert np.all(np.isfinite(logs["meta_task_loss"]))
    assert int(online.meta_optimizer.iterations) == 8 == int(online.optimizer.iterations)
    assert any(not np.allclose(a, v.numpy()) for a, v in zip(phi0, online._phi, strict=True))
    assert any(not np.allclose(a, v.numpy()) for a, v in zip(theta0, model.trainable_variables, strict=True))


def test_every_n_steps_and_a_frozen_loss():
    x, y = _data()
    online = ml3tf.OnlineLossLearning(_model(), "classification", every=3, loss="random")
    online.compile(optimizer="sgd")
    online.fit(x, y, batch_size=8, epochs=1, verbose=0)  # 8 steps: meta-steps at 0, 3, 6
    assert int(online.meta_optimizer.iterations) == 3
    frozen = ml3tf.OnlineLossLearning(_model(), "classification", every=0, loss="random")
    before = [v.numpy().copy() for v in frozen._phi]
    frozen.compile(optimizer="sgd")
    frozen.fit(x, y, batch_size=8, epochs=1, verbose=0)
    for a, v in zip(before, frozen._phi, strict=True):
        np.testing.assert_array_equal(a, v.numpy())


def test_warm_start_copies_and_learned_loss_is_a_snapshot(tmp_path):
    x, y = _data()
    start = ml3tf.LearnedLoss(
        default_meta_loss("classification", 3, (8,)), kind="classification", from_logits=True
    )
    given = [w.copy() for w in start.network.get_weights()]
    online = ml3tf.OnlineLossLearning(_model(), "classification", loss=start, meta_lr=1e-2)
    for a, v in zip(given, online._phi, strict=True):
        np.testing.assert_array_equal(a, v.numpy())
    online.compile(optimizer="adam")
    online.fit(x, y, batch_size=16, epochs=1, verbose=0)
    snapshot = online.learned_loss()
    kept = [w.copy() for w in snapshot.network.get_weights()]
    online.fit(x, y, batch_size=16, epochs=1, verbose=0)
    for a, w in zip(kept, snapshot.network.get_weights(), strict=True):
        np.testing.assert_array_equal(a, w)
    for a, w in zip(given, start.network.get_weights(), strict=True):
        np.testing.assert_array_equal(a, w)  # the warm start is never changed
    fresh = _model()
    fresh.compile(optimizer="sgd", loss=snapshot)
    fresh.fit(x, y, epochs=1, verbose=0)
    path = str(tmp_path / "fresh.keras")
    fresh.save(path)
    back = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_allclose(back.loss(y, fresh(x)), snapshot(y, fresh(x)), rtol=1e-6)


def test_baseline_start_is_close_to_cross_entropy():
    x, y = _data()
    model = _model()
    online = ml3tf.OnlineLossLearning(model, "classification")
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, model(x))
    assert float(online.learned(y, model(x))) == pytest.approx(float(ce), rel=0.25)


def test_bad_arguments():
    model = _model()
    with pytest.raises(ValueError, match="meta_data='validation' needs validation_data"):
        ml3tf.OnlineLossLearning(model, "classification", meta_data="validation")
    with pytest.raises(ValueError, match="every must be an integer >= 0"):
        ml3tf.OnlineLossLearning(model, "classification", every=-1)
    with pytest.raises(ValueError, match="kind must be one of"):
        ml3tf.OnlineLossLearning(model, "ranking")
    with pytest.raises(ValueError, match="loss must be 'baseline', 'random'"):
        ml3tf.OnlineLossLearning(model, "classification", loss="mse")
    online = ml3tf.OnlineLossLearning(model, "classification", loss="random")
    with pytest.raises(ValueError, match="leave loss= out of compile"):
        online.compile(optimizer="sgd", loss="mse")


def test_the_wrapper_saves_and_loads_by_values(tmp_path):
    x, y = _data()
    online = ml3tf.OnlineLossLearning(_model(), "classification", loss="random", meta_lr=1e-2, every=2)
    online.compile(optimizer="adam", metrics=["accuracy"])
    online.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = str(tmp_path / "online.keras")
    online.save(path)
    back = keras.models.load_model(path, safe_mode=True)
    assert isinstance(back, ml3tf.OnlineLossLearning) and back.every == 2 and back.meta_data == "train"
    np.testing.assert_allclose(back.predict(x, verbose=0), online.predict(x, verbose=0), rtol=1e-6)
    for a, b in zip(back._phi, online._phi, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert back.compiled and "accuracy" in str(back.get_compile_config()["metrics"])
    back.fit(x, y, batch_size=16, epochs=1, verbose=0)  # trains on
    back.trainable = True  # (what loading does) never hands φ to the model's optimizer
    phi = {id(v) for v in back._phi}
    assert phi and not phi & {id(v) for v in back.trainable_variables}


def test_a_loaded_learned_loss_network_has_no_trainable_variable():
    """``trainable=False`` in a deserialized network's config did not reach its variables, so an
    ``OnlineLossLearning`` built from a loaded loss handed φ to the model's optimizer."""
    loss = ml3tf.LearnedLoss(default_meta_loss("classification", 3, (4,)), kind="classification")
    back = ml3tf.LearnedLoss.from_config(loss.get_config())
    assert back.network.weights and not any(v.trainable for v in back.network.weights)


def test_a_regression_loss_learned_online_exports_as_a_saved_model(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x[:, :1] * 30.0 + 100.0).astype(np.float32)
    model = _model(outputs=1)
    online = ml3tf.OnlineLossLearning(model, "regression", validation_data=(x[:16], y[:16]), meta_lr=1e-2)
    online.compile(optimizer="adam")
    online.fit(x, y, batch_size=16, epochs=1, verbose=0)
    loss = online.learned_loss()
    path = ml3tf.export_saved_model(loss, str(tmp_path / "export" / "1"))
    served = tf.saved_model.load(path).signatures["serving_default"]
    y_pred = y[:8] + rng.normal(size=(8, 1)).astype(np.float32) * 20.0
    out = served(y_pred=tf.constant(y_pred), y_true=tf.constant(y[:8]))
    np.testing.assert_allclose(out["loss"].numpy(), loss.per_example(y[:8], y_pred).numpy(), rtol=1e-5)
