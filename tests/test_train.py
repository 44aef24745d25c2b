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


# ----------------------------------------------------------------------------- augmentation

def _bytes(tree):
    return [np.asarray(a).tobytes() for a in jax.tree.leaves(tree)]


@pytest.mark.parametrize("batch_size", [None, 8])
def test_augment_none_and_identity_leave_training_unchanged(batch_size):
    model = make_model("mlp", 3, hidden=(8,))
    x = jax.random.normal(jax.random.key(0), (20, 4))
    t = jax.nn.one_hot(jnp.arange(20) % 3, 3)
    cfg = TrainConfig(steps=12, optimizer="momentum", weight_decay=5e-4, schedule="step",
                      batch_size=batch_size)
    base = init_and_fit(model, jax.random.key(1), x, t, 0.1, cfg)
    assert _bytes(init_and_fit(model, jax.random.key(1), x, t, 0.1, cfg, None)) == _bytes(base)
    same = init_and_fit(model, jax.random.key(1), x, t, 0.1, cfg, augment=lambda k, xb: xb)
    assert _bytes(same) == _bytes(base)  # identity augmentation: the same minibatches, same bytes


def test_augment_sees_each_minibatch_with_a_fresh_key_per_step():
    model = make_model("mlp", 3, hidden=(8,))
    x = jax.random.normal(jax.random.key(0), (20, 4))
    t = jax.nn.one_hot(jnp.arange(20) % 3, 3)
    cfg = TrainConfig(steps=5, optimizer="sgd", batch_size=8)
    seen = []

    def noisy(key, xb):
        seen.append(xb.shape)
        return xb + 0.5 * jax.random.normal(key, xb.shape)

    def record(key, xb):  # the per-step noise that was drawn, returned through a scan
        return jax.random.normal(key, (2,))

    a = init_and_fit(model, jax.random.key(1), x, t, 0.1, cfg, noisy)
    b = init_and_fit(model, jax.random.key(1), x, t, 0.1, cfg)
    assert seen == [(8, 4)]  # traced once, on a (batch, *feature_shape) minibatch
    assert _bytes(a) != _bytes(b)
    # same key, same augmentation draws: same bytes
    assert _bytes(init_and_fit(model, jax.random.key(1), x, t, 0.1, cfg, noisy)) == _bytes(a)
    # the key of step t is fold_in(fold_in(key, 2**32 - 1), t): distinct per step
    k = jax.random.fold_in(jax.random.key(7), 2**32 - 1)
    draws = [np.asarray(record(jax.random.fold_in(k, s), None)) for s in range(3)]
    assert len({d.tobytes() for d in draws}) == 3


# ----------------------------------------------------------------------------- torch SGD order

def test_momentum_weight_decay_and_step_schedule_match_torch_sgd_by_hand():
    # torch.optim.SGD(momentum=m, weight_decay=wd): d = g + wd p; buf = m buf + d (buf_1 = d);
    # p -= lr buf; the lr is x0.1 from step steps // 2 on (here steps 1 and 2 of 3).
    from jdd.models import Model
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(5, 3))
        y = np.eye(2)[[0, 1, 1, 0, 1]]
        w0, b0 = rng.normal(size=(3, 2)), rng.normal(size=(2,))
        model = Model(init=lambda k, x: None,
                      apply=lambda p, x: x @ p["w"] + p["b"], name="linear")
        lr, mom, wd = 0.3, 0.9, 0.05
        cfg = TrainConfig(steps=3, optimizer="momentum", momentum=mom, weight_decay=wd,
                          schedule="step")
        got = fit(model, {"w": jnp.asarray(w0), "b": jnp.asarray(b0)}, jnp.asarray(x),
                  jnp.asarray(y), lr, jax.random.key(0), cfg)

        w, b = w0.copy(), b0.copy()
        bw, bb = np.zeros_like(w), np.zeros_like(b)
        for step in range(3):
            z = x @ w + b
            s = np.exp(z - z.max(1, keepdims=True))
            s /= s.sum(1, keepdims=True)
            gw, gb = x.T @ (s - y) / len(x), (s - y).mean(0)   # mean soft-target CE
            dw, db = gw + wd * w, gb + wd * b
            bw, bb = mom * bw + dw, mom * bb + db
            lr_t = lr * (1.0 if step < 3 // 2 else 0.1)
            w, b = w - lr_t * bw, b - lr_t * bb
        np.testing.assert_allclose(got["w"], w, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(got["b"], b, rtol=1e-12, atol=1e-14)


def test_protocol_config_steps_arithmetic():
    from jdd.train import protocol_config
    assert protocol_config(10, epochs=300).steps == 300            # ipc 1: one batch per epoch
    assert protocol_config(500, epochs=1000).steps == 2000         # ceil(500 / 256) = 2
    assert protocol_config(256, epochs=3).steps == 3
    assert protocol_config(257, epochs=3).steps == 6
    assert protocol_config(1797, epochs=2, batch_size=100).steps == 36
    c = protocol_config(100, epochs=4)
    assert (c.optimizer, c.momentum, c.weight_decay, c.batch_size, c.schedule, c.memory,
            c.loss) == ("momentum", 0.9, 5e-4, 256, "step", "unroll", "ce")
    for bad in ({"epochs": 0}, {"epochs": 2, "batch_size": 0}):
        with pytest.raises(ValueError, match="must be an integer >= 1"):
            protocol_config(10, **bad)


# ----------------------------------------------------------------------------- RaT-BPTT

def test_rat_length_is_uniform_on_window_to_steps():
    from jdd.train import rat_length
    ts = np.asarray(jax.vmap(lambda k: rat_length(k, 9, 4))(jax.random.split(jax.random.key(0),
                                                                              3000)))
    assert ts.min() == 4 and ts.max() == 9
    counts = np.bincount(ts, minlength=10)[4:]
    assert np.all(np.abs(counts / 3000 - 1 / 6) < 0.03)
    assert int(rat_length(jax.random.key(1), 5, 5)) == 5
    assert int(rat_length(jax.random.key(1), 5, 50)) == 5     # window clipped to steps
    with pytest.raises(ValueError, match="window >= 1"):
        rat_length(jax.random.key(1), 5, 0)


def test_rat_with_full_window_is_plain_unrolling_gradients_too():
    with jax.enable_x64(True):
        model, params, x, y, xt, yt = _problem()
        kw = dict(steps=7, optimizer="momentum", weight_decay=1e-3, batch_size=4,
                  schedule="step")
        f_rat = _outer(model, params, xt, yt, TrainConfig(memory="rat", truncate=7, **kw))
        f_unr = _outer(model, params, xt, yt, TrainConfig(memory="unroll", **kw))
        np.testing.assert_allclose(f_rat(x, y, jnp.log(0.1)), f_unr(x, y, jnp.log(0.1)),
                                   rtol=1e-13)
        g_rat = jax.grad(f_rat, argnums=(0, 1, 2))(x, y, jnp.log(0.1))
        g_unr = jax.grad(f_unr, argnums=(0, 1, 2))(x, y, jnp.log(0.1))
        for a, b in zip(g_rat, g_unr):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)


def _rat_key(steps, window):
    """A key whose drawn length leaves steps before, inside and after the window."""
    from jdd.train import rat_length
    for s in range(100):
        t = int(rat_length(jax.random.fold_in(jax.random.key(1), s), steps, window))
        if window < t < steps:
            return jax.random.fold_in(jax.random.key(1), s), t
    raise AssertionError("no such key")


@pytest.mark.parametrize("optimizer,batch_size", [("momentum", 4), ("adam", None)])
def test_rat_params_equal_a_plain_fit_of_the_drawn_length(optimizer, batch_size):
    with jax.enable_x64(True):
        model, params, x, y, _, _ = _problem()
        T, W = 12, 3
        key, t = _rat_key(T, W)
        kw = dict(optimizer=optimizer, weight_decay=1e-3, batch_size=batch_size)
        rat = fit(model, params, x, y, 0.05, key, TrainConfig(steps=T, memory="rat", truncate=W,
                                                              **kw))
        plain = fit(model, params, x, y, 0.05, key, TrainConfig(steps=t, **kw))
        for a, b in zip(jax.tree.leaves(rat), jax.tree.leaves(plain)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
        longer = fit(model, params, x, y, 0.05, key, TrainConfig(steps=t + 1, **kw))
        assert not np.allclose(jax.tree.leaves(rat)[0], jax.tree.leaves(longer)[0])


def test_rat_gradient_matches_finite_differences_of_the_window_at_fixed_length():
    # At the drawn length t, RaT-BPTT's gradient is the exact gradient of
    #   h(x, y, lr) = outer(W steps on (x, y, lr) from the params reached after t - W steps on
    #                 the CURRENT (x0, y0, lr0), held constant)
    # (sgd + weight decay, full batch, constant lr: the continuation is exact).
    with jax.enable_x64(True):
        model, params, x0, y0, xt, yt = _problem()
        T, W = 10, 3
        key, t = _rat_key(T, W)
        lr0 = jnp.log(jnp.float64(0.3))
        base = dict(optimizer="sgd", weight_decay=1e-2)

        def outer(p0, cfg):
            def f(x, y, log_lr):
                p = fit(model, p0, x, y, jnp.exp(log_lr), key, cfg)
                return -jnp.mean(jnp.sum(yt * jax.nn.log_softmax(model.apply(p, xt)), -1))
            return f

        f_rat = outer(params, TrainConfig(steps=T, memory="rat", truncate=W, **base))
        gx, gy, glr = jax.grad(f_rat, argnums=(0, 1, 2))(x0, y0, lr0)

        p_mid = fit(model, params, x0, y0, jnp.exp(lr0), key, TrainConfig(steps=t - W, **base))
        h = outer(p_mid, TrainConfig(steps=W, **base))
        np.testing.assert_allclose(h(x0, y0, lr0), f_rat(x0, y0, lr0), rtol=1e-12)
        eps = 1e-6
        rng = np.random.default_rng(1)
        for _ in range(3):
            dx = jnp.asarray(rng.normal(size=x0.shape))
            dy = jnp.asarray(rng.normal(size=y0.shape))
            fd = (h(x0 + eps * dx, y0 + eps * dy, lr0)
                  - h(x0 - eps * dx, y0 - eps * dy, lr0)) / (2 * eps)
            np.testing.assert_allclose(jnp.sum(gx * dx) + jnp.sum(gy * dy), fd, rtol=1e-6,
                                       atol=1e-10)
        fd_lr = (h(x0, y0, lr0 + eps) - h(x0, y0, lr0 - eps)) / (2 * eps)
        np.testing.assert_allclose(glr, fd_lr, rtol=1e-6, atol=1e-10)
        # and it is a truncation: the full derivative of the t-step run differs
        f_full = outer(params, TrainConfig(steps=t, **base))
        assert not np.allclose(jax.grad(f_full)(x0, y0, lr0), gx, rtol=1e-3)


def test_rat_vmaps_over_keys_with_a_length_per_model():
    from jdd.train import rat_length
    model = make_model("mlp", 3, hidden=(8,))
    x = jax.random.normal(jax.random.key(0), (12, 4))
    t = jax.nn.one_hot(jnp.arange(12) % 3, 3)
    cfg = TrainConfig(steps=9, optimizer="momentum", memory="rat", truncate=2, batch_size=5)
    keys = jax.random.split(jax.random.key(4), 4)

    def outer(k, x):
        return jnp.mean(model.apply(fit(model, model.init(jax.random.key(9), x[:1]), x, t, 0.1,
                                        k, cfg), x) ** 2)

    vals, grads = jax.jit(jax.vmap(jax.value_and_grad(outer, argnums=1), (0, None)))(keys, x)
    lengths = [int(rat_length(k, 9, 2)) for k in keys]
    assert len(set(lengths)) > 1
    one = jax.jit(jax.value_and_grad(outer, argnums=1))
    for i, k in enumerate(keys):
        v, g = one(k, x)
        np.testing.assert_allclose(vals[i], v, rtol=1e-5)
        np.testing.assert_allclose(grads[i], g, rtol=1e-4, atol=1e-7)


def test_rat_rejects_an_empty_window():
    model = make_model("mlp", 2)
    x, t = jnp.zeros((2, 3)), jnp.ones((2, 2)) / 2
    with pytest.raises(ValueError, match="window truncate >= 1"):
        fit(model, model.init(jax.random.key(0), x), x, t, 0.1, jax.random.key(0),
            TrainConfig(memory="rat", truncate=0))
