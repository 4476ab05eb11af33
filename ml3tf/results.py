"""``results.json``: one schema for every task's meta-test, and its plot.

    {"task", "metric", "higher_is_better", "steps", "seeds",
     "curves": {split: {method: {"mean": [...], "std": [...]}}},
     "final":  {split: {"learned", "learned_std", "baseline", "baseline_std"}},
     "at_step_1": {split: {...same keys...}},
     "seed_curves": {split: {method: [[...] per seed]}},
     "baseline", "config", "wall_seconds"}

``curves[split][method]["mean"][k]`` is the metric after k steps (k = 0 … steps),
averaged over the split's tasks and then over seeds; ``std`` is across seeds.
``seed_curves[split][method][i]`` is seed ``seeds[i]``'s curve (``one_seed`` rebuilds its results).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any

import numpy as np


def file_sha256(path: str) -> str:
    """sha256 hex digest of the file at ``path`` (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def summarize(
    *,
    task: str,
    metric: str,
    higher_is_better: bool,
    baseline: str,
    steps: int,
    seeds: list[int],
    curves: dict[str, dict[str, list[np.ndarray]]],
    config: dict[str, Any],
    wall_seconds: float,
) -> dict[str, Any]:
    """Aggregate per-seed curves ``curves[split][method] = [curve_seed0, …]`` into the schema."""
    out_curves: dict[str, Any] = {}
    final: dict[str, Any] = {}
    step1: dict[str, Any] = {}
    seed_curves: dict[str, Any] = {}
    for split, methods in curves.items():
        out_curves[split] = {}
        final[split] = {}
        step1[split] = {}
        seed_curves[split] = {}
        for method, per_seed in methods.items():
            arr = np.asarray(per_seed, dtype=np.float64)  # (seeds, steps + 1)
            seed_curves[split][method] = arr.tolist()
            with np.errstate(invalid="ignore", over="ignore"):  # a diverged curve: first_non_finite
                mean, std = arr.mean(axis=0), arr.std(axis=0)
            out_curves[split][method] = {"mean": mean.tolist(), "std": std.tolist()}
            final[split][method] = float(mean[-1])
            final[split][f"{method}_std"] = float(std[-1])
            step1[split][method] = float(mean[min(1, len(mean) - 1)])
            step1[split][f"{method}_std"] = float(std[min(1, len(std) - 1)])
    return {
        "task": task,
        "metric": metric,
        "higher_is_better": bool(higher_is_better),
        "steps": int(steps),
        "seeds": [int(s) for s in seeds],
        "curves": out_curves,
        "final": final,
        "at_step_1": step1,
        "seed_curves": seed_curves,
        "baseline": baseline,
        "config": config,
        "wall_seconds": float(wall_seconds),
    }


def _umask_mode() -> int:
    """The mode a plainly created file would get (mkstemp makes 0600 files)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and ``os.replace`` (never half-written)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_results(results: dict[str, Any], path: str) -> None:
    """Write ``results.json`` atomically, as strict JSON (a non-finite number is a ``ValueError``)."""
    atomic_write_text(path, json.dumps(results, indent=1, allow_nan=False) + "\n")


def one_seed(results: dict[str, Any], index: int) -> dict[str, Any]:
    """The results of ``results["seeds"][index]`` alone, as ``summarize`` gives them for one seed
    (its curves, finals and step-1 values; stds 0), from the per-seed curves ``seed_curves``."""
    seed_curves = results["seed_curves"]
    curves = {split: {m: [c[index]] for m, c in methods.items()} for split, methods in seed_curves.items()}
    keep = ("task", "metric", "higher_is_better", "baseline", "steps", "config", "wall_seconds")
    return summarize(**{k: results[k] for k in keep}, seeds=[results["seeds"][index]], curves=curves)


def first_non_finite(results: dict[str, Any]) -> tuple[str, str, int] | None:
    """``(split, arm, step)`` of the first non-finite value of any meta-test curve, or ``None``."""
    for split, methods in results.get("curves", {}).items():
        for arm, curve in methods.items():
            mean = np.asarray(curve["mean"], dtype=np.float64)
            bad = np.flatnonzero(~np.isfinite(mean))
            if bad.size:
                return str(split), str(arm), int(bad[0])
    return None


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by ``None`` (strict JSON has no NaN/Infinity)."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def plot_results(results: dict[str, Any], path: str) -> None:
    """The paper's Fig. 2 style: metric vs meta-test step, learned vs baseline, one panel per split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(results["curves"])
    fig, axes = plt.subplots(1, len(splits), figsize=(5 * len(splits), 3.8), squeeze=False)
    for ax, split in zip(axes[0], splits, strict=True):
        for method, color in (("learned", "tab:blue"), ("baseline", "tab:orange")):
            c = results["curves"][split].get(method)
            if c is None:
                continue
            mean, std = np.asarray(c["mean"]), np.asarray(c["std"])
            k = np.arange(len(mean))
            method_name = results.get("config", {}).get("method", "ml3")
            learned_label = {"maml": "MAML init", "ml3+maml": "ML3+MAML"}.get(method_name, "ML3 learned loss")
            label = learned_label if method == "learned" else results["baseline"]
            ax.plot(k, mean, color=color, label=label)
            ax.fill_between(k, mean - std, mean + std, color=color, alpha=0.2)
        ax.set_title(f"{results['task']}: {split} tasks")
        ax.set_xlabel({"epoch": "epoch"}.get(results.get("curve_unit"), "meta-test gradient step"))
        ax.set_ylabel(results["metric"])
        ax.legend()
    fig.suptitle(f"mean ± std over seeds {results['seeds']}", fontsize=9)
    fig.tight_layout()
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)


def summarize_task(
    task: Any,
    *,
    steps: int,
    seeds: list[int],
    curves: dict[str, dict[str, list[np.ndarray]]],
    config: dict[str, Any],
    wall_seconds: float,
) -> dict[str, Any]:
    """``summarize`` with the task's own ``name``, ``metric_name``, ``higher_is_better`` and
    ``baseline_name`` (what every task's ``evaluate`` reports)."""
    return summarize(
        task=task.name,
        metric=task.metric_name,
        higher_is_better=task.higher_is_better,
        baseline=task.baseline_name,
        steps=steps,
        seeds=list(seeds),
        curves=curves,
        config=config,
        wall_seconds=wall_seconds,
    )


def format_summary(results: dict[str, Any]) -> str:
    """A few lines: final (and step-1) metric per split, learned vs baseline, mean ± std."""
    lines = [f"{results['task']}: {results['metric']} over seeds {results['seeds']}"]
    rows = [("at_step_1", "after 1 step"), ("final", f"after {results['steps']} steps")]
    if results["steps"] == 1:  # the same numbers twice
        rows = rows[:1]
    for key, label in rows:
        for split, r in results[key].items():
            lines.append(
                f"  {split:>5} {label:>16}: learned {r['learned']:.4g} ± {r['learned_std']:.2g}"
                f"   {results['baseline']} {r['baseline']:.4g} ± {r['baseline_std']:.2g}"
            )
    return "\n".join(lines)
