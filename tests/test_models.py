"""Models: shapes, pure init/apply, errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdd.models import check_input_shape, make_model


@pytest.mark.parametrize("name,kw,shape", [
    ("mlp", {"hidden": (32, 16)}, (8, 8, 1)),
    ("convnet", {"width": 8, "depth": 3}, (8, 8, 1)),
    ("convnet", {"width": 8, "depth": 2, "norm": "layer"}, (32, 32, 3)),
    ("two_layer", {"width": 12}, (5,)),
])
def test_shapes_and_purity(name, kw, shape):
    m = make_model(name, 7, **kw)
    p = jax.jit(m.init)(jax.random.key(0), jnp.zeros((1,) + shape))
    x = jax.random.normal(jax.random.key(1), (3,) + shape)
    out = jax.jit(m.apply)(p, x)
    assert out.shape == (3, 7)
    # pure: the un-jitted function gives the same values
    np.testing.assert_allclose(out, m.apply(p, x), rtol=1e-5, atol=1e-6)
    # rows are independent (no batch statistics leak between examples)
    np.testing.assert_allclose(jax.jit(m.apply)(p, x[:1]), out[:1], rtol=1e-4, atol=1e-5)


def test_convnet_instance_norm_normalises_each_image_and_channel():
    # the ConvNet's own norm layer, read out of a forward pass: per image and channel, zero mean
    # and unit std over space (instance norm), never statistics across the batch
    m = make_model("convnet", 3, width=4, depth=1, pooling="none")
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 1)) * 5 + 2
    p = m.init(jax.random.key(1), x)
    from jdd.models import ConvNet
    _, inter = ConvNet(width=4, depth=1, pooling="none", num_outputs=3).apply(
        {"params": p}, x, capture_intermediates=True)
    y = inter["intermediates"]["GroupNorm_0"]["__call__"][0]
    np.testing.assert_allclose(y.mean(axis=(1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(y.std(axis=(1, 2)), 1, atol=1e-3)


def test_convnet_parameter_count_matches_the_dd_convnet():
    m = make_model("convnet", 10)  # width 128, depth 3 on 32x32x3: the DD ConvNet-D3
    p = jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    n = sum(a.size for a in jax.tree.leaves(p))
    conv = (3 * 9 * 128 + 128) + 2 * (128 * 9 * 128 + 128)
    norm = 3 * 2 * 128
    dense = 128 * 4 * 4 * 10 + 10
    assert n == conv + norm + dense


def test_unknown_names():
    with pytest.raises(ValueError, match="valid models: mlp, convnet, two_layer, resnet"):
        make_model("vgg", 10)
    with pytest.raises(ValueError, match="valid:"):
        m = make_model("mlp", 2, activation="swishy")
        m.init(jax.random.key(0), jnp.zeros((1, 3)))


@pytest.mark.parametrize("name,kw,msg", [
    ("convnet", {"norm": "batch"}, "unknown norm 'batch'; valid: instance, layer, none"),
    ("resnet", {"norm": "batchnorm"}, "unknown norm 'batchnorm'; valid: instance, layer, none"),
    ("convnet", {"pooling": "median"}, "unknown pooling 'median'; valid: avg, max, none"),
    ("convnet", {"activation": "swishy"}, "unknown activation 'swishy'; valid: relu"),
    ("resnet", {"activation": "swishy"}, "unknown activation 'swishy'; valid: relu"),
    ("two_layer", {"activation": "swishy"}, "unknown activation"),
    ("convnet", {"width": 0}, "width must be an integer >= 1; got 0"),
    ("convnet", {"depth": 0}, "depth must be an integer >= 1; got 0"),
    ("convnet", {"depth": 2.5}, "depth must be an integer >= 1"),
    ("resnet", {"width": -4}, "width must be an integer >= 1"),
    ("resnet", {"stages": ()}, "at least one stage"),
    ("resnet", {"stages": (2, 0)}, "every stage's block count must be an integer >= 1; got 0"),
    ("mlp", {"hidden": (32, 0)}, "every hidden width must be an integer >= 1; got 0"),
    ("two_layer", {"width": 0}, "width must be an integer >= 1; got 0"),
    ("convnet", {"widht": 8}, "unknown keyword\\(s\\) widht for model 'convnet'; valid: width"),
    ("two_layer", {"hidden": (3,)}, "unknown keyword\\(s\\) hidden for model 'two_layer'"),
    ("convnet", {"param_init": "xavier"}, "unknown param_init 'xavier'; valid: torch, flax"),
    ("resnet", {"param_init": "he"}, "unknown param_init 'he'; valid: torch, flax"),
])
def test_bad_names_and_values_raise_at_make_model(name, kw, msg):
    # make_model itself raises (no init, no tracing needed)
    with pytest.raises(ValueError, match=msg):
        make_model(name, 10, **kw)


@pytest.mark.parametrize("name,kw,shape,feat_shapes", [
    ("mlp", {"hidden": (32, 16)}, (8, 8, 1), [(3, 32), (3, 16)]),
    ("mlp", {"hidden": ()}, (5,), [(3, 5)]),
    ("two_layer", {"width": 12}, (5,), [(3, 12)]),
    # 1-channel inputs: the official first conv pads by 3 (8x8 -> 12x12, 28x28 -> 32x32)
    ("convnet", {"width": 8, "depth": 3}, (8, 8, 1),
     [(3, 6, 6, 8), (3, 3, 3, 8), (3, 1, 1, 8), (3, 8)]),
    ("convnet", {"width": 8, "depth": 3}, (28, 28, 1),
     [(3, 16, 16, 8), (3, 8, 8, 8), (3, 4, 4, 8), (3, 128)]),
    ("convnet", {"width": 8, "depth": 3, "gray_padding": 1}, (28, 28, 1),
     [(3, 14, 14, 8), (3, 7, 7, 8), (3, 3, 3, 8), (3, 72)]),
    ("convnet", {"width": 8, "depth": 2}, (8, 8, 3),
     [(3, 4, 4, 8), (3, 2, 2, 8), (3, 32)]),
    ("convnet", {"width": 4, "depth": 2, "norm": "layer", "pooling": "none"}, (6, 6, 3),
     [(3, 6, 6, 4), (3, 6, 6, 4), (3, 144)]),
    ("resnet", {"width": 4, "stages": (1, 1, 1)}, (8, 8, 1),
     [(3, 8, 8, 4), (3, 8, 8, 4), (3, 4, 4, 8), (3, 2, 2, 16), (3, 16)]),
    ("resnet", {"width": 4, "stages": (1, 1)}, (28, 28, 1),
     [(3, 28, 28, 4), (3, 28, 28, 4), (3, 14, 14, 8), (3, 8)]),
])
def test_features_shapes_and_last_entry_is_the_classifier_input(name, kw, shape, feat_shapes):
    m = make_model(name, 7, **kw)
    p = jax.jit(m.init)(jax.random.key(0), jnp.zeros((1,) + shape))
    x = jax.random.normal(jax.random.key(1), (3,) + shape)

    @jax.jit
    def run(p, x):
        return m.features(p, x), m.apply(p, x), m.embed(p, x), m.embed(p, x[1:2])

    feats, logits, emb, emb1 = run(p, x)
    assert isinstance(feats, tuple)
    assert [f.shape for f in feats] == feat_shapes
    # the classifier is the last top-level Dense layer
    dense = p[max((k for k in p if k.startswith("Dense_")), key=lambda k: int(k[6:]))]
    # apply == Dense(features[-1]), through the classifier's own parameters
    np.testing.assert_allclose(logits, feats[-1] @ dense["kernel"] + dense["bias"],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(emb, feats[-1])
    # per-example features equal the batch's rows (no statistics across the batch)
    np.testing.assert_allclose(emb1, feats[-1][1:2], rtol=1e-4, atol=1e-5)


def test_convnet_block_features_are_after_norm_activation_and_pooling():
    m = make_model("convnet", 3, width=4, depth=2)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    p = m.init(jax.random.key(1), x)
    f1 = m.features(p, x)[0]
    # by hand: conv (a 1-channel input: padded by 3, 8x8 -> 12x12, as the official ConvNet)
    # -> instance norm -> relu -> 2x2 average pool
    conv = jax.lax.conv_general_dilated(x, p["Conv_0"]["kernel"], (1, 1), ((3, 3), (3, 3)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    h = conv + p["Conv_0"]["bias"]
    mu, var = h.mean(axis=(1, 2), keepdims=True), h.var(axis=(1, 2), keepdims=True)
    h = (h - mu) / jnp.sqrt(var + 1e-5) * p["GroupNorm_0"]["scale"] + p["GroupNorm_0"]["bias"]
    h = jnp.maximum(h, 0).reshape(2, 6, 2, 6, 2, 4).mean(axis=(2, 4))
    np.testing.assert_allclose(f1, h, rtol=1e-4, atol=1e-5)


def test_features_are_differentiable_for_distribution_matching():
    m = make_model("convnet", 10, width=8, depth=2)
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
    p = jax.jit(m.init)(jax.random.key(1), x)
    g = jax.jit(jax.grad(lambda x: jnp.sum(jnp.mean(m.embed(p, x), 0) ** 2)))(x)
    assert g.shape == x.shape and bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).sum()) > 0


@pytest.mark.parametrize("shape,norm", [((8, 8, 1), "layer"), ((28, 28, 1), "instance")])
def test_resnet_shapes(shape, norm):
    # ResNet-18's layout, narrow: shapes only (no compile)
    m = make_model("resnet", 10, width=4, norm=norm)
    p = jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((1,) + shape))
    x = jax.ShapeDtypeStruct((2,) + shape, jnp.float32)
    assert jax.eval_shape(m.apply, p, x).shape == (2, 10)
    assert jax.eval_shape(m.embed, p, x).shape == (2, 32)


def test_resnet_rows_are_independent():
    m = make_model("resnet", 10, width=4, stages=(1, 1))
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    p = jax.jit(m.init)(jax.random.key(0), x[:1])
    out, out1 = jax.jit(lambda p, x: (m.apply(p, x), m.apply(p, x[:1])))(p, x)
    np.testing.assert_allclose(out1, out[:1], rtol=1e-4, atol=1e-5)


def test_resnet18_parameter_count_matches_dc_resnet18_instance_norm():
    # DC's ResNet18 (networks.py): bias-free convs, GroupNorm(C, C) affine (2C each),
    # 3x3 stem of 64, stages (64, 128, 256, 512) x 2 basic blocks, 1x1 conv + norm shortcut
    # where the shape changes, Linear(512, k).
    m = make_model("resnet", 10)
    p = jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    n = sum(a.size for a in jax.tree.leaves(p))

    def block(cin, cout):
        c = 9 * cin * cout + 2 * cout + 9 * cout * cout + 2 * cout
        return c + (cin * cout + 2 * cout if cin != cout else 0)

    expect = 9 * 3 * 64 + 2 * 64
    cin = 64
    for c in (64, 128, 256, 512):
        expect += block(cin, c) + block(c, c)
        cin = c
    expect += 512 * 10 + 10
    assert n == expect


def test_model_without_features_has_no_embed():
    from jdd.models import Model
    m = Model(init=lambda k, x: {}, apply=lambda p, x: x, name="custom")
    assert m.features is None
    with pytest.raises(ValueError, match="no features function"):
        m.embed({}, jnp.zeros((1, 2)))


@pytest.mark.parametrize("name,kw,shape", [
    ("convnet", {"width": 32, "depth": 3}, (8, 8, 1)),
    ("resnet", {"width": 4, "stages": (1, 1), "norm": "none"}, (6, 6, 3)),
])
def test_torch_initialisation_matches_pytorch_defaults(name, kw, shape):
    # torch nn.Conv2d / nn.Linear: kaiming_uniform(a=sqrt(5)) weights = U(-b, b), b = 1/sqrt(fan_in)
    # (variance b^2 / 3), biases U(-b, b) with the same b. flax's: LeCun normal, zero biases.
    p = jax.jit(make_model(name, 10, **kw).init)(jax.random.key(0), jnp.zeros((1, *shape)))
    leaves = jax.tree_util.tree_leaves_with_path(p)
    checked = 0
    for path, leaf in leaves:
        keys = tuple(getattr(k, "key", k) for k in path)
        if keys[-1] not in ("kernel", "bias") or "GroupNorm" in keys[-2]:
            continue
        owner = p
        for k in keys[:-1]:
            owner = owner[k]
        fan = int(np.prod(owner["kernel"].shape[:-1]))
        b = 1.0 / np.sqrt(fan)
        a = np.asarray(leaf)
        assert np.abs(a).max() <= b + 1e-7, (keys, np.abs(a).max(), b)
        assert np.all(a != 0), keys                        # biases are drawn, not zeros
        if a.size >= 32:                                  # and fill the interval
            assert np.abs(a).max() > 0.8 * b, keys
        if a.size >= 2000:                                # variance b^2/3 (uniform), not LeCun's
            assert abs(a.var() / (b * b / 3) - 1) < 0.1, (keys, a.var(), b * b / 3)
        checked += 1
    assert checked >= 6
    pf = jax.jit(make_model(name, 10, param_init="flax", **kw).init)(jax.random.key(0),
                                                                     jnp.zeros((1, *shape)))
    dense = [v for k, v in pf.items() if k.startswith("Dense")][0]
    np.testing.assert_array_equal(np.asarray(dense["bias"]), 0.0)
    fan = dense["kernel"].shape[0]
    assert abs(float(jnp.var(dense["kernel"])) * fan - 1.0) < 0.5   # LeCun normal: var 1/fan_in


@pytest.mark.parametrize("shape", [(3, 3, 8, 8), (5, 7), (4,)])
def test_torch_initialiser_is_the_direct_uniform_draw(shape):
    # it draws flat and reshapes (a compile-time workaround); the bytes must be the direct draw's
    from jdd.models import layer_init
    init = layer_init("torch", 72)["kernel_init"]
    key = jax.random.key(3)
    got = np.asarray(jax.jit(init, static_argnums=1)(key, shape))
    b = 1.0 / np.sqrt(72)
    want = np.asarray(jax.random.uniform(key, shape, jnp.float32, -b, b))
    assert got.shape == shape
    np.testing.assert_array_equal(got, want)


def test_instance_norm_of_1x1_maps_is_refused_because_it_outputs_a_constant():
    # why: per image and channel, a 1x1 map's mean is its value, so the layer returns its bias
    gn = nn.GroupNorm(num_groups=None, group_size=1, epsilon=1e-5)
    x = jax.random.normal(jax.random.key(0), (4, 1, 1, 3)) * 5
    p = gn.init(jax.random.key(1), x)
    p = jax.tree.map(lambda a: a + 0.5, p)
    np.testing.assert_allclose(gn.apply(p, x), jnp.broadcast_to(p["params"]["bias"], x.shape))
    # so: ResNet-18 on 8x8 (stages 8, 4, 2, 1) and ConvNet-D4 on 8x8 digits are refused ...
    for name, kw in (("resnet", {"width": 4}), ("convnet", {"width": 4, "depth": 4})):
        with pytest.raises(ValueError, match="instance-normalises 1x1 maps"):
            check_input_shape(make_model(name, 10, **kw), (8, 8, 1))
        # ... with instance norm only, and larger inputs are fine
        check_input_shape(make_model(name, 10, norm="layer", **kw), (8, 8, 1))
        check_input_shape(make_model(name, 10, **kw), (28, 28, 1))
    check_input_shape(make_model("convnet", 10, width=4), (8, 8, 1))   # ConvNet-D3: 12, 6, 3
