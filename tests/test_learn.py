"""``ml3tf.learn_loss``: offline ML3 on the user's arrays, fit-like (epochs, callbacks, History)."""

import os

import keras
import numpy as np
import pytest

import ml3tf
from ml3tf.run import checkpoint_step


def _data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]], np.float32) + 1.0).astype(np.float32)
    return x, y


def _model():
    return keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)]
    )


TINY = dict(meta_steps=6, inner_steps=2, meta_batch_size=2, steps_per_epoch=2, batch_size=16, verbose=0)


def test_learn_loss_gives_a_loss_for_compile_fit_and_save(tmp_path):
    x, y = _data()
    loss = ml3tf.learn_loss(_model(), x, y, kind="regression", **TINY)
    assert isinstance(loss, ml3tf.LearnedLoss) and loss.kind == "regression"
    logs = loss.history.history
    assert set(logs) >= {"loss", "val_loss", "objective", "initial_loss", "meta_grad_norm"}
    assert len(logs["val_loss"]) == 3 and all(np.isfinite(logs["val_loss"]))
    model = _model()
    model.compile(optimizer=keras.optimizers.SGD(1e-2), loss=loss)
    history = model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    path = str(tmp_path / "m.keras")
    model.save(path)
    back = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_allclose(
        back.loss(y[:8], model.predict(x[:8], verbose=0)),
        loss(y[:8], model.predict(x[:8], verbose=0)),
        rtol=1e-6,
    )


def test_classification_loss_is_set_for_the_models_logits():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)]
    )
    loss = ml3tf.learn_loss(model, x, y, kind="classification", **TINY)
    assert loss.kind == "classification" and loss.from_logits
    assert loss.network.input_dim == 6
    assert np.isfinite(float(loss(y[:5], model(x[:5]))))


def test_early_stopping_stops_and_the_run_folder_holds_the_returned_loss(tmp_path):
    x, y = _data()
    stop = keras.callbacks.EarlyStopping(patience=0, min_delta=1e9, restore_best_weights=True)
    out = str(tmp_path / "run")
    loss = ml3tf.learn_loss(_model(), x, y, callbacks=[stop], out_dir=out, **{**TINY, "meta_steps": 20})
    assert len(loss.history.history["val_loss"]) == 2  # the first epoch is the best; stopped after the second
    assert checkpoint_step(out) == 4
    saved = ml3tf.load_meta_loss(os.path.join(out, "meta_loss.keras"))
    for a, b in zip(saved.get_weights(), loss.network.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_model_checkpoint_saves_the_loss_network(tmp_path):
    x, y = _data()
    path = str(tmp_path / "best.keras")
    ckpt = keras.callbacks.ModelCheckpoint(path, save_best_only=True)
    ml3tf.learn_loss(_model(), x, y, callbacks=[ckpt], **TINY)
    assert isinstance(ml3tf.load_meta_loss(path), ml3tf.MetaLossNetwork)


def test_a_run_folder_resumes_to_the_same_loss(tmp_path):
    x, y = _data()
    whole = ml3tf.learn_loss(_model(), x, y, out_dir=str(tmp_path / "a"), **TINY)
    part = str(tmp_path / "b")
    ml3tf.learn_loss(_model(), x, y, out_dir=part, **{**TINY, "meta_steps": 4})
    resumed = ml3tf.learn_loss(_model(), x, y, out_dir=part, **TINY)
    assert checkpoint_step(part) == 6
    for a, b in zip(whole.network.get_weights(), resumed.network.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    other_y = y + 1.0
    with pytest.raises(ValueError, match="other task options"):
        ml3tf.learn_loss(_model(), x, other_y, out_dir=part, **{**TINY, "meta_steps": 8})


def test_bad_arguments_are_refused_before_anything_is_written(tmp_path):
    x, y = _data()
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="steps_per_epoch must be an integer >= 1, got 0"):
        ml3tf.learn_loss(_model(), x, y, out_dir=str(out), **{**TINY, "steps_per_epoch": 0})
    with pytest.raises(ValueError, match=r"callbacks must be keras\.callbacks\.Callback"):
        ml3tf.learn_loss(_model(), x, y, out_dir=str(out), callbacks=["stop"], **TINY)
    cfg = ml3tf.MetaTrainConfig(select_every=2)
    with pytest.raises(ValueError, match="select_every=2: learn_loss selects"):
        ml3tf.learn_loss(_model(), x, y, out_dir=str(out), config=cfg, **TINY)
    with pytest.raises(ValueError, match="give x and y"):
        ml3tf.learn_loss(_model(), x, None, **TINY)
    assert not out.exists()
