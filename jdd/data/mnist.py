"""MNIST and Fashion-MNIST from the standard IDX files (gzipped or not).

The IDX format (LeCun et al.) is a big-endian header followed by raw bytes:

* bytes 0-1: zero; byte 2: element type (``0x08`` = unsigned byte); byte 3: number of dims;
* then one big-endian uint32 per dim; then ``prod(dims)`` elements.

So an image file starts with the magic number ``0x00000803`` (ubyte, 3 dims: n, rows, cols) and a
label file with ``0x00000801`` (ubyte, 1 dim: n). Every file is checked against this before its
data is used; a wrong magic number, a count that disagrees with the other file, or a file whose
length does not match its header raises one :class:`~jdd.data.dataset.DataError` naming the file.
"""

from __future__ import annotations

import gzip
import os
import struct as _struct
import zlib

import numpy as np

from jdd.data.dataset import DataError, Dataset

#: The four IDX files, by role, without the optional ``.gz`` suffix.
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

#: Where Debian/Ubuntu's ``dataset-fashion-mnist`` package installs the four gzipped IDX files
#: (``train-images-idx3-ubyte.gz`` etc.). :func:`find_fashion_mnist` looks here last.
FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"

#: The command that installs :data:`FASHION_MNIST_SYSTEM_DIR`.
FASHION_MNIST_APT = "apt-get install dataset-fashion-mnist"

_IMAGE_MAGIC = 0x00000803
_LABEL_MAGIC = 0x00000801


def mnist_search_dirs(data_dir: str | os.PathLike, *, fashion: bool = False) -> list[str]:
    """The folders searched for the IDX files, in order.

    ``data_dir`` itself first, then the conventional subfolders: ``mnist`` and ``MNIST/raw``
    (torchvision's layout) for MNIST, ``fashion_mnist``, ``fashion-mnist`` and
    ``FashionMNIST/raw`` for Fashion-MNIST.
    """
    root = os.path.expanduser(os.fspath(data_dir))
    subs = (["fashion_mnist", "fashion-mnist", os.path.join("FashionMNIST", "raw")] if fashion
            else ["mnist", "MNIST", os.path.join("MNIST", "raw")])
    return [root] + [os.path.join(root, s) for s in subs]


def _candidates(folder: str, base: str) -> list[str]:
    # "train-images.idx3-ubyte" is a common variant of "train-images-idx3-ubyte".
    variant = base.replace("-idx", ".idx")
    return [os.path.join(folder, b + ext) for b in (base, variant) for ext in ("", ".gz")]


def _search(root: str, fashion: bool) -> tuple[dict[str, str] | None, list[str], str]:
    """Search ``root`` and its conventional subfolders: (files or None, folders seen, note)."""
    looked, partial = [], ""
    for folder in mnist_search_dirs(root, fashion=fashion):
        if not os.path.isdir(folder):
            continue
        looked.append(folder)
        found = {}
        for role, base in MNIST_FILES.items():
            hits = [p for p in _candidates(folder, base) if os.path.isfile(p)]
            if hits:
                found[role] = hits[0]
        if len(found) == len(MNIST_FILES):
            return found, looked, ""
        if found and not partial:
            missing = [MNIST_FILES[r] for r in MNIST_FILES if r not in found]
            partial = f" {folder!r} has some of them but lacks {', '.join(missing)}."
    return None, looked, partial


def _expected_files() -> str:
    return ", ".join(f"{b}[.gz]" for b in MNIST_FILES.values())


def find_mnist_files(data_dir: str | os.PathLike, *, fashion: bool = False) -> dict[str, str]:
    """Locate the four IDX files; all four must be in the same folder.

    Returns:
        dict role -> path, roles as in :data:`MNIST_FILES`.

    Raises:
        DataError: the folder does not exist, or no searched folder holds all four files (the
            message lists the expected files and every folder looked in).
    """
    root = os.path.expanduser(os.fspath(data_dir))
    what = "Fashion-MNIST" if fashion else "MNIST"
    if not os.path.isdir(root):
        raise DataError(f"{what}: data directory {root!r} does not exist (or is not a folder); "
                        f"pass the folder that holds the IDX files.")
    found, looked, partial = _search(root, fashion)
    if found is not None:
        return found
    raise DataError(f"{what}: could not find all four IDX files ({_expected_files()}) in one "
                    f"folder; looked in: {', '.join(repr(f) for f in looked)}.{partial} Download "
                    f"them and place "
                    f"them in {root!r} or one of its subfolders "
                    f"{', '.join(repr(s) for s in mnist_search_dirs(root, fashion=fashion)[1:])}.")


def fashion_mnist_places(data_dir: str | os.PathLike | None = None) -> list[tuple[str, str | None]]:
    """The places :func:`find_fashion_mnist` searches, in order, as ``(what, folder)`` pairs.

    ``("data_dir", data_dir)``, ``("$JDD_DATA_DIR", its value)`` and ``("system folder",``
    :data:`FASHION_MNIST_SYSTEM_DIR` ``)``; folder is None for an argument not given or a variable
    not set (empty counts as unset).
    """
    given = os.fspath(data_dir) if data_dir is not None else ""
    env = os.environ.get("JDD_DATA_DIR", "")
    return [("data_dir", os.path.expanduser(given) if given else None),
            ("$JDD_DATA_DIR", os.path.expanduser(env) if env else None),
            ("system folder", FASHION_MNIST_SYSTEM_DIR)]


def find_fashion_mnist(data_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """Locate the Fashion-MNIST IDX files: ``data_dir``, then ``$JDD_DATA_DIR``, then the system
    folder :data:`FASHION_MNIST_SYSTEM_DIR` (Debian's ``dataset-fashion-mnist`` package).

    ``data_dir`` and ``$JDD_DATA_DIR`` are searched with their conventional subfolders
    (:func:`mnist_search_dirs`). The first place with all four files in one folder wins; a place
    that is missing or incomplete is skipped (files that are found but corrupt still raise).

    Returns:
        dict role -> path, roles as in :data:`MNIST_FILES`.

    Raises:
        DataError: no place holds the files; the one message names every place searched, in
            order, and says to run ``apt-get install dataset-fashion-mnist`` or where to put the
            files.
    """
    notes = []
    for what, root in fashion_mnist_places(data_dir):
        if root is None:
            notes.append(f"{what} ({'not given' if what == 'data_dir' else 'not set'})")
            continue
        if not os.path.isdir(root):
            notes.append(f"{what} {root!r} (does not exist or is not a folder)")
            continue
        found, looked, partial = _search(root, True)
        if found is not None:
            return found
        where = ", ".join(repr(f) for f in looked)
        notes.append(f"{what} {root!r} (no complete set in {where}"
                     + (f";{partial.rstrip('.')})" if partial else ")"))
    raise DataError(f"Fashion-MNIST: could not find the four IDX files ({_expected_files()}) in "
                    f"one folder. Searched, in order: {'; '.join(notes)}. Install them with "
                    f"`sudo {FASHION_MNIST_APT}` (Debian/Ubuntu; it puts them in "
                    f"{FASHION_MNIST_SYSTEM_DIR!r}), or download them into a folder and pass "
                    f"data_dir=... (CLI: --data-dir) or set JDD_DATA_DIR.")


def _read_bytes(path: str) -> bytes:
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"could not read {path!r}: {e}. The file is corrupt or truncated; "
                        f"download it again.") from e


def read_idx(path: str, *, ndim: int) -> np.ndarray:
    """Read one unsigned-byte IDX file and check it completely.

    Args:
        path: an IDX file, gzipped when the name ends in ``.gz``.
        ndim: the expected number of dims (3 for images, 1 for labels).

    Returns:
        uint8 array of the shape written in the header.

    Raises:
        DataError: unreadable file, bad magic number, wrong number of dims, or a length that does
            not match the header (truncated or padded file).

    Example (reads files you already have)::

            labels = read_idx("train-labels-idx1-ubyte.gz", ndim=1)
    """
    raw = _read_bytes(path)
    head = 4 + 4 * ndim
    magic = 0x0800 | ndim
    if len(raw) < 4:
        raise DataError(f"{path!r}: file is only {len(raw)} bytes; expected an IDX header "
                        f"starting with magic number {magic:#010x}.")
    got = _struct.unpack(">I", raw[:4])[0]
    if got != magic:
        raise DataError(f"{path!r}: bad magic number {got:#010x}; expected {magic:#010x} "
                        f"(unsigned-byte IDX file with {ndim} dims). Is this the right file?")
    if len(raw) < head:
        raise DataError(f"{path!r}: truncated header: {len(raw)} bytes, expected at least "
                        f"{head}.")
    dims = _struct.unpack(f">{ndim}I", raw[4:head])
    expected = head + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        kind = "truncated" if len(raw) < expected else "longer than its header says"
        raise DataError(f"{path!r}: file is {kind}: {len(raw)} bytes, expected {expected} "
                        f"(header {head} + data for shape {tuple(dims)}). Download it again.")
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(dims)


def load_mnist(data_dir: str | os.PathLike, *, fashion: bool = False) -> tuple[Dataset, Dataset]:
    """Load MNIST (or Fashion-MNIST) from the standard IDX files.

    Looks in ``data_dir`` and its conventional subfolders (:func:`mnist_search_dirs`) for
    ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
    ``t10k-labels-idx1-ubyte``, each optionally gzipped (``.gz``).

    Args:
        data_dir: folder holding the files (or a parent of the conventional subfolders).
        fashion: load Fashion-MNIST instead of MNIST (same format, different folders and name).

    Returns:
        (train, test): ``x`` is (n, 28, 28, 1) float32 in [0, 1] (pixel / 255), ``y`` (n,) int32
        in [0, 10); 60000 train and 10000 test examples for the full files. Names are
        ``"mnist/train"`` etc. or ``"fashion_mnist/train"`` etc.

    Raises:
        DataError: missing folder or files, bad magic numbers, truncated files, image and label
            counts that disagree, labels >= 10.

    Example (reads files you already have)::

            train, test = load_mnist("~/data")
            train.feature_shape
    """
    return _load_files(find_mnist_files(data_dir, fashion=fashion),
                       "fashion_mnist" if fashion else "mnist")


def load_fashion_mnist(data_dir: str | os.PathLike | None = None) -> tuple[Dataset, Dataset]:
    """Load Fashion-MNIST, found by :func:`find_fashion_mnist`.

    Searches ``data_dir``, then ``$JDD_DATA_DIR`` (each with its conventional subfolders), then
    :data:`FASHION_MNIST_SYSTEM_DIR`, where ``apt-get install dataset-fashion-mnist`` puts the
    files. Returns and raises as :func:`load_mnist` (names ``"fashion_mnist/train"`` etc.).

    Example (needs the files, e.g. from the Debian package)::

            train, test = load_fashion_mnist()
            train.n, test.n   # (60000, 10000)
    """
    return _load_files(find_fashion_mnist(data_dir), "fashion_mnist")


def _load_files(paths: dict[str, str], name: str) -> tuple[Dataset, Dataset]:
    out = []
    for split in ("train", "test"):
        ipath, lpath = paths[f"{split}_images"], paths[f"{split}_labels"]
        images = read_idx(ipath, ndim=3)
        labels = read_idx(lpath, ndim=1)
        if images.shape[0] != labels.shape[0]:
            raise DataError(f"{name}/{split}: {ipath!r} holds {images.shape[0]} images but "
                            f"{lpath!r} holds {labels.shape[0]} labels; they must match.")
        if labels.size and int(labels.max()) >= 10:
            raise DataError(f"{lpath!r}: labels must be in [0, 10); found {int(labels.max())}.")
        x = (images.astype(np.float32) / np.float32(255.0))[..., None]
        out.append(Dataset.from_arrays(x, labels.astype(np.int32), 10, f"{name}/{split}"))
    return out[0], out[1]
