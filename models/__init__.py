"""Parametrised networks: learners, policies, dynamics models. No training, no data."""

from models.lenet import make_lenet
from models.mlp import make_mlp
from models.spec import LearnerSpec, build_learner, parse_learner_spec

__all__ = ["LearnerSpec", "build_learner", "make_lenet", "make_mlp", "parse_learner_spec"]
