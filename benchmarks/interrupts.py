"""Interrupts and concurrent runs against one run folder (issue 12's bar).

Every trial starts ``jdd distill --overwrite`` into a folder that already holds a complete run,
and a second, identical command into the same folder a random moment later; one of the two (or a
third process) receives SIGINT, SIGTERM or SIGKILL at a random point of its run (start-up,
distillation, evaluation or writing). After both have ended the folder is checked:

* it holds exactly one run: ``manifest.json`` lists every file, each with its SHA-256, no other
  file is there, and ``metrics.json``, the set's metadata and the manifest name the same run id;
* that run is the previous one or one of the two new ones (never a mixture);
* no exit was a crash (a signal other than the one sent, or 134 / 139) and no stderr holds a
  Python traceback (SIGTERM during interpreter start-up, before jdd has installed its handler,
  ends the process by the default action: the shell's 143, nothing written);
* nothing is left beside the folder (staging folders, locks), except what a SIGKILLed run leaves,
  which the next trial's run must clean up (checked on that trial).

Usage::

    python benchmarks/interrupts.py [--trials 20] [--seed 0]
    python benchmarks/interrupts.py --quick          # 4 trials
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import parse_args, positive, table, write_result  # noqa: E402

#: A small run that passes through every phase in ~10-20 s on a 2-core CPU.
RUN = ["distill", "--method", "unrolled", "--ipc", "1", "--steps", "60", "--log-every", "10",
       "--inner-steps", "5", "--hidden", "32", "--n-models", "20", "--full-data-models", "2",
       "--full-data-epochs", "2", "--overwrite"]


def _jdd(out: str, err_path: str, seed: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jdd", *RUN, "--seed", str(seed), "--out", out],
                            stdout=subprocess.DEVNULL, stderr=open(err_path, "w"))


def check_folder(out: str) -> tuple[str | None, list[str]]:
    """(run id of the one run the folder holds, problems found)."""
    from jdd.artifacts import load_distilled
    from jdd.rundir import MANIFEST, sha256
    problems = []
    try:
        m = json.load(open(os.path.join(out, MANIFEST)))
    except (OSError, ValueError) as e:
        return None, [f"no readable manifest ({e})"]
    listed = set(m.get("files", {}))
    present = set(os.listdir(out)) - {MANIFEST}
    if listed != present:
        problems.append(f"files {sorted(present ^ listed)} not both listed and present")
    for name in listed & present:
        if sha256(os.path.join(out, name)) != m["files"][name]["sha256"]:
            problems.append(f"{name} is not the listed file")
    try:
        ids = {json.load(open(os.path.join(out, "metrics.json"))).get("run_id"),
               load_distilled(out).meta.get("run_id"), m.get("run_id")}
    except (OSError, ValueError) as e:
        return m.get("run_id"), problems + [f"unreadable run ({e})"]
    if len(ids) != 1:
        problems.append(f"run ids differ: {sorted(map(str, ids))}")
    return m.get("run_id"), problems


def main():
    def extra(p):
        p.add_argument("--trials", type=positive, default=20)
        p.add_argument("--seed", type=int, default=0)
    args = parse_args("interrupts", "SIGINT/SIGTERM/SIGKILL at random points and concurrent "
                      "runs against one run folder: never a mixed folder, a crash or a traceback",
                      extra)
    trials = 4 if args.quick else args.trials
    rng = random.Random(args.seed)
    work = tempfile.mkdtemp(prefix="jdd-interrupts-")
    out = os.path.join(work, "run")
    try:
        t0 = time.monotonic()
        p = _jdd(out, os.path.join(work, "first.err"), 0)
        if p.wait() != 0:
            raise SystemExit("the uninterrupted run failed: " + open(
                os.path.join(work, "first.err")).read()[-2000:])
        span = time.monotonic() - t0
        print(f"an uninterrupted run takes {span:.1f} s (wall); signals land in [0, {span:.0f}] s",
              flush=True)
        rows, records = [], []
        for t in range(trials):
            before, _ = check_folder(out)
            sig = rng.choice(["SIGINT", "SIGTERM", "SIGKILL"])
            delay = rng.uniform(0.0, span)
            lag = rng.uniform(0.0, 2.0)
            errs = [os.path.join(work, f"t{t}-{i}.err") for i in range(2)]
            a = _jdd(out, errs[0], 1000 + 2 * t)
            time.sleep(lag)
            b = _jdd(out, errs[1], 1001 + 2 * t)
            time.sleep(max(0.0, delay - lag))
            live = [proc for proc in (a, b) if proc.poll() is None]
            target = rng.choice(live) if live else None  # the refused one has usually exited
            if target is not None:
                target.send_signal(getattr(signal, sig))
            codes = [a.wait(), b.wait()]
            texts = [open(e).read() for e in errs]
            run_id, problems = check_folder(out)
            # a process the sent signal ended by its default action (SIGKILL always; SIGTERM
            # during interpreter start-up, before jdd installs its handler) is not a crash;
            # any other signal (SIGSEGV, SIGABRT, ...) or 139 is
            crash = [c for c, proc in zip(codes, (a, b))
                     if (c < 0 and not (proc is target and c == -getattr(signal, sig)))
                     or c in (134, 139)]
            tracebacks = sum("Traceback" in x for x in texts)
            refused = sum("being written by another run" in x for x in texts)
            parent = os.listdir(work)
            leftovers = [n for n in parent if n.startswith(".run.")]
            if leftovers and not (sig == "SIGKILL"):
                problems.append(f"left beside the folder: {leftovers}")
            outcome = "previous run kept" if run_id == before else "replaced by a new run"
            rec = {"trial": t, "signal": sig if target is not None else "none (both had ended)", "delay_s": round(delay, 2), "lag_s": round(lag, 2),
                   "exit_codes": codes, "refused_concurrent": refused, "crashes": crash,
                   "tracebacks": tracebacks, "problems": problems, "outcome": outcome,
                   "new_run": run_id != before}
            records.append(rec)
            rows.append([t, sig, f"{delay:.1f}", f"{codes[0]}/{codes[1]}", refused, outcome,
                         len(crash), tracebacks, "; ".join(problems) or "ok"])
            print(table(["trial", "signal", "at s", "exits", "refused", "folder", "crashes",
                         "tracebacks", "check"], rows[-1:]), flush=True)
            # leave the folder in a state the next trial starts from: a complete run
            if problems or run_id is None:
                shutil.rmtree(out, ignore_errors=True)
                p = _jdd(out, os.path.join(work, "repair.err"), 7)
                p.wait()
        bad = sum(bool(r["problems"] or r["crashes"] or r["tracebacks"]) for r in records)
        print()
        print(table(["trial", "signal", "at s", "exits", "refused", "folder", "crashes",
                     "tracebacks", "check"], rows,
                    title=f"{trials} trials: {bad} with a mixed folder, a crash or a traceback"))
        write_result(args.json, "interrupts", args.quick,
                     {"trials": trials, "seed": args.seed, "run": RUN,
                      "uninterrupted_wall_s": span},
                     {"trials": records, "bad_trials": bad})
        return 1 if bad else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
