"""Merging heterogeneous sources into one complete synthetic dataset (task-specific DD, case A).

Kungurtsev et al. 2024 (arXiv 2409.01410), first case study. K sources record the same linear-Gaussian
DBN; each hides different variables and adds noise (:mod:`jdd.tasks.dbn`). We learn ONE complete
synthetic dataset ``S`` (m rows of length V*T) such that the DBN fitted on ``S`` in closed form
(:func:`jdd.tasks.dbn.fit_dbn`) maximises the log-likelihood of every source's observed variables
(hidden ones marginalised, each source's noise variance added):

    min_S  - (1 / K) sum_k  mean_{rows i of source k}  log p_{fit(S)}(x_ik[obs_k]) / D

The inner learner is the closed-form fit, so the bilevel gradient is exact (no unrolling). It is an
instance of :func:`jdd.distill.core.bilevel`.

Choices the paper leaves open (all parameters):

* Initialisation ("initialise D^S from each source"): ``init="sources"`` draws ceil(m / K) rows
  from every source and fills their hidden entries with the observed column means (so S starts as
  a small naive pool); ``init="gaussian"`` starts from N(0, 1) rows.
* Perturbation ("each epoch, perturb a part D_j^S with Gaussian noise"): each outer step, a random
  ``perturb_frac`` of the synthetic rows gets N(0, perturb_std^2) noise before the fit. This makes
  S robust to small changes of its own rows (a smoothing regulariser); ``perturb_std=0`` disables.
  The paper then scores the perturbed part on the other sources; here every step scores the fit on
  a fresh batch of ``batch_size`` rows from EVERY source, which covers the same held-out signal.
* Weighting: sources are weighted equally; the per-row log-likelihood is divided by D so the outer
  loss has the same scale for every T.
* Noise variances of the sources are assumed known (they are part of each source's description).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from jdd.distill.core import Distiller, Synthetic, bilevel
from jdd.tasks.dbn import Sources, fit_dbn, source_loglik

PRNGKey = jax.Array


def sample_source_rows(key: PRNGKey, sources: Sources, batch_size: int) -> Sources:
    """``batch_size`` random rows (without replacement) of every source, masks kept.

    Args:
        key: PRNG key.
        sources: (K, n, D) sources.
        batch_size: rows per source (static); >= n returns the sources unchanged.

    Returns:
        :class:`Sources` with values (K, min(batch_size, n), D).
    """
    k, n, _ = sources.values.shape
    if batch_size >= n:
        return sources
    keys = jax.random.split(key, k)
    idx = jax.vmap(lambda kk: jax.random.choice(kk, n, (batch_size,), replace=False))(keys)
    vals = jnp.take_along_axis(sources.values, idx[:, :, None], axis=1)
    return sources._replace(values=vals)


def init_from_sources(key: PRNGKey, sources: Sources, num_rows: int) -> jax.Array:
    """(num_rows, D) rows drawn evenly from the sources, hidden entries mean-imputed.

    Args:
        key: PRNG key.
        sources: (K, n, D) sources.
        num_rows: m.

    Returns:
        (m, D) initial synthetic rows.
    """
    k, n, d = sources.values.shape
    per = min(n, math.ceil(num_rows / k))
    sub = sample_source_rows(key, sources, per)
    m = jnp.broadcast_to(sources.mask[:, None, :], sources.values.shape)
    col_mean = jnp.sum(sources.values * m, axis=(0, 1)) / jnp.maximum(jnp.sum(m, axis=(0, 1)), 1)
    pooled = jnp.where(sources.mask[:, None, :] > 0, sub.values, col_mean).reshape(k * per, d)
    order = jnp.arange(k * per).reshape(k, per).T.reshape(-1)   # interleave sources
    rows = pooled[order]
    if rows.shape[0] < num_rows:                      # fewer source rows than m: repeat
        reps = math.ceil(num_rows / rows.shape[0])
        rows = jnp.tile(rows, (reps, 1))
    return rows[:num_rows]


def perturb_rows(key: PRNGKey, x: jax.Array, frac: float, std: float) -> jax.Array:
    """Add N(0, std^2) noise to round(frac * m) random rows of ``x`` (m, D)."""
    m = x.shape[0]
    count = int(round(frac * m))
    if count == 0 or std == 0:
        return x
    k_sel, k_noise = jax.random.split(key)
    chosen = jnp.zeros((m,), x.dtype).at[jax.random.permutation(k_sel, m)[:count]].set(1.0)
    return x + std * chosen[:, None] * jax.random.normal(k_noise, x.shape, x.dtype)


def dbn_merge(num_rows: int, num_vars: int, num_slices: int,
              optimizer: optax.GradientTransformation | None = None, *,
              batch_size: int | None = 256, reg: float = 1e-2, ridge: float = 1e-2,
              perturb_frac: float = 0.25, perturb_std: float = 0.05,
              init: str = "sources") -> Distiller:
    """Distil one complete dataset from partially observed, noisy sources (bilevel, closed form).

    Args:
        num_rows: m, rows of the synthetic dataset (the "IPC"-like budget).
        num_vars: V, variables per time slice.
        num_slices: T, time slices per row (rows have length V*T).
        optimizer: outer optax optimizer (default ``optax.adam(3e-2)``).
        batch_size: rows per source scored each step (None: all rows).
        reg: diagonal loading of the fitted covariances (see :func:`jdd.tasks.dbn.fit_dbn`).
        ridge: ridge penalty on the fitted transition matrix.
        perturb_frac: fraction of synthetic rows perturbed before each inner fit.
        perturb_std: standard deviation of that perturbation (0 disables it).
        init: ``"sources"`` (mean-imputed source rows) or ``"gaussian"``.

    Returns:
        A :class:`jdd.distill.core.Distiller` over ``Sources`` data; params ``{"x": (m, V*T)}``;
        ``synthetic(state).x`` is the distilled dataset; metrics hold ``"loss"``, ``"grad_norm"``,
        ``"loglik"`` (mean per-row source log-likelihood of the batch).

    Example:
        >>> from jdd.distill.core import distill
        >>> from jdd.tasks.dbn import random_dbn, sample_dbn, make_sources
        >>> x = sample_dbn(jax.random.key(0), random_dbn(jax.random.key(1), 4), 300, 3)
        >>> src = make_sources(jax.random.key(2), x, 4, 3, hidden_per_source=1)
        >>> d = dbn_merge(10, 4, 3, batch_size=64)
        >>> res = distill(d, jax.random.key(3), src, steps=20, progress=False)
        >>> res.synthetic.x.shape
        (10, 12)
    """
    if init not in ("sources", "gaussian"):
        raise ValueError(f"init must be 'sources' or 'gaussian'; got {init!r}")
    optimizer = optimizer or optax.adam(3e-2)
    d = num_vars * num_slices

    def init_params(key, sources):
        if sources.values.shape[-1] != d:
            raise ValueError(f"sources have rows of length {sources.values.shape[-1]}, expected "
                             f"num_vars * num_slices = {d}")
        if init == "sources":
            x = init_from_sources(key, sources, num_rows)
        else:
            x = jax.random.normal(key, (num_rows, d), sources.values.dtype)
        return {"x": x}

    def fit(params, key):
        x = perturb_rows(key, params["x"], perturb_frac, perturb_std)
        return fit_dbn(x, num_vars, reg=reg, ridge=ridge)

    def outer_loss(model, batch, params, key):
        ll = source_loglik(model, batch, num_slices)                  # (K,)
        return -jnp.mean(ll) / d, {"loglik": jnp.mean(ll)}

    def sample_batch(key, sources):
        return sources if batch_size is None else sample_source_rows(key, sources, batch_size)

    def to_synthetic(params):
        x = params["x"]
        return Synthetic(x=x, y=jnp.zeros((x.shape[0], 0), x.dtype))

    return bilevel(init_params, fit, outer_loss, optimizer, sample_batch=sample_batch,
                   to_synthetic=to_synthetic)
