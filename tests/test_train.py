"""Inner training: meta-gradients against finite differences, memory strategies agree."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdd.models import make_model
from jdd.train import TrainConfig, accuracy, cast_like, fit, init_and_fit


def _problem():
    model = make_model("mlp", 3, hidden=(5,), activation="tanh")
    kx, ky, kp = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (6, 4), jnp.float64)
    y = jax.nn.softmax(jax.random.normal(ky, (6, 3), jnp.float64))
    params = cast_like(model.init(kp, x[:1]), jnp.float64)
    xt = jax.random.normal(jax.random.key(5), (10, 4), jnp.float64)
    yt = jax.nn.one_hot(jnp.arange(10) % 3, 3, dtype=jnp.float64)
    return model, params, x, y, xt, yt


def _outer(model, params, xt, yt, cfg):
    def f(x, y, log_lr):
        p = fit(model, params, x, y, jnp.exp(log_lr), jax.random.key(1), cfg)
        out = model.apply(p, xt)
        return -jnp.mean(jnp.sum(yt * jax.nn.log_softmax(out), -1))
    return f


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("memory", ["unroll", "checkpoint"])
def test_meta_gradient_matches_central_finite_differences(optimizer, memory):
    with jax.enable_x64(True):
        model, params, x, y, xt, yt = _problem()
        cfg = TrainConfig(steps=8, optimizer=optimizer, memory=memory, weight_decay=1e-3)
        f = _outer(model, params, xt, yt, cfg)
        log_lr = jnp.log(jnp.float64(0.05 if optimizer != "adam" else 0.01))
        gx, gy, glr = jax.grad(f, argnums=(0, 1, 2))(x, y, log_lr)
        eps = 1e-6
        rng = np.random.default_rng(0)
        for _ in range(3):  # random directions in input and label space
            dx = jnp.asarray(rng.normal(size=x.shape))
            dy = jnp.asarray(rng.normal(size=y.shape))
            fd = (f(x + eps * dx, y + eps * dy, log_lr) - f(x - eps * dx, y - eps * dy, log_lr)) / (2 * eps)
            an = jnp.sum(gx * dx) + jnp.sum(gy * dy)
            np.testing.assert_allclose(an, fd, rtol=1e-6, atol=1e-9)
        fd_lr = (f(x, y, log_lr + eps) - f(x, y, log_lr - eps)) / (2 * eps)
        np.testing.assert_allclose(glr, fd_lr, rtol=1e-6, atol=1e-9)
        assert float(jnp.abs(glr)) > 1e-6  # the lr really matters


def test_memory_strategies_agree_and_truncation_is_truncated():
    with jax.enable_x64(True):
        model, params, x, y, xt, yt = _problem()
        grads = {}
        for mem, tr in [("unroll", 0), ("checkpoint", 0), ("truncated", 10), ("truncated", 3)]:
            cfg = TrainConfig(steps=10, optimizer="momentum", memory=mem, truncate=tr)
            grads[(mem, tr)] = jax.grad(_outer(model, params, xt, yt, cfg))(x, y, jnp.log(0.1))
        np.testing.assert_allclose(grads[("checkpoint", 0)], grads[("unroll", 0)], rtol=1e-10)
        # truncating at the full length is plain unrolling; truncating earlier drops terms
        np.testing.assert_allclose(grads[("truncated", 10)], grads[("unroll", 0)], rtol=1e-10)
        assert not np.allclose(grads[("truncated", 3)], grads[("unroll", 0)], rtol=1e-3)


def test_fit_trains_and_minibatches_are_deterministic():
    model = make_model("mlp", 2, hidden=(16,))
    x = jax.random.normal(jax.random.key(0), (64, 3))
    labels = (x[:, 0] + x[:, 1] > 0).astype(jnp.int32)
    t = jax.nn.one_hot(labels, 2)
    cfg = TrainConfig(steps=100, optimizer="adam", batch_size=16)
    p1 = init_and_fit(model, jax.random.key(3), x, t, 0.05, cfg)
    p2 = init_and_fit(model, jax.random.key(3), x, t, 0.05, cfg)
    p0 = model.init(jax.random.split(jax.random.key(3))[0], x[:1])
    assert float(accuracy(model, p1, x, labels)) > 0.9 > float(accuracy(model, p0, x, labels))
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_chunked_accuracy_equals_direct():
    model = make_model("mlp", 4, hidden=(8,))
    x = jax.random.normal(jax.random.key(0), (1000, 5))
    y = jax.random.randint(jax.random.key(1), (1000,), 0, 4)
    p = model.init(jax.random.key(2), x[:1])
    direct = jnp.mean(jnp.argmax(model.apply(p, x), -1) == y)
    np.testing.assert_allclose(accuracy(model, p, x, y, batch_size=128), direct, rtol=1e-6)


def test_bad_config_is_rejected():
    model = make_model("mlp", 2)
    x, t = jnp.zeros((2, 3)), jnp.ones((2, 2)) / 2
    with pytest.raises(ValueError, match="valid: unroll, checkpoint, truncated"):
        fit(model, model.init(jax.random.key(0), x), x, t, 0.1, jax.random.key(0),
            TrainConfig(memory="remat"))
    with pytest.raises(ValueError, match="valid: sgd, momentum, adam"):
        fit(model, model.init(jax.random.key(0), x), x, t, 0.1, jax.random.key(0),
            TrainConfig(optimizer="lbfgs"))
