"""ml3tf.tasks.reacher_robot_env: the authors' 2-link reacher in MuJoCo (physics, FK, TF-Agents)."""

import numpy as np
import pytest

pytest.importorskip("mujoco", reason="the reacher robot needs gymnasium[mujoco] (RL extras)")

import gymnasium

from ml3tf.tasks import reacher_robot_env as rre


def _random_actions(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 2))


def test_fingertip_forward_kinematics_equals_mujocos_site():
    env = rre.AuthorsReacherEnv()
    env.reset()
    for a in _random_actions(40, seed=1):
        obs, *_, info = env.step(a)
        np.testing.assert_allclose(rre.fingertip_position(obs), env.fingertip, atol=1e-12)
        np.testing.assert_allclose(info["fingertip"], env.fingertip, atol=0)
    # the link lengths of the MJCF are the module's: stretched arm at θ = 0
    np.testing.assert_allclose(rre.fingertip_position([0.0, 0.0]), [sum(rre.LINK_LENGTHS), 0.0])
    with pytest.raises(ValueError, match="q must end"):
        rre.fingertip_position([1.0, 2.0, 3.0])


def test_zero_action_with_compensation_keeps_a_resting_arm_at_rest():
    # b(q, 0) = g(q) = 0 for a planar arm on vertical axes; a spurious drift would be O(dt·|b|/M):
    # below 1e-12 rad/s after 200 steps means the compensation cancels to rounding.
    env = rre.AuthorsReacherEnv(start=(0.4, -1.1, 0.0, 0.0), horizon=200)
    env.reset()
    for _ in range(200):
        obs, *_ = env.step([0.0, 0.0])
    np.testing.assert_allclose(obs, [0.4, -1.1, 0.0, 0.0], atol=1e-12)


def test_compensation_cancels_the_coriolis_torque_of_a_moving_arm():
    # With b added and a = 0, q̈ = 0: the velocities stay constant step after step (to rounding),
    # and the angles advance by dt·q̇. Without it, the fingertip's Coriolis torque changes q̇.
    start = (0.2, 0.8, 1.5, -2.0)
    env = rre.AuthorsReacherEnv(start=start, horizon=20)
    env.reset()
    for t in range(1, 21):
        obs, *_ = env.step([0.0, 0.0])
        np.testing.assert_allclose(obs[2:], start[2:], atol=1e-12)
        np.testing.assert_allclose(obs[:2], np.add(start[:2], t * env.dt * np.array(start[2:])), atol=1e-12)
    free = rre.AuthorsReacherEnv(start=start, horizon=20, gravity_compensation=False)
    free.reset()
    obs, *_ = free.step([0.0, 0.0])
    assert np.abs(obs[3] - start[3]) > 1e-6  # b ≠ 0 for a moving arm: this test can fail


def test_step_is_semi_implicit_euler_of_m_inverse_tau():
    env = rre.AuthorsReacherEnv(start=(0.3, 1.0, 0.5, -0.5))
    env.reset()
    for a in _random_actions(10, seed=2):
        q0 = env.state
        acc = np.linalg.solve(env.mass_matrix(), a)
        q1, *_ = env.step(a)
        np.testing.assert_allclose(q1[2:], q0[2:] + env.dt * acc, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(q1[:2], q0[:2] + env.dt * q1[2:], rtol=1e-12, atol=1e-14)


def test_kinetic_energy_grows_by_the_work_of_the_torques():
    # q̇' = q̇ + dt M⁻¹τ with M fixed gives ΔT = dt τ·(q̇ + q̇')/2 exactly; M(θ₂) varies only through
    # the 4 g fingertip (0.2 % of M₁₁), so the energy balance holds to well under 1 %.
    env = rre.AuthorsReacherEnv(horizon=30)
    env.reset()

    def energy():
        v = env.data.qvel
        return 0.5 * v @ env.mass_matrix() @ v

    work, rng = 0.0, np.random.default_rng(3)
    for _ in range(30):
        a = rng.uniform(-0.2, 0.2, 2)
        before = env.state
        q1, *_ = env.step(a)
        work += env.dt * a @ (before[2:] + q1[2:]) / 2
    assert energy() > 1e-4
    assert energy() == pytest.approx(work, rel=1e-3)


def test_shapes_spaces_reward_and_time_limit():
    goal = (0.05, 0.15)
    env = rre.AuthorsReacherEnv(goal=goal, horizon=3)
    obs, info = env.reset()
    assert obs.shape == (4,) and obs.dtype == np.float64
    np.testing.assert_array_equal(obs, 0.0)
    assert env.action_space.shape == (2,)
    np.testing.assert_array_equal(env.action_space.high, [1.0, 1.0])
    assert env.dt == rre.DT
    for t in range(3):
        obs, reward, terminated, truncated, info = env.step([2.0, -3.0])  # clipped to ±1
        assert not terminated and truncated == (t == 2)
        assert reward == pytest.approx(-np.linalg.norm(info["fingertip"] - np.array(goal)))
    assert env.episode_end_distance == pytest.approx(-reward)
    np.testing.assert_array_equal(env.episode_end_state, obs)
    env.reset()  # a reset (a driver's, after the last step) keeps the episode's end
    np.testing.assert_array_equal(env.episode_end_state, obs)
    clipped = rre.AuthorsReacherEnv(horizon=3)
    clipped.reset()
    for _ in range(3):
        ref, *_ = clipped.step([1.0, -1.0])
    np.testing.assert_array_equal(obs, ref)
    assert gymnasium.make(rre.ENV_ID).unwrapped.__class__ is rre.AuthorsReacherEnv


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"horizon": 0}, "horizon"),
        ({"horizon": 2.5}, "horizon"),
        ({"dt": 0.0}, "dt"),
        ({"dt": 1.0}, "dt"),
        ({"goal": (1.0,)}, "goal"),
        ({"goal": (np.nan, 0.0)}, "goal"),
        ({"start": (0.0, 0.0, 0.0)}, "start"),
        ({"start": (3.5, 0.0, 0.0, 0.0)}, "start"),
        ({"gravity_compensation": 1}, "gravity_compensation"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rre.AuthorsReacherEnv(**kwargs)


def test_bad_actions_raise():
    env = rre.AuthorsReacherEnv()
    env.reset()
    for bad in ([0.0], [0.0, np.nan], [[0.0, 0.0, 0.0]]):
        with pytest.raises(ValueError, match="action"):
            env.step(bad)


def test_dt_option_changes_the_step():
    a = np.array([0.3, -0.7])
    fast, slow = rre.AuthorsReacherEnv(dt=1 / 240), rre.AuthorsReacherEnv()
    fast.reset()
    slow.reset()
    qf, *_ = fast.step(a)
    qs, *_ = slow.step(a)
    np.testing.assert_allclose(qf[2:] * 240, qs[2:] * 100, rtol=1e-9)  # q̇₁ = dt·M⁻¹τ from rest


def test_through_the_tf_agents_adapter_steps_like_the_raw_env():
    pytest.importorskip("tf_agents", reason="RL extras not installed")
    tf_env = rre.make_environment((0.0553, 0.1509), horizon=6, seed=0)
    raw = rre.AuthorsReacherEnv((0.0553, 0.1509), horizon=6)
    obs, _ = raw.reset()
    step = tf_env.reset()
    np.testing.assert_array_equal(step.observation, obs)
    for t, a in enumerate(_random_actions(6, seed=4).astype(np.float32)):
        obs, reward, *_ = raw.step(a)
        step = tf_env.step(a)
        np.testing.assert_array_equal(step.observation, obs)
        assert step.reward == pytest.approx(reward, rel=1e-6)
        assert step.is_last() == (t == 5)
