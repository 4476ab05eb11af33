"""Inner optimizers against textbook numpy, and the unroll's two loop forms."""

import functools

import numpy as np
import pytest
import tensorflow as tf

from ml3tf.inner import SGD, Adam, Momentum, make_inner_optimizer, unroll


def _quadratic(target):
    def loss_fn(params, state):
        return tf.reduce_sum((params[0] - target) ** 2 * tf.range(1.0, 4.0, dtype=tf.float64)), state

    return loss_fn


def _numpy_run(kind, lr, steps, p, target):
    scale = np.arange(1.0, 4.0)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t in range(1, steps + 1):
        g = 2 * (p - target) * scale
        if kind == "sgd":
            p = p - lr * g
        elif kind == "momentum":
            m = 0.9 * m + g
            p = p - lr * m
        else:
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            p = p - lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
    return p


@pytest.mark.parametrize("kind", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("loop", ["python", "while"])
def test_optimizers_match_textbook(kind, loop):
    p0 = np.array([1.0, -2.0, 0.5])
    target = np.array([0.3, 0.1, -0.7])
    opt = make_inner_optimizer(kind, 0.05)
    res = unroll(_quadratic(tf.constant(target)), [tf.constant(p0)], opt, steps=7, loop=loop)
    # float64, 7 steps of a few flops each (Adam: |g| ≥ 0.1 ≫ ε, so its normalisation does not
    # amplify rounding): ≲ 100·eps ≈ 2e-14 relative (measured 2e-16); a wrong update rule is off
    # by ≥ 1e-3
    np.testing.assert_allclose(res.params[0].numpy(), _numpy_run(kind, 0.05, 7, p0, target), rtol=1e-10)
    # initial_loss is the loss at θ_0
    np.testing.assert_allclose(res.initial_loss.numpy(), np.sum((p0 - target) ** 2 * np.arange(1.0, 4.0)))


def test_while_loop_equals_python_loop_under_tf_function():
    target = tf.constant([0.3, 0.1, -0.7], tf.float64)
    p0 = [tf.constant([1.0, -2.0, 0.5], tf.float64)]

    @tf.function
    def run(loop):
        return unroll(_quadratic(target), p0, Adam(0.1), steps=30, loop=loop).params[0]

    # the same float64 ops per step, unrolled or in a while_loop (measured 5e-17 apart: grappler
    # may constant-fold the unrolled graph); 30 Adam steps keep rounding ≲ 1e-14 relative
    np.testing.assert_allclose(run("python").numpy(), run("while").numpy(), rtol=1e-12)


@pytest.mark.parametrize(
    "make",
    [
        lambda: SGD(0.0),
        lambda: SGD(-1.0),
        lambda: SGD(float("nan")),
        lambda: Adam(1e-3, beta_1=1.0),
        lambda: Momentum(1e-3, momentum=1.5),
        lambda: make_inner_optimizer("rmsprop", 1e-3),
    ],
)
def test_bad_optimizer_arguments(make):
    with pytest.raises(ValueError):
        make()


def test_unroll_rejects_zero_steps_and_bad_loop():
    fn = _quadratic(tf.zeros(3, tf.float64))
    with pytest.raises(ValueError, match="inner_steps"):
        unroll(fn, [tf.ones(3, tf.float64)], SGD(0.1), steps=0)
    with pytest.raises(ValueError, match="loop"):
        unroll(fn, [tf.ones(3, tf.float64)], SGD(0.1), steps=1, loop="scan")


def _phi_problem():
    """A loss with parameters φ (a variable) read inside the inner loss, float64."""
    phi = tf.Variable([0.7, -0.3, 1.2], dtype=tf.float64)
    x = tf.constant(np.linspace(-1, 1, 12).reshape(4, 3), tf.float64)

    def loss_fn(params, state):
        w = params[0]
        loss = tf.reduce_mean(tf.math.softplus(tf.linalg.matvec(x, w) * phi[0]))
        loss += phi[1] * tf.reduce_mean(tf.sin(w) ** 2) + 0.1 * phi[2] * tf.reduce_sum(w**2)
        return loss, state

    def meta_grad(steps, opt, **kw):
        with tf.GradientTape() as tape:
            res = unroll(
                loss_fn, [tf.constant([0.5, -1.0, 0.25], tf.float64)], opt, steps, loop="while", **kw
            )
            target = tf.reduce_sum((res.params[0] - 0.3) ** 2)
        return tape.gradient(target, [phi]), res.params[0]

    return meta_grad


@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("compiled", [False, True])
def test_segmented_backprop_is_exact(kind, compiled):
    meta_grad = _phi_problem()
    opt = make_inner_optimizer(kind, 0.05)

    def run(*args, **kw):
        fn = functools.partial(meta_grad, *args, **kw)
        grads, theta = tf.function(fn)() if compiled else fn()
        return grads[0].numpy(), theta.numpy()

    full, theta_full = run(12, opt)
    # K − 1 = 11 segmented steps: S = 5 has a remainder segment, 1 and 11 none, 40 no full one
    for s in (5,) if compiled else (1, 5, 11, 40):
        seg, theta_seg = run(12, opt, backprop="segmented", segment_length=s)
        # float64: segments recompute the same forward ops (θ ≤ 6e-17 apart) and accumulate the
        # same VJPs in another order (≤ 5e-16 on gradients ≥ 1e-6 … 0.5); rtol 1e-10 holds with
        # 1e4× to spare and is far below what a dropped segment changes (≥ 1e-6, asserted below)
        np.testing.assert_allclose(theta_seg, theta_full, rtol=1e-13)
        np.testing.assert_allclose(seg, full, rtol=1e-10, atol=1e-14)
    assert np.abs(full).min() > 1e-6


def test_truncated_backprop_drops_early_steps():
    meta_grad = _phi_problem()
    opt = SGD(0.05)
    full, theta = meta_grad(8, opt)
    same, _ = meta_grad(8, opt, backprop="truncated", truncate_steps=8)
    np.testing.assert_allclose(same[0].numpy(), full[0].numpy(), rtol=1e-12)
    one, theta_1 = meta_grad(8, opt, backprop="truncated", truncate_steps=1)
    np.testing.assert_allclose(theta_1.numpy(), theta.numpy(), rtol=1e-13)  # the same forward pass
    assert np.abs(one[0].numpy() - full[0].numpy()).max() > 1e-6  # an approximate gradient
    assert np.abs(one[0].numpy()).max() > 1e-8  # but not a vanished one


def test_backprop_arguments_are_checked():
    fn = _quadratic(tf.zeros(3, tf.float64))
    p = [tf.ones(3, tf.float64)]
    with pytest.raises(ValueError, match="backprop"):
        unroll(fn, p, SGD(0.1), steps=2, backprop="checkpoint")
    with pytest.raises(ValueError, match="segment_length"):
        unroll(fn, p, SGD(0.1), steps=2, backprop="segmented", segment_length=0)
    with pytest.raises(ValueError, match="truncate_steps"):
        unroll(fn, p, SGD(0.1), steps=2, backprop="truncated", truncate_steps=0)


@pytest.mark.parametrize("steps, want_while", [(10, False), (11, True)])
def test_auto_loop_is_decided_on_k(steps, want_while):
    """``loop="auto"``: a Python loop for K ≤ 10 inner steps, a tf.while_loop beyond (K, not K − 1)."""

    @tf.function
    def run(p0):
        return unroll(
            _quadratic(tf.constant([1.0, 2.0, 3.0], tf.float64)), [p0], SGD(0.1), steps=steps
        ).params

    graph = run.get_concrete_function(tf.TensorSpec((3,), tf.float64)).graph
    ops = {op.type for op in graph.get_operations()}
    assert bool(ops & {"While", "StatelessWhile"}) == want_while
