"""Regenerate the numbers in README.md from result files (no number in the README is typed).

    python bench/update_readme.py --run     # re-run the sine experiment into docs/results/sine/, then render
    python bench/update_readme.py           # only re-render README blocks from the committed JSON files

Blocks between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` are replaced:

* ``sine``: docs/results/sine/results.json, written by
  ``ml3tf train sine --out-dir <tmp> --seeds 0 1 2 3 4`` (the README's first command);
* ``bench-sine``: bench/results/sine.json, written by ``python bench/sine.py``;
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
* ``reacher``: docs/results/reacher/results.json, written by ``python bench/reacher.py``;
* ``reacher-goal-relative-linear``: docs/results/reacher_goal_relative_linear/results.json, written by
  ``python bench/reacher.py --loss-features goal_relative --meta-loss-output linear --out-dir …``;
* ``mountain-car``: docs/results/mountain_car/results.json (and mountain_car_1000/), written by
  ``python bench/mountain_car.py``.
"""

from __future__ import annotations

import argparse
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
    lines += [
        "",
        "| whole 5-seed experiment (process start to exit) | seconds (median) |",
        "|---|---|",
        f"| `ml3tf train sine --seeds 0 1 2 3 4` (paper protocol, meta-test at the end) "
        f"| {lean['seconds_median']:.1f} |",
        f"| same with `--eval-every 10` (the authors' script's amount of work) "
        f"| {equal['seconds_median']:.1f} |",
        f"| authors' PyTorch script, same work, quiet 2-core machine (reference figure, not re-run) "
        f"| {b['authors_pytorch_quiet_seconds']:.0f} |",
        "",
        f"Equal work: {b['speedup_vs_authors_equal_work']:.1f}× faster than the authors' script; "
        f"the lean default run: {b['speedup_vs_authors_lean']:.1f}×.",
    ]
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


def _bench_table(name: str, path: str, command: str | None = None, detail=lambda res: "") -> str:
    """``bench/<name>.py``'s ``table`` of the results in ``path``, then how, where and on what
    machine they were written (``command`` defaults to the one the results file records)."""
    with open(os.path.join(REPO, path)) as f:
        res = json.load(f)
    m = res["machine"]
    command = res["command"] if command is None else command
    return (
        _bench_module(name).table(res) + f"\n\nWritten by `{command}` on "
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
    """The table of ``bench/reacher.py`` (its import selects TF-Agents' Keras first)."""
    return _bench_table("reacher", path)


def replace_block(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- generated:{name} -->\n).*?(\n<!-- /generated:{name} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no block 'generated:{name}'")
    return pattern.sub(lambda m: m.group(1) + body + m.group(2), text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="store_true", help="re-run the sine experiment first")
    args = ap.parse_args()
    if args.run:
        run_sine()
    with open(README) as f:
        text = f.read()
    if os.path.exists(os.path.join(SINE_DIR, "results.json")):
        text = replace_block(text, "sine", render_sine())
    if os.path.exists(os.path.join(REPO, "bench", "results", "sine.json")):
        text = replace_block(text, "bench-sine", render_bench_sine())
    if os.path.exists(os.path.join(REPO, "bench", "results", "scale.json")):
        text = replace_block(text, "bench-scale", render_bench_scale())
    if os.path.exists(os.path.join(REPO, "bench", "results", "keras_learned_loss.json")):
        text = replace_block(text, "keras-learned-loss", render_keras_learned_loss())
    if os.path.exists(os.path.join(REPO, "docs", "results", "maml_sine", "broader.json")):
        text = replace_block(text, "maml-sine", render_maml_sine())
    for name, path, render in (
        ("shaped-sine", ("docs", "results", "shaped_sine", "results.json"), render_shaped_sine),
        (
            "inverse-dynamics",
            ("docs", "results", "inverse_dynamics", "results.json"),
            render_inverse_dynamics,
        ),
        ("mountain-car", ("docs", "results", "mountain_car", "results.json"), render_mountain_car),
    ):
        if os.path.exists(os.path.join(REPO, *path)):
            text = replace_block(text, name, render())
    if os.path.exists(os.path.join(REPO, "bench", "results", "classification.json")):
        text = replace_block(text, "classification", render_classification())
    if os.path.exists(os.path.join(REPO, "bench", "results", "transfer.json")):
        text = replace_block(text, "transfer", render_transfer())
    if os.path.exists(os.path.join(REPO, "docs", "results", "point_mass", "results.json")):
        text = replace_block(text, "model-free", render_model_free())
    if os.path.exists(os.path.join(REPO, "docs", "results", "reacher", "results.json")):
        text = replace_block(text, "reacher", render_reacher())
    variant = "docs/results/reacher_goal_relative_linear/results.json"
    if os.path.exists(os.path.join(REPO, variant)):
        text = replace_block(text, "reacher-goal-relative-linear", render_reacher(variant))
    with open(README, "w") as f:
        f.write(text)
    print("README.md updated")


if __name__ == "__main__":
    main()
