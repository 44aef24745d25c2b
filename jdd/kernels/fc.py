"""Closed-form infinite-width kernels (NNGP and NTK) of fully-connected networks.

The networks are neural-tangents' ``stax.serial(Dense, act, ..., Dense, act, Dense)`` with
``depth`` hidden layers, every ``Dense`` in the NTK parameterization
(``stax.Dense(width, W_std, b_std, parameterization='ntk')``, i.e.
``h = W_std / sqrt(fan_in) * x @ W + b_std * b`` with standard normal ``W`` and ``b``), and a
readout ``Dense`` with the same ``W_std``/``b_std``. The values match neural-tangents'
``kernel_fn(x1, x2, 'nngp' | 'ntk')`` for that network (tested to 1e-5 relative error in float64
against a neural-tangents 0.6.5 fixture).

The recursion, per layer ``l`` (``K`` the covariance of pre-activations, ``Theta`` the NTK):

* input: ``K_0(x, x') = x . x' / d`` (rows flattened), ``Theta_0 = 0``;
* dense: ``K <- W_std**2 * K + b_std**2``; ``Theta <- W_std**2 * Theta + K`` (the new ``K``);
* activation: ``K <- E[phi(u) phi(u')]``, ``Theta <- Theta * E[phi'(u) phi'(u')]`` with ``(u, u')``
  Gaussian with covariance ``[[K(x, x), K(x, x')], [K(x, x'), K(x', x')]]``; closed forms:
  ReLU (arc-cosine kernel of degree 1/0), erf (arcsine kernel), identity.

Everything after the single Gram matmul ``x1 @ x2.T`` is elementwise on ``(n1, n2)`` arrays
(plus cheap per-row variance vectors), so under ``jax.jit`` XLA fuses the whole recursion into one
loop and the kernel costs about one matmul.

The elementwise maps (:func:`activation_map`) are written in terms of the correlation
``rho = K(x, x') / sqrt(K(x, x) K(x', x'))`` with hand-written derivatives, so gradients with respect
to the inputs are finite everywhere, including the diagonal of ``K(x, x)`` where ``rho = 1``
(needed by KIP, which differentiates ``K_ss`` with respect to the support set).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

KernelFn = Callable[..., jax.Array]

ACTIVATIONS = ("relu", "erf", "identity")
KINDS = ("ntk", "nngp")


# ---------------------------------------------------------------------------------------------
# Safe elementwise primitives (finite derivatives at the boundary rho = +-1 and at zero variance).
# ---------------------------------------------------------------------------------------------

@jax.custom_jvp
def safe_sqrt(x: jax.Array) -> jax.Array:
    """``sqrt(max(x, 0))`` whose derivative is 0 (not inf/NaN) where ``x <= 0``."""
    return jnp.sqrt(jnp.maximum(x, 0.0))


@safe_sqrt.defjvp
def _safe_sqrt_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    y = safe_sqrt(x)
    pos = x > 0
    return y, jnp.where(pos, dx / (2.0 * jnp.where(pos, y, 1.0)), 0.0)


# Coefficients of Abramowitz & Stegun 4.4.46: arccos(a) = sqrt(1 - a) * P(a) on [0, 1], absolute
# error <= 2e-8 (below float32 resolution). Used for float32, where XLA's arccos on CPU costs about
# 6x a fused multiply-add chain; float64 keeps the exact jnp.arccos.
_ACOS_COEFFS = (-0.0012624911, 0.0066700901, -0.0170881256, 0.0308918810, -0.0501743046,
                0.0889789874, -0.2145988016, 1.5707963050)


def fast_arccos(rho: jax.Array) -> jax.Array:
    """``arccos(clip(rho, -1, 1))``: exact for float64, a 2e-8-accurate polynomial otherwise."""
    rho = jnp.clip(rho, -1.0, 1.0)
    if rho.dtype == jnp.float64:
        return jnp.arccos(rho)
    a = jnp.abs(rho)
    p = jnp.asarray(_ACOS_COEFFS[0], rho.dtype)
    for c in _ACOS_COEFFS[1:]:
        p = p * a + c
    theta = jnp.sqrt(1.0 - a) * p
    return jnp.where(rho < 0, jnp.pi - theta, theta)


@jax.custom_jvp
def relu_angle_maps(rho: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(J1(rho), theta)`` with ``theta = arccos(rho)`` and the degree-1 arc-cosine function
    ``J1 = sqrt(1 - rho^2) + (pi - theta) rho`` (``rho`` clipped to [-1, 1]).

    Derivatives are exact and finite: ``dJ1/drho = pi - theta`` (the singular terms of the two
    summands cancel) and ``dtheta/drho = -1/sqrt(1 - rho^2)``, set to 0 at ``|rho| = 1``.
    """
    rho = jnp.clip(rho, -1.0, 1.0)
    theta = fast_arccos(rho)
    return jnp.sqrt(jnp.maximum(1.0 - rho * rho, 0.0)) + (jnp.pi - theta) * rho, theta


@relu_angle_maps.defjvp
def _relu_angle_maps_jvp(primals, tangents):
    (rho,), (drho,) = primals, tangents
    j1, theta = relu_angle_maps(rho)
    s2 = 1.0 - rho * rho
    inside = s2 > 0
    dtheta = jnp.where(inside, -drho / jnp.sqrt(jnp.where(inside, s2, 1.0)), 0.0)
    return (j1, theta), ((jnp.pi - theta) * drho, dtheta)


def _rsqrt_or_zero(v: jax.Array) -> jax.Array:
    """``1/sqrt(v)`` where ``v > 0``, else 0 (zero-variance inputs, e.g. blank image patches)."""
    pos = v > 0
    return jnp.where(pos, jax.lax.rsqrt(jnp.where(pos, v, 1.0)), 0.0)


class ActivationMap(NamedTuple):
    """The infinite-width action of one elementwise nonlinearity ``phi``.

    Attributes:
        cross: ``(k12, v1, v2) -> (k12_new, kdot)``. ``k12`` is the covariance of the
            pre-activations at two inputs, ``v1``/``v2`` their variances, broadcastable to
            ``k12``'s shape. Returns ``E[phi(u) phi(u')]`` and ``E[phi'(u) phi'(u')]``.
        var: ``v -> E[phi(u)^2]`` for ``u ~ N(0, v)`` (the diagonal, computed cheaply).
        dot_var: ``v -> E[phi'(u)^2]`` for ``u ~ N(0, v)`` (the diagonal of ``kdot``).
    """

    cross: Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
    var: Callable[[jax.Array], jax.Array]
    dot_var: Callable[[jax.Array], jax.Array]


def _relu_cross(k12, v1, v2):
    # rho = k12 / sqrt(v1 v2); where a variance is zero the covariance is zero too and
    # neural-tangents' convention fills theta = pi / 2 (rho = 0), which we reproduce.
    r1, r2 = _rsqrt_or_zero(v1), _rsqrt_or_zero(v2)
    rho = k12 * r1 * r2
    s = safe_sqrt(v1) * safe_sqrt(v2)
    j1, theta = relu_angle_maps(rho)
    nngp = s * j1 * (1.0 / (2.0 * math.pi))
    kdot = (jnp.pi - theta) * (1.0 / (2.0 * math.pi))
    return nngp, kdot


def _erf_cross(k12, v1, v2):
    q1 = jax.lax.rsqrt(1.0 + 2.0 * v1)
    q2 = jax.lax.rsqrt(1.0 + 2.0 * v2)
    q = q1 * q2
    r = 2.0 * k12 * q  # |r| < 1 strictly for finite variances
    nngp = (2.0 / math.pi) * jnp.arcsin(r)
    kdot = (4.0 / math.pi) * q * jax.lax.rsqrt(1.0 - r * r)
    return nngp, kdot


_ACT_MAPS = {
    "relu": ActivationMap(_relu_cross, lambda v: 0.5 * v, lambda v: jnp.full_like(v, 0.5)),
    "erf": ActivationMap(_erf_cross,
                         lambda v: (2.0 / math.pi) * jnp.arcsin(2.0 * v / (1.0 + 2.0 * v)),
                         lambda v: (4.0 / math.pi) * jax.lax.rsqrt(1.0 + 4.0 * v)),
    "identity": ActivationMap(lambda k, v1, v2: (k, jnp.ones_like(k)), lambda v: v,
                              jnp.ones_like),
}


def activation_map(name: str) -> ActivationMap:
    """The :class:`ActivationMap` of ``"relu"``, ``"erf"`` (neural-tangents' ``stax.Erf()``, i.e.
    ``erf(x)``) or ``"identity"``.

    Example:
        >>> import jax.numpy as jnp
        >>> k, kdot = activation_map("relu").cross(jnp.float32(0.0), 1.0, 1.0)
        >>> round(float(k), 4), round(float(kdot), 4)  # orthogonal inputs: 1 / (2 pi), 1 / 4
        (0.1592, 0.25)
    """
    if name not in _ACT_MAPS:
        raise ValueError(f"unknown activation {name!r}; choose one of {ACTIVATIONS}.")
    return _ACT_MAPS[name]


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown kernel kind {kind!r}; choose 'ntk' or 'nngp'.")


def _check_common(depth: int, activation: str, kind: str) -> ActivationMap:
    if int(depth) != depth or depth < 0:
        raise ValueError(f"depth must be a non-negative integer; got {depth}.")
    check_kind(kind)
    return activation_map(activation)


def flat_pair(x1, x2):
    """Resolve ``x2=None`` to ``x1``, flatten rows, and check the feature counts agree."""
    x1, x2 = _as_pair(x1, x2)
    x1 = x1.reshape(x1.shape[0], -1)
    x2 = x2.reshape(x2.shape[0], -1)
    if x1.shape[1] != x2.shape[1]:
        raise ValueError(f"kernel_fn: x1 rows have {x1.shape[1]} features but x2 rows have "
                         f"{x2.shape[1]}; they must match.")
    return x1, x2


def _as_pair(x1, x2):
    x1 = jnp.asarray(x1)
    x2 = x1 if x2 is None else jnp.asarray(x2)
    dtype = jnp.result_type(x1.dtype, x2.dtype, jnp.float32)
    return x1.astype(dtype), x2.astype(dtype)


def fc_kernel(depth: int = 1, activation: str = "relu", w_std: float = 1.0, b_std: float = 0.0,
              kind: str = "ntk") -> KernelFn:
    """Infinite-width NNGP or NTK of a fully-connected network, as ``kernel_fn(x1, x2=None)``.

    The network is ``depth`` hidden ``Dense -> activation`` blocks and a ``Dense`` readout, in
    neural-tangents' NTK parameterization (see the module docstring); it equals
    ``stax.serial(*[stax.Dense(w, W_std=w_std, b_std=b_std), act] * depth,
    stax.Dense(1, W_std=w_std, b_std=b_std))``'s ``kernel_fn(x1, x2, kind)``.

    Args:
        depth: number of hidden layers (0 gives the linear kernel of the readout alone).
        activation: ``"relu"``, ``"erf"`` or ``"identity"``.
        w_std: weight standard deviation ``W_std`` of every Dense layer.
        b_std: bias standard deviation ``b_std`` of every Dense layer (0 means no bias).
        kind: ``"ntk"`` or ``"nngp"``.

    Returns:
        ``kernel_fn(x1, x2=None) -> (n1, n2)``: ``x1`` (n1, ...) and ``x2`` (n2, ...) with the same
        number of features after flattening each row; ``x2=None`` means ``x2 = x1``. The result
        has the inputs' floating dtype (float32 for integer inputs). Pure and jittable.

    Example:
        >>> import jax.numpy as jnp
        >>> kfn = fc_kernel(depth=2, activation="relu", w_std=2.0 ** 0.5, b_std=0.1)
        >>> x = jnp.eye(3, 4)
        >>> kfn(x).shape, kfn(x, x[:2]).shape
        ((3, 3), (3, 2))
    """
    act = _check_common(depth, activation, kind)
    w2, b2 = float(w_std) ** 2, float(b_std) ** 2

    def kernel_fn(x1, x2=None):
        symmetric = x2 is None or x2 is x1
        x1, x2 = flat_pair(x1, x2)
        inv_d = 1.0 / x1.shape[1]
        k12 = (x1 @ x2.T) * inv_d
        v1 = jnp.sum(x1 * x1, axis=1) * inv_d
        v2 = jnp.sum(x2 * x2, axis=1) * inv_d
        return fc_recursion(k12, v1[:, None], v2[None, :], act, depth, w2, b2, kind,
                            symmetric=symmetric)

    return kernel_fn


def fc_recursion(k12: jax.Array, v1: jax.Array, v2: jax.Array, act: ActivationMap, depth: int,
                 w2: float, b2: float, kind: str, symmetric: bool = False) -> jax.Array:
    """Run the FC NNGP/NTK recursion from the input covariances.

    Args:
        k12: (..., n1, n2) input cross-covariance.
        v1: (..., n1, 1) input variances of the first inputs (broadcastable against ``k12``).
        v2: (..., 1, n2) input variances of the second inputs.
        act: the activation's :class:`ActivationMap`.
        depth: hidden layers; ``w2``/``b2``: squared weight/bias std; ``kind``: "ntk"/"nngp".
        symmetric: the two input sets are the same (``K(x, x)``): the diagonal is then carried
            exactly by the variance recursion (correlation exactly 1) instead of through the
            arc-cosine of a rounded correlation, which in float32 loses about 4 digits
            (``arccos(1 - eps) ~ sqrt(2 eps)``). Only for 2-D ``k12``.

    Returns:
        (..., n1, n2) kernel after the readout layer.
    """
    ntk = kind == "ntk"
    eye = jnp.eye(k12.shape[-1], dtype=bool) if symmetric else None
    if symmetric:
        k12 = jnp.where(eye, v1, k12)
    theta = None
    for _ in range(depth):
        k12 = w2 * k12 + b2
        v1, v2 = w2 * v1 + b2, w2 * v2 + b2
        if ntk:
            theta = k12 if theta is None else w2 * theta + k12
        k12, kdot = act.cross(k12, v1, v2)
        if symmetric:
            k12 = jnp.where(eye, act.var(v1), k12)
            kdot = jnp.where(eye, act.dot_var(v1), kdot)
        v1, v2 = act.var(v1), act.var(v2)
        if ntk:
            theta = theta * kdot
    k12 = w2 * k12 + b2
    if not ntk:
        return k12
    return k12 if theta is None else w2 * theta + k12
