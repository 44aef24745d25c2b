"""Models: shapes, pure init/apply, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdd.models import make_model


@pytest.mark.parametrize("name,kw,shape", [
    ("mlp", {"hidden": (32, 16)}, (8, 8, 1)),
    ("convnet", {"width": 8, "depth": 3}, (8, 8, 1)),
    ("convnet", {"width": 8, "depth": 2, "norm": "layer"}, (32, 32, 3)),
    ("two_layer", {"width": 12}, (5,)),
])
def test_shapes_and_purity(name, kw, shape):
    m = make_model(name, 7, **kw)
    p = m.init(jax.random.key(0), jnp.zeros((1,) + shape))
    x = jax.random.normal(jax.random.key(1), (3,) + shape)
    out = m.apply(p, x)
    assert out.shape == (3, 7)
    np.testing.assert_allclose(out, jax.jit(m.apply)(p, x), rtol=1e-5, atol=1e-6)
    # rows are independent (no batch statistics leak between examples)
    np.testing.assert_allclose(m.apply(p, x[:1]), out[:1], rtol=1e-4, atol=1e-5)


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
    p = m.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    n = sum(a.size for a in jax.tree.leaves(p))
    conv = (3 * 9 * 128 + 128) + 2 * (128 * 9 * 128 + 128)
    norm = 3 * 2 * 128
    dense = 128 * 4 * 4 * 10 + 10
    assert n == conv + norm + dense


def test_unknown_names():
    with pytest.raises(ValueError, match="valid models: mlp, convnet, two_layer"):
        make_model("resnet", 10)
    with pytest.raises(ValueError, match="valid:"):
        m = make_model("mlp", 2, activation="swishy")
        m.init(jax.random.key(0), jnp.zeros((1, 3)))
