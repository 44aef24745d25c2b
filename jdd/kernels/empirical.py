"""Empirical (finite-width) NTK of any apply function, e.g. a flax module's ``apply``.

``Theta(x1, x2) = J(x1) J(x2)^T`` with ``J`` the Jacobian of the outputs with respect to the
parameters. Two implementations, same numbers:

* ``"ntvp"`` (default): NTK-vector products. For each output entry of ``x2`` the cotangent
  ``J(x2)^T e`` is one VJP (a parameter-shaped pytree), and ``J(x1) (J(x2)^T e)`` one JVP; the
  Jacobian of ``x1`` is never materialised and peak memory is ``chunk`` parameter copies
  (``chunk=None``: all ``n2 * k`` at once, vectorised).
* ``"jacobian"``: materialise both Jacobians with ``jax.jacrev`` and contract them leaf by leaf;
  faster for small networks, memory ``(n1 + n2) * k * num_params``.

Outputs: ``"mean"`` averages the NTK over the diagonal output pairs (neural-tangents'
``trace_axes=(-1,)`` convention: the trace divided by the number of outputs), ``"sum"`` is the
plain trace, ``"full"`` keeps the (n1, n2, k, k) per-output-pair kernel.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

KernelFn = Callable[..., jax.Array]
OUTPUTS = ("mean", "sum", "full")


def empirical_ntk(apply_fn: Callable[[Any, jax.Array], jax.Array], params: Any, *,
                  output: str = "mean", implementation: str = "ntvp",
                  chunk: int | None = None) -> KernelFn:
    """Empirical NTK of ``apply_fn`` at ``params`` as ``kernel_fn(x1, x2=None)``.

    Args:
        apply_fn: ``apply_fn(params, x) -> (n, k)`` or ``(n,)`` outputs (e.g. ``model.apply`` of a
            flax module, with ``params`` the full variables dict ``{"params": ...}``).
        params: the parameter pytree the NTK is taken at (every floating leaf is differentiated).
        output: ``"mean"`` (default, = neural-tangents' ``trace_axes=(-1,)``), ``"sum"`` or
            ``"full"``.
        implementation: ``"ntvp"`` (VJP + JVP, no full Jacobian) or ``"jacobian"``.
        chunk: ``"ntvp"`` only: number of NTK columns computed at once (``lax.map`` with this
            batch size); None vectorises all ``n2 * k`` columns.

    Returns:
        ``kernel_fn(x1, x2=None)`` returning (n1, n2) (``"mean"``/``"sum"``) or (n1, n2, k, k)
        (``"full"``: entry ``[a, b, o, p] = <d f_o(x1_a), d f_p(x2_b)>``).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import flax.linen as nn
        >>> model = nn.Dense(3)
        >>> x = jnp.ones((4, 5))
        >>> params = model.init(jax.random.key(0), x)
        >>> empirical_ntk(model.apply, params)(x).shape
        (4, 4)
    """
    if output not in OUTPUTS:
        raise ValueError(f"unknown output {output!r}; choose one of {OUTPUTS}.")
    if implementation not in ("ntvp", "jacobian"):
        raise ValueError(f"unknown implementation {implementation!r}; choose 'ntvp' or 'jacobian'.")

    def f(p, x):
        out = apply_fn(p, x)
        return out.reshape(out.shape[0], -1)  # (n, k)

    def full_ntvp(x1, x2):
        out2, vjp2 = jax.vjp(lambda p: f(p, x2), params)
        n2, k = out2.shape
        eye = jnp.eye(n2 * k, dtype=out2.dtype).reshape(n2 * k, n2, k)

        def column(ct):
            (u,) = vjp2(ct)
            return jax.jvp(lambda p: f(p, x1), (params,), (u,))[1]  # (n1, k)

        if chunk is None:
            cols = jax.vmap(column)(eye)
        else:
            cols = jax.lax.map(column, eye, batch_size=int(chunk))
        cols = cols.reshape(n2, k, x1.shape[0], k)  # [b, p, a, o]
        return jnp.transpose(cols, (2, 0, 3, 1))  # [a, b, o, p]

    def full_jacobian(x1, x2):
        j1 = jax.jacrev(f)(params, x1)
        j2 = jax.jacrev(f)(params, x2)
        terms = [jnp.einsum("aoi,bpi->abop", a.reshape(a.shape[:2] + (-1,)),
                            b.reshape(b.shape[:2] + (-1,)))
                 for a, b in zip(jax.tree.leaves(j1), jax.tree.leaves(j2))]
        return sum(terms[1:], terms[0])

    full = full_ntvp if implementation == "ntvp" else full_jacobian

    def kernel_fn(x1, x2=None):
        x2 = x1 if x2 is None else x2
        theta = full(x1, x2)
        if output == "full":
            return theta
        tr = jnp.trace(theta, axis1=2, axis2=3)
        return tr / theta.shape[-1] if output == "mean" else tr

    return kernel_fn
