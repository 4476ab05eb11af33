"""Tabular data (CSV or NPZ) for ``ml3tf learn-loss``: load, check, split, standardise, compare.

``load_table`` reads a CSV file with a header row (``target`` names the target column; every
other column is a numeric feature) or an NPZ archive (features in array ``x``, the target in
array ``target``, default ``y``; loaded with ``allow_pickle=False``). It refuses, in one line
naming the column and row, a missing or non-numeric cell and a target that does not fit the
``kind``. Classification labels (numbers or strings) become classes ``0 … C−1`` in sorted order;
``Table.classes[c]`` is the original label of class ``c``.

``learn_loss_on_table`` splits off a seeded test split (stratified for classification) and a
validation split, standardises features (and regression targets) with the training split's
statistics, then compares, per seed, a learner trained with the learned loss against the same
learner (same initial weights, same batches) trained with the hand-written loss (MSE / cross-
entropy), and writes ``meta_loss.keras``, ``results.json`` and ``results.png`` to a new folder
in one rename (never half-written). Everything is checked before anything is written.

Example:
    >>> table = load_table("houses.csv", target="price", kind="regression")
    >>> results = learn_loss_on_table(table, "runs/houses", learner="mlp:64-64:relu", epochs=20)
    >>> results["final"]["test"]["learned"], results["final"]["test"]["baseline"]
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import math
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ml3tf.results import file_sha256

log = logging.getLogger("ml3tf")

KINDS = ("regression", "classification")
FORMATS = (".csv", ".npz")
#: Cells read as a missing value (case-insensitive, after stripping blanks).
MISSING = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})
#: Fewest rows of each split (training, validation, test).
MIN_SPLIT_ROWS = 2
ONLINE_INITS = ("baseline", "random", "offline")
OPTIMIZERS = ("adam", "sgd")
INNER_OPTIMIZERS = ("sgd", "momentum", "adam")
META_LOSS_INITS = ("baseline", "random")
LOSS_FILE = "meta_loss.keras"


@dataclass
class Table:
    """Rows of numeric features and a target, as ``load_table`` read them.

    ``x`` is float64 ``(N, features)``; ``y`` is float64 ``(N, outputs)`` (regression) or int64
    class ids ``(N,)`` (classification, ``classes[c]`` the original label of class ``c``).
    """

    x: np.ndarray
    y: np.ndarray
    kind: str
    features: list[str]
    target: str
    path: str
    format: str
    sha256: str
    classes: list[Any] | None = None

    @property
    def rows(self) -> int:
        return len(self.x)


# --- loading -------------------------------------------------------------------------------------
def _names(names: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", … ({len(names)} in all)" if len(names) > limit else "")


def load_table(path: str | os.PathLike, target: str | None = None, kind: str = "regression") -> Table:
    """Read a ``.csv`` (header row; ``target`` names the target column) or ``.npz`` (arrays ``x``
    and ``target``, default ``"y"``) file and check it for ``kind``.

    Raises:
        ValueError: one line naming the file and the problem (missing file, column, cell …).

    Example:
        >>> t = load_table("iris.csv", target="species", kind="classification")
        >>> t.x.shape, t.classes
        ((150, 4), ['setosa', 'versicolor', 'virginica'])
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise ValueError(f"data file {path!r} must end in .csv or .npz")
    if not os.path.exists(path):
        raise ValueError(f"data file {path!r} does not exist")
    if not os.path.isfile(path):
        raise ValueError(f"data file {path!r} is not a file")
    reader = _read_csv if ext == ".csv" else _read_npz
    x, y, features, target_name, classes = reader(path, target, kind)
    digest = file_sha256(path)
    return Table(x, y, kind, features, target_name, os.path.abspath(path), ext[1:], digest, classes)


def _read_csv(path: str, target: str | None, kind: str) -> tuple:
    name = os.path.basename(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header: list[str] | None = None
            rows: list[list[str]] = []
            lines: list[int] = []
            for row in reader:
                if not row:  # a blank line
                    continue
                if header is None:
                    header = [c.strip() for c in row]
                    continue
                rows.append(row)
                lines.append(reader.line_num)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{name} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise ValueError(f"{name} is not a readable CSV file: {exc}") from None
    if header is None:
        raise ValueError(f"{name} is empty: it needs a header row naming the columns")
    for i, col in enumerate(header):
        if not col:
            raise ValueError(f"{name}: column {i + 1} of the header row has no name")
    seen = set()
    for col in header:
        if col in seen:
            raise ValueError(f"{name}: the header names column {col!r} twice")
        seen.add(col)
    if target is None:
        raise ValueError(f"{name}: give --target COLUMN (columns: {_names(header)})")
    if target not in header:
        raise ValueError(f"{name} has no column {target!r} (columns: {_names(header)})")
    t = header.index(target)
    features = [c for i, c in enumerate(header) if i != t]
    if not features:
        raise ValueError(f"{name} has no feature columns besides the target {target!r}")
    if not rows:
        raise ValueError(f"{name} has a header row but no data rows")
    x = np.empty((len(rows), len(features)), np.float64)
    raw_y: list[str] = []
    for r, (row, line) in enumerate(zip(rows, lines, strict=True)):
        where = f"{name}, line {line} (row {r + 1})"
        if len(row) != len(header):
            raise ValueError(f"{where} has {len(row)} fields, the header has {len(header)}")
        j = 0
        for i, cell in enumerate(row):
            cell = cell.strip()
            if cell.lower() in MISSING:
                what = "empty cell" if not cell else f"missing value {cell!r}"
                raise ValueError(f"{where}: {what} in column {header[i]!r}")
            if i == t:
                raw_y.append(cell)
                continue
            try:
                value = float(cell)
            except ValueError:
                raise ValueError(
                    f"{name}: feature column {header[i]!r} is not numeric: {cell!r} at line {line} "
                    f"(row {r + 1})"
                ) from None
            if not math.isfinite(value):
                raise ValueError(f"{where}: infinite value {cell!r} in column {header[i]!r}")
            x[r, j] = value
            j += 1
    y, classes = _target(raw_y, kind, f"{name}: target column {target!r}", lambda r: f"line {lines[r]}")
    return x, y, features, target, classes


def _target(raw: Sequence[str], kind: str, what: str, where: Any) -> tuple[np.ndarray, list | None]:
    """Target strings → float64 ``(N, 1)`` (regression) or int64 class ids and their labels."""
    values: list[float] = []
    for r, cell in enumerate(raw):
        try:
            value = float(cell)
        except ValueError:
            if kind == "regression":
                raise ValueError(
                    f"{what} is not numeric: {cell!r} at {where(r)} (a regression target must be "
                    "numbers; --kind classification?)"
                ) from None
            return _classes(np.asarray(raw, dtype=str), what)
        if not math.isfinite(value):
            raise ValueError(f"{what} holds the infinite value {cell!r} at {where(r)}")
        values.append(value)
    y = np.asarray(values, np.float64)
    if kind == "regression":
        return y.reshape(-1, 1), None
    return _classes(y, what)


def _classes(labels: np.ndarray, what: str) -> tuple[np.ndarray, list]:
    """Labels (numbers or strings) → class ids 0 … C−1 (sorted unique labels) and the labels."""
    if np.issubdtype(labels.dtype, np.floating):
        fractional = labels[labels != np.round(labels)]
        if fractional.size:
            raise ValueError(
                f"{what} holds non-integer values (e.g. {float(fractional[0]):g}): not class labels "
                "(--kind regression?)"
            )
    unique, ids = np.unique(labels, return_inverse=True)
    if len(unique) < 2:
        only = unique[0].item() if len(unique) else None
        raise ValueError(f"{what} holds only one class ({_label(only)!r}): classification needs >= 2")
    if len(unique) > len(labels) / 2:
        raise ValueError(
            f"{what} holds {len(unique)} distinct labels in {len(labels)} rows: not class-like "
            "(--kind regression?)"
        )
    return ids.reshape(-1).astype(np.int64), [_label(u.item()) for u in unique]


def _label(value: Any) -> Any:
    """A label as JSON writes it: integer-valued numbers as ints."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _read_npz(path: str, target: str | None, kind: str) -> tuple:
    name = os.path.basename(path)
    key = target or "y"
    if key == "x":
        raise ValueError(f"{name}: array 'x' holds the features; --target names the target array (default y)")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{name} is not a readable .npz archive ({type(exc).__name__}: {exc})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{name} holds a single array, not an .npz archive of arrays 'x' and {key!r}")
    with archive:
        keys = list(archive.files)
        arrays = {}
        for k in ("x", key):
            if k not in keys:
                raise ValueError(f"{name} has no array {k!r} (arrays: {_names(keys)})")
            try:
                arrays[k] = archive[k]
            except (ValueError, OSError, zipfile.BadZipFile) as exc:
                raise ValueError(f"{name}: array {k!r} cannot be read without pickle ({exc})") from None
    x, y = arrays["x"], arrays[key]
    if x.ndim == 1:
        x = x.reshape(-1, 1)
    if x.ndim != 2:
        raise ValueError(f"{name}: x must be 2-D (rows, features), got shape {x.shape}")
    if len(x) == 0 or x.shape[1] == 0:
        raise ValueError(f"{name}: x has shape {x.shape}: it needs rows and features")
    if y.ndim == 0 or len(y) != len(x):
        raise ValueError(f"{name}: {key!r} has shape {y.shape}, x has {len(x)} rows")
    x = _numeric_x(x, name)
    what = f"{name}: target {key!r}"
    if kind == "classification":
        if not (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)):
            raise ValueError(f"{what} must be labels of shape (N,) or (N, 1), got {y.shape}")
        y = y.reshape(-1)
        if y.dtype.kind in "biuf":
            y = y.astype(np.float64)
            bad = np.flatnonzero(~np.isfinite(y))
            if bad.size:
                raise ValueError(f"{what} holds {y[bad[0]]} at row {bad[0]}")
            ids, classes = _classes(y, what)
        elif y.dtype.kind == "U":
            empty = np.flatnonzero(np.char.strip(y) == "")
            if empty.size:
                raise ValueError(f"{what} holds an empty label at row {empty[0]}")
            ids, classes = _classes(y, what)
        else:
            raise ValueError(f"{what} must be numbers or strings, got dtype {y.dtype}")
        return x, ids, _npz_features(x), key, classes
    if y.dtype.kind not in "biuf":
        raise ValueError(
            f"{what} is not numeric (dtype {y.dtype}): a regression target must be numbers "
            "(--kind classification?)"
        )
    y = y.astype(np.float64).reshape(len(y), -1)
    bad = np.argwhere(~np.isfinite(y))
    if bad.size:
        r, c = bad[0]
        raise ValueError(f"{what} holds {y[r, c]} at row {r}" + (f", column {c}" if y.shape[1] > 1 else ""))
    return x, y, _npz_features(x), key, None


def _npz_features(x: np.ndarray) -> list[str]:
    return [f"x[:, {j}]" for j in range(x.shape[1])]


def _numeric_x(x: np.ndarray, name: str) -> np.ndarray:
    """``x`` as float64; a string array is parsed cell by cell (the first bad cell named)."""
    if x.dtype.kind in "biuf":
        out = x.astype(np.float64)
    elif x.dtype.kind == "U":
        out = np.empty(x.shape, np.float64)
        for (r, c), value in np.ndenumerate(x):
            cell = str(value)
            try:
                out[r, c] = float(cell)
            except ValueError:
                if cell.strip().lower() in MISSING:
                    raise ValueError(f"{name}: missing value {cell!r} at x[{r}, {c}]") from None
                raise ValueError(
                    f"{name}: feature column x[:, {c}] is not numeric: {cell!r} at row {r}"
                ) from None
    else:
        raise ValueError(f"{name}: x must be numeric, got dtype {x.dtype}")
    bad = np.argwhere(~np.isfinite(out))
    if bad.size:
        r, c = bad[0]
        raise ValueError(f"{name}: x[{r}, {c}] is {out[r, c]} (feature column x[:, {c}], row {r})")
    return out


# --- splits and standardisation ------------------------------------------------------------------
def _pick(count: int, fraction: float) -> np.ndarray:
    """A mask choosing ``round(count · fraction)`` of ``count`` positions, evenly spread."""
    k = np.arange(count)
    return np.floor((k + 1) * fraction + 0.5) > np.floor(k * fraction + 0.5)


def split_sizes(rows: int, test_fraction: float, validation_fraction: float) -> tuple[int, int, int]:
    """``(training, validation, test)`` row counts of ``split_rows`` for ``rows`` rows."""
    n_test = int(np.count_nonzero(_pick(rows, test_fraction)))
    n_val = round(validation_fraction * rows)
    return rows - n_test - n_val, n_val, n_test


def rows_needed(test_fraction: float, validation_fraction: float) -> int:
    """The fewest rows for which every split has ``MIN_SPLIT_ROWS`` rows."""
    rows = 3 * MIN_SPLIT_ROWS
    while min(split_sizes(rows, test_fraction, validation_fraction)) < MIN_SPLIT_ROWS:
        rows += 1
    return rows


def check_fractions(test_fraction: float, validation_fraction: float) -> None:
    """``ValueError`` unless both fractions lie in (0, 1) and sum to less than 1."""
    for flag, value in (("test_fraction", test_fraction), ("validation_fraction", validation_fraction)):
        if not (isinstance(value, (int, float)) and 0.0 < value < 1.0):
            raise ValueError(f"{flag} must be in (0, 1), got {value!r}")
    if test_fraction + validation_fraction >= 1.0:
        raise ValueError(
            f"test_fraction + validation_fraction = {test_fraction + validation_fraction:g} leaves no "
            "training rows (it must be < 1)"
        )


def split_rows(
    rows: int,
    test_fraction: float,
    validation_fraction: float,
    seed: int = 0,
    labels: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded ``(training, validation, test)`` row indices (sorted); stratified by ``labels``.

    The rows are shuffled (``seed``), grouped by label (classification), and every test/validation
    row is picked at evenly spaced positions of that order: each class keeps its share in every split.

    Raises:
        ValueError: too few rows for a split of ``MIN_SPLIT_ROWS`` rows (saying how many are needed).

    Example:
        >>> train, val, test = split_rows(100, 0.2, 0.2, seed=0)
        >>> len(train), len(val), len(test)
        (60, 20, 20)
    """
    check_fractions(test_fraction, validation_fraction)
    sizes = split_sizes(rows, test_fraction, validation_fraction)
    if min(sizes) < MIN_SPLIT_ROWS:
        need = rows_needed(test_fraction, validation_fraction)
        raise ValueError(
            f"{rows} rows are too few for test_fraction={test_fraction:g} and validation_fraction="
            f"{validation_fraction:g}: the training, validation and test splits get {sizes[0]}, {sizes[1]} "
            f"and {sizes[2]} rows, each needs >= {MIN_SPLIT_ROWS} (>= {need} rows in all)"
        )
    order = np.random.default_rng([seed, 7]).permutation(rows)
    if labels is not None:
        order = order[np.argsort(labels[order], kind="stable")]
    test_mask = _pick(rows, test_fraction)
    rest = order[~test_mask]
    val_mask = _pick(len(rest), sizes[1] / len(rest))
    return np.sort(rest[~val_mask]), np.sort(rest[val_mask]), np.sort(order[test_mask])


@dataclass
class Standardizer:
    """Per-column ``(v − mean) / std`` from training rows (a constant column keeps std 1)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray, enabled: bool = True) -> Standardizer:
        """Statistics of ``values`` (rows × columns); ``enabled=False``: the identity."""
        width = values.shape[1]
        if not enabled:
            return cls(np.zeros(width), np.ones(width))
        std = values.std(axis=0)
        return cls(values.mean(axis=0), np.where(std > 0, std, 1.0))

    def apply(self, values: np.ndarray) -> np.ndarray:
        return ((values - self.mean) / self.std).astype(np.float32)

    def invert(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values, np.float64) * self.std + self.mean

    def record(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}


# --- the comparison ------------------------------------------------------------------------------
@dataclass
class Protocol:
    """What ``learn_loss_on_table`` does (its keyword arguments; see there)."""

    learner: str = "mlp:64-64:relu"
    seeds: Sequence[int] = (0,)
    online: bool = False
    online_init: str = "baseline"
    epochs: int = 20
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 1e-3
    test_fraction: float = 0.2
    validation_fraction: float = 0.2
    split_seed: int = 0
    standardize: bool = True
    meta_steps: int = 500
    inner_steps: int = 5
    inner_lr: float = 1e-2
    inner_optimizer: str = "sgd"
    meta_lr: float = 1e-3
    meta_batch_size: int = 4
    meta_loss_init: str = "baseline"

    @property
    def meta_trains(self) -> bool:
        """Whether an offline ``learn_loss`` runs (offline, or online warm-started from it)."""
        return not self.online or self.online_init == "offline"

    def check(self) -> None:
        from ml3tf.run import check_seeds

        check_seeds(list(self.seeds))
        for name in ("epochs", "batch_size", "meta_steps", "inner_steps", "meta_batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if isinstance(self.split_seed, bool) or not isinstance(self.split_seed, int) or self.split_seed < 0:
            raise ValueError(f"split_seed must be an integer >= 0, got {self.split_seed!r}")
        for name in ("lr", "inner_lr", "meta_lr"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive finite number, got {v!r}")
        check_fractions(self.test_fraction, self.validation_fraction)
        choices = (
            ("optimizer", OPTIMIZERS),
            ("online_init", ONLINE_INITS),
            ("inner_optimizer", INNER_OPTIMIZERS),
            ("meta_loss_init", META_LOSS_INITS),
        )
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        check_learner_spec(self.learner)


def check_learner_spec(spec: str) -> None:
    """``ValueError`` unless ``spec`` is an MLP spec (``mlp:W1-W2-…[:activation]``)."""
    from ml3tf.models.spec import parse_learner_spec

    if parse_learner_spec(spec).kind != "mlp":
        raise ValueError(f"learner {spec!r}: tabular rows need an MLP learner, e.g. 'mlp:64-64:relu'")


def prepare_out_dir(out_dir: str | os.PathLike) -> str:
    """Absolute path of ``out_dir`` if it can be created as a new folder (or is an empty one).

    Raises:
        ValueError: it is a file, not writable, or a folder that already holds files.
    """
    from ml3tf.run import check_out_dir

    path = check_out_dir(out_dir)
    if os.path.isdir(path) and os.listdir(path):
        raise ValueError(
            f"out_dir {os.fspath(out_dir)!r} already holds files: learn-loss writes a new folder "
            "(remove it or choose another)"
        )
    return path


@dataclass
class _Data:
    x: dict[str, np.ndarray]  # split → standardised features (float32)
    y: dict[str, np.ndarray]  # split → fit targets (regression: standardised float32; ids int32)
    y_raw: dict[str, np.ndarray]  # split → targets in original units / class ids
    x_scale: Standardizer
    y_scale: Standardizer | None
    splits: dict[str, np.ndarray]


def _prepare(table: Table, p: Protocol) -> _Data:
    labels = table.y if table.kind == "classification" else None
    train, val, test = split_rows(table.rows, p.test_fraction, p.validation_fraction, p.split_seed, labels)
    splits = {"train": train, "validation": val, "test": test}
    x_scale = Standardizer.fit(table.x[train], p.standardize)
    y_scale = Standardizer.fit(table.y[train], p.standardize) if table.kind == "regression" else None
    xs, ys, raw = {}, {}, {}
    for split, idx in splits.items():
        xs[split] = x_scale.apply(table.x[idx])
        raw[split] = table.y[idx]
        ys[split] = y_scale.apply(table.y[idx]) if y_scale is not None else table.y[idx].astype(np.int32)
    return _Data(xs, ys, raw, x_scale, y_scale, splits)


def learn_loss_on_table(
    table: Table,
    out_dir: str | os.PathLike,
    *,
    verbose: int = 0,
    command: Sequence[str] | None = None,
    plot: bool = True,
    **protocol: Any,
) -> dict[str, Any]:
    """Learn a loss for an MLP on ``table`` and compare it with the hand-written loss on a test split.

    Per seed: ``ml3tf.learn_loss`` meta-trains a loss on the training split (its task loss on the
    validation split), then two learners with the same initial weights train for ``epochs`` on
    the training split in the same batch order with the same Keras optimizer: one on the learned
    loss, one on MSE (regression) or cross-entropy (classification). With ``online=True`` the
    learned arm instead trains with ``ml3tf.OnlineLossLearning`` (meta batches from the validation
    split), its loss starting from ``online_init`` (``"baseline"``, ``"random"``, or ``"offline"``:
    a ``learn_loss`` result). The test metric (MSE in the target's original units, or accuracy)
    is recorded before training and after every epoch.

    Keyword arguments are ``Protocol``'s fields: ``learner`` (an MLP spec), ``seeds``, ``online``,
    ``online_init``, ``epochs``, ``batch_size`` (fit batches and meta-training support rows),
    ``optimizer`` (``adam``/``sgd``) and ``lr`` of the fits, ``test_fraction``,
    ``validation_fraction``, ``split_seed``, ``standardize``, and the meta-training's
    ``meta_steps``, ``inner_steps``, ``inner_lr``, ``inner_optimizer``, ``meta_lr``,
    ``meta_batch_size``, ``meta_loss_init``.

    Writes ``out_dir`` (new, or empty) in one rename: ``meta_loss.keras`` (one seed; else
    ``seed_<s>/meta_loss.keras``), ``results.json`` (``ml3tf.results`` schema, split ``test``,
    curves over epochs, plus ``data``, ``classes``, ``standardization``, ``command`` …) and
    ``results.png``.

    Returns:
        The results dictionary written to ``results.json``.

    Raises:
        ValueError: bad arguments, too few rows, an unusable ``out_dir`` (before anything is
            written), or a diverged arm (nothing written).

    Example:
        >>> res = learn_loss_on_table(load_table("d.csv", "y"), "runs/d", meta_steps=200, seeds=[0, 1])
    """
    unknown = sorted(set(protocol) - {f.name for f in dataclasses.fields(Protocol)})
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} (see ml3tf.tabular.Protocol)")
    p = Protocol(**protocol)
    p.check()
    if verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
    out = prepare_out_dir(out_dir)
    data = _prepare(table, p)
    n_out = len(table.classes) if table.kind == "classification" else table.y.shape[1]
    from ml3tf.models.spec import build_learner

    build_learner(p.learner, table.x.shape[1], n_out)  # a spec Keras refuses fails here, before any work

    start = time.time()
    curves: dict[str, list[list[float]]] = {"learned": [], "baseline": []}
    losses, histories = [], {}
    for seed in p.seeds:
        log.info("seed %d", seed)
        loss, history, curve_learned, curve_baseline = _one_seed(table, data, p, seed, n_out, verbose)
        losses.append(loss)
        if history is not None:
            histories[str(seed)] = history
        curves["learned"].append(curve_learned)
        curves["baseline"].append(curve_baseline)
        log.info(
            "seed %d: test %s learned %.4g, baseline %.4g",
            seed,
            _metric(table.kind),
            curve_learned[-1],
            curve_baseline[-1],
        )
    for arm, per_seed in curves.items():
        for seed, curve in zip(p.seeds, per_seed, strict=True):
            bad = np.flatnonzero(~np.isfinite(curve))
            if bad.size:
                raise ValueError(
                    f"the {arm} arm of seed {seed} diverged: its test {_metric(table.kind)} is not finite "
                    f"from epoch {bad[0]} on (lr={p.lr}); nothing written"
                )
    results = _results(table, data, p, curves, histories, command, time.time() - start)
    _write(out, losses, list(p.seeds), results, plot)
    return results


def _metric(kind: str) -> str:
    return "mse" if kind == "regression" else "accuracy"


def _one_seed(
    table: Table, data: _Data, p: Protocol, seed: int, n_out: int, verbose: int
) -> tuple[Any, dict | None, list[float], list[float]]:
    """Meta-train (unless online from scratch) and train both arms; the loss and the curves."""
    import keras
    import tensorflow as tf

    import ml3tf
    from ml3tf.models.spec import build_learner
    from ml3tf.results import json_safe
    from ml3tf.seeds import seeded

    kind, d = table.kind, table.x.shape[1]

    def make() -> keras.Model:
        return build_learner(p.learner, d, n_out)

    learned = history = None
    if p.meta_trains:
        learned = ml3tf.learn_loss(
            make,
            data.x["train"],
            data.y["train"],
            kind=kind,
            validation_data=(data.x["validation"], data.y["validation"]),
            meta_steps=p.meta_steps,
            inner_steps=p.inner_steps,
            inner_lr=p.inner_lr,
            inner_optimizer=p.inner_optimizer,
            meta_lr=p.meta_lr,
            meta_batch_size=p.meta_batch_size,
            steps_per_epoch=min(50, p.meta_steps),
            seed=seed,
            verbose=verbose,
            batch_size=min(p.batch_size, len(data.splits["train"])),
            meta_loss_init=p.meta_loss_init,
            **({"from_logits": True} if kind == "classification" else {}),
        )
        history = json_safe(dict(learned.history.history))
    with seeded(seed):
        init = make().get_weights()
    n_train = len(data.splits["train"])

    def batches() -> tf.data.Dataset:  # the same order for both arms
        ds = tf.data.Dataset.from_tensor_slices((data.x["train"], data.y["train"]))
        return ds.shuffle(n_train, seed=seed, reshuffle_each_iteration=True).batch(p.batch_size)

    def optimizer() -> keras.optimizers.Optimizer:
        return (keras.optimizers.Adam if p.optimizer == "adam" else keras.optimizers.SGD)(p.lr)

    def fresh() -> keras.Model:
        model = make()
        model.set_weights(init)
        return model

    class TestMetric(keras.callbacks.Callback):
        """The test metric of ``learner`` before training and after every epoch."""

        def __init__(self, learner: keras.Model) -> None:
            super().__init__()
            self.learner = learner
            self.values: list[float] = []

        def on_train_begin(self, logs: Any = None) -> None:
            self.values.append(_test_metric(self.learner, data, kind))

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.values.append(_test_metric(self.learner, data, kind))

    def fit(trainee: keras.Model, model: keras.Model) -> list[float]:
        recorder = TestMetric(model)
        trainee.fit(batches(), epochs=p.epochs, verbose=0, callbacks=[recorder], shuffle=False)
        return recorder.values

    model = fresh()
    if kind == "classification":
        base = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    else:
        base = keras.losses.MeanSquaredError()
    model.compile(optimizer=optimizer(), loss=base)
    curve_baseline = fit(model, model)

    model = fresh()
    if p.online:
        online = ml3tf.OnlineLossLearning(
            model,
            kind,
            loss=learned if p.online_init == "offline" else p.online_init,
            validation_data=(data.x["validation"], data.y["validation"]),
            meta_lr=p.meta_lr,
            seed=seed,
            **({"from_logits": True} if kind == "classification" else {}),
        )
        online.compile(optimizer=optimizer())
        curve_learned = fit(online, model)
        learned = online.learned_loss()
    else:
        model.compile(optimizer=optimizer(), loss=learned)
        curve_learned = fit(model, model)
    return learned, history, curve_learned, curve_baseline


def _test_metric(model: Any, data: _Data, kind: str) -> float:
    """Test accuracy, or test MSE in the target's original units."""
    pred = np.asarray(model.predict(data.x["test"], batch_size=1024, verbose=0), np.float64)
    y_raw = data.y_raw["test"]
    if kind == "classification":
        return float(np.mean(np.argmax(pred, axis=-1) == y_raw))
    assert data.y_scale is not None
    with np.errstate(over="ignore", invalid="ignore"):
        return float(np.mean((data.y_scale.invert(pred.reshape(y_raw.shape)) - y_raw) ** 2))


def _results(
    table: Table,
    data: _Data,
    p: Protocol,
    curves: dict[str, list[list[float]]],
    histories: dict[str, Any],
    command: Sequence[str] | None,
    wall: float,
) -> dict[str, Any]:
    from ml3tf.results import json_safe, summarize

    kind = table.kind
    config = {
        "method": "ml3-online" if p.online else "ml3",
        "kind": kind,
        **vars(p),
        "seeds": [int(s) for s in p.seeds],
    }
    results = summarize(
        task=os.path.basename(table.path),
        metric=_metric(kind),
        higher_is_better=kind == "classification",
        baseline="cross_entropy" if kind == "classification" else "mse",
        steps=p.epochs,
        seeds=list(p.seeds),
        curves={"test": {arm: [np.asarray(c) for c in per_seed] for arm, per_seed in curves.items()}},
        config=config,
        wall_seconds=wall,
    )
    results["curve_unit"] = "epoch"
    results["data"] = {
        "path": table.path,
        "format": table.format,
        "sha256": table.sha256,
        "rows": table.rows,
        "features": table.features,
        "target": table.target,
        "splits": {k: len(v) for k, v in data.splits.items()},
    }
    results["classes"] = table.classes
    results["standardization"] = {
        "features": data.x_scale.record() if p.standardize else None,
        "target": data.y_scale.record() if data.y_scale is not None and p.standardize else None,
    }
    results["meta_training"] = histories or None
    results["command"] = list(command) if command is not None else None
    return json_safe(results)


@contextlib.contextmanager
def _new_parents(path: str) -> Iterator[None]:
    """Create ``path``'s missing parent folders; remove those again if the body fails."""
    created = []
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        created.append(parent)
        parent = os.path.dirname(parent)
    for folder in reversed(created):
        os.mkdir(folder)
    try:
        yield
    except BaseException:
        for folder in created:
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise


def _write(out: str, losses: list[Any], seeds: list[int], results: dict[str, Any], plot: bool) -> None:
    """Every output into a temporary sibling of ``out``, then one rename onto ``out``."""
    from ml3tf.results import plot_results, write_results

    with _new_parents(out):
        tmp = tempfile.mkdtemp(dir=os.path.dirname(out), prefix=f".{os.path.basename(out)}.tmp-")
        try:
            files = []
            for seed, loss in zip(seeds, losses, strict=True):
                rel = LOSS_FILE if len(seeds) == 1 else os.path.join(f"seed_{seed}", LOSS_FILE)
                os.makedirs(os.path.dirname(os.path.join(tmp, rel)), exist_ok=True)
                loss.network.save(os.path.join(tmp, rel))
                files.append(os.path.join(out, rel))
            results["meta_loss_files"] = files
            write_results(results, os.path.join(tmp, "results.json"))
            if plot:
                plot_results(results, os.path.join(tmp, "results.png"))
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(tmp, 0o777 & ~mask)  # mkdtemp made it 0700
            os.rename(tmp, out)  # replaces an empty folder; one filled meanwhile fails (ENOTEMPTY)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
