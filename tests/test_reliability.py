"""Run directories that never lie: lock, clean failure, records, meta-test divergence, one-line errors.

Each test is one of the holes a careful user found in the CLI; each failed before the change.
"""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import ml3tf
from ml3tf import run as run_module
from ml3tf.cli import main
from ml3tf.lock import LOCK_NAME, RunDirBusyError, RunDirLock
from ml3tf.losses import LearnedLoss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = ["--eval-steps", "2", "--n-points", "16", "--n-test-tasks", "2", "--quiet"]


def _strict(text):
    def reject(name):
        raise ValueError(f"non-strict JSON constant {name}")

    return json.loads(text, parse_constant=reject)


def _files(directory):
    out = {}
    for base, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = f.read()
    return out


def _error_line(capsys):
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ml3tf: error:")]
    assert len(err) == 1, err
    return err[0]


# --- 1. one process per run folder -----------------------------------------------------------
HOLD = """
import sys, time
from ml3tf.lock import RunDirLock
lock = RunDirLock(sys.argv[1]).acquire()
print("locked", flush=True)
sys.stdin.read()
"""


def _holder(directory):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_process_on_a_locked_run_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    holder = _holder(out)
    try:
        code = main(["train", "sine", "--out-dir", str(out), "--meta-steps", "2", *QUICK])
        assert code == 2
        line = _error_line(capsys)
        assert f"in use by another ml3tf process (pid {holder.pid})" in line
        assert main(["eval", "sine", "--meta-loss", "pretrained.keras", "--out-dir", str(out)]) == 2
        assert set(os.listdir(out)) == {LOCK_NAME}  # nothing written beside the holder
    finally:
        holder.kill()  # kill -9: the kernel drops the lock with the process
        holder.communicate()
    assert main(["train", "sine", "--out-dir", str(out), "--meta-steps", "2", *QUICK]) == 0
    assert os.path.exists(out / "meta_loss.keras")


def test_lock_is_exclusive_within_a_process_too(tmp_path):
    with RunDirLock(tmp_path / "d"):
        with pytest.raises(RunDirBusyError, match=f"pid {os.getpid()}"):
            RunDirLock(tmp_path / "d").acquire()
    RunDirLock(tmp_path / "d").acquire().release()


# --- 2. a failed run does not block its folder -------------------------------------------------
def test_a_run_that_diverges_at_once_leaves_nothing_behind(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "sine", "--out-dir", str(out), "--meta-steps", "4", "--meta-lr", "1e30", *QUICK])
    assert code == 2
    assert "finite" in _error_line(capsys).lower()
    assert not out.exists()  # the call created the folder and nothing in it was worth keeping
    assert main(["train", "sine", "--out-dir", str(out), "--meta-steps", "4", *QUICK]) == 0


def test_a_failed_run_in_an_existing_folder_does_not_block_the_corrected_command(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    code = main(["train", "sine", "--out-dir", str(out), "--meta-steps", "4", "--meta-lr", "1e30", *QUICK])
    assert code == 2
    capsys.readouterr()
    assert not (out / "config.json").exists()  # no record of a run that never checkpointed
    assert main(["train", "sine", "--out-dir", str(out), "--meta-steps", "4", *QUICK]) == 0
    assert _strict((out / "config.json").read_text())["config"]["meta_lr"] == 1e-3


def test_a_meta_batch_that_cannot_fit_is_refused_up_front(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "sine", "--out-dir", str(out), "--meta-batch-size", "1000000000000", *QUICK])
    assert code == 2
    assert "meta_batch_size=1000000000000 needs at least" in _error_line(capsys)
    assert not out.exists()


# --- 3./4. records that match the model beside them -------------------------------------------
def test_changing_the_seeds_of_a_finished_run_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "sine", "--out-dir", str(out), "--seeds", "0", "--meta-steps", "3", *QUICK]) == 0
    before = _files(out)
    for seeds in (["0", "1"], ["1"]):
        code = main(["train", "sine", "--out-dir", str(out), "--seeds", *seeds, "--meta-steps", "3", *QUICK])
        assert code == 2
        line = _error_line(capsys)
        assert "seed" in line and "use another --out-dir" in line
    assert _files(out) == before
    multi = tmp_path / "multi"
    assert (
        main(["train", "sine", "--out-dir", str(multi), "--seeds", "0", "1", "--meta-steps", "3", *QUICK])
        == 0
    )
    before = _files(multi)
    for seeds in (["0", "1", "2"], ["0"], ["1", "2"]):
        code = main(
            ["train", "sine", "--out-dir", str(multi), "--seeds", *seeds, "--meta-steps", "3", *QUICK]
        )
        assert code == 2, seeds
        assert "seeds" in _error_line(capsys)
    assert _files(multi) == before
    assert (
        main(["train", "sine", "--out-dir", str(multi), "--seeds", "0", "1", "--meta-steps", "3", *QUICK])
        == 0
    )


def test_fewer_meta_steps_on_a_finished_run_are_refused_more_continue(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "sine", "--out-dir", str(out), "--meta-steps", "6", *QUICK]) == 0
    before = _files(out)
    assert main(["train", "sine", "--out-dir", str(out), "--meta-steps", "3", *QUICK]) == 2
    assert "trained for 6 meta-steps; cannot re-run it with meta_steps=3" in _error_line(capsys)
    assert _files(out) == before
    # more meta-steps continue the same run, and every record then says 9
    assert main(["train", "sine", "--out-dir", str(out), "--meta-steps", "9", *QUICK]) == 0
    assert _strict((out / "config.json").read_text())["config"]["meta_steps"] == 9
    assert _strict((out / "results.json").read_text())["config"]["meta_steps"] == 9
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(9))
    straight = tmp_path / "straight"
    assert main(["train", "sine", "--out-dir", str(straight), "--meta-steps", "9", *QUICK]) == 0
    assert (out / "metrics.jsonl").read_text() == (straight / "metrics.jsonl").read_text()


# --- 5. meta-test divergence, strict JSON -----------------------------------------------------
def test_a_diverging_meta_test_is_an_error_and_keeps_the_loss(tmp_path, capsys):
    out = tmp_path / "run"
    flags = ["--meta-steps", "2", *QUICK, "--inner-lr", "1e3", "--eval-steps", "30"]
    code = main(["train", "sine", "--out-dir", str(out), *flags])
    assert code == 2
    line = _error_line(capsys)
    assert "meta-test diverged" in line and "arm" in line and "tasks" in line and "from step" in line
    assert (out / "meta_loss.keras").exists()
    assert not (out / "results.json").exists()
    for name in ("config.json",):
        _strict((out / name).read_text())
    for text in (out / "metrics.jsonl").read_text().splitlines():
        _strict(text)


def test_every_json_the_repository_holds_is_strict():
    found = 0
    for folder in ("docs", "bench", "models"):
        for base, _, names in os.walk(os.path.join(ROOT, folder)):
            for name in names:
                path = os.path.join(base, name)
                if name.endswith((".json", ".jsonl")):
                    with open(path) as f:
                        text = f.read()
                    for part in [text] if name.endswith(".json") else text.splitlines():
                        try:
                            _strict(part)
                        except ValueError as exc:
                            raise AssertionError(f"{os.path.relpath(path, ROOT)}: {exc}") from None
                    found += 1
    assert found > 10


def test_results_writer_refuses_nan(tmp_path):
    with pytest.raises(ValueError, match="not JSON compliant"):
        ml3tf.results.write_results({"final": float("nan")}, str(tmp_path / "r.json"))
    assert os.listdir(tmp_path) == []


# --- 6. every error one line -----------------------------------------------------------------
def test_a_full_disk_is_one_line_and_the_data_survives(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real = run_module.write_results

    def full(results, path):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(run_module, "write_results", full)
    assert main(["train", "sine", "--out-dir", str(out), "--meta-steps", "3", *QUICK]) == 2
    line = _error_line(capsys)
    assert "No space left on device" in line and "intact" in line
    assert (out / "meta_loss.keras").exists()
    monkeypatch.setattr(run_module, "write_results", real)
    assert main(["train", "sine", "--out-dir", str(out), "--meta-steps", "3", *QUICK]) == 0
    _strict((out / "results.json").read_text())


def _classification_loss_file(directory):
    from ml3tf import tasks

    directory.mkdir()
    net = tasks.get("classification").make_meta_loss()
    run_module.save_meta_loss(net, str(directory / "meta_loss.keras"))
    (directory / "config.json").write_text(json.dumps({"task": "classification"}))
    return directory / "meta_loss.keras"


def test_a_meta_loss_of_another_task_is_one_line_naming_both(tmp_path, capsys):
    path = _classification_loss_file(tmp_path / "cls")
    ev = tmp_path / "ev"
    code = main(["eval", "sine", "--meta-loss", str(path), "--out-dir", str(ev), "--seeds", "0", *QUICK])
    assert code == 2
    line = _error_line(capsys)
    assert "takes 4 input features" in line and "'sine'" in line and "2" in line
    assert not ev.exists()


@pytest.fixture(scope="module")
def binary_loss():
    from ml3tf import tasks

    return LearnedLoss(tasks.get("classification").make_meta_loss(), kind="classification")


@pytest.mark.parametrize(
    ("y_true", "y_pred", "match"),
    [
        (np.zeros((8, 1)), np.zeros((4, 1)), "same batch size"),
        (np.array([0, 1, 5]), np.full((3, 2), 0.5), r"labels must lie in \[0, 2\), got \[5\]"),
        (np.array([0, -1, 1]), np.full((3, 2), 0.5), r"got \[-1\]"),
        (np.array([0.0, 0.7, 1.0]), np.full((3, 2), 0.5), r"labels must be integers, got \[0.7"),
        (np.zeros((0,), "int32"), np.zeros((0, 2)), "empty batch"),
    ],
)
def test_learned_loss_validates_labels_and_batches(binary_loss, y_true, y_pred, match):
    with pytest.raises(ValueError, match=match):
        binary_loss(y_true, y_pred.astype("float32"))


def test_learned_loss_regression_batch_and_empty(binary_loss):
    sine = LearnedLoss.pretrained("sine")
    with pytest.raises(ValueError, match="same batch size"):
        sine(np.zeros((8, 1)), np.zeros((4, 1), "float32"))
    with pytest.raises(ValueError, match="empty batch"):
        sine(np.zeros((0, 1)), np.zeros((0, 1), "float32"))


def test_labels_are_checked_inside_a_compiled_graph_too(binary_loss):
    import tensorflow as tf

    @tf.function
    def f(y_true, y_pred):
        return binary_loss(y_true, y_pred)

    pred = tf.fill((3, 2), 0.5)
    assert np.isfinite(f(tf.constant([0, 1, 1]), pred).numpy())
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"y_true labels must lie in \[0, 2\)"):
        f(tf.constant([0, 1, 2]), pred)


def test_export_reads_the_kind_from_the_run(tmp_path, capsys):
    import tensorflow as tf

    path = _classification_loss_file(tmp_path / "cls")
    out = tmp_path / "export"
    assert main(["export", str(path), "--out-dir", str(out)]) == 0
    served = tf.saved_model.load(str(out)).signatures["serving_default"]
    assert served.structured_input_signature[1]["y_true"].shape.as_list() == [None, 2]
    assert main(["export", str(path), "--out-dir", str(tmp_path / "e2"), "--kind", "regression"]) == 2
    assert "trained as a classification loss" in _error_line(capsys)


# --- 7. fall-backs ------------------------------------------------------------------------------
def test_a_truncated_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    out = tmp_path / "run"
    flags = ["--meta-steps", "6", "--checkpoint-every", "3", *QUICK]
    assert main(["train", "sine", "--out-dir", str(out), "--no-eval", *flags]) == 0
    straight = (out / "metrics.jsonl").read_text()
    (out / "meta_loss.keras").unlink()  # as if killed after the last checkpoint
    data = [p for p in (out / "checkpoints").iterdir() if p.name.startswith("ckpt-6.data")]
    assert data
    for p in data:
        p.write_bytes(p.read_bytes()[: max(1, p.stat().st_size // 3)])
    with caplog.at_level("WARNING", logger="ml3tf"):
        assert main(["train", "sine", "--out-dir", str(out), "--no-eval", *flags]) == 0
    assert any("resuming from the previous one, ckpt-3" in r.getMessage() for r in caplog.records)
    assert (out / "metrics.jsonl").read_text() == straight  # steps 3–5 re-run identically


def test_eval_refuses_a_corrupt_config_beside_the_meta_loss(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "sine", "--out-dir", str(out), "--meta-steps", "2", "--no-eval", *QUICK]) == 0
    (out / "config.json").write_text('{"task": "sine", "config": {')
    ev = tmp_path / "ev"
    assert main(["eval", "sine", "--meta-loss", str(out / "meta_loss.keras"), "--out-dir", str(ev)]) == 2
    assert "is not a readable config.json" in _error_line(capsys)
    assert not ev.exists()


# --- the old guarantee, with the lock in place: kill -9 + resume = uninterrupted -------------
@pytest.mark.slow
def test_kill_minus_nine_then_resume_with_the_lock(tmp_path):
    flags = ["--meta-steps", "400", "--checkpoint-every", "50", "--steps-per-call", "10", *QUICK]
    straight = tmp_path / "straight"
    assert main(["train", "sine", "--out-dir", str(straight), *flags]) == 0
    out = tmp_path / "killed"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, "-m", "ml3tf", "train", "sine", "--out-dir", str(out), *flags]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):  # wait for a checkpoint past the first, then kill mid-run
        if run_module.checkpoint_step(str(out)) and run_module.checkpoint_step(str(out)) >= 100:
            break
        time.sleep(0.1)
    second = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert second.returncode in (0, 2)  # 2 while the first one holds the lock
    if second.returncode == 2:
        assert "in use by another ml3tf process" in second.stderr
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    assert (out / "metrics.jsonl").read_text() == (straight / "metrics.jsonl").read_text()
    final = _strict((straight / "results.json").read_text())["final"]
    assert _strict((out / "results.json").read_text())["final"] == final
    keras.models.load_model(out / "meta_loss.keras", safe_mode=True)
