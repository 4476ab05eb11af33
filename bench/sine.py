"""Sine benchmark: meta-step time per execution mode, and the whole 5-seed experiment.

    python bench/sine.py [--repeats 3] [--out bench/results/sine.json] [--quick]

1. Per meta-step, side by side in one process: eager (``trainer.meta_step``, one call per
   step) vs ``tf.function`` vs XLA (``jit_compile``: the whole chunk — gradients, Adam
   update of φ, finite guard — is one XLA computation), the compiled modes timed as chunks
   of ``run_steps`` (``steps_per_call`` steps per call), for K ∈ {1, 5, 20} inner steps
   (median over repeats, after a warm-up chunk that pays for tracing and compilation).
2. Wall time of the full paper experiment — 5 seeds × 500 meta-steps + meta-test —
   as ``ml3tf train sine --seeds 0 1 2 3 4`` in a fresh process (start to exit), and
   the same with ``--eval-every 10`` (the authors' script evaluates every 10
   meta-steps, so that is the equal-work comparison with it); each with the seeds side by
   side in one graph (the default) and one after the other (``--no-batch-seeds``), the
   runs interleaved so that machine drift hits all of them alike.
3. One meta-test of the 5 seeds (``task.evaluate``: 11 learners per seed × 100 SGD steps on the
   learned loss, and the MSE arm) with XLA and in the plain graph, each in a fresh process: the
   first call (tracing and compilation included) and the median of the later ones, hence after
   how many evaluations XLA's compile has paid back (what ``eval_jit_compile=None`` goes by).

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


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``; empty where unknown)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return ""


def machine() -> dict:
    cpu = cpu_name()
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
    """Median milliseconds per meta-step: eager one call per step; compiled, ``run_steps``
    chunks of ``steps`` meta-steps (one call each)."""
    runs = []
    if mode == "eager":
        batch = task.sample(0, 0, 1)
        trainer.meta_step(batch, 0)  # warm-up
        for r in range(repeats):
            start = time.perf_counter()
            for s in range(steps):
                trainer.meta_step(batch, 1 + r * steps + s)
            runs.append((time.perf_counter() - start) / steps * 1e3)
        return statistics.median(runs)
    trainer.run_steps(0, steps)  # warm-up: tracing / compilation
    for r in range(repeats):
        start = time.perf_counter()
        trainer.run_steps((r + 1) * steps, steps)
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
            n = (3 if quick else 10) if mode == "eager" else (20 if quick else 200)
            cfg = task.default_config().replace(inner_steps=k, jit_compile=mode == "xla", steps_per_call=n)
            row[f"{mode}_ms"] = time_steps(MetaTrainer(task, cfg), task, mode, n, repeats)
        row["function_speedup_vs_eager"] = row["eager_ms"] / row["function_ms"]
        row["xla_speedup_vs_eager"] = row["eager_ms"] / row["xla_ms"]
        rows.append(row)
    return rows


#: The end-to-end runs, all ``ml3tf train sine --seeds 0 1 2 3 4`` plus these flags.
EXPERIMENTS = {
    "experiment": [],
    "experiment_eval_every_10": ["--eval-every", "10"],
    "experiment_one_by_one": ["--no-batch-seeds"],
    "experiment_eval_every_10_one_by_one": ["--eval-every", "10", "--no-batch-seeds"],
}


def run_once(extra: list[str]) -> tuple[float, dict]:
    """Wall seconds of ``ml3tf train sine --seeds 0 1 2 3 4 <extra>`` in a fresh process, and its
    ``final`` results."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "sine")
        cmd = [sys.executable, "-m", "ml3tf", "train", "sine", "--out-dir", out]
        cmd += ["--seeds", "0", "1", "2", "3", "4", "--quiet", *extra]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        with open(os.path.join(out, "results.json")) as f:
            return seconds, json.load(f)["final"]


def bench_experiments(repeats: int) -> dict[str, dict]:
    """Every entry of ``EXPERIMENTS`` ``repeats`` times, interleaved (round r runs each once)."""
    times: dict[str, list[float]] = {name: [] for name in EXPERIMENTS}
    finals: dict[str, dict] = {}
    for r in range(repeats):
        names = list(EXPERIMENTS) if r % 2 == 0 else list(reversed(EXPERIMENTS))
        for name in names:
            seconds, finals[name] = run_once(EXPERIMENTS[name])
            times[name].append(seconds)
    return {
        name: {
            "command": " ".join(["ml3tf", "train", "sine", "--seeds 0 1 2 3 4", *extra]),
            "seconds_median": statistics.median(times[name]),
            "seconds_all": times[name],
            "final": finals[name],
        }
        for name, extra in EXPERIMENTS.items()
    }


def _time_evaluations(jit: bool, rounds: int) -> dict:
    """In this process: seconds of ``rounds`` meta-tests of 5 seeds (fresh loss networks)."""
    from ml3tf import tasks

    task = tasks.get("sine")
    cfg = task.default_config().replace(eval_jit_compile=jit)
    seeds = [0, 1, 2, 3, 4]
    losses = [task.make_meta_loss() for _ in seeds]
    seconds = []
    for _ in range(rounds):
        start = time.perf_counter()
        task.evaluate(losses, cfg, seeds)
        seconds.append(time.perf_counter() - start)
    return {"first_s": seconds[0], "later_s_median": statistics.median(seconds[1:]), "all_s": seconds}


def bench_evaluations(rounds: int) -> dict:
    """``_time_evaluations`` with and without XLA, each in a fresh process."""
    out = {}
    for name, jit in (("xla", True), ("graph", False)):
        cmd = [sys.executable, os.path.abspath(__file__), "--evaluation-child", str(int(jit)), str(rounds)]
        done = subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, text=True)
        out[name] = json.loads(done.stdout.strip().splitlines()[-1])
    saved = out["graph"]["later_s_median"] - out["xla"]["later_s_median"]
    extra = out["xla"]["first_s"] - out["graph"]["first_s"]
    out["xla_pays_back_after"] = 1 + extra / saved if saved > 0 else None
    from ml3tf.config import EVAL_XLA_MIN_EVALUATIONS

    out["xla_from_evaluations"] = EVAL_XLA_MIN_EVALUATIONS  # what eval_jit_compile=None goes by
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "sine.json"))
    ap.add_argument("--quick", action="store_true", help="few steps, one repeat (a smoke run)")
    ap.add_argument("--evaluation-child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.evaluation_child:  # one side of bench_evaluations, in its own process
        print(json.dumps(_time_evaluations(bool(args.evaluation_child[0]), args.evaluation_child[1])))
        return
    repeats = 1 if args.quick else args.repeats

    modes = bench_modes([1, 5, 20], repeats, args.quick)
    evaluation = bench_evaluations(3 if args.quick else 8)
    experiments = bench_experiments(repeats)
    lean, equal = experiments["experiment"], experiments["experiment_eval_every_10"]
    result = {
        "benchmark": "sine",
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "meta_step_ms": modes,
        "evaluation": evaluation,
        **experiments,
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
    print("\none meta-test of 5 seeds: first call / later calls (median)")
    for name in ("xla", "graph"):
        e = evaluation[name]
        print(f"  {name:<6} {e['first_s']:6.2f} s / {e['later_s_median']:6.3f} s")
    back = evaluation["xla_pays_back_after"]
    print("  XLA pays back after " + ("never" if back is None else f"{back:.1f} evaluations"))
    print("\nfull 5-seed experiment, process start to exit (median)")
    for key in EXPERIMENTS:
        e = result[key]
        label = key.removeprefix("experiment").strip("_") or "lean"
        print(
            f"  {label:<32} {e['seconds_median']:7.1f} s   test learned {e['final']['test']['learned']:.3f}"
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
