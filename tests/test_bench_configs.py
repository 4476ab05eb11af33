"""The named configurations of bench/mountain_car.py and bench/shaped_sine.py: ``authors`` is the
task's default (the authors' protocol), every other one changes exactly the fields it lists,
writes to its own folder and records a command that reproduces it; a bad name is refused."""

import importlib.util
import json
import os

import pytest

from ml3tf import tasks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench(name):
    spec = importlib.util.spec_from_file_location(
        f"bench_{name}_configs", os.path.join(ROOT, "bench", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["mountain_car", "shaped_sine"])
def test_named_configurations(name):
    bench = _bench(name)
    task = tasks.get(name)
    default = task.default_config()
    assert bench.CONFIGS["authors"] == {} and bench.config_for(task, "authors") == default
    assert set(bench.DEFAULT_SEEDS) == set(bench.CONFIGS)
    if name == "mountain_car":
        assert len(bench.CONFIGS) >= 2  # an option beside the protocol
    for config, changes in bench.CONFIGS.items():
        cfg = bench.config_for(task, config)
        differs = {k for k, v in cfg.to_dict().items() if v != default.to_dict()[k]}
        assert differs == set(changes), (config, differs)
        assert all(getattr(cfg, k) == v for k, v in changes.items())
        assert bench.config_for(task, config, meta_steps=7).meta_steps == 7
        out = bench.default_out_dir(config)
        assert os.path.basename(out) == (name if config == "authors" else f"{name}_{config}")
        seeds = bench.DEFAULT_SEEDS[config]
        assert bench.command(seeds, None, out, config) == f"python bench/{name}.py" + (
            "" if config == "authors" else f" --config {config}"
        )
    assert bench.command([0, 1], 50, os.path.join(ROOT, "x"), "authors") == (
        f"python bench/{name}.py --seeds 0 1 --meta-steps 50 --out-dir x"
    )
    with pytest.raises(ValueError, match=r"config.*'nope'"):
        bench.config_for(task, "nope")
    # task options a configuration changes beside its MetaTrainConfig fields: valid, and different
    for config, options in getattr(bench, "TASK_OPTIONS", {}).items():
        assert config in bench.CONFIGS and options
        changed = tasks.get(name, **options).describe_options()
        assert all(changed[k] == v != task.describe_options()[k] for k, v in options.items())


def test_mountain_car_diagnosis_reads_the_run(tmp_path):
    import numpy as np

    import ml3tf

    bench = _bench("mountain_car")
    task = tasks.get(
        "mountain_car", horizon=5, subgoal_steps=2, policy_hidden=8, meta_loss_hidden=(16,), n_test_policies=2
    )
    cfg = task.default_config().replace(meta_steps=3, task_loss_weight=0.0, extra_loss_weight=1.0)
    run = ml3tf.train(task, cfg, str(tmp_path), seeds=[0, 1], evaluate=False)
    params0 = task.train_params(1)
    out = task.meta_test(ml3tf.load_meta_loss(run.meta_loss_paths[1]), params0, cfg)
    d = bench.diagnose(params0, out["params"], run.run_dirs[1])
    # the gains are those of the linear policy: a(s) = s·W₁W₂ = k_p·p + k_v·v
    s = np.array([[0.3, -0.7]], np.float32)
    a = s @ params0[0][0] @ params0[1][0]
    np.testing.assert_allclose(a.ravel(), s @ np.asarray(d["gains_theta0"]), rtol=1e-5)
    assert d["gains_after_steps"] != d["gains_theta0"]  # the meta-test step moved the policy
    with open(os.path.join(run.run_dirs[1], "metrics.jsonl")) as f:
        metrics = [json.loads(line) for line in f]
    assert d["meta_grad_norm_max"] == max(r["meta_grad_norm"] for r in metrics if "objective" in r)
    assert d["meta_objective_first"] == metrics[0]["objective"]  # 3 steps: the first tenth is step 0
    oracle = bench.sgd_on_the_meta_objective(task, 0)
    assert oracle["policies"] == 2 and set(oracle["reached_after_k_steps"]) == {
        str(lr) for lr in bench.ORACLE_LRS
    }
    assert all(
        len(c) == bench.ORACLE_STEPS + 1 and max(c) <= 2 for c in oracle["reached_after_k_steps"].values()
    )


def test_shaped_sine_landscape_argmin():
    import numpy as np

    bench = _bench("shaped_sine")
    omega = np.linspace(-7.0, 7.0, 281)
    curves = [(omega - 0.6) ** 2, (omega - 0.7) ** 2]
    results = {
        "task_options": {"test_frequency": 0.7, "init_range": [-5.0, 5.0]},
        "landscape": {
            "omega": omega.tolist(),
            "baseline": ((omega - 0.7) ** 2).tolist(),
            "learned_mse": {"per_seed": [c.tolist() for c in curves]},
            "learned": {"per_seed": [c.tolist() for c in curves[::-1]]},
        },
    }
    bench.add_basins(results)
    assert results["landscape_argmin"]["learned"] == pytest.approx([0.7, 0.6])
    assert results["landscape_argmin"]["learned_mse"] == pytest.approx([0.6, 0.7])


def test_mountain_car_fresh_configuration_runs_a_tiny_version(tmp_path):
    """``--config fresh`` meta-trains over several fixed policies, ``eval_steps`` equal to its inner
    steps; a tiny version trains and meta-tests every fresh policy of each seed."""
    import numpy as np

    import ml3tf

    bench = _bench("mountain_car")
    changes = bench.CONFIGS["fresh"]
    assert changes["meta_batch_size"] > 1 and changes.get("learner_init", "fixed") == "fixed"
    assert bench.DEFAULT_SEEDS["fresh"] == list(range(10))
    task = tasks.get(
        "mountain_car", horizon=5, subgoal_steps=2, policy_hidden=8, meta_loss_hidden=(16,), n_test_policies=3
    )
    cfg = bench.config_for(task, "fresh", meta_steps=2).replace(task_loss_weight=0.0, extra_loss_weight=1.0)
    assert cfg.eval_steps == cfg.inner_steps
    run = ml3tf.train(task, cfg, str(tmp_path), seeds=[0, 1], evaluate=False)
    with open(os.path.join(run.run_dirs[0], "metrics.jsonl")) as f:
        metrics = [json.loads(line) for line in f if "objective" in line]
    assert len(metrics) == 2 and all(np.isfinite(m["objective"]) for m in metrics)
    losses = [ml3tf.load_meta_loss(p) for p in run.meta_loss_paths]
    res = task.evaluate(losses, cfg, [0, 1], steps=cfg.eval_steps + 1)
    per = np.asarray(res["success_rate"]["test"]["learned"]["per_seed_curve"])
    assert per.shape == (2, cfg.eval_steps + 2) and np.all((per >= 0) & (per <= 1))
    # every share is a count of the 3 fresh policies of the seed
    np.testing.assert_allclose(per * 3, np.round(per * 3), atol=1e-6)


def test_mountain_car_gain_map(tmp_path):
    """``--gain-map``: the region is the set of gains whose policy reaches the goal — checked against
    the task's TF rollout of a 2 → 1 → 1 policy with those gains (another implementation of the
    policy and the physics) — and the fresh policies are the task's meta-test draws."""
    import numpy as np
    import tensorflow as tf

    from ml3tf.functional import FunctionalModel

    bench = _bench("mountain_car")
    res = bench.gain_map([0, 1], str(tmp_path), descent_steps=0)
    grid, region = np.asarray(res["grid"]), np.asarray(res["reaches"])
    assert region.shape == (len(grid), len(grid)) and 0 < region.sum() < region.size
    task = tasks.get("mountain_car", policy_hidden=1)
    learner = FunctionalModel(task.make_learner())
    start = tf.constant(task.options.start, tf.float32)
    # cells away from the region's edge, where float32 and float64 rollouts cannot disagree: inside
    # with all four neighbours inside, outside with the float64 rollout at least 0.05 below the goal
    n = len(grid)
    inside = [
        (i, j)
        for i, j in zip(*np.nonzero(region), strict=True)
        if 0 < i < n - 1
        and 0 < j < n - 1
        and region[i - 1 : i + 2, j].all()
        and region[i, j - 1 : j + 2].all()
    ]
    outside = [
        (i, j)
        for i, j in zip(*np.nonzero(region == 0), strict=True)
        if bench.max_position(grid[i], grid[j]) < 0.45
    ]
    rng = np.random.default_rng(0)
    for i, j in [inside[k] for k in rng.choice(len(inside), 6)] + [
        outside[k] for k in rng.choice(len(outside), 6)
    ]:
        params = [tf.constant([[grid[i]], [grid[j]]], tf.float32), tf.constant([[1.0]])]
        states, _ = task.rollout(learner, params, start)
        top = float(tf.reduce_max(states[:, 0]))
        assert (top >= 0.5 - 1e-6) == bool(region[i, j]), (grid[i], grid[j], top)
    fresh = tasks.get("mountain_car")
    w1, w2 = fresh.test_params(1)
    np.testing.assert_allclose(res["fresh_gains"][-1], (w1[-1] @ w2[-1]).ravel(), rtol=1e-6)
    assert len(res["fresh_gains"]) == 2 * fresh.options.n_test_policies
    assert res["fresh_inside"] == sum(bench.reaches(kp, kv) for kp, kv in res["fresh_gains"])
    kp = grid[region.any(axis=1)]
    assert res["region_kp_range"] == [kp.min(), kp.max()]
    assert (tmp_path / "results.json").exists() and (tmp_path / "gain_region.png").exists()
    # Adam on the meta-objective: 0 steps leaves the fresh policies as drawn (none reaches), 2 move them
    still = res["adam_on_the_meta_objective"]["policies"]
    np.testing.assert_allclose([r["final_gains"] for r in still], res["fresh_gains"][:10], rtol=1e-6)
    assert all(r["reached_at_step"] is None and 0 <= r["saturated_fraction"] <= 1 for r in still)
    moved = bench.descend_meta_objective(fresh, 0, steps=2)
    assert all(m["final_gains"] != r["final_gains"] for m, r in zip(moved, still, strict=True))
    # the loss it reports is L_extra of the policy it reports (0 steps: the fresh draw itself)
    full = FunctionalModel(fresh.make_learner())
    w1, w2 = fresh.test_params(0)
    states, _ = fresh.rollout(full, [tf.constant(w1[2]), tf.constant(w2[2])], start)
    # the same float32 ops, once in a tf.function and once eagerly (measured identical); 1e-4 leaves
    # room for a fused kernel's rounding through 35 steps, while this policy one Adam step on has an
    # L_extra 20% different (measured)
    np.testing.assert_allclose(
        still[2]["final_extra_loss"], float(fresh.trajectory_extra_loss(states)), rtol=1e-4
    )
    assert f"k_p ∈ [{kp.min():.3g}" in bench.gain_map_table(res)
