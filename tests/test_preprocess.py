"""Tests for jdd.data.preprocess: fitted on train, applied identically to test, exactly invertible."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jdd.data import DataError, Dataset, Preprocessor, fit_preprocessor, preprocess


def correlated_images(n=600, shape=(4, 4, 3), seed=0):
    """Images with strongly correlated pixels, a nonzero mean and uneven channel scales."""
    rng = np.random.default_rng(seed)
    d = int(np.prod(shape))
    mix = rng.normal(size=(d, d)) / np.sqrt(d) + 0.5 * np.eye(d)
    x = rng.normal(size=(n, d)) @ mix + rng.normal(size=d)
    x = x.reshape((n,) + shape) * np.array([1.0, 3.0, 0.2]) + np.array([0.5, -1.0, 2.0])
    return x.astype(np.float32)


def test_standardize_per_channel_and_per_feature():
    x = correlated_images()
    z = np.asarray(fit_preprocessor(x, "standardize").apply(x), np.float64)
    np.testing.assert_allclose(z.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=(0, 1, 2)), 1.0, atol=1e-5)
    pre = fit_preprocessor(x, "standardize", per_channel=False)
    assert pre.mean.shape == x.shape[1:]
    z = np.asarray(pre.apply(x), np.float64)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=0), 1.0, atol=1e-5)


def test_standardize_constant_feature_is_not_divided_by_zero():
    x = correlated_images().reshape(600, -1)
    x[:, 3] = 7.0
    z = np.asarray(fit_preprocessor(x, "standardize").apply(x))
    assert np.all(np.isfinite(z)) and np.allclose(z[:, 3], 0.0)


def test_zca_whitens_train_to_identity():
    x = correlated_images()
    d = 48
    pre = fit_preprocessor(x, "zca", zca_reg=1e-7)
    assert pre.zca.shape == (d, d) and pre.zca_inv.shape == (d, d)
    z = np.asarray(pre.apply(x), np.float64).reshape(600, d)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-4)
    cov = z.T @ z / len(z)
    np.testing.assert_allclose(cov, np.eye(d), atol=2e-3)
    # the raw covariance was far from the identity
    raw = x.reshape(600, d) - x.reshape(600, d).mean(0)
    assert np.abs(raw.T @ raw / 600 - np.eye(d)).max() > 1.0


def test_zca_regularisation_convention():
    """Whitened covariance is U diag(lam / (lam + zca_reg * mean(lam))) U^T, checked independently."""
    x = correlated_images(seed=1)
    std = x.astype(np.float64).std(axis=(0, 1, 2)).reshape(1, 1, 3)
    zc = ((x.astype(np.float64) - x.astype(np.float64).mean(0)) / std).reshape(600, -1)
    lam = np.linalg.eigvalsh(zc.T @ zc / 600)
    reg = 0.1 * lam.mean()
    z = np.asarray(fit_preprocessor(x, "zca", zca_reg=0.1).apply(x), np.float64).reshape(600, -1)
    got = np.linalg.eigvalsh(z.T @ z / 600)
    np.testing.assert_allclose(np.sort(got), np.sort(lam / (lam + reg)), atol=1e-4)


def test_zca_singular_without_reg_raises():
    x = correlated_images(n=20)  # n < d = 48: rank-deficient covariance
    with pytest.raises(DataError, match="singular"):
        fit_preprocessor(x, "zca", zca_reg=0.0)
    pre = fit_preprocessor(x, "zca", zca_reg=0.1)  # regularised: fine and invertible
    np.testing.assert_allclose(np.asarray(pre.invert(pre.apply(x))), x, atol=1e-4)


@pytest.mark.parametrize("kind", ["none", "standardize", "zca"])
def test_apply_invert_roundtrip(kind):
    x = correlated_images(n=200)
    pre = fit_preprocessor(x, kind, zca_reg=0.01)
    z = pre.apply(x)
    assert z.shape == x.shape and z.dtype == np.float32
    np.testing.assert_allclose(np.asarray(pre.invert(z)), x, rtol=0, atol=2e-4)
    # also the other way round, on arbitrary points of the transformed space
    w = np.random.default_rng(0).normal(size=x.shape).astype(np.float32)
    np.testing.assert_allclose(np.asarray(pre.apply(pre.invert(w))), w, rtol=0, atol=2e-4)


def test_apply_is_jittable_pytree():
    x = correlated_images(n=100)
    pre = fit_preprocessor(x, "zca")
    np.testing.assert_allclose(np.asarray(jax.jit(lambda p, v: p.apply(v))(pre, x)),
                               np.asarray(pre.apply(x)), atol=1e-5)


@pytest.mark.parametrize("kind", ["standardize", "zca"])
def test_test_split_uses_train_statistics(kind):
    xtr = correlated_images(n=400, seed=0)
    xte = correlated_images(n=100, seed=0)[:50] * 2.0 + 5.0  # deliberately different statistics
    ytr, yte = np.arange(400) % 4, np.arange(50) % 4
    train = Dataset.from_arrays(xtr, ytr, 4, "t/train")
    test = Dataset.from_arrays(xte, yte, 4, "t/test")
    train_z, test_z, pre = preprocess(train, test, kind, zca_reg=0.1)
    fitted = fit_preprocessor(xtr, kind, zca_reg=0.1)
    np.testing.assert_allclose(np.asarray(test_z.x), np.asarray(fitted.apply(xte)), atol=1e-5)
    np.testing.assert_allclose(np.asarray(train_z.x), np.asarray(fitted.apply(xtr)), atol=1e-5)
    refit = fit_preprocessor(xte, kind, zca_reg=0.1)
    assert not np.allclose(np.asarray(test_z.x), np.asarray(refit.apply(xte)), atol=1e-2)
    # so the transformed test set is NOT standardised on its own
    assert abs(float(np.asarray(test_z.x).mean())) > 0.5
    assert test_z.name == "t/test" and np.array_equal(np.asarray(test_z.y), yte)


@pytest.mark.parametrize("kind", ["none", "standardize", "zca"])
def test_to_arrays_from_arrays_roundtrip(tmp_path, kind):
    x = correlated_images(n=100)
    pre = fit_preprocessor(x, kind)
    arrays = pre.to_arrays()
    assert all(k.startswith("pre_") for k in arrays) and str(arrays["pre_kind"]) == kind
    path = tmp_path / "artifact.npz"
    np.savez(path, x_syn=np.zeros((2, 3)), **arrays)
    with np.load(path, allow_pickle=False) as f:
        back = Preprocessor.from_arrays(f)
    assert back.kind == kind
    for field in ("mean", "std", "zca", "zca_inv"):
        a, b = getattr(pre, field), getattr(back, field)
        assert (a is None) == (b is None)
        if a is not None:
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    np.testing.assert_array_equal(np.asarray(back.apply(x)), np.asarray(pre.apply(x)))
    custom = pre.to_arrays(prefix="p2_")
    assert Preprocessor.from_arrays(custom, prefix="p2_").kind == kind


def test_errors():
    x = correlated_images(n=50)
    with pytest.raises(ValueError, match="standardize"):
        fit_preprocessor(x, "pca")
    with pytest.raises(ValueError, match="zca_reg"):
        fit_preprocessor(x, "zca", zca_reg=-1.0)
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        fit_preprocessor(bad, "standardize")
    with pytest.raises(DataError, match="pre_kind"):
        Preprocessor.from_arrays({"x": np.zeros(2)})
    with pytest.raises(DataError, match="missing arrays"):
        Preprocessor.from_arrays({"pre_kind": np.array("zca"), "pre_mean": np.zeros(3)})
    a = Dataset.from_arrays(x, np.arange(50) % 2)
    b = Dataset.from_arrays(x.reshape(50, -1), np.arange(50) % 2)
    with pytest.raises(DataError, match="feature shape"):
        preprocess(a, b, "standardize")


@pytest.mark.parametrize("kind", ["none", "standardize", "zca"])
@pytest.mark.parametrize("zca_reg", [-1.0, -1e-9, float("nan"), float("inf"), "0.1", None])
def test_bad_zca_reg_rejected_before_fitting(kind, zca_reg):
    """Checked first, for every kind: the (invalid) data below is never looked at."""
    unusable = np.full((1,), np.nan)  # would fail fitting with a different message
    with pytest.raises(ValueError, match="zca_reg") as e:
        fit_preprocessor(unusable, kind, zca_reg=zca_reg)
    assert ">= 0" in str(e.value) and repr(zca_reg) in str(e.value)
    assert isinstance(e.value, DataError)  # so the CLI reports it as a clean error
    a = Dataset.from_arrays(correlated_images(n=10), np.arange(10) % 2)
    b = Dataset.from_arrays(correlated_images(n=10).reshape(10, -1), np.arange(10) % 2)
    with pytest.raises(ValueError, match="zca_reg"):  # before the feature-shape check
        preprocess(a, b, kind, zca_reg=zca_reg)


@pytest.mark.parametrize("kind", ["pca", "ZCA", "", None, 3])
def test_unknown_kind_rejected_before_fitting(kind):
    unusable = np.full((1,), np.nan)
    with pytest.raises(ValueError, match="unknown preprocessing kind") as e:
        fit_preprocessor(unusable, kind)
    assert all(k in str(e.value) for k in ("none", "standardize", "zca"))
    a = Dataset.from_arrays(correlated_images(n=10), np.arange(10) % 2)
    with pytest.raises(ValueError, match="unknown preprocessing kind"):
        preprocess(a, a, kind)


def test_valid_zca_reg_edge_values_accepted():
    x = correlated_images(n=100)
    for reg in (0, 0.0, np.float32(0.1), 1):
        fit_preprocessor(x, "standardize", zca_reg=reg)
    fit_preprocessor(x, "zca", zca_reg=np.float64(1e-3))
