"""Tests for jdd.kernels.features: maps, kernels, parameter statistics and inverses."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdd.kernels.features import (fcnn_features, feature_map, linear_features, rff_features)


def _x(n, shape, seed=0, dtype=jnp.float64):
    return jax.random.normal(jax.random.key(seed), (n,) + shape, dtype)


@pytest.mark.parametrize("name", ["linear", "rff", "fcnn"])
def test_flatten_and_kernel(name):
    with jax.enable_x64(True):
        kw = {} if name == "linear" else {"dtype": jnp.float64}
        fm = feature_map(name, jax.random.key(0), 12, **kw)
        x = _x(5, (3, 4))
        f = fm.phi(x)
        assert f.shape == (5, fm.p) and f.dtype == jnp.float64
        np.testing.assert_array_equal(f, fm.phi(x.reshape(5, 12)))
        x2 = _x(4, (3, 4), seed=1)
        ref = np.asarray(f) @ np.asarray(fm.phi(x2)).T
        np.testing.assert_allclose(fm.kernel_fn(x, x2), ref, rtol=1e-12, atol=1e-12)
        with pytest.raises(ValueError, match="12 entries per row"):
            fm.phi(jnp.ones((2, 5)))


def test_float32_stays_float32():
    fm = rff_features(jax.random.key(0), 6)
    assert fm.phi(jnp.ones((2, 6), jnp.float32)).dtype == jnp.float32
    assert fcnn_features(jax.random.key(0), 6).invert(jnp.ones((2, 6))).dtype == jnp.float32


def test_rff_parameters_and_rbf_kernel():
    with jax.enable_x64(True):
        fm = rff_features(jax.random.key(3), 8, 20000, sigma2=0.5, dtype=jnp.float64)
        a, b = np.asarray(fm.params["A"]), np.asarray(fm.params["b"])
        assert a.shape == (20000, 8) and b.shape == (20000,)
        assert abs(a.std() - math.sqrt(0.5)) < 0.01
        assert b.min() >= 0 and b.max() < 2 * math.pi and abs(b.mean() - math.pi) < 0.05
        assert fm.bound == pytest.approx(math.sqrt(2 / 20000))
        x = np.asarray(_x(6, (8,), seed=4)) * 0.7
        sq = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
        rbf = np.exp(-0.5 * sq / 2)                   # exp(-sigma2 |x - y|^2 / 2)
        np.testing.assert_allclose(fm.kernel_fn(x, x), rbf, atol=0.03)
        # default bandwidth of the paper: variance 1/1000
        a0 = np.asarray(rff_features(jax.random.key(1), 64, 4096, dtype=jnp.float64).params["A"])
        assert abs(a0.var() * 1000 - 1.0) < 0.05


def test_fcnn_parameters_and_activation():
    with jax.enable_x64(True):
        fm = fcnn_features(jax.random.key(0), 400, 300, dtype=jnp.float64)
        w1 = np.asarray(fm.params["W1"])
        assert w1.shape == (300, 400)
        assert abs(w1.std() * math.sqrt(400) - 1.0) < 0.02
        x = np.asarray(_x(3, (400,)))
        pre = x @ w1.T
        np.testing.assert_allclose(fm.phi(x), np.where(pre > 0, pre, 0.1 * pre), rtol=1e-12)
        assert feature_map("fcnn", jax.random.key(0), 7).p == 7          # width defaults to d


@pytest.mark.parametrize("name,d,p", [("linear", 10, 10), ("rff", 10, 10), ("rff", 10, 6),
                                      ("fcnn", 10, 10), ("fcnn", 10, 4)])
def test_round_trip_of_features(name, d, p):
    with jax.enable_x64(True):
        kw = {} if name == "linear" else {"dtype": jnp.float64}
        fm = feature_map(name, jax.random.key(1), d, None if name == "linear" else p, **kw)
        assert fm.invertible
        x = _x(7, (d,), seed=2)
        f = fm.phi(x)
        np.testing.assert_allclose(fm.phi(fm.invert(f)), f, rtol=1e-9, atol=1e-12)
        # arbitrary feature vectors in the map's range have a preimage too
        r = min(fm.bound, 3.0)
        g = jax.random.uniform(jax.random.key(5), (7, fm.p), jnp.float64, -r, r)
        np.testing.assert_allclose(fm.phi(fm.invert(g)), g, rtol=1e-9, atol=1e-12)
        if p == d and name != "rff":                    # bijective maps give the input back
            np.testing.assert_allclose(fm.invert(f), x, rtol=1e-9, atol=1e-10)


def test_rff_invert_clips_out_of_range_features():
    with jax.enable_x64(True):
        fm = rff_features(jax.random.key(0), 5, 5, dtype=jnp.float64)
        g = jnp.array([[2.0, -2.0, 0.1, 0.0, -0.3]]) * fm.bound
        back = fm.phi(fm.invert(g))
        np.testing.assert_allclose(back, jnp.clip(g, -fm.bound, fm.bound), atol=1e-12)
        # the branch choice keeps the pre-activation small: |A x| <= pi per entry
        t = fm.invert(g) @ fm.params["A"].T
        assert float(jnp.max(jnp.abs(t))) <= math.pi + 1e-9


def test_overcomplete_maps_are_flagged():
    assert not rff_features(jax.random.key(0), 4, 9).invertible
    assert not fcnn_features(jax.random.key(0), 4, 9).invertible
    assert linear_features(4).invertible
    with pytest.raises(ValueError, match="unknown feature map"):
        feature_map("rbf", jax.random.key(0), 4)
    with pytest.raises(ValueError, match="negative_slope"):
        fcnn_features(jax.random.key(0), 4, negative_slope=0.0)
