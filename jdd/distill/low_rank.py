"""Low-rank synthetic sets (Yang et al., NeurIPS 2023, "An Efficient Dataset Condensation Plugin
and Its Application to Continual Learning"): a :class:`jdd.distill.Parameterization` that stores
every channel of every synthetic image as a product of two thin factors, ``A (h x r) @ B (r x w)``,
decoded to pixels inside the jitted step.

An image channel costs ``r * (h + w)`` numbers instead of ``h * w``, so at the same storage budget
the set holds more images: a budget of ``ipc`` full images per class buys

    n = floor(ipc * h * w / (r * (h + w)))

low-rank images per class (:func:`images_per_class`; e.g. Fashion-MNIST 28 x 28 at rank 2: 7 per
budget image; digits 8 x 8 at rank 2: 2). ``ipc`` everywhere in jdd stays "the storage of ``ipc``
images per class"; the run reports the images it actually holds.

Choices the paper leaves open (each a parameter here):

* the budget counts the factors only; labels (one class id per image, or soft labels) and a learned
  learning rate are counted on top by :mod:`jdd.storage`, as for pixel sets;
* initialisation from real images: each of the ``n`` images of a class starts from a distinct real
  image of that class, truncated to rank ``r`` by its SVD, with the singular values split evenly
  between the factors (``A = U_r sqrt(S_r)``, ``B = sqrt(S_r) V_r^T``) so that neither factor
  starts much larger than the other;
* noise initialisation draws both factors i.i.d. Gaussian, scaled so the decoded pixels have the
  real data's standard deviation.

It composes with every objective that consumes decoded inputs (DC, DSA, DM, MTT, unrolled, KIP);
it does not apply to the closed-form KRR distillation, whose synthetic inputs are the exact
solution of a linear system and cannot be held by rank-``r`` factors in general.

Example:
    >>> import jax, optax
    >>> from jdd.data import load_digits
    >>> from jdd.distill import compose
    >>> from jdd.distill.dm import distribution_matching
    >>> from jdd.models import make_model
    >>> train, _ = load_digits()
    >>> d = compose(low_rank(rank=2), distribution_matching(make_model("convnet", 10)), ipc=1,
    ...             optimizer=optax.sgd(1.0, momentum=0.5))
    >>> s = d.init(jax.random.key(0), train)
    >>> d.synthetic(s).x.shape                  # 2 images per class at a budget of 1
    (20, 8, 8, 1)
    >>> {k: v.shape for k, v in d.stored(s).items()}
    {'a': (20, 1, 8, 2), 'b': (20, 1, 2, 8)}
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jdd.distill.compose import (INITS, Parameterization, _check_ipc_if_concrete, compute_dtype,
                                 labels_of)
from jdd.distill.core import Synthetic, init_per_class


def images_per_class(ipc: int, height: int, width: int, rank: int) -> int:
    """Low-rank images per class at a budget of ``ipc`` full images per class:
    ``floor(ipc * h * w / (r * (h + w)))``.

    Raises:
        ValueError: a non-positive argument, or a rank so large that not even one image fits the
            budget (names the largest rank that does).
    """
    for name, v in (("ipc", ipc), ("height", height), ("width", width), ("rank", rank)):
        if isinstance(v, bool) or int(v) != v or v < 1:
            raise ValueError(f"{name} must be a positive integer; got {v!r}.")
    n = (ipc * height * width) // (rank * (height + width))
    if n < 1:
        biggest = (ipc * height * width) // (height + width)
        raise ValueError(f"rank {rank} stores {rank * (height + width)} numbers per image "
                         f"channel, more than a budget of {ipc} image(s) of {height}x{width} "
                         f"per class allows; expected a rank <= {biggest}.")
    return int(n)


def decode_factors(a: jax.Array, b: jax.Array) -> jax.Array:
    """Images from factors.

    Args:
        a: (m, c, h, r).
        b: (m, c, r, w).

    Returns:
        (m, h, w, c) images ``x[i, :, :, ch] = a[i, ch] @ b[i, ch]``.
    """
    return jnp.einsum("mchr,mcrw->mhwc", a, b)


def svd_factors(x: jax.Array, rank: int) -> tuple[jax.Array, jax.Array]:
    """The rank-``rank`` truncated SVD of every channel of ``x`` (m, h, w, c), as factors
    ``(a (m, c, h, r), b (m, c, r, w))`` with the singular values split evenly
    (``decode_factors(a, b)`` is the best rank-r approximation of ``x`` in Frobenius norm)."""
    u, s, vt = jnp.linalg.svd(jnp.moveaxis(x, -1, 1), full_matrices=False)
    root = jnp.sqrt(s[..., :rank])
    return u[..., :rank] * root[..., None, :], root[..., :, None] * vt[..., :rank, :]


def low_rank(*, rank: int = 2, init: str = "real", labels: str = "hard", label_init: float = 1.0,
             label_scale: float = 1.0, center_labels: bool = False, dtype: Any = None
             ) -> Parameterization:
    """Synthetic images stored as rank-``rank`` factors per channel, class-major, plus labels.

    Args:
        rank: rank ``r`` of every image channel (1 <= r <= min(h, w), and small enough that one
            image fits the budget: see :func:`images_per_class`).
        init: ``"real"`` (the truncated SVD of distinct real images of each class) or ``"noise"``
            (Gaussian factors; decoded pixels with the real data's standard deviation).
        labels: ``"hard"``, ``"softmax"`` or ``"raw"`` (see :func:`jdd.distill.compose.labels_of`).
        label_init: initial logit of the true class with ``labels="softmax"``.
        label_scale: one-hot scale of the targets with ``labels="hard"`` or ``"raw"``.
        center_labels: subtract ``label_scale / k`` from every target entry.
        dtype: dtype of the factors; None follows the real data (at least float32).

    Returns:
        A :class:`jdd.distill.Parameterization` that, for a budget of ``ipc`` images per class,
        holds ``n = images_per_class(ipc, h, w, rank)`` images per class. Learnable params:
        ``{"a": (k * n, c, h, r), "b": (k * n, c, r, w)}`` plus the label params; ``stored``
        returns the two factors.

    Raises:
        ValueError: a bad rank, init or label option (before anything is compiled); at ``init``,
            data that are not images (n, h, w, c), a rank above ``min(h, w)``, or a class with
            fewer than ``n`` examples for the real initialisation.
    """
    if isinstance(rank, bool) or int(rank) != rank or rank < 1:
        raise ValueError(f"rank must be a positive integer; got {rank!r}.")
    rank = int(rank)
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; valid: {', '.join(INITS)}.")
    lab = labels_of(labels, label_init=label_init, label_scale=label_scale,
                    center_labels=center_labels)

    def init_fn(key, data, ipc):
        if data.x.ndim != 4:
            raise ValueError(f"low-rank synthetic sets need image data (n, h, w, c); got inputs "
                             f"of shape {tuple(data.x.shape)}.")
        _, h, w, ch = data.x.shape
        if rank > min(h, w):
            raise ValueError(f"rank {rank} exceeds min(h, w) = {min(h, w)} of {h}x{w} images.")
        n = images_per_class(ipc, h, w, rank)
        k = data.num_classes
        dt = compute_dtype(data, dtype)
        if init == "real":
            from jdd.data.dataset import check_ipc
            _check_ipc_if_concrete(data, n, check_ipc)
            x, c = init_per_class(key, data, n)
            a, b = svd_factors(x.astype(dt), rank)
        else:
            c = jnp.repeat(jnp.arange(k, dtype=jnp.int32), n)
            scale = (jnp.std(data.x).astype(dt) ** 2 / rank) ** 0.25
            ka, kb = jax.random.split(jax.random.fold_in(key, 1))
            a = scale * jax.random.normal(ka, (k * n, ch, h, rank), dt)
            b = scale * jax.random.normal(kb, (k * n, ch, rank, w), dt)
        c = c.astype(jnp.int32)
        label_params, target = lab.init(c, k, dt)
        return {"a": a, "b": b, **label_params}, {"c": c, "y": target}

    def decode(params, fixed):
        return Synthetic(x=decode_factors(params["a"], params["b"]),
                         y=lab.decode(params, fixed["y"]))

    def stored(params):
        return {"a": params["a"], "b": params["b"]}

    return Parameterization(init=init_fn, decode=decode, classes=lambda fixed: fixed["c"],
                            name=f"low-rank[rank {rank}, {labels} labels]", stored=stored)


__all__ = ["decode_factors", "images_per_class", "low_rank", "svd_factors"]
