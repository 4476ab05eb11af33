"""The pretrained sine loss through plain Keras ``compile``/``fit`` vs MSE, with ``ml3tf eval``'s protocol.

    python bench/keras_learned_loss.py [--quick] [--out bench/results/keras_learned_loss.json]

For each seed 0–4: the sine task's meta-test tasks (``task.eval_splits(seed)``: the
train task and 10 test tasks, 100 points each), a fresh Keras learner (the paper's
1→100→10→1 MLP) starting from exactly the initial weights ``ml3tf eval`` gives it,
``compile(optimizer=SGD(1e-3), loss=…)`` and ``fit(x, y, batch_size=100, epochs=100)``
(full batch: 100 SGD steps), once with ``ml3tf.LearnedLoss.pretrained("sine")`` and
once with ``"mse"``. The metric is the MSE on the task's points after 1 and after 100
steps. The same pretrained network is also meta-tested by the library's own evaluator
(``task.evaluate``, i.e. ``ml3tf eval``) in the same run, so the two can be compared.
Writes JSON with the machine named.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)


def machine() -> dict:
    """The machine these numbers come from (shared with bench/sine.py)."""
    from bench.sine import machine as describe

    return describe()


def mean_std(values) -> tuple[float, float]:
    import numpy as np

    return float(np.mean(values)), float(np.std(values))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(HERE, "results", "keras_learned_loss.json"))
    ap.add_argument("--quick", action="store_true", help="2 seeds, 10 steps (a smoke run)")
    args = ap.parse_args()

    import keras
    import numpy as np

    import ml3tf
    from ml3tf import tasks
    from ml3tf.seeds import meta_test_seeds

    seeds = [0, 1] if args.quick else [0, 1, 2, 3, 4]
    steps = 10 if args.quick else 100
    lr = 1e-3
    task = tasks.get("sine")
    config = task.default_config().replace(eval_steps=steps)
    learned = ml3tf.LearnedLoss.pretrained("sine")
    functional = ml3tf.FunctionalModel(task.make_learner())

    models = {}
    for method, loss in (("learned", learned), ("baseline", "mse")):
        model = task.make_learner()
        model.compile(optimizer=keras.optimizers.SGD(lr), loss=loss)  # SGD has no state to reset
        models[method] = model

    start = time.perf_counter()
    per_seed: dict[str, dict[str, dict[str, list]]] = {}
    for seed in seeds:
        splits = task.eval_splits(seed)
        # ml3tf eval runs the splits of one seed as a batch (train first); learner t starts
        # from stateless seed meta_test_seeds(seed, ·)[t]. Use the same starting points.
        t = 0
        for split, (xs, ys) in splits.items():
            for x, y in zip(xs, ys, strict=True):
                theta0 = [p.numpy() for p in functional.init_params(meta_test_seeds(seed, t + 1)[t])]
                t += 1
                for method, model in models.items():
                    model.set_weights(theta0)
                    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
                    mse1 = float(np.mean((model.predict(x, verbose=0) - y) ** 2))
                    model.fit(
                        x, y, batch_size=len(x), epochs=steps, initial_epoch=1, shuffle=False, verbose=0
                    )
                    mse = float(np.mean((model.predict(x, verbose=0) - y) ** 2))
                    rec = per_seed.setdefault(split, {}).setdefault(method, {})
                    rec.setdefault("final", {}).setdefault(seed, []).append(mse)
                    rec.setdefault("at_step_1", {}).setdefault(seed, []).append(mse1)
    keras_seconds = time.perf_counter() - start

    keras_results: dict[str, dict] = {"final": {}, "at_step_1": {}}
    for key in ("final", "at_step_1"):
        for split, methods in per_seed.items():
            out = {}
            for method, rec in methods.items():
                seed_means = [float(np.mean(rec[key][s])) for s in seeds]  # mean over tasks, then seeds
                out[method], out[method + "_std"] = mean_std(seed_means)
            keras_results[key][split] = out

    library = task.evaluate([learned.network], config, seeds)
    res = {
        "what": "pretrained sine loss via keras compile/fit vs MSE; same protocol as `ml3tf eval`",
        "command": "python bench/keras_learned_loss.py" + (" --quick" if args.quick else ""),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "machine": machine(),
        "protocol": {
            "optimizer": "SGD",
            "lr": lr,
            "steps": steps,
            "batch": "full (100 points)",
            "seeds": seeds,
        },
        "keras_fit": keras_results,
        "ml3tf_eval": {"final": library["final"], "at_step_1": library["at_step_1"]},
        "keras_fit_seconds": keras_seconds,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1, allow_nan=False)
        f.write("\n")

    print(f"MSE after {steps} SGD steps (lr {lr}), mean ± std over seeds {seeds}")
    print(f"{'split':6s} {'via':12s} {'learned loss':>18s} {'MSE loss':>18s}")
    for split in ("train", "test"):
        for via, r in (("keras fit", keras_results["final"][split]), ("ml3tf eval", library["final"][split])):
            print(
                f"{split:6s} {via:12s} {r['learned']:9.3f} ± {r['learned_std']:5.3f}"
                f" {r['baseline']:9.3f} ± {r['baseline_std']:5.3f}"
            )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
