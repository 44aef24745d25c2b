"""KIP end to end against the original KIP (issue 10, part 5): steps per CPU second of jdd's
public run loop, of its bare jitted step, and of the original KIP's loop on neural-tangents.

Settings (the issue's): digits (standardised per channel, all 1347 training images, 64 inputs),
the FC ReLU NTK of depth 2 (W_std sqrt 2, b_std 0.1: the KIP notebook's network), 100 support
points (IPC 10) with learned labels, target batches of 1000 drawn without replacement each
step, ridge 1e-6 tr(K_ss)/m, Adam 0.01, float32, the same initial support set on both sides.

Rows, alternated round by round (``--rounds``) so that both sides see the same machine load;
the medians are reported:

* **jdd run loop**: ``jdd.distill.distill(kip(...), key, train, steps)`` (the public loop:
  jitted ``lax.scan`` chunks of ``log_every`` steps, the batch drawn on the device), warm;
* **jdd bare step**: ``jax.jit(distiller.step)`` called from a Python loop, warm;
* **jdd run loop, Cholesky-autodiff solve**: the run loop with the KRR solve written as
  ``cho_solve(cho_factor(K), y)`` differentiated by JAX, which is what jdd did before this
  benchmark (kept here as the "before" row);
* **original KIP** (``--nt-python``): :mod:`kip_original_nt` in a neural-tangents 0.6.5 / jax 0.4.28
  environment: neural-tangents' own kernel, one jitted update per step from a Python loop, the
  batch drawn on the host. How it was reproduced is in that script's docstring.

The profile (CPU ms per call, warm) that found the cause: the kernel's forward and VJP, the KRR
solve's gradient both ways, and the whole loss gradient both ways.

Targets: run loop >= 2x the original's steps per CPU second; run loop per step <= 1.2x the bare
step's. CPU seconds are process time (every thread of the measuring process).

Usage::

    python benchmarks/kip_speed.py --nt-python /tmp/ntenv/bin/python
    python benchmarks/kip_speed.py --quick          # small step counts, no original

Writes results/kip_speed.json.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.linalg import cho_factor, cho_solve

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import HERE, default_json, parse_args, positive, table, write_result  # noqa: E402

KERNEL = dict(depth=2, activation="relu", w_std=2.0 ** 0.5, b_std=0.1, kind="ntk")
IPC, BATCH, REG, LR = 10, 1000, 1e-6, 0.01


def _krr_solve_cholesky_autodiff(k_ss, y_s, reg=1e-6):
    """jdd's KRR solve before this benchmark: Cholesky factor and triangular solves, with the
    gradient derived by JAX through the factorisation."""
    from jdd.kernels.krr import regularize
    return cho_solve(cho_factor(regularize(k_ss, reg), lower=True), y_s)


def _cpu_ms(f, args, reps):
    jax.block_until_ready(f(*args))
    t = time.process_time()
    for _ in range(reps):
        r = f(*args)
    jax.block_until_ready(r)
    return 1e3 * (time.process_time() - t) / reps


def profile(reps: int) -> dict:
    """CPU ms per call of the KIP step's parts at the benchmark's sizes."""
    from jdd.kernels import fc_kernel
    from jdd.kernels.krr import krr_solve
    k = fc_kernel(**KERNEL)
    ks = jax.random.normal(jax.random.key(1), (IPC * 10, 64))
    kt = jax.random.normal(jax.random.key(0), (BATCH, 64))
    ys = jax.random.normal(jax.random.key(2), (IPC * 10, 10))
    yt = jax.random.normal(jax.random.key(3), (BATCH, 10))
    kss = k(ks, ks)

    def loss(solve):
        return lambda xs, y: jnp.mean((yt - k(kt, xs) @ solve(k(xs, xs), y, REG)) ** 2)

    def solve_grad(solve):
        return jax.grad(lambda a, y: jnp.sum(solve(a, y, REG)), argnums=(0, 1))

    parts = {
        "kernel K_ts forward": (jax.jit(lambda xs: k(kt, xs)), (ks,)),
        "kernel K_ts VJP": (jax.jit(jax.grad(lambda xs: jnp.sum(k(kt, xs)))), (ks,)),
        "KRR solve gradient, Cholesky autodiff (before)":
            (jax.jit(solve_grad(_krr_solve_cholesky_autodiff)), (kss, ys)),
        "KRR solve gradient, jdd krr_solve (custom linear solve)":
            (jax.jit(solve_grad(krr_solve)), (kss, ys)),
        "loss gradient, Cholesky autodiff (before)":
            (jax.jit(jax.grad(loss(_krr_solve_cholesky_autodiff), argnums=(0, 1))), (ks, ys)),
        "loss gradient, jdd krr_solve":
            (jax.jit(jax.grad(loss(krr_solve), argnums=(0, 1))), (ks, ys)),
    }
    return {name: _cpu_ms(f, a, reps) for name, (f, a) in parts.items()}


def _make():
    """A fresh KIP distiller at the benchmark's settings."""
    from jdd.distill import kip
    from jdd.kernels import fc_kernel
    return kip(fc_kernel(**KERNEL), ipc=IPC, batch_size=BATCH, reg=REG, optimizer=optax.adam(LR))


@contextlib.contextmanager
def _solve_in_kip(solve):
    """KIP's objective with ``solve`` in place of jdd's ``krr_solve`` while the block runs.

    The objective looks the solve up when it is traced, so the "before" row wraps every call
    that may trace (not only the first) and cannot silently measure the new solve.
    """
    kip_mod = importlib.import_module("jdd.distill.kip")   # the module (the package exports kip())
    saved = kip_mod.krr_solve
    kip_mod.krr_solve = solve
    try:
        yield
    finally:
        kip_mod.krr_solve = saved


def jdd_run_loop(d, key, train, steps: int) -> float:
    """Steps per CPU second of ``distill`` (warm: a first call compiles the chunk)."""
    from jdd.distill.core import distill
    distill(d, key, train, steps=steps, progress=False)
    t = time.process_time()
    res = distill(d, key, train, steps=steps, progress=False)
    jax.block_until_ready(res.state)
    return steps / (time.process_time() - t)


def jdd_bare(d, key, train, steps: int) -> float:
    """Steps per CPU second of the jitted step called from Python (warm)."""
    state = jax.jit(d.init)(key, train)
    step = jax.jit(d.step)
    keys = jax.random.split(key, steps + 1)
    s, _ = step(state, keys[-1], train)
    jax.block_until_ready(s)
    t = time.process_time()
    s = state
    for i in range(steps):
        s, _ = step(s, keys[i], train)
    jax.block_until_ready(s)
    return steps / (time.process_time() - t)


def original(nt_python: str, setup: str, steps: int) -> dict:
    out = subprocess.run([nt_python, os.path.join(HERE, "kip_original_nt.py"), "--data", setup,
                          "--steps", str(steps), "--batch", str(BATCH), "--lr", str(LR),
                          "--reg", str(REG), "--depth", str(KERNEL["depth"])],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _extra(p):
    p.add_argument("--nt-python", default=None,
                   help="python of a neural-tangents 0.6.5 / jax 0.4.28 environment (the "
                        "original KIP's row); none: that row is skipped")
    p.add_argument("--steps", type=positive, default=1000)
    p.add_argument("--rounds", type=positive, default=3)


def main(argv=None) -> int:
    args = parse_args("kip_speed", __doc__.splitlines()[0], _extra, argv)
    from jdd.data import load_digits
    from jdd.data.preprocess import fit_preprocessor
    steps = 50 if args.quick else args.steps
    rounds = 1 if args.quick else args.rounds
    train, _ = load_digits()
    prep = fit_preprocessor(np.asarray(train.x), "standardize")
    train = train.replace(x=jnp.asarray(prep.apply(np.asarray(train.x)), jnp.float32))
    key = jax.random.key(0)

    prof = profile(20 if args.quick else 200)
    new, old = _make(), _make()                 # two distillers: separately compiled programs

    setup = None
    if args.nt_python:
        state = jax.jit(new.init)(key, train)
        syn = new.synthetic(state)
        setup = os.path.join(tempfile.mkdtemp(prefix="jdd-kip-speed-"), "setup.npz")
        np.savez(setup, x_train=np.asarray(train.x).reshape(len(train.x), -1),
                 y_train=np.asarray(jax.nn.one_hot(train.y, 10), np.float32),
                 x_support=np.asarray(syn.x).reshape(len(syn.x), -1),
                 y_support=np.asarray(syn.y, np.float32))

    rows: dict = {"jdd run loop": [], "jdd bare step": [],
                  "jdd run loop, Cholesky-autodiff solve (before)": []}
    if setup:
        rows["original KIP (neural-tangents)"] = []
    nt_info = None
    for r in range(rounds):
        rows["jdd run loop"].append(jdd_run_loop(new, key, train, steps))
        rows["jdd bare step"].append(jdd_bare(new, key, train, steps))
        with _solve_in_kip(_krr_solve_cholesky_autodiff):
            rows["jdd run loop, Cholesky-autodiff solve (before)"].append(
                jdd_run_loop(old, key, train, steps))
        if setup:
            nt_info = original(args.nt_python, setup, steps)
            rows["original KIP (neural-tangents)"].append(nt_info["steps_per_cpu_s"])
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rows.items()),
              flush=True)
    med = {k: float(np.median(v)) for k, v in rows.items()}
    loop_over_bare = med["jdd bare step"] / med["jdd run loop"]
    vs_original = (med["jdd run loop"] / med["original KIP (neural-tangents)"]
                   if setup else None)
    print(table(["part", "CPU ms per call"], [[k, f"{v:.2f}"] for k, v in prof.items()],
                title="profile of one KIP step's parts (support 100, batch 1000, FC NTK depth 2)"))
    print(table(["loop", "steps per CPU s (median)", "all rounds"],
                [[k, f"{med[k]:.1f}", ", ".join(f"{x:.1f}" for x in v)] for k, v in rows.items()],
                title="KIP steps per CPU second"))
    print(f"run loop per step / bare step per step: {loop_over_bare:.2f} (target <= 1.2)")
    if vs_original is not None:
        print(f"jdd run loop / original KIP: {vs_original:.2f}x (target >= 2)")
    path = (default_json("kip_speed_quick") if args.quick and args.json == default_json("kip_speed")
            else args.json)
    write_result(path, "kip_speed", args.quick,
                 {"dataset": "digits (1347 train, standardised per channel)", "ipc": IPC,
                  "support": IPC * 10, "batch": BATCH, "kernel": KERNEL, "reg": REG, "lr": LR,
                  "learn_labels": True, "dtype": "float32", "steps": steps, "rounds": rounds},
                 {"profile_cpu_ms": prof, "steps_per_cpu_s": rows, "median": med,
                  "loop_over_bare_per_step": loop_over_bare,
                  "loop_over_bare_target": 1.2, "loop_over_bare_met": loop_over_bare <= 1.2,
                  "speedup_vs_original": vs_original, "speedup_target": 2.0,
                  "speedup_met": None if vs_original is None else vs_original >= 2.0,
                  "original": nt_info})
    return 0


if __name__ == "__main__":
    sys.exit(main())
