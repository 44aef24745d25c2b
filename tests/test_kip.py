"""Tests of jdd.distill.kip: gradients, learning on digits, seed vmapping, no retracing."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdd.data import DataError, Dataset, load_digits
from jdd.distill.core import distill, seed_keys
from jdd.distill.kip import kip
from jdd.kernels import fc_kernel, krr_predict


def _toy(n=24, d=5, k=3, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    x = rng.normal(size=(n, d)) + 1.5 * np.eye(k, d)[y]
    return Dataset(x=jnp.asarray(x, dtype), y=jnp.asarray(y, jnp.int32), num_classes=k, name="toy")


def _xy(state):
    """The learnable support inputs and targets of a KIP state (compose's ``params["set"]``)."""
    p = state.params["set"]
    return p["x"], p.get("y", state.fixed["y"])


def _with_xy(state, x, y):
    return state._replace(params={**state.params, "set": {"x": x, "y": y}})


def test_gradient_matches_central_finite_differences():
    kfn = fc_kernel(2, "relu", 1.3, 0.2)
    with jax.enable_x64(True):
        data = _toy()
        # SGD with lr 1: the update is exactly -grad; metrics["loss"] is the loss before it.
        # Noise init: the ReLU NTK has a cone (is not differentiable) where a support point
        # coincides with a real one, as it does with init="real" and a full batch.
        d = kip(kfn, ipc=2, optimizer=optax.sgd(1.0), reg=1e-3, batch_size=None, init="noise")
        state = d.init(jax.random.key(0), data)
        sx, sy = _xy(state)
        assert sx.dtype == jnp.float64 and sy.dtype == jnp.float64
        step = jax.jit(d.step)
        new, _ = step(state, jax.random.key(1), data)
        nx, ny = _xy(new)
        grad_x = np.asarray(sx - nx)
        grad_y = np.asarray(sy - ny)

        def loss_at(x, y):
            return float(step(_with_xy(state, x, y), jax.random.key(1), data)[1]["loss"])

        eps = 1e-6
        for idx in [(0, 0), (1, 3), (3, 2), (5, 4)]:
            e = jnp.zeros_like(sx).at[idx].set(eps)
            fd = (loss_at(sx + e, sy) - loss_at(sx - e, sy)) / (2 * eps)
            assert grad_x[idx] == pytest.approx(fd, rel=1e-5, abs=1e-10)
        for idx in [(0, 0), (4, 1)]:
            e = jnp.zeros_like(sy).at[idx].set(eps)
            fd = (loss_at(sx, sy + e) - loss_at(sx, sy - e)) / (2 * eps)
            assert grad_y[idx] == pytest.approx(fd, rel=1e-5, abs=1e-10)
        assert np.abs(grad_x).max() > 1e-4  # the check is not vacuous


def test_blocked_targets_equal_unblocked_and_bound_memory():
    # the whole training set as targets, in blocks of 7 rows (24 targets: a ragged last block):
    # loss, batch accuracy and the exact gradient (SGD lr 1) equal the one-block step's
    kfn = fc_kernel(2, "relu", 1.3, 0.2)
    with jax.enable_x64(True):
        data = _toy()
        runs = []
        for block in (None, 7):
            d = kip(kfn, ipc=2, optimizer=optax.sgd(1.0), reg=1e-3, batch_size=None,
                    init="noise", target_block=block)
            state = d.init(jax.random.key(0), data)
            new, metrics = jax.jit(d.step)(state, jax.random.key(1), data)
            runs.append((np.asarray(_xy(state)[0] - _xy(new)[0]),
                         np.asarray(_xy(state)[1] - _xy(new)[1]), metrics))
        (gx, gy, m), (bx, by, bm) = runs
        np.testing.assert_allclose(bx, gx, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(by, gy, rtol=1e-10, atol=1e-14)
        assert float(bm["loss"]) == pytest.approx(float(m["loss"]), rel=1e-12)
        assert float(bm["batch_acc"]) == float(m["batch_acc"])
        assert np.abs(gx).max() > 1e-4

    # compiled temporary memory of one step: flat in the number of targets when blocked,
    # growing with it when not (XLA's own accounting, not a timing)
    def temp_bytes(n, block):
        rng = np.random.default_rng(0)
        big = Dataset(x=jnp.asarray(rng.normal(size=(n, 196)), jnp.float32),
                      y=jnp.asarray(np.arange(n) % 10, jnp.int32), num_classes=10, name="big")
        d = kip(kfn, ipc=10, batch_size=None, target_block=block)
        state = jax.eval_shape(d.init, jax.random.key(0), big)
        c = jax.jit(d.step).lower(state, jax.random.key(1), big).compile()
        return c.memory_analysis().temp_size_in_bytes

    blocked = [temp_bytes(n, 256) for n in (2000, 8000)]           # ragged: 2000 = 7 x 256 + 208
    full = [temp_bytes(n, None) for n in (2000, 8000)]
    assert blocked[1] <= 1.02 * blocked[0], blocked                  # no copy of the targets
    assert full[1] > 3 * full[0], full                                 # (n, m) arrays
    assert blocked[1] < full[1] / 4, (blocked, full)


def test_loss_decreases_on_digits_and_improves_krr():
    train, test = load_digits()
    kfn = fc_kernel(2, "relu", 2.0 ** 0.5, 0.1)
    d = kip(kfn, ipc=1, optimizer=optax.adam(0.01), batch_size=256)
    res = distill(d, jax.random.key(0), train, steps=30, log_every=10, progress=False)
    loss = res.history["loss"]
    assert loss.shape == (3,)
    assert loss[-1] < 0.8 * loss[0]
    s = res.synthetic
    assert s.x.shape == (10, 8, 8, 1) and s.y.shape == (10, 10)
    init = d.synthetic(d.init(jax.random.split(jax.random.key(0))[0], train))  # initial set
    acc0 = float(jnp.mean(krr_predict(kfn, init.x, init.y, test.x).argmax(-1) == test.y))
    acc = float(jnp.mean(krr_predict(kfn, s.x, s.y, test.x).argmax(-1) == test.y))
    assert acc > acc0 + 0.05


def test_vmapped_seeds_equal_loop_over_keys():
    data = _toy(dtype=np.float32)
    d = kip(fc_kernel(1), ipc=2, batch_size=12, learn_labels=True)
    keys = seed_keys(3, 2)
    batched = distill(d, keys, data, steps=4, log_every=4, progress=False)
    assert batched.synthetic.x.shape == (2, 6, 5)
    for i in range(2):
        single = distill(d, keys[i], data, steps=4, log_every=4, progress=False)
        np.testing.assert_allclose(batched.synthetic.x[i], single.synthetic.x, rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(batched.synthetic.y[i], single.synthetic.y, rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(batched.history["loss"][i], single.history["loss"], rtol=1e-5)
    assert not np.allclose(batched.synthetic.x[0], batched.synthetic.x[1])


def test_step_traced_once_and_same_key_same_bytes():
    data = _toy(dtype=np.float32)
    calls = []
    base = fc_kernel(1)

    def counting_kernel(x1, x2):
        calls.append(1)
        return base(x1, x2)

    d = kip(counting_kernel, ipc=1, batch_size=8)
    state = d.init(jax.random.key(0), data)
    step = jax.jit(d.step)
    s1, _ = step(state, jax.random.key(1), data)
    n_trace = len(calls)
    s2, _ = step(s1, jax.random.key(2), data)
    s3, _ = step(s2, jax.random.key(3), data)
    assert len(calls) == n_trace == 2  # K_ss and K_ts, traced once
    again, _ = step(state, jax.random.key(1), data)
    np.testing.assert_array_equal(np.asarray(_xy(again)[0]), np.asarray(_xy(s1)[0]))
    assert int(s3.step) == 3


def test_init_real_noise_labels_and_checks():
    data = _toy(dtype=np.float32)
    d = kip(fc_kernel(1), ipc=3, learn_labels=False, center_labels=True, label_scale=2.0)
    st = d.synthetic(jax.jit(d.init)(jax.random.key(0), data))
    labels = np.repeat(np.arange(3), 3)
    np.testing.assert_allclose(np.asarray(st.y), 2.0 * (np.eye(3)[labels] - 1 / 3), atol=1e-6)
    x = np.asarray(data.x)
    y = np.asarray(data.y)
    for row, c in zip(np.asarray(st.x), labels):  # each support row is a real example of its class
        match = np.flatnonzero(np.all(x == row, axis=1))
        assert len(match) == 1 and y[match[0]] == c
    assert len({tuple(r) for r in np.asarray(st.x)}) == 9  # distinct
    state0 = jax.jit(d.init)(jax.random.key(0), data)
    new = d.synthetic(jax.jit(d.step)(state0, jax.random.key(1), data)[0])
    np.testing.assert_array_equal(np.asarray(new.y), np.asarray(st.y))  # labels not learned
    assert not np.array_equal(np.asarray(new.x), np.asarray(st.x))

    dn = kip(fc_kernel(1), ipc=2, init="noise")
    noise = dn.synthetic(dn.init(jax.random.key(0), data))
    assert noise.x.shape == (6, 5) and abs(float(noise.x.std()) - float(data.x.std())) < 0.7
    with pytest.raises(DataError, match="ipc"):
        kip(fc_kernel(1), ipc=9).init(jax.random.key(0), data)
    with pytest.raises(ValueError, match="init"):
        kip(fc_kernel(1), ipc=1, init="zeros")


def test_evaluation_kernel_tiles_bound_the_product_and_keep_its_values(monkeypatch):
    import importlib
    kipmod = importlib.import_module("jdd.distill.kip")   # jdd.distill.kip is also a function
    from jdd.kernels import conv_kernel, fc_kernel
    x1 = jax.random.normal(jax.random.key(0), (23, 8, 8, 1))
    x2 = jax.random.normal(jax.random.key(1), (9, 8, 8, 1))
    conv, fc = conv_kernel(depth=1), fc_kernel(depth=2)
    # default tiles: 512 x 512 pairs at 64 positions; these products fit in one: unchanged
    assert jnp.array_equal(kipmod.evaluation_kernel(conv, "conv-ntk", (8, 8, 1))(x1, x2),
                           conv(x1, x2))
    # 64 positions x 20 entries per tile -> 4 x 4 pairs per tile; FC: 1 position -> 35 x 35
    monkeypatch.setattr(kipmod, "EVAL_TILE_ENTRIES", 64 * 20)
    calls = []

    def spy(a, b):
        calls.append((a.shape[0], b.shape[0]))
        return conv(a, b)
    tiled = kipmod.evaluation_kernel(spy, "conv-ntk", (8, 8, 1))(x1, x2)
    assert set(calls) == {(4, 4)}
    np.testing.assert_allclose(tiled, conv(x1, x2), rtol=1e-5, atol=1e-6)
    calls.clear()
    kipmod.evaluation_kernel(lambda a, b: spy(a, b), "fc-ntk", (8, 8, 1))(x1, x2)
    assert set(calls) == {(23, 9)}                 # 35 x 35 tiles: the product fits in one
    np.testing.assert_allclose(kipmod.evaluation_kernel(fc, "fc-ntk", (8, 8, 1))(x1, x2),
                               fc(x1, x2), rtol=1e-6)
