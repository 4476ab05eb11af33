"""A task from the user's own arrays and Keras model (``SupervisedTask.from_arrays``)."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import ml3tf
from ml3tf import MetaTrainer, SupervisedTask
from ml3tf.functional import FunctionalModel
from ml3tf.losses import LearnedLoss, default_meta_loss, prediction_loss
from ml3tf.meta_loss import MetaLossNetwork
from ml3tf.tasks.user_data import UserDataTask


def _rows(n=120, f=4, seed=0):
    """Features whose last column is the row's id, so a drawn row tells where it came from."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, f)).astype(np.float32)
    x[:, -1] = np.arange(n)
    y = (x[:, :1] * 2.0 + 3.0).astype(np.float32)
    return x, y


def _mlp(inputs=4, outputs=1, **kw):
    return keras.Sequential(
        [keras.Input((inputs,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(outputs, **kw)]
    )


def _ids(a):
    return set(a[..., -1].reshape(-1).astype(int).tolist())


def test_support_and_query_never_share_rows_with_a_split():
    x, y = _rows()
    task = SupervisedTask.from_arrays(x, y, learner=_mlp(), batch_size=16, query_size=10)
    train_ids = _ids(task.train_sets[0][0])
    val_ids = _ids(task.val_sets[0][0])
    assert not train_ids & val_ids and len(train_ids | val_ids) == len(x)
    assert len(val_ids) == round(0.2 * len(x))
    for step in range(5):
        batch = task.sample(seed=3, step=step, batch_size=3)
        assert batch.support["x"].shape == (3, 16, 4) and batch.query["x"].shape == (3, 10, 4)
        assert _ids(batch.support["x"]) <= train_ids
        assert _ids(batch.query["x"]) <= val_ids
    xs, _, xv, _ = task.eval_splits(0)["train"]
    assert _ids(xs) <= train_ids and _ids(xv) == val_ids


def test_validation_data_is_the_query_split():
    x, y = _rows(100)
    xv, yv = _rows(30, seed=1)
    xv[:, -1] += 1000  # ids 1000…
    task = SupervisedTask.from_arrays(x, y, learner=_mlp(), validation_data=(xv, yv), batch_size=8)
    assert _ids(task.train_sets[0][0]) == set(range(100))
    assert _ids(task.sample(0, 0, 2).query["x"]) <= set(range(1000, 1030))


def test_sampling_is_deterministic_in_seed_and_step_only():
    x, y = _rows()
    a = SupervisedTask.from_arrays(x, y, learner=_mlp())
    np.random.seed(1)
    keras.utils.set_random_seed(5)
    b = SupervisedTask.from_arrays(x, y, learner=_mlp())
    one, two = a.sample(7, 4, 2), b.sample(7, 4, 2)
    np.testing.assert_array_equal(one.support["x"], two.support["x"])
    np.testing.assert_array_equal(one.query["y"], two.query["y"])
    assert not np.array_equal(one.support["x"], a.sample(7, 5, 2).support["x"])
    assert not np.array_equal(one.support["x"], a.sample(8, 4, 2).support["x"])


def test_the_data_is_part_of_the_run_identity(tmp_path):
    x, y = _rows(60)
    task = SupervisedTask.from_arrays(x, y, learner=_mlp(), batch_size=8, eval_tasks=1, eval_rows=8)
    other_y = y.copy()
    other_y[5] += 1.0
    other = SupervisedTask.from_arrays(x, other_y, learner=_mlp(), batch_size=8, eval_tasks=1, eval_rows=8)
    assert task.describe_options()["data"] != other.describe_options()["data"]
    json.dumps(task.describe_options())  # JSON-able: it goes into config.json
    cfg = task.default_config().replace(meta_steps=2, eval_steps=2, meta_batch_size=1, inner_steps=1)
    ml3tf.train(task, cfg, str(tmp_path / "run"), evaluate=False)
    with pytest.raises(ValueError, match="other task options"):
        ml3tf.train(other, cfg.replace(meta_steps=4), str(tmp_path / "run"), evaluate=False)


def test_the_learner_is_cloned_and_reinitialised():
    model = _mlp()
    before = [w.copy() for w in model.get_weights()]
    task = SupervisedTask.from_arrays(*_rows(), learner=model)
    fresh = task.make_learner()
    assert fresh is not model
    assert not np.allclose(fresh.get_weights()[0], before[0])
    for w, b in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(w, b)
    built = task.make_learner()  # a function works too
    task2 = SupervisedTask.from_arrays(*_rows(), learner=lambda: _mlp())
    assert len(task2.make_learner().weights) == len(built.weights)


def test_batchnorm_scales_start_at_one_in_fresh_draws():
    """Vector parameters take the constant their fresh variable holds: BatchNorm's γ is 1, not 0
    (before, every vector parameter was zeroed, which switched the normalised units off)."""
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(6), keras.layers.BatchNormalization(), keras.layers.Dense(1)]
    )
    f = FunctionalModel(model)
    names = [v.path for v in model.trainable_variables]
    params = f.init_params([0, 1])
    gamma = params[names.index(next(n for n in names if n.endswith("gamma")))]
    beta = params[names.index(next(n for n in names if n.endswith("beta")))]
    np.testing.assert_array_equal(gamma.numpy(), np.ones(6, np.float32))
    np.testing.assert_array_equal(beta.numpy(), np.zeros(6, np.float32))
    assert np.ptp(params[0].numpy()) > 0  # kernels are still drawn


def _conv_model():
    return keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dropout(0.2),
            keras.layers.Flatten(),
            keras.layers.Dense(3),
        ]
    )


def test_conv_batchnorm_dropout_learner_meta_trains_and_evaluates():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 6, 6, 1)).astype(np.float32)
    y = rng.integers(3, size=60)
    task = SupervisedTask.from_arrays(
        x,
        y,
        learner=_conv_model(),
        kind="classification",
        batch_size=8,
        query_size=8,
        eval_tasks=2,
        eval_rows=8,
    )
    assert task.options.num_classes == 3 and task.options.from_logits
    cfg = task.default_config().replace(meta_steps=2, inner_steps=2, meta_batch_size=1, eval_steps=3)
    assert not cfg.eval_jit_compile  # a conv learner's XLA meta-test compiles for long on CPU
    trainer = MetaTrainer(task, cfg)
    before = [w.numpy().copy() for w in trainer.meta_loss.weights]
    infos = trainer.run_steps(0, 2)
    assert all(np.isfinite(i.objective) for i in infos)
    assert any(not np.allclose(b, w.numpy()) for b, w in zip(before, trainer.meta_loss.weights, strict=True))
    res = task.evaluate([trainer.meta_loss], cfg, [0])
    assert 0.0 <= res["final"]["train"]["learned"] <= 1.0 and res["metric"] == "accuracy"


def test_meta_test_is_the_same_whatever_the_global_random_state():
    """A Dropout learner's meta-test was seeded by the global Keras RNG when the engine built its
    learner: two tasks over the same data gave different baseline curves."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    y = x[:, :1].copy()

    def model():
        return keras.Sequential(
            [keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dropout(0.5), keras.layers.Dense(1)]
        )

    results = []
    for global_seed in (1, 2):
        keras.utils.set_random_seed(global_seed)
        task = SupervisedTask.from_arrays(x, y, learner=model(), batch_size=8, eval_tasks=2, eval_rows=16)
        cfg = task.default_config().replace(eval_steps=5, eval_jit_compile=False)
        results.append(task.evaluate([task.make_meta_loss()], cfg, [0])["final"]["train"]["baseline"])
    assert results[0] == results[1]


class _Unused(keras.layers.Layer):
    def build(self, shape):
        self.w = self.add_weight(shape=(2,), name="unused")

    def call(self, x):
        return x


def test_a_layer_ml3tf_cannot_train_is_named():
    model = keras.Sequential([keras.Input((4,)), _Unused(name="odd"), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match=r"weight .*unused.* of layer 'odd' \(_Unused\) gets no gradient"):
        SupervisedTask.from_arrays(*_rows(), learner=model)
    rnn = keras.Sequential(
        [
            keras.Input((3, 4), batch_size=2),
            keras.layers.SimpleRNN(4, stateful=True, name="rnn"),
            keras.layers.Dense(1),
        ]
    )
    with pytest.raises(ValueError, match=r"layer 'rnn' .*stateful"):
        SupervisedTask.from_arrays(np.zeros((40, 3, 4), "float32"), np.zeros((40, 1), "float32"), learner=rnn)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda x, y: (np.where(np.arange(len(x))[:, None] == 3, np.nan, x), y), r"x holds NaN .*row 3"),
        (lambda x, y: (x, y[:-1]), "y has 119 rows, x has 120"),
        (lambda x, y: (x.astype(str), y), "x must be numeric"),
        (lambda x, y: (x[:3], y[:3]), "too few for validation_split"),
    ],
)
def test_bad_arrays_get_clear_errors(change, match):
    x, y = change(*_rows())
    with pytest.raises(ValueError, match=match):
        SupervisedTask.from_arrays(x, y, learner=_mlp())


def test_bad_labels_and_options_get_clear_errors():
    x, _ = _rows()
    three = _mlp(outputs=3)
    with pytest.raises(ValueError, match=r"labels in \[0, 3\).*got labels \[0, 1, 2, 3\]"):
        SupervisedTask.from_arrays(x, np.arange(120) % 4, learner=three, kind="classification")
    with pytest.raises(ValueError, match="integer class labels"):
        SupervisedTask.from_arrays(x, np.linspace(0, 1, 120), learner=three, kind="classification")
    with pytest.raises(ValueError, match="target values per row, the learner outputs 3"):
        SupervisedTask.from_arrays(x, np.zeros((120, 1)), learner=three, kind="regression")
    with pytest.raises(ValueError, match="batch_size=500 exceeds"):
        SupervisedTask.from_arrays(x, np.zeros((120, 1)), learner=_mlp(), batch_size=500)
    with pytest.raises(ValueError, match="kind must be one of"):
        SupervisedTask.from_arrays(x, np.zeros((120, 1)), learner=_mlp(), kind="ranking")
    with pytest.raises(ValueError, match=r"learner must be a keras\.Model or a function"):
        SupervisedTask.from_arrays(x, np.zeros((120, 1)), learner="mlp")


def test_from_dataset_equals_from_arrays_batched_or_not():
    x, y = _rows()
    ref = SupervisedTask.from_arrays(x, y, learner=_mlp()).describe_options()["data"]
    for ds in (
        tf.data.Dataset.from_tensor_slices((x, y)),
        tf.data.Dataset.from_tensor_slices((x, y)).batch(32),
    ):
        assert SupervisedTask.from_dataset(ds, learner=_mlp()).describe_options()["data"] == ref
    with pytest.raises(ValueError, match="infinite"):
        SupervisedTask.from_dataset(tf.data.Dataset.from_tensor_slices((x, y)).repeat(), learner=_mlp())


def test_several_data_sets_make_a_task_distribution():
    (x1, y1), (x2, y2) = _rows(60), _rows(80, seed=1)
    x2[:, -1] += 1000
    task = SupervisedTask.from_arrays([x1, x2], [y1, y2], learner=_mlp(), batch_size=8)
    seen = set()
    for step in range(6):
        for d, s_idx, _ in task.sample_indices(0, step, 4):
            seen.add(d)
            ids = _ids(task.train_sets[d][0][s_idx])
            assert ids <= (set(range(60)) if d == 0 else set(range(1000, 1080)))
    assert seen == {0, 1}
    with pytest.raises(ValueError, match="one shape"):
        SupervisedTask.from_arrays([x1, x2[:, :3]], [y1, y2], learner=_mlp())


def test_what_the_loss_sees_is_what_learned_loss_feeds_it():
    """The task's features and task loss are those of ``LearnedLoss`` and Keras' losses."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 4)).astype(np.float32)
    labels = rng.integers(3, size=50)
    task = SupervisedTask.from_arrays(x, labels, learner=_mlp(outputs=3), kind="classification")
    logits = tf.constant(rng.normal(size=(7, 3)).astype(np.float32))
    onehot = tf.one_hot(labels[:7], 3)
    loss = LearnedLoss(task.make_meta_loss(), kind="classification", from_logits=True)
    np.testing.assert_allclose(task.loss_features(logits, onehot), loss.features(labels[:7], logits)[0])
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels[:7], logits)
    np.testing.assert_allclose(task.prediction_loss(logits, onehot), ce, rtol=1e-6)
    column = tf.constant(rng.normal(size=(7, 1)).astype(np.float32))  # one sigmoid logit
    bce = keras.losses.BinaryCrossentropy(from_logits=True)(labels[:7, None] % 2, column)
    got = prediction_loss("classification", True, column, tf.one_hot(labels[:7] % 2, 2))
    np.testing.assert_allclose(got, bce, rtol=1e-5)
    binary = SupervisedTask.from_arrays(
        x, labels % 2, learner=_mlp(outputs=1, activation="sigmoid"), kind="classification"
    )
    assert binary.options.num_classes == 2 and not binary.options.from_logits


def test_regression_loss_network_reads_targets_in_their_units():
    x, y = _rows()
    y = y * 100.0 + 50.0
    task = UserDataTask(x, y, learner=_mlp())
    o = task.options
    train_y = task.train_sets[0][1]
    assert o.target_mean == pytest.approx(float(train_y.mean()), rel=1e-6)
    net = task.make_meta_loss()
    plain = MetaLossNetwork(2, o.meta_loss_hidden, "relu", use_bias=True, output_activation="softplus")
    plain.set_weights(net.get_weights())
    feats = np.array([[10.0, 40.0], [300.0, 200.0]], np.float32)
    expected = o.target_std**2 * plain((feats - o.target_mean) / o.target_std).numpy()
    np.testing.assert_allclose(net(feats).numpy(), expected, rtol=1e-5)
    back = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(net))
    back.set_weights(net.get_weights())
    np.testing.assert_allclose(back(feats).numpy(), net(feats).numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="input_scale must hold 2 finite numbers"):
        default_meta_loss("regression", 0, (4,), 0.0, 1.0).__class__(2, (4,), input_scale=(1.0,))


def test_the_learner_identity_ignores_the_names_keras_counts_up():
    x, y = _rows()
    one = SupervisedTask.from_arrays(x, y, learner=_mlp()).describe_options()["learner"]
    assert SupervisedTask.from_arrays(x, y, learner=_mlp()).describe_options()["learner"] == one
    assert (
        SupervisedTask.from_arrays(x, y, learner=_mlp(activation="relu")).describe_options()["learner"] != one
    )


def test_baseline_init_fits_once_per_draw_and_approximates_cross_entropy(monkeypatch):
    from ml3tf.seeds import seeded
    from ml3tf.tasks import user_data

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    labels = rng.integers(3, size=60)
    task = SupervisedTask.from_arrays(
        x, labels, learner=_mlp(outputs=3), kind="classification", meta_loss_init="baseline"
    )
    calls = []
    real = user_data.fit_to_baseline
    monkeypatch.setattr(user_data, "fit_to_baseline", lambda *a, **k: calls.append(1) or real(*a, **k))
    with seeded(3):
        first = task.make_meta_loss()
    with seeded(3):
        again = task.make_meta_loss()  # what MetaTrainer.reset asks for: no second fit
    assert len(calls) == 1
    for a, b in zip(first.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    logits = tf.constant(rng.normal(size=(64, 3)).astype(np.float32))
    onehot = tf.one_hot(rng.integers(3, size=64), 3)
    ce = task.prediction_loss(logits, onehot)
    learned = tf.reduce_mean(first(task.loss_features(logits, onehot)))
    assert float(learned) == pytest.approx(float(ce), rel=0.2)
