"""Interoperability and comparable numbers on digits (issue 11): export / import round trips for
every method, sets written by an independent numpy-only script in every format, and DD-Ranking's
robust scores for unrolled, KIP, DC, DM and MTT at IPC 1 and 10 in one table.

For every (method, IPC) of the plan:

1. ``jdd distill`` (the plan's steps; ``--seeds`` seeds; no evaluation) into a run folder, then
   ``jdd evaluate RUN --robust``: the set and both baselines under the method's own learner, and
   the robust scores' extra arms (hard labels; the set and the random subset with the
   augmentation switched);
2. ``jdd export`` seed 0 in every format (safetensors, npz, png; pt when torch is installed),
   ``jdd import`` each, and ``jdd evaluate`` the imported run (same key, no baselines): its
   accuracies against the original seed-0 models' (identical for the exact formats; PNG rounds
   to 8 bits);
3. (IPC 10) the seed-0 set written by :func:`independent_files` (numpy, zlib and zipfile only:
   no jdd, no torch, no safetensors, no Pillow) as .npz, .safetensors, .pt (torch's zip layout,
   pickle opcodes written by hand) and a PNG folder, with hard labels, imported with the run's
   recipe (``--recipe-from``) and evaluated the same way: every format against the npz.

Usage::

    python benchmarks/interop.py --quick           # tiny steps, 2 methods (minutes)
    python benchmarks/interop.py                   # the plan below (hours on a 2-core CPU)
    python benchmarks/interop.py --only dc:1,dm    # some rows; rows of earlier runs are kept
    python benchmarks/interop.py --plan cpu        # fewer DC / DM / MTT steps (a 2-core budget)
    python benchmarks/interop.py --keep DIR --reuse  # rows whose kept run is already scored

Writes results/interop.json (and the report of every run: results/interop_report.md / .png).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
import tempfile
import time
import zipfile
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import RESULTS, earlier_rows, parse_args, positive, table, write_result  # noqa: E402

#: (method, ipc, jdd distill flags). Steps: the matching benchmark's digits plan (DC, DM, MTT)
#: and the defaults (unrolled, KIP); MTT trains its experts once per benchmark run.
PLAN = [
    ("unrolled", 1, []), ("unrolled", 10, []),
    ("kip", 1, []), ("kip", 10, []),
    ("dc", 1, ["--iterations", "200"]), ("dc", 10, ["--iterations", "100"]),
    ("dm", 1, ["--steps", "2000"]), ("dm", 10, ["--steps", "1000"]),
    ("mtt", 1, ["--steps", "500"]), ("mtt", 10, ["--steps", "500"]),
]
#: ``--plan cpu``: what fits one session of a 2-core CPU. DM with the step counts of the matching
#: benchmark's Fashion-MNIST CPU plan (500 at IPC 1, 300 at IPC 10); DC IPC 10 at 20 of the
#: official 100 iterations (each is 10 outer x 50 inner steps: the 100 took over two CPU hours
#: here); MTT at 300 / 200 steps. Evaluation is each method's full protocol either way.
PLAN_CPU = [(m, i, {("dm", 1): ["--steps", "500"], ("dm", 10): ["--steps", "300"],
                    ("dc", 10): ["--iterations", "20"], ("mtt", 1): ["--steps", "300"],
                    ("mtt", 10): ["--steps", "200"]}.get((m, i), f))
            for m, i, f in PLAN]
QUICK = [("unrolled", 10, ["--steps", "3", "--inner-steps", "3", "--hidden", "16"]),
         ("dm", 10, ["--steps", "3", "--eval-epochs", "3", "--full-data-epochs", "1"])]


# ----------------------------------------------------------------------------- independent files
# A stand-in for "another tool": numpy, zlib, struct and zipfile only.

def _png(image_u8: np.ndarray) -> bytes:
    """An 8-bit grey (h, w) or RGB (h, w, 3) PNG, chunk by chunk."""
    h, w = image_u8.shape[:2]
    colour = 0 if image_u8.ndim == 2 else 2
    raw = b"".join(b"\x00" + image_u8[r].tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data +
                struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _safetensors(tensors: dict) -> bytes:
    codes = {"float32": "F32", "int64": "I64"}
    header, blobs, offset = {}, [], 0
    for name, a in tensors.items():
        data = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": codes[a.dtype.name], "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def _pt(tensors: dict) -> bytes:
    """torch.save's zip layout for a dict of contiguous tensors, the pickle written opcode by
    opcode (protocol 2): {name: torch._utils._rebuild_tensor_v2(storage, 0, size, stride,
    False, OrderedDict())}, storages as persistent ids ('storage', torch.XStorage, key, 'cpu',
    numel)."""
    storage = {"float32": "FloatStorage", "int64": "LongStorage"}

    def s(text: str) -> bytes:
        b = text.encode()
        return b"X" + struct.pack("<I", len(b)) + b

    def i(v: int) -> bytes:
        return b"J" + struct.pack("<i", v)

    def tup(items) -> bytes:
        return b"(" + b"".join(items) + b"t"

    out = [b"\x80\x02}("]
    files = {}
    for key, (name, a) in enumerate(tensors.items()):
        a = np.ascontiguousarray(a)
        strides = [st // a.itemsize for st in a.strides]
        pid = tup([s("storage"), b"ctorch\n" + storage[a.dtype.name].encode() + b"\n",
                   s(str(key)), s("cpu"), i(a.size)]) + b"Q"
        args = tup([pid, i(0), tup([i(n) for n in a.shape]), tup([i(v) for v in strides]),
                    b"\x89", b"ccollections\nOrderedDict\n)R"])
        out.append(s(name) + b"ctorch._utils\n_rebuild_tensor_v2\n" + args + b"R")
        files[f"archive/data/{key}"] = a.astype(a.dtype.newbyteorder("<")).tobytes()
    out.append(b"u.")
    buf = __import__("io").BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", b"".join(out))
        z.writestr("archive/byteorder", b"little")
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr("archive/version", b"3\n")
    return buf.getvalue()


def independent_files(folder: str, images_nchw: np.ndarray, labels: np.ndarray) -> dict:
    """Write one set (float32 (m, c, h, w) pixels in [0, 1]-ish, int64 labels) in every format.

    Returns:
        format -> path.
    """
    os.makedirs(folder, exist_ok=True)
    tensors = {"images": images_nchw.astype(np.float32), "labels": labels.astype(np.int64)}
    paths = {"npz": os.path.join(folder, "set.npz"),
             "safetensors": os.path.join(folder, "set.safetensors"),
             "pt": os.path.join(folder, "set.pt"), "png": os.path.join(folder, "pngs")}
    np.savez(paths["npz"], **tensors)
    with open(paths["safetensors"], "wb") as f:
        f.write(_safetensors(tensors))
    with open(paths["pt"], "wb") as f:
        f.write(_pt(tensors))
    hwc = np.transpose(images_nchw, (0, 2, 3, 1))
    u8 = np.clip(np.rint(hwc * 255), 0, 255).astype(np.uint8)
    count: dict = {}
    for img, c in zip(u8, labels.tolist()):
        d = os.path.join(paths["png"], f"{c:02d}")
        os.makedirs(d, exist_ok=True)
        j = count[c] = count.get(c, -1) + 1
        with open(os.path.join(d, f"{j:03d}.png"), "wb") as f:
            f.write(_png(img[..., 0] if img.shape[-1] == 1 else img))
    return paths


# ----------------------------------------------------------------------------- the benchmark

def _jdd(argv: list[str]) -> None:
    from jdd.cli import main as jdd_main
    rc = jdd_main(argv)
    if rc != 0:
        raise SystemExit(f"jdd {' '.join(argv)} failed ({rc})")


def _eval_json(run: str) -> dict:
    names = sorted(n for n in os.listdir(run) if n.startswith("eval-"))
    with open(os.path.join(run, names[0])) as f:
        return json.load(f)


def _scored_run(run: str, flags: list[str], args) -> str | None:
    """The run id of a kept run folder that this row can use as it is: distilled with the row's
    seeds and steps and already scored with ``--robust`` and this benchmark's evaluation sizes;
    None otherwise (the row is distilled again)."""
    try:
        with open(os.path.join(run, "metrics.json")) as f:
            m = json.load(f)
        e = _eval_json(run)
    except (OSError, ValueError, IndexError):
        return None
    # --steps is the run's step count; --iterations (DC / DSA) is its config's outer iterations
    counts = {"--steps": m.get("steps"), "--iterations": m.get("config", {}).get("iterations")}
    same_length = all(counts[k] == int(v) for k, v in zip(flags, flags[1:]) if k in counts)
    ok = (m.get("seeds") == args.seeds and e.get("robust") is not None and same_length
          and len(e["result"]["accuracies"]) == args.seeds * args.n_models
          and e["baselines"]["full_data"]["n_models"] == args.full_data_models)
    return m.get("run_id") if ok else None


def _scored_import(imported: str, run_id: str, n_models: int) -> bool:
    """With ``--reuse``: the kept imported run holds a set taken from run ``run_id`` (a jdd export
    of it, or the independent files scored with its recipe, as its ``import.json`` records) and
    is already scored with ``n_models`` models."""
    try:
        with open(os.path.join(imported, "import.json")) as f:
            info = json.load(f)
        accs = _eval_json(imported)["result"]["accuracies"]
    except (OSError, ValueError, IndexError, KeyError):
        return False
    source = (info.get("exported_by_jdd") or {}).get("run_id")
    return len(accs) == n_models and (
        source == run_id or str(info.get("protocol", "")).startswith(f"as run {run_id} "))


def _seed0(accs: list, n_models: int) -> list:
    return accs[:n_models]


def run_row(work: str, method: str, ipc: int, flags: list[str], args, experts: str | None,
            quick: bool) -> dict:
    """Distil, evaluate with --robust, round-trip every format, import the independent files."""
    import importlib.util
    run = os.path.join(work, f"{method}{ipc}")
    key_flags = ["--n-models", str(args.n_models), "--seed", "7", "--quiet"]
    reused = _scored_run(run, flags, args) if args.reuse else None
    if reused is None:
        t0 = time.process_time()
        extra = ["--buffer", experts] if method == "mtt" else []
        _jdd(["distill", "--method", method, "--ipc", str(ipc), "--seeds", str(args.seeds),
              "--no-eval", "--out", run, "--quiet", "--overwrite"] + flags + extra)
        distill_cpu = time.process_time() - t0
        _jdd(["evaluate", run, "--robust", "--full-data-models", str(args.full_data_models)]
             + key_flags)
    else:
        distill_cpu = None
        print(f"{method} ipc {ipc}: reusing the scored run {reused}", flush=True)
    e = _eval_json(run)
    row = {"method": method, "ipc": ipc, "flags": flags, "distill_cpu_seconds": distill_cpu,
           "reused_run": reused,
           "result": e["result"], "random_subset": e["baselines"]["random_subset"],
           "full_data": e["baselines"]["full_data"], "robust": e["robust"],
           "storage": e["storage"], "round_trip": {}, "independent": {}}
    reference = _seed0(e["result"]["accuracies"], args.n_models)
    formats = ["safetensors", "npz", "png"] + (
        ["pt"] if importlib.util.find_spec("torch") is not None else [])
    for fmt in formats:
        imp = os.path.join(work, f"{method}{ipc}-imported-{fmt}")
        if not (reused and _scored_import(imp, reused, args.n_models)):
            _jdd(["export", run, "--format", fmt, "--seed", "0", "--quiet", "--overwrite"])
            src = os.path.join(run, f"export-{fmt}",
                               "seed0" + ("" if fmt == "png" else f".{fmt}"))
            _jdd(["import", src, "--dataset", "digits", "--out", imp, "--quiet", "--overwrite"])
            _jdd(["evaluate", imp, "--no-baselines"] + key_flags)
        accs = _eval_json(imp)["result"]["accuracies"]
        row["round_trip"][fmt] = {"accuracies": accs, "identical": accs == reference,
                                  "max_abs_diff": float(np.max(np.abs(np.subtract(accs,
                                                                                  reference))))}
    row["round_trip"]["reference_accuracies"] = reference
    if ipc == 10 or quick:
        if not os.path.exists(os.path.join(run, "export-npz", "seed0.npz")):
            _jdd(["export", run, "--format", "npz", "--seed", "0", "--quiet", "--overwrite"])
        data = np.load(os.path.join(run, "export-npz", "seed0.npz"))
        paths = independent_files(os.path.join(work, f"{method}{ipc}-independent"),
                                  data["images"], data["labels"])
        # the other tool knows its set is in pixel space: a noise-initialised set (DC)
        # overshoots jdd import's default [-1, 2] check, so it names its range
        span = ["--pixel-range", str(min(-1.0, float(np.floor(data["images"].min())))),
                str(max(2.0, float(np.ceil(data["images"].max()))))]
        for fmt, path in paths.items():
            imp = os.path.join(work, f"{method}{ipc}-independent-{fmt}")
            if not (reused and _scored_import(imp, reused, args.n_models)):
                # the independent files carry hard labels and no recipe: scored as the run was
                _jdd(["import", path, "--dataset", "digits", "--out", imp, "--quiet",
                      "--overwrite", "--recipe-from", run] + span)
                _jdd(["evaluate", imp, "--no-baselines"] + key_flags)
            row["independent"][fmt] = {"accuracies": _eval_json(imp)["result"]["accuracies"]}
        base = row["independent"]["npz"]["accuracies"]
        for fmt in paths:
            row["independent"][fmt]["same_as_npz"] = row["independent"][fmt]["accuracies"] == base
    return row


def _write(path: str, args, rows: list) -> None:
    """The JSON: this invocation's rows, and the rows of earlier runs that it did not redo."""
    kept = earlier_rows(path, rows, lambda r: (r["method"], r["ipc"]))
    order = {(m, i): n for n, (m, i, _) in enumerate(PLAN)}
    every = sorted(kept + rows, key=lambda r: order.get((r["method"], r["ipc"]), 99))
    write_result(path, "interop", args.quick,
                 {"seeds": args.seeds, "n_models": args.n_models,
                  "full_data_models": args.full_data_models,
                  # each row's own flags (rows kept from earlier invocations included)
                  "plan": [[r["method"], r["ipc"], r["flags"]] for r in every]},
                 {"rows": every})


def _extra(p):
    p.add_argument("--plan", choices=("full", "cpu"), default="full",
                   help="full: the matching benchmark's digits steps; cpu: DM shortened (below)")
    p.add_argument("--only", default=None, help="rows: method or method:ipc, comma-separated")
    p.add_argument("--seeds", type=positive, default=2)
    p.add_argument("--n-models", type=positive, default=3)
    p.add_argument("--full-data-models", type=positive, default=1)
    p.add_argument("--keep", default=None, help="keep the run folders here")
    p.add_argument("--reuse", action="store_true",
                   help="with --keep: a row whose kept run has the row's seeds and steps and is "
                        "already scored (--robust) is not distilled or scored again")


def main(argv=None) -> int:
    args = parse_args("interop", __doc__.splitlines()[0], _extra, argv)
    plan = QUICK if args.quick else (PLAN_CPU if args.plan == "cpu" else PLAN)
    if args.only:
        keep = set(args.only.split(","))
        plan = [p for p in plan if p[0] in keep or f"{p[0]}:{p[1]}" in keep]
    if args.quick:
        args.seeds, args.n_models = 1, 2
    work = args.keep or tempfile.mkdtemp(prefix="jdd-interop-")
    experts = None
    if any(p[0] == "mtt" for p in plan):
        experts = os.path.join(work, "experts")
        _jdd(["experts", "--dataset", "digits", "--out", experts, "--quiet"])
    path = args.json if not args.quick or args.json != os.path.join(RESULTS, "interop.json") \
        else os.path.join(RESULTS, "interop_quick.json")
    rows = []
    for method, ipc, flags in plan:
        t = time.perf_counter()
        rows.append(run_row(work, method, ipc, flags, args, experts, args.quick))
        rows[-1]["wall_seconds"] = time.perf_counter() - t
        print(f"{method} ipc {ipc}: done in {rows[-1]['wall_seconds']:.0f} s", flush=True)
        _write(path, args, rows)          # after every row: an interrupted run keeps them

    def pct(r):
        return f"{100 * r['test_accuracy_mean']:.1f} +- {100 * r['test_accuracy_std']:.1f}"
    print(table(["method", "ipc", "distilled", "random", "full", "LRS", "HLR", "IOR", "ARS",
                 "bytes", "round trip identical", "independent = npz"],
                [[r["method"], r["ipc"], pct(r["result"]), pct(r["random_subset"]),
                  pct(r["full_data"]), f"{r['robust']['lrs']['lrs']:.3f}",
                  f"{100 * r['robust']['lrs']['hlr']:.1f}",
                  f"{100 * r['robust']['lrs']['ior']:.1f}",
                  f"{r['robust']['ars']['ars']:.3f}" if r["robust"].get("ars") else "-",
                  r["storage"]["total_bytes"],
                  ", ".join(f for f, v in r["round_trip"].items()
                            if isinstance(v, dict) and v["identical"]) or "none",
                  ", ".join(f for f, v in r["independent"].items() if v["same_as_npz"]) or "-"]
                 for r in rows], title="digits: robust scores and round trips"))
    from jdd.report import ReportConfig, report
    # every row's run in the folder (with --keep: earlier invocations' rows too)
    runs = [r for r in (os.path.join(work, f"{m}{i}") for m, i, _ in PLAN)
            if os.path.exists(os.path.join(r, "metrics.json"))]
    if not args.quick:
        report(runs, ReportConfig(out=os.path.join(RESULTS, "interop_report"),
                                  title="digits: jdd methods (benchmarks/interop.py)"))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
