"""Extra information (β·L_task + γ·L_extra) and the online, one-step-truncated meta-update."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import ml3tf
from ml3tf import tasks
from ml3tf.meta_trainer import MetaTrainConfig, MetaTrainer, NonFiniteError
from tests.toy import ToyExtraTask, ToyTask


def _weights(trainer):
    return [v.numpy().copy() for v in trainer.meta_loss.trainable_variables]


def _linear_data(trainer, batch, b=0):
    x = batch.support["x"][b].astype(np.float64).ravel()
    y = batch.support["y"][b].astype(np.float64).ravel()
    w0 = float(trainer.learner.init_params(trainer.init_seeds(0)[b])[0].numpy().squeeze())
    return x, y, w0


# --- β·L_task + γ·L_extra ----------------------------------------------------------------
def test_extra_loss_weighting_closed_form(float64):
    """ŷ = w x, M_φ = φ(ŷ − y)², one SGD step, L_extra = (w' − c)²:
    dL/dφ = (β L_task'(w') + γ 2(w' − c)) · ∂w'/∂φ, against the closed form."""
    alpha, phi, c, beta, gamma = 0.05, 1.5, 2.0, 0.7, 2.5
    task = ToyExtraTask(target=c)
    cfg = MetaTrainConfig(inner_lr=alpha, task_loss_weight=beta, extra_loss_weight=gamma)
    trainer = MetaTrainer(task, cfg)
    batch = task.sample(0, 0, 1)
    x, y, w0 = _linear_data(trainer, batch)
    g0 = np.mean(2 * (w0 * x - y) * x)
    w1 = w0 - alpha * phi * g0
    dw1 = -alpha * g0
    l_task, l_extra = np.mean((w1 * x - y) ** 2), (w1 - c) ** 2
    expected = (beta * np.mean(2 * (w1 * x - y) * x) + gamma * 2 * (w1 - c)) * dw1
    grads, info = trainer.meta_gradient(batch, trainer.init_seeds(0))
    # float64 against float64 closed forms: means of 16 terms and a few products, ~16·eps·|value|
    # = 4e-15 relative (measured ≤ 2e-16); the gradient is a product of two such means, hence
    # rtol 1e-10 there. A wrong sign, factor or step is off by ≥ 1e-3.
    np.testing.assert_allclose(info.task_loss.numpy(), l_task, rtol=1e-12)
    np.testing.assert_allclose(info.extra_loss.numpy(), l_extra, rtol=1e-12)
    np.testing.assert_allclose(info.objective.numpy(), beta * l_task + gamma * l_extra, rtol=1e-12)
    np.testing.assert_allclose(grads[0].numpy(), expected, rtol=1e-10)


def test_meta_gradient_is_beta_task_plus_gamma_extra(float64):
    """∇_φ(β L_task + γ L_extra) = β ∇_φ L_task + γ ∇_φ L_extra (network loss, K = 2, by values);
    γ = 0 equals the same task without any extra loss."""
    kw = dict(learner="smooth", meta_loss="network", split=True)
    base = MetaTrainConfig(inner_steps=2, inner_lr=0.3, meta_batch_size=2)

    def grads(task, **weights):
        trainer = MetaTrainer(task, base.replace(**weights))
        g, info = trainer.meta_gradient(task.sample(0, 0, 2), trainer.init_seeds(0))
        return [gi.numpy() for gi in g], info

    task = ToyExtraTask(**kw)
    g_task, _ = grads(task, task_loss_weight=1.0, extra_loss_weight=0.0)
    g_extra, _ = grads(task, task_loss_weight=0.0, extra_loss_weight=1.0)
    g_both, info = grads(task, task_loss_weight=0.7, extra_loss_weight=2.5)
    assert float(info.extra_loss) > 0
    # float64: the gradient of the weighted sum and the weighted sum of the gradients are the same
    # sums in another order, ~eps·Σ|terms| ≈ 1e-16·(terms ≤ ~1) apart (measured 9e-16); a wrong
    # weight is off by ≥ 1e-2 relative
    for a, t, e in zip(g_both, g_task, g_extra, strict=True):
        np.testing.assert_allclose(a, 0.7 * t + 2.5 * e, rtol=1e-9, atol=1e-14)
    assert max(np.abs(t - e).max() for t, e in zip(g_task, g_extra, strict=True)) > 1e-6
    g_plain, _ = grads(ToyTask(**kw))
    # exact: with extra_loss_weight=0 the trainer never builds the extra term and 1.0·L_task is
    # L_task, so both run the same ops in the same order
    for a, b in zip(g_task, g_plain, strict=True):
        np.testing.assert_array_equal(a, b)


def test_extra_loss_is_logged_per_step(tmp_path):
    task = ToyExtraTask(learner="smooth", meta_loss="network")
    cfg = task.default_config().replace(meta_steps=3, task_loss_weight=0.5, extra_loss_weight=2.0)
    ml3tf.train(task, cfg, str(tmp_path), evaluate=False)
    with open(tmp_path / "metrics.jsonl") as f:
        lines = [json.loads(line) for line in f]
    assert [r["step"] for r in lines] == [0, 1, 2]
    for r in lines:
        assert r["extra_loss"] > 0 and r["task_loss"] > 0
        assert r["objective"] == pytest.approx(0.5 * r["task_loss"] + 2.0 * r["extra_loss"], rel=1e-5)
    with open(tmp_path / "config.json") as f:
        saved = json.load(f)["config"]
    assert saved["extra_loss_weight"] == 2.0 and saved["meta_update"] == "unrolled"


@pytest.mark.parametrize("meta_update", ["unrolled", "online"])
def test_extra_loss_weight_on_a_task_without_extra_loss_is_refused(meta_update):
    task = ToyTask()
    trainer = MetaTrainer(task, task.default_config().replace(extra_loss_weight=1.0, meta_update=meta_update))
    with pytest.raises(ValueError, match="has no extra_loss"):
        trainer.meta_step(task.sample(0, 0, 1), 0)


@pytest.mark.parametrize(
    "changes, name",
    [
        ({"meta_update": "truncated"}, "meta_update"),
        ({"task_loss_weight": -0.5}, "task_loss_weight"),
        ({"extra_loss_weight": float("inf")}, "extra_loss_weight"),
    ],
)
def test_config_rejects_bad_values(changes, name):
    with pytest.raises(ValueError, match=name):
        MetaTrainConfig(**changes)


# --- meta_update="online" ------------------------------------------------------------------
def test_online_meta_step_closed_form(float64):
    """K = 2, one task, outer SGD: ŷ = w x, M_φ = φ(ŷ − y)². Each sub-update holds w_k constant:
    w_{k+1} = w_k − α φ_k g(w_k),  φ_{k+1} = φ_k − η L'(w_{k+1}) · (−α g(w_k))."""
    alpha, phi, eta = 0.05, 1.5, 0.3
    task = ToyTask()
    cfg = MetaTrainConfig(
        inner_steps=2, inner_lr=alpha, meta_lr=eta, meta_optimizer="sgd", meta_update="online"
    )
    trainer = MetaTrainer(task, cfg)
    batch = task.sample(0, 0, 1)
    x, y, w = _linear_data(trainer, batch)

    def g(w):
        return np.mean(2 * (w * x - y) * x)

    learned0 = np.mean(phi * (w * x - y) ** 2)
    norms = []
    for _ in range(2):
        w_next = w - alpha * phi * g(w)
        dphi = g(w_next) * (-alpha * g(w))  # L'(w') ∂w'/∂φ, w held constant
        phi, w = phi - eta * dphi, w_next
        norms.append(abs(dphi))
    info = trainer.meta_step(batch, 0)
    # float64 against float64 closed forms: means of 16 terms and a few products, ~16·eps·|value|
    # = 4e-15 relative (measured ≤ 2e-16); the gradient is a product of two such means, hence
    # rtol 1e-10 there. A wrong sign, factor or step is off by ≥ 1e-3.
    np.testing.assert_allclose(trainer.meta_loss.phi.numpy(), phi, rtol=1e-12)
    np.testing.assert_allclose(info.task_loss, np.mean((w * x - y) ** 2), rtol=1e-12)
    np.testing.assert_allclose(info.initial_loss, learned0, rtol=1e-12)
    np.testing.assert_allclose(info.meta_grad_norm, np.mean(norms), rtol=1e-10)
    # the truncated gradient differs from the exact unrolled one (which would differentiate w_1 too)
    unrolled = MetaTrainer(task, cfg.replace(meta_update="unrolled"))
    unrolled.meta_step(batch, 0)
    assert abs(float(unrolled.meta_loss.phi.numpy()) - phi) > 1e-6


def test_online_sub_update_matches_finite_differences(float64):
    """∇_φ of one sub-update's objective β L_task(θ_{k+1}) + γ L_extra, θ_k fixed, vs central differences."""
    task = ToyExtraTask(learner="smooth", meta_loss="network", split=True)
    cfg = MetaTrainConfig(inner_lr=0.3, task_loss_weight=0.8, extra_loss_weight=0.1, meta_update="online")
    trainer = MetaTrainer(task, cfg)
    one = task.sample(0, 0, 1).task(0)
    params = [p + 0.1 for p in trainer.learner.init_params([1, 2])]  # some θ_k
    state = trainer.learner.state()

    def objective():
        out = trainer.update.gradient(trainer.values(), params, state, (), one.support, one.query, one.extra)
        return out[0], float(out[4][0].numpy())

    grads, _ = objective()
    variables = trainer.meta_loss.trainable_variables
    originals = [v.numpy().copy() for v in variables]
    rng = np.random.default_rng(0)
    for _ in range(3):
        d = [rng.standard_normal(v.shape) for v in variables]
        analytic = sum(float(np.sum(g.numpy() * di)) for g, di in zip(grads, d, strict=True))
        values = []
        for sign in (1.0, -1.0):
            for v, o, di in zip(variables, originals, d, strict=True):
                v.assign(o + sign * 1e-5 * di)
            values.append(objective()[1])
        for v, o in zip(variables, originals, strict=True):
            v.assign(o)
        numeric = (values[0] - values[1]) / 2e-5
        assert abs(analytic) > 1e-8
        assert abs(analytic - numeric) <= 1e-6 * abs(numeric)


def _hand_written_online(task, cfg, steps):
    """The online protocol written out with tapes and a Keras Adam (no MetaTrainer math)."""
    ref = MetaTrainer(task, cfg)  # only for φ's init, the learner and θ_0
    meta_loss, f = ref.meta_loss, ref.learner
    opt = keras.optimizers.Adam(cfg.meta_lr)
    alpha = cfg.inner_lr
    for step in range(steps):
        batch = task.sample(cfg.seed, step, cfg.meta_batch_size)
        seeds = ref.init_seeds(step)
        for b in range(cfg.meta_batch_size):
            one = batch.task(b)
            theta = f.init_params(seeds[b])
            xs, ys = tf.constant(one.support["x"]), tf.constant(one.support["y"])
            xq, yq = tf.constant(one.query["x"]), tf.constant(one.query["y"])
            for _ in range(cfg.inner_steps):
                with tf.GradientTape() as outer:
                    with tf.GradientTape() as inner:
                        inner.watch(theta)
                        m = tf.reduce_mean(meta_loss(tf.concat([f(theta, xs), ys], axis=1)))
                    theta = [t - alpha * g for t, g in zip(theta, inner.gradient(m, theta), strict=True)]
                    lt = tf.reduce_mean(tf.square(f(theta, xq) - yq))
                grads = outer.gradient(lt, meta_loss.trainable_variables)
                opt.apply_gradients(zip(grads, meta_loss.trainable_variables, strict=True))
                theta = [tf.constant(t.numpy()) for t in theta]
    return _weights(ref)


@pytest.mark.parametrize("unroll_loop", ["python", pytest.param("while", marks=pytest.mark.slow)])
def test_online_equals_hand_written_loop_eager_compiled_and_chunked(unroll_loop):
    task = tasks.get("sine", mode="family", n_points=20)
    cfg = task.default_config().replace(
        inner_steps=3,
        meta_batch_size=2,
        inner_lr=1e-2,
        meta_lr=1e-2,
        meta_update="online",
        unroll_loop=unroll_loop,
    )
    expected = _hand_written_online(task, cfg, steps=2)
    eager, compiled, chunked = (MetaTrainer(task, cfg) for _ in range(3))
    infos = [eager.meta_step(task.sample(0, s, 2), s) for s in range(2)]
    compiled_infos = [compiled.step(task.sample(0, s, 2), s) for s in range(2)]
    # float32, other op orders (tf.function and the chunked loop fuse and batch differently;
    # the hand-written loop runs eager tapes): each value differs by its rounding, ~1e-7
    # relative, and 6 Adam updates of lr 1e-2 keep φ within ~1e-7 (measured ≤ 4e-9 in the
    # infos, 1e-7 on φ): the tolerances leave ≥ 60×. The update that the `fresh` check below
    # makes visible (> 1e-4) is what a missing or doubled sub-update would change.
    np.testing.assert_allclose(np.array(compiled_infos), np.array(infos), rtol=1e-5)
    np.testing.assert_allclose(np.array(chunked.run_steps(0, 2)), np.array(infos), rtol=1e-5)
    for trainer in (eager, compiled, chunked):
        for a, b in zip(_weights(trainer), expected, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    fresh = MetaTrainer(task, cfg)
    assert any(np.abs(a - b).max() > 1e-4 for a, b in zip(_weights(fresh), expected, strict=True))


def test_online_non_finite_step_restores_phi_and_optimizer():
    task = ToyTask(learner="smooth", meta_loss="network", nan_at=2)
    cfg = task.default_config().replace(inner_steps=3, meta_update="online")
    trainer = MetaTrainer(task, cfg)
    trainer.run_steps(0, 2)
    before = _weights(trainer)
    opt_before = [v.numpy().copy() for v in trainer.optimizer.variables]
    with pytest.raises(NonFiniteError, match="meta-step 2"):
        trainer.step(task.sample(0, 2, 1), 2)
    with pytest.raises(NonFiniteError, match="meta-step 2"):
        trainer.run_steps(2, 2)
    with pytest.raises(NonFiniteError, match="meta-step 2"):
        trainer.meta_step(task.sample(0, 2, 1), 2)
    for a, b in zip(before, _weights(trainer), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, v in zip(opt_before, trainer.optimizer.variables, strict=True):
        np.testing.assert_array_equal(a, v.numpy())


def test_online_end_to_end_run_writes_a_loss(tmp_path):
    task = ToyExtraTask(learner="smooth", meta_loss="network")
    cfg = task.default_config().replace(
        meta_steps=4, inner_steps=2, meta_update="online", task_loss_weight=0.0, extra_loss_weight=1.0
    )
    run = ml3tf.train(task, cfg, str(tmp_path), evaluate=False)
    loss = ml3tf.load_meta_loss(run.meta_loss_paths[0])
    assert np.isfinite(float(loss.loss_value(np.zeros((3, 1)), np.ones((3, 1)))))
    with open(tmp_path / "metrics.jsonl") as f:
        lines = [json.loads(line) for line in f]
    assert len(lines) == 4 and all(r["objective"] == pytest.approx(r["extra_loss"]) for r in lines)
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["config"]["meta_update"] == "online"


@pytest.mark.parametrize("meta_update", ["unrolled", "online"])
def test_linear_output_bias_gets_a_zero_gradient_not_an_error(meta_update):
    """∇_θ M_φ ignores the output bias of a linear-output loss network; its meta-gradient is 0
    (TensorFlow's UnconnectedGradients.ZERO fails on Keras 3 variables)."""
    task = tasks.get("shaped_sine", n_points=8)
    cfg = task.default_config().replace(inner_steps=2, meta_batch_size=1, meta_update=meta_update)
    trainer = MetaTrainer(task, cfg)
    names = [v.path for v in trainer.meta_loss.trainable_variables]
    assert names[-1].endswith("output/bias")
    if meta_update == "unrolled":
        grads, _ = trainer.meta_gradient(task.sample(0, 0, 1), trainer.init_seeds(0))
    else:
        one = task.sample(0, 0, 1).task(0)
        params = trainer.learner.init_params([0, 0])
        grads = trainer.update.gradient(trainer.values(), params, [], (), one.support, one.query, one.extra)[
            0
        ]
    assert np.all(grads[-1].numpy() == 0)
    assert all(np.any(g.numpy() != 0) for g in grads[:-1])


def test_cli_refuses_a_bad_meta_update_and_negative_weights(tmp_path, capsys):
    from ml3tf.cli import main

    for flags in (["--meta-update", "truncated"], ["--extra-loss-weight", "-1"]):
        out = tmp_path / flags[0].strip("-")
        assert main(["train", "shaped_sine", "--out-dir", str(out), *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert (
            len(err) == 1 and err[0].startswith("ml3tf: error:") and flags[0][2:].replace("-", "_") in err[0]
        )
        assert not out.exists()
