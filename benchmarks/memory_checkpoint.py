"""Memory of the meta-gradient vs inner steps, per memory strategy (issue 2, target 3).

The meta-gradient is ``jax.grad`` of the outer loss (cross-entropy on a batch of real data of a
network trained by ``jdd.train.init_and_fit`` on the synthetic set) with respect to the synthetic
inputs, the soft targets and the inner learning rate: exactly what unrolled DD differentiates. It
is jitted, lowered and compiled (never run), and XLA's compiled memory analysis
(``jax.jit(f).lower(...).compile().memory_analysis()``) gives ``temp_size_in_bytes``: the peak of
the temporary buffers, where the per-step residuals of the backward pass live.

For ``memory="unroll"``, ``"checkpoint"`` (``jax.checkpoint`` per inner step) and ``"truncated"``
(gradients through the last 10 steps) at 10 and 200 inner steps (inner Adam, full batch).

Target: checkpoint at 200 steps needs <= 3x the temp memory of 10 steps, for a learner whose
activations dominate its optimizer carry. Per-step checkpointing still stores the scan carry
(parameters + Adam moments) of every step, so its memory is ``fixed + steps x carry``; it is flat
only when one step's activations are much larger than the carry. Three learners show the regimes
(the first is the headline):

* ``convnet_cifar``: ConvNet-D3 (width 128, instance norm) on 32x32x3 inputs (CIFAR-shaped), IPC 10
  (100 synthetic images), real batch 256: activations dominate (the case checkpointing is for);
* ``convnet_digits``: ConvNet-D3 width 32 on the 8x8x1 digits, IPC 10;
* ``mlp_digits``: the MLP(128) on digits, IPC 10: the carry dominates (3 x 9.6k floats per step vs
  100 x 128 activations), so checkpointing only divides memory by a constant.

Also reported: the measured per-step increment ``(temp(200) - temp(10)) / 190`` next to the carry
size, which explains the checkpoint ratios. Compilation only, so the shapes are the real ones; the
data are zeros (memory does not depend on values).

Usage: python benchmarks/memory_checkpoint.py [--quick] [--json PATH]
"""

from __future__ import annotations

import time

import _common  # noqa: F401
from _common import parse_args, table, write_result

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jdd.distill import num_params  # noqa: E402
from jdd.models import make_model  # noqa: E402
from jdd.train import MEMORY, TrainConfig, init_and_fit, loss_fn  # noqa: E402

NAME = "memory_checkpoint"

LEARNERS = {
    "convnet_cifar": dict(model="convnet", kwargs=dict(width=128, depth=3, norm="instance"),
                          shape=(32, 32, 3)),
    "convnet_digits": dict(model="convnet", kwargs=dict(width=32, depth=3, norm="instance"),
                           shape=(8, 8, 1)),
    "mlp_digits": dict(model="mlp", kwargs=dict(hidden=(128,)), shape=(8, 8, 1)),
}


def memory_of(model, shape, n_syn: int, n_real: int, k: int, cfg: TrainConfig) -> dict:
    """Compiled memory analysis of the meta-gradient (d outer loss / d (x_syn, targets, lr))."""
    ce = loss_fn("ce")

    def outer(xs, ys, lr, key, xr, yr):
        params = init_and_fit(model, key, xs, ys, lr, cfg)
        return ce(model.apply(params, xr), yr)

    meta_grad = jax.jit(jax.grad(outer, argnums=(0, 1, 2)))
    args = (jnp.zeros((n_syn,) + shape), jnp.full((n_syn, k), 1.0 / k), jnp.float32(0.01),
            jax.random.key(0), jnp.zeros((n_real,) + shape), jnp.full((n_real, k), 1.0 / k))
    t0 = time.perf_counter()
    ma = meta_grad.lower(*args).compile().memory_analysis()
    return {"temp_bytes": int(ma.temp_size_in_bytes),
            "argument_bytes": int(ma.argument_size_in_bytes),
            "output_bytes": int(ma.output_size_in_bytes),
            "generated_code_bytes": int(ma.generated_code_size_in_bytes),
            "compile_seconds": time.perf_counter() - t0}


def main(argv=None) -> int:
    a = parse_args(NAME, __doc__.split("\n")[0])
    s = dict(steps=[10, 200], memories=list(MEMORY), truncate=10, ipc=10, num_classes=10,
             real_batch=256, inner_optimizer="adam", learners=list(LEARNERS),
             measure="temp_size_in_bytes of the compiled jax.grad(outer loss) w.r.t. "
                     "(synthetic x, targets, inner lr); compiled, not run")
    if a.quick:
        s["learners"] = ["convnet_cifar"]
    k = s["num_classes"]
    results, rows = {}, []
    for name in s["learners"]:
        spec = LEARNERS[name]
        model = make_model(spec["model"], k, **spec["kwargs"])
        n_params = num_params(model.init(jax.random.key(0), jnp.zeros((1,) + spec["shape"])))
        carry_bytes = 4 * 3 * n_params       # params + Adam's two moments, float32
        entry = {"model": model.name, "input_shape": list(spec["shape"]),
                 "synthetic_n": s["ipc"] * k, "params": n_params,
                 "carry_bytes_per_step": carry_bytes, "by_memory": {}}
        for mem in s["memories"]:
            m = {}
            for steps in s["steps"]:
                cfg = TrainConfig(steps=steps, optimizer=s["inner_optimizer"], memory=mem,
                                  truncate=s["truncate"])
                m[str(steps)] = memory_of(model, spec["shape"], s["ipc"] * k, s["real_batch"], k,
                                          cfg)
                print(f"{name:15s} {mem:10s} {steps:4d} steps: temp "
                      f"{m[str(steps)]['temp_bytes'] / 2**20:10.1f} MiB "
                      f"(compiled in {m[str(steps)]['compile_seconds']:.1f} s)", flush=True)
            lo, hi = m[str(s["steps"][0])]["temp_bytes"], m[str(s["steps"][-1])]["temp_bytes"]
            m["ratio"] = hi / lo
            m["bytes_per_extra_step"] = (hi - lo) / (s["steps"][-1] - s["steps"][0])
            entry["by_memory"][mem] = m
            rows.append((name, mem, f"{lo / 2**20:.1f}", f"{hi / 2**20:.1f}", f"{hi / lo:.2f}",
                         f"{m['bytes_per_extra_step'] / 2**10:.0f}",
                         f"{carry_bytes / 2**10:.0f}"))
        unroll_hi = entry["by_memory"]["unroll"][str(s["steps"][-1])]["temp_bytes"]
        ckpt = entry["by_memory"]["checkpoint"]
        entry["checkpoint_ratio"] = ckpt["ratio"]
        entry["checkpoint_meets_target"] = bool(ckpt["ratio"] <= 3.0)
        entry["unroll_over_checkpoint_at_200"] = unroll_hi / ckpt[str(s["steps"][-1])][
            "temp_bytes"]
        results[name] = entry
    results["headline"] = {"learner": s["learners"][0],
                           "checkpoint_ratio_200_vs_10":
                               results[s["learners"][0]]["checkpoint_ratio"],
                           "target": 3.0,
                           "meets_target": results[s["learners"][0]]["checkpoint_meets_target"]}
    print()
    print(table(["learner", "memory", "10 steps (MiB)", "200 steps (MiB)", "ratio 200/10",
                 "KiB per extra step", "carry KiB"], rows,
                title="XLA temp memory of the meta-gradient (compiled memory analysis)"))
    h = results["headline"]
    print(f"headline ({h['learner']}): checkpoint 200/10 = {h['checkpoint_ratio_200_vs_10']:.2f}"
          f" (target <= 3: {'yes' if h['meets_target'] else 'NO'})")
    write_result(a.json, NAME, a.quick, s, results)
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
