"""The `ml3tf` command, in process: outputs, flags from the dataclasses, one-line errors."""

import json
import os
import subprocess
import sys

import pytest

from ml3tf.cli import main


def _json(path):
    with open(path) as f:
        return json.load(f)


QUICK = ["--meta-steps", "4", "--eval-steps", "3", "--n-points", "16", "--n-test-tasks", "2"]


def test_tasks_lists_sine(capsys):
    assert main(["tasks"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert "sine" in names and names == sorted(names)


def test_train_then_eval(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", "sine", "--out-dir", out, "--seeds", "0", "1", *QUICK, "--inner-lr", "0.002"]) == 0
    text = capsys.readouterr().out
    assert "after 3 steps" in text and "results.json" in text
    cfg = _json(os.path.join(out, "seed_1", "config.json"))
    assert cfg["config"]["inner_lr"] == 0.002 and cfg["config"]["seed"] == 1
    assert cfg["task_options"]["n_points"] == 16
    files = [os.path.join(out, f"seed_{s}", "meta_loss.keras") for s in (0, 1)]
    ev = str(tmp_path / "ev")
    # eval picks up the run's config.json (inner_lr 0.002, 16 points, 2 test tasks)
    code = main(["eval", "sine", "--meta-loss", *files, "--out-dir", ev, "--quiet"])
    assert code == 0
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    res = _json(os.path.join(ev, "results.json"))
    assert res["final"] == final and res["seeds"] == [0, 1]
    # the same losses and learners as the training run's own evaluation: exact, since eval
    # reruns the same evaluator on the same (saved, bit-identical) weights and data
    assert res["final"] == _json(os.path.join(out, "results.json"))["final"]


def test_tuple_and_bool_flags(tmp_path):
    out = str(tmp_path / "fam")
    code = main(
        [
            "train",
            "sine",
            "--out-dir",
            out,
            *QUICK,
            "--mode",
            "family",
            "--meta-batch-size",
            "2",
            "--phase-range",
            "0",
            "3.14",
            "--no-eval",
            "--quiet",
            "--jit-compile",
        ]
    )
    assert code == 0
    cfg = _json(os.path.join(out, "config.json"))
    assert cfg["task_options"]["phase_range"] == [0.0, 3.14] and cfg["config"]["jit_compile"] is True
    assert not os.path.exists(os.path.join(out, "results.json"))


def test_an_optional_bool_field_is_a_yes_no_flag_left_unset_by_default():
    """``eval_jit_compile: bool | None``: ``--eval-jit-compile`` / ``--no-eval-jit-compile`` set it;
    without either the config keeps its default, ``None`` (auto)."""
    import argparse

    from ml3tf.cli import _picked, add_dataclass_flags
    from ml3tf.config import MetaTrainConfig

    parser = argparse.ArgumentParser()
    names = add_dataclass_flags(parser, MetaTrainConfig)
    for argv, want in (([], None), (["--eval-jit-compile"], True), (["--no-eval-jit-compile"], False)):
        picked = _picked(parser.parse_args(argv), names)
        assert MetaTrainConfig(**picked).eval_jit_compile is want


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["train", "nosuchtask", "--out-dir", "X"], "unknown task 'nosuchtask'"),
        (["train", "sine", "--out-dir", "X", "--inner-lr", "-1"], "inner_lr"),
        (["train", "sine", "--out-dir", "X", "--inner-lr", "0"], "inner_lr"),
        (["train", "sine", "--out-dir", "X", "--inner-steps", "0"], "inner_steps"),
        (["train", "sine", "--out-dir", "X", "--meta-lr", "nan"], "meta_lr"),
        (["train", "sine", "--out-dir", "X", "--mode", "fancy"], "mode"),
        (["train", "sine", "--out-dir", "X", "--inner-steps", "two"], "invalid int value"),
        (["train", "sine"], "--out-dir"),
        (["eval", "sine", "--out-dir", "X", "--meta-loss", "missing.keras"], "does not exist"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, args, fragment):
    args = [str(tmp_path / a) if a == "X" else a for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ml3tf: error:") and fragment in err, err
    assert not (tmp_path / "X").exists()


def test_out_dir_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "f"
    f.write_text("")
    assert main(["train", "sine", "--out-dir", str(f), *QUICK]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_the_command_ends_at_once_with_every_file_complete(tmp_path):
    """``python -m ml3tf`` ends the process without the interpreter's finalisation once TensorFlow
    is loaded (``cli.run``): the exit code is ``main``'s, and every file of the run — results,
    metrics, checkpoints, TensorBoard events — is complete, so that the run resumes from it."""
    out = str(tmp_path / "s")
    cmd = [sys.executable, "-m", "ml3tf", "train", "sine", "--out-dir", out, *QUICK]
    cmd += ["--checkpoint-every", "2", "--tensorboard"]
    done = subprocess.run([*cmd, "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    res = _json(os.path.join(out, "results.json"))
    with open(os.path.join(out, "metrics.jsonl")) as f:
        lines = f.read().splitlines(keepends=True)
    assert len(lines) == 4 and all(line.endswith("\n") for line in lines)
    assert [json.loads(line)["step"] for line in lines] == [0, 1, 2, 3]
    import tensorflow as tf

    events = tf.io.gfile.glob(os.path.join(out, "tensorboard", "*"))
    tags = {v.tag for e in events for ev in tf.compat.v1.train.summary_iterator(e) for v in ev.summary.value}
    assert tags, "no TensorBoard scalar was written"
    # A longer run resumes from the last checkpoint the first process wrote, and ends as fresh.
    longer = subprocess.run([*cmd, "--meta-steps", "6"], capture_output=True, text=True)
    assert longer.returncode == 0, longer.stderr
    assert "resuming from meta-step 4" in longer.stderr
    assert _json(os.path.join(out, "results.json"))["final"] != res["final"]
    bad = subprocess.run([*cmd, "--inner-lr", "-1"], capture_output=True, text=True)
    assert bad.returncode == 2 and "inner_lr" in bad.stderr
    # It does skip the finalisation (an atexit hook never runs) — but not without TensorFlow, nor
    # under a profiler (which writes its results at exit).
    probe = "import atexit, sys; atexit.register(print, 'finalised'); sys.argv = ['ml3tf', 'tasks']; {}"
    profiled = "import cProfile; cProfile.Profile().enable(); "
    for imports, finalised in (
        ("import tensorflow; ", False),
        ("", True),
        (profiled + "import tensorflow; ", True),
    ):
        code = probe.format(imports + "from ml3tf.cli import run; run()")
        ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert ran.returncode == 0 and "sine" in ran.stdout, ran.stderr
        assert ("finalised" in ran.stdout) is finalised


def test_python_dash_m_and_help():
    out = subprocess.run(
        [sys.executable, "-m", "ml3tf", "train", "sine", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--inner-lr" in out and "--n-points" in out and "inner learning rate" in out
    bad = subprocess.run(
        [sys.executable, "-m", "ml3tf", "train", "nosuch", "--out-dir", "x"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("ml3tf: error:")
