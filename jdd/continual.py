"""Class-incremental learning with distilled memories (the low-rank plugin paper's application,
evaluated GDumb-style as the DSA and DM papers do): ``jdd continual`` and :func:`run_continual`.

The classes are split into ``tasks`` tasks of equal size (in a fixed or per-seed random order).
When task ``t`` arrives, only its classes' training data are available: a memory of a fixed
storage budget (``ipc`` images' worth of numbers per class) is built for each of its classes and
kept; the previous tasks' data are gone, their memories stay. After each task a ConvNet is
trained from scratch on the whole memory (the evaluation protocol: SGD with momentum, weight
decay, lr x0.1 at half) and tested on the test images of every class seen so far.

Memories (``memories``), all at the same number of stored inputs per class:

* ``random``: ``ipc`` random training images of the class;
* ``herding``: ``ipc`` images chosen greedily so that their mean embedding tracks the class's
  mean embedding (Welling 2009), in the embedding of a randomly initialised ConvNet (fixed per
  seed; DM's observation that random networks give useful embeddings; no labels of other tasks
  are needed);
* ``dm``: distribution matching (:mod:`jdd.distill.dm`) on the task's classes, pixels;
* ``dm-low-rank``: the same with the low-rank parameterization (:mod:`jdd.distill.low_rank`),
  more images in the same budget;
* ``dc``: gradient matching (:mod:`jdd.distill.dc`) on the task's classes, its loops at the
  budget, from real images, with an image learning rate of 0.1 (DC's) where those loops make
  one update per network (budgets up to 5) and 0.003 where they make several (:func:`dc_lr`).

Distilled memories start from real images of the task. The standardisation is the whole
training set's per-channel mean and std (two numbers per channel, as in every jdd run), the one
piece of information about later tasks the learner holds.

Reported: per memory, the accuracy after every task (mean over ``n_models`` models, then mean
and std over seeds), the mean over tasks and seeds, and the stored bytes per class
(:mod:`jdd.storage`); ``continual.png`` plots accuracy against task.

A run saves its progress after every task in a folder beside ``--out``, ``OUT.ckpt/``
(:func:`jdd.checkpoint.folder_of`): ``identity.json`` (the options and a SHA-256 of the training
data) and, per seed and memory, the memory so far and the accuracies after its finished tasks
(``tasks/seed<S>-<memory>.npz``). ``jdd continual --resume OUT`` continues an interrupted run
from there with the options it was started with; each task's keys depend only on the base seed,
the seed, the memory and the task, so the result is the one an uninterrupted run writes. The
folder is removed when the run's results are written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

from jdd.config import ConfigError, opt

MEMORIES = ("random", "herding", "dm", "dm-low-rank", "dc")

#: The dc memory's image learning rate where DC's loops make one update per fresh network
#: (budgets up to 5 images per class): DC's published 0.1.
DC_LR_ONE_UPDATE = 0.1
#: ... and where they make several, training the network between them (budgets from 6; at 10:
#: 10 updates, 50 epochs between). On a validation split of digits at IPC 10, from real images
#: (93.4 %; ``benchmarks/dc_recipe.py``, 20 outer iterations): 0.1 ends below them (92.4 %),
#: 0.03 / 0.01 / 0.003 end above them and above the random subset (94.7 %): 95.8 / 95.9 / 96.2.
DC_LR = 0.003


@dataclasses.dataclass(frozen=True)
class ContinualConfig:
    """``jdd continual`` options."""

    dataset: str = opt("digits", "dataset",
                       choices=("digits", "mnist", "fashion_mnist", "cifar10", "npz"))
    data_dir: str | None = opt(None, "dataset folder (as for jdd distill)")
    preprocess: str = opt("standardize", "preprocessing (per-channel mean and std of the whole "
                          "training set: two numbers per channel, fitted once)",
                          choices=("none", "standardize"))
    tasks: int = opt(5, "tasks (the classes split evenly among them)", ge=1, le=1000)
    class_order: str = opt("fixed", "class order: fixed (0, 1, ...) or random (per seed)",
                           choices=("fixed", "random"))
    ipc: int = opt(1, "memory budget per class: the storage of this many images", ge=1,
                   le=10000)
    memories: str = opt(",".join(MEMORIES), "memories to compare, comma-separated, from: "
                        + ", ".join(MEMORIES))
    rank: int = opt(2, "rank of the dm-low-rank memory's factors", ge=1, le=4096)
    dm_steps: int = opt(500, "distribution-matching steps per task", ge=1, le=10**7)
    dc_iterations: int = opt(100, "gradient-matching outer iterations per task", ge=1, le=10**6)
    dc_lr: float | None = opt(None, "SGD learning rate of the dc memory's images (none: "
                              f"{DC_LR_ONE_UPDATE:g}, DC's, at budgets up to 5, where DC's "
                              f"loops make one update per network; {DC_LR:g} from 6, "
                              "validated at 10 by benchmarks/dc_recipe.py)", gt=0, le=1e4)
    width: int = opt(128, "ConvNet width (distillation, herding embedding and evaluation)", ge=1,
                     le=4096)
    eval_epochs: int = opt(300, "epochs of each model trained on the memory", ge=1, le=100000)
    n_models: int = opt(3, "models trained on the memory after each task", ge=1, le=1000)
    seeds: int = opt(2, "independent repetitions (class order, memories, models)", ge=1,
                     le=1000)
    seed: int = opt(0, "base random seed", ge=0, le=2**31 - 1)
    out: str | None = opt(None, "output folder (required unless --resume): continual.json, "
                          "continual.png")
    overwrite: bool = opt(False, "replace a result already in --out (and discard the saved "
                          "progress of an interrupted run writing to it)")
    resume: str | None = opt(None, "continue the interrupted run that was writing to this "
                             "folder from the progress it saved after each task (in "
                             "FOLDER.ckpt); its options come from there (only --quiet may be "
                             "added)")
    quiet: bool = opt(False, "no progress")

    def check(self):
        if not self.out and not self.resume:
            raise ConfigError("--out: expected an output folder; got nothing")
        names = self.memory_list()
        bad = [m for m in names if m not in MEMORIES]
        if bad or not names:
            raise ConfigError(f"--memories: expected names from {', '.join(MEMORIES)}; got "
                              f"{self.memories!r}")

    def memory_list(self) -> list[str]:
        return [m.strip() for m in self.memories.split(",") if m.strip()]


def task_split(num_classes: int, tasks: int, key=None) -> list[list[int]]:
    """The classes of each task: ``num_classes / tasks`` each, in order 0..k-1 or permuted by
    ``key``.

    Raises:
        ValueError: ``tasks`` does not divide the classes.
    """
    if num_classes % tasks:
        raise ValueError(f"--tasks {tasks}: the {num_classes} classes do not split evenly; "
                         f"expected a divisor of {num_classes}")
    order = list(range(num_classes)) if key is None else [
        int(c) for c in jax.random.permutation(key, num_classes)]
    per = num_classes // tasks
    return [order[i * per:(i + 1) * per] for i in range(tasks)]


def subset(data, classes: list[int], relabel: bool):
    """The rows of ``classes`` (labels remapped to 0..len-1 when ``relabel``)."""
    from jdd.data import Dataset
    y = np.asarray(data.y)
    keep = np.isin(y, classes)
    yy = y[keep]
    if relabel:
        index = {int(c): i for i, c in enumerate(classes)}
        yy = np.asarray([index[int(c)] for c in yy], np.int64)
    return Dataset(x=jnp.asarray(np.asarray(data.x)[keep]), y=jnp.asarray(yy, jnp.int32),
                   num_classes=len(classes) if relabel else data.num_classes,
                   name=f"{data.name}[{','.join(map(str, classes))}]")


def herding(features: np.ndarray, n: int) -> np.ndarray:
    """Indices of ``n`` rows chosen greedily so that the running mean of their features stays
    closest to the mean of all rows (Welling 2009; iCaRL's exemplar selection).

    Args:
        features: (m, d).
        n: rows to choose (<= m).

    Returns:
        (n,) distinct indices in the order chosen.
    """
    f = np.asarray(features, np.float64)
    mu = f.mean(0)
    chosen: list[int] = []
    total = np.zeros_like(mu)
    free = np.ones(len(f), bool)
    for t in range(n):
        cand = (total[None, :] + f) / (t + 1)
        dist = np.sum((cand - mu) ** 2, axis=1)
        dist[~free] = np.inf
        j = int(np.argmin(dist))
        chosen.append(j)
        free[j] = False
        total += f[j]
    return np.asarray(chosen, np.int64)


def dc_lr(cfg: ContinualConfig) -> float:
    """The dc memory's image learning rate: ``cfg.dc_lr``, else :data:`DC_LR_ONE_UPDATE` where
    DC's loops at the budget (:func:`jdd.distill.dc.default_loops`) make one update per fresh
    network, and :data:`DC_LR` where they make several."""
    from jdd.distill.dc import default_loops
    if cfg.dc_lr is not None:
        return cfg.dc_lr
    return DC_LR_ONE_UPDATE if default_loops(cfg.ipc)[0] == 1 else DC_LR


def memory_builder(kind: str, cfg: ContinualConfig, k: int):
    """``(key, task_data) -> (x (m, ...), local class ids (m,), stored dict or None)``: the
    memory of one task's ``k`` classes (``task_data`` labels 0..k-1). Distillers are built once
    here, so every task and seed reuses one compiled program. Distilled memories start from real
    images (a memory is meant to be useful after few steps)."""
    from jdd.distill import distill
    from jdd.distill.core import init_per_class
    from jdd.models import make_model
    net = make_model("convnet", k, width=cfg.width)
    if kind == "random":
        def build(key, task_data):
            x, c = init_per_class(key, task_data, cfg.ipc)
            return np.asarray(x), np.asarray(c), None
        return build
    if kind == "herding":
        emb = jax.jit(net.embed)

        def build(key, task_data):
            params = net.init(jax.random.fold_in(key, 7), task_data.x[:1])
            xs, cs = [], []
            y = np.asarray(task_data.y)
            for c in range(k):
                rows = np.flatnonzero(y == c)
                f = np.concatenate([np.asarray(emb(params, task_data.x[rows[i:i + 512]]))
                                    for i in range(0, len(rows), 512)])
                xs.append(np.asarray(task_data.x)[rows[herding(f, cfg.ipc)]])
                cs.append(np.full(cfg.ipc, c))
            return np.concatenate(xs), np.concatenate(cs), None
        return build
    if kind in ("dm", "dm-low-rank"):
        from jdd.augment import default_strategy, dsa
        from jdd.distill.dm import dm
        from jdd.distill.low_rank import low_rank
        param = low_rank(rank=cfg.rank) if kind == "dm-low-rank" else None
        aug = (dsa(default_strategy(cfg.dataset), mode="single", siamese=True)
               if cfg.dataset != "npz" else None)
        d = dm(net, ipc=cfg.ipc, augment=aug, param=param)
        steps = cfg.dm_steps
    elif kind == "dc":
        from jdd.distill.dc import dc, default_loops
        d = dc(net, ipc=cfg.ipc, init="real", lr=dc_lr(cfg))
        steps = cfg.dc_iterations * default_loops(cfg.ipc)[0]
    else:
        raise ValueError(f"unknown memory {kind!r}; valid: {', '.join(MEMORIES)}")

    def build(key, task_data):
        r = distill(d, key, task_data, steps, log_every=max(1, steps // 5), progress=False)
        stored = ({n: np.asarray(v)[None] for n, v in d.stored(r.state).items()}
                  if d.stored is not None else None)
        return np.asarray(r.synthetic.x), np.argmax(np.asarray(r.synthetic.y), -1), stored
    return build


#: Options that do not change the result: not saved with the progress.
NOT_SAVED = ("out", "overwrite", "resume", "quiet")


def saved_options(cfg: ContinualConfig) -> dict:
    """The options a run's saved progress belongs to (and ``--resume`` runs again)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_SAVED}


class ProgressError(ValueError):
    """Saved progress that cannot be read; the message says which file and what to do."""


def _pair_path(folder: str, seed: int, kind: str) -> str:
    return os.path.join(folder, "tasks", f"seed{seed}-{kind}.npz")


def save_pair(folder: str, seed: int, kind: str, x, y, accuracy: list, storage: dict,
              cpu_seconds: float) -> None:
    """Save one (seed, memory)'s progress atomically: the memory so far ``x`` (m, ...) with its
    (global) classes ``y`` (m,), the accuracy after each finished task, the storage per class
    and the CPU seconds spent on it."""
    from jdd.artifacts import atomic_write
    with atomic_write(_pair_path(folder, seed, kind), "wb") as f:
        np.savez(f, x=np.asarray(x), y=np.asarray(y, np.int64),
                 accuracy=np.asarray(accuracy, np.float64),
                 storage=np.asarray(json.dumps(storage)),
                 cpu_seconds=np.asarray(cpu_seconds, np.float64))


def load_pair(folder: str, seed: int, kind: str) -> dict | None:
    """One (seed, memory)'s saved progress (as :func:`save_pair` wrote it), or None.

    Raises:
        ProgressError: the file exists but cannot be read.
    """
    path = _pair_path(folder, seed, kind)
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {"x": z["x"], "y": z["y"], "accuracy": z["accuracy"].tolist(),
                    "storage": json.loads(str(z["storage"])),
                    "cpu_seconds": float(z["cpu_seconds"])}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ProgressError(f"{path}: the saved progress could not be read ({e}); remove "
                            f"{folder} (or pass --overwrite) to start the run again") from None


def run_continual(cfg: ContinualConfig, train, test, progress=None,
                  saved: str | None = None) -> dict:
    """Run the benchmark for every memory and seed (see the module docstring).

    Args:
        cfg: the options.
        train, test: the (preprocessed) datasets.
        progress: ``(message) -> None`` called after each task, or None.
        saved: a progress folder (``OUT.ckpt``), or None: the finished tasks found there are
            taken as they are, and each task finished here is saved there.

    Returns:
        JSON-ready results: ``tasks`` (classes per task per seed), and per memory
        ``accuracy`` (seeds, tasks), ``mean_per_task``, ``std_per_task``, ``mean``, ``std``
        (over seeds of the mean over tasks) and ``storage`` (one class's bytes); ``restored``
        (tasks taken from ``saved``) and ``cpu_seconds`` (spent on the memories and their
        evaluation, by this process and the ones whose progress was restored).
    """
    from jdd.evaluate import evaluate_set, protocol_learner
    from jdd.models import make_model
    from jdd.storage import set_storage
    k = train.num_classes
    learner = protocol_learner(make_model("convnet", k, width=cfg.width), epochs=cfg.eval_epochs)
    out = {"tasks": [], "memories": {}, "restored": 0, "cpu_seconds": 0.0}
    builders: dict = {}
    for s in range(cfg.seeds):
        key = jax.random.fold_in(jax.random.key(cfg.seed), s)
        split = task_split(k, cfg.tasks, jax.random.fold_in(key, 1)
                           if cfg.class_order == "random" else None)
        out["tasks"].append(split)
        for mi, kind in enumerate(cfg.memory_list()):
            mem_x, mem_y, accs, cpu = [], [], [], 0.0
            done = load_pair(saved, s, kind) if saved else None
            if done is not None:
                mem_x, mem_y, accs, cpu = [done["x"]], [done["y"]], done["accuracy"], \
                    done["cpu_seconds"]
                out["memories"].setdefault(kind, {})["storage_per_class"] = done["storage"]
                out["restored"] += len(accs)
                if progress is not None:
                    progress(f"seed {s} {kind}: tasks 1-{len(accs)} of {len(split)} restored "
                             f"from {saved}")
            for t, classes in enumerate(split):
                if t < len(accs):
                    continue
                t0 = time.process_time()
                if kind not in builders:
                    builders[kind] = memory_builder(kind, cfg, k // cfg.tasks)
                build = builders[kind]
                tkey = jax.random.fold_in(jax.random.fold_in(key, 100 + mi), t)
                task = subset(train, classes, relabel=True)
                x, c, stored = build(tkey, task)
                mem_x.append(x)
                mem_y.append(np.asarray(classes)[np.asarray(c)])
                if t == 0:
                    xx = x[None]
                    yy = np.eye(len(classes), dtype=np.float32)[np.asarray(c)][None]
                    size = set_storage(xx, yy, np.full(1, np.nan), True, None, stored)
                    out["memories"].setdefault(kind, {})["storage_per_class"] = {
                        "inputs_floats": size["inputs_floats"] / len(classes),
                        "images": len(x) // len(classes),
                        "bytes": size["total_bytes"] / len(classes)}
                seen = [cl for task_classes in split[:t + 1] for cl in task_classes]
                test_seen = subset(test, seen, relabel=False)
                X, Y = np.concatenate(mem_x), np.concatenate(mem_y)
                res = evaluate_set(learner, jax.random.fold_in(tkey, 5), jnp.asarray(X),
                                   jnp.asarray(Y), test_seen, n_models=cfg.n_models)
                accs.append(float(res.mean))
                task_cpu = time.process_time() - t0
                cpu += task_cpu
                if saved:
                    save_pair(saved, s, kind, X, Y, accs,
                              out["memories"][kind]["storage_per_class"], cpu)
                if progress is not None:
                    note = f"{task_cpu:.0f} CPU s" + ("; saved" if saved else "")
                    progress(f"seed {s} {kind}: task {t + 1}/{len(split)} classes {classes}: "
                             f"{100 * res.mean:.2f} % on {len(seen)} classes ({note})")
            out["memories"].setdefault(kind, {}).setdefault("accuracy", []).append(accs)
            out["cpu_seconds"] += cpu
    for kind, r in out["memories"].items():
        a = np.asarray(r["accuracy"])                        # (seeds, tasks)
        r["mean_per_task"] = a.mean(0).tolist()
        r["std_per_task"] = a.std(0).tolist()
        r["mean"] = float(a.mean())
        r["std"] = float(a.mean(1).std())
    return out


def plot(path: str, result: dict, title: str) -> None:
    """Accuracy after each task, one line per memory (mean +- std over seeds)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, r in result["memories"].items():
        m, s = np.asarray(r["mean_per_task"]) * 100, np.asarray(r["std_per_task"]) * 100
        t = np.arange(1, len(m) + 1)
        ax.plot(t, m, marker="o", label=f"{kind} ({100 * r['mean']:.1f})")
        ax.fill_between(t, m - s, m + s, alpha=0.2)
    ax.set_xlabel("task")
    ax.set_ylabel("test accuracy on seen classes (%)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    from jdd.artifacts import _save_figure
    _save_figure(fig, path, 120)


def add_parser(sub):
    """The ``jdd continual`` sub-command."""
    from jdd.config import add_arguments
    p = sub.add_parser("continual", help="class-incremental learning with distilled memories",
                       description=__doc__.split("\n\n")[0].replace("\n", " "))
    add_arguments(p, ContinualConfig)
    return p


def _resumed_config(cfg: ContinualConfig) -> ContinualConfig:
    """``--resume FOLDER``: the options saved in ``FOLDER.ckpt`` (``--quiet`` kept), writing to
    ``FOLDER``.

    Raises:
        ConfigError: other options were given, or nothing (readable) was saved there.
    """
    from jdd.checkpoint import CheckpointError, RunCheckpoints, folder_of
    from jdd.config import fields, flag, from_dict
    given = [flag(f.name) for f, _, _ in fields(ContinualConfig)
             if f.name not in ("resume", "quiet") and getattr(cfg, f.name) != f.default]
    if given:
        raise ConfigError(f"--resume takes the run's options from its saved progress; expected "
                          f"only --quiet beside it; got {', '.join(given)}")
    ck = RunCheckpoints(folder_of(cfg.resume), None)
    if not ck.exists():
        raise ConfigError(f"--resume {cfg.resume}: no saved progress at {ck.folder} (jdd "
                          "continual saves it there after each task until the run ends)")
    try:
        saved = ck.read_identity().get("options")
    except CheckpointError as e:
        raise ConfigError(str(e)) from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{ck.folder}/identity.json holds no options; the folder is damaged")
    try:
        return from_dict(ContinualConfig, {**saved, "out": cfg.resume, "resume": cfg.resume,
                                           "overwrite": True, "quiet": cfg.quiet})
    except ConfigError as e:
        raise ConfigError(f"{ck.folder}: the saved options are not valid now ({e})") from None


def cmd(a) -> int:
    """Run ``jdd continual``; user errors raise ``jdd.cli.CLIError``."""
    from jdd import __version__
    from jdd.artifacts import write_json
    from jdd.checkpoint import CheckpointError, RunCheckpoints, data_fingerprint, folder_of
    from jdd.cli import CLIError, _load_data, check_output_folder, versions
    from jdd.config import from_namespace
    from jdd.data import SHAPES
    from jdd.rundir import RunFolderError, RunWriter
    try:
        cfg = from_namespace(ContinualConfig, a)
        if cfg.resume:
            cfg = _resumed_config(cfg)
        if cfg.dataset in SHAPES:
            task_split(SHAPES[cfg.dataset][1], cfg.tasks)
            h, w, _ = SHAPES[cfg.dataset][0]
            if "dm-low-rank" in cfg.memory_list():
                from jdd.distill.low_rank import images_per_class
                images_per_class(cfg.ipc, h, w, cfg.rank)
    except (ConfigError, ValueError) as e:
        raise CLIError(str(e)) from None
    check_output_folder(cfg.out)
    ck = RunCheckpoints(folder_of(cfg.out), None)
    if not cfg.resume and ck.exists() and not cfg.overwrite:
        raise CLIError(f"{ck.folder} holds the saved progress of an interrupted run; continue "
                       f"it with `jdd continual --resume {cfg.out}`, or pass --overwrite to "
                       "discard it")
    try:
        with RunWriter(cfg.out, overwrite=cfg.overwrite, command="jdd continual") as writer:
            train, test, _ = _load_data(cfg.dataset, cfg.data_dir, cfg.preprocess, 0.1,
                                        cfg.quiet)
            try:
                task_split(train.num_classes, cfg.tasks)
            except ValueError as e:
                raise CLIError(str(e)) from None
            ident = {"jdd": __version__, "options": saved_options(cfg),
                     "data_sha256": data_fingerprint(train.x, train.y)}
            if cfg.resume:
                try:
                    ck.check_data(ident["data_sha256"])
                except CheckpointError as e:
                    raise CLIError(str(e)) from None
            else:
                ck.remove()      # under the run folder's lock: --overwrite discards it here
                ck.start(ident, json.dumps(ident["options"], indent=1) + "\n")
            t0 = time.process_time()
            say = None if cfg.quiet else (lambda m: print(m, flush=True))
            try:
                result = run_continual(cfg, train, test, say, saved=ck.folder)
            except ProgressError as e:
                raise CLIError(str(e)) from None
            except KeyboardInterrupt as e:
                e.left = (f"the output folder is as it was before; the tasks finished so far are "
                          f"saved in {ck.folder}: continue with `jdd continual --resume "
                          f"{cfg.out}`")
                raise
            spent = time.process_time() - t0
            result.update(config=dataclasses.asdict(cfg), versions=versions(),
                          cpu_seconds_this_process=spent)
            write_json(writer.path("continual.json"), result)
            plot(writer.path("continual.png"), result,
                 f"{cfg.dataset}: {cfg.tasks} tasks, memory of {cfg.ipc} image(s)/class")
            writer.commit(command="jdd continual", dataset=cfg.dataset)
            ck.remove()          # the result is in place; still under the folder's lock
    except RunFolderError as e:
        raise CLIError(str(e)) from None
    if not cfg.quiet:
        print(f"{'memory':<14}{'mean over tasks (%)':>22}  per task")
        for kind, r in result["memories"].items():
            per = " ".join(f"{100 * v:.1f}" for v in r["mean_per_task"])
            print(f"{kind:<14}{100 * r['mean']:>14.2f} +- {100 * r['std']:.2f}  {per}")
        print(f"wrote {cfg.out}/continual.json, continual.png")
    return 0


__all__ = ["ContinualConfig", "MEMORIES", "ProgressError", "herding", "load_pair",
           "memory_builder", "run_continual", "save_pair", "saved_options", "task_split"]
