"""Simple kernels: linear and RBF (Gaussian), as ``kernel_fn(x1, x2=None) -> (n1, n2)``."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jdd.kernels.fc import flat_pair

KernelFn = Callable[..., jax.Array]




def linear_kernel(scale: float = 1.0, bias: float = 0.0, normalize: bool = False) -> KernelFn:
    """Linear kernel ``scale * x1 . x2 (/ d if normalize) + bias`` on flattened rows.

    Args:
        scale: multiplier of the inner product.
        bias: constant added to every entry (a bias feature).
        normalize: divide the inner product by the number of features ``d``.

    Returns:
        ``kernel_fn(x1, x2=None) -> (n1, n2)``; ``x1`` (n1, ...), ``x2`` (n2, ...).

    Example:
        >>> import jax.numpy as jnp
        >>> linear_kernel()(jnp.eye(2)).tolist()
        [[1.0, 0.0], [0.0, 1.0]]
    """

    def kernel_fn(x1, x2=None):
        x1, x2 = flat_pair(x1, x2)
        k = x1 @ x2.T
        if normalize:
            k = k / x1.shape[1]
        return scale * k + bias

    return kernel_fn


def rbf_kernel(gamma: float | None = None, lengthscale: float | None = None) -> KernelFn:
    """Gaussian (RBF) kernel ``exp(-gamma ||x1 - x2||^2)`` on flattened rows.

    Give ``gamma`` or ``lengthscale`` (``gamma = 1 / (2 lengthscale^2)``); with neither,
    ``gamma = 1 / d`` (d = number of features).

    Returns:
        ``kernel_fn(x1, x2=None) -> (n1, n2)`` with entries in (0, 1]. Squared distances are
        computed through the Gram matrix (one matmul) and clipped at 0.

    Example:
        >>> import jax.numpy as jnp
        >>> k = rbf_kernel(gamma=0.5)(jnp.array([[0.0], [1.0]]))
        >>> round(float(k[0, 1]), 4)
        0.6065
    """
    if gamma is not None and lengthscale is not None:
        raise ValueError("give gamma or lengthscale, not both.")
    if lengthscale is not None:
        gamma = 1.0 / (2.0 * float(lengthscale) ** 2)

    def kernel_fn(x1, x2=None):
        x1, x2 = flat_pair(x1, x2)
        g = 1.0 / x1.shape[1] if gamma is None else gamma
        sq = (jnp.sum(x1 * x1, 1)[:, None] + jnp.sum(x2 * x2, 1)[None, :] - 2.0 * (x1 @ x2.T))
        return jnp.exp(-g * jnp.maximum(sq, 0.0))

    return kernel_fn
