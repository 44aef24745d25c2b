"""Tests of jdd.kernels: neural-tangents fixture, PSD/symmetry, blocking, Monte Carlo, KRR."""

import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdd.kernels import (activation_map, blocked, conv_kernel, empirical_ntk, fc_kernel,
                         krr_accuracy, krr_predict, krr_predict_path, krr_solve, linear_kernel,
                         rbf_kernel)

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "nt_kernels.npz")


def _load_fixture():
    data = np.load(FIXTURE)
    names = sorted({k.split("/")[0] for k in data.files})
    return data, names


_DATA, _NAMES = _load_fixture()


def _build(spec, kind):
    spec = dict(spec)
    family = spec.pop("family")
    if family == "fc":
        return fc_kernel(kind=kind, **spec)
    return conv_kernel(kind=kind, **spec)


def test_fixture_is_small_and_covers_the_architectures():
    assert os.path.getsize(FIXTURE) < 1_000_000
    specs = [json.loads(str(_DATA[f"{n}/spec"])) for n in _NAMES]
    fc = {(s["depth"], s["activation"]) for s in specs if s["family"] == "fc"}
    assert fc == {(d, a) for d in (1, 2, 3) for a in ("relu", "erf", "identity")}
    readouts = {s["readout"] for s in specs if s["family"] == "conv"}
    assert readouts == {"flatten", "gap"}
    shapes = {_DATA[f"{n}/x1"].shape[1:] for n in _NAMES if n.startswith("conv")}
    assert {(4, 4, 1), (8, 8, 1)} <= shapes


@pytest.mark.parametrize("name", _NAMES)
def test_matches_neural_tangents(name):
    spec = json.loads(str(_DATA[f"{name}/spec"]))
    x1, x2 = _DATA[f"{name}/x1"], _DATA[f"{name}/x2"]
    with jax.enable_x64(True):
        for kind in ("nngp", "ntk"):
            ref = _DATA[f"{name}/{kind}"]
            got = np.asarray(_build(spec, kind)(jnp.asarray(x1), jnp.asarray(x2)))
            assert got.dtype == np.float64
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-12 * np.abs(ref).max(),
                                       err_msg=f"{name} {kind}")


def test_float32_close_to_float64():
    x = np.random.default_rng(0).normal(size=(40, 30))
    kfn = fc_kernel(depth=3, activation="relu", w_std=2.0 ** 0.5, b_std=0.1)
    k32 = np.asarray(jax.jit(kfn)(jnp.asarray(x, jnp.float32)))  # x2=None: exact diagonal
    with jax.enable_x64(True):
        k64 = np.asarray(jax.jit(kfn)(jnp.asarray(x)))
    assert k32.dtype == np.float32
    np.testing.assert_allclose(k32, k64, rtol=2e-5, atol=2e-6 * np.abs(k64).max())


def _images(n, size=8, c=1, seed=0):
    x = np.random.default_rng(seed).uniform(size=(n, size, size, c))
    x[0, :3] = 0.0
    return jnp.asarray(x, jnp.float32)


_SYM_KERNELS = {
    "fc_relu_ntk": (fc_kernel(2, "relu", 1.5, 0.2), False),
    "fc_erf_nngp": (fc_kernel(3, "erf", 1.2, 0.1, kind="nngp"), False),
    "conv_flatten_ntk": (conv_kernel(2, b_std=0.1), True),
    "conv_gap_ntk": (conv_kernel(2, b_std=0.1, readout="gap"), True),
    "rbf": (rbf_kernel(lengthscale=2.0), False),
    "linear": (linear_kernel(normalize=True), False),
}


@pytest.mark.parametrize("name", sorted(_SYM_KERNELS))
def test_symmetric_and_psd(name):
    kfn, images = _SYM_KERNELS[name]
    x = _images(12) if images else jax.random.normal(jax.random.key(1), (12, 9))
    with jax.enable_x64(True):
        x = x.astype(jnp.float64)
        k = np.asarray(jax.jit(kfn)(x, x))
    np.testing.assert_allclose(k, k.T, rtol=1e-12, atol=1e-14)
    eig = np.linalg.eigvalsh(k)
    assert eig.min() >= -1e-10 * eig.max()
    assert np.all(np.diag(k) > 0)


def test_relu_activation_map_closed_form():
    act = activation_map("relu")
    with jax.enable_x64(True):
        f64 = jnp.float64
        k, kdot = act.cross(f64(0.0), f64(2.0), f64(2.0))  # orthogonal: 2 * 1/(2 pi), 1/4
        assert float(k) == pytest.approx(1.0 / math.pi, rel=1e-12)
        assert float(kdot) == pytest.approx(0.25, rel=1e-12)
        k, kdot = act.cross(f64(3.0), f64(3.0), f64(3.0))  # identical: v/2, 1/2
        assert float(k) == pytest.approx(1.5, rel=1e-10)
        assert float(kdot) == pytest.approx(0.5, rel=1e-7)
        k, kdot = act.cross(f64(-1.0), f64(1.0), f64(1.0))  # opposite: 0, 0
        assert abs(float(k)) < 1e-12 and abs(float(kdot)) < 1e-7
        # 60 degrees: (sin + (pi - theta) cos) / (2 pi) and (pi - theta) / (2 pi)
        k, kdot = act.cross(f64(0.5), f64(1.0), f64(1.0))
        th = math.pi / 3
        assert float(k) == pytest.approx((math.sin(th) + (math.pi - th) * 0.5) / (2 * math.pi))
        assert float(kdot) == pytest.approx((math.pi - th) / (2 * math.pi), rel=1e-12)
    # float32 uses a polynomial arccos; at 60 degrees it is accurate to float32 resolution
    k32, kdot32 = act.cross(jnp.float32(0.5), jnp.float32(1.0), jnp.float32(1.0))
    assert float(kdot32) == pytest.approx((math.pi - th) / (2 * math.pi), rel=1e-6)


def test_blocked_equals_unblocked():
    kfn = fc_kernel(3, "relu", 2.0 ** 0.5, 0.1)
    with jax.enable_x64(True):  # float64: bit-identical
        x1 = jax.random.normal(jax.random.key(0), (53, 40), jnp.float64)
        x2 = jax.random.normal(jax.random.key(1), (29, 40), jnp.float64)
        full = np.asarray(jax.jit(kfn)(x1, x2))
        for b1, b2 in ((16, None), (7, 5), (100, 3)):
            got = np.asarray(jax.jit(blocked(kfn, b1, b2))(x1, x2))
            assert got.shape == (53, 29)
            np.testing.assert_array_equal(got, full)
        sym = np.asarray(jax.jit(blocked(kfn, 10, 10))(x1))
        np.testing.assert_array_equal(sym, np.asarray(jax.jit(kfn)(x1, x1 + 0.0)))
    # float32: XLA may fuse the elementwise recursion differently per tile shape (1-ulp level)
    x1, x2 = x1.astype(jnp.float32), x2.astype(jnp.float32)
    full = np.asarray(jax.jit(kfn)(x1, x2))
    got = np.asarray(jax.jit(blocked(kfn, 7, 5))(x1, x2))
    np.testing.assert_allclose(got, full, rtol=1e-6)


def test_gap_blocking_equal_and_works_at_mnist_size():
    with jax.enable_x64(True):
        x = _images(5, size=8).astype(jnp.float64)
        k_small = jax.jit(conv_kernel(2, readout="gap", block_size=2))(x)
        k_big = jax.jit(conv_kernel(2, readout="gap", block_size=5))(x)
        np.testing.assert_array_equal(np.asarray(k_small), np.asarray(k_big))
    x28 = _images(3, size=28, seed=1)
    k28 = np.asarray(jax.jit(conv_kernel(1, readout="gap"))(x28))  # default: 2 x 2 pair blocks
    k28_one = np.asarray(jax.jit(conv_kernel(1, readout="gap", block_size=3))(x28))
    np.testing.assert_allclose(k28, k28_one, rtol=1e-6)
    assert k28.shape == (3, 3) and np.all(np.isfinite(k28))


def test_kernel_gradients_finite_on_the_diagonal():
    x = jax.random.normal(jax.random.key(0), (6, 10))
    for kfn in (fc_kernel(3), conv_kernel(1, b_std=0.0)):
        xin = x.reshape(6, 10, 1, 1) if kfn.__qualname__.startswith("conv") else x
        g = jax.jit(jax.grad(lambda z: jnp.sum(kfn(z, z) ** 2)))(xin)
        assert np.all(np.isfinite(np.asarray(g)))
    blank = jnp.zeros((2, 3, 3, 1)).at[1].set(1.0)  # a zero image: zero variances
    g = jax.jit(jax.grad(lambda z: jnp.sum(conv_kernel(2)(z, z))))(blank)
    assert np.all(np.isfinite(np.asarray(g)))


def test_fc_kernel_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(3), (4, 5), jnp.float64)
        xt = jax.random.normal(jax.random.key(4), (3, 5), jnp.float64)
        kfn = fc_kernel(2, "relu", 1.4, 0.3)
        f = jax.jit(lambda z: jnp.sum(jnp.sin(kfn(xt, z))) + jnp.sum(kfn(z, z) ** 2))
        g = np.asarray(jax.jit(jax.grad(f))(x))
        eps = 1e-6
        fd = np.zeros_like(g)
        for idx in np.ndindex(*x.shape):
            e = jnp.zeros_like(x).at[idx].set(eps)
            fd[idx] = (f(x + e) - f(x - e)) / (2 * eps)
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="activation"):
        fc_kernel(1, "tanh")
    with pytest.raises(ValueError, match="kind"):
        fc_kernel(1, kind="ntkk")
    with pytest.raises(ValueError, match="readout"):
        conv_kernel(1, readout="max")
    with pytest.raises(ValueError, match="features"):
        fc_kernel(1)(jnp.ones((2, 3)), jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="block_size"):
        blocked(fc_kernel(1), 0)


# ---------------------------------------------------------------------------------------------
# Monte Carlo: very wide finite networks in the NTK parameterization approach the closed form.
# ---------------------------------------------------------------------------------------------

class NTKDense(nn.Module):
    features: int
    w_std: float
    b_std: float

    @nn.compact
    def __call__(self, x):
        w = self.param("w", nn.initializers.normal(1.0), (x.shape[-1], self.features))
        b = self.param("b", nn.initializers.normal(1.0), (self.features,))
        return self.w_std / math.sqrt(x.shape[-1]) * (x @ w) + self.b_std * b


class MLP(nn.Module):
    width: int
    depth: int
    out: int
    w_std: float
    b_std: float

    @nn.compact
    def __call__(self, x):
        for _ in range(self.depth):
            x = nn.relu(NTKDense(self.width, self.w_std, self.b_std)(x))
        return NTKDense(self.out, self.w_std, self.b_std)(x)


def test_empirical_ntk_of_wide_network_approaches_closed_form():
    w_std, b_std = 2.0 ** 0.5, 0.3
    x = jax.random.normal(jax.random.key(0), (4, 6))
    model = MLP(width=2048, depth=2, out=1, w_std=w_std, b_std=b_std)
    ntk_ref = np.asarray(fc_kernel(2, "relu", w_std, b_std)(x))
    ntk_at = jax.jit(lambda p: empirical_ntk(model.apply, p)(x))
    k = np.mean([np.asarray(ntk_at(model.init(jax.random.key(s), x))) for s in range(3)], 0)
    # width 2048, 3 draws: fluctuations of a few percent.
    np.testing.assert_allclose(k, ntk_ref, rtol=0.06, atol=0.03 * ntk_ref.max())
    # and it is not trivially close: a different architecture's kernel is far off.
    assert np.max(np.abs(fc_kernel(2, "erf", w_std, b_std)(x) - k)) > 0.1 * ntk_ref.max()


def test_output_covariance_of_wide_network_approaches_nngp():
    w_std, b_std = 1.5, 0.2
    x = jax.random.normal(jax.random.key(1), (5, 6))
    model = MLP(width=4096, depth=1, out=2048, w_std=w_std, b_std=b_std)

    @jax.jit
    def output_cov(key):
        f = model.apply(model.init(key, x), x)  # (5, 2048): the outputs are samples
        return f @ f.T / f.shape[1]

    cov = np.mean([np.asarray(output_cov(jax.random.key(s))) for s in range(4)], 0)
    ref = np.asarray(fc_kernel(1, "relu", w_std, b_std, kind="nngp")(x))
    np.testing.assert_allclose(cov, ref, rtol=0.08, atol=0.04 * ref.max())


def test_empirical_ntk_implementations_agree_and_outputs():
    model = MLP(width=16, depth=1, out=3, w_std=1.0, b_std=0.5)
    x1 = jax.random.normal(jax.random.key(0), (4, 5))
    x2 = jax.random.normal(jax.random.key(1), (2, 5))
    params = model.init(jax.random.key(2), x1)

    def ntk(p, **kw):
        return empirical_ntk(model.apply, p, **kw)(x1, x2)

    full_v, full_j, full_c, mean, total = jax.jit(lambda p: (
        ntk(p, output="full"), ntk(p, output="full", implementation="jacobian"),
        ntk(p, output="full", chunk=4), ntk(p), ntk(p, output="sum")))(params)
    assert full_v.shape == (4, 2, 3, 3)
    np.testing.assert_allclose(full_v, full_j, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(full_c, full_j, rtol=1e-4, atol=1e-5)
    # explicit Jacobian check of one entry: <d f_0(x1_1), d f_2(x2_0)>
    j1 = jax.jacrev(lambda p: model.apply(p, x1[1:2])[0, 0])(params)
    j2 = jax.jacrev(lambda p: model.apply(p, x2[0:1])[0, 2])(params)
    dot = sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(j1), jax.tree.leaves(j2)))
    assert float(full_v[1, 0, 0, 2]) == pytest.approx(float(dot), rel=1e-4)
    np.testing.assert_allclose(mean * 3, total, rtol=1e-5)
    np.testing.assert_allclose(total, np.trace(np.asarray(full_j), axis1=2, axis2=3), rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# KRR
# ---------------------------------------------------------------------------------------------

def test_krr_solve_matches_numpy_and_keeps_float64():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    k = a @ a.T
    y = rng.normal(size=(6, 3))
    reg = 0.1
    ref = np.linalg.solve(k + reg * np.trace(k) / 6 * np.eye(6), y)
    with jax.enable_x64(True):
        alpha = krr_solve(jnp.asarray(k), jnp.asarray(y), reg)
        assert alpha.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(alpha), ref, rtol=1e-10)
    alpha32 = krr_solve(jnp.asarray(k, jnp.float32), jnp.asarray(y, jnp.float32), reg)
    assert alpha32.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(alpha32), ref, rtol=1e-3, atol=1e-4)


def test_krr_solve_gradients_match_finite_differences_and_numpy():
    # the solve's custom-linear-solve gradient (it reuses the forward factor) against central
    # differences and against the closed form: d<g, alpha>/dy = K^-1 g, d/dK = -(K^-1 g) alpha^T,
    # taken through the symmetrisation and the trace-relative ridge
    from jax.test_util import check_grads
    rng = np.random.default_rng(1)
    a = rng.normal(size=(5, 5))
    k = a @ a.T + 0.5 * np.eye(5)
    y = rng.normal(size=(5, 2))
    g = rng.normal(size=(5, 2))
    reg = 0.05
    with jax.enable_x64(True):
        kj, yj, gj = jnp.asarray(k), jnp.asarray(y), jnp.asarray(g)
        check_grads(lambda k_, y_, r_: krr_solve(k_, y_, r_), (kj, yj, jnp.float64(reg)),
                    order=1, modes=("rev",), atol=1e-7, rtol=1e-7)
        dk, dy = jax.grad(lambda k_, y_: jnp.sum(gj * krr_solve(k_, y_, reg)), (0, 1))(kj, yj)
    kr = k + reg * np.trace(k) / 5 * np.eye(5)
    alpha = np.linalg.solve(kr, y)
    w = np.linalg.solve(kr, g)
    ga = -w @ alpha.T                            # gradient w.r.t. the regularised matrix
    ref_k = 0.5 * (ga + ga.T) + reg / 5 * np.trace(ga) * np.eye(5)
    np.testing.assert_allclose(np.asarray(dy), w, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(dk), ref_k, rtol=1e-9, atol=1e-12)


def test_krr_predict_interpolates_and_classifies():
    x = jax.random.normal(jax.random.key(0), (20, 7))
    labels = jnp.arange(20) % 4
    y = jax.nn.one_hot(labels, 4)
    with jax.enable_x64(True):
        x64, y64 = x.astype(jnp.float64), y.astype(jnp.float64)
        pred = jax.jit(krr_predict, static_argnums=0)(fc_kernel(2), x64, y64, x64, 1e-10)
        assert pred.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(pred), np.asarray(y64), atol=1e-5)
    acc = jax.jit(krr_accuracy, static_argnums=0)(rbf_kernel(), x, y, x, labels, 1e-6)
    assert float(acc) == 1.0
    shrunk = jax.jit(krr_predict, static_argnums=0)(linear_kernel(), x, y, x, 1e6)
    assert float(jnp.max(jnp.abs(shrunk))) < 1e-3


def test_krr_predict_path_equals_one_solve_per_ridge():
    rng = np.random.default_rng(3)
    xs, xt = rng.normal(size=(9, 5)), rng.normal(size=(4, 5))
    ys = rng.normal(size=(9, 3))
    regs = [1e-4, 1e-2, 1.0, 100.0]
    kfn = fc_kernel(2)
    with jax.enable_x64(True):
        k_ss, k_ts = kfn(jnp.asarray(xs), jnp.asarray(xs)), kfn(jnp.asarray(xt), jnp.asarray(xs))
        path = jax.jit(krr_predict_path)(k_ts, k_ss, jnp.asarray(ys), jnp.asarray(regs))
        assert path.shape == (4, 4, 3) and path.dtype == jnp.float64
        for i, r in enumerate(regs):  # numpy reference, independent of jdd's Cholesky path
            k = np.asarray(k_ss)
            ref = np.asarray(k_ts) @ np.linalg.solve(k + r * np.trace(k) / 9 * np.eye(9), ys)
            np.testing.assert_allclose(np.asarray(path[i]), ref, rtol=1e-8, atol=1e-10)
