"""The closed form's ridge solvers at MNIST scale: "svd" vs "gram" time and accuracy.

``jdd.distill.krr_closed_form.ridge_path`` fits the original ridge model ``W`` either from the
thin SVD of the (n, p) features (accurate) or from the eigendecomposition of the (p, p) Gram
matrix (fast when n >> p, but it squares the condition number). This script times both on
MNIST-shaped features (n = 60000 rows, p = 784, k = 10 one-hot targets; synthetic, since no data
can be downloaded here) whose singular values decay geometrically from 1 to ``--cond``^-1, and
reports each solver's relative error in ``W`` against a float64 SVD reference, for float32 and
float64 inputs, at ridge 0 and at a moderate ridge. Times are the best of three compiled calls in
the same run; the ratio is what to read.

Usage:
    python benchmarks/ridge_solvers.py [--quick] [--json PATH] [--cond C ...]
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from _common import parse_args, table, write_result
from jdd.distill.krr_closed_form import SOLVERS, ridge_path


def features(n: int, p: int, cond: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, p) float64 features with singular values geometric from 1 to 1/cond, and (n, 10) targets."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.normal(size=(n, p)))
    v, _ = np.linalg.qr(rng.normal(size=(p, p)))
    s = np.geomspace(1.0, 1.0 / cond, p) * np.sqrt(n)
    phi = (u * s) @ v.T
    labels = np.argmax(phi[:, :10] + 0.1 * rng.normal(size=(n, 10)), axis=1)
    return phi, np.eye(10)[labels]


def best_time(fn, *args, reps: int = 3) -> float:
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None):
    args = parse_args("ridge_solvers", __doc__.splitlines()[0], argv=argv, extra=lambda p: (
        p.add_argument("--cond", type=float, nargs="+", default=[1e2, 1e4],
                       help="condition numbers of the synthetic features")))
    n, p = (6000, 196) if args.quick else (60000, 784)
    rows, results = [], []
    with jax.enable_x64(True):
        for cond in args.cond:
            phi64, y64 = features(n, p, cond)
            lam_mid = float(np.linalg.svd(phi64, compute_uv=False)[p // 2] ** 2)
            ref_of = ridge_path(jnp.asarray(phi64), jnp.asarray(y64), "svd")
            refs = {lam: np.asarray(ref_of(lam)) for lam in (0.0, lam_mid)}
            for dtype in (jnp.float32, jnp.float64):
                phi, y = jnp.asarray(phi64, dtype), jnp.asarray(y64, dtype)
                times = {}
                for solver in SOLVERS:
                    fit = jax.jit(lambda f, t, lam, solver=solver: ridge_path(f, t, solver)(lam))
                    times[solver] = best_time(fit, phi, y, 0.0)
                    errs = {lam: float(np.linalg.norm(np.asarray(fit(phi, y, lam), np.float64)
                                                      - ref) / np.linalg.norm(ref))
                            for lam, ref in refs.items()}
                    results.append(dict(cond=cond, dtype=jnp.dtype(dtype).name, solver=solver,
                                        seconds=times[solver], rel_err_lam0=errs[0.0],
                                        rel_err_lam_mid=errs[lam_mid], lam_mid=lam_mid))
                    rows.append([f"{cond:.0e}", jnp.dtype(dtype).name, solver,
                                 f"{times[solver]:.3f}", f"{errs[0.0]:.1e}",
                                 f"{errs[lam_mid]:.1e}"])
                rows[-1].append(f"{times['svd'] / times['gram']:.1f}x")
                rows[-2].append("")
    print(table(["cond", "dtype", "solver", "seconds", "rel err W, lam 0", "rel err W, lam mid",
                 "svd / gram time"], rows,
                title=f"ridge solvers, n = {n}, p = {p}, k = 10 (lam mid = s_(p/2)^2)"))
    write_result(args.json, "ridge_solvers", args.quick,
                 settings=dict(n=n, p=p, k=10, conds=args.cond, reference="float64 svd"),
                 results=results)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
