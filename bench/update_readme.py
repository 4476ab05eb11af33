"""Regenerate the numbers in README.md from result files (no number in the README is typed).

    python bench/update_readme.py --run     # re-run the sine experiment into docs/results/sine/, then render
    python bench/update_readme.py           # only re-render README blocks from the committed JSON files
    python bench/update_readme.py --check   # only compare: exit 1 if README.md differs from the JSON files

``--check`` renders in memory and writes nothing (no README, no bytecode cache). It exits 0
when every generated block of README.md equals what the JSON files give, and 1 otherwise,
printing a unified diff per block that differs; a block whose result file is missing, or a
block the renderer writes that README.md lacks, fails the check too. ``tests/test_readme.py``
runs it, so the test suite fails on a hand-edited or stale number. Rendering needs neither
TensorFlow nor TF-Agents (the bench modules whose tables it uses import those lazily).
``--readme PATH`` renders or checks another copy of the README (the tests use it).

Blocks between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` are replaced:

* ``sine``: docs/results/sine/results.json, written by
  ``ml3tf train sine --out-dir <tmp> --seeds 0 1 2 3 4`` (the README's first command);
* ``bench-sine``: bench/results/sine.json, written by ``python bench/sine.py``;
* ``bench-peers``: bench/results/peers.json, written by ``python bench/peers.py``;
* ``bench-scale``: bench/results/scale.json, written by ``python bench/scale.py``;
* ``keras-learned-loss``: bench/results/keras_learned_loss.json, written by
  ``python bench/keras_learned_loss.py``;
* ``maml-sine``: docs/results/maml_sine/*.json, written by ``python bench/maml_sine.py``;
* ``shaped-sine``: docs/results/shaped_sine/results.json, written by ``python bench/shaped_sine.py``;
* ``inverse-dynamics``: docs/results/inverse_dynamics/results.json, by ``python bench/inverse_dynamics.py``;
* ``classification``: docs/results/classification/*/results.json and
  bench/results/classification.json, written by ``python bench/classification.py``;
* ``transfer``: bench/results/transfer.json, written by ``python bench/transfer.py``;
* ``model-free``: docs/results/point_mass/results.json, written by ``python bench/model_free.py``;
* ``reacher``: docs/results/reacher/results.json, written by
  ``python bench/reacher.py --robot reacher_v5 --meta-steps 600 --meta-lr 0.001 --eval-steps 5``;
* ``reacher-robot``: docs/results/reacher_robot/results.json, written by ``python bench/reacher.py``
  (the authors' robot and protocol);
* ``reacher-goal-relative-linear``: docs/results/reacher_goal_relative_linear/results.json, written by
  the same command with ``--loss-features goal_relative --meta-loss-output linear --out-dir …``;
* ``mountain-car``: docs/results/mountain_car/results.json (and mountain_car_1000/), written by
  ``python bench/mountain_car.py``;
* ``mountain-car-robust``: docs/results/mountain_car_robust/results.json, written by
  ``python bench/mountain_car.py --config robust``;
* ``mountain-car-fresh``: docs/results/mountain_car_fresh/results.json, written by
  ``python bench/mountain_car.py --config fresh``;
* ``shaped-sine-10-seeds``: docs/results/shaped_sine_10_seeds/results.json, written by
  ``python bench/shaped_sine.py --seeds 0 … 9 --out-dir docs/results/shaped_sine_10_seeds``;
* ``mountain-car-gain-region``: docs/results/mountain_car_gain_region/results.json, written by
  ``python bench/mountain_car.py --gain-map``;
* ``shaped-sine-anchored``: docs/results/shaped_sine_anchored/results.json, written by
  ``python bench/shaped_sine.py --config anchored``;
* ``own-data``: bench/results/own_data.json, written by ``python bench/own_data.py`` (its
  hyper-parameters: bench/results/own_data_tuning.json, by ``python bench/own_data.py --tune``).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
README = os.path.join(REPO, "README.md")
SINE_DIR = os.path.join(REPO, "docs", "results", "sine")


def run_sine() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "sine")
        cmd = [
            sys.executable,
            "-m",
            "ml3tf",
            "train",
            "sine",
            "--out-dir",
            out,
            "--seeds",
            "0",
            "1",
            "2",
            "3",
            "4",
        ]
        subprocess.run([*cmd, "--quiet"], check=True, cwd=REPO)
        os.makedirs(SINE_DIR, exist_ok=True)
        for name in ("results.json", "results.png"):
            shutil.copy(os.path.join(out, name), os.path.join(SINE_DIR, name))


def _pm(r: dict, method: str) -> str:
    return f"{r[method]:.3f} ± {r[method + '_std']:.3f}"


def render_sine() -> str:
    with open(os.path.join(SINE_DIR, "results.json")) as f:
        res = json.load(f)
    lines = [
        f"MSE of fresh learners (mean ± std over seeds {res['seeds']}; "
        f"meta-test: {res['steps']} SGD steps at lr {res['config']['inner_lr']}):",
        "",
        "| split | after | learned loss (ML3) | MSE loss |",
        "|---|---|---|---|",
    ]
    for key, after in (("at_step_1", "1 step"), ("final", f"{res['steps']} steps")):
        for split in ("train", "test"):
            r = res[key][split]
            lines.append(f"| {split} | {after} | {_pm(r, 'learned')} | {_pm(r, 'baseline')} |")
    lines += [
        "",
        "Written by `ml3tf train sine --out-dir … --seeds 0 1 2 3 4` "
        "(via `python bench/update_readme.py --run`) into "
        "[docs/results/sine/results.json](docs/results/sine/results.json); "
        "plot: [docs/results/sine/results.png](docs/results/sine/results.png).",
    ]
    return "\n".join(lines)


def render_bench_sine() -> str:
    with open(os.path.join(REPO, "bench", "results", "sine.json")) as f:
        b = json.load(f)
    m = b["machine"]
    lines = [
        f"Measured by `python bench/sine.py` on {m['cpu']} ×{m['cpu_count']} cores, TF {m['tensorflow']} "
        f"({b['date']}; [bench/results/sine.json](bench/results/sine.json)).",
        "",
        "| inner steps K | eager ms/step | `tf.function` ms/step | XLA ms/step "
        "| tf.function speed-up | XLA speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for r in b["meta_step_ms"]:
        lines.append(
            f"| {r['inner_steps']} | {r['eager_ms']:.2f} | {r['function_ms']:.3f} | {r['xla_ms']:.3f} "
            f"| {r['function_speedup_vs_eager']:.1f}× | {r['xla_speedup_vs_eager']:.1f}× |"
        )
    lean, equal = b["experiment"], b["experiment_eval_every_10"]
    one_lean, one_equal = b.get("experiment_one_by_one"), b.get("experiment_eval_every_10_one_by_one")
    lines += [
        "",
        "| whole 5-seed experiment (process start to exit) | seeds side by side (default) "
        "| one after the other (`--no-batch-seeds`) |",
        "|---|---|---|",
        f"| `ml3tf train sine --seeds 0 1 2 3 4` (paper protocol, meta-test at the end) "
        f"| {lean['seconds_median']:.1f} s | {_seconds(one_lean)} |",
        f"| same with `--eval-every 10` (the authors' script's amount of work) "
        f"| {equal['seconds_median']:.1f} s | {_seconds(one_equal)} |",
        f"| authors' PyTorch script, same work, quiet 2-core machine (reference figure, not re-run) "
        f"| {b['authors_pytorch_quiet_seconds']:.0f} s | |",
        "",
        f"Equal work: {b['speedup_vs_authors_equal_work']:.1f}× faster than the authors' script; "
        f"the lean default run: {b['speedup_vs_authors_lean']:.1f}×. (Medians of "
        f"{len(lean['seconds_all'])} interleaved runs each.)",
    ]
    ev = b.get("evaluation")
    if ev is not None:
        x, g, back = ev["xla"], ev["graph"], ev["xla_pays_back_after"]
        lines += [
            "",
            f"One meta-test of the 5 seeds (11 learners per seed × 100 SGD steps, both arms; fresh "
            f"process, median of {len(x['all_s']) - 1} later calls): with XLA the first call takes "
            f"{x['first_s']:.2f} s and later ones {x['later_s_median']:.3f} s, in the plain graph "
            f"{g['first_s']:.2f} s and {g['later_s_median']:.3f} s, so XLA pays back after "
            + ("no number of evaluations" if back is None else f"about {back:.0f} evaluations")
            + " here (a figure that moves between runs on a shared machine). By default "
            f"(`eval_jit_compile` unset) a CPU run compiles its meta-tests with XLA when it runs at "
            f"least {ev['xla_from_evaluations']} of them (so the `--eval-every 10` run does), not "
            "for the lean run's one; on a GPU or TPU always.",
        ]
    return "\n".join(lines)


def _seconds(e: dict | None) -> str:
    return "—" if e is None else f"{e['seconds_median']:.1f} s"


#: bench/peers.py's stacks, in the table's order, with their labels.
PEER_STACKS = (
    ("ml3tf_function", "ml3tf `run_steps`, `tf.function`"),
    ("ml3tf_xla", 'ml3tf `run_steps`, XLA (`jit_compile=True`, `unroll_loop="python"`)'),
    ("ml3tf_step_xla", "ml3tf `trainer.step` per call, XLA"),
    ("torch_func", "PyTorch `torch.func` (functional_call + grad)"),
    ("torch_higher", "PyTorch + `higher` (the authors' stack)"),
    ("jax", "JAX `jit` (`lax.scan` chunk)"),
)


def render_bench_peers() -> str:
    with open(os.path.join(REPO, "bench", "results", "peers.json")) as f:
        b = json.load(f)
    m = b["machine"]
    v = m["versions"]
    tf_version = v.get("tensorflow-cpu") or v.get("tensorflow")
    ks = [str(k) for k in b["ks"]]
    lines = [
        f"Measured by `{b['command']}` on {m['cpu']} ×{m['cpu_count']} cores, every stack pinned to "
        f"CPUs {m['pinned_cpus']} with {b['threads']} thread(s) ({b['date']}; "
        f"[bench/results/peers.json](bench/results/peers.json)); TF {tf_version}, "
        f"torch {v['torch']}, higher {v['higher']}, JAX {v['jax']}. Each peer's meta-gradient was checked "
        "against ml3tf's on the same inputs before it was timed.",
        "",
        "| ms per meta-step | "
        + " | ".join(f"ML3 K={k}" for k in ks)
        + " | "
        + " | ".join(f"MAML K={k}" for k in ks)
        + " | ms per evaluation | max rel. error f32 / f64 |",
        "|---|" + "---|" * (2 * len(ks) + 2),
    ]
    for name, label in PEER_STACKS:
        st = b["stacks"].get(name)
        if st is None or "timing" not in st:
            continue
        t = st["timing"]
        cells = [_num((t.get("ml3") or {}).get(k, {}).get("ms"), ".2f") for k in ks]
        cells += [_num((t.get("maml") or {}).get(k, {}).get("ms"), ".2f") for k in ks]
        cells.append(_num((t.get("eval") or {}).get("ms"), ".0f"))
        e32, e64 = st.get("max_rel_err_f32", {}), st.get("max_rel_err_f64", {})
        err = (
            "reference" if name.startswith("ml3tf") else f"{max(e32.values()):.1e} / {max(e64.values()):.1e}"
        )
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {err} |")
    ratios = b["ratio_vs_ml3tf_best"]
    lines += [
        "",
        "Peer ÷ ml3tf's best compiled `run_steps` (above 1: ml3tf is faster):",
        "",
        "| peer | "
        + " | ".join(f"ML3 K={k}" for k in ks)
        + " | "
        + " | ".join(f"MAML K={k}" for k in ks)
        + " |",
        "|---|" + "---|" * (2 * len(ks)),
    ]
    for name, label in PEER_STACKS:
        if name.startswith("ml3tf") or name not in ratios.get("ml3", {}):
            continue
        cells = [_num(ratios["ml3"][name].get(k), ".2f") for k in ks]
        cells += [_num(ratios.get("maml", {}).get(name, {}).get(k), ".2f") for k in ks]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _num(value: float | None, spec: str = ".2f") -> str:
    """A table cell: the number, or a dash where the measurement failed or was skipped."""
    return "–" if value is None else format(value, spec)


def _dates(b: dict) -> str:
    """When each part of a benchmark file was measured (parts may come from different runs)."""
    dates = b.get("part_dates") or {}
    if not dates or len(set(dates.values())) == 1:
        return b["date"]
    return ", ".join(f"{part} {date}" for part, date in dates.items())


def render_bench_scale() -> str:
    with open(os.path.join(REPO, "bench", "results", "scale.json")) as f:
        b = json.load(f)
    m = b["machine"]
    lines = [
        f"Measured by `python bench/scale.py` on {m['cpu']} ×{m['cpu_count']} cores, TF {m['tensorflow']} "
        f"({_dates(b)}; [bench/results/scale.json](bench/results/scale.json)).",
        "",
        "| meta-batch B | per-task loop ms/step | vectorised ms/step | cost vs B=1 "
        "| XLA (`--jit-compile`) ms/step | cost vs B=1 |",
        "|---|---|---|---|---|---|",
    ]
    for r in b["meta_batch"]:
        cells = [_num(r.get(k)) for k in ("loop_ms", "vectorized_ms", "vectorized_cost_vs_b1")]
        cells += [_num(r.get(k)) for k in ("xla_ms", "xla_cost_vs_b1")]
        lines.append(
            f"| {r['meta_batch_size']} | {cells[0]} | {cells[1]} | {cells[2]}× | {cells[3]} | {cells[4]}× |"
        )
    lines += [
        "",
        "| inner steps K | backprop | peak memory rise (MB, incl. tracing) | ms per meta-step |",
        "|---|---|---|---|",
    ]
    for r in b["unroll"]:
        if "error" in r:
            lines.append(f"| {r['inner_steps']} | {r['backprop']} | error: {r['error']} | |")
        else:
            lines.append(
                f"| {r['inner_steps']} | {r['backprop']} | {r['peak_rise_mb']:.0f} | {r['ms_per_step']:.1f} |"
            )
    loop_rows = b.get("xla_loop") or []
    if loop_rows:
        lines += [
            "",
            "Under XLA (`--jit-compile`), the inner loop unrolled in Python vs a `tf.while_loop` "
            "(`--unroll-loop`); compile = the first call's time beyond its meta-steps; "
            "`auto` = what `--unroll-loop auto` (the default) picks; load = the machine's 1-minute "
            "load average before the case (compile times move with other work on a shared machine):",
            "",
            "| task | K | B | Python loop ms/step | compile s "
            "| `tf.while_loop` ms/step | compile s | Python loop pays back after (meta-steps) "
            "| `auto` | load |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in loop_rows:
            cells = [
                r.get("python_error") or _num(r.get("python_ms")),
                _num(r.get("python_compile_s"), ".1f"),
                r.get("while_error") or _num(r.get("while_ms")),
                _num(r.get("while_compile_s"), ".1f"),
            ]
            head = f"| {r['task']} | {r['inner_steps']} | {r['meta_batch_size']} | "
            load = _num(r.get("load_before"), ".1f")
            back = r.get("python_pays_back_after")
            cells.append("–" if back is None else f"{back:,}")
            lines.append(head + " | ".join(cells) + f" | {r['auto']} | {load} |")
    mirrored = b.get("mirrored") or {}
    if "default_ms" in mirrored:
        lines += [
            "",
            f"MirroredStrategy over 2 logical CPU devices vs one device (sine family, B = "
            f"{mirrored['meta_batch_size']}): {mirrored['mirrored_ms']:.2f} vs "
            f"{mirrored['default_ms']:.2f} ms "
            "per meta-step — on 2 cores both replicas share the same cores, so this is the strategy's "
            "overhead (one call per meta-step, per-replica placement, all-reduce), not a speed-up.",
        ]
    return "\n".join(lines)


def render_keras_learned_loss() -> str:
    with open(os.path.join(REPO, "bench", "results", "keras_learned_loss.json")) as f:
        b = json.load(f)
    p, m = b["protocol"], b["machine"]
    lines = [
        f"MSE after {p['steps']} SGD steps (lr {p['lr']}, full batch), mean ± std over seeds {p['seeds']}:",
        "",
        '| split | trained via | `LearnedLoss.pretrained("sine")` | `"mse"` |',
        "|---|---|---|---|",
    ]
    for split in ("train", "test"):
        for via, key in (("Keras `compile`/`fit`", "keras_fit"), ("`ml3tf eval`", "ml3tf_eval")):
            r = b[key]["final"][split]
            lines.append(f"| {split} | {via} | {_pm(r, 'learned')} | {_pm(r, 'baseline')} |")
    lines += [
        "",
        f"Written by `{b['command']}` on {m['cpu']} ×{m['cpu_count']} cores, TF {m['tensorflow']} "
        f"({b['date']}; [bench/results/keras_learned_loss.json](bench/results/keras_learned_loss.json)).",
    ]
    return "\n".join(lines)


def render_classification() -> str:
    with open(os.path.join(REPO, "bench", "results", "classification.json")) as f:
        b = json.load(f)
    m = b["machine"]
    lines = [
        f"Test accuracy on query images after the meta-test SGD steps (mean ± std over seeds {b['seeds']}); "
        "cross-entropy (CE) loss value after the same steps:",
        "",
        "| protocol | split | learned loss acc. | cross-entropy acc. | learned: CE value | CE: CE value |",
        "|---|---|---|---|---|---|",
    ]
    for name in b["runs"]:
        with open(os.path.join(REPO, "docs", "results", "classification", name, "results.json")) as f:
            res = json.load(f)
        c = res["config"]
        label = (
            f"{name} (inner lr {c['inner_lr']}, K={c['inner_steps']}, meta lr {c['meta_lr']}, "
            f"{c['meta_steps']} meta-steps, {res['steps']} test steps)"
        )
        for split in ("train", "test"):
            r, loss = res["final"][split], res["loss"]["final"][split]
            lines.append(
                f"| {label} | {split} | {_pm(r, 'learned')} | {_pm(r, 'baseline')} "
                f"| {_pm(loss, 'learned')} | {_pm(loss, 'baseline')} |"
            )
    lines += [
        "",
        "`train` = the meta-train pair 4 vs 9 (binary) or all 10 digits (10-way) on held-out images; "
        "`test` = all 28 pairs of the 8 held-out digits (binary) or held-out images (10-way).",
        f"Whole experiment (all protocols, 5 seeds each): {b['total_seconds']:.0f} s "
        f"(budget {b['budget_seconds']} s) on {m['cpu']} ×{m['cpu_count']} cores, {b['date']}"
        + (f", load average {b['load_average_end']:.1f} at the end" if "load_average_end" in b else "")
        + ", "
        "measured by `python bench/classification.py` "
        "([bench/results/classification.json](bench/results/classification.json)).",
    ]
    return "\n".join(lines)


def render_maml_sine() -> str:
    sys.path.insert(0, HERE)
    from maml_sine import OUT_DIR, format_broader, format_table

    parts = []
    for shots in (5, 10):
        path = os.path.join(OUT_DIR, f"results_k{shots}.json")
        if os.path.exists(path):
            with open(path) as f:
                parts.append(format_table(json.load(f)))
    with open(os.path.join(OUT_DIR, "broader.json")) as f:
        b = json.load(f)
    with open(os.path.join(OUT_DIR, f"results_k{b['shots']}.json")) as f:
        res = json.load(f)
    cfg, m = res["config"], res["machine"]
    head = (
        f"Query-set MSE on held-out tasks (mean ± std over seeds {res['seeds']}); meta-training: "
        f"{cfg['meta_steps']} meta-steps × {cfg['meta_batch_size']} tasks, one inner SGD step at "
        f"α = {cfg['inner_lr']}, outer Adam lr {cfg['init_lr']} (θ₀) / {cfg['meta_lr']} (φ). "
        f"Measured on {m['cpu']} ×{m['cpu_count']} ({res['date']})."
    )
    return "\n\n".join(
        [
            head,
            *parts,
            "Broader task distributions (test split, meta-trained on the in-distribution family):",
            format_broader(b),
            "Written by `python bench/maml_sine.py` into "
            "[docs/results/maml_sine/](docs/results/maml_sine/) (`results_k5.json`, `results_k10.json`, "
            "`broader.json`, `adaptation.png`).",
        ]
    )


def _bench_module(name: str):
    """``bench/<name>.py`` as a module (its ``table``/``markdown`` renders its results)."""
    import importlib

    sys.path.insert(0, REPO)
    return importlib.import_module(f"bench.{name}")


def _bench_table(
    name: str, path: str, command: str | None = None, detail=lambda res: "", table: str = "table"
) -> str:
    """``bench/<name>.py``'s ``table`` (or the renderer named ``table``) of the results in ``path``,
    then how, where and on what machine they were written (``command`` defaults to the one the
    results file records)."""
    with open(os.path.join(REPO, path)) as f:
        res = json.load(f)
    m = res["machine"]
    command = res["command"] if command is None else command
    return (
        getattr(_bench_module(name), table)(res) + f"\n\nWritten by `{command}` on "
        f"{m['cpu']} ×{m['cpu_count']} cores, TF {m['tensorflow']} into [{path}]({path}) "
        f"({res['wall_seconds']:.0f} s{detail(res)})."
    )


def _render_extra_information(name: str, detail=lambda res: "") -> str:
    """The table of ``bench/<name>.py`` from ``docs/results/<name>/results.json``."""
    return _bench_table(name, f"docs/results/{name}/results.json", f"python bench/{name}.py", detail)


def render_shaped_sine() -> str:
    return _render_extra_information(
        "shaped_sine", lambda res: f" for both learned arms × {len(res['seeds'])} seeds"
    )


def render_inverse_dynamics() -> str:
    return _render_extra_information("inverse_dynamics")


def render_mountain_car() -> str:
    """docs/results/mountain_car/ (the issue's 300 meta-steps) and, when it exists,
    docs/results/mountain_car_1000/ (the authors' script length, ``--meta-steps 1000``)."""
    text = _render_extra_information(
        "mountain_car", lambda res: f" for both learned arms × {len(res['seeds'])} seeds, {res['date']}"
    )
    path = "docs/results/mountain_car_1000/results.json"
    if os.path.exists(os.path.join(REPO, path)):
        with open(os.path.join(REPO, path)) as f:
            command = json.load(f)["command"] + " --out-dir docs/results/mountain_car_1000"
        text += "\n\nThe same with the authors' script length, 1000 meta-steps:\n\n" + _bench_table(
            "mountain_car", path, command, lambda res: f", {res['date']}"
        )
    return text


def render_mountain_car_robust() -> str:
    """docs/results/mountain_car_robust/ (``--config robust``: an option beside the protocol)."""
    return _bench_table(
        "mountain_car",
        "docs/results/mountain_car_robust/results.json",
        detail=lambda res: f" for both learned arms × {len(res['seeds'])} seeds, {res['date']}",
    )


def render_mountain_car_fresh() -> str:
    """docs/results/mountain_car_fresh/ (``--config fresh``: meta-trained over several policies)."""
    return _bench_table(
        "mountain_car",
        "docs/results/mountain_car_fresh/results.json",
        detail=lambda res: f" for both learned arms × {len(res['seeds'])} seeds, {res['date']}",
    )


def render_mountain_car_gain_region() -> str:
    """docs/results/mountain_car_gain_region/ (``--gain-map``: the goal region in gain space)."""
    return _bench_table(
        "mountain_car",
        "docs/results/mountain_car_gain_region/results.json",
        detail=lambda res: f", {res['date']}",
        table="gain_map_table",
    )


def render_shaped_sine_10_seeds() -> str:
    """docs/results/shaped_sine_10_seeds/ (the authors' protocol, seeds 0 … 9)."""
    return _bench_table(
        "shaped_sine",
        "docs/results/shaped_sine_10_seeds/results.json",
        detail=lambda res: f" for both learned arms × {len(res['seeds'])} seeds",
    )


def render_shaped_sine_anchored() -> str:
    """docs/results/shaped_sine_anchored/ (``--config anchored``: an option beside the protocol)."""
    return _bench_table(
        "shaped_sine",
        "docs/results/shaped_sine_anchored/results.json",
        detail=lambda res: f" for both learned arms × {len(res['seeds'])} seeds",
    )


def render_model_free() -> str:
    return _bench_table(
        "model_free",
        "docs/results/point_mass/results.json",
        detail=lambda res: f": meta-training {res['meta_train_seconds']:.0f} s for {len(res['seeds'])} seeds",
    )


def render_transfer() -> str:
    mod = _bench_module("transfer")
    with open(os.path.join(REPO, "bench", "results", "transfer.json")) as f:
        res = json.load(f)
    m = res["machine"]
    return (
        mod.markdown(res)
        + f"\n\nWritten by `python bench/transfer.py` on {m['cpu']} ×{m['cpu_count']} cores, {res['date']} "
        "([bench/results/transfer.json](bench/results/transfer.json))."
    )


def render_reacher(path: str = "docs/results/reacher/results.json") -> str:
    """The table of ``bench/reacher.py`` (importing it imports neither TF-Agents nor TensorFlow)."""
    with open(os.path.join(REPO, path)) as f:
        res = json.load(f)
    command = res["command"]
    if "robot" not in res.get("task_options", {}):  # written before bench/reacher.py had --robot
        command = command.replace("python bench/reacher.py", "python bench/reacher.py --robot reacher_v5", 1)
    return _bench_table("reacher", path, command)


def render_own_data() -> str:
    """The table of ``bench/own_data.py`` (importing it imports no TensorFlow)."""
    path = "bench/results/own_data.json"
    with open(os.path.join(REPO, path)) as f:
        res = json.load(f)
    tuning = "bench/results/own_data_tuning.json"
    return (
        _bench_module("own_data").table(res)
        + f"\n\nWritten by `{res['command'].strip()}` into [{path}]({path}) ({res['wall_seconds']:.0f} s"
        + (f", load average {res['load_average_end']:.1f} at the end" if "load_average_end" in res else "")
        + "); learning curves: [docs/results/own_data/learning_curves.png]"
        "(docs/results/own_data/learning_curves.png); the learned arms' hyper-parameters were chosen on "
        f"the validation split by `python bench/own_data.py --tune` ([{tuning}]({tuning}))."
    )


BLOCK = re.compile(r"<!-- generated:([\w-]+) -->\n(.*?)\n<!-- /generated:\1 -->", re.S)


def replace_block(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- generated:{name} -->\n).*?(\n<!-- /generated:{name} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no block 'generated:{name}'")
    return pattern.sub(lambda m: m.group(1) + body + m.group(2), text)


def blocks(text: str) -> dict[str, str]:
    """``{NAME: body}`` of the ``<!-- generated:NAME -->`` blocks in ``text``."""
    return {m.group(1): m.group(2) for m in BLOCK.finditer(text)}


def _exists(*parts: str) -> bool:
    return os.path.exists(os.path.join(REPO, *parts))


def render(text: str) -> tuple[str, list[str]]:
    """``text`` (README.md's content) with every generated block whose result files exist
    re-rendered from them, and the names of those blocks. Reads files, writes nothing.

    Raises:
        SystemExit: a block that has result files is missing from ``text``.
    """
    done = []

    def put(name: str, body: str) -> None:
        nonlocal text
        text = replace_block(text, name, body)
        done.append(name)

    if _exists("docs", "results", "sine", "results.json"):
        put("sine", render_sine())
    if _exists("bench", "results", "sine.json"):
        put("bench-sine", render_bench_sine())
    if _exists("bench", "results", "peers.json"):
        put("bench-peers", render_bench_peers())
    if _exists("bench", "results", "scale.json"):
        put("bench-scale", render_bench_scale())
    if _exists("bench", "results", "keras_learned_loss.json"):
        put("keras-learned-loss", render_keras_learned_loss())
    if _exists("docs", "results", "maml_sine", "broader.json"):
        put("maml-sine", render_maml_sine())
    # each block's results: docs/results/<name with _ for ->/results.json
    for name, render_one in (
        ("shaped-sine", render_shaped_sine),
        ("inverse-dynamics", render_inverse_dynamics),
        ("mountain-car", render_mountain_car),
        ("mountain-car-robust", render_mountain_car_robust),
        ("mountain-car-fresh", render_mountain_car_fresh),
        ("shaped-sine-10-seeds", render_shaped_sine_10_seeds),
        ("mountain-car-gain-region", render_mountain_car_gain_region),
        ("shaped-sine-anchored", render_shaped_sine_anchored),
    ):
        path = ("docs", "results", name.replace("-", "_"), "results.json")
        if _exists(*path):
            put(name, render_one())
    if _exists("bench", "results", "classification.json"):
        put("classification", render_classification())
    if _exists("bench", "results", "transfer.json"):
        put("transfer", render_transfer())
    if _exists("docs", "results", "point_mass", "results.json"):
        put("model-free", render_model_free())
    if _exists("docs", "results", "reacher", "results.json"):
        put("reacher", render_reacher())
    variant = "docs/results/reacher_goal_relative_linear/results.json"
    if _exists(variant):
        put("reacher-goal-relative-linear", render_reacher(variant))
    robot = "docs/results/reacher_robot/results.json"
    if _exists(robot):
        put("reacher-robot", render_reacher(robot))
    if _exists("bench", "results", "own_data.json"):
        put("own-data", render_own_data())
    return text, done


def check(text: str, label: str = "README.md") -> dict[str, str]:
    """What is wrong with ``text`` (README.md's content), by block name: a unified diff for each
    generated block that differs from its rendering, a one-line message for each block that
    has no result file to be rendered from. Empty when ``text`` is exactly what the result
    files give. Reads files, writes nothing.

    Raises:
        SystemExit: a block that has result files is missing from ``text``.
    """
    rendered, done = render(text)
    have, want = blocks(text), blocks(rendered)
    problems = {
        name: f"{label}: block 'generated:{name}' has no result file to render it from\n"
        for name in have
        if name not in done
    }
    for name in done:
        if have[name] != want[name]:
            diff = difflib.unified_diff(
                have[name].splitlines(keepends=True),
                want[name].splitlines(keepends=True),
                fromfile=f"{label} (generated:{name})",
                tofile=f"rendered from the result files (generated:{name})",
            )
            problems[name] = "".join(line if line.endswith("\n") else line + "\n" for line in diff)
    if not problems and rendered != text:  # cannot happen (only blocks are replaced); never pass it
        problems["(outside blocks)"] = "".join(
            difflib.unified_diff(text.splitlines(True), rendered.splitlines(True), label, "rendered")
        )
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--run", action="store_true", help="re-run the sine experiment first")
    mode.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 (with a diff per block) if README.md differs from the result files",
    )
    ap.add_argument("--readme", default=README, help="the README to render or check (default: %(default)s)")
    args = ap.parse_args()
    if args.check:
        sys.dont_write_bytecode = True  # importing the bench modules must not write __pycache__/
    if args.run:
        run_sine()
    with open(args.readme) as f:
        text = f.read()
    label = os.path.basename(args.readme)
    if args.check:
        problems = check(text, label)
        if problems:
            sys.stdout.write("".join(problems.values()))
            print(
                f"{label} differs from the result files in block(s) {', '.join(problems)}: run "
                "`python bench/update_readme.py` to re-render (or re-run the bench that writes them)"
            )
            sys.exit(1)
        print(f"{label} matches the result files ({len(blocks(text))} generated blocks)")
        return
    text, _ = render(text)
    with open(args.readme, "w") as f:
        f.write(text)
    print(f"{label} updated")


if __name__ == "__main__":
    main()
