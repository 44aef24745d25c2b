"""KIP on all of Fashion-MNIST (issue 10, part 4): FC and convolutional NTK kernels, IPC 1 and 10,
every one of the 60 000 training images a target at every step, in bounded memory.

Each row is one ``jdd distill --method kip --dataset fashion_mnist --batch-size none
--target-block B`` run (``--target-block``: the targets are evaluated in blocks of B rows, sliced
inside a rematerialised scan, so the step's memory is O(B x support) whatever the training-set
size; ``scaling.py`` measures that bound). Everything else is the method's validated recipe
(learned labels, Adam 0.03 cosine over 3000 steps at IPC 1, Adam 0.01 for 1000 steps at IPC 10,
ridge 1e-6), chosen on digits by cross-validation on the training split, never on a test set.
Evaluation is kernel ridge regression from the distilled set with the same kernel. Beside it:
the random-subset baseline (``--n-models`` random subsets of IPC images per class) and the
full-data KRR baseline, which fits a random 20 000 of the 60 000 images per model (jdd's
``--full-data-max`` default: exact KRR on all 60 000 holds a 14.4 GB kernel).

Reported per row: mean +- std over seeds (KRR is deterministic: one model per seed), both
baselines, CPU seconds and the peak resident memory of the run's process (which includes the
data and the capped full-data baseline, so it bounds the whole run, not only KIP's step).

Published KIP numbers on Fashion-MNIST are not quoted here: the ones at hand could not be
checked against the papers (see benchmarks/README.md).

Usage::

    python benchmarks/kip_fashion.py --quick --kernels fc-ntk   # 2 steps, the flow only (minutes)
    python benchmarks/kip_fashion.py --kernels fc-ntk --keep DIR
    python benchmarks/kip_fashion.py --kernels conv-ntk      # a GPU job: hours on a CPU

Writes results/kip_fashion.json after every row (rows of earlier runs with other keys are kept).
With ``--keep DIR`` the runs write checkpoints there, and a row whose run was interrupted
resumes from its last checkpoint when started again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (earlier_rows, parse_args, pm, positive, resumable, table,  # noqa: E402
                     write_result)

KERNELS = ("fc-ntk", "conv-ntk")
#: The repository root: the child processes import this checkout's jdd.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Runs one ``jdd`` command line in a child process and prints the child's own CPU seconds and
#: peak resident memory (each row gets a fresh process, so the peak is that row's).
CHILD = ("import resource, sys\n"
         "from jdd.cli import main\n"
         "rc = main(sys.argv[1:])\n"
         "u = resource.getrusage(resource.RUSAGE_SELF)\n"
         "print('JDD_USAGE', u.ru_utime + u.ru_stime, u.ru_maxrss, flush=True)\n"
         "sys.exit(rc)\n")


def _list(choices=None):
    def parse(text: str) -> list:
        vals = [v.strip() for v in text.split(",") if v.strip()]
        if not vals:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        if choices is None:
            return [positive(v) for v in vals]
        bad = [v for v in vals if v not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(bad)}: expected a "
                                             f"comma-separated list from {', '.join(choices)}")
        return vals
    return parse


def _extra(p):
    p.add_argument("--kernels", type=_list(KERNELS), default=list(KERNELS))
    p.add_argument("--ipcs", type=_list(), default=[1, 10])
    p.add_argument("--seeds", type=positive, default=2)
    p.add_argument("--n-models", type=positive, default=3,
                   help="random subsets (and capped full-data fits) per baseline")
    p.add_argument("--target-block", type=positive, default=1000)
    p.add_argument("--keep", default=None,
                   help="keep the run folders here; runs then write checkpoints, and a row whose "
                        "run was interrupted resumes from its last checkpoint when started again")
    p.add_argument("--checkpoint-every", type=positive, default=100,
                   help="with --keep: steps between checkpoints (and between logged entries)")


def run_row(kernel: str, ipc: int, args, work: str) -> dict:
    out = os.path.join(work, f"kip-fashion-{kernel}-ipc{ipc}")
    argv = ["distill", "--method", "kip", "--dataset", "fashion_mnist", "--kernel", kernel,
            "--ipc", str(ipc), "--batch-size", "none", "--target-block", str(args.target_block),
            "--seeds", str(args.seeds), "--n-models", str(args.n_models), "--out", out,
            "--quiet"]
    if args.quick:      # the flow only: numbers not for quoting
        argv += ["--steps", "2", "--full-data-max", "500"]
    argv = resumable(argv, out, args.checkpoint_every) if args.keep else argv + ["--overwrite"]
    path = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": path})
    usage = [ln.split() for ln in proc.stdout.splitlines() if ln.startswith("JDD_USAGE")]
    if proc.returncode != 0 or not usage:
        raise SystemExit(f"jdd {' '.join(argv)} failed ({proc.returncode}):\n"
                         f"{proc.stderr[-3000:]}")
    with open(os.path.join(out, "metrics.json")) as f:
        m = json.load(f)
    return {"kernel": kernel, "ipc": ipc, "seeds": args.seeds, "n_models": args.n_models,
            "argv": argv, "steps": m.get("steps"), "result": m["result"],
            "random_subset": m["baselines"]["random_subset"],
            "full_data": m["baselines"]["full_data"],
            "cpu_seconds": float(usage[-1][1]), "peak_rss_mib": int(usage[-1][2]) / 1024,
            "resumed_from_step": m.get("resumed_from_step")}


def _key(r: dict) -> tuple:
    return r["kernel"], r["ipc"]


def main(argv=None) -> int:
    args = parse_args("kip_fashion", __doc__.splitlines()[0], _extra, argv)
    from jdd.data import load_dataset
    load_dataset("fashion_mnist")        # a clear error now if it is missing, before any run
    work = args.keep or tempfile.mkdtemp(prefix="jdd-kip-fashion-")
    path = args.json
    if args.quick and path.endswith("kip_fashion.json"):
        path = path[:-len(".json")] + "_quick.json"
    rows = []
    for kernel in args.kernels:
        for ipc in args.ipcs:
            rows.append(run_row(kernel, ipc, args, work))
            r = rows[-1]
            res = r["result"]
            print(f"{kernel} ipc {ipc}: "
                  f"{pm(res['test_accuracy_mean'], res['test_accuracy_std'])} % (random "
                  f"{100 * r['random_subset']['test_accuracy_mean']:.2f}, full "
                  f"{100 * r['full_data']['test_accuracy_mean']:.2f}), "
                  f"{r['cpu_seconds']:.0f} CPU s, peak {r['peak_rss_mib']:.0f} MiB", flush=True)
            kept = [] if args.quick else earlier_rows(path, rows, _key)
            write_result(path, "kip_fashion", args.quick,
                         {"target_block": args.target_block, "batch": "whole training set",
                          "seeds, n_models, steps": "per row"}, {"rows": kept + rows})

    def cell(d):
        return pm(d["test_accuracy_mean"], d["test_accuracy_std"])
    print(table(["kernel", "ipc", "steps", "KIP (KRR)", "random subset", "full data (capped)",
                 "CPU s", "peak MiB"],
                [[r["kernel"], r["ipc"], r["steps"], cell(r["result"]), cell(r["random_subset"]),
                  cell(r["full_data"]), f"{r['cpu_seconds']:.0f}", f"{r['peak_rss_mib']:.0f}"]
                 for r in rows], title="KIP on Fashion-MNIST, whole training set as targets"))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
