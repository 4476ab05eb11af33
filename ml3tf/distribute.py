"""Strategies for meta-training on several devices (``MetaTrainConfig.strategy``).

The meta-batch of B tasks is split across the R replicas (B/R tasks each); every
replica computes the meta-gradient of its tasks' mean objective, the per-replica
gradients are averaged (``strategy.reduce(MEAN)``) and one update is applied to
the mirrored φ:

    ∇_φ L = 1/R Σ_r ∇_φ L_r,     L_r = mean over replica r's B/R tasks

which equals the single-device meta-gradient of the whole meta-batch.
"""

from __future__ import annotations

import logging
import os

import tensorflow as tf

log = logging.getLogger("ml3tf")

STRATEGIES = ("default", "mirrored", "tpu")


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The strategy called ``name``.

    * ``default``: the current (usually single-device) strategy;
    * ``mirrored``: ``MirroredStrategy`` over all GPUs, or over all logical CPU
      devices when there is no GPU (configure them with
      ``tf.config.set_logical_device_configuration`` before TensorFlow starts);
    * ``tpu``: ``TPUStrategy`` on the TPU named by ``$ML3TF_TPU`` (or Colab's
      ``$COLAB_TPU_ADDR``, or the local TPU); falls back to ``default`` with a logged
      warning when no TPU can be reached.

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
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")
