"""Model-free ML3 on the point mass (``ml3tf.tasks.point_mass``): learned loss vs REINFORCE, 5 seeds.
Writes docs/results/point_mass/ (results.json, results.png).

    python bench/model_free.py                         # 5 seeds, the task's default protocol
    python bench/model_free.py --meta-steps 200        # a quick look

Per seed: a loss network is meta-trained on train goals (ϑ ∈ [0°, 270°]); then fresh
policies (the same θ₀ for both arms) are trained for N updates on held-out goals
(ϑ ∈ [270°, 360°], split ``test``) and on new train-range goals (split ``train``), each
update on the same E fresh rollouts for both arms: with the learned loss, or with plain
REINFORCE (the surrogate −mean Â log π). Metric: the return of the deterministic policy
after each update (higher is better); the final returns are measured again in the real
gymnasium environment through TF-Agents. The rollout budget at meta-test is equal; the
learned loss also cost the meta-training (``meta_steps`` × 4 goals × 2 × E rollouts).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)


import numpy as np  # noqa: E402

from bench.sine import machine  # noqa: E402

#: Meta-test updates at which the table reports the return.
TABLE_STEPS = (1, 5, 20, 50)
#: SGD learning rates of the sweep (both losses at meta-test; φ was meta-trained at inner_lr only).
SWEEP_LRS = (0.05, 0.1, 0.2, 0.5, 1.0)


def run(seeds: list[int], meta_steps: int | None, eval_steps: int, out_dir: str) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # rl_env before anything imports TensorFlow (`import ml3tf` does not): it selects Keras 2 for
    # tf.keras. Imported here, not at the top, so that `table` (bench/update_readme.py renders the
    # README with it) needs neither TF-Agents nor TensorFlow.
    import ml3tf
    import ml3tf.tasks.rl_env
    from ml3tf import tasks
    from ml3tf.results import plot_results, write_results

    task = tasks.get("point_mass")
    cfg = task.default_config().replace(eval_steps=eval_steps)
    if meta_steps is not None:
        cfg = cfg.replace(meta_steps=meta_steps)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        trained = ml3tf.train(task, cfg, tmp, seeds=seeds, evaluate=False)
        meta_seconds = time.perf_counter() - start
        losses = [ml3tf.load_meta_loss(p) for p in trained.meta_loss_paths]
    t0 = time.perf_counter()
    results = task.evaluate(losses, cfg, seeds)
    results["eval_seconds"] = time.perf_counter() - t0
    results["meta_train_seconds"] = meta_seconds
    results["per_seed_final"] = per_seed(task, losses, cfg, seeds)
    results["lr_sweep"] = lr_sweep(task, losses, cfg, seeds)
    results["wall_seconds"] = time.perf_counter() - start
    results["command"] = "python bench/model_free.py" + (f" --meta-steps {meta_steps}" if meta_steps else "")
    results["machine"] = machine()
    os.makedirs(out_dir, exist_ok=True)
    write_results(results, os.path.join(out_dir, "results.json"))
    plot_results(results, os.path.join(out_dir, "results.png"))
    return results


def per_seed(task, losses, cfg, seeds) -> dict:
    """Mean return over the goals after the last update, per seed and split (learned, reinforce)."""
    out = {}
    for split in ("train", "test"):
        rows = []
        for loss, seed in zip(losses, seeds, strict=True):
            learned, _ = task.meta_test(loss, seed, split, cfg)
            baseline, _ = task.meta_test(None, seed, split, cfg)
            rows.append(
                {
                    "seed": seed,
                    "learned": float(learned[:, -1].mean()),
                    "baseline": float(baseline[:, -1].mean()),
                }
            )
        out[split] = rows
    return out


def lr_sweep(task, losses, cfg, seeds) -> dict:
    """Both losses at other meta-test SGD learning rates: ``{lr: {split: {method: {mean, std}}}}``
    over seeds of the return after each update."""
    out = {}
    for lr in SWEEP_LRS:
        out[str(lr)] = {}
        for split in ("train", "test"):
            out[str(lr)][split] = {}
            for method in ("learned", "baseline"):
                curves = np.stack(
                    [
                        task.meta_test(
                            loss if method == "learned" else None, s, split, cfg.replace(inner_lr=lr)
                        )[0].mean(0)
                        for loss, s in zip(losses, seeds, strict=True)
                    ]
                )
                out[str(lr)][split][method] = {"mean": curves.mean(0).tolist(), "std": curves.std(0).tolist()}
    return out


def table(results: dict) -> str:
    n = results["steps"]
    steps = [k for k in TABLE_STEPS if k <= n]
    o = results["task_options"]
    lines = [
        f"point mass, return of the deterministic policy after k updates (higher is better), "
        f"mean ± std over seeds {results['seeds']}; {o['n_eval_goals']} goals per split and seed, "
        f"{o['episodes']} rollouts per update, SGD lr {results['config']['inner_lr']}",
        "",
        "| goals | loss | " + " | ".join(f"k = {k}" for k in steps) + f" | k = {n}, real env (TF-Agents) |",
        "|---|---|" + "---|" * (len(steps) + 1),
    ]
    names = {"learned": "ML3 learned loss", "baseline": "REINFORCE"}
    for split, label in (("test", "held-out (ϑ ∈ test_angles)"), ("train", "train range")):
        for method in ("learned", "baseline"):
            c = results["curves"][split][method]
            cells = [f"{c['mean'][k]:.2f} ± {c['std'][k]:.2f}" for k in steps]
            real = results.get("final_real_env", {}).get(split)
            cells.append(f"{real[method]:.2f} ± {real[method + '_std']:.2f}" if real else "—")
            lines.append(f"| {label} | {names[method]} | " + " | ".join(cells) + " |")
    wins = {
        split: sum(r["learned"] > r["baseline"] for r in rows)
        for split, rows in results["per_seed_final"].items()
    }
    lines += [
        "",
        f"Seeds where the learned loss ends higher after {n} updates: held-out {wins['test']}/"
        f"{len(results['seeds'])}, train range {wins['train']}/{len(results['seeds'])}. "
        f"Largest gap between the in-graph and the real-environment final returns: "
        f"{results.get('real_env_max_abs_gap', float('nan')):.1e}.",
    ]
    sweep = results.get("lr_sweep")
    if sweep:
        k_mid, n = min(5, n), results["steps"]
        lines += [
            "",
            "Other meta-test SGD learning rates, held-out goals (φ was meta-trained at "
            f"{results['config']['inner_lr']} only):",
            "",
            f"| SGD lr | learned, k = {k_mid} | REINFORCE, k = {k_mid} "
            f"| learned, k = {n} | REINFORCE, k = {n} |",
            "|---|---|---|---|---|",
        ]
        for lr, per_split in sweep.items():
            c = per_split["test"]
            cells = [
                f"{c[m]['mean'][k]:.2f} ± {c[m]['std'][k]:.2f}"
                for k in (k_mid, n)
                for m in ("learned", "baseline")
            ]
            lines.append(f"| {lr} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--meta-steps", type=int, default=None, help="default: the task's")
    ap.add_argument("--eval-steps", type=int, default=50, help="meta-test updates N")
    ap.add_argument("--out-dir", default=os.path.join(REPO, "docs", "results", "point_mass"))
    args = ap.parse_args()
    results = run(args.seeds, args.meta_steps, args.eval_steps, args.out_dir)
    print(table(results))
    print(f"wrote {args.out_dir}/results.json and results.png ({results['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
