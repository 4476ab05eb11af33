"""Parametrised networks: learners, policies, dynamics models. No training, no data."""

from models.mlp import make_mlp

__all__ = ["make_mlp"]
