"""Seeds side by side in one graph (``run_seeds``, ``train`` with several seeds) equal each seed alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from ml3tf.meta_trainer import MetaTrainer, NonFiniteError, can_batch_seeds, run_seeds
from ml3tf.run import train, train_one
from tests.toy import ToyTask


def _weights(trainer):
    return [v.numpy() for v in [*trainer.meta_loss.weights, *trainer.optimizer.variables]]


def _steps(path):
    with open(path) as f:
        return [json.loads(line) for line in f if '"eval"' not in line]


def _evals(path):
    with open(path) as f:
        return [json.loads(line) for line in f if '"eval"' in line]


@pytest.mark.parametrize("jit_compile", [False, True])
def test_run_seeds_is_bit_identical_to_each_seed_alone(jit_compile):
    """The seeds share one traced step but no data: every seed's infos, φ and Adam moments are the
    bits its own run gives (same kernels on the same shapes; nothing is summed across seeds)."""
    task = ToyTask(learner="smooth", meta_loss="network", split=True)
    cfg = task.default_config().replace(meta_batch_size=2, inner_steps=3, jit_compile=jit_compile)
    together = [MetaTrainer(task, cfg.replace(seed=s)) for s in (0, 1, 2)]
    batched = run_seeds(together, 0, 4) + run_seeds(together, 4, 3)
    for i, seed in enumerate((0, 1, 2)):
        alone = MetaTrainer(task, cfg.replace(seed=seed))
        infos = alone.run_steps(0, 4) + alone.run_steps(4, 3)
        assert batched[i] + batched[i + 3] == infos
        for a, b in zip(_weights(together[i]), _weights(alone), strict=True):
            np.testing.assert_array_equal(a, b)
    # and the seeds really differ (a mix-up of seeds would not be caught otherwise)
    assert batched[0] != batched[1]


def test_a_non_finite_seed_stops_alone_and_the_others_are_untouched():
    nan_task = ToyTask(nan_at=2)
    cfg = nan_task.default_config()
    trainers = [MetaTrainer(nan_task, cfg.replace(seed=s)) for s in (0, 1)]
    before = [_weights(t) for t in trainers]
    out = run_seeds(trainers, 0, 4)
    # ToyTask's NaN is in the data of step 2 of every seed: both stop there, each with its own error
    for res, t, w0 in zip(out, trainers, before, strict=True):
        assert isinstance(res, NonFiniteError) and "meta-step 2" in str(res)
        alone = MetaTrainer(nan_task, cfg.replace(seed=t.config.seed))
        alone.run_steps(0, 2)  # the two finite steps
        for a, b in zip(_weights(t), _weights(alone), strict=True):
            np.testing.assert_array_equal(a, b)
        assert any(not np.array_equal(a, b) for a, b in zip(_weights(t), w0, strict=True))


def test_run_seeds_refuses_mixed_configs_and_per_seed_task_state():
    task = ToyTask()
    cfg = task.default_config()
    with pytest.raises(ValueError, match="task and config of the first"):
        run_seeds([MetaTrainer(task, cfg), MetaTrainer(task, cfg.replace(inner_lr=0.01, seed=1))], 0, 1)

    class Stateful(ToyTask):
        def checkpoint_state(self):
            return {"fit": tf.Variable(0.0)}

    stateful = Stateful()
    trainers = [MetaTrainer(stateful, cfg.replace(seed=s)) for s in (0, 1)]
    assert not can_batch_seeds(trainers[0]) and can_batch_seeds(MetaTrainer(task, cfg))
    with pytest.raises(ValueError, match="cannot run several seeds in one graph"):
        run_seeds(trainers, 0, 1)


@pytest.mark.parametrize("eval_jit_compile", [True, False])
def test_train_with_seeds_batched_writes_what_each_seed_alone_writes(tmp_path, eval_jit_compile):
    """``train`` over 3 seeds (one graph) against ``train_one`` per seed: metric lines and the saved
    loss networks bit for bit; the evaluations to float32 round-off (without XLA all seeds'
    learners run as one meta-test, each learner with its own seed's φ — ``phi_per_learner`` —
    against one seed's learners sharing φ; with XLA on a CPU one seed at a time, split over
    the cores)."""
    task = ToyTask(learner="smooth", meta_loss="network")
    cfg = task.default_config().replace(
        meta_steps=12, steps_per_call=5, checkpoint_every=4, eval_every=6, eval_jit_compile=eval_jit_compile
    )
    seeds = [0, 1, 2]
    together = train(task, cfg, str(tmp_path / "together"), seeds=seeds)
    for seed, run_dir in zip(seeds, together.run_dirs, strict=True):
        alone = tmp_path / f"alone_{seed}"
        train_one(task, cfg.replace(seed=seed), str(alone), seeds=seeds)
        assert _steps(f"{run_dir}/metrics.jsonl") == _steps(alone / "metrics.jsonl")
        a, b = _evals(f"{run_dir}/metrics.jsonl"), _evals(alone / "metrics.jsonl")
        assert [e["step"] for e in a] == [e["step"] for e in b] == [5, 11]
        for x, y in zip(a, b, strict=True):
            for split in ("train", "test"):
                for arm in ("learned", "baseline"):
                    # float32, 5 SGD steps of an 8-8 tanh MLP: batched matmuls sum in another order,
                    # a few ulps (~1e-7 relative) per op; rtol 1e-5 leaves 100×, and another seed's
                    # φ or data moves these values by ≥ 1e-3.
                    np.testing.assert_allclose(x["eval"][split][arm], y["eval"][split][arm], rtol=1e-5)
        from ml3tf.meta_loss import load_meta_loss

        for u, v in zip(
            load_meta_loss(f"{run_dir}/meta_loss.keras").weights,
            load_meta_loss(str(alone / "meta_loss.keras")).weights,
            strict=True,
        ):
            np.testing.assert_array_equal(u.numpy(), v.numpy())


def test_train_resumes_seeds_from_different_checkpoints(tmp_path):
    """A folder where one seed got further than another (a run killed between seeds' checkpoints):
    the seed behind catches up alone, then both go on side by side, to the uninterrupted result."""
    task = ToyTask(learner="smooth", meta_loss="network")
    cfg = task.default_config().replace(meta_steps=8, steps_per_call=2, checkpoint_every=2)
    seeds = [0, 1]
    ref = train(task, cfg, str(tmp_path / "ref"), seeds=seeds, evaluate=False)
    out = tmp_path / "cut"
    train_one(task, cfg.replace(seed=0, meta_steps=6), str(out / "seed_0"), seeds=seeds)
    train_one(task, cfg.replace(seed=1, meta_steps=2), str(out / "seed_1"), seeds=seeds)
    calls = []

    def on_step(seed, step, info):
        calls.append((seed, step))

    resumed = train(task, cfg, str(out), seeds=seeds, evaluate=False, on_step=on_step)
    assert [c for c in calls if c[0] == 0] == [(0, 6), (0, 7)]
    assert [c for c in calls if c[0] == 1] == [(1, s) for s in range(2, 8)]
    for a, b in zip(ref.run_dirs, resumed.run_dirs, strict=True):
        assert _steps(f"{a}/metrics.jsonl") == _steps(f"{b}/metrics.jsonl")


def test_the_baseline_arm_is_computed_once_per_seed(monkeypatch):
    """Evaluations of one run (``eval_every``) reuse the hand-written-loss curves: the engine runs
    the baseline once per seed and engine, and the reused numbers are the fresh ones."""
    from ml3tf.engine import MetaTestEngine, engine_for

    task = ToyTask(learner="smooth", meta_loss="network")
    cfg = task.default_config()
    trainer = MetaTrainer(task, cfg)
    keys = []
    run = MetaTestEngine.run

    def counting(self, key, *args, **kwargs):
        keys.append(key[0][0])
        return run(self, key, *args, **kwargs)

    monkeypatch.setattr(MetaTestEngine, "run", counting)
    first = task.evaluate([trainer.meta_loss], cfg, [0, 1])
    trainer.run_steps(0, 3)  # φ moves: the learned arm changes, the baseline cannot
    second = task.evaluate([trainer.meta_loss], cfg, [0, 1])
    # the baseline of both seeds in one run, once; the learned arm every time (per seed on a CPU)
    together = engine_for(task, cfg).seeds_together
    assert keys.count("baseline") == 1 and keys.count("learned") == (2 if together else 4)
    assert first["seed_curves"]["test"]["baseline"] == second["seed_curves"]["test"]["baseline"]
    assert first["seed_curves"]["test"]["learned"] != second["seed_curves"]["test"]["learned"]
    fresh = ToyTask(learner="smooth", meta_loss="network").evaluate([trainer.meta_loss], cfg, [0, 1])
    assert fresh["seed_curves"]["test"]["baseline"] == second["seed_curves"]["test"]["baseline"]


def test_a_meta_test_split_over_the_cores_equals_one_run(monkeypatch, float64):
    """``MetaTestEngine`` on a CPU runs the learners as equal slices side by side (padded with
    copies of learner 0): the curves are those of one run over all learners."""
    import ml3tf.engine as engine_mod

    task = ToyTask(learner="smooth", meta_loss="network")
    cfg = task.default_config()
    meta_loss = MetaTrainer(task, cfg).meta_loss
    out = {}
    seeds = [0, 1, 2, 3, 4]
    for parts in (1, 4):  # the baseline's 5 × 2 learners in slices of 3: padded to 12
        monkeypatch.setattr(engine_mod, "_cpu_parts", lambda parts=parts: parts)
        fresh = ToyTask(learner="smooth", meta_loss="network")  # no cached engine or curves
        out[parts] = fresh.evaluate([meta_loss] * 5, cfg, seeds)["seed_curves"]
    for split in ("train", "test"):
        for arm in ("learned", "baseline"):
            # float64: the same per-learner computations in batches of other sizes; 1e-12 is
            # ~1e4 ulps, a learner taken from the wrong slice is off by O(1e-2)
            np.testing.assert_allclose(out[4][split][arm], out[1][split][arm], rtol=1e-12)
