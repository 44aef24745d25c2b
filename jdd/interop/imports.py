"""``jdd import``: a synthetic set distilled elsewhere becomes a jdd run folder that
``jdd evaluate`` scores under jdd's protocol, beside both baselines.

Accepted (:func:`jdd.interop.formats.format_of`): a ``.safetensors``, ``.pt`` / ``.pth`` (read
weights-only, never executing the file's pickle) or ``.npz`` dict of tensors, or a folder of PNGs
per class. Tensor names: the images under ``images`` (or ``image_syn``, ``x``, ``data``,
``inputs``, ``x_syn``, ``imgs``), the labels under ``labels`` (or ``label_syn``, ``y``,
``targets``, ``y_syn``): (m,) class ids, or (m, k) soft labels; ``soft_labels`` (m, k) when both
are given; an optional learned rate ``lr`` (or ``syn_lr``). ``--images-key`` / ``--labels-key``
name others (nested ``.pt`` contents by path: ``--images-key data.0.0``); ``--class-major`` labels
images saved without labels in class order. Images may be (m, c, h, w) (PyTorch) or (m, h, w, c).

What is checked, each with one error that says what was expected, before the dataset is loaded:
the shapes against the dataset's (feature shape, class count), labels in range, finite values,
a number of examples that is a multiple of the class count (the IPC is examples / classes; the
classes need not be balanced, since a distillation may move a label's argmax, as KIP's learned
labels do: the counts are recorded), and the pixel range: after ``--scale`` (e.g.
255 for 0..255 data; uint8 tensors are divided by 255 by default) and un-normalising with
``--mean`` / ``--std`` (for sets saved normalised, as the DC / DSA / MTT repositories save them),
values must lie within ``[-1, 2]`` (the data's ``[0, 1]`` with room for a distilled set's
overshoot; ``--pixel-range LO HI`` widens it for a set known to be in pixel space that overshoots
further, as noise-initialised DC sets do). A ``jdd export``'s range is not checked: its
``export.json`` (beside the file, or embedded in a safetensors header) says that it holds pixel
space, and is read for the PNG value range and the preprocessing.

The run folder: ``distilled.npz`` (the set mapped into the dataset's preprocessed space, the
preprocessing fitted on the real training set exactly as ``jdd distill`` fits it), ``import.json``
(the source file, its SHA-256, what was read and how it was converted), ``metrics.json`` (its
stored size), ``distilled.png`` and ``manifest.json``. Its evaluation recipe: a ``jdd export``'s
own, else that of the run given by ``--recipe-from``, else that of the method named by
``--protocol``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np

from jdd.config import ConfigError, opt
from jdd.data import DATASETS
from jdd.interop.export import EXACT_KEY, preprocessing_digest
from jdd.interop.formats import FormatError, format_of, read_tensors
from jdd.storage import is_one_hot

IMAGE_KEYS = ("images", "image_syn", "x", "data", "inputs", "x_syn", "imgs")
LABEL_KEYS = ("labels", "label_syn", "y", "targets", "y_syn")
LR_KEYS = ("lr", "syn_lr", "learned_lr")

#: Methods whose evaluation recipe an imported set can take (their recipes need no other files).
PROTOCOLS = ("dc", "dsa", "dm", "unrolled", "kip", "krr-closed-form")

#: Pixel values of an imported set, after scaling and un-normalising, must lie in this range.
PIXEL_RANGE = (-1.0, 2.0)


@dataclasses.dataclass(frozen=True)
class ImportConfig:
    """``jdd import`` options."""

    dataset: str | None = opt(None, "the dataset the set was distilled from (required)",
                              choices=DATASETS)
    data_dir: str | None = opt(None, "dataset folder (as for jdd distill)")
    out: str | None = opt(None, "run folder to create (required)")
    overwrite: bool = opt(False, "replace the run already in --out")
    protocol: str | None = opt(None, "evaluation recipe: that of this method (none: a jdd "
                               "export's own recipe; else dsa for images, the ConvNet protocol "
                               "with DSA augmentation, and unrolled for vector data)",
                               choices=PROTOCOLS)
    recipe_from: str | None = opt(None, "take the evaluation recipe of this run folder (to "
                                  "score the set exactly as that run was scored)")
    preprocess: str | None = opt(None, "preprocessing fitted on train (none: export.json's, "
                                 "else standardize)", choices=("none", "standardize", "zca"))
    zca_reg: float | None = opt(None, "ZCA regulariser (none: export.json's, else 0.1)", ge=0,
                                le=1e6)
    scale: float | None = opt(None, "divide the values by this first (255 for 0..255 pixels; "
                              "none: 255 for uint8 tensors, else 1)", gt=0, le=1e6)
    mean: tuple[float, ...] | None = opt(None, "per-channel mean the set was normalised with "
                                         "(undone: x * std + mean)", ge=-1e6, le=1e6)
    std: tuple[float, ...] | None = opt(None, "per-channel std the set was normalised with",
                                        gt=0, le=1e6)
    images_key: str | None = opt(None, "tensor name of the images (none: images, image_syn, "
                                 "x, data, inputs, ...)")
    labels_key: str | None = opt(None, "tensor name of the labels (none: labels, label_syn, y, "
                                 "targets, ...)")
    pixel_range: tuple[float, ...] | None = opt(
        None, "accepted pixel values after --scale and --mean/--std, as LO HI (none: -1 2, the "
        "data's 0..1 with room for a distilled set's overshoot; a jdd export is not checked)",
        ge=-1e9, le=1e9)
    class_major: bool = opt(False, "the file has no labels: the images are in class order, "
                            "the same number per class (as MTT's images_best.pt)")
    quiet: bool = opt(False, "print nothing")

    def check(self):
        if self.dataset is None:
            raise ConfigError("--dataset: expected the dataset the set was distilled from, one "
                              f"of {', '.join(DATASETS)}; got nothing")
        if not self.out:
            raise ConfigError("--out: expected the run folder to create; got nothing")
        if (self.mean is None) != (self.std is None):
            raise ConfigError("--mean and --std: expected both (the normalisation to undo) or "
                              "neither")
        if self.protocol is not None and self.recipe_from is not None:
            raise ConfigError("--protocol and --recipe-from: expected one evaluation recipe")
        if self.class_major and self.labels_key is not None:
            raise ConfigError("--class-major and --labels-key: expected one (labels from the "
                              "file, or from the class order)")
        if self.pixel_range is not None and (len(self.pixel_range) != 2 or
                                             self.pixel_range[0] >= self.pixel_range[1]):
            raise ConfigError(f"--pixel-range: expected two numbers LO HI with LO < HI; got "
                              f"{' '.join(f'{v:g}' for v in self.pixel_range)}")
        if self.mean is not None and len(self.mean) != len(self.std):
            raise ConfigError(f"--mean has {len(self.mean)} values and --std {len(self.std)}; "
                              f"expected one per channel each")


def _pick(arrays: dict, given: str | None, names: tuple, what: str, path: str,
          required: bool = True, hint: str = ""):
    if given is not None:
        if given not in arrays:
            raise FormatError(f"{path}: no tensor {given!r} (the {what}); it holds "
                              f"{sorted(arrays)}")
        return given
    found = [n for n in names if n in arrays]
    if not found:
        if not required:
            return None
        raise FormatError(f"{path}: no {what} tensor; expected one named {', '.join(names)} "
                          f"(or name it with --{what}-key{hint}); it holds {sorted(arrays)}")
    return found[0]


def read_set(path: str, cfg: ImportConfig) -> dict:
    """Read and check a set from ``path`` against ``cfg.dataset``, before any data is loaded.

    Returns:
        dict with ``x`` (m, *feature_shape) float32 pixel-space inputs, ``y`` (m, k) float32
        labels, ``hard`` (m,) int64, ``lr`` (float, NaN when none), ``ipc``, ``source`` (a
        JSON description of what was read) and ``export`` (the ``export.json`` found, or None).

    Raises:
        FileNotFoundError, FormatError: as the module docstring lists.
    """
    from jdd.data import SHAPES
    from jdd.interop import pngs
    fmt = format_of(path)
    export = _export_json(path)
    source = {"path": os.path.abspath(path), "format": fmt}
    if fmt == "png":
        lo, hi = (export or {}).get("png_range") or (0.0, 1.0)
        x, hard = pngs.read_folder(path, lo, hi)
        soft = None
        seed = _png_seed(path)
        if export and seed is not None and f"seed{seed}" in export.get("files", {}):
            soft = np.asarray(export["files"][f"seed{seed}"]["soft_labels"], np.float32)
        lr = _export_lr(export, seed)
        source.update(sha256=_folder_sha(path), png_range=[lo, hi], images_key=None)
        raw_dtype = "uint8 (PNG)"
        exact = None
        labels = soft if soft is not None and len(soft) == len(x) else hard
        scale = 1.0
    else:
        arrays, meta_text = read_tensors(path)
        if export is None and meta_text:
            try:
                export = json.loads(meta_text)
            except ValueError:
                export = None
        with open(path, "rb") as f:
            source["sha256"] = hashlib.sha256(f.read()).hexdigest()
        ik = _pick(arrays, cfg.images_key, IMAGE_KEYS, "images", path)
        x = np.asarray(arrays[ik])
        exact = np.asarray(arrays[EXACT_KEY], np.float32) if EXACT_KEY in arrays else None
        if cfg.class_major:
            k = SHAPES.get(cfg.dataset, (None, None))[1]
            if k is None or len(x) % k:
                raise FormatError(f"{path}: --class-major needs the same number of images per "
                                  f"class; {len(x)} images, {k or 'unknown'} classes")
            arrays = {**arrays, "__class_major__": np.repeat(np.arange(k), len(x) // k)}
        lk = _pick(arrays, "__class_major__" if cfg.class_major else cfg.labels_key,
                   LABEL_KEYS, "labels", path, hint="; or --class-major when the images are "
                   "in class order without labels")
        raw_dtype = str(x.dtype)
        labels = np.asarray(arrays["soft_labels"]) if "soft_labels" in arrays else (
            np.asarray(arrays[lk]))
        hard_given = np.asarray(arrays[lk])
        lrk = _pick(arrays, None, LR_KEYS, "lr", path, required=False)
        lr = float(np.asarray(arrays[lrk]).reshape(-1)[0]) if lrk is not None and np.asarray(
            arrays[lrk]).size == 1 else float("nan")
        source.update(images_key=ik, lr_key=lrk,
                      labels_key="class order (--class-major)" if cfg.class_major else lk)
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise FormatError(f"{path}: {ik} has dtype {x.dtype}; expected numbers")
        scale = cfg.scale if cfg.scale is not None else (255.0 if x.dtype == np.uint8 else 1.0)
        x = x.astype(np.float32)
        if "soft_labels" in arrays and hard_given.ndim == 1 and len(hard_given) != len(labels):
            raise FormatError(f"{path}: {lk} has {len(hard_given)} rows but soft_labels "
                              f"{len(labels)}")
    shape, k = SHAPES.get(cfg.dataset, (None, None))
    x = _to_hwc(x, shape, path)
    m = x.shape[0]
    y, hard = _labels(labels, m, k, path)
    bad = int(x.size - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise FormatError(f"{path}: the images hold {bad} NaN/inf values; expected finite pixels")
    x = x / np.float32(scale)
    if cfg.mean is not None:
        c = x.shape[-1]
        if len(cfg.mean) not in (1, c):
            raise FormatError(f"--mean / --std give {len(cfg.mean)} values; the images have {c} "
                              f"channel(s)")
        x = x * np.asarray(cfg.std, np.float32) + np.asarray(cfg.mean, np.float32)
    lo, hi = float(x.min()), float(x.max())
    allowed = tuple(cfg.pixel_range or PIXEL_RANGE)
    if export is None and (lo < allowed[0] or hi > allowed[1]):
        hint = (" it looks like 0..255 pixels: pass --scale 255" if hi > 2 and lo >= -1 and
                hi <= 255 * 2 else " it looks normalised: pass the --mean and --std it was "
                "normalised with" if lo < allowed[0] else "")
        raise FormatError(f"{path}: pixel values span [{lo:.3g}, {hi:.3g}]; expected the "
                          f"data's [0, 1] scale (within {list(allowed)} for a distilled "
                          f"set's overshoot);{hint} (or --pixel-range LO HI for a set in pixel "
                          f"space that overshoots further)")
    counts = np.bincount(hard, minlength=y.shape[1])
    # the budget is examples / classes (a distillation may move a label's argmax, e.g. KIP's
    # learned labels, so the classes need not be balanced); the random subset gets as many
    if m % y.shape[1]:
        raise FormatError(f"{path}: {m} examples for {y.shape[1]} classes (per class "
                          f"{counts.tolist()}); expected a multiple of the class count, the "
                          f"set's IPC times the classes")
    ipc = m // y.shape[1]
    source.update(examples=m, raw_dtype=raw_dtype, scale=scale,
                  unnormalised=None if cfg.mean is None else {"mean": list(cfg.mean),
                                                              "std": list(cfg.std)},
                  labels="hard" if is_one_hot(y) else "soft", pixel_min=lo, pixel_max=hi,
                  examples_per_class=counts.tolist())
    return {"x": x, "y": y, "hard": hard, "lr": lr, "ipc": ipc, "source": source,
            "export": export, "exact": exact}


def _export_json(path: str) -> dict | None:
    """The ``export.json`` of the ``jdd export`` folder holding ``path``, when it lists
    ``path`` among its files (None otherwise)."""
    full = os.path.abspath(path.rstrip(os.sep))
    p = os.path.join(os.path.dirname(full), "export.json")
    try:
        with open(p) as f:
            export = json.load(f)
    except (OSError, ValueError):
        return None
    files = export.get("files") if isinstance(export, dict) else None
    return export if isinstance(files, dict) and os.path.basename(full) in files else None


def _png_seed(path: str) -> int | None:
    name = os.path.basename(os.path.abspath(path.rstrip(os.sep)))
    return int(name[4:]) if name.startswith("seed") and name[4:].isdigit() else None


def _export_lr(export: dict | None, seed: int | None) -> float:
    if not export or seed is None or seed not in export.get("seeds", []):
        return float("nan")
    v = export.get("learned_lr", [])[export["seeds"].index(seed)]
    return float("nan") if v is None else float(v)


def _folder_sha(folder: str) -> str:
    h = hashlib.sha256()
    for root, dirs, names in sorted(os.walk(folder)):
        dirs.sort()
        for n in sorted(names):
            p = os.path.join(root, n)
            h.update(os.path.relpath(p, folder).encode())
            with open(p, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def _to_hwc(x: np.ndarray, shape: tuple | None, path: str) -> np.ndarray:
    """(m, c, h, w) or (m, h, w, c) -> (m, h, w, c) matching the dataset's shape."""
    if shape is None:  # npz data: any shape, taken as it is
        return x
    if len(shape) == 3 and x.ndim == 4:
        if tuple(x.shape[1:]) == shape:
            return x
        if tuple(x.shape[1:]) == (shape[2], shape[0], shape[1]):
            return np.transpose(x, (0, 2, 3, 1))
    want = (f"(m, {shape[2]}, {shape[0]}, {shape[1]}) or (m, {', '.join(map(str, shape))})"
            if len(shape) == 3 else f"(m, {', '.join(map(str, shape))})")
    raise FormatError(f"{path}: images of shape {tuple(x.shape)}; the dataset's are {want}")


def _labels(labels: np.ndarray, m: int, k: int | None, path: str):
    """(m, k) float32 targets and (m,) int64 classes from class ids or soft labels."""
    labels = np.asarray(labels)
    if labels.shape[:1] != (m,) or labels.ndim not in (1, 2):
        raise FormatError(f"{path}: labels of shape {labels.shape}; expected ({m},) class ids "
                          f"or ({m}, classes) soft labels, one row per image")
    if labels.ndim == 1:
        if not (np.issubdtype(labels.dtype, np.integer) or np.all(
                np.isfinite(labels) & (labels == np.round(labels)))):
            raise FormatError(f"{path}: labels of dtype {labels.dtype} that are not whole "
                              f"numbers; expected class ids")
        hard = labels.astype(np.int64)
        classes = k or int(hard.max()) + 1
        if hard.min() < 0 or hard.max() >= classes:
            raise FormatError(f"{path}: class ids span [{hard.min()}, {hard.max()}]; the "
                              f"dataset has {classes} classes (0 to {classes - 1})")
        return np.eye(classes, dtype=np.float32)[hard], hard
    if k is not None and labels.shape[1] != k:
        raise FormatError(f"{path}: soft labels for {labels.shape[1]} classes; the dataset has "
                          f"{k}")
    y = labels.astype(np.float32)
    if not np.all(np.isfinite(y)):
        raise FormatError(f"{path}: the labels hold NaN/inf values")
    return y, np.argmax(y, -1).astype(np.int64)


def import_set(path: str, cfg: ImportConfig) -> tuple[str, dict]:
    """Make a run folder ``cfg.out`` from the set at ``path`` (see the module docstring).

    Returns:
        (the run folder, the ``import.json`` written).

    Raises:
        jdd.config.ConfigError: a bad option; FileNotFoundError / FormatError: the file (before
            the dataset is loaded); jdd.data.DataError: the dataset; jdd.rundir.RunFolderError:
            ``--out`` holds a run and no ``--overwrite``, or another writer holds it.
    """
    from jdd import methods
    from jdd.artifacts import save_distilled, save_image_grid, write_json
    from jdd.config import validate
    from jdd.data import load_dataset, preprocess
    from jdd.rundir import RunWriter, check_replaceable
    validate(cfg)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no file or folder at {path}")
    check_replaceable(cfg.out, cfg.overwrite)
    recipe = None
    if cfg.recipe_from is not None:
        from jdd.artifacts import load_distilled
        try:
            recipe = load_distilled(cfg.recipe_from).meta
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"--recipe-from: {e}") from None
        if recipe["dataset"] != cfg.dataset:
            raise ConfigError(f"--recipe-from {cfg.recipe_from}: a {recipe['dataset']} run; "
                              f"this set is for {cfg.dataset}")
    got = read_set(path, cfg)
    exp_pre = ((got["export"] or {}).get("preprocessing") or {})
    kind = cfg.preprocess or exp_pre.get("kind") or "standardize"
    zca_reg = cfg.zca_reg if cfg.zca_reg is not None else (exp_pre.get("zca_reg") or 0.1)
    train, test = load_dataset(cfg.dataset, cfg.data_dir)
    x = got["x"]
    if tuple(x.shape[1:]) != train.feature_shape:
        raise FormatError(f"{path}: inputs of shape {x.shape[1:]}; {cfg.dataset} has "
                          f"{train.feature_shape}")
    if got["y"].shape[1] != train.num_classes:
        raise FormatError(f"{path}: labels for {got['y'].shape[1]} classes; {cfg.dataset} has "
                          f"{train.num_classes}")
    train, _, pre = preprocess(train, test, kind, zca_reg=zca_reg)
    image = len(train.feature_shape) == 3
    export = got["export"] or {}
    if recipe is not None:
        protocol = f"as run {recipe.get('run_id')} ({recipe['method']})"
        learner, method_info = recipe["learner"], recipe.get("config") or {}
    elif cfg.protocol is None and export.get("evaluation_recipe") and export.get("dataset") == (
            cfg.dataset):
        # a jdd export: keep the recipe the run's own numbers were measured with
        protocol = f"as exported ({export.get('method')})"
        learner, method_info = export["evaluation_recipe"], export.get("method_config") or {}
    else:
        protocol = cfg.protocol or ("dsa" if image else "unrolled")
        method = methods.get(protocol)
        if method.needs_images and not image:
            raise ConfigError(f"--protocol {protocol}: a protocol for image data; {cfg.dataset} "
                              f"has features of shape {train.feature_shape}")
        spec = methods.RunSpec(ipc=got["ipc"], steps=1, seeds=1, dataset=cfg.dataset,
                               num_classes=train.num_classes,
                               feature_shape=train.feature_shape, n_train=train.n)
        plan = method.build(validate(method.config()), spec)
        learner, method_info = plan.learner.config, plan.info
    z = np.asarray(pre.apply(x))
    exact, how = got["exact"], "the pixels, preprocessed here"
    if exact is not None and exact.shape == z.shape and exp_pre.get("sha256") == (
            preprocessing_digest(pre)):
        # a jdd export and the same preprocessing: its exact inputs, once they agree with the
        # pixels (a file whose two copies disagree is not what it claims)
        scale = max(1.0, float(np.max(np.abs(z))))
        if not np.all(np.isfinite(exact)) or float(np.max(np.abs(exact - z))) > 1e-3 * scale:
            raise FormatError(f"{path}: its {EXACT_KEY} tensor does not match its images under "
                              f"the exported preprocessing (max difference "
                              f"{float(np.max(np.abs(exact - z))):.3g}); the file was altered")
        z, how = exact, f"{EXACT_KEY} (exact: same preprocessing sha256)"
    z = z[None]
    y = got["y"][None]
    lr = np.asarray([got["lr"]], np.float32)
    info = {"source": got["source"], "protocol": protocol, "preprocess": kind, "inputs": how,
            "zca_reg": zca_reg, "ipc": got["ipc"], "num_classes": train.num_classes,
            "exported_by_jdd": None if got["export"] is None else {
                k: got["export"].get(k) for k in ("run_id", "method", "set_sha256")}}
    with RunWriter(cfg.out, overwrite=cfg.overwrite, command="jdd import") as writer:
        meta = {"run_id": writer.run_id, "method": "imported", "dataset": cfg.dataset,
                "data_dir": cfg.data_dir, "ipc": got["ipc"], "seeds": 1, "preprocess": kind,
                "zca_reg": zca_reg, "num_classes": train.num_classes,
                "learner": learner, "config": method_info, "imported": info}
        save_distilled(writer.path("distilled.npz"), z, y, lr, pre, meta)
        write_json(writer.path("import.json"), {"run_id": writer.run_id, **info})
        from jdd.cli import versions
        from jdd.storage import set_storage
        write_json(writer.path("metrics.json"), {
            "run_id": writer.run_id, "method": "imported", "dataset": cfg.dataset,
            "ipc": got["ipc"], "seeds": 1, "imported": info,
            "storage": set_storage(z, y, lr, got["source"]["labels"] == "hard", train.n),
            "versions": versions()})
        if image:
            save_image_grid(writer.path("distilled.png"), x, got["hard"],
                            title=f"imported: {os.path.basename(path.rstrip(os.sep))}")
        writer.commit(method="imported", dataset=cfg.dataset, ipc=got["ipc"])
    return cfg.out, info
