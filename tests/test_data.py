"""Tests for jdd.data: loaders (real file formats written to tmp_path), splits and sampling."""

from __future__ import annotations

import gzip
import os
import pickle
import struct

import jax
import numpy as np
import pytest

from jdd.data import (DATASETS, DataError, Dataset, check_ipc, load_cifar10, load_cifar100,
                      load_dataset, load_digits, load_mnist, load_npz, sample_per_class,
                      stratified_mask, stratified_split)
from jdd.data.mnist import MNIST_FILES

# ---------------------------------------------------------------- writers for the real formats


def write_idx(path, arr: np.ndarray, *, gz: bool = False) -> str:
    """Write a uint8 array as an IDX file: magic 0x0000080<ndim>, big-endian uint32 dims, data."""
    arr = np.ascontiguousarray(arr, np.uint8)
    blob = struct.pack(">I", 0x0800 | arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    blob += arr.tobytes()
    path = os.fspath(path) + (".gz" if gz else "")
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(blob)
    else:
        with open(path, "wb") as f:
            f.write(blob)
    return path


def make_mnist(folder, *, gz=False, n_train=30, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": (np.arange(n_test)[::-1] % 10).astype(np.uint8),
    }
    paths = {r: write_idx(os.path.join(folder, MNIST_FILES[r]), a, gz=gz)
             for r, a in arrays.items()}
    return arrays, paths


def write_pickle(path, obj, protocol=2):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def make_cifar10(root, *, n=12, seed=0):
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        write_pickle(os.path.join(folder, name),
                     {b"batch_label": name.encode(), b"data": data, b"labels": labels,
                      b"filenames": [b"f%d.png" % i for i in range(n)]})
        batches[name] = (data, labels)
    return folder, batches


def make_cifar100(root, *, n=16, seed=1):
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-100-python")
    os.makedirs(folder)
    out = {}
    for name in ("train", "test"):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, n)]
        coarse = [int(v) for v in rng.integers(0, 20, n)]
        write_pickle(os.path.join(folder, name),
                     {b"data": data, b"fine_labels": fine, b"coarse_labels": coarse})
        out[name] = (data, fine, coarse)
    return folder, out


def chw_rows_to_nhwc(data: np.ndarray) -> np.ndarray:
    """Independent reference: pixel (i, j) of channel c is data[:, c*1024 + i*32 + j]."""
    n = data.shape[0]
    out = np.empty((n, 32, 32, 3), np.float32)
    for c in range(3):
        out[..., c] = data[:, c * 1024:(c + 1) * 1024].reshape(n, 32, 32)
    return out / 255.0


# ---------------------------------------------------------------- MNIST


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reads_exactly_what_was_written(tmp_path, gz):
    arrays, _ = make_mnist(tmp_path, gz=gz)
    train, test = load_mnist(tmp_path)
    assert train.x.shape == (30, 28, 28, 1) and test.x.shape == (20, 28, 28, 1)
    assert train.x.dtype == np.float32 and train.y.dtype == np.int32
    np.testing.assert_allclose(np.asarray(train.x)[..., 0], arrays["train_images"] / 255.0,
                               rtol=0, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(test.y), arrays["test_labels"])
    assert float(train.x.min()) >= 0.0 and float(train.x.max()) <= 1.0
    assert train.num_classes == 10 and train.name == "mnist/train"


@pytest.mark.parametrize("sub,fashion", [("mnist", False), ("MNIST/raw", False),
                                         ("fashion_mnist", True), ("FashionMNIST/raw", True)])
def test_mnist_conventional_subfolders(tmp_path, sub, fashion):
    arrays, _ = make_mnist(tmp_path / sub, gz=True, seed=3)
    train, test = load_mnist(tmp_path, fashion=fashion)
    np.testing.assert_array_equal(np.asarray(train.y), arrays["train_labels"])
    assert test.name == ("fashion_mnist/test" if fashion else "mnist/test")


def test_mnist_missing_dir_and_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_mnist(tmp_path / "nope")
    _, paths = make_mnist(tmp_path)
    os.remove(paths["test_labels"])
    with pytest.raises(DataError) as e:
        load_mnist(tmp_path)
    msg = str(e.value)
    assert "t10k-labels-idx1-ubyte" in msg and str(tmp_path) in msg


def test_mnist_truncated_file(tmp_path):
    _, paths = make_mnist(tmp_path)
    p = paths["train_images"]
    with open(p, "rb") as f:
        blob = f.read()
    with open(p, "wb") as f:
        f.write(blob[:-100])
    with pytest.raises(DataError, match="truncated") as e:
        load_mnist(tmp_path)
    assert "train-images-idx3-ubyte" in str(e.value)
    assert str(30 * 28 * 28 + 16) in str(e.value)  # the expected length


def test_mnist_truncated_gzip(tmp_path):
    _, paths = make_mnist(tmp_path, gz=True)
    p = paths["test_images"]
    with open(p, "rb") as f:
        blob = f.read()
    with open(p, "wb") as f:
        f.write(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz"):
        load_mnist(tmp_path)


def test_mnist_bad_magic_and_count_mismatch(tmp_path):
    arrays, paths = make_mnist(tmp_path)
    # a label file where an image file belongs: magic 0x801 instead of 0x803
    write_idx(os.path.join(tmp_path, MNIST_FILES["train_images"]), arrays["train_labels"])
    with pytest.raises(DataError, match="magic number"):
        load_mnist(tmp_path)
    write_idx(os.path.join(tmp_path, MNIST_FILES["train_images"]), arrays["train_images"][:5])
    with pytest.raises(DataError, match="5 images but"):
        load_mnist(tmp_path)


def test_mnist_label_out_of_range(tmp_path):
    arrays, _ = make_mnist(tmp_path)
    bad = arrays["test_labels"].copy()
    bad[0] = 10
    write_idx(os.path.join(tmp_path, MNIST_FILES["test_labels"]), bad)
    with pytest.raises(DataError, match=r"\[0, 10\)"):
        load_mnist(tmp_path)


# ---------------------------------------------------------------- Fashion-MNIST search

# What Debian's dataset-fashion-mnist package installs (dpkg -L), in FASHION_MNIST_SYSTEM_DIR.
DEBIAN_FASHION_FILES = {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"}


@pytest.fixture
def fashion_places(tmp_path, monkeypatch):
    """Three Fashion-MNIST copies (data_dir, $JDD_DATA_DIR, system folder), told apart by their
    pixels; the system folder is a monkeypatched stand-in for /usr/share/datasets/fashion-mnist."""
    import jdd.data.mnist as mnist_mod
    places = {}
    for i, what in enumerate(("arg", "env", "system")):
        folder = tmp_path / what
        arrays, _ = make_mnist(folder, gz=True, n_train=12, n_test=10, seed=10 + i)
        places[what] = (folder, arrays)
    monkeypatch.setattr(mnist_mod, "FASHION_MNIST_SYSTEM_DIR", os.fspath(tmp_path / "system"))
    monkeypatch.delenv("JDD_DATA_DIR", raising=False)
    return places


def _which(train, places):
    hits = [w for w, (_, a) in places.items()
            if np.array_equal(np.round(np.asarray(train.x)[..., 0] * 255), a["train_images"])]
    assert len(hits) == 1
    return hits[0]


def test_fashion_mnist_search_order(fashion_places, monkeypatch, tmp_path):
    places = fashion_places
    monkeypatch.setenv("JDD_DATA_DIR", os.fspath(places["env"][0]))
    train, test = load_dataset("fashion_mnist", places["arg"][0])
    assert _which(train, places) == "arg" and test.name == "fashion_mnist/test"
    assert _which(load_dataset("fashion_mnist")[0], places) == "env"
    # a data_dir without the files (empty, or only some of them) is skipped, not fatal
    (tmp_path / "empty").mkdir()
    assert _which(load_dataset("fashion_mnist", tmp_path / "empty")[0], places) == "env"
    os.remove(places["arg"][0] / (MNIST_FILES["test_labels"] + ".gz"))
    assert _which(load_dataset("fashion_mnist", places["arg"][0])[0], places) == "env"
    monkeypatch.delenv("JDD_DATA_DIR")
    assert _which(load_dataset("fashion_mnist")[0], places) == "system"
    monkeypatch.setenv("JDD_DATA_DIR", os.fspath(tmp_path / "nope"))
    assert _which(load_dataset("fashion_mnist", tmp_path / "empty")[0], places) == "system"
    # conventional subfolders of data_dir / $JDD_DATA_DIR count, as for load_mnist
    make_mnist(tmp_path / "parent" / "fashion-mnist", gz=True, n_train=12, n_test=10, seed=10)
    assert _which(load_dataset("fashion_mnist", tmp_path / "parent")[0], places) == "arg"


def test_fashion_mnist_debian_file_names(fashion_places):
    """The names the Debian package installs are found, in the folder itself."""
    from jdd.data.mnist import find_fashion_mnist
    system = fashion_places["system"][0]
    assert set(os.listdir(system)) == DEBIAN_FASHION_FILES
    found = find_fashion_mnist()
    assert {os.path.dirname(p) for p in found.values()} == {os.fspath(system)}
    assert {os.path.basename(p) for p in found.values()} == DEBIAN_FASHION_FILES
    train, test = load_dataset("fashion_mnist")
    assert train.x.shape == (12, 28, 28, 1) and test.n == 10 and train.num_classes == 10


def test_fashion_mnist_found_but_corrupt_is_not_skipped(fashion_places):
    """Files that exist but are broken raise (naming the file) instead of falling through."""
    p = fashion_places["arg"][0] / (MNIST_FILES["train_images"] + ".gz")
    p.write_bytes(p.read_bytes()[:40])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        load_dataset("fashion_mnist", fashion_places["arg"][0])


def test_fashion_mnist_not_found_names_every_place(tmp_path, monkeypatch):
    import jdd.data.mnist as mnist_mod
    system = tmp_path / "usr-share-datasets-fashion-mnist"
    monkeypatch.setattr(mnist_mod, "FASHION_MNIST_SYSTEM_DIR", os.fspath(system))
    (tmp_path / "mine").mkdir()
    make_mnist(tmp_path / "mine", n_train=12, n_test=10)
    os.remove(tmp_path / "mine" / MNIST_FILES["train_labels"])
    monkeypatch.setenv("JDD_DATA_DIR", os.fspath(tmp_path / "env-dir"))
    with pytest.raises(DataError) as e:
        load_dataset("fashion_mnist", tmp_path / "mine")
    msg = str(e.value)
    where = [msg.index(repr(os.fspath(p))) for p in
             (tmp_path / "mine", tmp_path / "env-dir", system)]
    assert where == sorted(where)  # in search order
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "train-labels-idx1-ubyte" in msg and "does not exist" in msg
    assert "data_dir" in msg and "JDD_DATA_DIR" in msg
    monkeypatch.delenv("JDD_DATA_DIR")
    with pytest.raises(DataError) as e:
        load_dataset("fashion_mnist")
    msg = str(e.value)
    assert "data_dir (not given)" in msg and "$JDD_DATA_DIR (not set)" in msg
    assert os.fspath(system) in msg and "apt-get install dataset-fashion-mnist" in msg
    # MNIST keeps its message: where to put the files, no apt hint
    with pytest.raises(DataError, match="JDD_DATA_DIR") as e:
        load_dataset("mnist")
    assert "apt-get" not in str(e.value)


# ---------------------------------------------------------------- CIFAR


def test_cifar10_reads_exactly_what_was_written(tmp_path):
    folder, batches = make_cifar10(tmp_path)
    for where in (tmp_path, folder):  # the parent or the folder itself
        train, test = load_cifar10(where)
        assert train.x.shape == (60, 32, 32, 3) and test.x.shape == (12, 32, 32, 3)
        order = [f"data_batch_{i}" for i in range(1, 6)]
        want_x = np.concatenate([chw_rows_to_nhwc(batches[b][0]) for b in order])
        want_y = np.concatenate([batches[b][1] for b in order])
        np.testing.assert_allclose(np.asarray(train.x), want_x, rtol=0, atol=1e-7)
        np.testing.assert_array_equal(np.asarray(train.y), want_y)
        np.testing.assert_allclose(np.asarray(test.x), chw_rows_to_nhwc(batches["test_batch"][0]),
                                   rtol=0, atol=1e-7)
        assert train.y.dtype == np.int32 and train.num_classes == 10


def test_cifar10_pickle_protocol5(tmp_path):
    folder, batches = make_cifar10(tmp_path)
    d, labels = batches["test_batch"]
    write_pickle(os.path.join(folder, "test_batch"), {b"data": d, b"labels": labels}, protocol=5)
    _, test = load_cifar10(tmp_path)
    np.testing.assert_array_equal(np.asarray(test.y), labels)


def test_cifar10_old_numpy_module_names(tmp_path):
    """The distributed files reference numpy.core.multiarray (numpy < 2 names); they must load."""
    folder, batches = make_cifar10(tmp_path)
    d, labels = batches["test_batch"]
    blob = pickle.dumps({b"data": d, b"labels": labels}, protocol=2)
    blob = blob.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert b"numpy.core.multiarray" in blob
    with open(os.path.join(folder, "test_batch"), "wb") as f:
        f.write(blob)
    _, test = load_cifar10(tmp_path)
    np.testing.assert_allclose(np.asarray(test.x), chw_rows_to_nhwc(d), atol=1e-7)


@pytest.mark.parametrize("mode,k", [("fine", 1), ("coarse", 2)])
def test_cifar100_labels(tmp_path, mode, k):
    _, out = make_cifar100(tmp_path)
    train, test = load_cifar100(tmp_path, label_mode=mode)
    assert train.num_classes == (100 if mode == "fine" else 20)
    np.testing.assert_array_equal(np.asarray(train.y), out["train"][k])
    np.testing.assert_allclose(np.asarray(test.x), chw_rows_to_nhwc(out["test"][0]), atol=1e-7)
    with pytest.raises(DataError, match="label_mode"):
        load_cifar100(tmp_path, label_mode="medium")
    by_name, _ = load_dataset("cifar100" if mode == "fine" else "cifar100_coarse", tmp_path)
    np.testing.assert_array_equal(np.asarray(by_name.y), out["train"][k])


def test_cifar_missing(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_cifar10(tmp_path / "nope")
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"")
    with pytest.raises(DataError, match="extract") as e:
        load_cifar10(tmp_path)
    assert "data_batch_1" in str(e.value)


def test_cifar_corrupt_and_truncated_pickle(tmp_path):
    folder, _ = make_cifar10(tmp_path)
    p = os.path.join(folder, "data_batch_3")
    blob = open(p, "rb").read()
    open(p, "wb").write(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="data_batch_3"):
        load_cifar10(tmp_path)
    open(p, "wb").write(b"this is not a pickle at all")
    with pytest.raises(DataError, match="corrupt"):
        load_cifar10(tmp_path)


def test_cifar_pickle_cannot_run_code(tmp_path):
    folder, _ = make_cifar10(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (os.fspath(marker),))

    write_pickle(os.path.join(folder, "data_batch_1"), {b"data": Evil(), b"labels": [0]})
    with pytest.raises(DataError, match="refusing"):
        load_cifar10(tmp_path)
    assert not marker.exists()


def test_cifar_wrong_shapes_and_labels(tmp_path):
    folder, _ = make_cifar10(tmp_path)
    p = os.path.join(folder, "test_batch")
    write_pickle(p, {b"data": np.zeros((4, 1024), np.uint8), b"labels": [0, 1, 2, 3]})
    with pytest.raises(DataError, match="3072"):
        load_cifar10(tmp_path)
    write_pickle(p, {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2]})
    with pytest.raises(DataError, match="one label per image"):
        load_cifar10(tmp_path)
    write_pickle(p, {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 10]})
    with pytest.raises(DataError, match=r"\[0, 10\)"):
        load_cifar10(tmp_path)
    write_pickle(p, {b"data": np.zeros((4, 3072), np.uint8)})
    with pytest.raises(DataError, match="missing keys"):
        load_cifar10(tmp_path)


# ---------------------------------------------------------------- npz


def _npz(path, **kw):
    rng = np.random.default_rng(0)
    arrays = dict(x_train=rng.random((10, 4, 4, 2), dtype=np.float32),
                  y_train=np.arange(10) % 3,
                  x_test=rng.random((6, 4, 4, 2), dtype=np.float32),
                  y_test=np.arange(6) % 3)
    arrays.update(kw)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return arrays


def test_npz_roundtrip(tmp_path):
    a = _npz(tmp_path / "toy.npz")
    train, test = load_npz(tmp_path / "toy.npz")
    np.testing.assert_array_equal(np.asarray(train.x), a["x_train"])
    np.testing.assert_array_equal(np.asarray(test.y), a["y_test"])
    assert train.num_classes == 3 and train.name == "toy/train"
    a = _npz(tmp_path / "b.npz", num_classes=np.int64(5), name=np.array("mine"),
             x_train=np.full((10, 3), 255, np.uint8), x_test=np.zeros((6, 3), np.uint8))
    train, test = load_npz(tmp_path / "b.npz")
    assert train.num_classes == 5 and test.name == "mine/test"
    assert float(train.x.max()) == 1.0 and train.x.dtype == np.float32  # uint8 -> /255


def test_npz_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_npz(tmp_path / "nope.npz")
    _npz(tmp_path / "m.npz", y_test=None)
    with pytest.raises(DataError, match="x_train, y_train, x_test, y_test") as e:
        load_npz(tmp_path / "m.npz")
    assert "y_test" in str(e.value)
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a readable"):
        load_npz(tmp_path / "bad.npz")
    _npz(tmp_path / "s.npz", x_test=np.zeros((6, 5)))
    with pytest.raises(DataError, match="feature shape"):
        load_npz(tmp_path / "s.npz")
    _npz(tmp_path / "n.npz", y_train=np.arange(9) % 3)
    with pytest.raises(DataError, match="10 inputs but 9 labels"):
        load_npz(tmp_path / "n.npz")
    x = np.zeros((10, 3))
    x[2, 1] = np.nan
    _npz(tmp_path / "nan.npz", x_train=x)
    with pytest.raises(DataError, match="NaN"):
        load_npz(tmp_path / "nan.npz")
    _npz(tmp_path / "r.npz", num_classes=np.int64(2))
    with pytest.raises(DataError, match=r"\[0, 2\)"):
        load_npz(tmp_path / "r.npz")


_BAD_NPZ = {
    # name: (overrides, pieces the one message must contain)
    "huge int label": (dict(y_train=np.array([0, 1, 2, 1, 0, 1, 2, 1, 0, 10**9])),
                       ["y_train", "1000000000", "100000", "np.unique"]),
    "huge float label": (dict(y_test=np.array([0, 1, 2, 0, 1, 1e9])),
                         ["y_test", "1000000000", "100000"]),
    "huge num_classes": (dict(num_classes=np.int64(10**9)), ["num_classes=1000000000"]),
    "negative label": (dict(y_train=np.array([0, 1, 2, -3, 0, 1, 2, 0, 1, 2])), [">= 0", "-3"]),
    "fractional label": (dict(y_train=np.arange(10) % 3 + np.where(np.arange(10) == 4, 0.5, 0)),
                         ["integers", "1.5"]),
    "NaN label": (dict(y_test=np.array([0, 1, np.nan, 0, 1, 2])), ["integers", "NaN"]),
    "string labels": (dict(y_test=np.array(list("abcdef"))), ["integers", "<U1"]),
    "inf input": (dict(x_test=np.where(np.arange(6)[:, None] == 2, np.inf, np.zeros((6, 32)))
                       .reshape(6, 4, 4, 2)), ["x_test", "32 NaN/inf"]),
    "NaN input": (dict(x_train=np.full((10, 4, 4, 2), np.nan)), ["x_train", "320 NaN/inf"]),
    "rows": (dict(y_test=np.arange(5) % 3), ["6 inputs but 5 labels"]),
    "1-d inputs": (dict(x_train=np.zeros(10)), ["(n, features...)", "(10,)"]),
    "column labels": (dict(y_train=(np.arange(10) % 3)[:, None]), ["(n,)", "(10, 1)",
                                                                    "reshape"]),
    "one class": (dict(num_classes=np.int64(1)), ["num_classes must be >= 2"]),
    "float num_classes": (dict(num_classes=np.float64(3.0)), ["scalar integer"]),
}


@pytest.mark.parametrize("case", sorted(_BAD_NPZ))
def test_npz_bad_arrays_one_clear_error(tmp_path, case):
    over, pieces = _BAD_NPZ[case]
    _npz(tmp_path / "bad.npz", **over)
    with pytest.raises(DataError) as e:
        load_npz(tmp_path / "bad.npz")
    for piece in pieces + [repr(os.fspath(tmp_path / "bad.npz"))]:
        assert piece in str(e.value), (piece, str(e.value))


def test_huge_labels_fail_fast_without_allocating(tmp_path):
    """Labels of 1e9 (a user's report) are refused before any per-class array is built."""
    import tracemalloc
    y = np.arange(10) % 3
    y[-1] = 10**9
    _npz(tmp_path / "big.npz", y_train=y)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="1000000000"):
            load_npz(tmp_path / "big.npz")
        with pytest.raises(DataError, match="1000000000"):
            Dataset.from_arrays(np.zeros((2, 3)), np.array([0.0, 1e9]))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20  # a one-hot or bincount over 1e9 classes would be gigabytes


# ---------------------------------------------------------------- Dataset validation


def test_from_arrays_validation():
    x = np.zeros((4, 3), np.float32)
    with pytest.raises(DataError, match="4 inputs but 3 labels"):
        Dataset.from_arrays(x, [0, 1, 0])
    with pytest.raises(DataError, match="labels must have shape"):
        Dataset.from_arrays(x, np.zeros((4, 1), int))
    with pytest.raises(DataError, match=r"\[0, 2\)"):
        Dataset.from_arrays(x, [0, 1, 2, 0], 2)
    with pytest.raises(DataError, match=">= 0"):
        Dataset.from_arrays(x, [0, -1, 1, 0])
    with pytest.raises(DataError, match="integers"):
        Dataset.from_arrays(x, [0.5, 1, 1, 0])
    bad = x.copy()
    bad[0, 0] = np.inf
    with pytest.raises(DataError, match="NaN/inf"):
        Dataset.from_arrays(bad, [0, 1, 1, 0])
    assert issubclass(DataError, ValueError)


# ---------------------------------------------------------------- load_dataset dispatch


def test_load_dataset_unknown_name_lists_valid():
    with pytest.raises(DataError) as e:
        load_dataset("imagenet")
    for name in DATASETS:
        assert name in str(e.value)


def test_load_dataset_env_var(tmp_path, monkeypatch):
    arrays, _ = make_mnist(tmp_path / "mnist", gz=True)
    monkeypatch.delenv("JDD_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="JDD_DATA_DIR"):
        load_dataset("mnist")
    monkeypatch.setenv("JDD_DATA_DIR", os.fspath(tmp_path))
    train, _ = load_dataset("mnist")
    np.testing.assert_array_equal(np.asarray(train.y), arrays["train_labels"])
    make_cifar10(tmp_path)
    assert load_dataset("cifar10")[0].n == 60
    _npz(tmp_path / "toy.npz")
    assert load_dataset("npz", tmp_path / "toy.npz")[1].n == 6


# ---------------------------------------------------------------- digits, splits, sampling


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_digits(digits):
    train, test = digits
    again_train, again_test = load_digits()
    np.testing.assert_array_equal(np.asarray(train.x), np.asarray(again_train.x))
    np.testing.assert_array_equal(np.asarray(test.y), np.asarray(again_test.y))
    assert train.feature_shape == (8, 8, 1) and train.num_classes == 10
    assert train.n + test.n == 1797 and abs(test.n - 450) <= 5
    assert float(train.x.min()) >= 0 and float(train.x.max()) <= 1
    frac = test.class_counts() / (train.class_counts() + test.class_counts())
    np.testing.assert_allclose(frac, 0.25, atol=0.02)  # stratified


def test_stratified_split(digits):
    train, _ = digits
    a, b = stratified_split(jax.random.key(0), train, 0.2, names=("tr", "val"))
    assert a.n + b.n == train.n and (a.name, b.name) == ("tr", "val")
    np.testing.assert_allclose(b.class_counts() / train.class_counts(), 0.2, atol=0.02)
    a2, b2 = stratified_split(jax.random.key(0), train, 0.2)
    np.testing.assert_array_equal(np.asarray(b.x), np.asarray(b2.x))
    # disjoint and covering: tag every example by its index
    tagged = Dataset.from_arrays(np.arange(train.n, dtype=np.float32)[:, None], train.y, 10)
    ta, tb = stratified_split(jax.random.key(0), tagged, 0.2)
    ia, ib = np.asarray(ta.x[:, 0]).astype(int), np.asarray(tb.x[:, 0]).astype(int)
    assert not set(ia) & set(ib)
    np.testing.assert_array_equal(np.sort(np.concatenate([ia, ib])), np.arange(train.n))
    with pytest.raises(ValueError):
        stratified_split(jax.random.key(0), train, 1.0)


def test_stratified_mask_counts_split_and_jit(digits):
    train, _ = digits
    m = stratified_mask(jax.random.key(3), train.y, 10, 0.05)
    # per-class held-out counts: round(0.05 * n_c), written out independently here
    expected = np.round(0.05 * train.class_counts()).astype(int)
    np.testing.assert_array_equal(np.bincount(np.asarray(train.y)[np.asarray(m)], minlength=10),
                                  expected)
    # stratified_split's second part is exactly the masked rows of the same key
    tagged = Dataset.from_arrays(np.arange(train.n, dtype=np.float32)[:, None], train.y, 10)
    _, held = stratified_split(jax.random.key(3), tagged, 0.05)
    np.testing.assert_array_equal(np.asarray(held.x[:, 0]).astype(int), np.flatnonzero(m))
    jm = jax.jit(stratified_mask, static_argnums=(2, 3))(jax.random.key(3), train.y, 10, 0.05)
    np.testing.assert_array_equal(np.asarray(jm), np.asarray(m))
    other = stratified_mask(jax.random.key(4), train.y, 10, 0.05)
    assert not np.array_equal(np.asarray(other), np.asarray(m))
    # rounding per class: 2 * 0.4 -> 1, 1 * 0.4 -> 0, 4 * 0.4 -> 2 (a class of two keeps one
    # row on each side even at 0.9, like stratified_split)
    tiny = np.asarray(stratified_mask(jax.random.key(0), np.array([0, 0, 1, 2, 2, 2, 2]), 3, 0.4))
    assert (tiny[:2].sum(), tiny[2], tiny[3:].sum()) == (1, False, 2)
    assert int(stratified_mask(jax.random.key(0), np.array([0, 0, 1]), 2, 0.9)[:2].sum()) == 1
    with pytest.raises(ValueError, match="fraction"):
        stratified_mask(jax.random.key(0), train.y, 10, 0.0)


def test_sample_per_class(digits):
    train, _ = digits
    s = sample_per_class(jax.random.key(1), train, 5)
    assert s.n == 50 and s.feature_shape == train.feature_shape
    np.testing.assert_array_equal(np.asarray(s.y), np.repeat(np.arange(10), 5))  # class-major
    for c in range(10):
        block = np.asarray(s.x[c * 5:(c + 1) * 5]).reshape(5, -1)
        assert len({r.tobytes() for r in block}) == 5  # distinct draws
    s2 = sample_per_class(jax.random.key(1), train, 5)
    assert np.asarray(s.x).tobytes() == np.asarray(s2.x).tobytes()
    s3 = sample_per_class(jax.random.key(2), train, 5)
    assert np.asarray(s.x).tobytes() != np.asarray(s3.x).tobytes()


def test_ipc_larger_than_class(digits):
    train, _ = digits
    smallest = int(train.class_counts().min())
    with pytest.raises(DataError, match=f"choose ipc <= {smallest}"):
        sample_per_class(jax.random.key(0), train, smallest + 1)
    with pytest.raises(DataError, match="positive integer"):
        check_ipc(np.asarray(train.y), 10, 0)
    check_ipc(np.asarray(train.y), 10, smallest)  # the boundary is fine
