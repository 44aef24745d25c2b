"""Expert trajectories for trajectory matching (MTT; Cazenavette et al., CVPR 2022).

:func:`train_experts` trains ``n_experts`` networks on the real data and saves each one's
parameters after every epoch; :func:`load_buffer` opens such a folder lazily for
:mod:`jdd.distill.mtt`. ``jdd experts`` (:func:`add_parser` / :func:`cmd`) is the command line.

The expert recipe follows the official ``buffer.py`` (GeorgeCazenavette/mtt-distillation), whose
facts were checked there: plain SGD with ``lr_teacher = 0.01``, momentum 0 and weight decay 0 (the
learning-rate decay and its momentum/L2 only apply with ``--decay``, off by default), batch 256
(``batch_train``), 50 epochs (``train_epochs``; the README: "We used 50 epochs with the default
learning rate for all of our experts"), cross-entropy on hard labels, and DSA augmentation of every
training minibatch (``--dsa True`` is the default and ``epoch(..., aug=True)`` then calls
``DiffAugment(img, dsa_strategy, param)`` with its default seed -1: independent parameters per
image, one family per call). The parameters are saved before training and after every epoch, so a
trajectory has ``epochs + 1`` entries. Here every epoch walks through a fresh random permutation of
the training set in minibatches of ``batch_size`` with a smaller last batch (torch's
``DataLoader(shuffle=True)``; the padded rows of the last batch get zero weight).

Folder layout (``out_dir``):

* ``buffer.json``: the manifest (format, jdd version, model description, parameter count and the
  flat parameter layout, dataset name, preprocessing kind, feature shape, number of classes, a
  fingerprint of the training data, epochs, lr, batch size, augmentation, the key);
* ``expert_00000.npy``, ``expert_00001.npy``, ...: one float32 array of shape
  ``(epochs + 1, num_params)`` per expert: row ``e`` is the flattened parameters after ``e``
  epochs, in the order of ``jax.tree.leaves`` of ``model.init``'s pytree (the manifest's
  ``layout``).

Every file is written atomically (:func:`jdd.artifacts.atomic_write`), so an interrupted run leaves
only complete experts behind, and rerunning the same command trains only the missing ones
(expert ``i`` depends only on ``fold_in(key, i)``, so the result does not depend on how often the
run was interrupted or how many experts were trained at once). A folder holding experts trained
with other settings is refused with one error that names the differing settings.

Example:
    >>> import jax, numpy as np, tempfile
    >>> from jdd.data import Dataset
    >>> from jdd.models import make_model
    >>> x = np.random.default_rng(0).normal(size=(12, 4, 4, 1))
    >>> train = Dataset.from_arrays(x, np.arange(12) % 3, 3, "toy/train")
    >>> path = train_experts(make_model("mlp", 3, hidden=(4,)), train, n_experts=2, epochs=2,
    ...                      key=jax.random.key(0), out_dir=tempfile.mkdtemp(), progress=False)
    >>> buf = load_buffer(path, dataset="toy")
    >>> buf.n_experts, buf.epochs, buf.trajectory(0).shape
    (2, 2, (3, 83))
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import json
import math
import os
import re
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jdd.config import ConfigError, opt

FORMAT = "jdd-expert-buffer"
FORMAT_VERSION = 1
MANIFEST = "buffer.json"
_EXPERT_RE = re.compile(r"^expert_(\d{5,})\.npy$")

#: Settings that must agree between a folder's manifest and a run that adds experts to it.
_SETTINGS = ("model", "num_params", "layout", "dataset", "preprocessing", "feature_shape",
             "num_classes", "n_train", "data_fingerprint", "epochs", "lr", "batch_size",
             "optimizer", "augmentation", "key")


def expert_file(index: int) -> str:
    """File name of expert ``index`` (``expert_00003.npy``)."""
    return f"expert_{index:05d}.npy"


# ----------------------------------------------------------------------------- parameter layout

class ParamLayout(NamedTuple):
    """How a model's parameter pytree maps to one flat vector (and back), dtype-preserving.

    The order is that of ``jax.tree.leaves`` (what ``jax.flatten_util.ravel_pytree`` uses), but
    :meth:`unflatten` keeps the dtype of the flat vector (``ravel_pytree``'s inverse casts back to
    the dtypes it saw, which would silently turn a float64 meta-gradient into float32).

    Attributes:
        treedef: the pytree structure.
        paths: one ``jax.tree_util.keystr`` per leaf, e.g. ``"['Conv_0']['kernel']"``.
        shapes: the leaf shapes.
        num_params: total number of scalars ``P``.
    """

    treedef: Any
    paths: tuple
    shapes: tuple
    num_params: int

    def flatten(self, tree) -> jax.Array:
        """(P,) concatenation of the leaves of ``tree`` (same structure as the layout)."""
        leaves = jax.tree.leaves(tree)
        return jnp.concatenate([jnp.reshape(a, (-1,)) for a in leaves])

    def unflatten(self, flat: jax.Array):
        """The pytree whose leaves are consecutive slices of ``flat`` (P,) (dtype kept)."""
        leaves, o = [], 0
        for shape in self.shapes:
            size = math.prod(shape)
            leaves.append(jnp.reshape(flat[o:o + size], shape))
            o += size
        return jax.tree.unflatten(self.treedef, leaves)

    def describe(self) -> list[dict]:
        """JSON description: ``[{"path", "shape", "offset", "size"}, ...]``."""
        out, o = [], 0
        for path, shape in zip(self.paths, self.shapes):
            size = math.prod(shape)
            out.append({"path": path, "shape": list(shape), "offset": o, "size": size})
            o += size
        return out


def param_layout(model, feature_shape) -> ParamLayout:
    """The :class:`ParamLayout` of ``model.init`` on inputs of ``feature_shape`` (no compute:
    shapes come from ``jax.eval_shape``).

    Example:
        >>> from jdd.models import make_model
        >>> param_layout(make_model("mlp", 3, hidden=(4,)), (5,)).num_params
        39
    """
    x = jax.ShapeDtypeStruct((1,) + tuple(int(s) for s in feature_shape), jnp.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    with_path, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    paths = tuple(jax.tree_util.keystr(p) for p, _ in with_path)
    shp = tuple(tuple(int(s) for s in leaf.shape) for _, leaf in with_path)
    return ParamLayout(treedef, paths, shp, int(sum(math.prod(s) for s in shp)))


# ----------------------------------------------------------------------------- training

def describe_augment(augment: Callable | None) -> str:
    """A stable description of an augmentation for the manifest (``"none"`` for None; a jdd DSA
    augmentation describes its strategy, mode, siamese flag and strengths)."""
    if augment is None:
        return "none"
    name = getattr(augment, "name", None)
    if isinstance(name, str):
        return name
    doc = getattr(augment, "__doc__", None)
    if isinstance(doc, str) and doc.strip():
        return " ".join(doc.split())
    return getattr(augment, "__name__", type(augment).__name__)


def _fingerprint(train) -> str:
    h = hashlib.sha256()
    x = np.ascontiguousarray(np.asarray(train.x, np.float32))
    y = np.ascontiguousarray(np.asarray(train.y, np.int32))
    h.update(str(x.shape).encode())
    h.update(x.tobytes())
    h.update(y.tobytes())
    return h.hexdigest()[:16]


def _dataset_name(train) -> str:
    return str(getattr(train, "name", "dataset")).split("/")[0]


def expert_epoch_fn(model, *, n: int, lr: float, batch_size: int,
                    augment: Callable | None = None):
    """One epoch of expert training for ONE expert (vmap it over experts).

    Args:
        model: the network.
        n: training-set size (static).
        lr: SGD learning rate (momentum 0, weight decay 0, as the official ``buffer.py``).
        batch_size: minibatch size (a smaller last batch, as ``DataLoader(shuffle=True)``).
        augment: ``(key, xb) -> xb`` applied to every minibatch, or None.

    Returns:
        ``epoch(params, key, x, y) -> (params, mean loss)`` where ``key`` is this epoch's key
        (the permutation and the augmentations come from it), ``x (n, ...)``, ``y (n,)`` int.
    """
    bs = min(int(batch_size), int(n))
    steps = math.ceil(n / bs)
    pad = steps * bs - n

    def loss_fn(p, xb, yb, w):
        logits = model.apply(p, xb)
        ce = -jnp.sum(jax.nn.one_hot(yb, logits.shape[-1], dtype=logits.dtype)
                      * jax.nn.log_softmax(logits), -1)
        return jnp.sum(w * ce) / jnp.sum(w)

    def epoch(params, key, x, y):
        k_perm, k_aug = jax.random.split(key)
        perm = jax.random.permutation(k_perm, n)
        idx = jnp.concatenate([perm, jnp.zeros((pad,), perm.dtype)]).reshape(steps, bs)
        w = jnp.concatenate([jnp.ones((n,), x.dtype), jnp.zeros((pad,), x.dtype)])
        w = w.reshape(steps, bs)

        def step(p, s):
            xb, yb = x[idx[s]], y[idx[s]]
            if augment is not None:
                xb = augment(jax.random.fold_in(k_aug, s), xb)
            value, g = jax.value_and_grad(loss_fn)(p, xb, yb, w[s])
            p = jax.tree.map(lambda a, b: a - lr * b, p, g)
            return p, value

        params, losses = jax.lax.scan(step, params, jnp.arange(steps))
        return params, jnp.mean(losses)

    return epoch


def auto_parallel(n_todo: int) -> int:
    """Experts per vmapped group when ``parallel=None``: 1 on a CPU, up to 4 on an accelerator.

    On a CPU, vmapping networks with different weights turns every convolution into a grouped
    convolution, which XLA's CPU backend runs slowly: for ConvNet-D3 (width 128) on digits one
    epoch of 2 vmapped experts took 55 s of CPU time against 14 s for one expert alone (2x
    slower per expert). Accelerators run the batched work concurrently (not measured here).
    """
    if jax.default_backend() == "cpu":
        return 1
    return max(1, min(4, n_todo))


@functools.lru_cache(maxsize=16)
def _expert_programs(model, feature_shape: tuple, n: int, lr: float, batch_size: int, augment):
    """Jitted ``init_many(keys, x) -> (params, flat)`` and ``epoch_many(params, keys, e, x, y) ->
    (params, loss, flat)`` for a chunk of experts (vmapped over the leading axis of ``keys``);
    cached so that resuming or adding experts in the same process compiles nothing new."""
    layout = param_layout(model, feature_shape)
    epoch = expert_epoch_fn(model, n=n, lr=lr, batch_size=batch_size, augment=augment)

    @jax.jit
    def init_many(keys, x):
        params = jax.vmap(lambda k: model.init(jax.random.split(k)[0], x[:1]))(keys)
        return params, jax.vmap(layout.flatten)(params)

    @jax.jit
    def epoch_many(params, keys, e, x, y):
        def one(p, k):
            k_train = jax.random.split(k)[1]
            return epoch(p, jax.random.fold_in(k_train, e), x, y)
        params, loss = jax.vmap(one)(params, keys)
        return params, loss, jax.vmap(layout.flatten)(params)

    return init_many, epoch_many


def _check_train_args(model, train, n_experts, epochs, lr, batch_size, augment, out_dir,
                      parallel) -> None:
    for what, v, lo in (("n_experts", n_experts, 1), ("epochs", epochs, 1),
                        ("batch_size", batch_size, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{what} must be an integer >= {lo}; got {v!r}.")
    if parallel is not None and (isinstance(parallel, bool) or not isinstance(parallel, int)
                                 or parallel < 1):
        raise ValueError(f"parallel must be None or an integer >= 1; got {parallel!r}.")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr)
                                                                         and lr > 0):
        raise ValueError(f"lr must be a finite number > 0; got {lr!r}.")
    if augment is not None and not callable(augment):
        raise ValueError(f"augment must be a function (key, x) -> x or None; got {augment!r}.")
    if not out_dir:
        raise ValueError("out_dir: expected a folder for the expert trajectories; got nothing.")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"out_dir {out_dir}: exists and is not a folder.")
    for attr in ("init", "apply", "name"):
        if not hasattr(model, attr):
            raise ValueError(f"model must be a jdd.models.Model (init, apply, name); got {model!r}.")
    if not hasattr(train, "x") or not hasattr(train, "y") or not getattr(train, "num_classes", 0):
        raise ValueError("train must be a jdd.data.Dataset (x, y, num_classes).")


def train_experts(model, train, *, n_experts: int, epochs: int, lr: float = 0.01,
                  batch_size: int = 256, augment: Callable | None = None, key: jax.Array,
                  out_dir: str | os.PathLike, progress: bool = True,
                  preprocessing: str | None = None, model_config: dict | None = None,
                  parallel: int | None = None) -> str:
    """Train expert networks on real data and save their per-epoch parameter trajectories.

    Resumable: experts already in ``out_dir`` (same settings) are skipped; a folder written with
    other settings raises one ValueError naming them, before any training.

    Args:
        model: the network (a :class:`jdd.models.Model`), e.g. ``make_model("convnet", k)``.
        train: the real training set (a :class:`jdd.data.Dataset`, already preprocessed).
        n_experts: number of experts the folder should hold.
        epochs: training epochs per expert (a trajectory has ``epochs + 1`` entries).
        lr: SGD learning rate (``lr_teacher`` in MTT: 0.01, momentum 0, no weight decay).
        batch_size: minibatch size (256 in MTT).
        augment: ``(key, xb) -> xb`` applied to every minibatch (MTT: DSA with per-image
            parameters, ``jdd.augment.dsa(strategy, siamese=False)``), or None.
        key: PRNG key; expert ``i`` uses ``fold_in(key, i)``.
        out_dir: folder to write (created if needed).
        progress: show a tqdm bar (expert-epochs, loss, ETA).
        preprocessing: the preprocessing kind applied to ``train`` (recorded, e.g.
            ``"standardize"``; None records ``"unspecified"``).
        model_config: optional JSON-ready description of the model (recorded, e.g. the CLI's
            ``{"model": "convnet", "width": 128, ...}``).
        parallel: experts trained at once in one vmapped computation (None:
            :func:`auto_parallel`: 1 on a CPU, up to 4 on an accelerator); a short last group is
            padded to the same size so that one compiled program serves all.

    Returns:
        ``out_dir`` as a string (pass it to :func:`load_buffer`).

    Raises:
        ValueError: a bad argument, or ``out_dir`` holds experts trained with other settings.
    """
    _check_train_args(model, train, n_experts, epochs, lr, batch_size, augment, out_dir, parallel)
    out_dir = os.fspath(out_dir)
    feature_shape = tuple(int(s) for s in train.x.shape[1:])
    layout = param_layout(model, feature_shape)
    import jdd
    key_data = np.asarray(jax.random.key_data(key)).reshape(-1).tolist()
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "jdd_version": jdd.__version__,
        "model": model.name, "model_config": model_config, "num_params": layout.num_params,
        "layout": layout.describe(), "treedef": str(layout.treedef),
        "dataset": _dataset_name(train), "preprocessing": preprocessing or "unspecified",
        "feature_shape": list(feature_shape), "num_classes": int(train.num_classes),
        "n_train": int(train.x.shape[0]), "data_fingerprint": _fingerprint(train),
        "epochs": int(epochs), "lr": float(lr), "batch_size": int(batch_size),
        "optimizer": "sgd (momentum 0, weight decay 0)",
        "augmentation": describe_augment(augment), "key": key_data,
        "n_experts": int(n_experts), "dtype": "float32",
        "file_pattern": "expert_%05d.npy: (epochs + 1, num_params) float32",
    }
    from jdd.artifacts import atomic_write, write_json
    path = os.path.join(out_dir, MANIFEST)
    if os.path.exists(path):
        old = _read_manifest(out_dir)
        diff = [k for k in _SETTINGS if old.get(k) != manifest[k]]
        if diff:
            shown = "; ".join(f"{k}: folder has {_short(old.get(k))}, this run "
                              f"{_short(manifest[k])}" for k in diff)
            raise ValueError(f"{out_dir} holds experts trained with other settings ({shown}). "
                             "Use another folder, or rerun with the folder's settings to add "
                             "experts to it.")
        manifest["n_experts"] = max(int(old.get("n_experts", 0)), int(n_experts))
    os.makedirs(out_dir, exist_ok=True)
    write_json(path, manifest)

    todo = [i for i in range(n_experts)
            if not os.path.exists(os.path.join(out_dir, expert_file(i)))]
    for i in range(n_experts):
        if i not in todo:
            _check_expert_file(os.path.join(out_dir, expert_file(i)), epochs, layout.num_params)
    if not todo:
        return out_dir

    x = jnp.asarray(train.x, jnp.float32)
    y = jnp.asarray(train.y, jnp.int32)
    chunk = parallel or auto_parallel(len(todo))
    init_many, epoch_many = _expert_programs(model, feature_shape, int(x.shape[0]), float(lr),
                                             int(batch_size), augment)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(todo) * epochs, desc=f"experts -> {out_dir}", unit="epoch",
                   dynamic_ncols=True)
    try:
        for start in range(0, len(todo), chunk):
            ids = todo[start:start + chunk]
            # a short last chunk is padded (results discarded) so that one program serves all
            pad = ids + [ids[-1]] * (chunk - len(ids))
            keys = jnp.stack([jax.random.fold_in(key, i) for i in pad])
            params, flat = init_many(keys, x)
            traj = np.empty((len(ids), epochs + 1, layout.num_params), np.float32)
            traj[:, 0] = np.asarray(flat)[:len(ids)]
            for e in range(epochs):
                params, loss, flat = epoch_many(params, keys, jnp.int32(e), x, y)
                traj[:, e + 1] = np.asarray(flat)[:len(ids)]
                if bar is not None:
                    bar.set_postfix(loss=f"{float(np.mean(np.asarray(loss)[:len(ids)])):.4g}",
                                    experts=f"{start + len(ids)}/{len(todo)}")
                    bar.update(len(ids))
            if not np.all(np.isfinite(traj)):
                raise FloatingPointError(f"expert training diverged (NaN/inf parameters) for "
                                         f"experts {ids}; lower lr (got {lr}). Nothing was "
                                         "written for them.")
            for j, i in enumerate(ids):
                with atomic_write(os.path.join(out_dir, expert_file(i)), "wb") as f:
                    np.save(f, traj[j])
    finally:
        if bar is not None:
            bar.close()
    return out_dir


def _short(v) -> str:
    text = json.dumps(v) if not isinstance(v, str) else v
    return text if len(text) <= 80 else text[:77] + "..."


# ----------------------------------------------------------------------------- loading

class Buffer:
    """A folder of expert trajectories, opened lazily (only the manifest is read up front).

    Attributes:
        path: the folder.
        manifest: the parsed ``buffer.json``.
        files: the expert files, sorted by index.
        n_experts: number of experts present.
        epochs: training epochs of every expert (trajectories have ``epochs + 1`` entries).
        num_params: length ``P`` of a flattened parameter vector.
        feature_shape: input shape the experts were trained on.
        dataset: dataset name.
    """

    def __init__(self, path: str, manifest: dict, files: list[str]):
        self.path = path
        self.manifest = manifest
        self.files = tuple(files)
        self.n_experts = len(files)
        self.epochs = int(manifest["epochs"])
        self.num_params = int(manifest["num_params"])
        self.feature_shape = tuple(manifest["feature_shape"])
        self.dataset = manifest["dataset"]
        self._open: dict[int, np.ndarray] = {}

    def __repr__(self) -> str:
        return (f"Buffer({self.path!r}: {self.n_experts} experts x {self.epochs} epochs, "
                f"{self.num_params} params, model {self.manifest['model']}, dataset "
                f"{self.dataset})")

    def trajectory(self, i: int) -> np.ndarray:
        """Expert ``i``'s trajectory, (epochs + 1, P) float32, memory-mapped (read on access)."""
        i = int(i)
        if not 0 <= i < self.n_experts:
            raise IndexError(f"expert {i} out of range (buffer has {self.n_experts}).")
        arr = self._open.get(i)
        if arr is None:
            arr = np.load(self.files[i], mmap_mode="r")
            self._open[i] = arr
        return arr

    def gather(self, expert, epoch) -> np.ndarray:
        """Host gather: parameters of ``expert[j]`` after ``epoch[j]`` epochs.

        Args:
            expert: int array of any shape ``s``.
            epoch: int array broadcastable to ``s``.

        Returns:
            ``s + (P,)`` float32.
        """
        e, t = np.broadcast_arrays(np.asarray(expert), np.asarray(epoch))
        out = np.empty(e.shape + (self.num_params,), np.float32)
        for idx in np.ndindex(e.shape):
            out[idx] = self.trajectory(int(e[idx]))[int(t[idx])]
        return out

    def stack(self, epochs=None) -> np.ndarray:
        """All experts at the given epochs (default all): (n_experts, len(epochs), P) float32,
        read into memory."""
        sel = slice(None) if epochs is None else np.asarray(epochs)
        return np.stack([np.asarray(self.trajectory(i)[sel]) for i in range(self.n_experts)])

    def layout_matches(self, model) -> bool:
        """Whether ``model``'s flat parameter layout on the buffer's feature shape is the
        buffer's (same leaf paths and shapes, hence the same ``P``)."""
        lay = param_layout(model, self.feature_shape)
        stored = [(d["path"], tuple(d["shape"])) for d in self.manifest["layout"]]
        return stored == list(zip(lay.paths, lay.shapes))


def _read_manifest(path: str) -> dict:
    file = os.path.join(path, MANIFEST)
    try:
        with open(file) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"expert buffer {path}: no {MANIFEST} (not a folder written by "
                         "jdd.experts.train_experts / `jdd experts`).") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"expert buffer {path}: {MANIFEST} is unreadable or corrupt ({e}).") \
            from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"expert buffer {path}: {MANIFEST} is not a {FORMAT} manifest.")
    missing = [k for k in ("epochs", "num_params", "layout", "feature_shape", "dataset", "model")
               if k not in manifest]
    if missing:
        raise ValueError(f"expert buffer {path}: {MANIFEST} lacks {', '.join(missing)}.")
    return manifest


def _check_expert_file(file: str, epochs: int, num_params: int) -> None:
    """Header check of one .npy (shape, dtype, size on disk); no data is read."""
    try:
        with open(file, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read(f)
            offset = f.tell()
        size = os.path.getsize(file)
    except (OSError, ValueError) as e:
        raise ValueError(f"expert file {file} is corrupt or unreadable ({e}); delete it and "
                         "rerun the same `jdd experts` command to retrain it.") from None
    expected = (epochs + 1, num_params)
    if tuple(shape) != expected or np.dtype(dtype) != np.float32 or fortran:
        raise ValueError(f"expert file {file} holds a {np.dtype(dtype)} array of shape "
                         f"{tuple(shape)}; expected float32 {expected} (epochs + 1, num_params). "
                         "Delete it and rerun the same `jdd experts` command.")
    if size != offset + 4 * expected[0] * expected[1]:
        raise ValueError(f"expert file {file} is truncated ({size} bytes, expected "
                         f"{offset + 4 * expected[0] * expected[1]}); delete it and rerun the "
                         "same `jdd experts` command.")


def load_buffer(path: str | os.PathLike, *, model=None, feature_shape=None, dataset=None,
                expert_epochs: int | None = None, max_start_epoch: int | None = None) -> Buffer:
    """Open a folder of expert trajectories lazily, checking it against the run first.

    Only the manifest and the ``.npy`` headers are read; trajectories are memory-mapped on use.

    Args:
        path: a folder written by :func:`train_experts`.
        model: if given, the network of the run: its flat parameter layout must be the buffer's.
        feature_shape: if given, the run's input shape (must be the buffer's).
        dataset: if given, the run's dataset name (must be the buffer's, e.g. ``"digits"``).
        expert_epochs: if given with ``max_start_epoch``, the matching horizon ``M``: start epochs
            ``0 .. max_start_epoch - 1`` and their targets ``start + M`` must exist, i.e.
            ``max_start_epoch - 1 + M <= epochs``.
        max_start_epoch: see ``expert_epochs``.

    Returns:
        A :class:`Buffer`.

    Raises:
        ValueError: one message for a missing folder or manifest, no experts, a buffer for another
            architecture, dataset or feature shape, a corrupt expert file, or a horizon longer than
            the stored trajectories.
    """
    path = os.fspath(path) if path is not None else None
    if not path:
        raise ValueError("no expert buffer given: train experts first (`jdd experts --out DIR` or "
                         "jdd.experts.train_experts) and pass their folder.")
    if not os.path.isdir(path):
        raise ValueError(f"expert buffer {path}: no such folder; train experts first with "
                         f"`jdd experts --out {path}` (or jdd.experts.train_experts).")
    manifest = _read_manifest(path)
    epochs = int(manifest["epochs"])
    num_params = int(manifest["num_params"])
    files = []
    for f in sorted(glob.glob(os.path.join(path, "expert_*.npy"))):
        m = _EXPERT_RE.match(os.path.basename(f))
        if m:
            files.append((int(m.group(1)), f))
    if not files:
        raise ValueError(f"expert buffer {path}: no expert_*.npy files (training was interrupted "
                         "before the first expert finished?); rerun `jdd experts`.")
    files = [f for _, f in sorted(files)]
    problems = []
    if dataset is not None and str(dataset) != manifest["dataset"]:
        problems.append(f"it was trained on dataset {manifest['dataset']!r}, the run uses "
                        f"{str(dataset)!r}")
    if feature_shape is not None and tuple(feature_shape) != tuple(manifest["feature_shape"]):
        problems.append(f"its inputs have shape {tuple(manifest['feature_shape'])}, the run's "
                        f"{tuple(feature_shape)}")
    buf = Buffer(path, manifest, files)
    if model is not None and not problems:
        lay = param_layout(model, buf.feature_shape)
        if not buf.layout_matches(model):
            problems.append(f"it holds {manifest['model']} with {num_params} parameters, the run "
                            f"uses {model.name} with {lay.num_params} parameters (another "
                            "architecture or number of classes)")
    if expert_epochs is not None and max_start_epoch is not None:
        need = int(max_start_epoch) - 1 + int(expert_epochs)
        if need > epochs:
            problems.append(f"its experts have {epochs} epochs, but max_start_epoch "
                            f"{max_start_epoch} + expert_epochs {expert_epochs} needs targets up "
                            f"to epoch {need} (max_start_epoch - 1 + expert_epochs <= {epochs})")
    if problems:
        raise ValueError(f"expert buffer {path} does not fit this run: " + "; ".join(problems)
                         + ".")
    for f in files:
        _check_expert_file(f, epochs, num_params)
    return buf


# ----------------------------------------------------------------------------- command line

_DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "cifar100_coarse", "npz")


@dataclasses.dataclass(frozen=True)
class ExpertsConfig:
    """Options of ``jdd experts`` (defaults: the official MTT ``buffer.py`` recipe, except the
    number of experts and epochs, which are sized for a CPU)."""

    dataset: str = opt("digits", "dataset", choices=_DATASETS)
    data_dir: str | None = opt(None, "folder with the dataset files (the .npz path for npz); "
                               "default $JDD_DATA_DIR; not needed for digits")
    preprocess: str = opt("standardize", "preprocessing fitted on train (use the same one for "
                          "`jdd distill --method mtt`)", choices=("none", "standardize", "zca"))
    zca_reg: float = opt(0.1, "ZCA regulariser (x mean eigenvalue)", ge=0, le=1e6)
    model: str = opt("convnet", "expert network", choices=("convnet", "mlp", "resnet",
                                                           "two_layer"))
    width: int = opt(128, "ConvNet/ResNet channels, two-layer width", ge=1, le=4096)
    depth: int = opt(3, "ConvNet depth (conv blocks)", ge=1, le=16)
    norm: str = opt("instance", "ConvNet/ResNet normalisation",
                    choices=("instance", "layer", "none"))
    hidden: tuple[int, ...] = opt((128,), "MLP hidden widths", ge=1, le=65536)
    n_experts: int = opt(10, "experts in the folder (MTT trains 100)", ge=1, le=100000)
    epochs: int = opt(30, "training epochs per expert (MTT: 50)", ge=1, le=100000)
    lr: float = opt(0.01, "SGD learning rate (momentum 0, no weight decay; MTT's lr_teacher)",
                    gt=0, le=100)
    batch_size: int = opt(256, "minibatch size", ge=1, le=1_000_000)
    augment: str = opt("dsa", "augmentation of every minibatch: dsa (the dataset's DSA strategy, "
                       "per-image parameters, as MTT) or none", choices=("dsa", "none"))
    parallel: int | None = opt(None, "experts trained at once in one vmapped computation "
                               "(none: 1 on a CPU, up to 4 on an accelerator)", ge=1, le=4096)
    seed: int = opt(0, "random seed (expert i uses fold_in(key(seed), i))", ge=0, le=2**31 - 1)
    out: str | None = opt(None, "output folder (required); rerunning the same command resumes")
    quiet: bool = opt(False, "no progress bar")

    def check(self) -> None:
        if not self.out:
            raise ConfigError("--out: expected a folder for the expert trajectories; got nothing")


def add_parser(subparsers):
    """Add the ``experts`` sub-command to ``jdd``'s sub-parsers; returns its parser."""
    import argparse
    from jdd.config import add_arguments
    p = subparsers.add_parser(
        "experts", help="train expert networks and save their trajectories (for --method mtt)",
        description="Train --n-experts networks on the (preprocessed) training set with plain "
                    "SGD and save each one's parameters after every epoch to OUT/expert_*.npy "
                    "plus OUT/buffer.json (MTT's buffer.py). Rerunning the same command trains "
                    "only the missing experts. Then: jdd distill --method mtt --buffer OUT ...",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(p.add_argument_group("experts"), ExpertsConfig)
    return p


def cmd(args) -> int:
    """Run ``jdd experts`` from parsed arguments; user errors raise ``jdd.cli.CLIError``."""
    from jdd.cli import CLIError
    from jdd.config import from_namespace
    try:
        cfg = from_namespace(ExpertsConfig, args)
    except ConfigError as e:
        raise CLIError(str(e)) from None
    from jdd.cli import check_output_folder
    from jdd.rundir import RunFolderError, acquire_lock, release_lock
    check_output_folder(cfg.out)
    try:  # one writer per buffer folder: a second `jdd experts --out` is refused at once
        token = acquire_lock(cfg.out, "jdd experts")
    except RunFolderError as e:
        raise CLIError(str(e)) from None
    try:
        return _train(cfg)
    finally:
        release_lock(cfg.out, token)


def _train(cfg: ExpertsConfig) -> int:
    """``jdd experts`` once the folder is locked: load, check the network, train, report."""
    from jdd.cli import CLIError
    from jdd.data import DataError, load_dataset, preprocess
    from jdd.methods import network_kwargs
    from jdd.models import check_input_shape, make_model
    try:
        train, test = load_dataset(cfg.dataset, cfg.data_dir)
        train, _, _ = preprocess(train, test, cfg.preprocess, zca_reg=cfg.zca_reg)
    except DataError as e:
        raise CLIError(str(e)) from None
    _, kw = network_kwargs(cfg)
    if cfg.model in ("convnet", "resnet") and len(train.feature_shape) != 3:
        raise CLIError(f"--model {cfg.model} needs image data (n, h, w, c); {cfg.dataset} has "
                       f"features of shape {train.feature_shape}")
    model = make_model(cfg.model, train.num_classes, **kw)
    try:
        check_input_shape(model, train.feature_shape, f"--model {cfg.model}", cfg.dataset)
    except ValueError as e:
        raise CLIError(str(e)) from None
    augment = None
    if cfg.augment == "dsa":
        if len(train.feature_shape) != 3:
            raise CLIError("--augment dsa needs image data (h, w, c); use --augment none")
        from jdd.augment import default_strategy, dsa
        augment = dsa(default_strategy(cfg.dataset), mode="single", siamese=False)
    if not cfg.quiet:
        print(f"data: {train.name} {train.n} x {train.feature_shape}, preprocess="
              f"{cfg.preprocess}; model {model.name}; {cfg.n_experts} experts x {cfg.epochs} "
              f"epochs, lr {cfg.lr:g}, batch {cfg.batch_size}, augment {cfg.augment}", flush=True)
    try:
        path = train_experts(model, train, n_experts=cfg.n_experts, epochs=cfg.epochs, lr=cfg.lr,
                             batch_size=cfg.batch_size, augment=augment,
                             key=jax.random.key(cfg.seed), out_dir=cfg.out,
                             progress=not cfg.quiet, preprocessing=cfg.preprocess,
                             model_config={"model": cfg.model, **{k: (list(v) if isinstance(
                                 v, tuple) else v) for k, v in kw.items()}},
                             parallel=cfg.parallel)
    except FloatingPointError as e:
        raise CLIError(str(e)) from None
    except ValueError as e:
        raise CLIError(str(e)) from None
    buf = load_buffer(path)
    if not cfg.quiet:
        print(f"wrote {buf.n_experts} experts to {path} ({buf.epochs} epochs, "
              f"{buf.num_params} parameters each)")
    return 0
