"""The stored size of a synthetic set, counted the same way for every method (issue 11: papers
count bytes differently, so jdd writes the arithmetic out).

One seed's set is: its inputs (``m * prod(feature_shape)`` numbers at the set's precision: 4 bytes
in float32, 8 for the float64 closed form), its labels (soft labels count in full, ``m * k``
numbers at that precision; hard labels one int32 class id per example) and its learned
learning rate (one float32 when the set has one). The full training set it replaces is counted
as float32 inputs and int32 labels. A parameterisation that stores factors instead of pixels
reports its factors as the inputs.
"""

from __future__ import annotations

import numpy as np


def is_one_hot(y) -> bool:
    """Whether labels (..., k) are one-hot rows (hard labels, stored as class ids)."""
    y = np.asarray(y)
    return bool(np.all((y == 0) | (y == 1)) and np.all(y.sum(-1) == 1))


def set_storage(x, y, lr, hard_labels: bool, full_n: int | None = None,
                stored: dict | None = None) -> dict:
    """Floats and bytes of ONE seed's set (and of the full data when ``full_n`` is given).

    Args:
        x: (seeds, m, *feature_shape) inputs as a learner consumes them.
        y: (seeds, m, k) labels.
        lr: (seeds,) learned rates (NaN: none).
        hard_labels: the labels are one-hot (stored as class ids).
        full_n: examples of the full training set.
        stored: name -> (seeds, ...) arrays that store the inputs when they are not ``x``
            itself (low-rank factors); None: ``x`` is stored.

    Returns:
        ``examples, inputs_stored_as, inputs_floats, labels_values, labels_kind, lr_floats,
        bytes_per_value, inputs_bytes, labels_bytes, lr_bytes, total_bytes`` and, with
        ``full_n``, ``full_data`` (``examples, inputs_floats, labels_values, total_bytes``) and
        ``fraction_of_full_data``.
    """
    x, y, lr = np.asarray(x), np.asarray(y), np.asarray(lr)
    item = 8 if x.dtype == np.float64 else 4
    m = int(y.shape[1])
    if stored:
        x_f = sum(int(np.prod(np.shape(a)[1:])) for a in stored.values())
        item = max(np.asarray(a).dtype.itemsize for a in stored.values())
    else:
        x_f = int(np.prod(x.shape[1:]))
    y_f = m if hard_labels else int(np.prod(y.shape[1:]))
    lr_f = int(np.isfinite(lr.reshape(-1)[0])) if lr.size else 0
    out = {"examples": m,
           "inputs_stored_as": "+".join(f"{k}{list(np.shape(a)[1:])}" for k, a in
                                        stored.items()) if stored else "inputs",
           "inputs_floats": x_f, "labels_values": y_f,
           "labels_kind": "class ids (int32)" if hard_labels else "soft/regression targets",
           "lr_floats": lr_f, "bytes_per_value": item, "inputs_bytes": item * x_f,
           "labels_bytes": 4 * y_f if hard_labels else item * y_f, "lr_bytes": 4 * lr_f}
    out["total_bytes"] = out["inputs_bytes"] + out["labels_bytes"] + out["lr_bytes"]
    if full_n is not None:
        d = int(np.prod(x.shape[2:]))
        full = {"examples": int(full_n), "inputs_floats": int(full_n) * d,
                "labels_values": int(full_n), "total_bytes": 4 * (int(full_n) * d + int(full_n))}
        out["full_data"] = full
        out["fraction_of_full_data"] = out["total_bytes"] / full["total_bytes"]
    return out


def subset_bytes(ipc: int, num_classes: int, feature_shape) -> int:
    """Bytes of a random subset of ``ipc`` real examples per class (float32 inputs, int32 ids)."""
    n = ipc * num_classes
    return 4 * (n * int(np.prod(feature_shape)) + n)


def human(n: int) -> str:
    """``1234567`` -> ``"1.18 MiB"``."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"
