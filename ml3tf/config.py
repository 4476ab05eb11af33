"""``MetaTrainConfig``: every hyper-parameter of a meta-training run, in one frozen dataclass.

Kept free of TensorFlow imports so that the command line can describe it
(``ml3tf train sine --help``) without loading TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

#: Inner optimizers ``ml3tf.inner`` provides (differentiable, on tensors).
INNER_OPTIMIZERS = ("sgd", "momentum", "adam")
#: How ``ml3tf.inner.unroll`` differentiates through the inner steps.
BACKPROP_MODES = ("full", "segmented", "truncated")

#: What the outer loop learns: the loss φ (ML3), the initialisation θ₀ (MAML), or both.
METHODS = ("ml3", "maml", "ml3+maml")

#: How the learner's θ_0 is drawn across meta-steps (``MetaTrainConfig.learner_init``).
LEARNER_INITS = ("fresh", "fixed")

#: How φ is updated from the inner steps (``MetaTrainConfig.meta_update``).
META_UPDATES = ("unrolled", "online")

#: ``tf.distribute`` strategies ``ml3tf.distribute.make_strategy`` makes (here, not there: this
#: module does not import TensorFlow).
STRATEGIES = ("default", "mirrored", "tpu", "multi_worker")


#: With ``eval_jit_compile=None`` a CPU run compiles its meta-tests with XLA from this many
#: evaluations on (``eval_every``; the final one counts): on the sine task one XLA compile costs
#: what a dozen or two compiled evaluations then save (``bench/sine.py`` times the first and the
#: later evaluations both ways: ``evaluation`` in ``bench/results/sine.json``).
EVAL_XLA_MIN_EVALUATIONS = 20


#: The three kinds of configuration field (``MetaTrainConfig.fields_of``):
#: ``maths`` — what meta-training computes (a resumed run must keep them);
#: ``schedule`` — how long it runs and when it evaluates and saves;
#: ``execution`` — how it is executed (devices, compilation, loops): never changes the numbers
#: beyond floating-point rounding.
FIELD_KINDS = ("maths", "schedule", "execution")


def maths(default: Any) -> Any:
    """A field of the mathematics of meta-training (compared when a run is resumed)."""
    return dataclasses.field(default=default, metadata={"kind": "maths"})


def schedule(default: Any) -> Any:
    """A field of the schedule (run length, evaluation and checkpoint cadence): may change on resume."""
    return dataclasses.field(default=default, metadata={"kind": "schedule"})


def execution(default: Any) -> Any:
    """A field of how the run is executed (devices, XLA, loops, logging): may change on resume."""
    return dataclasses.field(default=default, metadata={"kind": "execution"})


def _positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def _at_least(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


@dataclass(frozen=True)
class MetaTrainConfig:
    """Hyper-parameters of one meta-training run (saved as ``config.json``).

    The defaults are the paper's sine protocol; each task supplies its own via
    ``task.default_config()``. Every field is declared as one of three kinds (``FIELD_KINDS``):
    the mathematics of meta-training (``maths``), its ``schedule``, or its ``execution``;
    resuming a run compares the first (``mathematics()``) and ignores the other two.

    Example:
        >>> MetaTrainConfig().replace(jit_compile=True).mathematics() == MetaTrainConfig().mathematics()
        True
    """

    inner_steps: int = maths(1)
    """K: differentiable inner SGD steps per meta-step."""
    inner_lr: float = maths(1e-3)
    """α: inner learning rate (also the meta-test learning rate)."""
    inner_optimizer: str = maths("sgd")
    """Inner optimizer: ``sgd`` (paper), ``momentum`` or ``adam`` (all differentiable)."""
    inner_momentum: float = maths(0.9)
    """μ for ``inner_optimizer=momentum``."""
    meta_lr: float = maths(1e-3)
    """η: learning rate of the outer optimizer on φ."""
    meta_optimizer: str = maths("adam")
    """Outer Keras optimizer on φ: ``adam`` (paper) or ``sgd``."""
    meta_steps: int = schedule(500)
    """Number of outer updates of φ."""
    meta_batch_size: int = maths(1)
    """Tasks per meta-step (the meta-objective is their mean)."""
    seed: int = maths(0)
    """Seed of φ's initialisation, the task sampling and the learner inits."""
    task_loss_weight: float = maths(1.0)
    """β in the meta-objective β·L_task + γ·L_extra."""
    extra_loss_weight: float = maths(0.0)
    """γ in the meta-objective β·L_task + γ·L_extra (needs a task with ``extra_loss``)."""
    strategy: str = execution("default")
    """Devices: ``default``, ``mirrored`` (all GPUs / logical CPUs; the meta-batch is split
    across replicas), ``multi_worker`` (one process per machine, from ``$TF_CONFIG``; only
    worker 0 writes the run; docs/multi_worker.md) or ``tpu`` (``$ML3TF_TPU`` / Colab; falls
    back to default)."""
    vectorize_meta_batch: bool = execution(True)
    """Run the tasks of a meta-batch as one batched computation (``tf.vectorized_map``);
    ignored under ``jit_compile``, where XLA fuses the per-task loop."""
    backprop: str = maths("full")
    """Backward pass through the inner steps: ``full``; ``segmented`` (exact, memory ~ K/S + S,
    for long unrolls); ``truncated`` (approximate: only the last ``truncate_steps`` steps)."""
    segment_length: int = maths(25)
    """S: inner steps per recomputed segment with ``backprop=segmented``."""
    truncate_steps: int = maths(10)
    """T: inner steps that carry gradient with ``backprop=truncated``."""
    meta_update: str = maths("unrolled")
    """``unrolled``: one φ update per meta-step, differentiated through all K inner steps (exact).
    ``online``: per task, a φ update after every inner step, differentiated through that one step
    only (θ_k held constant; the learner keeps its θ across the K steps): B·K updates per meta-step,
    memory independent of K (the authors' shaped-sine protocol)."""
    unroll_loop: str = execution("auto")
    """``python`` (unrolled graph), ``while`` (tf.while_loop) or ``auto``: python for K ≤ 10, and
    under ``jit_compile`` for K × meta_batch_size ≤ 10 (``ml3tf.inner.resolve_loop``)."""
    jit_compile: bool = execution(False)
    """Compile the meta-step with XLA (slower on CPU for the tiny sine step; for GPU/TPU)."""
    eval_steps: int = schedule(100)
    """Meta-test SGD steps of fresh learners."""
    eval_jit_compile: bool | None = execution(None)
    """Compile the meta-test curves with XLA: ``True``, ``False`` or ``None`` (auto: on a GPU or
    TPU, and on a CPU when the run meta-tests at least ``EVAL_XLA_MIN_EVALUATIONS`` times, where
    XLA's one-off compile pays back; ``ml3tf.engine.eval_jit_compile``)."""
    eval_every: int = schedule(0)
    """Evaluate (learned loss vs baseline) every N meta-steps into metrics.jsonl; 0: never."""
    steps_per_call: int = execution(50)
    batch_seeds: bool = execution(True)
    """Meta-train several seeds side by side in one compiled graph (each seed bit-identical to its
    run alone; their evaluations as one meta-test); off: one seed after the other. Tasks with
    per-seed state between chunks, and strategies over several devices, always go one by one."""
    """Meta-steps per compiled call (a loop inside the graph; metrics stay per step)."""
    checkpoint_every: int = schedule(100)
    """Save a resumable checkpoint every N meta-steps (and at the end)."""
    tensorboard: bool = execution(False)
    """Also write TensorBoard scalars to ``<run dir>/tensorboard``."""
    method: str = maths("ml3")
    """What is meta-learned: ``ml3`` (the loss φ; learner re-initialised every meta-step), ``maml``
    (the learner's initialisation θ₀, inner steps on the task's baseline loss) or ``ml3+maml`` (both,
    separate outer optimizers)."""
    init_lr: float = maths(1e-3)
    """Meta learning rate of θ₀ (Adam) for ``maml`` and ``ml3+maml``; ``meta_lr`` stays φ's."""
    first_order: bool = maths(False)
    """First-order MAML (stop-gradient on the inner gradients); only valid with ``method=maml``."""
    learner_init: str = maths("fresh")
    """θ_0 of the inner steps: ``fresh`` — redrawn for every meta-step and task (default);
    ``fixed`` — the same draw at every meta-step (one per meta-batch slot, from the seed), the
    authors' MountainCar and reacher protocols (their policy keeps, or is reset to, one θ_0)."""
    select_every: int = maths(0)
    """Select φ on meta-train numbers: ``meta_loss.keras`` holds φ at the end of the window of N
    meta-steps (windows from step 0, the last one may be shorter) with the lowest mean task loss
    (ties: the earlier window), the last φ goes to ``meta_loss_last.keras``; 0: keep the last φ.
    ``ml3`` only."""

    def __post_init__(self) -> None:
        _at_least("inner_steps", self.inner_steps, 1)
        _positive("inner_lr", self.inner_lr)
        _positive("meta_lr", self.meta_lr)
        _at_least("meta_steps", self.meta_steps, 1)
        _at_least("meta_batch_size", self.meta_batch_size, 1)
        _at_least("seed", self.seed, 0)
        if self.seed >= 2**32:  # NumPy's and Keras' global seeding take 32 bits
            raise ValueError(f"seed must be an integer < 2**32, got {self.seed!r}")
        _at_least("eval_steps", self.eval_steps, 1)
        _at_least("eval_every", self.eval_every, 0)
        _at_least("checkpoint_every", self.checkpoint_every, 1)
        _at_least("steps_per_call", self.steps_per_call, 1)
        if not (self.eval_jit_compile is None or isinstance(self.eval_jit_compile, bool)):
            raise ValueError(
                f"eval_jit_compile must be True, False or None (auto), got {self.eval_jit_compile!r}"
            )
        if self.inner_optimizer not in INNER_OPTIMIZERS:
            raise ValueError(
                f"inner_optimizer must be one of {INNER_OPTIMIZERS}, got {self.inner_optimizer!r}"
            )
        if not 0.0 <= self.inner_momentum < 1.0:
            raise ValueError(f"inner_momentum must be in [0, 1), got {self.inner_momentum!r}")
        if self.meta_optimizer not in ("adam", "sgd"):
            raise ValueError(f"meta_optimizer must be 'adam' or 'sgd', got {self.meta_optimizer!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.backprop not in BACKPROP_MODES:
            raise ValueError(f"backprop must be one of {BACKPROP_MODES}, got {self.backprop!r}")
        _at_least("segment_length", self.segment_length, 1)
        _at_least("truncate_steps", self.truncate_steps, 1)
        if self.unroll_loop not in ("auto", "python", "while"):
            raise ValueError(f"unroll_loop must be 'auto', 'python' or 'while', got {self.unroll_loop!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        _positive("init_lr", self.init_lr)
        if self.first_order and self.method != "maml":
            # φ reaches the task loss only through the inner gradients.
            raise ValueError(
                f"first_order=True is only valid with method='maml', got method={self.method!r}: "
                "stopping the inner gradients would leave the loss network φ without a gradient"
            )
        if self.learner_init not in LEARNER_INITS:
            raise ValueError(f"learner_init must be one of {LEARNER_INITS}, got {self.learner_init!r}")
        if self.meta_update not in META_UPDATES:
            raise ValueError(f"meta_update must be one of {META_UPDATES}, got {self.meta_update!r}")
        _at_least("select_every", self.select_every, 0)
        if self.select_every and self.method != "ml3":
            why = (
                "it learns no loss network φ"
                if self.method == "maml"
                else "its φ and θ₀ are learned together, and selecting φ alone would break the pair"
            )
            raise ValueError(
                f"select_every={self.select_every} selects a loss network φ and needs method='ml3'; "
                f"method={self.method!r}: {why} (set select_every=0)"
            )
        if self.meta_update == "online" and self.method != "ml3":
            raise ValueError(f"meta_update='online' supports method='ml3' only, got method={self.method!r}")
        for name in ("task_loss_weight", "extra_loss_weight"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.task_loss_weight == 0 and self.extra_loss_weight == 0:
            raise ValueError("task_loss_weight and extra_loss_weight cannot both be 0")

    @property
    def learns_loss(self) -> bool:
        """Whether φ (the loss network) is meta-learned (``ml3``, ``ml3+maml``)."""
        return self.method in ("ml3", "ml3+maml")

    @property
    def learns_init(self) -> bool:
        """Whether θ₀ (the learner's initialisation) is meta-learned (``maml``, ``ml3+maml``)."""
        return self.method in ("maml", "ml3+maml")

    def replace(self, **changes: Any) -> MetaTrainConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def fields_of(cls, kind: str) -> tuple[str, ...]:
        """Names of the fields of ``kind`` (one of ``FIELD_KINDS``), in declaration order."""
        if kind not in FIELD_KINDS:
            raise ValueError(f"kind must be one of {FIELD_KINDS}, got {kind!r}")
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata["kind"] == kind)

    def mathematics(self) -> dict[str, Any]:
        """The ``maths`` fields: what a resumed run must share with the run it continues."""
        return {name: getattr(self, name) for name in self.fields_of("maths")}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MetaTrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown MetaTrainConfig fields: {unknown}")
        return cls(**d)
