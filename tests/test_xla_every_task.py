"""Every registered task's meta-step compiles with XLA and equals the plain graph (2 meta-steps)."""

import numpy as np
import pytest

from ml3tf import tasks
from ml3tf.meta_trainer import MetaTrainer

# Small options so that each task traces quickly; the math is the task's own.
SMALL = {
    "sine": {"n_points": 16},
    "classification": {"learner": "mlp:16:relu", "k_shot": 5, "query_shot": 5},
    "mountain_car": {"horizon": 5, "subgoal_steps": 2, "policy_hidden": 8, "meta_loss_hidden": (16,)},
    "point_mass": {"horizon": 5, "episodes": 3, "policy_hidden": (8,), "meta_loss_hidden": (16,)},
    "reacher": {
        "horizon": 4,
        "rollout_loop": "python",
        "babbling_rollouts": 1,
        "dynamics_hidden": (16, 16),
        "dynamics_epochs": 3,
        "policy_hidden": (8,),
        "meta_loss_hidden": (8, 8),
    },
}
CASES = [(name, "ml3") for name in tasks.names()] + [("sine", "maml"), ("sine", "ml3+maml")]


@pytest.mark.parametrize("name, method", CASES)
def test_xla_meta_steps_equal_the_plain_graph(name, method):
    options = dict(SMALL.get(name, {}))
    if method != "ml3":
        options.update(mode="family", support_points=5, query_points=5)
    task = tasks.get(name, **options)
    cfg = task.default_config()
    cfg = cfg.replace(
        inner_steps=min(cfg.inner_steps, 2), meta_batch_size=min(cfg.meta_batch_size, 2), method=method
    )
    out = {}
    for jit in (False, True):
        trainer = MetaTrainer(task, cfg.replace(jit_compile=jit))
        infos = trainer.run_steps(0, 2)
        out[jit] = (np.array(infos), [w.copy() for w in trainer.meta_loss.get_weights()])
        out[jit] += ([w.copy() for w in trainer.learner.model.get_weights()],)
    # float32: XLA fuses and reorders every task's reductions (rollouts, dynamics models, the
    # loss network), so each info value and weight differs by its rounding, a few 1e-7 relative,
    # carried through 2 Adam meta-steps (their step depends on g only through g/√v̂). Measured:
    # ≤ 1e-6 absolute on infos up to 14 (at worst 1/28 of the tolerance: point_mass, a value
    # ~0.02 where atol dominates) and ≤ 4e-8 on weights. A step XLA did not apply, or applied
    # to stale variables, moves weights by ~meta_lr ≥ 1e-3.
    np.testing.assert_allclose(out[True][0], out[False][0], rtol=1e-4, atol=1e-6)
    for a, b in zip(out[True][1] + out[True][2], out[False][1] + out[False][2], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert np.all(np.isfinite(out[True][0]))
