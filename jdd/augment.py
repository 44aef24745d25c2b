"""Differentiable Siamese Augmentation (DSA; Zhao & Bilen, ICML 2021) as pure JAX functions.

An augmentation is a plain function ``augment(key, x) -> x`` (:data:`Augment`) on a batch of
NHWC images ``x: (n, h, w, c)`` of any float dtype (the dtype is kept). It is differentiable with
respect to ``x``, jit- and vmap-able, and holds no state: all randomness comes from ``key``.

**Siamese.** With ``siamese=True`` (the default) every random parameter is drawn ONCE per call, as a
scalar that does not depend on the batch size, and applied to every image. Calling the same
augmentation with the same key on a real batch of 256 and a synthetic batch of 10 therefore applies
the same transform to both, which is how DSA matches real and synthetic gradients (the official
code gets the same effect by re-seeding torch and copying the first image's parameters to the whole
batch). With ``siamese=False`` each image gets its own parameters (DSA's ``seed=-1`` path, used when
training evaluation models on the distilled set).

**Families** (:data:`AUGMENTATIONS`), as in the official ``DiffAugment`` of
VICO-UoE/DatasetCondensation (``utils.py``), with ``u ~ U[0, 1)``:

* ``color``: :func:`brightness` ``x + (u - 0.5) * 1.0``, then :func:`saturation`
  ``m + (x - m) * (u * 2.0)`` with ``m`` the per-pixel mean over channels, then :func:`contrast`
  ``m + (x - m) * (u + 0.5)`` with ``m`` the per-image mean. On one-channel images (MNIST)
  saturation is the identity, as in the official code;
* ``crop``: integer translation by up to ``round(0.125 * size)`` pixels with zero fill;
* ``cutout``: a zeroed ``round(0.5 * h) x round(0.5 * w)`` square at a random centre;
* ``flip``: left-right flip with probability 0.5;
* ``scale``: independent x and y scale factors in ``[1/1.2, 1.2]`` about the image centre;
* ``rotate``: rotation by an angle in ``[-15, 15]`` degrees about the image centre
  (positive = anticlockwise, like ``np.rot90`` and ``scipy.ndimage.rotate``).

``scale`` and ``rotate`` sample with bilinear interpolation and zero padding beyond the border, with
pixel-centre coordinates: for square images this is exactly torch's
``grid_sample(affine_grid(theta), align_corners=False, padding_mode='zeros')`` used by DSA.

Modes of :func:`dsa`: ``"single"`` (DSA's ``'S'``, its default) picks ONE family per call at random
(the same for the whole batch, also when ``siamese=False``, as in the official code); ``"all"``
(DSA's ``'M'``) applies every family of the strategy in order.

**Where dm-pix is used and where not.** :func:`flip` uses ``pix.flip_left_right`` and
:func:`brightness` ``pix.adjust_brightness``. The rest is written here because dm-pix's versions
compute something else: ``pix.adjust_contrast`` takes the mean per channel (DSA: over the whole
image), ``pix.adjust_saturation`` works in HSV (DSA: deviation from the channel mean), and
``pix.affine_transform`` in ``mode="constant"`` returns the fill value for any sample point outside
``[0, size - 1]`` instead of giving zero weight only to the missing neighbours as torch's zero
padding does (``scipy.ndimage``'s ``"grid-constant"``); the bilinear sampler here has torch's
semantics and is one gather of the four neighbours, cheaper to compile than
``jax.scipy.ndimage.map_coordinates``. :func:`crop` pads and takes a per-image ``dynamic_slice``.
All families take per-image parameters of shape ``(n,)`` internally, so the siamese and per-image
modes share one code path. The public functions are jitted, with strengths, ratios and ``siamese``
as static arguments (Python numbers and bools); they nest in an outer ``jit``/``vmap``/``grad``.

Example:
    >>> import jax, numpy as np
    >>> from jdd import augment
    >>> aug = augment.parse("dsa:crop_flip")          # the same as augment.dsa("crop_flip")
    >>> aug(jax.random.key(0), np.zeros((6, 8, 8, 1), np.float32)).shape
    (6, 8, 8, 1)
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import dm_pix as pix
import jax
import jax.numpy as jnp
from jax import lax

Augment = Callable[[jax.Array, jax.Array], jax.Array]
"""``augment(key, x) -> x`` with ``x: (n, h, w, c)`` float; same shape and dtype out."""

AUGMENTATIONS: tuple[str, ...] = ("color", "crop", "cutout", "flip", "scale", "rotate")
"""Names of the DSA families, joined with ``_`` into a strategy string."""

DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"
"""DSA's strategy for natural images (CIFAR-10/100, Fashion-MNIST)."""

DIGITS_STRATEGY = "color_crop_cutout_scale_rotate"
"""DSA's strategy for digit datasets (MNIST, SVHN): no flip, since a flipped digit is another glyph."""

MODES = ("single", "all")

# Dataset name (lower case, without "_" and "-") -> DSA strategy. The official README says: "use
# color_crop_cutout_flip_scale_rotate for FashionMNIST CIFAR10/100, and color_crop_cutout_scale_rotate
# for the digit datasets (MNIST and SVHN), as flip augmentation is not good for digit datasets".
_DATASET_STRATEGIES = {
    "digits": DIGITS_STRATEGY,
    "mnist": DIGITS_STRATEGY,
    "svhn": DIGITS_STRATEGY,
    "fashionmnist": DEFAULT_STRATEGY,
    "cifar10": DEFAULT_STRATEGY,
    "cifar100": DEFAULT_STRATEGY,
    "cifar100coarse": DEFAULT_STRATEGY,
    "tinyimagenet": DEFAULT_STRATEGY,
    "npz": DEFAULT_STRATEGY,
}


class DSAParams(NamedTuple):
    """Strengths of the DSA families; the defaults are the official ``ParamDiffAug`` values.

    Attributes:
        prob_flip: probability of a left-right flip, in [0, 1].
        ratio_scale: scale factors are drawn from ``[1 / ratio_scale, ratio_scale]``; >= 1.
        ratio_rotate: angles are drawn from ``[-ratio_rotate, ratio_rotate]`` degrees; in [0, 180].
        ratio_crop_pad: maximal translation as a fraction of the image size, in [0, 1].
        ratio_cutout: side of the cutout square as a fraction of the image size, in [0, 1].
        brightness: additive brightness offset is ``(u - 0.5) * brightness``; >= 0.
        saturation: saturation factor is ``u * saturation``; >= 0.
        contrast: contrast factor is ``u + contrast``; >= 0.
    """

    prob_flip: float = 0.5
    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5


# field -> (low, high), both inclusive
_RANGES = {
    "prob_flip": (0.0, 1.0),
    "ratio_scale": (1.0, math.inf),
    "ratio_rotate": (0.0, 180.0),
    "ratio_crop_pad": (0.0, 1.0),
    "ratio_cutout": (0.0, 1.0),
    "brightness": (0.0, math.inf),
    "saturation": (0.0, math.inf),
    "contrast": (0.0, math.inf),
}


def _range_problem(name: str, value, low: float, high: float) -> str | None:
    """Returns a description of what is wrong with ``value``, or None if it is a number in range."""
    if isinstance(value, bool):
        return f"{name}={value!r} is a bool, expected a number in [{low}, {high}]"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return f"{name}={value!r} is not a number, expected one in [{low}, {high}]"
    if math.isnan(v):
        return f"{name} is NaN, expected a number in [{low}, {high}]"
    if math.isinf(v):
        return f"{name}={v} is not finite, expected a number in [{low}, {high}]"
    if not low <= v <= high:
        return f"{name}={v} is out of range, expected a number in [{low}, {high}]"
    return None


def _check_arg(name: str, value, low: float, high: float) -> None:
    """Validates one (static) family argument."""
    problem = _range_problem(name, value, low, high)
    if problem:
        raise ValueError(problem + ".")


def check_params(params: DSAParams) -> DSAParams:
    """Validates every field of ``params`` and reports all problems in one ValueError.

    Args:
        params: the family strengths.

    Returns:
        ``params`` with every field converted to a Python float.

    Raises:
        ValueError: a field is not a number, is NaN or is out of its range (see :class:`DSAParams`).
    """
    if not isinstance(params, DSAParams):
        raise ValueError(f"params must be a DSAParams, got {type(params).__name__}.")
    problems = [p for name, (low, high) in _RANGES.items()
                if (p := _range_problem(name, getattr(params, name), low, high))]
    if problems:
        raise ValueError("invalid DSA parameters: " + "; ".join(problems) + ".")
    return DSAParams(*(float(v) for v in params))


def parse_strategy(strategy: str) -> tuple[str, ...]:
    """Splits a DSA strategy string into family names, checking each.

    Args:
        strategy: family names joined with ``_``, e.g. ``"color_crop_cutout"``.

    Returns:
        The family names in order, e.g. ``("color", "crop", "cutout")``.

    Raises:
        ValueError: the string is empty, names an unknown family or names one twice.
    """
    valid = ", ".join(AUGMENTATIONS)
    if not isinstance(strategy, str) or not strategy.strip():
        raise ValueError(f"empty DSA strategy {strategy!r}; join family names with '_', e.g. "
                         f"{DEFAULT_STRATEGY!r}. Valid families: {valid}.")
    names = tuple(strategy.strip().split("_"))
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation famil{'y' if len(unknown) == 1 else 'ies'} "
                         f"{', '.join(repr(n) for n in unknown)} in strategy {strategy!r}; "
                         f"valid families: {valid} (joined with '_', e.g. {DEFAULT_STRATEGY!r}).")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"strategy {strategy!r} names {', '.join(twice)} more than once; "
                         "list each family at most once.")
    return names


def _check_images(x) -> None:
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"augmentations take a batch of NHWC images x: (n, h, w, c), got shape "
                         f"{getattr(x, 'shape', None)}.")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"augmentations take float images, got dtype {x.dtype}; convert with "
                         "x.astype(jnp.float32).")


def _param_dtype(x: jax.Array):
    """Parameters are drawn in float64 for float64 images and in float32 otherwise."""
    return jnp.float64 if x.dtype == jnp.float64 else jnp.float32


def _uniforms(key: jax.Array, x: jax.Array, k: int, siamese: bool) -> jax.Array:
    """The ``k`` uniforms in [0, 1) a family needs, as ``(n, k)``.

    Siamese: ``jax.random.uniform(key, (k,))``, broadcast to every image, so the draw does not
    depend on the batch size. Per image: ``jax.random.uniform(key, (n, k))``. One draw per call keeps
    the compiled program small (each draw inlines a threefry hash).
    """
    n = x.shape[0]
    if siamese:
        return jnp.broadcast_to(jax.random.uniform(key, (k,), _param_dtype(x)), (n, k))
    return jax.random.uniform(key, (n, k), _param_dtype(x))


def _per_image(v, n: int, dtype) -> jax.Array:
    return jnp.broadcast_to(jnp.asarray(v, dtype), (n,))


def _column(v: jax.Array, dtype) -> jax.Array:
    """(n,) -> (n, 1, 1, 1) in ``dtype``, to broadcast over images."""
    return v.astype(dtype)[:, None, None, None]


def _int_below(u: jax.Array, count: int) -> jax.Array:
    """Uniform integers in ``[0, count)`` from uniforms ``u`` in [0, 1)."""
    return jnp.minimum(jnp.floor(u * count), count - 1).astype(jnp.int32)


# ----------------------------------------------------------------------------- deterministic transforms


def _adjust_brightness(x, delta):
    return pix.adjust_brightness(x, _column(delta, x.dtype))


def _adjust_saturation(x, factor):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    return (x - mean) * _column(factor, x.dtype) + mean


def _adjust_contrast(x, factor):
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    return (x - mean) * _column(factor, x.dtype) + mean


def _translate(x, dy, dx, pad: tuple[int, int]):
    """Zero-filled integer shift via padding and a per-image ``dynamic_slice`` (|shift| <= pad)."""
    _, h, w, c = x.shape
    py, px = pad
    dy, dx = jnp.clip(dy, -py, py), jnp.clip(dx, -px, px)
    padded = jnp.pad(x, ((0, 0), (py, py), (px, px), (0, 0)))
    return jax.vmap(lambda im, a, b: lax.dynamic_slice(im, (py - a, px - b, jnp.zeros_like(a)),
                                                      (h, w, c)))(padded, dy, dx)


def _cutout_at(x, cy, cx, size: tuple[int, int]):
    _, h, w, _ = x.shape
    top, left = cy - size[0] // 2, cx - size[1] // 2
    r, c = jnp.arange(h)[None, :], jnp.arange(w)[None, :]
    in_r = (r >= top[:, None]) & (r < top[:, None] + size[0])       # (n, h)
    in_c = (c >= left[:, None]) & (c < left[:, None] + size[1])      # (n, w)
    keep = ~(in_r[:, :, None] & in_c[:, None, :])                    # (n, h, w)
    return x * keep[..., None].astype(x.dtype)


def _flip_where(x, do):
    return jnp.where(do[:, None, None, None], pix.flip_left_right(x), x)


def _resample(x: jax.Array, matrix: jax.Array) -> jax.Array:
    """Bilinear pull-resampling about the image centre with zero padding.

    Output pixel ``p = (row, col)`` takes the input at ``matrix @ (p - centre) + centre`` with
    ``centre = ((h - 1) / 2, (w - 1) / 2)``; each of the four neighbours that lies outside the image
    counts as 0 (torch's ``padding_mode='zeros'``, scipy's ``'grid-constant'``). Written as one
    gather of the four neighbours from the zero-padded, flattened batch, which compiles much faster
    than ``jax.scipy.ndimage.map_coordinates`` vmapped over images and channels (same values).

    Args:
        x: (n, h, w, c) float images.
        matrix: (n, 2, 2) in (row, col) coordinates.

    Returns:
        (n, h, w, c), dtype of ``x``.
    """
    n, h, w, c = x.shape
    dt = matrix.dtype
    cy, cx = (h - 1) / 2, (w - 1) / 2
    gy = (jnp.arange(h, dtype=dt) - cy)[None, :, None]                          # (1, h, 1)
    gx = (jnp.arange(w, dtype=dt) - cx)[None, None, :]                          # (1, 1, w)
    m = matrix[:, :, :, None, None]                                             # (n, 2, 2, 1, 1)
    rows = m[:, 0, 0] * gy + m[:, 0, 1] * gx + cy                               # (n, h, w)
    cols = m[:, 1, 0] * gy + m[:, 1, 1] * gx + cx
    # far-away points only meet zeros: clip first so the integer conversion cannot overflow
    rows, cols = jnp.clip(rows, -2, h + 1), jnp.clip(cols, -2, w + 1)
    r0, c0 = jnp.floor(rows), jnp.floor(cols)
    fr, fc = rows - r0, cols - c0
    r0, c0 = r0.astype(jnp.int32), c0.astype(jnp.int32)
    # Gather the four neighbours from the image padded with one ring of zeros: clipping a corner
    # into [-1, size] then lands outside neighbours on the zero ring.
    rr = jnp.clip(jnp.stack([r0, r0, r0 + 1, r0 + 1], -1), -1, h) + 1          # (n, h, w, 4)
    cc = jnp.clip(jnp.stack([c0, c0 + 1, c0, c0 + 1], -1), -1, w) + 1
    weight = jnp.stack([(1 - fr) * (1 - fc), (1 - fr) * fc, fr * (1 - fc), fr * fc], -1)
    index = jnp.arange(n)[:, None, None, None] * ((h + 2) * (w + 2)) + rr * (w + 2) + cc
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).reshape(-1, c)
    values = jnp.take(padded, index.reshape(-1), axis=0, mode="clip").reshape(n, h, w, 4, c)
    # elementwise products, not einsum: accelerators may run f32 matmuls at reduced precision
    out = jnp.sum(weight[..., None] * values, axis=3)
    return out.astype(x.dtype)


def _scale_by(x, sy, sx):
    zero = jnp.zeros_like(sy)
    return _resample(x, jnp.stack([jnp.stack([sy, zero], -1), jnp.stack([zero, sx], -1)], -2))


def _rotate_by(x, degrees):
    theta = jnp.deg2rad(degrees)
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    # input (row, col) - centre = [[cos, sin], [-sin, cos]] @ (output (row, col) - centre)
    return _resample(x, jnp.stack([jnp.stack([cos, sin], -1), jnp.stack([-sin, cos], -1)], -2))


@jax.jit
def translate(x: jax.Array, dy, dx) -> jax.Array:
    """Shifts images by whole pixels with zero fill: ``out[i, r, s] = x[i, r - dy[i], s - dx[i]]``.

    Args:
        x: (n, h, w, c) float images.
        dy: integer shift down (negative: up), scalar or (n,).
        dx: integer shift right (negative: left), scalar or (n,).

    Returns:
        (n, h, w, c) images, dtype of ``x``; pixels shifted in from outside are 0.
    """
    _check_images(x)
    n, h, w, _ = x.shape
    return _translate(x, _per_image(dy, n, jnp.int32), _per_image(dx, n, jnp.int32), (h, w))


@functools.partial(jax.jit, static_argnames=("size",))
def cutout_at(x: jax.Array, cy, cx, size: tuple[int, int]) -> jax.Array:
    """Zeroes a ``size`` rectangle centred at ``(cy, cx)`` (DSA's convention), clipped to the image.

    The rectangle covers rows ``[cy - size[0] // 2, cy - size[0] // 2 + size[0])`` and the
    analogous columns.

    Args:
        x: (n, h, w, c) float images.
        cy: integer centre row, scalar or (n,).
        cx: integer centre column, scalar or (n,).
        size: (height, width) of the rectangle in pixels. Static.

    Returns:
        (n, h, w, c) images, dtype of ``x``.
    """
    _check_images(x)
    n = x.shape[0]
    return _cutout_at(x, _per_image(cy, n, jnp.int32), _per_image(cx, n, jnp.int32), tuple(size))


@jax.jit
def scale_by(x: jax.Array, sy, sx) -> jax.Array:
    """Scales images about their centre: output pixel ``p`` samples the input at ``s * (p - c) + c``.

    A factor above 1 samples a larger region, so the content shrinks (DSA's convention, as with
    torch's ``affine_grid``). Bilinear interpolation, zero padding.

    Args:
        x: (n, h, w, c) float images.
        sy: row (vertical) factor, scalar or (n,); 1 is the identity.
        sx: column (horizontal) factor, scalar or (n,).

    Returns:
        (n, h, w, c) images, dtype of ``x``.
    """
    _check_images(x)
    n, dt = x.shape[0], _param_dtype(x)
    return _scale_by(x, _per_image(sy, n, dt), _per_image(sx, n, dt))


@jax.jit
def rotate_by(x: jax.Array, degrees) -> jax.Array:
    """Rotates images about their centre by ``degrees`` (positive: anticlockwise).

    Same convention as ``np.rot90`` (``degrees=90`` equals ``np.rot90(x, 1, axes=(1, 2))``) and
    ``scipy.ndimage.rotate``. For square images this is DSA's torch ``affine_grid`` rotation exactly;
    for non-square images it is a rigid rotation in pixels (torch's rotates normalised coordinates,
    which also shears). Bilinear interpolation, zero padding.

    Args:
        x: (n, h, w, c) float images.
        degrees: angle, scalar or (n,).

    Returns:
        (n, h, w, c) images, dtype of ``x``.
    """
    _check_images(x)
    return _rotate_by(x, _per_image(degrees, x.shape[0], _param_dtype(x)))


# ----------------------------------------------------------------------------- the DSA families
#
# Each family is (number of uniforms it needs, apply(x, u: (n, k), strength) -> x). The public
# random functions draw u with _uniforms and apply; dsa draws once for all families of a call.


def _apply_color(x, u, p: DSAParams):
    x = _adjust_brightness(x, (u[:, 0] - 0.5) * p.brightness)
    x = _adjust_saturation(x, u[:, 1] * p.saturation)
    return _adjust_contrast(x, u[:, 2] + p.contrast)


def _apply_crop(x, u, p: DSAParams):
    _, h, w, _ = x.shape
    sy, sx = int(h * p.ratio_crop_pad + 0.5), int(w * p.ratio_crop_pad + 0.5)
    dy = _int_below(u[:, 0], 2 * sy + 1) - sy
    dx = _int_below(u[:, 1], 2 * sx + 1) - sx
    return _translate(x, dy, dx, (sy, sx))


def _apply_cutout(x, u, p: DSAParams):
    _, h, w, _ = x.shape
    size = (int(h * p.ratio_cutout + 0.5), int(w * p.ratio_cutout + 0.5))
    cy = _int_below(u[:, 0], h + 1 - size[0] % 2)
    cx = _int_below(u[:, 1], w + 1 - size[1] % 2)
    return _cutout_at(x, cy, cx, size)


def _apply_flip(x, u, p: DSAParams):
    return _flip_where(x, u[:, 0] < p.prob_flip)


def _apply_scale(x, u, p: DSAParams):
    lo = 1.0 / p.ratio_scale
    sx = u[:, 0] * (p.ratio_scale - lo) + lo
    sy = u[:, 1] * (p.ratio_scale - lo) + lo
    return _scale_by(x, sy, sx)


def _apply_rotate(x, u, p: DSAParams):
    return _rotate_by(x, (u[:, 0] - 0.5) * (2.0 * p.ratio_rotate))


_FAMILIES = {  # name -> (uniforms per image, apply)
    "color": (3, _apply_color),
    "crop": (2, _apply_crop),
    "cutout": (2, _apply_cutout),
    "flip": (1, _apply_flip),
    "scale": (2, _apply_scale),
    "rotate": (1, _apply_rotate),
}


def _random_family(name: str, key, x, siamese: bool, p: DSAParams):
    _check_images(x)
    k, apply = _FAMILIES[name]
    return apply(x, _uniforms(key, x, k, siamese), p)



@functools.partial(jax.jit, static_argnames=("strength", "siamese"))
def brightness(key: jax.Array, x: jax.Array, *, strength: float = 1.0,
               siamese: bool = True) -> jax.Array:
    """Random brightness: ``x + (u - 0.5) * strength`` (``pix.adjust_brightness``).

    Args:
        key: PRNG key; ``u = jax.random.uniform(key, (1,))[0]`` if siamese, else
            ``jax.random.uniform(key, (n, 1))[:, 0]``.
        x: (n, h, w, c) float images.
        strength: width of the offset's range (DSA: 1.0); >= 0. Static.
        siamese: one ``u`` for the whole batch (independent of ``n``); else one per image.

    Returns:
        (n, h, w, c) images, dtype of ``x``.
    """
    _check_images(x)
    _check_arg("strength", strength, 0.0, math.inf)
    return _adjust_brightness(x, (_uniforms(key, x, 1, siamese)[:, 0] - 0.5) * strength)


@functools.partial(jax.jit, static_argnames=("strength", "siamese"))
def saturation(key: jax.Array, x: jax.Array, *, strength: float = 2.0,
               siamese: bool = True) -> jax.Array:
    """Random saturation: ``m + (x - m) * (u * strength)``, ``m`` the per-pixel mean over channels.

    Written here rather than with ``pix.adjust_saturation`` (which works in HSV) to keep DSA's
    formula. On one-channel images ``x == m`` and this is the identity.

    Args:
        key: PRNG key; ``u`` drawn as in :func:`brightness`.
        x: (n, h, w, c) float images.
        strength: the factor is drawn from ``[0, strength)`` (DSA: 2.0); >= 0. Static.
        siamese: one ``u`` for the whole batch; else one per image.

    Returns:
        (n, h, w, c) images, dtype of ``x``.
    """
    _check_images(x)
    _check_arg("strength", strength, 0.0, math.inf)
    return _adjust_saturation(x, _uniforms(key, x, 1, siamese)[:, 0] * strength)


@functools.partial(jax.jit, static_argnames=("strength", "siamese"))
def contrast(key: jax.Array, x: jax.Array, *, strength: float = 0.5,
             siamese: bool = True) -> jax.Array:
    """Random contrast: ``m + (x - m) * (u + strength)``, ``m`` the mean of each image (h, w and c).

    Written here rather than with ``pix.adjust_contrast``, whose mean is per channel.

    Args:
        key: PRNG key; ``u`` drawn as in :func:`brightness`.
        x: (n, h, w, c) float images.
        strength: the factor is drawn from ``[strength, strength + 1)`` (DSA: 0.5); >= 0. Static.
        siamese: one ``u`` for the whole batch; else one per image.

    Returns:
        (n, h, w, c) images, dtype of ``x``.
    """
    _check_images(x)
    _check_arg("strength", strength, 0.0, math.inf)
    return _adjust_contrast(x, _uniforms(key, x, 1, siamese)[:, 0] + strength)


@functools.partial(jax.jit, static_argnames=("brightness", "saturation", "contrast", "siamese"))
def color(key: jax.Array, x: jax.Array, *, brightness: float = 1.0, saturation: float = 2.0,
          contrast: float = 0.5, siamese: bool = True) -> jax.Array:
    """DSA's ``color`` family: brightness, then saturation, then contrast (see those functions).

    Args:
        key: PRNG key; ``u = jax.random.uniform(key, (3,))`` if siamese (else ``(n, 3)``), whose
            columns drive brightness, saturation and contrast in that order.
        x: (n, h, w, c) float images.
        brightness: strength of the brightness step (DSA: 1.0). Static.
        saturation: strength of the saturation step (DSA: 2.0). Static.
        contrast: strength of the contrast step (DSA: 0.5). Static.
        siamese: shared parameters for the whole batch; else per image.

    Returns:
        (n, h, w, c) images, dtype of ``x``.
    """
    for name, v in (("brightness", brightness), ("saturation", saturation), ("contrast", contrast)):
        _check_arg(name, v, 0.0, math.inf)
    p = DSAParams(brightness=brightness, saturation=saturation, contrast=contrast)
    return _random_family("color", key, x, siamese, p)


@functools.partial(jax.jit, static_argnames=("ratio", "siamese"))
def crop(key: jax.Array, x: jax.Array, *, ratio: float = 0.125, siamese: bool = True) -> jax.Array:
    """DSA's ``crop``: zero-pad by ``round(ratio * size)`` and crop back, i.e. a random translation.

    The shifts are integers ``dy`` in ``[-sy, sy]`` and ``dx`` in ``[-sx, sx]``, uniformly, with
    ``sy = int(ratio * h + 0.5)`` and ``sx = int(ratio * w + 0.5)``: ``dy = floor(u0 * (2 sy + 1)) - sy``
    from ``u = jax.random.uniform(key, (2,))`` (``(n, 2)`` per image); see :func:`translate`.

    Args:
        key: PRNG key.
        x: (n, h, w, c) float images.
        ratio: maximal shift as a fraction of the size (DSA: 0.125); in [0, 1]. Static.
        siamese: one shift for the whole batch; else one per image.

    Returns:
        (n, h, w, c) images, dtype of ``x``.
    """
    _check_arg("ratio", ratio, 0.0, 1.0)
    return _random_family("crop", key, x, siamese, DSAParams(ratio_crop_pad=ratio))


@functools.partial(jax.jit, static_argnames=("ratio", "siamese"))
def cutout(key: jax.Array, x: jax.Array, *, ratio: float = 0.5, siamese: bool = True) -> jax.Array:
    """DSA's ``cutout``: zero a ``(int(ratio * h + 0.5), int(ratio * w + 0.5))`` rectangle.

    Its centre row is uniform in ``[0, h + 1 - side_h % 2)`` (likewise the column), as in DSA, from
    ``u = jax.random.uniform(key, (2,))`` (``(n, 2)`` per image); see :func:`cutout_at`.

    Args:
        key: PRNG key.
        x: (n, h, w, c) float images.
        ratio: side of the square as a fraction of the size (DSA: 0.5); in [0, 1]. Static.
        siamese: one square for the whole batch; else one per image.

    Returns:
        (n, h, w, c) images, dtype of ``x``.
    """
    _check_arg("ratio", ratio, 0.0, 1.0)
    return _random_family("cutout", key, x, siamese, DSAParams(ratio_cutout=ratio))


@functools.partial(jax.jit, static_argnames=("prob", "siamese"))
def flip(key: jax.Array, x: jax.Array, *, prob: float = 0.5, siamese: bool = True) -> jax.Array:
    """DSA's ``flip``: a left-right flip (``pix.flip_left_right``) where ``u < prob``.

    Args:
        key: PRNG key; ``u`` drawn as in :func:`brightness`.
        x: (n, h, w, c) float images.
        prob: probability of a flip (DSA: 0.5); in [0, 1]. Static.
        siamese: one decision for the whole batch; else one per image.

    Returns:
        (n, h, w, c) images, dtype of ``x``.
    """
    _check_arg("prob", prob, 0.0, 1.0)
    return _random_family("flip", key, x, siamese, DSAParams(prob_flip=prob))


@functools.partial(jax.jit, static_argnames=("ratio", "siamese"))
def scale(key: jax.Array, x: jax.Array, *, ratio: float = 1.2, siamese: bool = True) -> jax.Array:
    """DSA's ``scale``: independent column and row factors in ``[1 / ratio, ratio]``.

    With ``u = jax.random.uniform(key, (2,))`` (``(n, 2)`` per image):
    ``sx = u0 * (ratio - 1 / ratio) + 1 / ratio`` (columns) and ``sy`` likewise from ``u1``;
    see :func:`scale_by`.

    Args:
        key: PRNG key.
        x: (n, h, w, c) float images.
        ratio: maximal factor (DSA: 1.2); >= 1, where 1 is the identity. Static.
        siamese: one pair of factors for the whole batch; else one per image.

    Returns:
        (n, h, w, c) images, dtype of ``x``.
    """
    _check_arg("ratio", ratio, 1.0, math.inf)
    return _random_family("scale", key, x, siamese, DSAParams(ratio_scale=ratio))


@functools.partial(jax.jit, static_argnames=("degrees", "siamese"))
def rotate(key: jax.Array, x: jax.Array, *, degrees: float = 15.0,
           siamese: bool = True) -> jax.Array:
    """DSA's ``rotate``: by ``(u - 0.5) * 2 * degrees`` degrees; see :func:`rotate_by`.

    Args:
        key: PRNG key; ``u`` drawn as in :func:`brightness`.
        x: (n, h, w, c) float images.
        degrees: maximal absolute angle (DSA: 15.0); in [0, 180]. Static.
        siamese: one angle for the whole batch; else one per image.

    Returns:
        (n, h, w, c) images, dtype of ``x``.
    """
    _check_arg("degrees", degrees, 0.0, 180.0)
    return _random_family("rotate", key, x, siamese, DSAParams(ratio_rotate=degrees))


# ----------------------------------------------------------------------------- factories


def dsa(strategy: str = DEFAULT_STRATEGY, *, mode: str = "single", siamese: bool = True,
        params: DSAParams = DSAParams()) -> Augment:
    """Builds a Differentiable Siamese Augmentation ``augment(key, x) -> x``.

    Every argument is checked here, before anything is traced. The returned function is jitted
    (calls with equal arguments return the same function, so they share compiled code). It splits
    ``key`` into a choice key and a parameter key and draws all the uniforms of the call at once
    from the parameter key (shape ``(k,)`` if siamese, ``(n, k)`` per image). In ``"single"`` mode the
    choice key picks one family uniformly (``jax.random.randint``, then ``lax.switch``, so it jits
    and vmaps) and that family reads the first of the uniforms; in ``"all"`` mode the families are
    applied in the order of ``strategy``, each reading its own consecutive columns.

    Args:
        strategy: family names from :data:`AUGMENTATIONS` joined with ``_`` (DSA's default
            ``"color_crop_cutout_flip_scale_rotate"``; see :func:`default_strategy` per dataset).
        mode: ``"single"`` (DSA ``'S'``): one random family per call; ``"all"`` (DSA ``'M'``): all.
        siamese: True: one set of parameters per call, shared by every image and independent of the
            batch size, so the same key transforms a real and a synthetic batch identically.
            False: independent parameters per image (for training evaluation models).
        params: family strengths (defaults: DSA's ``ParamDiffAug``).

    Returns:
        ``augment(key, x)`` with ``x: (n, h, w, c)`` float, returning the same shape and dtype.

    Raises:
        ValueError: unknown or repeated family, empty strategy, unknown mode, or a parameter that is
            not a number, is NaN or infinite, or is out of range.

    Example:
        >>> import jax, numpy as np
        >>> aug = dsa("crop_flip")                       # one of the two per call, DSA's mode 'S'
        >>> real = np.arange(6 * 8 * 8, dtype=np.float32).reshape(6, 8, 8, 1)
        >>> syn = np.ones((2, 8, 8, 1), np.float32)
        >>> key = jax.random.key(0)
        >>> both = aug(key, np.concatenate([real, syn]))  # one transform for all 8 images
        >>> bool((both[:6] == aug(key, real)).all())      # the same as for the real batch alone
        True
    """
    names = parse_strategy(strategy)
    if mode not in MODES:
        raise ValueError(f"unknown DSA mode {mode!r}; valid modes: 'single' (one random family per "
                         "call, DSA's 'S') or 'all' (every family, DSA's 'M').")
    if not isinstance(siamese, bool):
        raise ValueError(f"siamese must be True or False, got {siamese!r}.")
    return _build(names, mode, siamese, check_params(params))


@functools.lru_cache(maxsize=64)
def _build(names: tuple[str, ...], mode: str, siamese: bool, params: DSAParams) -> Augment:
    """The jitted augmentation; cached, so equal arguments to :func:`dsa` share compiled code."""
    sizes = [_FAMILIES[n][0] for n in names]
    applies = [_FAMILIES[n][1] for n in names]

    def augment(key: jax.Array, x: jax.Array) -> jax.Array:
        _check_images(x)
        k_choice, k_params = jax.random.split(key)
        if mode == "all":
            u = _uniforms(k_params, x, sum(sizes), siamese)
            start = 0
            for k, apply in zip(sizes, applies):
                x = apply(x, u[:, start:start + k], params)
                start += k
            return x
        u = _uniforms(k_params, x, max(sizes), siamese)
        if len(applies) == 1:
            return applies[0](x, u, params)
        index = jax.random.randint(k_choice, (), 0, len(applies))
        branches = [lambda x, u, a=a, k=k: a(x, u[:, :k], params) for a, k in zip(applies, sizes)]
        return lax.switch(index, branches, x, u)

    augment.__doc__ = (f"DSA augment(key, x) -> x: strategy={'_'.join(names)!r}, mode={mode!r}, "
                       f"siamese={siamese}, params={params}.")
    f = jax.jit(augment)
    # the name learners and metrics.json show (jdd.evaluate.augment_name)
    f.name = (f"dsa({'_'.join(names)}, {mode}, "
              f"{'siamese' if siamese else 'per-image'})")
    return f


def none() -> Augment:
    """The identity augmentation ``(key, x) -> x``."""

    def augment(key: jax.Array, x: jax.Array) -> jax.Array:
        del key
        return x

    return augment


def default_strategy(dataset: str) -> str:
    """DSA's strategy for a dataset: no ``flip`` for digits, all six families otherwise.

    Following the official README (VICO-UoE/DatasetCondensation): ``color_crop_cutout_scale_rotate``
    for MNIST and SVHN ("flip augmentation is not good for digit datasets") and
    ``color_crop_cutout_flip_scale_rotate`` for Fashion-MNIST and CIFAR-10/100. jdd's bundled
    ``digits`` counts as a digit dataset; ``npz`` (user data) gets the full strategy. ``color`` stays
    for one-channel data, where its saturation step is the identity.

    Args:
        dataset: dataset name, case-insensitive, ``_``/``-`` ignored (``"fashion_mnist"``,
            ``"FashionMNIST"``).

    Returns:
        The strategy string for :func:`dsa`.

    Raises:
        ValueError: unknown dataset name.

    Example:
        >>> default_strategy("mnist")
        'color_crop_cutout_scale_rotate'
    """
    key = str(dataset).lower().replace("_", "").replace("-", "")
    if key not in _DATASET_STRATEGIES:
        raise ValueError(f"no default DSA strategy for dataset {dataset!r}; known: "
                         f"{', '.join(sorted(_DATASET_STRATEGIES))}. Pass a strategy explicitly, "
                         f"e.g. dsa({DEFAULT_STRATEGY!r}).")
    return _DATASET_STRATEGIES[key]


def parse(spec: str) -> Augment:
    """Builds an augmentation from a string (for command lines and config files).

    Args:
        spec: ``"none"``; ``"dsa"`` (DSA's default strategy); ``"dsa:STRATEGY"``, e.g.
            ``"dsa:color_crop"``; or ``"dsa:STRATEGY:MODE"`` with MODE ``single`` or ``all``.

    Returns:
        The augmentation.

    Raises:
        ValueError: an unknown kind, family or mode (the message lists the valid ones).
    """
    if not isinstance(spec, str):
        raise ValueError(f"augmentation spec must be a string, got {spec!r}.")
    parts = spec.strip().split(":")
    kind = parts[0].lower()
    if kind == "none" and len(parts) == 1:
        return none()
    if kind == "dsa" and len(parts) <= 3:
        strategy = parts[1] if len(parts) > 1 else DEFAULT_STRATEGY
        mode = parts[2] if len(parts) > 2 else "single"
        return dsa(strategy, mode=mode)
    raise ValueError(f"unknown augmentation {spec!r}; expected 'none', 'dsa', 'dsa:STRATEGY' or "
                     f"'dsa:STRATEGY:MODE' with STRATEGY family names from {', '.join(AUGMENTATIONS)} "
                     "joined with '_' and MODE 'single' or 'all'.")


__all__ = ["AUGMENTATIONS", "Augment", "DEFAULT_STRATEGY", "DIGITS_STRATEGY", "DSAParams", "MODES",
           "brightness", "check_params", "color", "contrast", "crop", "cutout", "cutout_at",
           "default_strategy", "dsa", "flip", "none", "parse", "parse_strategy", "rotate",
           "rotate_by", "saturation", "scale", "scale_by", "translate"]
