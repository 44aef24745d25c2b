"""Convolution as a matrix product: a drop-in ``conv_general_dilated`` for flax's ``nn.Conv``.

Why this exists: on CPU, XLA lowers the *gradients* of ``lax.conv_general_dilated`` (and, above
all, the convolutions that ``vmap`` creates when the weights differ along the mapped axis: per
class gradients in gradient matching, per seed networks) to slow generic loops. Writing a
``kh x kw`` convolution as ``kh * kw`` shifted views of the padded input concatenated along
channels, times the reshaped kernel, turns all of it into dense ``dot_general`` (batched
``dot_general`` under ``vmap``), which XLA's CPU backend runs fast. Measured on a 2-core CPU
(ConvNet-D3, width 128, see ``benchmarks/conv_impl.py``): a DC outer step on digits is several
times cheaper (18.4 -> 0.91 CPU s for a DC step at IPC 1; compilation 116 -> 30 s). The forward
pass alone is up to 2x slower than the native form on CPU, but distillation always differentiates
and usually vmaps, so the default (``"auto"``) uses the matrix form on the CPU backend; on GPU/TPU
the native convolution is better and ``"auto"`` keeps it.

Both forms compute the same function (tested to float tolerance, values and gradients of any
order); only the summation order differs.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

#: Names accepted by :func:`conv_fn` / the models' ``conv`` attribute.
CONV_IMPLS = ("auto", "xla", "matmul")


def _is_nhwc_hwio(dimension_numbers, ndim: int) -> bool:
    if ndim != 4 or dimension_numbers is None:
        return False
    dn = lax.conv_dimension_numbers((1,) * 4, (1,) * 4, dimension_numbers) \
        if not isinstance(dimension_numbers, lax.ConvDimensionNumbers) else dimension_numbers
    return (tuple(dn.lhs_spec) == (0, 3, 1, 2) and tuple(dn.rhs_spec) == (3, 2, 0, 1)
            and tuple(dn.out_spec) == (0, 3, 1, 2))


def conv_matmul(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding,
                lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                feature_group_count: int = 1, batch_group_count: int = 1, precision=None,
                preferred_element_type=None) -> jax.Array:
    """``lax.conv_general_dilated`` computed as shifted views x kernel (same signature).

    Handles 2-D NHWC x HWIO convolutions with any strides and padding, no dilation and one
    group (what the ConvNet and ResNet use); anything else is passed to
    ``lax.conv_general_dilated`` unchanged.

    Args:
        lhs: (n, h, w, c_in) input.
        rhs: (kh, kw, c_in, c_out) kernel.
        window_strides, padding, ...: as ``lax.conv_general_dilated``.

    Returns:
        (n, h_out, w_out, c_out), equal to ``lax.conv_general_dilated`` up to float rounding.
    """
    dilated = any(d != 1 for d in (lhs_dilation or (1, 1))) or \
        any(d != 1 for d in (rhs_dilation or (1, 1)))
    if (dilated or feature_group_count != 1 or batch_group_count != 1
            or not _is_nhwc_hwio(dimension_numbers, lhs.ndim)):
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count, batch_group_count=batch_group_count,
            precision=precision, preferred_element_type=preferred_element_type)
    kh, kw, ci, co = rhs.shape
    sh, sw = window_strides
    if isinstance(padding, str):
        pads = lax.padtype_to_pads(lhs.shape[1:3], (kh, kw), window_strides, padding)
    else:
        pads = [tuple(p) for p in padding]
    x = jnp.pad(lhs, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
    ho = (x.shape[1] - kh) // sh + 1
    wo = (x.shape[2] - kw) // sw + 1
    views = [x[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :]
             for i in range(kh) for j in range(kw)]
    cols = views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)
    out = jnp.dot(cols, rhs.reshape(kh * kw * ci, co), precision=precision,
                  preferred_element_type=preferred_element_type)
    return out.astype(preferred_element_type or jnp.result_type(lhs, rhs))


def _auto(lhs, rhs, *args, **kwargs):
    if jax.default_backend() == "cpu":
        return conv_matmul(lhs, rhs, *args, **kwargs)
    return lax.conv_general_dilated(lhs, rhs, *args, **kwargs)


def conv_fn(impl: str):
    """The ``conv_general_dilated`` function for ``nn.Conv`` of an implementation name.

    Args:
        impl: ``"xla"`` (``lax.conv_general_dilated``), ``"matmul"`` (:func:`conv_matmul`) or
            ``"auto"`` (the matrix form on the CPU backend, the native one elsewhere).
    """
    if impl == "xla":
        return lax.conv_general_dilated
    if impl == "matmul":
        return conv_matmul
    if impl == "auto":
        return _auto
    raise ValueError(f"unknown conv implementation {impl!r}; valid: {', '.join(CONV_IMPLS)}.")
