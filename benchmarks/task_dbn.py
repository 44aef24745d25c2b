"""Case study A: merging heterogeneous DBN sources by task-specific distillation.

For every number of time slices T and synthetic size m: generate a random linear-Gaussian DBN,
K sources that each hide different variables and add noise, distil m complete rows with
:func:`jdd.distill.dbn_merge.dbn_merge` (several seeds, vmapped), and compare the held-out
log-likelihood of the fitted DBN against

* the clean fully-observed subset of the same size m (D^sub of the paper),
* naive pooling of all source rows with mean imputation,
* the full clean training data and the true DBN (references).

Usage:
    python benchmarks/task_dbn.py [--quick] [--json PATH]
"""

from __future__ import annotations

import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from _common import device_string, parse_args, versions
from jdd.artifacts import write_json
from jdd.distill.core import distill, seed_keys
from jdd.distill.dbn_merge import dbn_merge
from jdd.tasks.dbn import (clean_loglik, fit_dbn, make_sources, mean_impute, random_dbn,
                           sample_dbn, source_loglik, split_sources)

FULL = dict(num_vars=6, num_sources=3, hidden_per_source=2, noise_std=0.3, n_train=300,
            n_test=500, sizes=[10, 20, 50, 100], slices=[2, 4, 6, 8, 10], steps=300,
            batch_size=256, lr=3e-2, seeds=3, perturb_frac=0.25, perturb_std=0.05)
QUICK = dict(FULL, sizes=[10, 50], slices=[2, 6], steps=150, seeds=2)


def run_cell(cfg: dict, num_slices: int, sizes: list[int], data_seed: int = 0) -> list[dict]:
    """All sizes for one T: one data set, distilled sets and baselines evaluated on it."""
    v, t, k = cfg["num_vars"], num_slices, cfg["num_sources"]
    key = jax.random.fold_in(jax.random.key(data_seed), t)
    kd, kx, ks, kc, kt = jax.random.split(key, 5)
    true = random_dbn(kd, v)
    x = sample_dbn(kx, true, k * (cfg["n_train"] + cfg["n_test"]), t)
    src = make_sources(ks, x, v, k, hidden_per_source=cfg["hidden_per_source"],
                       noise_std=cfg["noise_std"])
    train, test = split_sources(src, cfg["n_train"])
    clean_pool = sample_dbn(kc, true, k * cfg["n_train"], t)      # a clean, fully observed study
    clean_test = sample_dbn(kt, true, 4000, t)

    @jax.jit
    def evaluate(rows):
        model = fit_dbn(rows, v)
        return jnp.stack([jnp.mean(source_loglik(model, test, t)),
                          clean_loglik(model, clean_test, t)])

    ref = {"oracle": np.asarray(jnp.stack([jnp.mean(source_loglik(true, test, t)),
                                           clean_loglik(true, clean_test, t)])),
           "full_clean": np.asarray(evaluate(clean_pool)),
           "mean_impute": np.asarray(evaluate(mean_impute(train)))}
    out = []
    for m in sizes:
        d = dbn_merge(m, v, t, optax.adam(cfg["lr"]), batch_size=cfg["batch_size"],
                      perturb_frac=cfg["perturb_frac"], perturb_std=cfg["perturb_std"])
        res = distill(d, seed_keys(100 + m, cfg["seeds"]), train, cfg["steps"],
                      log_every=max(cfg["steps"] // 4, 1), progress=False)
        dist = np.stack([np.asarray(evaluate(res.synthetic.x[i])) for i in range(cfg["seeds"])])
        init = d.init  # the initial synthetic set (mean-imputed source rows), for reference
        init_rows = jax.vmap(lambda kk: init(jax.random.split(kk)[0], train).params["x"])(
            seed_keys(100 + m, cfg["seeds"]))
        ini = np.stack([np.asarray(evaluate(init_rows[i])) for i in range(cfg["seeds"])])
        perm = np.random.default_rng(m).permutation(clean_pool.shape[0])
        sub = np.stack([np.asarray(evaluate(clean_pool[perm[i * m:(i + 1) * m]]))
                        for i in range(cfg["seeds"])])
        row = {"T": t, "m": m, "seconds": res.seconds,
               "loss_curve": np.asarray(res.history["loglik"]).mean(0).tolist()}
        for name, arr in [("distilled", dist), ("init", ini), ("clean_subset", sub)]:
            for j, metric in enumerate(["source_ll", "clean_ll"]):
                row[f"{name}_{metric}_mean"] = float(arr[:, j].mean())
                row[f"{name}_{metric}_std"] = float(arr[:, j].std())
        for name, arr in ref.items():
            row[f"{name}_source_ll"] = float(arr[0])
            row[f"{name}_clean_ll"] = float(arr[1])
        out.append(row)
        print(f"T={t:2d} m={m:4d} | held-out source LL: distilled {row['distilled_source_ll_mean']:8.2f}"
              f" +- {row['distilled_source_ll_std']:.2f}  clean subset {row['clean_subset_source_ll_mean']:8.2f}"
              f" +- {row['clean_subset_source_ll_std']:.2f}  mean-impute {row['mean_impute_source_ll']:8.2f}"
              f"  full clean {row['full_clean_source_ll']:8.2f}  oracle {row['oracle_source_ll']:8.2f}"
              f" | clean-test LL: distilled {row['distilled_clean_ll_mean']:8.2f} clean subset "
              f"{row['clean_subset_clean_ll_mean']:8.2f} mean-impute {row['mean_impute_clean_ll']:8.2f}"
              f" | {res.seconds:.1f}s", flush=True)
    return out


def plot(rows: list[dict], cfg: dict, path_prefix: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    t_main = max(s for s in cfg["slices"] if s <= 6)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric, title in [(axes[0], "source_ll", "held-out source LL (observed vars)"),
                              (axes[1], "clean_ll", "clean fully observed test LL")]:
        sel = [r for r in rows if r["T"] == t_main]
        ms = [r["m"] for r in sel]
        for name, style in [("distilled", "o-"), ("clean_subset", "s--"), ("init", "^:")]:
            mu = np.array([r[f"{name}_{metric}_mean"] for r in sel])
            sd = np.array([r[f"{name}_{metric}_std"] for r in sel])
            ax.errorbar(ms, mu, sd, fmt=style, label=name, capsize=3)
        for name, ls in [("mean_impute", "-."), ("full_clean", ":"), ("oracle", "-")]:
            ax.axhline(sel[0][f"{name}_{metric}"], ls=ls, color="gray", lw=1)
            ax.text(ms[-1], sel[0][f"{name}_{metric}"], name, fontsize=7, va="bottom", ha="right")
        ax.set_xscale("log")
        ax.set_xlabel("synthetic rows m")
        ax.set_title(f"{title}, T={t_main}", fontsize=9)
        lo = min(sel[0][f"mean_impute_{metric}"],
                 min(r[f"distilled_{metric}_mean"] for r in sel)) - 3
        ax.set_ylim(max(lo, min(r[f"clean_subset_{metric}_mean"] for r in sel) - 1),
                    sel[0][f"oracle_{metric}"] + 1)
        ax.legend(fontsize=7)
    fig.tight_layout()
    p = f"{path_prefix}_sizes.png"
    fig.savefig(p, dpi=110)
    paths.append(p)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for m in cfg["sizes"]:
        sel = [r for r in rows if r["m"] == m]
        ts = [r["T"] for r in sel]
        gain = [(r["distilled_source_ll_mean"] - r["clean_subset_source_ll_mean"]) / (r["T"])
                for r in sel]
        ax.plot(ts, gain, "o-", label=f"m={m}")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("time slices T")
    ax.set_ylabel("distilled - clean subset\n(held-out source LL per slice)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = f"{path_prefix}_slices.png"
    fig.savefig(p, dpi=110)
    paths.append(p)
    plt.close(fig)
    return paths


def main(argv=None):
    args = parse_args("task_dbn", __doc__.splitlines()[0], argv=argv)
    cfg = QUICK if args.quick else FULL
    path = args.json
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    t0 = time.time()
    rows = []
    for t in cfg["slices"]:
        rows += run_cell(cfg, t, cfg["sizes"])
    prefix = os.path.splitext(path)[0]
    pngs = plot(rows, cfg, prefix)
    result = {"benchmark": "task_dbn", "quick": args.quick, "config": cfg, "rows": rows,
              "device": device_string(), "versions": versions(), "jax": jax.__version__,
              "optax": optax.__version__, "platform": platform.platform(),
              "total_seconds": time.time() - t0, "plots": [os.path.basename(p) for p in pngs],
              "notes": "LL = mean log-likelihood per row (sum over the observed coordinates of "
                       "all T slices). source_ll: held-out rows of each source, hidden variables "
                       "marginalised, source noise added, averaged over sources. clean_ll: clean "
                       "fully observed test rows. distilled/init/clean_subset: mean +- std over "
                       "seeds (distillation seeds / subset draws) on one data set per T."}
    write_json(path, result)
    print(f"wrote {path} and {len(pngs)} plots in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
