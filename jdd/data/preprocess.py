"""Input preprocessing fitted on the TRAIN split and applied identically everywhere else.

Three kinds, all invertible (so distilled images can be shown in pixel space):

* ``"none"``: identity.
* ``"standardize"``: ``(x - mean) / std`` with statistics per channel (images) or per feature.
* ``"zca"``: centre every feature with its train mean, divide by the train std (per channel or per
  feature), then ZCA-whiten with ``W = U diag(1 / sqrt(lam + reg)) U^T``, where ``U, lam`` is the
  eigendecomposition of the (d, d) train covariance ``C = Z^T Z / n`` of the centred, scaled,
  flattened data ``Z`` and ``reg = zca_reg * mean(lam) = zca_reg * trace(C) / d``.

The regularisation follows KIP / neural-tangents and FRePo: their ``zca_reg`` is also relative,
``reg = zca_reg * trace(C) / d``, added to every eigenvalue before the inverse square root.
Differences, on purpose: (1) KIP/FRePo form ``C`` as the uncentred second moment of data that was
standardised per channel only (and optionally per-image "layer-normed"); jdd subtracts the
per-feature train mean first, so ``C`` is a true covariance and the whitened train set has
covariance ``U diag(lam / (lam + reg)) U^T``, exactly the identity as ``zca_reg -> 0`` when ``C`` is
full rank. (2) KIP's "rank control" (inverse square root forced to 1 beyond the first n
eigenvalues when n < d) is not applied; with ``zca_reg > 0`` every eigenvalue is at least ``reg``,
so ``W`` is well defined and invertible, and its inverse ``U diag(sqrt(lam + reg)) U^T`` is stored
too. Scale of the knob: the KIP / neural-tangents helper defaults to ``zca_reg=1e-5``; jdd
defaults to the stronger ``0.1`` used in FRePo-style image pipelines, which keeps the transform
well conditioned when n is small relative to d. Pass ``zca_reg`` explicitly to match a paper.

Everything that is fitted is an array field of :class:`Preprocessor`, so it is saved with a
distilled set (:meth:`Preprocessor.to_arrays`) and the same transform is applied to test data and
to new data later: fitting on test data, or whitening train but not test, are the classic traps.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from flax import struct

from jdd.data.dataset import DataError, Dataset

#: Valid values of ``kind``.
KINDS = ("none", "standardize", "zca")

#: Default key prefix used by :meth:`Preprocessor.to_arrays` / :meth:`Preprocessor.from_arrays`.
PREFIX = "pre_"

# Channels/features whose train std is below this are left unscaled (std := 1), e.g. MNIST's
# always-black border pixels when standardising per feature.
_MIN_STD = 1e-8


@struct.dataclass
class Preprocessor:
    """A fitted, invertible input transform (a pytree: usable inside ``jax.jit``).

    Attributes:
        mean: float32, broadcastable against one example of shape ``feature_shape``
            (e.g. (1, 1, c) per channel, or ``feature_shape`` per feature); None for ``"none"``.
            For ``"zca"`` it is always the per-feature mean (``feature_shape``).
        std: float32, broadcastable like ``mean``; None for ``"none"``.
        zca: (d, d) float32 whitening matrix acting on the right of flattened (n, d) data, with
            d = prod(feature_shape); None unless ``kind == "zca"``.
        zca_inv: (d, d) float32, the exact inverse of ``zca``; None unless ``kind == "zca"``.
        kind: static, one of :data:`KINDS`.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).random((100, 4, 4, 3), dtype=np.float32)
        >>> pre = fit_preprocessor(x, "zca", zca_reg=0.1)
        >>> z = pre.apply(x)
        >>> z.shape, bool(np.allclose(pre.invert(z), x, atol=1e-4))
        ((100, 4, 4, 3), True)
    """

    mean: Any = None
    std: Any = None
    zca: Any = None
    zca_inv: Any = None
    kind: str = struct.field(pytree_node=False, default="none")

    def apply(self, x):
        """Transform inputs.

        Args:
            x: (n, *feature_shape) array (the shape the preprocessor was fitted on).

        Returns:
            (n, *feature_shape) float32 transformed inputs.
        """
        x = jnp.asarray(x, jnp.float32)
        if self.kind == "none":
            return x
        z = (x - self.mean) / self.std
        if self.kind == "zca":
            z = (z.reshape(z.shape[0], -1) @ self.zca).reshape(z.shape)
        return z

    def invert(self, z):
        """Exact inverse of :meth:`apply` (up to float32 rounding), e.g. to visualise images.

        Args:
            z: (n, *feature_shape) transformed inputs.

        Returns:
            (n, *feature_shape) float32 inputs in the original space.
        """
        z = jnp.asarray(z, jnp.float32)
        if self.kind == "none":
            return z
        if self.kind == "zca":
            z = (z.reshape(z.shape[0], -1) @ self.zca_inv).reshape(z.shape)
        return z * self.std + self.mean

    def to_arrays(self, prefix: str = PREFIX) -> dict[str, np.ndarray]:
        """Host arrays to store in an .npz artifact, keys ``prefix + field``.

        Keys: ``pre_kind`` (0-d unicode string), and for the fitted kinds ``pre_mean``,
        ``pre_std``, plus ``pre_zca`` and ``pre_zca_inv`` for ZCA. No pickled objects, so the
        artifact loads with ``allow_pickle=False``.

        Example:
            >>> pre = Preprocessor()
            >>> Preprocessor.from_arrays(pre.to_arrays()).kind
            'none'
        """
        out = {prefix + "kind": np.array(self.kind)}
        for field in ("mean", "std", "zca", "zca_inv"):
            value = getattr(self, field)
            if value is not None:
                out[prefix + field] = np.asarray(value, np.float32)
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any], prefix: str = PREFIX) -> "Preprocessor":
        """Rebuild from :meth:`to_arrays` output (a dict, or an opened .npz with other keys too).

        Raises:
            DataError: missing ``prefix + "kind"``, unknown kind, or missing fitted arrays.
        """
        keys = set(arrays.keys())
        if prefix + "kind" not in keys:
            raise DataError(f"no preprocessor stored: key {prefix + 'kind'!r} missing "
                            f"(found {sorted(keys)}).")
        kind = str(np.asarray(arrays[prefix + "kind"]).item())
        if kind not in KINDS:
            raise DataError(f"stored preprocessor kind {kind!r} is not one of {KINDS}.")
        need = {"none": (), "standardize": ("mean", "std"),
                "zca": ("mean", "std", "zca", "zca_inv")}[kind]
        missing = [prefix + f for f in need if prefix + f not in keys]
        if missing:
            raise DataError(f"stored {kind!r} preprocessor is missing arrays {missing}.")
        fields = {f: jnp.asarray(np.asarray(arrays[prefix + f]), jnp.float32) for f in need}
        return cls(kind=kind, **fields)


def _stat_axes(feature_ndim: int, per_channel: bool) -> tuple[int, ...]:
    # Axes of ONE example (feature_shape) pooled together for the mean/std statistics.
    if per_channel and feature_ndim >= 2:
        return tuple(range(feature_ndim - 1))  # all but the trailing channel axis
    return ()


def _chunks(n: int, size: int = 4096):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _moments(x: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-feature mean, pooled mean and pooled std in float64, in chunks (no float64 copy of x)."""
    n = x.shape[0]
    total = np.zeros(x.shape[1:], np.float64)
    for sl in _chunks(n):
        total += x[sl].sum(axis=0, dtype=np.float64)
    feat_mean = total / n
    pooled_mean = feat_mean.mean(axis=axes, keepdims=True) if axes else feat_mean
    sq = np.zeros(x.shape[1:], np.float64)
    for sl in _chunks(n):
        sq += np.square(x[sl].astype(np.float64) - pooled_mean).sum(axis=0)
    var = sq.mean(axis=axes, keepdims=True) / n if axes else sq / n
    return feat_mean, pooled_mean, np.sqrt(var)


def check_options(kind: str, zca_reg: float) -> None:
    """Raise :class:`DataError` (a ValueError) for an unknown ``kind`` or a ``zca_reg`` that is
    not a finite number >= 0. Called before any data is touched, whatever the kind.
    """
    if not isinstance(kind, str) or kind not in KINDS:
        raise DataError(f"unknown preprocessing kind {kind!r}; valid kinds: {', '.join(KINDS)}.")
    number = (isinstance(zca_reg, (int, float, np.integer, np.floating))
              and not isinstance(zca_reg, bool))
    if not (number and np.isfinite(zca_reg) and zca_reg >= 0):
        raise DataError(f"zca_reg (CLI: --zca-reg) must be a finite number >= 0 (relative ZCA "
                        f"regularisation, e.g. 0.1); got {zca_reg!r}.")


def fit_preprocessor(x, kind: str = "standardize", *, zca_reg: float = 0.1,
                     per_channel: bool = True) -> Preprocessor:
    """Fit a preprocessor on TRAIN inputs (host-side, float64 statistics).

    Args:
        x: (n, *feature_shape) finite training inputs, e.g. (n, h, w, c) images.
        kind: ``"none"``, ``"standardize"`` or ``"zca"`` (see the module docstring).
        zca_reg: relative ZCA regularisation, ``reg = zca_reg * trace(C) / d``; must be >= 0
            (use > 0 when n <= d, else the covariance is singular).
        per_channel: scale (and, for "standardize", centre) with one statistic per channel (the
            last axis) when ``x`` has at least 3 dims; per feature otherwise or when False.
            Channels/features with zero train variance are centred but not scaled (std := 1).

    Returns:
        a :class:`Preprocessor`; apply it to train, test and any later data alike.

    Raises:
        DataError (a ValueError): unknown ``kind`` or a ``zca_reg`` that is negative, NaN or
            inf (checked first, for every kind); fewer than 2 examples, NaN/inf inputs, or a
            singular covariance with ``zca_reg == 0``.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(3.0, 2.0, (500, 6)).astype(np.float32)
        >>> z = fit_preprocessor(x, "standardize").apply(x)
        >>> bool(np.allclose(z.mean(0), 0, atol=1e-5)), bool(np.allclose(z.std(0), 1, atol=1e-4))
        (True, True)
    """
    check_options(kind, zca_reg)
    if kind == "none":
        return Preprocessor(kind="none")
    x = np.asarray(x)
    if x.ndim < 2 or x.shape[0] < 2:
        raise DataError(f"fit_preprocessor needs (n, features...) inputs with n >= 2; got shape "
                        f"{x.shape}.")
    if not np.all(np.isfinite(x)):
        raise DataError("fit_preprocessor: inputs contain NaN/inf values.")
    feat_mean, pooled_mean, std = _moments(x, _stat_axes(x.ndim - 1, per_channel))
    std = np.where(std < _MIN_STD, 1.0, std)
    if kind == "standardize":
        return Preprocessor(mean=jnp.asarray(pooled_mean, jnp.float32),
                            std=jnp.asarray(std, jnp.float32), kind="standardize")

    # ZCA: centre per feature (so the whitened train set is exactly centred), scale, whiten.
    n, d = x.shape[0], int(np.prod(x.shape[1:]))
    cov = np.zeros((d, d), np.float64)
    for sl in _chunks(n):
        z = ((x[sl].astype(np.float64) - feat_mean) / std).reshape(-1, d)
        cov += z.T @ z
    cov /= n
    lam, u = np.linalg.eigh(cov)
    lam = np.clip(lam, 0.0, None)  # eigh can return tiny negatives for a PSD matrix
    reg = zca_reg * float(np.mean(lam))  # = zca_reg * trace(cov) / d
    shifted = lam + reg
    if shifted.min() <= 1e-12 * max(float(shifted.max()), 1e-300):
        raise DataError(f"fit_preprocessor: the train covariance is singular (n={n}, d={d}) and "
                        f"zca_reg={zca_reg}; use zca_reg > 0.")
    zca = (u * (1.0 / np.sqrt(shifted))) @ u.T
    zca_inv = (u * np.sqrt(shifted)) @ u.T
    return Preprocessor(mean=jnp.asarray(feat_mean, jnp.float32), std=jnp.asarray(std, jnp.float32),
                        zca=jnp.asarray(zca, jnp.float32), zca_inv=jnp.asarray(zca_inv, jnp.float32),
                        kind="zca")


def preprocess(train: Dataset, test: Dataset, kind: str = "standardize",
               **kw) -> tuple[Dataset, Dataset, Preprocessor]:
    """Fit on ``train`` and apply the same transform to both splits.

    Args:
        train: the training split (the only data statistics are computed from).
        test: the test split, transformed with the train statistics.
        kind: see :func:`fit_preprocessor`.
        **kw: ``zca_reg``, ``per_channel``, forwarded to :func:`fit_preprocessor`.

    Returns:
        (train', test', preprocessor): datasets with transformed ``x`` (same shapes, labels and
        names), and the fitted :class:`Preprocessor` (save it with the distilled set).

    Raises:
        DataError: unknown ``kind`` or bad ``zca_reg`` (checked before anything else), train and
            test feature shapes that differ; anything :func:`fit_preprocessor` raises.

    Example:
        >>> from jdd.data import load_digits
        >>> train, test = load_digits()
        >>> train_z, test_z, pre = preprocess(train, test, "zca", zca_reg=0.1)
        >>> pre.kind, test_z.x.shape == test.x.shape
        ('zca', True)
    """
    check_options(kind, kw["zca_reg"] if "zca_reg" in kw else 0.0)
    if train.feature_shape != test.feature_shape:
        raise DataError(f"train feature shape {train.feature_shape} differs from test feature "
                        f"shape {test.feature_shape}.")
    pre = fit_preprocessor(np.asarray(train.x), kind, **kw)
    return train.replace(x=pre.apply(train.x)), test.replace(x=pre.apply(test.x)), pre
