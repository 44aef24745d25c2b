"""Continual learning with distilled memories (issue 9, part 4): ``jdd continual`` on digits and
Fashion-MNIST at several memory budgets.

Class-incremental, 5 tasks of 2 classes, GDumb-style evaluation (a ConvNet trained from scratch on
the whole memory after each task, tested on every class seen so far); see :mod:`jdd.continual`.
Memories at equal bytes per class: random exemplars, herding exemplars, DM pixels, DM low-rank
(rank 2: more images in the same bytes) and DC. One row per (dataset, budget); each row is one
``jdd continual`` run with its defaults (2 seeds x 3 models, width 128, 300 evaluation epochs,
500 DM steps and 100 DC iterations per task).

Targets (the issue's): at every budget, each distilled memory (dm, dm-low-rank, dc) beats herding
and random in the mean over tasks and seeds; dm-low-rank beats dm at equal bytes. The JSON records
each check per row.

Usage::

    python benchmarks/continual.py --quick                        # tiny, digits (a minute)
    python benchmarks/continual.py --datasets digits              # budgets 1 and 10
    python benchmarks/continual.py --datasets fashion_mnist --ipcs 1 --keep DIR

Writes results/continual.json after every row (rows of earlier runs with other keys are kept) and
results/continual_DATASET_ipcN.png (accuracy against task). With ``--keep DIR`` a row whose run
folder already holds a result of the same settings is read back instead of run again, and a row
whose run was interrupted continues from its last finished task (``jdd continual --resume``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import RESULTS, earlier_rows, parse_args, table, write_result  # noqa: E402

DISTILLED = ("dm", "dm-low-rank", "dc")
BASELINES = ("random", "herding")
QUICK = {"tasks": 2, "dm_steps": 2, "dc_iterations": 2, "width": 8, "eval_epochs": 3,
         "n_models": 1, "seeds": 1}


def _declared_list(name: str):
    """argparse type: a comma-separated list of values of ``ContinualConfig.<name>``, each
    checked against the field's own declaration (type, range, choices); ``npz`` is refused
    (the benchmark passes no file)."""
    def parse(text: str) -> list:
        from jdd.config import ConfigError, convert, fields
        from jdd.continual import ContinualConfig
        _, tp, meta = next(f for f in fields(ContinualConfig) if f[0].name == name)
        try:
            vals = [convert(name, tp, meta, v.strip()) for v in text.split(",")]
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if "npz" in vals:
            raise argparse.ArgumentTypeError("npz: expected a named dataset (the benchmark "
                                             "passes no file)")
        return vals
    return parse


def settings(dataset: str, ipc: int, args) -> dict:
    """The ``ContinualConfig`` fields this row sets (the rest are the command's defaults)."""
    s = {"dataset": dataset, "ipc": ipc, "data_dir": args.data_dir}
    if args.quick:
        s.update(QUICK)
    return s


def _argv(s: dict, out: str, quiet: bool) -> list[str]:
    from jdd.config import flag
    argv = ["continual", "--out", out] + (["--quiet"] if quiet else [])
    for k, v in s.items():
        if v is not None:
            argv += [flag(k), str(v)]
    return argv


def _same(cfg_saved: dict, s: dict) -> bool:
    from jdd.continual import ContinualConfig, saved_options
    want = saved_options(dataclasses.replace(ContinualConfig(), **s))
    return all(cfg_saved.get(k) == v for k, v in want.items())


def _progress_matches(out: str, s: dict) -> bool:
    """Whether ``out`` has the saved progress of an interrupted run of these settings."""
    from jdd.checkpoint import CheckpointError, RunCheckpoints, folder_of
    ck = RunCheckpoints(folder_of(out), None)
    try:
        ident = ck.read_identity() if ck.exists() else None
    except CheckpointError:
        return False
    options = ident.get("options") if isinstance(ident, dict) else None
    return isinstance(options, dict) and _same(options, s)


def run_row(dataset: str, ipc: int, args, work: str) -> dict:
    from jdd.cli import main
    s = settings(dataset, ipc, args)
    out = os.path.join(work, f"continual-{dataset}-ipc{ipc}")
    path = os.path.join(out, "continual.json")
    reused = False
    if args.keep and os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        reused = _same(saved.get("config", {}), s)
    t0 = time.process_time()
    if not reused:
        argv = _argv(s, out, args.quiet) + ["--overwrite"]
        if args.keep and _progress_matches(out, s):   # an interrupted run of this row
            argv = ["continual", "--resume", out] + (["--quiet"] if args.quiet else [])
        rc = main(argv)
        if rc != 0:
            raise SystemExit(f"jdd continual failed ({rc}) for {dataset} ipc {ipc}")
        with open(path) as f:
            saved = json.load(f)
    mem = saved["memories"]
    row = {"dataset": dataset, "ipc": ipc, "settings": s, "reused": reused,
           "cpu_seconds": saved.get("cpu_seconds") if reused else time.process_time() - t0,
           "tasks": saved["tasks"],
           "memories": {k: {"mean": r["mean"], "std": r["std"],
                            "mean_per_task": r["mean_per_task"],
                            "std_per_task": r["std_per_task"], "accuracy": r["accuracy"],
                            "storage_per_class": r["storage_per_class"]}
                        for k, r in mem.items()}}
    base = [mem[b]["mean"] for b in BASELINES if b in mem]
    row["targets"] = {
        "distilled_beat_random_and_herding": {
            d: bool(mem[d]["mean"] > max(base)) for d in DISTILLED if d in mem and base},
        "low_rank_beats_pixels": (bool(mem["dm-low-rank"]["mean"] > mem["dm"]["mean"])
                                  if "dm-low-rank" in mem and "dm" in mem else None)}
    if not args.quick:
        png = os.path.join(RESULTS, f"continual_{dataset}_ipc{ipc}.png")
        shutil.copyfile(os.path.join(out, "continual.png"), png)
        row["png"] = os.path.relpath(png, os.path.dirname(RESULTS))
    return row


def _key(r: dict) -> tuple:
    return r["dataset"], r["ipc"]


def _write(path: str, args, rows: list) -> None:
    kept = [] if args.quick else earlier_rows(path, rows, _key)
    command = QUICK if args.quick else "jdd continual with its defaults"
    write_result(path, "continual", args.quick, {"command": command}, {"rows": kept + rows})


def _extra(p):
    p.add_argument("--datasets", type=_declared_list("dataset"),
                   default=["digits", "fashion_mnist"])
    p.add_argument("--ipcs", type=_declared_list("ipc"), default=[1, 10],
                   help="memory budgets (images' storage per class), comma-separated")
    p.add_argument("--data-dir", default=None, help="dataset folder (MNIST/CIFAR files)")
    p.add_argument("--quiet", action="store_true",
                   help="no per-task progress from jdd continual (the rows' results still print)")
    p.add_argument("--keep", default=None,
                   help="keep the run folders here; a row whose folder holds a result of the "
                        "same settings is read back instead of run again (an interrupted one "
                        "continues from its last finished task)")


def main(argv=None) -> int:
    args = parse_args("continual", __doc__.splitlines()[0], _extra, argv)
    if args.quick:
        args.datasets, args.ipcs = ["digits"], [1]
    path = args.json
    if args.quick and path.endswith("continual.json"):
        path = path[:-len(".json")] + "_quick.json"
    work = args.keep or tempfile.mkdtemp(prefix="jdd-continual-")
    rows = []
    try:
        for ds in args.datasets:
            for ipc in args.ipcs:
                rows.append(run_row(ds, ipc, args, work))
                r = rows[-1]
                print(f"{ds} ipc {ipc}: " + ", ".join(
                    f"{k} {100 * m['mean']:.2f}" for k, m in r["memories"].items()), flush=True)
                _write(path, args, rows)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    body = []
    for r in rows:
        for k, m in r["memories"].items():
            st = m["storage_per_class"]
            body.append([r["dataset"], r["ipc"], k, st["images"], f"{st['bytes']:.0f}",
                         f"{100 * m['mean']:.2f} +- {100 * m['std']:.2f}",
                         " ".join(f"{100 * v:.1f}" for v in m["mean_per_task"])])
    print(table(["dataset", "budget", "memory", "images/class", "bytes/class",
                 "mean over tasks %", "per task %"], body,
                title="continual learning, memories at equal bytes (mean +- std over seeds)"))
    for r in rows:
        print(f"{r['dataset']} ipc {r['ipc']}: targets {r['targets']}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
