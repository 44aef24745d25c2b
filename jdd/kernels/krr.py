"""Kernel ridge regression (KRR) with a trace-relative ridge, by Cholesky solves.

The solve is ``jax.scipy.linalg.solve(..., assume_a="pos")``: one Cholesky factorisation whose
reverse-mode derivative is one more pair of triangular solves with the same factor (a custom
linear solve). Differentiating ``cho_factor`` / ``cho_solve`` instead runs the Cholesky
factorisation's own derivative (triangular solves with matrix right-hand sides): on the KIP
step of issue 10 (support 100, batch 1000, FC NTK depth 2) the loss gradient cost 13.8 CPU ms
that way and 2.8 with the custom linear solve, which made jdd's KIP loop 4.9x faster
(``benchmarks/kip_speed.py`` profiles both).

The ridge is relative to the support kernel's scale, as in KIP: with ``m`` support points,
``K_reg = K_ss + reg * trace(K_ss) / m * I``. Predictions are ``K_ts K_reg^{-1} y_s``.

Dtypes: computations run in the inputs' dtype: float32 by default, float64 when the inputs (or
labels) are float64 (inside ``with jax.enable_x64(True):``).

Any ``kernel_fn(x1, x2) -> (n1, n2)`` plugs in: jdd's closed-form kernels, an empirical NTK, or a
neural-tangents kernel_fn bound to one output, ``functools.partial(nt_kernel_fn, get='ntk')``.
Note that neural-tangents 0.6.5 (its last release) needs ``jax==0.4.28`` and so lives in a
separate environment from jdd (see ``tests/fixtures/make_nt_fixture.py``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve

KernelFn = Callable[..., jax.Array]


def regularize(k_ss: jax.Array, reg: float | jax.Array) -> jax.Array:
    """``K_ss + reg * trace(K_ss) / m * I`` (symmetrised), for ``k_ss`` (m, m)."""
    m = k_ss.shape[-1]
    k_ss = 0.5 * (k_ss + jnp.swapaxes(k_ss, -1, -2))
    ridge = reg * jnp.trace(k_ss, axis1=-2, axis2=-1) / m
    return k_ss + ridge[..., None, None] * jnp.eye(m, dtype=k_ss.dtype)


def krr_solve(k_ss: jax.Array, y_s: jax.Array, reg: float | jax.Array = 1e-6) -> jax.Array:
    """Dual coefficients ``alpha = (K_ss + reg tr(K_ss)/m I)^{-1} y_s`` by Cholesky.

    Differentiable in ``k_ss``, ``y_s`` and ``reg``; the gradient reuses the forward Cholesky
    factor (see the module docstring).

    Args:
        k_ss: (m, m) support kernel (symmetric PSD).
        y_s: (m, k) or (m,) support targets.
        reg: relative ridge (>= 0; 0 needs a strictly positive definite ``k_ss``).

    Returns:
        alpha with the shape of ``y_s``, dtype ``result_type(k_ss, y_s)``.

    Example:
        >>> import jax.numpy as jnp
        >>> krr_solve(jnp.eye(2), jnp.ones((2, 1)), reg=1.0).round(4).tolist()
        [[0.5], [0.5]]
    """
    dtype = jnp.result_type(k_ss.dtype, jnp.asarray(y_s).dtype)
    return solve(regularize(k_ss.astype(dtype), reg), jnp.asarray(y_s, dtype), assume_a="pos")


def krr_predict_from_kernels(k_ts: jax.Array, k_ss: jax.Array, y_s: jax.Array,
                             reg: float | jax.Array = 1e-6) -> jax.Array:
    """KRR predictions from precomputed kernels.

    Args:
        k_ts: (n, m) test-support kernel.
        k_ss: (m, m) support kernel.
        y_s: (m, k) support targets.
        reg: relative ridge.

    Returns:
        (n, k) predictions ``K_ts (K_ss + reg tr(K_ss)/m I)^{-1} y_s``.
    """
    return k_ts @ krr_solve(k_ss, y_s, reg)


def krr_predict_path(k_ts: jax.Array, k_ss: jax.Array, y_s: jax.Array,
                     regs: Sequence[float] | jax.Array) -> jax.Array:
    """KRR predictions for a whole grid of relative ridges from ONE eigendecomposition.

    ``K_ss = V diag(e) V^T`` once, then for every ``reg``:
    ``pred = K_ts V diag(1 / (e + reg tr(K_ss)/m)) V^T y_s``, the same model as
    :func:`krr_predict_from_kernels` (to rounding). Choosing the ridge on validation data costs one
    ``eigh`` instead of one Cholesky per candidate, and the program holds a single LAPACK call
    (XLA:CPU has been seen to hang on jitted, vmapped programs holding several).

    Args:
        k_ts: (n, m) query-support kernel.
        k_ss: (m, m) support kernel (symmetric PSD).
        y_s: (m, k) support targets.
        regs: (r,) relative ridges, each > 0 (a zero ridge needs the Cholesky path).

    Returns:
        (r, n, k) predictions, one slice per ridge.

    Example:
        >>> import jax.numpy as jnp
        >>> k = jnp.array([[2.0, 1.0], [1.0, 2.0]]); y = jnp.eye(2)
        >>> p = krr_predict_path(k, k, y, [1e-3, 1.0])
        >>> bool(jnp.allclose(p[1], krr_predict_from_kernels(k, k, y, 1.0), atol=1e-6))
        True
    """
    dtype = jnp.result_type(k_ss.dtype, k_ts.dtype, jnp.asarray(y_s).dtype)
    k_ss = 0.5 * (k_ss + k_ss.T).astype(dtype)
    e, v = jnp.linalg.eigh(k_ss)
    e = jnp.maximum(e, 0.0)
    ridge = jnp.asarray(regs, dtype) * jnp.trace(k_ss) / k_ss.shape[0]            # (r,)
    vty = v.T @ jnp.asarray(y_s, dtype)                                            # (m, k)
    kv = k_ts.astype(dtype) @ v                                                    # (n, m)
    return jnp.einsum("nm,rm,mk->rnk", kv, 1.0 / (e[None, :] + ridge[:, None]), vty)


def krr_predict(kernel_fn: KernelFn, x_support: jax.Array, y_support: jax.Array,
                x_test: jax.Array, reg: float | jax.Array = 1e-6) -> jax.Array:
    """Fit KRR on a (distilled) support set and predict at ``x_test``.

    Args:
        kernel_fn: ``kernel_fn(x1, x2) -> (n1, n2)``; for a neural-tangents kernel_fn pass
            ``functools.partial(nt_kernel_fn, get='ntk')`` (neural-tangents 0.6.5 runs only with
            jax 0.4.28, in its own environment).
        x_support: (m, ...) support inputs (e.g. ``Synthetic.x``).
        y_support: (m, k) support targets (e.g. ``Synthetic.y``), or (m,) for one output.
        x_test: (n, ...) query inputs; wrap ``kernel_fn`` in :func:`jdd.kernels.blocked` for
            large ``n``.
        reg: relative ridge: ``reg * trace(K_ss) / m`` is added to the diagonal.

    Returns:
        (n, k) predictions (argmax over the last axis for class predictions); dtype follows the
        inputs (float32 unless they are float64).

    Example:
        >>> import jax.numpy as jnp
        >>> from jdd.kernels import fc_kernel
        >>> xs, ys = jnp.eye(2, 3), jnp.eye(2)
        >>> krr_predict(fc_kernel(1), xs, ys, xs, reg=1e-6).argmax(-1).tolist()
        [0, 1]
    """
    k_ss = kernel_fn(x_support, x_support)
    k_ts = kernel_fn(x_test, x_support)
    return krr_predict_from_kernels(k_ts, k_ss, y_support, reg)


def krr_accuracy(kernel_fn: KernelFn, x_support: jax.Array, y_support: jax.Array,
                 x_test: jax.Array, y_test: jax.Array, reg: float | jax.Array = 1e-6) -> jax.Array:
    """Classification accuracy of KRR from a support set: ``mean(argmax(pred) == y_test)``.

    Args:
        y_test: (n,) int class labels. Other arguments as :func:`krr_predict`.

    Returns:
        () float accuracy in [0, 1].
    """
    pred = krr_predict(kernel_fn, x_support, y_support, x_test, reg)
    return jnp.mean((jnp.argmax(pred, -1) == y_test).astype(pred.dtype))
