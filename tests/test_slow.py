"""Slow, opt-in checks (`pytest -m slow`): learning signal and a real kill -9."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import ml3tf
from ml3tf import tasks

pytestmark = pytest.mark.slow


def test_paper_protocol_learned_loss_beats_mse_on_train_and_test_tasks(tmp_path):
    task = tasks.get("sine")
    run = ml3tf.train(task, task.default_config(), str(tmp_path / "sine"), seeds=[0, 1, 2, 3, 4])
    final, step1 = run.results["final"], run.results["at_step_1"]
    for split in ("train", "test"):
        assert final[split]["learned"] < final[split]["baseline"], (split, final[split])
    assert step1["train"]["learned"] < step1["train"]["baseline"]


def _lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip().endswith("}")]


def test_kill_dash_9_then_resume_matches_uninterrupted(tmp_path):
    args = ["--meta-steps", "3000", "--checkpoint-every", "50", "--no-eval", "--quiet"]
    ref = str(tmp_path / "ref")
    subprocess.run([sys.executable, "-m", "ml3tf", "train", "sine", "--out-dir", ref, *args], check=True)
    cut = str(tmp_path / "cut")
    proc = subprocess.Popen([sys.executable, "-m", "ml3tf", "train", "sine", "--out-dir", cut, *args])
    metrics = os.path.join(cut, "metrics.jsonl")
    deadline = time.time() + 120
    while time.time() < deadline:
        if os.path.exists(metrics) and len(_lines(metrics)) > 120:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(cut, "meta_loss.keras")), "killed too late to test anything"
    subprocess.run([sys.executable, "-m", "ml3tf", "train", "sine", "--out-dir", cut, *args], check=True)
    assert _lines(metrics) == _lines(os.path.join(ref, "metrics.jsonl"))
