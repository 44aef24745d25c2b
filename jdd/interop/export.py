"""``jdd export``: a distilled set in pixel space, for people who train in PyTorch.

A run's ``distilled.npz`` holds the set in the space it was distilled in (standardised or
ZCA-whitened). Export inverts the saved preprocessing, so the files hold images on the data's own
pixel scale (the loaders' ``[0, 1]``: pixels / 255, digits / 16), and writes for every seed

* ``seedI.safetensors`` | ``seedI.npz`` | ``seedI.pt``: tensors ``images`` (m, c, h, w) with
  ``--layout nchw`` (PyTorch's order, the default) or (m, h, w, c) with ``nhwc`` (``inputs``
  (m, d) for vector data), ``labels`` (m,) int64 hard labels (the argmax of the set's labels),
  ``soft_labels`` (m, k) float32 (the set's labels as distilled: one-hot when they are hard),
  and ``lr`` (a 0-d float32) when the set learned an inner learning rate;
* or ``seedI/CLASS/J.png`` (``--format png``: 8-bit, see :mod:`jdd.interop.pngs`);

and ``export.json``: the run, the method, the dataset, the preprocessing to apply before training
on the images (kind, per-channel mean and std, ZCA regulariser: the same transform must be fitted
on the real training set), the evaluation recipe the run's numbers were measured with, the
learned rates, and the files. safetensors files carry the same JSON in their metadata (key
``"jdd"``). The folder is written as one run folder (staging, lock, ``manifest.json``:
:mod:`jdd.rundir`): an interrupted export leaves nothing half-written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np

from jdd.config import opt
from jdd.interop.formats import FORMATS, SUFFIX, FormatError, tensor_bytes


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """``jdd export`` options."""

    format: str = opt("safetensors", "file format (pt needs torch installed)", choices=FORMATS)
    out: str | None = opt(None, "output folder (none: RUN/export-FORMAT)")
    layout: str = opt("nchw", "image tensor layout: nchw (PyTorch) or nhwc (JAX / TF)",
                      choices=("nchw", "nhwc"))
    seed: int | None = opt(None, "export only this seed of the run (none: every seed)", ge=0,
                           le=100000)
    overwrite: bool = opt(False, "replace an existing export folder")
    quiet: bool = opt(False, "print nothing")


def pixel_sets(ds) -> np.ndarray:
    """(seeds, m, *feature_shape) float32: every seed's inputs mapped back to pixel space."""
    pre = ds.preprocessor
    return np.stack([np.asarray(pre.invert(np.asarray(x, np.float32))) for x in ds.x])


#: The extra tensor of jdd's tensor exports: the set exactly as jdd trains on it (the saved
#: preprocessing applied), so that a jdd-to-jdd round trip is bit-exact: float32 pixels cannot
#: carry it (mapping to pixel space and back moves inputs by an ulp or two, and networks trained
#: for hundreds of epochs turn that into different models). Other tools ignore it.
EXACT_KEY = "jdd_preprocessed"


def preprocessing_digest(pre) -> str:
    """SHA-256 of a fitted preprocessor's kind and arrays (equal digests: the same transform)."""
    h = hashlib.sha256(pre.kind.encode())
    for name in ("mean", "std", "zca"):
        a = getattr(pre, name)
        h.update(name.encode())
        if a is not None:
            a = np.ascontiguousarray(np.asarray(a, np.float32))
            h.update(str(a.shape).encode() + a.tobytes())
    return h.hexdigest()


def preprocessing_description(ds) -> dict:
    """The saved preprocessing as JSON: kind, per-channel statistics, ZCA regulariser."""
    pre = ds.preprocessor
    out = {"kind": pre.kind, "fitted_on": f"the {ds.meta['dataset']} training set",
           "zca_reg": ds.meta.get("zca_reg") if pre.kind == "zca" else None,
           "sha256": preprocessing_digest(pre)}
    if pre.kind != "none":
        for name in ("mean", "std"):
            a = np.asarray(getattr(pre, name))
            out[name] = (a.reshape(-1).tolist() if a.size <= 64 else
                         f"per feature, shape {list(a.shape)} (h, w, c)")
        out["apply"] = ("(images - mean) / std" + (
            ", then ZCA whitening (flattened) fitted on the same data" if pre.kind == "zca"
            else "") + ", in the layout (h, w, c)")
    return out


def describe(ds, cfg: ExportConfig, set_sha: str, seeds: list[int], lo: float,
             hi: float) -> dict:
    """The ``export.json`` of an export (without its file list)."""
    meta = ds.meta
    lr = np.asarray(ds.lr, np.float64)
    image = ds.x.ndim == 5
    return {
        "format": cfg.format, "layout": cfg.layout if image and cfg.format != "png" else None,
        "run_id": meta.get("run_id"), "set_sha256": set_sha, "method": meta["method"],
        "dataset": meta["dataset"], "num_classes": int(ds.y.shape[2]), "ipc": meta["ipc"],
        "seeds": seeds, "examples_per_seed": int(ds.x.shape[1]),
        "feature_shape_hwc": list(ds.x.shape[2:]),
        "pixel_space": "the data's pixel scale as jdd loads it: [0, 1] (pixel / 255; digits "
                       "pixel / 16); distilled images may overshoot it",
        "png_range": [lo, hi] if cfg.format == "png" else None,
        "tensors": {"images" if image else "inputs": "the synthetic inputs in pixel space",
                    "labels": "int64 hard labels: argmax of the set's labels",
                    "soft_labels": "float32 (m, k): the set's labels as distilled",
                    "lr": "0-d float32 learned inner learning rate (absent when none)",
                    EXACT_KEY: "float32 (m, h, w, c) or (m, *features): the inputs as jdd "
                               "trains on them (preprocessing applied); jdd import uses it "
                               "when its own preprocessing has the same sha256, so that a "
                               "round trip is exact"},
        "learned_lr": [None if np.isnan(v) else float(v) for v in lr[seeds]],
        "preprocessing": preprocessing_description(ds),
        "evaluation_recipe": meta.get("learner"),
        "method_config": meta.get("config"),
    }


def export_run(run: str, cfg: ExportConfig = ExportConfig()) -> tuple[str, dict]:
    """Export a run folder (or its ``distilled.npz``) as :class:`ExportConfig` says.

    Args:
        run: a ``jdd distill`` run folder, or a ``distilled.npz``.
        cfg: the options (validated here).

    Returns:
        (the export folder, the ``export.json`` written).

    Raises:
        jdd.config.ConfigError: a bad option; FileNotFoundError / ValueError: the run cannot be
            read; FormatError: ``pt`` without torch, ``png`` for non-image data, a seed the run
            does not have; jdd.rundir.RunFolderError: the folder holds an export and no
            ``overwrite``, or another writer holds it.
    """
    from jdd.artifacts import atomic_write, load_distilled_with_hash, write_json
    from jdd.config import validate
    from jdd.interop import pngs
    from jdd.rundir import RunWriter
    validate(cfg)
    ds, set_sha = load_distilled_with_hash(run)
    seeds_all = ds.x.shape[0]
    if cfg.seed is not None and cfg.seed >= seeds_all:
        raise FormatError(f"--seed {cfg.seed}: the run has {seeds_all} seed(s) (0 to "
                          f"{seeds_all - 1})")
    image = ds.x.ndim == 5
    if cfg.format == "png" and not (image and ds.x.shape[-1] in (1, 3)):
        raise FormatError(f"--format png needs images with 1 or 3 channels; this set's inputs "
                          f"have shape {ds.x.shape[2:]}: use safetensors or npz")
    if cfg.format == "pt":
        tensor_bytes({}, "pt")  # fails now, with the install hint, when torch is missing
    seeds = list(range(seeds_all)) if cfg.seed is None else [cfg.seed]
    run_dir = run if os.path.isdir(run) else os.path.dirname(os.path.abspath(run))
    out = cfg.out or os.path.join(run_dir, f"export-{cfg.format}")
    pixels = pixel_sets(ds)
    lo, hi = float(min(0.0, pixels.min())), float(max(1.0, pixels.max()))
    info = describe(ds, cfg, set_sha, seeds, lo, hi)
    y = np.asarray(ds.y, np.float32)
    with RunWriter(out, overwrite=cfg.overwrite, command="jdd export") as writer:
        files = {}
        for s in seeds:
            labels = np.argmax(y[s], -1).astype(np.int64)
            if cfg.format == "png":
                folder = writer.path(f"seed{s}")
                os.makedirs(folder, exist_ok=True)
                names = pngs.write_folder(folder, pixels[s], labels, lo, hi)
                files[f"seed{s}"] = {"images": len(names), "labels": labels.tolist(),
                                     "soft_labels": y[s].tolist()}
                continue
            x = pixels[s]
            if image and cfg.layout == "nchw":
                x = np.transpose(x, (0, 3, 1, 2))
            tensors = {"images" if image else "inputs": x, "labels": labels, "soft_labels": y[s],
                       EXACT_KEY: np.asarray(ds.x[s], np.float32)}
            if not np.isnan(ds.lr[s]):
                tensors["lr"] = np.asarray(ds.lr[s], np.float32)
            name = f"seed{s}{SUFFIX[cfg.format]}"
            data = tensor_bytes(tensors, cfg.format, json.dumps({**info, "seed": s}))
            with atomic_write(writer.path(name)) as f:
                f.write(data)
            files[name] = {k: list(v.shape) for k, v in tensors.items()}
        info["files"] = files
        write_json(writer.path("export.json"), info)
        writer.commit(method=ds.meta["method"], dataset=ds.meta["dataset"], format=cfg.format,
                      source_run=ds.meta.get("run_id"))
    return out, info
