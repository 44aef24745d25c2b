"""DC's image learning rate on digits at IPC 10 from real images, scored along the run on a
VALIDATION split of the training set (never on test): the evidence for the DC memory's learning
rate in ``jdd continual`` and for the note on ``jdd distill --method dc`` at IPC 10 on 8 x 8 data.

Protocol: digits train split 75 % / 25 % (stratified, fixed key 123), standardised on the 75 %.
For each image learning rate, one DC run (:func:`jdd.distill.dc.dc`, the official loops at the
IPC: 10 updates per fresh network with 50 network epochs between them at IPC 10; SGD momentum
0.5 on the images) from ``--init`` images is continued from mark to mark (``distill(state=...)``
gives the same bytes as one run), and the set at each mark (in the paper's outer iterations) is
scored by ``--n-models`` ConvNet-D3 models of the protocol learner (300 epochs, no
augmentation) on the 25 %. The random subset of the 75 % under the same learner is the bar.

Usage::

    python benchmarks/dc_recipe.py                          # the sweep quoted in the README
    python benchmarks/dc_recipe.py --lrs 0.03 --marks 0,5,10,20
    python benchmarks/dc_recipe.py --quick                  # smoke test

Writes results/dc_recipe.json after every learning rate; entries of earlier invocations with the
same settings are kept (a learning rate run again replaces its entry), so learning rates can be
added by separate invocations.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (digits_validation_split, earlier_results, parse_args, pm,  # noqa: E402
                     positive, table, write_result)

HEAD = ["image lr", "outer iterations", "validation %", "CPU s (cumulative)"]


def main(argv=None) -> int:
    args = parse_args("dc_recipe", __doc__.splitlines()[0], extra=_extra, argv=argv)
    from jdd.config import ConfigError, from_dict
    from jdd.distill.dc import DCConfig
    try:
        lrs = [from_dict(DCConfig, {"lr": v}).lr for v in args.lrs]
    except ConfigError as e:
        raise SystemExit(f"--lrs: {e}")
    try:
        marks = sorted({int(m) for m in args.marks.split(",")})
    except ValueError:
        raise SystemExit(f"--marks: expected comma-separated integers >= 0; got {args.marks!r}")
    if marks[0] < 0:
        raise SystemExit(f"--marks: expected integers >= 0; got {args.marks!r}")

    import jax
    import numpy as np
    from jdd.distill import distill
    from jdd.distill.dc import dc, default_loops
    from jdd.evaluate import evaluate_random_subset, evaluate_set, protocol_learner
    from jdd.models import make_model

    ipc, n_models, epochs, width = ((2, 1, 3, 8) if args.quick else
                                    (args.ipc, args.n_models, args.eval_epochs, 128))
    if args.quick:
        marks, lrs = [0, 1], lrs[:1]
    outer, inner = default_loops(ipc)
    fit, val = digits_validation_split()
    net = make_model("convnet", fit.num_classes, width=width)
    learner = protocol_learner(net, epochs=epochs)
    settings = {"ipc": ipc, "init": args.init, "outer_loop": outer, "inner_loop": inner,
                "eval_epochs": epochs, "n_models": n_models, "seed": 0,
                "split": "digits train 75/25 (stratified, key 123), standardised on the 75 %"}
    results = earlier_results(args.json, settings, args.quick)
    if "random" not in results:
        r = evaluate_random_subset(learner, jax.random.key(9), fit, val, ipc, n_models)
        results["random"] = {"mean": float(r.accuracies.mean()),
                             "std": float(r.accuracies.std())}
    rows = [[f"random {ipc}/class", "", pm(results["random"]["mean"], results["random"]["std"]),
             ""]]
    print(table(HEAD, rows), flush=True)
    key = jax.random.key(0)
    for lr in lrs:
        d = dc(net, ipc=ipc, init=args.init, lr=lr)
        t0 = time.process_time()
        state, done, curve = distill(d, key, fit, 0, progress=False).state, 0, []
        for m in marks:
            try:
                run = distill(d, key, fit, (m - done) * outer, log_every=outer, progress=False,
                              state=state)
            except FloatingPointError:      # distill refuses a NaN/inf loss or set
                curve.append({"iterations": m, "diverged": True,
                              "cpu_s": time.process_time() - t0})
                rows.append([f"{lr:g}", m, "diverged (NaN/inf)", ""])
                print(table(HEAD, rows[-1:]), flush=True)
                break
            state, done = run.state, m
            e = evaluate_set(learner, jax.random.key(7), np.asarray(run.synthetic.x),
                             np.argmax(np.asarray(run.synthetic.y), -1), val, n_models)
            curve.append({"iterations": m, "val_mean": float(e.accuracies.mean()),
                          "val_std": float(e.accuracies.std()),
                          "cpu_s": time.process_time() - t0})
            rows.append([f"{lr:g}", m, pm(e.accuracies.mean(), e.accuracies.std()),
                         f"{curve[-1]['cpu_s']:.0f}"])
            print(table(HEAD, rows[-1:]), flush=True)
        results[f"{lr:g}"] = {"lr": lr, "curve": curve}
        write_result(args.json, "dc_recipe", args.quick, settings, results)
    print(table(HEAD, rows, title=f"DC, digits IPC {ipc}, init {args.init}, validation split of "
                                  f"train (never test)"))
    return 0


def _extra(p):
    p.add_argument("--lrs", nargs="+", default=["0.1", "0.03", "0.01", "0.003"],
                   help="image learning rates (each checked against DCConfig's --lr range)")
    p.add_argument("--marks", default="0,5,10,20",
                   help="outer iterations at which the set is scored (comma-separated)")
    p.add_argument("--ipc", type=positive, default=10)
    p.add_argument("--init", choices=("real", "noise"), default="real")
    p.add_argument("--eval-epochs", type=positive, default=300)
    p.add_argument("--n-models", type=positive, default=3)


if __name__ == "__main__":
    raise SystemExit(main())
