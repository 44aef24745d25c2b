"""Cross-architecture evaluation: saved distilled sets (``jdd distill`` run folders) trained on
other networks with ``jdd evaluate RUN --model ...``, the method x architecture matrix.

Every cell is ``jdd evaluate`` on the saved set with the run's own protocol (epochs, learning
rate schedule, augmentation; ``--epochs`` overrides the epochs) and only the network changed;
both baselines (random subset, full data) are evaluated under the same learner. Runs whose
protocol learner is the same (e.g. DSA, DM and MTT: 1000 epochs with DSA) share one baseline
evaluation per architecture, which ``jdd evaluate`` would otherwise repeat with the same key.
A set's learned learning rate (MTT) is used on its own architecture only; elsewhere the
protocol's default rate.

Usage::

    python benchmarks/cross_arch.py RUN [RUN ...] [--epochs 1000] [--n-models 2]
    python benchmarks/cross_arch.py --quick        # distils a tiny DM set first (minutes)

Writes results/cross_arch_DATASET.json (cells of earlier invocations are kept; a cell re-run
replaces the old one) and a heatmap PNG beside it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import RESULTS, parse_args, positive, table, write_result  # noqa: E402

#: Architectures of the matrix (``jdd evaluate RUN`` flags).
ARCHS = {
    "convnet-d3": ["--model", "convnet"],
    "convnet-d2": ["--model", "convnet", "--depth", "2"],
    "convnet-w64": ["--model", "convnet", "--width", "64"],
    "convnet-nonorm": ["--model", "convnet", "--norm", "none"],
    "mlp": ["--model", "mlp", "--hidden", "256", "256"],
    # layer norm: on 8x8 digits the last stage has 1x1 maps, where instance norm is refused
    "resnet": ["--model", "resnet", "--width", "32", "--norm", "layer"],
}


def evaluate_archs(run_dir: str, n_models: int, *, archs=tuple(ARCHS), epochs: int | None = None,
                   quick: bool = False, baselines: dict | None = None) -> dict:
    """Evaluate one saved set on each architecture of ``archs``.

    Args:
        run_dir: a ``jdd distill`` output folder.
        n_models: fresh models per distillation seed (and per baseline).
        archs: names of :data:`ARCHS`.
        epochs: evaluation epochs (None: the run's).
        quick: tiny networks and 5 epochs (smoke test).
        baselines: a cache ``{(arch, protocol): {"random_subset": ..., "full_data": ...}}``
            shared by runs with the same protocol learner; filled here.

    Returns:
        ``{arch: {"distilled", "random_subset", "full_data": {"mean", "std", "n_models"},
        "learner": str, "cpu_s": float}}``.
    """
    from jdd.cli import main as jdd_main
    baselines = {} if baselines is None else baselines
    meta = json.loads(open(os.path.join(run_dir, "metrics.json")).read())
    learner = meta["result"]["learner"]   # the run's protocol learner (its network, epochs)
    if epochs:
        learner = re.sub(r"\d+ epochs", f"{epochs} epochs", learner)
    protocol = learner.split("[", 1)[-1]   # schedule, epochs, augmentation: not the network
    out = {}
    for name in archs:
        flags = list(ARCHS[name])
        if quick:
            flags = [f if f not in ("64", "256", "32") else "8" for f in flags] + ["--width", "8"]
        if epochs or quick:
            flags += ["--epochs", "5" if quick else str(epochs)]
        cached = baselines.get((name, protocol))
        t0 = time.process_time()
        with tempfile.TemporaryDirectory() as tmp:
            # evaluate a copy: `jdd evaluate` writes eval-NAME.json into the run folder
            for f in ("distilled.npz", "metrics.json"):
                shutil.copy(os.path.join(run_dir, f), tmp)
            rc = jdd_main(["evaluate", tmp, *flags, "--n-models", str(n_models), "--quiet"]
                          + (["--no-baselines"] if cached else []))
            if rc != 0:
                raise SystemExit(f"jdd evaluate {run_dir} --model {name} failed (exit {rc})")
            new = [f for f in os.listdir(tmp) if f.startswith("eval-")]
            e = json.loads(open(os.path.join(tmp, new[0])).read())
        if cached is None:
            cached = baselines[(name, protocol)] = {
                k: _acc(e["baselines"][k]) for k in ("random_subset", "full_data")}
        out[name] = {"distilled": _acc(e["result"]), **cached, "learner": e["result"]["learner"],
                     "full_data_epochs": meta.get("config", {}).get("full_data_epochs"),
                     "cpu_s": time.process_time() - t0}
        print(f"  {meta['method']} ipc {meta['ipc']}  {name:<15} distilled "
              f"{_pm(out[name]['distilled'])}  random {_pm(cached['random_subset'])}  full "
              f"{_pm(cached['full_data'])}", flush=True)
    return out


def main(argv=None) -> int:
    args = parse_args("cross_arch", __doc__.splitlines()[0], extra=_extra, argv=argv)
    unknown = set(args.archs) - set(ARCHS)
    if unknown:
        raise SystemExit(f"--archs: unknown {', '.join(sorted(unknown))}; expected some of: "
                         f"{', '.join(ARCHS)}")
    if not args.runs and not args.quick:
        raise SystemExit("expected at least one run folder (a `jdd distill --out` folder)")
    for r in args.runs:
        for f in ("distilled.npz", "metrics.json"):
            if not os.path.isfile(os.path.join(r, f)):
                raise SystemExit(f"{r}: not a jdd run folder (no {f})")
    tmp = None
    runs = list(args.runs)
    if args.quick and not runs:
        from jdd.cli import main as jdd_main
        tmp = tempfile.mkdtemp(prefix="jdd-cross-arch-")
        runs = [os.path.join(tmp, "dm")]
        if jdd_main(["distill", "--method", "dm", "--dataset", "digits", "--ipc", "1",
                     "--steps", "2", "--width", "8", "--seeds", "1", "--n-models", "1",
                     "--eval-epochs", "2", "--eval-width", "8", "--full-data-epochs", "1",
                     "--out", runs[0], "--quiet"]) != 0:
            raise SystemExit("the quick run's distillation failed")
    n_models = 1 if args.quick else args.n_models
    cells, baselines, datasets = {}, {}, set()
    try:
        for r in runs:
            meta = json.loads(open(os.path.join(r, "metrics.json")).read())
            datasets.add(meta["dataset"])
            res = evaluate_archs(r, n_models, archs=args.archs, epochs=args.epochs,
                                 quick=args.quick, baselines=baselines)
            row = f"{meta['method']}:ipc{meta['ipc']}"
            cells[row] = {"run": os.path.abspath(r), "method": meta["method"],
                          "ipc": meta["ipc"], "seeds": meta["seeds"], "steps": meta["steps"],
                          "run_test_accuracy_mean": meta["result"]["test_accuracy_mean"],
                          "epochs": args.epochs, "archs": res}
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    if len(datasets) != 1:
        raise SystemExit(f"the runs are on different datasets: {sorted(datasets)}")
    dataset = datasets.pop()
    path = args.json
    if path == os.path.join(RESULTS, "cross_arch.json"):
        path = os.path.join(RESULTS, f"cross_arch_{dataset}{'_quick' if args.quick else ''}.json")
    every = _write(path, args.quick, dataset, n_models, cells)
    _print(every)
    _heatmap(every, os.path.splitext(path)[0] + ".png", dataset)
    return 0


def _write(path, quick, dataset, n_models, cells):
    """Merge the cells into the JSON at ``path`` (same dataset, n_models and quick flag)."""
    rows = {}
    if os.path.exists(path):
        try:
            old = json.loads(open(path).read())
        except (OSError, ValueError):
            old = {}
        if old.get("quick") == bool(quick) and old.get("settings", {}) == {
                "dataset": dataset, "n_models": n_models}:
            rows = old.get("results", {}).get("rows", {})
    for row, c in cells.items():
        keep = rows.get(row, {}).get("archs", {}) if rows.get(row, {}).get("run") == c["run"] \
            else {}
        rows[row] = {**c, "archs": {**keep, **c["archs"]}}
    write_result(path, "cross_arch", quick, {"dataset": dataset, "n_models": n_models},
                 {"rows": rows})
    return rows


def _print(rows):
    names = [a for a in ARCHS if any(a in r["archs"] for r in rows.values())]
    body = [[row] + [f"{100 * r['archs'][a]['distilled']['mean']:.1f} +- "
                     f"{100 * r['archs'][a]['distilled']['std']:.1f}"
                     if a in r["archs"] else "-" for a in names] for row, r in rows.items()]
    protos = {}
    for r in rows.values():
        for a in names:
            if a in r["archs"]:
                c = r["archs"][a]
                protos.setdefault(_protocol(c["learner"]), {})[a] = c
    for proto, by_arch in protos.items():
        fd = {c.get("full_data_epochs") for c in by_arch.values()}
        fd = fd.pop() if len(fd) == 1 else None
        for k, label in (("random_subset", f"random subset ({proto})"),
                         ("full_data", f"full data ({fd or '?'} ep, {proto.split(', ')[-1]})")):
            body.append([label] + [
                f"{100 * by_arch[a][k]['mean']:.1f} +- {100 * by_arch[a][k]['std']:.1f}"
                if a in by_arch else "-" for a in names])
    print(table(["set"] + names, body,
                title="cross-architecture test accuracy % (mean +- std over seeds x models)"))


def _protocol(learner: str) -> str:
    """``"... 1000 epochs, batch 256, aug dsa(...)]"`` -> ``"1000 ep, dsa"``."""
    ep = re.search(r"(\d+) epochs", learner)
    aug = re.search(r"aug (\w+)", learner)
    return f"{ep.group(1) if ep else '?'} ep, {aug.group(1) if aug else '?'}"


def _heatmap(rows, path, dataset):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from jdd.artifacts import _save_figure
    names = [a for a in ARCHS if any(a in r["archs"] for r in rows.values())]
    labels = list(rows)
    m = np.array([[100 * rows[r]["archs"][a]["distilled"]["mean"] if a in rows[r]["archs"]
                   else np.nan for a in names] for r in labels])
    fig, ax = plt.subplots(figsize=(1.3 * len(names) + 2, 0.6 * len(labels) + 1.6))
    im = ax.imshow(m, cmap="viridis", aspect="auto")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if np.isfinite(m[i, j]):
                ax.text(j, i, f"{m[i, j]:.1f}", ha="center", va="center", fontsize=8,
                        color="w" if m[i, j] < np.nanmean(m) else "k")
    ax.set_xticks(range(len(names)), names, fontsize=8, rotation=20)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_title(f"{dataset}: distilled set test accuracy (%) by evaluation network", fontsize=9)
    fig.colorbar(im, ax=ax)
    _save_figure(fig, path, dpi=90)


def _acc(r: dict) -> dict:
    return {"mean": r["test_accuracy_mean"], "std": r["test_accuracy_std"],
            "n_models": r["n_models"]}


def _pm(a: dict) -> str:
    return f"{100 * a['mean']:.2f} +- {100 * a['std']:.2f}"


def _extra(p):
    p.add_argument("runs", nargs="*", help="jdd distill run folders (distilled.npz + "
                                           "metrics.json)")
    p.add_argument("--archs", nargs="+", default=list(ARCHS),
                   help=f"architectures, some of: {', '.join(ARCHS)}")
    p.add_argument("--epochs", type=positive, default=None,
                   help="evaluation epochs (default: each run's own)")
    p.add_argument("--n-models", type=positive, default=2,
                   help="fresh models per distillation seed and per baseline")


if __name__ == "__main__":
    sys.exit(main())
