"""Tests for jdd.augment: Differentiable Siamese Augmentation, checked against numpy/scipy.

Compiling is most of the cost on a CPU, so the tests share a few jitted programs and two batch
shapes (X3, X7) wherever they can.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdd import augment as A

FAMILIES = {  # name -> random family function (DSA's default strength)
    "brightness": A.brightness, "saturation": A.saturation, "contrast": A.contrast,
    "color": A.color, "crop": A.crop, "cutout": A.cutout, "flip": A.flip, "scale": A.scale,
    "rotate": A.rotate,
}
CHEAP = "color_crop_cutout_flip"  # a strategy without the (slower to compile) resampling families


def images(n, h=8, w=8, c=3, seed=0):
    """Standard normal (n, h, w, c) float32 images, as numpy (slicing numpy compiles nothing)."""
    return np.random.default_rng(seed).standard_normal((n, h, w, c)).astype(np.float32)


X3, X7 = images(3, seed=1), images(7, seed=2)


def key(i=0):
    return jax.random.key(i)


@functools.lru_cache(maxsize=None)
def every_family(siamese):
    """One jitted program running every family with one key: (key, x) -> {name: output}."""
    return jax.jit(lambda k, x: {n: f(k, x, siamese=siamese) for n, f in FAMILIES.items()})


def scalar_u(k, size=1):
    """The documented siamese draw of a family: jax.random.uniform(key, (size,))."""
    return np.asarray(jax.random.uniform(k, (size,)), np.float64)


def np_translate(x, dy, dx):
    """out[r, s] = x[r - dy, s - dx] with zero fill, written with padding and slicing."""
    _, h, w, _ = x.shape
    p = max(abs(dy), abs(dx))
    padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    return padded[:, p - dy:p - dy + h, p - dx:p - dx + w]


def np_cutout(x, cy, cx, size):
    out = np.array(x, copy=True)
    top, left = cy - size[0] // 2, cx - size[1] // 2
    out[:, max(top, 0):max(top + size[0], 0), max(left, 0):max(left + size[1], 0)] = 0
    return out


def scipy_rotate(x, angle):
    nd = pytest.importorskip("scipy.ndimage")
    return np.stack([nd.rotate(im, angle, axes=(1, 0), reshape=False, order=1, mode="grid-constant")
                     for im in np.asarray(x, np.float64)])


def scipy_scale(x, sy, sx):
    nd = pytest.importorskip("scipy.ndimage")
    _, h, w, _ = x.shape
    c = np.array([(h - 1) / 2, (w - 1) / 2, 0.0])
    m = np.diag([sy, sx, 1.0])
    return np.stack([nd.affine_transform(im, m, offset=c - m @ c, order=1, mode="grid-constant")
                     for im in np.asarray(x, np.float64)])


# ----------------------------------------------------------------------------- siamese property


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_same_key_same_transform_for_batches_of_3_and_7(name):
    # every image of a batch of 7 gets the transform it gets in a batch of 3 (and vice versa)
    run = every_family(True)
    out7 = run(key(5), X7)[name]
    for lo in (0, 3, 4):
        np.testing.assert_allclose(out7[lo:lo + 3], run(key(5), X7[lo:lo + 3])[name], atol=1e-5)
    mixed = np.concatenate([X3[:2], X7[:5]])  # real and "synthetic" images in one batch of 7
    np.testing.assert_allclose(run(key(5), mixed)[name][:2], run(key(5), X3)[name][:2], atol=1e-5)


@pytest.mark.parametrize("mode, strategy", [("single", CHEAP), ("all", A.DEFAULT_STRATEGY)])
def test_dsa_same_key_same_transform_for_batches_of_3_and_7(mode, strategy):
    aug = A.dsa(strategy, mode=mode)
    for i in range(6):  # several keys, so that single mode meets several families
        out7 = aug(key(i), X7)
        np.testing.assert_allclose(out7[:3], aug(key(i), X7[:3]), atol=1e-5)
        np.testing.assert_allclose(out7[4:], aug(key(i), X7[4:]), atol=1e-5)
        if mode == "all":
            assert np.abs(np.asarray(out7) - X7).max() > 1e-2  # it does change the images


def test_siamese_identical_images_stay_identical_and_per_image_mode_differs():
    x = np.broadcast_to(X3[:1], X7.shape)
    shared, per_image = every_family(True)(key(3), x), every_family(False)(key(3), x)
    for name in FAMILIES:
        same = np.asarray(shared[name])
        assert np.abs(same - same[:1]).max() < 1e-6, name
        distinct = {tuple(np.round(o, 4).ravel()) for o in np.asarray(per_image[name])}
        assert len(distinct) >= 2, name  # per-image parameters


def test_per_image_parameters_are_the_documented_draws():
    u = np.asarray(jax.random.uniform(key(3), (7, 3)), np.float64)  # color: (n, 3) per image
    x = np.broadcast_to(X3[:1], X7.shape).astype(np.float64)
    y = x + (u[:, 0] - 0.5)[:, None, None, None]
    m = y.mean(axis=3, keepdims=True)
    y = (y - m) * (u[:, 1] * 2.0)[:, None, None, None] + m
    m = y.mean(axis=(1, 2, 3), keepdims=True)
    y = (y - m) * (u[:, 2] + 0.5)[:, None, None, None] + m
    out = every_family(False)(key(3), np.broadcast_to(X3[:1], X7.shape))["color"]
    np.testing.assert_allclose(out, y, atol=1e-5)


def test_different_keys_give_different_transforms():
    aug = A.dsa(mode="all")
    outs = [np.asarray(aug(key(i), X3)) for i in range(4)]
    for i in range(4):
        for j in range(i):
            assert np.abs(outs[i] - outs[j]).max() > 1e-2
    per_key = [every_family(True)(key(i), X3) for i in range(12)]
    for name in ["brightness", "saturation", "contrast", "color", "scale", "rotate"]:
        assert np.abs(np.asarray(per_key[0][name]) - np.asarray(per_key[1][name])).max() > 1e-3, name
    # discrete families: over 12 keys both flip outcomes and several shifts / cutouts occur
    assert {bool(np.allclose(o["flip"], X3)) for o in per_key} == {True, False}
    assert len({np.asarray(o["crop"]).tobytes() for o in per_key}) >= 3
    assert len({np.asarray(o["cutout"]).tobytes() for o in per_key}) >= 3


# ----------------------------------------------------------------------------- gradients


@functools.lru_cache(maxsize=None)
def family_gradients():
    """jit: per family, the gradient of sum(w * f(key, x)) and the change of that loss along v."""
    def run(k, x, w, v):
        out = {}
        for name, f in FAMILIES.items():
            loss = lambda x, f=f: jnp.sum(w * f(k, x))
            out[name] = (jax.grad(loss)(x), loss(x + v) - loss(x))
        return out
    return jax.jit(run)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_gradient_finite_nonzero_and_matches_finite_difference(name):
    w, v = images(3, seed=5), images(3, seed=6)
    g, change = family_gradients()(key(7), X3, w, v)[name]
    g = np.asarray(g, np.float64)
    assert np.isfinite(g).all() and np.abs(g).max() > 0
    # every family is affine in x for a fixed key, so a finite difference is exact up to rounding
    np.testing.assert_allclose(np.vdot(g, v), float(change), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("mode, strategy", [("single", CHEAP), ("all", A.DEFAULT_STRATEGY)])
def test_dsa_gradient_is_finite_and_nonzero(mode, strategy):
    aug = A.dsa(strategy, mode=mode)
    grad = jax.jit(jax.grad(lambda x, k: jnp.sum(jnp.sin(aug(k, x)))))
    for i in range(4):
        g = np.asarray(grad(X3, key(i)))
        assert np.isfinite(g).all() and np.abs(g).max() > 0


# ----------------------------------------------------------------------------- each family vs a reference


def test_color_formulas_against_numpy():
    xn = np.asarray(X3, np.float64)
    out = every_family(True)(key(2), X3)
    u = scalar_u(key(2))[0]
    np.testing.assert_allclose(out["brightness"], xn + (u - 0.5) * 1.0, atol=1e-5)
    m = xn.mean(axis=3, keepdims=True)  # per-pixel mean over channels
    np.testing.assert_allclose(out["saturation"], (xn - m) * (u * 2.0) + m, atol=1e-5)
    m = xn.mean(axis=(1, 2, 3), keepdims=True)  # per-image mean
    np.testing.assert_allclose(out["contrast"], (xn - m) * (u + 0.5) + m, atol=1e-5)
    # color = brightness, saturation, contrast driven by the three columns of uniform(key, (3,))
    ub, us, uc = scalar_u(key(2), 3)
    y = xn + (ub - 0.5) * 1.0
    m = y.mean(axis=3, keepdims=True)
    y = (y - m) * (us * 2.0) + m
    m = y.mean(axis=(1, 2, 3), keepdims=True)
    y = (y - m) * (uc + 0.5) + m
    np.testing.assert_allclose(out["color"], y, atol=1e-5)
    # a non-default strength reaches the formula
    np.testing.assert_allclose(A.brightness(key(2), X3, strength=0.3), xn + (u - 0.5) * 0.3,
                               atol=1e-5)


def test_saturation_is_identity_on_one_channel():
    x = X3[..., :1]
    np.testing.assert_allclose(A.saturation(key(0), x), x, atol=1e-6)


def test_flip_against_numpy():
    x = np.asarray(X3)
    for i in range(8):
        expected = x[:, :, ::-1] if scalar_u(key(i))[0] < 0.5 else x
        np.testing.assert_array_equal(every_family(True)(key(i), X3)["flip"], expected)
    np.testing.assert_array_equal(A.flip(key(0), X3, prob=1.0), x[:, :, ::-1])


def test_translate_against_numpy_padding_and_roll():
    x = np.asarray(X3)
    for dy in range(-3, 4):
        for dx in range(-3, 4):
            np.testing.assert_array_equal(A.translate(X3, dy, dx), np_translate(x, dy, dx))
    np.testing.assert_array_equal(A.translate(X3, 9, 0), np.zeros_like(x))  # all shifted out
    # the part that stays inside agrees with np.roll
    rolled = np.roll(x, (2, -1), axis=(1, 2))
    np.testing.assert_array_equal(np.asarray(A.translate(X3, 2, -1))[:, 2:, :-1], rolled[:, 2:, :-1])
    # per-image shifts
    out = A.translate(X3, np.array([1, -2, 0], np.int32), np.array([0, 3, -1], np.int32))
    for i, (dy, dx) in enumerate([(1, 0), (-2, 3), (0, -1)]):
        np.testing.assert_array_equal(out[i], np_translate(x[i:i + 1], dy, dx)[0])


def test_crop_is_a_translation_by_at_most_the_pad():
    x = np.asarray(X3)  # 8 pixels, ratio 0.125 -> shifts in [-1, 1]
    candidates = {(dy, dx): np_translate(x, dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
    seen = set()
    for i in range(12):
        out = np.asarray(every_family(True)(key(i), X3)["crop"])
        hits = [s for s, ref in candidates.items() if np.array_equal(out, ref)]
        assert len(hits) == 1
        seen.add(hits[0])
        u = scalar_u(key(i), 2)  # the documented draw: dy = floor(3 u0) - 1, dx = floor(3 u1) - 1
        assert hits[0] == (int(np.floor(u[0] * 3)) - 1, int(np.floor(u[1] * 3)) - 1)
    assert len(seen) >= 4
    # ratio 0.25 on 8 pixels: |shift| <= 2, and it reaches 2
    shifts = set()
    for i in range(20):
        out = np.asarray(A.crop(key(i), X3, ratio=0.25))
        hits = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                if np.array_equal(out, np_translate(x, dy, dx))]
        assert len(hits) == 1
        shifts.add(max(abs(hits[0][0]), abs(hits[0][1])))
    assert 2 in shifts


def test_cutout_against_numpy_and_mask_count():
    x = np.asarray(X3)
    for cy in range(9):
        for cx in range(9):
            np.testing.assert_array_equal(A.cutout_at(X3, cy, cx, (4, 4)), np_cutout(x, cy, cx, (4, 4)))
    ones = np.ones(X3.shape, np.float32)
    counts = set()
    for i in range(20):
        out = np.asarray(every_family(True)(key(i), ones)["cutout"])  # 4x4 (ratio 0.5), centre in [0, 8]
        zeros = out == 0
        assert set(np.unique(out)) <= {0.0, 1.0}
        assert (zeros == zeros[:1]).all() and (zeros == zeros[..., :1]).all()  # siamese, all channels
        rows, cols = np.nonzero(zeros[0, :, :, 0])
        n_zero = zeros[0, :, :, 0].sum()
        assert n_zero == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)  # a rectangle
        assert rows.max() - rows.min() < 4 and cols.max() - cols.min() < 4
        u = scalar_u(key(i), 2)  # the documented draw: centre = floor(9 u)
        np.testing.assert_array_equal(out, np_cutout(np.ones(X3.shape), int(u[0] * 9), int(u[1] * 9),
                                                     (4, 4)))
        counts.add(int(n_zero))
    assert 16 in counts  # an interior centre zeroes exactly (0.5 * 8) x (0.5 * 8) pixels


def test_rotate_90_and_identity_against_numpy():
    x = np.asarray(X3)
    np.testing.assert_allclose(A.rotate_by(X3, 90.0), np.rot90(x, 1, axes=(1, 2)), atol=1e-5)
    np.testing.assert_allclose(A.rotate_by(X3, -90.0), np.rot90(x, -1, axes=(1, 2)), atol=1e-5)
    np.testing.assert_allclose(A.rotate_by(X3, 180.0), x[:, ::-1, ::-1], atol=1e-5)
    np.testing.assert_allclose(A.rotate_by(X3, 0.0), x, atol=1e-6)
    np.testing.assert_allclose(A.scale_by(X3, 1.0, 1.0), x, atol=1e-6)


def test_rotate_small_angles_against_scipy():
    wide = images(1, h=6, w=10, c=1, seed=3)  # non-square: a rigid rotation in pixels
    for x in (X3, wide):
        for angle in (7.0, -12.5):
            np.testing.assert_allclose(A.rotate_by(x, angle), scipy_rotate(x, angle), atol=1e-4)
    # the random family: angle = (u - 0.5) * 2 * 15 degrees
    angle = (scalar_u(key(3))[0] - 0.5) * 2 * 15.0
    np.testing.assert_allclose(every_family(True)(key(3), X3)["rotate"], scipy_rotate(X3, angle),
                               atol=1e-4)
    # per-image angles
    out = A.rotate_by(X3, np.array([5.0, -9.0, 0.0], np.float32))
    np.testing.assert_allclose(out[1:2], scipy_rotate(X3[1:2], -9.0), atol=1e-4)
    np.testing.assert_allclose(out[2], X3[2], atol=1e-6)


def test_scale_against_scipy_affine_transform():
    wide = images(1, h=6, w=10, c=1, seed=3)
    for x in (X3, wide):
        for sy, sx in [(1.2, 0.8), (0.9, 1.15), (2.0, 2.0)]:
            np.testing.assert_allclose(A.scale_by(x, sy, sx), scipy_scale(x, sy, sx), atol=1e-5)
    # scale 2 shrinks the content to the centre half, zero outside it
    out = np.asarray(A.scale_by(np.ones(X3.shape, np.float32), 2.0, 2.0))[0, :, :, 0]
    assert out[0].max() == 0 and out[:, 0].max() == 0 and out[3:5, 3:5].min() == 1
    # the random family: factors u * (1.2 - 1/1.2) + 1/1.2, columns from u0, rows from u1
    lo = 1 / 1.2
    sx, sy = scalar_u(key(6), 2) * (1.2 - lo) + lo
    np.testing.assert_allclose(every_family(True)(key(6), X3)["scale"], scipy_scale(X3, sy, sx),
                               atol=1e-5)


# ----------------------------------------------------------------------------- dsa factory


def test_single_mode_applies_exactly_one_family_per_call():
    x = np.asarray(X3)
    candidates = {"crop": [np_translate(x, dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)],
                  "flip": [x, x[:, :, ::-1]],
                  "cutout": [np_cutout(x, cy, cx, (4, 4)) for cy in range(9) for cx in range(9)]}
    aug = A.dsa("crop_flip_cutout")
    used = set()
    for i in range(16):
        out = np.asarray(aug(key(i), X3))
        hits = {n for n, refs in candidates.items() if any(np.array_equal(out, r) for r in refs)}
        assert hits, i
        if len(hits) == 1:
            used |= hits
    assert used == set(candidates)


def test_all_mode_applies_families_in_order_with_the_documented_draw():
    aug = A.dsa("crop_color", mode="all")
    _, k_params = jax.random.split(key(0))
    u = scalar_u(k_params, 5)  # crop reads columns 0-1, color 2-4
    y = np_translate(np.asarray(X3, np.float64), int(u[0] * 3) - 1, int(u[1] * 3) - 1)
    y = y + (u[2] - 0.5)
    m = y.mean(axis=3, keepdims=True)
    y = (y - m) * (u[3] * 2.0) + m
    m = y.mean(axis=(1, 2, 3), keepdims=True)
    y = (y - m) * (u[4] + 0.5) + m
    np.testing.assert_allclose(aug(key(0), X3), y, atol=1e-5)


def test_params_reach_the_families():
    aug = A.dsa("flip", params=A.DSAParams(prob_flip=1.0))
    np.testing.assert_array_equal(aug(key(0), X3), np.asarray(X3)[:, :, ::-1])
    aug = A.dsa("flip", params=A.DSAParams(prob_flip=0.0))
    np.testing.assert_array_equal(aug(key(0), X3), X3)


def test_factory_is_cached_and_jit_vmap_work_without_retracing():
    assert A.dsa() is A.dsa() and A.parse("dsa") is A.dsa()
    aug = A.dsa("crop_flip")
    traces = []

    def counted(k, x):
        traces.append(1)
        return aug(k, x)

    jitted = jax.jit(counted)
    for i in range(3):
        np.testing.assert_allclose(jitted(key(i), X3), aug(key(i), X3), atol=1e-5)
    assert len(traces) == 1
    xs = np.stack([X3, X3 * 2, X3 - 1])
    batched = np.asarray(jax.vmap(aug)(jnp.stack([key(9), key(10), key(11)]), xs))
    for s in range(3):
        np.testing.assert_allclose(batched[s], aug(key(9 + s), xs[s]), atol=1e-5)


def test_dtype_is_kept():
    out = A.dsa("color_rotate", mode="all")(key(0), X3.astype(jnp.bfloat16))
    assert out.dtype == jnp.bfloat16 and np.isfinite(np.asarray(out, np.float32)).all()
    assert A.brightness(key(0), X3.astype(jnp.float16)).dtype == jnp.float16


def test_none_and_parse():
    assert A.none()(key(0), X3) is X3
    assert A.parse("none")(key(0), X3) is X3
    assert A.parse("dsa:flip_rotate") is A.dsa("flip_rotate")
    assert A.parse("dsa:flip_rotate:all") is A.dsa("flip_rotate", mode="all")
    assert A.parse(f" DSA:{CHEAP} ") is A.dsa(CHEAP)


def test_default_strategy():
    assert A.default_strategy("mnist") == "color_crop_cutout_scale_rotate"
    assert A.default_strategy("digits") == "color_crop_cutout_scale_rotate"
    assert A.default_strategy("SVHN") == "color_crop_cutout_scale_rotate"
    for name in ("cifar10", "CIFAR100", "fashion_mnist", "FashionMNIST", "cifar100_coarse"):
        assert A.default_strategy(name) == "color_crop_cutout_flip_scale_rotate"
    assert set(A.default_strategy("cifar10").split("_")) == set(A.AUGMENTATIONS)
    with pytest.raises(ValueError, match="known"):
        A.default_strategy("imagenet-21k")


@pytest.mark.parametrize("kwargs, match", [
    (dict(strategy="color_foo"), "valid families: color, crop, cutout, flip, scale, rotate"),
    (dict(strategy=""), "empty"),
    (dict(strategy="crop_crop"), "more than once"),
    (dict(mode="S"), "mode"),
    (dict(siamese=1), "siamese"),
    (dict(params=A.DSAParams(prob_flip=1.5)), "prob_flip"),
    (dict(params=A.DSAParams(ratio_scale=0.5)), "ratio_scale"),
    (dict(params=A.DSAParams(ratio_rotate=math.nan)), "ratio_rotate is NaN"),
    (dict(params=A.DSAParams(ratio_crop_pad=-0.1)), "ratio_crop_pad"),
    (dict(params=A.DSAParams(ratio_cutout=2.0)), "ratio_cutout"),
    (dict(params=A.DSAParams(brightness=-1.0)), "brightness"),
    (dict(params=A.DSAParams(saturation="a lot")), "saturation"),
    (dict(params=A.DSAParams(contrast=float("inf"))), "contrast"),
    (dict(params=(0.5, 1.2)), "DSAParams"),
])
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        A.dsa(**kwargs)


def test_all_parameter_problems_reported_at_once():
    with pytest.raises(ValueError) as err:
        A.dsa(params=A.DSAParams(prob_flip=-1.0, contrast=math.nan))
    assert "prob_flip" in str(err.value) and "contrast" in str(err.value)


def test_bad_arguments_to_families_parse_and_images():
    with pytest.raises(ValueError, match="ratio"):
        A.crop(key(0), X3, ratio=1.5)
    with pytest.raises(ValueError, match="prob"):
        A.flip(key(0), X3, prob=math.nan)
    with pytest.raises(ValueError, match="degrees"):
        A.rotate(key(0), X3, degrees=-3.0)
    with pytest.raises(ValueError, match="strength"):
        A.brightness(key(0), X3, strength=-0.1)
    with pytest.raises(ValueError, match="valid families"):
        A.parse("dsa:colour_crop")
    with pytest.raises(ValueError, match="unknown augmentation"):
        A.parse("randaugment")
    with pytest.raises(ValueError, match="mode"):
        A.parse("dsa:crop:both")
    with pytest.raises(ValueError, match="NHWC"):
        A.dsa()(key(0), np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="float"):
        A.dsa()(key(0), np.zeros((2, 8, 8, 3), np.int32))
