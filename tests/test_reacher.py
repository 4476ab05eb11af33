"""Model-based reacher: joint-state mapping, IK, the TF-Agents path, the learned dynamics, a tiny run."""

# ml3tf.tasks.rl_env first: it sets up TF-Agents' Keras 2 before anything imports TensorFlow.
import ml3tf.tasks.rl_env

# isort: split

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf

import ml3tf
from ml3tf import tasks
from ml3tf.functional import FunctionalModel
from ml3tf.meta_loss import load_meta_loss
from ml3tf.models.dynamics import JointDynamicsModel, VelocityEnsembleDynamics
from ml3tf.run import train_one
from ml3tf.seeds import seeded
from ml3tf.tasks import reacher as R

TINY = dict(
    robot="reacher_v5",
    horizon=6,
    babbling_rollouts=2,
    dynamics_hidden=(16, 16),
    dynamics_epochs=3,
    policy_hidden=(8,),
    meta_loss_hidden=(8, 8),
    refit_every=2,
    baseline_lrs=(1e-4, 1e-2),
    test_goals=(R.AUTHORS_TEST_GOAL,),
)


@pytest.fixture(scope="module")
def tiny_task():
    return tasks.get("reacher", **TINY)


def _set_arm(env, q):
    u = env.unwrapped
    qpos, qvel = u.data.qpos.copy(), u.data.qvel.copy()
    qpos[:2], qvel[:2] = q[:2], q[2:]
    u.set_state(qpos, qvel)
    return u._get_obs()


def test_joint_state_fingertip_and_ik_match_mujoco():
    env = R.FixedGoalReacher.make(R.AUTHORS_TEST_GOAL)
    env.reset(seed=0)
    geometry = R.ArmGeometry.from_mujoco(env)
    assert (geometry.l1, geometry.l2) == pytest.approx((0.1, 0.11))
    rng = np.random.default_rng(0)
    for _ in range(5):
        q = np.concatenate([rng.uniform(-np.pi, np.pi, 1), rng.uniform(-2.9, 2.9, 1), rng.normal(0, 5, 2)])
        obs = _set_arm(env, q)
        np.testing.assert_allclose(R.joint_state(obs), q, atol=1e-9)
        np.testing.assert_allclose(R.joint_state_tf(tf.constant(obs)).numpy(), q, atol=1e-9)
        tip = env.unwrapped.get_body_com("fingertip")[:2]
        np.testing.assert_allclose(R.fingertip(q, geometry), tip, atol=1e-9)
    for goal in [R.AUTHORS_TEST_GOAL, R.AUTHORS_TRAIN_GOAL, (-0.08, 0.15), (0.15, -0.08), (0.0, -0.2)]:
        for elbow in (1, -1):
            q = R.goal_joint_state(goal, geometry, elbow)
            assert np.sign(q[1]) == elbow and q[2:].tolist() == [0.0, 0.0]
            _set_arm(env, q)
            tip = env.unwrapped.get_body_com("fingertip")[:2]
            np.testing.assert_allclose(tip, goal, atol=1e-9)  # MuJoCo's own fingertip at the goal
    env.close()


def test_fixed_goal_wrapper_sets_target_and_start_on_every_reset():
    env = R.FixedGoalReacher.make((0.1, -0.05), start=(0.3, -0.2, 0.0, 0.0), horizon=4)
    for seed in (0, 1):
        obs, _ = env.reset(seed=seed)
        np.testing.assert_allclose(env.unwrapped.get_body_com("target")[:2], (0.1, -0.05), atol=1e-12)
        np.testing.assert_allclose(obs[4:6], (0.1, -0.05), atol=1e-12)
        np.testing.assert_allclose(R.joint_state(obs), (0.3, -0.2, 0.0, 0.0), atol=1e-12)
        tip = R.fingertip(R.joint_state(obs))
        assert env.fingertip_distance == pytest.approx(np.linalg.norm(tip - (0.1, -0.05)), abs=1e-9)
    env.close()


def test_adapter_and_keras_policy_step_like_gymnasium(tiny_task):
    """The TF-Agents path (adapter + KerasPolicy + driver) equals stepping gymnasium by hand."""
    goal, horizon = R.AUTHORS_TEST_GOAL, 6
    target = R.goal_joint_state(goal, tiny_task.geometry)
    env = R.make_reacher_environment(goal, horizon=horizon)
    assert env.action_spec().shape == (2,)
    np.testing.assert_allclose(env.action_spec().minimum, -1.0)
    np.testing.assert_allclose(env.action_spec().maximum, 1.0)
    assert env.observation_spec().shape == (10,)
    learner = tiny_task.make_learner()
    params = FunctionalModel(learner).init_params([3, 4])
    params = [p * 4.0 for p in params]  # large weights: some actions hit the clip bounds
    episodes = tiny_task.real_rollouts(env, learner, params, target, 1)
    tf_distance = env.gym.episode_end_distance

    gym_env = R.FixedGoalReacher.make(goal, horizon=horizon)
    obs, _ = gym_env.reset(seed=0)
    scale = np.asarray(R.POLICY_INPUT_SCALE)
    observations, actions = [], []
    for _ in range(horizon):
        x = np.concatenate([R.joint_state(obs), target]) / scale
        a = np.clip(
            learner.stateless_call([p.numpy() for p in params], [], x[None].astype("float32"))[0], -1, 1
        )
        observations.append(obs)
        actions.append(np.asarray(a)[0])
        obs, *_ = gym_env.step(np.asarray(a)[0])
    mask = np.asarray(episodes["mask"][0], bool)
    n = int(mask.sum())
    assert n >= horizon - 1
    np.testing.assert_allclose(episodes["observation"][0][mask][:n], np.array(observations)[:n], atol=1e-5)
    np.testing.assert_allclose(episodes["action"][0][mask][:n], np.array(actions)[:n], atol=1e-5)
    assert np.abs(np.array(actions)).max() == pytest.approx(1.0)  # the clip was exercised
    assert tf_distance == pytest.approx(gym_env.fingertip_distance, abs=1e-5)
    gym_env.close()


def test_transitions_wrap_angle_differences():
    q = np.array([[3.1, 0.0, 1.0, 0.0], [-3.1, 0.1, 1.0, 0.0]])
    obs = np.zeros((1, 2, 10))
    obs[0, :, 0:2], obs[0, :, 2:4], obs[0, :, 6:8] = np.cos(q[:, :2]), np.sin(q[:, :2]), q[:, 2:]
    q0, a0, q1 = R.transitions({"observation": obs, "action": np.ones((1, 2, 2)), "mask": np.ones((1, 2))})
    np.testing.assert_allclose(q1[0] - q0[0], [2 * np.pi - 6.2, 0.1, 0.0, 0.0], atol=1e-9)
    assert a0.shape == (1, 2)


def test_dynamics_fit_reduces_heldout_error():
    env = R.make_reacher_environment(R.AUTHORS_TRAIN_GOAL, horizon=40)
    train = R.transitions(R.babble(env, 3, seed=0))
    test = R.transitions(R.babble(env, 2, seed=1))
    model = JointDynamicsModel((32, 32))

    def heldout_error():
        q, a, q1 = test
        pred = model.next_state(q.astype("float32"), a.astype("float32")).numpy()
        return np.mean(((pred - q1) / np.std(q1 - q, 0)) ** 2)

    model.set_delta_scale(train[2] - train[0])
    before = heldout_error()
    R.fit_dynamics(model, *train, epochs=60, seed=0)
    after = heldout_error()
    assert after < 0.5 * before and after < 0.5  # better than predicting Δq = 0 (≈ 1)


def test_rollout_loops_agree_and_the_cost_matches_numpy(tiny_task):
    tiny_task.fit_babbling(0)
    python_loop = tasks.get("reacher", **{**TINY, "rollout_loop": "python"})
    python_loop.dynamics = tiny_task.dynamics
    functional = FunctionalModel(tiny_task.make_learner())
    params = functional.init_params([0, 1])
    goal = tf.constant(tiny_task.train_targets[0], tf.float32)
    start = tf.zeros(4)
    s1, a1 = tiny_task.rollout(functional, params, start, goal)
    s2, a2 = python_loop.rollout(functional, params, start, goal)
    # the same one_step ops on the same (1, ·) shapes, in a while_loop or unrolled in Python
    # (measured bit-identical); rtol/atol 1e-6 allow for the kernels of another graph shape,
    # ~1e-7 here over 6 steps, while a step out of order or lost is off by ≥ 1e-3
    np.testing.assert_allclose(s1.numpy(), s2.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(a1.numpy(), a2.numpy(), rtol=1e-6, atol=1e-6)
    assert s1.shape == (7, 1, 4) and a1.shape == (6, 1, 2)
    s, g = s1.numpy()[:, 0], tiny_task.train_targets[0]
    err = np.linalg.norm(s[:, :2] - g[:2], axis=1)
    expected = 10 * err[-1] + err.mean() + 1e-4 * np.linalg.norm(s[:, 2:], axis=1).mean()
    assert float(tiny_task.cost(s1, goal)) == pytest.approx(expected, rel=1e-5)
    feats = tiny_task.loss_features(s1, a1, goal).numpy()
    assert feats.shape == (6, 7)
    np.testing.assert_allclose(feats[:, :4], s[:-1] / (1, 1, 8, 8), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(feats[:, 4:6], a1.numpy()[:, 0], rtol=1e-6)
    np.testing.assert_allclose(feats[:, 6], np.linalg.norm(s[-1] - g), rtol=1e-5)


def test_goal_relative_features_wrap_angles_and_linear_output_is_the_pre_softplus_value():
    task = tasks.get("reacher", **TINY, loss_features="goal_relative", meta_loss_output="linear")
    rng = np.random.default_rng(3)
    states = rng.normal(0.0, 12.0, (5, 2, 4))  # imagined angles far outside (−π, π]
    actions = rng.uniform(-1, 1, (4, 2, 2))
    goal = np.array([[0.3, 2.0, 0.0, 0.0], [-1.0, 0.5, 0.0, 0.0]])
    feats = task.loss_features(tf.constant(states, tf.float32), tf.constant(actions, tf.float32), goal)
    feats = feats.numpy().reshape(4, 2, 7)
    d = states[:-1, :, :2] - goal[:, :2]
    wrapped = (d + np.pi) % (2 * np.pi) - np.pi
    np.testing.assert_allclose(feats[..., :2], wrapped, atol=1e-4)
    assert np.all(np.abs(feats[..., :2]) <= np.pi + 1e-6)
    np.testing.assert_allclose(feats[..., 2:4], states[:-1, :, 2:] / 8.0, rtol=1e-5)
    np.testing.assert_allclose(feats[..., 4:6], actions, rtol=1e-6)
    np.testing.assert_allclose(
        feats[..., 6], np.linalg.norm(states[-1] - goal, axis=-1)[None].repeat(4, 0), rtol=1e-5
    )
    linear = task.make_meta_loss()
    softplus = tasks.get("reacher", **TINY).make_meta_loss()
    x = tf.constant(feats.reshape(-1, 7), tf.float32)
    linear(x), softplus(x)
    softplus.set_weights(linear.get_weights())
    out = linear(x).numpy()
    assert linear.output_activation == "linear"
    np.testing.assert_allclose(np.log1p(np.exp(out)), softplus(x).numpy(), rtol=1e-5)


def test_tiny_end_to_end_run_refits_and_writes_results(tmp_path, tiny_task):
    cfg = tiny_task.default_config().replace(meta_steps=4, steps_per_call=2, checkpoint_every=2, eval_steps=2)
    tiny_task.dynamics_log.clear()
    tiny_task.meta_test_dynamics_log.clear()
    run = ml3tf.train(tiny_task, cfg, str(tmp_path / "run"))
    babbled, refit = tiny_task.dynamics_log  # meta-train: babbling, refit at step 2
    assert babbled["fresh"] and not refit["fresh"]
    assert [r["seed"] for r in tiny_task.meta_test_dynamics_log] == [10**6]  # meta-test's own model
    assert refit["step"] == 2 and refit["transitions"] > babbled["transitions"]  # + a real rollout of θ₁
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["task"] == "reacher" and res["metric"] == "final_distance" and res["baseline"] == "task_cost"
    assert set(res["final"]) == {"train", "test"}
    for split in ("train", "test"):
        for method in ("learned", "baseline", "baseline_best_lr"):
            curve = res["curves"][split][method]["mean"]
            assert len(curve) == 3 and all(0 <= v < 0.5 for v in curve)
        # one policy init for all arms (learner_init="fixed"): same distance before any step
        c = res["curves"][split]
        # exact: point 0 of every arm is final_distance of the very same θ₀ tensors (the same code)
        assert c["learned"]["mean"][0] == c["baseline"]["mean"][0] == c["baseline_best_lr"]["mean"][0]
    assert res["baseline_best_lr"][0] in TINY["baseline_lrs"]
    assert os.path.exists(run.meta_loss_paths[0])
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 4 and all(np.isfinite(s["task_loss"]) for s in steps)


def test_an_evaluation_during_meta_training_leaves_the_meta_training_dynamics_alone(tmp_path):
    """Meta-test fits its own dynamics model: meta-training's weights, transitions, counters and fit
    log are what they were, and a run with eval_every trains as one without (no re-babbling)."""
    task = tasks.get("reacher", **TINY)
    cfg = task.default_config().replace(meta_steps=2, steps_per_call=2, eval_steps=1)
    trainer = ml3tf.MetaTrainer(task, cfg)
    trainer.run_steps(0, 2)  # babbling fit; the refit at step 2 is still to come
    weights = [w.numpy() for w in task.dynamics.weights]
    before = (len(task._dataset), sum(len(d[0]) for d in task._dataset), json.dumps(task.dynamics_log))
    counters = (task._fitted_seed, task._last_refit)
    task.evaluate([trainer.meta_loss], cfg, [0])
    for a, b in zip(weights, task.dynamics.weights, strict=True):
        np.testing.assert_array_equal(a, b.numpy())
    after = (len(task._dataset), sum(len(d[0]) for d in task._dataset), json.dumps(task.dynamics_log))
    assert after == before and (task._fitted_seed, task._last_refit) == counters
    assert [r["seed"] for r in task.meta_test_dynamics_log] == [10**6]

    def run(name, **kw):
        t = tasks.get("reacher", **TINY)
        c = t.default_config().replace(meta_steps=4, steps_per_call=2, checkpoint_every=2, eval_steps=1, **kw)
        train_one(t, c, str(tmp_path / name))
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return t, [m for m in map(json.loads, lines) if "eval" not in m]

    plain, plain_metrics = run("plain")
    evaluated, evaluated_metrics = run("eval", eval_every=2)
    assert evaluated_metrics == plain_metrics
    assert [(r["step"], r["fresh"]) for r in evaluated.dynamics_log] == [(0, True), (2, False)]
    assert evaluated.dynamics_log == plain.dynamics_log


class _Interrupt(Exception):
    pass


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path, caplog):
    """Killed after the checkpoint at step 4 (the dynamics refitted at 2 and at 4), then resumed in a
    fresh task (a new process): the same metrics, φ, dynamics model and refits, bit for bit."""
    cfg = tasks.get("reacher", **TINY).default_config()
    cfg = cfg.replace(meta_steps=6, steps_per_call=2, checkpoint_every=2)
    ref_task = tasks.get("reacher", **TINY)
    train_one(ref_task, cfg, str(tmp_path / "ref"))

    def stop_at_4(seed, step, info):
        if step == 4:  # the chunk 4–5 (and its refit at 4) ran; the last checkpoint holds 4 steps
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train_one(tasks.get("reacher", **TINY), cfg, str(tmp_path / "cut"), on_step=stop_at_4)
    cut_task = tasks.get("reacher", **TINY)  # nothing in memory survives the kill
    with caplog.at_level("WARNING", logger="ml3tf"):
        train_one(cut_task, cfg, str(tmp_path / "cut"))
    assert "babbling only" not in caplog.text  # restored, not refitted

    def metrics(run):
        return [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]

    assert [m["step"] for m in metrics("ref")] == list(range(6))
    # exact: the resumed process replays the same float32 ops on the same restored values
    assert metrics("cut") == metrics("ref")
    ref_phi = load_meta_loss(str(tmp_path / "ref" / "meta_loss.keras"))
    cut_phi = load_meta_loss(str(tmp_path / "cut" / "meta_loss.keras"))
    for a, b in zip(ref_phi.weights, cut_phi.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(ref_task.dynamics.weights, cut_task.dynamics.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert [(r["step"], r["fresh"]) for r in ref_task.dynamics_log] == [(0, True), (2, False), (4, False)]
    assert cut_task.dynamics_log == ref_task.dynamics_log  # the same fits, on the same data, same losses


def test_resume_from_a_checkpoint_without_the_dynamics_state_refits_on_babbling_and_warns(caplog):
    task = tasks.get("reacher", **{**TINY, "refit_every": 0})
    trainer = SimpleNamespace(config=SimpleNamespace(seed=0))
    task.before_meta_steps(trainer, 0, 2)  # an earlier fit in this process must not be kept
    task.restore_state(4, False)  # ml3tf.run: a checkpoint of 4 steps, written without task/
    with caplog.at_level("WARNING", logger="ml3tf"):
        task.before_meta_steps(trainer, 4, 2)
    assert "without the dynamics model's state" in caplog.text
    assert [(r["step"], r["fresh"]) for r in task.dynamics_log] == [(0, True), (0, True)]


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"horizon": 0}, "horizon"),
        ({"refit_every": -1}, "refit_every"),
        ({"train_goals": ((0.5, 0.5),)}, "train_goals"),
        ({"test_goals": ()}, "test_goals"),
        ({"elbow": 0}, "elbow"),
        ({"rollout_loop": "scan"}, "rollout_loop"),
        ({"baseline_lrs": (0.0,)}, "baseline_lrs"),
        ({"loss_features": "relative"}, "loss_features"),
        ({"meta_loss_output": "exp"}, "meta_loss_output"),
    ],
)
def test_bad_options_name_the_argument(options, name):
    with pytest.raises(ValueError, match=name):
        R.ReacherOptions(**options)


def test_goals_from_the_command_line_are_paired():
    assert R.ReacherOptions(train_goals=(0.1, 0.05, 0.0, -0.15)).train_goals == ((0.1, 0.05), (0.0, -0.15))
    with pytest.raises(ValueError, match="test_goals"):
        R.ReacherOptions(test_goals=(0.1, 0.05, 0.0))


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="observation"):
        R.joint_state(np.zeros(7))
    with pytest.raises(ValueError, match="out of reach"):
        R.inverse_kinematics((0.3, 0.0))
    with pytest.raises(ValueError, match="goal"):
        R.inverse_kinematics((np.nan, 0.1))
    with pytest.raises(ValueError, match="elbow"):
        R.inverse_kinematics((0.1, 0.1), elbow=2)
    with pytest.raises(ValueError, match="learner_init"):
        ml3tf.MetaTrainConfig(learner_init="zero")
    with pytest.raises(ValueError, match="hidden_units"):
        JointDynamicsModel(())
    with pytest.raises(ValueError, match="goal"):
        R.FixedGoalReacher.make((0.1,))


# --- the authors' robot (robot="authors", the default) ------------------------------------------
TINY_AUTHORS = dict(
    horizon=6,
    dynamics_hidden=(8, 4),
    dynamics_epochs=3,
    policy_hidden=(8,),
    meta_loss_hidden=(8, 8),
    refit_every=2,
    baseline_lrs=(1e-4, 1e-2),
    test_goals=(R.AUTHORS_TEST_GOAL,),
)


def test_the_authors_robot_is_the_default_with_their_protocol_numbers():
    o = R.ReacherOptions()
    assert o.robot == "authors" and o.dt == 0.01
    assert (o.dynamics_hidden, o.ensemble_size, o.dynamics_epochs, o.refit_epochs) == ((100, 30), 3, 500, 500)
    assert (o.dynamics_batch_size, o.babbling_rollouts, o.horizon, o.refit_every) == (64, 3, 65, 300)
    assert o.refit_at_start is True
    v5 = R.ReacherOptions(robot="reacher_v5")  # the earlier defaults, unchanged
    assert (v5.dynamics_hidden, v5.ensemble_size, v5.dynamics_epochs, v5.refit_epochs) == (
        (128, 128),
        1,
        150,
        50,
    )
    assert v5.refit_at_start is False
    task = tasks.get("reacher", **TINY_AUTHORS)
    cfg = task.default_config()
    assert (cfg.meta_steps, cfg.inner_steps, cfg.inner_lr, cfg.meta_lr, cfg.eval_steps) == (
        3000,
        1,
        1e-4,
        1e-2,
        2,
    )
    assert tasks.get("reacher", **TINY).default_config().eval_steps == 10
    assert isinstance(task.dynamics, VelocityEnsembleDynamics) and task.dynamics.ensemble_size == 3
    # a resolved set of options (config.json on resume) gives the same options
    assert R.ReacherOptions(**task.describe_options()) == task.options


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"robot": "pybullet"}, "robot"),
        ({"dt": 0.0}, "dt"),
        ({"dynamics_epochs": -1}, "dynamics_epochs"),
        ({"ensemble_size": 2, "robot": "reacher_v5"}, "ensemble_size"),
        ({"refit_at_start": 1}, "refit_at_start"),
    ],
)
def test_bad_robot_options_name_the_argument(options, name):
    with pytest.raises(ValueError, match=name):
        R.ReacherOptions(**options)


def test_velocity_ensemble_steps_semi_implicitly_and_clips():
    model = VelocityEnsembleDynamics((4,), ensemble_size=2, dt=0.01)
    for k, (_, mean, _) in enumerate(model.members):  # member k predicts Δθ̇ = (k + 1) · (1, −2)
        mean.kernel.assign(np.zeros_like(mean.kernel.numpy()))
        mean.bias.assign(np.array([1.0, -2.0]) * (k + 1))
    q = np.array([[0.5, -1.0, 0.2, 0.1], [2.99, 0.0, 3.5, -3.0]], "float32")
    nxt = model.next_state(q, np.zeros((2, 2), "float32")).numpy()
    dv = np.array([1.5, -3.0])  # the mean of the members' means
    vel = q[:, 2:] + dv
    np.testing.assert_allclose(nxt[:, 2:], np.clip(vel, -4, 4), rtol=1e-6)
    np.testing.assert_allclose(nxt[:, :2], np.clip(q[:, :2] + 0.01 * vel, -3, 3), rtol=1e-6)
    assert nxt[1, 0] == pytest.approx(3.0) and nxt[1, 2] == pytest.approx(4.0)  # both clips exercised
    with pytest.raises(ValueError, match="ensemble_size"):
        VelocityEnsembleDynamics(ensemble_size=0)
    with pytest.raises(ValueError, match="input_scale"):
        VelocityEnsembleDynamics(input_scale=(1.0, 8.0))


def test_velocity_ensemble_fit_learns_the_robots_velocity_change():
    task = tasks.get("reacher", **{**TINY_AUTHORS, "horizon": 30})
    train = R.transitions(R.babble(task.make_environment(R.AUTHORS_TRAIN_GOAL), 3, seed=0), task.state_of)
    test = R.transitions(R.babble(task.make_environment(R.AUTHORS_TRAIN_GOAL), 2, seed=1), task.state_of)
    model = VelocityEnsembleDynamics((32, 16), ensemble_size=3, dt=0.01)

    q, a, q1 = test
    # away from the ±3 rad joint limits (where a limit's impulse stops the arm: not smooth in q, a)
    inside = np.all(np.abs(q[:, :2]) < 2.9, -1) & np.all(np.abs(q1[:, :2]) < 2.9, -1)
    assert inside.mean() > 0.5

    def heldout_error():  # of Δθ̇, relative to its mean square (predicting 0 scores ≈ 1)
        pred = model(np.concatenate([q, a], -1).astype("float32")).numpy()
        d = (q1 - q)[:, 2:]
        return np.mean((pred - d)[inside] ** 2) / np.mean(d[inside] ** 2)

    before = heldout_error()
    first = R.fit_velocity_ensemble(model, *train, epochs=150, seed=0)
    after = heldout_error()
    assert before > 0.5 and after < 0.1  # measured: 0.03
    assert R.fit_velocity_ensemble(model, *train, epochs=50, seed=0) < first  # a refit continues
    with pytest.raises(ValueError, match="batch_size"):
        R.fit_velocity_ensemble(model, *train, batch_size=0)


def test_tiny_run_on_the_authors_robot_babbles_refits_at_zero_and_writes_results(tmp_path):
    task = tasks.get("reacher", **TINY_AUTHORS)
    cfg = task.default_config().replace(meta_steps=4, steps_per_call=2, checkpoint_every=2)
    ml3tf.train(task, cfg, str(tmp_path / "run"))
    # the authors: a fit after each of the 3 babbling rollouts, then refits at steps 0 and 2 (every 2)
    log = [(r["step"], r["fresh"], r["transitions"]) for r in task.dynamics_log]
    per = log[0][2]
    assert per >= TINY_AUTHORS["horizon"] - 1
    assert log == [
        (0, True, per),
        (0, True, 2 * per),
        (0, True, 3 * per),
        (0, False, 4 * per),
        (2, False, 5 * per),
    ]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["task_options"]["robot"] == "authors"
    for split in ("train", "test"):
        for method in ("learned", "baseline", "baseline_best_lr", "learned_real"):
            curve = res["curves"][split][method]["mean"]
            assert len(curve) == 3 and all(0 <= v < 0.5 for v in curve)  # eval_steps 2: θ₀, θ₁, θ₂
        # every arm starts from the same θ₀: the same real episode before any step
        assert res["curves"][split]["learned_real"]["mean"][0] == res["curves"][split]["learned"]["mean"][0]
    env = task.make_environment(R.AUTHORS_TEST_GOAL)
    assert env.observation_spec().shape == (4,)  # the authors' state [θ₁, θ₂, θ̇₁, θ̇₂]


def test_resume_on_the_authors_robot_equals_uninterrupted_run(tmp_path):
    """The ensemble's weights and the transitions go into the checkpoint (no optimizer state: every
    fit starts a fresh Adam): killed after the checkpoint at step 2, resumed in a fresh task."""
    options = {**TINY_AUTHORS, "babbling_rollouts": 1}
    cfg = tasks.get("reacher", **options).default_config()
    cfg = cfg.replace(meta_steps=4, steps_per_call=2, checkpoint_every=2)
    ref_task = tasks.get("reacher", **options)
    train_one(ref_task, cfg, str(tmp_path / "ref"))

    def stop_at_2(seed, step, info):
        if step == 2:  # the chunk 2–3 (and its refit at 2) ran; the last checkpoint holds 2 steps
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train_one(tasks.get("reacher", **options), cfg, str(tmp_path / "cut"), on_step=stop_at_2)
    cut_task = tasks.get("reacher", **options)
    train_one(cut_task, cfg, str(tmp_path / "cut"))

    def metrics(run):
        return [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]

    assert metrics("cut") == metrics("ref")
    for a, b in zip(ref_task.dynamics.weights, cut_task.dynamics.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert cut_task.dynamics_log == ref_task.dynamics_log


def test_real_robot_meta_test_steps_on_the_real_states_through_the_actions():
    """``meta_test_real`` (the authors' meta-test): θ₁ = θ₀ − α ∇_θ mean M_φ(features of θ₀'s real
    episode, actions recomputed from θ), by hand with a GradientTape; the distances are the real
    episodes' of θ₀ and θ₁, and the last state of an episode is where its fingertip ends."""
    # a linear output: a random softplus network can sit where its slope is ~0 and not move θ
    task = tasks.get("reacher", **TINY_AUTHORS, meta_loss_output="linear")
    with seeded(0):
        meta_loss = task.make_meta_loss()
        meta_loss(np.zeros((1, 7), np.float32))
    policy = FunctionalModel(task.make_learner())
    theta0 = policy.init_params(np.array([3, 4]))
    goal_xy, target = R.AUTHORS_TEST_GOAL, task.test_targets[:1]
    cfg = task.default_config().replace(inner_lr=2.0)
    dist = task.meta_test_real(meta_loss, [p.numpy()[None] for p in theta0], [goal_xy], target, cfg, steps=1)
    assert dist.shape == (1, 2)

    q, d0 = task.real_episode(policy.model, theta0, goal_xy, target[0])
    assert q.shape == (TINY_AUTHORS["horizon"] + 1, 4)
    tip = R.robot_env.fingertip_position(q[-1])
    assert np.linalg.norm(tip - np.asarray(goal_xy)) == pytest.approx(d0, abs=1e-6)  # float32 q_T
    goal = tf.constant(target, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(theta0)
        x = tf.concat([q[:-1], tf.repeat(goal, len(q) - 1, 0)], -1) / task.input_scale
        a = tf.clip_by_value(policy(theta0, x), -1.0, 1.0)
        m = tf.reduce_mean(meta_loss(task.loss_features(tf.constant(q)[:, None], a[:, None], goal)))
    grads = tape.gradient(m, theta0)
    theta1 = [p - 2.0 * g for p, g in zip(theta0, grads, strict=True)]
    assert max(float(tf.reduce_max(tf.abs(g))) for g in grads) * 2.0 > 1e-3  # the step moves θ
    _, d1 = task.real_episode(policy.model, theta1, goal_xy, target[0])
    # the engine's graph and this eager step differ by float32 rounding (~1e-7 relative in θ₁),
    # which a 6-step episode carries into the distance at well under 1e-5 m
    assert dist[0, 0] == d0
    assert dist[0, 1] == pytest.approx(d1, abs=1e-5)
    assert abs(d1 - d0) > 1e-4  # the comparison above tells a step from no step

    with pytest.raises(ValueError, match="robot"):
        tasks.get("reacher", robot="reacher_v5").meta_test_real(meta_loss, [], [], target, cfg, 1)
