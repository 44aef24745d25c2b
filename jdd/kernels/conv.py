"""Closed-form infinite-width kernels of convolutional networks on NHWC images.

The network is neural-tangents'
``stax.serial(*[stax.Conv(c, filter_shape, padding='SAME', W_std=w_std, b_std=b_std), act] * depth,
readout, stax.Dense(1, W_std=w_std, b_std=b_std))`` (NTK parameterization, stride 1), with
``readout`` either ``stax.Flatten()`` or ``stax.GlobalAvgPool()``. Values match its
``kernel_fn(x1, x2, 'nngp' | 'ntk')`` (tested in float64 against a neural-tangents 0.6.5 fixture).

Conventions reproduced from neural-tangents (facts, read from its stax layers):

* Input covariance between pixel ``p`` of ``x1`` and pixel ``q`` of ``x2``: the channel sum
  ``sum_c x1[p, c] x2[q, c] / C``.
* Conv (NTK parameterization): the covariance of outputs at positions ``(p, q)`` is
  ``W_std**2 / (fh * fw) * sum_{o in filter} K[p + o, q + o] + b_std**2``: the same offset ``o`` on
  both sides, zero outside the image (SAME zero padding, ``lo = (f - 1) // 2`` before), divided
  by the full filter size even at the border. The NTK follows
  ``Theta <- W_std**2 / (fh * fw) * sum_o Theta[p + o, q + o] + K_new``.
* Activations act elementwise per position pair (see :func:`jdd.kernels.fc.activation_map`).
* ``Flatten`` readout: the mean over positions of the same-position covariance ``K[p, p]`` (the
  Dense readout's fan-in is ``H * W * C``); since convolutions map same-position covariances to
  same-position covariances, only the (n1, n2, H, W) diagonal is ever needed: cheap.
* ``GlobalAvgPool`` readout: the mean over all position pairs ``K[p, q]``. This needs the full
  (n1, n2, H, W, H, W) covariance: quadratic in the number of pixels, so the kernel is computed in
  blocks of input pairs (``block_size``), e.g. 32 x 32 pairs for 8 x 8 digits and 2 x 2 for
  28 x 28 MNIST by default (about 2**22 covariance entries per block).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from jdd.kernels.blocked import blocked
from jdd.kernels.fc import KernelFn, _as_pair, _check_common

READOUTS = ("flatten", "gap")

#: Covariance entries per block targeted by the default blocking of the GAP kernel.
GAP_BLOCK_ENTRIES = 2 ** 22


def _same_pads(f: int) -> tuple[int, int]:
    total = f - 1
    return total // 2, total - total // 2


def _diag_box(a: jax.Array, axis_pairs: Sequence[tuple[int, ...]],
              filter_shape: Sequence[int]) -> jax.Array:
    """Sum of ``a`` over filter offsets applied jointly to each group of axes, zero padded.

    For spatial dimension ``i`` with axes ``axis_pairs[i]`` (one axis for same-position
    covariances, two for position-pair covariances) and filter size ``f``, returns
    ``sum_{k < f} a_padded[..., j + k, ..., j' + k, ...]`` (SAME padding). No normalisation.
    """
    for axes, f in zip(axis_pairs, filter_shape):
        if f == 1:
            continue
        lo, hi = _same_pads(f)
        pads = [(0, 0)] * a.ndim
        for ax in axes:
            pads[ax] = (lo, hi)
        ap = jnp.pad(a, pads)
        out = None
        for k in range(f):
            sl = ap
            for ax in axes:
                sl = jax.lax.slice_in_dim(sl, k, k + a.shape[ax], axis=ax)
            out = sl if out is None else out + sl
        a = out
    return a


def conv_kernel(depth: int = 1, activation: str = "relu", w_std: float = 1.0, b_std: float = 0.0,
                kind: str = "ntk", *, readout: str = "flatten",
                filter_shape: Sequence[int] = (3, 3),
                block_size: int | None = None) -> KernelFn:
    """Infinite-width NNGP or NTK of a convolutional network on NHWC images.

    ``depth`` blocks of ``Conv(filter_shape, SAME) -> activation``, then ``readout`` (``"flatten"``
    or ``"gap"`` = global average pooling), then a Dense readout; every layer has weight std
    ``w_std`` and bias std ``b_std``, NTK parameterization. See the module docstring for the exact
    conventions (those of neural-tangents' ``stax``).

    Args:
        depth: number of convolutional layers (>= 0).
        activation: ``"relu"``, ``"erf"`` or ``"identity"``.
        w_std: weight standard deviation of every layer.
        b_std: bias standard deviation of every layer (0: no bias).
        kind: ``"ntk"`` or ``"nngp"``.
        readout: ``"flatten"`` (cost linear in pixels) or ``"gap"`` (quadratic in pixels).
        filter_shape: (fh, fw) filter size, stride 1.
        block_size: input rows per block (both sides) for the GAP kernel; None picks one that keeps
            about ``GAP_BLOCK_ENTRIES`` covariance entries per block. Ignored for ``"flatten"``
            (wrap it in :func:`jdd.kernels.blocked` if needed).

    Returns:
        ``kernel_fn(x1, x2=None) -> (n1, n2)`` for ``x1`` (n1, h, w, c) and ``x2`` (n2, h, w, c);
        dtype follows the inputs. Pure and jittable.

    Example:
        >>> import jax
        >>> x = jax.random.uniform(jax.random.key(0), (4, 8, 8, 1))
        >>> conv_kernel(depth=2, readout="gap")(x).shape
        (4, 4)
    """
    act = _check_common(depth, activation, kind)
    if readout not in READOUTS:
        raise ValueError(f"unknown readout {readout!r}; choose 'flatten' or 'gap'.")
    filter_shape = tuple(int(f) for f in filter_shape)
    if len(filter_shape) != 2 or min(filter_shape) < 1:
        raise ValueError(f"filter_shape must be two positive ints (fh, fw); got {filter_shape}.")
    w2, b2 = float(w_std) ** 2, float(b_std) ** 2
    scale = w2 / (filter_shape[0] * filter_shape[1])
    ntk = kind == "ntk"

    def conv_var(v):  # (n, H, W) same-position variances
        return scale * _diag_box(v, ((1,), (2,)), filter_shape) + b2

    def check(x1, x2):
        if x1.ndim != 4 or x2.ndim != 4 or x1.shape[1:] != x2.shape[1:]:
            raise ValueError("conv_kernel: inputs must be NHWC images (n, h, w, c) of the same "
                             f"(h, w, c); got shapes {x1.shape} and {x2.shape}.")

    def recursion(spec, pairs, row1, row2, axes):
        """The layer recursion on one covariance layout.

        ``spec`` builds the input covariance from two NHWC batches, ``pairs`` names the spatial
        axes that a convolution couples, ``row1``/``row2`` index the per-position variances of
        each batch into that layout, and ``axes`` are the positions the readout averages over.
        Flatten readout: ``(n1, n2, H, W)``, same positions only. GAP: ``(n1, n2, H, W, H, W)``,
        every pair of positions.
        """
        def fn(x1, x2=None):
            x1, x2 = _as_pair(x1, x2)
            check(x1, x2)
            inv_c = 1.0 / x1.shape[-1]
            k = jnp.einsum(spec, x1, x2) * inv_c
            v1 = jnp.sum(x1 * x1, -1) * inv_c
            v2 = jnp.sum(x2 * x2, -1) * inv_c
            theta = None
            for _ in range(depth):
                k = scale * _diag_box(k, pairs, filter_shape) + b2
                v1, v2 = conv_var(v1), conv_var(v2)
                if ntk:
                    theta = k if theta is None else (
                        scale * _diag_box(theta, pairs, filter_shape) + k)
                k, kdot = act.cross(k, v1[row1], v2[row2])
                v1, v2 = act.var(v1), act.var(v2)
                if ntk:
                    theta = theta * kdot
            k = w2 * jnp.mean(k, axis=axes) + b2
            if not ntk or theta is None:
                return k
            return w2 * jnp.mean(theta, axis=axes) + k
        return fn

    every = slice(None)
    flatten_fn = recursion("ahwc,bhwc->abhw", ((2,), (3,)), (every, None), (None, every),
                           (2, 3))
    gap_fn = recursion("aijc,bklc->abijkl", ((2, 4), (3, 5)),
                       (every, None, every, every, None, None),
                       (None, every, None, None, every, every), (2, 3, 4, 5))

    if readout == "flatten":
        return flatten_fn

    def kernel_fn(x1, x2=None):
        x1 = jnp.asarray(x1)
        if x1.ndim != 4:
            raise ValueError(f"conv_kernel: inputs must be NHWC images; got shape {x1.shape}.")
        bs = block_size
        if bs is None:
            per_pair = (x1.shape[1] * x1.shape[2]) ** 2
            bs = max(1, int((GAP_BLOCK_ENTRIES / per_pair) ** 0.5))
        return blocked(gap_fn, bs, bs)(x1, x2)

    return kernel_fn
