"""Runs on disk: meta-train one or several seeds into an output folder, resumably.

A run folder holds

    config.json       task, task options and the MetaTrainConfig
    metrics.jsonl     one JSON line per meta-step (and per evaluation with eval_every)
    checkpoints/      φ + outer optimizer (+ the task's own state, ``checkpoint_state``; + the
                      selection so far, with ``select_every``), every ``checkpoint_every`` steps
                      and at the end
    meta_loss.keras   the trained loss network (written once training is complete; ml3, ml3+maml);
                      with ``select_every``: the φ selected on meta-train task losses
    meta_loss_last.keras, selection.json
                      with ``select_every``: the last φ, and which window was selected (its start,
                      end and mean task loss, and every window's mean)
    learner.keras     the learner holding the meta-learned θ₀ (maml, ml3+maml)
    tensorboard/      scalars, with ``config.tensorboard``

With several seeds, each seed gets ``<out_dir>/seed_<s>/``; ``results.json`` and
``results.png`` (meta-test over all seeds) go to ``<out_dir>``. Re-running on the
same folder resumes from the last checkpoint and ends with the same metrics as an
uninterrupted run.

The records never lie about the model beside them:

* one process at a time: ``train``/``eval`` hold ``<out_dir>/.lock`` (``ml3tf.lock``);
* ``config.json`` (task, task options, config, seeds) is written when the first checkpoint
  is, and again beside the final ``meta_loss.keras``; a folder whose run failed before its
  first checkpoint holds no run and is simply reused;
* a folder that holds a run refuses, in one line, another task, task options, seed set,
  result-changing config field, or fewer ``meta_steps`` than it was trained for (more
  ``meta_steps`` continue training; ``meta_loss.keras``, ``config.json`` and the results are
  rewritten when that finishes);
* a meta-test that diverges (a non-finite curve) is an error naming the split, the arm and
  the step; no ``results.json`` is written, the trained files are kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ml3tf.checkpoint import Checkpointer
from ml3tf.distribute import WorkerLostError, make_strategy, per_worker, worker_errors, worker_of
from ml3tf.engine import per_seed
from ml3tf.lock import LOCK_NAME, RunDirLock
from ml3tf.meta_loss import load_meta_loss
from ml3tf.meta_trainer import (
    MetaStepInfo,
    MetaTrainConfig,
    MetaTrainer,
    NonFiniteError,
    can_batch_seeds,
    run_seeds,
)
from ml3tf.results import (
    atomic_write_text,
    first_non_finite,
    json_safe,
    one_seed,
    plot_results,
    write_results,
)
from ml3tf.task import Task

log = logging.getLogger("ml3tf")

StepCallback = Callable[[int, int, MetaStepInfo], None]


@dataclass
class TrainResult:
    """What ``train`` produced."""

    out_dir: str
    run_dirs: list[str]
    meta_loss_paths: list[str]
    results: dict | None
    learner_paths: list[str] = dataclasses.field(default_factory=list)
    """``learner.keras`` files holding the meta-learned θ₀ (``maml``, ``ml3+maml``)."""
    last_meta_loss_paths: list[str] = dataclasses.field(default_factory=list)
    """The last φ of each seed: ``meta_loss_last.keras`` with ``select_every`` (``meta_loss_paths``
    then hold the selected φ), else the same files as ``meta_loss_paths``."""
    selections: list[dict] = dataclasses.field(default_factory=list)
    """Each seed's ``selection.json`` with ``select_every`` (the selected window's ``start``,
    ``end`` and ``mean_task_loss``, and every window's); empty without."""


def check_out_dir(out_dir: str) -> str:
    """Absolute path of ``out_dir`` if it is (or can be created as) a writable folder.

    Raises:
        ValueError: it is a file, lies under a file, or cannot be written.
    """
    if not isinstance(out_dir, (str, os.PathLike)) or not os.fspath(out_dir):
        raise ValueError(f"out_dir must be a non-empty path, got {out_dir!r}")
    path = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"out_dir {os.fspath(out_dir)!r} exists and is not a directory")
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"out_dir {os.fspath(out_dir)!r} lies under {parent!r}, which is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"out_dir {os.fspath(out_dir)!r} is not writable ({parent!r} is read-only)")
    return path


def check_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of integers >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must not repeat, got {seeds!r}")
    return seeds


def _run_record(task: Task, config: MetaTrainConfig, seeds: Sequence[int]) -> dict[str, Any]:
    return {
        "task": task.name,
        "task_options": json.loads(json.dumps(task.describe_options())),
        "config": config.to_dict(),
        "seeds": [int(s) for s in seeds],
    }


OUTPUT_NAMES = ("meta_loss.keras", "learner.keras")
LAST_META_LOSS = "meta_loss_last.keras"
SELECTION = "selection.json"


def checkpoint_step(run_dir: str) -> int | None:
    """Meta-steps of the newest checkpoint in ``run_dir/checkpoints`` (``None``: none)."""
    directory = os.path.join(run_dir, "checkpoints")
    if not os.path.isfile(os.path.join(directory, "checkpoint")):
        return None
    try:
        state = tf.train.get_checkpoint_state(directory)
    except Exception:  # an unreadable index: Checkpointer.restore reports it
        return None
    match = re.search(r"-(\d+)$", state.model_checkpoint_path or "") if state is not None else None
    return int(match.group(1)) if match else None


def holds_run(run_dir: str) -> bool:
    """Whether ``run_dir`` holds a trained (or partly trained) run: a checkpoint or a result file."""
    return checkpoint_step(run_dir) is not None or any(
        os.path.exists(os.path.join(run_dir, name)) for name in OUTPUT_NAMES
    )


def _write_record(run_dir: str, record: dict[str, Any]) -> None:
    atomic_write_text(
        os.path.join(run_dir, "config.json"), json.dumps(record, indent=1, allow_nan=False) + "\n"
    )


def read_record(run_dir: str) -> dict[str, Any] | None:
    """The ``config.json`` of ``run_dir`` (task, task options, config, seeds); ``None`` if absent.

    Raises:
        ValueError: it exists but is not a readable JSON object (never silently ignored).
    """
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path!r} is not a readable config.json: {exc}") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path!r} is not a readable config.json: not a JSON object")
    return record


def _check_resume(run_dir: str, record: dict[str, Any]) -> None:
    if not holds_run(run_dir):
        return  # empty, or a run that failed before its first checkpoint: it is replaced
    old = read_record(run_dir)
    if old is None:
        raise ValueError(f"out_dir {run_dir!r} holds a trained run but no config.json; use another --out-dir")
    if old.get("task") != record["task"]:
        raise ValueError(
            f"out_dir {run_dir!r} holds a run of task {old.get('task')!r}, not {record['task']!r}"
        )
    if old.get("task_options") != record["task_options"]:
        raise ValueError(
            f"out_dir {run_dir!r} holds a run with other task options: {old.get('task_options')}"
        )
    # A field added after the run was written holds its default there (runs stay resumable).
    defaults = {f.name: f.default for f in dataclasses.fields(MetaTrainConfig)}
    for key in MetaTrainConfig.fields_of("maths"):  # schedule and execution fields may change
        value = record["config"][key]
        if old.get("config", {}).get(key, defaults.get(key)) != value:
            raise ValueError(
                f"out_dir {run_dir!r} holds a run with {key}={old.get('config', {}).get(key)!r}; "
                f"cannot resume it with {key}={value!r} (use another --out-dir)"
            )
    old_seeds = old.get("seeds")  # absent in runs written before ml3tf 0.2
    if old_seeds is not None and list(old_seeds) != record["seeds"]:
        raise ValueError(
            f"out_dir {run_dir!r} holds a run of seeds {old_seeds}; cannot run seeds {record['seeds']} "
            f"there (use another --out-dir)"
        )
    trained = checkpoint_step(run_dir)
    wanted = record["config"]["meta_steps"]
    if trained is not None and trained > wanted:
        raise ValueError(
            f"out_dir {run_dir!r} holds a run trained for {trained} meta-steps; cannot re-run it with "
            f"meta_steps={wanted} (more meta-steps continue training; use another --out-dir for fewer)"
        )


def _seed_dirs(out: str) -> list[int]:
    """Seeds of the ``seed_<s>/`` folders in ``out`` that hold a run."""
    if not os.path.isdir(out):
        return []
    found = []
    for name in os.listdir(out):
        match = re.fullmatch(r"seed_(\d+)", name)
        if match and holds_run(os.path.join(out, name)):
            found.append(int(match.group(1)))
    return sorted(found)


def _check_layout(out: str, seeds: list[int]) -> None:
    """One folder, one layout: a single-seed run in ``out`` or ``seed_<s>/`` runs of one seed set."""
    in_subdirs = _seed_dirs(out)
    if len(seeds) == 1 and in_subdirs:
        raise ValueError(
            f"out_dir {out!r} holds runs of seeds {in_subdirs} (seed_<s>/ folders); cannot run seeds "
            f"{seeds} there (use another --out-dir)"
        )
    if len(seeds) > 1:
        if holds_run(out):
            raise ValueError(
                f"out_dir {out!r} holds a single-seed run; cannot run seeds {seeds} there "
                f"(use another --out-dir)"
            )
        if set(in_subdirs) - set(seeds):
            raise ValueError(
                f"out_dir {out!r} holds runs of seeds {in_subdirs}; cannot run seeds {seeds} there "
                f"(use another --out-dir)"
            )


def _available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), if known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


#: Meta-batches up to this size are never checked (their data is small on any task).
_CHECKED_META_BATCH = 256


def _check_meta_batch_fits(task: Task, config: MetaTrainConfig) -> None:
    """Refuse up front a meta-batch whose data alone cannot be allocated (no work done yet)."""
    if config.meta_batch_size <= _CHECKED_META_BATCH:
        return
    available = _available_memory()
    if available is None:
        return
    one = task.sample(config.seed, 0, 1)
    arrays = {id(x): x for x in tf.nest.flatten([one.support, one.query, one.extra]) if hasattr(x, "shape")}
    per_task = sum(int(np.prod(x.shape)) * tf.as_dtype(x.dtype).size for x in arrays.values())
    need = per_task * config.meta_batch_size
    if need > available:
        raise ValueError(
            f"meta_batch_size={config.meta_batch_size} needs at least {need / 2**30:.1f} GiB for one "
            f"meta-batch of data ({per_task} bytes per task), this machine has {available / 2**30:.1f} GiB "
            f"available"
        )


def _read_metrics(path: str, before_step: int) -> list[str]:
    """Complete metric lines of steps < ``before_step`` (a killed run may leave a torn line)."""
    if not os.path.exists(path):
        return []
    kept = []
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and rec.get("step", math.inf) < before_step:
                kept.append(json.dumps(rec) + "\n")
    return kept


def save_meta_loss(meta_loss: keras.Model, path: str) -> None:
    """Save a loss network as ``.keras`` atomically (temporary file + ``os.replace``)."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    try:
        meta_loss.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_learner(path: str) -> keras.Model:
    """Load a learner saved as ``.keras`` by a MAML run (``safe_mode=True``: no code runs)."""
    try:
        return load_meta_loss(path)  # the same checks: exists, a .keras archive, a Keras model
    except ValueError as exc:
        raise ValueError(str(exc).replace("meta-loss file", "learner file")) from None


def check_meta_loss_fits(task: Task, meta_loss: keras.Model, path: str) -> None:
    """A loaded loss network must take the features ``task`` feeds (its own meta-loss's input size)."""
    want = _input_size(task.make_meta_loss())
    got = _input_size(meta_loss)
    if want is not None and got is not None and want != got:
        raise ValueError(
            f"meta-loss file {path!r} takes {got} input features, task {task.name!r} feeds its loss "
            f"network {want}: it was trained for another task"
        )


def _input_size(model: keras.Model) -> int | None:
    size = getattr(model, "input_dim", None)
    if size is None:
        try:
            size = model.inputs[0].shape[-1]
        except (AttributeError, IndexError, ValueError):
            return None
    return None if size is None else int(size)


def _learner_params(model: keras.Model) -> list:
    return [v.numpy() for v in model.trainable_variables]


def _chunk_end(step: int, config: MetaTrainConfig, also_every: int = 0) -> int:
    """End (exclusive) of the next compiled chunk: at most ``steps_per_call`` steps,
    never past a checkpoint, an evaluation, a selection window's end, a multiple of
    ``also_every`` (``train_one``'s ``on_chunk``) or the last step."""
    end = min(config.meta_steps, step + config.steps_per_call)
    for every in (config.checkpoint_every, config.eval_every, config.select_every, also_every):
        if every:
            end = min(end, (step // every + 1) * every)
    return end


class WindowSelection(tf.train.experimental.PythonState):
    """``select_every``: the φ of the window of meta-steps with the lowest mean task loss.

    Windows are ``[0, N), [N, 2N), …``. When a window's last step has run, the mean of its task
    losses is compared with every earlier window's; if it is strictly lower, φ (all of the loss
    network's weights) is copied into ``best``. ``trackables()`` goes into every checkpoint: the
    copy, and (this object, serialised as JSON) the closed windows' means and the open window's
    losses, so a killed and resumed run selects the same φ. The open window at the end of a run
    (``meta_steps`` not a multiple of N) competes too (``selected``) but stays open in the
    checkpoint: a run continued to more ``meta_steps`` selects as an uninterrupted one.
    """

    def __init__(self, meta_loss: keras.Model, every: int) -> None:
        self.every = int(every)
        self.meta_loss = meta_loss
        self.best = [tf.Variable(v.numpy(), trainable=False) for v in meta_loss.weights]
        self.windows: list[float] = []  # mean task loss of window i = [i·N, (i + 1)·N)
        self.best_window: int | None = None
        self.open_losses: list[float] = []

    @property
    def open_start(self) -> int:
        return len(self.windows) * self.every

    def trackables(self) -> dict[str, Any]:
        return {"selected_phi": list(self.best), "windows": self}

    def record(self, step: int, task_loss: float) -> None:
        """Add meta-step ``step``'s task loss; close its window if ``step`` is the window's last."""
        if step != self.open_start + len(self.open_losses):
            raise RuntimeError(f"selection: meta-step {step} out of order (window at {self.open_start})")
        self.open_losses.append(float(task_loss))
        if len(self.open_losses) == self.every:
            mean = float(np.mean(self.open_losses))
            if self.best_window is None or mean < self.windows[self.best_window]:
                self.best_window = len(self.windows)
                for v, w in zip(self.best, self.meta_loss.weights, strict=True):
                    v.assign(w)
            self.windows.append(mean)
            self.open_losses = []

    def selected(self) -> tuple[list, dict[str, Any]]:
        """``(weights, record)`` of the selection now: the best closed window, or the open one
        (φ as it is now) if its mean is strictly lower; the record is ``selection.json``."""
        windows = [
            {"start": i * self.every, "end": (i + 1) * self.every, "mean_task_loss": m}
            for i, m in enumerate(self.windows)
        ]
        best, weights = self.best_window, [v.numpy() for v in self.best]
        if self.open_losses:
            mean = float(np.mean(self.open_losses))
            end = self.open_start + len(self.open_losses)
            windows.append({"start": self.open_start, "end": end, "mean_task_loss": mean})
            if best is None or mean < self.windows[best]:
                best, weights = len(windows) - 1, [v.numpy() for v in self.meta_loss.weights]
        if best is None:
            raise RuntimeError("selection: no meta-step has run")
        record = {"select_every": self.every, **windows[best], "windows": windows}
        return weights, record

    def serialize(self) -> bytes:
        state = {"windows": self.windows, "best_window": self.best_window, "open_losses": self.open_losses}
        return json.dumps(state).encode()

    def deserialize(self, string_value: bytes) -> None:
        state = json.loads(string_value)
        self.windows = [float(m) for m in state["windows"]]
        self.best_window = state["best_window"]
        self.open_losses = [float(x) for x in state["open_losses"]]


def _save_with_weights(model: keras.Model, weights: list, path: str) -> None:
    """Save ``model`` holding ``weights`` (its own weights are put back afterwards)."""
    own = [v.numpy() for v in model.weights]
    try:
        for v, w in zip(model.weights, weights, strict=True):
            v.assign(w)
        save_meta_loss(model, path)
    finally:
        for v, w in zip(model.weights, own, strict=True):
            v.assign(w)


class _SeedRun:
    """One seed's run folder while it trains: resume state, checkpoints, metrics.jsonl, outputs.

    ``_train_runs`` drives one or several of these through the same loop (several seeds then
    share each compiled chunk); everything written stays per seed.
    """

    def __init__(
        self, task: Task, config: MetaTrainConfig, run_dir: str, trainer: MetaTrainer, seeds: Sequence[int]
    ) -> None:
        self.task, self.config, self.run_dir, self.trainer = task, config, run_dir, trainer
        self.record = _run_record(task, config, seeds)
        _check_resume(run_dir, self.record)
        os.makedirs(run_dir, exist_ok=True)
        self.fresh = not holds_run(run_dir)  # config.json is (re)written with the first checkpoint
        self.selection = (
            WindowSelection(trainer.meta_loss, config.select_every) if config.select_every else None
        )
        self.ckpt = Checkpointer(
            os.path.join(run_dir, "checkpoints"),
            trainer.meta_loss,
            trainer.optimizer,
            learner=trainer.learner.model if config.learns_init else None,
            init_optimizer=trainer.init_optimizer,
            task_state=dict(task.checkpoint_state()),
            run_state=self.selection.trackables() if self.selection is not None else None,
        )
        self.step = self.start = self.ckpt.restore()
        task.restore_state(self.start, self.ckpt.task_state_restored)
        self.loss_path = os.path.join(run_dir, "meta_loss.keras")
        self.learner_path = os.path.join(run_dir, "learner.keras")
        self.last_path = os.path.join(run_dir, LAST_META_LOSS)
        self.selection_path = os.path.join(run_dir, SELECTION)
        self.outputs = ([self.loss_path] if config.learns_loss else []) + (
            [self.learner_path] if config.learns_init else []
        )
        if self.selection is not None:
            self.outputs += [self.last_path, self.selection_path]
        self.done = self.start >= config.meta_steps and all(os.path.exists(p) for p in self.outputs)
        self.metrics = self.writer = None
        if self.done:
            log.info("seed %d: already trained (%d meta-steps) in %s", config.seed, self.start, run_dir)
            return
        if self.start:
            log.info("seed %d: resuming from meta-step %d", config.seed, self.start)
        metrics_path = os.path.join(run_dir, "metrics.jsonl")
        atomic_write_text(metrics_path, "".join(_read_metrics(metrics_path, self.start)))
        if config.tensorboard:
            self.writer = tf.summary.create_file_writer(os.path.join(run_dir, "tensorboard"))
        self.metrics = open(metrics_path, "a")

    @property
    def training(self) -> bool:
        return not self.done and self.step < self.config.meta_steps

    def record_steps(self, infos: list[MetaStepInfo], on_step: StepCallback | None) -> None:
        """Write meta-steps ``self.step …`` (one line each) and advance ``self.step``."""
        for k, info in enumerate(infos):
            step = self.step + k
            self.metrics.write(
                json.dumps(json_safe({"step": step, **info._asdict()}), allow_nan=False) + "\n"
            )
            if self.writer is not None:
                with self.writer.as_default(step=step):
                    for name, value in info._asdict().items():
                        tf.summary.scalar(name, value)
            if self.selection is not None:
                self.selection.record(step, info.task_loss)
            if on_step is not None:
                on_step(self.config.seed, step, info)
        self.step += len(infos)

    def record_eval(self, res: dict) -> None:
        line: dict[str, Any] = {"step": self.step - 1, "eval": json_safe(res["final"])}
        diverged = first_non_finite(res)
        if diverged is not None:
            line["diverged"] = dict(zip(("split", "arm", "step"), diverged, strict=True))
            log.warning(
                "seed %d: the evaluation at meta-step %d diverged %s", self.config.seed, self.step, diverged
            )
        self.metrics.write(json.dumps(line, allow_nan=False) + "\n")

    def save(self) -> None:
        self.metrics.flush()
        os.fsync(self.metrics.fileno())
        if self.fresh:
            _write_record(self.run_dir, self.record)
            self.fresh = False
        self.ckpt.save(self.step)

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def finish(self) -> str:
        """Write the outputs (``meta_loss.keras`` …, ``config.json``); the first output's path."""
        self.close()
        if self.done:
            return self.outputs[0]
        trainer, config = self.trainer, self.config
        if self.selection is not None:
            weights, chosen = self.selection.selected()
            save_meta_loss(trainer.meta_loss, self.last_path)
            _save_with_weights(trainer.meta_loss, weights, self.loss_path)
            atomic_write_text(
                self.selection_path, json.dumps(json_safe(chosen), indent=1, allow_nan=False) + "\n"
            )
            log.info(
                "seed %d: selected φ of meta-steps %d–%d (mean task loss %.6g)",
                config.seed,
                chosen["start"],
                chosen["end"] - 1,
                chosen["mean_task_loss"],
            )
        elif config.learns_loss:
            save_meta_loss(trainer.meta_loss, self.loss_path)
        if config.learns_init:
            save_meta_loss(trainer.learner.model, self.learner_path)
        _write_record(self.run_dir, self.record)  # describes the files just written
        return self.outputs[0]


def _evaluate_runs(task: Task, config: MetaTrainConfig, runs: list[_SeedRun]) -> list[dict]:
    """``eval_every``: meta-test the seeds of ``runs`` (their φ now) together; per seed its results."""
    kwargs = {}
    if config.learns_init:
        kwargs["initial_params"] = [_learner_params(r.trainer.learner.model) for r in runs]
    res = task.evaluate(
        [r.trainer.meta_loss for r in runs] if config.learns_loss else [],
        config,
        [r.config.seed for r in runs],
        **kwargs,
    )
    return [one_seed(res, i) for i in range(len(runs))]


def _train_runs(
    task: Task,
    config: MetaTrainConfig,
    runs: list[_SeedRun],
    on_step: StepCallback | None = None,
    on_chunk: Callable[[int], bool] | None = None,
    chunk_every: int = 0,
) -> list[str]:
    """The one meta-training loop: chunks of meta-steps of every seed still training, the seeds
    at the same step side by side in one compiled call (``run_seeds``), then per seed its metric
    lines, evaluations, checkpoints and, at the end, outputs. Returns each run's first output."""
    try:
        while True:
            pending = [r for r in runs if r.training]
            if not pending:
                break
            step = min(r.step for r in pending)
            group = [r for r in pending if r.step == step]  # resumed seeds behind the others go first
            end = _chunk_end(step, config, chunk_every)
            results = run_seeds([r.trainer for r in group], step, end - step)
            failed = None
            for r, res in zip(group, results, strict=True):
                if isinstance(res, NonFiniteError):
                    failed = failed or NonFiniteError(f"seed {r.config.seed}: {res}")
                else:
                    r.record_steps(res, on_step)
            if failed is not None:  # no checkpoint: the other seeds resume from their last one
                raise failed
            if config.eval_every and end % config.eval_every == 0:
                for r, res in zip(group, _evaluate_runs(task, config, group), strict=True):
                    r.record_eval(res)
            stop = on_chunk is not None and on_chunk(end) and end < config.meta_steps
            for r in group:
                if end % config.checkpoint_every == 0 or end == config.meta_steps or stop:
                    r.save()
            if stop:
                for r in group:
                    log.info("seed %d: training stopped at meta-step %d by on_chunk", r.config.seed, end)
                break
        return [r.finish() for r in runs]
    finally:
        for r in runs:
            r.close()


def train_one(
    task: Task,
    config: MetaTrainConfig,
    run_dir: str,
    on_step: StepCallback | None = None,
    trainer: MetaTrainer | None = None,
    seeds: Sequence[int] | None = None,
    on_chunk: Callable[[int], bool] | None = None,
    chunk_every: int = 0,
) -> str:
    """Meta-train ``config.seed`` into ``run_dir`` (resuming if possible); returns the ``.keras`` path
    of what was learned: ``meta_loss.keras`` (``ml3``, ``ml3+maml``; the latter also writes
    ``learner.keras``) or ``learner.keras`` (``maml``). With ``config.select_every`` the file holds
    the selected φ, ``meta_loss_last.keras`` the last one and ``selection.json`` the choice.

    ``trainer``: a ``MetaTrainer`` for the same task and config (any seed) to reuse
    — it is ``reset`` to ``config.seed``, which saves tracing its step again.
    ``seeds``: the seed set this run belongs to (recorded in ``config.json``; default
    ``[config.seed]``). The caller holds the folder's lock (``train`` does).
    ``on_chunk(step)``: called after each compiled chunk (chunks end at multiples of
    ``chunk_every`` too) with the meta-steps done; returning ``True`` ends training there: a
    checkpoint is saved and the outputs are written as for a finished run (``ml3tf.learn_loss``'s
    callbacks, e.g. early stopping). Running the folder again continues from that checkpoint.
    """
    seeds = [config.seed] if seeds is None else seeds
    _check_resume(run_dir, _run_record(task, config, seeds))  # before any work
    if trainer is None:
        trainer = MetaTrainer(task, config)
    elif trainer.task is not task or trainer.config.replace(seed=config.seed) != config:
        raise ValueError("trainer must have been built for the same task and config")
    else:
        trainer.reset(config.seed)
    run = _SeedRun(task, config, run_dir, trainer, seeds)
    return _train_runs(task, config, [run], on_step, on_chunk, chunk_every)[0]


def train(
    task: Task,
    config: MetaTrainConfig,
    out_dir: str,
    seeds: Sequence[int] | None = None,
    evaluate: bool = True,
    on_step: StepCallback | None = None,
) -> TrainResult:
    """Meta-train a loss for ``task`` once per seed, then meta-test all of them.

    Args:
        task: a ``Task`` (``tasks.get("sine")``).
        config: the ``MetaTrainConfig``; its ``seed`` is replaced by each of ``seeds``.
        out_dir: output folder (created; resumed if it holds a compatible run).
        seeds: seeds to run; default ``[config.seed]``. One seed writes straight into
            ``out_dir``, several into ``out_dir/seed_<s>/``.
        evaluate: meta-test afterwards into ``out_dir/results.json`` and ``results.png``.
        on_step: called as ``on_step(seed, step, info)`` after every meta-step.

    Returns:
        A ``TrainResult`` with the run folders, the ``.keras`` paths and the results.

    Example:
        >>> run = ml3tf.train(tasks.get("sine"), cfg, "runs/sine", seeds=[0, 1, 2, 3, 4])
        >>> run.results["final"]["test"]["learned"]
    """
    if not isinstance(config, MetaTrainConfig):
        raise ValueError(f"config must be a MetaTrainConfig, got {type(config).__name__}")
    seeds = check_seeds([config.seed] if seeds is None else seeds)
    out = check_out_dir(out_dir)
    if config.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ValueError("tensorboard=True needs the tensorboard package: pip install 'ml3tf[tensorboard]'")
    run_dirs = [out] if len(seeds) == 1 else [os.path.join(out, f"seed_{s}") for s in seeds]

    def check() -> None:  # refuse before writing anything
        _check_layout(out, seeds)
        for run_dir, seed in zip(run_dirs, seeds, strict=True):
            _check_resume(run_dir, _run_record(task, config.replace(seed=seed), seeds))

    check()
    _check_meta_batch_fits(task, config)
    chief = _worker_index(config) == 0  # multi_worker: only worker 0 locks and writes out_dir
    lock = (
        _locked(out, keep=lambda: any(holds_run(d) for d in run_dirs)) if chief else contextlib.nullcontext()
    )
    with lock:
        check()  # again under the lock: another process may have written meanwhile
        trainer = MetaTrainer(task, config.replace(seed=seeds[0]))  # one trace serves every seed
        if config.batch_seeds and len(seeds) > 1 and can_batch_seeds(trainer):  # side by side, one graph
            trainers = [trainer] + [MetaTrainer(task, config.replace(seed=s)) for s in seeds[1:]]
            runs = [
                _SeedRun(task, config.replace(seed=s), d, t, seeds)
                for s, d, t in zip(seeds, run_dirs, trainers, strict=True)
            ]
            _train_runs(task, config, runs, on_step)
        else:  # one after the other (per-seed task state, or several devices)
            for run_dir, seed in zip(run_dirs, seeds, strict=True):
                with _worker_run_dir(trainer, run_dir) as where:  # run_dir, but a copy on workers ≠ 0
                    train_one(task, config.replace(seed=seed), where, on_step, trainer, seeds)
        paths = [os.path.join(d, "meta_loss.keras") for d in run_dirs] if config.learns_loss else []
        learners = [os.path.join(d, "learner.keras") for d in run_dirs] if config.learns_init else []
        last, selections = paths, []
        if config.select_every:
            last = [os.path.join(d, LAST_META_LOSS) for d in run_dirs]
            for d in run_dirs if chief else []:
                with open(os.path.join(d, SELECTION)) as f:
                    selections.append(json.load(f))
        results = None
        if evaluate and chief:  # the selected φ (meta_loss.keras)
            results = _evaluate_locked(task, paths, config, out, seeds, learner_paths=learners or None)
    return TrainResult(out, run_dirs, paths, results, learners, last, selections)


def _worker_index(config: MetaTrainConfig) -> int:
    """This process's worker index under ``config.strategy`` (0 unless ``multi_worker``)."""
    return worker_of(make_strategy(config.strategy))[0] if config.strategy == "multi_worker" else 0


@contextlib.contextmanager
def _worker_run_dir(trainer: MetaTrainer, run_dir: str) -> Iterator[str]:
    """The folder this worker's ``train_one`` works in: ``run_dir`` on one worker and on the
    chief (worker 0) of several; on every other worker a copy of it in ``$TMPDIR``, deleted afterwards.

    TensorFlow's pattern: every worker runs the same steps and saves every checkpoint (a save
    may need all of them), only the chief's are kept. The copy starts each worker from the
    chief's files — it needs ``run_dir`` readable there (a shared filesystem) to resume; all
    workers are checked to start from the same meta-step. A lost worker's ``WorkerLostError``
    says which checkpoint relaunching resumes from.
    """
    index, count = worker_of(trainer.strategy)
    if count == 1:
        yield run_dir
        return
    tmp = None
    if index:  # named after the run: a worker killed with -9 leaves it, the relaunch replaces it
        digest = hashlib.sha1(os.path.abspath(run_dir).encode()).hexdigest()[:12]
        tmp = os.path.join(tempfile.gettempdir(), f"ml3tf-worker{index}-{digest}")
        shutil.rmtree(tmp, ignore_errors=True)
    where = run_dir if tmp is None else _copy_run(run_dir, os.path.join(tmp, "run"))
    try:
        start = checkpoint_step(where) or 0
        with worker_errors(trainer.strategy, start):
            starts = per_worker(trainer.strategy, start)
        if len(set(starts)) > 1:
            raise ValueError(
                f"the workers find checkpoints of different meta-steps in {run_dir!r} (by worker index: "
                f"{starts}, 0: none): resuming needs --out-dir on a filesystem all workers share"
            )
        yield where
    except WorkerLostError as exc:
        raise exc.resuming_from(checkpoint_step(where)) from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _copy_run(run_dir: str, copy: str) -> str:
    """Copy what ``train_one`` reads of ``run_dir`` (if it exists) into a new folder ``copy``."""
    os.makedirs(copy)
    skip = {LOCK_NAME, "tensorboard", "results.json", "results.png"}
    for name in os.listdir(run_dir) if os.path.isdir(run_dir) else []:
        src = os.path.join(run_dir, name)
        if name in skip or name.startswith((".tmp-", "seed_")):
            continue
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(copy, name))
        else:
            shutil.copy2(src, os.path.join(copy, name))
    return copy


@contextlib.contextmanager
def _locked(out: str, keep: Callable[[], bool]) -> Iterator[None]:
    """Hold ``out``'s lock; if the body fails and this call created ``out``, remove it unless
    ``keep()`` (something worth resuming was written)."""
    created = not os.path.exists(out)
    lock = RunDirLock(out).acquire()
    try:
        yield
    except BaseException:
        if created and not keep():
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        lock.release()


def evaluate_files(
    task: Task,
    meta_loss_paths: Sequence[str],
    config: MetaTrainConfig,
    out_dir: str,
    seeds: Sequence[int],
    steps: int | None = None,
    plot: bool = True,
    learner_paths: Sequence[str] | None = None,
) -> dict:
    """Meta-test saved loss networks (one, or one per seed); write ``results.json`` (+ PNG).

    Holds ``out_dir``'s lock while it works. Raises ``ValueError`` (one line) on bad
    arguments, a meta-loss whose input size does not fit the task, or a diverged meta-test.

    ``learner_paths`` (MAML): ``learner.keras`` files whose weights are the meta-learned θ₀
    the ``learned`` arm starts from; ``meta_loss_paths`` may then be empty (plain MAML:
    the learned arm adapts with the baseline loss).
    """
    out = check_out_dir(out_dir)
    with _locked(out, keep=lambda: not set(os.listdir(out)) <= {LOCK_NAME}):
        return _evaluate_locked(task, meta_loss_paths, config, out, seeds, steps, plot, learner_paths)


def _evaluate_locked(
    task: Task,
    meta_loss_paths: Sequence[str],
    config: MetaTrainConfig,
    out: str,
    seeds: Sequence[int],
    steps: int | None = None,
    plot: bool = True,
    learner_paths: Sequence[str] | None = None,
) -> dict:
    seeds = check_seeds(seeds)
    for name, given in (("meta-loss files", meta_loss_paths), ("learner files", learner_paths)):
        per_seed(given or None, seeds, name)  # one, or one per seed (before loading anything)
    if not meta_loss_paths and not learner_paths:
        raise ValueError("give at least one meta-loss file or learner file")
    losses = [load_meta_loss(p) for p in meta_loss_paths]
    for path, loss in zip(meta_loss_paths, losses, strict=True):
        check_meta_loss_fits(task, loss, path)
    kwargs = {}
    if learner_paths:
        kwargs["initial_params"] = [_learner_params(load_learner(p)) for p in learner_paths]
    results = task.evaluate(losses, config, seeds, steps, **kwargs)
    diverged = first_non_finite(results)
    if diverged is not None:
        split, arm, step = diverged
        raise ValueError(
            f"meta-test diverged: the {arm} arm's {results.get('metric', 'metric')} on the {split} tasks "
            f"is not finite from step {step} on (inner_lr={config.inner_lr}); results.json not written, "
            f"the trained files are kept"
        )
    results["meta_loss_files"] = [os.path.abspath(p) for p in meta_loss_paths]
    if learner_paths:
        results["learner_files"] = [os.path.abspath(p) for p in learner_paths]
    os.makedirs(out, exist_ok=True)
    write_results(results, os.path.join(out, "results.json"))
    if plot:
        plot_results(results, os.path.join(out, "results.png"))
    return results
