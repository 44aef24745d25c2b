"""Explicit feature maps phi: R^d -> R^p that also expose their kernel and an inverse.

A model that is linear in fixed features, ``f(x) = W phi(x)``, is kernel ridge regression with the
kernel ``k(x1, x2) = phi(x1) . phi(x2)``. Closed-form dataset distillation
(:mod:`jdd.distill.krr_closed_form`) works in feature space and then needs the way back from a
feature vector to an input, so every map here comes with three functions:

* ``phi(x) -> (n, p)``: the explicit map; ``x`` of any shape ``(n, ...)`` is flattened per row.
* ``kernel_fn(x1, x2) -> (n1, n2)``: ``phi(x1) @ phi(x2).T``; plugs into every kernel method (KIP).
* ``invert(features) -> (n, d)``: an input whose features are ``features`` (flattened; reshape it to
  your input shape). Exact when the map is onto in that point (see :attr:`FeatureMap.invertible`).

Each factory takes an explicit PRNG key (where the map is random) and returns a :class:`FeatureMap`
NamedTuple; the functions close over ``params``, which is exposed for inspection and saving.
Computations follow the dtype of the input ``x``: build the map with ``dtype=jnp.float64`` (inside
``jax.enable_x64``) to work in double precision.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

PRNGKey = jax.Array


class FeatureMap(NamedTuple):
    """A feature map with its kernel and its inverse.

    Attributes:
        params: dict of the map's fixed arrays (empty for the identity).
        phi: ``x: (n, ...) -> (n, p)`` features; rows are flattened to ``d`` entries first.
        kernel_fn: ``(x1: (n1, ...), x2: (n2, ...)) -> (n1, n2)`` = ``phi(x1) @ phi(x2).T``.
        invert: ``features: (n, p) -> x: (n, d)`` an input with (as nearly as possible) these
            features; the flattened input, reshape it yourself.
        d: input dimension (flattened).
        p: feature dimension.
        invertible: True when every feature vector in the map's range is hit exactly by ``invert``
            (identity; RFF and LeakyReLU network with ``p <= d``, generic weights).
        name: ``"linear"``, ``"rff"`` or ``"fcnn"``.
        bound: the largest possible ``|phi(x)_j|`` (``sqrt(2/p)`` for RFF, ``inf`` otherwise): a
            feature vector with a larger entry has no preimage.
    """

    params: dict
    phi: Callable[[Any], Any]
    kernel_fn: Callable[[Any, Any], Any]
    invert: Callable[[Any], Any]
    d: int
    p: int
    invertible: bool
    name: str
    bound: float = math.inf


def _flatten(x, d: int):
    """(n, ...) -> (n, d) in a floating dtype; a clear error on the wrong size."""
    x = jnp.asarray(x)
    if x.ndim < 1:
        raise ValueError(f"inputs must have shape (n, ...); got a scalar of shape {x.shape}.")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    flat = x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(x.shape[0], 1)
    if flat.shape[1] != d:
        raise ValueError(f"this feature map expects inputs with {d} entries per row; got shape "
                         f"{x.shape} ({flat.shape[1]} per row). Build the map with d={flat.shape[1]}.")
    return flat


def _check_features(f, p: int):
    f = jnp.asarray(f)
    if f.ndim != 2 or f.shape[1] != p:
        raise ValueError(f"features must have shape (n, {p}); got {f.shape}.")
    return f


def _kernel(phi):
    def kernel_fn(x1, x2):
        return phi(x1) @ phi(x2).T
    return kernel_fn


def _check_dims(d: int, p: int | None) -> tuple[int, int]:
    if int(d) != d or d < 1:
        raise ValueError(f"input dimension d must be a positive integer; got {d}.")
    p = d if p is None else p
    if int(p) != p or p < 1:
        raise ValueError(f"feature dimension p must be a positive integer; got {p}.")
    return int(d), int(p)


def linear_features(d: int) -> FeatureMap:
    """The identity map (linear ridge regression): ``phi(x) = x`` flattened, ``p = d``.

    Args:
        d: flattened input dimension.

    Returns:
        A :class:`FeatureMap`; ``invert`` returns its argument.

    Example:
        >>> import jax.numpy as jnp
        >>> fm = linear_features(4)
        >>> fm.phi(jnp.ones((3, 2, 2))).shape
        (3, 4)
    """
    d, _ = _check_dims(d, None)

    def phi(x):
        return _flatten(x, d)

    def invert(features):
        return _check_features(features, d)

    return FeatureMap({}, phi, _kernel(phi), invert, d, d, True, "linear")


def rff_features(key: PRNGKey, d: int, p: int | None = None, *, sigma2: float = 1e-3,
                 dtype=jnp.float32) -> FeatureMap:
    """Random Fourier features ``phi(x) = sqrt(2/p) cos(A x + b)`` (RBF kernel approximation).

    ``A: (p, d)`` has i.i.d. N(0, sigma2) entries and ``b: (p,)`` is uniform on [0, 2 pi); the
    kernel approximates ``exp(-sigma2 |x1 - x2|^2 / 2)``. The default ``sigma2 = 1/1000`` and
    ``p = d`` are the settings of Chen, Huang & Weng (2024).

    Inversion. Every entry of ``phi`` lies in ``[-r, r]`` with ``r = sqrt(2/p)``. ``invert`` rescales
    by ``1/r`` and clips to ``[-1, 1]`` (feature vectors outside the range have no preimage; the
    clip returns the nearest realisable one), takes ``u = arccos(.)`` in ``[0, pi]`` and then must
    pick a pre-activation ``t = A x`` with ``cos(t + b) = cos(u)``: the solutions are
    ``t = +-u - b + 2 pi j``. Any choice is exact when ``p <= d`` (``A`` has full row rank), so per
    entry we take the solution of smallest ``|t|`` (which keeps ``x`` small) and solve ``A x = t``
    by minimum-norm least squares. With ``p > d`` the system is overdetermined and the result is
    only a least-squares fit (``invertible`` is False).

    Args:
        key: PRNG key for ``A`` and ``b``.
        d: flattened input dimension.
        p: number of features (default ``d``).
        sigma2: variance of the entries of ``A`` (inverse squared RBF bandwidth).
        dtype: dtype of the parameters (use float64 under ``jax.enable_x64`` for double precision).

    Returns:
        A :class:`FeatureMap` with ``params = {"A": (p, d), "b": (p,)}``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> fm = rff_features(jax.random.key(0), 16)
        >>> x = jax.random.normal(jax.random.key(1), (5, 16))
        >>> bool(jnp.allclose(fm.phi(fm.invert(fm.phi(x))), fm.phi(x), atol=1e-5))
        True
    """
    d, p = _check_dims(d, p)
    if not sigma2 > 0:
        raise ValueError(f"sigma2 must be > 0; got {sigma2}.")
    k_a, k_b = jax.random.split(key)
    a = jax.random.normal(k_a, (p, d), dtype) * jnp.sqrt(jnp.asarray(sigma2, dtype))
    b = jax.random.uniform(k_b, (p,), dtype, 0.0, 2.0 * math.pi)
    params = {"A": a, "b": b}
    scale = math.sqrt(2.0 / p)

    def phi(x):
        x = _flatten(x, d)
        return scale * jnp.cos(x @ a.T.astype(x.dtype) + b.astype(x.dtype))

    def invert(features):
        f = _check_features(features, p)
        if not jnp.issubdtype(f.dtype, jnp.floating):
            f = f.astype(jnp.float32)
        bb = b.astype(f.dtype)
        u = jnp.arccos(jnp.clip(f / scale, -1.0, 1.0))
        t1 = _wrap(u - bb)
        t2 = _wrap(-u - bb)
        t = jnp.where(jnp.abs(t1) <= jnp.abs(t2), t1, t2)
        return t @ jnp.linalg.pinv(a.astype(f.dtype)).T

    return FeatureMap(params, phi, _kernel(phi), invert, d, p, p <= d, "rff", scale)


def _wrap(t):
    """Map angles to [-pi, pi)."""
    return jnp.mod(t + math.pi, 2.0 * math.pi) - math.pi


def fcnn_features(key: PRNGKey, d: int, p: int | None = None, *, negative_slope: float = 0.1,
                  dtype=jnp.float32) -> FeatureMap:
    """Features of a random one-hidden-layer network: ``phi(x) = LeakyReLU(W1 x)``, no bias.

    ``W1: (p, d)`` has i.i.d. N(0, 1/d) entries (fan-in scaling); width ``p`` defaults to ``d`` and
    the slope to 0.1, the settings of Chen, Huang & Weng (2024). A distilled model on top of it is
    the network's trained last layer.

    Inversion. LeakyReLU with a positive slope is a bijection of R, so ``invert`` undoes it exactly
    (negative entries divided by the slope) and solves ``W1 x = u`` by minimum-norm least squares:
    exact for any feature vector when ``p <= d`` (generic ``W1`` has full row rank), a
    least-squares fit when ``p > d``.

    Args:
        key: PRNG key for ``W1``.
        d: flattened input dimension.
        p: width (default ``d``).
        negative_slope: LeakyReLU slope for negative inputs, > 0 so the map is invertible.
        dtype: dtype of the parameters.

    Returns:
        A :class:`FeatureMap` with ``params = {"W1": (p, d)}``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> fm = fcnn_features(jax.random.key(0), 16, 8)
        >>> f = jnp.linspace(-1, 1, 8)[None]
        >>> bool(jnp.allclose(fm.phi(fm.invert(f)), f, atol=1e-5))
        True
    """
    d, p = _check_dims(d, p)
    if not negative_slope > 0:
        raise ValueError(f"negative_slope must be > 0 for the map to be invertible; got "
                         f"{negative_slope}.")
    w1 = jax.random.normal(key, (p, d), dtype) / jnp.sqrt(jnp.asarray(d, dtype))
    params = {"W1": w1}

    def phi(x):
        x = _flatten(x, d)
        return jax.nn.leaky_relu(x @ w1.T.astype(x.dtype), negative_slope)

    def invert(features):
        f = _check_features(features, p)
        if not jnp.issubdtype(f.dtype, jnp.floating):
            f = f.astype(jnp.float32)
        u = jnp.where(f >= 0, f, f / negative_slope)
        return u @ jnp.linalg.pinv(w1.astype(f.dtype)).T

    return FeatureMap(params, phi, _kernel(phi), invert, d, p, p <= d, "fcnn")


def feature_map(name: str, key: PRNGKey, d: int, p: int | None = None, **kwargs) -> FeatureMap:
    """Build a feature map by name: ``"linear"``, ``"rff"`` or ``"fcnn"``.

    Example:
        >>> import jax
        >>> feature_map("fcnn", jax.random.key(0), 64).p
        64
    """
    if name == "linear":
        if p not in (None, d):
            raise ValueError(f"the linear map has p = d = {d}; got p={p}.")
        return linear_features(d)
    if name == "rff":
        return rff_features(key, d, p, **kwargs)
    if name == "fcnn":
        return fcnn_features(key, d, p, **kwargs)
    raise ValueError(f"unknown feature map {name!r}; valid names: linear, rff, fcnn.")


__all__ = ["FeatureMap", "fcnn_features", "feature_map", "linear_features", "rff_features"]
