"""Produce the pretrained zoo: ``models/pretrained/<name>.keras`` + an entry in ``manifest.json``.

    python bench/make_pretrained.py            # sine: paper protocol, seed 0, 500 meta-steps

The meta-loss is meta-trained with ``ml3tf.train`` (the paper protocol of the task,
one seed), then meta-tested over seeds 0–4 with the task's own evaluation (the same
as ``ml3tf eval``); the results, the config, the file's sha256 and this command are
recorded in ``models/pretrained/manifest.json``, which ``LearnedLoss.pretrained``
checks on load.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
ZOO = os.path.join(REPO, "models", "pretrained")

from ml3tf.results import file_sha256  # noqa: E402  (after the path set-up)

#: name → (task name, task options, meta-training seed)
RECIPES = {"sine": ("sine", {}, 0)}
EVAL_SEEDS = [0, 1, 2, 3, 4]


def make(name: str) -> dict:
    import ml3tf
    from ml3tf import tasks

    task_name, options, seed = RECIPES[name]
    task = tasks.get(task_name, **options)
    config = task.default_config().replace(seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        run = ml3tf.train(task, config, os.path.join(tmp, "run"), seeds=[seed], evaluate=False)
        results = ml3tf.evaluate_files(
            task, run.meta_loss_paths, config, os.path.join(tmp, "eval"), EVAL_SEEDS, plot=False
        )
        os.makedirs(ZOO, exist_ok=True)
        dest = os.path.join(ZOO, f"{name}.keras")
        shutil.copy(run.meta_loss_paths[0], dest)
    return {
        "file": f"{name}.keras",
        "sha256": file_sha256(dest),
        "task": task_name,
        "task_options": task.describe_options(),
        "config": config.to_dict(),
        "kind": "regression",
        "metrics": {
            "metric": results["metric"],
            "eval_seeds": EVAL_SEEDS,
            "final": results["final"],
            "at_step_1": results["at_step_1"],
        },
        "command": f"python bench/make_pretrained.py --name {name}",
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", choices=sorted(RECIPES), nargs="+", default=sorted(RECIPES))
    args = ap.parse_args()
    path = os.path.join(ZOO, "manifest.json")
    manifest = {}
    if os.path.exists(path):
        with open(path) as f:
            manifest = json.load(f)
    for name in args.name:
        manifest[name] = make(name)
        final = manifest[name]["metrics"]["final"]
        for split, r in final.items():
            print(
                f"{name} {split}: learned {r['learned']:.3f} ± {r['learned_std']:.3f}, "
                f"mse {r['baseline']:.3f} ± {r['baseline_std']:.3f}"
            )
    with open(path, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True, allow_nan=False)
        f.write("\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
