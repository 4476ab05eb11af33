"""Named meta-training configurations of the bench scripts (``--config NAME``): the authors'
protocol (``authors``, no changes) and options beside it, each a set of ``MetaTrainConfig``
changes to the task's defaults. Shared by ``bench/mountain_car.py`` and ``bench/shaped_sine.py``.
"""

from __future__ import annotations

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def results_dir(name: str, config: str) -> str:
    """``docs/results/<name>/`` for the authors' protocol, ``docs/results/<name>_<config>/`` else."""
    return os.path.join(REPO, "docs", "results", name if config == "authors" else f"{name}_{config}")


def named_config(task, configs: dict[str, dict], config: str, meta_steps: int | None = None):
    """The task's ``default_config()`` with the changes of ``configs[config]`` (and ``meta_steps``).

    Raises:
        ValueError: ``config`` is not in ``configs``.
    """
    if config not in configs:
        raise ValueError(f"config must be one of {sorted(configs)}, got {config!r}")
    cfg = task.default_config().replace(**configs[config])
    return cfg if meta_steps is None else cfg.replace(meta_steps=meta_steps)


def command_line(
    script: str,
    name: str,
    config: str,
    seeds: list[int],
    default_seeds: dict[str, list[int]],
    meta_steps: int | None,
    out_dir: str,
) -> str:
    """The command that reproduces a run of ``bench/<script>`` (defaults left out): ``--config``
    unless ``authors``, ``--seeds`` unless ``default_seeds[config]``, ``--meta-steps`` when set,
    ``--out-dir`` unless ``results_dir(name, config)``."""
    parts = [f"python bench/{script}"]
    if config != "authors":
        parts.append(f"--config {config}")
    if list(seeds) != default_seeds[config]:
        parts.append("--seeds " + " ".join(str(s) for s in seeds))
    if meta_steps:
        parts.append(f"--meta-steps {meta_steps}")
    if os.path.abspath(out_dir) != os.path.abspath(results_dir(name, config)):
        parts.append(f"--out-dir {os.path.relpath(out_dir, REPO)}")
    return " ".join(parts)
