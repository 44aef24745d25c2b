"""Tests of jdd.distill.mim4dd (the MIM4DD contrastive term): InfoNCE against a direct loop,
gradients against finite differences, the term added to every network objective with its weight,
the real batch drawn from the data for trajectory matching, and the CLI's checks."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdd.cli import main as jdd
from jdd.data import Dataset
from jdd.distill import compose, pixels
from jdd.distill.compose import Probe
from jdd.distill.mim4dd import infonce, mim4dd
from jdd.models import make_model

K = 3


def _toy(n_per_class=10, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(K), n_per_class)
    x = rng.normal(size=(len(y), 8, 8, 1)) + y[:, None, None, None] * 0.5
    return Dataset.from_arrays(x.astype(np.float32), y, K, "toy")


def _direct(z_s, c_s, z_r, c_r, t, valid):
    """The loss written as loops over anchors and positives, in float64."""
    z_s = z_s / np.linalg.norm(z_s, axis=1, keepdims=True)
    z_r = z_r / np.linalg.norm(z_r, axis=1, keepdims=True)
    per = []
    for i in range(len(z_s)):
        cand = [j for j in range(len(z_r)) if valid[j]]
        s = {j: z_s[i] @ z_r[j] / t for j in cand}
        lse = np.log(sum(np.exp(v) for v in s.values()))
        pos = [j for j in cand if c_r[j] == c_s[i]]
        if pos:
            per.append(-np.mean([s[j] - lse for j in pos]))
    return np.mean(per) if per else 0.0


def test_infonce_matches_a_direct_loop():
    rng = np.random.default_rng(0)
    z_s, z_r = rng.normal(size=(6, 5)), rng.normal(size=(9, 5))
    c_s, c_r = np.array([0, 0, 1, 1, 2, 2]), rng.integers(0, 3, 9)
    c_r[-1] = -1                                        # a padded row
    valid = c_r >= 0
    for t in (0.1, 0.5, 2.0):
        got = infonce(jnp.asarray(z_s, jnp.float32), jnp.asarray(c_s), jnp.asarray(z_r,
                      jnp.float32), jnp.asarray(c_r), t, jnp.asarray(valid))
        np.testing.assert_allclose(float(got), _direct(z_s, c_s, z_r, c_r, t, valid), rtol=1e-5)
    # an anchor class with no positive is left out; none at all gives 0
    got = infonce(jnp.asarray(z_s, jnp.float32), jnp.full(6, 5), jnp.asarray(z_r, jnp.float32),
                  jnp.asarray(c_r), 0.1, jnp.asarray(valid))
    assert float(got) == 0.0


def test_the_term_pulls_same_class_features_together():
    # features equal to the real class means score lower than shuffled ones
    rng = np.random.default_rng(1)
    means = rng.normal(size=(3, 4)) * 3
    c_r = np.repeat(np.arange(3), 5)
    z_r = means[c_r] + 0.1 * rng.normal(size=(15, 4))
    good = infonce(jnp.asarray(means), jnp.arange(3), jnp.asarray(z_r), jnp.asarray(c_r), 0.1)
    bad = infonce(jnp.asarray(means[[1, 2, 0]]), jnp.arange(3), jnp.asarray(z_r),
                  jnp.asarray(c_r), 0.1)
    # the bound: with 5 positives among 15 the loss cannot go below log 5 (all mass spread
    # evenly over the positives)
    assert np.log(5) - 1e-4 < float(good) < np.log(5) + 0.2
    assert float(bad) > 5


def test_gradient_of_the_term_matches_finite_differences():
    data = _toy()
    net = make_model("convnet", K, width=4, depth=1)
    params = net.init(jax.random.key(0), data.x[:2])
    term = mim4dd(weight=1.0, temperature=0.5, layers=(0, -1))
    x_syn = jax.random.normal(jax.random.key(2), (6, 8, 8, 1))
    c_syn = jnp.repeat(jnp.arange(K), 2)

    def f(x):
        probe = Probe(params=params, x_real=data.x, y_real=data.y, x_syn=x, y_syn=c_syn)
        return term.fn(net, probe, jax.random.key(3))

    with jax.enable_x64(True):
        x64 = jnp.asarray(x_syn, jnp.float64)
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        real64 = jnp.asarray(data.x, jnp.float64)

        def f64(x):
            probe = Probe(params=p64, x_real=real64, y_real=data.y, x_syn=x, y_syn=c_syn)
            return term.fn(net, probe, jax.random.key(3))

        g = jax.grad(f64)(x64)
        d = jax.random.normal(jax.random.key(4), x64.shape, jnp.float64)
        eps = 1e-5
        fd = (f64(x64 + eps * d) - f64(x64 - eps * d)) / (2 * eps)
        np.testing.assert_allclose(float(jnp.sum(g * d)), float(fd), rtol=1e-5)
    assert np.isfinite(float(f(x_syn)))


def test_factory_refuses_bad_arguments():
    for kw, msg in (({"weight": 0}, "weight"), ({"weight": float("nan")}, "weight"),
                    ({"temperature": -1}, "temperature"), ({"real_batch": 0}, "real_batch")):
        with pytest.raises(ValueError, match=msg):
            mim4dd(**kw)
    term = mim4dd(layers=(9,))
    data = _toy()
    net = make_model("convnet", K, width=4, depth=1)
    params = net.init(jax.random.key(0), data.x[:2])
    probe = Probe(params=params, x_real=data.x, y_real=data.y, x_syn=data.x[:3],
                  y_syn=jnp.arange(3))
    with pytest.raises(ValueError, match="exposes 2 feature layers"):
        term.fn(net, probe, jax.random.key(0))
    with pytest.raises(ValueError, match="needs an objective that runs a network"):
        mim4dd().fn(None, probe, jax.random.key(0))


def _objectives(buffer_dir=None):
    from jdd.distill.dc import gradient_matching
    from jdd.distill.dm import distribution_matching
    from jdd.distill.unrolled import performance_matching
    from jdd.train import TrainConfig
    net = make_model("convnet", K, width=4, depth=1)
    return {
        "dc": gradient_matching(net, outer_loop=2, inner_loop=1, batch_real=4),
        "dm": distribution_matching(net, batch_real=4),
        "unrolled": performance_matching(make_model("convnet", K, width=4, depth=1),
                                         inner=TrainConfig(steps=2), batch_size=8),
    }


@pytest.mark.parametrize("name", ["dc", "dm", "unrolled"])
def test_the_term_adds_its_weighted_value_to_every_network_objective(name):
    data = _toy()
    obj = _objectives()[name]
    labels = "softmax" if name == "unrolled" else "hard"
    base = compose(pixels(labels=labels), obj, ipc=2, optimizer=optax.sgd(0.1))
    w = 0.3
    plus = compose(pixels(labels=labels), obj, ipc=2, optimizer=optax.sgd(0.1),
                   extra=[mim4dd(weight=w, temperature=0.2)])
    key = jax.random.key(5)
    s0, s1 = base.init(key, data), plus.init(key, data)
    s0, m0 = jax.jit(base.step)(s0, jax.random.key(6), data)
    s1, m1 = jax.jit(plus.step)(s1, jax.random.key(6), data)
    # same objective value (same keys), the term on top with its weight
    np.testing.assert_allclose(float(m1["loss"]), float(m0["loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(m1["total_loss"]), float(m1["loss"]) + w * float(m1["mim4dd"]),
                               rtol=1e-5)
    assert float(m1["mim4dd"]) > 0
    assert not np.allclose(np.asarray(s0.params["set"]["x"]), np.asarray(s1.params["set"]["x"]))


def test_trajectory_matching_draws_its_real_batch_from_the_data(tmp_path):
    from jdd.distill.mtt import mtt
    from jdd.experts import load_buffer, train_experts
    data = _toy()
    net = make_model("mlp", K, hidden=(6, 4))
    train_experts(net, data, n_experts=1, epochs=3, lr=0.05, batch_size=64,
                  key=jax.random.key(0), out_dir=tmp_path, progress=False, preprocessing="none")
    buf = load_buffer(tmp_path, model=net)
    d = mtt(net, buf, ipc=1, syn_steps=2, expert_epochs=1, max_start_epoch=2,
            extra=[mim4dd(weight=0.5, real_batch=12)])
    s = d.init(jax.random.key(0), data)
    s, m = jax.jit(d.step)(s, jax.random.key(1), data)
    assert np.isfinite(float(m["mim4dd"])) and float(m["mim4dd"]) > 0
    np.testing.assert_allclose(float(m["total_loss"]), float(m["loss"]) + 0.5 * float(m["mim4dd"]),
                               rtol=1e-5)


def test_cli_mim4dd_run_logs_the_term(tmp_path):
    import json
    out = tmp_path / "run"
    assert jdd(["distill", "--method", "dm", "--mim4dd-weight", "0.2", "--mim4dd-layers", "0",
                "-1", "--ipc", "1", "--steps", "2", "--log-every", "1", "--width", "8",
                "--depth", "1", "--no-eval", "--out", str(out), "--quiet"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["mim4dd_weight"] == 0.2 and m["config"]["mim4dd_layers"] == [0, -1]
    h = m["history"]
    np.testing.assert_allclose(np.asarray(h["total_loss"]),
                               np.asarray(h["loss"]) + 0.2 * np.asarray(h["mim4dd"]), rtol=1e-5)


@pytest.mark.parametrize("argv, msg", [
    (["--method", "dc", "--mim4dd-weight", "0.1", "--mim4dd-layers", "7"],
     "exposes 4 feature layers"),
    (["--method", "dm", "--mim4dd-weight", "-1"], "--mim4dd-weight"),
    (["--method", "mtt", "--mim4dd-temperature", "0"], "--mim4dd-temperature"),
    (["--method", "kip", "--mim4dd-weight", "0.1"], "not an option of --method kip"),
])
def test_cli_refuses_bad_mim4dd_options_before_loading(argv, msg, tmp_path, capsys,
                                                       monkeypatch):
    import jdd.cli as cli
    monkeypatch.setattr(cli, "_load_data", lambda *a, **k: pytest.fail("data were loaded"))
    assert jdd(["distill", *argv, "--out", str(tmp_path / "r"), "--quiet"]) != 0
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err
