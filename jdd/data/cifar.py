"""CIFAR-10 and CIFAR-100 from the standard "python version" pickle batches.

Layout (as distributed by the CIFAR authors, after extracting the .tar.gz):

* ``cifar-10-batches-py/data_batch_1`` .. ``data_batch_5`` and ``test_batch``: each a pickled dict
  with ``b'data'`` (N, 3072) uint8 (row-major CHW: 1024 red, 1024 green, 1024 blue values of a
  32x32 image) and ``b'labels'`` (N ints in [0, 10)).
* ``cifar-100-python/train`` and ``test``: the same ``b'data'`` plus ``b'fine_labels'`` (100
  classes) and ``b'coarse_labels'`` (20 superclasses).

Pickles are read with ``encoding='bytes'`` (they were written by Python 2) through a restricted
unpickler that only rebuilds builtin containers and numpy arrays, so a tampered file cannot run
code; anything else, a truncated or corrupt file, or missing keys raise one clear
:class:`~jdd.data.dataset.DataError` naming the file.
"""

from __future__ import annotations

import importlib
import os
import pickle

import numpy as np

from jdd.data.dataset import DataError, Dataset

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = "test_batch"
CIFAR100_DIR = "cifar-100-python"
CIFAR100_TRAIN = "train"
CIFAR100_TEST = "test"

# (module, name) pairs a CIFAR pickle may reference: numpy array reconstruction only.
_ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except numpy's array-rebuilding helpers."""

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if module.startswith("numpy.core") or module.startswith("numpy._core"):
            # numpy >= 2 moved numpy.core to numpy._core; resolve whichever exists quietly.
            tail = module.split(".", 2)[2] if module.count(".") >= 2 else ""
            for mod in (f"numpy._core.{tail}", f"numpy.core.{tail}"):
                try:
                    return getattr(importlib.import_module(mod), name)
                except (ImportError, AttributeError):
                    continue
        return super().find_class(module, name)


def read_batch(path: str) -> dict:
    """Read one CIFAR pickle batch safely.

    Args:
        path: a batch file such as ``.../cifar-10-batches-py/data_batch_1``.

    Returns:
        the unpickled dict, keys as bytes (``b'data'``, ``b'labels'``, ...).

    Raises:
        DataError: unreadable, truncated or corrupt file, or not a dict.
    """
    try:
        with open(path, "rb") as f:
            obj = _SafeUnpickler(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, ImportError) as e:
        raise DataError(f"{path!r}: not a readable CIFAR pickle batch ({type(e).__name__}: {e}); "
                        f"the file is corrupt or truncated, extract the archive again.") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path!r}: expected a pickled dict with b'data' and labels; got "
                        f"{type(obj).__name__}.")
    return obj


def _batch_arrays(path: str, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    d = read_batch(path)
    missing = [k for k in (b"data", label_key) if k not in d]
    if missing:
        raise DataError(f"{path!r}: missing keys {missing}; expected b'data' and {label_key!r} "
                        f"(found {sorted(k for k in d if isinstance(k, (bytes, str)))}).")
    data = np.asarray(d[b"data"])
    labels = np.asarray(d[label_key])
    if data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
        raise DataError(f"{path!r}: b'data' must be (N, 3072) uint8 (row-major 3x32x32 images); "
                        f"got {data.shape} {data.dtype}.")
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise DataError(f"{path!r}: {label_key!r} must hold one label per image "
                        f"({data.shape[0]}); got shape {labels.shape}.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path!r}: {label_key!r} must be integers; got dtype {labels.dtype}.")
    return data, labels


def _to_dataset(data: list[np.ndarray], labels: list[np.ndarray], num_classes: int,
                name: str) -> Dataset:
    x = np.concatenate(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    x = x.astype(np.float32) / np.float32(255.0)
    return Dataset.from_arrays(x, np.concatenate(labels).astype(np.int64), num_classes, name)


def _resolve(data_dir: str | os.PathLike, sub: str, files: tuple[str, ...], what: str,
             archive: str) -> str:
    root = os.path.expanduser(os.fspath(data_dir))
    if not os.path.isdir(root):
        raise DataError(f"{what}: data directory {root!r} does not exist (or is not a folder).")
    looked = [root, os.path.join(root, sub)]
    for folder in looked:
        if all(os.path.isfile(os.path.join(folder, f)) for f in files):
            return folder
    hint = ""
    if os.path.isfile(os.path.join(root, archive)):
        hint = f" Found {archive!r}: extract it first (tar xzf {archive})."
    raise DataError(f"{what}: expected files {', '.join(files)} in {looked[0]!r} or "
                    f"{looked[1]!r}; they were not all there.{hint}")


def load_cifar10(data_dir: str | os.PathLike) -> tuple[Dataset, Dataset]:
    """Load CIFAR-10 from the python pickle batches.

    Args:
        data_dir: the ``cifar-10-batches-py`` folder, or the folder that contains it.

    Returns:
        (train, test): ``x`` is (n, 32, 32, 3) float32 NHWC in [0, 1] (pixel / 255), ``y`` (n,)
        int32 in [0, 10); 50000 train (batches 1..5 in order) and 10000 test examples for the
        full files. Names ``"cifar10/train"`` and ``"cifar10/test"``.

    Raises:
        DataError: missing folder or files, corrupt or truncated pickles, wrong shapes, labels
            out of range.

    Example (reads files you already have)::

            train, test = load_cifar10("~/data")
            train.feature_shape, train.num_classes
    """
    files = CIFAR10_TRAIN + (CIFAR10_TEST,)
    folder = _resolve(data_dir, CIFAR10_DIR, files, "CIFAR-10", "cifar-10-python.tar.gz")
    parts = [_batch_arrays(os.path.join(folder, f), b"labels") for f in files]
    train = _to_dataset([p[0] for p in parts[:-1]], [p[1] for p in parts[:-1]], 10,
                        "cifar10/train")
    test = _to_dataset([parts[-1][0]], [parts[-1][1]], 10, "cifar10/test")
    return train, test


def load_cifar100(data_dir: str | os.PathLike, label_mode: str = "fine") -> tuple[Dataset, Dataset]:
    """Load CIFAR-100 from the python pickles.

    Args:
        data_dir: the ``cifar-100-python`` folder, or the folder that contains it.
        label_mode: ``"fine"`` (100 classes) or ``"coarse"`` (20 superclasses).

    Returns:
        (train, test): ``x`` is (n, 32, 32, 3) float32 NHWC in [0, 1], ``y`` (n,) int32; 50000
        train and 10000 test examples for the full files. Names ``"cifar100/train"`` etc.
        (``"cifar100-coarse/train"`` etc. for coarse labels).

    Raises:
        DataError: bad ``label_mode``, missing folder or files, corrupt pickles, wrong shapes,
            labels out of range.

    Example (reads files you already have)::

            train, test = load_cifar100("~/data", label_mode="coarse")
            train.num_classes
    """
    if label_mode not in ("fine", "coarse"):
        raise DataError(f"CIFAR-100: label_mode must be 'fine' or 'coarse'; got {label_mode!r}.")
    num_classes = 100 if label_mode == "fine" else 20
    key = b"fine_labels" if label_mode == "fine" else b"coarse_labels"
    name = "cifar100" if label_mode == "fine" else "cifar100-coarse"
    files = (CIFAR100_TRAIN, CIFAR100_TEST)
    folder = _resolve(data_dir, CIFAR100_DIR, files, "CIFAR-100", "cifar-100-python.tar.gz")
    parts = [_batch_arrays(os.path.join(folder, f), key) for f in files]
    train = _to_dataset([parts[0][0]], [parts[0][1]], num_classes, f"{name}/train")
    test = _to_dataset([parts[1][0]], [parts[1][1]], num_classes, f"{name}/test")
    return train, test
