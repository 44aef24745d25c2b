"""Multi-index distillation benchmark (Kinoshita, Nishikawa, Toyoizumi 2026, Figures 1-3).

Task: d = 100, r in {3, 10}, link "he2" (sum of He_2 of the projections, unit variance). Learner: a
two-layer ReLU network of width L = 100 trained in two phases (one large step on W from J real
samples, then ridge on N real samples); see :mod:`jdd.distill.multi_index`. Distilled data:
D1^S (max(4 r^2, 100) points, gradient matching, 3000 Adam steps) + D2^S (rank-certifying, 2L points).

Measured, mean and std over 5 seeds (one vmapped computation per setting):

* Figure 1: test MSE of the network trained on real data vs on distilled data, as N varies (J = J*)
  and as J varies (N = N*). J* = N* = 1e5 as in the paper (--quick: 2e4).
* Figure 2: transfer. D1^S distilled from the "he2" task pre-trains the first layer; the readout is
  then fitted on n real samples of a NEW task on the same subspace (links "quadratic", random
  coefficients, and "he3"), against training both phases from scratch on those n samples.
* Figure 3: subspace recovery of the first layer (fraction of ||W1||_F in span(U)) for real and
  distilled training, and the reconstruction percentage (MSE-based and rank-based) of D2^S with
  |D2^S| in {1, 10, 50, 100}, rank-certifying vs compact.

Usage: python benchmarks/multi_index.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from jdd.distill.core import scan_steps  # noqa: E402
from jdd.distill.multi_index import (d1_gradient_matching, d2_compact, d2_rank_certify,  # noqa
                                     gradient_error, reconstruction, two_phase)
from jdd.tasks import multi_index, sample, subspace_fraction, with_link  # noqa: E402

D, WIDTH, REG = 100, 100, 1e-3


def settings(quick: bool) -> dict:
    if quick:
        return dict(seeds=2, J=20_000, N=20_000, n_test=5_000, J_list=[2_000, 20_000],
                    N_list=[1_000, 20_000], n_list=[300, 3_000], d1_steps=800, d2_steps=100,
                    rs=[3, 10], d1_factor=4, d1_min=100, d2_sizes=[1, 10, 50, 100], m2_certify=2 * WIDTH)
    return dict(seeds=5, J=100_000, N=100_000, n_test=20_000,
                J_list=[3_000, 10_000, 30_000, 100_000], N_list=[1_000, 3_000, 10_000, 30_000,
                                                              100_000],
                n_list=[100, 300, 1_000, 3_000, 10_000], d1_steps=3000, d2_steps=300, rs=[3, 10],
                d1_factor=4, d1_min=100, d2_sizes=[1, 10, 50, 100], m2_certify=2 * WIDTH)


def run_r(r: int, cfg: dict, seed: int = 0) -> dict:
    """Every measurement for one r; everything inside is vmapped over cfg['seeds'] seeds."""
    net = two_phase(WIDTH, reg=REG)
    keys = jax.random.split(jax.random.key(1000 * r + seed), cfg["seeds"])
    out: dict = {"r": r}

    def make_data(key):
        k1, k2, k3 = jax.random.split(key, 3)
        task = multi_index(k1, D, r, "he2", cfg["J"])
        return task, sample(k2, task, cfg["N"]), sample(k3, task, cfg["n_test"])

    task, tr2, test = jax.jit(jax.vmap(make_data))(keys)

    def distill_d1(key, x, y, m):
        d1 = d1_gradient_matching(net, m=m, optimizer=optax.adam(
            optax.cosine_decay_schedule(0.3, cfg["d1_steps"], alpha=0.05)))
        k_init, k_run = jax.random.split(key)
        state = d1.init(k_init, {"x": x, "y": y})
        state, hist = scan_steps(d1, state, k_run, None, cfg["d1_steps"])
        return state.params0, state.x, state.y, hist["rel_grad_err"][-1]

    def evaluate(key, p0, xs, ys, xJ, yJ, xN, yN, xt, yt, U):
        t1 = net.phase1(p0, xJ, yJ)
        s1 = net.phase1(p0, xs, ys)
        teacher = net.phase2(t1, xN, yN)
        a_star = net.phase2(s1, xN, yN).a            # phase-2 teacher on the student's features
        x2, y2 = d2_rank_certify(key, net, s1, a_star, cfg["m2_certify"])
        student = net.phase2(s1, x2, y2)
        return dict(mse_real=net.mse(teacher, xt, yt), mse_distilled=net.mse(student, xt, yt),
                    frac_real=subspace_fraction(t1.W, U), frac_distilled=subspace_fraction(s1.W, U),
                    grad_err=gradient_error(net, p0, xs, ys, xJ, yJ),
                    d2_weight_err=jnp.linalg.norm(student.a - a_star) / jnp.linalg.norm(a_star))

    m1 = max(cfg["d1_factor"] * r * r, cfg["d1_min"])
    d1_jit = jax.jit(jax.vmap(distill_d1, in_axes=(0, 0, 0, None)), static_argnums=3)
    # The evaluation functions run op by op (vmapped, not jitted): on this 2-core CPU, XLA:CPU
    # (jax 0.10) deadlocked in a futex wait on jitted vmapped programs holding several independent
    # LAPACK solves (reproduced with phase-2 ridge + the lstsq of D2^S over 5 seeds). Op-by-op
    # dispatch runs one solve at a time; the arrays are large, so little speed is lost.
    eval_jit = jax.vmap(evaluate)
    k_d1 = jax.random.split(jax.random.key(7 + r), cfg["seeds"])
    k_d2 = jax.random.split(jax.random.key(11 + r), cfg["seeds"])

    # ---- Figure 1 (right): vary J at N = N*.
    byJ = []
    d1_full = None
    for J in cfg["J_list"]:
        t0 = time.perf_counter()
        p0, xs, ys, err = jax.block_until_ready(d1_jit(k_d1, task.x[:, :J], task.y[:, :J], m1))
        res = eval_jit(k_d2, p0, xs, ys, task.x[:, :J], task.y[:, :J], tr2.x, tr2.y, test.x,
                       test.y, task.U)
        res = {k: np.asarray(v) for k, v in res.items()}
        res["J"] = J
        res["seconds"] = time.perf_counter() - t0
        byJ.append(res)
        print(f"  r={r} J={J:>6}: MSE real {res['mse_real'].mean():.4f} distilled "
              f"{res['mse_distilled'].mean():.4f}  frac real {res['frac_real'].mean():.3f} "
              f"distilled {res['frac_distilled'].mean():.3f}  grad err {res['grad_err'].mean():.3f}"
              f"  ({res['seconds']:.0f}s)", flush=True)
        if J == cfg["J"]:
            d1_full = (p0, xs, ys)
    out["by_J"] = byJ
    p0, xs, ys = d1_full
    xJ, yJ = task.x, task.y

    # ---- Figure 1 (left): vary N at J = J*.
    def by_n(p0, xs, ys, xJ, yJ, xN, yN, xt, yt):
        t1, s1 = net.phase1(p0, xJ, yJ), net.phase1(p0, xs, ys)
        return net.mse(net.phase2(t1, xN, yN), xt, yt), net.mse(net.phase2(s1, xN, yN), xt, yt), \
            net.mse(net.phase2(p0, xN, yN), xt, yt)

    byN = []
    by_n_jit = jax.vmap(by_n)
    for N in cfg["N_list"]:
        if N == cfg["N"]:
            # Already measured in the J = J* row. (Re-running this vmapped computation at
            # N = N* = 1e5 hung XLA:CPU in a futex wait twice on the shared machine; reuse it.)
            last = byJ[-1]
            byN.append(dict(N=N, mse_real=last["mse_real"], mse_distilled=last["mse_distilled"]))
            continue
        mr, md, mrf = by_n_jit(p0, xs, ys, xJ, yJ, tr2.x[:, :N], tr2.y[:, :N], test.x, test.y)
        byN.append(dict(N=N, mse_real=np.asarray(mr), mse_distilled=np.asarray(md),
                        mse_random_features=np.asarray(mrf)))
        print(f"  r={r} N={N:>6}: MSE real {np.mean(mr):.4f} distilled {np.mean(md):.4f} "
              f"random-features {np.mean(mrf):.4f}", flush=True)
    out["by_N"] = byN

    # ---- D1 size ablation: r^2 points.
    if m1 != r * r:
        p0b, xsb, ysb, _ = d1_jit(k_d1, xJ, yJ, r * r)
        res = eval_jit(k_d2, p0b, xsb, ysb, xJ, yJ, tr2.x, tr2.y, test.x, test.y, task.U)
        out["d1_r2"] = {k: np.asarray(v) for k, v in res.items()}
        print(f"  r={r} |D1|=r^2={r * r}: MSE distilled {out['d1_r2']['mse_distilled'].mean():.4f}"
              f" frac {out['d1_r2']['frac_distilled'].mean():.3f}", flush=True)

    # ---- Figure 2: transfer to a new link on the same subspace.
    transfer = {}
    k_tr = jax.random.split(jax.random.key(13 + r), cfg["seeds"])
    n_max = max(cfg["n_list"])
    for link in ("quadratic", "he3"):
        def new_task(key, t, link=link):
            k1, k2 = jax.random.split(key)
            nt = with_link(k1, t, link, n_max)
            return nt, sample(k2, nt, cfg["n_test"])

        tgt, tgt_test = jax.jit(jax.vmap(new_task))(k_tr, task)
        rows = []
        for n in cfg["n_list"]:
            def tr(p0, xs, ys, x, y, xt, yt):
                pre = net.phase2(net.phase1(p0, xs, ys), x, y)
                scratch = net.fit(p0, x, y, x, y)
                rf = net.phase2(p0, x, y)
                return net.mse(pre, xt, yt), net.mse(scratch, xt, yt), net.mse(rf, xt, yt)

            mp, ms, mrf = jax.vmap(tr)(p0, xs, ys, tgt.x[:, :n], tgt.y[:, :n],
                                                tgt_test.x, tgt_test.y)
            rows.append(dict(n=n, mse_pretrained=np.asarray(mp), mse_scratch=np.asarray(ms),
                             mse_random_features=np.asarray(mrf)))
            print(f"  r={r} transfer->{link} n={n:>5}: distilled-pretrained {np.mean(mp):.4f} "
                  f"scratch {np.mean(ms):.4f} random-features {np.mean(mrf):.4f}", flush=True)
        transfer[link] = rows
    out["transfer"] = transfer

    # ---- Figure 3: reconstruction percentage vs |D2^S|.
    def recon(key, p0, xs, ys, xN, yN, xt, yt, m):
        s1 = net.phase1(p0, xs, ys)
        a_star = net.phase2(s1, xN, yN).a
        xc, yc = d2_rank_certify(key, net, s1, a_star, m)
        xk, yk = d2_compact(key, net, s1, a_star, m, xN[:5000], steps=cfg["d2_steps"])
        rc = reconstruction(net, s1, a_star, xc, yc, xt, yt)
        cp = reconstruction(net, s1, a_star, xk, yk, xt, yt)
        return rc, cp

    def recon_jit(*args):
        m = args[-1]
        return jax.vmap(lambda *a: recon(*a, m))(*args[:-1])
    rows = []
    for m in cfg["d2_sizes"]:
        rc, cp = recon_jit(k_d2, p0, xs, ys, tr2.x, tr2.y, test.x, test.y, m)
        rows.append(dict(size=m, certify_mse_pct=np.asarray(rc.mse_pct),
                         certify_rank_pct=np.asarray(rc.rank_pct),
                         compact_mse_pct=np.asarray(cp.mse_pct),
                         compact_rank_pct=np.asarray(cp.rank_pct)))
        print(f"  r={r} |D2|={m:>3}: certify MSE-recon {np.mean(rc.mse_pct):6.1f}% rank "
              f"{np.mean(rc.rank_pct):5.1f}%   compact MSE-recon {np.mean(cp.mse_pct):6.1f}% rank "
              f"{np.mean(cp.rank_pct):5.1f}%", flush=True)
    out["d2_sizes"] = rows

    # ---- Memory (floats).
    real = (cfg["J"] + cfg["N"]) * (D + 1)
    d1_mem = m1 * (D + 1)
    d2_mem = cfg["m2_certify"] * (D + 1)
    out["memory"] = dict(real=real, d1=d1_mem, d2=d2_mem, total=d1_mem + d2_mem,
                         r2d_plus_L=r * r * D + WIDTH, fraction_of_real=(d1_mem + d2_mem) / real,
                         d1_points=m1, d2_points=cfg["m2_certify"])
    return out


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        if x.ndim == 0:
            return float(x)
        return {"mean": float(x.mean()), "std": float(x.std()), "values": x.tolist()}
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


def plot(results: dict, out_dir: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rs = results["runs"]
    paths = []

    def band(ax, xs, rows, key, label, **kw):
        m = np.array([r[key]["mean"] for r in rows])
        s = np.array([r[key]["std"] for r in rows])
        line, = ax.plot(xs, m, marker="o", label=label, **kw)
        ax.fill_between(xs, m - s, m + s, alpha=0.2, color=line.get_color())

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for run in rs:
        r = run["r"]
        ns = [row["N"] for row in run["by_N"]]
        band(axes[0], ns, run["by_N"], "mse_real", f"real, r={r}")
        band(axes[0], ns, run["by_N"], "mse_distilled", f"distilled, r={r}", ls="--")
        rows = [row for row in run["by_N"] if "mse_random_features" in row]
        band(axes[0], [row["N"] for row in rows], rows, "mse_random_features",
             f"random features, r={r}", ls=":")
        js = [row["J"] for row in run["by_J"]]
        band(axes[1], js, run["by_J"], "mse_real", f"real, r={r}")
        band(axes[1], js, run["by_J"], "mse_distilled", f"distilled, r={r}", ls="--")
    axes[0].set(xscale="log", yscale="log", xlabel="N (phase-2 samples)", ylabel="test MSE",
                title=f"J = {results['settings']['J']}")
    axes[1].set(xscale="log", yscale="log", xlabel="J (phase-1 batch)", ylabel="test MSE",
                title=f"N = {results['settings']['N']}")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "multi_index_fig1.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(rs), figsize=(5 * len(rs), 3.8), squeeze=False)
    for ax, run in zip(axes[0], rs):
        for link, rows in run["transfer"].items():
            ns = [row["n"] for row in rows]
            band(ax, ns, rows, "mse_pretrained", f"{link}: pre-trained on D1^S")
            band(ax, ns, rows, "mse_scratch", f"{link}: from scratch", ls="--")
        ax.set(xscale="log", yscale="log", xlabel="n (fine-tuning samples of the new task)",
               ylabel="test MSE", title=f"transfer, r={run['r']}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "multi_index_fig2.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(rs) + 1, figsize=(5 * (len(rs) + 1), 3.8), squeeze=False)
    axes = axes[0]
    for run in rs:
        js = [row["J"] for row in run["by_J"]]
        band(axes[0], js, run["by_J"], "frac_real", f"real, r={run['r']}")
        band(axes[0], js, run["by_J"], "frac_distilled", f"distilled, r={run['r']}", ls="--")
    axes[0].set(xscale="log", xlabel="J", ylabel="||W1 P_U||_F / ||W1||_F",
                title="subspace recovery", ylim=(0, 1))
    axes[0].legend(fontsize=7)
    for ax, run in zip(axes[1:], rs):
        rows = run["d2_sizes"]
        sizes = [row["size"] for row in rows]
        band(ax, sizes, rows, "certify_mse_pct", "rank-certifying (MSE)")
        band(ax, sizes, rows, "compact_mse_pct", "compact (MSE)")
        band(ax, sizes, rows, "certify_rank_pct", "rank-certifying (rank)", ls=":")
        ax.set(xscale="log", xlabel="|D2^S|", ylabel="reconstruction %",
               title=f"D2^S reconstruction, r={run['r']}", ylim=(-50, 105))
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "multi_index_fig3.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small settings (~2 min)")
    ap.add_argument("--json", default=None, help="output JSON path")
    ap.add_argument("--r", type=int, action="append", default=None,
                    help="compute only these r (repeatable); results are cached and the JSON and "
                         "figures are written once every r of the settings is cached")
    args = ap.parse_args(argv)
    here = os.path.dirname(os.path.abspath(__file__))
    path = args.json or os.path.join(here, "results", "multi_index.json")
    cfg = settings(args.quick)
    runs = []
    for r in cfg["rs"]:
        # Each r is cached in <json>.r<r>.partial (keyed by the settings), so an interrupted run
        # resumes where it stopped instead of starting over.
        part = f"{path}.r{r}.partial"
        cached = None
        if os.path.exists(part):
            with open(part) as f:
                cached = json.load(f)
            if cached.get("settings") != _jsonable(cfg):
                cached = None
        if cached is not None:
            print(f"r = {r}: reusing {part}", flush=True)
            runs.append(cached["run"])
            continue
        if args.r is not None and r not in args.r:
            print(f"r = {r}: skipped (--r); run it to complete the results", flush=True)
            continue
        print(f"r = {r}", flush=True)
        t_r = time.perf_counter()
        run = _jsonable(run_r(r, cfg))
        run["seconds"] = time.perf_counter() - t_r
        runs.append(run)
        os.makedirs(os.path.dirname(os.path.abspath(part)), exist_ok=True)
        with open(part, "w") as f:
            json.dump({"settings": _jsonable(cfg), "run": run}, f)
    if len(runs) < len(cfg["rs"]):
        return {}
    seconds = sum(run["seconds"] for run in runs)

    import flax
    results = dict(benchmark="multi_index", quick=args.quick, device="CPU (2 cores)",
                   versions=dict(jax=jax.__version__, optax=optax.__version__,
                                 flax=flax.__version__, numpy=np.__version__,
                                 python=platform.python_version()),
                   settings=dict(cfg, d=D, width=WIDTH, reg=REG, link="he2"),
                   runs=runs, seconds=seconds)

    print("\nSummary (mean over seeds, J = J*, N = N*):")
    print(f"{'r':>3} {'MSE real':>9} {'MSE distilled':>14} {'ratio':>6} {'frac real':>10} "
          f"{'frac dist':>10} {'|D1|':>5} {'|D2|':>5} {'floats':>7} {'r^2d+L':>7} "
          f"{'real floats':>12} {'% of real':>9}")
    for run in runs:
        last = run["by_J"][-1]
        mem = run["memory"]
        ratio = last["mse_distilled"]["mean"] / last["mse_real"]["mean"]
        print(f"{run['r']:>3} {last['mse_real']['mean']:>9.4f} {last['mse_distilled']['mean']:>14.4f} "
              f"{ratio:>6.3f} {last['frac_real']['mean']:>10.3f} {last['frac_distilled']['mean']:>10.3f}"
              f" {mem['d1_points']:>5} {mem['d2_points']:>5} {mem['total']:>7} {mem['r2d_plus_L']:>7}"
              f" {mem['real']:>12} {100 * mem['fraction_of_real']:>8.2f}%")
        run["summary"] = dict(mse_ratio=ratio)
    print(f"total {seconds:.0f}s (sum over r of the compute time)")

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, path)
    for r in cfg["rs"]:
        if os.path.exists(f"{path}.r{r}.partial"):
            os.remove(f"{path}.r{r}.partial")
    figs = plot(results, os.path.dirname(os.path.abspath(path)))
    print("wrote", path, *figs)
    return results


if __name__ == "__main__":
    main()
