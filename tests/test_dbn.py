"""Tests for jdd.tasks.dbn and jdd.distill.dbn_merge (tiny sizes, float64 where numbers matter)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdd.distill.core import distill, scan_steps, seed_keys
from jdd.distill.dbn_merge import dbn_merge, sample_source_rows
from jdd.tasks.dbn import (clean_loglik, fit_dbn, joint_moments, make_sources, masked_gaussian_logpdf,
                           mean_impute, random_dbn, sample_dbn, source_loglik, split_sources)

V, T, K = 3, 3, 3


@jax.jit
def _true_and_rows(key):
    true = random_dbn(key, V)
    return true, sample_dbn(jax.random.fold_in(key, 1), true, 90, T)


def _problem(n=60, seed=0):
    true, x = _true_and_rows(jax.random.key(seed))
    x = x[:n]
    src = make_sources(jax.random.key(seed + 2), x, V, K, hidden_per_source=1, noise_std=0.3)
    return true, x, src


def test_fit_matches_numpy_lstsq():
    with jax.enable_x64(True):
        _, x, _ = _problem()
        fit = fit_dbn(x, V, reg=0.0, ridge=0.0)
        xs = np.asarray(x).reshape(-1, T, V)
        prev = xs[:, :-1].reshape(-1, V)
        nxt = xs[:, 1:].reshape(-1, V)
        z = np.concatenate([prev, np.ones((len(prev), 1))], 1)
        w, *_ = np.linalg.lstsq(z, nxt, rcond=None)
        np.testing.assert_allclose(fit.A, w[:V].T, atol=1e-10)
        np.testing.assert_allclose(fit.b, w[V], atol=1e-10)
        r = nxt - z @ w
        np.testing.assert_allclose(fit.Q, r.T @ r / len(r), atol=1e-10)
        np.testing.assert_allclose(fit.mu0, xs[:, 0].mean(0), atol=1e-12)
        np.testing.assert_allclose(fit.S0, np.cov(xs[:, 0].T, bias=True), atol=1e-10)


def test_joint_moments_match_recursion():
    with jax.enable_x64(True):
        dbn = random_dbn(jax.random.key(3), V)
        dbn = dbn._replace(mu0=jnp.arange(V) * 0.3, b=-jnp.ones(V) * 0.2)
        mean, cov = joint_moments(dbn, T)
        a, q = np.asarray(dbn.A), np.asarray(dbn.Q)
        mus, sig = [np.asarray(dbn.mu0)], [np.asarray(dbn.S0)]
        for _ in range(1, T):
            mus.append(a @ mus[-1] + np.asarray(dbn.b))
            sig.append(a @ sig[-1] @ a.T + q)
        np.testing.assert_allclose(mean, np.concatenate(mus), atol=1e-12)
        for t in range(T):
            for s in range(t + 1):
                block = np.linalg.matrix_power(a, t - s) @ sig[s]
                np.testing.assert_allclose(cov[t * V:(t + 1) * V, s * V:(s + 1) * V], block,
                                           atol=1e-12)


def test_masked_loglik_matches_explicit_marginal():
    with jax.enable_x64(True):
        true, x, _ = _problem()
        mean, cov = joint_moments(true, T)
        mask = np.ones(V * T)
        mask[[1, 4, 7]] = 0.0
        nv = 0.09
        got = masked_gaussian_logpdf(x[:5], mean, cov, jnp.asarray(mask), nv)
        obs = mask > 0
        sub = np.asarray(cov)[np.ix_(obs, obs)] + nv * np.eye(obs.sum())
        ref = jax.scipy.stats.multivariate_normal.logpdf(np.asarray(x[:5])[:, obs],
                                                         np.asarray(mean)[obs], sub)
        np.testing.assert_allclose(got, ref, atol=1e-10)
        # explicit density with numpy slogdet
        r = np.asarray(x[0])[obs] - np.asarray(mean)[obs]
        _, logdet = np.linalg.slogdet(sub)
        dens = -0.5 * (r @ np.linalg.solve(sub, r) + logdet + obs.sum() * np.log(2 * np.pi))
        np.testing.assert_allclose(got[0], dens, atol=1e-10)
        np.testing.assert_allclose(clean_loglik(true, x, T),
                                   jax.scipy.stats.multivariate_normal.logpdf(x, mean, cov).mean(),
                                   atol=1e-10)


def test_sources_masks_and_noise():
    _, x, src = _problem(n=61)
    assert src.values.shape == (K, 20, V * T)
    hidden = 1.0 - np.asarray(src.mask).reshape(K, T, V)[:, 0]
    assert np.all(hidden.sum(1) == 1) and np.all(hidden.sum(0) == 1)   # each var hidden once
    assert np.all(np.asarray(src.values)[np.broadcast_to(np.asarray(src.mask)[:, None] == 0,
                                                         src.values.shape)] == 0)
    pooled = mean_impute(src)
    assert pooled.shape == (K * 20, V * T) and np.all(np.isfinite(pooled))
    b = sample_source_rows(jax.random.key(0), src, 7)
    assert b.values.shape == (K, 7, V * T)
    tr, te = split_sources(src, 15)
    assert tr.values.shape[1] == 15 and te.values.shape[1] == 5


def test_bilevel_gradient_matches_finite_differences():
    """One SGD step of the distiller moves x by exactly -lr * d(outer loss)/dx (checked by FD)."""
    with jax.enable_x64(True):
        _, _, src = _problem()
        m, lr = 6, 1e-3
        d = dbn_merge(m, V, T, optax.sgd(lr), batch_size=None, perturb_std=0.0)
        state = jax.jit(d.init)(jax.random.key(0), src)
        x0 = state.params["x"]
        new, metrics = jax.jit(d.step)(state, jax.random.key(1), src)
        grad = (x0 - new.params["x"]) / lr

        @jax.jit
        def loss(x):
            return -jnp.mean(source_loglik(fit_dbn(x, V), src, T)) / (V * T)

        np.testing.assert_allclose(metrics["loss"], loss(x0), rtol=1e-12)
        eps = 1e-6
        for i, j in [(0, 0), (2, 5), (5, 8), (3, 1)]:
            e = jnp.zeros_like(x0).at[i, j].set(eps)
            fd = (loss(x0 + e) - loss(x0 - e)) / (2 * eps)
            np.testing.assert_allclose(grad[i, j], fd, rtol=1e-5, atol=1e-9)


def test_vmapped_equals_looped_and_improves():
    _, _, src = _problem(n=90)
    d = dbn_merge(5, V, T, optax.adam(3e-2), batch_size=None, perturb_frac=0.4)
    keys = seed_keys(0, 2)
    many = distill(d, keys, src, steps=30, log_every=30, progress=False)

    @jax.jit
    def one(key):  # the same computation as distill() for one seed, compiled once
        k_init, k_run = jax.random.split(key)
        state, _ = scan_steps(d, d.init(k_init, src), k_run, src, 30)
        return d.synthetic(state).x

    for i in range(2):
        np.testing.assert_allclose(many.synthetic.x[i], one(keys[i]), rtol=1e-5, atol=1e-5)
    loss = many.history["loss"]                       # (seeds, 1): mean over the 30 steps
    final = jax.jit(jax.vmap(lambda x: -jnp.mean(source_loglik(fit_dbn(x, V), src, T)) / (V * T)))
    assert np.all(np.asarray(final(many.synthetic.x)) < loss[:, 0])


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="num_vars"):
        fit_dbn(jnp.zeros((4, 7)), 3)
    with pytest.raises(ValueError, match="hidden_per_source"):
        make_sources(jax.random.key(0), jnp.zeros((9, 6)), 3, 3, hidden_per_source=3)
    with pytest.raises(ValueError, match="init"):
        dbn_merge(4, 3, 2, init="zeros")
