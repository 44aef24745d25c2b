"""Blocked evaluation of any ``kernel_fn(x1, x2) -> (n1, n2)`` to bound peak memory.

``blocked(kernel_fn, b1, b2)`` evaluates the kernel on (b1, b2) tiles with ``lax.map`` (a
sequential loop inside one compiled program), so intermediates never exceed one tile: e.g. the FC
NTK of 60000 x 1000 MNIST-sized inputs in row blocks of 1000 keeps about ten (1000, 1000) arrays
alive instead of ten (60000, 1000). Each kernel entry depends only on its own pair of rows, so
tiles compute the same numbers as the full evaluation: bit-identical in float64 (tested); in
float32 XLA may fuse the elementwise code differently per tile shape, which moves entries by about
one rounding unit (<= 1e-6 relative). ``x2=None`` is evaluated as ``kernel_fn(tile1, tile2)`` for
every tile, so kernels that treat ``x2=None`` specially (the FC kernels' exact diagonal) take
their general path.

The last, ragged block is padded by repeating a real row (not zeros, which could be a degenerate
input for some kernels) and the padding is cut off the result.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

KernelFn = Callable[..., jax.Array]


def _map_blocks(f: Callable[[jax.Array], jax.Array], x: jax.Array, block: int) -> jax.Array:
    """``lax.map`` of ``f`` over row blocks of ``x``; returns (num_blocks, *f's output shape)."""
    n = x.shape[0]
    nb = math.ceil(n / block)
    pad = nb * block - n
    if pad:
        x = jnp.concatenate([x, jnp.broadcast_to(x[-1:], (pad,) + x.shape[1:])], axis=0)
    return jax.lax.map(f, x.reshape((nb, block) + x.shape[1:]))


def blocked(kernel_fn: KernelFn, block_size: int, block_size2: int | None = None) -> KernelFn:
    """Wrap ``kernel_fn`` to be evaluated in tiles of ``block_size`` x ``block_size2`` rows.

    Args:
        kernel_fn: ``kernel_fn(x1, x2) -> (n1, n2)``, pure and jittable (any jdd kernel, an
            empirical NTK, or a neural-tangents kernel_fn with ``get`` bound).
        block_size: rows of ``x1`` per tile (>= 1).
        block_size2: rows of ``x2`` per tile; None keeps ``x2`` whole (blocks of rows only).

    Returns:
        ``kernel_fn(x1, x2=None) -> (n1, n2)`` with the same values; ``x2=None`` means ``x1``. When
        an input fits in one block it is passed through unchanged (no padding, no loop).

    Example:
        >>> import jax
        >>> from jdd.kernels import fc_kernel
        >>> kfn = fc_kernel(depth=3)
        >>> x = jax.random.normal(jax.random.key(0), (100, 784))
        >>> blocked(kfn, 32)(x, x[:10]).shape
        (100, 10)
    """
    if int(block_size) != block_size or block_size < 1:
        raise ValueError(f"block_size must be a positive integer; got {block_size}.")
    if block_size2 is not None and (int(block_size2) != block_size2 or block_size2 < 1):
        raise ValueError(f"block_size2 must be a positive integer or None; got {block_size2}.")

    def cols(xb, x2):
        n2 = x2.shape[0]
        if block_size2 is None or n2 <= block_size2:
            return kernel_fn(xb, x2)
        out = _map_blocks(lambda yb: kernel_fn(xb, yb), x2, block_size2)  # (nb2, b1, b2)
        return jnp.moveaxis(out, 0, 1).reshape(xb.shape[0], -1)[:, :n2]

    def fn(x1, x2=None):
        x1 = jnp.asarray(x1)
        x2 = x1 if x2 is None else jnp.asarray(x2)
        n1 = x1.shape[0]
        if n1 <= block_size:
            return cols(x1, x2)
        out = _map_blocks(lambda xb: cols(xb, x2), x1, block_size)  # (nb1, b1, n2)
        return out.reshape((-1,) + out.shape[2:])[:n1]

    return fn
