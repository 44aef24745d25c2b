"""Distillers: vmapped == looped, same key == same bytes, one trace, bilevel correctness."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdd.data import load_digits
from jdd.distill import bilevel, distill, init_per_class
from jdd.distill.unrolled import unrolled
from jdd.models import make_model
from jdd.train import TrainConfig


@pytest.fixture(scope="module")
def digits():
    train, _ = load_digits()
    return train.replace(x=(train.x - 0.3) / 0.4)


def _small(ipc=1):
    return unrolled(make_model("mlp", 10, hidden=(16,)), ipc=ipc,
                    inner=TrainConfig(steps=4, optimizer="momentum"), batch_size=64)


def _bytes(tree):
    return [np.asarray(a).tobytes() for a in jax.tree.leaves(tree)]


def test_vmapped_over_seeds_equals_python_loop(digits):
    d = _small()
    keys = jax.random.split(jax.random.key(0), 3)
    batched = distill(d, keys, digits, 6, log_every=3, progress=False)
    for i in range(3):
        single = distill(d, keys[i], digits, 6, log_every=3, progress=False)
        np.testing.assert_allclose(batched.synthetic.x[i], single.synthetic.x, rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(batched.synthetic.y[i], single.synthetic.y, rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(batched.history["loss"][i], single.history["loss"],
                                   rtol=1e-5)
    # and the seeds really differ
    assert not np.allclose(batched.synthetic.x[0], batched.synthetic.x[1])


def test_same_key_same_bytes_and_chunking_invariance(digits):
    d = _small()
    a = distill(d, jax.random.key(7), digits, 6, log_every=3, progress=False)
    b = distill(d, jax.random.key(7), digits, 6, log_every=3, progress=False)
    assert _bytes(a.state) == _bytes(b.state)
    c = distill(d, jax.random.key(7), digits, 6, log_every=6, progress=False)
    np.testing.assert_allclose(a.synthetic.x, c.synthetic.x, rtol=1e-5, atol=1e-6)
    other = distill(d, jax.random.key(8), digits, 6, log_every=3, progress=False)
    assert _bytes(a.state) != _bytes(other.state)


def test_continuing_a_run_gives_the_bytes_of_one_long_run(digits):
    d = _small()
    whole = distill(d, jax.random.key(7), digits, 6, log_every=3, progress=False)
    half = distill(d, jax.random.key(7), digits, 3, log_every=3, progress=False)
    rest = distill(d, jax.random.key(7), digits, 3, log_every=3, progress=False,
                   state=half.state)
    assert _bytes(rest.state) == _bytes(whole.state)
    assert rest.steps_logged.tolist() == [6]
    np.testing.assert_array_equal(rest.history["loss"], whole.history["loss"][-1:])
    keys = jax.random.split(jax.random.key(1), 2)          # seeds: the same, vmapped
    whole = distill(d, keys, digits, 4, log_every=2, progress=False)
    half = distill(d, keys, digits, 2, log_every=2, progress=False)
    rest = distill(d, keys, digits, 2, log_every=2, progress=False, state=half.state)
    assert _bytes(rest.state) == _bytes(whole.state)
    with pytest.raises(ValueError, match=r"step counter has shape \(2,\); expected \(\) for one key"):
        distill(d, jax.random.key(1), digits, 2, progress=False, state=half.state)


def test_jitted_step_traces_once(digits):
    d = _small()
    traces = []

    def step(s, k, data):
        traces.append(1)
        return d.step(s, k, data)

    step = jax.jit(step)
    state = jax.jit(d.init)(jax.random.key(0), digits)
    for i in range(5):
        state, m = step(state, jax.random.key(i), digits)
    assert len(traces) == 1
    assert int(state.step) == 5


def test_unrolled_loss_decreases_and_labels_lr_are_learned(digits):
    d = _small()
    r = distill(d, jax.random.key(0), digits, 40, log_every=20, progress=False)
    assert r.history["loss"][-1] < r.history["loss"][0]
    assert r.synthetic.x.shape == (10, 8, 8, 1)
    np.testing.assert_allclose(r.synthetic.y.sum(-1), 1.0, rtol=1e-5)
    assert abs(float(r.synthetic.lr) - 0.01) > 1e-5  # the inner lr moved


def test_init_per_class_is_class_major_and_distinct(digits):
    x, y = init_per_class(jax.random.key(3), digits, 4)
    np.testing.assert_array_equal(np.asarray(y), np.repeat(np.arange(10), 4))
    flat = np.asarray(x).reshape(40, -1)
    assert len({row.tobytes() for row in flat}) == 40


def test_bilevel_solves_a_closed_form_problem():
    # outer: fit a linear model to y = 3x from a 2-point synthetic set by least squares
    data = {"x": jnp.linspace(-1, 1, 64)[:, None]}
    data["y"] = 3.0 * data["x"]
    d = bilevel(lambda k, _: {"xs": jax.random.normal(k, (2, 1)), "ys": jnp.zeros((2, 1))},
                lambda p, k: jnp.linalg.lstsq(p["xs"], p["ys"])[0],
                lambda w, b, p, k: jnp.mean((b["x"] @ w - b["y"]) ** 2),
                optax.adam(0.05), batch_size=16)
    r = distill(d, jax.random.key(0), data, 300, log_every=100, progress=False)
    w = jnp.linalg.lstsq(r.synthetic["xs"], r.synthetic["ys"])[0]
    np.testing.assert_allclose(w, [[3.0]], rtol=1e-3)


def test_bilevel_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        data = {"x": jnp.linspace(-1, 1, 8)[:, None] ** jnp.arange(1, 3)}  # (8, 2)
        data["y"] = data["x"] @ jnp.array([[1.0], [-2.0]])

        def fit(p, k):
            a = p["xs"].T @ p["xs"] + 0.1 * jnp.eye(2)
            return jnp.linalg.solve(a, p["xs"].T @ p["ys"])

        def outer(w, b, p, k):
            return jnp.mean((b["x"] @ w - b["y"]) ** 2)

        d = bilevel(lambda k, _: {"xs": jax.random.normal(k, (3, 2), jnp.float64),
                                  "ys": jnp.ones((3, 1), jnp.float64)}, fit, outer, optax.sgd(1.0))
        s = d.init(jax.random.key(0), data)
        lr = 1e-3
        d_small = bilevel(lambda k, _: s.params, fit, outer, optax.sgd(lr))
        s2, _ = d_small.step(d_small.init(jax.random.key(0), data), jax.random.key(1), data)
        g = jax.tree.map(lambda a, b: (a - b) / lr, s.params, s2.params)  # = the gradient
        f = lambda xs: outer(fit({"xs": xs, "ys": s.params["ys"]}, None), data, None, None)
        e = np.zeros((3, 2)); e[1, 0] = 1e-6
        fd = (f(s.params["xs"] + e) - f(s.params["xs"] - e)) / 2e-6
        np.testing.assert_allclose(g["xs"][1, 0], fd, rtol=1e-6)


def test_nan_loss_is_reported_clearly(digits):
    d = unrolled(make_model("mlp", 10, hidden=(16,)), ipc=1,
                 inner=TrainConfig(steps=4, optimizer="sgd"), inner_lr=1e30, learn_lr=False,
                 batch_size=64)
    with pytest.raises(FloatingPointError, match="NaN/inf"):
        distill(d, jax.random.key(0), digits, 4, log_every=2, progress=False)


def test_unknown_init_rejected():
    with pytest.raises(ValueError, match="valid: real, noise"):
        unrolled(make_model("mlp", 10), ipc=1, init="zeros")
