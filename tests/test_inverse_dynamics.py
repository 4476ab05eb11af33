"""The 2-link inverse-dynamics task: analytic dynamics, the Cholesky inertia model, a tiny run."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import ml3tf
from ml3tf import tasks
from ml3tf.functional import FunctionalModel
from ml3tf.models.inertia import make_inertia_learner
from ml3tf.tasks.inverse_dynamics import ArmParameters, bias_forces, inertia, potential_energy


def test_inertia_is_symmetric_positive_definite():
    rng = np.random.default_rng(0)
    q = rng.uniform(-np.pi, np.pi, size=(500, 2))
    for arm in (ArmParameters(), ArmParameters(m1=0.3, m2=2.0, l1=0.5, l2=1.5)):
        m = inertia(q, arm)
        np.testing.assert_array_equal(m, np.swapaxes(m, 1, 2))
        assert np.linalg.eigvalsh(m).min() > 1e-3


def test_dynamics_conserve_energy_balance():
    """Along any trajectory the input power equals the rate of change of energy:
    q̇ᵀu = d/dt (½ q̇ᵀ M q̇ + V), which checks C (Ṁ − 2C skew) and g against M."""
    task = tasks.get("inverse_dynamics")
    arm = task.arm
    rng = np.random.default_rng(1)
    amp, freq, phase = (
        rng.uniform(0.2, 0.8, (2, 3)),
        rng.uniform(0.5, 2.0, (2, 3)),
        rng.uniform(-3, 3, (2, 3)),
    )
    t = np.linspace(0.0, 5.0, 2001)
    tr = task.trajectory_at(t, amp, freq, phase)
    m = inertia(tr["q"], arm)
    energy = 0.5 * np.einsum("ni,nij,nj->n", tr["qd"], m, tr["qd"]) + potential_energy(tr["q"], arm)
    power = np.einsum("ni,ni->n", tr["qd"], tr["y"])
    d_energy = np.gradient(energy, t)
    np.testing.assert_allclose(power[5:-5], d_energy[5:-5], atol=2e-3 * np.abs(power).max())
    # and u = M q̈ + F with F = C q̇ + g
    u = np.einsum("nij,nj->ni", m, tr["qdd"]) + bias_forces(tr["q"], tr["qd"], arm)
    np.testing.assert_allclose(tr["y"], u)
    # q̇ and q̈ are the time derivatives of q
    np.testing.assert_allclose(np.gradient(tr["q"], t, axis=0)[1:-1], tr["qd"][1:-1], atol=1e-4)
    np.testing.assert_allclose(np.gradient(tr["qd"], t, axis=0)[1:-1], tr["qdd"][1:-1], atol=1e-4)


def test_sample_shapes_and_determinism():
    task = tasks.get("inverse_dynamics", n_points=16)
    a, b, c = task.sample(2, 5, 3), task.sample(2, 5, 3), task.sample(2, 6, 3)
    assert a.support["x"].shape == a.query["x"].shape == (3, 16, 6)
    assert a.support["y"].shape == (3, 16, 2) and a.extra["inertia"].shape == (3, 16, 3)
    np.testing.assert_array_equal(a.query["y"], b.query["y"])
    assert not np.array_equal(a.query["y"], c.query["y"])
    assert not np.array_equal(a.support["x"], a.query["x"])
    xs, ys = task.eval_data(0)
    assert xs.shape == (10, 16 * 5, 6) and ys.shape == (10, 16 * 5, 6)
    assert ys[..., 5].sum() == 10 * 16  # one fit trajectory per learner, four held out


def test_cholesky_inertia_model_is_spd_and_predicts_torques(tmp_path):
    learner = make_inertia_learner((8, 8))
    f = FunctionalModel(learner)
    params = [p * 3.0 for p in f.init_params([0, 3])]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6)).astype(np.float32) * 3
    out = f(params, x).numpy()
    m = np.stack([np.stack([out[:, 2], out[:, 3]], -1), np.stack([out[:, 3], out[:, 4]], -1)], -2)
    assert np.linalg.eigvalsh(m).min() > 0
    # the model's m q̈ + F and NumPy's float32 einsum: 3-term sums, each within γ_3·Σ|terms|
    # (Σ|terms| ≤ 218 here), so within 2·γ_3·Σ|terms|, at most 0.44 of the tolerance below for
    # these inputs (measured: bit-identical). A wrong entry of M or of the sum is off by O(1).
    np.testing.assert_allclose(
        out[:, :2], np.einsum("nij,nj->ni", m, x[:, 2:4]) + x[:, 4:6], rtol=1e-5, atol=1e-5
    )
    f.assign(params)
    learner.save(tmp_path / "m.keras")
    back = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_allclose(back(x), out, rtol=1e-6)


def test_extra_loss_is_zero_for_the_true_inertia_and_matches_frobenius():
    task = tasks.get("inverse_dynamics", n_points=8)
    one = task.sample(0, 0, 1).task(0)
    true = tf.constant(one.extra["inertia"])

    class Exact:  # a "learner" that outputs the true inertia, then one that is off by δ
        def __init__(self, delta):
            self.delta = delta

        def apply(self, params, x, state, training=False):
            return tf.concat([tf.zeros((8, 2)), true + self.delta], -1), state

    assert float(task.extra_loss(Exact(0.0), [], [], one.query, one.extra)) == 0.0
    delta = tf.constant([0.1, -0.2, 0.3])
    # float32 (true + δ) − true is δ within u·(|M| + |δ|) (|M| ≤ 2.7 here), ≤ 1.7e-6 relative
    # to δ, ≤ 5e-6 after squaring and the mean over 24 positive terms (γ_24): rtol 1e-5 holds on
    # any machine; a missing factor 2 on the off-diagonal entry is off by 22%.
    np.testing.assert_allclose(
        float(task.extra_loss(Exact(delta), [], [], one.query, one.extra)), 0.01 + 2 * 0.04 + 0.09, rtol=1e-5
    )


def test_tiny_end_to_end_run_with_the_physics_prior(tmp_path):
    task = tasks.get(
        "inverse_dynamics",
        n_points=8,
        n_eval_tasks=2,
        n_heldout=1,
        learner_hidden=(4,),
        meta_loss_hidden=(4,),
    )
    cfg = task.default_config().replace(
        meta_steps=3, inner_steps=2, meta_batch_size=2, eval_steps=3, extra_loss_weight=1.0
    )
    res = ml3tf.train(task, cfg, str(tmp_path), seeds=[0]).results
    assert res["metric"] == "torque_mse" and len(res["curves"]["heldout"]["learned"]["mean"]) == 4
    assert res["inertia_error"]["final"]["heldout"]["baseline"] > 0
    with open(tmp_path / "metrics.jsonl") as f:
        lines = [json.loads(line) for line in f]
    assert len(lines) == 3
    assert all(r["objective"] == pytest.approx(r["task_loss"] + r["extra_loss"], rel=1e-5) for r in lines)
    assert all(r["extra_loss"] > 0 for r in lines)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="n_heldout"):
        tasks.get("inverse_dynamics", n_heldout=0)
    with pytest.raises(ValueError, match="amplitude_range"):
        tasks.get("inverse_dynamics", amplitude_range=(-1.0, 1.0))
    with pytest.raises(ValueError, match="loss_features"):
        tasks.get("inverse_dynamics", loss_features="error")


def test_residual_loss_features_hand_the_torque_error_to_the_loss_network():
    """``loss_features="residual"``: the loss network sees û − u (2 features) and is built for
    2 inputs (the default); ``absolute`` keeps the paper's [û, u] (4). Values chosen exactly representable."""
    y_pred = tf.constant([[1.5, -2.0, 9.0, 9.0, 9.0]])
    y_true = tf.constant([[1.0, 0.5, 7.0, 7.0, 7.0, 1.0]])
    residual = tasks.get("inverse_dynamics", loss_features="residual")
    np.testing.assert_array_equal(residual.loss_features(y_pred, y_true).numpy(), [[0.5, -2.5]])
    absolute = tasks.get("inverse_dynamics", loss_features="absolute")
    np.testing.assert_array_equal(absolute.loss_features(y_pred, y_true).numpy(), [[1.5, -2.0, 1.0, 0.5]])
    for task, width in ((residual, 2), (absolute, 4)):
        net = task.make_meta_loss()
        assert net(tf.zeros((3, width))).shape[0] == 3
        with pytest.raises(Exception):  # noqa: B017 - Keras' own shape error for the wrong width
            net(tf.zeros((3, 6 - width)))


def _gradient_cosine(task, network) -> float:
    """Mean cosine between ∂M/∂û and MSE's gradient û − u on 256 fresh (û, u) rows."""
    u = tf.constant(task.trajectory_points(np.random.default_rng(3), 256)["y"], tf.float32)
    r = tf.random.stateless_normal((256, 2), (1, 2))
    pad = tf.zeros((256, 3))
    y_pred = tf.concat([u + r, pad], -1)
    with tf.GradientTape() as tape:
        tape.watch(y_pred)
        value = tf.reduce_sum(network(task.loss_features(y_pred, tf.concat([u, pad], -1))))
    g = tape.gradient(value, y_pred)[:, :2]
    return float(tf.reduce_mean(tf.reduce_sum(g * r, -1) / (tf.norm(g, axis=-1) * tf.norm(r, axis=-1))))


def test_mse_warm_start_fits_the_half_squared_error_up_to_a_constant(monkeypatch):
    """``meta_loss_init="mse"``: the fresh draw is fitted so that M(û, u) − M(u, u) ≈ ½‖û − u‖²;
    its gradient then points like MSE's (cosine near 1 on fresh rows, ~0.97–0.99 measured; the
    random draw's is near 0), and the fit is done once per draw (a trainer asking again gets
    the same weights)."""
    import ml3tf.tasks.inverse_dynamics as module

    fits = []
    real = module.fit_network
    monkeypatch.setattr(module, "fit_network", lambda *a, **k: fits.append(1) or real(*a, **k))
    for n, features in enumerate(("residual", "absolute"), start=1):
        small = dict(loss_features=features, meta_loss_hidden=(16,))
        task = tasks.get("inverse_dynamics", meta_loss_init="mse", **small)
        keras.utils.set_random_seed(0)
        net = task.make_meta_loss()
        keras.utils.set_random_seed(0)
        again = task.make_meta_loss()
        assert len(fits) == n
        for a, b in zip(net.get_weights(), again.get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
        random = tasks.get("inverse_dynamics", meta_loss_init="random", **small).make_meta_loss()
        assert _gradient_cosine(task, net) > 0.9 > _gradient_cosine(task, random)
