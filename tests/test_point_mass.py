"""Model-free ML3 on the point mass: TF dynamics vs the gymnasium env (through TF-Agents),
the REINFORCE surrogate gradient in closed form, the loss features, a tiny end-to-end run, bad input."""

import json
import math
import os

import gymnasium
import numpy as np
import pytest
import tensorflow as tf

import ml3tf
import ml3tf.tasks.rl_env as rl_env  # first: selects Keras 2 for tf.keras before TensorFlow
from ml3tf import tasks
from ml3tf.functional import FunctionalModel
from ml3tf.meta_loss import load_meta_loss
from ml3tf.tasks import point_mass as pm

SMALL = {"horizon": 6, "episodes": 3, "n_eval_goals": 2, "policy_hidden": (8,), "meta_loss_hidden": (16,)}


def _policy(task, seed=0, scale=1.0):
    f = FunctionalModel(task.make_learner())
    params = [scale * p for p in f.init_params(tf.constant([seed, 1]))]
    return f, params


@pytest.mark.parametrize("through", ["id", "instance"])
def test_tf_rollout_equals_the_gymnasium_env_through_tf_agents(through):
    # A large θ drives the mean outside the action bounds and the mass into the walls,
    # so both clipping branches are exercised.
    task = tasks.get("point_mass", horizon=12, position_bound=0.6, goal_radius=(0.3, 0.6))
    f, params = _policy(task, scale=4.0)
    goal = np.array([0.5, -0.4], np.float32)
    o = task.options
    if through == "id":
        tf_env = rl_env.make_tf_env(pm.ENV_ID, goal=tuple(goal), horizon=12, position_bound=0.6)
    else:
        tf_env = rl_env.make_tf_env(pm.PointMassEnv(goal=goal, horizon=12, position_bound=0.6))
    try:
        policy = rl_env.KerasPolicy(
            f.model, tf_env.time_step_spec(), tf_env.action_spec(), params=params, log_std=None
        )
        episode = rl_env.collect_episodes(tf_env, policy, 1)
    finally:
        tf_env.close()
    traj = task.rollout(f, params, [], goal, np.zeros((1, o.horizon, 2), np.float32))
    assert episode["observation"].shape == (1, 12, 4)
    np.testing.assert_allclose(episode["observation"], traj["observation"].numpy(), atol=1e-5)
    np.testing.assert_allclose(episode["action"], np.clip(traj["action"].numpy(), -1, 1), atol=1e-5)
    np.testing.assert_allclose(episode["reward"], traj["reward"].numpy(), atol=1e-5)
    assert np.abs(traj["action"].numpy()).max() > 1.0  # the action clip was exercised
    assert np.isclose(np.abs(traj["observation"].numpy()[..., :2]).max(), 0.6)  # and the wall


def test_noisy_tf_rollout_equals_stepping_the_gymnasium_env():
    task = tasks.get("point_mass", horizon=15)
    f, params = _policy(task, seed=3)
    goal = np.array([-0.7, 0.2], np.float32)
    noise = np.random.default_rng(0).standard_normal((4, 15, 2)).astype(np.float32) * 2
    traj = {k: v.numpy() for k, v in task.rollout(f, params, [], goal, noise).items()}
    env = gymnasium.make(pm.ENV_ID, goal=tuple(goal), horizon=15)
    for e in range(4):
        obs, _ = env.reset(seed=e)
        for t in range(15):
            np.testing.assert_allclose(obs, traj["observation"][e, t], atol=1e-5)
            obs, reward, terminated, truncated, _ = env.step(np.clip(traj["action"][e, t], -1, 1))
            assert np.isclose(reward, traj["reward"][e, t], atol=1e-5)
            assert not terminated and truncated == (t == 14)


def test_reinforce_surrogate_gradient_equals_the_closed_form(float64):
    # Linear-Gaussian policy μ = s W, σ = exp(log_std):
    #   ∇_W log π(a|s) = sᵀ (a − μ) / σ²,   ∇_W L = −mean_{e,t} Â_t sᵀ (a_t − μ_t) / σ².
    rng = np.random.default_rng(1)
    e, horizon, log_std = 3, 4, -0.3
    w = rng.normal(size=(4, 2))
    traj = {
        "observation": tf.constant(rng.normal(size=(e, horizon, 4))),
        "action": tf.constant(rng.normal(size=(e, horizon, 2))),
        "reward": tf.constant(rng.normal(size=(e, horizon))),
    }
    for baseline in (True, False):
        w_t = tf.Variable(w)
        with tf.GradientTape() as tape:
            loss = pm.reinforce_surrogate(lambda s, w_t=w_t: s @ w_t, traj, log_std, baseline)
        grad = tape.gradient(loss, w_t).numpy()

        s, a, r = (traj[k].numpy() for k in ("observation", "action", "reward"))
        g = np.cumsum(r[:, ::-1], axis=1)[:, ::-1]
        adv = g - g.mean(axis=0, keepdims=True) if baseline else g
        mu = s @ w
        sigma2 = math.exp(2 * log_std)
        logp = -0.5 * ((a - mu) ** 2).sum(-1) / sigma2 - 2 * log_std - math.log(2 * math.pi)
        expected = -np.einsum("et,eti,etj->ij", adv, s, a - mu) / sigma2 / (e * horizon)
        # float64: means over 12 (e, t) terms of products of O(1) values, ~12·eps ≈ 3e-15 relative
        # (measured 1e-16); a missing baseline or a wrong sign is off by O(1)
        np.testing.assert_allclose(loss.numpy(), -(adv * logp).mean(), rtol=1e-12)
        np.testing.assert_allclose(grad, expected, rtol=1e-10, atol=1e-14)


def test_loss_features_carry_theta_only_through_mu_and_log_pi():
    task = tasks.get("point_mass", **SMALL)
    f, params = _policy(task)
    data = task.sample(0, 0, 1).task(0).support
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(params)
        feats, _ = task.meta_loss_inputs(f, params, [], data)
        trajectory_part = tf.reduce_sum(feats[:, :8])
        theta_part = tf.reduce_sum(feats[:, 8:])
    assert feats.shape == (SMALL["episodes"] * SMALL["horizon"], pm.N_FEATURES)
    assert all(g is None or not np.any(g.numpy()) for g in tape.gradient(trajectory_part, params))
    grads = tape.gradient(theta_part, params)
    assert all(g is not None and np.abs(g.numpy()).max() > 0 for g in grads)
    # the log π column is the Gaussian log-density of the recorded action
    mean = feats[:, 8:10].numpy()
    act = feats[:, 4:6].numpy()
    sigma = math.exp(task.options.log_std)
    logp = -0.5 * (((act - mean) / sigma) ** 2).sum(-1) - 2 * math.log(sigma) - math.log(2 * math.pi)
    np.testing.assert_allclose(feats[:, 10].numpy(), logp, rtol=1e-5, atol=1e-5)


def test_meta_gradient_reaches_phi_and_maml_runs():
    task = tasks.get("point_mass", **SMALL)
    cfg = task.default_config().replace(meta_batch_size=2)
    trainer = ml3tf.MetaTrainer(task, cfg)
    grads, _ = trainer.meta_gradient(task.sample(0, 0, 2), trainer.init_seeds(0))
    kernels = [
        g for g, v in zip(grads, trainer.meta_loss.trainable_variables, strict=True) if "kernel" in v.path
    ]
    assert all(np.abs(g.numpy()).max() > 0 for g in kernels)
    maml = ml3tf.MetaTrainer(task, cfg.replace(method="maml"))
    before = [w.copy() for w in maml.learner.model.get_weights()]
    assert np.isfinite(maml.meta_step(task.sample(0, 0, 2), 0).task_loss)
    theta0 = maml.learner.model.get_weights()
    assert any(not np.allclose(a, b) for a, b in zip(before, theta0, strict=True))
    # meta-test of the MAML θ₀: the learned arm starts there and adapts with REINFORCE
    res = task.evaluate([], cfg.replace(eval_steps=2), [0], initial_params=[theta0])
    for split in ("train", "test"):
        learned, baseline = (res["curves"][split][m]["mean"] for m in ("learned", "baseline"))
        assert learned[0] != baseline[0] and np.all(np.isfinite(learned + baseline))
    assert res["real_env_max_abs_gap"] < 1e-4
    with pytest.raises(ValueError, match="initial_params shapes"):
        task.evaluate([], cfg, [0], initial_params=[theta0[:-1]])


def test_tiny_end_to_end_run_writes_results_with_real_env_returns(tmp_path):
    task = tasks.get("point_mass", **SMALL)
    cfg = task.default_config().replace(meta_steps=3, eval_steps=3, steps_per_call=3)
    run = ml3tf.train(task, cfg, str(tmp_path), seeds=[0, 1])
    with open(tmp_path / "results.json") as fh:
        res = json.load(fh)
    assert res == json.loads(json.dumps(run.results))
    assert (res["task"], res["metric"], res["baseline"], res["higher_is_better"]) == (
        "point_mass",
        "return",
        "reinforce",
        True,
    )
    assert res["seeds"] == [0, 1] and res["steps"] == 3
    for split in ("train", "test"):
        learned, baseline = (res["curves"][split][m]["mean"] for m in ("learned", "baseline"))
        assert len(learned) == len(baseline) == 4
        # exact: both arms compute the return of the same θ₀ on the same goals with the same ops
        # (deterministic_return) before their first update, each in its own graph
        assert learned[0] == baseline[0]
        assert all(v < 0 for v in learned + baseline)  # rewards are −distance
        assert set(res["final_real_env"][split]) == {"learned", "learned_std", "baseline", "baseline_std"}
        assert np.isclose(res["final_real_env"][split]["learned"], res["final"][split]["learned"], atol=1e-4)
    assert res["real_env_max_abs_gap"] < 1e-4
    for d in run.run_dirs:
        assert os.path.exists(os.path.join(d, "meta_loss.keras"))
    # the saved loss networks reproduce the meta-test curves (serialization by values)
    again = task.evaluate([load_meta_loss(p) for p in run.meta_loss_paths], cfg, [0, 1])
    for split in ("train", "test"):
        np.testing.assert_allclose(
            again["curves"][split]["learned"]["mean"], res["curves"][split]["learned"]["mean"], rtol=1e-6
        )


def test_heldout_goals_come_from_the_test_angles():
    task = tasks.get("point_mass", n_eval_goals=50)
    for split, (lo, hi) in (("train", (0, 270)), ("test", (270, 360))):
        g = task.eval_goals(0, split)
        angle = np.degrees(np.arctan2(g[:, 1], g[:, 0])) % 360
        radius = np.linalg.norm(g, axis=1)
        assert np.all((angle >= lo - 1e-3) & (angle <= hi + 1e-3))
        assert np.all((radius >= 0.5 - 1e-6) & (radius <= 1.0 + 1e-6))


@pytest.mark.parametrize(
    "options, name",
    [
        ({"env_id": "ml3tf/NoSuchEnv-v0"}, "env_id"),
        ({"horizon": 0}, "horizon"),
        ({"episodes": 2.5}, "episodes"),
        ({"dt": -0.1}, "dt"),
        ({"log_std": float("nan")}, "log_std"),
        ({"goal_radius": (1.0, 0.5)}, "goal_radius"),
        ({"goal_radius": (0.5, 3.0)}, "goal_radius"),
        ({"test_angles": (10.0,)}, "test_angles"),
        ({"policy_hidden": ()}, "policy_hidden"),
    ],
)
def test_bad_options_raise_value_error_naming_the_argument(options, name):
    with pytest.raises(ValueError, match=name):
        tasks.get("point_mass", **options)


def test_bad_environment_input_is_a_clear_value_error():
    with pytest.raises(ValueError, match="NoSuchEnv"):
        rl_env.GymnasiumEnvironment("ml3tf/NoSuchEnv-v0")
    with pytest.raises(ValueError, match="goal"):
        pm.PointMassEnv(goal=(3.0, 0.0))
    with pytest.raises(ValueError, match="horizon"):
        pm.PointMassEnv(horizon=0)
    env = rl_env.GymnasiumEnvironment(pm.ENV_ID)
    env.reset()
    with pytest.raises(ValueError, match="outside the bounds"):
        env.step(np.array([1.5, 0.0], np.float32))


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--env-id", "Nope-v0"], "env_id must be a registered gymnasium environment"),
        (["--horizon", "0"], "horizon"),
    ],
)
def test_cli_bad_point_mass_options_are_one_line_and_exit_2(tmp_path, capsys, flags, fragment):
    from ml3tf.cli import main

    out = tmp_path / "run"
    assert main(["train", "point_mass", "--out-dir", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ml3tf: error:") and fragment in err, err
    assert not out.exists()
