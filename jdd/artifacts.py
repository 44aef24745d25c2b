"""Saving and loading distilled sets and run metadata, with atomic writes.

Every writer goes through :func:`atomic_write`: it writes to a temporary file in the destination
folder and renames it into place (``os.replace``, atomic on POSIX), so a killed run never leaves a
half-written ``distilled.npz``, ``metrics.json`` or PNG behind.

``distilled.npz`` layout:

* ``x``: (seeds, m, *feature_shape) float32 synthetic inputs, in the *preprocessed* space;
* ``y``: (seeds, m, k) float32 targets (soft labels / KRR targets);
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
    """

    x: np.ndarray
    y: np.ndarray
    lr: np.ndarray
    preprocessor: Any
    meta: dict


def save_distilled(path: str | os.PathLike, x, y, lr, preprocessor, meta: dict) -> None:
    """Atomically write a distilled set (see the module docstring for the layout).

    Args:
        path: destination ``.npz`` file.
        x: (seeds, m, *feature_shape) synthetic inputs.
        y: (seeds, m, k) targets.
        lr: (seeds,) learned inner learning rates (NaN where none).
        preprocessor: a :class:`jdd.data.Preprocessor`.
        meta: JSON-serialisable metadata.
    """
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.float32)
    lr = np.asarray(lr, np.float32).reshape(-1)
    if x.ndim < 3 or y.ndim != 3 or x.shape[:2] != y.shape[:2] or lr.shape != (x.shape[0],):
        raise ValueError(f"expected x (seeds, m, ...), y (seeds, m, k), lr (seeds,); got "
                         f"{x.shape}, {y.shape}, {lr.shape}")
    arrays = {"x": x, "y": y, "lr": lr, **preprocessor.to_arrays(),
              "meta": np.asarray(json.dumps(meta, default=_json_default))}
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    with atomic_write(path, "wb") as f:
        f.write(buf.getvalue())


def load_distilled(path: str | os.PathLike) -> DistilledSet:
    """Read a ``distilled.npz`` written by :func:`save_distilled` (a run folder works too).

    Raises:
        FileNotFoundError: no such file (names the path expected).
        ValueError: the file is not a jdd distilled set (names the missing keys).
    """
    from jdd.data.preprocess import Preprocessor

    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "distilled.npz")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no distilled set at {path}: expected the distilled.npz written "
                                "by `jdd distill --out DIR`.")
    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise ValueError("not an .npz archive")
            arrays = {k: z[k] for k in z.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path} could not be read as .npz ({e}); the file is corrupt or not "
                         "a distilled set.") from e
    missing = [k for k in ("x", "y", "lr", "meta") if k not in arrays]
    if missing:
        raise ValueError(f"{path} is not a jdd distilled set: missing keys {missing} "
                         "(expected x, y, lr, meta and pre_*).")
    return DistilledSet(x=arrays["x"], y=arrays["y"], lr=arrays["lr"],
                        preprocessor=Preprocessor.from_arrays(arrays),
                        meta=json.loads(str(arrays["meta"])))


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
