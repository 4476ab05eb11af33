"""`ml3tf learn-loss` on tabular data: one-line refusals that write nothing, and tiny real runs."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ml3tf import tabular
from ml3tf.cli import main

FEATURES = ["a", "b", "c"]
TINY = ["--learner", "mlp:8-8:relu", "--meta-steps", "4", "--epochs", "2", "--quiet"]


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def _data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    # a target far from standard scale: an MSE in standardised units would be ~1, in its own ~1e4
    y = 100.0 * (3 * x[:, 0] - 2 * x[:, 1] + 0.5 * x[:, 2] ** 2) + 1000.0
    labels = np.array(["cat", "dog", "eel"])[(x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5).astype(int)]
    return x, y, labels


def _regression_csv(path, n=200):
    x, y, _ = _data(n)
    return _write_csv(path, [*FEATURES, "price"], [[*x[r], y[r]] for r in range(n)])


def _classification_csv(path, n=200):
    x, _, labels = _data(n)
    return _write_csv(path, [*FEATURES, "species"], [[*x[r], labels[r]] for r in range(n)])


def _json(path):
    with open(path) as f:
        return json.load(f)


# --- bad input: exit code 2, one line naming the problem, nothing written ------------------------
def _csv_with(tmp_path, cells, target="y"):
    """A valid 12-row regression CSV with the given ``{(row, column): text}`` cells replaced."""
    rows = [[str(r * 0.5), str(1.0 - r), str(r % 3), str(2.0 * r)] for r in range(12)]
    for (r, c), text in cells.items():
        rows[r][c] = text
    return _write_csv(tmp_path / "bad.csv", ["a", "b", "c", target], rows)


def _check_refused(tmp_path, capsys, args, *fragments):
    out = tmp_path / "out"
    before = sorted(os.listdir(tmp_path))
    assert main([*args, "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ml3tf: error:"), err
    for fragment in fragments:
        assert fragment in err, err
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == before  # no temporary folder left either
    return err


REG = ["--target", "y", "--kind", "regression"]
CLS = ["--target", "y", "--kind", "classification"]


@pytest.mark.parametrize(
    "cells, kind, fragments",
    [
        ({(2, 1): ""}, REG, ["empty cell in column 'b'", "line 4 (row 3)"]),
        ({(5, 0): "NaN"}, REG, ["missing value 'NaN' in column 'a'", "line 7 (row 6)"]),
        ({(1, 2): " NA "}, REG, ["missing value 'NA' in column 'c'", "line 3 (row 2)"]),
        ({(0, 3): ""}, REG, ["empty cell in column 'y'", "line 2 (row 1)"]),
        ({(3, 1): "inf"}, REG, ["infinite value 'inf' in column 'b'", "line 5 (row 4)"]),
        (
            {(4, 2): "red", (6, 2): "blue"},
            REG,
            ["feature column 'c' is not numeric: 'red' at line 6 (row 5)"],
        ),
        (
            {(3, 3): "cat"},
            REG,
            ["target column 'y' is not numeric: 'cat' at line 5", "--kind classification?"],
        ),
        # classification: 12 distinct values in 12 rows, non-integer ones, or one class
        ({}, CLS, ["12 distinct labels in 12 rows: not class-like"]),
        ({(1, 3): "0.5"}, CLS, ["non-integer values (e.g. 0.5)", "--kind regression?"]),
        ({(r, 3): "7" for r in range(12)}, CLS, ["only one class (7)"]),
    ],
)
def test_bad_cells_name_the_column_and_row(tmp_path, capsys, cells, kind, fragments):
    path = _csv_with(tmp_path, cells)
    _check_refused(tmp_path, capsys, ["learn-loss", path, *kind], *fragments)


def test_ragged_row_and_duplicate_column(tmp_path, capsys):
    path = _write_csv(tmp_path / "r.csv", ["a", "b", "y"], [["1", "2", "3"], ["1", "2"], ["4", "5", "6"]])
    _check_refused(
        tmp_path, capsys, ["learn-loss", path, *REG], "line 3 (row 2) has 2 fields, the header has 3"
    )
    os.unlink(path)
    path = _write_csv(tmp_path / "d.csv", ["a", "a", "y"], [["1", "2", "3"]])
    _check_refused(tmp_path, capsys, ["learn-loss", path, *REG], "names column 'a' twice")


def test_missing_file_and_wrong_extension(tmp_path, capsys):
    _check_refused(
        tmp_path, capsys, ["learn-loss", str(tmp_path / "none.csv"), *REG], "none.csv", "does not exist"
    )
    (tmp_path / "d.txt").write_text("a,y\n1,2\n")
    _check_refused(
        tmp_path, capsys, ["learn-loss", str(tmp_path / "d.txt"), *REG], "must end in .csv or .npz"
    )


def test_missing_target_column_names_the_columns(tmp_path, capsys):
    path = _csv_with(tmp_path, {})
    args = ["learn-loss", path, "--target", "price", "--kind", "regression"]
    _check_refused(tmp_path, capsys, args, "no column 'price'", "(columns: 'a', 'b', 'c', 'y')")
    _check_refused(tmp_path, capsys, ["learn-loss", path, "--kind", "regression"], "give --target", "'y'")


def test_too_few_rows_says_how_many_are_needed(tmp_path, capsys):
    path = _write_csv(tmp_path / "few.csv", ["a", "y"], [[str(r), str(r)] for r in range(7)])
    # 7 rows at 0.2/0.2: 5 training, 1 validation, 1 test; 8 rows give 4/2/2
    _check_refused(
        tmp_path,
        capsys,
        ["learn-loss", path, *REG, "--target", "y"],
        "7 rows are too few",
        ">= 8 rows in all",
    )
    assert tabular.rows_needed(0.2, 0.2) == 8 and tabular.split_sizes(8, 0.2, 0.2) == (4, 2, 2)
    err = _check_refused(
        tmp_path, capsys, ["learn-loss", _csv_with(tmp_path, {}), *REG, "--test-fraction", "0.05"]
    )
    assert "12 rows are too few" in err and f">= {tabular.rows_needed(0.05, 0.2)} rows in all" in err


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--learner", "mlp:abc"], "learner spec 'mlp:abc' is invalid"),
        (["--learner", "resnet"], "learner must be 'mlp:"),
        (["--learner", "lenet"], "tabular rows need an MLP learner"),
        (["--test-fraction", "0"], "test_fraction must be in (0, 1)"),
        (["--validation-fraction", "0.8"], "leaves no training rows"),
        (["--epochs", "0"], "epochs must be an integer >= 1"),
        (["--lr", "nan"], "lr must be a positive finite number"),
        (["--seeds", "0", "0"], "seeds must not repeat"),
        (["--online", "--meta-steps", "9"], "--meta-steps: --online learns the loss during fit"),
        (["--optimizer", "rmsprop"], "invalid choice: 'rmsprop'"),
    ],
)
def test_bad_flags(tmp_path, capsys, flags, fragment):
    _check_refused(tmp_path, capsys, ["learn-loss", _csv_with(tmp_path, {}), *REG, *flags], fragment)


def test_kind_is_required(tmp_path, capsys):
    _check_refused(tmp_path, capsys, ["learn-loss", _csv_with(tmp_path, {}), "--target", "y"], "--kind")


def test_unusable_out_dirs(tmp_path, capsys):
    path = _csv_with(tmp_path, {})
    blocker = tmp_path / "file"
    blocker.write_text("")
    for out, fragment in ((blocker, "is not a directory"), (blocker / "sub", "which is a file")):
        assert main(["learn-loss", path, *REG, "--out-dir", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and fragment in err, err
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    assert main(["learn-loss", path, *REG, "--out-dir", str(full)]) == 2
    assert "already holds files" in capsys.readouterr().err
    assert os.listdir(full) == ["keep.txt"]
    assert sorted(os.listdir(tmp_path)) == ["bad.csv", "file", "full"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a read-only folder")
def test_read_only_parent(tmp_path, capsys):
    path = _csv_with(tmp_path, {})
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert main(["learn-loss", path, *REG, "--out-dir", str(locked / "out")]) == 2
        assert "is not writable" in capsys.readouterr().err
        assert os.listdir(locked) == []
    finally:
        locked.chmod(0o755)


def test_bad_npz_files(tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=(20, 3))
    npz = str(tmp_path / "d.npz")
    cases = [
        ({"a": x, "y": x[:, 0]}, [], ["no array 'x'", "(arrays: 'a', 'y')"]),
        ({"x": x, "y": x[:, 0]}, ["--target", "price"], ["no array 'price'"]),
        ({"x": x, "y": x[:, 0]}, ["--target", "x"], ["array 'x' holds the features"]),
        (
            {"x": np.where(np.arange(60).reshape(20, 3) == 10, np.nan, x), "y": x[:, 0]},
            [],
            ["x[3, 1] is nan"],
        ),
        (
            {"x": np.array([["1", "2"], ["3", "pear"]] * 10), "y": np.arange(20.0)},
            [],
            ["feature column x[:, 1] is not numeric: 'pear' at row 1"],
        ),
        (
            {"x": x, "y": np.array(["a", "b"] * 10)},
            [],
            ["target 'y' is not numeric", "--kind classification?"],
        ),
        ({"x": x, "y": x[:5, 0]}, [], ["'y' has shape (5,), x has 20 rows"]),
    ]
    for arrays, flags, fragments in cases:
        np.savez(npz, **arrays)
        _check_refused(tmp_path, capsys, ["learn-loss", npz, "--kind", "regression", *flags], *fragments)
        os.unlink(npz)
    np.savez(npz, x=x, y=np.array([{"a": 1}] * 20, dtype=object))  # needs pickle to load
    _check_refused(tmp_path, capsys, ["learn-loss", npz, "--kind", "classification"], "without pickle")
    os.unlink(npz)
    with open(npz, "wb") as f:
        f.write(b"not a zip archive")
    _check_refused(
        tmp_path, capsys, ["learn-loss", npz, "--kind", "regression"], "not a readable .npz archive"
    )


# --- loading and splitting (no training) --------------------------------------------------------
def test_numeric_class_labels_map_to_sorted_ids(tmp_path):
    rows = [[str(r), lab] for r, lab in enumerate(["3", "1.0", "2", "3", "1", "2.0"])]
    table = tabular.load_table(_write_csv(tmp_path / "l.csv", ["a", "y"], rows), "y", "classification")
    assert table.classes == [1, 2, 3] and table.y.tolist() == [2, 0, 1, 2, 0, 1]
    assert table.features == ["a"] and table.x[:, 0].tolist() == [0, 1, 2, 3, 4, 5]


def test_split_is_seeded_disjoint_and_stratified():
    labels = np.repeat([0, 1, 2], [100, 60, 40])
    train, val, test = tabular.split_rows(200, 0.2, 0.1, seed=3, labels=labels)
    assert (len(train), len(val), len(test)) == (140, 20, 40)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(200))
    assert np.bincount(labels[test]).tolist() == [20, 12, 8]  # each class keeps its share
    assert np.bincount(labels[val]).tolist() == [10, 6, 4]
    again = tabular.split_rows(200, 0.2, 0.1, seed=3, labels=labels)
    other = tabular.split_rows(200, 0.2, 0.1, seed=4, labels=labels)
    assert all(np.array_equal(a, b) for a, b in zip(again, (train, val, test), strict=True))
    assert not np.array_equal(other[2], test)


def test_standardizer_keeps_constant_columns():
    s = tabular.Standardizer.fit(np.array([[1.0, 5.0], [3.0, 5.0]]))
    assert s.mean.tolist() == [2.0, 5.0] and s.std.tolist() == [1.0, 1.0]
    assert s.apply(np.array([[3.0, 5.0]])).tolist() == [[1.0, 0.0]]
    assert tabular.Standardizer.fit(np.ones((2, 2)), enabled=False).mean.tolist() == [0.0, 0.0]


def test_python_api_refuses_unknown_options(tmp_path):
    table = tabular.load_table(_csv_with(tmp_path, {}), "y", "regression")
    with pytest.raises(ValueError, match="unknown option"):
        tabular.learn_loss_on_table(table, tmp_path / "out", epochs=1, epoch=2)
    assert not (tmp_path / "out").exists()


def test_help_does_not_import_tensorflow():
    code = (
        "import sys\nfrom ml3tf.cli import main\ntry:\n    main(['learn-loss', '--help'])\n"
        "except SystemExit:\n    pass\nprint('tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "--target" in out.stdout and "--online" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "False"


# --- tiny real runs -----------------------------------------------------------------------------
def _check_results(res, kind, seeds, epochs=2):
    assert res["metric"] == ("mse" if kind == "regression" else "accuracy")
    assert res["higher_is_better"] is (kind == "classification")
    assert res["baseline"] == ("mse" if kind == "regression" else "cross_entropy")
    assert res["steps"] == epochs and res["seeds"] == seeds and list(res["curves"]) == ["test"]
    for arm in ("learned", "baseline"):
        curve = res["curves"]["test"][arm]
        assert len(curve["mean"]) == epochs + 1 and np.all(np.isfinite(curve["mean"] + curve["std"]))
        assert res["final"]["test"][arm] == curve["mean"][-1]
        assert res["final"]["test"][f"{arm}_std"] == curve["std"][-1]
    # both arms start from the same initial weights: the same test metric before training
    assert res["curves"]["test"]["learned"]["mean"][0] == res["curves"]["test"]["baseline"]["mean"][0]


def test_regression_csv(tmp_path, capsys):
    import ml3tf

    path = _regression_csv(tmp_path / "houses.csv")
    out = tmp_path / "run"
    argv = ["learn-loss", path, "--target", "price", "--kind", "regression", "--out-dir", str(out), *TINY]
    assert main(argv) == 0
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert sorted(os.listdir(out)) == ["meta_loss.keras", "results.json", "results.png"]
    assert sorted(os.listdir(tmp_path)) == ["houses.csv", "run"]
    res = _json(out / "results.json")
    assert res["final"] == final
    _check_results(res, "regression", [0])
    assert res["task"] == "houses.csv" and res["command"] == ["ml3tf", *argv]
    assert res["config"]["method"] == "ml3" and res["config"]["meta_steps"] == 4
    assert res["data"]["splits"] == {"train": 120, "validation": 40, "test": 40}
    assert res["data"]["features"] == FEATURES and res["data"]["target"] == "price"
    assert res["classes"] is None and res["meta_loss_files"] == [str(out / "meta_loss.keras")]
    # standardised with the training rows' statistics, recorded
    x, y, _ = _data()
    train, _, _ = tabular.split_rows(200, 0.2, 0.2, 0)
    std = res["standardization"]
    assert np.allclose(std["target"]["mean"], [y[train].mean()]) and np.allclose(
        std["target"]["std"], [y[train].std()]
    )
    assert np.allclose(std["features"]["mean"], x[train].mean(0))
    # the test MSE is in the target's own units (y's variance is ~1e5; standardised it would be ~1)
    assert res["curves"]["test"]["baseline"]["mean"][0] > 1e3
    history = res["meta_training"]["0"]
    assert len(history["val_loss"]) == 1 and np.isfinite(history["val_loss"][0])
    loss = ml3tf.LearnedLoss.from_file(str(out / "meta_loss.keras"), kind="regression")
    value = float(loss(np.zeros((4, 1), "float32"), np.ones((4, 1), "float32")))
    assert np.isfinite(value)


def test_classification_csv_with_string_labels(tmp_path, capsys):
    import ml3tf

    path = _classification_csv(tmp_path / "pets.csv")
    out = tmp_path / "run"
    argv = ["learn-loss", path, "--target", "species", "--kind", "classification", "--out-dir", str(out)]
    assert main([*argv, *TINY, "--no-standardize"]) == 0
    res = _json(out / "results.json")
    _check_results(res, "classification", [0])
    assert res["classes"] == ["cat", "dog", "eel"]
    assert res["standardization"] == {"features": None, "target": None}
    for arm in ("learned", "baseline"):
        assert all(0.0 <= v <= 1.0 for v in res["curves"]["test"][arm]["mean"])
    loss = ml3tf.LearnedLoss.from_file(str(out / "meta_loss.keras"), kind="classification", from_logits=True)
    assert np.isfinite(float(loss(np.array([0, 2]), np.zeros((2, 3), "float32"))))


def test_online_npz_two_seeds(tmp_path, capsys):
    x, y, _ = _data(150, seed=1)
    npz = str(tmp_path / "d.npz")
    np.savez(npz, x=x, y=y)
    out = tmp_path / "run"
    argv = ["learn-loss", npz, "--kind", "regression", "--online", "--seeds", "0", "1", "--out-dir", str(out)]
    assert main([*argv, "--learner", "mlp:8", "--epochs", "2", "--quiet"]) == 0
    res = _json(out / "results.json")
    _check_results(res, "regression", [0, 1])
    assert res["config"]["method"] == "ml3-online" and res["meta_training"] is None
    assert res["data"]["format"] == "npz" and res["data"]["target"] == "y"
    assert res["data"]["features"] == ["x[:, 0]", "x[:, 1]", "x[:, 2]"]
    assert res["meta_loss_files"] == [str(out / f"seed_{s}" / "meta_loss.keras") for s in (0, 1)]
    assert all(os.path.isfile(f) for f in res["meta_loss_files"]) and os.path.isfile(out / "results.png")
    assert res["curves"]["test"]["baseline"]["std"][0] > 0  # two seeds, two initial weights


def test_failure_mid_run_leaves_nothing(tmp_path, capsys, monkeypatch):
    import ml3tf.results

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ml3tf.results, "write_results", disk_full)
    path = _regression_csv(tmp_path / "d.csv", n=60)
    out = tmp_path / "deep" / "run"  # its parent is created for the run, and removed again
    assert main(["learn-loss", path, *REG, "--target", "price", "--online", "--epochs", "1",
                 "--learner", "mlp:4", "--out-dir", str(out), "--quiet"]) == 2  # fmt: skip
    assert "No space left on device" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["d.csv"]


def test_diverged_arm_writes_nothing(tmp_path, capsys):
    path = _regression_csv(tmp_path / "d.csv", n=60)
    out = tmp_path / "run"
    args = ["learn-loss", path, *REG, "--target", "price", "--online", "--epochs", "2", "--learner", "mlp:4"]
    assert main([*args, "--optimizer", "sgd", "--lr", "1e12", "--out-dir", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ml3tf: error: the ") and "diverged" in err and "nothing written" in err, err
    assert sorted(os.listdir(tmp_path)) == ["d.csv"]
