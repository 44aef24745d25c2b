"""Saving and loading distilled sets and run metadata, with atomic writes.

Every writer goes through :func:`atomic_write`: it writes to a temporary file in the destination
folder and renames it into place (``os.replace``, atomic on POSIX), so a killed run never leaves a
half-written ``distilled.npz``, ``metrics.json`` or PNG behind.

``distilled.npz`` layout:

* ``x``: (seeds, m, *feature_shape) float32 synthetic inputs, in the *preprocessed* space
  (float64 when the set was constructed in float64, as the exact closed form is);
* ``y``: (seeds, m, k) float32 (or float64, as ``x``) targets (soft labels / KRR targets);
* ``lr``: (seeds,) float32 learned inner learning rate (NaN when none);
* ``pre_*``: the fitted preprocessing (:class:`jdd.data.Preprocessor`), so
  ``Preprocessor.from_arrays(npz).invert(x)`` gives images in the original pixel space and
  ``.apply`` maps new real data into the space where ``x`` lives;
* ``meta``: a 0-d string holding JSON (method, dataset, ipc, model and training recipe).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import zipfile
from typing import Any, NamedTuple

import numpy as np


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb"):
    """Context manager yielding a file object; the file appears at ``path`` only on success."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                               dir=folder)
    try:
        from jdd.rundir import usual_mode
        usual_mode(tmp)  # mkstemp creates 0600; a plain open would give 0666 less the umask
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (numpy scalars/arrays converted)."""
    text = json.dumps(obj, indent=2, default=_json_default, allow_nan=True)
    with atomic_write(path, "w") as f:
        f.write(text + "\n")


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    if hasattr(o, "__array__"):
        return np.asarray(o).tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class DistilledSet(NamedTuple):
    """A loaded ``distilled.npz``.

    Attributes:
        x: (seeds, m, *feature_shape) float32.
        y: (seeds, m, k) float32.
        lr: (seeds,) float32 (NaN: no learned rate).
        preprocessor: the :class:`jdd.data.Preprocessor` fitted on the training data.
        meta: dict of run metadata.
        stored: name -> (seeds, ...) arrays that store the inputs when they are not ``x``
            (low-rank factors: ``a`` (seeds, m, c, h, r), ``b`` (seeds, m, c, r, w)), else None.
    """

    x: np.ndarray
    y: np.ndarray
    lr: np.ndarray
    preprocessor: Any
    meta: dict
    stored: dict | None = None


#: Keys ``meta`` must have (the CLI's ``evaluate`` needs them to rebuild the experiment).
META_KEYS = ("dataset", "method", "ipc")


def save_distilled(path: str | os.PathLike, x, y, lr, preprocessor, meta: dict,
                   stored: dict | None = None) -> None:
    """Atomically write a distilled set (see the module docstring for the layout).

    Everything is checked with :func:`validate_distilled` before anything is written, so a file
    this writes always loads with :func:`load_distilled`.

    Args:
        path: destination ``.npz`` file.
        x: (seeds, m, *feature_shape) finite synthetic inputs.
        y: (seeds, m, k) finite targets.
        lr: (seeds,) learned inner learning rates (NaN where none; else finite and >= 0).
        preprocessor: a :class:`jdd.data.Preprocessor`.
        meta: JSON-serialisable dict with at least ``dataset``, ``method`` and ``ipc``.
        stored: name -> (seeds, ...) arrays that store the inputs (low-rank factors), saved as
            ``stored_<name>`` beside the decoded ``x``; None for sets stored as inputs.

    Raises:
        ValueError: wrong shapes, NaN/inf in ``x`` or ``y``, inf or negative ``lr``, ``meta``
            missing a required key or not JSON-serialisable; nothing is written then.
    """
    # float64 sets (the exact closed form) stay float64: rounding them would break exactness
    dt = np.float64 if np.asarray(x).dtype == np.float64 else np.float32
    x = np.asarray(x, dt)
    y = np.asarray(y, dt)
    lr = np.asarray(lr, np.float32).reshape(-1)
    if x.ndim < 3 or y.ndim != 3 or x.shape[:2] != y.shape[:2] or lr.shape != (x.shape[0],):
        raise ValueError(f"expected x (seeds, m, ...), y (seeds, m, k), lr (seeds,); got "
                         f"{x.shape}, {y.shape}, {lr.shape}")
    try:
        meta_json = json.dumps(meta, default=_json_default)
    except (TypeError, ValueError) as e:
        raise ValueError(f"refusing to write {os.fspath(path)}: meta is not JSON-serialisable "
                         f"({e}).") from e
    try:
        validate_distilled(DistilledSet(x, y, lr, preprocessor, meta), path)
    except ValueError as e:
        raise ValueError(f"refusing to write {e}") from None
    arrays = {"x": x, "y": y, "lr": lr, **preprocessor.to_arrays(),
              "meta": np.asarray(meta_json)}
    for name, a in (stored or {}).items():
        a = np.asarray(a)
        if a.shape[:1] != x.shape[:1] or not np.all(np.isfinite(a)):
            raise ValueError(f"refusing to write {os.fspath(path)}: stored array {name!r} has "
                             f"shape {a.shape} (expected {x.shape[0]} seeds first) or NaN/inf")
        arrays[f"stored_{name}"] = a
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    with atomic_write(path, "wb") as f:
        f.write(buf.getvalue())


def _count_bad(a: np.ndarray) -> int:
    return int(a.size - np.count_nonzero(np.isfinite(a)))


def _real(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.number) and not np.issubdtype(a.dtype, np.complexfloating)


def validate_distilled(ds: DistilledSet, path: str | os.PathLike) -> None:
    """Raise one ValueError, naming ``path`` and what was expected, unless ``ds`` is consistent.

    Checks (shapes before values): ``x`` is real (seeds, m, *feature_shape) with at least 3 dims;
    ``y`` is real (seeds, m, k) with the same seeds and m, and ``k == meta["num_classes"]`` when
    meta records it; ``lr`` is (seeds,), one per seed; ``meta`` is a dict with
    :data:`META_KEYS`; ``x`` and ``y`` have no NaN/inf; each ``lr`` is NaN ("no learned rate") or
    finite and >= 0; the preprocessor (when not None) fits ``x``'s feature shape and is finite.
    """
    path = os.fspath(path)
    x, y, lr, meta = (np.asarray(ds.x), np.asarray(ds.y), np.asarray(ds.lr), ds.meta)
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: meta must be a JSON object (dict) with keys "
                         f"{', '.join(META_KEYS)}; got {type(meta).__name__}.")
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"{path}: meta lacks {', '.join(repr(k) for k in missing)}; expected "
                         f"keys {', '.join(META_KEYS)} (found {sorted(meta)}).")
    ipc = meta["ipc"]
    if isinstance(ipc, bool) or not isinstance(ipc, (int, np.integer)) or ipc < 1:
        raise ValueError(f"{path}: meta['ipc'] must be a positive integer; got {ipc!r}.")
    if x.ndim < 3 or not _real(x):
        raise ValueError(f"{path}: x must be real numbers of shape (seeds, m, *feature_shape) "
                         f"with at least 3 dims; got {x.dtype} shape {x.shape}.")
    if y.ndim != 3 or not _real(y):
        raise ValueError(f"{path}: y must be real numbers of shape (seeds, m, k); got {y.dtype} "
                         f"shape {y.shape}.")
    if y.shape[:2] != x.shape[:2]:
        raise ValueError(f"{path}: y has shape {y.shape} but x has {x.shape}; expected y "
                         f"(seeds, m, k) = ({x.shape[0]}, {x.shape[1]}, k), one row per synthetic "
                         f"input.")
    k = meta.get("num_classes")
    if k is not None and y.shape[2] != k:
        raise ValueError(f"{path}: y has {y.shape[2]} classes (last dim of shape {y.shape}) but "
                         f"meta['num_classes'] is {k!r}; they must match.")
    if lr.ndim != 1 or lr.size == 0 or lr.shape[0] != x.shape[0] or not _real(lr):
        what = "is empty" if lr.size == 0 else f"has {lr.dtype} shape {lr.shape}"
        raise ValueError(f"{path}: lr {what}; expected shape ({x.shape[0]},): one learning rate "
                         f"per seed (NaN for none).")
    for name, a in (("x", x), ("y", y)):
        bad = _count_bad(a)
        if bad:
            raise ValueError(f"{path}: {name} contains {bad} NaN/inf values; expected finite "
                             f"numbers.")
    lr64 = lr.astype(np.float64)
    wrong = ~np.isnan(lr64) & (np.isinf(lr64) | (lr64 < 0))
    if np.any(wrong):
        raise ValueError(f"{path}: lr has invalid values {lr64[wrong].tolist()} (at seeds "
                         f"{np.flatnonzero(wrong).tolist()}); expected NaN (no learned rate) or a "
                         f"finite number >= 0.")
    if ds.preprocessor is not None:
        _check_preprocessor(ds.preprocessor, tuple(x.shape[2:]), path)


def _check_preprocessor(pre, feature_shape: tuple[int, ...], path: str) -> None:
    """The stored preprocessing must act on one example of ``feature_shape`` and be finite."""
    d = int(np.prod(feature_shape))
    for field in ("mean", "std", "zca", "zca_inv"):
        value = getattr(pre, field, None)
        if value is None:
            continue
        a = np.asarray(value)
        if field in ("zca", "zca_inv"):
            fits = a.shape == (d, d)
            want = f"({d}, {d})"
        else:
            try:
                fits = np.broadcast_shapes(a.shape, feature_shape) == feature_shape
            except ValueError:
                fits = False
            want = f"broadcastable to the feature shape {feature_shape}"
        if not fits:
            raise ValueError(f"{path}: preprocessing array pre_{field} has shape {a.shape}; "
                             f"expected {want} of x (shape (seeds, m) + {feature_shape}).")
        if _count_bad(a):
            raise ValueError(f"{path}: preprocessing array pre_{field} contains NaN/inf values.")


def load_distilled(path: str | os.PathLike) -> DistilledSet:
    """Read a ``distilled.npz`` written by :func:`save_distilled` (a run folder works too).

    When a ``manifest.json`` lies beside it (a ``jdd distill`` run folder), the file must be the
    one the manifest lists: a set copied in from another run is refused.

    Raises:
        FileNotFoundError: no such file (names the path expected).
        ValueError: the file is not a jdd distilled set (names the missing keys), its ``meta`` is
            not JSON, or its arrays are inconsistent (:func:`validate_distilled`); the message
            names the file and what was expected.
    """
    return load_distilled_with_hash(path)[0]


def load_distilled_with_hash(path: str | os.PathLike) -> tuple[DistilledSet, str]:
    """:func:`load_distilled` plus the SHA-256 of the bytes it read (the set's identity, which
    ``jdd evaluate`` checks again before it adds a file to the run folder)."""
    import hashlib
    from jdd.data.preprocess import Preprocessor

    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "distilled.npz")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no distilled set at {path}: expected the distilled.npz written "
                                "by `jdd distill --out DIR`.")
    try:
        with open(path, "rb") as f:
            raw_bytes = f.read()
    except OSError as e:
        raise ValueError(f"{path} could not be read ({e}).") from e
    digest = hashlib.sha256(raw_bytes).hexdigest()
    _check_manifest_entry(path, digest)
    try:
        arrays = npz_arrays(raw_bytes)
    except ValueError as e:
        raise ValueError(f"{path} could not be read as .npz ({e}); the file is corrupt or not "
                         "a distilled set.") from e
    missing = [k for k in ("x", "y", "lr", "meta") if k not in arrays]
    if missing:
        raise ValueError(f"{path} is not a jdd distilled set: missing keys {missing} "
                         "(expected x, y, lr, meta and pre_*).")
    raw = arrays["meta"]
    if raw.ndim != 0 or raw.dtype.kind not in "US":
        raise ValueError(f"{path}: meta must be a 0-d string holding a JSON object; got "
                         f"{raw.dtype} shape {raw.shape}.")
    try:
        text = raw.item()
        meta = json.loads(text.decode() if isinstance(text, bytes) else text)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: meta is not valid JSON ({e}); expected a JSON object with "
                         f"keys {', '.join(META_KEYS)}.") from None
    stored = {k[len("stored_"):]: v for k, v in arrays.items() if k.startswith("stored_")}
    ds = DistilledSet(x=arrays["x"], y=arrays["y"], lr=arrays["lr"], preprocessor=None, meta=meta,
                      stored=stored or None)
    validate_distilled(ds, path)
    try:
        pre = Preprocessor.from_arrays(arrays)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    _check_preprocessor(pre, tuple(ds.x.shape[2:]), path)
    return ds._replace(preprocessor=pre), digest


def npz_arrays(raw: bytes) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` held in memory, read without unpickling anything.

    Raises:
        ValueError: not an ``.npz`` archive (truncated, a bare ``.npy``, pickled objects...).
    """
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise ValueError("a single .npy array, not an .npz archive")
            return {k: z[k] for k in z.files}
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(str(e)) from None


def save_image_grid(path: str | os.PathLike, images, labels=None, *, title: str | None = None,
                    max_rows: int = 10) -> None:
    """Save a PNG grid of images (atomically): one column per class when ``labels`` given.

    Args:
        path: destination PNG.
        images: (m, h, w, c) images in display space (any range; each image is min-max scaled), or
            (m, d) vectors (shown as a square when d is a square number, else as a 1-row strip).
        labels: optional (m,) int class of each image (the grid groups by class).
        title: figure title.
        max_rows: at most this many images per class.
    """
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    images = np.asarray(images, np.float64)
    if images.ndim == 2:
        side = int(round(np.sqrt(images.shape[1])))
        shape = (side, side, 1) if side * side == images.shape[1] else (1, images.shape[1], 1)
        images = images.reshape((-1,) + shape)
    m = images.shape[0]
    if labels is None:
        cols = min(m, 10)
        groups = [list(range(i, min(i + cols, m))) for i in range(0, m, cols)]
        grid = [[g[r] if r < len(g) else None for g in groups] for r in range(cols)]
        grid = list(map(list, zip(*grid)))
    else:
        labels = np.asarray(labels)
        classes = np.unique(labels)
        per = [list(np.flatnonzero(labels == c))[:max_rows] for c in classes]
        rows = max(len(p) for p in per)
        grid = [[p[r] if r < len(p) else None for p in per] for r in range(rows)]
    nr, nc = len(grid), len(grid[0])
    fig, axes = plt.subplots(nr, nc, figsize=(nc * 1.0, nr * 1.0 + (0.4 if title else 0)),
                             squeeze=False)
    for r in range(nr):
        for c in range(nc):
            ax = axes[r][c]
            ax.axis("off")
            i = grid[r][c]
            if i is None:
                continue
            img = images[i]
            lo, hi = img.min(), img.max()
            img = (img - lo) / (hi - lo + 1e-12)
            if img.shape[-1] == 1:
                ax.imshow(img[..., 0], cmap="gray", interpolation="nearest")
            else:
                ax.imshow(img[..., :3], interpolation="nearest")
            if labels is not None and r == 0:
                ax.set_title(str(int(labels[i])), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    _save_figure(fig, path, dpi=80)


def save_curve(path: str | os.PathLike, steps, values, *, ylabel: str = "loss",
               title: str | None = None) -> None:
    """Save a PNG line plot (atomically): ``values`` (seeds, t) or (t,) against ``steps`` (t,)."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    values = np.atleast_2d(np.asarray(values))
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for i, v in enumerate(values):
        ax.plot(steps, v, lw=1.2, label=f"seed {i}" if len(values) > 1 else None)
    ax.set_xlabel("outer step")
    ax.set_ylabel(ylabel)
    ax.set_yscale("log" if np.all(values > 0) else "linear")
    if len(values) > 1:
        ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    _save_figure(fig, path, dpi=90)


def _save_figure(fig, path, dpi: int) -> None:
    """Render a matplotlib figure to PNG in memory, close it, then write it atomically."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    with atomic_write(path, "wb") as f:
        f.write(buf.getvalue())


def _check_manifest_entry(path: str, digest: str) -> None:
    """Refuse a set whose run folder's manifest lists other bytes for it."""
    from jdd.rundir import read_manifest
    folder, name = os.path.split(os.path.abspath(path))
    m = read_manifest(folder)
    if m is None:
        return
    entry = m.get("files", {}).get(name)
    if entry is None or entry.get("sha256") != digest:
        raise ValueError(f"{path} is not the file of run {m.get('run_id')} that manifest.json "
                         f"beside it lists (changed or copied in after the run); re-run, or "
                         f"remove manifest.json to use it anyway.")
