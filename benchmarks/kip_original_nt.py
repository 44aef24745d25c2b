"""The original KIP's training loop, re-implemented minimally on neural-tangents, for
``benchmarks/kip_speed.py`` (issue 10, part 5). Not part of jdd and never imported by it.

neural-tangents 0.6.5 (its last release) needs ``jax==0.4.28``, so this script runs in its own
environment::

    python3.11 -m venv /tmp/ntenv
    /tmp/ntenv/bin/pip install jax==0.4.28 jaxlib==0.4.28 neural-tangents==0.6.5 "numpy<2"
    /tmp/ntenv/bin/python benchmarks/kip_original_nt.py --data SETUP.npz --steps 1000

What it reproduces (the KIP paper, Nguyen, Chen & Lee, ICLR 2021, and the structure of its
public notebook; written here from that description, no code copied): the infinite-width kernel
is neural-tangents' own ``stax.serial(Dense, Relu) x depth + Dense`` ``kernel_fn(..., "ntk")``
(W_std = sqrt 2, b_std = 0.1, the notebook's FC network); the loss is
``mean (y_t - K_ts (K_ss + reg tr(K_ss)/m I)^-1 y_s)^2`` with a positive-definite solve; support
inputs and labels are both learned with ``jax.example_libraries.optimizers.adam``; one jitted
update per step, called from a Python loop, with the target batch drawn on the host with numpy
(sampling without replacement) and passed in, as the notebook does.

Input (``--data``, written by kip_speed.py): ``x_train`` (n, d) float32, ``y_train`` (n, k) float32
one-hot targets, ``x_support`` (m, d), ``y_support`` (m, k). Output: one JSON line with steps
per CPU second (process time, every thread of this process) and per wall second, timed after
``--warmup`` steps (compilation excluded), and the final loss.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    def ranged(kind, lo, strict=True):
        """An argparse type: ``kind`` greater than (``strict``) or at least ``lo``, finite."""
        def parse(text):
            v = kind(text)
            if not np.isfinite(v) or (v <= lo if strict else v < lo):
                raise argparse.ArgumentTypeError(
                    f"expected a finite {kind.__name__} {'>' if strict else '>='} {lo}; got {text}")
            return v
        return parse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--steps", type=ranged(int, 0), default=1000)
    p.add_argument("--warmup", type=ranged(int, 0), default=20)
    p.add_argument("--batch", type=ranged(int, 0), default=1000)
    p.add_argument("--depth", type=ranged(int, 0), default=2)
    p.add_argument("--lr", type=ranged(float, 0.0), default=0.01)
    p.add_argument("--reg", type=ranged(float, 0.0, strict=False), default=1e-6)
    p.add_argument("--seed", type=ranged(int, 0, strict=False), default=0)
    args = p.parse_args()

    import jax
    import jax.numpy as jnp
    from jax.example_libraries import optimizers
    from neural_tangents import stax

    d = np.load(args.data)
    x_train, y_train = d["x_train"], d["y_train"]
    layers = []
    for _ in range(args.depth):
        layers += [stax.Dense(1024, W_std=np.sqrt(2.0), b_std=0.1), stax.Relu()]
    _, _, kernel_fn = stax.serial(*layers, stax.Dense(y_train.shape[1], W_std=np.sqrt(2.0),
                                                       b_std=0.1))

    def loss(params, x_t, y_t):
        x_s, y_s = params
        k_ss = kernel_fn(x_s, x_s, "ntk")
        k_ts = kernel_fn(x_t, x_s, "ntk")
        m = k_ss.shape[0]
        k_reg = k_ss + args.reg * jnp.trace(k_ss) / m * jnp.eye(m, dtype=k_ss.dtype)
        pred = k_ts @ jax.scipy.linalg.solve(k_reg, y_s, assume_a="pos")
        return jnp.mean((pred - y_t) ** 2)

    opt_init, opt_update, get_params = optimizers.adam(args.lr)

    @jax.jit
    def update(i, state, x_t, y_t):
        value, g = jax.value_and_grad(loss)(get_params(state), x_t, y_t)
        return opt_update(i, g, state), value

    state = opt_init((jnp.asarray(d["x_support"]), jnp.asarray(d["y_support"])))
    rng = np.random.default_rng(args.seed)
    n = x_train.shape[0]

    def run(state, start, steps):
        value = None
        for i in range(start, start + steps):
            idx = rng.choice(n, args.batch, replace=False)
            state, value = update(i, state, x_train[idx], y_train[idx])
        jax.block_until_ready(state)
        return state, value

    state, _ = run(state, 0, args.warmup)
    t_cpu, t_wall = time.process_time(), time.perf_counter()
    state, value = run(state, args.warmup, args.steps)
    cpu, wall = time.process_time() - t_cpu, time.perf_counter() - t_wall
    import neural_tangents
    print(json.dumps({"steps": args.steps, "steps_per_cpu_s": args.steps / cpu,
                      "steps_per_wall_s": args.steps / wall, "final_loss": float(value),
                      "versions": {"jax": jax.__version__,
                                   "neural_tangents": neural_tangents.__version__}}))


if __name__ == "__main__":
    main()
