"""The full classification experiment, timed: digits, learned loss vs cross-entropy, 5 seeds.

    python bench/classification.py [--seeds 0 1 2 3 4] [--quick]

Runs, in one process, each protocol below as ``ml3tf.train(task, config, seeds=…)``
(meta-training per seed, then meta-test of fresh learners on the learned loss and
on cross-entropy, same SGD steps), copies each ``results.json`` + ``results.png``
to ``docs/results/classification/<protocol>/`` and writes the wall times to
``bench/results/classification.json`` (the budget is 10 minutes for all of it).

Protocols (learner: the LeNet-style conv net):

* ``binary_paper``: the authors' binary MNIST settings — inner SGD lr 1e-3, one
  inner step, outer Adam 1e-3, 500 meta-steps, 100 SGD steps at meta-test;
  meta-train on digits 4 vs 9, meta-test on all 28 pairs of the other 8 digits.
* ``binary_meta_lr``: the same, with outer Adam lr 1e-2 (the only change): in 500
  meta-steps the loss learns to drive learners much further per SGD step.
* ``binary_fast``: inner lr 0.05, 5 inner steps, outer lr 1e-3 — both losses
  train the learner well within 100 steps (cross-entropy is no longer slow).
* ``multiclass_meta_lr`` / ``multiclass_fast``: 10-way with those settings.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

from sine import machine  # noqa: E402

META_LR = dict(meta_lr=1e-2)
FAST = dict(inner_lr=0.05, inner_steps=5, meta_lr=1e-3)
PROTOCOLS = {
    "binary_paper": ({}, {}),
    "binary_meta_lr": ({}, META_LR),
    "binary_fast": ({}, FAST),
    "multiclass_meta_lr": ({"mode": "multiclass"}, META_LR),
    "multiclass_fast": ({"mode": "multiclass"}, FAST),
}
OUT_DIR = os.path.join(REPO, "docs", "results", "classification")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--quick", action="store_true", help="a few steps (smoke test); writes nothing to docs/")
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "results", "classification.json"))
    args = ap.parse_args()

    import ml3tf
    from ml3tf import tasks
    from ml3tf.results import atomic_write_text, format_summary

    start = time.perf_counter()
    runs = {}
    for name, (options, changes) in PROTOCOLS.items():
        t0 = time.perf_counter()
        task = tasks.get("classification", **options)
        cfg = task.default_config().replace(**changes)
        if args.quick:
            cfg = cfg.replace(meta_steps=10, eval_steps=3)
        with tempfile.TemporaryDirectory() as tmp:
            run = ml3tf.train(task, cfg, tmp, seeds=args.seeds)
            if not args.quick:
                dest = os.path.join(OUT_DIR, name)
                os.makedirs(dest, exist_ok=True)
                for f in ("results.json", "results.png"):
                    shutil.copy(os.path.join(tmp, f), os.path.join(dest, f))
        res = run.results
        seconds = time.perf_counter() - t0
        print(format_summary(res))
        print(f"{name}: {seconds:.1f} s", flush=True)
        runs[name] = {
            "seconds": seconds,
            "task_options": task.describe_options(),
            "config": cfg.to_dict(),
            "final": res["final"],
            "at_step_1": res["at_step_1"],
            "loss_final": res["loss"]["final"],
        }
    total = time.perf_counter() - start
    out = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "command": "python bench/classification.py " + " ".join(sys.argv[1:]),
        "seeds": args.seeds,
        "quick": args.quick,
        "runs": runs,
        "total_seconds": total,
        # The machine is shared: the 1-minute load average at the end says how busy it was.
        "load_average_end": os.getloadavg()[0],
        "budget_seconds": 600,
    }
    print(
        "| protocol | seconds |\n|---|---|\n"
        + "\n".join(f"| {k} | {v['seconds']:.1f} |" for k, v in runs.items())
    )
    print(f"total: {total:.1f} s (budget 600 s)")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    atomic_write_text(args.out, json.dumps(out, indent=1, allow_nan=False) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
