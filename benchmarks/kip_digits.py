"""KIP with the FC ReLU NTK on scikit-learn digits: KRR test accuracy at IPC 1 and 10.

Protocol (every decision is made by cross-validation on TRAIN; the test split is read once, at the
end, for the configuration already chosen):

1. ``load_digits()``: the fixed 1347/450 stratified split; TRAIN only for everything below.
2. Candidates per IPC: input preprocessing (``jdd.data.preprocess`` "standardize" per channel, i.e.
   one mean/std for the grey channel, or per pixel) x an Adam schedule (steps, lr, constant or
   cosine decay), with the kernel fixed to the FC ReLU NTK (depth 2, W_std sqrt 2, b_std 0.1),
   KIP's ridge 1e-6 * tr(K_ss)/m, learned labels, real init and batches of 256.
3. ``--folds``-fold stratified cross-validation of TRAIN (``jdd.data.stratified_mask`` folds): for
   every candidate, KIP distils from the other folds (seeds vmapped), preprocessing fitted on
   those folds only, and KRR from the distilled set is scored on the held-out fold for every
   evaluation ridge of ``REG_GRID``. The (candidate, ridge) pair with the best mean CV accuracy wins.
4. Final: the winner distils from ALL of train with ``--seeds`` new seeds (vmapped in one run);
   test accuracy of KRR from each set at the chosen ridge, mean +- std over seeds.
5. Baselines with the same learner (KRR, same kernel, same preprocessing) and their own ridge
   chosen by the same CV: random ``ipc``-per-class subsets of train (one per seed) and full-data
   KRR on all of train.

Usage:
    python benchmarks/kip_digits.py [--quick] [--json PATH] [--folds K] [--seeds S]
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from _common import device_string, parse_args, pm, table, write_result
from jdd.data import Dataset, load_digits, per_class_indices, stratified_mask
from jdd.data.preprocess import fit_preprocessor
from jdd.distill.core import distill, seed_keys
from jdd.distill.kip import kip
from jdd.kernels import fc_kernel, krr_predict_path

REG_GRID = (1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
KERNEL = dict(depth=2, activation="relu", w_std=2.0 ** 0.5, b_std=0.1, kind="ntk")
BATCH, KIP_REG = 256, 1e-6
# (preprocessing, steps, Adam lr, schedule): the grid searched by cross-validation.
CANDIDATES = {
    1: [(pre, steps, 0.03, sched) for pre in ("per-channel", "per-pixel")
        for steps, sched in ((1000, "constant"), (3000, "cosine"))],
    10: [(pre, steps, 0.01, "constant") for pre in ("per-channel", "per-pixel")
         for steps in (300, 1000)],
}
QUICK_CANDIDATES = {1: [("per-channel", 100, 0.03, "constant"), ("per-pixel", 100, 0.03, "constant")],
                    10: [("per-channel", 50, 0.01, "constant")]}


def fit_prep(x: np.ndarray, name: str):
    """The preprocessing, fitted on ``x`` only: 'per-channel' is jdd's default standardisation."""
    return fit_preprocessor(x, "standardize", per_channel=(name == "per-channel"))


def kip_distiller(kfn, ipc: int, steps: int, lr: float, sched: str):
    schedule = optax.cosine_decay_schedule(lr, steps) if sched == "cosine" else lr
    return kip(kfn, ipc=ipc, optimizer=optax.adam(schedule), reg=KIP_REG, learn_labels=True,
               batch_size=BATCH, init="real")


def make_scorer(kfn):
    """``score(xs, ys, x_eval, y_eval) -> (sets, len(REG_GRID))`` KRR accuracy per ridge.

    One compiled program per support set holding one ``eigh`` (:func:`krr_predict_path`); the
    sets are looped on the host rather than vmapped (XLA:CPU has hung on vmapped programs with
    several LAPACK calls)."""
    @jax.jit
    def one(x, y, x_eval, y_eval):
        pred = krr_predict_path(kfn(x_eval, x), kfn(x, x), y, jnp.asarray(REG_GRID))
        return jnp.mean(pred.argmax(-1) == y_eval[None], axis=-1)

    def score(xs, ys, x_eval, y_eval):
        return np.stack([np.asarray(one(x, y, x_eval, y_eval)) for x, y in zip(xs, ys)])
    return score


def prepared(train: Dataset, rows: np.ndarray, pre_name: str, other: Dataset | None = None):
    """(fit part, evaluation part): preprocessing fitted on ``train[rows]`` only."""
    x = np.asarray(train.x)
    pre = fit_prep(x[rows], pre_name)
    fit = Dataset(jnp.asarray(pre.apply(x[rows])), train.y[rows], train.num_classes, "fit")
    if other is None:
        ev = Dataset(jnp.asarray(pre.apply(x[~rows])), train.y[~rows], train.num_classes, "val")
    else:
        ev = other.replace(x=jnp.asarray(pre.apply(np.asarray(other.x))))
    return fit, ev, pre


def random_sets(ds: Dataset, ipc: int, keys) -> tuple[jax.Array, jax.Array]:
    idx = np.stack([per_class_indices(k, np.asarray(ds.y), ds.num_classes, ipc) for k in keys])
    return ds.x[idx], jax.nn.one_hot(ds.y[idx], ds.num_classes)


def cross_validate(train, folds, ipc, candidates, seeds, score, kfn):
    """Mean CV accuracy (per ridge) of every candidate, of random subsets and of full-data KRR."""
    fold_of = np.zeros(train.n, int)
    y = np.asarray(train.y)
    rest = np.ones(train.n, bool)
    for f in range(folds - 1):   # peel off 1/(folds - f) of what is left: stratified, disjoint
        m = np.asarray(stratified_mask(jax.random.key(1000 + f), jnp.asarray(y[rest]),
                                       train.num_classes, 1.0 / (folds - f)))
        idx = np.flatnonzero(rest)[m]
        fold_of[idx] = f
        rest[idx] = False
    fold_of[rest] = folds - 1
    cv = {c: [] for c in candidates}
    distillers = {c: kip_distiller(kfn, ipc, *c[1:]) for c in candidates}
    base = {p: {"random": [], "full": []} for p in {c[0] for c in candidates}}
    for f in range(folds):
        keys = seed_keys(7919 * (f + 1) + ipc, seeds)
        for pre_name in base:
            fit, val, _ = prepared(train, fold_of != f, pre_name)
            xs, ys = random_sets(fit, ipc, keys)
            base[pre_name]["random"].append(np.asarray(score(xs, ys, val.x, val.y)))
            base[pre_name]["full"].append(np.asarray(score(fit.x[None], fit.one_hot()[None],
                                                           val.x, val.y)))
            for c in candidates:
                if c[0] != pre_name:
                    continue
                res = distill(distillers[c], keys, fit, c[1], progress=False)
                cv[c].append(np.asarray(score(res.synthetic.x, res.synthetic.y, val.x, val.y)))
    mean = lambda a: np.concatenate(a).mean(0)  # noqa: E731  (folds*seeds, ridges) -> (ridges,)
    return ({c: mean(v) for c, v in cv.items()},
            {p: {k: mean(v) for k, v in b.items()} for p, b in base.items()})


def main(argv=None):
    args = parse_args("kip_digits", __doc__.splitlines()[0], argv=argv, extra=lambda p: (
        p.add_argument("--folds", type=int, default=4, help="cross-validation folds of train"),
        p.add_argument("--seeds", type=int, default=5, help="seeds of the final runs")))
    folds, seeds = (2, 2) if args.quick else (args.folds, args.seeds)
    cands = QUICK_CANDIDATES if args.quick else CANDIDATES
    kfn = fc_kernel(**KERNEL)
    score = make_scorer(kfn)
    train, test = load_digits()
    t0 = time.perf_counter()
    results, rows, supports = {}, [], {}
    for ipc in (1, 10):
        cv, base_cv = cross_validate(train, folds, ipc, cands[ipc], 2 if not args.quick else 1,
                                     score, kfn)
        (pre_name, steps, lr, sched), r = max(((c, int(np.argmax(a))) for c, a in cv.items()),
                                              key=lambda t: cv[t[0]][t[1]])
        fit, tst, pre = prepared(train, np.ones(train.n, bool), pre_name, other=test)
        keys = seed_keys(ipc, seeds)
        res = distill(kip_distiller(kfn, ipc, steps, lr, sched), keys, fit, steps,
                      log_every=max(steps // 10, 1), progress=False)
        kip_test = np.asarray(score(res.synthetic.x, res.synthetic.y, tst.x, tst.y))[:, r]
        b = base_cv[pre_name]
        r_rand, r_full = int(np.argmax(b["random"])), int(np.argmax(b["full"]))
        rand_test = np.asarray(score(*random_sets(fit, ipc, keys), tst.x, tst.y))[:, r_rand]
        full_test = float(np.asarray(score(fit.x[None], fit.one_hot()[None], tst.x,
                                           tst.y))[0, r_full])
        entry = lambda acc, reg, cvacc: dict(  # noqa: E731
            test_mean=float(np.mean(acc)), test_std=float(np.std(acc)),
            test_per_seed=[float(a) for a in np.atleast_1d(acc)], reg=reg, cv=float(cvacc))
        results[f"ipc{ipc}"] = dict(
            chosen=dict(preprocessing=pre_name, steps=steps, lr=lr, schedule=sched,
                        eval_reg=REG_GRID[r]),
            cv_grid=[dict(preprocessing=c[0], steps=c[1], lr=c[2], schedule=c[3],
                          cv_by_reg=[float(v) for v in a]) for c, a in cv.items()],
            kip=dict(entry(kip_test, REG_GRID[r], cv[(pre_name, steps, lr, sched)][r]),
                     seconds=res.seconds,
                     loss_first_last=[float(res.history["loss"][:, 0].mean()),
                                      float(res.history["loss"][:, -1].mean())]),
            random=entry(rand_test, REG_GRID[r_rand], b["random"][r_rand]),
            full_data=entry(full_test, REG_GRID[r_full], b["full"][r_full]))
        e = results[f"ipc{ipc}"]
        rows += [[f"KIP IPC {ipc}", pm(e["kip"]["test_mean"], e["kip"]["test_std"]),
                  f"{100 * e['kip']['cv']:.2f}", f"{e['kip']['reg']:.0e}",
                  f"{pre_name}, {steps} steps, adam {lr} {sched}"],
                 [f"random IPC {ipc}", pm(e["random"]["test_mean"], e["random"]["test_std"]),
                  f"{100 * e['random']['cv']:.2f}", f"{e['random']['reg']:.0e}", pre_name]]
        supports[ipc] = np.asarray(pre.invert(res.synthetic.x[0]))
    f = results["ipc10"]["full_data"]
    rows.append(["full-data KRR", f"{100 * f['test_mean']:.2f}", f"{100 * f['cv']:.2f}",
                 f"{f['reg']:.0e}", results["ipc10"]["chosen"]["preprocessing"]])
    total = time.perf_counter() - t0
    print(table(["method", "test acc % (mean +- std)", "CV acc %", "ridge", "chosen by CV"], rows,
                title=f"KIP on digits, FC ReLU NTK depth 2, {seeds} seeds, {folds}-fold CV on "
                      f"train, {device_string()}"))
    print(f"total {total:.1f} s")
    png = os.path.splitext(args.json)[0] + ".png"
    _save_png(supports, png)
    write_result(args.json, "kip_digits", args.quick, settings=dict(
        kernel=f"fc_kernel({KERNEL})", kip_reg=KIP_REG, batch_size=BATCH, learn_labels=True,
        init="real", folds=folds, seeds=seeds, reg_grid=list(REG_GRID),
        candidates={f"ipc{k}": [list(c) for c in v] for k, v in cands.items()},
        protocol="k-fold CV on train picks (preprocessing, schedule, eval ridge); final runs "
                 "distil from all of train; test read once"), results=results,
        seconds_total=total, png=os.path.basename(png))
    print(f"wrote {args.json} and {png}")


def _save_png(supports, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(11, 10, figsize=(8, 9))
    for ax in axes.ravel():
        ax.axis("off")
    for c in range(10):
        axes[0, c].imshow(supports[1][c].reshape(8, 8), cmap="gray_r")
        axes[0, c].set_title(str(c), fontsize=8)
        for j in range(10):
            axes[1 + j, c].imshow(supports[10][c * 10 + j].reshape(8, 8), cmap="gray_r")
    fig.suptitle("KIP supports on digits (seed 0): row 1 IPC 1, rows 2-11 IPC 10")
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    main()
