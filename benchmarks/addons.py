"""The seed papers' add-ons on digits and Fashion-MNIST (issue 9): low-rank synthetic sets at equal
storage, MIM4DD on top of DC and MTT, and SRe2L with and without DWA.

Parts (``--part``):

* ``low-rank``: DM, DC and MTT at IPC budgets 1 and 10, pixels vs ``--param low-rank`` at rank 2
  and 4 (equal stored input floats; the run reports the images it holds). Target: at an IPC-1
  budget on Fashion-MNIST, low-rank beats pixels by >= 3 points for DM and DC.
* ``mim4dd``: DC and MTT at IPC 1 and 10, the base method vs + ``--mim4dd-weight`` (a weight
  fixed beforehand, 0.1 by default: it is not tuned on the test set), 3 seeds.
* ``sre2l``: SRe2L vs SRe2L + DWA at IPC 10 and 50: KD and hard-label accuracy and the
  within-class diversity of the teacher's embeddings. Target: DWA raises both.

Every row is one ``jdd distill`` run (``--seeds`` seeds, ``--n-models`` models each, both
baselines with the same learner); the table quotes mean +- std over seeds x models. The step
counts of ``--plan cpu`` (the default on a CPU) are the matching benchmark's CPU plan; ``full``
uses the methods' validated defaults (GPU).

Usage::

    python benchmarks/addons.py --quick                      # tiny, digits only (minutes)
    python benchmarks/addons.py --part low-rank --datasets fashion_mnist
    python benchmarks/addons.py --part sre2l --plan full     # on a GPU
    python benchmarks/addons.py --part low-rank --only dm:1,dc:1 --keep DIR   # resumable rows
    python benchmarks/addons.py --part low-rank --only dc:1 --variants rank2,rank4

Writes results/addons.json after every row (rows of earlier runs with other keys are kept).
With ``--keep DIR`` each run writes checkpoints; started again, an interrupted row resumes, and
a row whose kept run finished with the same options is read again (``"reused": true``, with the
CPU seconds of the run that made it when this JSON has them).
On Fashion-MNIST the CPU plan uses the matching benchmark's reduced protocol (``FASHION_CPU``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (earlier_rows, finished_run, nonnegative, parse_args,  # noqa: E402
                     positive, resumable, table, write_result)

#: (dataset, method, ipc) -> extra flags per plan ("cpu": shortened; "full": defaults). SRe2L's
#: recover stage is cheap beside its evaluation, so it runs its defaults on either plan.
STEPS = {
    "cpu": {"dm": {1: ["--steps", "500"], 10: ["--steps", "300"]},
            "dc": {1: ["--iterations", "100"], 10: ["--iterations", "10", "--inner-loop", "10"]},
            "mtt": {1: ["--steps", "200"], 10: ["--steps", "200"]}},
    "full": {},
}
#: Fashion-MNIST on the CPU plan: the matching benchmark's reduced protocol (64 real images per
#: class per update, 300 evaluation epochs at IPC 10, the full-data baseline 1 model x 2 epochs;
#: benchmarks/matching.py explains each number). The pixel rows run with the same flags.
FASHION_CPU = {"batch_real": ["--batch-real", "64"], "ipc10": ["--eval-epochs", "300"],
               "all": ["--full-data-epochs", "2"]}
QUICK = ["--steps", "2", "--width", "8", "--depth", "1", "--eval-width", "8", "--eval-depth",
         "1", "--eval-epochs", "3", "--full-data-epochs", "1"]


def _jdd(argv):
    from jdd.cli import main
    rc = main(argv)
    if rc != 0:
        raise SystemExit(f"jdd {' '.join(argv)} failed ({rc})")


def plan(args) -> list[dict]:
    rows = []
    datasets = args.datasets.split(",")
    if args.part in ("low-rank", "all"):
        for ds in datasets:
            for m in ("dm", "dc", "mtt"):
                for ipc in (1, 10):
                    for param in (["--param", "pixels"], ["--param", "low-rank", "--rank", "2"],
                                  ["--param", "low-rank", "--rank", "4"]):
                        rows.append({"part": "low-rank", "dataset": ds, "method": m, "ipc": ipc,
                                     "variant": " ".join(param[1:]), "flags": param})
    if args.part in ("mim4dd", "all"):
        for ds in datasets:
            for m in ("dc", "mtt"):
                for ipc in (1, 10):
                    for v, f in (("base", []), (f"+mim4dd {args.mim4dd_weight:g}",
                                                ["--mim4dd-weight", str(args.mim4dd_weight)])):
                        rows.append({"part": "mim4dd", "dataset": ds, "method": m, "ipc": ipc,
                                     "variant": v, "flags": f})
    if args.part in ("sre2l", "all"):
        for ds in datasets:
            for ipc in (10, 50):
                for v, f in (("sre2l", []), ("sre2l+dwa", ["--dwa"])):
                    rows.append({"part": "sre2l", "dataset": ds, "method": "sre2l", "ipc": ipc,
                                 "variant": v, "flags": f})
    if args.variants:
        want_v = set(args.variants.split(","))
        rows = [r for r in rows if _short(r["variant"]) in want_v]
    if args.only:    # "dm" (every IPC) or "dm:1"
        keep = set(args.only.split(","))
        rows = [r for r in rows if r["method"] in keep or f"{r['method']}:{r['ipc']}" in keep]
    if args.quick:   # one comparison of each part, digits
        want = {("low-rank", "dm", 1, "pixels"), ("low-rank", "dm", 1, "low-rank --rank 2"),
                ("mim4dd", "dc", 1, "base"), ("mim4dd", "dc", 1, f"+mim4dd {args.mim4dd_weight:g}"),
                ("sre2l", "sre2l", 10, "sre2l"), ("sre2l", "sre2l", 10, "sre2l+dwa")}
        rows = [r for r in rows if r["dataset"] == "digits"
                and (r["part"], r["method"], r["ipc"], r["variant"]) in want]
    return rows


def _short(variant: str) -> str:
    """A row's variant as ``--variants`` names it (one of :data:`VARIANTS`)."""
    if variant.startswith("low-rank --rank "):
        return "rank" + variant.split()[-1]
    return {"sre2l+dwa": "dwa"}.get(variant, "mim4dd" if variant.startswith("+mim4dd") else variant)


def run_row(row: dict, args, work: str, experts: dict, earlier: list) -> dict:
    name = f"{row['part']}-{row['dataset']}-{row['method']}{row['ipc']}-{row['variant']}"
    out = os.path.join(work, name.replace(" ", "_"))
    flags = list(row["flags"])
    if args.quick:
        flags += QUICK if row["method"] != "sre2l" else [
            "--steps", "2", "--teacher-epochs", "1", "--teacher-width", "8", "--eval-width", "8",
            "--eval-depth", "1", "--eval-epochs", "3", "--full-data-epochs", "1"]
    else:
        flags += STEPS[args.plan].get(row["method"], {}).get(row["ipc"], [])
        if args.plan == "cpu" and row["dataset"] == "fashion_mnist":
            flags += FASHION_CPU["all"] + (FASHION_CPU["ipc10"] if row["ipc"] >= 10 else [])
            if row["method"] in ("dm", "dc"):
                flags += FASHION_CPU["batch_real"]
    if row["method"] == "mtt":
        key = row["dataset"]
        if key not in experts:
            experts[key] = os.path.join(work, f"experts-{key}")
            _jdd(["experts", "--dataset", key, "--out", experts[key], "--quiet"])
        flags += ["--buffer", experts[key]]
    t0 = time.process_time()
    argv = ["distill", "--method", row["method"], "--dataset", row["dataset"], "--ipc",
            str(row["ipc"]), "--seeds", str(args.seeds), "--n-models", str(args.n_models),
            "--full-data-models", "1", "--out", out, "--quiet"] + flags
    reused = bool(args.keep) and finished_run(argv, out)
    if reused:
        print(f"reusing the finished run {out}", flush=True)
    else:
        _jdd(resumable(argv, out, args.checkpoint_every) if args.keep else argv + ["--overwrite"])
    with open(os.path.join(out, "metrics.json")) as f:
        m = json.load(f)
    cpu = time.process_time() - t0
    if reused:     # the CPU time of the run that made it, where this benchmark's JSON has it
        same = [r for r in earlier if r.get("run_id") == m["run_id"] or (
            "run_id" not in r and _key(r) == _key(row) and r["result"] == m["result"])]
        cpu = same[0].get("cpu_seconds") if same else None
    res = {**row, "flags": flags, "seeds": args.seeds, "n_models": args.n_models,
           "run_id": m["run_id"], "reused": reused, "cpu_seconds": cpu,
           "result": m["result"], "random_subset": m["baselines"]["random_subset"],
           "full_data": m["baselines"]["full_data"], "images_per_class": m["images_per_class"],
           "storage": m["storage"], "resumed_from_step": m.get("resumed_from_step")}
    if "alt_results" in m:
        res["hard_labels"] = m["alt_results"]["hard labels"]
    if "sre2l" in m:
        res["diversity"] = m["sre2l"]["diversity"]
    return res


def _rows_of(path: str) -> list:
    """The rows an earlier invocation wrote to ``path`` (none if it holds no readable JSON)."""
    try:
        with open(path) as f:
            return list(json.load(f)["results"]["rows"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _key(r: dict) -> tuple:
    return r["part"], r["dataset"], r["method"], r["ipc"], r["variant"]


def _write(path: str, args, rows: list) -> None:
    """The JSON: this invocation's rows, and the rows of earlier runs (other keys) before them.
    Seeds, models and flags are per row: the rows may come from several invocations."""
    kept = [] if args.quick else earlier_rows(path, rows, _key)
    write_result(path, "addons", args.quick,
                 {"plan": args.plan, "seeds, n_models, flags": "per row"}, {"rows": kept + rows})


VARIANTS = ("pixels", "rank2", "rank4", "base", "mim4dd", "sre2l", "dwa")


def _variants(text: str) -> str:
    bad = [v for v in text.split(",") if v not in VARIANTS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown variant(s) {', '.join(map(repr, bad))}: "
                                         f"expected a comma-separated list from "
                                         f"{', '.join(VARIANTS)}")
    return text


def _extra(p):
    p.add_argument("--part", choices=("low-rank", "mim4dd", "sre2l", "all"), default="all")
    p.add_argument("--datasets", default="digits,fashion_mnist")
    p.add_argument("--plan", choices=("cpu", "full"), default="cpu")
    p.add_argument("--seeds", type=positive, default=3)
    p.add_argument("--n-models", type=positive, default=3)
    p.add_argument("--mim4dd-weight", type=nonnegative, default=0.1)
    p.add_argument("--only", default=None,
                   help="rows of these methods only: method or method:ipc, comma-separated")
    p.add_argument("--variants", type=_variants, default=None,
                   help="rows of these variants only, comma-separated: " + ", ".join(VARIANTS))
    p.add_argument("--keep", default=None,
                   help="keep the run folders here; runs then write checkpoints, a row whose "
                        "run was interrupted resumes from its last checkpoint when started "
                        "again, and a row whose run finished with the same options is read "
                        "again, not run again")
    p.add_argument("--checkpoint-every", type=positive, default=10,
                   help="with --keep: steps between checkpoints (and between logged entries)")


def main(argv=None) -> int:
    args = parse_args("addons", __doc__.splitlines()[0], _extra, argv)
    if args.quick:
        args.seeds, args.n_models = 1, 1
    work = args.keep or tempfile.mkdtemp(prefix="jdd-addons-")
    experts: dict = {}
    todo = plan(args)
    if not todo:
        raise SystemExit("addons: no row matches --part / --datasets / --only")
    path = args.json
    if args.quick and path.endswith("addons.json"):
        path = path[:-len(".json")] + "_quick.json"
    earlier = [] if args.quick else _rows_of(path)
    rows = []
    for row in todo:
        rows.append(run_row(row, args, work, experts, earlier))
        r = rows[-1]
        print(f"{r['part']} {r['dataset']} {r['method']} ipc {r['ipc']} {r['variant']}: "
              f"{100 * r['result']['test_accuracy_mean']:.2f} %", flush=True)
        _write(path, args, rows)          # after every row: an interrupted run keeps them

    def pct(d):
        return f"{100 * d['test_accuracy_mean']:.2f} +- {100 * d['test_accuracy_std']:.2f}"
    print(table(["part", "dataset", "method", "ipc", "variant", "images/class", "distilled",
                 "hard labels", "random", "full", "diversity", "bytes"],
                [[r["part"], r["dataset"], r["method"], r["ipc"], r["variant"],
                  r["images_per_class"], pct(r["result"]),
                  pct(r["hard_labels"]["result"]) if "hard_labels" in r else "-",
                  pct(r["random_subset"]), pct(r["full_data"]),
                  f"{r['diversity']:.3f}" if "diversity" in r else "-",
                  r["storage"]["total_bytes"]] for r in rows],
                title="seed add-ons (mean +- std over seeds x models)"))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
