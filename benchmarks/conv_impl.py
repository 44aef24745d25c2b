"""Convolution implementations on CPU: XLA's native convolution against jdd.conv's matrix form.

For each workload (one DC outer step, one DSA step, one DM step at IPC 1 on digits with
ConvNet-D3 width 128, and one evaluation-training step of 5 vmapped ConvNets), the same jitted
computation is compiled twice, once with every ``nn.Conv`` using ``lax.conv_general_dilated`` and
once with :func:`jdd.conv.conv_matmul`, and timed in the same process: CPU seconds per step
(``time.process_time`` over warm repetitions; CPU seconds, not wall time, because the machine is
shared) and CPU seconds to compile. The ratio is what ``conv="auto"`` buys on a CPU.

Usage::

    python benchmarks/conv_impl.py            # writes results/conv_impl.json
    python benchmarks/conv_impl.py --quick    # width 16, 2 repetitions
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import parse_args, table, write_result  # noqa: E402


def _workloads(width: int):
    """name -> (build() -> (fn, args)); each fn is one jitted step."""
    import jax
    import optax
    from jdd import methods
    from jdd.cli import parse_distill
    from jdd.data import load_dataset, preprocess
    from jdd.distill.core import _compiled_chunk
    from jdd.models import make_model
    from jdd.train import loss_fn

    train, test = load_dataset("digits")
    train, _, _ = preprocess(train, test, "standardize")

    def method_step(name):
        def build():
            _, _, cfg = parse_distill(["--method", name, "--dataset", "digits", "--ipc", "1",
                                       "--width", str(width), "--out", "/tmp/unused"])
            spec = methods.RunSpec(ipc=1, steps=10, seeds=1, dataset="digits",
                                   num_classes=train.num_classes,
                                   feature_shape=train.feature_shape, n_train=train.n)
            d = methods.get(name).build(cfg, spec).distiller
            run = _compiled_chunk(d, 1, False)
            key = jax.random.key(0)
            state = jax.jit(d.init)(key, train)
            return (lambda s: run(s, key, train)[0]), state
        return build

    def eval_step():
        model = make_model("convnet", train.num_classes, width=width)
        tx = optax.sgd(0.01, momentum=0.9)
        ce = loss_fn("ce")
        x, y = train.x[:256], jax.nn.one_hot(train.y[:256], train.num_classes)

        def one(p, o):
            g = jax.grad(lambda p: ce(model.apply(p, x), y))(p)
            u, o = tx.update(g, o, p)
            return optax.apply_updates(p, u), o

        step = jax.vmap(one)
        params = jax.vmap(lambda k: model.init(k, x[:1]))(jax.random.split(jax.random.key(0), 5))
        state = (params, jax.vmap(tx.init)(params))
        return (lambda s: step(*s)), state

    return {"dc step (ipc 1)": method_step("dc"), "dsa step (ipc 1)": method_step("dsa"),
            "dm step (ipc 1)": method_step("dm"),
            "eval: 5 vmapped ConvNets, batch 256": eval_step}


def _time(build, reps: int) -> dict:
    import jax
    fn, state = build()
    f = jax.jit(fn)
    t0 = time.process_time()
    state = f(state)
    jax.block_until_ready(state)
    compile_cpu = time.process_time() - t0
    t0 = time.process_time()
    for _ in range(reps):
        state = f(state)
    jax.block_until_ready(state)
    return {"cpu_s_per_step": (time.process_time() - t0) / reps, "first_call_cpu_s": compile_cpu}


def main(argv=None) -> int:
    args = parse_args("conv_impl", __doc__.splitlines()[0], argv=argv)
    import jax
    import jdd.models
    from jdd.conv import conv_fn
    if jax.default_backend() != "cpu":
        print("note: this benchmark is about the CPU backend; running it on", jax.default_backend())
    width, reps = (16, 2) if args.quick else (128, 5)
    rows, results = [], []
    original = jdd.models.conv_fn
    try:
        for name, build in _workloads(width).items():
            res = {}
            for impl in ("xla", "matmul"):
                jdd.models.conv_fn = lambda _impl, impl=impl: conv_fn(impl)   # every nn.Conv
                jax.clear_caches()
                res[impl] = _time(build, reps)
            ratio = res["xla"]["cpu_s_per_step"] / res["matmul"]["cpu_s_per_step"]
            results.append({"workload": name, **res, "speedup": ratio})
            rows.append([name, f"{res['xla']['cpu_s_per_step']:.3f}",
                         f"{res['matmul']['cpu_s_per_step']:.3f}", f"{ratio:.1f}x",
                         f"{res['xla']['first_call_cpu_s']:.0f}",
                         f"{res['matmul']['first_call_cpu_s']:.0f}"])
            print(table(["workload", "xla CPU s", "matmul CPU s", "speedup", "xla 1st call",
                         "matmul 1st call"], rows[-1:]), flush=True)
    finally:
        jdd.models.conv_fn = original
    print()
    print(table(["workload", "xla CPU s/step", "matmul CPU s/step", "speedup",
                 "xla compile CPU s", "matmul compile CPU s"], rows,
                title=f"ConvNet-D3 width {width} on digits (8x8), CPU seconds"))
    write_result(args.json, "conv_impl", args.quick, {"width": width, "reps": reps},
                 {"rows": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
