"""The ``jdd`` command line: a thin layer over the public API.

``jdd distill``  distil a dataset (several seeds in one vmapped computation), evaluate, save.
``jdd evaluate`` re-evaluate a saved distilled set (e.g. on another architecture).
``jdd experts``  train expert trajectories for trajectory matching (``--method mtt``).
``jdd export``   write a distilled set in pixel space for PyTorch (safetensors, pt, npz, png).
``jdd import``   make a run folder from a set distilled elsewhere, for ``jdd evaluate``.
``jdd report``   compare runs: accuracy beside both baselines, robust scores, stored bytes.
``jdd methods``  list methods, datasets, models and kernels.

Run ``jdd COMMAND --help`` for every option.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import sys
import time

from jdd.config import ConfigError, opt

class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


# ----------------------------------------------------------------------------- parsing

def build_parser() -> argparse.ArgumentParser:
    """The ``jdd`` parser. ``distill`` is parsed by :func:`distill_parser` (its flags depend on
    ``--method``); it is listed here for ``jdd --help``."""
    p = argparse.ArgumentParser(
        prog="jdd", description="Dataset distillation in JAX.",
        epilog="Example: jdd distill --method unrolled --dataset digits --ipc 10 --seeds 4 "
               "--steps 1000 --out runs/digits-ipc10")
    p.add_argument("--version", action="version", version=f"jdd {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("distill", add_help=False,
                   help="distil a dataset, evaluate it against baselines, save the result "
                        "(jdd distill --method NAME --help lists the method's options)")
    e = sub.add_parser(
        "evaluate", help="re-evaluate a saved distilled set",
        description="Train fresh learners on a saved distilled set (optionally another "
                    "architecture) and on the random-subset and full-data baselines with the same "
                    "learner; print a table and write RUN/eval-NAME.json. A learned learning rate "
                    "is used only by the architecture it was learned for.")
    e.add_argument("run", help="run folder (or its distilled.npz)")
    from jdd.config import add_arguments
    add_arguments(e, EvaluateConfig)
    from jdd import experts
    experts.add_parser(sub)
    from jdd.interop import commands
    commands.add_parsers(sub)
    commands.add_report_parser(sub)
    from jdd import continual
    continual.add_parser(sub)
    sub.add_parser("methods", help="list methods, datasets, models and kernels")
    return p


# ----------------------------------------------------------------------------- helpers

def _version() -> str:
    from jdd import __version__
    return __version__


def versions() -> dict:
    """Versions of jdd and its main dependencies (for metrics.json)."""
    import flax
    import jax
    import jaxlib
    import numpy
    import optax
    return {"jdd": _version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "optax": optax.__version__, "flax": flax.__version__, "numpy": numpy.__version__,
            "python": platform.python_version(), "backend": jax.default_backend(),
            "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
            "host_cpus": os.cpu_count()}


def kernel_fn_by_name(name: str, depth: int = 2):
    """A jdd kernel function by CLI name (see ``jdd.distill.kip.KERNELS``)."""
    from jdd.distill.kip import kernel_by_name
    try:
        return kernel_by_name(name, depth)
    except ValueError as e:
        raise CLIError(str(e)) from None


def _load_data(name: str, data_dir, preprocess: str, zca_reg: float, quiet: bool):
    from jdd.data import DATASETS, DataError, load_dataset, preprocess as prep
    if name not in DATASETS:
        raise CLIError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")
    try:
        train, test = load_dataset(name, data_dir)
        train, test, pre = prep(train, test, preprocess, zca_reg=zca_reg)
    except DataError as e:
        raise CLIError(str(e)) from None
    _say(quiet, f"data: {train.name} {train.n} x {train.feature_shape}, {test.name} {test.n}, "
                f"{train.num_classes} classes, preprocess={preprocess}")
    return train, test, pre


def _say(quiet: bool, msg: str) -> None:
    if not quiet:
        print(msg, flush=True)


def results_table(rows: list[tuple[str, dict]]) -> str:
    """Format ``[(label, eval dict)]`` as a plain-text table (accuracies in %, and the stored
    size of each set when its dict has ``stored_bytes``)."""
    from jdd.storage import human
    head = f"{'set':<28} {'test accuracy (%)':>20} {'models':>7} {'stored':>10}  learner"
    lines = [head, "-" * len(head)]
    for label, r in rows:
        acc = f"{100 * r['test_accuracy_mean']:.2f} +- {100 * r['test_accuracy_std']:.2f}"
        size = human(r["stored_bytes"]) if r.get("stored_bytes") is not None else "-"
        lines.append(f"{label:<28} {acc:>20} {r['n_models']:>7} {size:>10}  {r['learner']}")
    return "\n".join(lines)


def add_sizes(result: dict, rand: dict | None, full: dict | None, size: dict, ipc: int,
              num_classes: int, feature_shape) -> None:
    """Write ``stored_bytes`` into the result dicts: the set's (one seed), the random subset's
    and the full data's (:mod:`jdd.storage`)."""
    from jdd.storage import subset_bytes
    result["stored_bytes"] = size["total_bytes"]
    if rand is not None:
        rand["stored_bytes"] = subset_bytes(ipc, num_classes, feature_shape)
    if full is not None and "full_data" in size:
        full["stored_bytes"] = size["full_data"]["total_bytes"]


def evaluate_with_baselines(learner, key, x, y, lr, train, test, ipc: int, n_models: int,
                            full_models: int, baselines: bool = True, quiet: bool = False):
    """Evaluate every seed's set and (optionally) both baselines under one learner, printing one
    progress line per phase (elapsed, and an ETA for the phases that cost what a set costs).

    Args:
        learner: a :class:`jdd.evaluate.Learner`.
        key: evaluation key; seed s uses ``fold_in(key, s)``, the baselines ``1 << 20 / 21``.
        x, y, lr: (seeds, m, ...), (seeds, m, k), (seeds,) the distilled sets.
        train, test: datasets in the set's (preprocessed) space.
        ipc, n_models, full_models: random-subset size per class; models per set / full data.

    Returns:
        (pooled result dict, random-subset dict or None, full-data dict or None).
    """
    import jax
    from jdd.evaluate import evaluate_full_data, evaluate_random_subset, evaluate_set
    seeds = x.shape[0]
    phases = seeds + (2 if baselines else 0)
    t0 = time.perf_counter()

    from jdd.console import raise_if_interrupted

    def step(i: int, what: str, fn):
        raise_if_interrupted()
        start = time.perf_counter()
        if not quiet:
            print(f"evaluate [{i}/{phases}] {what} ...", file=sys.stderr, flush=True)
        out = fn()
        if not quiet:
            took = time.perf_counter() - start
            left = seeds + (1 if baselines else 0) - i  # set-like phases still to run
            eta = f", about {left * took:.0f} s more before the full data" if (
                left > 0 and i <= seeds) else ""
            print(f"evaluate [{i}/{phases}] {what}: {took:.1f} s{eta}", file=sys.stderr,
                  flush=True)
        return out

    per_seed = [step(s + 1, f"distilled set, seed {s + 1} of {seeds} ({n_models} models)",
                     lambda s=s: evaluate_set(learner, jax.random.fold_in(key, s), x[s], y[s],
                                              test, n_models, lr[s]))
                for s in range(seeds)]
    rand = full = None
    if baselines:
        rand = step(seeds + 1, f"random subset ({n_models} models)",
                    lambda: evaluate_random_subset(learner, jax.random.fold_in(key, 1 << 20),
                                                   train, test, ipc, n_models)).to_dict()
        full = step(seeds + 2, f"full data ({full_models} models)",
                    lambda: evaluate_full_data(learner, jax.random.fold_in(key, 1 << 21), train,
                                               test, full_models)).to_dict()
    if not quiet:
        print(f"evaluate: done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return _pool(per_seed), rand, full


def _pool(results) -> dict:
    """Pool several EvalResults (one per seed) into one metrics dict."""
    import numpy as np
    accs = np.concatenate([r.accuracies for r in results])
    return {"test_accuracy_mean": float(accs.mean()), "test_accuracy_std": float(accs.std()),
            "n_models": int(accs.size), "learner": results[0].learner,
            "per_seed_mean": [r.mean for r in results],
            "accuracies": [float(a) for a in accs]}


# ----------------------------------------------------------------------------- distill

def distill_parser(method_name: str | None) -> argparse.ArgumentParser:
    """``jdd distill``'s parser: the shared run options plus, when ``--method`` is known, the
    method's own options, all derived from the typed configs (:mod:`jdd.config`)."""
    from jdd import methods
    from jdd.config import add_arguments
    p = argparse.ArgumentParser(
        prog="jdd distill",
        description="Distil --seeds independent synthetic sets in one vmapped, jitted "
                    "computation, evaluate them (and the random-subset and full-data baselines "
                    "with the same learner), and write OUT/distilled.npz, OUT/metrics.json and "
                    "PNGs of the distilled set and the loss curve. Every option is checked "
                    "before any data is loaded.",
        epilog="Methods: " + ", ".join(methods.names()) + ". Run `jdd distill --method NAME "
               "--help` for a method's options.")
    p.add_argument("--method", required=False, metavar="NAME",
                   help=f"distillation method, one of: {', '.join(methods.names())} (required "
                        "unless --config names it)")
    g = p.add_argument_group("config files and sweeps (jdd.sweep)")
    g.add_argument("--config", metavar="FILE", help="YAML file: a run (options by name, "
                   "method included), a run with a `grid` of option lists, or a list of them; "
                   "flags given beside it override its values; RUN/config.yaml reproduces a run")
    g.add_argument("--index", metavar="N", help="run only entry N (0-based) of the sweep, or "
                   "`env`: the array-job index (SLURM_ARRAY_TASK_ID, PBS_ARRAY_INDEX, "
                   "SGE_TASK_ID, LSB_JOBINDEX, AWS_BATCH_JOB_ARRAY_INDEX, JDD_SWEEP_INDEX)")
    g.add_argument("--dry-run", action="store_true", help="check every entry and print the "
                   "resolved configs as YAML; load and run nothing")
    g.add_argument("--resume", metavar="OUT", help="continue the interrupted run that was "
                   "writing to OUT from its newest checkpoint in OUT.ckpt (written with "
                   "--checkpoint-every); its options come from there (only --quiet may be added)")
    add_arguments(p.add_argument_group("run"), methods.RunConfig)
    if method_name is not None:
        m = methods.get(method_name)
        add_arguments(p.add_argument_group(f"{m.name}: {m.summary}"), m.config)
    return p


def parse_distill(argv: list[str]):
    """``(method, run_cfg, method_cfg)`` from ``jdd distill`` arguments, fully validated.

    Raises:
        CLIError: unknown method, an option the method does not have, a bad value.
    """
    from jdd import methods
    from jdd.config import ConfigError, from_namespace
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--method", default=None)
    known, _ = pre.parse_known_args(argv)
    name = known.method
    if name is not None and name not in methods.names():
        raise CLIError(f"unknown method {name!r}; valid methods: {', '.join(methods.names())}")
    parser = distill_parser(name)
    ns, rest = parser.parse_known_args(argv)
    if rest:
        raise CLIError(f"{' '.join(rest)}: not an option of --method {name} (see `jdd distill "
                       f"--method {name} --help` for its options)")
    if name is None:
        raise CLIError("--method: expected a method (or --config FILE naming one); valid "
                       f"methods: {', '.join(methods.names())}")
    method = methods.get(name)
    try:
        run_cfg = from_namespace(methods.RunConfig, ns)
        cfg = from_namespace(method.config, ns)
    except ConfigError as e:
        raise CLIError(str(e)) from None
    return method, run_cfg, cfg


def check_output_folder(out: str) -> None:
    """Refuse an --out that exists as a file, lies under a file, or cannot be written, before any
    work (the folder itself is created only when the results are written)."""
    path = os.path.abspath(out)
    if os.path.exists(path) and not os.path.isdir(path):
        raise CLIError(f"--out {out}: exists and is not a folder")
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise CLIError(f"--out {out}: {parent} is a file, so no folder can be created under it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CLIError(f"--out {out}: {parent} is not writable")


@contextlib.contextmanager
def _precision_of(x):
    """Evaluate a float64 set (the exact closed form) in float64, data included; float32 sets
    as they are. Yields two functions that cast a Dataset's inputs accordingly."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    if np.asarray(x).dtype != np.float64:
        yield (lambda d: d), (lambda d: d)
        return
    cast = lambda d: d.replace(x=jnp.asarray(np.asarray(d.x), jnp.float64))  # noqa: E731
    with jax.enable_x64(True):
        yield cast, cast


_SWEEP_FLAGS = {"--config": 1, "--index": 1, "--dry-run": 0, "--resume": 1}


def _without_sweep_flags(argv: list[str]) -> list[str]:
    """``argv`` less ``--config FILE``, ``--index N``, ``--dry-run`` (also ``--flag=value``)."""
    out, skip = [], 0
    for a in argv:
        if skip:
            skip -= 1
            continue
        name = a.split("=", 1)[0]
        if name in _SWEEP_FLAGS:
            skip = _SWEEP_FLAGS[name] if "=" not in a else 0
            continue
        out.append(a)
    return out


def parse_distill_runs(argv: list[str]) -> tuple[list, bool]:
    """Every run ``jdd distill`` was asked for, fully validated before anything runs.

    Without ``--config``: the one run of the flags. With it: the file's entries
    (:mod:`jdd.sweep`), each parsed by the same parser as flags (flags beside ``--config``
    override the file), ``out`` templates filled in, and the output folders checked: distinct,
    writable, and not holding a run unless ``overwrite``.

    With ``--resume OUT``: the one run whose checkpoints are in ``OUT.ckpt``, with the options
    saved there.

    Returns:
        ``([(method, run_cfg, method_cfg), ...], dry_run, resume)``.

    Raises:
        CLIError: the first problem of any entry, naming the entry.
    """
    from jdd import methods, sweep
    from jdd.config import fields, to_dict
    from jdd.rundir import RunFolderError, check_replaceable
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    pre.add_argument("--index", default=None)
    pre.add_argument("--dry-run", action="store_true")
    pre.add_argument("--method", default=None)
    pre.add_argument("--resume", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.resume is not None:
        from jdd.checkpoint import folder_of
        extra = [a for a in _without_sweep_flags(argv) if a not in ("--quiet", "--no-quiet")]
        if known.config is not None or known.index is not None or extra:
            raise CLIError(f"--resume takes the run's options from its checkpoints; expected "
                           f"no other options (but --quiet); got {' '.join(extra) or '--config'}")
        path = os.path.join(folder_of(known.resume), "config.yaml")
        if not os.path.isfile(path):
            raise CLIError(f"--resume {known.resume}: no checkpoints at "
                           f"{folder_of(known.resume)} (a run writes them with "
                           "--checkpoint-every N)")
        quiet = [a for a in argv if a in ("--quiet", "--no-quiet")]
        runs, _, _ = parse_distill_runs(["--config", path, "--out", known.resume] + quiet)
        return runs, known.dry_run, True
    if known.config is None:
        if known.index is not None:
            raise CLIError("--index: needs --config FILE (the sweep to pick an entry from)")
        runs = [parse_distill(_without_sweep_flags(argv))]
    else:
        cli = _without_sweep_flags(argv)
        try:
            entries = sweep.select(sweep.expand(sweep.read(known.config), known.config),
                                   known.index)
        except sweep.SweepError as e:
            raise CLIError(str(e)) from None
        runs = []
        for i, values in entries:
            where = f"{known.config} entry {i}"
            values = dict(values)
            name = known.method or values.pop("method", None)
            values.pop("method", None)
            if name is None:
                raise CLIError(f"{where}: no method; expected `method: NAME` (one of "
                               f"{', '.join(methods.names())}) or --method")
            if name not in methods.names():
                raise CLIError(f"{where}: unknown method {name!r}; valid methods: "
                               f"{', '.join(methods.names())}")
            options = [(f, tp) for cls in (methods.RunConfig, methods.get(name).config)
                       for f, tp, meta in fields(cls) if meta.get("cli", True)]
            valid = {f.name for f, _ in options}
            switches = {f.name for f, tp in options if tp is bool}
            unknown = sorted(set(values) - valid)
            if unknown:
                raise CLIError(f"{where}: unknown option(s) {', '.join(unknown)} for --method "
                               f"{name}; valid: {', '.join(sorted(valid))}")
            try:
                tokens = sweep.to_argv(values, switches)
            except sweep.SweepError as e:
                raise CLIError(f"{where}: {e}") from None
            try:
                method, rc, cfg = parse_distill(["--method", name] + tokens + cli)
            except CLIError as e:
                raise CLIError(f"{where}: {e}") from None
            try:
                out = sweep.format_out(rc.out, {"method": name, **to_dict(rc), **to_dict(cfg)},
                                       i)
            except sweep.SweepError as e:
                raise CLIError(f"{where}: {e}") from None
            runs.append((method, dataclasses.replace(rc, out=out), cfg))
    outs = [os.path.abspath(rc.out) for _, rc, _ in runs]
    for (_, rc, _), path in zip(runs, outs):
        if outs.count(path) > 1:
            raise CLIError(f"--out {rc.out}: {outs.count(path)} entries of the sweep write "
                           "there; expected one folder per run (use {index} or option names "
                           "in out, e.g. out: runs/{method}-ipc{ipc}-{index})")
        check_output_folder(rc.out)
        if len(runs) > 1:
            try:
                check_replaceable(path, rc.overwrite)
            except RunFolderError as e:
                raise CLIError(str(e)) from None
    return runs, known.dry_run, False


def resolved_config(method, rc, cfg, steps: int | None = None) -> dict:
    """The fully resolved options of a run, in the order of ``jdd distill --help``, with the
    step count filled in (what ``RUN/config.yaml`` holds)."""
    from jdd.config import to_dict
    values = {"method": method.name, **to_dict(rc), **to_dict(cfg)}
    values["steps"] = steps if steps is not None else (
        rc.steps if rc.steps is not None else method.default_steps(cfg, rc.ipc))
    return values


class _DiscardWriter:
    """The writer of processes other than 0 in a multi-process job: files go to a temporary
    folder that is removed (only process 0 writes the run)."""

    def __init__(self):
        import tempfile
        from jdd.rundir import new_run_id
        self._tmp = tempfile.mkdtemp(prefix="jdd-discard-")
        self.run_id = new_run_id()

    def path(self, name: str) -> str:
        return os.path.join(self._tmp, name)

    def commit(self, **info) -> dict:
        import shutil
        shutil.rmtree(self._tmp, ignore_errors=True)
        return {}


def cmd_distill(argv: list[str]) -> int:
    from jdd import sweep
    from jdd.mesh import MeshError, initialize, is_writer
    from jdd.rundir import RunFolderError, RunWriter
    try:
        multi = initialize()
    except MeshError as e:
        raise CLIError(str(e)) from None
    runs, dry_run, resume = parse_distill_runs(argv)
    if multi and not is_writer():  # compute its share (checkpoints too); write nothing else
        for method, rc, cfg in runs:
            rc = dataclasses.replace(rc, quiet=True, eval=False)
            _distill_into(_DiscardWriter(), method, rc, cfg, resume)
        return 0
    if dry_run:
        for i, (method, rc, cfg) in enumerate(runs):
            print(f"--- # run {i + 1} of {len(runs)}")
            print(sweep.dump(resolved_config(method, rc, cfg)), end="")
        return 0
    failed = []
    for i, (method, rc, cfg) in enumerate(runs):
        if len(runs) > 1:
            _say(rc.quiet, f"=== run {i + 1} of {len(runs)}: --method {method.name} --out "
                           f"{rc.out}")
        try:
            with RunWriter(rc.out, overwrite=rc.overwrite or resume,
                           command="jdd distill") as writer:
                _distill_into(writer, method, rc, cfg, resume)
        except RunFolderError as e:
            if len(runs) == 1:
                raise CLIError(str(e)) from None
            failed.append((rc.out, str(e)))
        except CLIError as e:
            if len(runs) == 1:
                raise
            print(f"jdd distill: run {i + 1} ({rc.out}) failed: {e}", file=sys.stderr)
            failed.append((rc.out, str(e)))
    if failed:
        raise CLIError(f"{len(failed)} of {len(runs)} runs failed: "
                       + "; ".join(out for out, _ in failed))
    return 0


def _checkpoints_for(method, rc, cfg, steps: int, resume: bool):
    """The run's :class:`jdd.checkpoint.RunCheckpoints` (None without checkpoints), its identity
    checked against the options before any data is loaded."""
    from jdd.checkpoint import (CheckpointError, RunCheckpoints, _barrier, folder_of,
                                identity)
    if not (rc.checkpoint_every or resume):
        return None, None
    if method.run is not None:
        raise CLIError(f"--checkpoint-every: --method {method.name} is not iterative (it runs "
                       "in one piece), so it has nothing to checkpoint")
    ck = RunCheckpoints(folder_of(rc.out), rc.checkpoint_every)
    ident = identity(resolved_config(method, rc, cfg, steps), None)
    try:
        if resume:
            ck.check_options(ident)
        elif ck.exists():
            if not rc.overwrite:
                raise CLIError(f"{ck.folder} holds the checkpoints of an interrupted run; "
                               f"continue it with `jdd distill --resume {rc.out}`, or pass "
                               "--overwrite to discard them")
            # (multi-process: every process has looked before process 0 removes them)
            _barrier("jdd-checkpoints-checked")
            ck.remove()
    except CheckpointError as e:
        raise CLIError(str(e)) from None
    return ck, ident


def _distill_into(writer, method, rc, cfg, resume: bool = False) -> int:
    """The body of ``jdd distill``: distil, evaluate, and write the run through ``writer``."""
    import jax
    import numpy as np
    from jdd import methods
    from jdd.artifacts import save_distilled, write_json
    from jdd.config import ConfigError, to_dict
    from jdd.data import DataError, check_ipc
    from jdd.distill import distill
    from jdd.storage import is_one_hot, set_storage

    steps = rc.steps if rc.steps is not None else method.default_steps(cfg, rc.ipc)
    _check_before_loading(rc, cfg, steps)
    _mesh_of(rc, None)                    # the devices and the seeds, before any data
    ck, ident = _checkpoints_for(method, rc, cfg, steps, resume)
    train, test, pre = _load_data(rc.dataset, rc.data_dir, rc.preprocess, rc.zca_reg, rc.quiet)
    resumed_from = None
    if ck is not None:
        from jdd import sweep
        from jdd.checkpoint import CheckpointError, data_fingerprint
        fingerprint = data_fingerprint(train.x, train.y)
        try:
            if resume:
                ck.check_data(fingerprint)
            else:
                ck.start({**ident, "data_sha256": fingerprint},
                         sweep.dump(resolved_config(method, rc, cfg, steps)))
        except CheckpointError as e:
            raise CLIError(str(e)) from None
    try:
        check_ipc(np.asarray(train.y), train.num_classes, rc.ipc, train.name)
    except DataError as e:
        raise CLIError(str(e)) from None
    if method.needs_images and len(train.feature_shape) != 3:
        raise CLIError(f"--method {method.name} needs image data (n, h, w, c); {rc.dataset} has "
                       f"features of shape {train.feature_shape}")
    spec = methods.RunSpec(ipc=rc.ipc, steps=steps, seeds=rc.seeds, dataset=rc.dataset,
                           num_classes=train.num_classes, feature_shape=train.feature_shape,
                           n_train=train.n, seed=rc.seed)
    keys = jax.random.split(jax.random.key(rc.seed), rc.seeds)
    try:
        methods.check_networks(cfg, spec)
        if method.run is not None:
            run = method.run(cfg, spec, train, keys, not rc.quiet)
        else:
            plan = method.build(cfg, spec)
            mesh = _mesh_of(rc, train.n)
            state = prior = None
            if resume:
                state, prior, resumed_from = _restore(ck, plan.distiller, keys, train, mesh)
                _say(rc.quiet, f"resuming from the checkpoint of step {resumed_from} of {steps}")
            r = distill(plan.distiller, keys, train, steps - (resumed_from or 0),
                        log_every=rc.log_every, progress=not rc.quiet,
                        desc=f"{method.name} ipc={rc.ipc} seeds={rc.seeds}", state=state,
                        checkpoints=ck, prior=prior, mesh=mesh)
            stored = None
            if plan.distiller.stored is not None:
                from jdd.mesh import fetch
                stored = {k: np.asarray(v) for k, v in
                          fetch(jax.jit(jax.vmap(plan.distiller.stored))(r.state)).items()}
            from jdd.mesh import describe
            run = methods.MethodRun(r.synthetic.x, r.synthetic.y, r.synthetic.lr, r.seconds,
                                    plan.learner, r.history, r.steps_logged, plan.info,
                                    {"mesh": describe(mesh)}, stored)
    except (ConfigError, DataError) as e:
        raise CLIError(str(e)) from None
    except FloatingPointError as e:
        raise CLIError(f"the run diverged: {e}") from None
    x, y, lr = np.asarray(run.x), np.asarray(run.y), np.asarray(run.lr, np.float32)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise CLIError("the distilled set contains NaN/inf (the run diverged); lower --lr. "
                       "Nothing was written.")
    _say(rc.quiet, f"distilled {rc.seeds} seed(s) in {run.seconds:.1f} s")

    hard = is_one_hot(y)  # stored as class ids
    meta = {"run_id": writer.run_id, "method": method.name, "dataset": rc.dataset,
            "data_dir": rc.data_dir, "ipc": rc.ipc,
            "seeds": rc.seeds, "seed": rc.seed, "steps": steps, "preprocess": rc.preprocess,
            "zca_reg": rc.zca_reg, "num_classes": train.num_classes,
            "learner": run.learner.config, "config": run.info}
    metrics = {"run_id": writer.run_id, "method": method.name, "dataset": rc.dataset,
               "ipc": rc.ipc, "seeds": rc.seeds,
               "steps": steps, "distill_seconds": run.seconds, "run_config": to_dict(rc),
               "images_per_class": x.shape[1] // train.num_classes, "config": run.info,
               "storage": set_storage(x, y, lr, hard, train.n, run.stored), **run.extra}
    if resumed_from is not None:
        metrics["resumed_from_step"] = resumed_from   # distill_seconds: this session's part
    if run.history:
        metrics["history"] = {"steps": np.asarray(run.steps_logged).tolist(),
                              **{k: np.asarray(v).tolist() for k, v in run.history.items()}}
    if rc.eval:
        t0 = time.perf_counter()
        ekey = jax.random.key(rc.seed + 10_000)
        with _precision_of(x) as (tr, te):
            result, rand, full = evaluate_with_baselines(
                run.learner, ekey, x, y, lr, tr(train), te(test), rc.ipc, rc.n_models,
                rc.full_data_models or rc.n_models, quiet=rc.quiet)
        add_sizes(result, rand, full, metrics["storage"], rc.ipc, train.num_classes,
                  train.feature_shape)
        metrics["result"] = result
        metrics["baselines"] = {"random_subset": rand, "full_data": full}
        alt_rows = []
        for name, alt in (run.alt_learners or {}).items():
            with _precision_of(x) as (tr, te):
                a_res, a_rand, a_full = evaluate_with_baselines(
                    alt, jax.random.fold_in(ekey, 77), x, y, lr, tr(train), te(test), rc.ipc,
                    rc.n_models, rc.full_data_models or rc.n_models, quiet=rc.quiet)
            metrics.setdefault("alt_results", {})[name] = {
                "result": a_res, "baselines": {"random_subset": a_rand, "full_data": a_full}}
            alt_rows += [(f"distilled, {name}", a_res), (f"random subset, {name}", a_rand),
                         (f"full data, {name}", a_full)]
        metrics["eval_seconds"] = time.perf_counter() - t0
        if not rc.quiet:
            print()
            print(results_table([(f"distilled ({method.name}, ipc {rc.ipc})", result),
                                 (f"random subset (ipc {rc.ipc})", rand),
                                 ("full data", full)] + alt_rows))
    metrics["versions"] = versions()
    try:
        save_distilled(writer.path("distilled.npz"), x, y, lr, pre, meta, run.stored)
        write_json(writer.path("metrics.json"), metrics)
        _write_config(writer.path("config.yaml"), resolved_config(method, rc, cfg, steps))
        _save_pictures(os.path.dirname(writer.path("metrics.json")), x, y, pre, run,
                       train.feature_shape, method.name)
        writer.commit(method=method.name, dataset=rc.dataset, ipc=rc.ipc)
    except (OSError, ValueError) as e:
        raise CLIError(f"could not write the results to {rc.out}: {e}") from None
    if ck is not None:
        ck.remove()
    _say(rc.quiet, f"wrote {rc.out}/distilled.npz, metrics.json, distilled.png, manifest.json")
    return 0


def _mesh_of(rc, n_data):
    """The run's device mesh (:mod:`jdd.mesh`); with ``n_data`` None only the devices and the
    seeds are checked (before any data is loaded). Notes about idle devices are printed."""
    from jdd.mesh import MeshError, make_mesh
    try:
        mesh, notes = make_mesh(rc.mesh, rc.seeds, n_data)
    except MeshError as e:
        raise CLIError(str(e)) from None
    if n_data is not None:
        for note in notes:
            _say(rc.quiet, note)
    return mesh


def _restore(ck, distiller, keys, train, mesh=None):
    """``(state, (history, steps_logged), step)`` of the newest checkpoint of a run; with a
    mesh, the state comes back placed along its ``"seeds"`` axis (in a multi-process job each
    process reads its own shards)."""
    import jax
    from jdd.checkpoint import CheckpointError, _first
    init_keys = jax.vmap(lambda k: jax.random.split(k)[0])(keys)
    template = jax.eval_shape(jax.vmap(distiller.init, in_axes=(0, None)), init_keys, train)
    if mesh is not None:
        from jdd.mesh import seed_sharding
        sh = seed_sharding(mesh)
        template = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                template)
    try:
        state, history, logged = ck.restore(template)
    except CheckpointError as e:
        raise CLIError(str(e)) from None
    from jdd.distill.core import _step_of
    return state, (history, logged), _first(_step_of(state))


def _write_config(path: str, values: dict) -> None:
    from jdd import __version__, sweep
    from jdd.artifacts import atomic_write
    header = (f"jdd {__version__}: the resolved options of this run. Reproduce it with\n"
              "  jdd distill --config RUN/config.yaml --out NEW_FOLDER")
    with atomic_write(path, "w") as f:
        f.write(sweep.dump(values, header))


def _check_before_loading(rc, cfg, steps: int) -> None:
    """For the datasets whose shape is known without reading them, refuse before any data is
    loaded a parameterization that cannot hold the images (``--param low-rank`` with a rank too
    large for the images or the ``--ipc`` budget) and extra-term layers the network lacks
    (``--mim4dd-layers``)."""
    from jdd import methods
    from jdd.config import ConfigError
    from jdd.data import SHAPES
    if rc.dataset not in SHAPES:
        return
    shape, k = SHAPES[rc.dataset]
    spec = methods.RunSpec(ipc=rc.ipc, steps=steps, seeds=rc.seeds, dataset=rc.dataset,
                           num_classes=k, feature_shape=shape, n_train=0, seed=rc.seed)
    try:
        if isinstance(cfg, methods.ParamOptions):
            methods.make_param(cfg, spec)
        if isinstance(cfg, methods.ExtraOptions) and isinstance(cfg, methods.NetworkOptions):
            methods.make_extra(cfg, methods.make_network(cfg, k), shape)
    except ConfigError as e:
        raise CLIError(str(e)) from None


def _save_pictures(out, x, y, pre, run, feature_shape, method):
    import numpy as np
    from jdd.artifacts import save_curve, save_image_grid
    try:
        imgs = np.asarray(pre.invert(x[0]))
    except Exception:  # a preprocessing that cannot be inverted: show the raw values
        imgs = x[0]
    # Group by the class slot the set was initialised with (class-major order) unless the labels
    # say otherwise: learned soft labels may move their argmax away from the slot's class.
    m, k = y.shape[1], y.shape[2]
    labels = np.argmax(y[0], -1)
    if m % k == 0:
        slots = np.arange(m) // (m // k)
        if np.mean(slots == labels) > 0.5:
            labels = slots
    if len(feature_shape) == 3:
        save_image_grid(os.path.join(out, "distilled.png"), imgs, labels,
                        title=f"{method}: distilled set (seed 0), one column per class")
    else:
        save_image_grid(os.path.join(out, "distilled.png"), imgs.reshape(len(imgs), -1),
                        labels, title=f"{method}: distilled set (seed 0)")
    if run.history and "loss" in run.history:
        save_curve(os.path.join(out, "loss.png"), run.steps_logged, run.history["loss"],
                   ylabel="outer loss", title=f"{method}: outer loss")


# ----------------------------------------------------------------------------- evaluate

@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """``jdd evaluate`` options (none: as recorded in the run)."""

    data_dir: str | None = opt(None, "dataset folder (default: as in the run)")
    n_models: int = opt(10, "fresh models per evaluated set", ge=1, le=10000)
    full_data_models: int | None = opt(None, "models of the full-data baseline (none: "
                                       "--n-models)", ge=1, le=10000)
    seed: int = opt(1, "evaluation random seed", ge=0, le=2**31 - 1)
    learner: str = opt("auto", "learner kind: auto (the run's), network or krr",
                       choices=("auto", "network", "krr"))
    model: str | None = opt(None, "network (default: the run's)",
                            choices=("mlp", "convnet", "resnet", "two_layer"))
    hidden: tuple[int, ...] | None = opt(None, "MLP hidden widths (default: the run's network's "
                                         "when it is an MLP, else 128)", ge=1, le=65536)
    width: int | None = opt(None, "ConvNet/ResNet channels, two-layer width (default: the run's "
                            "network's when --model is its kind, else 128)", ge=1, le=4096)
    depth: int | None = opt(None, "ConvNet depth (default: the run's, else 3)", ge=1, le=16)
    norm: str | None = opt(None, "ConvNet/ResNet normalisation (default: the run's, else "
                           "instance)", choices=("instance", "layer", "none"))
    epochs: int | None = opt(None, "protocol learners: training epochs (default: the run's)",
                             ge=1, le=100000)
    full_data_epochs: int | None = opt(None, "protocol learners: epochs of the full-data "
                                       "baseline (default: the run's)", ge=1, le=100000)
    steps: int | None = opt(None, "step-count learners: training steps (default: the run's)",
                            ge=1, le=1000000)
    lr: float | None = opt(None, "learning rate (default: the set's learned rate on the run's "
                           "own architecture, else the run's default rate)", gt=0, le=100)
    learned_lr: str = opt("auto", "use the set's learned learning rate: auto (only on the "
                          "architecture it was learned for), yes (on any), no (the run's "
                          "default rate)", choices=("auto", "yes", "no"))
    augment: str = opt("auto", "DSA augmentation in evaluation training: auto (the run's), "
                       "dsa or none", choices=("auto", "dsa", "none"))
    kernel: str | None = opt(None, "krr learner kernel (default: the run's)")
    reg: float | None = opt(None, "krr regulariser", ge=0, le=1e6)
    baselines: bool = opt(True, "also evaluate the random-subset and full-data baselines")
    robust: bool = opt(False, "also DD-Ranking's label- and augmentation-robust scores "
                       "(jdd.robust): the set with hard labels, and the set and the random "
                       "subset with and without DSA; written to eval-*.json and metrics.json")
    quiet: bool = opt(False, "print nothing")

    def check(self):
        if self.robust and not self.baselines:
            raise ConfigError("--robust and --no-baselines: the robust scores compare the set "
                              "with both baselines; drop --no-baselines")
        if self.lr is not None and self.learned_lr == "yes":
            raise ConfigError("--lr and --learned-lr yes: expected one learning rate; give "
                              "--lr, or --learned-lr yes without --lr")


def _tag(model_name: str) -> str:
    """A file-name-safe tag of a model description: ``convnet(depth=2, width=64)`` ->
    ``convnet-depth=2-width=64`` (the default model keeps its bare name)."""
    import re
    tag = re.sub(r"[^A-Za-z0-9=._]+", "-", model_name).strip("-")
    return tag


#: The options of each evaluation network, and their values when neither given nor the run's.
_NET_OPTIONS = {"mlp": ("hidden",), "convnet": ("width", "depth", "norm"),
                "resnet": ("width", "norm"), "two_layer": ("width",)}
_NET_DEFAULTS = {"hidden": (128,), "width": 128, "depth": 3, "norm": "instance"}


def _eval_network(c: EvaluateConfig, meta: dict) -> tuple[str, dict]:
    """(model name, keyword arguments) of the network ``jdd evaluate`` trains: ``--model`` (else
    the run's evaluation network); each option given, else the run's when the network is the
    run's kind, else the default. An option the network does not have is an error."""
    conf = meta.get("config", {})
    pre = "eval_" if "eval_model" in conf else ""
    run_name = conf.get(pre + "model") or meta.get("learner", {}).get("model", "mlp").split("(")[0]
    run_name = run_name if run_name in _NET_OPTIONS else "mlp"
    name = c.model or run_name
    for key in ("hidden", "width", "depth", "norm"):
        if getattr(c, key) is not None and key not in _NET_OPTIONS[name]:
            has = [m for m, keys in _NET_OPTIONS.items() if key in keys]
            raise ValueError(f"--{key}: the {name} network has no {key} (it is an option of "
                             f"--model {' / '.join(has)})")
    kw = {}
    for key in _NET_OPTIONS[name]:
        given, run = getattr(c, key), conf.get(pre + key)
        value = given if given is not None else (
            run if name == run_name and run is not None else _NET_DEFAULTS[key])
        kw[key] = tuple(value) if key == "hidden" else value
    return name, kw


def _check_evaluate_options(c: EvaluateConfig, meta: dict) -> None:
    """Refuse options the run's learner would ignore, before any data is loaded."""
    saved = meta.get("learner", {})
    protocol = "epochs" in saved
    kind = c.learner if c.learner != "auto" else ("krr" if saved.get("kind") == "krr"
                                                  else "network")
    if kind == "krr":
        for key in ("model", "hidden", "width", "depth", "norm", "epochs", "steps", "lr",
                    "full_data_epochs"):
            if getattr(c, key) is not None:
                raise CLIError(f"--{key.replace('_', '-')}: the krr learner trains no network; "
                               f"use --learner network to train one")
        if c.augment != "auto":
            raise CLIError("--augment: the krr learner does not augment; use --learner network")
        return
    for key in ("kernel", "reg"):
        if getattr(c, key) is not None:
            raise CLIError(f"--{key}: an option of the krr learner (--learner krr); this "
                           f"evaluation trains a network")
    wrong = ([("--steps", c.steps, "--epochs")] if protocol else
             [("--epochs", c.epochs, "--steps"), ("--full-data-epochs", c.full_data_epochs,
                                                  "--steps")])
    for flag_name, value, use in wrong:
        if value is not None:
            trains = "epochs (the image protocol)" if protocol else "a number of steps"
            raise CLIError(f"{flag_name}: this run's learner trains for {trains}; use {use}")
    try:
        _eval_network(c, meta)
    except ValueError as e:
        raise CLIError(str(e)) from None


def _eval_learner(c: EvaluateConfig, meta: dict, train):
    """(learner, tag, use_learned_lr) for a saved run under the evaluate options."""
    from jdd.evaluate import (full_data_config, kernel_learner, network_learner,
                              protocol_learner)
    from jdd.models import check_input_shape, make_model
    from jdd.train import TrainConfig
    saved = meta.get("learner", {})
    kind = c.learner if c.learner != "auto" else ("krr" if saved.get("kind") == "krr"
                                                  else "network")
    if kind == "krr":
        conf = meta.get("config", {})
        kname = c.kernel or conf.get("kernel", "fc-ntk")
        depth = conf.get("kernel_depth", 2)
        reg = c.reg if c.reg is not None else saved.get("reg", 1e-6)
        from jdd.distill.kip import KipConfig, evaluation_kernel
        cap = conf.get("full_data_max", KipConfig().full_data_max)   # runs from before the cap
        kfn = evaluation_kernel(kernel_fn_by_name(kname, depth), kname, train.feature_shape)
        return (kernel_learner(kfn, reg,
                               name=f"krr[{kname}, depth {depth}]", full_data_max=cap),
                f"krr-{kname}", False)
    name, kw = _eval_network(c, meta)
    model = make_model(name, train.num_classes, **kw)
    check_input_shape(model, train.feature_shape, f"--model {name}", meta["dataset"])
    same_arch = model.name == saved.get("model")
    lr = c.lr or saved.get("lr_default", 0.01)
    run_aug = saved.get("augmentation", "none") != "none"
    aug = run_aug if c.augment == "auto" else c.augment == "dsa"
    augment = None
    if aug:
        if len(train.feature_shape) != 3:
            raise ValueError(f"--augment dsa: DSA augments images (h, w, c); "
                             f"{meta['dataset']} has features of shape {train.feature_shape}")
        from jdd.augment import default_strategy, dsa
        augment = dsa(default_strategy(meta["dataset"]), siamese=False)
    tag = _tag(model.name) + ("" if aug == run_aug else "-dsa" if aug else "-noaug")
    if "epochs" in saved:  # the image protocol (DC/DSA/DM/MTT)
        learner = protocol_learner(model, epochs=c.epochs or saved["epochs"], lr=lr,
                                   batch_size=saved.get("batch_size") or 256, augment=augment,
                                   full_data_epochs=(c.full_data_epochs
                                                     or saved.get("full_data_epochs")))
        return learner, tag, _use_learned_lr(c, same_arch)
    base = {k: saved[k] for k in TrainConfig._fields if k in saved}
    cfg = TrainConfig(**base) if base else TrainConfig(steps=20)
    if saved.get("kind") != "network":
        # kernel-method sets carry regression targets, not class probabilities: train the
        # finite network on them with squared error (as KIP does), for longer.
        cfg = TrainConfig(steps=200, optimizer="adam", loss="mse")
    cfg = cfg._replace(steps=c.steps or cfg.steps, memory="unroll", batch_size=None)
    learner = network_learner(model, cfg, lr, full_data=full_data_config(cfg, train.n),
                              augment=augment)
    return learner, tag, _use_learned_lr(c, same_arch)


def _use_learned_lr(c: EvaluateConfig, same_arch: bool) -> bool:
    if c.lr is not None or c.learned_lr == "no":
        return False
    return same_arch or c.learned_lr == "yes"


def cmd_evaluate(a) -> int:
    import jax
    import numpy as np
    from jdd.artifacts import load_distilled_with_hash, write_json
    from jdd.config import ConfigError, from_namespace
    from jdd.data import DataError, load_dataset
    from jdd.rundir import RunFolderError, add_file
    from jdd.storage import is_one_hot, set_storage

    try:
        c = from_namespace(EvaluateConfig, a)
    except ConfigError as e:
        raise CLIError(str(e)) from None
    try:
        ds, set_sha = load_distilled_with_hash(a.run)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e)) from None
    meta = ds.meta
    set_path = os.path.join(a.run, "distilled.npz") if os.path.isdir(a.run) else a.run
    run_dir = os.path.dirname(os.path.abspath(set_path))
    _check_evaluate_options(c, meta)
    for folder in (run_dir, os.path.dirname(run_dir)):  # eval-*.json inside, the lock beside
        if not os.access(folder, os.W_OK | os.X_OK):
            raise CLIError(f"{folder} is not writable: jdd evaluate writes eval-NAME.json into "
                           f"the run folder (copy the folder somewhere writable)")
    try:
        train, test = load_dataset(meta["dataset"], c.data_dir or meta.get("data_dir"))
    except DataError as e:
        raise CLIError(str(e)) from None
    pre = ds.preprocessor
    train = train.replace(x=pre.apply(train.x))
    test = test.replace(x=pre.apply(test.x))
    if tuple(ds.x.shape[2:]) != train.feature_shape:
        raise CLIError(f"the distilled set has feature shape {ds.x.shape[2:]} but "
                       f"{meta['dataset']} has {train.feature_shape}")
    if ds.y.shape[2] != train.num_classes:
        raise CLIError(f"the distilled set has labels for {ds.y.shape[2]} classes but "
                       f"{meta['dataset']} has {train.num_classes}")
    try:
        learner, tag, use_lr = _eval_learner(c, meta, train)
    except ValueError as e:
        raise CLIError(str(e)) from None
    set_lr = ds.lr if use_lr else np.full_like(ds.lr, np.nan)
    size = set_storage(ds.x, ds.y, ds.lr, is_one_hot(ds.y), train.n,  # as stored, rate too
                       ds.stored)
    ds = ds._replace(lr=set_lr)
    _say(c.quiet, f"evaluating {ds.x.shape[0]} seed(s) x {c.n_models} models with "
                  f"{learner.name}" + (" and both baselines" if c.baselines else "") +
                  (" at the set's learned learning rate" if use_lr else ""))
    key = jax.random.key(c.seed)
    ipc = int(meta["ipc"])
    with _precision_of(ds.x) as (cast, _):
        result, rand, full = evaluate_with_baselines(
            learner, key, ds.x, ds.y, ds.lr, cast(train), cast(test), ipc, c.n_models,
            c.full_data_models or c.n_models, baselines=c.baselines, quiet=c.quiet)
        robust = (_robust_scores(c, meta, ds, cast(train), cast(test), learner, key, result,
                                 rand, full) if c.robust else None)
    add_sizes(result, rand, full, size, ipc, train.num_classes, train.feature_shape)
    out = {"run": os.path.abspath(run_dir), "run_id": meta.get("run_id"),
           "set_sha256": set_sha, "method": meta["method"], "dataset": meta["dataset"],
           "ipc": meta["ipc"], "learner_config": learner.config, "learned_lr_used": use_lr,
           "storage": size, "result": result}
    rows = [(f"distilled ({meta['method']}, ipc {ipc})", result)]
    if c.baselines:
        out["baselines"] = {"random_subset": rand, "full_data": full}
        rows += [(f"random subset (ipc {ipc})", rand), ("full data", full)]
    if robust is not None:
        out["robust"] = robust
        if robust["labels"] == "soft":
            rows.append(("distilled, hard labels", robust["syn_hard"]))
        other = robust.get("other_augmentation")
        if other is not None:
            how = "no augmentation" if other["augmentation"] == "none" else "with DSA"
            rows += [(f"distilled, {how}", other["distilled"]),
                     (f"random subset, {how}", other["random_subset"])]
    out["versions"] = versions()
    name = f"eval-{tag}.json"
    try:
        add_file(run_dir, name, lambda p: write_json(p, out), expect_sha256=set_sha,
                 set_name=os.path.basename(set_path))
        if robust is not None and os.path.exists(os.path.join(run_dir, "metrics.json")):
            add_file(run_dir, "metrics.json",
                     lambda p: write_json(p, _with_robust(p, tag, robust)),
                     expect_sha256=set_sha, set_name=os.path.basename(set_path))
    except (RunFolderError, OSError) as e:
        raise CLIError(str(e)) from None
    if not c.quiet:
        print(results_table(rows))
        if robust is not None:
            print(robust_table(robust))
        print(f"wrote {os.path.join(run_dir, name)}")
    return 0


def _with_robust(path: str, tag: str, robust: dict) -> dict:
    """The run's metrics.json with ``robust[tag]`` set (read under the folder's lock)."""
    import json
    with open(path) as f:
        metrics = json.load(f)
    metrics.setdefault("robust", {})[tag] = robust
    return metrics


def _robust_scores(c, meta, ds, train, test, learner, key, result, rand, full) -> dict:
    """DD-Ranking's LRS and ARS (:mod:`jdd.robust`) for a set already evaluated with both
    baselines: evaluates the extra arms (the set with hard labels; the set and the random
    subset with the augmentation switched) with the same models' keys."""
    import jax
    import numpy as np
    from jdd.evaluate import evaluate_random_subset, evaluate_set
    from jdd.robust import augmentation_robust_score, label_robust_score
    from jdd.storage import is_one_hot

    def say(msg):
        _say(c.quiet, f"robust: {msg}")

    def syn(lrn, y):
        per = [evaluate_set(lrn, jax.random.fold_in(key, s), ds.x[s], y[s], test, c.n_models,
                            ds.lr[s]) for s in range(ds.x.shape[0])]
        return _pool(per)

    mean = lambda r: r["test_accuracy_mean"]  # noqa: E731
    y = np.asarray(ds.y)
    hard_y = np.eye(y.shape[2], dtype=y.dtype)[np.argmax(y, -1)]
    soft = not is_one_hot(y)
    if soft:
        say("the set with hard labels (argmax)")
    syn_hard = syn(learner, hard_y) if soft else result
    arms = {"full_hard": mean(full), "syn_hard": mean(syn_hard), "syn": mean(result),
            "rand": mean(rand)}
    out = {"definition": "DD-Ranking v0.2.0 (jdd.robust), accuracies as fractions",
           "labels": "soft" if soft else "hard",
           "lrs": label_robust_score(arms["full_hard"], arms["syn_hard"], arms["syn"],
                                     arms["rand"]),
           "syn_hard": syn_hard}
    if learner.config.get("kind") == "krr" or len(train.feature_shape) != 3:
        out["ars"] = None
        out["ars_why_not"] = ("kernel regression does not augment" if learner.config.get(
            "kind") == "krr" else "DSA augments images only")
    else:
        run_aug = learner.config.get("augmentation", "none") != "none"
        other, _, _ = _eval_learner(dataclasses.replace(c, augment="none" if run_aug else "dsa"),
                                    meta, train)
        say(f"the set and the random subset {'without' if run_aug else 'with'} DSA")
        syn_o = syn(other, y)
        rand_o = evaluate_random_subset(other, jax.random.fold_in(key, 1 << 20), train, test,
                                        int(meta["ipc"]), c.n_models).to_dict()
        pairs = ((result, rand), (syn_o, rand_o)) if run_aug else ((syn_o, rand_o),
                                                                    (result, rand))
        (sa, ra), (sn, rn) = pairs
        out["ars"] = augmentation_robust_score(mean(sa), mean(ra), mean(sn), mean(rn))
        out["other_augmentation"] = {"learner": other.name,
                                     "augmentation": other.config.get("augmentation", "none"),
                                     "distilled": syn_o, "random_subset": rand_o}
    out["arms"] = arms
    return out


def robust_table(robust: dict) -> str:
    """Plain-text lines of the robust scores (percent points, scores in [0, 1])."""
    lrs = robust["lrs"]
    lines = [f"label-robust score (DD-Ranking)   LRS {lrs['lrs']:.3f}  (HLR "
             f"{100 * lrs['hlr']:+.2f} pts, IOR {100 * lrs['ior']:+.2f} pts; {robust['labels']} "
             f"labels)"]
    ars = robust.get("ars")
    if ars is None:
        lines.append(f"augmentation-robust score: not defined ({robust['ars_why_not']})")
    else:
        lines.append(f"augmentation-robust score        ARS {ars['ars']:.3f}  (gain over random "
                     f"{100 * ars['gain_aug']:+.2f} pts with DSA, {100 * ars['gain_noaug']:+.2f} "
                     f"without)")
    return "\n".join(lines)


def cmd_methods(a) -> int:
    from jdd import methods
    from jdd.data import DATASETS
    from jdd.distill.kip import KERNELS
    from jdd.models import MODELS
    print("methods (jdd distill --method NAME --help for the options of one):")
    for name in methods.names():
        print(f"  {name:<16} {methods.get(name).summary}")
    print("datasets: " + ", ".join(DATASETS))
    print("models:   " + ", ".join(MODELS))
    print("kernels:  " + ", ".join(KERNELS))
    print("features: linear, rff, fcnn")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jdd`` console command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else None
    try:
        if command in ("distill", "evaluate", "experts", "methods", "export", "import",
                       "report", "continual"):
            _preload()
        if command == "distill":
            rest = argv[1:]
            if any(h in rest for h in ("-h", "--help")):
                pre = argparse.ArgumentParser(add_help=False)
                pre.add_argument("--method", default=None)
                name = pre.parse_known_args(rest)[0].method
                from jdd import methods
                if name is not None and name not in methods.names():
                    raise CLIError(f"unknown method {name!r}; valid methods: "
                                   f"{', '.join(methods.names())}")
                distill_parser(name).print_help()
                return 0
            return cmd_distill(rest)
        parser = build_parser()
        a = parser.parse_args(argv)
        if a.command is None:
            parser.print_help()
            return 2
        from jdd import continual, experts
        from jdd.interop import commands
        return {"continual": continual.cmd, "evaluate": cmd_evaluate, "methods": cmd_methods, "experts": experts.cmd,
                "export": commands.cmd_export, "import": commands.cmd_import,
                "report": commands.cmd_report}[a.command](a)
    except CLIError as e:
        print(f"jdd {command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        code = getattr(e, "exit_code", EXIT_SIGINT)
        sig = "SIGTERM" if code == EXIT_SIGTERM else "SIGINT"
        left = {"experts": "the experts finished so far are saved; rerun the same command to "
                           "resume",
                "evaluate": "the run folder holds only complete files"}.get(
            command, "the output folder is as it was before (a run is written as a whole or not "
                     "at all)")
        left = getattr(e, "left", left)       # what a command saved, where it knows it
        print(f"jdd {command}: interrupted ({sig}); {left}.", file=sys.stderr, flush=True)
        if getattr(e, "together", False):
            _shutdown_together()
        return code


def _shutdown_together() -> None:
    """A multi-process job that every process stops at once (an agreed interrupt): leave
    through JAX's distributed shutdown, a barrier of all processes. The interrupted command
    exits without the interpreter's teardown (:func:`jdd.console._leave`), which would have run
    it; without it process 0, which hosts the coordination service, can exit first and the
    others abort when the service goes away. (A signal that ends one process alone skips this:
    the barrier would wait for processes that go on running.)"""
    import jax
    try:
        jax.distributed.shutdown()
    except Exception as e:  # noqa: BLE001 (leaving anyway; say why it was not clean)
        print(f"jdd: the distributed shutdown failed ({e}); exiting.", file=sys.stderr,
              flush=True)


def _preload() -> None:
    """Import the heavy modules with SIGINT / SIGTERM held until they are in: a signal raised
    inside a compiled extension's initialisation (jaxlib's) turns into an ImportError with a
    traceback, or is lost. The signal then acts right after, as a KeyboardInterrupt."""
    import importlib
    from jdd.rundir import signals_deferred
    with signals_deferred():
        for name in ("jax", "jax.numpy", "matplotlib", "jdd.artifacts", "jdd.evaluate",
                     "jdd.experts", "jdd.methods"):
            importlib.import_module(name)


from jdd.console import EXIT_SIGINT, EXIT_SIGTERM  # noqa: E402  (exit codes, documented there)


if __name__ == "__main__":
    from jdd.console import main as _console_main
    _console_main()
