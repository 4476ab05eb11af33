"""Parametrised networks: learners, policies, dynamics models. No training, no data."""

# This folder is installed as ``ml3tf.models`` (setup.py ``package_dir``). Imported under any other
# name (``import models`` from the repository root) its modules would exist twice, with two
# copies of every registered Keras class: refuse that.
if __name__ != "ml3tf.models":
    raise ModuleNotFoundError(f"No module named {__name__!r}: this package is imported as ml3tf.models")


from ml3tf.models.lenet import make_lenet
from ml3tf.models.mlp import make_mlp
from ml3tf.models.spec import LearnerSpec, build_learner, parse_learner_spec

__all__ = ["LearnerSpec", "build_learner", "make_lenet", "make_mlp", "parse_learner_spec"]
