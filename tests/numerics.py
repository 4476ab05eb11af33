"""Floating-point error bounds that the tests derive their tolerances from.

u is the unit roundoff (2⁻²⁴ for float32, 2⁻⁵³ for float64) and γ_n = n·u / (1 − n·u). Every
partial sum of a sum of n terms is rounded once, with a relative error ≤ u, and each term
passes through at most n − 1 of them, so the sum computed in ANY order (pairwise, blocked,
vectorised, FMA or not: what differs between eager, tf.function, XLA, oneDNN and Eigen
kernels, and between CPUs) is within γ_{n−1}·Σ|terms| of the exact value, a dot product of n
products within γ_n·Σ|terms|. Two evaluations of the same formula in different op orders therefore agree
to twice the bound of one; an evaluation in float32 against a float64 reference to the float32
bound alone.
"""

import numpy as np

U32 = 2.0**-24
U64 = 2.0**-53

# float32 tanh, softplus, sigmoid, sin, cos, log1p in TensorFlow (Eigen) and NumPy: at most 8.4 u
# relative (|a| > 0) plus 1.5 u absolute (elu and sin near 0), measured over [−30, 30] on an
# AVX-512 CPU; AVX2 and scalar builds use the same polynomial approximations. Twice that, so a
# tolerance built on it does not depend on which approximation a machine runs.
ACT_REL_ULPS = 16.0
ACT_ABS_ULPS = 3.0


def gamma(n: int, u: float = U32) -> float:
    """γ_n = n·u / (1 − n·u)."""
    return n * u / (1.0 - n * u)


_ACTIVATIONS = {
    "relu": lambda z: np.maximum(z, 0.0),
    "linear": lambda z: z,
    "tanh": np.tanh,
    "softplus": lambda z: np.logaddexp(0.0, z),
    "elu": lambda z: np.where(z > 0, z, np.expm1(np.minimum(z, 0.0))),
    "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)),
}
_EXACT = ("relu", "linear")  # no rounding of their own


def dense_forward_bound(layers, x, u: float = U32, input_error=0.0):
    """``(f(x), e)``: the exact (float64) output of a dense network and, elementwise, a bound e on
    |f̂(x) − f(x)| for f̂ evaluated with unit roundoff ``u`` in any summation order.

    ``layers``: ``[(kernel (n, m), bias (m,) or None, activation name)]``; ``input_error``: a bound
    on the error already in ``x`` (scalar or like ``x``). Running error analysis: for z = hW + b
    with fan-in n, |ẑ − z| ≤ |ĥ − h|·|W| + γ_{n+1}·(|ĥ|·|W| + |b|); every activation here is
    1-Lipschitz and rounds to within ``ACT_REL_ULPS``·u·|a| + ``ACT_ABS_ULPS``·u itself.
    """
    h = np.asarray(x, np.float64)
    e = np.broadcast_to(np.asarray(input_error, np.float64), h.shape)
    for kernel, bias, activation in layers:
        w = np.asarray(kernel, np.float64)
        b = np.zeros(w.shape[1]) if bias is None else np.asarray(bias, np.float64)
        aw = np.abs(w)
        e = e @ aw + gamma(w.shape[0] + 1, u) * ((np.abs(h) + e) @ aw + np.abs(b))
        h = _ACTIVATIONS[activation](h @ w + b)
        if activation not in _EXACT:
            e = e + (ACT_REL_ULPS * np.abs(h) + ACT_ABS_ULPS) * u
    return h, e


def meta_loss_layers(network) -> list:
    """``dense_forward_bound`` layers of a ``MetaLossNetwork``."""
    layers = [
        (layer.kernel.numpy(), layer.bias.numpy() if layer.use_bias else None, network.activation)
        for layer in network.hidden_layers
    ]
    out = network.output_layer
    layers.append((out.kernel.numpy(), out.bias.numpy() if out.use_bias else None, network.output_activation))
    return layers


def relative_bound(network, feats, input_error=0.0, u: float = U32) -> float:
    """max_i e_i / |f(x)_i| of ``dense_forward_bound`` for a ``MetaLossNetwork`` (softplus outputs
    are positive, so means and weighted sums of them add only γ of their length to it)."""
    value, err = dense_forward_bound(meta_loss_layers(network), feats, u, input_error)
    return float(np.max(err / np.abs(value)))
