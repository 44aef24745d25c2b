"""Seeds by vmap vs a Python loop over seeds (issue 2, target 2).

The same distillation (unrolled DD on digits, the CLI's standard recipe: MLP(128), inner Adam 20
steps, outer Adam 1e-2, real batch 256) for 8 seeds, two ways, in the same process, at IPC 1 and
IPC 10:

* vmapped: ONE ``jdd.distill.distill`` call given the 8 stacked keys;
* sequential: 8 ``distill`` calls, one key each (keys ``split(key(0), 8)[i]``, so both ways compute
  the same 8 runs; the script checks the synthetic sets agree after one step).

Two timings, each the wall clock of the ``distill`` calls (``RunResult.seconds`` summed):

* cold: compilation INCLUDED, what a user running either pays: the vmapped call compiles once,
  every sequential call traces and compiles its own jitted chunks (``distill`` builds them per
  call; XLA's in-process caches make the later compiles cheaper than the first).
* warm: compilation EXCLUDED. A warm-up of both variants fills JAX's persistent compilation cache
  (a temporary folder, every entry cached), then both are timed again: the compiled executables are
  loaded from the cache, so only tracing/lowering (small) and the actual steps are paid. The warm
  runs repeat ``repeats`` times, alternating, and the best of each is kept (the CPU is shared).

Reported: the ratio vmapped / sequential (target <= 0.5). What to expect: vmap removes per-seed
overhead (dispatch, small-kernel launch, one compile instead of 8) and lets the device work on 8
seeds' matrices at once. On an accelerator, or whenever one seed's step is too small to fill the
device (IPC 1 here), that is a large win; on a small shared CPU where one IPC-10 seed already keeps
the cores busy with matrix products, vmapping cannot cut the FLOPs and the ratio stays near 1.

Usage: python benchmarks/seeds_vmap.py [--quick] [--json PATH]
"""

from __future__ import annotations

import shutil
import tempfile

import _common  # noqa: F401
from _common import device_string, parse_args, table, write_result

import jax  # noqa: E402

import numpy as np  # noqa: E402
import optax  # noqa: E402

from jdd.data import load_digits, preprocess  # noqa: E402
from jdd.distill import distill  # noqa: E402
from jdd.distill.unrolled import unrolled  # noqa: E402
from jdd.models import make_model  # noqa: E402
from jdd.train import TrainConfig  # noqa: E402

NAME = "seeds_vmap"


def main(argv=None) -> int:
    a = parse_args(NAME, __doc__.split("\n")[0])
    s = dict(seeds=8, steps=100, log_every=50, ipcs=[1, 10], hidden=[128],
             preprocess="standardize", inner_steps=20, inner_optimizer="adam", inner_lr=0.01,
             outer_lr=1e-2, batch_size=256, repeats=2, seed=0)
    if a.quick:
        s.update(steps=30, log_every=30, ipcs=[1], repeats=1)
    cache = tempfile.mkdtemp(prefix="jdd-seeds-vmap-cache-")
    try:
        return run(a, s, cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def run(a, s, cache: str) -> int:
    train, test, _ = preprocess(*load_digits(), s["preprocess"])
    model = make_model("mlp", train.num_classes, hidden=tuple(s["hidden"]))
    keys = jax.random.split(jax.random.key(s["seed"]), s["seeds"])
    s["model"] = model.name
    dist = {ipc: unrolled(model, ipc=ipc,
                          inner=TrainConfig(steps=s["inner_steps"],
                                            optimizer=s["inner_optimizer"]),
                          optimizer=optax.adam(s["outer_lr"]), batch_size=s["batch_size"],
                          inner_lr=s["inner_lr"]) for ipc in s["ipcs"]}

    def vmapped(ipc, steps=None):
        r = distill(dist[ipc], keys, train, steps or s["steps"], log_every=s["log_every"],
                    progress=False)
        return r.seconds, r

    def sequential(ipc, steps=None, seeds=None):
        secs, rs = 0.0, []
        for i in range(seeds or s["seeds"]):
            r = distill(dist[ipc], keys[i], train, steps or s["steps"], log_every=s["log_every"],
                        progress=False)
            secs += r.seconds
            rs.append(r)
        return secs, rs

    results = {}
    # cold: no persistent cache configured yet; compilation inside every distill call
    for ipc in s["ipcs"]:
        cv, rv = vmapped(ipc)
        cs, rs = sequential(ipc)
        xv = np.asarray(rv.synthetic.x)
        xs = np.stack([np.asarray(r.synthetic.x) for r in rs])
        lv = np.asarray(rv.history["loss"])[:, -1]
        ls = np.array([np.asarray(r.history["loss"])[-1] for r in rs])
        # the same 8 runs: equal up to float rounding after one step; over many steps Adam's
        # normalised updates amplify rounding differences of (near-)zero gradient entries
        _, r1 = vmapped(ipc, steps=1)
        _, r1s = sequential(ipc, steps=1, seeds=2)
        one_step = max(float(np.max(np.abs(np.asarray(r1.synthetic.x[i])
                                           - np.asarray(r1s[i].synthetic.x)))) for i in range(2))
        results[f"ipc{ipc}"] = {
            "ipc": ipc,
            "cold": {"vmapped_s": cv, "sequential_s": cs, "ratio": cv / cs},
            "same_runs_check": {
                "max_abs_diff_x_after_1_step": one_step,
                "max_abs_diff_x_after_all_steps": float(np.max(np.abs(xv - xs))),
                "final_loss_vmapped": lv.tolist(), "final_loss_sequential": ls.tolist()}}
        print(f"ipc {ipc:2d} cold: vmapped {cv:6.1f} s, sequential {cs:6.1f} s; "
              f"|x diff| after 1 step {one_step:.1e}", flush=True)

    # warm: fill the persistent cache, then time again (alternating, best of `repeats`)
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    rows = []
    for ipc in s["ipcs"]:
        vmapped(ipc), sequential(ipc, seeds=1)
        wv, ws = [], []
        for _ in range(s["repeats"]):
            wv.append(vmapped(ipc)[0])
            ws.append(sequential(ipc)[0])
            print(f"ipc {ipc:2d} warm: vmapped {wv[-1]:6.1f} s, sequential {ws[-1]:6.1f} s",
                  flush=True)
        r = results[f"ipc{ipc}"]
        r["warm"] = {"vmapped_s": min(wv), "sequential_s": min(ws), "ratio": min(wv) / min(ws),
                     "vmapped_all_s": wv, "sequential_all_s": ws}
        r["meets_target"] = {k: bool(r[k]["ratio"] <= 0.5) for k in ("cold", "warm")}
        for k, label in (("cold", "compile included"), ("warm", "compile excluded")):
            rows.append((f"ipc {ipc}", label, f"{r[k]['vmapped_s']:.1f}",
                         f"{r[k]['sequential_s']:.1f}", f"{r[k]['ratio']:.2f}",
                         "yes" if r[k]["ratio"] <= 0.5 else "NO"))
    results["target_ratio"] = 0.5
    results["timing_notes"] = {
        "cold": "compilation included: the first vmapped call, and 8 sequential calls that each "
                "trace and compile (distill builds its jitted chunks per call)",
        "warm": "compilation excluded: compiled executables served from JAX's persistent "
                "compilation cache (tracing/lowering still paid); best of repeats, alternating"}
    print()
    print(table(["set", "timing", "vmapped (s)", "8 sequential (s)", "ratio", "<= 0.5"], rows,
                title=f"{s['seeds']} seeds x {s['steps']} outer steps, unrolled DD on digits, "
                      f"{model.name}, {device_string()}"))
    write_result(a.json, NAME, a.quick, s, results)
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
