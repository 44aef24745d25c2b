"""Gaussian multi-index regression tasks: ``y = g(U x) + noise`` with ``U`` an r x d orthonormal frame.

A multi-index model depends on its d-dimensional Gaussian input only through r << d linear
projections ``z = U x`` (the "principal subspace" span(U)). It is the standard testbed for feature
learning by gradient descent (Damian, Lee, Soltanolkotabi 2022) and for the dataset-distillation
analysis of Kinoshita, Nishikawa, Toyoizumi (2026, arXiv 2603.14830): a network whose first layer has
found span(U) only needs to fit an r-dimensional function, so distilled data that encodes span(U)
costs about r^2 d numbers instead of the ~d^2 r samples real training needs.

A task is a :class:`MultiIndexTask` pytree: the arrays (``x``, ``y``, ``U``, ``coef``) are leaves, so
tasks pass through ``jax.jit`` and ``jax.vmap`` (``jax.vmap(lambda k: multi_index(k, ...))(keys)``
gives one task per seed); the link is static metadata. :func:`sample` draws more samples of the same
task (same ``U``, same link coefficients) and :func:`with_link` makes a *new* task on the same
subspace (a different link, fresh coefficients): the pair used to measure transfer.

Links (``g: (r,) -> ()``), all normalised to unit variance under ``z ~ N(0, I_r)`` and mean zero:

==============  =================================================================================
``"he2"``       ``sum_i He_2(z_i) / sqrt(2 r)``. Its Hessian ``E[grad^2 g]`` has full rank r, so one
                gradient step finds all of span(U) (the default; Damian et al.'s assumption).
``"he3"``       ``sum_i He_3(z_i) / sqrt(6 r)``. Information exponent 3: a single gradient step
                from a modest batch does *not* find span(U); used as a transfer target.
``"he2_he3"``   ``(he2 + he3) / sqrt(2)``.
``"quadratic"`` ``(z^T A z - tr A) / sqrt(2 tr A^2)`` with a random symmetric ``A`` (``coef``,
                drawn from the task key): a different link on the same subspace for every key.
``"staircase"`` ``(z_1 + z_1 z_2 + ... + z_1 ... z_r) / sqrt(r)`` (Abbe et al.'s staircase).
``"tanh_sum"``  ``sum_i tanh(z_i) / sqrt(r var(tanh))`` (odd: its gradient signal is rank one).
==============  =================================================================================

A user callable ``g(z) -> ()`` (on one point, z: (r,)) is accepted too; it is used as given (no
normalisation), so centre it (``E g = 0``) if it is meant to be learned by the two-phase learner.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

PRNGKey = jax.Array

# Var(tanh(z)) for z ~ N(0, 1), by 200-point Gauss-Hermite quadrature (a constant, so no runtime cost).
_TANH_VAR = 0.3942944903978282


class Link(NamedTuple):
    """A link function ``g`` of a multi-index model (hashable: it is static task metadata).

    Attributes:
        name: short name (``"he2"``, ..., or ``"custom"``).
        fn: ``(z (r,), coef) -> ()`` the link on one projected point.
        init_coef: ``(key, r) -> coef`` the link's random coefficients (an array; shape (0,) when the
            link has none).
    """

    name: str
    fn: Callable[[jax.Array, jax.Array], jax.Array]
    init_coef: Callable[[PRNGKey, int], jax.Array]


def _no_coef(key, r):
    del key, r
    return jnp.zeros((0,), jnp.float32)


def _he2(z, coef):
    del coef
    return jnp.sum(z ** 2 - 1.0) / jnp.sqrt(2.0 * z.shape[0])


def _he3(z, coef):
    del coef
    return jnp.sum(z ** 3 - 3.0 * z) / jnp.sqrt(6.0 * z.shape[0])


def _he2_he3(z, coef):
    return (_he2(z, coef) + _he3(z, coef)) / jnp.sqrt(2.0)


def _quad_coef(key, r):
    g = jax.random.normal(key, (r, r))
    return (g + g.T) / 2.0


def _quadratic(z, coef):
    a = coef
    return (z @ a @ z - jnp.trace(a)) / jnp.sqrt(2.0 * jnp.sum(a * a))


def _staircase(z, coef):
    del coef
    return jnp.sum(jnp.cumprod(z)) / jnp.sqrt(z.shape[0])


def _tanh_sum(z, coef):
    del coef
    return jnp.sum(jnp.tanh(z)) / jnp.sqrt(z.shape[0] * _TANH_VAR)


#: Named links (see the module docstring).
LINKS: dict[str, Link] = {
    "he2": Link("he2", _he2, _no_coef),
    "he3": Link("he3", _he3, _no_coef),
    "he2_he3": Link("he2_he3", _he2_he3, _no_coef),
    "quadratic": Link("quadratic", _quadratic, _quad_coef),
    "staircase": Link("staircase", _staircase, _no_coef),
    "tanh_sum": Link("tanh_sum", _tanh_sum, _no_coef),
}


class _Custom(NamedTuple):
    """Wraps a user ``g(z)`` as ``fn(z, coef)`` (a NamedTuple, so equal callables hash equal)."""

    g: Callable

    def __call__(self, z, coef):
        del coef
        return self.g(z)


def get_link(link: str | Link | Callable) -> Link:
    """Resolve a link given by name, as a :class:`Link`, or as a callable ``g(z (r,)) -> ()``.

    Raises:
        ValueError: an unknown name (the message lists the valid ones).
    """
    if isinstance(link, Link):
        return link
    if isinstance(link, str):
        if link not in LINKS:
            raise ValueError(f"unknown link {link!r}; valid names: {', '.join(LINKS)}, or pass a "
                             "callable g(z) on one projected point z of shape (r,).")
        return LINKS[link]
    if callable(link):
        return Link("custom", _Custom(link), _no_coef)
    raise TypeError(f"link must be a name, a Link or a callable; got {type(link).__name__}.")


@struct.dataclass
class MultiIndexTask:
    """Samples of a multi-index task ``y = g(U x) + noise``, plus what is needed to draw more.

    A pytree (flax struct dataclass; behaves like a NamedTuple of its array fields): arrays are leaves,
    ``link`` and ``noise`` are static.

    Attributes:
        x: (n, d) float32 inputs, i.i.d. N(0, I_d).
        y: (n,) float32 targets ``g(U x) + noise * eps``.
        U: (r, d) float32 with orthonormal rows (``U @ U.T == I_r``).
        coef: the link's coefficients (shape per link; (0,) when it has none).
        link: the :class:`Link` (static).
        noise: label noise standard deviation (static).
    """

    x: Any
    y: Any
    U: Any
    coef: Any
    link: Link = struct.field(pytree_node=False)
    noise: float = struct.field(pytree_node=False, default=0.0)

    @property
    def d(self) -> int:
        return int(self.U.shape[-1])

    @property
    def r(self) -> int:
        return int(self.U.shape[-2])

    def target(self, x: jax.Array) -> jax.Array:
        """Noise-free targets ``g(U x)`` for x: (n, d); returns (n,)."""
        return targets(x, self.U, self.coef, self.link)


def targets(x: jax.Array, U: jax.Array, coef: jax.Array, link: str | Link | Callable) -> jax.Array:
    """Noise-free targets ``g(U x)``.

    Args:
        x: (n, d) inputs.
        U: (r, d) projection.
        coef: link coefficients.
        link: link (name, :class:`Link` or callable).

    Returns:
        (n,) targets.
    """
    fn = get_link(link).fn
    return jax.vmap(lambda xi: fn(U @ xi, coef))(x)


def random_frame(key: PRNGKey, d: int, r: int, dtype=None) -> jax.Array:
    """(r, d) matrix with orthonormal rows, Haar-distributed (QR of a Gaussian, sign-fixed).

    ``dtype`` defaults to JAX's default float (float32, or float64 under ``jax.enable_x64``).
    """
    dtype = jnp.result_type(float) if dtype is None else dtype
    if not 1 <= r <= d:
        raise ValueError(f"need 1 <= r <= d; got r={r}, d={d}.")
    g = jax.random.normal(key, (d, r), dtype)
    q, rr = jnp.linalg.qr(g)
    q = q * jnp.sign(jnp.diagonal(rr))[None, :]
    return q.T


def _draw(key, U, coef, link, n, noise):
    kx, ke = jax.random.split(key)
    x = jax.random.normal(kx, (n, U.shape[1]), U.dtype)
    y = targets(x, U, coef, link)
    if noise:
        y = y + noise * jax.random.normal(ke, (n,), U.dtype)
    return x, y


def multi_index(key: PRNGKey, d: int, r: int, link: str | Link | Callable = "he2", n: int = 1024,
                *, noise: float = 0.0) -> MultiIndexTask:
    """A random multi-index task and n samples of it.

    Args:
        key: PRNG key (fixes U, the link coefficients and the samples).
        d: input dimension.
        r: number of indices (intrinsic dimension), 1 <= r <= d.
        link: a name from :data:`LINKS`, a :class:`Link`, or a callable ``g(z (r,)) -> ()``.
        n: number of samples.
        noise: standard deviation of additive Gaussian label noise.

    Returns:
        A :class:`MultiIndexTask` with x: (n, d), y: (n,), U: (r, d).

    Example:
        >>> import jax
        >>> task = multi_index(jax.random.key(0), d=20, r=2, link="he2", n=100)
        >>> task.x.shape, task.y.shape, task.U.shape
        ((100, 20), (100,), (2, 20))
        >>> more = sample(jax.random.key(1), task, 50)          # same U, new inputs
        >>> other = with_link(jax.random.key(2), task, "he3")   # same U, different link
    """
    link = get_link(link)
    ku, kc, kd = jax.random.split(key, 3)
    U = random_frame(ku, d, r)
    coef = link.init_coef(kc, r)
    x, y = _draw(kd, U, coef, link, n, noise)
    return MultiIndexTask(x=x, y=y, U=U, coef=coef, link=link, noise=float(noise))


def sample(key: PRNGKey, task: MultiIndexTask, n: int, *, noise: float | None = None
           ) -> MultiIndexTask:
    """n fresh samples of the same task (same U, link and coefficients).

    Args:
        key: PRNG key.
        task: the task.
        n: number of samples.
        noise: label-noise std; None keeps the task's.

    Returns:
        A :class:`MultiIndexTask` with new ``x`` (n, d) and ``y`` (n,).
    """
    noise = task.noise if noise is None else float(noise)
    x, y = _draw(key, task.U, task.coef, task.link, n, noise)
    return task.replace(x=x, y=y, noise=noise)


def with_link(key: PRNGKey, task: MultiIndexTask, link: str | Link | Callable,
              n: int | None = None, *, noise: float | None = None) -> MultiIndexTask:
    """A new task on the same principal subspace: same U, a different link (fresh coefficients).

    Args:
        key: PRNG key (coefficients and samples).
        task: the source task (only its U is used).
        link: the new link.
        n: number of samples (default: as many as ``task`` has).
        noise: label-noise std; None keeps the task's.

    Returns:
        A :class:`MultiIndexTask` sharing ``task.U``.
    """
    link = get_link(link)
    n = task.x.shape[0] if n is None else n
    noise = task.noise if noise is None else float(noise)
    kc, kd = jax.random.split(key)
    coef = link.init_coef(kc, task.U.shape[0])
    x, y = _draw(kd, task.U, coef, link, n, noise)
    return MultiIndexTask(x=x, y=y, U=task.U, coef=coef, link=link, noise=noise)


def subspace_fraction(W: jax.Array, U: jax.Array) -> jax.Array:
    """Fraction of the Frobenius norm of W that lies in span(U): ``||W U^T U||_F / ||W||_F``.

    1 means every row of W lies in the principal subspace; a random W gives about sqrt(r / d).

    Args:
        W: (L, d) first-layer weights.
        U: (r, d) orthonormal rows.

    Returns:
        () scalar in [0, 1].
    """
    proj = (W @ U.T) @ U
    return jnp.linalg.norm(proj) / jnp.linalg.norm(W)


__all__ = ["LINKS", "Link", "MultiIndexTask", "get_link", "multi_index", "random_frame", "sample",
           "subspace_fraction", "targets", "with_link"]

