"""tf.distribute: MirroredStrategy over 2 logical CPUs equals one device; TPU falls back."""

import json
import subprocess
import sys

import pytest

SCRIPT = """
import json, os, sys, tempfile
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np
import ml3tf
from ml3tf import tasks
from ml3tf.meta_trainer import MetaTrainer

task = tasks.get("sine", mode="family", n_points=16, n_test_tasks=2)
out = {}
for optimizer, lr in (("sgd", 0.05), ("adam", 1e-3)):
    cfg = task.default_config().replace(
        meta_batch_size=4, meta_optimizer=optimizer, meta_lr=lr, inner_steps=2
    )
    runs = {}
    for strategy in ("default", "mirrored"):
        trainer = MetaTrainer(task, cfg.replace(strategy=strategy))
        infos = trainer.run_steps(0, 3)
        runs[strategy] = {"replicas": trainer.replicas, "infos": infos,
                          "phi": [w.ravel().tolist() for w in trainer.meta_loss.get_weights()]}
    out[optimizer] = runs
with tempfile.TemporaryDirectory() as tmp:
    cfg = task.default_config().replace(meta_batch_size=2, meta_steps=4, checkpoint_every=2, eval_steps=3,
                                        strategy="mirrored")
    run = ml3tf.train(task, cfg, os.path.join(tmp, "m"))
    out["train"] = run.results["final"]["test"]["learned"]
print(json.dumps(out))
"""


def test_mirrored_strategy_equals_one_device():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    import numpy as np

    for optimizer in ("sgd", "adam"):
        one, two = out[optimizer]["default"], out[optimizer]["mirrored"]
        assert one["replicas"] == 1 and two["replicas"] == 2
        # float32: two replicas each sum half the meta-batch and the all-reduce adds the halves,
        # and each replica runs its ops on 2 tasks instead of 4 (other kernel blockings), so
        # every loss and gradient differs by its rounding, a few u relative (measured ≤ 7e-8
        # relative in the infos, 1.5e-8 absolute on φ ~ 0.3). Three SGD/Adam steps pass that on
        # without growth (Adam's step depends on g only through g/√v̂), so rtol 1e-5 leaves
        # ~100×. A replica gradient that is not averaged, or lost, is off by ≥ 1e-3.
        np.testing.assert_allclose(two["infos"], one["infos"], rtol=1e-5, atol=1e-7)
        for a, b in zip(two["phi"], one["phi"], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert np.isfinite(out["train"])


def test_meta_batch_must_split_evenly_and_tpu_falls_back(caplog):
    from ml3tf import tasks
    from ml3tf.distribute import make_strategy
    from ml3tf.meta_trainer import MetaTrainConfig, MetaTrainer

    with pytest.raises(ValueError, match="strategy"):
        MetaTrainConfig(strategy="multiworker")
    with pytest.raises(ValueError, match="strategy"):
        make_strategy("multiworker")
    with caplog.at_level("WARNING", logger="ml3tf"):
        strategy = make_strategy("tpu")
    assert strategy.num_replicas_in_sync == 1
    assert "no TPU" in caplog.text
    trainer = MetaTrainer(tasks.get("sine"), MetaTrainConfig(strategy="tpu", meta_steps=1))
    assert trainer.replicas == 1 and not trainer.distributed
    assert json.dumps(trainer.config.to_dict())  # the config still says what was asked for
