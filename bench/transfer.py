"""Architecture transfer: a loss meta-trained with one learner, meta-tested on others.

    python bench/transfer.py [--task sine|digits|all] [--seeds 0 1 2 3 4] [--quick]

For each task, a loss is meta-trained per seed with the task's default learner
(sine: 1→100→10→1 ReLU, paper protocol; digits: binary pairs, LeNet-style conv
net, the ``binary_meta_lr`` protocol of bench/classification.py: the paper's
settings with outer lr 1e-2), then fresh learners of
2–5 layers, several widths and activations (ReLU, tanh, ELU) are trained on it and
on the baseline (MSE / cross-entropy) with the same SGD steps. Per architecture:
final test metric, learned vs baseline, mean ± std over seeds. Prints a markdown
table and writes ``bench/results/transfer.json`` (rendered into README.md by
``python bench/update_readme.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

from sine import machine  # noqa: E402

#: (label, task options) per meta-test architecture. Layers count weight layers incl. the output.
SINE_ARCHS = [
    (
        "1→100→10→1 relu (meta-train learner, 3 layers)",
        dict(learner_hidden=(100, 10), learner_activation="relu"),
    ),
    ("1→40→1 relu (2 layers)", dict(learner_hidden=(40,), learner_activation="relu")),
    ("1→64→64→1 tanh (3 layers)", dict(learner_hidden=(64, 64), learner_activation="tanh")),
    ("1→40→40→40→1 elu (4 layers)", dict(learner_hidden=(40, 40, 40), learner_activation="elu")),
    ("1→32→32→32→32→1 relu (5 layers)", dict(learner_hidden=(32, 32, 32, 32), learner_activation="relu")),
    ("1→100→1 tanh (2 layers)", dict(learner_hidden=(100,), learner_activation="tanh")),
]
DIGITS_ARCHS = [
    ("lenet relu (meta-train learner, 4 layers)", dict(learner="lenet")),
    ("mlp:64 relu (2 layers)", dict(learner="mlp:64:relu")),
    ("mlp:64-64 tanh (3 layers)", dict(learner="mlp:64-64:tanh")),
    ("mlp:32-32-32 elu (4 layers)", dict(learner="mlp:32-32-32:elu")),
    ("mlp:32-32-32-32 relu (5 layers)", dict(learner="mlp:32-32-32-32:relu")),
]
#: The digits protocol with a learning signal (bench/classification.py ``binary_meta_lr``).
DIGITS_META_LR = dict(meta_lr=1e-2)


def run_task(name: str, seeds: list[int], quick: bool) -> dict:
    import ml3tf
    from ml3tf import tasks
    from ml3tf.task import SupervisedTask

    if name == "sine":
        base_opts, archs, task_name = {}, SINE_ARCHS, "sine"
        cfg = tasks.get("sine").default_config()
    else:
        base_opts, archs, task_name = dict(test_pairs=("all",)), DIGITS_ARCHS, "classification"
        cfg = tasks.get(task_name, **base_opts).default_config().replace(**DIGITS_META_LR)
    if quick:
        cfg = cfg.replace(meta_steps=20, eval_steps=5)
        archs = archs[:2]
    train_task = tasks.get(task_name, **base_opts)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        run = ml3tf.train(train_task, cfg, tmp, seeds=seeds, evaluate=False)
        losses = [ml3tf.load_meta_loss(p) for p in run.meta_loss_paths]
    train_seconds = time.perf_counter() - start
    rows = []
    for label, opts in archs:
        task = tasks.get(task_name, **base_opts, **opts)
        t0 = time.perf_counter()
        # The accuracy (or MSE) curves only: the same code path as `ml3tf eval`.
        res = SupervisedTask.evaluate(task, losses, cfg.replace(eval_jit_compile=False), seeds)
        r = res["final"]["test"]
        better = r["learned"] > r["baseline"] if res["higher_is_better"] else r["learned"] < r["baseline"]
        rows.append(
            {
                "architecture": label,
                "options": {k: list(v) if isinstance(v, tuple) else v for k, v in opts.items()},
                **r,
                "learned_wins": bool(better),
                "seconds": time.perf_counter() - t0,
            }
        )
        print(
            f"{name}: {label}: learned {r['learned']:.4g} ± {r['learned_std']:.2g}  "
            f"baseline {r['baseline']:.4g} ± {r['baseline_std']:.2g}",
            flush=True,
        )
    return {
        "task": task_name,
        "metric": res["metric"],
        "higher_is_better": res["higher_is_better"],
        "baseline": res["baseline"],
        "steps": res["steps"],
        "seeds": seeds,
        "train_options": base_opts,
        "config": cfg.to_dict(),
        "meta_train_seconds": train_seconds,
        "rows": rows,
    }


def markdown(results: dict) -> str:
    lines = []
    for key, r in results["tasks"].items():
        arrow = "higher is better" if r["higher_is_better"] else "lower is better"
        lines += [
            f"**{key}** — test {r['metric']} after {r['steps']} SGD steps ({arrow}; mean ± std over "
            f"seeds {r['seeds']}); loss meta-trained with the first row's learner (inner lr "
            f"{r['config']['inner_lr']}, K={r['config']['inner_steps']}, meta lr {r['config']['meta_lr']}, "
            f"{r['config']['meta_steps']} meta-steps):",
            "",
            f"| learner | learned loss (ML3) | {r['baseline']} | learned better |",
            "|---|---|---|---|",
        ]
        for row in r["rows"]:
            lines.append(
                f"| {row['architecture']} | {row['learned']:.3f} ± {row['learned_std']:.3f} "
                f"| {row['baseline']:.3f} ± {row['baseline_std']:.3f} "
                f"| {'yes' if row['learned_wins'] else 'no'} |"
            )
        lines.append("")
    return "\n".join(lines).rstrip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=("sine", "digits", "all"), default="all")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--quick", action="store_true", help="a few steps, two architectures (smoke test)")
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "results", "transfer.json"))
    args = ap.parse_args()
    names = ["sine", "digits"] if args.task == "all" else [args.task]
    old = {}
    if os.path.exists(args.out):
        with open(args.out) as f:
            old = json.load(f).get("tasks", {})
    start = time.perf_counter()
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "command": "python bench/transfer.py " + " ".join(sys.argv[1:]),
        "tasks": {**old, **{n: run_task(n, args.seeds, args.quick) for n in names}},
    }
    results["wall_seconds"] = time.perf_counter() - start
    print(markdown(results))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    from ml3tf.results import atomic_write_text

    atomic_write_text(args.out, json.dumps(results, indent=1, allow_nan=False) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
