"""jdd.conv: the matrix-form and the hybrid convolution equal lax.conv_general_dilated (values,
gradients of first and second order, forward mode, under vmap of weights and/or inputs), and the
models give the same function with any form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.core import jaxprs_in_params

from jdd.conv import conv_fn, conv_hybrid, conv_matmul
from jdd.models import make_model



@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield

NHWC = ("NHWC", "HWIO", "NHWC")


def _lax(x, w, strides, padding):
    return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)


def _mm(x, w, strides, padding):
    return conv_matmul(x, w, strides, padding, dimension_numbers=NHWC)


def _hy(x, w, strides, padding):
    return conv_hybrid(x, w, strides, padding, dimension_numbers=NHWC)


IMPLS = {"matmul": _mm, "hybrid": _hy}


CASES = [  # (input shape, kernel shape, strides, padding)
    ((3, 7, 6, 4), (3, 3, 4, 5), (1, 1), "SAME"),
    ((3, 7, 6, 4), (3, 3, 4, 5), (2, 2), ((1, 1), (1, 1))),
    ((2, 8, 8, 3), (1, 1, 3, 6), (2, 2), "VALID"),
    ((2, 5, 9, 2), (3, 2, 2, 3), (1, 2), "VALID"),
    ((2, 4, 4, 2), (3, 3, 2, 2), (1, 1), ((2, 0), (0, 1))),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("xs,ws,strides,padding", CASES)
def test_values_and_gradients_match_lax(xs, ws, strides, padding, impl):
    conv = IMPLS[impl]
    kx, kw, kc = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, xs, jnp.float64)
    w = jax.random.normal(kw, ws, jnp.float64)
    ref = _lax(x, w, strides, padding)
    out = conv(x, w, strides, padding)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    c = jax.random.normal(kc, ref.shape, jnp.float64)

    def loss(f):
        return lambda x, w: jnp.sum(jnp.tanh(f(x, w, strides, padding)) * c)

    g_ref = jax.grad(loss(_lax), argnums=(0, 1))(x, w)
    g = jax.grad(loss(conv), argnums=(0, 1))(x, w)
    for a, b in zip(g, g_ref):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-11)

    # second order, as gradient matching differentiates a weight gradient w.r.t. the input
    def meta(f):
        return lambda x, w: jnp.sum(jax.grad(loss(f), argnums=1)(x, w) ** 2)

    np.testing.assert_allclose(jax.grad(meta(conv))(x, w), jax.grad(meta(_lax))(x, w),
                               rtol=1e-10, atol=1e-10)

    # forward mode (the empirical NTK takes JVPs of the network), in both arguments
    tx, tw = jax.random.normal(kc, xs, jnp.float64), jax.random.normal(kx, ws, jnp.float64)
    f = lambda f: (lambda x, w: f(x, w, strides, padding))  # noqa: E731
    for a, b in zip(jax.jvp(f(conv), (x, w), (tx, tw)), jax.jvp(f(_lax), (x, w), (tx, tw))):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("impl", IMPLS)
def test_vmapped_weights_match_lax(impl):
    kx, kw = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (4, 2, 5, 5, 3), jnp.float64)     # 4 groups (classes / seeds)
    w = jax.random.normal(kw, (4, 3, 3, 3, 6), jnp.float64)

    def wgrad(f):
        return jax.vmap(jax.grad(lambda w, x: jnp.sum(f(x, w, (1, 1), "SAME") ** 2)))(w, x)

    np.testing.assert_allclose(wgrad(IMPLS[impl]), wgrad(_lax), rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("axes", [(0, 0), (0, None), (None, 0)])
def test_hybrid_values_under_every_batching_pattern(axes):
    """The custom batching rule: batched inputs and weights (one convolution each), batched
    inputs only (folded into the image axis), batched weights only; nested vmaps too."""
    kx, kw = jax.random.split(jax.random.key(7))
    x = jax.random.normal(kx, (3, 2, 5, 5, 3), jnp.float64)
    w = jax.random.normal(kw, (3, 3, 3, 3, 4), jnp.float64)
    xa = x if axes[0] == 0 else x[0]
    wa = w if axes[1] == 0 else w[0]
    f = lambda f: (lambda x, w: f(x, w, (1, 1), "SAME"))  # noqa: E731
    ref = jax.vmap(f(_lax), axes)(xa, wa)
    np.testing.assert_allclose(jax.jit(jax.vmap(f(_hy), axes))(xa, wa), ref,
                               rtol=1e-12, atol=1e-12)
    nested = jax.vmap(jax.vmap(f(_hy), (0, None)), (0, 0))   # classes inside seeds
    xs = jnp.stack([x, x + 1.0])                             # (2 seeds, 3 classes, ...)
    ws = jnp.stack([w[0], w[1]])
    ref = jax.vmap(jax.vmap(f(_lax), (0, None)), (0, 0))(xs, ws)
    np.testing.assert_allclose(nested(xs, ws), ref, rtol=1e-12, atol=1e-12)


def test_hybrid_values_natively_and_differentiates_in_matrix_form():
    """The design, not only the numbers: the value is XLA's convolution (under a vmap of weights,
    a loop of ungrouped ones, never XLA's grouped form), and every derivative is the matrix
    form's (no convolution in a gradient's program)."""
    x = jnp.zeros((3, 2, 5, 5, 3))
    w = jnp.zeros((3, 3, 3, 3, 4))
    f = lambda x, w: _hy(x, w, (1, 1), "SAME")  # noqa: E731

    def convs(jaxpr):
        found = []

        def walk(j):
            for e in j.eqns:
                if e.primitive.name == "conv_general_dilated":
                    found.append(e.params)
                for sub in jaxprs_in_params(e.params):
                    walk(sub)
        walk(jaxpr.jaxpr)
        return found

    batched = convs(jax.make_jaxpr(jax.vmap(f))(x, w))
    assert batched and all(p["feature_group_count"] == 1 and p["batch_group_count"] == 1
                           for p in batched)
    assert convs(jax.make_jaxpr(f)(x[0], w[0]))
    grad = jax.make_jaxpr(jax.vmap(jax.grad(lambda x, w: jnp.sum(f(x, w) ** 2), (0, 1))))(x, w)
    assert convs(grad) == []
    jvp = jax.make_jaxpr(lambda x, w: jax.jvp(f, (x, w), (x, w)))(x[0], w[0])
    assert convs(jvp) == []


def test_unsupported_configurations_fall_back_to_lax():
    x = jax.random.normal(jax.random.key(2), (1, 6, 6, 4), jnp.float64)
    w = jax.random.normal(jax.random.key(3), (3, 3, 2, 4), jnp.float64)   # 2 groups
    ref = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC,
                                       feature_group_count=2)
    out = conv_matmul(x, w, (1, 1), "SAME", dimension_numbers=NHWC, feature_group_count=2)
    np.testing.assert_allclose(out, ref, rtol=1e-12)
    w1 = jax.random.normal(jax.random.key(4), (3, 3, 4, 4), jnp.float64)
    ref = jax.lax.conv_general_dilated(x, w1, (1, 1), "SAME", rhs_dilation=(2, 2),
                                       dimension_numbers=NHWC)
    out = conv_matmul(x, w1, (1, 1), "SAME", rhs_dilation=(2, 2), dimension_numbers=NHWC)
    np.testing.assert_allclose(out, ref, rtol=1e-12)


@pytest.mark.parametrize("name,kw", [("convnet", dict(width=16, depth=3)),
                                     ("resnet", dict(width=16, stages=(1, 1)))])
def test_models_are_the_same_function_with_either_conv(name, kw):
    x = jax.random.normal(jax.random.key(5), (3, 8, 8, 2), jnp.float64)
    models = {c: make_model(name, 4, conv=c, **kw) for c in ("xla", "matmul", "hybrid", "auto")}
    params = jax.tree.map(lambda a: a.astype(jnp.float64),
                          models["xla"].init(jax.random.key(6), x))
    ref = models["xla"].apply(params, x)
    for c in ("matmul", "hybrid", "auto"):
        np.testing.assert_allclose(models[c].apply(params, x), ref, rtol=1e-10, atol=1e-10)
        # same parameter tree: a network trained with one form evaluates with the other
        assert jax.tree.structure(models[c].init(jax.random.key(6), x)) == \
            jax.tree.structure(params)


def test_unknown_conv_is_refused():
    with pytest.raises(ValueError, match="unknown conv 'fft'; valid: auto, xla, matmul"):
        make_model("convnet", 10, conv="fft")
    with pytest.raises(ValueError, match="unknown conv implementation"):
        conv_fn("fft")
