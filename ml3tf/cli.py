"""The ``ml3tf`` command (also ``python -m ml3tf``): the composition root.

    ml3tf tasks
    ml3tf train TASK --out-dir DIR [--seeds 0 1 2 3 4] [--no-eval] [config/task flags]
    ml3tf eval  TASK --meta-loss FILE [FILE …] --out-dir DIR [--seeds …] [--eval-steps N]
    ml3tf eval  TASK --init-file FILE [FILE …] …    (a maml run's θ₀; with --meta-loss: ml3+maml)
    ml3tf export FILE --out-dir DIR [--kind classification] [--from-logits]
    ml3tf learn-loss DATA.csv|DATA.npz --target COL --kind KIND --out-dir DIR [--online] …
          (your own tabular data: docs/learn_loss_cli.md)

TASK is a name of ``ml3tf tasks`` (built-in or an installed plug-in's entry point) or a
``module:Class`` path (docs/plugins.md). ``eval`` starts from the config.json that ``train``
wrote beside the first meta-loss file (same task: the ``name`` it records is the task class's),
so a run is evaluated with its own protocol.

Config flags are generated from ``MetaTrainConfig`` and the task's options
dataclass (``--inner-lr``, ``--meta-steps``, ``--mode`` …); their defaults are the
task's paper protocol. Errors in what was asked print one line and exit with 2.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import json
import logging
import os
import sys
import textwrap
from collections.abc import Collection, Sequence
from typing import Any

PROG = "ml3tf"


class _Console(logging.StreamHandler):
    """A handler writing to ``sys.stderr`` as it is at each record: an in-process caller of
    ``main`` (tests, notebooks) may swap it and close the old one."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def _console_log(quiet: bool) -> logging.Logger:
    """The ``ml3tf`` logger with one console handler (message only), at INFO (WARNING if quiet)."""
    logger = logging.getLogger("ml3tf")
    if not any(isinstance(h, _Console) for h in logger.handlers):
        handler = _Console()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    return logger


class UsageError(Exception):
    """Bad command-line input (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2
        raise UsageError(message)


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal after each dataclass field)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for prev, node in itertools.pairwise(body):
        if (
            isinstance(prev, ast.AnnAssign)
            and isinstance(prev.target, ast.Name)
            and isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            docs[prev.target.id] = " ".join(node.value.value.split())
    return docs


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> list[str]:
    """Add ``--kebab-case`` flags for every field of ``cls``; unset flags stay absent."""
    docs = field_docs(cls)
    names = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        flag = "--" + f.name.replace("_", "-")
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        help_text = docs.get(f.name, "")
        if isinstance(default, bool) or str(f.type).replace(" ", "") in ("bool|None", "Optional[bool]"):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif isinstance(default, tuple):
            kwargs["nargs"] = "+"
            kwargs["type"] = type(default[0]) if default else float
            kwargs["metavar"] = "V"
        else:
            kwargs["type"] = type(default)
        parser.add_argument(flag, help=f"{help_text} (default: {default})", **kwargs)
        names.append(f.name)
    return names


def _picked(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    out = {}
    for n in names:
        if hasattr(args, n):
            v = getattr(args, n)
            out[n] = tuple(v) if isinstance(v, list) else v
    return out


def _build_parser(task_name: str | None) -> tuple[argparse.ArgumentParser, dict[str, list[str]]]:
    from ml3tf.config import MetaTrainConfig

    parser = _Parser(prog=PROG, description="ML3: meta-learning via learned loss, on TF2/Keras 3.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("tasks", help="list the tasks: built-in and installed plug-ins")
    exp = sub.add_parser("export", help="export a meta_loss.keras as a SavedModel for serving")
    exp.add_argument("file", help="meta_loss.keras (from `ml3tf train`), or pretrained:NAME from the zoo")
    exp.add_argument("--out-dir", required=True, help="SavedModel folder to create (must be new or empty)")
    exp.add_argument(
        "--kind",
        choices=("regression", "classification"),
        default=None,
        help="what the loss network scores (default: the kind its run's task trained it for, from the "
        "config.json beside FILE; a zoo entry's own kind; else regression)",
    )
    exp.add_argument("--from-logits", action="store_true", help="classification: y_pred holds logits")
    _add_learn_loss_parser(sub)
    groups: dict[str, list[str]] = {}
    task_cls = None
    if task_name is not None:
        from ml3tf import tasks

        task_cls = tasks.task_class(task_name)  # ValueError on unknown names

    for cmd in ("train", "eval"):
        p = sub.add_parser(cmd, help=f"{cmd} a learned loss for TASK")
        p.add_argument("task", help="task name (see `ml3tf tasks`), or a plug-in task as module:Class")
        p.add_argument("--out-dir", required=True, help="output folder (created; resumed by train)")
        p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds to run")
        p.add_argument(
            "--quiet",
            action="store_true",
            help="no progress bar; print only the final metrics as one JSON line",
        )
        if cmd == "train":
            p.add_argument("--no-eval", action="store_true", help="skip the meta-test after training")
        else:
            p.add_argument(
                "--meta-loss", nargs="+", default=[], help="meta_loss.keras file(s): one, or one per seed"
            )
            p.add_argument(
                "--init-file",
                nargs="+",
                default=[],
                dest="init_files",
                help="learner.keras file(s) of a maml / ml3+maml run: the learned θ₀ to adapt from",
            )
        cfg_group = p.add_argument_group("meta-training config (MetaTrainConfig)")
        groups["config"] = add_dataclass_flags(cfg_group, MetaTrainConfig)
        groups["task"] = []
        if task_cls is not None and hasattr(task_cls, "Options"):
            t_group = p.add_argument_group(f"task options ({task_name})")
            groups["task"] = add_dataclass_flags(t_group, task_cls.Options)
    return parser, groups


def _saved_run(meta_loss_path: str, task_names: Collection[str]) -> dict[str, Any]:
    """The ``config.json`` beside a ``meta_loss.keras`` made by ``ml3tf train`` for the same task.

    ``ml3tf eval`` starts from it, so that a run is evaluated with the protocol it was
    trained with; flags given on the command line still win. The record names the task by its
    class's ``name``; ``task_names`` holds that and the TASK given (a plug-in may be given by
    entry-point name or by ``module:Class`` path).
    """
    saved = _config_beside(meta_loss_path)
    if saved is None or saved.get("task") not in task_names:
        return {}
    opts = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.get("task_options", {}).items()}
    return {**saved, "task_options": opts}


def _config_beside(path: str) -> dict[str, Any] | None:
    """The ``config.json`` that ``ml3tf train`` wrote beside ``path`` (``ml3tf.run.read_record``)."""
    from ml3tf.run import read_record

    return read_record(os.path.dirname(os.path.abspath(path)))


def _progress_callback(meta_steps: int, quiet: bool, seeds: Sequence[int] = (0,)):
    """One progress bar over every seed's meta-steps (several seeds train side by side)."""
    if quiet:
        return None
    import keras

    seeds = list(seeds)
    done = dict.fromkeys(seeds, 0)
    print(f"meta-training seed{'s' if len(seeds) > 1 else ''} {' '.join(map(str, seeds))}", file=sys.stderr)
    bar = keras.utils.Progbar(meta_steps * len(seeds), stateful_metrics=["task_loss", "initial_loss"])

    def on_step(seed: int, step: int, info: Any) -> None:
        done[seed] = step + 1
        bar.update(sum(done.values()), [("task_loss", info.task_loss), ("initial_loss", info.initial_loss)])

    return on_step


def run() -> None:
    """The ``ml3tf`` command (and ``python -m ml3tf``): ``main()``, then the process ends.

    Once TensorFlow is loaded the process ends without the interpreter's finalisation: tearing
    down TensorFlow's runtime takes a noticeable part of a short run's time, and nothing needs
    it — by then every file of the run is written and closed, and the streams and log handlers
    are flushed here (``atexit`` hooks, a plugin's among them, do not run). A multi-worker
    process (``$TF_CONFIG`` set) exits normally, so that its collective runtime shuts down in
    order with the other workers', and so does a process under a profiler or a tracer
    (``python -m cProfile``, coverage), which writes its results at exit.
    """
    code = main()
    watched = sys.getprofile() is not None or sys.gettrace() is not None
    if "tensorflow" in sys.modules and not os.environ.get("TF_CONFIG") and not watched:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 bad input, 1 failure)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _main(argv)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        from ml3tf.distribute import WorkerLostError

        if not isinstance(exc, WorkerLostError):
            raise
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:  # disk full, permission lost mid-run: the files written so far are intact
        print(f"{PROG}: error: {_one_line(exc)} (what was written before is intact)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted (re-run the same command to resume)", file=sys.stderr)
        return 130


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines[:1]) if lines else type(exc).__name__


def _main(argv: list[str]) -> int:
    # First pass: find the task, so that its option flags can be generated.
    task_name = None
    if len(argv) >= 2 and argv[0] in ("train", "eval") and not argv[1].startswith("-"):
        task_name = argv[1]
    if (argv and argv[0] in ("-h", "--help")) or not argv:
        _build_parser(None)[0].print_help()
        return 0 if argv else 2
    if task_name is not None and ":" in task_name:
        _modules_from_working_directory()
    if argv[0] == "train" and _flag_value(argv, "--strategy") == "multi_worker":
        from ml3tf.distribute import make_strategy

        make_strategy("multi_worker")  # before any TensorFlow op: TF configures collectives at startup
    parser, groups = _build_parser(task_name)
    args = parser.parse_args(argv)
    if args.command == "export":
        return _export(args)
    if args.command == "learn-loss":
        return _learn_loss(args, argv)

    from ml3tf import tasks

    if args.command == "tasks":
        for name in tasks.names():  # plug-ins are described without importing them
            print(f"{name:16s} {tasks.describe(name, load=False)}")
        return 0

    _console_log(args.quiet)  # ours only: TensorFlow's INFO lines stay quiet
    saved = {}
    if args.command == "eval":
        if not args.meta_loss and not args.init_files:
            raise UsageError("eval needs --meta-loss FILE … and/or --init-file FILE …")
        recorded_as = {args.task, tasks.task_class(args.task).name}
        saved = _saved_run((args.meta_loss or args.init_files)[0], recorded_as)
    task = tasks.get(args.task, **{**saved.get("task_options", {}), **_picked(args, groups["task"])})
    config = task.default_config()
    if "config" in saved:
        from ml3tf.config import MetaTrainConfig

        config = MetaTrainConfig.from_dict(saved["config"])
    config = config.replace(**_picked(args, groups["config"]))

    import ml3tf
    from ml3tf.results import format_summary

    if args.command == "train":
        run = ml3tf.train(
            task,
            config,
            args.out_dir,
            seeds=args.seeds,
            evaluate=not args.no_eval,
            on_step=_progress_callback(config.meta_steps, args.quiet, args.seeds or [config.seed]),
        )
        results = run.results
        if not args.quiet:
            print(f"meta-losses: {', '.join(run.meta_loss_paths)}")
    else:
        seeds = args.seeds
        count = max(len(args.meta_loss), len(args.init_files))
        if seeds is None:
            seeds = list(range(count)) if count > 1 else [0, 1, 2, 3, 4]
        results = ml3tf.evaluate_files(
            task, args.meta_loss, config, args.out_dir, seeds, learner_paths=args.init_files or None
        )
    if results is not None and not args.quiet:
        print(format_summary(results))
        print(f"wrote {os.path.join(args.out_dir, 'results.json')} and results.png")
    elif results is not None:
        print(json.dumps(results["final"]))
    return 0


def _flag_value(argv: Sequence[str], flag: str) -> str | None:
    """The last value given to ``flag`` (``--flag V`` or ``--flag=V``) in ``argv``, if any."""
    value = None
    for arg, following in itertools.zip_longest(argv, argv[1:]):
        if arg == flag:
            value = following
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def _modules_from_working_directory() -> None:
    """A ``module:Class`` TASK may name a module in the working directory, as with ``python -m
    ml3tf`` (the ``ml3tf`` script's own ``sys.path`` lacks it). Appended: installed modules win."""
    cwd = os.getcwd()
    if not any(entry in ("", ".") or os.path.abspath(entry) == cwd for entry in sys.path):
        sys.path.append(cwd)


def _kind_of_run(path: str) -> str | None:
    """What the loss beside a ``config.json`` of ``ml3tf train`` scores: its task's ``loss_kind``."""
    saved = _config_beside(path)
    if saved is None or not isinstance(saved.get("task"), str):
        return None
    from ml3tf import tasks
    from ml3tf.task import SupervisedTask

    try:
        cls = tasks.task_class(saved["task"])
    except ValueError:
        return None
    return cls.loss_kind if issubclass(cls, SupervisedTask) else None


def _export(args: argparse.Namespace) -> int:
    """``ml3tf export FILE --out-dir DIR``: a ``LearnedLoss`` as a SavedModel (``serving_default``)."""
    from ml3tf.export import export_saved_model
    from ml3tf.losses import LearnedLoss

    kwargs: dict[str, Any] = {"from_logits": args.from_logits}
    if args.file.startswith("pretrained:"):
        if args.kind is not None:
            kwargs["kind"] = args.kind
        loss = LearnedLoss.pretrained(args.file.split(":", 1)[1], **kwargs)
    else:
        kind = _kind_of_run(args.file)
        if args.kind is not None and kind is not None and args.kind != kind:
            raise ValueError(f"--kind {args.kind}: {args.file!r} was trained as a {kind} loss")
        kwargs["kind"] = args.kind or kind or "regression"
        loss = LearnedLoss.from_file(args.file, **kwargs)
    path = export_saved_model(loss, args.out_dir)
    print(f"wrote SavedModel {path} (signature serving_default: y_pred, y_true -> loss, mean_loss)")
    return 0


def _add_learn_loss_parser(sub: Any) -> None:
    """The ``learn-loss`` subcommand's flags (``ml3tf.tabular``; docs/learn_loss_cli.md)."""
    p = sub.add_parser(
        "learn-loss",
        help="learn a loss for an MLP on your own CSV/NPZ data and compare it with MSE / cross-entropy",
        description="Learn a loss for an MLP on a CSV (header row) or NPZ (arrays x, y) file, then train "
        "fresh learners with it and with the hand-written loss and compare them on a held-out test split.",
    )
    p.add_argument("data", metavar="DATA", help="a .csv file with a header row, or an .npz file")
    p.add_argument(
        "--target",
        default=None,
        metavar="COL",
        help="CSV: the target column (required); NPZ: the target array's name (default: y; features: x)",
    )
    p.add_argument("--kind", required=True, choices=("regression", "classification"))
    p.add_argument(
        "--learner", default="mlp:64-64:relu", metavar="SPEC", help="MLP spec (default: mlp:64-64:relu)"
    )
    p.add_argument(
        "--out-dir", required=True, metavar="DIR", help="output folder to create (must be new or empty)"
    )
    p.add_argument(
        "--seeds", "--seed", type=int, nargs="+", default=[0], metavar="S", help="seeds to run (default: 0)"
    )
    p.add_argument(
        "--online",
        action="store_true",
        help="the learned arm learns its loss online during fit (ml3tf.OnlineLossLearning)",
    )
    p.add_argument(
        "--online-init",
        choices=("baseline", "random", "offline"),
        default="baseline",
        help="--online: the loss it starts from; offline: meta-train first, as without --online "
        "(default: baseline)",
    )
    p.add_argument("--quiet", action="store_true", help="print only the final metrics as one JSON line")
    g = p.add_argument_group("data")
    g.add_argument("--test-fraction", type=float, default=0.2, help="held-out test rows (default: 0.2)")
    g.add_argument("--validation-fraction", type=float, default=0.2, help="validation rows (default: 0.2)")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the row split (default: 0)")
    g.add_argument(
        "--standardize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="standardise features and regression targets with training statistics (default: on)",
    )
    g = p.add_argument_group("training the learners (both arms)")
    g.add_argument("--epochs", type=int, default=20, help="epochs of fit (default: 20)")
    g.add_argument("--batch-size", type=int, default=32, help="rows per batch (default: 32)")
    g.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="(default: adam)")
    g.add_argument("--lr", type=float, default=1e-3, help="learning rate (default: 0.001)")
    g = p.add_argument_group("meta-training the loss (ml3tf.learn_loss)")
    g.add_argument("--meta-steps", type=int, default=None, help="meta-steps (default: 500)")
    g.add_argument("--inner-steps", type=int, default=5, help="inner steps per task (default: 5)")
    g.add_argument("--inner-lr", type=float, default=1e-2, help="inner learning rate (default: 0.01)")
    g.add_argument(
        "--inner-optimizer", choices=("sgd", "momentum", "adam"), default="sgd", help="(default: sgd)"
    )
    g.add_argument("--meta-lr", type=float, default=1e-3, help="loss network's Adam rate (default: 0.001)")
    g.add_argument("--meta-batch-size", type=int, default=4, help="tasks per meta-step (default: 4)")
    g.add_argument(
        "--meta-loss-init",
        choices=("baseline", "random"),
        default="baseline",
        help="the loss network before meta-training: fitted to MSE / cross-entropy, or random "
        "(default: baseline)",
    )


def _learn_loss(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """``ml3tf learn-loss``: everything is checked before the output folder is created."""
    if args.meta_steps is not None and args.online and args.online_init != "offline":
        raise UsageError("--meta-steps: --online learns the loss during fit; add --online-init offline")
    protocol = {
        k: getattr(args, k)
        for k in (
            "learner", "seeds", "online", "online_init", "epochs", "batch_size", "optimizer", "lr",
            "test_fraction", "validation_fraction", "split_seed", "standardize", "inner_steps",
            "inner_lr", "inner_optimizer", "meta_lr", "meta_batch_size", "meta_loss_init",
        )
    }  # fmt: skip
    protocol["meta_steps"] = 500 if args.meta_steps is None else args.meta_steps
    from ml3tf import tabular

    tabular.Protocol(**protocol).check()  # flags, then the folder, then the data
    tabular.prepare_out_dir(args.out_dir)
    table = tabular.load_table(args.data, args.target, args.kind)
    tabular.split_rows(len(table.x), args.test_fraction, args.validation_fraction)  # enough rows?

    logger = _console_log(args.quiet)
    # TensorFlow's checkpointing (absl) gives the root logger a handler mid-run: print lines once.
    propagate, logger.propagate = logger.propagate, False
    try:
        results = tabular.learn_loss_on_table(
            table, args.out_dir, verbose=0 if args.quiet else 1, command=[PROG, *argv], **protocol
        )
    finally:
        logger.propagate = propagate
    if args.quiet:
        print(json.dumps(results["final"]))
    else:
        from ml3tf.results import format_summary

        print(format_summary(results).replace(" steps:", " epochs:").replace(" step:", " epoch:"))
        print(f"wrote {', '.join(results['meta_loss_files'])}")
        print(f"wrote {os.path.join(args.out_dir, 'results.json')} and results.png")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
