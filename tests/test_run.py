"""Runs on disk: outputs, resume after interruption, refusal of bad folders, end to end."""

import dataclasses
import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf

import ml3tf
from ml3tf import tasks
from ml3tf.meta_loss import load_meta_loss
from ml3tf.meta_trainer import NonFiniteError
from ml3tf.run import train_one
from tests.toy import ToyTask


def _metrics(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def _sine_cfg(**kw):
    task = tasks.get("sine", n_points=32, n_test_tasks=3)
    return task, task.default_config().replace(meta_steps=6, checkpoint_every=2, eval_steps=4, **kw)


def test_sine_end_to_end_writes_every_output(tmp_path):
    task, cfg = _sine_cfg(tensorboard=True)
    run = ml3tf.train(task, cfg, str(tmp_path / "run"), seeds=[0, 1])
    for seed in (0, 1):
        d = tmp_path / "run" / f"seed_{seed}"
        for name in ("config.json", "metrics.jsonl", "meta_loss.keras", "checkpoints", "tensorboard"):
            assert (d / name).exists(), name
        lines = _metrics(d / "metrics.jsonl")
        assert [r["step"] for r in lines] == list(range(6))
        assert all(np.isfinite(r["task_loss"]) for r in lines)
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res == json.loads(json.dumps(run.results))
    assert res["task"] == "sine" and res["metric"] == "mse" and res["baseline"] == "mse"
    assert res["seeds"] == [0, 1] and res["steps"] == 4 and res["higher_is_better"] is False
    for split in ("train", "test"):
        for method in ("learned", "baseline"):
            assert len(res["curves"][split][method]["mean"]) == 5
        assert set(res["final"][split]) == {"learned", "learned_std", "baseline", "baseline_std"}
    assert (tmp_path / "run" / "results.png").stat().st_size > 1000


def test_family_mode_end_to_end(tmp_path):
    task = tasks.get("sine", mode="family", n_points=16, n_test_tasks=2)
    cfg = task.default_config().replace(meta_steps=3, meta_batch_size=3, eval_steps=3)
    run = ml3tf.train(task, cfg, str(tmp_path / "fam"))
    assert run.meta_loss_paths == [str(tmp_path / "fam" / "meta_loss.keras")]
    batch = task.sample(0, 0, 3)
    assert batch.support["x"].shape == batch.query["x"].shape == (3, 16, 1)
    assert not np.allclose(batch.support["x"], batch.query["x"])  # a real support/query split


class _Interrupt(Exception):
    pass


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path):
    task, cfg = _sine_cfg(eval_every=3)
    train_one(task, cfg, str(tmp_path / "ref"))

    def stop_at_4(seed, step, info):
        if step == 4:  # after the checkpoint at 4 completed steps? no: step 4 is the 5th
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train_one(task, cfg, str(tmp_path / "cut"), on_step=stop_at_4)
    assert not (tmp_path / "cut" / "meta_loss.keras").exists()
    # the metrics file has lines past the last checkpoint (4 steps); resume must drop them
    assert len([r for r in _metrics(tmp_path / "cut" / "metrics.jsonl") if "eval" not in r]) == 5
    with open(tmp_path / "cut" / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "task_lo')  # a torn line, as kill -9 can leave
    train_one(task, cfg, str(tmp_path / "cut"))
    assert _metrics(tmp_path / "cut" / "metrics.jsonl") == _metrics(tmp_path / "ref" / "metrics.jsonl")
    ref = load_meta_loss(str(tmp_path / "ref" / "meta_loss.keras"))
    cut = load_meta_loss(str(tmp_path / "cut" / "meta_loss.keras"))
    for a, b in zip(ref.weights, cut.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


class _Stateful(ToyTask):
    """A task with state of its own: its loss scales with the compiled chunks it has run so far."""

    def __init__(self, declares_state=True):
        super().__init__(learner="smooth", meta_loss="network")
        self.chunks = tf.Variable(0.0)
        self.declares_state = declares_state
        self.restored = []

    def before_meta_steps(self, trainer, first_step, count):
        self.chunks.assign_add(1.0)

    def task_loss(self, learner, params, state, data):
        return (1.0 + 0.5 * self.chunks) * super().task_loss(learner, params, state, data)

    def checkpoint_state(self):
        return {"chunks": self.chunks} if self.declares_state else {}

    def restore_state(self, step, restored):
        self.restored.append((step, restored))


def _stateful_run(out, declares_state=True, on_step=None):
    task = _Stateful(declares_state)
    cfg = task.default_config().replace(meta_steps=6, checkpoint_every=2)
    train_one(task, cfg, str(out), on_step=on_step)
    return task


def _stop_at_4(seed, step, info):
    if step == 4:
        raise _Interrupt


def test_resume_restores_the_task_state_from_the_same_checkpoint(tmp_path):
    ref = _stateful_run(tmp_path / "ref")
    assert ref.restored == [(0, False)] and float(ref.chunks.numpy()) == 3.0
    with pytest.raises(_Interrupt):
        _stateful_run(tmp_path / "cut", on_step=_stop_at_4)
    cut = _stateful_run(tmp_path / "cut")  # a fresh task: chunks 0 until restored
    assert cut.restored == [(4, True)] and float(cut.chunks.numpy()) == 3.0
    assert _metrics(tmp_path / "cut" / "metrics.jsonl") == _metrics(tmp_path / "ref" / "metrics.jsonl")
    # a truncated newest checkpoint: φ, the optimizer and the task state all come from the one before
    (tmp_path / "cut" / "meta_loss.keras").unlink()
    for p in (tmp_path / "cut" / "checkpoints").glob("ckpt-6.data*"):
        p.write_bytes(p.read_bytes()[: max(1, p.stat().st_size // 3)])
    again = _stateful_run(tmp_path / "cut")
    assert again.restored == [(4, True)] and float(again.chunks.numpy()) == 3.0
    assert _metrics(tmp_path / "cut" / "metrics.jsonl") == _metrics(tmp_path / "ref" / "metrics.jsonl")


def test_a_checkpoint_without_the_task_state_resumes_and_says_so(tmp_path):
    ref = _stateful_run(tmp_path / "ref")
    with pytest.raises(_Interrupt):
        _stateful_run(tmp_path / "old", declares_state=False, on_step=_stop_at_4)  # an older ml3tf
    old = _stateful_run(tmp_path / "old")
    assert old.restored == [(4, False)] and float(old.chunks.numpy()) == 1.0  # the task starts over
    ref_lines, old_lines = (_metrics(tmp_path / d / "metrics.jsonl") for d in ("ref", "old"))
    assert old_lines[:4] == ref_lines[:4] and old_lines[4] != ref_lines[4]
    assert float(ref.chunks.numpy()) == 3.0


def test_rerun_of_a_finished_run_does_not_train_again(tmp_path):
    task, cfg = _sine_cfg()
    out = str(tmp_path / "done")
    train_one(task, cfg, out)
    stamp = os.path.getmtime(os.path.join(out, "meta_loss.keras"))
    calls = []
    train_one(task, cfg, out, on_step=lambda *a: calls.append(a))
    assert calls == [] and os.path.getmtime(os.path.join(out, "meta_loss.keras")) == stamp
    # more meta-steps continue from the checkpoint
    train_one(task, cfg.replace(meta_steps=8), out, on_step=lambda *a: calls.append(a[1]))
    assert calls == [6, 7]


def test_resume_refuses_a_different_config(tmp_path):
    task, cfg = _sine_cfg()
    out = str(tmp_path / "r")
    train_one(task, cfg, out)
    with pytest.raises(ValueError, match="inner_lr"):
        ml3tf.train(task, cfg.replace(inner_lr=0.1), out)
    with pytest.raises(ValueError, match="task options"):
        ml3tf.train(tasks.get("sine", n_points=10), cfg, out)


def test_bad_out_dirs_are_refused_before_anything_is_written(tmp_path):
    task, cfg = _sine_cfg()
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        ml3tf.train(task, cfg, str(afile))
    with pytest.raises(ValueError, match="which is a file"):
        ml3tf.train(task, cfg, str(afile / "sub"))
    with pytest.raises(ValueError, match="seeds"):
        ml3tf.train(task, cfg, str(tmp_path / "s"), seeds=[0, 0])
    assert sorted(os.listdir(tmp_path)) == ["file.txt"]


def test_non_finite_step_keeps_last_checkpoint_and_writes_no_loss(tmp_path):
    task = ToyTask(learner="smooth", meta_loss="network", nan_at=3)
    cfg = task.default_config().replace(meta_steps=6, checkpoint_every=2)
    out = tmp_path / "nan"
    with pytest.raises(NonFiniteError, match="meta-step 3"):
        ml3tf.train(task, cfg, str(out), evaluate=False)
    assert not (out / "meta_loss.keras").exists()
    assert not (out / "results.json").exists()
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.endswith(".index"))
    assert ckpts == ["ckpt-2.index"]


@pytest.mark.parametrize("steps", [1, 3])
def test_summary_shows_step_one_and_the_last_step_once_each(steps):
    from ml3tf.results import format_summary, summarize

    curve = {"learned": [np.linspace(2.0, 1.0, steps + 1)], "baseline": [np.linspace(2.0, 1.5, steps + 1)]}
    res = summarize(
        task="toy",
        metric="mse",
        higher_is_better=False,
        baseline="mse",
        steps=steps,
        seeds=[0],
        curves={"train": curve, "test": curve},
        config={},
        wall_seconds=0.0,
    )
    lines = format_summary(res).splitlines()[1:]
    assert len(lines) == (2 if steps == 1 else 4)
    assert sum("after 1 step:" in line for line in lines) == 2
    last = [line for line in lines if f"after {steps} steps" in line]
    assert len(last) == (0 if steps == 1 else 2) and all("learned 1 " in line for line in last)


# --- select_every: φ of the window with the lowest mean task loss ---------------------------------
class _Windows(ToyTask):
    """Task loss × 0.1 on the meta-steps in ``low`` (a window made the best on purpose)."""

    def __init__(self, low=()):
        super().__init__(learner="smooth", meta_loss="network")
        self.low = set(low)

    def sample(self, seed, step, batch_size):
        batch = super().sample(seed, step, batch_size)
        scale = np.full((batch_size,), 0.1 if step in self.low else 1.0, np.float32)
        return dataclasses.replace(batch, query={**batch.query, "scale": scale})

    def task_loss(self, learner, params, state, data):
        return data["scale"] * super().task_loss(learner, params, state, data)


def _select_cfg(task, **kw):
    # windows [0,3) [3,6) [6,9) [9,11); checkpoints at 5, 10, 11: a window spans a checkpoint
    return task.default_config().replace(
        meta_steps=11, select_every=3, checkpoint_every=5, steps_per_call=50, **kw
    )


def _weights(path):
    return [w.numpy() for w in load_meta_loss(str(path)).weights]


@pytest.mark.parametrize(("low", "window"), [(range(3, 6), 1), (range(9, 11), 3), ((), None)])
def test_select_every_keeps_the_phi_of_the_window_with_the_lowest_mean_task_loss(tmp_path, low, window):
    task = _Windows(low)
    cfg = _select_cfg(task)
    trainer = ml3tf.MetaTrainer(task, cfg)
    at_end = {}  # φ after each window's last step (a compiled chunk never crosses a window's end)

    def keep(seed, step, info):
        if (step + 1) % 3 == 0 or step + 1 == cfg.meta_steps:
            at_end[step + 1] = [w.numpy() for w in trainer.meta_loss.weights]

    out = tmp_path / "run"
    train_one(task, cfg, str(out), on_step=keep, trainer=trainer)
    # the window means, recomputed from metrics.jsonl
    losses = [r["task_loss"] for r in _metrics(out / "metrics.jsonl")]
    means = [float(np.mean(losses[s : s + 3])) for s in range(0, 11, 3)]
    best = int(np.argmin(means))  # the first of equal means: a later window must be strictly lower
    if window is not None:
        assert best == window
    selection = json.loads((out / "selection.json").read_text())
    assert (selection["start"], selection["end"]) == (3 * best, min(3 * best + 3, 11))
    assert selection["mean_task_loss"] == means[best]
    assert [w["mean_task_loss"] for w in selection["windows"]] == means
    for a, b in zip(_weights(out / "meta_loss.keras"), at_end[selection["end"]], strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(_weights(out / "meta_loss_last.keras"), at_end[11], strict=True):
        np.testing.assert_array_equal(a, b)
    if best != 3:  # not trivially the last φ
        selected, last = _weights(out / "meta_loss.keras"), at_end[11]
        assert any(not np.array_equal(a, b) for a, b in zip(selected, last, strict=True))


@pytest.mark.parametrize("stop", [7, 10])
def test_select_every_resumed_after_a_kill_selects_what_an_uninterrupted_run_selects(tmp_path, stop):
    """Killed at ``stop`` (7: the checkpoint at 5 holds half of window [3, 6); 10: it holds the φ of
    window [3, 6), the best, and one step of [9, 11)), resumed in a fresh task."""
    cfg = _select_cfg(_Windows(range(3, 6)))
    ref = ml3tf.train(_Windows(range(3, 6)), cfg, str(tmp_path / "ref"), evaluate=False)

    def kill(seed, step, info):
        if step == stop:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        ml3tf.train(_Windows(range(3, 6)), cfg, str(tmp_path / "cut"), on_step=kill, evaluate=False)
    assert not (tmp_path / "cut" / "selection.json").exists()
    cut = ml3tf.train(_Windows(range(3, 6)), cfg, str(tmp_path / "cut"), evaluate=False)
    assert cut.selections == ref.selections and ref.selections[0]["start"] == 3
    assert cut.last_meta_loss_paths == [str(tmp_path / "cut" / "meta_loss_last.keras")]
    assert _metrics(tmp_path / "cut" / "metrics.jsonl") == _metrics(tmp_path / "ref" / "metrics.jsonl")
    for name in ("meta_loss.keras", "meta_loss_last.keras"):
        for a, b in zip(_weights(tmp_path / "ref" / name), _weights(tmp_path / "cut" / name), strict=True):
            np.testing.assert_array_equal(a, b)


def test_select_every_continued_to_more_meta_steps_selects_as_an_uninterrupted_run(tmp_path):
    """The open window [9, 11) competes at the end of an 11-step run but stays open: continued to
    12 steps, the run is an uninterrupted 12-step one ([9, 12) a full window)."""
    task = _Windows(range(9, 11))
    cfg = _select_cfg(task)
    first = ml3tf.train(task, cfg, str(tmp_path / "cont"), evaluate=False).selections[0]
    assert (first["start"], first["end"]) == (9, 11)
    cont = ml3tf.train(task, cfg.replace(meta_steps=12), str(tmp_path / "cont"), evaluate=False)
    ref = ml3tf.train(task, cfg.replace(meta_steps=12), str(tmp_path / "ref"), evaluate=False)
    assert cont.selections == ref.selections and ref.selections[0]["end"] == 12
    for a, b in zip(
        _weights(tmp_path / "cont" / "meta_loss.keras"),
        _weights(tmp_path / "ref" / "meta_loss.keras"),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_select_every_is_validated_and_refused_without_a_learned_loss(tmp_path):
    with pytest.raises(ValueError, match="select_every must be an integer >= 0"):
        ml3tf.MetaTrainConfig(select_every=-1)
    for method in ("maml", "ml3+maml"):
        with pytest.raises(ValueError, match=f"select_every=5 .* method={re.escape(repr(method))}"):
            ml3tf.MetaTrainConfig(method=method, select_every=5)
    task, cfg = _sine_cfg()
    run = ml3tf.train(task, cfg, str(tmp_path / "plain"), evaluate=False)  # select_every=0
    assert run.last_meta_loss_paths == run.meta_loss_paths and run.selections == []
    assert sorted(p.name for p in (tmp_path / "plain").glob("*.keras")) == ["meta_loss.keras"]


def test_train_meta_tests_the_selected_phi(tmp_path):
    task = _Windows(range(3, 6))
    run = ml3tf.train(task, _select_cfg(task, eval_steps=2), str(tmp_path / "ev"))
    assert run.results["meta_loss_files"] == [str(tmp_path / "ev" / "meta_loss.keras")]
