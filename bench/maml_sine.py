"""Few-shot sine, MAML protocol: pretrained baseline vs MAML vs ML3 vs ML3+MAML, and a broader test.

    python bench/maml_sine.py [--meta-steps 400] [--meta-batch-size 5] [--seeds 0 1 2 3 4] [--shots 5 10]

Protocol (Finn et al. 2017, sine): tasks ``A·sin(x − φ₀)``, A ~ U[0.1, 5], φ₀ ~ U[0, π],
x ~ U[−5, 5]; learner 1→40→40→1 ReLU; inner SGD α = 0.01, one inner step at meta-train,
a meta-batch of tasks per outer step (outer Adam, the same lr for θ₀ and φ); the budget is
far below the paper's 70k meta-steps (2 shared CPU cores); K support points (K-shot) and
``QUERY`` query points per task. Meta-test on 100 held-out tasks per seed: adapt on the K support points with
SGD α, report the MSE on the query points after 1 and 10 steps.

Arms (all through ``ml3tf.train`` / ``SupervisedTask.evaluate``; no other training loop):

* ``baseline``: fresh Xavier init, SGD on MSE;
* ``pretrained``: θ₀ fitted by plain multi-task regression (Keras ``fit`` on the pooled
  points of as many tasks as MAML sees), then SGD on MSE;
* ``maml``: meta-learned θ₀ (``--method maml``), SGD on MSE;
* ``learned`` (ML3): meta-learned loss, fresh init (``--method ml3``);
* ``ml3+maml``: meta-learned θ₀ and loss (``--method ml3+maml``).

Broader distribution (K = the largest shot count): every arm is meta-tested on wider task
families (amplitudes U[5, 10], phases U[π, 2π], x ~ U[−10, 10], all three) and on another
learner architecture (1→100→10→1), where a learned θ₀ has no meaning (reported as not
applicable) but a learned loss still applies.

Writes ``docs/results/maml_sine/results_k<K>.json`` (results.json schema, methods beside
``learned``/``baseline``), ``broader.json`` and ``adaptation.png`` (pre-/post-update
predictions on one task), and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

OUT_DIR = os.path.join(REPO, "docs", "results", "maml_sine")
QUERY = 25
ARMS = ("baseline", "pretrained", "maml", "learned", "ml3+maml")
LABELS = {
    "baseline": "fresh init + MSE",
    "pretrained": "pretrained init + MSE",
    "maml": "MAML init + MSE",
    "learned": "ML3 loss (fresh init)",
    "ml3+maml": "ML3+MAML (init + loss)",
}


def task_options(shots: int, **changes) -> dict:
    base = dict(
        mode="family",
        support_points=shots,
        query_points=QUERY,
        amplitude_range=(0.1, 5.0),
        phase_range=(0.0, math.pi),
        train_x_range=(-5.0, 5.0),
        test_x_range=(-5.0, 5.0),
        learner_hidden=(40, 40),
        n_test_tasks=100,
    )
    base.update(changes)
    return base


#: Broader meta-test families: name -> task option changes (support and query from the same range).
FAMILIES = {
    "in-distribution": {},
    "amplitude U[5, 10]": {"amplitude_range": (5.0, 10.0)},
    "phase U[π, 2π]": {"phase_range": (math.pi, 2 * math.pi)},
    "x U[−10, 10]": {"train_x_range": (-10.0, 10.0), "test_x_range": (-10.0, 10.0)},
    "all three": {
        "amplitude_range": (5.0, 10.0),
        "phase_range": (math.pi, 2 * math.pi),
        "train_x_range": (-10.0, 10.0),
        "test_x_range": (-10.0, 10.0),
    },
}
OTHER_ARCH = (100, 10)


def pretrain(task, seed: int, tasks_seen: int, epochs: int) -> list:
    """θ₀ of the multi-task regression baseline: Keras ``fit`` on pooled points of many tasks."""
    import keras

    keras.utils.set_random_seed(seed)
    model = task.make_learner()
    x, y = task.pretrain_data(seed, tasks_seen)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    model.fit(x, y, batch_size=250, epochs=epochs, verbose=0, shuffle=True)
    return [v.numpy() for v in model.trainable_variables]


def learned_params(paths: list[str]) -> list:
    from ml3tf.run import load_learner

    return [[v.numpy() for v in load_learner(p).trainable_variables] for p in paths]


def run_shots(shots: int, seeds: list[int], cfg, tmp: str) -> tuple[dict, dict]:
    """Meta-train every arm for ``shots``; returns (results in the results.json schema, artefacts per arm)."""
    import ml3tf
    from ml3tf import tasks
    from ml3tf.meta_loss import load_meta_loss

    task = tasks.get("sine", **task_options(shots))
    artefacts: dict[str, dict] = {}
    timings = {}
    for method in ("maml", "ml3", "ml3+maml"):
        start = time.perf_counter()
        run = ml3tf.train(
            task, cfg.replace(method=method), os.path.join(tmp, f"k{shots}-{method}"), seeds, evaluate=False
        )
        timings[method] = time.perf_counter() - start
        artefacts["learned" if method == "ml3" else method] = {
            "losses": [load_meta_loss(p) for p in run.meta_loss_paths],
            "inits": learned_params(run.learner_paths) if run.learner_paths else None,
        }
    start = time.perf_counter()
    tasks_seen = cfg.meta_steps * cfg.meta_batch_size
    artefacts["pretrained"] = {
        "losses": [],
        "inits": [pretrain(task, s, tasks_seen, epochs=2) for s in seeds],
    }
    timings["pretrained"] = time.perf_counter() - start
    results = None
    for arm in ("learned", "pretrained", "maml", "ml3+maml"):
        a = artefacts[arm]
        res = task.evaluate(a["losses"], cfg, seeds, initial_params=a["inits"])
        if results is None:  # ML3's evaluation: the schema's learned/baseline keys
            results = res
            continue
        for key in ("curves", "final", "at_step_1"):  # the other arms beside them
            for split, per in res[key].items():
                if key == "curves":
                    results[key][split][arm] = per["learned"]
                else:
                    results[key][split][arm] = per["learned"]
                    results[key][split][f"{arm}_std"] = per["learned_std"]
    results["config"] = cfg.to_dict()
    results["wall_seconds"] = sum(timings.values())
    results["task_options"] = json.loads(json.dumps(task_options(shots)))
    results["methods"] = LABELS
    results["meta_train_seconds"] = timings
    return results, artefacts


def broader(shots: int, seeds: list[int], cfg, artefacts: dict) -> dict:
    """Post-adaptation MSE of every arm on wider task families and another architecture."""
    from ml3tf import tasks

    rows = {}
    for family, changes in FAMILIES.items():
        task = tasks.get("sine", **task_options(shots, **changes))
        row = {}
        for arm in ("pretrained", "maml", "learned", "ml3+maml"):
            a = artefacts[arm]
            res = task.evaluate(a["losses"], cfg, seeds, initial_params=a["inits"])
            row[arm] = _final(res, "learned")
            row["baseline"] = _final(res, "baseline")
        rows[family] = row
    task = tasks.get("sine", **task_options(shots, learner_hidden=OTHER_ARCH))
    row = {"pretrained": None, "maml": None}
    for arm in ("learned", "ml3+maml"):  # the loss transfers; the init cannot
        res = task.evaluate(artefacts[arm]["losses"], cfg, seeds)
        row[arm] = _final(res, "learned")
        row["baseline"] = _final(res, "baseline")
    rows[f"learner 1→{'→'.join(map(str, OTHER_ARCH))}→1 (in-distribution tasks)"] = row
    return {
        "shots": shots,
        "seeds": seeds,
        "eval_steps": cfg.eval_steps,
        "split": "test",
        "families": {
            k: {kk: list(v) if isinstance(v, tuple) else v for kk, v in c.items()}
            for k, c in FAMILIES.items()
        },
        "other_architecture": list(OTHER_ARCH),
        "inner_lr": cfg.inner_lr,
        "n_test_tasks": task_options(shots)["n_test_tasks"],
        "rows": rows,
        "note": "null: not applicable (a learned initialisation does not fit another architecture; the "
        "ml3+maml row on the other architecture uses only its learned loss, from a fresh init)",
    }


def _final(res: dict, method: str) -> dict:
    """Step-1 and final test MSE of one arm; a non-finite value is ``null`` with ``"diverged": true``."""
    t1, tf_ = res["at_step_1"]["test"], res["final"]["test"]
    row = {
        "step_1": t1[method],
        "step_1_std": t1[f"{method}_std"],
        "final": tf_[method],
        "final_std": tf_[f"{method}_std"],
    }
    return _strict_row(row)


def _strict_row(row: dict) -> dict:
    if all(math.isfinite(v) for v in row.values() if isinstance(v, float)):
        return row
    out = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in row.items()}
    return {**out, "diverged": True}


def plot_adaptation(path: str, shots: int, cfg, artefacts: dict) -> None:
    """The classic MAML figure: predictions before and after 1 and 10 SGD steps on one test task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import tensorflow as tf

    from ml3tf import tasks
    from ml3tf.functional import FunctionalModel
    from ml3tf.inner import SGD, unroll
    from ml3tf.tasks.sine import sine

    task = tasks.get("sine", **task_options(shots))
    functional = FunctionalModel(task.make_learner())
    rng = np.random.default_rng([0, 1])
    amp, phase = rng.uniform(0.1, 5.0), rng.uniform(0.0, math.pi)
    xs = rng.uniform(-5, 5, size=(shots, 1)).astype(np.float32)
    ys = sine(xs, amp, phase)
    grid = np.linspace(-5, 5, 200, dtype=np.float32)[:, None]
    data = {"x": xs, "y": ys}

    def loss_fn(params, state):
        return task.baseline_inner_loss(functional, params, state, data)

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for ax, arm in zip(axes, ("pretrained", "maml"), strict=True):
        theta0 = [tf.constant(p) for p in artefacts[arm]["inits"][0]]
        ax.plot(grid, sine(grid, amp, phase), "k", lw=2, label="ground truth")
        ax.plot(grid, functional(theta0, grid), ":", color="tab:gray", label="pre-update")
        for k, color in ((1, "tab:green"), (10, "tab:red")):
            res = unroll(loss_fn, theta0, SGD(cfg.inner_lr), k)
            ax.plot(grid, functional(res.params, grid), "--", color=color, label=f"{k} grad step(s)")
        ax.plot(xs, ys, "^", color="tab:purple", ms=8, label=f"{shots} support points")
        ax.set_title(LABELS[arm] + f" (seed 0, K={shots})")
        ax.set_xlabel("x")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    from sine import machine  # bench/sine.py

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meta-steps", type=int, default=400)
    ap.add_argument("--meta-batch-size", type=int, default=5)
    ap.add_argument("--meta-lr", type=float, default=3e-3, help="outer Adam lr of φ and of θ₀")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--shots", type=int, nargs="+", default=[5, 10])
    ap.add_argument("--out-dir", default=OUT_DIR)
    ap.add_argument("--quick", action="store_true", help="a smoke run: 20 meta-steps, 2 seeds, K=5")
    args = ap.parse_args()
    if args.quick:
        args.meta_steps, args.seeds, args.shots = 20, [0, 1], [5]
    logging.getLogger("ml3tf").setLevel(logging.WARNING)

    import ml3tf

    cfg = ml3tf.MetaTrainConfig(
        inner_steps=1,
        inner_lr=0.01,
        meta_lr=args.meta_lr,
        init_lr=args.meta_lr,
        meta_steps=args.meta_steps,
        meta_batch_size=args.meta_batch_size,
        eval_steps=10,
        steps_per_call=100,
        checkpoint_every=args.meta_steps,
        eval_jit_compile=False,  # 10 steps only: XLA's compile time would dominate
    )
    os.makedirs(args.out_dir, exist_ok=True)
    info = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    with tempfile.TemporaryDirectory() as tmp:
        for shots in args.shots:
            results, artefacts = run_shots(shots, args.seeds, cfg, tmp)
            results.update(info)
            _write(os.path.join(args.out_dir, f"results_k{shots}.json"), results)
            print(format_table(results))
        b = broader(shots, args.seeds, cfg, artefacts)
        b.update(info)
        _write(os.path.join(args.out_dir, "broader.json"), b)
        print(format_broader(b))
        plot_adaptation(os.path.join(args.out_dir, "adaptation.png"), shots, cfg, artefacts)
    print(f"wrote {args.out_dir}")


def _write(path: str, obj: dict) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, allow_nan=False)  # strict JSON: diverged values are null
        f.write("\n")


def _pm(mean: float, std: float) -> str:
    return f"{mean:.3f} ± {std:.3f}"


def format_table(res: dict) -> str:
    """Markdown: post-adaptation query MSE after 1 and 10 steps, every arm, test split."""
    k = res["task_options"]["support_points"]
    lines = [
        f"| {k}-shot, {res['task_options']['n_test_tasks']} held-out tasks × {len(res['seeds'])} seeds "
        f"| after 1 step | after {res['steps']} steps |",
        "|---|---|---|",
    ]
    for arm in ARMS:
        s1, fin = res["at_step_1"]["test"], res["final"]["test"]
        lines.append(
            f"| {LABELS[arm]} | {_pm(s1[arm], s1[arm + '_std'])} | {_pm(fin[arm], fin[arm + '_std'])} |"
        )
    return "\n".join(lines)


def format_broader(b: dict) -> str:
    arms = ("baseline", "pretrained", "maml", "learned", "ml3+maml")
    lines = [
        f"| meta-test family ({b['shots']}-shot, MSE after {b['eval_steps']} steps) | "
        + " | ".join(LABELS[a] for a in arms)
        + " |",
        "|---" * (len(arms) + 1) + "|",
    ]
    for family, row in b["rows"].items():
        cells = []
        for a in arms:
            r = row.get(a)
            if r is None:
                cells.append("not applicable")
            elif r.get("diverged") or not math.isfinite(r["final"]):
                cells.append("diverged¹")
            else:
                cells.append(_pm(r["final"], r["final_std"]))
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "not applicable: a learned θ₀ does not fit another architecture (ML3+MAML there: its loss only, "
        "from a fresh init). ¹ SGD at α = "
        f"{b.get('inner_lr', 'α')} diverged (NaN/Inf) on at least one of the {b.get('n_test_tasks', '')} "
        "tasks of at least one seed, so the mean over tasks is not finite.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
