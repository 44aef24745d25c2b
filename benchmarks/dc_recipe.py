"""DC's image learning rate from a given initialisation, scored along the run on a VALIDATION
split of the training set (never on test): the evidence for the DC memory's learning rate in
``jdd continual``, for the note on ``jdd distill --method dc`` at IPC 10 on 8 x 8 data, and for
the learning rate of a low-rank DC set (``--flags "--param low-rank --rank 2"``).

Protocol: the ``--dataset`` training split 75 % / 25 % (stratified, fixed key 123), standardised
on the 75 %. Each run's distiller is what ``jdd distill --method dc --ipc IPC --init INIT --lr LR
FLAGS`` builds (the registry's recipe: the official loops at the IPC budget, SGD momentum 0.5 on
the stored set). For each image learning rate, one run is continued from mark to mark
(``distill(state=...)`` gives the same bytes as one run), and the set at each mark (in the
paper's outer iterations) is scored by ``--n-models`` models of the method's protocol learner
(ConvNet-D3, 300 epochs, no augmentation) on the 25 %. The random subset of the 75 % at the same
IPC under the same learner is the bar.

Usage::

    python benchmarks/dc_recipe.py                          # the sweep quoted in the README
    python benchmarks/dc_recipe.py --lrs 0.03 --marks 0,5,10,20
    python benchmarks/dc_recipe.py --dataset fashion_mnist --ipc 1 --init noise \
        --flags "--param low-rank --rank 2 --batch-real 64" --marks 0,25,50,100 --lrs 0.1 0.3 1
    python benchmarks/dc_recipe.py --quick                  # smoke test

Writes results/dc_recipe.json (digits without ``--flags``) or
results/dc_recipe_DATASET[_FLAGS].json after every learning rate; entries of earlier invocations
with the same settings are kept (a learning rate run again replaces its entry), so learning rates
can be added by separate invocations.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (default_json, earlier_results, parse_args, pm,  # noqa: E402
                     positive, table, validation_split, write_result)

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

    import shlex

    import jax
    import numpy as np
    from jdd import methods
    from jdd.cli import CLIError, parse_distill
    from jdd.distill import distill
    from jdd.evaluate import evaluate_random_subset, evaluate_set

    flags = shlex.split(args.flags)
    ipc, n_models = (2, 1) if args.quick else (args.ipc, args.n_models)
    if args.quick:
        marks, lrs = [0, 1], lrs[:1]
        flags += ["--width", "8", "--eval-width", "8", "--eval-epochs", "3"]
    elif args.eval_epochs:
        flags += ["--eval-epochs", str(args.eval_epochs)]

    def build(lr):
        """(distiller, learner, steps per outer iteration) as ``jdd distill`` builds them."""
        try:
            method, _, cfg = parse_distill(["--method", "dc", "--dataset", args.dataset, "--ipc",
                                            str(ipc), "--init", args.init, "--lr", str(lr),
                                            "--out", os.path.join(tempfile.gettempdir(), "unused"),
                                            *flags])
        except CLIError as e:
            raise SystemExit(f"--flags: {e}")
        spec = methods.RunSpec(ipc=ipc, steps=1, seeds=1, dataset=args.dataset,
                               num_classes=fit.num_classes, feature_shape=fit.feature_shape,
                               n_train=fit.n)
        plan = method.build(cfg, spec)
        return plan.distiller, plan.learner, int(plan.info["steps_per_iteration"]), plan.info

    fit, val = validation_split(args.dataset, args.data_dir)
    _, learner, outer, info = build(lrs[0])
    if args.json == default_json("dc_recipe") and (args.dataset != "digits" or args.flags):
        tag = "".join(c if c.isalnum() else "_" for c in args.flags.replace("--", "")).strip("_")
        args.json = default_json(f"dc_recipe_{args.dataset}" + (f"_{tag}" if tag else ""))
    settings = {"ipc": ipc, "init": args.init, "outer_loop": outer,
                "inner_loop": info["inner_loop"], "eval_epochs": learner.config["epochs"],
                "n_models": n_models, "seed": 0,
                "split": f"{args.dataset} train 75/25 (stratified, key 123), standardised on "
                         f"the 75 %"}
    if flags:
        settings["flags"] = flags
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
        d = build(lr)[0]
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
    print(table(HEAD, rows, title=f"DC, {args.dataset} IPC {ipc}, init {args.init} "
                                  f"{' '.join(flags)}, validation split of train (never test)"))
    return 0


def _extra(p):
    p.add_argument("--lrs", nargs="+", default=["0.1", "0.03", "0.01", "0.003"],
                   help="image learning rates (each checked against DCConfig's --lr range)")
    p.add_argument("--marks", default="0,5,10,20",
                   help="outer iterations at which the set is scored (comma-separated)")
    p.add_argument("--ipc", type=positive, default=10)
    p.add_argument("--init", choices=("real", "noise"), default="real")
    p.add_argument("--eval-epochs", type=positive, default=None,
                   help="evaluation epochs (default: the method's protocol, 300)")
    p.add_argument("--n-models", type=positive, default=3)
    p.add_argument("--dataset", choices=("digits", "fashion_mnist"), default="digits")
    p.add_argument("--data-dir", default=None, help="folder with the dataset's files")
    p.add_argument("--flags", default="",
                   help="further `jdd distill --method dc` flags, e.g. \"--param low-rank --rank "
                        "2 --batch-real 64\" (checked by the CLI's own parser)")


if __name__ == "__main__":
    raise SystemExit(main())
