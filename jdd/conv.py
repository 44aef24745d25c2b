"""Convolution as a matrix product: a drop-in ``conv_general_dilated`` for flax's ``nn.Conv``.

Why this exists: on CPU, XLA lowers the *gradients* of ``lax.conv_general_dilated`` (and, above
all, the convolutions that ``vmap`` creates when the weights differ along the mapped axis: per
class gradients in gradient matching, per seed networks) to slow generic loops. Writing a
``kh x kw`` convolution as ``kh * kw`` shifted views of the padded input concatenated along
channels, times the reshaped kernel, turns all of it into dense ``dot_general`` (batched
``dot_general`` under ``vmap``), which XLA's CPU backend runs fast. Measured on a 2-core CPU
(ConvNet-D3, width 128, see ``benchmarks/conv_impl.py``): a DC outer step on digits is several
times cheaper (18.4 -> 0.91 CPU s for a DC step at IPC 1; compilation 116 -> 30 s).

The forward pass alone is the other way round: XLA's native convolution is about 2x faster than
the matrix form on CPU, as long as the weights are not batched. So the CPU default
(:func:`conv_hybrid`, ``"auto"``) is a convolution whose *value* is the native convolution (run
once per weight set: under a ``vmap`` over weights it loops over them, through a custom batching
rule, instead of letting XLA build one grouped convolution) and whose *derivatives* are the
matrix form's (a custom JVP; reverse mode transposes it). Work that differentiates runs exactly
the matrix form; work that does not runs the native forward. ``benchmarks/conv_impl.py``
(``results/conv_impl.json``): a DM step at IPC 1 on digits (real embeddings, no gradient) 1.36x
cheaper than with the matrix form; DC, DSA and evaluation training unchanged (they
differentiate); predicting 1347 images with 3 vmapped ConvNets (weights batched, inputs shared)
not faster (1.00x; why is open). On GPU/TPU ``"auto"`` is the native convolution throughout.

Every form computes the same function (tested to float tolerance, values and derivatives of any
order, forward and reverse mode, under vmap); only the summation order differs.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import custom_batching, lax
from jax.custom_derivatives import SymbolicZero

#: Names accepted by :func:`conv_fn` / the models' ``conv`` attribute.
CONV_IMPLS = ("auto", "xla", "matmul", "hybrid")
_NHWC = ("NHWC", "HWIO", "NHWC")


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
    return _dispatch(_matrix, lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                     dimension_numbers, feature_group_count, batch_group_count, precision,
                     preferred_element_type)


def _dispatch(impl, lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
              dimension_numbers, feature_group_count, batch_group_count, precision,
              preferred_element_type):
    """``impl(lhs, rhs, strides, pads, precision, preferred_element_type)`` for the 2-D NHWC x
    HWIO, undilated, ungrouped convolutions it handles; ``lax.conv_general_dilated`` otherwise."""
    dilated = any(d != 1 for d in (lhs_dilation or (1, 1))) or \
        any(d != 1 for d in (rhs_dilation or (1, 1)))
    if (dilated or feature_group_count != 1 or batch_group_count != 1
            or not _is_nhwc_hwio(dimension_numbers, lhs.ndim)):
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count, batch_group_count=batch_group_count,
            precision=precision, preferred_element_type=preferred_element_type)
    if isinstance(padding, str):
        pads = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    else:
        pads = padding
    pads = tuple(tuple(int(v) for v in p) for p in pads)
    strides = tuple(int(v) for v in window_strides)
    return impl(lhs, rhs, strides, pads, precision, preferred_element_type)


def _matrix(lhs, rhs, strides, pads, precision, preferred_element_type):
    """The matrix form: ``kh * kw`` shifted views concatenated along channels, times the kernel."""
    kh, kw, ci, co = rhs.shape
    sh, sw = strides
    x = jnp.pad(lhs, ((0, 0), pads[0], pads[1], (0, 0)))
    ho = (x.shape[1] - kh) // sh + 1
    wo = (x.shape[2] - kw) // sw + 1
    views = [x[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :]
             for i in range(kh) for j in range(kw)]
    cols = views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)
    out = jnp.dot(cols, rhs.reshape(kh * kw * ci, co), precision=precision,
                  preferred_element_type=preferred_element_type)
    return out.astype(preferred_element_type or jnp.result_type(lhs, rhs))


@functools.lru_cache(maxsize=None)
def _hybrid(strides: tuple, pads: tuple, precision, preferred_element_type):
    """The native-value / matrix-derivative convolution for one static configuration."""

    def matrix(x, w):
        return _matrix(x, w, strides, pads, precision, preferred_element_type)

    @custom_batching.custom_vmap
    def value(x, w):  # XLA's native convolution
        return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC,
                                        precision=precision,
                                        preferred_element_type=preferred_element_type)

    @value.def_vmap
    def _batched(axis_size, in_batched, x, w):
        x_batched, w_batched = in_batched
        if not w_batched:
            if not x_batched:
                return value(x, w), False
            # one weight set: fold the mapped axis into the images, one convolution
            y = value(x.reshape((-1,) + x.shape[2:]), w)
            return y.reshape((axis_size, x.shape[1]) + y.shape[1:]), True
        # a weight set per index: one native convolution each (not XLA's grouped form)
        if not x_batched:
            return lax.map(lambda w_i: value(x, w_i), w), True
        return lax.map(lambda xw: value(*xw), (x, w)), True

    @jax.custom_jvp
    def conv(x, w):
        return value(x, w)

    def _jvp(primals, tangents):
        x, w = primals
        dx, dw = tangents
        # the primal in the matrix form too, so that XLA shares its patches with the tangent's
        # (reverse mode then runs exactly the matrix form's program)
        y = matrix(x, w)
        t = None
        if not isinstance(dx, SymbolicZero):
            t = matrix(dx, w)
        if not isinstance(dw, SymbolicZero):
            u = matrix(x, dw)
            t = u if t is None else t + u
        return y, t

    conv.defjvp(_jvp, symbolic_zeros=True)
    return conv


def conv_hybrid(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding,
                lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                feature_group_count: int = 1, batch_group_count: int = 1, precision=None,
                preferred_element_type=None) -> jax.Array:
    """``lax.conv_general_dilated`` valued natively, differentiated in the matrix form.

    Same signature and value as ``lax.conv_general_dilated``; its derivatives (forward or
    reverse mode, any order) are :func:`conv_matmul`'s, and under ``vmap`` with batched weights
    it runs one native convolution per weight set. Configurations :func:`conv_matmul` does not
    handle (dilation, groups, other layouts) go to ``lax.conv_general_dilated`` unchanged.

    Args:
        lhs: (n, h, w, c_in) input.
        rhs: (kh, kw, c_in, c_out) kernel.
        window_strides, padding, ...: as ``lax.conv_general_dilated``.

    Returns:
        (n, h_out, w_out, c_out).
    """
    return _dispatch(_hybrid_conv, lhs, rhs, window_strides, padding, lhs_dilation,
                     rhs_dilation, dimension_numbers, feature_group_count, batch_group_count,
                     precision, preferred_element_type)


def _hybrid_conv(lhs, rhs, strides, pads, precision, preferred_element_type):
    return _hybrid(strides, pads, precision, preferred_element_type)(lhs, rhs)


def _auto(lhs, rhs, *args, **kwargs):
    if jax.default_backend() == "cpu":
        return conv_hybrid(lhs, rhs, *args, **kwargs)
    return lax.conv_general_dilated(lhs, rhs, *args, **kwargs)


def conv_fn(impl: str):
    """The ``conv_general_dilated`` function for ``nn.Conv`` of an implementation name.

    Args:
        impl: ``"xla"`` (``lax.conv_general_dilated``), ``"matmul"`` (:func:`conv_matmul`),
            ``"hybrid"`` (:func:`conv_hybrid`) or ``"auto"`` (``"hybrid"`` on the CPU backend,
            ``"xla"`` elsewhere).
    """
    if impl == "xla":
        return lax.conv_general_dilated
    if impl == "matmul":
        return conv_matmul
    if impl == "hybrid":
        return conv_hybrid
    if impl == "auto":
        return _auto
    raise ValueError(f"unknown conv implementation {impl!r}; valid: {', '.join(CONV_IMPLS)}.")
