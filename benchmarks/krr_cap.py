"""What KIP's capped full-data baseline gives up: KRR on random training subsets of growing size.

``jdd distill --method kip`` reports a full-data baseline, kernel ridge regression (KRR) with the
run's kernel on the training set. Exact KRR on ``n`` images holds the ``n x n`` kernel and its
Cholesky factor (4 n^2 bytes each in float32: 14.4 GB each for Fashion-MNIST's 60 000), so the
baseline fits a random subset of at most ``--full-data-max`` images per model (20 000 by
default). This benchmark measures the curve that the cap cuts: the same learner (the KIP
default kernel, FC ReLU NTK of depth 2, ridge 1e-6 relative to the kernel's mean diagonal,
float32) on random subsets of each size, and on all the training images where memory allows.

Each size runs in its own child process, which reports its CPU seconds and peak resident
memory; every model of a size draws its own subset (the baseline's own code path:
``kernel_learner(..., full_data_max=n).full_data``).

Usage::

    python benchmarks/krr_cap.py --quick          # digits, seconds
    python benchmarks/krr_cap.py                  # Fashion-MNIST, 5 000 to 30 000 images

Writes results/krr_cap.json (rows of sizes not rerun are kept) and prints a table.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (earlier_rows, nonnegative, parse_args, pm, positive, table,  # noqa: E402
                     write_result)


def _sizes(text: str) -> list[int]:
    vals = [positive(v) for v in text.split(",") if v.strip()]
    if not vals:
        raise argparse.ArgumentTypeError("expected a comma-separated list of sizes")
    return sorted(set(vals))


def _extra(p):
    from jdd.distill.kip import KERNELS, KipConfig
    d = KipConfig()
    p.add_argument("--dataset", choices=("digits", "fashion_mnist"), default="fashion_mnist")
    p.add_argument("--sizes", type=_sizes, default=[5000, 10000, 20000, 30000],
                   help="training subset sizes (a size >= the training set is exact KRR on all)")
    p.add_argument("--kernel", choices=KERNELS, default=d.kernel)
    p.add_argument("--kernel-depth", type=positive, default=d.kernel_depth)
    p.add_argument("--reg", type=nonnegative, default=d.reg,
                   help="KRR ridge, relative to the kernel's mean diagonal")
    p.add_argument("--n-models", type=positive, default=2,
                   help="random subsets per size (each model its own)")
    p.add_argument("--seed", type=int, default=0)


def one_size(dataset: str, n: int, kernel: str, depth: int, reg: float, n_models: int,
             seed: int) -> dict:
    """KRR on ``n_models`` random subsets of ``n`` training images (run in a child process)."""
    import resource

    import jax

    from jdd.data import load_dataset, preprocess
    from jdd.distill.kip import evaluation_kernel, kernel_by_name
    from jdd.evaluate import evaluate_set, kernel_learner
    train, test = load_dataset(dataset)
    train, test, _ = preprocess(train, test, "standardize")
    kfn = evaluation_kernel(kernel_by_name(kernel, depth), kernel, train.feature_shape)
    learner = kernel_learner(kfn, reg, full_data_max=n).full_data
    t0 = time.process_time()
    r = evaluate_set(learner, jax.random.key(seed), train.x, train.y, test, n_models)
    cpu = time.process_time() - t0
    u = resource.getrusage(resource.RUSAGE_SELF)
    return {"n": min(n, train.n), "all": n >= train.n, "train_n": train.n,
            "accuracies": [float(a) for a in r.accuracies],
            "mean": float(r.accuracies.mean()), "std": float(r.accuracies.std()),
            "cpu_seconds": cpu, "peak_rss_mib": u.ru_maxrss / 1024,
            "kernel_gib": 4 * min(n, train.n) ** 2 / 2 ** 30, "learner": learner.name}


def main(argv=None) -> int:
    args = parse_args("krr_cap", __doc__.splitlines()[0], _extra, argv)
    if args.quick:
        args.dataset, args.sizes, args.n_models = "digits", [200, 400, 800, 2000], 2
    from jdd.data import load_dataset
    load_dataset(args.dataset)          # a clear error now if it is missing, before any run
    path = args.json
    if args.quick and path.endswith("krr_cap.json"):
        path = path[:-len(".json")] + "_quick.json"
    rows = []
    ctx = multiprocessing.get_context("spawn")
    for n in args.sizes:
        with cf.ProcessPoolExecutor(1, mp_context=ctx) as pool:   # a fresh process per size
            row = pool.submit(one_size, args.dataset, n, args.kernel, args.kernel_depth,
                              args.reg, args.n_models, args.seed).result()
        row["dataset"] = args.dataset
        rows.append(row)
        print(f"{args.dataset} n={row['n']}{' (all)' if row['all'] else ''}: "
              f"{pm(row['mean'], row['std'])} %, {row['cpu_seconds']:.0f} CPU s, "
              f"peak {row['peak_rss_mib']:.0f} MiB", flush=True)
        kept = [] if args.quick else earlier_rows(
            path, rows, lambda r: (r["dataset"], r["n"]))
        write_result(path, "krr_cap", args.quick,
                     {"kernel": args.kernel, "kernel_depth": args.kernel_depth, "reg": args.reg,
                      "n_models": args.n_models, "seed": args.seed, "dtype": "float32",
                      "preprocess": "standardize"},
                     {"rows": sorted(kept + rows, key=lambda r: (r["dataset"], r["n"]))})
        if row["all"]:
            break
    print(table(["dataset", "training images", "KRR test accuracy %", "CPU s", "peak MiB",
                 "kernel GiB"],
                [[r["dataset"], f"{r['n']}{' (all)' if r['all'] else ''}",
                  pm(r["mean"], r["std"]), f"{r['cpu_seconds']:.0f}",
                  f"{r['peak_rss_mib']:.0f}", f"{r['kernel_gib']:.2f}"] for r in rows],
                title=f"KRR[{args.kernel}, depth {args.kernel_depth}] on random training "
                      f"subsets ({args.n_models} per size)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
