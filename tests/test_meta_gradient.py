"""The meta-gradient: closed form, finite differences, graph connection, hand-written reference."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from ml3tf import tasks
from ml3tf.functional import FunctionalModel
from ml3tf.meta_trainer import MetaTrainConfig, MetaTrainer
from tests.toy import ToyTask, directional_check


def test_golden_linear_learner_scaled_square_loss(float64):
    """θ' and dL_T/dφ for ŷ = w x, M_φ = φ (ŷ − y)², one SGD step, against the closed form."""
    alpha, phi, eta = 0.05, 1.5, 0.01
    task = ToyTask()
    cfg = MetaTrainConfig(inner_steps=1, inner_lr=alpha, meta_lr=eta, meta_optimizer="sgd", meta_steps=1)
    trainer = MetaTrainer(task, cfg)
    batch = task.sample(0, 0, 1)
    seeds = trainer.init_seeds(0)
    w0 = float(trainer.learner.init_params(seeds[0])[0].numpy().squeeze())
    x = batch.support["x"][0].astype(np.float64).ravel()
    y = batch.support["y"][0].astype(np.float64).ravel()

    g0 = np.mean(2 * phi * (w0 * x - y) * x)
    w1 = w0 - alpha * g0
    loss = np.mean((w1 * x - y) ** 2)
    dloss_dphi = np.mean(2 * (w1 * x - y) * x) * (-alpha * np.mean(2 * (w0 * x - y) * x))

    res = trainer.adapt(trainer.learner.init_params(seeds[0]), {k: v[0] for k, v in batch.support.items()})
    # float64 against float64 closed forms: means of 16 terms and a few products, ~16·eps·|value|
    # = 4e-15 relative (measured ≤ 2e-16); the gradient is a product of two such means, hence
    # rtol 1e-10 there. A wrong sign, factor or step is off by ≥ 1e-3.
    np.testing.assert_allclose(res.params[0].numpy().squeeze(), w1, rtol=1e-12)
    grads, info = trainer.meta_gradient(batch, seeds)
    np.testing.assert_allclose(info.task_loss.numpy(), loss, rtol=1e-12)
    np.testing.assert_allclose(grads[0].numpy(), dloss_dphi, rtol=1e-10)
    np.testing.assert_allclose(info.initial_loss.numpy(), np.mean(phi * (w0 * x - y) ** 2), rtol=1e-12)

    trainer.meta_step(batch, 0)  # outer SGD: φ ← φ − η dL/dφ
    np.testing.assert_allclose(trainer.meta_loss.phi.numpy(), phi - eta * dloss_dphi, rtol=1e-12)


@pytest.mark.parametrize("inner_optimizer", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("steps", [2, 3])
def test_meta_gradient_matches_finite_differences(float64, inner_optimizer, steps):
    task = ToyTask(learner="smooth", meta_loss="network", split=True)
    lr = 0.02 if inner_optimizer == "adam" else 0.3
    cfg = MetaTrainConfig(inner_steps=steps, inner_lr=lr, inner_optimizer=inner_optimizer, meta_batch_size=2)
    trainer = MetaTrainer(task, cfg)
    batch = task.sample(0, 0, 2)
    assert directional_check(trainer, batch, trainer.init_seeds(0)) < 1e-5


def test_meta_gradient_through_while_loop_matches_finite_differences(float64):
    task = ToyTask(learner="smooth", meta_loss="network")
    cfg = MetaTrainConfig(inner_steps=12, inner_lr=0.2, unroll_loop="while")
    trainer = MetaTrainer(task, cfg)
    assert directional_check(trainer, task.sample(0, 0, 1), trainer.init_seeds(0)) < 1e-5


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_every_meta_loss_variable_gets_a_gradient(steps):
    task = tasks.get("sine")
    trainer = MetaTrainer(task, task.default_config().replace(inner_steps=steps))
    grads, _ = trainer.meta_gradient(task.sample(0, 0, 1), trainer.init_seeds(0))
    assert len(grads) == len(trainer.meta_loss.trainable_variables) == 3
    for g, v in zip(grads, trainer.meta_loss.trainable_variables, strict=True):
        assert np.any(g.numpy() != 0), f"{v.path} got no gradient with K={steps}"


def test_unroll_equals_hand_written_math():
    """K stateless_call SGD steps on the sine learner = the same MLP and loss written by hand."""
    task = tasks.get("sine")
    k, alpha = 3, 0.05
    trainer = MetaTrainer(task, task.default_config().replace(inner_steps=k, inner_lr=alpha))
    batch = task.sample(0, 0, 1)
    data = {key: v[0] for key, v in batch.support.items()}
    params0 = trainer.learner.init_params([3, 4])
    x, y = tf.constant(data["x"]), tf.constant(data["y"])
    a1, a2, a3 = [v for v in trainer.meta_loss.trainable_variables]

    def learner(p):
        h = tf.nn.relu(x @ p[0] + p[1])
        h = tf.nn.relu(h @ p[2] + p[3])
        return h @ p[4] + p[5]

    def meta_loss(p):
        f = tf.concat([learner(p), y], axis=1)
        return tf.reduce_mean(tf.math.softplus(tf.nn.relu(tf.nn.relu(f @ a1) @ a2) @ a3))

    with tf.GradientTape() as outer:
        p = list(params0)
        for _ in range(k):
            with tf.GradientTape() as tape:
                tape.watch(p)
                loss = meta_loss(p)
            p = [pi - alpha * gi for pi, gi in zip(p, tape.gradient(loss, p), strict=True)]
        task_loss = tf.reduce_mean(tf.square(learner(p) - y))
    hand_grads = outer.gradient(task_loss, [a1, a2, a3])

    with tf.GradientTape() as outer:
        res = trainer.adapt(params0, data)
        ours = task.task_loss(trainer.learner, res.params, res.state, data)
    our_grads = outer.gradient(ours, [a1, a2, a3])
    # float32, the same math through Keras layers and through hand-written ops: the kernels may
    # round differently (u·Σ|terms| per op, a few 1e-7 relative), and 3 SGD steps and their
    # backward pass carry that along without amplification (measured: θ ≤ 2e-10 apart, the
    # loss bit-identical, every gradient entry within 1/500 of its tolerance). A dropped
    # second-order term or a wrong step changes the meta-gradient by ≥ 1e-2 relative.
    for a, b in zip(res.params, p, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ours.numpy(), task_loss.numpy(), rtol=1e-6)
    for a, b in zip(our_grads, hand_grads, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-9)


def test_functional_view_leaves_model_untouched_and_carries_batchnorm_state():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.BatchNormalization()])
    f = FunctionalModel(model)
    before = [v.numpy().copy() for v in model.weights]
    params = [p + 1.0 for p in f.params()]
    x = np.random.default_rng(0).standard_normal((8, 3)).astype("float32")
    y, new_state = f.apply(params, x, training=True)
    assert y.shape == (8, 4)
    moving_mean = new_state[0].numpy()
    assert np.any(moving_mean != 0), "BatchNorm statistics were not carried out"
    for v, b in zip(model.weights, before, strict=True):
        np.testing.assert_array_equal(v.numpy(), b)
    with pytest.raises(ValueError, match="params has"):
        f.apply(params[:1], x)
    with pytest.raises(ValueError, match="not built"):
        FunctionalModel(keras.Sequential([keras.layers.Dense(2)]))


def test_auto_loop_rule_without_and_under_xla():
    """``unroll_loop="auto"``: K ≤ 10 unrolled in Python without XLA; under XLA only while the
    graph holds K × B ≤ 10 unrolled steps (the meta-batch's tasks run one after the other)."""
    from ml3tf.inner import AUTO_PYTHON_LOOP_MAX, AUTO_XLA_PYTHON_COPIES_MAX, resolve_loop

    assert resolve_loop("auto", AUTO_PYTHON_LOOP_MAX) == "python"
    assert resolve_loop("auto", AUTO_PYTHON_LOOP_MAX + 1) == "while"
    assert resolve_loop("auto", 10, jit_compile=False, copies=16) == "python"
    assert resolve_loop("auto", 5, jit_compile=True, copies=2) == "python"
    assert resolve_loop("auto", AUTO_XLA_PYTHON_COPIES_MAX + 1, jit_compile=True) == "while"
    assert resolve_loop("auto", 10, jit_compile=True, copies=16) == "while"
    assert resolve_loop("python", 100, jit_compile=True, copies=16) == "python"  # asked for: kept
    assert resolve_loop("while", 1) == "while"
    trainer = MetaTrainer(ToyTask(), MetaTrainConfig(inner_steps=6, meta_batch_size=2, jit_compile=True))
    assert trainer.unroll_loop == "while"
    assert MetaTrainer(ToyTask(), MetaTrainConfig(inner_steps=6, meta_batch_size=2)).unroll_loop == "python"


def test_xla_chunk_with_while_loop_equals_python_unrolled(float64):
    """The XLA chunk that "auto" turns into a ``tf.while_loop`` (K × B = 12) takes the same φ
    trajectory as the Python-unrolled one: float64, two SGD meta-steps; the two differ only in
    the order XLA schedules the same operations (≤ ~1e-15 relative per step), a wrong step or
    a lost task by ≥ 1e-3."""
    task = ToyTask(learner="smooth", meta_loss="network", split=True)
    phis = {}
    for loop in ("auto", "python"):
        cfg = MetaTrainConfig(
            inner_steps=6,
            inner_lr=0.3,
            meta_batch_size=2,
            meta_optimizer="sgd",
            meta_lr=0.1,
            jit_compile=True,
            steps_per_call=2,
            unroll_loop=loop,
        )
        trainer = MetaTrainer(task, cfg)
        before = [v.numpy() for v in trainer.meta_loss.trainable_variables]
        trainer.run_steps(0, 2)
        phis[loop] = [v.numpy() for v in trainer.meta_loss.trainable_variables]
        moved = max(np.max(np.abs(a - b)) for a, b in zip(phis[loop], before, strict=True))
        assert moved > 1e-6  # the meta-steps changed φ: the comparison below means something
    for a, b in zip(phis["auto"], phis["python"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
