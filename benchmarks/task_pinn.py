"""Case study B: distilled measurement points for a PINN, out-of-distribution in the BC parameter.

Problem (:mod:`jdd.tasks.pinn`): -u'' = pi^2 sin(pi x) on [0, 1], u(0) = 0, u(1) = alpha. Training
measurements: alpha from the left tail of N(0, 1) (alpha < -0.5), x ~ U(0, 1), noisy y. Test:
clean solution on a grid for alphas from the right tail (alpha > 0.5). For every seed we distil m
points with :func:`jdd.distill.pinn_points.pinn_points` (seeds vmapped) and train a fresh PINN
(same trainer, same steps) on (a) the distilled points, (b) a random subset of m real
measurements, (c) all real measurements; report the RMSE out of distribution (right tail) and in
distribution (left tail), mean +- std over seeds.

Usage:
    python benchmarks/task_pinn.py [--quick] [--json PATH]
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
from jdd.distill.pinn_points import pinn_points, points_from_synthetic
from jdd.tasks.pinn import eval_grid, exact_solution, make_pinn, measurements, rmse, train_pinn

FULL = dict(hidden=[32, 32], num_real=256, noise_std=0.1, threshold=0.5, num_points=16,
            inner_steps=100, inner_lr=1e-2, num_colloc=32, outer_steps=200, outer_lr=5e-2,
            batch_size=64, outer_num_colloc=64, seeds=5)
QUICK = dict(FULL, outer_steps=40, seeds=2)


def run(cfg: dict) -> tuple[dict, dict]:
    pinn = make_pinn(tuple(cfg["hidden"]))
    thr = cfg["threshold"]
    real = measurements(jax.random.key(0), cfg["num_real"], tail="left", threshold=thr,
                        noise_std=cfg["noise_std"])
    ood = eval_grid(jax.random.key(1), tail="right", threshold=thr)
    ind = eval_grid(jax.random.key(2), tail="left", threshold=thr)
    s = cfg["seeds"]
    train = jax.jit(jax.vmap(lambda k, p: train_pinn(
        pinn, k, p, steps=cfg["inner_steps"], lr=cfg["inner_lr"], num_colloc=cfg["num_colloc"],
        threshold=thr)))
    errors = jax.jit(jax.vmap(lambda p: jnp.stack([rmse(pinn, p, ood), rmse(pinn, p, ind)])))

    keys = seed_keys(0, s)
    eval_keys = seed_keys(1, s)
    d = pinn_points(pinn, cfg["num_points"], optax.adam(cfg["outer_lr"]),
                    inner_steps=cfg["inner_steps"], inner_lr=cfg["inner_lr"],
                    num_colloc=cfg["num_colloc"], threshold=thr, batch_size=cfg["batch_size"],
                    outer_num_colloc=cfg["outer_num_colloc"])
    res = distill(d, keys, real, cfg["outer_steps"], log_every=max(cfg["outer_steps"] // 5, 1),
                  progress=False)
    distilled = points_from_synthetic(res.synthetic)
    # the same m real points the distillation started from = the random subset of each seed
    init = jax.vmap(lambda k: d.init(jax.random.split(k)[0], real).params)(keys)
    full = jax.tree.map(lambda a: jnp.broadcast_to(a, (s,) + a.shape), real)

    out = {"distill_seconds": res.seconds,
           "outer_loss_curve": np.asarray(res.history["loss"]).mean(0).tolist(),
           "outer_physics_curve": np.asarray(res.history["physics"]).mean(0).tolist(),
           "steps_logged": res.steps_logged.tolist()}
    params = {}
    for name, pts in [("distilled", distilled), ("random_subset", init), ("full_data", full)]:
        params[name] = train(eval_keys, pts)
        e = np.asarray(errors(params[name]))
        out[name] = {"ood_rmse_mean": float(e[:, 0].mean()), "ood_rmse_std": float(e[:, 0].std()),
                     "id_rmse_mean": float(e[:, 1].mean()), "id_rmse_std": float(e[:, 1].std()),
                     "ood_rmse_per_seed": e[:, 0].tolist(), "id_rmse_per_seed": e[:, 1].tolist()}
    arrays = {"pinn": pinn, "params": params, "distilled": distilled, "init": init, "real": real}
    return out, arrays


def plot(out: dict, arrays: dict, cfg: dict, prefix: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pinn = arrays["pinn"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    ax = axes[0]
    ax.scatter(arrays["real"]["alpha"], arrays["real"]["x"], s=5, c="lightgray", label="real (noisy)")
    ax.scatter(np.ravel(arrays["init"]["alpha"][0]), np.ravel(arrays["init"]["x"][0]), marker="x",
               label="random subset / init (seed 0)")
    ax.scatter(np.ravel(arrays["distilled"]["alpha"][0]), np.ravel(arrays["distilled"]["x"][0]),
               c="C3", label="distilled (seed 0)")
    ax.axvspan(cfg["threshold"], 3.0, color="C2", alpha=0.1, label="test tail")
    ax.set_xlabel("alpha")
    ax.set_ylabel("x")
    ax.legend(fontsize=7)
    ax.set_title("measurement points", fontsize=9)

    ax = axes[1]
    x = jnp.linspace(0, 1, 101)
    for alpha, color in [(-1.5, "C0"), (1.5, "C3")]:
        a = jnp.full_like(x, alpha)
        ax.plot(x, exact_solution(x, a), color=color, lw=2, alpha=0.4, label=f"exact a={alpha}")
        for name, ls in [("random_subset", "--"), ("distilled", "-")]:
            p = jax.tree.map(lambda l: l[0], arrays["params"][name])
            ax.plot(x, jax.vmap(lambda xx, aa: pinn.u(p, xx, aa))(x, a), ls, color=color, lw=1,
                    label=f"{name} a={alpha}")
    ax.set_xlabel("x")
    ax.set_title("PINN solutions (seed 0)", fontsize=9)
    ax.legend(fontsize=6)

    ax = axes[2]
    names = ["random_subset", "distilled", "full_data"]
    xs = np.arange(3)
    ax.bar(xs - 0.2, [out[n]["ood_rmse_mean"] for n in names], 0.4,
           yerr=[out[n]["ood_rmse_std"] for n in names], label="OOD (right tail)")
    ax.bar(xs + 0.2, [out[n]["id_rmse_mean"] for n in names], 0.4,
           yerr=[out[n]["id_rmse_std"] for n in names], label="in-distribution")
    ax.set_xticks(xs, names, fontsize=8)
    ax.set_ylabel("RMSE")
    ax.legend(fontsize=8)
    ax.set_title(f"m={cfg['num_points']} points, {cfg['seeds']} seeds", fontsize=9)
    fig.tight_layout()
    p = f"{prefix}.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return [p]


def main(argv=None):
    args = parse_args("task_pinn", __doc__.splitlines()[0], argv=argv)
    cfg = QUICK if args.quick else FULL
    path = args.json
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    t0 = time.time()
    out, arrays = run(cfg)
    print(f"{'points':>15s} | {'OOD RMSE':>17s} | {'in-dist RMSE':>17s}")
    for name in ["random_subset", "distilled", "full_data"]:
        r = out[name]
        print(f"{name:>15s} | {r['ood_rmse_mean']:.4f} +- {r['ood_rmse_std']:.4f} | "
              f"{r['id_rmse_mean']:.4f} +- {r['id_rmse_std']:.4f}")
    pngs = plot(out, arrays, cfg, os.path.splitext(path)[0])
    result = {"benchmark": "task_pinn", "quick": args.quick, "config": cfg, **out,
              "device": device_string(), "versions": versions(), "jax": jax.__version__,
              "optax": optax.__version__, "platform": platform.platform(),
              "total_seconds": time.time() - t0, "plots": [os.path.basename(p) for p in pngs],
              "notes": "RMSE of a fresh PINN trained (same trainer, same steps, same eval keys) on "
                       "each point set; mean +- std over seeds. random_subset = the m real points "
                       "each distillation seed started from; full_data = all real measurements."}
    write_json(path, result)
    print(f"wrote {path} and {len(pngs)} plot(s) in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
