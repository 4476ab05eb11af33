"""The Task contract, the one meta-test engine, the seed scheme and the config split."""

import dataclasses
import importlib.util
import random

import keras
import numpy as np
import pytest
import tensorflow as tf

from ml3tf import tasks
from ml3tf.config import FIELD_KINDS, MetaTrainConfig
from ml3tf.engine import MetaTestEngine, engine_for
from ml3tf.meta_trainer import MetaTrainer
from ml3tf.seeds import (
    META_TEST_BLOCK,
    META_TEST_OFFSET,
    meta_test_seeds,
    meta_train_key,
    meta_train_seeds,
    seeded,
)
from ml3tf.task import Task
from tests.test_xla_every_task import SMALL
from tests.toy import ToyTask

HAS_TF_AGENTS = importlib.util.find_spec("tf_agents") is not None


def _available(name):
    """The RL tasks import TF-Agents; the core-only CI stack (.ci/check-dist) has none."""
    return HAS_TF_AGENTS or name not in tasks._NEEDS_TF_AGENTS


class _EngineUsed(Exception):
    pass


@pytest.mark.parametrize("name", tasks.names())
def test_every_registered_task_meta_tests_through_the_one_engine(name, monkeypatch):
    """``evaluate`` of every task reaches ``MetaTestEngine.run`` with the configured optimizer."""
    if not _available(name):
        pytest.skip("TF-Agents is not installed")
    task = tasks.get(name, **SMALL.get(name, {}))
    cfg = task.default_config().replace(eval_steps=1, inner_optimizer="adam")
    seen = []

    def run(engine, *args, **kwargs):
        seen.append(engine.optimizer)
        raise _EngineUsed

    monkeypatch.setattr(MetaTestEngine, "run", run)
    with pytest.raises(_EngineUsed):
        task.evaluate([task.make_meta_loss()], cfg, [0])
    assert type(seen[0]).__name__ == "Adam" and seen[0].learning_rate == cfg.inner_lr


def test_meta_test_adapts_with_the_configured_inner_optimizer():
    """One loss evaluated under SGD and under Adam: different curves, each the optimizer's own step."""
    task = ToyTask()
    meta_loss = task.make_meta_loss()  # M = φ (ŷ − y)², φ = 1.5
    meta_loss(np.zeros((1, 2), np.float32))  # built
    base = task.default_config().replace(eval_steps=1, inner_lr=0.05)
    curves = {}
    for name in ("sgd", "adam"):
        res = task.evaluate([meta_loss], base.replace(inner_optimizer=name), [0])
        curves[name] = res["curves"]["train"]["learned"]["mean"]
        assert res["config"]["inner_optimizer"] == name
    # By hand in float64: the linear learner ŷ = w x from the engine's θ₀, one step of each rule.
    x, y = (a[0].astype(np.float64) for a in task.eval_splits(0)["train"])
    w0 = float(engine_for(task, base).initial_params(0, 2)[0].numpy()[0].squeeze())
    g = float(np.mean(1.5 * 2 * (w0 * x - y) * x))
    steps = {"sgd": 0.05 * g, "adam": 0.05 * g / (abs(g) + 1e-8)}  # Adam's first step: lr · sign(g)
    for name, step in steps.items():
        want = np.mean(((w0 - step) * x - y) ** 2)
        # float32 curves of a 16-point mean: a few ulps of values O(10); 1e-5 relative is ample.
        np.testing.assert_allclose(curves[name][1], want, rtol=1e-5)
    assert abs(curves["sgd"][1] - curves["adam"][1]) > 1e-3


class _Disconnected(ToyTask):
    """The loss network sees the prediction through ``tf.stop_gradient``: φ gets no gradient."""

    def meta_loss_inputs(self, learner, params, state, data):
        feats, state = super().meta_loss_inputs(learner, params, state, data)
        return tf.stop_gradient(feats), state


def test_eval_jit_compile_auto_uses_xla_where_its_compile_pays_back(monkeypatch):
    """``eval_jit_compile=None`` (the default): XLA on an accelerator; on a CPU only for runs that
    meta-test at least ``EVAL_XLA_MIN_EVALUATIONS`` times; a set value is kept as given."""
    import ml3tf.engine as engine_mod
    from ml3tf.config import EVAL_XLA_MIN_EVALUATIONS as N

    monkeypatch.setattr(engine_mod, "_on_accelerator", lambda: False)
    auto = MetaTrainConfig(meta_steps=500)
    assert auto.eval_jit_compile is None
    assert not engine_mod.eval_jit_compile(auto)  # the final meta-test only
    assert not engine_mod.eval_jit_compile(auto.replace(eval_every=500 // (N - 1) + 1))  # N - 1 of them
    assert engine_mod.eval_jit_compile(auto.replace(eval_every=500 // (N - 1)))  # N
    assert engine_mod.eval_jit_compile(auto.replace(eval_every=10))
    for value in (True, False):
        for every in (0, 10):
            cfg = auto.replace(eval_jit_compile=value, eval_every=every)
            assert engine_mod.eval_jit_compile(cfg) is value
    task = ToyTask()
    assert not engine_for(task, auto).jit_compile
    assert engine_for(task, auto.replace(eval_every=10)).jit_compile
    monkeypatch.setattr(engine_mod, "_on_accelerator", lambda: True)
    assert engine_mod.eval_jit_compile(auto)
    assert not engine_mod.eval_jit_compile(auto.replace(eval_jit_compile=False))
    for bad in ("yes", 1, 0):
        with pytest.raises(ValueError, match="eval_jit_compile"):
            MetaTrainConfig(eval_jit_compile=bad)


@pytest.mark.parametrize("meta_update", ["unrolled", "online"])
def test_a_loss_network_cut_from_theta_is_refused_not_trained(meta_update):
    task = _Disconnected(learner="smooth", meta_loss="network")
    trainer = MetaTrainer(task, task.default_config().replace(meta_update=meta_update))
    with pytest.raises(ValueError, match=r"'toy'.*does not depend on any weight of the loss network"):
        trainer.step(task.sample(0, 0, 1), 0)


def test_constructing_and_resetting_a_trainer_leaves_the_global_random_streams_alone():
    task = ToyTask(learner="smooth", meta_loss="network")
    np.random.seed(123)
    random.seed(7)
    want = (np.random.random(), random.random())
    np.random.seed(123)
    random.seed(7)
    trainer = MetaTrainer(task, task.default_config().replace(seed=3))
    trainer.reset(4)
    assert (np.random.random(), random.random()) == want
    # ... and φ is still the draw keras.utils.set_random_seed(seed) gives
    keras.utils.set_random_seed(4)
    reference = task.make_meta_loss()
    for got, ref in zip(trainer.meta_loss.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(got, ref)
    with seeded(4):
        again = task.make_meta_loss()
    for got, ref in zip(again.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(got, ref)


def test_meta_train_and_meta_test_seeds_never_collide_and_do_not_overflow():
    # Below 10⁶ draws the meta-train keys are the plain index (committed runs keep their numbers).
    np.testing.assert_array_equal(meta_train_seeds(5, 3, 4), [[5, 12], [5, 13], [5, 14], [5, 15]])
    np.testing.assert_array_equal(meta_train_seeds(5, 3, 4, fixed=True), meta_train_seeds(5, 0, 4))
    np.testing.assert_array_equal(meta_test_seeds(5, 2), [[5, META_TEST_OFFSET], [5, META_TEST_OFFSET + 1]])
    test_keys = set(meta_test_seeds(0, META_TEST_BLOCK)[:, 1].tolist())
    # The meta-train draws around the meta-test block (step 10⁶ with B = 1, and B = 7) skip it.
    for step, b in ((META_TEST_OFFSET - 2, 1), (META_TEST_OFFSET, 1), (142_857, 7), (10**6 // 3, 3)):
        keys = meta_train_seeds(0, step, b)[:, 1].tolist()
        assert not test_keys & set(keys), (step, b)
    keys = [meta_train_key(i) for i in range(META_TEST_OFFSET - 3, META_TEST_OFFSET + 3)]
    assert len(set(keys)) == len(keys) and not test_keys & set(keys)
    # int64: step · B beyond 2³¹ neither wraps nor fails, and draws other θ₀ than a wrapped key.
    big = meta_train_seeds(0, 2**33, 4)
    assert big.dtype == np.int64 and big[0, 1] == 2**35 + META_TEST_BLOCK
    learner = ToyTask(learner="smooth").make_learner()
    from ml3tf.functional import FunctionalModel

    f = FunctionalModel(learner)
    wrapped = np.array([0, big[0, 1] % 2**31], np.int64)
    assert not np.array_equal(f.init_params(big[0])[0].numpy(), f.init_params(wrapped)[0].numpy())
    with pytest.raises(ValueError, match="first"):
        meta_test_seeds(0, 1, first=META_TEST_BLOCK)
    with pytest.raises(ValueError, match=r"seed must be an integer < 2\*\*32"):
        MetaTrainConfig(seed=2**32)


def test_mountain_car_test_policies_use_the_common_meta_test_seeds():
    task = tasks.get("mountain_car", **SMALL["mountain_car"], n_test_policies=2)
    from ml3tf.functional import FunctionalModel

    f = FunctionalModel(task.make_learner())
    for j, want in enumerate(zip(*[f.init_params(s) for s in meta_test_seeds(3, 2)], strict=True)):
        np.testing.assert_array_equal(task.test_params(3)[j], np.stack([w.numpy() for w in want]))


def test_every_config_field_has_one_kind_and_resume_compares_the_mathematics_only():
    kinds = {k: MetaTrainConfig.fields_of(k) for k in FIELD_KINDS}
    names = [f.name for f in dataclasses.fields(MetaTrainConfig)]
    assert sorted(sum(kinds.values(), ())) == sorted(names)
    assert {"jit_compile", "steps_per_call", "unroll_loop", "tensorboard", "strategy"} <= set(
        kinds["execution"]
    )
    assert {"meta_steps", "checkpoint_every", "eval_every"} <= set(kinds["schedule"])
    base = MetaTrainConfig()
    assert base.replace(jit_compile=True, steps_per_call=3).mathematics() == base.mathematics()
    assert base.replace(inner_optimizer="adam").mathematics() != base.mathematics()
    with pytest.raises(ValueError, match="kind"):
        MetaTrainConfig.fields_of("speed")


def test_resume_refuses_other_task_options_for_every_task_by_construction(tmp_path):
    """Options are the resume identity of any Task (a toy task, too); a task without them is told so."""
    from ml3tf.run import train

    cfg = ToyTask().default_config().replace(meta_steps=2, checkpoint_every=1, eval_every=0)
    train(ToyTask(n=16), cfg, str(tmp_path), seeds=[0], evaluate=False)
    with pytest.raises(ValueError, match="other task options"):
        train(ToyTask(n=8), cfg.replace(meta_steps=3), str(tmp_path), seeds=[0], evaluate=False)

    class NoOptions(ToyTask):
        def __init__(self):
            pass

    with pytest.raises(ValueError, match="no options dataclass"):
        NoOptions().describe_options()


def test_the_task_contract_declares_every_hook_with_a_default():
    hooks = ("extra_loss", "baseline_inner_loss", "before_meta_steps", "checkpoint_state", "restore_state")
    for hook in hooks:
        assert hook in Task.__dict__, hook
    required = set(Task.__abstractmethods__)
    assert required == {
        "default_config",
        "sample",
        "make_learner",
        "make_meta_loss",
        "meta_loss_inputs",
        "task_loss",
        "evaluate",
    }
    for name in filter(_available, tasks.names()):
        assert issubclass(tasks.task_class(name), Task), name
    with pytest.raises(ValueError, match=r"must be an ml3tf\.task\.Task"):
        MetaTrainer(object(), MetaTrainConfig())


def test_one_trace_evaluates_each_loss_network_with_its_own_non_trainable_state():
    """Two loss networks of one architecture that differ only in BatchNorm statistics: the cached
    trace must not reuse the first network's statistics for the second."""

    def network(variance):
        net = keras.Sequential(
            [
                keras.Input((2,), name="features"),
                keras.layers.BatchNormalization(name="bn"),  # equal names: one architecture key
                keras.layers.Dense(1, use_bias=False, name="out"),
            ]
        )
        net.layers[0].moving_variance.assign([variance, 1.0])  # scales ∇_ŷ M
        net.layers[1].kernel.assign([[1.0], [-0.5]])
        return net

    cfg = ToyTask().default_config().replace(eval_steps=2, inner_lr=0.05)
    first, second = network(1.0), network(9.0)
    shared = ToyTask()
    shared.evaluate([first], cfg, [0])  # traces with the first network
    got = shared.evaluate([second], cfg, [0])["curves"]["train"]["learned"]["mean"]
    alone = ToyTask().evaluate([second], cfg, [0])["curves"]["train"]["learned"]["mean"]
    np.testing.assert_array_equal(got, alone)
    first_curve = ToyTask().evaluate([first], cfg, [0])["curves"]["train"]["learned"]["mean"]
    assert not np.allclose(first_curve, alone)
