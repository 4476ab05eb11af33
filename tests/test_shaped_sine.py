"""The shaped-sine task: data, learner, losses, meta-test, a tiny end-to-end run."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import ml3tf
from ml3tf import tasks
from ml3tf.functional import FunctionalModel
from ml3tf.models.sine_frequency import make_sine_frequency_learner


def test_sample_is_deterministic_and_consistent():
    task = tasks.get("shaped_sine", n_points=16)
    a, b, c = task.sample(3, 7, 4), task.sample(3, 7, 4), task.sample(3, 8, 4)
    assert a.support["x"].shape == a.support["y"].shape == (4, 16, 1)
    assert a.extra["frequency"].shape == (4,)
    np.testing.assert_array_equal(a.support["x"], b.support["x"])
    assert not np.array_equal(a.support["x"], c.support["x"])
    v = a.extra["frequency"][:, None, None]
    np.testing.assert_allclose(a.support["y"], np.sin(v * a.support["x"]), atol=1e-6)
    assert np.all(np.abs(a.extra["frequency"]) <= 5) and np.all(np.abs(a.support["x"]) <= 5)
    x, y = task.test_points()
    assert x.shape == y.shape == (100, 1) and x[0, 0] == -5.0 and x[-1, 0] == pytest.approx(4.9)


def test_learner_starts_at_omega0_and_round_trips_by_values(tmp_path):
    learner = make_sine_frequency_learner(0.1)
    f = FunctionalModel(learner)
    x = np.linspace(-5, 5, 11, dtype=np.float32)[:, None]
    theta0 = f.init_params([0, 1])
    np.testing.assert_allclose(f(theta0, x), np.sin(0.1 * x), atol=1e-6)
    np.testing.assert_allclose(f([theta0[0] + 0.6], x), np.sin(0.7 * x), atol=1e-6)
    learner.layers[0].delta.assign([0.3])
    learner.save(tmp_path / "l.keras")
    back = keras.saving.load_model(tmp_path / "l.keras", safe_mode=True)
    np.testing.assert_allclose(back(x), np.sin(0.4 * x), atol=1e-6)


def test_features_and_extra_loss_with_gradient():
    task = tasks.get("shaped_sine", n_points=8)
    f = FunctionalModel(task.make_learner())
    one = task.sample(0, 0, 1).task(0)
    params = [tf.constant([0.5])]  # ω = 0.6
    feats, _ = task.meta_loss_inputs(f, params, [], one.support)
    x = one.support["x"]
    np.testing.assert_allclose(
        feats.numpy(), np.concatenate([x, np.sin(0.6 * x), one.support["y"]], 1), atol=1e-6
    )
    with tf.GradientTape() as tape:
        tape.watch(params)
        extra = task.extra_loss(f, params, [], one.query, one.extra)
    v = float(one.extra["frequency"])
    np.testing.assert_allclose(float(extra), (0.6 - v) ** 2, rtol=1e-5)
    np.testing.assert_allclose(tape.gradient(extra, params)[0].numpy(), [2 * (0.6 - v)], rtol=1e-5)
    assert task.make_meta_loss()(feats).shape == (8, 1)


def test_meta_test_sgd_matches_closed_form_and_landscape_minimum():
    """One MSE SGD step: ω₁ = ω₀ − lr · mean(2 (sin(ω₀x) − y) x cos(ω₀x)), for every initial ω."""
    task = tasks.get("shaped_sine", n_inits=6)
    lr = 0.05
    out = task.meta_test(None, seed=0, steps=2, learning_rate=lr)
    x, y = (a.astype(np.float64).ravel() for a in task.test_points())
    w0 = task.initial_omegas(0)
    assert w0[0] == pytest.approx(0.1) and out["omega"].shape == out["mse"].shape == (7, 3)
    grad = np.array([np.mean(2 * (np.sin(w * x) - y) * x * np.cos(w * x)) for w in w0])
    np.testing.assert_allclose(out["omega"][:, 0], w0, rtol=1e-5)
    np.testing.assert_allclose(out["omega"][:, 1], w0 - lr * grad, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["mse"][:, 0], [np.mean((np.sin(w * x) - y) ** 2) for w in w0], rtol=1e-4)
    omegas = np.linspace(-7, 7, 141)
    land = task.landscape(None, omegas)
    assert omegas[np.argmin(land)] == pytest.approx(0.7) and land.min() < 1e-10
    assert task.success_rate(np.array([0.7, 0.74, 0.8, -0.7])) == 0.5


@pytest.mark.parametrize("beta, gamma", [(0.0, 1.0), pytest.param(1.0, 0.0, marks=pytest.mark.slow)])
def test_tiny_end_to_end_run(tmp_path, beta, gamma):
    task = tasks.get("shaped_sine", n_points=16, n_inits=5)
    cfg = task.default_config().replace(meta_steps=3, inner_steps=2, meta_batch_size=2, eval_steps=4)
    out = tmp_path / f"b{beta}"
    run = ml3tf.train(
        task, cfg.replace(task_loss_weight=beta, extra_loss_weight=gamma), str(out), seeds=[0, 1]
    )
    res = run.results
    assert res["task"] == "shaped_sine" and res["steps"] == 4 and res["seeds"] == [0, 1]
    assert len(res["curves"]["test"]["learned"]["mean"]) == 5
    assert set(res["success_rate"]) == {"learned", "baseline"}
    with open(out / "seed_0" / "metrics.jsonl") as f:
        lines = [json.loads(line) for line in f]
    assert len(lines) == 3
    key = "extra_loss" if gamma else "task_loss"
    assert all(r["objective"] == pytest.approx(r[key]) for r in lines)
    assert (out / "results.json").exists() and (out / "results.png").exists()


@pytest.mark.parametrize(
    "options, name",
    [
        ({"n_points": 0}, "n_points"),
        ({"tolerance": 0.0}, "tolerance"),
        ({"init_range": (1.0, -1.0)}, "init_range"),
    ],
)
def test_bad_options_are_refused(options, name):
    with pytest.raises(ValueError, match=name):
        tasks.get("shaped_sine", **options)


@pytest.mark.slow
def test_shaped_loss_converges_from_more_initial_omegas_than_mse(tmp_path):
    task = tasks.get("shaped_sine")
    cfg = task.default_config().replace(task_loss_weight=0.0, extra_loss_weight=1.0)  # 1500 meta-steps
    run = ml3tf.train(task, cfg, str(tmp_path), seeds=[0])
    res = run.results
    assert res["success_rate"]["learned"]["mean"] > res["success_rate"]["baseline"]["mean"] + 0.3
    omegas = np.linspace(-7, 7, 281)
    landscape = task.landscape(ml3tf.load_meta_loss(run.meta_loss_paths[0]), omegas)
    assert abs(omegas[np.argmin(landscape)] - 0.7) <= 0.1
