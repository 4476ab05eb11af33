"""Scaling benchmark: meta-batch size, long unrolls (memory and time), side by side in one run.

    python bench/scale.py [--repeats 3] [--quick] [--out bench/results/scale.json]

1. Time per meta-step vs meta-batch size B ∈ {1, 4, 16, 64} (sine, family mode, K = 1):
   the vectorised meta-batch (``tf.vectorized_map``, the default) and the per-task loop.
2. Peak memory and time per meta-step vs inner steps K ∈ {10, 100, 1000} for
   ``backprop`` = full / segmented (S = 25) / truncated (T = 10). Each configuration
   runs in a fresh subprocess; peak memory is the rise of ``ru_maxrss`` over the
   meta-steps, tracing included (the same for every K: the inner loop is a
   ``tf.while_loop``); ``tf.config.experimental.get_memory_info`` reports 0 on CPU.

3. Time per meta-step on one device vs ``MirroredStrategy`` over 2 logical CPU devices
   (B = 8, one fresh process; on 2 cores the two replicas share the same cores, so
   this measures the strategy's overhead, not a speed-up).
4. Under XLA (``jit_compile=True``): the inner loop unrolled in Python vs a ``tf.while_loop``
   (``unroll_loop``), compile time and ms per meta-step, for the small sine step and the 7-DoF
   inverse-dynamics step at several K × B, and which of the two ``unroll_loop="auto"`` picks
   (``ml3tf.inner.resolve_loop``). Each configuration in a fresh process.

Prints tables and writes JSON with the machine named. Compare ratios from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

MEMORY_PROBE = """
import os, resource, sys, time, json
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
sys.path.insert(0, {repo!r})
from ml3tf import tasks
from ml3tf.meta_trainer import MetaTrainer
task = tasks.get("sine", n_points=100)
cfg = task.default_config().replace(inner_steps={k}, backprop={mode!r}, segment_length=25, truncate_steps=10,
                                    inner_lr=1e-3, unroll_loop="while")
trainer = MetaTrainer(task, cfg)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
trainer.run_steps(0, {steps})  # trace and first steps: the rise includes the (K-independent) trace
start = time.perf_counter()
trainer.run_steps({steps}, {steps})
seconds = (time.perf_counter() - start) / {steps}
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"peak_rise_mb": (after - before) / 1024, "peak_rss_mb": after / 1024,
                   "ms_per_step": seconds * 1e3}}))
"""


def machine() -> dict:
    from bench.sine import machine as sine_machine

    return sine_machine()


BATCH_PROBE = """
import os, sys, time, json, statistics
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
sys.path.insert(0, {repo!r})
from ml3tf import tasks
from ml3tf.meta_trainer import MetaTrainer
task = tasks.get("sine", mode="family", n_points=50)
cfg = task.default_config().replace(meta_batch_size={b}, steps_per_call=10, **{changes!r})
trainer = MetaTrainer(task, cfg)
n = {n}
trainer.run_steps(0, n)  # trace
times = []
for r in range({repeats}):
    start = time.perf_counter()
    trainer.run_steps(n + r * n, n)
    times.append((time.perf_counter() - start) / n * 1e3)
print(json.dumps({{"ms": statistics.median(times)}}))
"""


MIRRORED_PROBE = """
import os, sys, time, json, statistics
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, {repo!r})
from ml3tf import tasks
from ml3tf.meta_trainer import MetaTrainer
task = tasks.get("sine", mode="family", n_points=50)
out = {{}}
for strategy in ("default", "mirrored"):
    trainer = MetaTrainer(task, task.default_config().replace(meta_batch_size={b}, strategy=strategy))
    n = {n}
    trainer.run_steps(0, n)  # trace
    times = []
    for r in range({repeats}):
        start = time.perf_counter()
        trainer.run_steps(n + r * n, n)
        times.append((time.perf_counter() - start) / n * 1e3)
    out[strategy + "_ms"] = statistics.median(times)
    out[strategy + "_replicas"] = trainer.replicas
print(json.dumps(out))
"""


LOOP_PROBE = """
import os, sys, time, json, statistics
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
sys.path.insert(0, {repo!r})
from ml3tf import tasks
from ml3tf.meta_trainer import MetaTrainer
task = tasks.get({task!r}, **{options!r})
cfg = task.default_config().replace(inner_steps={k}, meta_batch_size={b}, jit_compile=True,
                                    steps_per_call={n}, unroll_loop={loop!r}, select_every=0,
                                    **{changes!r})
trainer = MetaTrainer(task, cfg)
n = {n}
start = time.perf_counter()
trainer.run_steps(0, n)  # trace, compile, n steps
first = time.perf_counter() - start
times = []
for r in range({repeats}):
    start = time.perf_counter()
    trainer.run_steps(n + r * n, n)
    times.append((time.perf_counter() - start) / n)
ms = statistics.median(times) * 1e3
print(json.dumps({{"ms": ms, "compile_s": first - n * ms / 1e3}}))
"""

#: MAML on the sine family, 10-shot (bench/peers.py's MAML step): θ₀ learned, B tasks per step.
_MAML = (
    {"mode": "family", "support_points": 10, "query_points": 25, "learner_hidden": (40, 40)},
    {"method": "maml", "inner_lr": 0.01, "init_lr": 0.001},
)
#: (label, task, task options, config changes, K, B) of the loop comparison under XLA: the sine
#: steps are small, the inverse-dynamics step (7-DoF arm, 21 inputs) is not; K × B spans the
#: "auto" rule's threshold.
LOOP_CASES = (
    ("sine", "sine", {}, {}, 5, 1),
    ("sine", "sine", {}, {}, 5, 2),
    ("sine", "sine", {}, {}, 10, 2),
    ("sine", "sine", {}, {}, 20, 1),
    ("sine MAML", "sine", *_MAML, 5, 5),
    ("sine MAML", "sine", *_MAML, 20, 5),
    ("inverse_dynamics", "inverse_dynamics", {}, {}, 10, 1),
    ("inverse_dynamics", "inverse_dynamics", {}, {}, 10, 4),
    ("inverse_dynamics", "inverse_dynamics", {}, {}, 10, 16),
)


def bench_loop(repeats: int, quick: bool) -> list[dict]:
    """Compile seconds and ms per meta-step under XLA, Python-unrolled vs ``tf.while_loop`` inner
    loop, per ``LOOP_CASES`` entry (each in a fresh process), and what ``"auto"`` resolves to."""
    from ml3tf.inner import resolve_loop

    rows = []
    for label, task, options, changes, k, b in LOOP_CASES[:2] if quick else LOOP_CASES:
        # the 1-minute load average before the case: compile times move with other work on the machine
        row: dict = {"task": label, "inner_steps": k, "meta_batch_size": b, "load_before": os.getloadavg()[0]}
        row["auto"] = resolve_loop("auto", k, jit_compile=True, copies=b)
        n = 5 if task == "inverse_dynamics" else 100
        for loop in ("python", "while"):
            case = {"task": task, "options": options, "changes": changes, "k": k, "b": b}
            code = LOOP_PROBE.format(repo=REPO, n=n, loop=loop, repeats=repeats, **case)
            res = _probe(code)
            for key in ("ms", "compile_s", "error"):
                if key in res:
                    row[f"{loop}_{key}"] = res[key]
        if row.get("python_ms") and row.get("while_ms"):
            row["faster"] = "python" if row["python_ms"] < row["while_ms"] else "while"
            # meta-steps after which the unrolled loop's faster steps have paid for its longer
            # compile (None: it never does, or it compiles no longer)
            gain_ms = row["while_ms"] - row["python_ms"]
            extra_s = row["python_compile_s"] - row["while_compile_s"]
            pays = gain_ms > 0 and extra_s > 0
            row["python_pays_back_after"] = round(extra_s * 1e3 / gain_ms) if pays else None
        rows.append(row)
    return rows


def bench_mirrored(b: int, repeats: int, quick: bool) -> dict:
    """ms per meta-step, one device vs MirroredStrategy over 2 logical CPUs (same process, same B)."""
    res = _probe(MIRRORED_PROBE.format(repo=REPO, b=b, n=10 if quick else 30, repeats=repeats))
    return {"meta_batch_size": b, **res}


def _probe(code: str) -> dict:
    """Run a probe in a fresh process; its last stdout line is JSON (or an error is returned)."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        lines = [line for line in out.stderr.strip().splitlines() if line.strip()] or ["no output"]
        return {"error": f"exit {out.returncode}: {lines[-1][:200]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_meta_batch(sizes: list[int], repeats: int, quick: bool) -> list[dict]:
    """ms per meta-step per B and mode, each configuration in a fresh process."""
    modes = {
        "loop_ms": {"vectorize_meta_batch": False},
        "vectorized_ms": {"vectorize_meta_batch": True},
        # Under jit_compile ml3tf loops over the tasks (XLA fuses the loop; vectorised
        # second-order steps under XLA were ~300× slower).
        "xla_ms": {"jit_compile": True},
    }
    rows = []
    for b in sizes:
        row: dict = {"meta_batch_size": b}
        for name, changes in modes.items():
            if name == "loop_ms" and b > 16:
                row[name] = None  # tracing a 64-task Python loop alone takes about a minute
                continue
            code = BATCH_PROBE.format(repo=REPO, b=b, changes=changes, n=10 if quick else 30, repeats=repeats)
            res = _probe(code)
            row[name] = res.get("ms")
            if "error" in res:
                row[name.replace("_ms", "_error")] = res["error"]
        rows.append(row)
    for key in ("vectorized_ms", "xla_ms"):
        for row in rows:
            ok = row[key] is not None and rows[0][key] is not None
            row[key.replace("_ms", "_cost_vs_b1")] = row[key] / rows[0][key] if ok else None
    return rows


def bench_unroll(ks: list[int], quick: bool) -> list[dict]:
    rows = []
    for k in ks:
        for mode in ("full", "segmented", "truncated"):
            steps = 2 if k >= 1000 or quick else 5
            code = MEMORY_PROBE.format(repo=REPO, k=k, mode=mode, steps=steps)
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            if out.returncode != 0:
                rows.append(
                    {"inner_steps": k, "backprop": mode, "error": out.stderr.strip().splitlines()[-1]}
                )
                continue
            rows.append(
                {"inner_steps": k, "backprop": mode, **json.loads(out.stdout.strip().splitlines()[-1])}
            )
    return rows


#: The parts ``--parts`` can choose (all by default).
PARTS = ("batch", "unroll", "mirrored", "loop")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "scale.json"))
    ap.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="measure only these parts; the others are kept from an existing --out file",
    )
    args = ap.parse_args()
    repeats = 1 if args.quick else args.repeats

    old: dict = {}
    if set(args.parts) != set(PARTS) and os.path.exists(args.out):
        with open(args.out) as f:
            old = json.load(f)
    batch_rows = (
        bench_meta_batch([1, 4, 16, 64], repeats, args.quick) if "batch" in args.parts else old["meta_batch"]
    )
    unroll_rows = bench_unroll([1, 10, 100, 1000], args.quick) if "unroll" in args.parts else old["unroll"]
    mirrored = bench_mirrored(8, repeats, args.quick) if "mirrored" in args.parts else old.get("mirrored")
    loop_rows = bench_loop(repeats, args.quick) if "loop" in args.parts else old.get("xla_loop")
    result = {
        "benchmark": "scale",
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        # when a part is kept from an earlier --out file, its own measurement date stays with it
        "part_dates": {
            part: (
                time.strftime("%Y-%m-%d %H:%M:%S %Z")
                if part in args.parts
                else old.get("part_dates", {}).get(part, old.get("date"))
            )
            for part in PARTS
        },
        "meta_batch": batch_rows,
        "unroll": unroll_rows,
        "mirrored": mirrored,
        "xla_loop": loop_rows,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, allow_nan=False)
        f.write("\n")

    print("ms per meta-step vs meta-batch size (sine family, K=1, median); cost relative to B=1")
    print(f"{'B':>4} {'loop':>8} {'vectorized':>11} {'(cost)':>7} {'XLA':>10} {'(cost)':>7}")
    for r in batch_rows:

        def fmt(v, spec):
            return "-" if v is None else format(v, spec)

        cells = [
            fmt(r["loop_ms"], ".2f"),
            fmt(r["vectorized_ms"], ".2f"),
            fmt(r["vectorized_cost_vs_b1"], ".2f"),
        ]
        cells += [fmt(r["xla_ms"], ".2f"), fmt(r["xla_cost_vs_b1"], ".2f")]
        b = r["meta_batch_size"]
        print(f"{b:>4} {cells[0]:>8} {cells[1]:>11} {cells[2]:>6}× {cells[3]:>10} {cells[4]:>6}×")
    print("\nlong unrolls (sine learner, 100 points; fresh process each)")
    print(f"{'K':>5} {'backprop':>10} {'peak rise MB':>13} {'ms/step':>9}")
    for r in unroll_rows:
        if "error" in r:
            print(f"{r['inner_steps']:>5} {r['backprop']:>10}   error: {r['error']}")
        else:
            rise, ms = r["peak_rise_mb"], r["ms_per_step"]
            print(f"{r['inner_steps']:>5} {r['backprop']:>10} {rise:>13.1f} {ms:>9.1f}")
    if mirrored:
        print("\nMirroredStrategy over 2 logical CPUs vs one device (sine family, B=8, K=1)")
        print(
            f"  one device: {mirrored.get('default_ms', float('nan')):.2f} ms/step, "
            f"mirrored: {mirrored.get('mirrored_ms', float('nan')):.2f} ms/step {mirrored.get('error', '')}"
        )
    if loop_rows:
        print("\nunder XLA: inner loop unrolled in Python vs tf.while_loop (fresh process each)")
        head = ("python ms", "compile s", "while ms", "compile s")
        print(f"{'task':>17} {'K':>3} {'B':>3} " + " ".join(f"{h:>10}" for h in head) + " auto")
        for r in loop_rows:
            cells = [r.get(k) for k in ("python_ms", "python_compile_s", "while_ms", "while_compile_s")]
            cells = ["-" if v is None else f"{v:.2f}" for v in cells]
            k, b = r["inner_steps"], r["meta_batch_size"]
            print(f"{r['task']:>17} {k:>3} {b:>3} " + " ".join(f"{c:>10}" for c in cells) + f" {r['auto']}")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
