"""Tests for jdd.distill.krr_closed_form: exact recovery of the original KRR model."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdd.data import Dataset, DataError
from jdd.distill.krr_closed_form import (DEFAULT_LAMBDA_GRID, DPConfig, accuracy,
                                         closed_form_distill, distilled_features, dp_noise_std,
                                         fit_ridge, lam_s_bound, predict, ridge_sensitivity,
                                         select_lambda, solution_matrix)
from jdd.kernels.features import feature_map

K, D = 3, 8


def _data(n=90, seed=0, dtype=jnp.float64):
    """A small float64 3-class problem in R^8 (class means apart, unit noise)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % K
    means = rng.normal(size=(K, D)) * 1.5
    x = means[y] + rng.normal(size=(n, D))
    return Dataset(x=jnp.asarray(x.reshape(n, 2, 4), dtype), y=jnp.asarray(y, jnp.int32),
                   num_classes=K, name="toy")


def _fm(name):
    return feature_map(name, jax.random.key(7), D,
                       **({} if name == "linear" else {"dtype": jnp.float64}))


def test_fit_ridge_matches_numpy():
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        f, y = rng.normal(size=(20, 6)), np.eye(3)[rng.integers(0, 3, 20)]
        for lam in (0.3, 5.0):
            ref = np.linalg.solve(f.T @ f + lam * np.eye(6), f.T @ y).T
            np.testing.assert_allclose(fit_ridge(f, y, lam), ref, rtol=1e-10)
        np.testing.assert_allclose(fit_ridge(f, y, 0.0), (np.linalg.pinv(f) @ y).T, rtol=1e-10)
        wide = rng.normal(size=(4, 6))                           # n < p: minimum-norm solution
        np.testing.assert_allclose(fit_ridge(wide, y[:4], 0.0), (np.linalg.pinv(wide) @ y[:4]).T,
                                   rtol=1e-10, atol=1e-12)
        # lam is traceable: one compile for every lam
        np.testing.assert_allclose(jax.jit(fit_ridge)(f, y, 5.0), fit_ridge(f, y, 5.0), rtol=1e-12)


@pytest.mark.parametrize("name", ["linear", "rff", "fcnn"])
@pytest.mark.parametrize("init", ["noise", "real"])
def test_closed_form_is_exact(name, init):
    """W_S == W for lam_S = 0 and lam_S > 0, in feature space and (where realisable) from x_s."""
    with jax.enable_x64(True):
        train, test = _data(), _data(45, seed=1)
        fm = _fm(name)
        lam = 0.5
        base = closed_form_distill(jax.random.key(0), fm, train, ipc=2, lam=lam, init=init)
        w = base.W
        assert base.x_s.shape == (2 * K, 2, 4) and base.y_s.shape == (2 * K, K)
        for lam_s, branch in ((0.0, "+"), (0.5 * float(base.lam_s_max), "+"),
                              (0.5 * float(base.lam_s_max), "-"), ("auto", "+")):
            r = closed_form_distill(jax.random.key(0), fm, train, ipc=2, lam=lam, lam_s=lam_s,
                                    init=init, branch=branch)
            # the construction itself is exact for every map
            w_feat = fit_ridge(r.phi_s, r.y_s, r.lam_s)
            assert float(jnp.linalg.norm(w_feat - w) / jnp.linalg.norm(w)) < 1e-9
            realisable = name != "rff" or float(jnp.max(jnp.abs(r.phi_s))) <= fm.bound
            if lam_s == "auto":
                assert realisable
            if realisable:                    # and so is the model trained on the inputs x_s
                assert float(r.rel_err) < 1e-8, (lam_s, branch, float(r.rel_err))
                assert float(r.feature_err) < 1e-8
                np.testing.assert_allclose(predict(r.W_s, fm.phi(test.x)),
                                           predict(w, fm.phi(test.x)), atol=1e-8)
                assert float(accuracy(r.W_s, fm.phi(test.x), test.y)) == float(
                    accuracy(w, fm.phi(test.x), test.y))


def test_real_init_stays_close_to_the_real_points():
    with jax.enable_x64(True):
        train = _data()
        fm = _fm("fcnn")
        # m = 3 * 3 = 9 >= p = 8: the real points themselves solve the equations, so D = P0^+
        r = closed_form_distill(jax.random.key(1), fm, train, ipc=3, lam=0.5, init="real")
        x0 = train.x[r.init_idx]
        assert np.all(np.asarray(train.y)[np.asarray(r.init_idx)] == np.repeat(np.arange(K), 3))
        np.testing.assert_allclose(r.x_s, x0, atol=1e-9)
        # m = 3 < p: not exact, but far closer than the noise construction
        real = closed_form_distill(jax.random.key(1), fm, train, ipc=1, lam=0.5, init="real")
        noise = closed_form_distill(jax.random.key(1), fm, train, ipc=1, lam=0.5, init="noise")
        x0 = train.x[real.init_idx]
        d_real = float(jnp.linalg.norm(real.x_s - x0))
        d_noise = float(jnp.linalg.norm(noise.x_s - x0))
        assert d_real < 0.5 * d_noise, (d_real, d_noise)
        # soft labels: the original model's predictions on the real points
        np.testing.assert_allclose(real.y_s, predict(real.W, fm.phi(x0)), rtol=1e-10)


def test_lam_s_bound_is_enforced():
    with jax.enable_x64(True):
        train = _data()
        fm = _fm("linear")
        r = closed_form_distill(jax.random.key(0), fm, train, ipc=1, lam=0.5)
        bound = float(r.lam_s_max)
        d = solution_matrix(r.W, r.y_s, jnp.zeros((K, D)))
        s1 = float(jnp.linalg.norm(d, ord=2))
        assert bound == pytest.approx(1 / (4 * s1 ** 2), rel=1e-10)   # ipc=1: Z plays no role
        assert float(lam_s_bound(d)) == pytest.approx(bound, rel=1e-10)
        # at the bound itself the root is still real and exact
        at = closed_form_distill(jax.random.key(0), fm, train, ipc=1, lam=0.5,
                                 lam_s=bound * (1 - 1e-9))
        assert float(at.rel_err) < 1e-7
        with pytest.raises(ValueError, match="admissible bound"):
            closed_form_distill(jax.random.key(0), fm, train, ipc=1, lam=0.5, lam_s=1.01 * bound)
        with pytest.raises(ValueError, match=">= 0"):
            closed_form_distill(jax.random.key(0), fm, train, ipc=1, lam=0.5, lam_s=-1e-3)
        with pytest.raises(ValueError, match="'-' branch needs lam_s > 0"):
            closed_form_distill(jax.random.key(0), fm, train, ipc=1, lam=0.5, branch="-")


def test_fewer_than_k_points_rejected():
    with jax.enable_x64(True):
        w = jax.random.normal(jax.random.key(0), (K, D), jnp.float64)
        with pytest.raises(ValueError, match="at least one point per class"):
            distilled_features(w, jnp.eye(K)[:2], jnp.zeros((2, D)))
        with pytest.raises(ValueError, match="rank 2 < k = 3"):
            distilled_features(w, jnp.eye(K)[jnp.array([0, 1, 1, 0])], jnp.zeros((4, D)))
        with pytest.raises(ValueError, match="ipc"):
            closed_form_distill(jax.random.key(0), _fm("linear"), _data(), ipc=0, lam=1.0)
        with pytest.raises(DataError, match="ipc=40"):
            closed_form_distill(jax.random.key(0), _fm("linear"), _data(), ipc=40, lam=1.0,
                                init="real")
        # exactly k points with generic labels works
        phi_s = distilled_features(w, jnp.eye(K), jnp.zeros((K, D)))
        np.testing.assert_allclose(fit_ridge(phi_s, jnp.eye(K), 0.0), w, atol=1e-10)


def test_dp_noise_calibration():
    dp = DPConfig(epsilon=0.5, delta=1e-5, sensitivity=2.0)
    expect = 2.0 * math.sqrt(2 * math.log(1.25e5)) / (0.5 * math.sqrt(4 * 3))
    assert dp_noise_std(dp, 4) == pytest.approx(expect, rel=1e-12)
    with pytest.raises(ValueError, match="ipc >= 2"):
        dp_noise_std(dp, 1)
    with pytest.raises(ValueError, match="epsilon"):
        dp_noise_std(dp._replace(epsilon=2.0), 4)
    assert ridge_sensitivity(100, 1.0, 4.0) == pytest.approx(2 * (1 + 5) / 4)
    with jax.enable_x64(True):
        train = _data()
        fm = _fm("linear")
        ipc = 4
        dp = DPConfig(0.9, 1e-5, 0.05)
        r = closed_form_distill(jax.random.key(2), fm, train, ipc=ipc, lam=0.5, dp=dp)
        assert float(r.rel_err) < 1e-8
        # each row of D is W_c / ipc plus N(0, sigma^2 (1 - 1/ipc)) noise
        d = solution_matrix(r.W, r.y_s, jnp.zeros_like(r.phi_s))
        dd = jnp.linalg.pinv(r.phi_s).T                 # D = phi_s^+ (paper layout, lam_s = 0)
        noise = np.asarray(dd - d)
        sigma = dp_noise_std(dp, ipc) * math.sqrt(1 - 1 / ipc)
        assert abs(noise.std() / sigma - 1) < 0.2
        with pytest.raises(ValueError, match="init='noise'"):
            closed_form_distill(jax.random.key(2), fm, train, ipc=ipc, lam=0.5, dp=dp,
                                init="real")


def test_jit_vmap_and_dtype():
    train32 = _data(dtype=jnp.float32)
    fm = feature_map("fcnn", jax.random.key(7), D)
    r = closed_form_distill(jax.random.key(0), fm, train32, ipc=2, lam=0.5)
    assert r.x_s.dtype == jnp.float32 and r.W.dtype == jnp.float32
    assert float(r.rel_err) < 1e-3
    with jax.enable_x64(True):
        train, fm = _data(), _fm("rff")
        run = lambda k: closed_form_distill(k, fm, train, ipc=2, lam=0.5, lam_s="auto",  # noqa
                                            init="real")
        keys = jax.random.split(jax.random.key(3), 2)
        batched = jax.jit(jax.vmap(run))(keys)
        for i in range(2):
            one = run(keys[i])
            np.testing.assert_allclose(batched.x_s[i], one.x_s, rtol=1e-7, atol=1e-9)
            assert float(batched.rel_err[i]) < 1e-8
        again = run(keys[0])                             # same key, same bytes
        np.testing.assert_array_equal(again.x_s, run(keys[0]).x_s)


def test_select_lambda_uses_train_only():
    with jax.enable_x64(True):
        train = _data(200)
        fm = _fm("linear")
        lam = select_lambda(jax.random.key(0), fm, train)
        assert lam in DEFAULT_LAMBDA_GRID and len(DEFAULT_LAMBDA_GRID) == 24
        assert DEFAULT_LAMBDA_GRID[0] == pytest.approx(1e-6)
        assert DEFAULT_LAMBDA_GRID[-1] == pytest.approx(10 ** 5.5)
        assert select_lambda(jax.random.key(0), fm, train) == lam
        # a grid where one value is absurd: the huge ridge predicts nothing and is never chosen
        assert select_lambda(jax.random.key(0), fm, train, grid=(1e-2, 1e12)) == 1e-2
        # jittable: the traced choice is the same grid value
        jitted = jax.jit(lambda key, ds: select_lambda(key, fm, ds))(jax.random.key(0), train)
        assert float(jitted) == pytest.approx(lam, rel=1e-12)


def test_select_lambda_prefers_ridge_on_noisy_features():
    # Few rows, many noise features: least squares interpolates the training rows and fails on
    # held-out ones, so a clearly positive ridge must win on validation.
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        n, d = 60, 50
        y = np.arange(n) % 2
        x = rng.normal(size=(n, d)) + 0.8 * (2 * y[:, None] - 1) * (np.arange(d) < 3)
        train = Dataset(x=jnp.asarray(x), y=jnp.asarray(y, jnp.int32), num_classes=2, name="t")
        fm = feature_map("linear", jax.random.key(0), d)
        lam = select_lambda(jax.random.key(1), fm, train, val_fraction=0.3)
        assert lam >= 1.0


@pytest.mark.parametrize("n", [40, 6])          # n >= p (primal Gram) and n < p (dual Gram)
@pytest.mark.parametrize("lam", [0.0, 0.3])
def test_gram_solver_equals_svd_in_float64(n, lam):
    with jax.enable_x64(True):
        rng = np.random.default_rng(n)
        f = jnp.asarray(rng.normal(size=(n, 10)))
        y = jnp.asarray(np.eye(3)[rng.integers(0, 3, n)])
        w_svd = fit_ridge(f, y, lam)
        w_gram = jax.jit(lambda f, y: fit_ridge(f, y, lam, solver="gram"))(f, y)
        np.testing.assert_allclose(np.asarray(w_gram), np.asarray(w_svd), rtol=1e-9, atol=1e-11)
        # and both against the textbook formulas (numpy)
        ff, yy = np.asarray(f), np.asarray(y)
        ref = (np.linalg.pinv(ff) @ yy).T if lam == 0 else \
            yy.T @ ff @ np.linalg.inv(ff.T @ ff + lam * np.eye(10))
        np.testing.assert_allclose(np.asarray(w_gram), ref, rtol=1e-8, atol=1e-10)


def test_gram_solver_rank_deficient_and_selection():
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        f = rng.normal(size=(50, 8))
        f[:, 5:] = 0.0                                    # three dead features (like border pixels)
        y = np.eye(2)[rng.integers(0, 2, 50)]
        w = fit_ridge(jnp.asarray(f), jnp.asarray(y), 0.0, solver="gram")
        np.testing.assert_allclose(np.asarray(w), (np.linalg.pinv(f) @ y).T, atol=1e-10)
        train = _data(200)
        fm = _fm("linear")
        assert select_lambda(jax.random.key(0), fm, train, solver="gram") == \
            select_lambda(jax.random.key(0), fm, train)
        with pytest.raises(ValueError, match="unknown ridge solver 'qr'"):
            fit_ridge(jnp.asarray(f), jnp.asarray(y), 0.0, solver="qr")


def test_gram_solver_float32_on_well_conditioned_features():
    # digits through a random LeakyReLU network: singular values within ~140x of the largest, so
    # float32 normal equations resolve every direction. A cutoff applied too early (e.g. the
    # SVD's eps * dim * 10 on s^2) drops real directions and moves W by ~50 %.
    from jdd.data import load_digits
    train, _ = load_digits()
    x = np.asarray(train.x, np.float32).reshape(train.n, -1)
    x = (x - x.mean()) / x.std()
    fm = feature_map("fcnn", jax.random.key(1), 64)
    phi = fm.phi(jnp.asarray(x))
    y = jax.nn.one_hot(train.y, 10)
    w32 = fit_ridge(phi, y, 0.0, solver="gram")
    with jax.enable_x64(True):
        ref = np.asarray(fit_ridge(jnp.asarray(np.asarray(phi), jnp.float64),
                                   jnp.asarray(np.asarray(y), jnp.float64), 0.0))
    assert np.linalg.norm(np.asarray(w32) - ref) / np.linalg.norm(ref) < 2e-3
