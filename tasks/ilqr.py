"""Iterative LQR (Li & Todorov 2004; Tassa et al. 2012), a plain NumPy solver.

Finite-horizon optimal control of x_{t+1} = f(x_t, u_t) from a fixed x_0 with cost

    J = Σ_{t<T} ℓ(x_t, u_t) + ℓ_T(x_T)

Each iteration linearises f along the current trajectory (A_t = ∂f/∂x, B_t = ∂f/∂u),
takes second-order cost expansions, and runs the backward Riccati-like pass

    Q_x  = ℓ_x + A'V_x          Q_u  = ℓ_u + B'V_x
    Q_xx = ℓ_xx + A'V_xx A      Q_uu = ℓ_uu + B'V_xx B + μI      Q_ux = ℓ_ux + B'V_xx A
    k = −Q_uu⁻¹ Q_u,  K = −Q_uu⁻¹ Q_ux
    V_x  = Q_x + K'Q_uu k + K'Q_u + Q_ux'k      V_xx = Q_xx + K'Q_uu K + K'Q_ux + Q_ux'K

then the forward pass u_t = ū_t + α k_t + K_t (x_t − x̄_t) (clipped to ``u_bounds``),
with a line search over α and Levenberg–Marquardt adaptation of μ: ÷10 after an accepted
step (0 once μ ≤ 1e-12), ×10 (at least 1e-6) when no α lowers J or Q_uu is not positive
definite, giving up above 1e10. On a linear system with a quadratic cost one iteration from
any ū (α = 1, μ = 0) is the closed-form LQR solution (tested against the Riccati recursion).

The returned K_t, k_t and μ are those of the backward pass whose forward pass produced the
returned trajectory (x̄, ū), so u_t = ū_t + K_t (x − x̄_t) is the feedback law that generated
it (where no control was clipped). The passes that run after the last accepted step (once J
cannot decrease in floating point the line search fails and μ rises) do not replace them. If
no step was accepted, the returned trajectory is the initial one and they come from the
first (least regularised) backward pass at it.

Example:
    >>> A, B, x0 = np.array([[1.0, 0.1], [0.0, 1.0]]), np.array([[0.0], [0.1]]), np.array([1.0, 0.0])
    >>> cost = quadratic_cost(np.eye(2), np.eye(1), np.eye(2), goal=np.zeros(2))
    >>> sol = ilqr(lambda x, u: A @ x + B @ u, lambda x, u: (A, B), cost, x0, np.zeros((20, 1)))
    >>> sol.controls.shape
    (20, 1)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

Dynamics = Callable[[np.ndarray, np.ndarray], np.ndarray]
Jacobians = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class QuadraticCost:
    """ℓ(x, u) = (x − g)'Q(x − g) + u'Ru;  ℓ_T(x) = (x − g)'Q_T(x − g)."""

    Q: np.ndarray
    R: np.ndarray
    Q_terminal: np.ndarray
    goal: np.ndarray

    def stage(self, x: np.ndarray, u: np.ndarray) -> float:
        d = x - self.goal
        return float(d @ self.Q @ d + u @ self.R @ u)

    def terminal(self, x: np.ndarray) -> float:
        d = x - self.goal
        return float(d @ self.Q_terminal @ d)

    def total(self, xs: np.ndarray, us: np.ndarray) -> float:
        return sum(self.stage(x, u) for x, u in zip(xs[:-1], us, strict=True)) + self.terminal(xs[-1])


def quadratic_cost(Q: np.ndarray, R: np.ndarray, Q_terminal: np.ndarray, goal: np.ndarray) -> QuadraticCost:
    """A ``QuadraticCost``; Q, Q_T symmetric positive semi-definite, R positive definite.

    Raises:
        ValueError: shapes that do not fit, or R not positive definite.
    """
    Q, R, Qf, goal = (np.atleast_2d(np.asarray(a, np.float64)) for a in (Q, R, Q_terminal, goal))
    goal = goal.reshape(-1)
    n, m = len(goal), R.shape[0]
    if Q.shape != (n, n) or Qf.shape != (n, n):
        raise ValueError(
            f"Q and Q_terminal must be ({n}, {n}) for a goal of size {n}, got {Q.shape}, {Qf.shape}"
        )
    if R.shape != (m, m) or np.any(np.linalg.eigvalsh((R + R.T) / 2) <= 0):
        raise ValueError(f"R must be a square positive definite matrix, got {R.tolist()!r}")
    return QuadraticCost(Q, R, Qf, goal)


@dataclass
class ILQRSolution:
    """What ``ilqr`` returns: the trajectory, the feedback law and the cost per iteration."""

    states: np.ndarray
    """x_0 … x_T, ``(T+1, n)``."""
    controls: np.ndarray
    """u_0 … u_{T−1}, ``(T, m)``."""
    gains: np.ndarray
    """K_t of the backward pass that produced ``states``/``controls`` (module docstring), ``(T, m, n)``;
    zeros if no backward pass succeeded."""
    feedforward: np.ndarray
    """k_t of that backward pass, ``(T, m)``: the step it proposed (the forward pass took α k_t)."""
    regularization: float
    """μ of that backward pass (0: the exact Newton/LQR gains); NaN if no backward pass succeeded."""
    costs: list[float] = field(default_factory=list)
    """J after each accepted iteration (first entry: the initial controls)."""


def rollout(dynamics: Dynamics, x0: np.ndarray, controls: np.ndarray) -> np.ndarray:
    """States ``(T+1, n)`` of ``controls`` applied open loop from ``x0``."""
    xs = [np.asarray(x0, np.float64)]
    for u in controls:
        xs.append(np.asarray(dynamics(xs[-1], u), np.float64))
    return np.stack(xs)


def ilqr(
    dynamics: Dynamics,
    jacobians: Jacobians,
    cost: QuadraticCost,
    x0: np.ndarray,
    u_init: np.ndarray,
    iterations: int = 100,
    u_bounds: tuple[float, float] | None = None,
    regularization: float = 1e-6,
    tolerance: float = 1e-9,
    line_search: tuple[float, ...] = (1.0, 0.5, 0.25, 0.1, 0.05, 0.01),
) -> ILQRSolution:
    """Minimise ``cost`` over the controls by iterative LQR (see the module docstring).

    Args:
        dynamics: ``f(x, u) -> x'``.
        jacobians: ``(x, u) -> (∂f/∂x (n, n), ∂f/∂u (n, m))``.
        cost: a ``QuadraticCost``.
        x0: the start state ``(n,)``.
        u_init: the initial controls ``(T, m)``.
        iterations: maximum number of iterations.
        u_bounds: ``(low, high)``: the forward pass clips the controls (simple box handling).
        regularization: initial μ added to Q_uu (0 for the exact Newton/LQR step).
        tolerance: stop when the relative cost decrease falls below it.
        line_search: step sizes α tried in the forward pass, in order.

    Raises:
        ValueError: bad shapes or options, naming the argument.
    """
    x0 = np.asarray(x0, np.float64).reshape(-1)
    us = np.asarray(u_init, np.float64)
    if us.ndim != 2 or us.shape[0] < 1:
        raise ValueError(f"u_init must have shape (T, m) with T >= 1, got {us.shape}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
    if not (np.isfinite(regularization) and regularization >= 0):
        raise ValueError(f"regularization must be a finite number >= 0, got {regularization!r}")
    if x0.shape != cost.goal.shape:
        raise ValueError(f"x0 must have the goal's shape {cost.goal.shape}, got {x0.shape}")
    if u_bounds is not None:
        lo, hi = u_bounds
        if not lo < hi:
            raise ValueError(f"u_bounds must be (low, high) with low < high, got {u_bounds!r}")
        us = np.clip(us, lo, hi)
    n, m, horizon = len(x0), us.shape[1], us.shape[0]
    xs = rollout(dynamics, x0, us)
    j = cost.total(xs, us)
    costs = [j]
    mu = float(regularization)
    # (k, K, μ) of the backward pass that produced (xs, us): replaced only when a step is
    # accepted (or by the first successful pass while (xs, us) is still the initial trajectory),
    # never by the passes that run after the last accepted step.
    returned: tuple[np.ndarray, np.ndarray, float] | None = None
    for _ in range(iterations):
        backward = _backward(jacobians, cost, xs, us, mu)
        if backward is None:  # Q_uu not positive definite: regularise more
            mu = max(mu * 10.0, 1e-6)
            if mu > 1e10:
                break
            continue
        ff, gains = backward
        if returned is None:  # no step accepted yet: (xs, us) is the initial trajectory
            returned = (ff, gains, mu)
        accepted = False
        for alpha in line_search:
            new_us, new_xs = _forward(dynamics, xs, us, ff, gains, alpha, u_bounds)
            new_j = cost.total(new_xs, new_us)
            if np.isfinite(new_j) and new_j < j:
                accepted = True
                break
        if not accepted:
            mu = max(mu * 10.0, 1e-6)
            if mu > 1e10:
                break
            continue
        decrease = (j - new_j) / max(abs(j), 1e-12)
        xs, us, j = new_xs, new_us, new_j
        returned = (ff, gains, mu)
        costs.append(j)
        mu = mu / 10.0 if mu > 1e-12 else 0.0
        if decrease < tolerance:
            break
    if returned is None:
        returned = (np.zeros((horizon, m)), np.zeros((horizon, m, n)), float("nan"))
    ff, gains, mu = returned
    return ILQRSolution(states=xs, controls=us, gains=gains, feedforward=ff, regularization=mu, costs=costs)


def _backward(jacobians, cost: QuadraticCost, xs, us, mu):
    horizon, m = us.shape
    n = xs.shape[1]
    v_x = 2.0 * cost.Q_terminal @ (xs[-1] - cost.goal)
    v_xx = 2.0 * cost.Q_terminal
    ks, kk = np.zeros((horizon, m)), np.zeros((horizon, m, n))
    for t in range(horizon - 1, -1, -1):
        a, b = jacobians(xs[t], us[t])
        l_x = 2.0 * cost.Q @ (xs[t] - cost.goal)
        l_u = 2.0 * cost.R @ us[t]
        q_x = l_x + a.T @ v_x
        q_u = l_u + b.T @ v_x
        q_xx = 2.0 * cost.Q + a.T @ v_xx @ a
        q_uu = 2.0 * cost.R + b.T @ v_xx @ b + mu * np.eye(m)
        q_ux = b.T @ v_xx @ a
        q_uu = (q_uu + q_uu.T) / 2.0
        try:
            chol = np.linalg.cholesky(q_uu)
        except np.linalg.LinAlgError:
            return None
        solve = lambda rhs, c=chol: np.linalg.solve(c.T, np.linalg.solve(c, rhs))  # noqa: E731
        k = -solve(q_u)
        big_k = -solve(q_ux)
        ks[t], kk[t] = k, big_k
        v_x = q_x + big_k.T @ q_uu @ k + big_k.T @ q_u + q_ux.T @ k
        v_xx = q_xx + big_k.T @ q_uu @ big_k + big_k.T @ q_ux + q_ux.T @ big_k
        v_xx = (v_xx + v_xx.T) / 2.0
    return ks, kk


def _forward(dynamics, xs, us, ff, gains, alpha, u_bounds):
    new_xs = [xs[0]]
    new_us = []
    for t in range(len(us)):
        u = us[t] + alpha * ff[t] + gains[t] @ (new_xs[-1] - xs[t])
        if u_bounds is not None:
            u = np.clip(u, *u_bounds)
        new_us.append(u)
        new_xs.append(np.asarray(dynamics(new_xs[-1], u), np.float64))
    return np.stack(new_us), np.stack(new_xs)


def lqr_riccati(
    a: np.ndarray, b: np.ndarray, Q: np.ndarray, R: np.ndarray, Q_terminal: np.ndarray, horizon: int
) -> np.ndarray:
    """Closed-form finite-horizon discrete LQR gains K_t ``(T, m, n)`` (u_t = K_t x_t) for
    x' = a x + b u and J = Σ x'Qx + u'Ru + x_T'Q_T x_T:

        P_T = Q_T;  K_t = −(R + b'P b)⁻¹ b'P a;  P_t = Q + a'P a + a'P b K_t
    """
    p = np.asarray(Q_terminal, np.float64)
    gains = []
    for _ in range(horizon):
        k = -np.linalg.solve(R + b.T @ p @ b, b.T @ p @ a)
        p = Q + a.T @ p @ a + a.T @ p @ b @ k
        gains.append(k)
    return np.stack(gains[::-1])
