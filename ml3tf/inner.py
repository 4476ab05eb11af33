"""Differentiable inner optimizers on tensors, and the K-step unroll.

Keras optimizers update variables with ``assign_sub`` and cannot be
differentiated through, so the inner loop uses these small functional
optimizers instead (optax-style ``init``/``update``):

    SGD:       θ ← θ − α g
    momentum:  v ← μ v + g;            θ ← θ − α v
    Adam:      m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²;
               θ ← θ − α m̂ / (√v̂ + ε),  m̂ = m/(1−β₁ᵗ), v̂ = v/(1−β₂ᵗ)

``unroll`` applies K of those steps to an inner loss and keeps every operation
on the gradient tape, so that ``∂θ_K/∂φ`` — the mixed second derivative ML3
needs — is available to an outer tape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import tensorflow as tf

from ml3tf.config import BACKPROP_MODES, INNER_OPTIMIZERS

Params = list[tf.Tensor]
#: ``loop="auto"`` unrolls K ≤ this many inner steps as a Python loop, more as a ``tf.while_loop``.
AUTO_PYTHON_LOOP_MAX = 10
#: Under XLA, ``loop="auto"`` unrolls as a Python loop only while the graph holds at most this
#: many inner-step copies (K × the tasks XLA runs one after the other). Beyond it XLA's compile
#: time grows with the copies — seconds for the small sine steps, minutes for the 7-DoF
#: inverse-dynamics step at 16 tasks × K = 10 — and the unrolled loop's faster steps pay that
#: back only after thousands of meta-steps (``bench/scale.py``'s loop table); up to it the two
#: compile within about a second of each other.
AUTO_XLA_PYTHON_COPIES_MAX = 10
InnerLossFn = Callable[[Params, Params], tuple[tf.Tensor, Params]]


def resolve_loop(loop: str, steps: int, jit_compile: bool = False, copies: int = 1) -> str:
    """The loop ``loop="auto"`` stands for: ``"python"`` or ``"while"`` (other values returned as given).

    Without XLA: the Python loop for K = ``steps`` ≤ ``AUTO_PYTHON_LOOP_MAX``. Under XLA
    (``jit_compile``): the Python loop while K · ``copies`` ≤ ``AUTO_XLA_PYTHON_COPIES_MAX`` (10),
    where ``copies`` is how many unrolls the compiled graph holds side by side (the tasks of a
    meta-batch, which XLA runs one after the other).

    Example:
        >>> resolve_loop("auto", 10), resolve_loop("auto", 10, jit_compile=True, copies=16)
        ('python', 'while')
    """
    if loop != "auto":
        return loop
    if jit_compile:
        return "python" if int(steps) * max(int(copies), 1) <= AUTO_XLA_PYTHON_COPIES_MAX else "while"
    return "python" if int(steps) <= AUTO_PYTHON_LOOP_MAX else "while"


class InnerOptimizer(Protocol):
    """A pure optimizer: ``state = init(params)``; ``params, state = update(g, state, params)``."""

    def init(self, params: Sequence[tf.Tensor]) -> Any: ...

    def update(
        self, grads: Sequence[tf.Tensor], state: Any, params: Sequence[tf.Tensor]
    ) -> tuple[Params, Any]: ...


def _check_lr(lr: float) -> float:
    lr = float(lr)
    if not lr > 0.0 or lr != lr or lr == float("inf"):
        raise ValueError(f"inner_lr must be a positive finite number, got {lr!r}")
    return lr


@dataclass(frozen=True)
class SGD:
    """Plain gradient descent ``θ ← θ − α g`` (the paper's inner optimizer).

    Example:
        >>> opt = SGD(1e-3); state = opt.init(params)
        >>> params, state = opt.update(grads, state, params)
    """

    learning_rate: float

    def __post_init__(self) -> None:
        _check_lr(self.learning_rate)

    def init(self, params: Sequence[tf.Tensor]) -> tuple:
        return ()

    def update(self, grads, state, params):
        lr = self.learning_rate
        return [p - tf.constant(lr, p.dtype) * g for p, g in zip(params, grads, strict=True)], state


@dataclass(frozen=True)
class Momentum:
    """Heavy-ball momentum ``v ← μ v + g; θ ← θ − α v`` (``nesterov``: θ ← θ − α(g + μ v))."""

    learning_rate: float
    momentum: float = 0.9
    nesterov: bool = False

    def __post_init__(self) -> None:
        _check_lr(self.learning_rate)
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")

    def init(self, params):
        return ([tf.zeros_like(p) for p in params],)

    def update(self, grads, state, params):
        (vel,) = state
        new_v = [tf.constant(self.momentum, g.dtype) * v + g for v, g in zip(vel, grads, strict=True)]
        steps = (
            [g + tf.constant(self.momentum, g.dtype) * v for g, v in zip(grads, new_v, strict=True)]
            if self.nesterov
            else new_v
        )
        lr = self.learning_rate
        new_p = [p - tf.constant(lr, p.dtype) * s for p, s in zip(params, steps, strict=True)]
        return new_p, (new_v,)


@dataclass(frozen=True)
class Adam:
    """Adam (Kingma & Ba) on tensors, with bias correction; differentiable end to end."""

    learning_rate: float
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-8

    def __post_init__(self) -> None:
        _check_lr(self.learning_rate)
        for name in ("beta_1", "beta_2"):
            b = getattr(self, name)
            if not 0.0 <= b < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {b!r}")

    def init(self, params):
        zeros = [tf.zeros_like(p) for p in params]
        return (tf.zeros((), tf.float32), zeros, [tf.zeros_like(p) for p in params])

    def update(self, grads, state, params):
        t, m, v = state
        t = t + 1.0
        new_m, new_v, new_p = [], [], []
        for p, g, mi, vi in zip(params, grads, m, v, strict=True):
            dt = p.dtype
            b1, b2 = tf.constant(self.beta_1, dt), tf.constant(self.beta_2, dt)
            mi = b1 * mi + (1 - b1) * g
            vi = b2 * vi + (1 - b2) * tf.square(g)
            tt = tf.cast(t, dt)
            m_hat = mi / (1 - tf.pow(b1, tt))
            v_hat = vi / (1 - tf.pow(b2, tt))
            # sqrt(v̂ + tiny) keeps the derivative of sqrt finite where v̂ = 0.
            denom = tf.sqrt(v_hat + tf.constant(1e-30, dt)) + tf.constant(self.epsilon, dt)
            new_p.append(p - tf.constant(self.learning_rate, dt) * m_hat / denom)
            new_m.append(mi)
            new_v.append(vi)
        return new_p, (t, new_m, new_v)


def make_inner_optimizer(name: str, learning_rate: float, momentum: float = 0.9) -> InnerOptimizer:
    """Build an inner optimizer by name: ``"sgd"``, ``"momentum"`` or ``"adam"``."""
    if name == "sgd":
        return SGD(learning_rate)
    if name == "momentum":
        return Momentum(learning_rate, momentum)
    if name == "adam":
        return Adam(learning_rate)
    raise ValueError(f"inner_optimizer must be one of {INNER_OPTIMIZERS}, got {name!r}")


@dataclass
class UnrollResult:
    """What ``unroll`` returns: θ_K, the learner state, the optimizer state, and
    the inner loss at θ_0 (``initial_loss``)."""

    params: Params
    state: Params
    opt_state: Any
    initial_loss: tf.Tensor


def inner_step(
    loss_fn: InnerLossFn,
    params: Params,
    state: Params,
    optimizer: InnerOptimizer,
    opt_state: Any,
    first_order: bool = False,
) -> tuple[Params, Params, Any, tf.Tensor]:
    """One differentiable step: ``θ ← opt(θ, ∇_θ loss_fn(θ))``; returns the loss at the old θ.

    ``first_order=True`` treats the inner gradient as a constant (``tf.stop_gradient``):
    first-order MAML. It removes every path through ``∇_θ loss_fn``, so it must not be
    used when meta-learning what ``loss_fn`` reads (ML3's φ).
    """
    with tf.GradientTape() as tape:
        tape.watch(params)
        loss, new_state = loss_fn(params, state)
    grads = tape.gradient(loss, params, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    if first_order:
        grads = [tf.stop_gradient(g) for g in grads]
    new_params, opt_state = optimizer.update(grads, opt_state, params)
    return new_params, new_state, opt_state, loss


def _advance(loss_fn, params, state, optimizer, opt_state, n: int, loop: str, first_order: bool = False):
    """``n`` ≥ 0 inner steps (no loss value returned): a Python loop or a ``tf.while_loop``."""
    if n <= 0:
        return params, state, opt_state
    if loop == "python":
        for _ in range(n):
            params, state, opt_state, _ = inner_step(
                loss_fn, params, state, optimizer, opt_state, first_order
            )
        return params, state, opt_state

    def body(i, p, s, o):
        p, s, o, _ = inner_step(loss_fn, p, s, optimizer, o, first_order)
        return i + 1, p, s, o

    _, params, state, opt_state = tf.while_loop(
        lambda i, *_: i < n,
        body,
        (tf.constant(0), params, state, opt_state),
        maximum_iterations=n,  # a static bound: XLA needs it to differentiate the loop
    )
    return list(params), list(state), opt_state


def _segmented(
    loss_fn,
    params,
    state,
    optimizer,
    opt_state,
    n: int,
    segment_length: int,
    first_order: bool = False,
    captured: Sequence[tf.Tensor] = (),
):
    """``n`` steps whose backward pass recomputes one segment at a time (exact, O(K/S + S) memory).

    Forward: run the steps without recording, keeping only the carry (θ, state,
    optimizer state) at each segment start, in ``TensorArray``s. Backward
    (``tf.custom_gradient``): for the segments from last to first, re-run the segment
    under a tape and chain ``tape.gradient(end, [start, φ], output_gradients=∂L/∂end)``.
    Both passes are ``tf.while_loop``s over segments, so the graph size does not grow
    with K. (``tf.recompute_grad`` does not work around an inner step that opens its
    own tape.) ``captured``: tensors ``loss_fn`` reads besides θ (φ as values): the custom
    gradient routes their gradient explicitly (variables it finds by itself).
    """
    structure = (list(params), list(state), opt_state)
    captured = list(captured)
    flat_in = tf.nest.flatten(structure)
    n_full, rem = divmod(n, segment_length)

    def advance(flat, length):
        p, s, o = tf.nest.pack_sequence_as(structure, list(flat))
        return tf.nest.flatten(_advance(loss_fn, p, s, optimizer, o, length, "while", first_order))

    def segment_grads(start, length, d_end, variables):
        with tf.GradientTape() as tape:
            tape.watch(start)
            tape.watch(captured)
            end = advance(start, length)
        grads = tape.gradient(
            end,
            list(start) + captured + variables,
            output_gradients=d_end,
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
        )
        return grads[: len(start)], grads[len(start) :]

    @tf.custom_gradient
    def run(*flat_and_captured):
        first = list(flat_and_captured[: len(flat_in)])
        carry = advance(first, rem) if rem else first  # the odd-sized segment goes first
        starts = [tf.TensorArray(t.dtype, size=n_full, element_shape=t.shape) for t in carry]

        def forward(j, c, tas):
            tas = [ta.write(j, x) for ta, x in zip(tas, c, strict=True)]
            return j + 1, advance(c, segment_length), tas

        _, end, starts = tf.while_loop(
            lambda j, *_: j < n_full, forward, (tf.constant(0), carry, starts), maximum_iterations=n_full
        )

        def grad_fn(*upstream, variables=None):
            variables = list(variables or [])
            d_carry = [tf.zeros_like(c) if u is None else u for u, c in zip(upstream, end, strict=True)]
            d_vars = [tf.zeros_like(v) for v in [*captured, *variables]]

            def backward(j, d, dv):
                start = [ta.read(n_full - 1 - j) for ta in starts]
                d, g_vars = segment_grads(start, segment_length, d, variables)
                return j + 1, d, [a + b for a, b in zip(dv, g_vars, strict=True)]

            _, d_carry, d_vars = tf.while_loop(
                lambda j, *_: j < n_full,
                backward,
                (tf.constant(0), d_carry, d_vars),
                maximum_iterations=n_full,
            )
            if rem:
                d_carry, g_vars = segment_grads(first, rem, d_carry, variables)
                d_vars = [a + b for a, b in zip(d_vars, g_vars, strict=True)]
            n_cap = len(captured)
            return [*d_carry, *d_vars[:n_cap]], d_vars[n_cap:]

        return end, grad_fn

    out = run(*flat_in, *captured)
    p, s, o = tf.nest.pack_sequence_as(structure, list(out))
    return list(p), list(s), o


def unroll(
    loss_fn: InnerLossFn,
    params: Sequence[tf.Tensor],
    optimizer: InnerOptimizer,
    steps: int,
    state: Sequence[tf.Tensor] = (),
    opt_state: Any = None,
    loop: str = "auto",
    backprop: str = "full",
    segment_length: int = 25,
    truncate_steps: int = 0,
    first_order: bool = False,
    captured: Sequence[tf.Tensor] = (),
) -> UnrollResult:
    """K differentiable inner steps ``θ_{k+1} = opt(θ_k, ∇_θ L_φ(θ_k))``.

    Args:
        loss_fn: ``(params, state) -> (scalar loss, new_state)``; in ML3 the mean of
            ``M_φ`` over the support set.
        params: θ_0, a list of tensors.
        optimizer: an ``InnerOptimizer`` (``SGD``, ``Momentum``, ``Adam``).
        steps: K ≥ 1.
        state: non-trainable learner state (BatchNorm statistics), threaded through.
        opt_state: the optimizer's state; ``None`` starts from ``optimizer.init``.
        loop: ``"python"`` unrolls the steps into the graph (fast for K ≤ 10),
            ``"while"`` uses ``tf.while_loop`` (constant graph size for large K),
            ``"auto"`` picks python for K ≤ 10 (``resolve_loop``; a caller that compiles
            with XLA resolves it first, knowing how many unrolls its graph holds).
        backprop: how ``∂θ_K/∂(θ_0, φ)`` is obtained. ``"full"``: plain backprop
            through all K steps (memory grows linearly in K). ``"segmented"``: exact,
            recomputing ``segment_length`` steps at a time in the backward pass (memory
            ~ K/S stored carries + one segment; about one extra forward pass of time).
            ``"truncated"``: approximate — gradients flow only through the last
            ``truncate_steps`` steps (the earlier ones are treated as constants).
        segment_length: S for ``backprop="segmented"``.
        truncate_steps: T for ``backprop="truncated"`` (T ≥ K is the full gradient).
        first_order: stop the gradient through the inner gradients (first-order MAML:
            with SGD, ``∂θ_K/∂θ_0`` becomes the identity); see ``inner_step``.
        captured: tensors ``loss_fn`` reads besides θ whose gradient is wanted (φ passed as
            values, not variables); only ``backprop="segmented"`` needs them named, for its
            custom gradient.

    Returns:
        An ``UnrollResult`` whose ``params`` are θ_K, differentiable w.r.t. anything
        ``loss_fn`` reads (φ) and θ_0.

    Example:
        >>> res = unroll(lambda p, s: (tf.reduce_sum(p[0] ** 2), s), [w], SGD(0.1), steps=3)
    """
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"inner_steps must be >= 1, got {steps}")
    if loop not in ("auto", "python", "while"):
        raise ValueError(f"loop must be 'auto', 'python' or 'while', got {loop!r}")
    if backprop not in BACKPROP_MODES:
        raise ValueError(f"backprop must be one of {BACKPROP_MODES}, got {backprop!r}")
    if backprop == "segmented" and int(segment_length) < 1:
        raise ValueError(f"segment_length must be >= 1, got {segment_length!r}")
    if backprop == "truncated" and int(truncate_steps) < 1:
        raise ValueError(f"truncate_steps must be >= 1, got {truncate_steps!r}")
    loop = resolve_loop(loop, steps)  # decided once, on K: every part of the unroll uses the same loop
    params = list(params)
    state = list(state)
    if opt_state is None:
        opt_state = optimizer.init(params)
    fo = bool(first_order)
    # The first step gives the loss at θ_0 (and fixes a while loop's structure).
    params, state, opt_state, first = inner_step(loss_fn, params, state, optimizer, opt_state, fo)
    rest = steps - 1
    if backprop == "segmented" and rest > 0:
        params, state, opt_state = _segmented(
            loss_fn, params, state, optimizer, opt_state, rest, int(segment_length), fo, captured
        )
    elif backprop == "truncated" and steps > int(truncate_steps):
        prefix = steps - int(truncate_steps) - 1  # steps after the first that get no gradient
        params, state, opt_state = _advance(loss_fn, params, state, optimizer, opt_state, prefix, loop, fo)
        params, state, opt_state = tf.nest.map_structure(tf.stop_gradient, (params, state, opt_state))
        params, state, opt_state = _advance(
            loss_fn, list(params), list(state), optimizer, opt_state, int(truncate_steps), loop, fo
        )
    else:
        params, state, opt_state = _advance(loss_fn, params, state, optimizer, opt_state, rest, loop, fo)
    return UnrollResult(list(params), list(state), opt_state, first)
