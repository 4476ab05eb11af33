"""ML3 and MAML sine meta-steps in PyTorch (torch.func, higher) and JAX, checked against ml3tf, then timed.

    python bench/peers.py [--repeats 3] [--threads N] [--ks 1 5 20] [--out bench/results/peers.json]
    python bench/peers.py --quick            # smoke run: few steps, one repeat
    python bench/peers.py --skip-missing     # run only the stacks whose packages are installed

Needs the peers' packages: ``pip install -c constraints.txt -e ".[cpu,bench]"``.

What one step computes (the paper's sine protocol, ``tasks/sine.py`` paper mode and
``task.default_config()``): one train task ``y = sin(x − π)``, 100 points x ~ U[−2, 2] drawn once
per seed; learner f_θ 1→100→10→1 ReLU, θ₀ fresh every meta-step (Xavier-uniform kernels, zero
biases); loss network M_φ 2→50→50→1, bias-free ReLU, softplus output, reading (ŷ, y). For K
inner steps of SGD (α = 1e-3) on the support set

    θ_{k+1} = θ_k − α ∇_θ mean_i M_φ(f_{θ_k}(x_i), y_i)            k = 0 … K−1

and the outer update on the query set (here the same points)

    φ ← Adam_η(∇_φ mean_i (f_{θ_K}(x_i) − y_i)²)                  η = 1e-3, ε = 1e-7 (Keras)

a second-order gradient: φ reaches the objective only through ∇_θ M_φ. The MAML step (the
few-shot protocol of ``bench/maml_sine.py``: family mode, A ~ U[0.1, 5], φ₀ ~ U[0, π],
x ~ U[−5, 5], 10 support and 25 query points, learner 1→40→40→1, α = 0.01, 5 tasks per
meta-batch) learns θ₀ instead, with MSE as the inner loss:
θ₀ ← Adam(∇_{θ₀} mean_b MSE(query_b, θ_K(θ₀; support_b))), second order.

Correctness, before any timing: ml3tf writes its inputs (φ, θ₀, the sampled batch) and its
meta-gradient ``MetaTrainer.meta_gradient`` in float32 and float64 (the float64 trainer is
built under ``keras.config.set_floatx("float64")``, as the tests' ``float64`` fixture does).
Every peer computes the same gradient from the same inputs; the error is the relative error
of the whole gradient vector, ``‖g − g_ref‖ / ‖g_ref‖``. In float64 (torch ``.double()``,
JAX with ``jax_enable_x64``, in its own process) the stacks must agree to ``1e-9``: a
different formula would show at 1e-3 or worse, round-off alone at ~1e-13. In float32 the
bound is ``1e-4·√K``: the round-off of one stack, ``u ≈ 6e-8`` per operation, grows with the
depth of the computation (2K+1 forward passes, their gradients, and the gradient of those);
the float32-vs-float64 error of ml3tf itself is printed beside it for scale. A stack that
fails is not timed, and the JSON says so.

Timing: milliseconds per meta-step, the median over ``--repeats`` chunks of ``--steps``
meta-steps, after a warm-up chunk (``warmup_s``; less the steps it ran at the measured pace:
tracing and compilation, ``compile_s``; the torch stacks, which compile nothing, warm up on 5
steps and time chunks of at most ``--budget`` seconds, ``steps`` in the JSON). Equal work in
every stack: each step's data is drawn on the host with NumPy, by the same sampler as ml3tf's
``task.sample`` (``sample_paper`` / ``sample_few_shot`` below, which a test checks against it),
for every step of the chunk; θ₀ is drawn in each stack with its own RNG (the stateless philox
seeds of ml3tf, ``torch.Generator``, ``jax.random``); φ's Adam update is part of the step. The
stacks:

* ``ml3tf run_steps``: ``MetaTrainer(task, cfg).run_steps(first, count)``, the chunk in one
  compiled call, with ``jit_compile=False`` (``tf.function``) and ``jit_compile=True`` (XLA;
  with ``unroll_loop="python"``: the fastest steady state, which "auto" trades for a shorter
  compile once K × B > 10);
  ``ml3tf step``: one ``trainer.step`` per meta-step (XLA), the per-call overhead;
* ``torch.func``: ``functional_call`` + nested ``torch.func.grad`` (``vmap`` over the
  meta-batch when B > 1), ``torch.optim.Adam`` (``foreach``) on φ, a Python loop over steps;
* ``torch + higher``: ``higher.innerloop_ctx(learner, SGD, copy_initial_weights=False)``,
  ``diffopt.step(loss)``, ``backward()``, ``torch.optim.Adam`` (the authors' stack);
* ``jax.jit``: pure functions; the whole chunk — θ₀ draws, meta-gradient, a hand-written
  Keras-style Adam (``keras_adam``) — is one ``jax.jit`` over a ``lax.scan`` of steps, the
  host-sampled data of the chunk passed in as stacked arrays (as ml3tf's ``run_steps`` does).

torch's Adam puts ε beside the bias-corrected √v̂ and Keras beside √v: the same work, numbers
that differ in the 7th digit; JAX uses the Keras form.

Evaluation (``ms per evaluation``): what ``task.evaluate([meta_loss], config, [seed])`` does for
one seed — the train task and the 10 test tasks (A ~ U[0.2, 5], φ₀ ~ U[−π, π], x ~ U[−5, 5]),
11 fresh learners trained 100 SGD steps on the learned loss and 11 on MSE, the MSE recorded
before every step and after the last. ml3tf's baseline curve cache is cleared before each
call, so that both arms run. torch.func and JAX train the 11 learners of an arm together
(``vmap``; JAX in one ``jit``); the ``higher`` row trains them one by one with ``nn.Module`` and
``torch.optim.SGD``, as the authors' scripts do.

Threads: every stack runs in its own process, pinned to the same CPUs with
``os.sched_setaffinity`` (before any framework is imported), with ``OMP_NUM_THREADS`` and
``MKL_NUM_THREADS`` = N; torch ``set_num_threads(N)`` / ``set_num_interop_threads(N)``; TensorFlow
``tf.config.threading.set_intra_op_parallelism_threads(N)`` / ``…inter_op…(N)`` (XLA:CPU uses the
same intra-op pool); JAX sizes its CPU thread pool from the affinity mask, and for N = 1 both XLA
stacks get ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1``. The
default N is every CPU this process may use. On a machine that other jobs share, pick
``--threads 1``: a multi-threaded pool (OpenMP in torch, Eigen in TensorFlow and XLA) whose
threads wait on a busy core slows down far more than one thread does.

Prints a table and writes JSON (machine, versions, date, the command). Timings on a shared
machine are noisy: compare ratios from one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:  # bench.sine's cpu_name (no framework import)
    sys.path.insert(0, REPO)

INSTALL_HINT = 'pip install -c constraints.txt -e ".[cpu,bench]"'
#: stack -> the modules it needs beyond NumPy.
PEERS = {"torch_func": ("torch",), "torch_higher": ("torch", "higher"), "jax": ("jax", "jaxlib")}
LABELS = {
    "ml3tf_function": "ml3tf run_steps (tf.function)",
    "ml3tf_xla": "ml3tf run_steps (XLA)",
    "ml3tf_step_xla": "ml3tf step per call (XLA)",
    "torch_func": "torch.func",
    "torch_higher": "torch + higher",
    "jax": "jax.jit (lax.scan chunk)",
}
F64_TOL = 1e-9

# --- the sine protocol, in NumPy (the same numbers as tasks/sine.py) ---------------------------
#: paper mode (tasks.get("sine") and its default_config()).
PAPER = {
    "n_points": 100,
    "amplitude": 1.0,
    "phase": math.pi,
    "train_x_range": (-2.0, 2.0),
    "test_x_range": (-5.0, 5.0),
    "test_amplitude_range": (0.2, 5.0),
    "test_phase_range": (-math.pi, math.pi),
    "n_test_tasks": 10,
    "learner_hidden": (100, 10),
    "meta_loss_hidden": (50, 50),
    "inner_lr": 1e-3,
    "meta_lr": 1e-3,
    "meta_batch_size": 1,
    "eval_steps": 100,
}
#: the few-shot MAML protocol of bench/maml_sine.py (K = 10 shots).
MAML = {
    "shots": 10,
    "query": 25,
    "amplitude_range": (0.1, 5.0),
    "phase_range": (0.0, math.pi),
    "x_range": (-5.0, 5.0),
    "learner_hidden": (40, 40),
    "inner_lr": 0.01,
    "init_lr": 1e-3,
    "meta_batch_size": 5,
}
SEED = 0
_TRAIN_STREAM, _TEST_STREAM = 0, 1  # tasks/sine.py's stream ids


def maml_task_options() -> dict[str, Any]:
    """``tasks.get("sine", **options)`` of the MAML protocol (as bench/maml_sine.py builds it)."""
    m = MAML
    return {
        "mode": "family",
        "support_points": m["shots"],
        "query_points": m["query"],
        "amplitude_range": m["amplitude_range"],
        "phase_range": m["phase_range"],
        "train_x_range": m["x_range"],
        "test_x_range": m["x_range"],
        "learner_hidden": m["learner_hidden"],
    }


def _sine(x: np.ndarray, amplitude: float, phase: float) -> np.ndarray:
    return (amplitude * np.sin(x - phase)).astype(np.float32)


def sample_paper(seed: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` ``(B, N, 1)`` of a paper-mode meta-step (support = query), as ``task.sample``."""
    rng = np.random.default_rng([seed, _TRAIN_STREAM])
    x = rng.uniform(*PAPER["train_x_range"], size=(PAPER["n_points"], 1)).astype(np.float32)
    y = _sine(x, PAPER["amplitude"], PAPER["phase"])
    return np.repeat(x[None], batch_size, 0), np.repeat(y[None], batch_size, 0)


def sample_few_shot(seed: int, step: int, batch_size: int) -> tuple[np.ndarray, ...]:
    """``(x_s, y_s, x_q, y_q)`` of a MAML meta-step, as the family-mode ``task.sample``."""
    m = MAML
    rng = np.random.default_rng([seed, _TRAIN_STREAM, step])
    amp = rng.uniform(*m["amplitude_range"], size=batch_size)
    phase = rng.uniform(*m["phase_range"], size=batch_size)
    xs = rng.uniform(*m["x_range"], size=(batch_size, m["shots"], 1)).astype(np.float32)
    xq = rng.uniform(*m["x_range"], size=(batch_size, m["query"], 1)).astype(np.float32)
    ys = np.stack([_sine(xs[i], amp[i], phase[i]) for i in range(batch_size)])
    yq = np.stack([_sine(xq[i], amp[i], phase[i]) for i in range(batch_size)])
    return xs, ys, xq, yq


def eval_tasks(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` ``(11, 100, 1)``: the train task then the 10 test tasks of ``task.eval_splits``."""
    p = PAPER
    x_train, y_train = sample_paper(seed, 1)
    rng = np.random.default_rng([seed, _TEST_STREAM])
    n = p["n_test_tasks"]
    amp = rng.uniform(*p["test_amplitude_range"], size=n)
    phase = rng.uniform(*p["test_phase_range"], size=n)
    x = rng.uniform(*p["test_x_range"], size=(n, p["n_points"], 1)).astype(np.float32)
    y = np.stack([_sine(x[i], amp[i], phase[i]) for i in range(n)])
    return np.concatenate([x_train, x]), np.concatenate([y_train, y])


def layer_sizes(hidden: Sequence[int]) -> list[int]:
    return [1, *hidden, 1]


def glorot_limit(fan_in: int, fan_out: int) -> float:
    return math.sqrt(6.0 / (fan_in + fan_out))


def keras_adam(
    xp: Any,
    params: Sequence[Any],
    grads: Sequence[Any],
    m: Sequence[Any],
    v: Sequence[Any],
    t: Any,
    lr: float,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-7,
) -> tuple[list, list, list, Any]:
    """One ``keras.optimizers.Adam`` update, written for any array module ``xp`` (numpy, jax.numpy):
    ``α = η √(1 − β₂ᵗ)/(1 − β₁ᵗ)``, ``m += (g − m)(1 − β₁)``, ``v += (g² − v)(1 − β₂)``,
    ``p −= α m / (√v + ε)``. Returns ``(params, m, v, t)``."""
    t = t + 1
    alpha = lr * xp.sqrt(1 - beta_2**t) / (1 - beta_1**t)
    m = [mi + (g - mi) * (1 - beta_1) for mi, g in zip(m, grads, strict=True)]
    v = [vi + (g * g - vi) * (1 - beta_2) for vi, g in zip(v, grads, strict=True)]
    params = [p - mi * alpha / (xp.sqrt(vi) + epsilon) for p, mi, vi in zip(params, m, v, strict=True)]
    return params, m, v, t


def rel_err(got: Sequence[np.ndarray], want: Sequence[np.ndarray]) -> float:
    """``‖got − want‖ / ‖want‖`` of the concatenated, flattened arrays (float64)."""
    g = np.concatenate([np.asarray(a, np.float64).ravel() for a in got])
    w = np.concatenate([np.asarray(a, np.float64).ravel() for a in want])
    if g.shape != w.shape:
        return math.inf
    return float(np.linalg.norm(g - w) / max(np.linalg.norm(w), 1e-300))


def f32_tolerance(k: int) -> float:
    """The float32 bound on the relative gradient error after K inner steps (module docstring)."""
    return 1e-4 * math.sqrt(k)


def time_chunks(
    run_chunk: Callable[[int, int], None], steps: int, repeats: int, budget_s: float = 0.0
) -> dict[str, Any]:
    """``run_chunk(first_step, count)``: a warm-up chunk (``warmup_s``; less the steps it ran at the
    measured pace: ``compile_s``), then
    ``repeats`` timed chunks of ``steps``; ms per step: the median.

    ``budget_s`` > 0 (stacks without compilation, whose chunk size changes nothing): the
    warm-up is 5 steps and a timed chunk holds ``steps`` or as many as fill ``budget_s``
    by the warm-up's pace, at least 10 — so that a 100 ms step does not take minutes.
    """
    warm = min(steps, 5) if budget_s else steps
    start = time.perf_counter()
    run_chunk(0, warm)
    warmup_s = time.perf_counter() - start
    count = steps
    if budget_s:
        count = int(min(steps, max(10, budget_s / max(warmup_s / warm, 1e-9))))
    runs = []
    for r in range(repeats):
        start = time.perf_counter()
        run_chunk(warm + r * count, count)
        runs.append((time.perf_counter() - start) / count * 1e3)
    ms = statistics.median(runs)
    return {"ms": ms, "ms_all": runs, **_warmup(warmup_s, warm * ms), "steps": count}


def time_calls(fn: Callable[[], None], repeats: int) -> dict[str, Any]:
    """A warm-up call (``warmup_s``, ``compile_s`` as in ``time_chunks``), then the median ms of
    ``repeats`` calls."""
    start = time.perf_counter()
    fn()
    warmup_s = time.perf_counter() - start
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - start) * 1e3)
    ms = statistics.median(runs)
    return {"ms": ms, "ms_all": runs, **_warmup(warmup_s, ms)}


def _warmup(warmup_s: float, run_ms: float) -> dict[str, float]:
    """The warm-up's seconds, and its part beyond the work it did at the measured pace:
    tracing and compilation (``compile_s``)."""
    return {"warmup_s": warmup_s, "compile_s": max(0.0, warmup_s - run_ms / 1e3)}


# --- reference: ml3tf -------------------------------------------------------------------------
def ml3tf_reference(ks: Sequence[int], path: str) -> dict[str, Any]:
    """Write the inputs and ml3tf's meta-gradients (float32, float64) of every K to ``path`` (npz);
    returns ml3tf's own float32-vs-float64 errors."""
    import keras
    import tensorflow as tf

    from ml3tf import tasks
    from ml3tf.meta_trainer import MetaTrainer
    from ml3tf.task import TaskBatch

    arrays: dict[str, np.ndarray] = {}
    own: dict[str, float] = {}

    def put(prefix: str, values: Sequence[Any]) -> None:
        for i, a in enumerate(values):
            arrays[f"{prefix}/{i}"] = np.asarray(a)

    def f64(batch: TaskBatch) -> TaskBatch:
        def cast(d: dict) -> dict:
            return {k: np.asarray(v, np.float64) for k, v in d.items()}

        return TaskBatch(cast(batch.support), cast(batch.query), cast(batch.extra))

    paper = tasks.get("sine")
    maml_task = tasks.get("sine", **maml_task_options())
    cases = {}
    for k in ks:
        cases[f"ml3/k{k}"] = (paper, paper.default_config().replace(inner_steps=k))
        cfg = maml_task.default_config().replace(
            method="maml",
            inner_steps=k,
            inner_lr=MAML["inner_lr"],
            init_lr=MAML["init_lr"],
            meta_batch_size=MAML["meta_batch_size"],
        )
        cases[f"maml/k{k}"] = (maml_task, cfg)
    inputs = {}
    for name, (task, cfg) in cases.items():
        trainer = MetaTrainer(task, cfg)
        batch = task.sample(cfg.seed, 0, cfg.meta_batch_size)
        if cfg.learns_init:
            theta0 = [v.numpy() for v in trainer.learner.model.trainable_variables]
            params0 = None
            put(f"{name}/theta0", theta0)
        else:
            params0 = [[p.numpy() for p in ps] for ps in trainer.initial_params(trainer.init_seeds(0))]
            for b, ps in enumerate(params0):
                put(f"{name}/theta0_{b}", ps)
            put(f"{name}/phi", trainer.meta_loss.get_weights())
        for key in ("x", "y"):
            arrays[f"{name}/support_{key}"] = batch.support[key]
            arrays[f"{name}/query_{key}"] = batch.query[key]
        seeds = trainer.init_seeds(0)
        given = None if params0 is None else [[tf.constant(p) for p in ps] for ps in params0]
        grads, _ = trainer.meta_gradient(batch, seeds if given is None else given)
        put(f"{name}/grad32", [g.numpy() for g in grads])
        inputs[name] = (task, cfg, trainer, batch, params0)
    old = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        for name, (task, cfg, trainer32, batch, params0) in inputs.items():
            trainer = MetaTrainer(task, cfg)
            if cfg.learns_init:
                for v, w in zip(
                    trainer.learner.model.trainable_variables,
                    trainer32.learner.model.trainable_variables,
                    strict=True,
                ):
                    v.assign(np.asarray(w.numpy(), np.float64))
                p0: Any = trainer.init_seeds(0)
            else:
                trainer.meta_loss.set_weights(
                    [w.astype(np.float64) for w in trainer32.meta_loss.get_weights()]
                )
                p0 = [[tf.constant(np.asarray(p, np.float64)) for p in ps] for ps in params0]
            grads, _ = trainer.meta_gradient(f64(batch), p0)
            g64 = [g.numpy() for g in grads]
            assert g64[0].dtype == np.float64, g64[0].dtype
            put(f"{name}/grad64", g64)
            n = len(g64)
            own[name] = rel_err([arrays[f"{name}/grad32/{i}"] for i in range(n)], g64)
    finally:
        keras.config.set_floatx(old[0])
        keras.config.set_dtype_policy(old[1])
    np.savez(path, **arrays)
    return own


def load_case(ref: dict[str, np.ndarray], name: str) -> dict[str, Any]:
    """One case of the reference file: lists of arrays in Keras layout (kernels ``(in, out)``)."""

    def seq(prefix: str) -> list[np.ndarray]:
        out, i = [], 0
        while f"{prefix}/{i}" in ref:
            out.append(ref[f"{prefix}/{i}"])
            i += 1
        return out

    case = {k: ref[f"{name}/{k}"] for k in ("support_x", "support_y", "query_x", "query_y")}
    case["grad32"], case["grad64"] = seq(f"{name}/grad32"), seq(f"{name}/grad64")
    if name.startswith("ml3"):
        case["phi"] = seq(f"{name}/phi")
        b = case["support_x"].shape[0]
        case["theta0"] = [seq(f"{name}/theta0_{i}") for i in range(b)]
    else:
        case["theta0"] = seq(f"{name}/theta0")
    return case


def ml3tf_worker(ks: Sequence[int], steps: int, repeats: int, ref_path: str, threads: int) -> dict:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    from ml3tf import tasks
    from ml3tf.meta_trainer import MetaTrainer

    own = ml3tf_reference(ks, ref_path)
    out: dict[str, Any] = {"f32_vs_f64": own}
    paper = tasks.get("sine")
    maml_task = tasks.get("sine", **maml_task_options())
    for mode, jit in (("ml3tf_function", False), ("ml3tf_xla", True)):
        row: dict[str, Any] = {"ml3": {}, "maml": {}}
        for k in ks:
            # steady state: under XLA the unrolled inner loop (what "auto" picks only up to K × B = 10)
            loop = {"unroll_loop": "python"} if jit else {}
            cfg = paper.default_config().replace(inner_steps=k, jit_compile=jit, **loop)
            trainer = MetaTrainer(paper, cfg)
            row["ml3"][str(k)] = time_chunks(
                lambda first, n, t=trainer: t.run_steps(first, n), steps, repeats
            )
            mcfg = maml_task.default_config().replace(
                method="maml",
                inner_steps=k,
                inner_lr=MAML["inner_lr"],
                init_lr=MAML["init_lr"],
                meta_batch_size=MAML["meta_batch_size"],
                jit_compile=jit,
                **loop,
            )
            mtrainer = MetaTrainer(maml_task, mcfg)
            row["maml"][str(k)] = time_chunks(
                lambda first, n, t=mtrainer: t.run_steps(first, n), steps, repeats
            )
        out[mode] = row
    row = {"ml3": {}}
    for k in ks:
        cfg = paper.default_config().replace(inner_steps=k, jit_compile=True, unroll_loop="python")
        trainer = MetaTrainer(paper, cfg)

        def per_call(first: int, n: int, t: MetaTrainer = trainer) -> None:
            for s in range(first, first + n):
                t.step(paper.sample(t.config.seed, s, t.config.meta_batch_size), s)

        row["ml3"][str(k)] = time_chunks(per_call, steps, repeats)
    out["ml3tf_step_xla"] = row
    # Evaluation: one seed, both arms (the baseline cache is cleared so that MSE runs too).
    cfg = paper.default_config()
    trainer = MetaTrainer(paper, cfg)

    def evaluate() -> None:
        paper.__dict__.get("_baseline_curves", {}).clear()
        paper.evaluate([trainer.meta_loss], cfg, [SEED])

    ev = time_calls(evaluate, repeats=max(3, repeats))
    for mode in ("ml3tf_function", "ml3tf_xla", "ml3tf_step_xla"):
        out[mode]["eval"] = ev
    return out


# --- PyTorch ----------------------------------------------------------------------------------
def _torch_setup(threads: int) -> Any:
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already set (only once per process)
        pass
    return torch


def torch_mlp(torch: Any, sizes: Sequence[int], last: Any = None, bias: bool = True) -> Any:
    """``nn.Sequential`` of Linear/ReLU (Linear's weight is the transposed Keras kernel)."""
    nn = torch.nn
    layers: list = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b, bias=bias))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    if last is not None:
        layers.append(last)
    return nn.Sequential(*layers)


def keras_to_torch(torch: Any, module: Any, weights: Sequence[np.ndarray], dtype: Any) -> dict:
    """Keras-ordered weights (kernel ``(in, out)``, bias) as ``{name: tensor}`` of ``module``."""
    names = [n for n, _ in module.named_parameters()]
    out = {}
    for n, w in zip(names, weights, strict=True):
        t = torch.tensor(np.asarray(w), dtype=dtype)
        out[n] = t.T.contiguous() if t.ndim == 2 else t
    return out


def torch_to_keras(tensors: Sequence[Any]) -> list[np.ndarray]:
    out = []
    for t in tensors:
        a = t.detach().cpu().numpy()
        out.append(a.T if a.ndim == 2 else a)
    return out


class TorchStacks:
    """The torch.func and higher versions of the ML3 and MAML steps and of the evaluation."""

    def __init__(self, torch: Any, dtype: Any) -> None:
        self.torch, self.dtype = torch, dtype
        nn = torch.nn
        self.learner = torch_mlp(torch, layer_sizes(PAPER["learner_hidden"])).to(dtype)
        self.maml_learner = torch_mlp(torch, layer_sizes(MAML["learner_hidden"])).to(dtype)
        self.meta_loss = torch_mlp(torch, [2, *PAPER["meta_loss_hidden"], 1], nn.Softplus(), bias=False)
        self.meta_loss = self.meta_loss.to(dtype)
        self.gen = torch.Generator().manual_seed(SEED)

    # -- θ₀ ----------------------------------------------------------------------------------
    def fresh(self, module: Any) -> dict:
        """Xavier-uniform weights, zero biases (``{name: tensor}``), from this stack's generator."""
        torch = self.torch
        out = {}
        for n, p in module.named_parameters():
            if p.ndim == 2:
                lim = glorot_limit(p.shape[1], p.shape[0])
                out[n] = (torch.rand(p.shape, generator=self.gen, dtype=self.dtype) * 2 - 1) * lim
            else:
                out[n] = torch.zeros(p.shape, dtype=self.dtype)
        return out

    def reset(self, module: Any) -> None:
        torch = self.torch
        with torch.no_grad():
            for n, t in self.fresh(module).items():
                module.get_parameter(n).copy_(t)

    def tensors(self, *arrays: np.ndarray) -> list:
        return [self.torch.as_tensor(a, dtype=self.dtype) for a in arrays]

    # -- torch.func ---------------------------------------------------------------------------
    def func_ml3_objective(self, k: int) -> Callable:
        from torch.func import functional_call, grad

        torch, lr = self.torch, PAPER["inner_lr"]
        learner, mloss = self.learner, self.meta_loss

        def inner(theta: dict, phi: dict, x: Any, y: Any) -> Any:
            pred = functional_call(learner, theta, (x,))
            return functional_call(mloss, phi, (torch.cat([pred, y], -1),)).mean()

        inner_grad = grad(inner)

        def objective(phi: dict, theta0s: list, xs: Any, ys: Any, xq: Any, yq: Any) -> Any:
            total = 0.0
            for b, theta in enumerate(theta0s):
                for _ in range(k):
                    g = inner_grad(theta, phi, xs[b], ys[b])
                    theta = {n: theta[n] - lr * g[n] for n in theta}
                total = total + ((functional_call(learner, theta, (xq[b],)) - yq[b]) ** 2).mean()
            return total / len(theta0s)

        return objective

    def func_maml_objective(self, k: int) -> Callable:
        from torch.func import functional_call, grad, vmap

        lr, learner = MAML["inner_lr"], self.maml_learner

        def mse(theta: dict, x: Any, y: Any) -> Any:
            return ((functional_call(learner, theta, (x,)) - y) ** 2).mean()

        inner_grad = grad(mse)

        def one(theta: dict, xs: Any, ys: Any, xq: Any, yq: Any) -> Any:
            for _ in range(k):
                g = inner_grad(theta, xs, ys)
                theta = {n: theta[n] - lr * g[n] for n in theta}
            return mse(theta, xq, yq)

        def objective(theta0: dict, xs: Any, ys: Any, xq: Any, yq: Any) -> Any:
            return vmap(one, in_dims=(None, 0, 0, 0, 0))(theta0, xs, ys, xq, yq).mean()

        return objective

    def func_ml3_grad(self, case: dict, k: int) -> list[np.ndarray]:
        from torch.func import grad

        phi = keras_to_torch(self.torch, self.meta_loss, case["phi"], self.dtype)
        theta0s = [keras_to_torch(self.torch, self.learner, t, self.dtype) for t in case["theta0"]]
        data = self.tensors(case["support_x"], case["support_y"], case["query_x"], case["query_y"])
        g = grad(self.func_ml3_objective(k))(phi, theta0s, *data)
        return torch_to_keras([g[n] for n in phi])

    def func_maml_grad(self, case: dict, k: int) -> list[np.ndarray]:
        from torch.func import grad

        theta0 = keras_to_torch(self.torch, self.maml_learner, case["theta0"], self.dtype)
        data = self.tensors(case["support_x"], case["support_y"], case["query_x"], case["query_y"])
        g = grad(self.func_maml_objective(k))(theta0, *data)
        return torch_to_keras([g[n] for n in theta0])

    def func_ml3_chunk(self, k: int) -> Callable[[int, int], None]:
        from torch.func import grad

        torch = self.torch
        phi = {n: p.detach().clone() for n, p in self.meta_loss.named_parameters()}
        opt = torch.optim.Adam(list(phi.values()), lr=PAPER["meta_lr"], eps=1e-7, foreach=True)
        meta_grad = grad(self.func_ml3_objective(k))
        b = PAPER["meta_batch_size"]

        def run(first: int, count: int) -> None:
            for _ in range(first, first + count):
                x, y = self.tensors(*sample_paper(SEED, b))
                theta0s = [self.fresh(self.learner) for _ in range(b)]
                g = meta_grad(phi, theta0s, x, y, x, y)
                for n, p in phi.items():
                    p.grad = g[n]
                opt.step()

        return run

    def func_maml_chunk(self, k: int) -> Callable[[int, int], None]:
        from torch.func import grad

        torch = self.torch
        theta0 = self.fresh(self.maml_learner)
        opt = torch.optim.Adam(list(theta0.values()), lr=MAML["init_lr"], eps=1e-7, foreach=True)
        meta_grad = grad(self.func_maml_objective(k))

        def run(first: int, count: int) -> None:
            for s in range(first, first + count):
                data = self.tensors(*sample_few_shot(SEED, s, MAML["meta_batch_size"]))
                g = meta_grad(theta0, *data)
                for n, p in theta0.items():
                    p.grad = g[n]
                opt.step()

        return run

    def func_eval(self, phi_weights: Sequence[np.ndarray]) -> Callable[[], np.ndarray]:
        """Both arms of ``task.evaluate`` for one seed, the 11 learners of an arm vmapped."""
        from torch.func import functional_call, grad, vmap

        torch, learner, mloss = self.torch, self.learner, self.meta_loss
        phi = keras_to_torch(torch, mloss, phi_weights, self.dtype)
        lr, steps = PAPER["inner_lr"], PAPER["eval_steps"]

        def mse(theta: dict, x: Any, y: Any) -> Any:
            return ((functional_call(learner, theta, (x,)) - y) ** 2).mean()

        def learned(theta: dict, x: Any, y: Any) -> Any:
            pred = functional_call(learner, theta, (x,))
            return functional_call(mloss, phi, (torch.cat([pred, y], -1),)).mean()

        metric = vmap(mse)
        updates = {"learned": vmap(grad(learned)), "mse": vmap(grad(mse))}

        def run() -> np.ndarray:
            x, y = self.tensors(*eval_tasks(SEED))
            curves = []
            for update in updates.values():
                fresh = [self.fresh(learner) for _ in range(len(x))]
                theta = {n: torch.stack([f[n] for f in fresh]) for n in fresh[0]}
                curve = []
                for _ in range(steps):
                    curve.append(metric(theta, x, y))
                    g = update(theta, x, y)
                    theta = {n: theta[n] - lr * g[n] for n in theta}
                curve.append(metric(theta, x, y))
                curves.append(torch.stack(curve, 1).numpy())
            return np.stack(curves)

        return run

    # -- higher (the authors' stack) -----------------------------------------------------------
    def higher_ml3_grad(self, case: dict, k: int) -> list[np.ndarray]:
        self.load(self.meta_loss, case["phi"])
        self.meta_loss.zero_grad()
        data = self.tensors(case["support_x"], case["support_y"], case["query_x"], case["query_y"])
        self._higher_ml3(k, data, case["theta0"])
        return torch_to_keras([p.grad for p in self.meta_loss.parameters()])

    def higher_maml_grad(self, case: dict, k: int) -> list[np.ndarray]:
        self.load(self.maml_learner, case["theta0"])
        self.maml_learner.zero_grad()
        data = self.tensors(case["support_x"], case["support_y"], case["query_x"], case["query_y"])
        self._higher_maml(k, data)
        return torch_to_keras([p.grad for p in self.maml_learner.parameters()])

    def load(self, module: Any, weights: Sequence[np.ndarray]) -> None:
        torch = self.torch
        with torch.no_grad():
            for n, t in keras_to_torch(torch, module, weights, self.dtype).items():
                module.get_parameter(n).copy_(t)

    def _higher_ml3(self, k: int, data: list, theta0s: list | None = None) -> None:
        """ML3's meta-gradient into ``meta_loss``'s ``.grad`` (θ₀ from ``theta0s`` or fresh)."""
        import higher

        torch, learner = self.torch, self.learner
        xs, ys, xq, yq = data
        inner_opt = torch.optim.SGD(learner.parameters(), lr=PAPER["inner_lr"])
        b = len(xs)
        for i in range(b):
            if theta0s is None:
                self.reset(learner)
            else:
                self.load(learner, theta0s[i])
            with higher.innerloop_ctx(learner, inner_opt, copy_initial_weights=False) as (fmodel, diffopt):
                for _ in range(k):
                    pred = fmodel(xs[i])
                    diffopt.step(self.meta_loss(torch.cat([pred, ys[i]], -1)).mean())
                (((fmodel(xq[i]) - yq[i]) ** 2).mean() / b).backward()

    def _higher_maml(self, k: int, data: list) -> None:
        import higher

        torch, learner = self.torch, self.maml_learner
        xs, ys, xq, yq = data
        inner_opt = torch.optim.SGD(learner.parameters(), lr=MAML["inner_lr"])
        b = len(xs)
        for i in range(b):
            with higher.innerloop_ctx(learner, inner_opt, copy_initial_weights=False) as (fmodel, diffopt):
                for _ in range(k):
                    diffopt.step(((fmodel(xs[i]) - ys[i]) ** 2).mean())
                (((fmodel(xq[i]) - yq[i]) ** 2).mean() / b).backward()

    def higher_ml3_chunk(self, k: int) -> Callable[[int, int], None]:
        torch = self.torch
        opt = torch.optim.Adam(self.meta_loss.parameters(), lr=PAPER["meta_lr"], eps=1e-7)

        def run(first: int, count: int) -> None:
            for _ in range(first, first + count):
                x, y = self.tensors(*sample_paper(SEED, PAPER["meta_batch_size"]))
                opt.zero_grad()
                self._higher_ml3(k, [x, y, x, y])
                opt.step()

        return run

    def higher_maml_chunk(self, k: int) -> Callable[[int, int], None]:
        torch = self.torch
        self.reset(self.maml_learner)
        opt = torch.optim.Adam(self.maml_learner.parameters(), lr=MAML["init_lr"], eps=1e-7)

        def run(first: int, count: int) -> None:
            for s in range(first, first + count):
                data = self.tensors(*sample_few_shot(SEED, s, MAML["meta_batch_size"]))
                opt.zero_grad()
                self._higher_maml(k, data)
                opt.step()

        return run

    def module_eval(self, phi_weights: Sequence[np.ndarray]) -> Callable[[], np.ndarray]:
        """The authors' evaluation style: each learner an ``nn.Module`` with ``torch.optim.SGD``."""
        torch = self.torch
        self.load(self.meta_loss, phi_weights)
        mloss = self.meta_loss
        for p in mloss.parameters():
            p.requires_grad_(False)
        learner = torch_mlp(torch, layer_sizes(PAPER["learner_hidden"])).to(self.dtype)
        opt = torch.optim.SGD(learner.parameters(), lr=PAPER["inner_lr"])
        losses = {
            "learned": lambda pred, y: mloss(torch.cat([pred, y], -1)).mean(),
            "mse": lambda pred, y: ((pred - y) ** 2).mean(),
        }

        def run() -> np.ndarray:
            x, y = self.tensors(*eval_tasks(SEED))
            curves = np.zeros((2, len(x), PAPER["eval_steps"] + 1))
            for a, loss in enumerate(losses.values()):
                for t in range(len(x)):
                    self.reset(learner)
                    for s in range(PAPER["eval_steps"]):
                        opt.zero_grad()
                        pred = learner(x[t])
                        curves[a, t, s] = float(((pred - y[t]) ** 2).mean())
                        loss(pred, y[t]).backward()
                        opt.step()
                    with torch.no_grad():
                        curves[a, t, -1] = float(((learner(x[t]) - y[t]) ** 2).mean())
            return curves

        return run


# --- JAX --------------------------------------------------------------------------------------
class JaxStacks:
    """Pure functions; a chunk of meta-steps is one ``jax.jit`` over ``lax.scan``."""

    def __init__(self, dtype: str) -> None:
        import jax
        import jax.numpy as jnp

        self.jax, self.jnp, self.dtype = jax, jnp, jnp.dtype(dtype)

    @staticmethod
    def mlp(jnp: Any, params: Sequence[Any], x: Any) -> Any:
        *hidden, w, b = params
        for i in range(0, len(hidden), 2):
            x = jnp.maximum(x @ hidden[i] + hidden[i + 1], 0)
        return x @ w + b

    def meta_loss(self, phi: Sequence[Any], feats: Any) -> Any:
        jnp = self.jnp
        h = feats
        for w in phi[:-1]:
            h = jnp.maximum(h @ w, 0)
        return self.jax.nn.softplus(h @ phi[-1])

    def fresh(self, key: Any, hidden: Sequence[int]) -> list:
        """Xavier-uniform kernels, zero biases, from ``key``."""
        jax, jnp = self.jax, self.jnp
        sizes = layer_sizes(hidden)
        out = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            lim = glorot_limit(a, b)
            out.append(jax.random.uniform(jax.random.fold_in(key, i), (a, b), self.dtype, -lim, lim))
            out.append(jnp.zeros((b,), self.dtype))
        return out

    def ml3_objective(self, k: int) -> Callable:
        jax, jnp, lr = self.jax, self.jnp, PAPER["inner_lr"]

        def inner(theta: list, phi: list, x: Any, y: Any) -> Any:
            pred = self.mlp(jnp, theta, x)
            return jnp.mean(self.meta_loss(phi, jnp.concatenate([pred, y], -1)))

        def one(phi: list, theta: list, xs: Any, ys: Any, xq: Any, yq: Any) -> Any:
            for _ in range(k):
                g = jax.grad(inner)(theta, phi, xs, ys)
                theta = [p - lr * gi for p, gi in zip(theta, g, strict=True)]
            return jnp.mean((self.mlp(jnp, theta, xq) - yq) ** 2)

        def objective(phi: list, theta0s: list, xs: Any, ys: Any, xq: Any, yq: Any) -> Any:
            return jnp.mean(jax.vmap(one, in_axes=(None, 0, 0, 0, 0, 0))(phi, theta0s, xs, ys, xq, yq))

        return objective

    def maml_objective(self, k: int) -> Callable:
        jax, jnp, lr = self.jax, self.jnp, MAML["inner_lr"]

        def mse(theta: list, x: Any, y: Any) -> Any:
            return jnp.mean((self.mlp(jnp, theta, x) - y) ** 2)

        def one(theta: list, xs: Any, ys: Any, xq: Any, yq: Any) -> Any:
            for _ in range(k):
                g = jax.grad(mse)(theta, xs, ys)
                theta = [p - lr * gi for p, gi in zip(theta, g, strict=True)]
            return mse(theta, xq, yq)

        def objective(theta0: list, xs: Any, ys: Any, xq: Any, yq: Any) -> Any:
            return jnp.mean(jax.vmap(one, in_axes=(None, 0, 0, 0, 0))(theta0, xs, ys, xq, yq))

        return objective

    def arrays(self, *xs: np.ndarray) -> list:
        return [self.jnp.asarray(np.asarray(x), self.dtype) for x in xs]

    def ml3_grad(self, case: dict, k: int) -> list[np.ndarray]:
        phi = self.arrays(*case["phi"])
        theta0s = [self.jnp.stack(p) for p in zip(*[self.arrays(*t) for t in case["theta0"]], strict=True)]
        data = self.arrays(case["support_x"], case["support_y"], case["query_x"], case["query_y"])
        g = self.jax.jit(self.jax.grad(self.ml3_objective(k)))(phi, theta0s, *data)
        return [np.asarray(a) for a in g]

    def maml_grad(self, case: dict, k: int) -> list[np.ndarray]:
        theta0 = self.arrays(*case["theta0"])
        data = self.arrays(case["support_x"], case["support_y"], case["query_x"], case["query_y"])
        g = self.jax.jit(self.jax.grad(self.maml_objective(k)))(theta0, *data)
        return [np.asarray(a) for a in g]

    def _chunk(
        self, objective: Callable, lr: float, init: list, make_args: Callable, sample: Callable
    ) -> Callable:
        """``run(first, count)``: host-sampled data for the chunk, then one jitted ``lax.scan``."""
        jax, jnp = self.jax, self.jnp
        grad = jax.grad(objective)

        def step(carry: tuple, inp: tuple) -> tuple:
            params, m, v, t = carry
            s, *data = inp
            g = grad(params, *make_args(s), *data)
            params, m, v, t = keras_adam(jnp, params, g, m, v, t, lr)
            return (params, m, v, t), None

        @jax.jit
        def chunk(carry: tuple, steps: Any, *data: Any) -> tuple:
            return jax.lax.scan(step, carry, (steps, *data))[0]

        zeros = [jnp.zeros_like(p) for p in init]
        state = {"carry": (init, zeros, list(zeros), jnp.zeros((), self.dtype))}

        def run(first: int, count: int) -> None:
            parts = [sample(s) for s in range(first, first + count)]
            data = [np.stack(col) for col in zip(*parts, strict=True)]
            steps = jnp.arange(first, first + count)
            state["carry"] = chunk(state["carry"], steps, *self.arrays(*data))
            jax.block_until_ready(state["carry"])

        return run

    def ml3_chunk(self, k: int) -> Callable[[int, int], None]:
        jax = self.jax
        key = jax.random.key(SEED)
        b = PAPER["meta_batch_size"]
        phi = self.fresh_phi(jax.random.fold_in(key, 1))

        def theta0s(s: Any) -> tuple:
            keys = jax.random.split(jax.random.fold_in(key, s), b)
            return (jax.vmap(lambda kk: self.fresh(kk, PAPER["learner_hidden"]))(keys),)

        def sample(s: int) -> tuple:
            x, y = sample_paper(SEED, b)
            return x, y, x, y

        return self._chunk(self.ml3_objective(k), PAPER["meta_lr"], phi, theta0s, sample)

    def fresh_phi(self, key: Any) -> list:
        jax = self.jax
        sizes = [2, *PAPER["meta_loss_hidden"], 1]
        return [
            jax.random.uniform(
                jax.random.fold_in(key, i), (a, b), self.dtype, -glorot_limit(a, b), glorot_limit(a, b)
            )
            for i, (a, b) in enumerate(itertools.pairwise(sizes))
        ]

    def maml_chunk(self, k: int) -> Callable[[int, int], None]:
        theta0 = self.fresh(self.jax.random.key(SEED), MAML["learner_hidden"])
        return self._chunk(
            self.maml_objective(k),
            MAML["init_lr"],
            theta0,
            lambda s: (),
            lambda s: sample_few_shot(SEED, s, MAML["meta_batch_size"]),
        )

    def eval_fn(self, phi_weights: Sequence[np.ndarray]) -> Callable[[], np.ndarray]:
        """Both arms of ``task.evaluate`` for one seed in one ``jax.jit`` (vmap over the learners,
        ``lax.scan`` over the 100 steps)."""
        jax, jnp = self.jax, self.jnp
        lr, steps = PAPER["inner_lr"], PAPER["eval_steps"]

        def mse(theta: list, x: Any, y: Any) -> Any:
            return jnp.mean((self.mlp(jnp, theta, x) - y) ** 2)

        def learned(phi: list) -> Callable:
            def loss(theta: list, x: Any, y: Any) -> Any:
                pred = self.mlp(jnp, theta, x)
                return jnp.mean(self.meta_loss(phi, jnp.concatenate([pred, y], -1)))

            return loss

        def train(loss: Callable, theta: list, x: Any, y: Any) -> Any:
            def body(th: list, _: Any) -> tuple:
                g = jax.grad(loss)(th, x, y)
                return [p - lr * gi for p, gi in zip(th, g, strict=True)], mse(th, x, y)

            theta, curve = jax.lax.scan(body, theta, None, length=steps)
            return jnp.concatenate([curve, mse(theta, x, y)[None]])

        @jax.jit
        def both(phi: list, key: Any, x: Any, y: Any) -> Any:
            out = []
            for a, loss in enumerate((learned(phi), mse)):
                keys = jax.random.split(jax.random.fold_in(key, a), x.shape[0])
                theta0 = jax.vmap(lambda kk: self.fresh(kk, PAPER["learner_hidden"]))(keys)
                out.append(jax.vmap(lambda th, xx, yy, loss=loss: train(loss, th, xx, yy))(theta0, x, y))
            return jnp.stack(out)

        phi = self.arrays(*phi_weights)
        key = jax.random.key(SEED + 1)

        def run() -> np.ndarray:
            x, y = eval_tasks(SEED)
            return np.asarray(both(phi, key, *self.arrays(x, y)))

        return run


# --- the peer workers -------------------------------------------------------------------------
def peer_check(stack: str, ref_path: str, ks: Sequence[int], dtype: str) -> dict[str, Any]:
    """Rel. errors of the peer's ML3 (∇φ) and MAML (∇θ₀) gradients against ml3tf's, one dtype."""
    ref = dict(np.load(ref_path))
    if stack == "jax":
        impl: Any = JaxStacks(dtype)
        ml3, maml = impl.ml3_grad, impl.maml_grad
    else:
        torch = _torch_setup(int(os.environ.get("OMP_NUM_THREADS", "1")))
        impl = TorchStacks(torch, getattr(torch, dtype))
        if stack == "torch_func":
            ml3, maml = impl.func_ml3_grad, impl.func_maml_grad
        else:
            ml3, maml = impl.higher_ml3_grad, impl.higher_maml_grad
    errors, passed = {}, True
    for method, fn in (("ml3", ml3), ("maml", maml)):
        for k in ks:
            case = load_case(ref, f"{method}/k{k}")
            got = fn(case, k)
            want = case["grad64" if dtype == "float64" else "grad32"]
            assert str(got[0].dtype) == dtype, (got[0].dtype, dtype)
            err = rel_err(got, want)
            tol = F64_TOL if dtype == "float64" else f32_tolerance(k)
            errors[f"{method}/k{k}"] = {"rel_err": err, "tol": tol, "ok": bool(err <= tol)}
            passed &= err <= tol
    return {
        "errors": errors,
        "passed": bool(passed),
        "max_rel_err": max(e["rel_err"] for e in errors.values()),
    }


def peer_time(
    stack: str, ks: Sequence[int], steps: int, repeats: int, phi: Sequence[np.ndarray], budget_s: float
) -> dict:
    row: dict[str, Any] = {"ml3": {}, "maml": {}}
    if stack == "jax":
        impl: Any = JaxStacks("float32")
        chunks, evaluation = (impl.ml3_chunk, impl.maml_chunk), impl.eval_fn
    else:
        torch = _torch_setup(int(os.environ.get("OMP_NUM_THREADS", "1")))
        impl = TorchStacks(torch, torch.float32)
        if stack == "torch_func":
            chunks, evaluation = (impl.func_ml3_chunk, impl.func_maml_chunk), impl.func_eval
        else:
            chunks, evaluation = (impl.higher_ml3_chunk, impl.higher_maml_chunk), impl.module_eval
    for method, make in zip(("ml3", "maml"), chunks, strict=True):
        for k in ks:
            row[method][str(k)] = time_chunks(make(k), steps, repeats, 0.0 if stack == "jax" else budget_s)
    # Built after the steps: the nn.Module evaluation loads φ into the loss network and freezes it.
    row["eval"] = time_calls(evaluation(phi), repeats=max(3, repeats))
    return row


def worker(args: argparse.Namespace) -> None:
    ks, result = args.ks, {}
    if args.worker == "ml3tf":
        result = ml3tf_worker(ks, args.steps, args.repeats, args.ref, args.threads)
    else:
        result["check_" + args.dtype] = check = peer_check(args.worker, args.ref, ks, args.dtype)
        if not args.check_only and check["passed"]:
            ref = dict(np.load(args.ref))
            phi = load_case(ref, f"ml3/k{ks[0]}")["phi"]
            result["timing"] = peer_time(args.worker, ks, args.steps, args.repeats, phi, args.budget)
    with open(args.result, "w") as f:
        json.dump(result, f)


# --- the driver -------------------------------------------------------------------------------
def versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in ("tensorflow-cpu", "tensorflow", "keras", "torch", "higher", "jax", "jaxlib", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine(cpus: Sequence[int]) -> dict[str, Any]:
    from bench.sine import cpu_name  # TensorFlow-free: this process imports no framework

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "pinned_cpus": list(cpus),
        "versions": versions(),
    }


def importable(module: str) -> bool:
    """Whether ``module`` can be found, without importing it (``sys.modules[name] = None`` blocks it)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_modules(stacks: Sequence[str]) -> dict[str, list[str]]:
    """stack -> the modules it needs that cannot be imported here."""
    out = {s: [m for m in PEERS[s] if not importable(m)] for s in stacks}
    return {s: ms for s, ms in out.items() if ms}


def worker_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    n = str(threads)
    env.update(OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
    if threads == 1:
        env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    return env


def run_worker(stack: str, args: argparse.Namespace, ref: str, tmp: str, extra: Sequence[str] = ()) -> dict:
    out = os.path.join(tmp, f"{stack}{'_'.join(extra)}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", stack, "--ref", ref, "--result", out]
    cmd += ["--threads", str(args.threads), "--cpus", ",".join(map(str, args.cpus))]
    cmd += ["--steps", str(args.steps), "--repeats", str(args.repeats), "--budget", str(args.budget)]
    cmd += ["--ks", *map(str, args.ks), *extra]
    env = worker_env(args.threads)
    if "float64" in extra and stack == "jax":
        env["JAX_ENABLE_X64"] = "1"
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        return {"error": f"worker exited {proc.returncode}", "stderr_tail": tail}
    with open(out) as f:
        return json.load(f)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 10 steps per chunk, one repeat, K=1 5")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "peers.json"))
    ap.add_argument("--repeats", type=int, default=3, help="timed chunks per measurement (median)")
    ap.add_argument("--steps", type=int, default=200, help="meta-steps per timed chunk")
    ap.add_argument(
        "--budget", type=float, default=3.0, help="seconds a timed torch chunk may fill (fewer steps)"
    )
    ap.add_argument("--threads", type=int, default=0, help="CPUs/threads for every stack (0: all usable)")
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 5, 20], help="inner steps K")
    ap.add_argument("--skip-missing", action="store_true", help="run the stacks that are installed")
    ap.add_argument("--stacks", nargs="+", default=list(PEERS), choices=list(PEERS), help="peers to run")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--ref", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--cpus", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    ap.add_argument("--check-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.steps = 1, 10
        args.ks = [k for k in args.ks if k <= 5] or [1]
    usable = sorted(os.sched_getaffinity(0))
    if args.cpus:
        args.cpus = [int(c) for c in args.cpus.split(",")]
    else:
        args.threads = args.threads or len(usable)
        if not 1 <= args.threads <= len(usable):
            ap.error(f"--threads must be in 1 … {len(usable)}")
        args.cpus = usable[: args.threads]
    return args


def _sci(x: float | None) -> str:
    return "—" if x is None else f"{x:.1e}"


def table(result: dict) -> str:
    ks = result["ks"]
    rows = result["stacks"]
    head = " ".join(f"{'K=' + str(k):>8}" for k in ks)
    lines = [f"{'stack':<30} {head} {'eval':>9} {'rel.err f32':>12} {'f64':>9}", "ML3 ms/meta-step"]

    def fmt(x: float | None, w: int = 8, p: int = 2) -> str:
        return f"{x:>{w}.{p}f}" if x is not None else f"{'—':>{w}}"

    for method in ("ml3", "maml"):
        if method == "maml":
            lines.append("MAML ms/meta-step (B=5, 10-shot)")
        for name, r in rows.items():
            t = r.get("timing", {}).get(method)
            if t is None:
                if method == "ml3" or name != "ml3tf_step_xla":
                    lines.append(f"{LABELS[name]:<30} not timed: {r.get('status', '')}")
                continue
            cells = " ".join(fmt(t.get(str(k), {}).get("ms")) for k in ks)
            ev = r["timing"].get("eval", {}).get("ms") if method == "ml3" else None
            e32, e64 = r.get("max_rel_err_f32", {}).get(method), r.get("max_rel_err_f64", {}).get(method)
            lines.append(f"{LABELS[name]:<30} {cells} {fmt(ev, 9, 1)} {_sci(e32):>12} {_sci(e64):>9}")
    lines.append("ratio: ms of the peer / ms of ml3tf's best compiled run_steps (>1: ml3tf faster)")
    for method in ("ml3", "maml"):
        for name, ratios in result["ratio_vs_ml3tf_best"].get(method, {}).items():
            cells = " ".join(fmt(ratios.get(str(k))) for k in ks)
            lines.append(f"  {method:<5}{LABELS[name]:<25} {cells}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.worker:
        os.sched_setaffinity(0, args.cpus)
        worker(args)
        return 0
    missing = missing_modules(args.stacks)
    if missing and not args.skip_missing:
        names = sorted({m for ms in missing.values() for m in ms})
        print(f"bench/peers.py: missing {', '.join(names)}; install with: {INSTALL_HINT}", file=sys.stderr)
        return 2
    stacks = [s for s in args.stacks if s not in missing]
    result: dict[str, Any] = {
        "benchmark": "peers",
        "command": " ".join(["python", "bench/peers.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(args.cpus),
        "threads": args.threads,
        "ks": args.ks,
        "steps_per_chunk": args.steps,
        "repeats": args.repeats,
        "paper": PAPER,
        "maml": MAML,
        "f32_tolerance": {str(k): f32_tolerance(k) for k in args.ks},
        "f64_tolerance": F64_TOL,
        "skipped_missing": missing,
        "stacks": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        ref = os.path.join(tmp, "ref.npz")
        print(f"ml3tf (reference gradients, then timing) on CPUs {args.cpus} …", flush=True)
        own = run_worker("ml3tf", args, ref, tmp)
        if "error" in own:
            print("\n".join(own["stderr_tail"]), file=sys.stderr)
            print(f"bench/peers.py: the ml3tf worker failed ({own['error']})", file=sys.stderr)
            return 1
        f32 = own.pop("f32_vs_f64")
        result["ml3tf_f32_vs_f64"] = f32
        for name in ("ml3tf_function", "ml3tf_xla", "ml3tf_step_xla"):
            result["stacks"][name] = {"status": "reference", "timing": own[name]}
        for stack in stacks:
            print(f"{stack}: float64 check …", flush=True)
            c64 = run_worker(stack, args, ref, tmp, ["--dtype", "float64", "--check-only"])
            print(f"{stack}: float32 check and timing …", flush=True)
            r = run_worker(stack, args, ref, tmp)
            row: dict[str, Any] = {}
            for part in (c64, r):
                if "error" in part:
                    row["status"] = f"failed: {part['error']}: {' | '.join(part['stderr_tail'][-3:])}"
            row["check_float64"] = c64.get("check_float64")
            row["check_float32"] = r.get("check_float32")
            for dt, key in (("float32", "max_rel_err_f32"), ("float64", "max_rel_err_f64")):
                chk = row[f"check_{dt}"]
                if chk:
                    row[key] = {
                        m: max(e["rel_err"] for n, e in chk["errors"].items() if n.startswith(m))
                        for m in ("ml3", "maml")
                    }
            ok = all(row[f"check_{d}"] and row[f"check_{d}"]["passed"] for d in ("float32", "float64"))
            if "timing" in r and ok:
                row["timing"] = r["timing"]
                row["status"] = "checked, timed"
            elif "status" not in row:
                row["status"] = "gradient check failed: not timed"
            result["stacks"][stack] = row
    own_err = {m: max(v for n, v in f32.items() if n.startswith(m)) for m in ("ml3", "maml")}
    for name in ("ml3tf_function", "ml3tf_xla", "ml3tf_step_xla"):
        result["stacks"][name]["max_rel_err_f32"] = own_err
        result["stacks"][name]["max_rel_err_f64"] = {"ml3": 0.0, "maml": 0.0}
    ratios: dict[str, dict] = {}
    for method in ("ml3", "maml"):
        best = {
            str(k): min(
                result["stacks"][n]["timing"][method][str(k)]["ms"] for n in ("ml3tf_function", "ml3tf_xla")
            )
            for k in args.ks
        }
        result.setdefault("ml3tf_best_ms", {})[method] = best
        for name, row in result["stacks"].items():
            t = row.get("timing", {}).get(method)
            if t is not None:
                ratios.setdefault(method, {})[name] = {
                    str(k): t[str(k)]["ms"] / best[str(k)] for k in args.ks
                }
    result["ratio_vs_ml3tf_best"] = ratios
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, allow_nan=False)
        f.write("\n")
    m = result["machine"]
    print(f"\nmachine: {m['cpu']}, pinned to CPUs {m['pinned_cpus']}, {args.threads} threads per stack")
    print(table(result))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
