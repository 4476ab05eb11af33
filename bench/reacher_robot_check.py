"""The authors' reacher robot: our MuJoCo environment against PyBullet, step by step.

    pip install pybullet            # only for this check; ml3tf never imports it
    python bench/reacher_robot_check.py
    python bench/reacher_robot_check.py --pybullet-mjcf PATH/TO/the/authors/reacher.xml

The authors simulated their MJCF reacher in PyBullet. This script steps the same torque
sequences through ``ml3tf.tasks.reacher_robot_env.AuthorsReacherEnv`` (MuJoCo) and through
PyBullet set up the way the authors' simulation is (``loadMJCF``; the default velocity motors
switched off with zero force; joint, linear and angular damping 0; every step: the state set,
inverse dynamics at zero acceleration added to the torque, torque control, one
``stepSimulation``), and records per trajectory the largest difference of the joint angles,
velocities and fingertip positions. PyBullet loads our MJCF by default, or ``--pybullet-mjcf``
(for instance the authors' own file, to check that both files make the same robot in
PyBullet); the mass matrices of both simulators at a few states are compared too.

Trajectories: uniform random torques in [−1, 1] (the authors' babbling; these reach the ±3 rad
joint limits, where the two simulators' limit models differ), small random torques that stay
inside the limits, and a smooth sine torque. Writes docs/results/reacher_robot/pybullet_check.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

DEFAULT_OUT = os.path.join(REPO, "docs", "results", "reacher_robot", "pybullet_check.json")


class PyBulletReacher:
    """The authors' PyBullet stepping of an MJCF reacher (module docstring)."""

    def __init__(self, mjcf: str, dt: float) -> None:
        import pybullet
        from pybullet_utils import bullet_client

        self.p = pybullet
        self.sim = bullet_client.BulletClient(connection_mode=pybullet.DIRECT)
        ids = self.sim.loadMJCF(mjcf)
        self.robot = ids[-1]
        names = {
            self.sim.getJointInfo(self.robot, i)[1].decode(): i
            for i in range(self.sim.getNumJoints(self.robot))
        }
        revolute = [
            i
            for i in range(self.sim.getNumJoints(self.robot))
            if self.sim.getJointInfo(self.robot, i)[2] == 0
        ]
        if len(revolute) != 2:
            raise ValueError(f"expected 2 hinge joints in {mjcf!r}, got joints {names}")
        self.joints = revolute
        self.tip = next(
            i
            for i in range(self.sim.getNumJoints(self.robot))
            if self.sim.getJointInfo(self.robot, i)[12].decode() == "fingertip"
        )
        self.sim.setGravity(0, 0, -9.81)
        self.sim.setTimeStep(dt)
        self.sim.setRealTimeSimulation(0)
        self.sim.setJointMotorControlArray(
            self.robot, self.joints, pybullet.VELOCITY_CONTROL, forces=[0.0, 0.0]
        )

    def _zero_damping(self) -> None:
        for j in self.joints:
            self.sim.changeDynamics(self.robot, j, linearDamping=0.0, angularDamping=0.0, jointDamping=0.0)

    def step(self, state: np.ndarray, torque: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._zero_damping()
        for i, j in enumerate(self.joints):
            self.sim.resetJointState(
                self.robot, j, targetValue=float(state[i]), targetVelocity=float(state[2 + i])
            )
        bias = np.asarray(
            self.sim.calculateInverseDynamics(self.robot, list(state[:2]), list(state[2:]), [0.0, 0.0])
        )
        self.sim.setJointMotorControlArray(
            self.robot, self.joints, self.p.TORQUE_CONTROL, forces=list(np.asarray(torque) + bias)
        )
        self.sim.stepSimulation()
        js = self.sim.getJointStates(self.robot, self.joints)
        q = np.array([js[0][0], js[1][0], js[0][1], js[1][1]])
        return q, np.array(self.sim.getLinkState(self.robot, self.tip, computeForwardKinematics=True)[0][:2])

    def mass_matrix(self, angles: np.ndarray) -> np.ndarray:
        return np.array(self.sim.calculateMassMatrix(self.robot, [float(a) for a in angles]))


def trajectories(horizon: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(horizon)
    return {
        "babbling_uniform_1": rng.uniform(-1, 1, (horizon, 2)),
        "babbling_uniform_2": rng.uniform(-1, 1, (horizon, 2)),
        "small_uniform_0.02": rng.uniform(-0.02, 0.02, (horizon, 2)),
        "sine_0.02": 0.02 * np.stack([np.sin(2 * np.pi * t / horizon), np.cos(2 * np.pi * t / horizon)], -1),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pybullet-mjcf", default=None, help="MJCF for PyBullet (default: ours)")
    ap.add_argument("--horizon", type=int, default=65)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args(argv)

    import pybullet

    from ml3tf.tasks import reacher_robot_env as rre

    mjcf = args.pybullet_mjcf or rre.MJCF_PATH
    env = rre.AuthorsReacherEnv(horizon=args.horizon)
    pb = PyBulletReacher(mjcf, env.dt)
    rows = {}
    for name, torques in trajectories(args.horizon, args.seed).items():
        state, _ = env.reset()
        pb_state = state.copy()
        d_angle = d_vel = d_tip = top = 0.0
        for a in torques:
            state, *_, info = env.step(a)
            pb_state, pb_tip = pb.step(pb_state, a)
            d_angle = max(d_angle, float(np.abs(state[:2] - pb_state[:2]).max()))
            d_vel = max(d_vel, float(np.abs(state[2:] - pb_state[2:]).max()))
            d_tip = max(d_tip, float(np.abs(info["fingertip"] - pb_tip).max()))
            top = max(top, float(np.abs(state[:2]).max()))
        rows[name] = {
            "max_abs_angle_diff_rad": d_angle,
            "max_abs_velocity_diff_rad_s": d_vel,
            "max_abs_fingertip_diff_m": d_tip,
            "final_state_mujoco": state.tolist(),
            "final_state_pybullet": pb_state.tolist(),
            "max_abs_angle_mujoco": top,
        }
        print(
            f"{name:22s} angle {d_angle:.3g} rad  velocity {d_vel:.3g} rad/s  fingertip {d_tip:.3g} m  "
            f"(largest |θ| {rows[name]['max_abs_angle_mujoco']:.3g})"
        )
    mass = []
    for angles in ([0.0, 0.0], [0.3, 1.0], [-1.2, 2.5]):
        env._set_state(np.array([*angles, 0.0, 0.0]))
        mass.append(float(np.abs(env.mass_matrix() - pb.mass_matrix(np.array(angles))).max()))
    print(f"mass matrices: max abs difference {max(mass):.3g}")
    out = {
        "what": "AuthorsReacherEnv (MuJoCo) vs PyBullet stepped as the authors do, same torques",
        "pybullet_mjcf": "ours" if args.pybullet_mjcf is None else os.path.basename(mjcf),
        "pybullet_version": getattr(pybullet, "__version__", None) or "unknown",
        "dt": env.dt,
        "horizon": args.horizon,
        "seed": args.seed,
        "trajectories": rows,
        "mass_matrix_max_abs_diff": max(mass),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    return out


if __name__ == "__main__":
    main()
