"""The authors' own 2-link reacher robot as a gymnasium environment (MuJoCo bindings).

The ML3 paper's model-based reacher (§V-B) ran on the authors' own robot: an MJCF 2-link arm
that they simulated in PyBullet with torque control. ``AuthorsReacherEnv`` rebuilds that robot
for MuJoCo from our own MJCF (``assets/authors_reacher.xml``, installed with the package) and
steps it the way the authors' simulation does:

    τ_t      = clip(a_t, −1, 1) + b(q_t, q̇_t)          (N m; b: gravity + Coriolis compensation)
    q̈_t      = M(q_t)⁻¹ (τ_t − b(q_t, q̇_t)) = M(q_t)⁻¹ clip(a_t, −1, 1)
    q̇_{t+1}  = q̇_t + dt q̈_t,   q_{t+1} = q_t + dt q̇_{t+1}                (semi-implicit Euler)

with b = MuJoCo's ``qfrc_bias`` at the state before the step (what the authors' PyBullet
inverse dynamics with zero acceleration returns), dt = 0.01 s, no joint damping, no armature,
no contacts; the hinge limits (±3 rad) are MuJoCo's soft limit constraints. The torque limit is
1 N m and there is no gear (PyBullet's torque control applies the raw value; the ``gear="200"``
of the authors' file is a MuJoCo actuator setting PyBullet never reads).

**State and observation** (the authors' layout): ``q = [θ₁, θ₂, θ̇₁, θ̇₂]`` (shoulder, elbow; rad,
rad/s), float64. **Fingertip** (x, y) by forward kinematics (link lengths l₁ = 0.1, l₂ = 0.11 m),

    p = (l₁ cos θ₁ + l₂ cos(θ₁ + θ₂),  l₁ sin θ₁ + l₂ sin(θ₁ + θ₂))

(``fingertip_position``; the MuJoCo site in ``env.fingertip``). Reward ``−‖p − goal‖``; every
episode starts at ``start`` (default: at rest at θ = 0, the authors' reset) and is truncated
after ``horizon`` steps. ``fingertip_distance`` / ``episode_end_distance`` as in
``ml3tf.tasks.reacher.FixedGoalReacher``; ``episode_end_state`` is q after the last step (a
driver may reset the environment right after it).

**Where the robot's numbers come from** (the authors' MJCF of the arm loaded by PyBullet 3.2.7
with ``loadMJCF``, as their simulation does, read back
with ``getDynamicsInfo``/``calculateMassMatrix``): each link has the file's 2 kg at its joint,
but PyBullet ignores the file's ``diaginertia`` (the compiler's ``inertiafromgeom="true"``) and
takes the inertia of a 2 kg box around the link's capsule (0.12 × 0.02 × 0.02 m); the fingertip
sphere gets density 1000 kg/m³; the file's joint ``armature`` and ``damping`` do not reach
PyBullet's multibody (the authors also set joint, linear and angular damping to 0 before every
step); the arm geoms have ``contype="0"``, so the ground plane they load never touches the arm.
The resulting M(q) and b(q, q̇) of our MJCF equal PyBullet's to printing precision
(``bench/reacher_robot_check.py`` compares the two simulators step by step).

Deviations we chose: the time step. The authors' MJCF loader sets dt = 1/100 s (their URDF
loader 1/240 s); ``dt`` is an option, default 0.01.

Example:
    >>> from ml3tf.tasks.reacher_robot_env import AuthorsReacherEnv
    >>> env = AuthorsReacherEnv(goal=(0.0253, 0.1986))
    >>> obs, _ = env.reset()
    >>> obs, reward, terminated, truncated, info = env.step([0.5, -0.2])
"""

from __future__ import annotations

import math
import os
from typing import Any, ClassVar

import gymnasium
import numpy as np

#: Our MJCF of the authors' robot, shipped in the package (setup.py ``package_data``).
MJCF_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "authors_reacher.xml")
ENV_ID = "ml3tf/AuthorsReacher-v0"
#: The authors' reacher: link lengths (m), torque limit (N m), time step of their MJCF loader (s).
LINK_LENGTHS = (0.1, 0.11)
TORQUE_LIMIT = 1.0
DT = 0.01
#: The hinge range of both joints (rad).
JOINT_RANGE = 3.0


def fingertip_position(q: Any, l1: float = LINK_LENGTHS[0], l2: float = LINK_LENGTHS[1]) -> np.ndarray:
    """Fingertip (x, y) of joint angles ``q[..., :2]`` (module docstring's forward kinematics)."""
    q = np.asarray(q, dtype=np.float64)
    if q.shape[-1:] not in ((2,), (4,)):
        raise ValueError(f"q must end in 2 angles or a 4-vector state, got shape {q.shape}")
    t1, t12 = q[..., 0], q[..., 0] + q[..., 1]
    return np.stack([l1 * np.cos(t1) + l2 * np.cos(t12), l1 * np.sin(t1) + l2 * np.sin(t12)], axis=-1)


def _vector(value: Any, n: int, name: str) -> np.ndarray:
    try:
        v = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {n} finite numbers, got {value!r}") from None
    if v.shape != (n,) or not np.all(np.isfinite(v)):
        raise ValueError(f"{name} must be {n} finite numbers, got {value!r}")
    return v


class AuthorsReacherEnv(gymnasium.Env):
    """The authors' 2-link reacher in MuJoCo (module docstring).

    Args:
        goal: fingertip goal (x, y) in m, for the reward and the distances (default: the origin's
            distance is reported, i.e. the reward is −‖p‖).
        start: the start state (θ₁, θ₂, θ̇₁, θ̇₂) of every episode.
        horizon: steps per episode (``truncated`` after it).
        dt: the time step (s).
        gravity_compensation: add the bias force b(q, q̇) to the torque (the authors' step);
            False applies the clipped action alone.

    Raises:
        ValueError: a bad argument (named, with its value), or an action that is not two finite
            numbers.
    """

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(
        self,
        goal: Any = (0.0, 0.0),
        start: Any = (0.0, 0.0, 0.0, 0.0),
        horizon: int = 65,
        dt: float = DT,
        gravity_compensation: bool = True,
    ) -> None:
        import mujoco

        if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"horizon must be an integer >= 1, got {horizon!r}")
        if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not (0 < dt <= 0.05):
            raise ValueError(f"dt must be a number in (0, 0.05] s, got {dt!r}")
        if not isinstance(gravity_compensation, bool):
            raise ValueError(f"gravity_compensation must be True or False, got {gravity_compensation!r}")
        self.goal = _vector(goal, 2, "goal")
        self.start = _vector(start, 4, "start")
        if np.any(np.abs(self.start[:2]) > JOINT_RANGE):
            raise ValueError(f"start angles must lie in [-{JOINT_RANGE}, {JOINT_RANGE}] rad, got {start!r}")
        self.horizon = horizon
        self.gravity_compensation = gravity_compensation
        self._mj = mujoco
        self.model = mujoco.MjModel.from_xml_path(MJCF_PATH)
        self.model.opt.timestep = float(dt)
        self.data = mujoco.MjData(self.model)
        self._site = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_SITE, "fingertip")
        big = np.full(4, np.inf)
        self.observation_space = gymnasium.spaces.Box(-big, big, (4,), np.float64)
        self.action_space = gymnasium.spaces.Box(-TORQUE_LIMIT, TORQUE_LIMIT, (2,), np.float32)
        self.fingertip_distance = math.nan
        self.episode_end_distance = math.nan
        self.episode_end_state = np.full(4, np.nan)
        self._t = 0
        self._set_state(self.start)

    @property
    def dt(self) -> float:
        return float(self.model.opt.timestep)

    @property
    def state(self) -> np.ndarray:
        """``[θ₁, θ₂, θ̇₁, θ̇₂]`` now (a copy)."""
        return np.concatenate([self.data.qpos, self.data.qvel]).astype(np.float64)

    @property
    def fingertip(self) -> np.ndarray:
        """The fingertip site's (x, y) from MuJoCo's kinematics of the current state."""
        return np.array(self.data.site_xpos[self._site][:2], dtype=np.float64)

    def bias_force(self) -> np.ndarray:
        """b(q, q̇): the joint torques that hold the current motion without acceleration."""
        return np.array(self.data.qfrc_bias, dtype=np.float64)

    def mass_matrix(self) -> np.ndarray:
        """M(q) of the current state (2 × 2)."""
        mj, out = self._mj, np.zeros((2, 2))
        try:  # mujoco >= 3.3: (model, data, out)
            mj.mj_fullM(self.model, self.data, out)
        except TypeError:  # older: (model, out, data.qM)
            mj.mj_fullM(self.model, out, self.data.qM)
        return out

    def _set_state(self, q: np.ndarray) -> None:
        mj = self._mj
        mj.mj_resetData(self.model, self.data)
        self.data.qpos[:] = q[:2]
        self.data.qvel[:] = q[2:]
        mj.mj_forward(self.model, self.data)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._set_state(self.start)
        self._t = 0
        self.fingertip_distance = self._distance()
        return self.state, {"fingertip": self.fingertip}

    def step(self, action: Any):
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (2,) or not np.all(np.isfinite(a)):
            raise ValueError(f"action must be 2 finite torques, got {action!r}")
        a = np.clip(a, -TORQUE_LIMIT, TORQUE_LIMIT)
        mj = self._mj
        mj.mj_step1(self.model, self.data)  # kinematics and b(q, q̇) of the state before the step
        self.data.ctrl[:] = a + (self.data.qfrc_bias if self.gravity_compensation else 0.0)
        mj.mj_step2(self.model, self.data)  # q̈ and the semi-implicit Euler update
        mj.mj_forward(self.model, self.data)  # the fingertip, M and b of the new state
        self._t += 1
        self.fingertip_distance = self._distance()
        truncated = self._t >= self.horizon
        if truncated:
            self.episode_end_distance = self.fingertip_distance
            self.episode_end_state = self.state
        info = {"fingertip": self.fingertip}
        return self.state, -self.fingertip_distance, False, truncated, info

    def _distance(self) -> float:
        return float(np.linalg.norm(self.fingertip - self.goal))


def make_environment(goal: Any, start: Any = (0.0,) * 4, horizon: int = 65, seed: int = 0, **kwargs: Any):
    """A TF-Agents ``GymnasiumEnvironment`` of ``AuthorsReacherEnv`` (``ml3tf.tasks.rl_env``)."""
    import ml3tf.tasks.rl_env as rl_env

    return rl_env.GymnasiumEnvironment(AuthorsReacherEnv(goal, start, horizon, **kwargs), seed=seed)


if ENV_ID not in gymnasium.registry:
    gymnasium.register(ENV_ID, entry_point=AuthorsReacherEnv)
