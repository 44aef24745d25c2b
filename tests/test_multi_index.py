"""Multi-index tasks, the two-phase two-layer learner, and the D1^S / D2^S distilled sets."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdd.distill import distill
from jdd.distill.multi_index import (d1_gradient_matching, d2_compact, d2_rank_certify,
                                     first_layer_grad, gradient_error, reconstruction, ridge,
                                     two_phase)
from jdd.tasks import (LINKS, multi_index, sample, subspace_fraction, targets, with_link)


def test_frame_orthonormal_and_targets_equal_link():
    with jax.enable_x64(True):
        make = jax.jit(multi_index, static_argnums=(1, 2, 3, 4))
        for name in LINKS:
            task = make(jax.random.key(0), 30, 4, name, 64)
            assert task.x.dtype == jnp.float64
            np.testing.assert_allclose(task.U @ task.U.T, np.eye(4), atol=1e-12)
            z = np.asarray(task.x @ task.U.T)
            if name == "he2":
                expect = np.sum(z ** 2 - 1, axis=1) / np.sqrt(8.0)
                np.testing.assert_allclose(task.y, expect, rtol=1e-12)
            if name == "staircase":
                expect = (z[:, 0] + z[:, 0] * z[:, 1] + z[:, :3].prod(1) + z.prod(1)) / 2.0
                np.testing.assert_allclose(task.y, expect, rtol=1e-12)
            np.testing.assert_allclose(task.target(task.x), task.y, rtol=1e-12)
    # A user callable, label noise, more samples of the same task, and a new link on the same U.
    g = lambda z: jnp.tanh(z[0] * z[1])  # noqa: E731
    task = multi_index(jax.random.key(1), d=20, r=2, link=g, n=5000, noise=0.1)
    clean = np.tanh(np.prod(np.asarray(task.x @ task.U.T), axis=1))
    assert 0.09 < np.std(np.asarray(task.y) - clean) < 0.11
    more = sample(jax.random.key(2), task, 10)
    assert np.array_equal(more.U, task.U) and not np.allclose(more.x, task.x[:10])
    other = with_link(jax.random.key(3), task, "quadratic", 100, noise=0.0)
    assert np.array_equal(other.U, task.U) and other.coef.shape == (2, 2)
    np.testing.assert_allclose(other.y, targets(other.x, other.U, other.coef, "quadratic"),
                               rtol=1e-5)
    # Named links are centred with unit variance.
    big = jax.jit(multi_index, static_argnums=(1, 2, 3, 4))(jax.random.key(4), 10, 3, "he2_he3",
                                                            100_000)
    assert abs(float(jnp.mean(big.y))) < 0.02 and abs(float(jnp.var(big.y)) - 1) < 0.05
    with pytest.raises(ValueError, match="unknown link"):
        multi_index(jax.random.key(0), 5, 2, "he4", 3)


def test_phase1_gradient_matches_finite_differences_and_aligns():
    with jax.enable_x64(True):
        task = multi_index(jax.random.key(0), d=8, r=2, n=50)
        net = two_phase(6)
        p = net.init(jax.random.key(1), 8)
        assert float(jnp.max(jnp.abs(net.predict(p, task.x)))) < 1e-12  # symmetric init
        # Break the pairing so the residual (f - y) is not just -y.
        p = p._replace(a=p.a + 0.3 * jax.random.normal(jax.random.key(2), (6,)))
        g = first_layer_grad(p, task.x, task.y)
        loss = jax.jit(lambda W: 0.5 * jnp.mean((net.predict(p._replace(W=W), task.x) - task.y) ** 2))  # noqa
        eps = 1e-6
        fd = np.zeros_like(np.asarray(g))
        for i in range(6):
            for j in range(8):
                e = jnp.zeros_like(p.W).at[i, j].set(eps)
                fd[i, j] = (loss(p.W + e) - loss(p.W - e)) / (2 * eps)
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-9)
        # The phase-1 step with wd = 1/lr is -lr * grad, rescaled to unit rows.
        p0 = net.init(jax.random.key(1), 8)
        w1 = net.phase1(p0, task.x, task.y).W
        raw = -first_layer_grad(p0, task.x, task.y)
        np.testing.assert_allclose(w1, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-10)
    # One step from a large batch aligns W with span(U) (a random W: sqrt(r/d) = 0.2).
    task = multi_index(jax.random.key(3), d=50, r=2, n=20_000)
    net = two_phase(64)
    w1 = jax.jit(net.phase1)(net.init(jax.random.key(4), 50), task.x, task.y).W
    assert float(subspace_fraction(w1, task.U)) > 0.7


def test_ridge_phase_equals_direct_solve():
    with jax.enable_x64(True):
        task = multi_index(jax.random.key(0), d=10, r=2, n=300)
        net = two_phase(20, reg=1e-2)
        p = net.phase1(net.init(jax.random.key(1), 10), task.x, task.y)
        phi = np.asarray(net.features(p, task.x))
        direct = np.linalg.solve(phi.T @ phi + 300 * 1e-2 * np.eye(20), phi.T @ task.y)
        np.testing.assert_allclose(net.phase2(p, task.x, task.y).a, direct, rtol=1e-10)
        # The dual branch (n < L) gives the same minimiser.
        phi_small, y_small = phi[:7], np.asarray(task.y[:7])
        direct = np.linalg.solve(phi_small.T @ phi_small + 7 * 0.5 * np.eye(20),
                                 phi_small.T @ y_small)
        np.testing.assert_allclose(ridge(phi_small, y_small, 0.5), direct, rtol=1e-10)


def test_d1_gradient_matching_reproduces_real_gradient():
    task = multi_index(jax.random.key(0), d=20, r=2, n=20_000)
    net = two_phase(32)
    d1 = d1_gradient_matching(net, m=16, optimizer=optax.adam(0.1))
    run = distill(d1, jax.random.key(1), task, steps=1500, log_every=500, progress=False)
    p0 = run.state.params0
    xs, ys = run.synthetic.x, run.synthetic.y
    assert xs.shape == (16, 20) and ys.shape == (16,)
    start = float(run.history["rel_grad_err"][0])
    err = float(gradient_error(net, p0, xs, ys, task.x, task.y))
    assert err < 0.4 and err < 0.5 * start, (start, err)
    # The first layer trained on 16 synthetic points is as aligned as the one from 20 000 real ones.
    f_real = float(subspace_fraction(net.phase1(p0, task.x, task.y).W, task.U))
    f_syn = float(subspace_fraction(net.phase1(p0, xs, ys).W, task.U))
    assert f_syn > 0.9 * f_real > 0.6, (f_syn, f_real)


def test_d2_rank_certify_reproduces_teacher_exactly():
    with jax.enable_x64(True):
        task = multi_index(jax.random.key(0), d=12, r=2, n=2000)
        test = sample(jax.random.key(5), task, 2000)
        net = two_phase(16, reg=1e-3)
        p1 = net.phase1(net.init(jax.random.key(1), 12), task.x, task.y)
        a_star = net.phase2(p1, task.x, task.y).a
        xs, ys = d2_rank_certify(jax.random.key(2), net, p1, a_star, m=32)
        np.testing.assert_allclose(net.phase2(p1, xs, ys).a, a_star, rtol=1e-8, atol=1e-10)
        rec = reconstruction(net, p1, a_star, xs, ys, test.x, test.y)
        assert int(rec.rank) == 16 and abs(float(rec.mse_pct) - 100) < 1e-6
        # Fewer points than L: a partial reconstruction, better in function space when compact.
        xs, ys = d2_rank_certify(jax.random.key(3), net, p1, a_star, m=4)
        xc, yc = d2_compact(jax.random.key(3), net, p1, a_star, m=4, x_ref=task.x)
        r_rc = reconstruction(net, p1, a_star, xs, ys, test.x, test.y)
        r_cp = reconstruction(net, p1, a_star, xc, yc, test.x, test.y)
        assert int(r_rc.rank) == 4 and float(r_rc.rank_pct) == 25.0
        assert float(r_cp.mse) < float(r_rc.mse)
        assert float(r_cp.mse_pct) > 60.0 > 0.0 > float(r_rc.mse_pct)


def test_vmap_over_seeds_equals_loop():
    net = two_phase(16)

    def run(key):
        k_task, k_net, k_d2 = jax.random.split(key, 3)
        task = multi_index(k_task, d=10, r=2, n=500)
        p1 = net.phase1(net.init(k_net, 10), task.x, task.y)
        a_star = net.phase2(p1, task.x, task.y).a
        xs, ys = d2_rank_certify(k_d2, net, p1, a_star, m=32)
        return net.mse(net.phase2(p1, xs, ys), task.x, task.y), subspace_fraction(p1.W, task.U)

    keys = jax.random.split(jax.random.key(0), 3)
    batched = jax.jit(jax.vmap(run))(keys)
    looped = [jax.jit(run)(k) for k in keys]
    for i in range(3):
        np.testing.assert_allclose(batched[0][i], looped[i][0], rtol=1e-4)
        np.testing.assert_allclose(batched[1][i], looped[i][1], rtol=1e-5)
    # The D1 distiller vmaps over seeds through the run loop.
    task = multi_index(jax.random.key(1), d=10, r=2, n=2000)
    d1 = d1_gradient_matching(net, m=4)
    keys = jax.random.split(jax.random.key(2), 2)
    many = distill(d1, keys, task, steps=10, progress=False)
    one = distill(d1, keys[1], task, steps=10, progress=False)
    np.testing.assert_allclose(many.synthetic.x[1], one.synthetic.x, rtol=1e-4, atol=1e-5)
