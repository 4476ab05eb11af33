"""Third-party tasks: an installed distribution's ``ml3tf.tasks`` entry point, ``module:Class`` paths.

A small package is written into a temporary folder and *installed* there (``pip install --target``;
by hand-written ``.dist-info`` where setuptools cannot build it), never into this environment; the
``ml3tf`` command then runs in subprocesses with that folder on ``PYTHONPATH``. Broken plug-ins are
declared by hand-written ``.dist-info`` folders and checked in this process.
"""

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from ml3tf import tasks
from ml3tf.cli import main

PLUGIN_TASKS = '''
"""A plug-in task for ml3tf, outside its repository (written by tests/test_plugins.py)."""

import dataclasses

import keras
import numpy as np

from ml3tf.config import MetaTrainConfig
from ml3tf.meta_loss import MetaLossNetwork
from ml3tf.models.mlp import make_mlp
from ml3tf.task import SupervisedTask, TaskBatch


@dataclasses.dataclass(frozen=True)
class LineOptions:
    n: int = 16
    """Points per task."""
    slope: float = 2.0
    """The line's slope: y = slope · x − 1."""


class LineTask(SupervisedTask):
    """Line regression y = slope · x − 1, a plug-in task.

    More text that ``describe`` does not show.
    """

    name = "toyplug"
    Options = LineOptions

    def __init__(self, **options):
        self.options = LineOptions(**options)

    def default_config(self):
        return MetaTrainConfig(inner_steps=1, inner_lr=0.05, meta_lr=0.01, meta_steps=5, eval_steps=5)

    def make_learner(self) -> keras.Model:
        return make_mlp(1, (), 1, name="line")

    def make_meta_loss(self) -> keras.Model:
        return MetaLossNetwork(2, (4,), activation="tanh", use_bias=True)

    def _data(self, seed, index):
        rng = np.random.default_rng([seed, index])
        x = rng.uniform(-1, 1, size=(self.options.n, 1)).astype(np.float32)
        return x, (self.options.slope * x - 1).astype(np.float32)

    def sample(self, seed, step, batch_size):
        xs, ys = zip(*[self._data(seed, step * batch_size + b) for b in range(batch_size)])
        data = {"x": np.stack(xs), "y": np.stack(ys)}
        return TaskBatch(data, data)

    def eval_splits(self, seed):
        x, y = self._data(seed + 1000, 0)
        return {"train": (x[None], y[None]), "test": (2 * x[None], 2 * y[None] + 1)}
'''

PYPROJECT = """
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "ml3tf-toyplug"
version = "0.1"
description = "A plug-in task for ml3tf (tests)"
requires-python = ">=3.10"

[project.entry-points."ml3tf.tasks"]
toyplug = "ml3tf_toyplug.tasks:LineTask"
sine = "ml3tf_toyplug.tasks:LineTask"

[tool.setuptools]
packages = ["ml3tf_toyplug"]
"""

ENTRY_POINTS = {"toyplug": "ml3tf_toyplug.tasks:LineTask", "sine": "ml3tf_toyplug.tasks:LineTask"}
PATH = "ml3tf_toyplug.tasks:LineTask"
TINY = ["--meta-steps", "3", "--eval-steps", "2", "--quiet"]


def _write_dist_info(site, name, version, entry_points):
    """What an installer leaves for importlib.metadata: METADATA and entry_points.txt."""
    info = os.path.join(site, f"{name.replace('-', '_')}-{version}.dist-info")
    os.makedirs(info)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    with open(os.path.join(info, "entry_points.txt"), "w") as f:
        f.write("[ml3tf.tasks]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))


def _can_build():
    """Whether pip can build the package here without fetching anything (setuptools, and wheel for a
    setuptools before 70.1, which does not build wheels by itself)."""
    if importlib.util.find_spec("setuptools") is None:
        return False
    major, minor = (int(p) for p in importlib.metadata.version("setuptools").split(".")[:2])
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A folder holding the installed plug-in package ``ml3tf-toyplug``."""
    root = tmp_path_factory.mktemp("plugin")
    pkg, site = root / "pkg", str(root / "site")
    (pkg / "ml3tf_toyplug").mkdir(parents=True)
    (pkg / "pyproject.toml").write_text(PYPROJECT)
    (pkg / "ml3tf_toyplug" / "__init__.py").write_text("")
    (pkg / "ml3tf_toyplug" / "tasks.py").write_text(PLUGIN_TASKS)
    if _can_build():
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
        done = subprocess.run(
            [*pip, "--no-index", "--target", site, str(pkg)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        )
        assert done.returncode == 0, done.stdout + done.stderr
    else:  # no setuptools in this venv (Python >= 3.12 makes none): install by hand
        shutil.copytree(pkg / "ml3tf_toyplug", os.path.join(site, "ml3tf_toyplug"))
        _write_dist_info(site, "ml3tf-toyplug", "0.1", ENTRY_POINTS)
    with open(os.path.join(site, "ml3tf_toyplug-0.1.dist-info", "entry_points.txt")) as f:
        assert "toyplug = ml3tf_toyplug.tasks:LineTask" in f.read()
    return site


def _run(site, *args, cwd, code=None):
    """``python -m ml3tf ARGS`` (or ``python -c CODE``) with ``site`` on PYTHONPATH."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([site, *filter(None, [os.environ.get("PYTHONPATH")])])}
    command = [sys.executable, "-c", code] if code is not None else [sys.executable, "-m", "ml3tf", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def _json(path):
    with open(path) as f:
        return json.load(f)


def test_tasks_lists_the_plugin_without_importing_it(site, tmp_path):
    code = textwrap.dedent(
        """
        import json, sys
        from ml3tf.cli import main
        rc = main(["tasks"])
        seen = {"rc": rc, "tf": "tensorflow" in sys.modules, "plugin": "ml3tf_toyplug.tasks" in sys.modules}
        from ml3tf import tasks
        seen["describe"] = tasks.describe("toyplug")  # loads the class: its docstring's first line
        seen["class"] = tasks.task_class("toyplug").__qualname__
        print(json.dumps(seen))
        """
    )
    done = _run(site, cwd=tmp_path, code=code)
    assert done.returncode == 0, done.stderr
    *listing, last = done.stdout.strip().splitlines()
    seen = json.loads(last)
    assert seen["rc"] == 0 and not seen["tf"] and not seen["plugin"], seen
    assert seen["describe"] == "Line regression y = slope · x − 1, a plug-in task."
    assert seen["class"] == "LineTask"
    rows = {line.split()[0]: line.split(None, 1)[1] for line in listing}
    assert rows["toyplug"] == "plug-in ml3tf_toyplug.tasks:LineTask (ml3tf-toyplug 0.1)"
    # the clash: the built-in sine is listed once, with its own description, and a warning says so
    assert [line.split()[0] for line in listing].count("sine") == 1
    assert rows["sine"] == tasks.describe("sine")
    assert "plug-in task 'sine'" in done.stderr and "built-in task of that name is used" in done.stderr
    assert "sine = ml3tf_toyplug.tasks:LineTask" in done.stderr
    assert sorted(rows) == sorted({*tasks.names(), "toyplug"})


def test_train_by_entry_point_name_then_eval_by_path(site, tmp_path):
    run, ev = tmp_path / "run", tmp_path / "ev"
    flags = [*TINY, "--inner-lr", "0.02", "--slope", "3"]
    done = _run(site, "train", "toyplug", "--out-dir", str(run), *flags, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr  # nothing logged with a stack either
    assert (run / "meta_loss.keras").is_file() and (run / "results.json").is_file()
    record = _json(run / "config.json")
    assert record["task"] == "toyplug" and record["task_options"] == {"n": 16, "slope": 3.0}
    assert record["config"]["inner_lr"] == 0.02 and record["config"]["meta_steps"] == 3
    trained = _json(run / "results.json")
    assert trained["task"] == "toyplug" and trained["steps"] == 2

    args = ["eval", PATH, "--meta-loss", str(run / "meta_loss.keras"), "--out-dir", str(ev), "--seeds", "0"]
    done = _run(site, *args, "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    res = _json(ev / "results.json")
    # the run's config.json was read back (inner_lr 0.02, 2 steps, slope 3): the same numbers
    assert res["config"]["inner_lr"] == 0.02 and res["steps"] == 2
    assert res["final"] == trained["final"] == json.loads(done.stdout.strip().splitlines()[-1])


def test_train_by_path_then_eval_by_entry_point_name(site, tmp_path):
    run = tmp_path / "run"
    done = _run(site, "train", PATH, "--out-dir", str(run), *TINY, "--n", "8", "--no-eval", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (run / "meta_loss.keras").is_file() and not (run / "results.json").exists()
    record = _json(run / "config.json")
    assert record["task"] == "toyplug" and record["task_options"]["n"] == 8  # the class's name

    ev = tmp_path / "ev"
    args = ["eval", "toyplug", "--meta-loss", str(run / "meta_loss.keras"), "--out-dir", str(ev)]
    done = _run(site, *args, "--seeds", "0", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    res = _json(ev / "results.json")
    assert res["task"] == "toyplug" and res["steps"] == 2  # eval_steps of the run, not the default 5
    assert res["meta_loss_files"] == [str(run / "meta_loss.keras")]


# --- broken plug-ins ------------------------------------------------------------------------
BROKEN_MOD = '''
import dataclasses

from ml3tf.task import SupervisedTask

NOT_A_TASK = 3


def make_task(**options):
    return None


@dataclasses.dataclass(frozen=True)
class Opts:
    n: int = 1


class _Stubs(SupervisedTask):
    Options = Opts

    def default_config(self):
        raise NotImplementedError

    def sample(self, seed, step, batch_size):
        raise NotImplementedError

    def make_learner(self):
        raise NotImplementedError

    def make_meta_loss(self):
        raise NotImplementedError


class Abstract(SupervisedTask):
    name = "abstract"
    Options = Opts


class NoName(_Stubs):
    pass


class NoOptions(_Stubs):
    name = "nooptions"
    Options = None


class Shadow(_Stubs):
    """Not the built-in sine."""

    name = "sine"


class Good(_Stubs):
    """A plug-in that loads."""

    name = "good"
'''

BROKEN = {
    "badimport": "ml3tf_broken.missing:Task",
    "boom": "ml3tf_broken.boom:Task",
    "noattr": "ml3tf_broken.mod:Nope",
    "notatask": "ml3tf_broken.mod:NOT_A_TASK",
    "factory": "ml3tf_broken.mod:make_task",
    "abstract": "ml3tf_broken.mod:Abstract",
    "noname": "ml3tf_broken.mod:NoName",
    "nooptions": "ml3tf_broken.mod:NoOptions",
    "sine": "ml3tf_broken.mod:Shadow",
    "good": "ml3tf_broken.mod:Good",
}


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory):
    site = tmp_path_factory.mktemp("broken")
    (site / "ml3tf_broken").mkdir()
    (site / "ml3tf_broken" / "__init__.py").write_text("")
    (site / "ml3tf_broken" / "mod.py").write_text(BROKEN_MOD)
    (site / "ml3tf_broken" / "boom.py").write_text("raise RuntimeError('boom at import\\nsecond line')\n")
    _write_dist_info(str(site), "ml3tf-broken", "0.3", BROKEN)
    return str(site)


@pytest.fixture
def broken(broken_site, monkeypatch):
    """``broken_site`` on sys.path of this process; plug-ins found afresh, and forgotten after."""
    monkeypatch.syspath_prepend(broken_site)
    tasks.refresh()
    yield broken_site
    monkeypatch.undo()
    for name in [m for m in sys.modules if m.split(".")[0] == "ml3tf_broken"]:
        del sys.modules[name]
    tasks.refresh()


@pytest.mark.parametrize(
    "name, fragments",
    [
        ("badimport", ["ml3tf_broken.missing:Task", "failed to import", "ModuleNotFoundError"]),
        ("boom", ["ml3tf_broken.boom:Task", "failed to import: RuntimeError: boom at import"]),
        ("noattr", ["ml3tf_broken.mod:Nope", "failed to import: AttributeError"]),
        (
            "notatask",
            ["ml3tf_broken.mod:NOT_A_TASK", "gives an object of type int, not a subclass of ml3tf.Task"],
        ),
        ("factory", ["gives an object of type function", "name the Task class itself, not a factory"]),
        ("abstract", ["Abstract is abstract", "make_learner"]),
        ("noname", ["NoName must set a class attribute `name`"]),
        ("nooptions", ["NoOptions.Options must be a dataclass"]),
    ],
)
def test_a_broken_plugin_is_one_line_and_exit_code_2(broken, tmp_path, capsys, name, fragments):
    out = tmp_path / "X"
    assert main(["train", name, "--out-dir", str(out)]) == 2
    # The broken package also shadows `sine`: that warning comes once per process, before the error
    # in whichever test asks first (and the console handler of an earlier CLI test prints it).
    lines = [
        line
        for line in capsys.readouterr().err.strip().splitlines()
        if "is ignored: the built-in" not in line
    ]
    err = "\n".join(lines)
    assert len(lines) == 1 and err.startswith("ml3tf: error:"), err
    where = f"plug-in task {name!r} (entry point {name} = {BROKEN[name]} in group ml3tf.tasks"
    where += " of ml3tf-broken 0.3)"
    assert where in err, err
    for fragment in fragments:
        assert fragment in err, err
    assert not out.exists()
    with pytest.raises(ValueError, match="plug-in task"):
        tasks.get(name)


def test_broken_plugins_do_not_break_listing_or_other_tasks(broken, caplog, capsys):
    caplog.set_level("WARNING", logger="ml3tf.tasks")
    assert main(["tasks"]) == 0  # nothing imported: every broken one is listed
    rows = [line.split(None, 1) for line in capsys.readouterr().out.splitlines()]
    listed = [name for name, _ in rows]
    assert listed == sorted(listed) and listed.count("sine") == 1
    assert set(BROKEN) <= set(listed) and "ml3tf_broken.mod" not in sys.modules
    assert dict(rows)["badimport"] == "plug-in ml3tf_broken.missing:Task (ml3tf-broken 0.3)"
    clash = [r.getMessage() for r in caplog.records if "plug-in task 'sine'" in r.getMessage()]
    assert len(clash) == 1 and "sine = ml3tf_broken.mod:Shadow" in clash[0], caplog.text
    assert "built-in task of that name is used" in clash[0]
    # the built-in wins; the warning is logged once per process, not on every lookup
    assert tasks.task_class("sine").__module__ == "ml3tf.tasks.sine"
    assert tasks.describe("sine") != "Not the built-in sine."
    good = tasks.task_class("good")
    assert good.__qualname__ == "Good" and tasks.describe("good") == "A plug-in that loads."
    assert len([r for r in caplog.records if "plug-in task 'sine'" in r.getMessage()]) == 1
    # forgotten with refresh() once the folder is gone from sys.path
    sys.path.remove(broken)
    tasks.refresh()
    assert "good" not in tasks.names() and "sine" in tasks.names()


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("ml3tf_broken.nosuch:Task", "no module named 'ml3tf_broken.nosuch'"),
        ("ml3tf_broken.mod:Nope", "module 'ml3tf_broken.mod' has no attribute 'Nope'"),
        ("ml3tf_broken.boom:Task", "importing 'ml3tf_broken.boom' failed: RuntimeError: boom at import"),
        ("ml3tf_broken.mod:NOT_A_TASK", "gives an object of type int, not a subclass of ml3tf.Task"),
        ("ml3tf_broken.mod:Abstract", "is abstract"),
        ("ml3tf_broken.mod:", "neither a task name nor a 'module:Class' path"),
        ("a:b:c", "neither a task name nor a 'module:Class' path"),
    ],
)
def test_a_bad_module_path_is_one_line_and_exit_code_2(broken, tmp_path, capsys, spec, fragment):
    assert main(["eval", spec, "--out-dir", str(tmp_path / "X"), "--meta-loss", "m.keras"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"ml3tf: error: task {spec!r}"), err
    assert fragment in err, err


def test_a_path_loads_the_class_and_its_own_name_is_recorded(broken):
    cls = tasks.task_class("ml3tf_broken.mod:Good")
    assert cls is tasks.task_class("good") and cls.name == "good"
    assert tasks.describe("ml3tf_broken.mod:Good") == "A plug-in that loads."
    assert tasks.describe("ml3tf_broken.mod:Good", load=False) == "plug-in ml3tf_broken.mod:Good"


def test_the_ml3tf_script_reports_a_broken_plugin_in_one_line(broken_site, tmp_path):
    done = _run(broken_site, "train", "badimport", "--out-dir", str(tmp_path / "X"), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "plug-in task 'sine' (entry point sine = ml3tf_broken.mod:Shadow in group ml3tf.tasks of "
        "ml3tf-broken 0.3) is ignored: the built-in task of that name is used",
        "ml3tf: error: plug-in task 'badimport' (entry point badimport = ml3tf_broken.missing:Task in "
        "group ml3tf.tasks of ml3tf-broken 0.3) failed to import: ModuleNotFoundError: No module named "
        "'ml3tf_broken.missing'",
    ]


def test_an_unreadable_entry_points_file_is_skipped(tmp_path, monkeypatch, caplog):
    """A malformed entry_points.txt of one distribution costs its plug-ins only, not every task."""
    _write_dist_info(str(tmp_path), "ml3tf-malformed", "0.2", {"fine": "ml3tf_malformed:Task"})
    with open(tmp_path / "ml3tf_malformed-0.2.dist-info" / "entry_points.txt", "a") as f:
        f.write("a line without an equals sign\n")
    _write_dist_info(str(tmp_path), "ml3tf-other", "0.1", {"other": "ml3tf_other:Task"})
    monkeypatch.syspath_prepend(str(tmp_path))
    tasks.refresh()
    caplog.set_level("WARNING", logger="ml3tf.tasks")
    try:
        listed = tasks.names()
        assert "other" in listed and "fine" not in listed and "sine" in listed
        assert tasks.task_class("sine").__name__ == "SineTask"
        messages = [r.getMessage() for r in caplog.records]
        assert any("ml3tf-malformed 0.2 cannot be read" in m for m in messages), messages
    finally:
        monkeypatch.undo()
        tasks.refresh()


def test_a_path_may_name_a_module_in_the_working_directory(tmp_path):
    """The ``ml3tf`` script's sys.path lacks the working directory; a ``module:Class`` finds it there."""
    (tmp_path / "cwd_task_module.py").write_text(
        "raise RuntimeError('imported from the working directory')\n"
    )
    code = textwrap.dedent(
        """
        import os, sys
        sys.path[:] = [p for p in sys.path if p not in ("", ".") and os.path.abspath(p) != os.getcwd()]
        from ml3tf.cli import main
        sys.exit(main(["train", "cwd_task_module:Task", "--out-dir", "X"]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "ml3tf: error: task 'cwd_task_module:Task': importing 'cwd_task_module' failed: "
        "RuntimeError: imported from the working directory"
    )
