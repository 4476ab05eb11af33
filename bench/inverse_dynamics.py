"""Inverse dynamics with a physics prior (ML3 Fig. 5c): MSE vs a learned loss (torque MSE task
loss) vs a learned loss with the physics prior ‖M(q) − M_θ(q)‖² as extra loss. Writes
docs/results/inverse_dynamics/.

    python bench/inverse_dynamics.py                   # 5 seeds, the task's default protocol
    python bench/inverse_dynamics.py --meta-steps 50   # a quick look

β = 1 for both learned arms; γ = 1 for the prior arm: both terms are mean squared errors
of the same order at the start (torques in N·m, inertia entries in kg·m²; about 4 and 6 for
a fresh learner), so neither dominates. Prints a table; writes results.json (same schema
schema, metric torque_mse on held-out trajectories, plus inertia_error) and results.png.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
from bench.shaped_sine import _machine  # noqa: E402

ARMS = {"learned": (1.0, 0.0), "learned_prior": (1.0, 1.0)}
LABELS = {"baseline": "MSE", "learned": "ML3, torque MSE task loss", "learned_prior": "ML3 + physics prior"}


def run(seeds: list[int], meta_steps: int | None, out_dir: str) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import ml3tf
    from ml3tf import tasks
    from ml3tf.results import write_results

    task = tasks.get("inverse_dynamics")
    base = task.default_config()
    if meta_steps is not None:
        base = base.replace(meta_steps=meta_steps)
    start = time.perf_counter()
    per_arm = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arm, (beta, gamma) in ARMS.items():
            cfg = base.replace(task_loss_weight=beta, extra_loss_weight=gamma)
            t0 = time.perf_counter()
            trained = ml3tf.train(task, cfg, os.path.join(tmp, arm), seeds=seeds, evaluate=False)
            seconds = time.perf_counter() - t0
            losses = [ml3tf.load_meta_loss(p) for p in trained.meta_loss_paths]
            per_arm[arm] = (task.evaluate(losses, cfg, seeds), seconds)
    prior, plain = per_arm["learned_prior"][0], per_arm["learned"][0]
    # results.json schema: "learned" = the physics-prior loss (the claim), "baseline" = MSE, and the
    # learned loss without the prior beside them as "learned_no_prior".
    results = dict(prior)
    k = base.inner_steps
    for block in (results, results["inertia_error"]):
        src = prior if block is results else prior["inertia_error"]
        other = plain if block is results else plain["inertia_error"]
        block["curves"] = {
            "heldout": {**src["curves"]["heldout"], "learned_no_prior": other["curves"]["heldout"]["learned"]}
        }
        for key in ("final", "at_step_1"):
            r = dict(src[key]["heldout"])
            r["learned_no_prior"] = other[key]["heldout"]["learned"]
            r["learned_no_prior_std"] = other[key]["heldout"]["learned_std"]
            block[key] = {"heldout": r}
        block["at_inner_steps"] = {
            "steps": k,
            "heldout": {
                m: {"mean": c["mean"][k], "std": c["std"][k]} for m, c in block["curves"]["heldout"].items()
            },
        }
    results["arms"] = {
        "learned": {
            "task_loss_weight": 1.0,
            "extra_loss_weight": 1.0,
            "meta_train_seconds": per_arm["learned_prior"][1],
        },
        "learned_no_prior": {
            "task_loss_weight": 1.0,
            "extra_loss_weight": 0.0,
            "meta_train_seconds": per_arm["learned"][1],
        },
    }
    results["wall_seconds"] = time.perf_counter() - start
    results["command"] = "python bench/inverse_dynamics.py" + (
        f" --meta-steps {meta_steps}" if meta_steps else ""
    )
    results["machine"] = _machine()
    os.makedirs(out_dir, exist_ok=True)
    write_results(results, os.path.join(out_dir, "results.json"))
    plot(results, out_dir)
    return results


def plot(results: dict, out_dir: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (block, ylabel) in zip(
        axes,
        (
            (results, "torque MSE on held-out trajectories"),
            (results["inertia_error"], "‖M − M_θ‖²_F on held-out trajectories"),
        ),
        strict=True,
    ):
        for key, color in (
            ("baseline", "tab:orange"),
            ("learned_no_prior", "tab:green"),
            ("learned", "tab:blue"),
        ):
            c = block["curves"]["heldout"][key]
            mean, std = np.asarray(c["mean"]), np.asarray(c["std"])
            steps = np.arange(len(mean))
            ax.plot(
                steps,
                mean,
                color=color,
                label=LABELS[
                    "learned_prior" if key == "learned" else "learned" if key == "learned_no_prior" else key
                ],
            )
            ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2)
        ax.axvline(results["config"]["inner_steps"], color="k", ls=":", lw=0.8, label="meta-train horizon K")
        ax.set_yscale("log")
        ax.set_xlabel(f"meta-test SGD step (lr {results['config']['inner_lr']})")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    fig.suptitle(f"2-link inverse dynamics, mean ± std over seeds {results['seeds']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "results.png"), dpi=110)
    plt.close(fig)


def table(results: dict) -> str:
    k = results["at_inner_steps"]["steps"]
    lines = [
        f"2-link inverse dynamics, held-out trajectories, seeds {results['seeds']}, "
        f"SGD lr {results['config']['inner_lr']}",
        "",
        f"| loss | torque MSE after {k} steps (= K) | after {results['steps']} | "
        f"inertia error after {k} | after {results['steps']} |",
        "|---|---|---|---|---|",
    ]
    for key in ("baseline", "learned_no_prior", "learned"):
        t, i = (
            results["at_inner_steps"]["heldout"][key],
            results["inertia_error"]["at_inner_steps"]["heldout"][key],
        )
        tf_, if_ = results["final"]["heldout"], results["inertia_error"]["final"]["heldout"]
        label = LABELS[
            "learned_prior" if key == "learned" else "learned" if key == "learned_no_prior" else key
        ]
        lines.append(
            f"| {label} | {t['mean']:.3f} ± {t['std']:.3f} | {tf_[key]:.3f} ± {tf_[key + '_std']:.3f} "
            f"| {i['mean']:.3f} ± {i['std']:.3f} | {if_[key]:.3f} ± {if_[key + '_std']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--meta-steps", type=int, default=None, help="default: the task's")
    ap.add_argument("--out-dir", default=os.path.join(REPO, "docs", "results", "inverse_dynamics"))
    args = ap.parse_args()
    results = run(args.seeds, args.meta_steps, args.out_dir)
    print(table(results))
    print(f"wrote {args.out_dir}/results.json and results.png ({results['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
