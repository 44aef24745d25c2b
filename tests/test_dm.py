"""Tests of jdd.distill.dm (distribution matching): the loss against a direct per-class loop,
gradients, the zero-loss case, siamese keys, seed vmapping, determinism and config checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdd.augment import dsa
from jdd.config import ConfigError, validate
from jdd.data import Dataset
from jdd.distill.core import Synthetic, distill, seed_keys
from jdd.distill.dm import DMConfig, METHOD, build, distribution_matching, dm
from jdd.methods import RunSpec, get
from jdd.models import Model, make_model

K = 3


def _toy(sizes=(6, 8, 10), seed=0, dtype=np.float32):
    """3 classes of 8x8x1 images with unequal class sizes (rows shuffled)."""
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.full(s, c) for c, s in enumerate(sizes)])
    y = y[rng.permutation(len(y))]
    x = rng.normal(size=(len(y), 8, 8, 1)) + 0.5 * y[:, None, None, None]
    return Dataset(x=jnp.asarray(x, dtype), y=jnp.asarray(y, jnp.int32), num_classes=K, name="toy")


def _net():
    return make_model("convnet", K, width=8, depth=1)


def _flat():
    """A stand-in model whose embedding is the flattened input (a linear feature map)."""
    return Model(init=lambda key, x: {}, apply=lambda p, x: x.reshape(x.shape[0], -1)[:, :K],
                 name="flat", features=lambda p, x: (x.reshape(x.shape[0], -1),))


def _syn(ipc, seed=1, dtype=jnp.float32):
    x = jax.random.normal(jax.random.key(seed), (K * ipc, 8, 8, 1), dtype)
    c = jnp.repeat(jnp.arange(K, dtype=jnp.int32), ipc)
    return Synthetic(x=x, y=jax.nn.one_hot(c, K, dtype=dtype)), c


def _direct(model, params, class_rows, syn_x, classes):
    """sum_c ||mean phi(real_c) - mean phi(syn_c)||^2 with a Python loop over classes (the
    network runs once on all rows; the per-class means are taken here in numpy)."""
    sizes = [len(r) for r in class_rows]
    rows = jnp.concatenate([jnp.asarray(r) for r in class_rows] + [jnp.asarray(syn_x)])
    emb = np.asarray(jax.jit(model.features)(params, rows)[-1], np.float64)
    real, syn = np.split(emb[:sum(sizes)], np.cumsum(sizes)[:-1]), emb[sum(sizes):]
    total = 0.0
    for c in range(K):
        total += np.sum((real[c].mean(0) - syn[np.asarray(classes) == c].mean(0)) ** 2)
    return total


def _unique_rows(x):
    x = np.asarray(x)
    _, idx = np.unique(x.reshape(len(x), -1), axis=0, return_index=True)
    return x[np.sort(idx)]


def test_loss_matches_direct_loop_whole_classes():
    data = _toy()
    model = _net()
    obj = distribution_matching(model, batch_real=100)   # larger than every class: whole classes
    syn, c = _syn(2)
    loss = jax.jit(lambda s, k: obj.loss({}, s, c, data, k, (), None))
    out = loss(syn, jax.random.key(3))
    x, y = np.asarray(data.x), np.asarray(data.y)
    want = _direct(model, out.probe.params, [x[y == i] for i in range(K)], syn.x, c)
    assert float(out.loss) == pytest.approx(want, rel=1e-5)
    assert float(out.metrics["loss_per_class"]) == pytest.approx(want / K, rel=1e-5)
    # the probe holds every real row once (min(3 * 100, 24) = 24 rows), with its class
    assert out.probe.x_real.shape == (24, 8, 8, 1)
    assert sorted(np.asarray(out.probe.y_real).tolist()) == sorted(y.tolist())
    # a fresh network per key
    other = loss(syn, jax.random.key(4))
    assert not np.allclose(np.asarray(other.probe.params["Conv_0"]["kernel"]),
                           np.asarray(out.probe.params["Conv_0"]["kernel"]))


@pytest.mark.parametrize("batch_real", [4, 7])
def test_loss_matches_direct_loop_sampled_and_padded(batch_real):
    """batch_real 4: 4 sampled rows per class; 7: class 0 (6 rows) is used whole, and the probe
    carries one zero-weight padding row that must not count."""
    data = _toy()
    model = _net()
    obj = distribution_matching(model, batch_real=batch_real)
    syn, c = _syn(2)
    aug = lambda k, x: 1.5 * x + jax.random.normal(k, ())  # noqa: E731  (a siamese augmentation)
    out = jax.jit(lambda s, k: obj.loss({}, s, c, data, k, (), aug))(syn, jax.random.key(5))
    xr, yr = np.asarray(out.probe.x_real), np.asarray(out.probe.y_real)
    assert xr.shape[0] == min(K * batch_real, 24)
    rows = [_unique_rows(xr[yr == i]) for i in range(K)]
    assert [len(r) for r in rows] == [min(batch_real, s) for s in (6, 8, 10)]
    # the synthetic side of the direct loop: the probe's augmented synthetic images
    want = _direct(model, out.probe.params, rows, out.probe.x_syn, c)
    assert float(out.loss) == pytest.approx(want, rel=1e-5)
    # every real row is an augmented row of its own class
    x, y = np.asarray(data.x), np.asarray(data.y)
    for i in range(K):
        cands = 1.5 * x[y == i]                      # rows are 1.5 * x + s_i, x of class i
        for r in rows[i]:
            s = r[0, 0, 0] - cands[:, 0, 0, 0]
            assert np.any(np.all(np.abs(r[None] - cands - s[:, None, None, None]) < 1e-4,
                                 axis=(1, 2, 3)))


def test_gradient_matches_central_finite_differences_float64():
    with jax.enable_x64(True):
        data = _toy(dtype=np.float64)
        model = _net()
        obj = distribution_matching(model, batch_real=5)
        syn, c = _syn(2, dtype=jnp.float64)
        key = jax.random.key(7)

        def loss(x):
            return obj.loss({}, Synthetic(x=x, y=syn.y), c, data, key, (), None).loss

        value_and_grad = jax.jit(jax.value_and_grad(loss))   # one compile for both

        def f(x):
            return value_and_grad(x)[0]

        x0 = syn.x
        g = np.asarray(value_and_grad(x0)[1])
        assert g.dtype == np.float64 and np.abs(g).max() > 0
        eps = 1e-6
        for idx in [(0, 0, 0, 0), (1, 3, 4, 0), (3, 7, 2, 0), (5, 5, 5, 0)]:
            e = jnp.zeros_like(x0).at[idx].set(eps)
            fd = (float(f(x0 + e)) - float(f(x0 - e))) / (2 * eps)
            assert g[idx] == pytest.approx(fd, rel=1e-5, abs=1e-11)


def test_zero_loss_when_synthetic_is_the_whole_class_even_with_dsa():
    data = _toy(sizes=(4, 4, 4))
    d = dm(_net(), ipc=4, batch_real=256)
    syn = d.synthetic(d.init(jax.random.key(0), data))     # init="real": each class, permuted
    x, y = np.asarray(data.x), np.asarray(data.y)
    for i in range(K):  # the set really is each whole class
        np.testing.assert_allclose(np.sort(np.asarray(syn.x[4 * i:4 * i + 4]).ravel()),
                                   np.sort(x[y == i].ravel()))
    obj = distribution_matching(_net(), batch_real=256)
    c = jnp.repeat(jnp.arange(K, dtype=jnp.int32), 4)
    loss = jax.jit(lambda s: obj.loss({}, s, c, data, jax.random.key(1), (),
                                      dsa("crop_rotate")).loss)
    assert abs(float(loss(syn))) < 1e-8
    # a different set is not at zero
    other = d.synthetic(d.init(jax.random.key(0), _toy(sizes=(4, 4, 4), seed=9)))
    assert float(loss(other)) > 1e-3


def test_zero_loss_for_class_means_with_linear_features_and_siamese_keys():
    """Identity features: the loss is zero iff each synthetic image is its class mean, also under
    a key-dependent shift (only if the real and synthetic batch of a class share one key)."""
    data = _toy()
    x, y = np.asarray(data.x), np.asarray(data.y)
    means = np.stack([x[y == i].mean(0) for i in range(K)])
    c = jnp.arange(K, dtype=jnp.int32)
    syn = Synthetic(x=jnp.asarray(means), y=jax.nn.one_hot(c, K))
    obj = distribution_matching(_flat(), batch_real=64)
    shift = lambda k, v: v + 3.0 * jax.random.normal(k, ())  # noqa: E731
    for aug in (None, shift):
        out = obj.loss({}, syn, c, data, jax.random.key(2), (), aug)
        assert abs(float(out.loss)) < 1e-8
    # one key per class: the three classes got different shifts
    out = obj.loss({}, syn, c, data, jax.random.key(2), (), shift)
    s = np.asarray(out.probe.x_syn - syn.x)[:, 0, 0, 0]
    assert len(set(np.round(s, 5).tolist())) == K
    # and moving one synthetic image away from its mean costs exactly ||delta||^2
    moved = syn.x.at[1].add(0.1)
    out = obj.loss({}, Synthetic(x=moved, y=syn.y), c, data, jax.random.key(2), (), shift)
    assert float(out.loss) == pytest.approx(64 * 0.01, rel=1e-4)


def test_vmapped_seeds_equal_looped_and_same_key_same_bytes():
    data = _toy()
    aug = lambda k, x: jnp.roll(x, jax.random.randint(k, (), -1, 2), axis=2)  # noqa: E731
    d = dm(make_model("mlp", K, hidden=(16,)), ipc=2, batch_real=5, augment=aug)
    keys = seed_keys(0, 2)
    both = distill(d, keys, data, steps=2, log_every=2, progress=False)
    for i in range(2):
        one = distill(d, keys[i], data, steps=2, log_every=2, progress=False)
        np.testing.assert_allclose(np.asarray(both.synthetic.x[i]), np.asarray(one.synthetic.x),
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(both.history["loss"][i], one.history["loss"], rtol=1e-5)
    again = distill(d, keys, data, steps=2, log_every=2, progress=False)
    assert np.asarray(again.synthetic.x).tobytes() == np.asarray(both.synthetic.x).tobytes()
    assert not np.array_equal(np.asarray(both.synthetic.x[0]), np.asarray(both.synthetic.x[1]))
    # the images moved: sgd(1.0, momentum 0.5)
    assert both.history["loss"].shape == (2, 1)


def test_bad_arguments_raise_before_compiling():
    model = _net()
    for kw in ({"ipc": 0}, {"ipc": 1.5}, {"ipc": 1, "lr_img": 0.0},
               {"ipc": 1, "lr_img": float("nan")}, {"ipc": 1, "momentum": 1.0},
               {"ipc": 1, "momentum": -0.1}, {"ipc": 1, "batch_real": 0},
               {"ipc": 1, "batch_real": 2.5}, {"ipc": 1, "init": "zeros"},
               {"ipc": 1, "augment": "dsa"}):
        with pytest.raises(ValueError):
            dm(model, **kw)
    no_features = Model(init=model.init, apply=model.apply, name="bare")
    with pytest.raises(ValueError, match="features"):
        distribution_matching(no_features)


@pytest.mark.parametrize("field,value", [
    ("lr_img", -1.0), ("lr_img", float("nan")), ("momentum", 1.0), ("batch_real", 0),
    ("init", "zeros"), ("dsa_strategy", "colour_crop"), ("eval_epochs", 0), ("width", 0),
])
def test_bad_config_values_raise(field, value):
    with pytest.raises(ConfigError):
        validate(DMConfig(**{field: value}))


def test_registry_build_and_defaults():
    assert get("dm") is METHOD and METHOD.config is DMConfig and METHOD.needs_images
    cfg = DMConfig()
    assert (cfg.lr_img, cfg.momentum, cfg.batch_real, cfg.init, cfg.eval_epochs) == (
        1.0, 0.5, 256, "real", 1000)
    assert METHOD.default_steps(cfg, 1) == 2000 and METHOD.default_steps(cfg, 10) == 1000
    spec = RunSpec(ipc=1, steps=2, seeds=1, dataset="digits", num_classes=K,
                   feature_shape=(8, 8, 1), n_train=24)
    plan = build(DMConfig(model="mlp", hidden=(16,), eval_width=8, eval_epochs=2,
                          dsa_strategy="crop"), spec)
    assert plan.info["dsa_strategy_resolved"] == "crop" and plan.info["lr_img"] == 1.0
    assert build(DMConfig(width=8), spec).info["dsa_strategy_resolved"] == \
        "color_crop_cutout_scale_rotate"
    data = _toy()
    state = plan.distiller.init(jax.random.key(0), data)
    new, metrics = jax.jit(plan.distiller.step)(state, jax.random.key(1), data)
    assert np.isfinite(float(metrics["loss"])) and float(metrics["loss"]) > 0
    assert not np.allclose(np.asarray(new.params["set"]["x"]), np.asarray(state.params["set"]["x"]))
    flat = spec._replace(feature_shape=(64,))
    with pytest.raises(ConfigError):
        build(DMConfig(width=8, dsa_strategy="crop"), flat)
