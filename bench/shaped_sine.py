"""Shaped sine (ML3 Fig. 5a/b): MSE vs a learned loss (MSE task loss) vs a learned loss shaped
with extra information ((ω − v)² at meta-train time). Writes docs/results/shaped_sine/.

    python bench/shaped_sine.py                    # 5 seeds, the authors' protocol (~minutes)
    python bench/shaped_sine.py --meta-steps 100   # a quick look
    python bench/shaped_sine.py --config <name>    # 10 seeds, an option beside the protocol (CONFIGS)

For each seed and each learned arm it meta-trains with ``ml3tf.train`` (online meta-updates),
then measures on the meta-test task (v = 0.7, x = −5 … 4.9):
(a) the loss landscape over ω ∈ [−7, 7], (b) the success rate — the fraction of random
initial ω ending within the tolerance of v after the meta-test SGD steps — and (c) the MSE
vs step of a learner started at ω₀ = 0.1. Prints a table; writes results.json (same schema
schema plus ``success_rate`` and ``landscape``), landscape.png and curves.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
from bench.configs import command_line, named_config, results_dir  # noqa: E402

#: The two learned arms: (β, γ) of the meta-objective β·L_task + γ·L_extra.
ARMS = {"learned_mse": (1.0, 0.0), "learned_shaped": (0.0, 1.0)}
#: Named meta-training configurations (``--config``): the fields each one changes in the task's
#: ``default_config()``. ``authors`` is the authors' protocol (the default); the others are options
#: beside it, each with its own output folder ``docs/results/shaped_sine_<name>/``.
CONFIGS: dict[str, dict] = {
    "authors": {},
    # the authors' meta-training, with the anchored loss network (TASK_OPTIONS): the seeds of the
    # protocol that fail have convex landscapes whose lowest point sits 0.05–0.1 from v, farther
    # than the success tolerance; anchoring pins the lowest point at ŷ = y, i.e. at ω = v
    "anchored": {},
}
#: Task options (``ShapedSineOptions``) a configuration changes, beside its ``MetaTrainConfig`` ones.
TASK_OPTIONS: dict[str, dict] = {"anchored": {"anchored_loss": True}}
#: Seeds each configuration runs unless ``--seeds`` is given.
DEFAULT_SEEDS = {"authors": [0, 1, 2, 3, 4], "anchored": list(range(10))}
LABELS = {
    "baseline": "MSE",
    "learned_mse": "ML3, task loss MSE",
    "learned_shaped": "ML3, shaped task loss (ω − v)²",
}


def default_out_dir(config: str) -> str:
    """``docs/results/shaped_sine/`` for the authors' protocol, ``…/shaped_sine_<config>/`` else."""
    return results_dir("shaped_sine", config)


def config_for(task, config: str, meta_steps: int | None = None):
    """The ``MetaTrainConfig`` of the named configuration (``CONFIGS``) for ``task``
    (``ValueError`` for an unknown name)."""
    return named_config(task, CONFIGS, config, meta_steps)


def command(seeds: list[int], meta_steps: int | None, out_dir: str, config: str = "authors") -> str:
    """The command line that reproduces a run (the defaults left out)."""
    return command_line("shaped_sine.py", "shaped_sine", config, seeds, DEFAULT_SEEDS, meta_steps, out_dir)


def run(seeds: list[int], meta_steps: int | None, out_dir: str, config: str = "authors") -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import ml3tf
    from ml3tf import tasks

    task = tasks.get("shaped_sine", **TASK_OPTIONS.get(config, {}))
    base = config_for(task, config, meta_steps)
    start = time.perf_counter()
    omegas = np.linspace(-7.0, 7.0, 281)
    per_arm: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arm, (beta, gamma) in ARMS.items():
            cfg = base.replace(task_loss_weight=beta, extra_loss_weight=gamma)
            t0 = time.perf_counter()
            run_ = ml3tf.train(task, cfg, os.path.join(tmp, arm), seeds=seeds, evaluate=False)
            train_s = time.perf_counter() - t0
            losses = [ml3tf.load_meta_loss(p) for p in run_.meta_loss_paths]
            res = task.evaluate(losses, cfg, seeds)
            land = np.stack([task.landscape(m, omegas) for m in losses])
            per_arm[arm] = {"results": res, "landscape": land, "train_seconds": train_s, "config": cfg}
    mse_land = task.landscape(None, omegas)
    shaped, plain = per_arm["learned_shaped"]["results"], per_arm["learned_mse"]["results"]
    # results.json schema: "learned" is the shaped loss (the claim), "baseline" MSE; the
    # learned loss without extra information sits beside them as "learned_mse".
    results = dict(shaped)
    results["curves"] = {
        "test": {**shaped["curves"]["test"], "learned_mse": plain["curves"]["test"]["learned"]}
    }
    for key in ("final", "at_step_1"):
        r = dict(shaped[key]["test"])
        r["learned_mse"], r["learned_mse_std"] = (
            plain[key]["test"]["learned"],
            plain[key]["test"]["learned_std"],
        )
        results[key] = {"test": r}
    results["success_rate"] = {
        "learned": shaped["success_rate"]["learned"],
        "learned_mse": plain["success_rate"]["learned"],
        "baseline": shaped["success_rate"]["baseline"],
    }
    results["landscape"] = {
        "omega": omegas.tolist(),
        "baseline": mse_land.tolist(),
        **{
            ("learned" if arm == "learned_shaped" else arm): {
                "per_seed": per_arm[arm]["landscape"].tolist(),
            }
            for arm in ARMS
        },
    }
    results["arms"] = {
        ("learned" if arm == "learned_shaped" else arm): {
            "task_loss_weight": ARMS[arm][0],
            "extra_loss_weight": ARMS[arm][1],
            "meta_train_seconds": per_arm[arm]["train_seconds"],
        }
        for arm in ARMS
    }
    # MSE is not handicapped by the protocol's lr 1.0 alone: its success rate at smaller lrs.
    sweep = {}
    for lr in (1.0, 0.1, 0.01):
        outs = [task.meta_test(None, s, base.replace(inner_lr=lr), shaped["steps"]) for s in seeds]
        rates = [task.success_rate(o["omega"][1:, -1]) for o in outs]
        finals = [float(o["mse"][0, -1]) for o in outs]
        sweep[str(lr)] = {
            "success_rate": {"mean": float(np.mean(rates)), "std": float(np.std(rates))},
            "final_mse_from_omega0": {"mean": float(np.mean(finals)), "std": float(np.std(finals))},
        }
    results["baseline_lr_sweep"] = sweep
    results["config"] = per_arm["learned_shaped"]["config"].to_dict()
    results["wall_seconds"] = time.perf_counter() - start
    results["configuration"] = {
        "name": config,
        "changes": CONFIGS[config],
        "task_options": TASK_OPTIONS.get(config, {}),
    }
    results["command"] = command(seeds, meta_steps, out_dir, config)
    results["machine"] = _machine()
    add_basins(results)
    os.makedirs(out_dir, exist_ok=True)
    from ml3tf.results import write_results

    write_results(results, os.path.join(out_dir, "results.json"))
    plot(results, out_dir)
    return results


def basin_fraction(omega: np.ndarray, curve: np.ndarray, v: float, init_range, tolerance: float) -> float:
    """Step-size-free shape measure: the fraction of grid points ω ∈ init_range from which
    descending the landscape (to the lower neighbour, until a local minimum) ends within
    ``tolerance`` of v — the basin of attraction of v under gradient flow."""
    omega, curve = np.asarray(omega), np.asarray(curve)
    starts = np.flatnonzero((omega >= init_range[0]) & (omega <= init_range[1]))
    hits = 0
    for i in starts:
        while True:
            nbrs = [j for j in (i - 1, i + 1) if 0 <= j < len(curve)]
            j = min(nbrs, key=lambda j: curve[j])
            if curve[j] >= curve[i]:
                break
            i = j
        hits += abs(omega[i] - v) <= tolerance
    return hits / len(starts)


def add_basins(results: dict) -> None:
    """``results["basin_fraction"][method] = {mean, std, per_seed}`` from the stored landscapes."""
    o, land = results["task_options"], results["landscape"]
    tol = 2 * (land["omega"][1] - land["omega"][0])  # two grid cells

    def one(curve):
        return basin_fraction(land["omega"], curve, o["test_frequency"], o["init_range"], tol)

    out = {"baseline": [one(land["baseline"])]}
    for key in ("learned_mse", "learned"):
        out[key] = [one(c) for c in land[key]["per_seed"]]
    results["basin_fraction"] = {
        k: {"mean": float(np.mean(v)), "std": float(np.std(v)), "per_seed": v, "tolerance": tol}
        for k, v in out.items()
    }
    # where each seed's learned landscape has its lowest point (grid on ω): a minimum off v by more
    # than the tolerance makes every learner miss, however well it converges
    omega = np.asarray(land["omega"])
    results["landscape_argmin"] = {
        key: [float(omega[int(np.argmin(c))]) for c in land[key]["per_seed"]]
        for key in ("learned_mse", "learned")
    }


def _machine() -> dict:
    """The machine these numbers come from (shared with bench/sine.py)."""
    from bench.sine import machine

    return machine()


def _normalised(curve: np.ndarray) -> np.ndarray:
    lo, hi = curve.min(), curve.max()
    return (curve - lo) / (hi - lo if hi > lo else 1.0)


def plot(results: dict, out_dir: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    v = results["task_options"]["test_frequency"]
    land = results["landscape"]
    omega = np.asarray(land["omega"])
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(omega, _normalised(np.asarray(land["baseline"])), color="tab:orange", label=LABELS["baseline"])
    for key, color, label in (
        ("learned_mse", "tab:green", LABELS["learned_mse"]),
        ("learned", "tab:blue", LABELS["learned_shaped"]),
    ):
        for i, curve in enumerate(land[key]["per_seed"]):
            ax.plot(
                omega, _normalised(np.asarray(curve)), color=color, alpha=0.6, label=label if i == 0 else None
            )
    ax.axvline(v, color="k", ls="--", lw=0.8, label=f"v = {v}")
    ax.set_xlabel("learner parameter ω")
    ax.set_ylabel("loss on the meta-test task (min–max normalised)")
    ax.set_title(f"shaped sine: loss landscapes, one line per seed {results['seeds']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "landscape.png"), dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for key, color in (("baseline", "tab:orange"), ("learned_mse", "tab:green"), ("learned", "tab:blue")):
        c = results["curves"]["test"][key]
        mean, std = np.asarray(c["mean"]), np.asarray(c["std"])
        k = np.arange(len(mean))
        ax.plot(k, mean, color=color, label=LABELS["learned_shaped" if key == "learned" else key])
        ax.fill_between(k, mean - std, mean + std, color=color, alpha=0.2)
    ax.set_xlabel(f"meta-test SGD step (lr {results['config']['inner_lr']}, from ω₀ = 0.1)")
    ax.set_ylabel("MSE on the meta-test task (v = 0.7)")
    ax.set_title(f"mean ± std over seeds {results['seeds']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "curves.png"), dpi=110)
    plt.close(fig)


def table(results: dict) -> str:
    o = results["task_options"]
    lines = [
        f"shaped sine, meta-test v = {o['test_frequency']}, {results['steps']} SGD steps at lr "
        f"{results['config']['inner_lr']}, seeds {results['seeds']}",
        f"success: |ω − v| ≤ {o['tolerance']} from {o['n_inits']} initial ω ~ U{list(o['init_range'])}",
        "",
        "| loss | success rate | basin of v (landscape, no step size) "
        "| MSE after 1 step (from ω₀) | MSE after the last step (from ω₀) |",
        "|---|---|---|---|---|",
    ]
    for key in ("baseline", "learned_mse", "learned"):
        s, b = results["success_rate"][key], results["basin_fraction"][key]
        f1, fN = results["at_step_1"]["test"], results["final"]["test"]
        lines.append(
            f"| {LABELS['learned_shaped' if key == 'learned' else key]} | {s['mean']:.2f} ± {s['std']:.2f} "
            f"| {b['mean']:.2f} ± {b['std']:.2f} "
            f"| {f1[key]:.3f} ± {f1[key + '_std']:.3f} | {fN[key]:.3f} ± {fN[key + '_std']:.3f} |"
        )
    shaped, plain = results["success_rate"]["learned"], results["success_rate"]["learned_mse"]
    gap = shaped["mean"] - plain["mean"]
    lines += [
        "",
        "Success rate of the shaped loss per seed: "
        + ", ".join(f"{x:.2f}" for x in shaped["per_seed"])
        + f"; its std over the seeds {shaped['std']:.2f} is "
        + ("smaller" if shaped["std"] < gap else "not smaller")
        + f" than its gap to the loss learned without extra information ({gap:+.2f}).",
    ]
    if "landscape_argmin" in results:
        lines += [
            "",
            "Lowest point of the shaped loss's landscape per seed (grid step "
            f"{results['landscape']['omega'][1] - results['landscape']['omega'][0]:.2f}, "
            f"v = {o['test_frequency']}): "
            + ", ".join(f"{x:.2f}" for x in results["landscape_argmin"]["learned"])
            + ".",
        ]
    changes = {
        **results.get("configuration", {}).get("changes", {}),
        **results.get("configuration", {}).get("task_options", {}),
    }
    if changes:
        lines += [
            "",
            "Configuration: the authors' protocol (meta-training and meta-test) with "
            + ", ".join(f"`{k}={v!r}`" for k, v in changes.items())
            + ".",
        ]
    lines += ["", "| MSE with SGD lr | success rate | MSE after the last step (from ω₀) |", "|---|---|---|"]
    for lr, r in results["baseline_lr_sweep"].items():
        s, f = r["success_rate"], r["final_mse_from_omega0"]
        lines.append(f"| {lr} | {s['mean']:.2f} ± {s['std']:.2f} | {f['mean']:.3f} ± {f['std']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="authors")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default: DEFAULT_SEEDS[config]")
    ap.add_argument("--meta-steps", type=int, default=None, help="default: the configuration's")
    ap.add_argument("--out-dir", default=None, help="default: default_out_dir(config)")
    ap.add_argument("--rescore", action="store_true", help="only recompute derived fields of results.json")
    args = ap.parse_args()
    seeds = DEFAULT_SEEDS[args.config] if args.seeds is None else args.seeds
    args.out_dir = default_out_dir(args.config) if args.out_dir is None else args.out_dir
    if args.rescore:
        from ml3tf.results import write_results

        path = os.path.join(args.out_dir, "results.json")
        with open(path) as f:
            results = json.load(f)
        add_basins(results)
        write_results(results, path)
    else:
        results = run(seeds, args.meta_steps, args.out_dir, args.config)
    print(table(results))
    print(f"wrote {args.out_dir}/results.json, landscape.png, curves.png ({results['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
