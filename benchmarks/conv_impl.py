"""Convolution implementations on CPU: XLA's native convolution, jdd.conv's matrix form, and the
hybrid (native value, matrix-form derivatives) that ``conv="auto"`` uses on CPU.

For each workload (one DC outer step, one DSA step, one DM step at IPC 1 on digits with
ConvNet-D3 width 128, one evaluation-training step of 5 vmapped ConvNets, and the test-set
prediction of 3 vmapped ConvNets), the same jitted computation is compiled once per
implementation (every ``nn.Conv`` using it) and timed in the same process: CPU seconds per step
(``time.process_time`` over warm repetitions; CPU seconds, not wall time, because the machine is
shared) and CPU seconds of the first call (compilation). Ratios are against the matrix form.

Usage::

    python benchmarks/conv_impl.py                        # writes results/conv_impl.json
    python benchmarks/conv_impl.py --impls matmul,hybrid  # skip the (slow) native gradients
    python benchmarks/conv_impl.py --quick                # width 16, 2 repetitions
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

    def predict():
        model = make_model("convnet", train.num_classes, width=width)
        params = jax.vmap(lambda k: model.init(k, train.x[:1]))(
            jax.random.split(jax.random.key(0), 3))
        x = train.x

        def fn(state):  # the logits are an output: XLA cannot drop the forward pass
            p, _ = state
            return p, jax.vmap(lambda q: model.apply(q, x))(p)
        return fn, fn((params, None))

    return {"dc step (ipc 1)": method_step("dc"), "dsa step (ipc 1)": method_step("dsa"),
            "dm step (ipc 1)": method_step("dm"),
            "eval: 5 vmapped ConvNets, batch 256": eval_step,
            "predict: 3 vmapped ConvNets, 1347 images": predict}


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


IMPLS = ("xla", "matmul", "hybrid")


def _extra(p):
    p.add_argument("--impls", default=",".join(IMPLS),
                   help=f"comma-separated implementations to time (of {', '.join(IMPLS)}); "
                        "matmul is always included (the reference of the ratios)")


def main(argv=None) -> int:
    args = parse_args("conv_impl", __doc__.splitlines()[0], extra=_extra, argv=argv)
    impls = [i for i in IMPLS if i in set(args.impls.split(",")) | {"matmul"}]
    unknown = set(args.impls.split(",")) - set(IMPLS)
    if unknown:
        raise SystemExit(f"--impls: unknown {', '.join(sorted(unknown))}; expected some of "
                         f"{', '.join(IMPLS)}")
    import jax
    import jdd.models
    from jdd.conv import conv_fn
    if jax.default_backend() != "cpu":
        print("note: this benchmark is about the CPU backend; running it on", jax.default_backend())
    width, reps = (16, 2) if args.quick else (128, 5)
    rows, results = [], []
    header = (["workload"] + [f"{i} CPU s" for i in impls]
              + [f"{i} speed-up" for i in impls if i != "matmul"]
              + [f"{i} 1st call" for i in impls])
    original = jdd.models.conv_fn
    try:
        for name, build in _workloads(width).items():
            res = {}
            for impl in impls:
                jdd.models.conv_fn = lambda _impl, impl=impl: conv_fn(impl)   # every nn.Conv
                jax.clear_caches()
                res[impl] = _time(build, reps)
            base = res["matmul"]["cpu_s_per_step"]
            ratios = {i: base / res[i]["cpu_s_per_step"] for i in impls}
            results.append({"workload": name, **res, "speedup_vs_matmul": ratios})
            rows.append([name] + [f"{res[i]['cpu_s_per_step']:.3f}" for i in impls]
                        + [f"{ratios[i]:.2f}x" for i in impls if i != "matmul"]
                        + [f"{res[i]['first_call_cpu_s']:.0f}" for i in impls])
            print(table(header, rows[-1:]), flush=True)
    finally:
        jdd.models.conv_fn = original
    print()
    print(table(header, rows, title=f"ConvNet-D3 width {width} on digits (8x8), CPU seconds "
                                    "per step; speed-ups against the matrix form"))
    write_result(args.json, "conv_impl", args.quick,
                 {"width": width, "reps": reps, "impls": impls},
                 {"rows": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
