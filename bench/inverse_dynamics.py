"""Inverse dynamics with a physics prior (ML3 Fig. 5c, the review's Algorithm 3): MSE vs three
learned losses. Writes docs/results/inverse_dynamics/.

    python bench/inverse_dynamics.py                                # 5 seeds, the task's defaults
    python bench/inverse_dynamics.py --loss-features residual       # the loss network sees û − u
    python bench/inverse_dynamics.py --meta-steps 50 --out-dir /tmp/id   # a quick look

Arms (meta-objective β·L_task + γ·L_extra, L_task = held-out torque MSE, L_extra = the
physics prior mean ‖M(q) − M_θ(q)‖²_F):

* ``baseline``: MSE, no meta-learning;
* ``learned``: torque MSE as task loss (β = 1, γ = 0);
* ``learned_prior``: the prior added to the torque MSE (β = 1, γ = 1; both terms start at the
  same order, about 4 and 6 for a fresh learner, so neither dominates);
* ``learned_prior_only``: the prior alone as task loss (β = 0, γ = 1; the paper is unclear
  which of the two it used).

All arms meta-test the same way: fresh learners fit one trajectory for ``eval_steps`` SGD steps
at the meta-train ``inner_lr`` and are scored on held-out trajectories; the headline is the
error after K = ``inner_steps`` steps (the meta-train horizon), the curve goes on to
``eval_steps``. Prints a table with per-seed numbers; writes results.json (results.json schema
with ``learned`` = the torque-MSE arm and the prior arms beside it, plus ``inertia_error`` and
the meta-objective curve of each arm) and results.png.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
from bench.shaped_sine import _machine  # noqa: E402

#: The learned arms: (β, γ) of the meta-objective β·L_task + γ·L_extra.
ARMS = {"learned": (1.0, 0.0), "learned_prior": (1.0, 1.0), "learned_prior_only": (0.0, 1.0)}
METHODS = ("baseline", "warm_start", *ARMS)
LABELS = {
    "baseline": "MSE",
    "warm_start": "φ fitted to MSE, not meta-trained",
    "learned": "ML3, torque MSE task loss",
    "learned_prior": "ML3, torque MSE + physics prior",
    "learned_prior_only": "ML3, physics prior alone",
}
COLORS = {
    "baseline": "tab:orange",
    "warm_start": "tab:gray",
    "learned": "tab:green",
    "learned_prior": "tab:blue",
    "learned_prior_only": "tab:purple",
}
#: Every arm with a loss network: the meta-trained ones and φ before meta-training.
LEARNED = ("warm_start", *ARMS)
#: SGD lrs the MSE arm is also run at (the stability check: the best stable lr of the
#: hand-written loss, beside the same-lr comparison).
MSE_LRS = (0.0025, 0.005, 0.01, 0.02)
#: Meta-steps per point of the reported meta-objective curve (mean over the window).
OBJECTIVE_WINDOW = 25


def objective_curve(run_dir: str, seeds: list[int]) -> dict:
    """Windowed means of the meta-train objective and task loss, per seed and averaged."""
    per_seed = []
    for seed in seeds:
        paths = glob.glob(os.path.join(run_dir, f"seed_{seed}", "metrics.jsonl")) or glob.glob(
            os.path.join(run_dir, "metrics.jsonl")
        )
        with open(paths[0]) as f:
            rows = [json.loads(line) for line in f]
        obj = np.array([r["objective"] for r in rows], dtype=np.float64)
        n = len(obj) // OBJECTIVE_WINDOW * OBJECTIVE_WINDOW
        per_seed.append(obj[:n].reshape(-1, OBJECTIVE_WINDOW).mean(1))
    arr = np.asarray(per_seed)
    return {
        "window": OBJECTIVE_WINDOW,
        "mean": arr.mean(0).tolist(),
        "std": arr.std(0).tolist(),
        "per_seed": arr.tolist(),
    }


def mse_lr_sweep(task, config, seeds: list[int], lrs: tuple[float, ...]) -> dict:
    """The MSE arm at other SGD lrs: held-out torque MSE per seed after K and after
    ``eval_steps`` steps (``None`` where it diverged), mean over the seeds that did not."""
    k = config.inner_steps
    out = {}
    for lr in lrs:
        cfg = config.replace(inner_lr=lr)
        curves = np.asarray([task.meta_test(None, seed, cfg)["torque"].mean(0) for seed in seeds])
        row = {}
        for name, col in (("at_inner_steps", k), ("final", -1)):
            v = curves[:, col]
            ok = np.isfinite(v)
            row[name] = {
                "per_seed": [float(x) if f else None for x, f in zip(v, ok, strict=True)],
                "mean": float(v[ok].mean()) if ok.all() else None,
                "std": float(v[ok].std()) if ok.all() else None,
                "diverged": int((~ok).sum()),
            }
        out[f"{lr:g}"] = row
    return out


def run(seeds: list[int], overrides: dict, task_options: dict, out_dir: str, command: str) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import ml3tf
    from ml3tf.results import write_results
    from ml3tf.seeds import seeded
    from ml3tf.tasks import task_class

    task = task_class("inverse_dynamics")(**task_options)
    base = task.default_config().replace(**overrides)
    start = time.perf_counter()
    evaluated, seconds, objective = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for arm, (beta, gamma) in ARMS.items():
            cfg = base.replace(task_loss_weight=beta, extra_loss_weight=gamma)
            t0 = time.perf_counter()
            trained = ml3tf.train(task, cfg, os.path.join(tmp, arm), seeds=seeds, evaluate=False)
            seconds[arm] = time.perf_counter() - t0
            objective[arm] = objective_curve(os.path.join(tmp, arm), seeds)
            losses = [ml3tf.load_meta_loss(p) for p in trained.meta_loss_paths]
            evaluated[arm] = task.evaluate(losses, cfg, seeds)
    k = base.inner_steps
    sweep = mse_lr_sweep(task, base, seeds, MSE_LRS)
    # φ as meta-training starts (the trainer draws it inside seeded(seed)): with
    # meta_loss_init="mse" this is the fit to MSE, so the learned arms' gain over it is
    # what meta-training bought
    with_seed = []
    for seed in seeds:
        with seeded(seed):
            with_seed.append(task.make_meta_loss())
    evaluated["warm_start"] = task.evaluate(with_seed, base, seeds)
    first = evaluated["learned"]
    results = dict(first)
    results["inertia_error"] = dict(first["inertia_error"])
    for block_name in ("torque_mse", "inertia_error"):
        block = results if block_name == "torque_mse" else results["inertia_error"]

        def src(arm, key, block_name=block_name):
            r = evaluated[arm] if block_name == "torque_mse" else evaluated[arm]["inertia_error"]
            return r[key]["heldout"]

        block["curves"] = {"heldout": {"baseline": src("learned", "curves")["baseline"]}}
        for arm in LEARNED:
            block["curves"]["heldout"][arm] = src(arm, "curves")["learned"]
        for key in ("final", "at_step_1"):
            row = {
                "baseline": src("learned", key)["baseline"],
                "baseline_std": src("learned", key)["baseline_std"],
            }
            for arm in LEARNED:
                row[arm], row[f"{arm}_std"] = src(arm, key)["learned"], src(arm, key)["learned_std"]
            block[key] = {"heldout": row}
        if block_name == "torque_mse":
            seed_curves = {"baseline": first["seed_curves"]["heldout"]["baseline"]}
            seed_curves.update({arm: evaluated[arm]["seed_curves"]["heldout"]["learned"] for arm in LEARNED})
            block["seed_curves"] = {"heldout": seed_curves}
        else:
            seed_curves = None
        block["at_inner_steps"] = {
            "steps": k,
            "heldout": {
                m: {
                    "mean": c["mean"][k],
                    "std": c["std"][k],
                    **({"per_seed": [s[k] for s in seed_curves[m]]} if seed_curves else {}),
                }
                for m, c in block["curves"]["heldout"].items()
            },
        }
    results["arms"] = {
        arm: {
            "task_loss_weight": beta,
            "extra_loss_weight": gamma,
            "meta_train_seconds": seconds[arm],
            "meta_objective": objective[arm],
        }
        for arm, (beta, gamma) in ARMS.items()
    }
    results["mse_lr_sweep"] = sweep
    results["config"] = base.to_dict()
    results["wall_seconds"] = time.perf_counter() - start
    results["command"] = command
    results["machine"] = _machine()
    os.makedirs(out_dir, exist_ok=True)
    write_results(results, os.path.join(out_dir, "results.json"))
    plot(results, out_dir)
    return results


def plot(results: dict, out_dir: str) -> None:
    """Held-out torque and inertia errors over meta-test steps (Fig. 5c style) and the
    meta-objective of each learned arm over meta-training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (block, ylabel) in zip(
        axes[:2],
        (
            (results, "torque MSE on held-out trajectories"),
            (results["inertia_error"], "‖M − M_θ‖²_F on held-out trajectories"),
        ),
        strict=True,
    ):
        for key in METHODS:
            c = block["curves"]["heldout"][key]
            mean, std = np.asarray(c["mean"]), np.asarray(c["std"])
            steps = np.arange(len(mean))
            ax.plot(steps, mean, color=COLORS[key], label=LABELS[key])
            ax.fill_between(steps, np.maximum(mean - std, 1e-4), mean + std, color=COLORS[key], alpha=0.15)
        ax.axvline(results["config"]["inner_steps"], color="k", ls=":", lw=0.8, label="meta-train horizon K")
        ax.set_yscale("log")
        ax.set_xlabel(f"meta-test SGD step (lr {results['config']['inner_lr']})")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    ax = axes[2]
    for arm, info in results["arms"].items():
        o = info["meta_objective"]
        x = (np.arange(len(o["mean"])) + 0.5) * o["window"]
        ax.plot(
            x,
            o["mean"],
            color=COLORS[arm],
            label=f"{LABELS[arm]} (β={info['task_loss_weight']:g}, γ={info['extra_loss_weight']:g})",
        )
    ax.set_yscale("log")
    ax.set_xlabel("meta-step")
    ax.set_ylabel(f"meta-objective β·L_task + γ·L_extra (mean of {OBJECTIVE_WINDOW} steps)")
    ax.legend(fontsize=7)
    fig.suptitle(f"2-link inverse dynamics, mean ± std over seeds {results['seeds']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "results.png"), dpi=110)
    plt.close(fig)


def _pm(row: dict, key: str) -> str:
    return f"{row[key]:.3f} ± {row[key + '_std']:.3f}"


def table(results: dict) -> str:
    k = results["at_inner_steps"]["steps"]
    cfg = results["config"]
    opts = results.get("task_options", {})
    lines = [
        f"2-link inverse dynamics, held-out trajectories, seeds {results['seeds']}; meta-training: "
        f"K = {k} SGD steps (lr {cfg['inner_lr']}), {cfg['meta_steps']} meta-steps, Adam {cfg['meta_lr']}, "
        f"meta-batch {cfg['meta_batch_size']}, loss features `{opts.get('loss_features', 'absolute')}`, "
        f"φ from `{opts.get('meta_loss_init', 'random')}`",
        "",
        f"| loss | torque MSE after {k} steps (= K) | per seed | seeds below MSE "
        f"| after {results['steps']} | inertia error after {k} | after {results['steps']} |",
        "|---|---|---|---|---|---|---|",
    ]
    tf_, if_ = results["final"]["heldout"], results["inertia_error"]["final"]["heldout"]
    mse = results["at_inner_steps"]["heldout"]["baseline"]["per_seed"]
    for key in METHODS:
        t = results["at_inner_steps"]["heldout"][key]
        i = results["inertia_error"]["at_inner_steps"]["heldout"][key]
        seeds = " ".join(f"{v:.2f}" for v in t["per_seed"])
        below = (
            "—"
            if key == "baseline"
            else f"{sum(a < b for a, b in zip(t['per_seed'], mse, strict=True))}/{len(mse)}"
        )
        lines.append(
            f"| {LABELS[key]} | {t['mean']:.3f} ± {t['std']:.3f} | {seeds} | {below} | {_pm(tf_, key)} "
            f"| {i['mean']:.3f} ± {i['std']:.3f} | {_pm(if_, key)} |"
        )
    lines += [
        "",
        f"MSE at other SGD lrs (the same data; lr {cfg['inner_lr']} is the table's):",
        "",
        f"| SGD lr | torque MSE after {k} steps | per seed | after {results['steps']} |",
        "|---|---|---|---|",
    ]
    for lr, row in results["mse_lr_sweep"].items():
        cells = []
        for name in ("at_inner_steps", "final"):
            r = row[name]
            cells.append(
                f"{r['mean']:.3f} ± {r['std']:.3f}"
                if r["mean"] is not None
                else f"diverged in {r['diverged']} seeds"
            )
        seeds = " ".join("nan" if v is None else f"{v:.2f}" for v in row["at_inner_steps"]["per_seed"])
        lines.append(f"| {lr} | {cells[0]} | {seeds} | {cells[1]} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    for flag, kind in (
        ("--meta-steps", int),
        ("--meta-lr", float),
        ("--meta-batch-size", int),
        ("--inner-steps", int),
        ("--select-every", int),
        ("--eval-steps", int),
        ("--inner-lr", float),
    ):
        ap.add_argument(flag, type=kind, default=None, help="default: the task's")
    ap.add_argument(
        "--loss-features", choices=("absolute", "residual"), default=None, help="default: the task's"
    )
    ap.add_argument("--meta-loss-init", choices=("random", "mse"), default=None, help="default: the task's")
    ap.add_argument("--out-dir", default=os.path.join(REPO, "docs", "results", "inverse_dynamics"))
    args = ap.parse_args()
    names = (
        "meta_steps",
        "meta_lr",
        "meta_batch_size",
        "inner_steps",
        "select_every",
        "eval_steps",
        "inner_lr",
    )
    overrides = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    options = {
        n: getattr(args, n) for n in ("loss_features", "meta_loss_init") if getattr(args, n) is not None
    }
    flags = [f"--{n.replace('_', '-')} {v}" for n, v in {**overrides, **options}.items()]
    if args.seeds != [0, 1, 2, 3, 4]:
        flags.insert(0, "--seeds " + " ".join(map(str, args.seeds)))
    command = " ".join(["python bench/inverse_dynamics.py", *flags])
    try:  # bad values: one line and exit code 2 before any training
        from ml3tf.tasks import task_class

        task_class("inverse_dynamics")(**options).default_config().replace(**overrides)
    except ValueError as err:
        ap.error(str(err))
    results = run(args.seeds, overrides, options, args.out_dir, command)
    print(table(results))
    print(f"wrote {args.out_dir}/results.json and results.png ({results['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
