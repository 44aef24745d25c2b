"""Throughput of the closed-form FC NTK against a plain Gram matmul on the same inputs.

The depth-3 ReLU FC NTK of an n x n problem costs one (n, d) x (d, n) matmul plus an elementwise
recursion on (n, n) arrays; this script times both in the same run (interleaved trials, best of
each) and reports the NTK's "effective FLOP rate" (matmul FLOPs / NTK time) as a fraction of the
matmul's own rate. Also times the blocked 60000 x 1000 MNIST-shaped kernel and reports peak RSS.

Usage:
    python benchmarks/kernel_throughput.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from jdd.kernels import blocked, fc_kernel

DEFAULT_JSON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                            "kernel_throughput.json")


def _time(fn, *args, trials: int) -> list[float]:
    out = []
    for _ in range(trials):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        out.append(time.perf_counter() - t)
    return out


def device_description() -> str:
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        return f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
    return f"{dev.platform.upper()} ({dev.device_kind})"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1024 x 1024, fewer trials")
    ap.add_argument("--json", default=DEFAULT_JSON, help="where to write the JSON results")
    args = ap.parse_args(argv)

    n, d, trials = (1024, 784, 5) if args.quick else (4096, 784, 7)
    x1 = jax.random.normal(jax.random.key(0), (n, d), jnp.float32)
    x2 = jax.random.normal(jax.random.key(1), (n, d), jnp.float32)
    matmul = jax.jit(lambda a, b: a @ b.T)
    ntk = jax.jit(fc_kernel(depth=3, activation="relu", w_std=2.0 ** 0.5, b_std=0.1))
    nngp = jax.jit(fc_kernel(depth=3, activation="relu", w_std=2.0 ** 0.5, b_std=0.1,
                             kind="nngp"))
    for f in (matmul, ntk, nngp):  # compile
        jax.block_until_ready(f(x1, x2))
    times = {"matmul": [], "ntk": [], "nngp": []}
    for _ in range(trials):  # interleave so that machine load affects all alike
        for name, f in (("matmul", matmul), ("ntk", ntk), ("nngp", nngp)):
            times[name] += _time(f, x1, x2, trials=1)
    flops = 2.0 * n * n * d
    rows = []
    best_mm = min(times["matmul"])
    for name in ("matmul", "ntk", "nngp"):
        best = min(times[name])
        rows.append(dict(name=name, best_s=best, median_s=float(np.median(times[name])),
                         gflops_effective=flops / best / 1e9, ratio_to_matmul=best_mm / best))

    print(f"n1 = n2 = {n}, d = {d}, float32, {device_description()}, jax {jax.__version__}")
    print(f"{'kernel':<10}{'best s':>10}{'median s':>10}{'GFLOP/s*':>11}{'vs matmul':>11}")
    for r in rows:
        print(f"{r['name']:<10}{r['best_s']:>10.4f}{r['median_s']:>10.4f}"
              f"{r['gflops_effective']:>11.1f}{r['ratio_to_matmul']:>11.2f}")
    print("* matmul FLOPs (2 n1 n2 d) divided by the kernel's time")

    big = None
    if not args.quick:
        xa = jax.random.normal(jax.random.key(2), (60000, 784), jnp.float32)
        xb = jax.random.normal(jax.random.key(3), (1000, 784), jnp.float32)
        big_fn = jax.jit(blocked(fc_kernel(depth=3, w_std=2.0 ** 0.5, b_std=0.1), 2000))
        jax.block_until_ready(big_fn(xa, xb))
        t = min(_time(big_fn, xa, xb, trials=2))
        rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
        big = dict(shape=[60000, 1000], d=784, block_size=2000, best_s=t,
                   peak_rss_gb_whole_process=rss_gb)
        print(f"blocked FC NTK 60000 x 1000 (d=784, row blocks of 2000): {t:.2f} s, "
              f"peak RSS of the whole process {rss_gb:.2f} GB")

    result = dict(benchmark="kernel_throughput", quick=args.quick, device=device_description(),
                  jax=jax.__version__, n=n, d=d, dtype="float32", trials=trials,
                  kernel="fc_kernel(depth=3, relu, w_std=sqrt(2), b_std=0.1)", rows=rows,
                  ntk_over_matmul_ratio=rows[1]["ratio_to_matmul"], blocked_60000x1000=big,
                  note="ratio = best matmul time / best kernel time, interleaved trials, "
                       "machine shared with other jobs")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
