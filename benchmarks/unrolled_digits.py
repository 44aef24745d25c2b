"""Unrolled meta-gradient distillation on digits (issue 2, target 1).

The standard recipe of ``jdd distill --method unrolled`` (jdd/cli.py): an MLP learner with one
hidden layer of 128 ReLU units, inputs standardised with train statistics, inner training
``TrainConfig(steps=20, optimizer="adam")`` from a learned learning rate initialised at 0.01, soft
labels learned, synthetic set initialised from real examples, outer Adam(1e-2) on batches of 256
real examples for 1000 outer steps. Several distillation seeds run in ONE vmapped ``distill`` call.

Evaluation, exactly as the CLI does it (``jdd.evaluate``): every distilled set trains
``--n-models`` fresh MLPs (same recipe, its learned lr, full backprop) and reports their test
accuracy; the random-subset baseline trains the same learner on an own random ipc-per-class subset
per model (default lr 0.01); the full-data baseline trains it on all of train (minibatches of 128,
30 epochs). Nothing is selected on the test set: the final distilled set of every seed is reported.

Reported per IPC: the mean +- std over seeds of each seed's mean accuracy (the spread between
distillations), and the pooled mean +- std over all seeds x models.

Outputs: ``results/unrolled_digits.json``, ``results/unrolled_digits.png`` (distilled IPC-10 set of
seed 0, pixel space, one column per class, with the IPC-1 set as the first row) and
``results/unrolled_digits_loss.png`` (outer loss curves).

Usage: python benchmarks/unrolled_digits.py [--quick] [--json PATH]
"""

from __future__ import annotations

import io
import os
import time

import _common  # noqa: F401  (sys.path for a plain checkout)
from _common import parse_args, pm, table, write_result

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from jdd.artifacts import atomic_write  # noqa: E402
from jdd.data import load_digits, preprocess  # noqa: E402
from jdd.distill import distill  # noqa: E402
from jdd.distill.unrolled import unrolled  # noqa: E402
from jdd.evaluate import (evaluate_full_data, evaluate_random_subset,  # noqa: E402
                          evaluate_set, full_data_config, network_learner)
from jdd.models import make_model  # noqa: E402
from jdd.train import TrainConfig  # noqa: E402

NAME = "unrolled_digits"
TARGETS = {1: 0.92, 10: 0.96}


def main(argv=None) -> int:
    a = parse_args(NAME, __doc__.split("\n")[0])
    s = dict(ipcs=[1, 10], seeds=4, steps=1000, n_models=10, log_every=50, seed=0,
             hidden=[128], preprocess="standardize", inner_steps=20, inner_optimizer="adam",
             inner_lr=0.01, outer_lr=1e-2, batch_size=256, init="real", learn_labels=True,
             learn_lr=True)
    if a.quick:
        s.update(seeds=2, steps=100, n_models=3)

    train, test, pre = preprocess(*load_digits(), s["preprocess"])
    model = make_model("mlp", train.num_classes, hidden=tuple(s["hidden"]))
    inner = TrainConfig(steps=s["inner_steps"], optimizer=s["inner_optimizer"])
    eval_cfg = inner._replace(memory="unroll")
    learner = network_learner(model, eval_cfg, s["inner_lr"],
                              full_data=full_data_config(eval_cfg, train.n))
    s.update(model=model.name, learner=learner.config, train_n=train.n, test_n=test.n)
    ekey = jax.random.key(s["seed"] + 10_000)

    results, runs = {}, {}
    for ipc in s["ipcs"]:
        d = unrolled(model, ipc=ipc, inner=inner, optimizer=optax.adam(s["outer_lr"]),
                     batch_size=s["batch_size"], init=s["init"], inner_lr=s["inner_lr"],
                     learn_labels=s["learn_labels"], learn_lr=s["learn_lr"])
        keys = jax.random.split(jax.random.key(s["seed"]), s["seeds"])
        r = distill(d, keys, train, s["steps"], log_every=s["log_every"], progress=False)
        x, y = np.asarray(r.synthetic.x), np.asarray(r.synthetic.y)
        lr = np.asarray(r.synthetic.lr, np.float32)
        t0 = time.perf_counter()
        per_seed = [evaluate_set(learner, jax.random.fold_in(ekey, 100 * ipc + i), x[i], y[i],
                                 test, s["n_models"], lr[i]) for i in range(s["seeds"])]
        rand = evaluate_random_subset(learner, jax.random.fold_in(ekey, (1 << 20) + ipc), train,
                                      test, ipc, s["n_models"])
        eval_s = time.perf_counter() - t0
        seed_means = np.array([e.mean for e in per_seed])
        pooled = np.concatenate([e.accuracies for e in per_seed])
        results[f"ipc{ipc}"] = {
            "ipc": ipc,
            "distilled": {"over_seeds_mean": float(seed_means.mean()),
                          "over_seeds_std": float(seed_means.std()),
                          "per_seed_mean": seed_means.tolist(),
                          "per_seed_std": [e.std for e in per_seed],
                          "pooled_mean": float(pooled.mean()), "pooled_std": float(pooled.std()),
                          "n_models_per_seed": s["n_models"], "learned_lr": lr.tolist()},
            "random_subset": rand.to_dict(),
            "target": TARGETS[ipc],
            "meets_target": bool(seed_means.mean() >= TARGETS[ipc]),
            "distill_seconds": r.seconds, "eval_seconds": eval_s,
            "final_outer_loss_per_seed": np.asarray(r.history["loss"])[:, -1].tolist(),
            "history": {"steps": r.steps_logged.tolist(),
                        "loss": np.asarray(r.history["loss"]).tolist(),
                        "accuracy": np.asarray(r.history["accuracy"]).tolist()},
        }
        runs[ipc] = (x, y, r)
        print(f"ipc {ipc}: distilled {s['seeds']} seeds x {s['steps']} steps in {r.seconds:.1f} s"
              f" (one vmapped call); evaluated in {eval_s:.1f} s", flush=True)

    full = evaluate_full_data(learner, jax.random.fold_in(ekey, 1 << 21), train, test,
                              s["n_models"])
    results["full_data"] = full.to_dict()

    rows = []
    for ipc in s["ipcs"]:
        r = results[f"ipc{ipc}"]
        dd = r["distilled"]
        rows.append((f"distilled, ipc {ipc} (over {s['seeds']} seeds)",
                     pm(dd["over_seeds_mean"], dd["over_seeds_std"]),
                     pm(dd["pooled_mean"], dd["pooled_std"]),
                     f">= {100 * r['target']:.0f}: {'yes' if r['meets_target'] else 'NO'}"))
        rr = r["random_subset"]
        rows.append((f"random subset, ipc {ipc}", "",
                     pm(rr["test_accuracy_mean"], rr["test_accuracy_std"]), ""))
    rows.append(("full data", "", pm(full.mean, full.std), ""))
    print()
    print(table(["set", "seed means (%)", "all models (%)", "target"], rows,
                title=f"digits, {model.name} learner [{s['inner_optimizer']}, "
                      f"{s['inner_steps']} steps], {s['n_models']} fresh models per set"))

    out_dir = os.path.dirname(os.path.abspath(a.json))
    stem = os.path.splitext(os.path.basename(a.json))[0]
    grid = os.path.join(out_dir, f"{stem}.png")
    curve = os.path.join(out_dir, f"{stem}_loss.png")
    save_figures(grid, curve, runs, pre, s)
    write_result(a.json, NAME, a.quick, s, results,
                 figures=[os.path.basename(grid), os.path.basename(curve)])
    print(f"wrote {a.json}, {grid}, {curve}")
    return 0


def _slot_labels(m: int, k: int) -> np.ndarray:
    """Class of each synthetic slot: init is class-major (ipc rows of class 0, then class 1 ...)."""
    return np.arange(m) // (m // k)


def save_figures(grid_path, curve_path, runs, pre, s) -> None:
    """Distilled digits (seed 0, pixel space; IPC 1 on top, then IPC 10; one column per class)
    and the outer-loss curves, written atomically."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    blocks = []
    for ipc in s["ipcs"]:
        x, y, _ = runs[ipc]
        imgs = np.asarray(pre.invert(x[0]))[..., 0]          # (m, 8, 8) pixel space
        lab = _slot_labels(len(imgs), y.shape[-1])
        blocks.append((ipc, [imgs[lab == c] for c in range(y.shape[-1])]))
    k = len(blocks[0][1])
    nrows = sum(ipc for ipc, _ in blocks)
    fig, axes = plt.subplots(nrows, k, figsize=(k * 0.8, nrows * 0.8 + 0.6), squeeze=False)
    row = 0
    for ipc, per_class in blocks:
        for r in range(ipc):
            for c in range(k):
                ax = axes[row + r][c]
                ax.set_xticks([]), ax.set_yticks([])
                ax.imshow(np.clip(per_class[c][r], 0, 1), cmap="gray_r", vmin=0, vmax=1,
                          interpolation="nearest")
                if row + r == 0:
                    ax.set_title(str(c), fontsize=8)
                if c == 0 and r == 0:
                    ax.set_ylabel(f"ipc {ipc}", fontsize=7)
        row += ipc
    fig.suptitle("unrolled DD on digits (seed 0, pixel space, one column per class)", fontsize=8)
    fig.tight_layout()
    _save(fig, grid_path, plt)

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for ipc in s["ipcs"]:
        r = runs[ipc][2]
        loss = np.asarray(r.history["loss"])            # (seeds, t)
        line, = ax.plot(r.steps_logged, loss.mean(0), lw=1.4, label=f"ipc {ipc}")
        ax.fill_between(r.steps_logged, loss.min(0), loss.max(0), color=line.get_color(),
                        alpha=0.2, lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("outer step")
    ax.set_ylabel("outer loss (real-batch CE)")
    ax.set_title(f"mean over {s['seeds']} seeds (band: min-max)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, curve_path, plt)


def _save(fig, path, plt) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    with atomic_write(path, "wb") as f:
        f.write(buf.getvalue())


if __name__ == "__main__":
    raise SystemExit(main())
