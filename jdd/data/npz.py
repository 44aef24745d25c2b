"""Any dataset stored as one .npz file of arrays (your own data, or a cached conversion).

Expected keys: ``x_train`` (n, ...), ``y_train`` (n,), ``x_test`` (m, ...), ``y_test`` (m,);
optional ``num_classes`` (scalar int) and ``name`` (scalar string). The file is opened with
``allow_pickle=False``, so it can hold plain arrays only.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

from jdd.data.dataset import DataError, Dataset, check_arrays

#: Keys every dataset .npz must contain.
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_npz(path: str | os.PathLike) -> tuple[Dataset, Dataset]:
    """Load a (train, test) pair from an .npz file.

    Inputs stored as ``uint8`` are taken as 8-bit images and divided by 255; any other numeric
    dtype is used as is (converted to float32). Images should be NHWC.

    Args:
        path: the .npz file, with keys ``x_train, y_train, x_test, y_test`` and optionally
            ``num_classes`` (else ``max label + 1`` over both splits) and ``name`` (else the file
            name without extension).

    Returns:
        (train, test) Datasets named ``"<name>/train"`` and ``"<name>/test"``.

    Raises:
        DataError: missing or unreadable file, missing keys (the message names the expected ones),
            train/test feature shapes that differ, or anything
            :func:`~jdd.data.dataset.check_arrays` rejects (rows that disagree, wrong dims, NaN/inf
            inputs, labels that are negative, not whole numbers, NaN, >= ``num_classes`` or beyond
            :data:`~jdd.data.dataset.MAX_CLASSES`); the message names the file and the split.
            All of it is checked before any array is converted.

    Example:
        >>> import numpy as np, tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "toy.npz")
        >>> np.savez(p, x_train=np.zeros((4, 2)), y_train=[0, 1, 0, 1],
        ...          x_test=np.ones((2, 2)), y_test=[1, 0])
        >>> train, test = load_npz(p)
        >>> train.name, test.n, train.num_classes
        ('toy/train', 2, 2)
    """
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        raise DataError(f"npz dataset {path!r} does not exist (or is not a file); expected an .npz "
                        f"with keys {', '.join(NPZ_KEYS)}.")
    try:
        with np.load(path, allow_pickle=False) as f:
            if not hasattr(f, "files"):
                raise DataError(f"{path!r} is a single .npy array, not an .npz archive with keys "
                                f"{', '.join(NPZ_KEYS)}.")
            missing = [k for k in NPZ_KEYS if k not in f.files]
            if missing:
                raise DataError(f"{path!r}: missing keys {missing}; expected {', '.join(NPZ_KEYS)} "
                                f"(optional: num_classes, name); found {sorted(f.files)}.")
            arrays = {k: f[k] for k in NPZ_KEYS}
            num_classes = f["num_classes"] if "num_classes" in f.files else None
            name = f["name"] if "name" in f.files else None
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise DataError(f"{path!r}: not a readable .npz file ({type(e).__name__}: {e}).") from e

    if name is None:
        name = os.path.splitext(os.path.basename(path))[0]
    else:
        if name.ndim != 0 or name.dtype.kind not in "US":
            raise DataError(f"{path!r}: 'name' must be a scalar string; got {name.dtype} "
                            f"{name.shape}.")
        name = name.item()
        name = name.decode() if isinstance(name, bytes) else str(name)
    if num_classes is not None:
        if num_classes.ndim != 0 or not np.issubdtype(num_classes.dtype, np.integer):
            raise DataError(f"{path!r}: 'num_classes' must be a scalar integer; got "
                            f"{num_classes.dtype} {num_classes.shape}.")
        num_classes = int(num_classes)

    xs = {}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        check_arrays(x, y, num_classes, f"{path!r} (x_{split}, y_{split})")
        xs[split] = x.astype(np.float32) / np.float32(255.0) if x.dtype == np.uint8 else x
    if xs["train"].shape[1:] != xs["test"].shape[1:]:
        raise DataError(f"{path!r}: x_train has feature shape {xs['train'].shape[1:]} but x_test "
                        f"has {xs['test'].shape[1:]}; they must match.")
    if num_classes is None:
        num_classes = int(max(arrays["y_train"].max(), arrays["y_test"].max())) + 1
    train = Dataset.from_arrays(xs["train"], arrays["y_train"], num_classes, f"{name}/train")
    test = Dataset.from_arrays(xs["test"], arrays["y_test"], num_classes, f"{name}/test")
    return train, test
