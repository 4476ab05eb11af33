"""ml3tf.tasks.rl_env: the gymnasium → TF-Agents adapter, KerasPolicy, episode collection, install."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("tf_agents", reason="RL extras not installed (README 'Reinforcement learning')")

import gymnasium
import keras
import tensorflow as tf

import ml3tf.tasks.rl_env as rl_env
from tests.numerics import ACT_ABS_ULPS, ACT_REL_ULPS, U32, gamma

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _linear_net(in_dim: int, out_dim: int, seed: int = 0) -> keras.Model:
    net = keras.Sequential([keras.Input((in_dim,)), keras.layers.Dense(out_dim, activation="tanh")])
    rng = np.random.default_rng(seed)
    net.set_weights([rng.normal(size=(in_dim, out_dim)).astype("float32"), np.zeros(out_dim, "float32")])
    return net


def test_specs_follow_the_spaces():
    env = rl_env.GymnasiumEnvironment("Pendulum-v1", seed=0)
    gym_env = gymnasium.make("Pendulum-v1")
    a, o = env.action_spec(), env.observation_spec()
    np.testing.assert_array_equal(a.minimum, gym_env.action_space.low)
    np.testing.assert_array_equal(a.maximum, gym_env.action_space.high)
    np.testing.assert_array_equal(o.maximum, gym_env.observation_space.high)
    assert a.shape == (1,) and o.shape == (3,) and o.dtype == np.float32
    discrete = rl_env.GymnasiumEnvironment("CartPole-v1").action_spec()
    assert (discrete.shape, discrete.dtype, discrete.minimum, discrete.maximum) == ((), np.int64, 0, 1)
    unbounded = rl_env.space_to_spec(gymnasium.spaces.Box(-np.inf, np.inf, (2,)), "observation")
    assert type(unbounded).__name__ == "ArraySpec"
    with pytest.raises(ValueError, match="not supported"):
        rl_env.space_to_spec(gymnasium.spaces.MultiBinary(3), "observation")


def test_stepping_equals_gymnasium_including_time_limit_and_auto_reset():
    env = rl_env.GymnasiumEnvironment("Pendulum-v1", seed=3, max_episode_steps=5)
    ref = gymnasium.make("Pendulum-v1", max_episode_steps=5)
    obs, _ = ref.reset(seed=3)
    step = env.reset()
    np.testing.assert_allclose(step.observation, obs, rtol=1e-6)
    rng = np.random.default_rng(0)
    for t in range(5):
        action = rng.uniform(-2, 2, size=(1,)).astype(np.float32)
        obs, reward, terminated, truncated, _ = ref.step(action)
        step = env.step(action)
        np.testing.assert_allclose(step.observation, obs, rtol=1e-6)
        assert step.reward == pytest.approx(reward, rel=1e-6)
        assert not terminated and truncated == (t == 4)
        assert step.is_last() == (t == 4)
    assert float(step.discount) == 1.0  # a time limit is not a terminal state
    assert env.step(np.zeros(1, np.float32)).is_first()  # auto-reset after LAST


def test_termination_has_zero_discount():
    env = rl_env.GymnasiumEnvironment("CartPole-v1", seed=0)
    step = env.reset()
    for _ in range(500):  # always push right: the pole falls within a few dozen steps
        step = env.step(np.int64(1))
        if step.is_last():
            break
    assert step.is_last() and float(step.discount) == 0.0


def test_bad_input_is_a_clear_value_error():
    with pytest.raises(ValueError, match="NoSuchEnv-v0"):
        rl_env.GymnasiumEnvironment("NoSuchEnv-v0")
    with pytest.raises(ValueError, match="max_episode_steps"):
        rl_env.GymnasiumEnvironment("Pendulum-v1", max_episode_steps=0)
    with pytest.raises(ValueError, match="env must be"):
        rl_env.GymnasiumEnvironment(42)
    env = rl_env.GymnasiumEnvironment("Pendulum-v1", seed=0)
    env.reset()
    with pytest.raises(ValueError, match="outside the bounds"):
        env.step(np.array([2.5], np.float32))
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan], np.float32))


def test_keras_policy_matches_the_network_and_explicit_params():
    tf_env = rl_env.make_tf_env("Pendulum-v1", seed=0, max_episode_steps=10)
    try:
        net = _linear_net(3, 1)
        policy = rl_env.KerasPolicy(net, tf_env.time_step_spec(), tf_env.action_spec())
        step = tf_env.reset()
        expected = np.clip(2.0 * 0 + net(step.observation).numpy(), -2, 2)
        np.testing.assert_allclose(policy.action(step).action.numpy(), expected, rtol=1e-6)
        theta = [np.full((3, 1), 3.0, np.float32), np.array([0.5], np.float32)]
        policy.set_params(theta)
        obs = step.observation.numpy()
        # float32 tanh(obs·θ + b) against float64: the 3-term dot product plus the bias is within
        # γ_4·Σ|terms| before tanh (slope 1 − y²) and tanh itself within ACT_REL_ULPS·u
        # (``tests.numerics``): ~1e-6, above the measured 5e-8 (rtol 1e-6 was at the bound).
        # Params that were not set give another action by ≥ 1e-2.
        pre = obs.astype(np.float64) @ theta[0].astype(np.float64) + theta[1]
        want = np.tanh(pre)
        terms = np.abs(obs.astype(np.float64)) @ np.abs(theta[0]) + np.abs(theta[1])
        bound = gamma(4) * terms * (1 - want**2) + (ACT_REL_ULPS * np.abs(want) + ACT_ABS_ULPS) * U32
        np.testing.assert_allclose(policy.action(step).action.numpy(), want, rtol=0, atol=bound.max())
        # TF-Agents tracks the explicit params; Keras 3 weights are invisible to its module
        # tracking, so _variables() adds them.
        assert len(policy.variables()) == 2 and len(policy._variables()) == 4
        with pytest.raises(ValueError, match="shapes"):
            policy.set_params([np.zeros((2, 1), np.float32), np.zeros(1, np.float32)])
    finally:
        tf_env.close()


def test_gaussian_policy_is_seeded_clipped_and_has_the_right_spread():
    tf_env = rl_env.make_tf_env("Pendulum-v1", seed=0)
    try:
        net = _linear_net(3, 1)
        step = tf_env.reset()

        def draws(seed):
            p = rl_env.KerasPolicy(
                net, tf_env.time_step_spec(), tf_env.action_spec(), log_std=-1.0, seed=seed
            )
            return np.array([p.action(step).action.numpy().item() for _ in range(400)])

        a, b = draws(1), draws(1)
        np.testing.assert_array_equal(a, b)
        mean = net(step.observation).numpy().item()
        assert abs(a.std() - np.exp(-1.0)) < 0.05 and abs(a.mean() - mean) < 0.06
        wide = rl_env.KerasPolicy(net, tf_env.time_step_spec(), tf_env.action_spec(), log_std=3.0)
        acts = np.array([wide.action(step).action.numpy().item() for _ in range(50)])
        assert acts.min() >= -2.0 and acts.max() <= 2.0 and np.any(np.abs(acts) == 2.0)
    finally:
        tf_env.close()


def test_collect_episodes_equals_a_manual_gymnasium_rollout():
    net = _linear_net(3, 1, seed=2)
    tf_env = rl_env.make_tf_env("Pendulum-v1", seed=7, max_episode_steps=6)
    try:
        policy = rl_env.KerasPolicy(net, tf_env.time_step_spec(), tf_env.action_spec())
        got = rl_env.collect_episodes(tf_env, policy, num_episodes=2)
    finally:
        tf_env.close()
    ref = gymnasium.make("Pendulum-v1", max_episode_steps=6)
    for e in range(2):
        obs, _ = ref.reset(seed=7 if e == 0 else None)
        rewards = []
        for t in range(6):
            np.testing.assert_allclose(got["observation"][e, t], obs, rtol=1e-5)
            action = np.clip(net(obs[None].astype(np.float32)).numpy()[0], -2, 2)
            np.testing.assert_allclose(got["action"][e, t], action, rtol=1e-5)
            obs, reward, *_ = ref.step(action)
            rewards.append(reward)
        np.testing.assert_allclose(got["reward"][e], rewards, rtol=1e-5)
        assert got["return"][e] == pytest.approx(sum(rewards), rel=1e-5)
    np.testing.assert_array_equal(got["mask"], np.ones((2, 6)))
    with pytest.raises(ValueError, match="num_episodes"):
        rl_env.collect_episodes(None, None, 0)


def _python(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning:__main__", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_importing_rl_env_first_selects_keras_2_for_tf_keras_only():
    out = _python(
        """
        import os, ml3tf.tasks.rl_env as rl_env
        import keras, tensorflow as tf
        print(os.environ["TF_USE_LEGACY_KERAS"], rl_env.legacy_keras_active(), keras.__version__)
        """
    )
    assert out.returncode == 0, out.stderr
    flag, legacy, version = out.stdout.split()
    assert flag == "1" and legacy == "True" and version == keras.__version__
    assert "Gym has been unmaintained" not in out.stderr


def test_tensorflow_imported_first_still_works_and_warns():
    out = _python(
        """
        import logging; logging.basicConfig()
        import tensorflow as tf, keras, numpy as np
        import ml3tf.tasks.rl_env as rl_env
        net = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        env = rl_env.make_tf_env("Pendulum-v1", seed=0, max_episode_steps=3)
        ep = rl_env.collect_episodes(env, rl_env.KerasPolicy(net, env.time_step_spec(), env.action_spec()), 1)
        env.close()
        print(rl_env.legacy_keras_active(), ep["mask"].sum())
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "3.0"]
    assert "tf.keras is Keras 3" in out.stderr


def test_pip_check_lists_only_the_documented_tf_agents_pins():
    """README's install: everything resolves except what requirements-rl.txt documents."""
    out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    if "No module named pip" in out.stderr:
        pytest.skip("pip is not available in this environment")
    allowed = (
        "tf-agents 0.19.0 requires pygame",
        "tf-agents 0.19.0 has requirement tensorflow-probability~=0.23.0",
        "tf-agents 0.19.0 has requirement typing-extensions==4.5.0",
        "tf-keras 2.21.0 requires tensorflow,",
    )
    complaints = [ln for ln in out.stdout.splitlines() if ln.strip() and not ln.startswith(allowed)]
    assert complaints == [], complaints


def test_tf_is_unchanged_for_the_rest_of_the_suite():
    # conftest selects Keras 2 for tf.keras; `import keras` must still be Keras 3 everywhere.
    assert keras.__version__.startswith("3.") and rl_env.legacy_keras_active()
    assert f"{os.sep}tf_keras{os.sep}" in tf.keras.__file__
