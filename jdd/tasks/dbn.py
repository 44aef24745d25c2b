"""Linear-Gaussian dynamic Bayesian networks (DBNs) and heterogeneous, partially observed sources.

The task of case study A in Kungurtsev et al. 2024 ("Dataset Distillation from First Principles",
arXiv 2409.01410): several sources record the same process, each hides a different subset of the
variables and adds measurement noise; we want ONE complete dataset whose fitted model explains
every source. This module holds the model and the data; :mod:`jdd.distill.dbn_merge` distils.

The model (used both to generate data and as the learner fitted on a dataset):

    X_0 ~ N(mu0, S0),    X_t = A X_{t-1} + b + e_t,   e_t ~ N(0, Q),   t = 1 .. T-1

with V variables per slice and T slices. A row of a dataset is the whole trajectory flattened
time-major: ``row[t * V + v] = X_t[v]`` (length D = V * T). Within-slice structure (edges between
variables of the same slice) lives in the full innovation covariance Q: the generator draws it from
a sparse linear structural equation model ``e = W e + eps`` with W strictly lower triangular, so
``Q = (I - W)^-1 diag(s^2) (I - W)^-T``; the fitted model estimates a full Q.

The joint law of a row is Gaussian. Writing the DBN as ``X = L X + c + E`` with L holding A on its
block sub-diagonal, ``X = M (c + E)`` with ``M = (I - L)^-1`` whose block (t, s) is ``A^(t-s)`` for
t >= s; so ``mean = M c`` and ``cov = M blockdiag(S0, Q, ..., Q) M^T`` (:func:`joint_moments`).

Example:
    >>> import jax
    >>> true = random_dbn(jax.random.key(0), num_vars=4)
    >>> x = sample_dbn(jax.random.key(1), true, 200, num_slices=3)       # (200, 12)
    >>> model = fit_dbn(x, num_vars=4)
    >>> mean, cov = joint_moments(model, num_slices=3)                   # (12,), (12, 12)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PRNGKey = jax.Array

_LOG_2PI = math.log(2.0 * math.pi)


class LinearDBN(NamedTuple):
    """Parameters of a linear-Gaussian DBN with V variables per slice.

    Attributes:
        mu0: (V,) mean of the first slice.
        S0: (V, V) covariance of the first slice.
        A: (V, V) transition matrix (X_t = A X_{t-1} + b + e_t).
        b: (V,) transition intercept.
        Q: (V, V) innovation covariance (carries the within-slice structure).
    """

    mu0: jax.Array
    S0: jax.Array
    A: jax.Array
    b: jax.Array
    Q: jax.Array


class Sources(NamedTuple):
    """K partially observed, noisy sources of the same process (fixed shapes: jit/vmap friendly).

    Attributes:
        values: (K, n, D) observed rows; hidden entries hold 0 and are never read.
        mask: (K, D) float, 1 where the source observes the coordinate, 0 where it is hidden.
        noise_var: (K,) variance of the Gaussian noise the source adds to every observed entry.
    """

    values: jax.Array
    mask: jax.Array
    noise_var: jax.Array


# ----------------------------------------------------------------------------- the generator


def random_dbn(key: PRNGKey, num_vars: int, *, density: float = 0.3, spectral_radius: float = 0.8,
               within_slice_density: float = 0.3, noise_scale: float = 0.5) -> LinearDBN:
    """A random stable, sparse-ish linear-Gaussian DBN (the data-generating process).

    A = diag(d) + sparse off-diagonal part, d ~ U(0.3, 0.7), off-diagonal entries present with
    probability ``density`` and drawn N(0, 0.5^2); A is then rescaled so its spectral radius is at
    most ``spectral_radius``. Q comes from a within-slice linear SEM with strictly lower triangular
    weights (present with probability ``within_slice_density``, N(0, 0.5^2)) and innovation
    standard deviations U(0.5, 1) * ``noise_scale``. X_0 is drawn from the stationary law
    (S0 = sum_k A^k Q A^kT, mu0 = 0, b = 0), so every slice has comparable scale.

    Args:
        key: PRNG key.
        num_vars: V, variables per slice.
        density: probability of an off-diagonal temporal edge.
        spectral_radius: upper bound on |eig(A)| (< 1 for stability).
        within_slice_density: probability of a within-slice edge.
        noise_scale: scale of the innovation standard deviations.

    Returns:
        A :class:`LinearDBN` with float arrays of the default dtype.

    Example:
        >>> dbn = random_dbn(jax.random.key(0), 5)
        >>> dbn.A.shape, dbn.Q.shape
        ((5, 5), (5, 5))
    """
    v = num_vars
    k = jax.random.split(key, 6)
    diag = jax.random.uniform(k[0], (v,), minval=0.3, maxval=0.7)
    off = (jax.random.bernoulli(k[1], density, (v, v)) * 0.5 * jax.random.normal(k[2], (v, v)))
    a = jnp.diag(diag) + off * (1.0 - jnp.eye(v))
    rho = jnp.max(jnp.abs(jnp.linalg.eigvals(a)))
    a = a * jnp.minimum(1.0, spectral_radius / rho)
    w = (jax.random.bernoulli(k[3], within_slice_density, (v, v))
         * 0.5 * jax.random.normal(k[4], (v, v)))
    w = jnp.tril(w, -1)
    s = noise_scale * jax.random.uniform(k[5], (v,), minval=0.5, maxval=1.0)
    iw = jnp.linalg.inv(jnp.eye(v) - w)
    q = iw @ jnp.diag(s ** 2) @ iw.T

    def body(carry, _):
        ak, acc = carry
        return (ak @ a, acc + ak @ q @ ak.T), None

    (_, s0), _ = jax.lax.scan(body, (jnp.eye(v), jnp.zeros((v, v))), None, length=60)
    return LinearDBN(mu0=jnp.zeros(v), S0=s0, A=a, b=jnp.zeros(v), Q=q)


def joint_moments(dbn: LinearDBN, num_slices: int) -> tuple[jax.Array, jax.Array]:
    """Mean and covariance of a whole trajectory (time-major flattening).

    Args:
        dbn: the model (V variables per slice).
        num_slices: T (static).

    Returns:
        (mean (V*T,), cov (V*T, V*T)).

    Example:
        >>> mean, cov = joint_moments(random_dbn(jax.random.key(0), 3), num_slices=4)
        >>> cov.shape
        (12, 12)
    """
    v, t = dbn.A.shape[0], num_slices

    def body(ak, _):
        return dbn.A @ ak, ak

    _, powers = jax.lax.scan(body, jnp.eye(v, dtype=dbn.A.dtype), None, length=t)  # (T, V, V)
    lag = np.arange(t)[:, None] - np.arange(t)[None, :]                           # (T, T)
    blocks = powers[np.clip(lag, 0, t - 1)] * (lag >= 0)[:, :, None, None]           # (T,T,V,V)
    m = blocks.transpose(0, 2, 1, 3).reshape(v * t, v * t)
    c = jnp.concatenate([dbn.mu0] + [dbn.b] * (t - 1))
    noise = jax.scipy.linalg.block_diag(dbn.S0, *([dbn.Q] * (t - 1)))
    cov = m @ noise @ m.T
    return m @ c, 0.5 * (cov + cov.T)


def sample_dbn(key: PRNGKey, dbn: LinearDBN, n: int, num_slices: int) -> jax.Array:
    """``n`` independent trajectories from the DBN, flattened time-major.

    Args:
        key: PRNG key.
        dbn: the model.
        n: number of rows.
        num_slices: T.

    Returns:
        (n, V*T) samples.
    """
    mean, cov = joint_moments(dbn, num_slices)
    chol = jnp.linalg.cholesky(cov + 1e-9 * jnp.eye(cov.shape[0], dtype=cov.dtype))
    z = jax.random.normal(key, (n, cov.shape[0]), dtype=cov.dtype)
    return mean + z @ chol.T


def make_sources(key: PRNGKey, x: jax.Array, num_vars: int, num_sources: int, *,
                 hidden_per_source: int, noise_std=0.3) -> Sources:
    """Split clean rows into K sources, each hiding different variables and adding noise.

    Rows are split into K equal consecutive parts (the remainder is dropped). Source k hides
    ``hidden_per_source`` variables in every time slice, taken cyclically from a random permutation
    of the variables (source k hides ``perm[(k h + j) % V]``, j < h), so the sources hide different
    subsets and, when ``K h >= V``, every variable is hidden somewhere. Observed entries get
    N(0, noise_std_k^2) noise.

    Args:
        key: PRNG key.
        x: (n, V*T) clean rows (time-major).
        num_vars: V.
        num_sources: K.
        hidden_per_source: h, variables hidden by each source (0 <= h < V).
        noise_std: scalar or (K,) per-source noise standard deviation.

    Returns:
        :class:`Sources` with values (K, n // K, V*T).

    Example:
        >>> x = sample_dbn(jax.random.key(0), random_dbn(jax.random.key(1), 4), 90, 3)
        >>> src = make_sources(jax.random.key(2), x, 4, 3, hidden_per_source=1)
        >>> src.values.shape, src.mask.shape
        ((3, 30, 12), (3, 12))
    """
    n, d = x.shape
    v, k = num_vars, num_sources
    if d % v:
        raise ValueError(f"row length {d} is not a multiple of num_vars={v}")
    if not 0 <= hidden_per_source < v:
        raise ValueError(f"hidden_per_source must be in [0, {v}); got {hidden_per_source}")
    per = n // k
    if per == 0:
        raise ValueError(f"{n} rows cannot be split into {k} sources")
    k_perm, k_noise = jax.random.split(key)
    perm = np.asarray(jax.random.permutation(k_perm, v))
    var_mask = np.ones((k, v))
    for s in range(k):
        for j in range(hidden_per_source):
            var_mask[s, perm[(s * hidden_per_source + j) % v]] = 0.0
    mask = jnp.asarray(np.tile(var_mask, (1, d // v)), dtype=x.dtype)           # (K, D)
    std = jnp.broadcast_to(jnp.asarray(noise_std, x.dtype), (k,))
    vals = x[: per * k].reshape(k, per, d)
    vals = vals + std[:, None, None] * jax.random.normal(k_noise, vals.shape, x.dtype)
    return Sources(values=vals * mask[:, None, :], mask=mask, noise_var=std ** 2)


def split_sources(sources: Sources, n_first: int) -> tuple[Sources, Sources]:
    """Split every source's rows into the first ``n_first`` and the rest (e.g. train / test)."""
    a = sources._replace(values=sources.values[:, :n_first])
    b = sources._replace(values=sources.values[:, n_first:])
    return a, b


def mean_impute(sources: Sources) -> jax.Array:
    """Naive pooling: stack all sources' rows, fill hidden entries with the observed column mean.

    A coordinate no source observes is filled with 0.

    Args:
        sources: (K, n, D) sources.

    Returns:
        (K * n, D) completed rows (noise left in).
    """
    k, n, d = sources.values.shape
    m = jnp.broadcast_to(sources.mask[:, None, :], sources.values.shape)
    count = jnp.sum(m, axis=(0, 1))
    col_mean = jnp.sum(sources.values * m, axis=(0, 1)) / jnp.maximum(count, 1.0)
    filled = jnp.where(m > 0, sources.values, col_mean)
    return filled.reshape(k * n, d)


# ----------------------------------------------------------------------------- the learner


def fit_dbn(x: jax.Array, num_vars: int, *, reg: float = 1e-2, ridge: float = 1e-2) -> LinearDBN:
    """Closed-form (differentiable) maximum-likelihood fit of a linear-Gaussian DBN.

    * first slice: sample mean and (biased, 1/m) covariance of X_0, plus ``reg * I``;
    * transition: ridge least squares of X_t on [X_{t-1}, 1] pooled over all rows and all
      t = 1..T-1 (a time-homogeneous model; the ridge penalty ``ridge * |A|^2`` spares the
      intercept), then Q = residual covariance (1/N) + ``reg * I``.

    With ``reg = ridge = 0`` this is the exact Gaussian MLE; the small defaults keep the fit
    well posed (and its gradient finite) when a dataset has fewer rows than variables.

    Args:
        x: (m, V*T) rows, time-major; T >= 2.
        num_vars: V.
        reg: diagonal loading added to S0 and Q.
        ridge: ridge penalty on A.

    Returns:
        The fitted :class:`LinearDBN`.

    Example:
        >>> x = jax.random.normal(jax.random.key(0), (50, 12))
        >>> fit_dbn(x, num_vars=4).A.shape
        (4, 4)
    """
    m, d = x.shape
    v = num_vars
    t = d // v
    if t * v != d or t < 2:
        raise ValueError(f"rows of length {d} need num_vars={v} dividing them and >= 2 slices")
    xs = x.reshape(m, t, v)
    x0 = xs[:, 0]
    mu0 = jnp.mean(x0, axis=0)
    c0 = x0 - mu0
    eye = jnp.eye(v, dtype=x.dtype)
    s0 = c0.T @ c0 / m + reg * eye
    prev = xs[:, :-1].reshape(-1, v)
    nxt = xs[:, 1:].reshape(-1, v)
    z = jnp.concatenate([prev, jnp.ones((prev.shape[0], 1), x.dtype)], axis=1)    # (N, V+1)
    pen = jnp.diag(jnp.concatenate([jnp.full((v,), ridge, x.dtype), jnp.zeros((1,), x.dtype)]))
    w = jnp.linalg.solve(z.T @ z + pen, z.T @ nxt)                                  # (V+1, V)
    resid = nxt - z @ w
    q = resid.T @ resid / prev.shape[0] + reg * eye
    return LinearDBN(mu0=mu0, S0=s0, A=w[:v].T, b=w[v], Q=q)


# ----------------------------------------------------------------------------- the likelihood


def masked_gaussian_logpdf(x: jax.Array, mean: jax.Array, cov: jax.Array, mask: jax.Array,
                           noise_var=0.0) -> jax.Array:
    """Log density of the OBSERVED coordinates of each row, hidden ones marginalised out.

    The marginal of a Gaussian on the observed coordinates is the Gaussian with the observed
    sub-vector of the mean and sub-matrix of the covariance; the source's noise adds
    ``noise_var * I``. To keep shapes static (jit/vmap), hidden coordinates are decoupled instead
    of removed: their rows/columns of the covariance are replaced by the identity and their
    residual by 0, which contributes exactly 0 to the quadratic form and the log-determinant.

    Args:
        x: (n, D) rows (hidden entries arbitrary).
        mean: (D,) model mean.
        cov: (D, D) model covariance.
        mask: (D,) 1 = observed, 0 = hidden.
        noise_var: scalar noise variance added on the observed coordinates.

    Returns:
        (n,) log-likelihoods.

    Example:
        >>> ll = masked_gaussian_logpdf(jnp.zeros((2, 3)), jnp.zeros(3), jnp.eye(3),
        ...                             jnp.array([1.0, 0.0, 1.0]))
        >>> ll.shape
        (2,)
    """
    d = mean.shape[0]
    eye = jnp.eye(d, dtype=cov.dtype)
    mm = mask[:, None] * mask[None, :]
    c = mm * (cov + noise_var * eye) + (1.0 - mask)[:, None] * eye
    r = (x - mean) * mask
    # explicit inverse + LU log-determinant rather than a Cholesky factor and triangular solves:
    # XLA's CPU triangular solve (and the Cholesky gradient built on it) is ~100x slower at these
    # sizes (D <= ~100), and c is symmetric positive definite, so both give the same numbers.
    prec = jnp.linalg.inv(c)
    quad = jnp.einsum("ni,ij,nj->n", r, 0.5 * (prec + prec.T), r)
    logdet = jnp.linalg.slogdet(c)[1]
    return -0.5 * (quad + logdet + jnp.sum(mask) * _LOG_2PI)


def source_loglik(dbn: LinearDBN, sources: Sources, num_slices: int) -> jax.Array:
    """Mean held-out log-likelihood per row of each source's observed variables.

    Args:
        dbn: a (fitted) model.
        sources: (K, n, D) sources; each source's noise variance is added to the model.
        num_slices: T.

    Returns:
        (K,) mean log-likelihood per row of every source.
    """
    mean, cov = joint_moments(dbn, num_slices)
    per = jax.vmap(lambda xv, m, nv: jnp.mean(masked_gaussian_logpdf(xv, mean, cov, m, nv)))
    return per(sources.values, sources.mask, sources.noise_var)


def clean_loglik(dbn: LinearDBN, x: jax.Array, num_slices: int) -> jax.Array:
    """Mean log-likelihood per row of clean, fully observed rows ``x`` (n, V*T)."""
    mean, cov = joint_moments(dbn, num_slices)
    mask = jnp.ones(mean.shape, mean.dtype)
    return jnp.mean(masked_gaussian_logpdf(x, mean, cov, mask))
