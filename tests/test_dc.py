"""Tests of jdd.distill.dc: DC / DSA gradient matching (distances, loss, gradient, network
schedule, seed vmapping, siamese augmentation, configuration errors)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdd.config import ConfigError, validate
from jdd.data import Dataset
from jdd.distill.compose import compose, pixels
from jdd.distill.core import distill, seed_keys
from jdd.distill.dc import (DCConfig, DSA_METHOD, DSAConfig, METHOD, GMState, cosine_distance,
                            dc, default_loops, dsa, gradient_matching, layerwise_distance,
                            mse_distance)
from jdd.methods import RunSpec
from jdd.models import make_model
from jdd.train import cast_like

K = 3


def _toy(counts=(6, 6, 4), seed=0, dtype=np.float32):
    """8x8x1 images of K classes (class c brighter in row band c); ``counts`` per class."""
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    x = rng.normal(size=(len(y), 8, 8, 1))
    for c in range(K):
        x[y == c, 2 * c:2 * c + 3] += 1.5
    return Dataset(x=jnp.asarray(x, dtype), y=jnp.asarray(y, jnp.int32), num_classes=K,
                   name="toy")


def _model():
    # depth 1 keeps XLA's compile time (the bulk of this file's run time) small
    return make_model("convnet", K, width=8, depth=1)


def _mlp():
    # for the tests of plumbing (seeds, network schedule, augmentation keys), which do not
    # depend on the network: XLA compiles a step of it in half the time of the ConvNet's
    return make_model("mlp", K, hidden=(4,))


#: One distiller shared by the schedule and seed tests, so ``distill``'s compiled chunks are
#: reused: 3 synthetic updates per network, 2 training epochs between them, each epoch two
#: minibatches (4 and 2 of the 6 synthetic images).
_LR_NET, _INNER, _NET_BATCH = 0.05, 2, 4
_SCHED = dc(_mlp(), ipc=2, outer_loop=3, inner_loop=_INNER, lr_net=_LR_NET,
            net_batch=_NET_BATCH)


def _np_layerwise(gr, gs):
    total = 0.0
    for a, b in zip(jax.tree.leaves(gr), jax.tree.leaves(gs)):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.ndim < 2:
            continue
        a = np.moveaxis(a, -1, 0).reshape(a.shape[-1], -1)
        b = np.moveaxis(b, -1, 0).reshape(b.shape[-1], -1)
        for ra, rb in zip(a, b):
            total += 1 - ra @ rb / (np.linalg.norm(ra) * np.linalg.norm(rb) + 1e-6)
    return total


def _np_flat(g):
    return np.concatenate([np.asarray(a, np.float64).reshape(-1) for a in jax.tree.leaves(g)])


def test_distances_against_numpy():
    rng = np.random.default_rng(0)
    shapes = {"conv": {"kernel": (3, 3, 2, 4), "bias": (4,)}, "dense": {"kernel": (5, 3)},
              "norm": {"scale": (4,)}}
    make = lambda: jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32),  # noqa
                                shapes, is_leaf=lambda s: isinstance(s, tuple))
    gr, gs = make(), make()
    # a zero row (dead unit) on one side: 1 - 0 = 1 for that row, and no NaN
    gs["conv"]["kernel"] = gs["conv"]["kernel"].at[..., 1].set(0.0)
    lw = jax.jit(layerwise_distance)
    got = float(lw(gr, gs))
    assert got == pytest.approx(_np_layerwise(gr, gs), rel=1e-5)
    # 1-D leaves are ignored: changing them does not change the distance
    gs2 = {**gs, "norm": {"scale": gs["norm"]["scale"] * 7}}
    assert float(lw(gr, gs2)) == pytest.approx(got, rel=1e-6)
    # rows are per OUTPUT unit (last flax axis): scaling one output row leaves it unchanged
    gs3 = {**gs, "dense": {"kernel": gs["dense"]["kernel"].at[:, 2].multiply(5.0)}}
    assert float(lw(gr, gs3)) == pytest.approx(got, rel=1e-5)
    assert float(lw(gr, gr)) == pytest.approx(0.0, abs=1e-4)
    r, s = _np_flat(gr), _np_flat(gs)
    assert float(jax.jit(mse_distance)(gr, gs)) == pytest.approx(np.sum((r - s) ** 2), rel=1e-5)
    cos = r @ s / (np.linalg.norm(r) * np.linalg.norm(s) + 1e-6)
    assert float(jax.jit(cosine_distance)(gr, gs)) == pytest.approx(1 - cos, rel=1e-5)
    # the gradient of the distance is finite where a row is zero
    g = jax.jit(jax.grad(lambda t: layerwise_distance(gr, t)))(gs)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(g))


def test_loss_equals_direct_per_class_computation():
    distance = "layerwise"
    # counts (6, 6, 4): n = min(256, ceil(16 / 3)) = 6 rows per class, so classes 0 and 1 are
    # taken whole and class 2 is padded with 2 masked rows: the batch is the whole class.
    data = _toy()
    model = _model()
    obj = gradient_matching(model, outer_loop=1, inner_loop=1, distance=distance)
    d = compose(pixels(init="noise"), obj, ipc=2, optimizer=optax.sgd(0.1))
    state = jax.jit(d.init)(jax.random.key(0), data)
    syn = d.synthetic(state)
    classes = state.fixed["c"]
    loss = jax.jit(lambda *a: obj.loss(*a, None))
    out = loss({}, syn, classes, data, jax.random.key(5), state.obj_state)
    net = state.obj_state.net

    @jax.jit
    @jax.grad
    def grad_ce(p, x, c):
        logits = model.apply(p, x)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, c))

    want, x, y = 0.0, np.asarray(data.x), np.asarray(data.y)
    for c in range(K):                       # a plain Python loop over classes, on purpose
        gr = grad_ce(net, jnp.asarray(x[y == c]), jnp.full((int((y == c).sum()),), c))
        xs = syn.x[np.asarray(classes) == c]
        gs = grad_ce(net, xs, jnp.full((xs.shape[0],), c))
        if distance == "layerwise":
            want += _np_layerwise(gr, gs)
        else:
            want += np.sum((_np_flat(gr) - _np_flat(gs)) ** 2)
    assert float(out.loss) == pytest.approx(want, rel=1e-4)
    # the probe: current network, flattened real rows (padding marked -1), synthetic images
    assert out.probe.x_real.shape == (K * 6, 8, 8, 1)
    np.testing.assert_array_equal(np.asarray(out.probe.y_real),
                                  [0] * 6 + [1] * 6 + [2] * 4 + [-1] * 2)
    assert out.probe.x_syn.shape == syn.x.shape
    for a, b in zip(jax.tree.leaves(out.probe.params), jax.tree.leaves(net)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_gradient_wrt_images_matches_central_finite_differences():
    with jax.enable_x64(True):
        data = _toy(dtype=np.float64)
        obj = gradient_matching(_model(), outer_loop=1, inner_loop=1)
        d = compose(pixels(init="noise"), obj, ipc=2, optimizer=optax.sgd(0.1))
        state = jax.jit(d.init)(jax.random.key(0), data)
        x0 = state.params["set"]["x"]
        assert x0.dtype == jnp.float64
        assert jax.tree.leaves(state.obj_state.net)[0].dtype == jnp.float64
        fixed = state.fixed

        @jax.jit
        def value_and_grad(x):
            def f(x):
                syn = pixels().decode({"x": x}, fixed)
                return obj.loss({}, syn, fixed["c"], data, jax.random.key(1), state.obj_state,
                                None).loss
            return jax.value_and_grad(f)(x)

        grad = np.asarray(value_and_grad(x0)[1])
        eps = 1e-6
        for idx in [(0, 3, 4, 0), (2, 1, 6, 0), (5, 7, 0, 0)]:
            e = jnp.zeros_like(x0).at[idx].set(eps)
            fd = (float(value_and_grad(x0 + e)[0]) - float(value_and_grad(x0 - e)[0])) / (2 * eps)
            assert grad[idx] == pytest.approx(fd, rel=1e-4, abs=1e-9)
        assert np.abs(grad).max() > 1e-3


def test_vmapped_seeds_equal_loop_over_keys():
    data = _toy()
    keys = seed_keys(3, 2)
    batched = distill(_SCHED, keys, data, steps=4, log_every=1, progress=False)
    for i in range(2):
        single = distill(_SCHED, keys[i], data, steps=4, log_every=1, progress=False)
        np.testing.assert_allclose(batched.synthetic.x[i], single.synthetic.x, rtol=1e-4,
                                   atol=1e-5)
        np.testing.assert_allclose(batched.history["loss"][i], single.history["loss"], rtol=1e-4)
        for a, b in zip(jax.tree.leaves(batched.state.obj_state.net),
                        jax.tree.leaves(single.state.obj_state.net)):
            np.testing.assert_allclose(a[i], b, rtol=1e-4, atol=1e-5)
    assert not np.allclose(batched.synthetic.x[0], batched.synthetic.x[1])


def test_network_reinitialised_every_outer_loop_steps_and_trained_between():
    # distill(steps=t, log_every=1) re-runs the same t one-step chunks (compiled once), so the
    # state after each step t is run[t].state; step t's key is fold_in(run_key, t).
    data = _toy()
    model = _mlp()
    key = jax.random.key(9)
    run_key = jax.random.split(key)[1]
    runs = [distill(_SCHED, key, data, steps=t, log_every=1, progress=False) for t in range(8)]
    st0 = runs[0].state.obj_state
    assert isinstance(st0, GMState) and (int(st0.age), int(st0.inits)) == (0, 1)

    @jax.jit
    @jax.grad
    def grad_ce(p, x, c):
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), c))

    ages, inits = [], []
    for t in range(7):
        before, after = runs[t].state, runs[t + 1].state
        syn = runs[t + 1].synthetic                     # the set after update t
        got = after.obj_state.net
        if t % 3 == 2:                                  # last update of an outer iteration
            k_step = jax.random.fold_in(run_key, t)
            k_new = jax.random.split(jax.random.fold_in(k_step, 999))[0]
            want = cast_like(model.init(k_new, syn.x[:1]), syn.x.dtype)
        else:        # inner_loop epochs of SGD over shuffled minibatches of 4 then 2 images
            k_step = jax.random.fold_in(run_key, t)
            k_train = jax.random.split(jax.random.fold_in(k_step, 999))[1]
            k_perm = jax.random.split(k_train)[0]
            want = before.obj_state.net
            for ek in jax.random.split(k_perm, _INNER):
                perm = np.asarray(jax.random.permutation(ek, syn.x.shape[0]))
                for idx in (perm[:_NET_BATCH], perm[_NET_BATCH:]):
                    g = grad_ce(want, syn.x[idx], after.fixed["c"][idx])
                    want = jax.tree.map(lambda p, gi: p - _LR_NET * gi, want, g)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)
        ages.append(int(after.obj_state.age))
        inits.append(int(after.obj_state.inits))
    assert ages == [1, 2, 0, 1, 2, 0, 1]
    assert inits == [1, 1, 2, 2, 2, 3, 3]


def test_siamese_augmentation_reaches_real_and_synthetic_batch_of_each_class():
    data = _toy()

    def spy(key, x):  # every image becomes one key-dependent constant: shows which draw it got
        return jnp.zeros_like(x) + jax.random.normal(key, (), x.dtype)

    # the plumbing does not depend on the network: a small MLP compiles fastest
    obj = gradient_matching(_mlp(), outer_loop=1, inner_loop=1)
    d = compose(pixels(), obj, ipc=2, optimizer=optax.sgd(0.1), augment=spy)
    state = jax.jit(d.init)(jax.random.key(0), data)
    loss = jax.jit(lambda *a: obj.loss(*a, spy))
    out = loss({}, d.synthetic(state), state.fixed["c"], data, jax.random.key(3),
               state.obj_state)
    real = np.asarray(out.probe.x_real).reshape(K, -1)
    syn = np.asarray(out.probe.x_syn).reshape(K, -1)
    draws = real[:, 0]
    np.testing.assert_array_equal(real, np.repeat(draws[:, None], real.shape[1], 1))
    np.testing.assert_array_equal(syn, np.repeat(draws[:, None], syn.shape[1], 1))
    assert len(set(draws.tolist())) == K                 # one draw per class


def test_defaults_registry_and_bad_values():
    assert default_loops(1) == (1, 1) and default_loops(10) == (10, 50)
    assert default_loops(50) == (50, 10) and default_loops(20) == (20, 25)
    assert METHOD.default_steps(DCConfig(), 1) == 1000
    assert METHOD.default_steps(DCConfig(), 10) == 10000
    assert DSA_METHOD.default_steps(DSAConfig(iterations=200), 1) == 200
    assert DCConfig().init == "noise" and DSAConfig().init == "real"
    spec = RunSpec(ipc=10, steps=5, seeds=1, dataset="digits", num_classes=10,
                   feature_shape=(8, 8, 1), n_train=1347)
    plan = METHOD.build(DCConfig(width=8), spec)
    assert (plan.info["outer_loop"], plan.info["inner_loop"]) == (10, 50)
    assert plan.learner.config["augmentation"] in ("none", None)
    plan = DSA_METHOD.build(DSAConfig(width=8, inner_loop=3), spec)
    assert plan.info["dsa_strategy"] == "color_crop_cutout_scale_rotate"
    assert plan.info["inner_loop"] == 3 and plan.learner.config["augmentation"] != "none"

    model = _model()
    for kwargs, match in [({"ipc": 0}, "ipc"), ({"ipc": 1, "distance": "l2"}, "distance"),
                          ({"ipc": 1, "lr_net": math.nan}, "lr_net"),
                          ({"ipc": 1, "lr": -1.0}, "lr"),
                          ({"ipc": 1, "momentum": 1.0}, "momentum"),
                          ({"ipc": 1, "outer_loop": 0}, "outer_loop"),
                          ({"ipc": 1, "inner_loop": -1}, "inner_loop"),
                          ({"ipc": 1, "batch_real": 0}, "batch_real"),
                          ({"ipc": 1, "net_batch": 2.5}, "net_batch"),
                          ({"ipc": 1, "init": "zeros"}, "init")]:
        with pytest.raises(ValueError, match=match):
            dc(model, **kwargs)
    with pytest.raises(ValueError):
        dsa(model, ipc=1, strategy="flip_wobble")
    with pytest.raises(ValueError, match="augment"):
        dsa(model, ipc=1, augment=lambda k, x: x)
    for cfg, match in [(DCConfig(lr=-0.1), "--lr"), (DCConfig(outer_loop=0), "--outer-loop"),
                       (DCConfig(distance="l1"), "--distance"),
                       (DCConfig(lr_net=float("nan")), "--lr-net"),
                       (DSAConfig(dsa_strategy="crop_wobble"), "--dsa-strategy")]:
        with pytest.raises(ConfigError, match=match):
            validate(cfg)
    with pytest.raises(ConfigError, match="image"):
        METHOD.build(DCConfig(), spec._replace(feature_shape=(64,)))
