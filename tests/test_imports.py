"""`ml3tf` stands alone: it works with gymnasium, TF-Agents and matplotlib absent."""

import os
import subprocess
import sys

import pytest

CODE = """
import sys

OPTIONAL = {"gymnasium", "gym", "tf_agents", "matplotlib"}


class Absent:
    # Make the optional packages unimportable, as on a machine without them.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in OPTIONAL:
            raise ImportError(name + " is absent in this test")


sys.meta_path.insert(0, Absent())
import ml3tf
from ml3tf import cli, engine, inner, meta_trainer, run, task, results  # noqa: F401
from ml3tf import tasks
t = tasks.get("sine", n_points=8, n_test_tasks=1)
cfg = t.default_config().replace(meta_steps=2, eval_steps=2)
trainer = ml3tf.MetaTrainer(t, cfg)
trainer.step(t.sample(0, 0, 1), 0)
t.evaluate([trainer.meta_loss], cfg, [0])
print(sorted(m for m in sys.modules if m.split(".")[0] in OPTIONAL))
"""


def test_core_works_without_optional_packages():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_cli_help_does_not_import_tensorflow():
    code = "import sys; from ml3tf.cli import main; main(['--help']); print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_ci_installs_the_rl_stack():
    """In CI the README's test command must have installed TF-Agents: the RL tests may not skip."""
    if not os.environ.get("CI"):
        pytest.skip("outside CI the RL tests skip themselves when TF-Agents is not installed")
    out = subprocess.run(
        [sys.executable, "-c", "import ml3tf.tasks.rl_env as r; print(r.import_tf_agents().__name__)"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "tf_agents", out.stderr


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("where", ["elsewhere", "repository root"])
def test_only_namespaced_import_names(tmp_path, where):
    """models/ and tasks/ are installed as ml3tf.models / ml3tf.tasks; plain names never import.

    From the repository root the folders are on sys.path as ``tasks``/``models``: their guard
    refuses that too, so no module can exist twice under two names.
    """
    cwd = ROOT if where == "repository root" else str(tmp_path)
    for name in ("tasks", "models"):
        out = subprocess.run(
            [sys.executable, "-c", f"import {name}"], capture_output=True, text=True, cwd=cwd
        )
        assert out.returncode != 0 and "ModuleNotFoundError: No module named" in out.stderr, out.stderr
    code = (
        "from ml3tf.tasks import get; import ml3tf.models as m; print(get.__module__, m.make_mlp.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, check=True)
    assert out.stdout.split() == ["ml3tf.tasks", "ml3tf.models.mlp"]
