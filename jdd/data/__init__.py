"""Datasets: the Dataset pytree, loaders, splits and preprocessing."""

from __future__ import annotations

import os

from jdd.data.dataset import (MAX_CLASSES, DataError, Dataset, check_arrays, check_ipc,
                              per_class_indices, sample_per_class, stratified_mask,
                              stratified_split)
from jdd.data.cifar import load_cifar10, load_cifar100
from jdd.data.digits import load_digits
from jdd.data.mnist import load_fashion_mnist, load_mnist
from jdd.data.npz import load_npz
from jdd.data.preprocess import Preprocessor, fit_preprocessor, preprocess

#: Names accepted by :func:`load_dataset`.
DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "cifar100_coarse", "npz")

#: (feature shape, number of classes) of the named datasets whose files have a fixed layout (an
#: ``npz`` dataset can be anything), so imported sets are checked before any data is loaded.
SHAPES = {"digits": ((8, 8, 1), 10), "mnist": ((28, 28, 1), 10),
          "fashion_mnist": ((28, 28, 1), 10), "cifar10": ((32, 32, 3), 10),
          "cifar100": ((32, 32, 3), 100), "cifar100_coarse": ((32, 32, 3), 20)}


def data_dir_or_env(data_dir: str | os.PathLike | None) -> str:
    """The directory to read from: the argument, else ``$JDD_DATA_DIR``, else a clear error."""
    if data_dir is None:
        data_dir = os.environ.get("JDD_DATA_DIR")
    if not data_dir:
        raise DataError("no data directory given: pass data_dir=... (CLI: --data-dir) or set "
                        "JDD_DATA_DIR to the folder that holds the dataset files.")
    return os.fspath(data_dir)


def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> tuple[Dataset, Dataset]:
    """Load a dataset by name and return its (train, test) split.

    Args:
        name: one of :data:`DATASETS`. ``"digits"`` is bundled; the others read the standard files
            from ``data_dir`` (or ``$JDD_DATA_DIR``). ``"fashion_mnist"`` looks in ``data_dir``,
            then ``$JDD_DATA_DIR``, then :data:`jdd.data.mnist.FASHION_MNIST_SYSTEM_DIR` (where
            ``apt-get install dataset-fashion-mnist`` puts the files). ``"npz"`` takes
            ``data_dir`` as the path of an .npz file with ``x_train, y_train, x_test, y_test``.
            ``"cifar100_coarse"`` is CIFAR-100 with its 20 superclass labels.
        data_dir: folder (or .npz path) to read.

    Raises:
        DataError: unknown name (lists the valid ones), missing or corrupt files.
    """
    if name == "digits":
        return load_digits()
    if name == "mnist":
        return load_mnist(data_dir_or_env(data_dir))
    if name == "fashion_mnist":
        return load_fashion_mnist(data_dir)
    if name == "cifar10":
        return load_cifar10(data_dir_or_env(data_dir))
    if name in ("cifar100", "cifar100_coarse"):
        return load_cifar100(data_dir_or_env(data_dir),
                             label_mode="coarse" if name == "cifar100_coarse" else "fine")
    if name == "npz":
        return load_npz(data_dir_or_env(data_dir))
    raise DataError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}.")


__all__ = ["DATASETS", "MAX_CLASSES", "SHAPES", "DataError", "Dataset", "Preprocessor",
           "check_arrays", "check_ipc", "data_dir_or_env", "fit_preprocessor", "load_cifar10",
           "load_cifar100", "load_dataset", "load_digits", "load_fashion_mnist", "load_mnist",
           "load_npz", "per_class_indices", "preprocess", "sample_per_class", "stratified_mask",
           "stratified_split"]
