"""Strategies for meta-training on several devices (``MetaTrainConfig.strategy``).

The meta-batch of B tasks is split across the R replicas (B/R tasks each); every
replica computes the meta-gradient of its tasks' mean objective, the per-replica
gradients are averaged (``strategy.reduce(MEAN)``) and one update is applied to
the mirrored φ:

    ∇_φ L = 1/R Σ_r ∇_φ L_r,     L_r = mean over replica r's B/R tasks

which equals the single-device meta-gradient of the whole meta-batch.

``multi_worker`` runs the same over several processes (one replica each, on CPU), usually
on several machines: every worker runs the same command with its own ``$TF_CONFIG``, samples
the same full meta-batch from the seed, takes its shard, and the gradients are all-reduced
over the network. A worker that dies makes the others fail with ``WorkerLostError`` instead of
waiting for it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from ml3tf.config import STRATEGIES

log = logging.getLogger("ml3tf")

#: Seconds a collective (the all-reduce of a meta-step) may wait for the other workers before it
#: fails (``$ML3TF_COLLECTIVE_TIMEOUT`` overrides it). It must exceed the longest gap between two
#: workers reaching the same meta-step: the first step waits for the slowest worker's tracing
#: (and XLA compilation). A dead worker is found sooner, by the coordination service's heartbeats.
COLLECTIVE_TIMEOUT_S = 600.0

_multi_worker: tf.distribute.Strategy | None = None


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The strategy called ``name``.

    * ``default``: the current (usually single-device) strategy;
    * ``mirrored``: ``MirroredStrategy`` over all GPUs, or over all logical CPU
      devices when there is no GPU (configure them with
      ``tf.config.set_logical_device_configuration`` before TensorFlow starts);
    * ``tpu``: ``TPUStrategy`` on the TPU named by ``$ML3TF_TPU`` (or Colab's
      ``$COLAB_TPU_ADDR``, or the local TPU); falls back to ``default`` with a logged
      warning when no TPU can be reached;
    * ``multi_worker``: ``MultiWorkerMirroredStrategy`` over the workers ``$TF_CONFIG`` names
      (``parse_tf_config``), one replica per worker; created once per process (later calls
      return the same strategy), and before TensorFlow runs any op — TensorFlow configures
      its collectives only at program start (the ``ml3tf`` command creates it first thing).

    Raises:
        ValueError: an unknown ``name``; for ``multi_worker`` a missing or invalid
            ``$TF_CONFIG``, or TensorFlow already running.

    Example:
        >>> strategy = make_strategy("mirrored")
        >>> trainer = ml3tf.MetaTrainer(task, cfg, strategy=strategy)
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices)
    if name == "tpu":
        address = os.environ.get("ML3TF_TPU") or os.environ.get("COLAB_TPU_ADDR") or ""
        if address and "://" not in address and address != "local":
            address = f"grpc://{address}"
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address)
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
            return tf.distribute.TPUStrategy(resolver)
        except (ValueError, RuntimeError, tf.errors.OpError) as exc:
            log.warning("no TPU could be reached (%s); using the default strategy", str(exc).splitlines()[0])
            return tf.distribute.get_strategy()
    if name == "multi_worker":
        return _make_multi_worker()
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")


def parse_tf_config(text: str | None) -> tuple[list[str], int]:
    """``(worker addresses, this worker's index)`` from the text of ``$TF_CONFIG``.

    The format is TensorFlow's: ``{"cluster": {"worker": ["host:port", ...]}, "task":
    {"type": "worker", "index": i}}``; worker 0 is the chief (it writes the run folder).

    Raises:
        ValueError: one line naming ``TF_CONFIG`` and what is wrong with it.

    Example:
        >>> spec = {"cluster": {"worker": ["a:2222", "b:2222"]}, "task": {"type": "worker", "index": 1}}
        >>> parse_tf_config(json.dumps(spec))
        (['a:2222', 'b:2222'], 1)
    """
    if not text or not text.strip():
        raise ValueError(
            "strategy 'multi_worker' needs $TF_CONFIG, which is not set: set it on every worker to "
            '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": i}}'
        )
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"TF_CONFIG is not JSON ({exc}): {text!r}") from None
    cluster = spec.get("cluster") if isinstance(spec, dict) else None
    workers = cluster.get("worker") if isinstance(cluster, dict) else None
    if not isinstance(workers, list) or not workers:
        raise ValueError(f"TF_CONFIG must hold cluster.worker, a non-empty list of 'host:port', got {text!r}")
    extra = sorted(set(cluster) - {"worker"})
    if extra:
        raise ValueError(f"TF_CONFIG: only 'worker' tasks are supported in cluster, got also {extra}")
    for address in workers:
        if not isinstance(address, str) or not re.fullmatch(r"[^\s:]+:\d+|\[[0-9a-fA-F:]+\]:\d+", address):
            raise ValueError(f"TF_CONFIG: cluster.worker entries must be 'host:port', got {address!r}")
    if len(set(workers)) != len(workers):
        raise ValueError(f"TF_CONFIG: cluster.worker names an address twice: {workers}")
    task = spec.get("task")
    if not isinstance(task, dict) or task.get("type") != "worker":
        raise ValueError(f"TF_CONFIG must hold task {{'type': 'worker', 'index': i}}, got {task!r}")
    index = task.get("index")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(workers):
        raise ValueError(f"TF_CONFIG: task.index must be an integer in [0, {len(workers)}), got {index!r}")
    return list(workers), index


def _make_multi_worker() -> tf.distribute.Strategy:
    global _multi_worker
    if _multi_worker is not None:
        return _multi_worker
    parse_tf_config(os.environ.get("TF_CONFIG"))
    timeout = os.environ.get("ML3TF_COLLECTIVE_TIMEOUT", str(COLLECTIVE_TIMEOUT_S))
    try:
        seconds = float(timeout)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"ML3TF_COLLECTIVE_TIMEOUT must be a number of seconds > 0, got {timeout!r}")
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=seconds)
    try:
        _multi_worker = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    except RuntimeError as exc:
        if "program startup" not in str(exc):
            raise
        raise ValueError(
            "strategy 'multi_worker' must be created before TensorFlow runs any op: call "
            "ml3tf.distribute.make_strategy('multi_worker') first thing in the program"
        ) from None
    index, count = worker_of(_multi_worker)
    log.info("multi_worker: worker %d of %d (%d replicas)", index, count, _multi_worker.num_replicas_in_sync)
    return _multi_worker


def worker_of(strategy: tf.distribute.Strategy) -> tuple[int, int]:
    """``(index, number of workers)`` of this process under ``strategy``; ``(0, 1)`` unless it is
    a ``MultiWorkerMirroredStrategy``. Worker 0 is the chief.

    Example:
        >>> worker_of(tf.distribute.get_strategy())
        (0, 1)
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 0, 1
    resolver = strategy.cluster_resolver
    spec = resolver.cluster_spec()
    count = sum(spec.num_tasks(job) for job in spec.jobs if job in ("chief", "worker"))
    return int(resolver.task_id or 0), max(count, 1)


def per_worker(strategy: tf.distribute.Strategy, value: int) -> list[int]:
    """``value`` of every worker of ``strategy``, by index (one all-reduce; ``[value]`` with one
    worker). Every worker must call it at the same point.

    Example:
        >>> per_worker(tf.distribute.get_strategy(), 4)
        [4]
    """
    index, count = worker_of(strategy)
    if count == 1:
        return [value]
    mine = np.zeros(count, np.float64)  # exact for integers below 2**53
    mine[index] = value

    @tf.function(autograph=False)  # collectives run best in a graph
    def gather() -> tf.Tensor:
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(tf.constant, (mine,)), axis=None)

    total = gather()
    return [int(v) for v in np.asarray(total)]


class WorkerLostError(RuntimeError):
    """A collective of multi-worker training failed: a worker died, hung or cannot be reached.

    Attributes: ``index`` (this worker), ``workers`` (how many), ``lost`` (the index of the lost
    worker when TensorFlow's error names it, else ``None``), ``step`` (the meta-step that failed),
    ``detail`` (the first line of TensorFlow's error).
    """

    def __init__(self, index: int, workers: int, lost: int | None, step: int, detail: str, resume: str = ""):
        self.index, self.workers, self.lost, self.step, self.detail = index, workers, lost, step, detail
        who = f"worker {lost} of {workers}" if lost is not None else f"a peer of worker {index} of {workers}"
        super().__init__(f"{who} lost at meta-step {step} ({detail}){resume}")

    def resuming_from(self, step: int | None) -> WorkerLostError:
        """The same error, saying which checkpoint relaunching resumes from."""
        where = f"the last checkpoint (meta-step {step})" if step else "the start (no checkpoint yet)"
        resume = f"; relaunch all workers with the same command to resume from {where}"
        return WorkerLostError(self.index, self.workers, self.lost, self.step, self.detail, resume)


#: TensorFlow's errors of a failed collective: a peer gone (heartbeats stopped, connection
#: refused), a collective past ``COLLECTIVE_TIMEOUT_S``, or collectives aborted after either.
_COLLECTIVE_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.CancelledError,
    tf.errors.AbortedError,
)


@contextlib.contextmanager
def worker_errors(strategy: tf.distribute.Strategy, step: int) -> Iterator[None]:
    """Turn a failed collective of meta-step ``step`` into one ``WorkerLostError`` (multi-worker
    strategies only; anything else passes through).

    Example:
        >>> with worker_errors(trainer.strategy, step):
        ...     info = trainer.step(batch, step)
    """
    index, count = worker_of(strategy)
    if count == 1:
        yield
        return
    try:
        yield
    except tf.errors.OpError as exc:
        text = str(exc)
        if not isinstance(exc, _COLLECTIVE_ERRORS) and "ollective" not in text:
            raise
        lost = _lost_worker(text, index)
        if lost is None and count == 2:  # TF's words did not say; with two, it is the other one
            lost = 1 - index
        raise WorkerLostError(index, count, lost, step, _detail(exc)) from None


def _lost_worker(text: str, index: int) -> int | None:
    """The one other worker TensorFlow's error names (``/job:worker/replica:0/task:1``)."""
    named = {int(i) for i in re.findall(r"/job:(?:worker|chief)(?:/replica:\d+)?/task:(\d+)", text)}
    others = named - {index}
    return others.pop() if len(others) == 1 else None


def _detail(exc: tf.errors.OpError) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:  # TF's first line is "Graph execution error:"; the cause comes later
        if "aborted by" in line or "unhealthy" in line or "failed to connect" in line:
            line = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", line)  # the graph op that waited
            return f"{type(exc).__name__}: {line[:300]}"
    return f"{type(exc).__name__}: {(lines[-1] if lines else '')[:300]}"
