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
