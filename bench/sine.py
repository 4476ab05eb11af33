"""Sine benchmark: meta-step time per execution mode, and the whole 5-seed experiment.

    python bench/sine.py [--repeats 3] [--out bench/results/sine.json] [--quick]

1. Per meta-step, side by side in one process: eager vs ``tf.function`` vs XLA
   (``jit_compile``) for K ∈ {1, 5, 20} inner steps (median over repeats, after a
   warm-up that pays for tracing).
2. Wall time of the full paper experiment — 5 seeds × 500 meta-steps + meta-test —
   as ``ml3tf train sine --seeds 0 1 2 3 4`` in a fresh process (start to exit), and
   the same with ``--eval-every 10`` (the authors' script evaluates every 10
   meta-steps, so that is the equal-work comparison with it).

Prints a table and writes JSON with the machine named. Timings on a shared machine
are noisy: compare ratios from one run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

#: The authors' unmodified PyTorch sine script for the same work (5 seeds, 500
#: meta-steps, evaluation every 10), measured on a quiet 2-core machine here;
#: not re-run by this script.
AUTHORS_QUIET_SECONDS = 175.0


def machine() -> dict:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    import tensorflow as tf

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "tensorflow": tf.__version__,
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
    }


def time_steps(trainer, task, mode: str, steps: int, repeats: int) -> float:
    """Median milliseconds per meta-step."""
    fn = trainer.meta_step if mode == "eager" else trainer.step
    batch = task.sample(0, 0, 1)
    fn(batch, 0)  # warm-up: tracing / compilation
    fn(batch, 1)
    runs = []
    for r in range(repeats):
        start = time.perf_counter()
        for s in range(steps):
            fn(batch, 2 + r * steps + s)
        runs.append((time.perf_counter() - start) / steps * 1e3)
    return statistics.median(runs)


def bench_modes(ks: list[int], repeats: int, quick: bool) -> list[dict]:
    from ml3tf import tasks
    from ml3tf.meta_trainer import MetaTrainer

    task = tasks.get("sine")
    rows = []
    for k in ks:
        row = {"inner_steps": k}
        for mode in ("eager", "function", "xla"):
            cfg = task.default_config().replace(inner_steps=k, jit_compile=mode == "xla")
            trainer = MetaTrainer(task, cfg)
            n = (3 if quick else 10) if mode == "eager" else (20 if quick else 200)
            row[f"{mode}_ms"] = time_steps(trainer, task, mode, n, repeats)
        row["function_speedup_vs_eager"] = row["eager_ms"] / row["function_ms"]
        row["xla_speedup_vs_eager"] = row["eager_ms"] / row["xla_ms"]
        rows.append(row)
    return rows


def bench_experiment(extra: list[str], repeats: int) -> dict:
    """Median wall seconds of ``ml3tf train sine --seeds 0 1 2 3 4`` in a fresh process."""
    times, final = [], None
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "sine")
            cmd = [sys.executable, "-m", "ml3tf", "train", "sine", "--out-dir", out]
            cmd += ["--seeds", "0", "1", "2", "3", "4", "--quiet", *extra]
            start = time.perf_counter()
            subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times.append(time.perf_counter() - start)
            with open(os.path.join(out, "results.json")) as f:
                final = json.load(f)["final"]
    return {
        "command": " ".join(["ml3tf", "train", "sine", "--seeds 0 1 2 3 4", *extra]),
        "seconds_median": statistics.median(times),
        "seconds_all": times,
        "final": final,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "sine.json"))
    ap.add_argument("--quick", action="store_true", help="few steps, one repeat (a smoke run)")
    args = ap.parse_args()
    repeats = 1 if args.quick else args.repeats

    modes = bench_modes([1, 5, 20], repeats, args.quick)
    lean = bench_experiment([], repeats)
    equal = bench_experiment(["--eval-every", "10"], 1 if args.quick else max(1, repeats - 1))
    result = {
        "benchmark": "sine",
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "meta_step_ms": modes,
        "experiment": lean,
        "experiment_eval_every_10": equal,
        "authors_pytorch_quiet_seconds": AUTHORS_QUIET_SECONDS,
        "speedup_vs_authors_equal_work": AUTHORS_QUIET_SECONDS / equal["seconds_median"],
        "speedup_vs_authors_lean": AUTHORS_QUIET_SECONDS / lean["seconds_median"],
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, allow_nan=False)
        f.write("\n")

    m = result["machine"]
    print(f"machine: {m['cpu']} ×{m['cpu_count']}, TF {m['tensorflow']}")
    print("\nms per meta-step (sine, median)")
    print(f"{'K':>4} {'eager':>9} {'tf.function':>12} {'XLA':>9} {'fn/eager':>9} {'XLA/eager':>10}")
    for r in modes:
        print(
            f"{r['inner_steps']:>4} {r['eager_ms']:>9.2f} {r['function_ms']:>12.3f} {r['xla_ms']:>9.3f}"
            f" {r['function_speedup_vs_eager']:>8.1f}× {r['xla_speedup_vs_eager']:>9.1f}×"
        )
    print("\nfull 5-seed experiment, process start to exit (median)")
    for key, label in (("experiment", "lean (paper default)"), ("experiment_eval_every_10", "eval every 10")):
        e = result[key]
        print(
            f"  {label:<22} {e['seconds_median']:7.1f} s   test learned {e['final']['test']['learned']:.3f}"
            f" vs mse {e['final']['test']['baseline']:.3f}"
        )
    print(
        f"  authors' PyTorch script, equal work (quiet machine): {AUTHORS_QUIET_SECONDS:.0f} s"
        f" -> {result['speedup_vs_authors_equal_work']:.1f}× (equal work), "
        f"{result['speedup_vs_authors_lean']:.1f}× (lean run)"
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
