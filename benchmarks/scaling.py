"""Time and memory as the training set doubles (issue 10, part 4): the closed form, KIP (batches,
and the whole training set as targets, blocked and not) and DM, on Fashion-MNIST subsets of
3 750, 7 500, 15 000, 30 000 and 60 000 training images (four doublings), IPC 10.

Per method and size:

* **CPU seconds** (process time, warm: compilation excluded) of the unit of work: the closed
  form's whole distillation (fit the original FCNN-feature ridge model on the n images and solve
  for the distilled set, float64); one outer step of KIP (FC ReLU NTK depth 2, support 100) and
  of DM (ConvNet-D3, real batch 256 per class);
* **peak memory**: XLA's own accounting of the compiled program (``memory_analysis``): its
  temporaries, and temporaries + arguments + outputs (the training set is an argument, so the
  second grows with n for every method; the first is what the method adds).

The growth exponent b of each column is the least-squares slope of log(value) on log(n).
Expected: the closed form's time ~ n (one pass over the features), KIP with batches and DM flat
(their steps never touch more than a batch), KIP on the whole set ~ n in time, with temporary
memory ~ n unblocked and flat blocked (``--target-block``).

Usage::

    python benchmarks/scaling.py                  # Fashion-MNIST (apt-get install dataset-fashion-mnist)
    python benchmarks/scaling.py --quick          # digits subsets (smoke test)

Writes results/scaling.json.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import default_json, parse_args, positive, table, write_result  # noqa: E402

IPC = 10
KERNEL = dict(depth=2, activation="relu", w_std=2.0 ** 0.5, b_std=0.1, kind="ntk")


def _subset(train, n: int, seed: int = 0):
    """The first n of a fixed random permutation (nested: every size contains the smaller)."""
    idx = np.sort(np.random.default_rng(seed).permutation(train.n)[:n])
    return train.replace(x=train.x[idx], y=train.y[idx])


def _memory(compiled) -> dict:
    m = compiled.memory_analysis()
    temp = int(m.temp_size_in_bytes)
    total = temp + int(m.argument_size_in_bytes) + int(m.output_size_in_bytes)
    return {"temp_bytes": temp, "total_bytes": total}


def _cpu_seconds(f, args, reps: int) -> float:
    jax.block_until_ready(f(*args))
    t = time.process_time()
    for _ in range(reps):
        out = f(*args)
    jax.block_until_ready(out)
    return (time.process_time() - t) / reps


def closed_form(train, reps: int) -> dict:
    from jdd.distill.krr_closed_form import closed_form_distill
    from jdd.kernels.features import feature_map
    with jax.enable_x64(True):
        data = train.replace(x=jnp.asarray(train.x, jnp.float64).reshape(train.n, -1))
        fm = feature_map("fcnn", jax.random.key(1), data.x.shape[1], dtype=jnp.float64)
        f = jax.jit(lambda key, d: closed_form_distill(key, fm, d, ipc=IPC, lam=1e-2,
                                                       init="real", solver="gram"))
        key = jax.random.key(2)
        compiled = f.lower(key, data).compile()
        return {"cpu_s": _cpu_seconds(compiled, (key, data), reps), **_memory(compiled)}


def _step_cost(d, train, reps: int) -> dict:
    key = jax.random.key(0)
    state = jax.jit(d.init)(key, train)
    compiled = jax.jit(d.step).lower(state, key, train).compile()
    return {"cpu_s": _cpu_seconds(lambda s, k, t: compiled(s, k, t)[0], (state, key, train),
                                  reps), **_memory(compiled)}


def kip_row(train, reps: int, batch, block) -> dict:
    from jdd.distill import kip
    from jdd.kernels import fc_kernel
    d = kip(fc_kernel(**KERNEL), ipc=IPC, batch_size=batch, target_block=block,
                    optimizer=optax.adam(0.01))
    return _step_cost(d, train, reps)


def dm_row(train, reps: int) -> dict:
    from jdd.distill.dm import dm
    from jdd.models import make_model
    d = dm(make_model("convnet", train.num_classes), ipc=IPC, batch_real=256)
    return _step_cost(d, train, reps)


def exponent(ns, values) -> float:
    """Least-squares slope of log(value) on log(n)."""
    return float(np.polyfit(np.log(ns), np.log(values), 1)[0])


def _extra(p):
    p.add_argument("--reps", type=positive, default=3, help="timed repetitions per cell")
    p.add_argument("--target-block", type=positive, default=1000)


def main(argv=None) -> int:
    args = parse_args("scaling", __doc__.splitlines()[0], _extra, argv)
    from jdd.data import load_dataset
    from jdd.data.preprocess import fit_preprocessor
    if args.quick:
        name, sizes, reps = "digits", [160, 320, 640, 1280], 1
    else:
        name, sizes, reps = "fashion_mnist", [3750, 7500, 15000, 30000, 60000], args.reps
    train, _ = load_dataset(name)
    prep = fit_preprocessor(np.asarray(train.x), "standardize")
    train = train.replace(x=jnp.asarray(prep.apply(np.asarray(train.x)), jnp.float32))
    block = min(args.target_block, sizes[0] // 2) if args.quick else args.target_block
    methods = {
        "closed form (FCNN features, float64)": closed_form,
        "KIP, batches of 1000": lambda t, r: kip_row(t, r, min(1000, sizes[0]), None),
        f"KIP, whole set, blocks of {block}": lambda t, r: kip_row(t, r, None, block),
        "KIP, whole set, one block": lambda t, r: kip_row(t, r, None, None),
        "DM (ConvNet, batch 256 per class)": dm_row,
    }
    results: dict = {m: [] for m in methods}
    for n in sizes:
        sub = _subset(train, n)
        for m, fn in methods.items():
            r = fn(sub, reps)
            results[m].append({"n": n, **r})
            print(f"n {n:6d}  {m:40s} {r['cpu_s']:8.3f} CPU s  temp {r['temp_bytes'] / 2**20:9.1f}"
                  f" MiB  total {r['total_bytes'] / 2**20:9.1f} MiB", flush=True)
    rows, summary = [], {}
    for m, cells in results.items():
        ns = [c["n"] for c in cells]
        summary[m] = {k: exponent(ns, [max(c[k], 1e-9) for c in cells])
                      for k in ("cpu_s", "temp_bytes", "total_bytes")}
        rows.append([m] + [f"{c['cpu_s']:.3f} / {c['temp_bytes'] / 2**20:.0f}" for c in cells]
                    + [f"{summary[m]['cpu_s']:.2f}", f"{summary[m]['temp_bytes']:.2f}",
                       f"{summary[m]['total_bytes']:.2f}"])
    print(table(["method"] + [f"n={n}: CPU s / temp MiB" for n in sizes]
                + ["b time", "b temp", "b total"], rows,
                title=f"{name}: cost as the training set doubles (IPC {IPC})"))
    path = (default_json("scaling_quick") if args.quick and args.json == default_json("scaling")
            else args.json)
    write_result(path, "scaling", args.quick,
                 {"dataset": name, "sizes": sizes, "ipc": IPC, "reps": reps, "kernel": KERNEL,
                  "target_block": block, "memory": "XLA memory_analysis of the compiled program",
                  "time": "process time per call, warm"},
                 {"cells": results, "exponents": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
