"""DC on digits at IPC 1 with torch's and flax's parameter initialisation of the ConvNet, scored
on a VALIDATION split of the training set (never on test): the evidence behind
``ConvNet(param_init="torch")`` being the default.

The official DC code draws every fresh network of its outer loop from torch's default
initialisation; flax's default (LeCun-normal kernels, zero biases) is a different distribution,
and gradient matching only sees gradients of networks drawn from it. Protocol: digits train split
into 75 % / 25 % (stratified, fixed key), standardised on the 75 %; DC with the official settings
(200 iterations, noise init); each distilled set scored by 5 ConvNet-D3 models of the same
initialisation (300 epochs, the protocol learner) on the 25 %.

Usage::

    python benchmarks/dc_param_init.py            # 2 seeds, ~25 min on 2 CPU cores
    python benchmarks/dc_param_init.py --quick    # smoke test
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import digits_validation_split, parse_args, pm, table, write_result  # noqa: E402


def main(argv=None) -> int:
    args = parse_args("dc_param_init", __doc__.splitlines()[0], extra=_extra, argv=argv)
    import jax
    import numpy as np
    from jdd.distill import distill
    from jdd.distill.dc import dc
    from jdd.evaluate import evaluate_set, protocol_learner
    from jdd.models import make_model

    iters, seeds, n_models, epochs = ((3, 1, 2, 5) if args.quick else
                                      (args.iterations, args.seeds, 5, 300))
    fit, val = digits_validation_split()
    rows, results = [], {}
    for init in ("torch", "flax"):
        model = make_model("convnet", fit.num_classes, param_init=init)
        t0 = time.process_time()
        run = distill(dc(model, ipc=1), jax.random.split(jax.random.key(0), seeds), fit, iters,
                      progress=False)
        lrn = protocol_learner(model, epochs=epochs)
        accs = np.concatenate([evaluate_set(lrn, jax.random.key(10 + s), run.synthetic.x[s],
                                            run.synthetic.y[s], val, n_models).accuracies
                               for s in range(seeds)])
        results[init] = {"val_mean": float(accs.mean()), "val_std": float(accs.std()),
                         "n_models": int(accs.size), "cpu_s": time.process_time() - t0}
        rows.append([init, iters, pm(accs.mean(), accs.std()), accs.size])
        print(table(["param_init", "iterations", "validation %", "models"], rows[-1:]),
              flush=True)
    print(table(["param_init", "iterations", "validation %", "models"], rows,
                title="DC, digits IPC 1, validation split of train"))
    write_result(args.json, "dc_param_init", args.quick,
                 {"iterations": iters, "seeds": seeds, "n_models": n_models,
                  "eval_epochs": epochs, "split": "digits train 75/25, key 123"}, results)
    return 0


def _extra(p):
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--seeds", type=int, default=2)


if __name__ == "__main__":
    sys.exit(main())
