"""Shared helpers for the benchmark scripts in this folder.

Every benchmark is run as ``python benchmarks/NAME.py [--quick] [--json PATH]``: it prints a table
and writes a JSON file (default ``benchmarks/results/NAME.json``) holding the device, the library
versions, the settings and the results. ``--quick`` uses tiny settings (a couple of minutes on a
CPU) for smoke tests; the full run is the one whose numbers are quoted.

Helpers:

* :func:`parse_args`: the standard ``--quick`` / ``--json`` parser (extra options can be added);
* :func:`device_string`, :func:`versions`: where and with what a result was measured;
* :func:`table`: a plain-text table;
* :func:`write_result`: atomic JSON (``jdd.artifacts.write_json``) with device and versions added;
* :func:`earlier_rows`: the rows of an earlier run's JSON that a partial rerun keeps.
* :func:`finished_run`, :func:`resumable`: kept ``jdd distill`` rows read again, or resumed.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from typing import Any, Callable, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")

# Make `import jdd` work from a plain checkout too (the venv has it installed editable).
if os.path.join(HERE, "..") not in sys.path:
    sys.path.insert(0, os.path.join(HERE, ".."))


def default_json(name: str) -> str:
    """``benchmarks/results/NAME.json``."""
    return os.path.join(RESULTS, f"{name}.json")


def parse_args(name: str, description: str,
               extra: Callable[[argparse.ArgumentParser], None] | None = None,
               argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``--quick`` and ``--json PATH`` (default ``results/NAME.json``) plus ``extra`` options."""
    p = argparse.ArgumentParser(prog=f"benchmarks/{name}.py", description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="tiny settings (a couple of minutes on a CPU); numbers not for quoting")
    p.add_argument("--json", default=default_json(name), help="where to write the JSON result")
    if extra is not None:
        extra(p)
    return p.parse_args(argv)


def device_string() -> str:
    """E.g. ``"CPU (2 cores, shared)"`` or ``"GPU (NVIDIA H100 80GB HBM3)"``."""
    import jax
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        return f"CPU ({os.cpu_count()} cores, shared)"
    return f"{dev.platform.upper()} ({dev.device_kind})"


def versions() -> dict:
    """Versions of jdd, jax, jaxlib, optax, flax, numpy, python and the jax backend."""
    import flax
    import jax
    import jaxlib
    import numpy
    import optax
    import jdd
    return {"jdd": jdd.__version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "optax": optax.__version__, "flax": flax.__version__, "numpy": numpy.__version__,
            "python": platform.python_version(), "backend": jax.default_backend()}


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> str:
    """Format a plain-text table; the first column is left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(r, widths)))

    out = ([title] if title else []) + [line(cells[0]), "-" * len(line(cells[0]))]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def _fmt(c) -> str:
    if isinstance(c, float):
        return f"{c:.4g}"
    return str(c)


def write_result(path: str, name: str, quick: bool, settings: dict, results: dict,
                 **extra) -> dict:
    """Atomically write the standard JSON payload and return it.

    Layout: ``{"benchmark", "quick", "device", "versions", "date", "settings", "results", ...}``.
    """
    from jdd.artifacts import write_json
    payload = {"benchmark": name, "quick": bool(quick), "device": device_string(),
               "versions": versions(), "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
               "settings": settings, "results": results, **extra}
    write_json(path, payload)
    return payload


def earlier_results(path: str, settings: dict, quick: bool) -> dict:
    """The ``results`` mapping of the JSON at ``path`` when an earlier invocation wrote it with
    the same ``settings`` and ``quick``: what a sweep that adds entries by separate invocations
    keeps. ``{}`` when there is no readable file or the settings differ."""
    import json
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        return {}
    if old.get("settings") != settings or old.get("quick") != bool(quick):
        return {}
    return dict(old.get("results", {}))


def earlier_rows(path: str, rows: list, key: Callable[[dict], tuple]) -> list:
    """The rows of the JSON at ``path`` (an earlier run of the benchmark) whose ``key`` none of
    ``rows`` has: what a benchmark that reruns some rows keeps. ``[]`` when there is no readable
    file."""
    import json
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        return []
    done = {key(r) for r in rows}
    return [r for r in old.get("results", {}).get("rows", []) if key(r) not in done]


def pm(mean: float, std: float, scale: float = 100.0, digits: int = 2) -> str:
    """``"93.51 +- 0.80"`` (accuracies as percentages by default)."""
    return f"{scale * mean:.{digits}f} +- {scale * std:.{digits}f}"


def positive(text: str) -> int:
    """argparse type: an integer >= 1 (checked before any work)."""
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1; got {text!r}")
    return v


def nonnegative(text: str) -> float:
    """argparse type: a finite number >= 0 (checked before any work)."""
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not (v >= 0 and v != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0; got {text!r}")
    return v


def standardise(train, test, max_train: int | None = None, seed: int = 0, dtype="float64"):
    """Flattened train and test :class:`jdd.data.Dataset` s in ``dtype``, standardised with the
    training split's global mean and std; ``max_train``: a random subset of that many training
    examples first (the statistics are the subset's). Returns ``(train, test, mean, std)``."""
    import jax.numpy as jnp
    import numpy as np
    from jdd.data import Dataset
    xtr = np.asarray(train.x, np.float64).reshape(train.n, -1)
    ytr = np.asarray(train.y)
    if max_train is not None and train.n > max_train:
        idx = np.sort(np.random.default_rng(seed).choice(train.n, max_train, replace=False))
        xtr, ytr = xtr[idx], ytr[idx]
    mu, sd = xtr.mean(), xtr.std()
    xte = np.asarray(test.x, np.float64).reshape(test.n, -1)
    tr = Dataset(jnp.asarray(((xtr - mu) / sd).astype(dtype)), jnp.asarray(ytr, jnp.int32),
                 train.num_classes, train.name)
    te = Dataset(jnp.asarray(((xte - mu) / sd).astype(dtype)), test.y, test.num_classes,
                 test.name)
    return tr, te, float(mu), float(sd)


def digits_validation_split():
    """``(fit, val)``: the digits training set split 75 % / 25 % (stratified, fixed key 123),
    both standardised with the 75 %'s per-channel statistics; the test split is not loaded.
    Every recipe benchmark (``*_recipe.py``, ``dc_param_init.py``) scores on this ``val``."""
    return validation_split("digits")


def validation_split(dataset: str, data_dir: str | None = None):
    """``(fit, val)``: the training set of ``dataset`` split 75 % / 25 % (stratified, fixed key
    123), both standardised with the 75 %'s per-channel statistics; the test split is never
    used for a recipe (it is loaded only because the loaders return both)."""
    import jax
    from jdd.data import load_dataset, preprocess
    from jdd.data.dataset import stratified_split
    train, _ = load_dataset(dataset, data_dir)
    fit, val = stratified_split(jax.random.key(123), train, 0.25)
    fit, val, _ = preprocess(fit, val, "standardize")
    return fit, val


RUN_CONTROL = ("out", "overwrite", "quiet", "log_every", "checkpoint_every")


def finished_run(argv: list[str], out: str) -> bool:
    """Whether ``out`` holds a finished ``jdd distill`` run of the command line ``argv``: its
    ``metrics.json`` is there, its ``config.yaml`` (the run's resolved options) equals what
    ``argv`` resolves to in every option but where the run was written and how it logged
    (``RUN_CONTROL``), and no interrupted run waits in its checkpoint folder. A kept row that
    passes is read again instead of run again."""
    import json
    from jdd import sweep
    from jdd.checkpoint import RunCheckpoints, folder_of
    from jdd.cli import CLIError, parse_distill, resolved_config
    try:
        method, run_cfg, cfg = parse_distill(argv[1:])
        saved = sweep.read(os.path.join(out, "config.yaml"))
        with open(os.path.join(out, "metrics.json")) as f:
            json.load(f)
    except (OSError, ValueError, CLIError):
        return False
    if not isinstance(saved, dict):
        return False
    if RunCheckpoints(folder_of(out), None).latest_step() is not None:
        return False
    want = json.loads(json.dumps(resolved_config(method, run_cfg, cfg)))
    saved = json.loads(json.dumps(saved))
    return all(k in saved and saved[k] == v for k, v in want.items() if k not in RUN_CONTROL)


def resumable(argv: list[str], out: str, every: int) -> list[str]:
    """A ``jdd distill`` command line for a benchmark row kept in ``out``: it resumes the run
    that an interruption left there (its checkpoint folder holds a checkpoint), else starts it
    with a checkpoint (and a logged entry) every ``every`` steps, replacing an earlier finished
    run and the folder of one stopped before its first checkpoint. A method that runs in one
    piece (SRe2L, the closed form) has no checkpoints: it simply runs again."""
    from jdd import methods
    from jdd.checkpoint import RunCheckpoints, folder_of
    if methods.get(argv[argv.index("--method") + 1]).run is not None:
        return argv + ["--overwrite"]
    if RunCheckpoints(folder_of(out), None).latest_step() is not None:
        print(f"resuming the interrupted run {out}", flush=True)
        return ["distill", "--resume", out]
    every = str(every)
    return argv + ["--checkpoint-every", every, "--log-every", every, "--overwrite"]
