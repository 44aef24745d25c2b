"""Tests of jdd.distill.low_rank (low-rank synthetic sets): the budget arithmetic, the SVD
initialisation against numpy's SVD, decoding, gradients against finite differences, composition
with every method that consumes decoded inputs, the stored bytes, and the CLI's checks."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdd.cli import main as jdd
from jdd.data import Dataset
from jdd.distill import compose, distill, pixels
from jdd.distill.low_rank import decode_factors, images_per_class, low_rank, svd_factors

K = 3


def _toy(n_per_class=12, h=8, w=6, c=2, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(K), n_per_class)
    x = rng.normal(size=(len(y), h, w, c)) + y[:, None, None, None] * 0.5
    return Dataset.from_arrays(x.astype(np.float32), y, K, "toy")


# ----------------------------------------------------------------------------- arithmetic

def test_images_per_class_is_the_papers_floor():
    # floor(ipc * h * w / (r * (h + w))), written out
    assert images_per_class(1, 28, 28, 2) == 784 // 112 == 7
    assert images_per_class(10, 28, 28, 2) == 7840 // 112 == 70
    assert images_per_class(1, 28, 28, 4) == 784 // 224 == 3
    assert images_per_class(1, 8, 8, 2) == 64 // 32 == 2
    assert images_per_class(1, 8, 8, 4) == 1
    assert images_per_class(10, 32, 32, 4) == 10240 // 256 == 40
    # 7 images x 1 channel x rank 2 x (28 + 28) = 784 floats: exactly one 28x28 image
    assert images_per_class(1, 28, 28, 2) * 1 * 2 * (28 + 28) == 28 * 28
    with pytest.raises(ValueError, match="expected a rank <= 4"):
        images_per_class(1, 8, 8, 5)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            images_per_class(1, 8, 8, bad)


def test_factory_refuses_bad_arguments():
    for bad in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match="rank must be a positive integer"):
            low_rank(rank=bad)
    with pytest.raises(ValueError, match="unknown init"):
        low_rank(init="svd")
    with pytest.raises(ValueError, match="unknown label mode"):
        low_rank(labels="soft")
    p = low_rank(rank=7)
    with pytest.raises(ValueError, match="exceeds min"):
        p.init(jax.random.key(0), _toy(), 10)               # 8x6 images: rank <= 6
    flat = Dataset.from_arrays(np.zeros((6, 5), np.float32), np.repeat(np.arange(K), 2), K, "f")
    with pytest.raises(ValueError, match="need image data"):
        low_rank().init(jax.random.key(0), flat, 1)


# ----------------------------------------------------------------------------- init and decode

def test_svd_init_is_the_truncated_svd_of_distinct_real_images():
    data = _toy()
    rank = 2
    params, fixed = low_rank(rank=rank).init(jax.random.key(3), data, 3)
    n = images_per_class(3, 8, 6, rank)                    # 144 // 28 = 5
    assert params["a"].shape == (K * n, 2, 8, rank) and params["b"].shape == (K * n, 2, rank, 6)
    np.testing.assert_array_equal(fixed["c"], np.repeat(np.arange(K), n))
    x = np.asarray(decode_factors(params["a"], params["b"]), np.float64)
    from jdd.distill.core import init_per_class
    real, c = init_per_class(jax.random.key(3), data, n)
    real = np.asarray(real, np.float64)
    assert len({r.tobytes() for r in real}) == K * n       # distinct real images
    for i in range(K * n):
        for ch in range(2):
            u, s, vt = np.linalg.svd(real[i, :, :, ch])     # independent reference
            best = (u[:, :rank] * s[:rank]) @ vt[:rank]
            np.testing.assert_allclose(x[i, :, :, ch], best, atol=1e-5)
    # the singular values are split evenly: ||a|| == ||b|| per channel
    na = np.linalg.norm(np.asarray(params["a"]), axis=(-2, -1))
    nb = np.linalg.norm(np.asarray(params["b"]), axis=(-2, -1))
    np.testing.assert_allclose(na, nb, rtol=1e-5)


def test_full_rank_reproduces_the_real_images_and_decode_is_the_product():
    data = _toy()
    x = np.asarray(data.x[:4])
    a, b = svd_factors(jnp.asarray(x), 6)
    np.testing.assert_allclose(np.asarray(decode_factors(a, b)), x, atol=1e-5)
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(3, 2, 8, 2)), rng.normal(size=(3, 2, 2, 6))
    want = np.stack([np.stack([a[i, ch] @ b[i, ch] for ch in range(2)], -1) for i in range(3)])
    np.testing.assert_allclose(np.asarray(decode_factors(jnp.asarray(a), jnp.asarray(b))), want,
                               rtol=1e-5)


def test_noise_init_matches_the_data_scale_and_labels_modes():
    data = _toy(n_per_class=40)
    params, fixed = low_rank(rank=2, init="noise").init(jax.random.key(0), data, 20)
    x = decode_factors(params["a"], params["b"])
    assert abs(float(jnp.std(x)) / float(jnp.std(data.x)) - 1) < 0.15
    p = low_rank(rank=2, labels="softmax", label_init=3.0)
    params, fixed = p.init(jax.random.key(0), data, 1)
    y = np.asarray(p.decode(params, fixed).y)
    np.testing.assert_allclose(y.sum(-1), 1, rtol=1e-6)
    assert np.all(np.argmax(y, -1) == np.asarray(fixed["c"]))
    p = low_rank(rank=2, labels="raw", label_scale=2.0)
    params, fixed = p.init(jax.random.key(0), data, 1)
    np.testing.assert_array_equal(np.asarray(params["y"]),
                                  2.0 * np.eye(K)[np.asarray(fixed["c"])])


def test_real_init_refuses_a_class_smaller_than_the_images_it_needs():
    data = _toy(n_per_class=3)
    from jdd.data import DataError
    params, _ = low_rank(rank=1).init(jax.random.key(0), data, 1)   # 48 // 14 = 3: fits
    assert params["a"].shape[0] == K * 3
    with pytest.raises(DataError, match="3"):
        low_rank(rank=1).init(jax.random.key(0), data, 2)           # 6 per class: only 3


def test_gradient_through_the_factors_matches_finite_differences():
    data = _toy()
    p = low_rank(rank=2)
    params, fixed = p.init(jax.random.key(0), data, 1)
    target = jax.random.normal(jax.random.key(5), p.decode(params, fixed).x.shape)

    def f(params):
        return jnp.sum(jnp.sin(p.decode(params, fixed).x) * target)

    g = jax.grad(f)(params)
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
        t64 = np.asarray(target, np.float64)
        f64 = lambda q: float(np.sum(np.sin(np.asarray(decode_factors(q["a"], q["b"]))) * t64))
        rng = np.random.default_rng(0)
        for name in ("a", "b"):
            d = rng.normal(size=p64[name].shape)
            eps = 1e-5
            hi = {**p64, name: p64[name] + eps * d}
            lo = {**p64, name: p64[name] - eps * d}
            fd = (f64(hi) - f64(lo)) / (2 * eps)
            np.testing.assert_allclose(float(np.sum(np.asarray(g[name]) * d)), fd, rtol=1e-3)


# ----------------------------------------------------------------------------- composition

def _objectives():
    from jdd.distill.dc import gradient_matching
    from jdd.distill.dm import distribution_matching
    from jdd.distill.kip import kip_objective
    from jdd.distill.unrolled import performance_matching
    from jdd.kernels import fc_kernel
    from jdd.models import make_model
    from jdd.train import TrainConfig
    net = make_model("convnet", K, width=4, depth=1)
    return {
        "dc": gradient_matching(net, outer_loop=2, inner_loop=1, batch_real=4),
        "dm": distribution_matching(net, batch_real=4),
        "unrolled": performance_matching(make_model("mlp", K, hidden=(8,)),
                                         inner=TrainConfig(steps=2), batch_size=8),
        "kip": kip_objective(fc_kernel(depth=1), batch_size=8),
    }


@pytest.mark.parametrize("name", ["dc", "dm", "unrolled", "kip"])
def test_low_rank_composes_and_trains_the_factors(name):
    data = _toy()
    obj = _objectives()[name]
    labels = {"unrolled": "softmax", "kip": "raw"}.get(name, "hard")
    d = compose(low_rank(rank=2, labels=labels), obj, ipc=1, optimizer=optax.adam(1e-2))
    r = distill(d, jax.random.split(jax.random.key(0), 2), data, steps=3, log_every=3,
                progress=False)
    n = images_per_class(1, 8, 6, 2)
    assert r.synthetic.x.shape == (2, K * n, 8, 6, 2)
    assert np.all(np.isfinite(r.history["loss"]))
    stored = jax.vmap(d.stored)(r.state)
    assert set(stored) == {"a", "b"}
    np.testing.assert_allclose(np.asarray(decode_factors(stored["a"][0], stored["b"][0])),
                               np.asarray(r.synthetic.x[0]), rtol=1e-5, atol=1e-6)
    start = jax.vmap(d.stored)(jax.vmap(d.init, in_axes=(0, None))(
        jax.random.split(jax.random.key(0), 2), data))
    assert not np.allclose(np.asarray(start["a"]), np.asarray(stored["a"]))
    # the pixel parameterization of the same objective has no stored factors
    assert compose(pixels(labels=labels), obj, ipc=1, optimizer=optax.adam(1e-2)).stored is None


def test_low_rank_with_mtt(tmp_path):
    from jdd.distill.mtt import mtt
    from jdd.experts import load_buffer, train_experts
    from jdd.models import make_model
    data = _toy()
    net = make_model("mlp", K, hidden=(4,))
    train_experts(net, data, n_experts=1, epochs=3, lr=0.05, batch_size=64,
                  key=jax.random.key(0), out_dir=tmp_path, progress=False,
                  preprocessing="none")
    buf = load_buffer(tmp_path, model=net)
    d = mtt(net, buf, ipc=1, syn_steps=2, expert_epochs=1, max_start_epoch=2,
            param=low_rank(rank=2))
    r = distill(d, jax.random.key(0), data, steps=2, progress=False)
    assert r.synthetic.x.shape[0] == K * images_per_class(1, 8, 6, 2)
    assert np.all(np.isfinite(np.asarray(r.synthetic.x)))
    assert np.isfinite(float(r.synthetic.lr))


# ----------------------------------------------------------------------------- CLI

def test_cli_low_rank_run_stores_factors_and_counts_their_bytes(tmp_path, capsys):
    out = tmp_path / "run"
    rc = jdd(["distill", "--method", "dm", "--param", "low-rank", "--rank", "2", "--ipc", "1",
              "--steps", "2", "--width", "8", "--depth", "1", "--eval-epochs", "2",
              "--eval-width", "8", "--eval-depth", "1", "--no-eval", "--out", str(out),
              "--quiet"])
    assert rc == 0
    m = json.load(open(out / "metrics.json"))
    # digits 8x8: 2 images per class at a budget of 1; each stores 1 channel x 2 x (8 + 8)
    assert m["images_per_class"] == 2 and m["config"]["images_per_class"] == 2
    s = m["storage"]
    assert s["examples"] == 20
    assert s["inputs_floats"] == 20 * 1 * 2 * (8 + 8) == 640 == 10 * 64   # = 10 full images
    assert s["inputs_bytes"] == 4 * 640
    assert s["labels_bytes"] == 4 * 20 and s["total_bytes"] == 4 * 640 + 4 * 20
    from jdd.artifacts import load_distilled
    ds = load_distilled(out)
    assert ds.x.shape == (1, 20, 8, 8, 1)
    assert ds.stored["a"].shape == (1, 20, 1, 8, 2) and ds.stored["b"].shape == (1, 20, 1, 2, 8)
    np.testing.assert_allclose(np.asarray(decode_factors(ds.stored["a"][0], ds.stored["b"][0])),
                               ds.x[0], rtol=1e-5, atol=1e-6)
    # jdd evaluate counts the same stored bytes
    assert jdd(["evaluate", str(out), "--n-models", "1", "--no-baselines", "--quiet"]) == 0
    names = [n for n in os.listdir(out) if n.startswith("eval-")]
    e = json.load(open(out / names[0]))
    assert e["storage"]["inputs_floats"] == 640


@pytest.mark.parametrize("argv, msg", [
    (["--method", "dm", "--param", "low-rank", "--rank", "5", "--ipc", "1"], "expected a rank <= 4"),
    (["--method", "dc", "--param", "low-rank", "--rank", "9", "--ipc", "10"], "at most min"),
    (["--method", "kip", "--param", "low-rank", "--rank", "0"], "--rank"),
    (["--method", "unrolled", "--param", "lowrank"], "--param"),
])
def test_cli_refuses_bad_low_rank_options_before_loading(argv, msg, tmp_path, capsys,
                                                         monkeypatch):
    import jdd.cli as cli
    monkeypatch.setattr(cli, "_load_data", lambda *a, **k: pytest.fail("data were loaded"))
    rc = jdd(["distill", *argv, "--out", str(tmp_path / "r"), "--quiet"])
    assert rc != 0
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()
