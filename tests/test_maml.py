"""MAML and ML3+MAML: meta-gradients (finite differences, first-order form), runs, evaluation, CLI."""

import json

import numpy as np
import pytest
import tensorflow as tf

import ml3tf
from ml3tf import tasks
from ml3tf.cli import main
from ml3tf.meta_trainer import MetaTrainConfig, MetaTrainer
from ml3tf.run import train_one
from tests.toy import ToyTask, directional_check

FEW_SHOT = dict(mode="family", support_points=5, query_points=7, n_test_tasks=3, learner_hidden=(8, 8))


@pytest.mark.parametrize("method", ["maml", "ml3+maml"])
@pytest.mark.parametrize("steps", [2, 3])
def test_maml_meta_gradient_matches_finite_differences(float64, method, steps):
    task = ToyTask(learner="smooth", meta_loss="network", split=True)
    cfg = MetaTrainConfig(inner_steps=steps, inner_lr=0.3, meta_batch_size=2, method=method)
    trainer = MetaTrainer(task, cfg)
    n_phi = len(trainer.meta_loss.trainable_variables) if method == "ml3+maml" else 0
    assert len(trainer.meta_variables) == n_phi + len(trainer.learner.model.trainable_variables)
    assert directional_check(trainer, task.sample(0, 0, 2), trainer.init_seeds(0)) < 1e-5


def test_first_order_maml_is_the_query_gradient_at_the_adapted_params(float64):
    """First-order MAML (SGD inner steps): ∇_{θ_0} ≈ ∇_{θ_K} L_query(θ_K), exactly that."""
    task = ToyTask(learner="smooth", meta_loss="network", split=True)
    cfg = MetaTrainConfig(inner_steps=3, inner_lr=0.3, method="maml", first_order=True)
    trainer = MetaTrainer(task, cfg)
    batch = task.sample(0, 0, 1)
    grads, _ = trainer.meta_gradient(batch, trainer.init_seeds(0))
    one = batch.task(0)
    res = trainer.adapt(trainer.learner.params(), one.support)
    theta_k = [tf.convert_to_tensor(p) for p in res.params]
    with tf.GradientTape() as tape:
        tape.watch(theta_k)
        loss = task.task_loss(trainer.learner, theta_k, res.state, one.query)
    expected = tape.gradient(loss, theta_k)
    for g, e in zip(grads, expected, strict=True):
        np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-10, atol=1e-14)
    # ... and differs from the exact second-order gradient (so the option does something)
    exact, _ = MetaTrainer(task, cfg.replace(first_order=False)).meta_gradient(batch, trainer.init_seeds(0))
    assert max(float(np.abs(a.numpy() - b.numpy()).max()) for a, b in zip(exact, grads, strict=True)) > 1e-6


def test_ml3_plus_maml_gradients_reach_theta0_and_phi():
    task = tasks.get("sine", **FEW_SHOT)
    cfg = task.default_config().replace(method="ml3+maml", inner_lr=0.01, meta_batch_size=2, inner_steps=2)
    trainer = MetaTrainer(task, cfg)
    grads, _ = trainer.meta_gradient(task.sample(0, 0, 2), trainer.init_seeds(0))
    variables = trainer.meta_variables
    n_phi = len(trainer.meta_loss.trainable_variables)
    assert len(grads) == len(variables) == n_phi + len(trainer.learner.model.trainable_variables)
    for g, v in zip(grads, variables, strict=True):
        assert np.any(g.numpy() != 0), f"{v.path} got no gradient"
    # one compiled step moves both θ₀ and φ
    before = [v.numpy().copy() for v in variables]
    trainer.step(task.sample(0, 0, 2), 0)
    moved = [np.abs(v.numpy() - b).max() > 0 for v, b in zip(variables, before, strict=True)]
    assert any(moved[:n_phi]) and any(moved[n_phi:])


@pytest.mark.parametrize("method", ["ml3", "ml3+maml"])
def test_first_order_is_rejected_where_it_would_starve_phi(method):
    with pytest.raises(ValueError, match="first_order"):
        MetaTrainConfig(method=method, first_order=True)


@pytest.mark.parametrize("changes, name", [({"method": "reptile"}, "method"), ({"init_lr": 0.0}, "init_lr")])
def test_config_rejects_bad_maml_values(changes, name):
    with pytest.raises(ValueError, match=name):
        MetaTrainConfig(**changes)


def test_reset_trainer_equals_fresh_trainer_for_maml():
    task = tasks.get("sine", **FEW_SHOT)
    cfg = task.default_config().replace(method="maml", inner_lr=0.01, meta_batch_size=2)
    reused = MetaTrainer(task, cfg.replace(seed=3))
    reused.run_steps(0, 3)
    reused.reset(1)
    fresh = MetaTrainer(task, cfg.replace(seed=1))
    assert reused.run_steps(0, 3) == fresh.run_steps(0, 3)
    for a, b in zip(reused.learner.model.weights, fresh.learner.model.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("method", ["maml", "ml3+maml", "ml3"])
def test_tiny_end_to_end_per_method(tmp_path, method):
    task = tasks.get("sine", **FEW_SHOT)
    cfg = task.default_config().replace(method=method, inner_lr=0.01, meta_batch_size=2, meta_steps=3)
    cfg = cfg.replace(eval_steps=3, checkpoint_every=2, eval_jit_compile=False, eval_every=2)
    run = ml3tf.train(task, cfg, str(tmp_path / "r"))
    assert bool(run.learner_paths) == (method != "ml3")
    assert bool(run.meta_loss_paths) == (method != "maml")
    for path in run.learner_paths + run.meta_loss_paths:
        assert (tmp_path / "r" / path.rsplit("/", 1)[1]).exists()
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    evals = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in evals if "eval" in r] == [1]  # eval_every=2: after 2 meta-steps
    for split in ("train", "test"):
        assert len(res["curves"][split]["learned"]["mean"]) == 4
        assert np.isfinite(res["final"][split]["learned"])
    if method != "ml3":  # the saved learner is the meta-learned θ₀, not the initial one
        saved = ml3tf.run.load_learner(run.learner_paths[0])
        init = MetaTrainer(task, cfg).learner.model
        assert any(
            np.abs(a.numpy() - b.numpy()).max() > 0 for a, b in zip(saved.weights, init.weights, strict=True)
        )


class _Interrupt(Exception):
    pass


def test_maml_resume_restores_theta0_and_its_optimizer(tmp_path):
    task = tasks.get("sine", **FEW_SHOT)
    cfg = task.default_config().replace(
        method="ml3+maml", inner_lr=0.01, meta_batch_size=2, meta_steps=5, checkpoint_every=2
    )
    train_one(task, cfg, str(tmp_path / "ref"))

    def stop(seed, step, info):
        if step == 3:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train_one(task, cfg, str(tmp_path / "cut"), on_step=stop)
    train_one(task, cfg, str(tmp_path / "cut"))
    for name in ("learner.keras", "meta_loss.keras"):
        ref = ml3tf.run.load_learner(str(tmp_path / "ref" / name))
        cut = ml3tf.run.load_learner(str(tmp_path / "cut" / name))
        for a, b in zip(ref.weights, cut.weights, strict=True):
            np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_evaluation_from_a_learned_init_on_support_query_splits():
    """Curve point 0 = query MSE at θ₀; point 1 = query MSE after one SGD step on the support set."""
    task = tasks.get("sine", **FEW_SHOT)
    lr = 0.05
    cfg = task.default_config().replace(inner_lr=lr, eval_steps=2, eval_jit_compile=False)
    learner = task.make_learner()
    theta0 = [v.numpy() for v in learner.trainable_variables]
    res = task.evaluate([], cfg, [0], initial_params=[theta0])
    f = ml3tf.FunctionalModel(learner)
    for split, (xs, ys, xq, yq) in task.eval_splits(0).items():
        at0, at1 = [], []
        for t in range(len(xs)):
            p = [tf.constant(a) for a in theta0]
            at0.append(float(tf.reduce_mean((f(p, xq[t]) - yq[t]) ** 2)))
            with tf.GradientTape() as tape:
                tape.watch(p)
                loss = tf.reduce_mean((f(p, xs[t]) - ys[t]) ** 2)
            p = [a - lr * g for a, g in zip(p, tape.gradient(loss, p), strict=True)]
            at1.append(float(tf.reduce_mean((f(p, xq[t]) - yq[t]) ** 2)))
        curve = res["curves"][split]["learned"]["mean"]
        # float32: the evaluator's vectorized_map over the tasks and tf.function against this
        # eager loop: means of ≤ 7 squared errors and one SGD step, ~1e-7 relative apart (measured
        # 8e-8); a missed step changes the second point by ≫ 1e-4
        np.testing.assert_allclose(curve[:2], [np.mean(at0), np.mean(at1)], rtol=1e-4)
    with pytest.raises(ValueError, match="initial_params shapes"):
        task.evaluate([], cfg, [0], initial_params=[theta0[:2]])


def test_cli_train_method_maml_and_first_order_rejected_for_ml3(tmp_path, capsys):
    out = str(tmp_path / "m")
    flags = ["--meta-steps", "2", "--eval-steps", "2", "--n-test-tasks", "2", "--mode", "family"]
    flags += ["--no-eval-jit-compile"]
    flags += ["--support-points", "5", "--learner-hidden", "8", "--inner-lr", "0.01"]
    assert main(["train", "sine", "--out-dir", out, "--method", "maml", "--first-order", *flags]) == 0
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())["config"]
    assert cfg["method"] == "maml" and cfg["first_order"] is True
    assert (tmp_path / "m" / "learner.keras").exists() and not (tmp_path / "m" / "meta_loss.keras").exists()
    capsys.readouterr()
    ev = str(tmp_path / "ev")
    learner = str(tmp_path / "m" / "learner.keras")
    assert main(["eval", "sine", "--init-file", learner, "--out-dir", ev, "--seeds", "0", "--quiet"]) == 0
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert final == res["final"] and res["learner_files"] == [learner] and res["meta_loss_files"] == []
    assert main(["eval", "sine", "--out-dir", ev]) == 2
    capsys.readouterr()
    bad = str(tmp_path / "bad")
    assert main(["train", "sine", "--out-dir", bad, "--first-order", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ml3tf: error:") and "first_order" in err[0]
    assert not (tmp_path / "bad").exists()
