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

Writes results/addons.json (rows of earlier runs with other keys are kept).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import parse_args, positive, table, write_result  # noqa: E402

#: (dataset, method, ipc) -> extra flags per plan ("cpu": shortened; "full": defaults).
STEPS = {
    "cpu": {"dm": {1: ["--steps", "500"], 10: ["--steps", "300"]},
            "dc": {1: ["--iterations", "100"], 10: ["--iterations", "10", "--inner-loop", "10"]},
            "mtt": {1: ["--steps", "200"], 10: ["--steps", "200"]},
            "sre2l": {10: ["--steps", "500"], 50: ["--steps", "500"]}},
    "full": {},
}
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
    if args.quick:   # one comparison of each part, digits
        want = {("low-rank", "dm", 1, "pixels"), ("low-rank", "dm", 1, "low-rank --rank 2"),
                ("mim4dd", "dc", 1, "base"), ("mim4dd", "dc", 1, f"+mim4dd {args.mim4dd_weight:g}"),
                ("sre2l", "sre2l", 10, "sre2l"), ("sre2l", "sre2l", 10, "sre2l+dwa")}
        rows = [r for r in rows if r["dataset"] == "digits"
                and (r["part"], r["method"], r["ipc"], r["variant"]) in want]
    return rows


def run_row(row: dict, args, work: str, experts: dict) -> dict:
    name = f"{row['part']}-{row['dataset']}-{row['method']}{row['ipc']}-{row['variant']}"
    out = os.path.join(work, name.replace(" ", "_"))
    flags = list(row["flags"])
    if args.quick:
        flags += QUICK if row["method"] != "sre2l" else [
            "--steps", "2", "--teacher-epochs", "1", "--teacher-width", "8", "--eval-width", "8",
            "--eval-depth", "1", "--eval-epochs", "3", "--full-data-epochs", "1"]
    else:
        flags += STEPS[args.plan].get(row["method"], {}).get(row["ipc"], [])
    if row["method"] == "mtt":
        key = row["dataset"]
        if key not in experts:
            experts[key] = os.path.join(work, f"experts-{key}")
            _jdd(["experts", "--dataset", key, "--out", experts[key], "--quiet"])
        flags += ["--buffer", experts[key]]
    t0 = time.process_time()
    _jdd(["distill", "--method", row["method"], "--dataset", row["dataset"], "--ipc",
          str(row["ipc"]), "--seeds", str(args.seeds), "--n-models", str(args.n_models),
          "--full-data-models", "1", "--out", out, "--quiet", "--overwrite"] + flags)
    with open(os.path.join(out, "metrics.json")) as f:
        m = json.load(f)
    res = {**row, "flags": flags, "cpu_seconds": time.process_time() - t0,
           "result": m["result"], "random_subset": m["baselines"]["random_subset"],
           "full_data": m["baselines"]["full_data"], "images_per_class": m["images_per_class"],
           "storage": m["storage"]}
    if "alt_results" in m:
        res["hard_labels"] = m["alt_results"]["hard labels"]
    if "sre2l" in m:
        res["diversity"] = m["sre2l"]["diversity"]
    return res


def _extra(p):
    p.add_argument("--part", choices=("low-rank", "mim4dd", "sre2l", "all"), default="all")
    p.add_argument("--datasets", default="digits,fashion_mnist")
    p.add_argument("--plan", choices=("cpu", "full"), default="cpu")
    p.add_argument("--seeds", type=positive, default=3)
    p.add_argument("--n-models", type=positive, default=3)
    p.add_argument("--mim4dd-weight", type=float, default=0.1)
    p.add_argument("--keep", default=None, help="keep the run folders here")


def main(argv=None) -> int:
    args = parse_args("addons", __doc__.splitlines()[0], _extra, argv)
    if args.quick:
        args.seeds, args.n_models = 1, 1
    work = args.keep or tempfile.mkdtemp(prefix="jdd-addons-")
    experts: dict = {}
    rows = []
    for row in plan(args):
        rows.append(run_row(row, args, work, experts))
        r = rows[-1]
        print(f"{r['part']} {r['dataset']} {r['method']} ipc {r['ipc']} {r['variant']}: "
              f"{100 * r['result']['test_accuracy_mean']:.2f} %", flush=True)

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
    kept = []
    if os.path.exists(args.json) and not args.quick:
        with open(args.json) as f:
            old = json.load(f)
        done = {(r["part"], r["dataset"], r["method"], r["ipc"], r["variant"]) for r in rows}
        kept = [r for r in old.get("results", {}).get("rows", [])
                if (r["part"], r["dataset"], r["method"], r["ipc"], r["variant"]) not in done]
    path = args.json
    if args.quick and path.endswith("addons.json"):
        path = path[:-len(".json")] + "_quick.json"
    write_result(path, "addons", args.quick,
                 {"plan": args.plan, "seeds": args.seeds, "n_models": args.n_models,
                  "mim4dd_weight": args.mim4dd_weight}, {"rows": kept + rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
