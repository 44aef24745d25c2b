"""Folders of PNG images, one sub-folder per class (the layout torchvision's ``ImageFolder`` and
most distillation repositories write), through Pillow.

Writing: ``FOLDER/<class index, 2+ digits>/<example index, 3+ digits>.png``, 8-bit grey or RGB.
Pixel values in ``[lo, hi]`` map linearly to ``0..255`` (values outside are clipped; a distilled
image may overshoot the data's ``[0, 1]``, so ``lo, hi`` default to the set's own range and are
recorded in ``export.json``). Eight bits per channel lose up to half a step, ``(hi - lo) / 510``:
PNG is for looking at and for tools that only read images; ``safetensors`` / ``npz`` are exact.

Reading: every ``*.png`` in each class folder (sorted by name). Class folders named by integers
are those classes; otherwise the sorted folder names are classes ``0, 1, ...``. Images become
floats ``lo + (hi - lo) * value / 255`` (``0..1`` when no ``export.json`` says otherwise).
"""

from __future__ import annotations

import io
import os

import numpy as np

from jdd.interop.formats import FormatError


def png_bytes(image: np.ndarray) -> bytes:
    """Encode one (h, w, c) uint8 image (c = 1 or 3) as PNG."""
    from PIL import Image
    arr = np.asarray(image, np.uint8)
    img = Image.fromarray(arr[..., 0], "L") if arr.shape[-1] == 1 else Image.fromarray(arr, "RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def to_uint8(images: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(m, h, w, c) floats in ``[lo, hi]`` -> uint8 ``0..255`` (rounded, clipped)."""
    scaled = (np.asarray(images, np.float64) - lo) / (hi - lo) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def write_folder(folder: str, images: np.ndarray, labels: np.ndarray, lo: float,
                 hi: float) -> list[str]:
    """Write (m, h, w, c) images with (m,) int labels into ``folder`` (which must exist).

    Returns:
        The written paths relative to ``folder``, in the order of ``images``.
    """
    from jdd.artifacts import atomic_write
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise FormatError(f"PNG export needs images (m, h, w, 1 or 3); got shape {images.shape}")
    digits = max(2, len(str(int(labels.max()))))
    pixels = to_uint8(images, lo, hi)
    count: dict[int, int] = {}
    names = []
    for img, c in zip(pixels, labels.tolist()):
        i = count.get(c, 0)
        count[c] = i + 1
        rel = os.path.join(f"{c:0{digits}d}", f"{i:03d}.png")
        os.makedirs(os.path.join(folder, os.path.dirname(rel)), exist_ok=True)
        with atomic_write(os.path.join(folder, rel)) as f:
            f.write(png_bytes(img))
        names.append(rel)
    return names


def read_folder(folder: str, lo: float = 0.0, hi: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Read a folder of class folders of PNGs.

    Returns:
        (m, h, w, c) float32 images in ``[lo, hi]`` and (m,) int64 labels.

    Raises:
        FormatError: no class folders, a class folder without PNGs, an unreadable PNG, images of
            different sizes or channel counts.
    """
    from PIL import Image, UnidentifiedImageError
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no folder at {folder}")
    classes = sorted(d for d in os.listdir(folder)
                     if os.path.isdir(os.path.join(folder, d)) and not d.startswith("."))
    if not classes:
        raise FormatError(f"{folder}: no class folders; expected FOLDER/<class>/<image>.png")
    numeric = all(c.isdigit() for c in classes)
    ids = [int(c) for c in classes] if numeric else list(range(len(classes)))
    images, labels = [], []
    shape = None
    for name, cid in zip(classes, ids):
        files = sorted(f for f in os.listdir(os.path.join(folder, name))
                       if f.lower().endswith(".png"))
        if not files:
            raise FormatError(f"{folder}/{name}: a class folder without .png files")
        for f in files:
            path = os.path.join(folder, name, f)
            try:
                with Image.open(path) as img:
                    img.load()
                    mode = img.mode
                    if mode not in ("L", "RGB"):
                        raise FormatError(f"{path}: PNG mode {mode!r}; expected 8-bit grey (L) "
                                          f"or RGB")
                    arr = np.asarray(img)
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
                if isinstance(e, FormatError):
                    raise
                raise FormatError(f"{path}: not a readable PNG ({e})") from None
            arr = arr[..., None] if arr.ndim == 2 else arr
            if shape is not None and arr.shape != shape:
                raise FormatError(f"{path}: image of shape {arr.shape}; the others are {shape}")
            shape = arr.shape
            images.append(arr)
            labels.append(cid)
    x = lo + (hi - lo) * np.stack(images).astype(np.float32) / np.float32(255.0)
    return x.astype(np.float32), np.asarray(labels, np.int64)
