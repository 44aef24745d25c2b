"""Memory of MTT's meta-gradient vs student steps N, for memory "unroll", "checkpoint", "tesla".

The meta-gradient is ``jax.grad`` of MTT's loss ``||theta_N - theta*_{t+M}||^2 / ||theta*_t -
theta*_{t+M}||^2`` (:func:`jdd.distill.mtt.match_loss`) with respect to the synthetic images and
the student learning rate, where ``theta_N`` is a student trained from ``theta*_t`` for N plain SGD
steps on the synthetic set with DSA augmentation of every minibatch (per-image parameters, as MTT).
It is jitted, lowered and compiled (never run); XLA's compiled memory analysis
(``jax.jit(f).lower(...).compile().memory_analysis()``) gives the temporary, argument and output
bytes, and their sum is reported as the total.

Setting (the brief's): ConvNet-D3 (width 128, instance norm) on 28x28x1 inputs (MNIST-shaped), IPC
10 with 10 classes (100 synthetic images), MTT's default ``batch_syn`` (the whole set every step),
N = 10 and 80.

* ``unroll``: reverse mode through the student's ``lax.scan``: the residuals (activations) of every
  step are stored, so memory grows ~linearly with N;
* ``checkpoint``: ``jax.checkpoint`` per student step: only the carry (the P parameters) of every
  step is stored and one step's activations are recomputed at a time;
* ``tesla``: TESLA's two passes (a custom VJP that re-runs the student forward and accumulates each
  step's contribution): nothing per step is stored.

Target: tesla at N = 80 needs <= 1.5x its memory at N = 10.

Usage: python benchmarks/mtt_memory.py [--quick] [--json PATH]
"""

from __future__ import annotations

import time

import _common  # noqa: F401
from _common import parse_args, table, write_result

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jdd.augment import default_strategy, dsa  # noqa: E402
from jdd.distill.mtt import MEMORY, match_loss  # noqa: E402
from jdd.experts import param_layout  # noqa: E402
from jdd.models import make_model  # noqa: E402

NAME = "mtt_memory"


def memory_of(model, shape, m: int, k: int, steps: int, memory: str, augment) -> dict:
    """Compiled memory analysis of d loss / d (x_syn, syn_lr) for one (start, target) pair."""
    P = param_layout(model, shape).num_params

    def meta_grad(start, target, x, y, lr, key):
        f = lambda x, lr: match_loss(model, start, target, x, y, lr, key,  # noqa: E731
                                     syn_steps=steps, memory=memory, augment=augment)[0]
        return jax.grad(f, argnums=(0, 1))(x, lr)

    args = (jax.ShapeDtypeStruct((P,), jnp.float32), jax.ShapeDtypeStruct((P,), jnp.float32),
            jax.ShapeDtypeStruct((m,) + tuple(shape), jnp.float32),
            jax.ShapeDtypeStruct((m, k), jnp.float32), jax.ShapeDtypeStruct((), jnp.float32),
            jax.random.key(0))
    t0 = time.perf_counter()
    compiled = jax.jit(meta_grad).lower(*args).compile()
    seconds = time.perf_counter() - t0
    ma = compiled.memory_analysis()
    temp, arg, out = (int(ma.temp_size_in_bytes), int(ma.argument_size_in_bytes),
                      int(ma.output_size_in_bytes))
    return {"temp_bytes": temp, "argument_bytes": arg, "output_bytes": out,
            "total_bytes": temp + arg + out, "num_params": P, "compile_seconds": seconds}


def main(argv=None) -> dict:
    args = parse_args(NAME, __doc__.splitlines()[0], argv=argv)
    if args.quick:
        width, shape, ipc, steps = 16, (8, 8, 1), 2, (4, 16)
    else:
        width, shape, ipc, steps = 128, (28, 28, 1), 10, (10, 80)
    k = 10
    model = make_model("convnet", k, width=width, depth=3, norm="instance")
    augment = dsa(default_strategy("mnist"), mode="single", siamese=False)
    results, rows = {}, []
    for memory in MEMORY:
        per = {}
        for n in steps:
            r = memory_of(model, shape, ipc * k, k, n, memory, augment)
            per[str(n)] = r
            print(f"{memory:<10} N={n:<3} total {r['total_bytes'] / 2**20:9.1f} MiB "
                  f"(temp {r['temp_bytes'] / 2**20:.1f}, compile {r['compile_seconds']:.1f} s)",
                  flush=True)
        lo, hi = per[str(steps[0])], per[str(steps[1])]
        ratio = hi["total_bytes"] / lo["total_bytes"]
        per["ratio_total"] = ratio
        per["ratio_temp"] = hi["temp_bytes"] / max(lo["temp_bytes"], 1)
        results[memory] = per
        rows.append([memory, lo["total_bytes"] / 2**20, hi["total_bytes"] / 2**20,
                     lo["temp_bytes"] / 2**20, hi["temp_bytes"] / 2**20, f"{ratio:.2f}x"])
    passed = results["tesla"]["ratio_total"] <= 1.5
    print()
    print(table(["memory", f"total N={steps[0]} (MiB)", f"total N={steps[1]} (MiB)",
                 f"temp N={steps[0]}", f"temp N={steps[1]}", f"N={steps[1]} / N={steps[0]}"],
                rows, title=f"MTT meta-gradient memory: ConvNet-D3 width {width}, inputs {shape}, "
                            f"IPC {ipc} x {k} classes, batch_syn = all, DSA per step"))
    print(f"\ntarget: tesla N={steps[1]} <= 1.5x N={steps[0]}: "
          f"{results['tesla']['ratio_total']:.2f}x -> {'PASS' if passed else 'FAIL'}")
    settings = {"model": model.name, "input_shape": list(shape), "ipc": ipc, "num_classes": k,
                "batch_syn": ipc * k, "steps": list(steps), "augment": "dsa " + default_strategy(
                    "mnist") + " (per image)", "gradient": "d loss / d (x_syn, syn_lr)",
                "total": "temp + argument + output bytes of the compiled program"}
    write_result(args.json, NAME, args.quick, settings, results,
                 target={"tesla_ratio_max": 1.5, "passed": passed})
    return results


if __name__ == "__main__":
    main()
