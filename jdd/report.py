"""``jdd report RUN...``: several runs side by side, as people paste them into papers.

For every run folder: the method, dataset and IPC; the distilled set's test accuracy (mean +- std
over seeds x models) beside the random-subset and full-data baselines measured under the same
learner; DD-Ranking's robust scores when ``jdd evaluate --robust`` computed them; the stored
bytes of one seed's set (:mod:`jdd.storage`); the distillation time and the device; and every
``jdd evaluate`` result in the folder (other architectures, other recipes) in a second table.

A number is never shown without its baselines: an evaluation that ran without them
(``--no-baselines``, ``--no-eval``) is listed as such, with the command that completes it.
Printed as Markdown, and written (atomically) as ``report.md``, ``report.json`` and ``report.png``
(a bar chart of the three accuracies per run).
"""

from __future__ import annotations

import dataclasses
import glob
import os

from jdd.config import opt
from jdd.rundir import _read_json


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    """``jdd report`` options."""

    out: str | None = opt("report", "folder for report.md, report.json and report.png (none: "
                          "print only)")
    title: str = opt("jdd report", "title of the report")
    quiet: bool = opt(False, "do not print the report")


def _pct(r: dict | None) -> str:
    if not r:
        return "-"
    return f"{100 * r['test_accuracy_mean']:.2f} +- {100 * r['test_accuracy_std']:.2f}"


def collect(run: str) -> dict:
    """One run folder's numbers (raises FileNotFoundError / ValueError for a non-run)."""
    from jdd.storage import human
    if not os.path.isdir(run):
        raise FileNotFoundError(f"{run}: no such run folder")
    metrics = _read_json(os.path.join(run, "metrics.json"))
    manifest = _read_json(os.path.join(run, "manifest.json")) or {}
    if metrics is None:
        if not os.path.exists(os.path.join(run, "distilled.npz")):
            raise ValueError(f"{run}: not a run folder (no metrics.json or distilled.npz)")
        metrics = {}
    from jdd.artifacts import load_distilled
    meta = load_distilled(run).meta if os.path.exists(os.path.join(run, "distilled.npz")) else {}
    row = {"run": run, "run_id": metrics.get("run_id") or manifest.get("run_id"),
           "method": metrics.get("method") or meta.get("method"),
           "dataset": metrics.get("dataset") or meta.get("dataset"),
           "ipc": metrics.get("ipc") or meta.get("ipc"),
           "distill_seconds": metrics.get("distill_seconds"),
           "device": (metrics.get("versions") or {}).get("device") or
                     (metrics.get("versions") or {}).get("backend"),
           "storage": metrics.get("storage"), "evaluations": []}
    if row["storage"]:
        row["stored"] = human(row["storage"]["total_bytes"])
    base = metrics.get("baselines") or {}
    if metrics.get("result"):
        row["evaluations"].append({"source": "metrics.json", "learner": metrics["result"]
                                   .get("learner"), "result": metrics["result"],
                                   "random_subset": base.get("random_subset"),
                                   "full_data": base.get("full_data"),
                                   "robust": None})
    for path in sorted(glob.glob(os.path.join(run, "eval-*.json"))):
        e = _read_json(path)
        if not e or "result" not in e:
            continue
        b = e.get("baselines") or {}
        row["evaluations"].append({"source": os.path.basename(path),
                                   "learner": e["result"].get("learner"), "result": e["result"],
                                   "random_subset": b.get("random_subset"),
                                   "full_data": b.get("full_data"), "robust": e.get("robust")})
    robust = metrics.get("robust") or {}
    for ev in row["evaluations"]:  # metrics.json keeps the robust scores of each learner's tag
        if ev["robust"] is None and ev["source"].startswith("eval-"):
            ev["robust"] = robust.get(ev["source"][5:-5])
    return row


def _main_eval(row: dict) -> dict | None:
    """The run's headline evaluation: its own (metrics.json), else the first complete one."""
    for ev in row["evaluations"]:
        if ev["random_subset"] and ev["full_data"]:
            return ev
    return None


def _robust_of(row: dict, ev: dict | None):
    if ev is None:
        return None
    if ev.get("robust"):
        return ev["robust"]
    for other in row["evaluations"]:  # the same learner evaluated again with --robust
        if other.get("robust") and other["learner"] == ev["learner"]:
            return other["robust"]
    return None


def _scores(rob: dict | None) -> tuple[str, str]:
    """(LRS, ARS) cells: three decimals, "-" where not computed or not defined."""
    lrs = f"{rob['lrs']['lrs']:.3f}" if rob else "-"
    ars = f"{rob['ars']['ars']:.3f}" if rob and rob.get("ars") else "-"
    return lrs, ars


def markdown(rows: list[dict], title: str) -> str:
    """The report as Markdown: the summary table, then every evaluation."""
    lines = [f"# {title}", "",
             "Test accuracy (%), mean +- std over seeds x models; both baselines under the same "
             "learner as the set. LRS / ARS: DD-Ranking's label- and augmentation-robust scores "
             "(v0.2.0 definitions, jdd.robust). Stored: one seed's set (jdd.storage).", "",
             "| run | method | dataset | IPC | distilled | random subset | full data | LRS | ARS "
             "| stored | distill time | device |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    missing = []
    for r in rows:
        ev = _main_eval(r)
        rob = _robust_of(r, ev)
        secs = r.get("distill_seconds")
        cells = [os.path.basename(os.path.normpath(r["run"])), str(r["method"]),
                 str(r["dataset"]), str(r["ipc"])]
        if ev is None:
            cells += ["not evaluated with both baselines"] + ["-"] * 4
            missing.append(r["run"])
        else:
            lrs, ars = _scores(rob)
            cells += [_pct(ev["result"]), _pct(ev["random_subset"]), _pct(ev["full_data"]),
                      lrs, ars]
        cells += [r.get("stored", "-"), f"{secs:.0f} s" if secs is not None else "-",
                  str(r.get("device") or "-")]
        lines.append("| " + " | ".join(cells) + " |")
    if missing:
        lines += ["", "Not evaluated with both baselines (no number is shown without them): " +
                  ", ".join(missing) + f". Run `jdd evaluate RUN` to complete "
                  f"{'it' if len(missing) == 1 else 'them'}."]
    lines += ["", "## Every evaluation", "",
              "| run | learner | distilled | random subset | full data | LRS | ARS | file |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for ev in r["evaluations"]:
            name = os.path.basename(os.path.normpath(r["run"]))
            if not (ev["random_subset"] and ev["full_data"]):
                lines.append(f"| {name} | {ev['learner']} | evaluated without baselines: not "
                             f"shown | - | - | - | - | {ev['source']} |")
                continue
            lrs, ars = _scores(ev.get("robust"))
            lines.append(f"| {name} | {ev['learner']} | {_pct(ev['result'])} | "
                         f"{_pct(ev['random_subset'])} | {_pct(ev['full_data'])} | {lrs} | "
                         f"{ars} | {ev['source']} |")
    return "\n".join(lines) + "\n"


def bar_chart(rows: list[dict], path: str, title: str) -> None:
    """PNG: distilled / random subset / full data per run (error bars: std)."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from jdd.artifacts import _save_figure
    shown = [(r, _main_eval(r)) for r in rows]
    shown = [(r, ev) for r, ev in shown if ev is not None]
    fig, ax = plt.subplots(figsize=(1.3 * max(len(shown), 1) + 2.5, 3.4))
    w = 0.27
    for off, key, name in ((-w, "random_subset", "random subset"), (0, "result", "distilled"),
                           (w, "full_data", "full data")):
        ax.bar([i + off for i in range(len(shown))],
               [100 * ev[key]["test_accuracy_mean"] for _, ev in shown], w,
               yerr=[100 * ev[key]["test_accuracy_std"] for _, ev in shown], label=name)
    ax.set_xticks(range(len(shown)),
                  [f"{os.path.basename(os.path.normpath(r['run']))}\n{r['method']} ipc {r['ipc']}"
                   for r, _ in shown], fontsize=7)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    _save_figure(fig, path, dpi=90)


def report(runs: list[str], cfg: ReportConfig = ReportConfig()) -> tuple[str, list[dict]]:
    """Collect the runs, print nothing; write the files when ``cfg.out`` is set.

    Returns:
        (the Markdown text, the collected rows).

    Raises:
        FileNotFoundError / ValueError: a path that is not a run folder (before anything is
        written).
    """
    from jdd.artifacts import atomic_write, write_json
    from jdd.config import validate
    validate(cfg)
    if not runs:
        raise ValueError("expected at least one run folder")
    rows = [collect(r) for r in runs]
    text = markdown(rows, cfg.title)
    if cfg.out:
        os.makedirs(cfg.out, exist_ok=True)
        with atomic_write(os.path.join(cfg.out, "report.md"), "w") as f:
            f.write(text)
        write_json(os.path.join(cfg.out, "report.json"), {"title": cfg.title, "runs": rows})
        bar_chart(rows, os.path.join(cfg.out, "report.png"), cfg.title)
    return text, rows
