"""Tensor files of the PyTorch world, read and written without running anyone's code.

Formats (:data:`FORMATS`):

* ``safetensors`` (default): a flat dict of tensors plus string metadata, through the
  ``safetensors`` package (its numpy API: no torch needed). Safe by design: no code inside.
* ``npz``: numpy's zip of ``.npy`` arrays, read with ``allow_pickle=False``.
* ``pt``: what ``torch.save`` writes for a tensor or a dict / list of tensors (nested ones are
  named by their path, ``"data.0.0"``: the DC / DSA repositories save ``{"data": [[images,
  labels]], ...}``, MTT a bare images tensor). Writing needs torch (the optional
  ``jdd[torch]`` extra). Reading never imports torch and never runs code from the file: the zip
  archive's pickle is interpreted by :class:`_TensorUnpickler`, which knows the handful of names
  a tensor dict refers to (``torch._utils._rebuild_tensor_v2``, the typed storages, dtypes,
  ``collections.OrderedDict``) and refuses any other global, so a pickled object in a ``.pt``
  file is reported, not executed (the same policy as ``torch.load(weights_only=True)``).
* ``png``: a folder per class of 8-bit images (:mod:`jdd.interop.pngs`).

The pickle reader is written here (not ``torch.load``) so that importing a ``.pt`` file works on
a machine without torch; the layout it reads (``ARCHIVE/data.pkl`` referring to raw storages
``ARCHIVE/data/KEY`` through persistent ids ``('storage', StorageType, key, location, numel)``,
``ARCHIVE/byteorder``) is torch's zip serialisation format since torch 1.6, checked against a
file written by torch itself (``tests/fixtures/torch_dict.pt``).
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from typing import Mapping

import numpy as np

#: Formats of ``jdd export`` / ``jdd import``.
FORMATS = ("safetensors", "npz", "pt", "png")

#: File suffix of each tensor format.
SUFFIX = {"safetensors": ".safetensors", "npz": ".npz", "pt": ".pt"}


class FormatError(ValueError):
    """A file that is not what it claims to be; the message names the file and what was expected."""


def format_of(path: str) -> str:
    """The format of ``path``: a folder is ``png``; otherwise by its suffix (``.pth`` and ``.bin``
    are ``pt``)."""
    if os.path.isdir(path):
        return "png"
    ext = os.path.splitext(path)[1].lower()
    by_ext = {".safetensors": "safetensors", ".npz": "npz", ".pt": "pt", ".pth": "pt",
              ".bin": "pt"}
    if ext not in by_ext:
        raise FormatError(f"{path}: unknown file type {ext or '(no suffix)'!r}; expected "
                          f".safetensors, .npz, .pt / .pth, or a folder of PNGs per class")
    return by_ext[ext]


# ----------------------------------------------------------------------------- writing

def tensor_bytes(tensors: Mapping[str, np.ndarray], fmt: str,
                 metadata: str | None = None) -> bytes:
    """Serialise a flat dict of arrays in ``fmt`` (``safetensors``, ``npz`` or ``pt``).

    Args:
        tensors: name -> array (numeric; 0-d allowed).
        fmt: one of ``safetensors``, ``npz``, ``pt``.
        metadata: a string stored with the tensors (safetensors' metadata ``"jdd"``; the npz key
            ``__metadata__``; ignored for ``pt``, whose readers expect tensors only).

    Raises:
        FormatError: ``pt`` without torch installed.
    """
    arrays = {k: np.array(v, order="C") for k, v in tensors.items()}  # 0-d stays 0-d
    if fmt == "safetensors":
        from safetensors.numpy import save
        return save(arrays, metadata={"jdd": metadata} if metadata is not None else None)
    if fmt == "npz":
        buf = io.BytesIO()
        extra = {"__metadata__": np.asarray(metadata)} if metadata is not None else {}
        np.savez(buf, **arrays, **extra)
        return buf.getvalue()
    if fmt == "pt":
        try:
            import torch
        except ImportError:
            raise FormatError("--format pt needs torch, which is not installed: pip install "
                              "'jdd[torch]' (or export safetensors, which PyTorch code reads "
                              "with safetensors.torch.load_file)") from None
        def as_tensor(a: np.ndarray):
            # through the bytes, not torch.from_numpy: works whatever numpy torch was built for
            dtype = getattr(torch, {"bool": "bool"}.get(a.dtype.name, a.dtype.name))
            flat = torch.frombuffer(bytearray(a.astype(a.dtype.newbyteorder("<")).tobytes()),
                                    dtype=dtype) if a.size else torch.zeros(0, dtype=dtype)
            return flat.reshape(a.shape).clone()

        buf = io.BytesIO()
        torch.save({k: as_tensor(v) for k, v in arrays.items()}, buf)
        return buf.getvalue()
    raise FormatError(f"unknown tensor format {fmt!r}; expected one of {', '.join(SUFFIX)}")


# ----------------------------------------------------------------------------- reading

def read_tensors(path: str) -> tuple[dict[str, np.ndarray], str | None]:
    """Read a flat dict of arrays (and the metadata string, when the file has one).

    Raises:
        FileNotFoundError: no such file.
        FormatError: unreadable, truncated or not a dict of tensors; a ``.pt`` whose pickle
            refers to anything but tensor data (never executed).
    """
    fmt = format_of(path)
    if fmt == "png":
        raise FormatError(f"{path} is a folder; read PNG folders with jdd.interop.pngs")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no file at {path}")
    with open(path, "rb") as f:
        raw = f.read()
    if fmt == "safetensors":
        return _read_safetensors(path, raw)
    if fmt == "npz":
        return _read_npz(path, raw)
    return _read_pt(path, raw), None


def _read_safetensors(path: str, raw: bytes):
    import json
    import struct
    from safetensors.numpy import load
    try:
        tensors = load(raw)
        n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8:8 + n])
    except Exception as e:  # the library raises its own SafetensorError / ValueError types
        raise FormatError(f"{path} is not a readable safetensors file ({e}); it may be "
                          f"truncated or another format") from None
    meta = (header.get("__metadata__") or {}).get("jdd")
    return dict(tensors), meta


def _read_npz(path: str, raw: bytes):
    from jdd.artifacts import npz_arrays
    try:
        arrays = npz_arrays(raw)
    except ValueError as e:
        raise FormatError(f"{path} could not be read as .npz ({e}); it may be truncated, hold "
                          f"pickled objects (refused) or be another format") from None
    meta = arrays.pop("__metadata__", None)
    return arrays, (str(meta.item()) if meta is not None and meta.ndim == 0 else None)


#: torch storage class name -> numpy dtype (the storages of torch's zip format).
_STORAGES = {"DoubleStorage": np.float64, "FloatStorage": np.float32,
             "HalfStorage": np.float16, "LongStorage": np.int64, "IntStorage": np.int32,
             "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
             "BoolStorage": np.bool_}
#: torch dtype name -> numpy dtype (``torch.storage.UntypedStorage`` pickles carry a dtype).
_DTYPES = {"float64": np.float64, "float32": np.float32, "float16": np.float16,
           "int64": np.int64, "int32": np.int32, "int16": np.int16, "int8": np.int8,
           "uint8": np.uint8, "bool": np.bool_}


class _Storage:
    """A storage's element type, as pickled (a torch storage class or a torch dtype)."""

    def __init__(self, name: str, dtype):
        self.name, self.dtype = name, np.dtype(dtype)


def _rebuild_tensor(storage, offset, size, stride, *_):
    """``torch._utils._rebuild_tensor_v2`` on a numpy storage: a strided view, copied."""
    if not isinstance(storage, np.ndarray):
        raise pickle.UnpicklingError("a tensor whose storage is not raw data")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if size and (offset + sum((n - 1) * s for n, s in zip(size, stride)) >= storage.size
                 or min(stride) < 0):
        raise pickle.UnpicklingError(f"a tensor of size {size} and stride {stride} at offset "
                                     f"{offset} does not fit its storage of {storage.size}")
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                           strides=tuple(s * item for s in stride))
    return np.array(view)


def _ordered_dict(*args):
    import collections
    return collections.OrderedDict(*args)


class _TensorUnpickler(pickle.Unpickler):
    """Interprets torch's ``data.pkl`` of a dict of tensors, refusing every other global."""

    def __init__(self, fileobj, archive: zipfile.ZipFile, prefix: str, order: str, path: str):
        super().__init__(fileobj)
        self.archive, self.prefix, self.order, self.path = archive, prefix, order, path

    def find_class(self, module, name):
        if (module, name) in (("torch._utils", "_rebuild_tensor_v2"),
                              ("torch._utils", "_rebuild_tensor")):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return _ordered_dict
        if module == "torch" and name in _STORAGES:
            return _Storage(name, _STORAGES[name])
        if module == "torch" and name in _DTYPES:
            return _Storage(name, _DTYPES[name])
        raise pickle.UnpicklingError(
            f"{self.path}: the file's pickle refers to {module}.{name}, which is code or an "
            f"object, not tensor data; refused without running it (jdd reads .pt files "
            f"weights-only: a dict of tensors saved with torch.save)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _Storage)):
            raise pickle.UnpicklingError(f"{self.path}: unexpected persistent id {pid!r}")
        kind, key, numel = pid[1], str(pid[2]), int(pid[4])
        try:
            data = self.archive.read(f"{self.prefix}data/{key}")
        except KeyError:
            raise pickle.UnpicklingError(f"storage {key} is missing from the archive") from None
        dtype = kind.dtype.newbyteorder("<" if self.order == "little" else ">")
        if len(data) != numel * dtype.itemsize:
            raise pickle.UnpicklingError(f"storage {key} holds {len(data)} bytes; expected "
                                         f"{numel} x {dtype.itemsize} (truncated?)")
        return np.frombuffer(data, dtype).astype(kind.dtype)


def _read_pt(path: str, raw: bytes) -> dict[str, np.ndarray]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
        names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        raise FormatError(f"{path} is not a torch zip archive (torch >= 1.6's torch.save "
                          f"format); it may be truncated, an older torch file (re-save it with "
                          f"a current torch) or another format") from None
    pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pkl) != 1:
        raise FormatError(f"{path}: a zip archive without torch's ARCHIVE/data.pkl; not a file "
                          f"written by torch.save")
    prefix = pkl[0][:-len("data.pkl")]
    order = "little"
    if prefix + "byteorder" in names:
        order = archive.read(prefix + "byteorder").decode("ascii", "replace").strip()
    try:
        obj = _TensorUnpickler(io.BytesIO(archive.read(pkl[0])), archive, prefix, order,
                               path).load()
    except pickle.UnpicklingError as e:
        raise FormatError(str(e) if str(e).startswith(path) else f"{path}: {e}") from None
    except (EOFError, zipfile.BadZipFile, ValueError, TypeError, IndexError, KeyError,
            AttributeError) as e:
        raise FormatError(f"{path}: torch archive could not be read ({type(e).__name__}: "
                          f"{e}); it may be truncated or corrupt") from None
    tensors = flatten(obj)
    if not tensors:
        raise FormatError(f"{path}: holds no tensors (a {type(obj).__name__}); expected a "
                          f"tensor, or a dict / list of tensors, as torch.save writes them")
    return tensors


def flatten(obj, prefix: str = "") -> dict[str, np.ndarray]:
    """The tensors of a nested dict / list / tuple, named by their path (``"data.0.1"``); a bare
    tensor is ``"images"`` (MTT saves ``images_best.pt`` so). Other values (numbers, strings)
    are dropped."""
    if isinstance(obj, np.ndarray):
        return {prefix or "images": obj}
    items = (obj.items() if isinstance(obj, dict) else
             enumerate(obj) if isinstance(obj, (list, tuple)) else ())
    out: dict[str, np.ndarray] = {}
    for k, v in items:
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out
