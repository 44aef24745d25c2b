"""Tests for jdd.tasks.pinn and jdd.distill.pinn_points (tiny sizes)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdd.distill.core import distill, scan_steps, seed_keys
from jdd.distill.pinn_points import pinn_points, points_from_synthetic
from jdd.tasks.pinn import (boundary_residual, exact_solution, forcing, make_pinn, measurements,
                            pinn_loss, residual, sample_alphas, eval_grid, train_pinn)


def test_exact_solution_has_zero_residual():
    with jax.enable_x64(True):
        xs = jnp.linspace(0.0, 1.0, 11)
        for alpha in (-2.3, 0.0, 1.7):
            r = jax.vmap(lambda x: residual(exact_solution, x, jnp.float64(alpha)))(xs)
            np.testing.assert_allclose(r, 0.0, atol=1e-10)
            np.testing.assert_allclose(boundary_residual(exact_solution, jnp.float64(alpha)),
                                       0.0, atol=1e-12)
        # the residual really is -u'' - f: for u = x^2 it is -2 - f(x)
        r = residual(lambda x, a: x ** 2, jnp.float64(0.3), jnp.float64(0.0))
        np.testing.assert_allclose(r, -2.0 - forcing(0.3), rtol=1e-12)


def test_tails_and_measurements():
    a = sample_alphas(jax.random.key(0), 200, "left", 0.5)
    assert np.all(np.asarray(a) < -0.5)
    pts = measurements(jax.random.key(1), 50, tail="right", noise_std=0.0)
    assert np.all(np.asarray(pts["alpha"]) > 0.5)
    np.testing.assert_allclose(pts["y"], exact_solution(pts["x"], pts["alpha"]), atol=1e-6)
    g = eval_grid(jax.random.key(2), 4, 5)
    assert g["x"].shape == (20,)
    with pytest.raises(ValueError, match="tail"):
        sample_alphas(jax.random.key(0), 3, "middle")


def test_pinn_training_lowers_loss():
    pinn = make_pinn((16,))
    pts = measurements(jax.random.key(0), 32)
    cx, ca = jnp.linspace(0, 1, 16), -jnp.linspace(0.5, 2.0, 16)
    before = pinn_loss(pinn, pinn.init(jax.random.key(1)), pts, cx, ca)
    params = jax.jit(lambda k: train_pinn(pinn, k, pts, steps=60, lr=2e-2))(jax.random.key(1))
    after = pinn_loss(pinn, params, pts, cx, ca)
    assert after < 0.5 * before


def test_pinn_points_vmapped_equals_looped():
    pinn = make_pinn((8,))
    real = measurements(jax.random.key(0), 64, noise_std=0.1)
    d = pinn_points(pinn, 4, optax.adam(5e-2), inner_steps=4, batch_size=16, num_colloc=8,
                    outer_num_colloc=8)
    keys = seed_keys(0, 2)
    many = distill(d, keys, real, steps=3, log_every=3, progress=False)

    @jax.jit
    def one(key):
        k_init, k_run = jax.random.split(key)
        state, _ = scan_steps(d, d.init(k_init, real), k_run, real, 3)
        return d.synthetic(state)

    for i in range(2):
        s = one(keys[i])
        np.testing.assert_allclose(many.synthetic.x[i], s.x, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(many.synthetic.y[i], s.y, rtol=1e-4, atol=1e-5)
    pts = points_from_synthetic(many.synthetic)
    assert pts["x"].shape == (2, 4)
    assert np.all((np.asarray(pts["x"]) >= 0) & (np.asarray(pts["x"]) <= 1))
    assert np.all(np.isfinite(many.history["loss"]))
