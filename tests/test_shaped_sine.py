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
from tests.numerics import ACT_ABS_ULPS, ACT_REL_ULPS, U32


def sin_atol(max_arg, roundings):
    """|ŝ₁ − ŝ₂| for two float32 evaluations of sin(ω x): each rounding of ω, of its parts or of x
    moves the argument by ≤ u·|ω x| (sin is 1-Lipschitz), and each side's sin and float32 result
    add ≤ (ACT_REL_ULPS + ACT_ABS_ULPS)·u. A wrong ω (by 0.01) or wrong data is off by ≥ 1e-2.
    """
    return roundings * U32 * max_arg + 2 * (ACT_REL_ULPS + ACT_ABS_ULPS) * U32


def test_sample_is_deterministic_and_consistent():
    task = tasks.get("shaped_sine", n_points=16)
    a, b, c = task.sample(3, 7, 4), task.sample(3, 7, 4), task.sample(3, 8, 4)
    assert a.support["x"].shape == a.support["y"].shape == (4, 16, 1)
    assert a.extra["frequency"].shape == (4,)
    np.testing.assert_array_equal(a.support["x"], b.support["x"])
    assert not np.array_equal(a.support["x"], c.support["x"])
    v = a.extra["frequency"][:, None, None]
    # y = sin(v x) in float64, stored as float32, against float32 v and x and their float32
    # product: 3 roundings of the argument, |v x| ≤ 25 (atol ≤ 6.7e-6; 1e-6 was below it)
    want = np.sin(v * a.support["x"])
    np.testing.assert_allclose(
        a.support["y"], want, rtol=0, atol=sin_atol(np.abs(v * a.support["x"]).max(), 3)
    )
    assert np.all(np.abs(a.extra["frequency"]) <= 5) and np.all(np.abs(a.support["x"]) <= 5)
    x, y = task.test_points()
    assert x.shape == y.shape == (100, 1) and x[0, 0] == -5.0 and x[-1, 0] == pytest.approx(4.9)


def test_learner_starts_at_omega0_and_round_trips_by_values(tmp_path):
    learner = make_sine_frequency_learner(0.1)
    f = FunctionalModel(learner)
    x = np.linspace(-5, 5, 11, dtype=np.float32)[:, None]
    theta0 = f.init_params([0, 1])
    # TF: δ (itself θ₀ + 0.6, two roundings), ω₀ and δ + ω₀ rounded, then (δ + ω₀)·x; NumPy:
    # the float32 ω and ω·x: ≤ 7 roundings of an argument ≤ 3.5 (atol 3.7e-6; 1e-6 was below)
    atol = sin_atol(3.5, 7)
    np.testing.assert_allclose(f(theta0, x), np.sin(0.1 * x), rtol=0, atol=atol)
    np.testing.assert_allclose(f([theta0[0] + 0.6], x), np.sin(0.7 * x), rtol=0, atol=atol)
    learner.layers[0].delta.assign([0.3])
    learner.save(tmp_path / "l.keras")
    back = keras.saving.load_model(tmp_path / "l.keras", safe_mode=True)
    np.testing.assert_allclose(back(x), np.sin(0.4 * x), rtol=0, atol=atol)


def test_features_and_extra_loss_with_gradient():
    task = tasks.get("shaped_sine", n_points=8)
    f = FunctionalModel(task.make_learner())
    one = task.sample(0, 0, 1).task(0)
    params = [tf.constant([0.5])]  # ω = 0.6
    feats, _ = task.meta_loss_inputs(f, params, [], one.support)
    x = one.support["x"]
    np.testing.assert_allclose(
        feats.numpy(),
        np.concatenate([x, np.sin(0.6 * x), one.support["y"]], 1),
        rtol=0,
        atol=sin_atol(0.6 * 5, 7),  # as in the test above, |ω x| ≤ 3
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
    out = task.meta_test(None, 0, task.default_config().replace(inner_lr=lr), steps=2)
    x, y = (a.astype(np.float64).ravel() for a in task.test_points())
    w0 = task.initial_omegas(0)
    assert w0[0] == pytest.approx(0.1) and out["omega"].shape == out["mse"].shape == (7, 3)
    grad = np.array([np.mean(2 * (np.sin(w * x) - y) * x * np.cos(w * x)) for w in w0])
    # TF float32 against float64: ω₀ rounds once (u); the gradient is a float32 mean of 100
    # signed terms |2 (sin − y) x cos| ≤ 20, so within γ_100·20 = 1.2e-4 (plus sin's ulps), which
    # the step lr = 0.05 turns into ≤ 6e-6 < atol 1e-5; the MSE is a mean of positive terms,
    # ≤ γ_100 + sin's ulps ≈ 8e-6 relative < 1e-4. A wrong step or gradient is off by ≥ 1e-3.
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


def test_anchored_loss_keeps_its_lowest_point_at_v_through_meta_training(tmp_path):
    """``anchored_loss=True``: M_φ = (m(x, ŷ, y) − m(x, y, y))² is 0 where ŷ = y, so ω = v is the
    lowest point of the meta-test landscape for any φ — a fresh network and one after meta-steps."""
    task = tasks.get("shaped_sine", anchored_loss=True, n_points=16, n_inits=5)
    cfg = task.default_config().replace(
        meta_steps=3,
        inner_steps=2,
        meta_batch_size=2,
        eval_steps=4,
        task_loss_weight=0.0,
        extra_loss_weight=1.0,
    )
    run = ml3tf.train(task, cfg, str(tmp_path), seeds=[0], evaluate=False)
    trained = ml3tf.load_meta_loss(run.meta_loss_paths[0])
    assert trained.anchor_pairs == ((1, 2),)
    fresh = task.make_meta_loss()
    assert not np.allclose(fresh.get_weights()[0], trained.get_weights()[0])  # meta-training moved φ
    omegas = np.round(np.linspace(-7.0, 7.0, 281), 6)  # step 0.05, holds v = 0.7
    i = int(np.flatnonzero(omegas == 0.7)[0])
    for net in (fresh, trained):
        land = task.landscape(net, omegas)
        # at v the features differ only by float32 rounding of sin(ωx) against float64 sin(vx)
        # (|ŷ − y| ≲ 1e-6), so M ≈ (∂m/∂ŷ)²·1e-12; one grid step away |ŷ − y| reaches 0.05·|x| ≤ 0.25
        # and the mean of M is orders of magnitude above — a minimum anywhere else fails the argmin
        assert int(np.argmin(land)) == i and np.all(land >= 0)
        assert land[i] < 1e-6 * np.sort(land)[1]


@pytest.mark.parametrize(
    "options, name",
    [
        ({"n_points": 0}, "n_points"),
        ({"tolerance": 0.0}, "tolerance"),
        ({"init_range": (1.0, -1.0)}, "init_range"),
        ({"anchored_loss": "yes"}, "anchored_loss"),
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
