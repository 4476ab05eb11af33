"""Every notebook runs top to bottom in quick mode (ML3TF_QUICK=1)."""

import glob
import os

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "notebooks", "*.ipynb")))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("ML3TF_QUICK", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"
    ]
    assert not errors
    assert any(c.get("outputs") for c in nb.cells if c.cell_type == "code")


def test_there_are_notebooks():
    assert NOTEBOOKS


def _first_code_cell(name):
    nb = nbformat.read(os.path.join(os.path.dirname(__file__), "..", "notebooks", name), as_version=4)
    return next(c.source for c in nb.cells if c.cell_type == "code")


def test_colab_tpu_notebook_never_installs_a_tensorflow_over_the_runtimes(capsys):
    """The install cell: no TF extra beside a supported TF, the TPU build only when there is none."""
    namespace = {}
    exec(_first_code_cell("colab_tpu.ipynb"), namespace)  # outside Colab: reports, installs nothing
    assert "TensorFlow builds found: " in capsys.readouterr().out
    command = namespace["install_command"]
    assert command({"tensorflow": "2.20.0"}, True, None)[-2:] == ["-e", "."]
    assert command({"tensorflow-tpu": "2.20.0"}, True, None)[-2:] == ["-e", "."]
    assert command({"tensorflow-cpu": "2.21.0"}, False, "https://host/ml3tf.git")[-1] == (
        "ml3tf @ git+https://host/ml3tf.git"
    )
    assert command({}, True, None)[-2:] == ["-e", ".[tpu]"]
    with pytest.raises(ValueError, match=r"tensorflow 2\.19\.0; ml3tf needs TensorFlow 2\.20 or 2\.21"):
        command({"tensorflow": "2.19.0"}, True, None)  # an unsupported TF is refused, never replaced
    assert not any(
        "cpu" in arg for arg in command({}, True, None) + command({"tensorflow": "2.21.0"}, True, None)
    )
    with pytest.raises(ValueError, match="ML3TF_GIT_URL"):
        command({}, False, None)
