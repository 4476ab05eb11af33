"""MetaTrainer: compiled = eager, the NaN guard, config validation."""

import numpy as np
import pytest

from ml3tf import tasks
from ml3tf.meta_trainer import MetaTrainConfig, MetaTrainer, NonFiniteError
from tests.toy import ToyTask


def _weights(trainer):
    return [v.numpy().copy() for v in trainer.meta_loss.trainable_variables]


@pytest.mark.parametrize("inner_steps", [1, 3])
def test_compiled_and_xla_steps_equal_eager(inner_steps):
    task = tasks.get("sine", mode="family", n_points=20)
    cfg = task.default_config().replace(inner_steps=inner_steps, meta_batch_size=2, inner_lr=1e-2)
    runs = {}
    for mode in ("eager", "function", "xla"):
        trainer = MetaTrainer(task, cfg.replace(jit_compile=mode == "xla"))
        infos = []
        for step in range(3):
            batch = task.sample(cfg.seed, step, cfg.meta_batch_size)
            fn = trainer.meta_step if mode == "eager" else trainer.step
            infos.append(fn(batch, step))
        runs[mode] = (infos, _weights(trainer))
    # float32: tf.function and XLA fuse, batch and reorder the reductions of eager's ops, so each
    # value differs by its own rounding, ~1e-7 relative; 3 Adam steps (lr 1e-3) leave φ within
    # ~1e-7 of each other, since Adam's step depends on g only through g/√v̂ where |g| ≫ ε
    # (measured ≤ 1e-7 relative, 3e-8 on φ: ≥ 900× below the tolerances). A missed or stale
    # update under compilation moves φ by ~lr = 1e-3.
    for mode in ("function", "xla"):
        for a, b in zip(runs["eager"][0], runs[mode][0], strict=True):
            np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-4, atol=1e-6)
        for a, b in zip(runs["eager"][1], runs[mode][1], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # and φ did move
    fresh = MetaTrainer(task, cfg)
    assert any(np.abs(a - b).max() > 0 for a, b in zip(_weights(fresh), runs["eager"][1], strict=True))


def test_same_seed_same_trajectory_other_seed_differs():
    task = tasks.get("sine")
    cfg = task.default_config()
    out = []
    for seed in (0, 0, 1):
        trainer = MetaTrainer(task, cfg.replace(seed=seed))
        out.append([trainer.step(task.sample(seed, s, 1), s).task_loss for s in range(4)])
    assert out[0] == out[1]
    assert out[0] != out[2]


def test_non_finite_step_raises_and_leaves_phi_untouched():
    task = ToyTask(learner="smooth", meta_loss="network", nan_at=2)
    trainer = MetaTrainer(task, task.default_config())
    for step in range(2):
        trainer.step(task.sample(0, step, 1), step)
    before = _weights(trainer)
    opt_before = [v.numpy().copy() for v in trainer.optimizer.variables]
    with pytest.raises(NonFiniteError, match="meta-step 2"):
        trainer.step(task.sample(0, 2, 1), 2)
    for a, b in zip(before, _weights(trainer), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, v in zip(opt_before, trainer.optimizer.variables, strict=True):
        np.testing.assert_array_equal(a, v.numpy())


@pytest.mark.parametrize(
    "changes, name",
    [
        ({"inner_lr": 0.0}, "inner_lr"),
        ({"inner_lr": -1e-3}, "inner_lr"),
        ({"meta_lr": float("nan")}, "meta_lr"),
        ({"inner_steps": 0}, "inner_steps"),
        ({"meta_steps": 0}, "meta_steps"),
        ({"meta_batch_size": 0}, "meta_batch_size"),
        ({"inner_optimizer": "rmsprop"}, "inner_optimizer"),
        ({"unroll_loop": "scan"}, "unroll_loop"),
        ({"seed": -1}, "seed"),
        ({"backprop": "checkpointed"}, "backprop"),
        ({"segment_length": 0}, "segment_length"),
        ({"extra_loss_weight": -1.0}, "extra_loss_weight"),
        ({"task_loss_weight": 0.0}, "both be 0"),
    ],
)
def test_config_rejects_bad_values(changes, name):
    with pytest.raises(ValueError, match=name):
        MetaTrainConfig(**changes)


def test_config_round_trips_through_dict():
    cfg = MetaTrainConfig(inner_steps=4, meta_lr=3e-3, jit_compile=True)
    assert MetaTrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        MetaTrainConfig.from_dict({"inner_stpes": 1})


def test_extra_loss_weight_needs_a_task_with_extra_loss():
    task = tasks.get("sine")
    trainer = MetaTrainer(task, task.default_config().replace(extra_loss_weight=1.0))
    with pytest.raises(ValueError, match="has no extra_loss"):
        trainer.meta_step(task.sample(0, 0, 1), 0)


def test_chunked_steps_equal_single_steps_and_stop_at_a_non_finite_step():
    task = ToyTask(learner="smooth", meta_loss="network", nan_at=4)
    cfg = task.default_config().replace(meta_batch_size=2)
    single = MetaTrainer(task, cfg)
    infos = [single.step(task.sample(0, s, 2), s) for s in range(4)]
    chunked = MetaTrainer(task, cfg)
    # one compiled step per call vs several steps in one compiled loop: the same ops per step
    # (measured bit-identical); the tolerances allow for a graph that batches them otherwise
    # (float32 rounding, ~1e-7), a step done twice or skipped is off by ~lr = 1e-2
    np.testing.assert_allclose(
        np.array(chunked.run_steps(0, 2) + chunked.run_steps(2, 2)), np.array(infos), rtol=1e-5
    )
    for a, b in zip(_weights(single), _weights(chunked), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # steps 4 (NaN) .. 6 in one call: step 4 is named, and neither it nor 5, 6 touch φ
    before = _weights(chunked)
    with pytest.raises(NonFiniteError, match="meta-step 4"):
        chunked.run_steps(4, 3)
    for a, b in zip(before, _weights(chunked), strict=True):
        np.testing.assert_array_equal(a, b)


def test_reset_trainer_equals_a_fresh_trainer_and_keeps_the_learning_rate():
    task = tasks.get("sine")
    cfg = task.default_config()
    reused = MetaTrainer(task, cfg.replace(seed=3))
    reused.run_steps(0, 5)
    lr = float(reused.optimizer.learning_rate.numpy())
    reused.reset(1)
    assert float(reused.optimizer.learning_rate.numpy()) == lr == pytest.approx(cfg.meta_lr)
    fresh = MetaTrainer(task, cfg.replace(seed=1))
    for a, b in zip(_weights(reused), _weights(fresh), strict=True):
        np.testing.assert_array_equal(a, b)
    assert reused.run_steps(0, 4) == fresh.run_steps(0, 4)
    for a, b in zip(_weights(reused), _weights(fresh), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("inner_steps", [2, 12])
def test_vectorized_meta_batch_equals_the_loop(float64, inner_steps):
    task = ToyTask(learner="smooth", meta_loss="network", split=True)
    cfg = task.default_config().replace(meta_batch_size=3, inner_steps=inner_steps, inner_lr=0.2)
    batch = task.sample(0, 0, 3)
    out = {}
    for vec in (True, False):
        trainer = MetaTrainer(task, cfg.replace(vectorize_meta_batch=vec))
        grads, info = trainer.meta_gradient(batch, trainer.init_seeds(0))
        out[vec] = ([g.numpy() for g in grads], [float(v) for v in info])
    # float64: vectorized_map's batched ops vs one task at a time sum in other orders, ~eps·Σ|terms|
    # per op; through 12 inner steps that stays ≲ 1e-14 relative (measured 2e-16 on infos, 7e-16
    # on gradients ~0.4), so rtol 1e-10 / 1e-9 (atol 1e-14 for entries that cancel) leave 1e4×.
    # A task mixed up with another in the vectorized batch is off by O(1).
    np.testing.assert_allclose(out[True][1], out[False][1], rtol=1e-10)
    for a, b in zip(out[True][0], out[False][0], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-14)


def test_segmented_and_truncated_meta_gradients_through_the_trainer(float64):
    task = ToyTask(learner="smooth", meta_loss="network")
    cfg = task.default_config().replace(inner_steps=9, inner_lr=0.2)
    batch = task.sample(0, 0, 1)
    grads = {}
    for mode in ("full", "segmented", "truncated"):
        trainer = MetaTrainer(task, cfg.replace(backprop=mode, segment_length=4, truncate_steps=3))
        g, _ = trainer.meta_gradient(batch, trainer.init_seeds(0))
        grads[mode] = np.concatenate([x.numpy().ravel() for x in g])
    # float64: segmented backprop accumulates the same VJPs segment by segment, another order of
    # the same sums (measured 4e-16 on gradients ~2); rtol 1e-9 is 1e6× that and 1e-5× the
    # difference the truncated gradient makes (asserted below)
    np.testing.assert_allclose(grads["segmented"], grads["full"], rtol=1e-9, atol=1e-14)
    assert np.abs(grads["truncated"] - grads["full"]).max() > 1e-8


def test_task_hook_runs_before_each_compiled_chunk_and_its_variable_changes_are_seen():
    """``before_meta_steps`` may re-assign a variable the compiled step reads (no retrace)."""
    import tensorflow as tf

    class Hooked(ToyTask):
        def __init__(self):
            super().__init__()
            self.shift = tf.Variable(0.0)
            self.calls = []

        def before_meta_steps(self, trainer, first_step, count):
            self.calls.append((first_step, count))
            self.shift.assign(10.0 * first_step)

        def task_loss(self, learner, params, state, data):
            return super().task_loss(learner, params, state, data) + self.shift

    task = Hooked()
    trainer = MetaTrainer(task, task.default_config())
    first = trainer.run_steps(0, 2)
    second = trainer.run_steps(2, 2)
    assert task.calls == [(0, 2), (2, 2)]
    no_shift = MetaTrainer(ToyTask(), task.default_config()).run_steps(0, 4)
    np.testing.assert_allclose([i.task_loss for i in first], [i.task_loss for i in no_shift[:2]], rtol=1e-5)
    np.testing.assert_allclose(
        [i.task_loss for i in second], [i.task_loss + 20.0 for i in no_shift[2:]], rtol=1e-5
    )


def test_fixed_learner_init_draws_the_same_theta0_at_every_step():
    task = ToyTask()
    fixed = MetaTrainer(task, task.default_config().replace(learner_init="fixed", meta_batch_size=2))
    fresh = MetaTrainer(task, task.default_config().replace(meta_batch_size=2))
    np.testing.assert_array_equal(fixed.init_seeds(0), fixed.init_seeds(7))
    assert fixed.init_seeds(3)[0].tolist() != fixed.init_seeds(3)[1].tolist()  # one θ_0 per slot
    assert fresh.init_seeds(0).tolist() != fresh.init_seeds(7).tolist()
    np.testing.assert_array_equal(fixed.init_seeds(0), fresh.init_seeds(0))  # step 0: the same draw
