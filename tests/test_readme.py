"""README and CI agree: .ci/run runs the README's two commands verbatim."""

import os
import re

ROOT = os.path.join(os.path.dirname(__file__), "..")


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
        "mountain-car",
    ):
        assert f"<!-- generated:{name} -->" in readme and f"<!-- /generated:{name} -->" in readme
