"""Learner specifications as short strings, for flags such as ``--learner mlp:64-64:tanh``.

Grammar::

    lenet[:ACTIVATION]                 the LeNet-style conv net (ml3tf.models.lenet)
    mlp:W1-W2-…[:ACTIVATION]           an MLP with hidden widths W1, W2, … (ml3tf.models.mlp)

ACTIVATION is any Keras activation name (default ``relu``). "Layers" counts the
dense layers including the output: ``mlp:40`` has 2, ``mlp:40-40-40-40`` has 5.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras

from ml3tf.models.lenet import make_lenet
from ml3tf.models.mlp import make_mlp


@dataclass(frozen=True)
class LearnerSpec:
    """A parsed learner spec: ``kind`` (``mlp`` or ``lenet``), hidden widths, activation."""

    kind: str
    hidden: tuple[int, ...] = ()
    activation: str = "relu"

    @property
    def layers(self) -> int:
        """Number of weight layers (conv + dense) including the output layer."""
        return len(self.hidden) + 1 if self.kind == "mlp" else 4

    def __str__(self) -> str:
        if self.kind == "lenet":
            return f"lenet:{self.activation}"
        return f"mlp:{'-'.join(str(h) for h in self.hidden)}:{self.activation}"


def parse_learner_spec(spec: str) -> LearnerSpec:
    """Parse ``"mlp:64-64:tanh"`` / ``"lenet"`` into a ``LearnerSpec``.

    Raises:
        ValueError: naming ``learner`` and the spec, for anything outside the grammar.

    Example:
        >>> parse_learner_spec("mlp:64-64:tanh")
        LearnerSpec(kind='mlp', hidden=(64, 64), activation='tanh')
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"learner must be a spec like 'mlp:64-64:tanh' or 'lenet', got {spec!r}")
    parts = spec.strip().split(":")
    kind = parts[0].lower()
    try:
        if kind == "lenet" and len(parts) <= 2:
            activation = parts[1] if len(parts) == 2 else "relu"
            keras.activations.get(activation)
            return LearnerSpec("lenet", (), activation)
        if kind == "mlp" and len(parts) in (2, 3):
            hidden = tuple(int(w) for w in parts[1].split("-"))
            if any(h < 1 for h in hidden):
                raise ValueError("widths must be >= 1")
            activation = parts[2] if len(parts) == 3 else "relu"
            keras.activations.get(activation)
            return LearnerSpec("mlp", hidden, activation)
    except ValueError as exc:
        raise ValueError(f"learner spec {spec!r} is invalid: {exc}") from None
    raise ValueError(f"learner must be 'mlp:W1-W2-…[:activation]' or 'lenet[:activation]', got {spec!r}")


def build_learner(
    spec: str | LearnerSpec, input_dim: int, output_dim: int, name: str = "learner"
) -> keras.Model:
    """A built learner ``input_dim → output_dim`` from a spec (string or ``LearnerSpec``).

    Example:
        >>> net = build_learner("mlp:32-32:elu", 64, 10)
    """
    s = parse_learner_spec(spec) if isinstance(spec, str) else spec
    if s.kind == "lenet":
        return make_lenet(input_dim, output_dim, activation=s.activation, name=name)
    return make_mlp(input_dim, s.hidden, output_dim, s.activation, name=name)
