"""The Dataset pytree and input validation shared by every loader and method.

A :class:`Dataset` is a flax struct dataclass: ``x`` and ``y`` are array leaves (so a Dataset
passes through ``jax.jit`` / ``jax.vmap`` / ``jax.tree.map``), ``num_classes`` and ``name`` are
static metadata (changing them retraces, which is what we want: they fix shapes).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


class DataError(ValueError):
    """Raised for bad user data: wrong shapes, labels out of range, NaN/inf, missing files."""


@struct.dataclass
class Dataset:
    """A supervised dataset.

    Attributes:
        x: (n, *feature_shape) float32 inputs. Images are NHWC: (n, h, w, c).
        y: (n,) int32 class labels in [0, num_classes).
        num_classes: number of classes (static).
        name: a human-readable name (static), e.g. ``"digits/train"``.

    Example:
        >>> import numpy as np
        >>> ds = Dataset.from_arrays(np.zeros((4, 8, 8, 1)), np.array([0, 1, 0, 1]), 2, "toy")
        >>> ds.n, ds.feature_shape
        (4, (8, 8, 1))
    """

    x: Any
    y: Any
    num_classes: int = struct.field(pytree_node=False, default=0)
    name: str = struct.field(pytree_node=False, default="dataset")

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.x.shape[1:])

    @classmethod
    def from_arrays(cls, x, y, num_classes: int | None = None, name: str = "dataset") -> "Dataset":
        """Validate host arrays and build a Dataset (float32 inputs, int32 labels).

        Args:
            x: (n, ...) array-like of finite numbers.
            y: (n,) array-like of integer labels.
            num_classes: number of classes; inferred as ``max(y) + 1`` when None.
            name: dataset name.

        Raises:
            DataError: on shape mismatch, non-integer or out-of-range labels, NaN/inf inputs.
        """
        x = np.asarray(x)
        y = np.asarray(y)
        check_arrays(x, y, num_classes, name)
        if num_classes is None:
            num_classes = int(np.max(y)) + 1
        return cls(x=jnp.asarray(x, jnp.float32), y=jnp.asarray(y, jnp.int32),
                   num_classes=int(num_classes), name=name)

    def one_hot(self, dtype=jnp.float32):
        """(n, num_classes) one-hot labels."""
        return jax.nn.one_hot(self.y, self.num_classes, dtype=dtype)

    def take(self, idx) -> "Dataset":
        """Subset by an index array (works under jit when ``idx`` has static length)."""
        return self.replace(x=self.x[idx], y=self.y[idx])

    def class_counts(self) -> np.ndarray:
        """(num_classes,) int: number of examples per class (host-side)."""
        return np.bincount(np.asarray(self.y), minlength=self.num_classes)


#: Largest number of classes a dataset may have (given or inferred as ``max label + 1``). It
#: bounds the (n, num_classes) one-hot label matrix: a stray label such as 1e9 would otherwise
#: ask for gigabytes before failing.
MAX_CLASSES = 100_000


def _is_whole(v) -> bool:
    if isinstance(v, (bool, np.bool_)):
        return False
    try:
        return bool(np.isfinite(float(v))) and float(v) == int(v)
    except (TypeError, ValueError, OverflowError):
        return False


def check_arrays(x: np.ndarray, y: np.ndarray, num_classes: int | None, name: str) -> None:
    """Raise one clear :class:`DataError` if (x, y) is not a valid labelled dataset.

    Checks, cheapest first and before anything is converted or allocated per class: ``x`` is
    (n, features...) real numbers without NaN/inf, ``y`` is (n,) integer-valued (an integer dtype,
    or floats that are whole numbers), ``0 <= y < num_classes`` and ``2 <= num_classes <=``
    :data:`MAX_CLASSES` (when ``num_classes`` is None it is taken as ``max(y) + 1``).
    """
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim < 2:
        raise DataError(f"{name}: inputs must have shape (n, features...) with n examples; "
                        f"got shape {x.shape}.")
    if y.ndim != 1:
        raise DataError(f"{name}: labels must have shape (n,); got shape {y.shape}"
                        + (" (use y.reshape(-1))." if y.ndim == 2 and y.shape[-1] == 1 else "."))
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{name}: {x.shape[0]} inputs but {y.shape[0]} labels; they must match.")
    if x.shape[0] == 0:
        raise DataError(f"{name}: the dataset is empty.")
    if num_classes is not None:
        if not _is_whole(num_classes):
            raise DataError(f"{name}: num_classes must be an integer; got {num_classes!r}.")
        if num_classes < 2:
            raise DataError(f"{name}: num_classes must be >= 2; got {num_classes}.")
        if num_classes > MAX_CLASSES:
            raise DataError(f"{name}: num_classes={num_classes} is more than the supported "
                            f"{MAX_CLASSES} classes.")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise DataError(f"{name}: inputs must be real numbers; got dtype {x.dtype}.")
    if not np.all(np.isfinite(x)):
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        raise DataError(f"{name}: inputs contain {bad} NaN/inf values; clean or impute them first.")
    if np.issubdtype(y.dtype, np.floating):
        finite = np.isfinite(y)
        if not np.all(finite):
            bad = int(y.size - np.count_nonzero(finite))
            raise DataError(f"{name}: labels must be integers; found {bad} NaN/inf labels "
                            f"(dtype {y.dtype}).")
        frac = y != np.round(y)
        if np.any(frac):
            raise DataError(f"{name}: labels must be integers; found non-integer value "
                            f"{y[np.argmax(frac)].item()!r} (dtype {y.dtype}).")
    elif not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{name}: labels must be integers; got dtype {y.dtype}.")
    lo, hi = int(np.min(y)), int(np.max(y))
    if lo < 0:
        raise DataError(f"{name}: labels must be >= 0 (class indices 0..k-1); found {lo}.")
    if num_classes is not None:
        if hi >= num_classes:
            raise DataError(f"{name}: labels must be in [0, {num_classes}); found {hi}.")
    elif hi >= MAX_CLASSES:
        raise DataError(f"{name}: labels must be class indices in [0, num_classes) with at most "
                        f"{MAX_CLASSES} classes; found label {hi}. Map them to 0..k-1 first, "
                        f"e.g. np.unique(y, return_inverse=True)[1].")


def stratified_split(key: jax.Array, ds: Dataset, fraction: float,
                     names: tuple[str, str] | None = None) -> tuple[Dataset, Dataset]:
    """Split a dataset into two stratified parts (e.g. train/validation).

    Args:
        key: PRNG key.
        ds: the dataset (host-side split; not for use inside jit).
        fraction: fraction of each class that goes to the second part, in (0, 1).
        names: optional names of the two parts.

    Returns:
        (first, second) datasets; every class keeps at least one example in each part when it has two.
        The second part is exactly the rows :func:`stratified_mask` marks for the same key.
    """
    held = np.asarray(stratified_mask(key, ds.y, ds.num_classes, fraction))
    first, second = np.flatnonzero(~held), np.flatnonzero(held)
    n1, n2 = names or (f"{ds.name}/a", f"{ds.name}/b")
    return (ds.replace(x=ds.x[first], y=ds.y[first], name=n1),
            ds.replace(x=ds.x[second], y=ds.y[second], name=n2))


def stratified_mask(key: jax.Array, y: jax.Array, num_classes: int, fraction: float) -> jax.Array:
    """(n,) bool mask of a stratified held-out part, jittable (the in-jit form of a split).

    Per class ``c`` with ``n_c`` examples, ``round(fraction * n_c)`` uniformly random rows are
    marked (clipped to ``[1, n_c - 1]`` when ``n_c >= 2``), the same counts as
    :func:`stratified_split`. Shapes are static, so it runs under ``jax.jit``/``jax.vmap``; use
    the mask as row weights (e.g. zero the held-out rows of a least-squares problem).

    Args:
        key: PRNG key.
        y: (n,) integer labels in ``[0, num_classes)``.
        num_classes: number of classes (static).
        fraction: fraction of each class to mark, in (0, 1).

    Returns:
        (n,) bool, True for the held-out rows.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> m = stratified_mask(jax.random.key(0), jnp.array([0, 0, 0, 0, 1, 1]), 2, 0.5)
        >>> [int(m[:4].sum()), int(m[4:].sum())]
        [2, 1]
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1); got {fraction}.")
    y = jnp.asarray(y)
    n = y.shape[0]
    u = jax.random.uniform(key, (n,))
    order = jnp.lexsort((u, y))                       # class-major, random order inside a class
    y_sorted = y[order]
    counts = jnp.bincount(y, length=num_classes)
    first = jnp.cumsum(counts) - counts               # index of each class's first sorted row
    rank = jnp.arange(n) - first[y_sorted]            # position inside its class
    held = jnp.round(fraction * counts).astype(counts.dtype)
    held = jnp.where(counts >= 2, jnp.clip(held, 1, counts - 1), held)
    return jnp.zeros((n,), bool).at[order].set(rank < held[y_sorted])


def sample_per_class(key: jax.Array, ds: Dataset, ipc: int) -> Dataset:
    """Draw ``ipc`` distinct examples of every class (the random-subset baseline / real init).

    Host-side: class sizes must be known. Order is class-major: (class 0 x ipc, class 1 x ipc, ...).

    Raises:
        DataError: if ipc < 1 or some class has fewer than ``ipc`` examples.
    """
    idx = per_class_indices(key, np.asarray(ds.y), ds.num_classes, ipc, ds.name)
    return ds.take(jnp.asarray(idx)).replace(name=f"{ds.name}/random-ipc{ipc}")


def per_class_indices(key: jax.Array, y: np.ndarray, num_classes: int, ipc: int,
                      name: str = "dataset") -> np.ndarray:
    """(num_classes * ipc,) int indices, ``ipc`` distinct draws per class, class-major order."""
    check_ipc(y, num_classes, ipc, name)
    # One uniform draw per example (a single compiled op for any class sizes), then the ipc
    # smallest scores of each class: a uniformly random ipc-subset, deterministic in the key.
    u = np.asarray(jax.random.uniform(key, (len(y),)))
    out = []
    for c in range(num_classes):
        idx = np.flatnonzero(y == c)
        out.append(idx[np.argsort(u[idx], kind="stable")[:ipc]])
    return np.concatenate(out)


def check_ipc(y: np.ndarray, num_classes: int, ipc: int, name: str = "dataset") -> None:
    """Raise :class:`DataError` unless every class has at least ``ipc`` >= 1 examples."""
    if int(ipc) != ipc or ipc < 1:
        raise DataError(f"ipc (images per class) must be a positive integer; got {ipc}.")
    counts = np.bincount(y, minlength=num_classes)
    if counts.min() < ipc:
        c = int(np.argmin(counts))
        raise DataError(f"{name}: ipc={ipc} but class {c} has only {int(counts[c])} examples; "
                        f"choose ipc <= {int(counts.min())}.")
