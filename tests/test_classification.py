"""The classification task: data pools, splits, leakage, loaders, bad input, end to end."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import ml3tf
from ml3tf import tasks
from ml3tf.cli import main
from ml3tf.engine import engine_for
from ml3tf.meta_loss import MetaLossNetwork
from ml3tf.models.lenet import ShiftConv2D, make_lenet
from ml3tf.models.spec import LearnerSpec, build_learner, parse_learner_spec
from ml3tf.task import SupervisedTask
from ml3tf.tasks.classification import load_mnist_npz
from tests.numerics import ACT_ABS_ULPS, ACT_REL_ULPS, U32, gamma

FAST = dict(learner="mlp:16:relu", k_shot=5, query_shot=5, eval_draws=1)


@pytest.fixture(scope="module")
def binary():
    return tasks.get("classification", **FAST)


def test_sample_shapes_and_labels(binary):
    b = binary.sample(seed=0, step=0, batch_size=3)
    assert b.support["x"].shape == (3, 10, 64) and b.support["y"].shape == (3, 10, 2)
    assert b.query["x"].shape == (3, 10, 64) and b.query["y"].shape == (3, 10, 2)
    assert b.support["x"].dtype == np.float32 and 0.0 <= b.support["x"].min() and b.support["x"].max() <= 1.0
    np.testing.assert_array_equal(b.support["y"].sum(axis=(1,)), np.full((3, 2), 5.0))  # k_shot per class
    np.testing.assert_array_equal(b.extra["classes"], [[4, 9]] * 3)
    assert binary.make_meta_loss().input_dim == 4  # (p0, p1, onehot0, onehot1)
    ten = tasks.get("classification", mode="multiclass", **FAST)
    bt = ten.sample(0, 0, 1)
    assert bt.support["y"].shape == (1, 50, 10) and ten.make_meta_loss().input_dim == 20
    assert ten.held_out_classes == () and ten.make_learner().output_shape == (None, 10)


def test_no_test_images_or_classes_leak_into_meta_training(binary):
    pools = set(binary.train_pool), set(binary.test_pool)
    assert not pools[0] & pools[1] and len(pools[0]) + len(pools[1]) == len(binary.y)
    assert set(binary.held_out_classes) == set(range(10)) - {4, 9}
    for step in range(20):
        batch = binary.sample(0, step, 2)
        for b, (s_idx, q_idx) in enumerate(binary.sample_indices(0, step, 2)):
            assert set(s_idx) <= pools[0] and set(q_idx) <= pools[0]
            assert not set(s_idx) & set(q_idx)
            assert set(binary.y[s_idx]) | set(binary.y[q_idx]) <= {4, 9}
            np.testing.assert_array_equal(batch.support["x"][b], binary.x[s_idx])
            np.testing.assert_array_equal(batch.query["x"][b], binary.x[q_idx])
    for split in ("train", "test"):
        for classes, s_idx, q_idx in binary.eval_tasks(0, split):
            assert set(s_idx) <= pools[1] and set(q_idx) <= pools[1] and not set(s_idx) & set(q_idx)
            if split == "test":
                assert not set(classes) & {4, 9}
    splits = binary.eval_splits(0)
    assert splits["test"][0].shape == (28, 10, 64) and splits["test"][2].shape == (28, 10, 64)
    # no meta-test image appears among the meta-train images (pixel-level check)
    train_rows = {r.tobytes() for r in binary.x[binary.train_pool]}
    test_only = [r for r in binary.x[binary.test_pool] if r.tobytes() not in train_rows]
    seen = {r.tobytes() for s in range(10) for r in binary.sample(1, s, 1).support["x"][0]}
    assert not seen & {r.tobytes() for r in test_only}


def test_determinism_by_seed(binary):
    a, b, c = binary.sample(3, 7, 2), binary.sample(3, 7, 2), binary.sample(4, 7, 2)
    np.testing.assert_array_equal(a.support["x"], b.support["x"])
    assert not np.array_equal(a.support["x"], c.support["x"])
    e0, e1 = binary.eval_splits(5), binary.eval_splits(5)
    for x, y in zip(e0["test"], e1["test"], strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize(
    "options, name",
    [
        (dict(train_pair=(3, 3)), "train_pair"),
        (dict(train_pair=(0, 12)), "train_pair"),
        (dict(test_pairs=("0-11",)), "test_pairs"),
        (dict(test_pairs=("4-5",)), "test_pairs"),  # 4 is a meta-train class
        (dict(k_shot=500), "k_shot"),
        (dict(learner="cnn:3"), "learner"),
        (dict(learner="mlp:0-4"), "mlp:0-4"),
        (dict(mode="ternary"), "mode"),
        (dict(dataset="mnist"), "mnist_path"),
    ],
)
def test_bad_input_names_the_argument(options, name):
    with pytest.raises(ValueError, match=name):
        tasks.get("classification", **options)


def _write_fake_mnist(path, side=8, classes=4, per_class=(30, 12), seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for part, n in zip(("train", "test"), per_class, strict=True):
        y = np.repeat(np.arange(classes), n).astype(np.uint8)
        arrays[f"x_{part}"] = rng.integers(0, 256, size=(len(y), side, side), dtype=np.uint8)
        arrays[f"y_{part}"] = y
    np.savez(path, **arrays)
    return arrays


def test_mnist_loader_on_a_generated_file(tmp_path):
    path = str(tmp_path / "mnist.npz")
    raw = _write_fake_mnist(path)
    d = load_mnist_npz(path)
    assert d["x_train"].shape == (120, 64) and d["x_test"].shape == (48, 64)
    np.testing.assert_allclose(d["x_test"][5], raw["x_test"][5].reshape(-1) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(d["y_train"], raw["y_train"])
    task = tasks.get(
        "classification",
        dataset="mnist",
        mnist_path=path,
        train_pair=(0, 1),
        k_shot=4,
        query_shot=4,
        learner="lenet",
    )
    assert task.test_classes == [(2, 3)]
    assert set(task.train_pool) == set(range(120)) and set(task.test_pool) == set(range(120, 168))
    b = task.sample(0, 0, 1)
    assert b.support["x"].shape == (1, 8, 64)
    np.testing.assert_allclose(task.make_learner()(b.support["x"][0]).shape, (8, 2))
    with pytest.raises(ValueError, match="k_shot"):
        tasks.get("classification", dataset="mnist", mnist_path=path, train_pair=(0, 1), k_shot=10)
    bad = str(tmp_path / "bad.npz")
    np.savez(bad, x_train=raw["x_train"], y_train=raw["y_train"])
    with pytest.raises(ValueError, match=r"mnist_path.*lacks"):
        load_mnist_npz(bad)
    with pytest.raises(ValueError, match=r"mnist_path.*does not exist"):
        load_mnist_npz(str(tmp_path / "missing.npz"))


def test_shift_conv_equals_conv2d():
    x = np.random.default_rng(0).random((2, 8, 8, 3)).astype("float32")
    ours = ShiftConv2D(5, activation="tanh")
    ours.build(x.shape)
    ref = keras.layers.Conv2D(5, 3, padding="same", activation="tanh")
    ref.build(x.shape)
    ours.kernel.assign(np.random.default_rng(1).normal(size=(3, 3, 3, 5)).astype("float32"))
    ours.bias.assign(np.arange(5, dtype="float32") / 10)
    ref.kernel.assign(ours.kernel)
    ref.bias.assign(ours.bias)
    # One (·, 27) @ (27, 5) matmul against Conv2D's own algorithm (oneDNN or Eigen, direct or
    # im2col, by machine): each output is a 27-term dot product plus the bias, so each side is
    # within γ_28·Σ|w x| of the exact sum, and tanh (1-Lipschitz) adds its own few ulps. Σ|w x|
    # is at most 15.7 here: atol ≈ 5.4e-5 (measured: bit-identical). A wrong shift or kernel
    # order moves outputs by O(0.1).
    padded = np.pad(x.astype(np.float64), [[0, 0], [1, 1], [1, 1], [0, 0]])
    kernel = np.abs(ours.kernel.numpy().astype(np.float64))
    terms = sum(np.abs(padded[:, a : a + 8, b : b + 8, :]) @ kernel[a, b] for a in range(3) for b in range(3))
    atol = 2 * (gamma(28) * terms.max() + (ACT_REL_ULPS + ACT_ABS_ULPS) * U32)
    np.testing.assert_allclose(ours(x), ref(x), rtol=0, atol=atol)
    assert make_lenet(64, 2).output_shape == (None, 2)
    with pytest.raises(ValueError, match="input_dim"):
        make_lenet(63, 2)


def test_learner_spec():
    assert parse_learner_spec("mlp:64-64:tanh") == LearnerSpec("mlp", (64, 64), "tanh")
    assert parse_learner_spec("lenet") == LearnerSpec("lenet", (), "relu")
    assert str(parse_learner_spec("mlp:8")) == "mlp:8:relu" and parse_learner_spec("mlp:8-8-8-8").layers == 5
    net = build_learner("mlp:7-5:elu", 64, 3)
    assert [tuple(v.shape) for v in net.trainable_variables][::2] == [(64, 7), (7, 5), (5, 3)]
    for bad in ("", "mlp", "mlp:a-b", "mlp:4:nope", "resnet:3", "lenet:relu:x"):
        with pytest.raises(ValueError, match="learner"):
            parse_learner_spec(bad)


def test_meta_loss_hidden_bias_output_bias_free_roundtrip(tmp_path):
    net = MetaLossNetwork(4, (40, 40), use_bias=True, output_use_bias=False)
    assert [tuple(v.shape) for v in net.trainable_variables] == [(4, 40), (40,), (40, 40), (40,), (40, 1)]
    path = str(tmp_path / "m.keras")
    net.save(path)
    back = ml3tf.load_meta_loss(path)
    x = np.random.default_rng(0).random((5, 4)).astype("float32")
    np.testing.assert_allclose(back(x), net(x), rtol=1e-6)
    assert len(MetaLossNetwork(2, (3,), use_bias=True).trainable_variables) == 4  # default follows use_bias


def test_evaluator_reports_eval_metric_on_held_out_query():
    """Core hook: curves record ``eval_metric`` (accuracy) on the query set, not ``metric`` on support."""
    binary = tasks.get("classification", **{**FAST, "learner": "mlp:8:tanh"}, test_pairs=("0-1", "2-3"))
    cfg = binary.default_config().replace(inner_lr=0.5, eval_steps=1, eval_jit_compile=False)
    splits = binary.eval_splits(0)
    res = SupervisedTask.evaluate(binary, [binary.make_meta_loss()], cfg, [0])
    assert res["metric"] == "accuracy"
    xs, ys, xq, yq = (tf.convert_to_tensor(a) for a in splits["train"])
    engine = engine_for(binary, cfg)
    theta0 = [p[: len(xs)] for p in engine.initial_params(0, len(xs) + len(splits["test"][0]))]
    f = engine.learner
    by_hand, margins = [], []
    for t in range(len(xs)):
        p = [v[t] for v in theta0]
        acc0 = binary.eval_metric(f(p, xq[t]), yq[t])
        with tf.GradientTape() as tape:
            tape.watch(p)
            ce = binary.prediction_loss(f(p, xs[t]), ys[t])
        p1 = [v - 0.5 * g for v, g in zip(p, tape.gradient(ce, p), strict=True)]
        by_hand.append((float(acc0), float(binary.eval_metric(f(p1, xq[t]), yq[t]))))
        for q in (p, p1):
            logits = f(q, xq[t]).numpy()
            margins.append(np.abs(logits[:, 0] - logits[:, 1]).min())
    # Accuracy is discrete: the evaluator (vectorized_map over the tasks, tf.function) and this
    # eager loop compute the logits in other op orders, which could flip a prediction whose two
    # logits are that close. For this 64-8-2 net in float32 they differ by ~1e-7 (worst case
    # γ_65·Σ|w x| through both layers, ~1e-4, and as much again through θ₁); no margin is below
    # 1e-3 (here ≥ 1e-2), so both count the same hits on any machine and the means (k/10)
    # agree to float32 rounding, ≤ 4u. One miscounted query point is off by 0.1.
    assert min(margins) > 1e-3, min(margins)
    np.testing.assert_allclose(
        res["curves"]["train"]["baseline"]["mean"], np.mean(by_hand, axis=0), atol=1e-6
    )
    ce = SupervisedTask.evaluate(
        binary,
        [binary.make_meta_loss()],
        cfg,
        [0],
        metric=binary.prediction_loss,
        metric_name="cross_entropy",
    )
    assert ce["metric"] == "cross_entropy" and ce["curves"]["train"]["baseline"]["mean"][0] > 0.1


def test_tiny_end_to_end_train_and_eval_with_other_learner(tmp_path, capsys):
    out = str(tmp_path / "run")
    args = ["--learner", "mlp:16:relu", "--k-shot", "5", "--query-shot", "5", "--eval-draws", "1"]
    quick = [
        "--meta-steps",
        "3",
        "--eval-steps",
        "2",
        "--test-pairs",
        "0-1",
        "2-3",
        "--no-eval-jit-compile",
        "--quiet",
    ]
    assert main(["train", "classification", "--out-dir", out, "--seeds", "0", "1", *args, *quick]) == 0
    with open(os.path.join(out, "results.json")) as f:
        res = json.load(f)
    assert res["metric"] == "accuracy" and res["higher_is_better"] is True
    assert res["baseline"] == "cross_entropy" and res["loss"]["metric"] == "cross_entropy"
    for split in ("train", "test"):
        assert (
            0.0 <= res["final"][split]["learned"] <= 1.0 and len(res["curves"][split]["learned"]["mean"]) == 3
        )
        assert res["loss"]["final"][split]["baseline"] > 0
    assert os.path.exists(os.path.join(out, "results.png"))
    capsys.readouterr()
    ev = str(tmp_path / "ev")
    loss = os.path.join(out, "seed_0", "meta_loss.keras")
    code = main(
        [
            "eval",
            "classification",
            "--meta-loss",
            loss,
            "--out-dir",
            ev,
            "--seeds",
            "0",
            "--learner",
            "mlp:8-8:tanh",
            "--quiet",
        ]
    )
    assert code == 0
    with open(os.path.join(ev, "results.json")) as f:
        res2 = json.load(f)
    assert res2["config"]["eval_steps"] == 2 and res2["seeds"] == [0]
    assert main(["eval", "classification", "--meta-loss", loss, "--out-dir", ev, "--learner", "bad"]) == 2
    assert "learner" in capsys.readouterr().err
