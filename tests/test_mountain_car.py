"""MountainCar (authors' physics): TF step vs NumPy, iLQR vs Riccati, the TF-Agents environment,
the policy wrapper, a tiny end-to-end run, bad input."""

import json

import numpy as np
import pytest
import tensorflow as tf

import ml3tf
from ml3tf import tasks
from ml3tf.functional import FunctionalModel
from ml3tf.tasks import mountain_car as mc
from ml3tf.tasks.ilqr import ilqr, lqr_riccati, quadratic_cost, rollout
from tests.numerics import dense_forward_bound

# (p, v, a) chosen to hit every branch of the step: free motion, |v| > 1.5 both ways,
# p > 0.5, p < −1.2 with v < 0 (v := 0 at the wall), p < −1.2 with v ≥ 0 impossible after
# the update, exactly at the wall moving right, and actions outside ±0.25 (clipped).
CASES = np.array(
    [
        [-0.55, 0.0, 0.1],
        [-0.3, 0.4, -0.2],
        [-0.52, 1.49, 0.25],  # v > 1.5 after the update
        [-0.2, -1.49, -0.25],  # v < −1.5 after the update
        [0.48, 1.2, 0.25],  # p > 0.5: clipped to 0.5
        [-1.17, -0.9, -0.25],  # p < −1.2: clipped, v < 0 -> 0
        [-1.2, 0.3, 0.25],  # at the wall, moving right: v kept
        [-0.9, 0.0, 3.0],  # action above the bound: clipped to 0.25
        [-0.9, 0.0, -3.0],  # below: clipped to −0.25
    ]
)


def _branches(p, v, a):
    a = np.clip(a, -0.25, 0.25)
    v1 = v + (-9.8 * 0.2 * np.cos(3 * p) + a / 0.2 - 0.3 * v) * 0.1
    p1 = p + v1 * 0.1
    return v1 > 1.5, v1 < -1.5, p1 > 0.5, (p1 < -1.2) & (np.clip(v1, -1.5, 1.5) < 0)


def test_every_clipping_branch_is_exercised():
    hits = np.array([_branches(*c) for c in CASES])
    assert hits.any(axis=0).all()


@pytest.mark.parametrize("dtype", [tf.float64, tf.float32])
@pytest.mark.parametrize("straight_through", [True, False])
def test_tf_step_equals_numpy_transcription(dtype, straight_through):
    states, actions = CASES[:, :2], CASES[:, 2]
    want = mc.step_numpy(states, actions)
    got = mc.step(tf.constant(states, dtype), tf.constant(actions, dtype), straight_through).numpy()
    # float32 (elementwise, so the same on every IEEE machine but for cos's ulps): the inputs,
    # constants, 3p, cos(3p) (≤ 19u), the bracket's sums and products and the two updates, each
    # rounded at ≤ u·|value ≤ 3.6| and passed on with a slope ≤ 1.1, total ≤ 11u = 6.6e-7 in v
    # and less in p; float64 is ~1e-15. A wrong constant or branch is off by ≥ 1e-3.
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    assert want[5, 0] == -1.2 and want[5, 1] == 0.0  # the left wall stops the car
    assert want[4, 0] == 0.5 and want[2, 1] == 1.5 and want[3, 1] == -1.5
    # a whole batched rollout, too (TF float64 vs NumPy, 35 steps)
    rng = np.random.default_rng(0)
    s_np = np.tile(np.array(mc.START), (8, 1))
    s_tf = tf.constant(s_np, tf.float64)
    for _ in range(35):
        a = rng.uniform(-0.4, 0.4, size=8)
        s_np = mc.step_numpy(s_np, a)
        s_tf = mc.step(s_tf, tf.constant(a), straight_through)
    # float64 on both sides: the difference stays ~1e-15 × the 35 steps' growth; 1e-6 is there to
    # catch a wrong branch or constant (≥ 1e-3), not rounding
    np.testing.assert_allclose(s_tf.numpy(), s_np, atol=1e-6)


def test_gradient_of_the_step_matches_finite_differences_inside_the_bounds():
    s = tf.constant([-0.4, 0.2], tf.float64)
    a = tf.constant(0.1, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch([s, a])
        out = tf.reduce_sum(mc.step(s, a) * tf.constant([1.0, 2.0], tf.float64))
    gs, ga = tape.gradient(out, [s, a])
    eps = 1e-6

    def f(s_, a_):
        return float(mc.step_numpy(s_, a_) @ np.array([1.0, 2.0]))

    fd_s = [(f(s.numpy() + eps * e, 0.1) - f(s.numpy() - eps * e, 0.1)) / (2 * eps) for e in np.eye(2)]
    fd_a = (f(s.numpy(), 0.1 + eps) - f(s.numpy(), 0.1 - eps)) / (2 * eps)
    np.testing.assert_allclose(gs.numpy(), fd_s, rtol=1e-6)
    np.testing.assert_allclose(float(ga), fd_a, rtol=1e-6)
    # analytic Jacobians used by iLQR agree with autodiff
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([s, a])
        nxt = mc.step(s, a)
    jac_s = tape.jacobian(nxt, s).numpy()
    jac_a = tape.jacobian(nxt, a).numpy()
    ja, jb = mc._jacobians(s.numpy(), np.array([0.1]))
    np.testing.assert_allclose(ja, jac_s, rtol=1e-9)
    np.testing.assert_allclose(jb[:, 0], jac_a, rtol=1e-9)


def test_clip_gradient_modes_differ_only_in_the_gradient():
    s = tf.constant([[0.45, 1.4]], tf.float64)  # p goes past 0.5: clipped
    for st, want in ((True, 1.0), (False, 0.0)):
        with tf.GradientTape() as tape:
            tape.watch(s)
            p = mc.step(s, tf.constant([0.0], tf.float64), straight_through=st)[0, 0]
        assert float(p) == 0.5
        assert float(tape.gradient(p, s)[0, 1]) == pytest.approx(want * 0.1 * 0.97)


def _lqr_problem():
    rng = np.random.default_rng(1)
    a = np.eye(3) + 0.1 * rng.normal(size=(3, 3))
    b = rng.normal(size=(3, 2))
    q, r, qf = np.diag([1.0, 2.0, 0.5]), np.diag([0.3, 0.1]), 5.0 * np.eye(3)
    return rng, a, b, q, r, qf


def _riccati_error_bound(a, b, q, r, qf, gains):
    """A forward-error bound on K_t for two float64 evaluations of the same Riccati recursion
    in different op orders (iLQR's Cholesky pass on 2Q, 2R vs ``lqr_riccati``'s LU solve).

    Each step rounds P_t and K_t locally at a relative c·eps (c = 16: a few flops per entry for
    n = 3, with the cancellation in P = Q + A'PA − A'PB S⁻¹ B'PA), amplified by κ(S_t),
    S_t = R + B'P_{t+1}B, in the solve; an error δP in P_{s} reaches P_t (t < s) as
    A_cl' δP A_cl once per step in between (A_cl = A + BK; to first order δK drops out of P
    because K is optimal), so it grows at most by G = max_{t≤s} Π_{t≤i<s} ‖A_cl,i‖². Summed
    over the T steps: |δK| ≤ T · G · max κ(S) · c · eps · max|K|.
    """
    p, conds, norms = np.asarray(qf, np.float64), [], []
    for k in gains[::-1]:
        conds.append(np.linalg.cond(r + b.T @ p @ b))
        norms.append(np.linalg.norm(a + b @ k, 2) ** 2)
        p = q + a.T @ p @ a + a.T @ p @ b @ k
    growth = max(np.prod(norms[i:j]) for i in range(len(norms)) for j in range(i, len(norms) + 1))
    return len(gains) * growth * max(conds) * 16 * np.finfo(np.float64).eps * np.abs(gains).max()


def test_ilqr_equals_closed_form_lqr():
    rng, a, b, q, r, qf = _lqr_problem()
    x0, horizon = np.array([1.0, -2.0, 0.5]), 12
    cost = quadratic_cost(q, r, qf, np.zeros(3))
    sol = ilqr(
        lambda x, u: a @ x + b @ u,
        lambda x, u: (a, b),
        cost,
        x0,
        rng.normal(size=(horizon, 2)),  # any initial controls: one Newton step is exact
        iterations=5,
        regularization=0.0,
    )
    gains = lqr_riccati(a, b, q, r, qf, horizon)
    xs = [x0]
    us = []
    for t in range(horizon):
        us.append(gains[t] @ xs[-1])
        xs.append(a @ xs[-1] + b @ us[-1])
    # Gains: the bound above is 1.3e-12 for this problem (T = 12, κ(S) ≤ 4.5, G ≈ 7,
    # max|K| = 1.06); the two recursions agree to ~1e-15 in practice. The gains of a
    # regularised pass (μ = 1e-6, the bug this guards against) are off by 6e-7, and any
    # μ ≳ 1e-11 is caught.
    gain_tol = _riccati_error_bound(a, b, q, r, qf, gains)
    assert gain_tol < 1e-10
    np.testing.assert_allclose(sol.gains, gains, rtol=0, atol=gain_tol)
    assert sol.regularization == 0.0
    # Trajectory: one Newton step from random ū (|ū| ≤ 2.7, |x̄| ≤ 6, |k| ≤ 5.6), so rounding
    # acts on values up to ~10 (10× the gains' scale) in the same recursion, then propagates
    # through A_cl over 12 steps (G ≈ 7): ≲ 10 · 7 · 1.3e-12 ≈ 1e-10, under 1e-8 with margin
    # (measured: 4e-15). A wrong control at any step (a bug) moves them by O(0.1..1); the
    # μ = 1e-6 gains would move them by ~1e-6.
    np.testing.assert_allclose(sol.controls, np.stack(us), atol=1e-8)
    np.testing.assert_allclose(sol.states, np.stack(xs), atol=1e-8)
    assert sol.costs[-1] <= sol.costs[0]
    # Both trajectories obey the dynamics from x_0, so they differ by a control perturbation
    # δu ≲ 1e-10 at the optimum, where J is stationary: δJ = O(|δu|²) plus the rounding of the
    # 25-term sum (~25 eps relative); rtol 1e-10 is far above both. A cost that is not the
    # returned trajectory's (a stale entry, a term left out: the bug) is off by O(1).
    np.testing.assert_allclose(sol.costs[-1], cost.total(np.stack(xs), np.stack(us)), rtol=1e-10)


def _spy_backward(monkeypatch):
    """Record every backward pass iLQR runs: (states, controls, μ, (k, K) or None)."""
    import ml3tf.tasks.ilqr as ilqr_mod

    passes, real = [], ilqr_mod._backward

    def spy(jacobians, cost, xs, us, mu):
        out = real(jacobians, cost, xs, us, mu)
        passes.append((xs.copy(), us.copy(), mu, out))
        return out

    monkeypatch.setattr(ilqr_mod, "_backward", spy)
    return passes


def test_ilqr_returns_the_gains_of_the_pass_that_produced_the_trajectory(monkeypatch):
    """After convergence the line search fails, μ rises and the backward pass runs again
    (regularised): those passes must not replace the returned gains.

    x' = x + u, J = u_0² + x_1², x_0 = 2, T = 1, from u_0 = 0, μ = 0. Every intermediate is
    a small dyadic rational, so the arithmetic is exact on any IEEE machine: the first pass
    gives Q_uu = 4, Q_ux = 2, Q_u = 4, so k = −1, K = −½; its α = 1 step reaches the optimum
    u_0 = −1, x_1 = 1, J = 2. The second pass there gives k = 0 exactly, so no α changes J,
    the line search fails, and μ goes 1e-6 … 1e10, each pass giving K = −2/(4 + μ) ≠ −½
    (before the fix the μ = 1e10 pass was returned: K ≈ −2e-10).
    """
    passes = _spy_backward(monkeypatch)
    cost = quadratic_cost([[0.0]], [[1.0]], [[1.0]], [0.0])
    sol = ilqr(
        lambda x, u: x + u, lambda x, u: (np.eye(1), np.eye(1)), cost, [2.0], [[0.0]], regularization=0
    )
    np.testing.assert_array_equal(sol.controls, [[-1.0]])
    np.testing.assert_array_equal(sol.states, [[2.0], [1.0]])
    assert sol.costs == [4.0, 2.0]
    # the path under test ran: regularised passes at the returned trajectory after the accepted step
    assert [mu for *_, mu, _ in passes[:2]] == [0.0, 0.0] and len(passes) > 2
    assert all(mu > 0 and np.array_equal(xs, sol.states) for xs, _, mu, _ in passes[2:])
    # the gains of the pass whose forward pass produced the trajectory (the first), which here
    # (linear-quadratic: K does not depend on the trajectory) equal the unregularised pass at it
    ff0, gains0 = passes[0][3]
    np.testing.assert_array_equal(sol.gains, gains0)
    np.testing.assert_array_equal(sol.gains, passes[1][3][1])
    np.testing.assert_array_equal(sol.gains, [[[-0.5]]])
    np.testing.assert_array_equal(sol.feedforward, ff0)
    np.testing.assert_array_equal(sol.feedforward, [[-1.0]])
    assert sol.regularization == 0.0


def test_ilqr_started_at_the_optimum_returns_the_least_regularised_gains(monkeypatch):
    """x_0 = goal, ū = 0: J = 0 exactly and every pass gives k = 0 exactly (Q_u = 0), so no step
    is ever accepted and μ rises to 1e10. The returned gains are those of the first pass, at the
    (initial = returned) trajectory with μ = 0: the Riccati gains, within the bound derived in
    ``_riccati_error_bound``."""
    passes = _spy_backward(monkeypatch)
    _, a, b, q, r, qf = _lqr_problem()
    horizon = 12
    cost = quadratic_cost(q, r, qf, np.zeros(3))
    sol = ilqr(
        lambda x, u: a @ x + b @ u,
        lambda x, u: (a, b),
        cost,
        np.zeros(3),
        np.zeros((horizon, 2)),
        regularization=0,
    )
    assert sol.costs == [0.0] and len(passes) > 1 and passes[-1][2] > 1e9
    np.testing.assert_array_equal(sol.gains, passes[0][3][1])
    gains = lqr_riccati(a, b, q, r, qf, horizon)
    np.testing.assert_allclose(sol.gains, gains, rtol=0, atol=_riccati_error_bound(a, b, q, r, qf, gains))
    np.testing.assert_array_equal(sol.feedforward, np.zeros((horizon, 2)))
    assert sol.regularization == 0.0


def test_ilqr_on_mountain_car_runs_and_respects_the_bounds():
    task = tasks.get("mountain_car")
    out = task.ilqr_baseline(iterations=30)
    assert out["states"].shape == (36, 2) and out["actions"].shape == (35,)
    assert np.all(np.abs(out["actions"]) <= 0.25)
    assert out["costs"][-1] <= out["costs"][0]
    states = rollout(lambda x, u: mc.step_numpy(x, u[0]), np.array(mc.START), out["actions"][:, None])
    np.testing.assert_allclose(states, out["states"])


def test_features_losses_and_rollout_match_numpy():
    task = tasks.get("mountain_car")
    f = FunctionalModel(task.make_learner())
    params = f.init_params([3, 4])
    start = np.array(mc.START, np.float32)
    states, actions = task.rollout(f, params, start)
    w = (params[0].numpy() @ params[1].numpy())[:, 0]  # the policy is linear: a = w·s
    ref_s, ref_a = mc.rollout_numpy(lambda s: w @ s)
    # TF float32 against NumPy float64. The policy a = (s W₁) W₂ (200 hidden units) is a sum
    # that cancels to |a| ≤ 0.0025: its float32 forward bound (``tests.numerics``) is ~1e-5,
    # above the old atol 1e-5 for the actions, so that is their tolerance now (measured 1.5e-8).
    # The states: each step's own roundings are ≤ 1.6u here (|p| ≤ 0.55, |v| ≤ 0.06, cos within
    # 3u; see test_tf_step_equals_numpy_transcription) and the action's enter v with slope 0.5;
    # an error made at one step reaches a later one through the product of the closed-loop
    # Jacobians in between (mc._jacobians + w; no clip acts), of norm ≤ 2.24 on this trajectory.
    # The step roundings give ≤ 35·2.24·1.6u = 7.5e-6; the policy's, at their typical √200·u
    # size rather than the worst case, about as much: atol 1e-5 (measured 2e-7). A wrong
    # constant or clip is off by ≥ 1e-3 in the states, a wrong policy by ≥ 1e-4 in the actions.
    np.testing.assert_allclose(states.numpy(), ref_s, atol=1e-5)
    policy_bound = dense_forward_bound([(p.numpy(), None, "linear") for p in params], ref_s[:-1])[1].max()
    np.testing.assert_allclose(actions.numpy()[:, 0], ref_a, atol=policy_bound + 1e-5 * np.abs(w).sum())
    feats, _ = task.meta_loss_inputs(f, params, [], {"start": start})
    goal = np.array(mc.GOAL)
    assert feats.shape == (35, 4)
    np.testing.assert_allclose(feats[:, 3], np.linalg.norm(ref_s[-1] - goal), rtol=1e-5)
    lt = task.task_loss(f, params, [], {"start": start})
    np.testing.assert_allclose(float(lt), np.linalg.norm(ref_s - goal, axis=1).mean(), rtol=1e-5)
    le = task.extra_loss(f, params, [], {"start": start}, {})
    sub = np.array(mc.SUBGOAL)
    want = np.linalg.norm(ref_s[:15] - sub, axis=1).mean() + np.linalg.norm(ref_s[15:] - goal, axis=1).mean()
    np.testing.assert_allclose(float(le), want, rtol=1e-5)


def test_tiny_end_to_end_run(tmp_path):
    task = tasks.get(
        "mountain_car", horizon=5, subgoal_steps=2, policy_hidden=8, meta_loss_hidden=(16,), n_test_policies=2
    )
    cfg = task.default_config().replace(
        meta_steps=3, task_loss_weight=0.0, extra_loss_weight=1.0, learner_init="fixed", checkpoint_every=3
    )
    run = ml3tf.train(task, cfg, str(tmp_path), seeds=[0, 1])
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["task"] == "mountain_car" and res["metric"] == "final_distance" and res["seeds"] == [0, 1]
    curve = res["curves"]["test"]["learned"]["mean"]
    assert len(curve) == cfg.eval_steps + 1 and np.all(np.isfinite(curve))
    # both arms start from the same fresh policies
    assert curve[0] == pytest.approx(res["curves"]["test"]["baseline"]["mean"][0])
    assert set(res["success_rate"]) == {"train", "test"}
    for split in ("train", "test"):
        assert set(res["success_rate"][split]) == {"learned", "baseline"}
        assert len(res["success_rate"][split]["learned"]["curve"]) == cfg.eval_steps + 1
        per = np.asarray(res["success_rate"][split]["learned"]["per_seed_curve"])  # (seeds, steps+1)
        assert per.shape == (2, cfg.eval_steps + 1)
        np.testing.assert_allclose(per.mean(axis=0), res["success_rate"][split]["learned"]["curve"])
        np.testing.assert_allclose(per[:, -1], res["success_rate"][split]["learned"]["per_seed"])
        assert np.shape(res["trajectories"][split]["learned"]) == (cfg.eval_steps + 1, 6)
    # the train split starts from the meta-train policy θ₀ (learner_init="fixed")
    trainer = ml3tf.MetaTrainer(task, cfg.replace(seed=1))
    theta0 = trainer.learner.init_params(trainer.init_seeds(5)[0])
    for got, want in zip(task.train_params(1), theta0, strict=True):
        np.testing.assert_array_equal(got[0], want.numpy())
    metrics = [json.loads(x) for x in (tmp_path / "seed_0" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 3 and all(m["extra_loss"] > 0 and m["meta_grad_norm"] > 0 for m in metrics)
    assert run.meta_loss_paths and (tmp_path / "results.png").exists()


def test_fixed_learner_init_reuses_theta0():
    task = tasks.get("mountain_car", horizon=4, subgoal_steps=2, policy_hidden=4, meta_loss_hidden=(4,))
    fixed = ml3tf.MetaTrainer(task, task.default_config().replace(learner_init="fixed", seed=2))
    fresh = ml3tf.MetaTrainer(task, task.default_config().replace(learner_init="fresh", seed=2))
    np.testing.assert_array_equal(fixed.init_seeds(0), fixed.init_seeds(7))
    assert not np.array_equal(fresh.init_seeds(0), fresh.init_seeds(7))
    np.testing.assert_array_equal(fixed.init_seeds(0), fresh.init_seeds(0))
    with pytest.raises(ValueError, match="learner_init"):
        task.default_config().replace(learner_init="frozen")


def test_bad_input():
    with pytest.raises(ValueError, match="horizon"):
        tasks.get("mountain_car", horizon=0)
    with pytest.raises(ValueError, match="subgoal_steps"):
        tasks.get("mountain_car", subgoal_steps=40)
    with pytest.raises(ValueError, match="start"):
        tasks.get("mountain_car", start=(2.0, 0.0))
    with pytest.raises(ValueError, match="goal"):
        tasks.get("mountain_car", goal=(0.5,))
    with pytest.raises(ValueError, match="straight_through"):
        tasks.get("mountain_car", straight_through="yes")
    with pytest.raises(TypeError):
        tasks.get("mountain_car", horizont=3)
    with pytest.raises(ValueError, match=r"action must lie in \[-0.25, 0.25\], got 0.3"):
        mc.check_action(0.3)
    with pytest.raises(ValueError, match="action"):
        mc.check_action(float("nan"))
    with pytest.raises(ValueError, match="u_init"):
        ilqr(
            lambda x, u: x,
            lambda x, u: (np.eye(2), np.zeros((2, 1))),
            quadratic_cost(np.eye(2), np.eye(1), np.eye(2), np.zeros(2)),
            np.zeros(2),
            np.zeros(3),
        )
    with pytest.raises(ValueError, match="R must be"):
        quadratic_cost(np.eye(2), -np.eye(1), np.eye(2), np.zeros(2))


# --- the real environment through TF-Agents ------------------------------------------------


@pytest.fixture(scope="module")
def mce():
    pytest.importorskip("tf_agents", reason="RL extras not installed (README 'Reinforcement learning')")
    import ml3tf.tasks.mountain_car_env as mce

    return mce


def test_environment_through_tf_agents_equals_the_tf_rollout(mce):
    task = tasks.get("mountain_car")
    learner = task.make_learner()
    f = FunctionalModel(learner)
    params = f.init_params([0, 5])
    params = [params[0] * 4.0, params[1] * 4.0]  # a policy that hits the action bounds
    states, actions = task.rollout(f, params, np.array(mc.START, np.float32))
    out = mce.run_policy(learner, params)
    assert out["states"].shape == (36, 2)
    # The environment steps the physics in NumPy float64, the TF rollout in float32: a few u per
    # step, carried along by the closed loop and reset wherever a clip acts (the car reaches the
    # wall and the speed limit; 33 of the 35 actions sit at ±0.25, ≥ 0.08 inside the raw
    # policy's range, so no clip decision can flip). Measured ≤ 1.2e-7 in the states; atol 1e-5
    # leaves ~80× for other machines' cos/dot-product rounding. The two unclipped actions are
    # w·s with |w|₁ = 4.0 (4 × the states' 1e-5), each computed by the 2 → 200 → 1 policy in
    # float32 within its forward bound (``tests.numerics``: 2.6e-5 at those states, twice for
    # the two evaluations): atol 1e-4 (the old 1e-6 was below both; measured 7e-8). Other
    # physics or a missed clip is off by ≥ 1e-2.
    np.testing.assert_allclose(out["states"], states.numpy(), atol=1e-5)
    np.testing.assert_allclose(out["actions"], actions.numpy()[:, 0], atol=1e-4)
    want_return = -np.linalg.norm(states.numpy()[1:] - np.array(mc.GOAL), axis=1).sum()
    assert out["return"] == pytest.approx(want_return, rel=1e-5)
    assert np.any(np.isclose(np.abs(out["actions"]), 0.25)) and np.any(np.abs(out["actions"]) < 0.2)


def test_policy_wrapper_equals_the_keras_network(mce):
    import ml3tf.tasks.rl_env as rl_env

    task = tasks.get("mountain_car")
    learner = task.make_learner()
    f = FunctionalModel(learner)
    params = f.init_params([1, 1])
    tf_env = rl_env.make_tf_env(mce.AuthorsMountainCarEnv())
    try:
        policy = rl_env.KerasPolicy(learner, tf_env.time_step_spec(), tf_env.action_spec(), params=params)
        obs = tf.constant([[-0.55, 0.0], [0.1, -0.7], [-1.0, 1.2]], tf.float32)
        # the same stateless_call of the same network on the same (3, 2) batch runs the same ops
        # on both sides (measured bit-identical), so 1e-6 is slack, not a rounding allowance
        np.testing.assert_allclose(policy.mean_action(obs).numpy(), f(params, obs).numpy(), rtol=1e-6)
    finally:
        tf_env.close()


def test_environment_bad_input(mce):
    env = mce.AuthorsMountainCarEnv()
    env.reset()
    with pytest.raises(ValueError, match="action must lie in"):
        env.step(np.array([0.5], np.float32))
    with pytest.raises(ValueError, match="horizon"):
        mce.AuthorsMountainCarEnv(horizon=0)
    with pytest.raises(ValueError, match="action_scale"):
        mce.run_policy(tasks.get("mountain_car").make_learner(), action_scale=-1.0)


def test_adapted_policy_through_tf_agents_equals_meta_test(mce):
    """A policy trained one SGD step on a (random) learned loss, rolled out in the environment
    through TF-Agents, follows the trajectory meta-test computed in TensorFlow."""
    import keras

    task = tasks.get("mountain_car", n_test_policies=1, horizon=10, subgoal_steps=5)
    keras.utils.set_random_seed(0)
    meta_loss = ml3tf.MetaLossNetwork(4, (16,), activation="elu", use_bias=True, output_activation="linear")
    params0 = task.train_params(3)
    out = task.meta_test(meta_loss, params0, task.default_config().replace(inner_lr=1.0), steps=1)
    theta = [p[0] for p in out["params"]]
    assert not np.allclose(theta[0], params0[0][0])  # the step moved the policy
    env_out = mce.run_policy(task.make_learner(), theta, env=mce.AuthorsMountainCarEnv(horizon=10))
    assert env_out["states"].shape == (11, 2)
    # float64 environment vs float32 meta-test: every action is clipped at −0.25 (the raw ones
    # are ≤ −0.36), so it is 10 open-loop steps of ≤ 12u each, grown by ≤ 2.2 along them:
    # ≤ 10·2.2·12u = 1.6e-5 (measured 9e-8). Another θ or physics is off by ≥ 1e-2.
    np.testing.assert_allclose(env_out["states"][:, 0], out["positions"][0, -1], atol=1e-4)
    np.testing.assert_allclose(env_out["states"][:, 1], out["velocities"][0, -1], atol=1e-4)


def test_gymnasium_mountain_car_continuous_runs_with_scaled_actions(mce):
    task = tasks.get("mountain_car")
    learner = task.make_learner()
    params = FunctionalModel(learner).init_params([0, 2])
    env = mce.gymnasium.make("MountainCarContinuous-v0", max_episode_steps=20)
    out = mce.run_policy(learner, params, env=env, action_scale=4.0)
    assert out["states"].shape == (21, 2) and out["actions"].shape == (20,)
    f = FunctionalModel(learner)
    obs = out["states"][:-1].astype(np.float32)
    want = np.clip(4.0 * f(params, obs).numpy()[:, 0], -1.0, 1.0)
    # The policy (2 → 200 → 1, linear) on the same float32 observations, one at a time in the
    # environment and batched here: two float32 evaluations in other summation orders, each
    # within its forward bound (``tests.numerics``; the 200-term sums make it ~1e-5), scaled
    # by 4 (measured 1.2e-7; the old atol 1e-6 was below the bound). A missing action scale or
    # clip is off by ≥ 0.1.
    kernels = [(p.numpy(), None, "linear") for p in params]
    atol = 2 * 4.0 * dense_forward_bound(kernels, obs)[1].max()
    np.testing.assert_allclose(out["actions"], want, rtol=1e-5, atol=atol)
    # gymnasium's own physics: v' = v + 0.0015·a − 0.0025·cos(3p), p' = p + v'
    p, v = out["states"][0]
    v1 = v + 0.0015 * want[0] - 0.0025 * np.cos(3 * p)
    np.testing.assert_allclose(out["states"][1], [p + v1, v1], rtol=1e-5, atol=1e-6)


def test_runs_written_before_learner_init_existed_stay_resumable(tmp_path):
    from ml3tf.run import _check_resume, _run_record

    task = tasks.get("mountain_car")
    record = _run_record(task, task.default_config().replace(learner_init="fresh"), [0])
    old = json.loads(json.dumps(record))
    del old["config"]["learner_init"]  # a config.json from before the field (and before "seeds")
    del old["seeds"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    (tmp_path / "meta_loss.keras").write_bytes(b"")  # the folder holds a run: its record is compared
    _check_resume(str(tmp_path), record)  # the default ("fresh") is what the old run used
    with pytest.raises(ValueError, match="learner_init"):
        _check_resume(str(tmp_path), _run_record(task, task.default_config(), [0]))  # "fixed" differs


@pytest.mark.slow
def test_extra_information_reaches_the_goal_in_most_seeds_and_ilqr_does_not(tmp_path):
    """The issue's acceptance, at the default protocol (about 2 minutes on 2 cores)."""
    task = tasks.get("mountain_car")
    cfg = task.default_config().replace(task_loss_weight=0.0, extra_loss_weight=1.0)
    seeds = [0, 1, 2, 3, 4]
    run = ml3tf.train(task, cfg, str(tmp_path), seeds=seeds)
    reached = run.results["success_rate"]["train"]["learned"]["per_seed"]
    assert sum(r == 1.0 for r in reached) >= 3, reached
    assert run.results["success_rate"]["train"]["baseline"]["mean"] == 0.0  # SGD on the task loss
    ilqr_out = task.ilqr_baseline(iterations=200)
    assert ilqr_out["states"][:, 0].max() < 0.5
