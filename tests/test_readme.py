"""README and CI agree: .ci/run runs the README's two commands verbatim, and every number in a
generated block of README.md is what ``bench/update_readme.py`` renders from the result files."""

import os
import re
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..")
UPDATE_README = os.path.join(ROOT, "bench", "update_readme.py")


def _read(name):
    with open(os.path.join(ROOT, name)) as f:
        return f.read()


def test_ci_runs_the_readme_commands():
    blocks = re.findall(r"```bash\n(.*?)\n```", _read("README.md"), re.S)
    commands = [b.strip() for b in blocks if b.startswith("python3 -m venv")]
    assert len(commands) == 2 and "ml3tf train sine" in commands[0] and "pytest" in commands[1]
    ci = _read(".ci/run")
    for command in commands:
        assert command in ci


def test_readme_numbers_are_generated():
    readme = _read("README.md")
    names = ("sine", "bench-sine", "bench-scale", "keras-learned-loss", "maml-sine", "shaped-sine")
    for name in (
        *names,
        "classification",
        "transfer",
        "model-free",
        "reacher",
        "reacher-goal-relative-linear",
        "reacher-robot",
        "mountain-car",
        "mountain-car-robust",
        "mountain-car-fresh",
        "shaped-sine-10-seeds",
        "shaped-sine-anchored",
        "mountain-car-gain-region",
        "own-data",
    ):
        assert f"<!-- generated:{name} -->" in readme and f"<!-- /generated:{name} -->" in readme


def _check(*args):
    """``python bench/update_readme.py --check …`` from the repository root (needs no TensorFlow)."""
    return subprocess.run(
        [sys.executable, UPDATE_README, "--check", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_readme_numbers_equal_the_result_files():
    before = _read("README.md")
    done = _check()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "matches the result files" in done.stdout
    assert _read("README.md") == before  # --check writes nothing


def test_readme_check_reports_a_changed_number(tmp_path):
    readme = _read("README.md")
    body = re.search(r"<!-- generated:sine -->\n(.*?)\n<!-- /generated:sine -->", readme, re.S).group(1)
    row = next(line for line in body.splitlines() if line.startswith("| train | 1 step |"))
    number = re.search(r"\d+\.\d{3}", row).group(0)
    changed = f"{float(number) + 0.001:.3f}"
    edited = readme.replace(row, row.replace(number, changed, 1), 1)
    assert edited != readme
    copy = tmp_path / "README.md"
    copy.write_text(edited)
    done = _check("--readme", str(copy))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "generated:sine" in done.stdout and "block(s) sine:" in done.stdout
    assert f"-{row.replace(number, changed, 1)}" in done.stdout and f"+{row}" in done.stdout
    assert "bench-sine" not in done.stdout  # only the block that differs is named
    assert copy.read_text() == edited  # nothing written


def test_the_own_data_example_runs_as_written(tmp_path):
    """The README's "Your own model and data" code: a loss learned for a user-defined model on
    arrays, a fresh model trained with it through compile/fit, and the online wrapper."""
    code = re.search(
        r"<!-- example:own-data -->\n```python\n(.*?)```\n<!-- /example:own-data -->",
        _read("README.md"),
        re.S,
    )
    assert code, "the example block is missing"
    done = subprocess.run(
        [sys.executable, "-c", code.group(1)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    accuracies = [float(v) for v in re.findall(r"test accuracy: ([0-9.]+)", done.stdout)]
    assert len(accuracies) == 2 and all(0.8 < a <= 1.0 for a in accuracies), done.stdout
    for name in ("breast_cancer_loss.keras", "breast_cancer_model.keras"):
        assert (tmp_path / name).is_file()
