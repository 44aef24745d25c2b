"""MTT on digits at IPC 1: its recipe (N student steps, M expert epochs, start epochs, image
learning rate, outer iterations) scored on a VALIDATION split of the training set, never on test:
the evidence behind MTT's defaults.

Protocol: digits train split 75 % / 25 % (stratified, fixed key 123), standardised on the 75 %;
experts as ``jdd experts`` trains them (ConvNet-D3 of ``--width``, SGD 0.01, batch 256, DSA per
image; ``--experts`` x ``--expert-epochs``) on the 75 %; MTT from real images with DSA, for each
recipe ``N,M,START,LR_IMG[,LABELS]`` (LABELS: ``hard``, the default; ``soft``, TESLA's
expert soft labels; ``learn``, soft labels learned too) and ``--seeds`` seeds (one vmapped run), scored after each of
``--checkpoints`` outer iterations (one run continued, so the 1000-iteration set is the
500-iteration set trained further); each set scored by ``--n-models`` models of the protocol
learner (``--eval-epochs``, lr x0.1 at half, DSA) on the 25 %, at the set's learned lr (MTT's
protocol, what ``jdd distill --method mtt`` reports) and at the protocol's 0.01.

Usage::

    python benchmarks/mtt_recipe.py                                  # the sweep quoted (~2.5 h)
    python benchmarks/mtt_recipe.py --recipes 20,3,25,3 20,3,25,100  # any list (lr_img sweep)
    python benchmarks/mtt_recipe.py --recipes 20,3,25,3,soft --checkpoints 500  # TESLA labels
    python benchmarks/mtt_recipe.py --quick                          # smoke test

Writes results/mtt_recipe.json after every checkpoint; entries of earlier invocations with the
same settings are kept (an entry re-run now replaces the old one), so recipes can be added by
separate runs.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (digits_validation_split, earlier_results, parse_args, pm,  # noqa: E402
                     positive, table, write_result)

HEAD = ["N,M,start,lr_img", "iterations", "val % (learned lr)", "val % (lr 0.01)",
        "learned syn_lr", "loss", "CPU s"]


def main(argv=None) -> int:
    args = parse_args("mtt_recipe", __doc__.splitlines()[0], extra=_extra, argv=argv)
    import jax
    import numpy as np
    from jdd.augment import default_strategy, dsa
    from jdd.distill import distill
    from jdd.distill.mtt import mtt
    from jdd.evaluate import evaluate_set, protocol_learner
    from jdd.experts import load_buffer, train_experts
    from jdd.models import make_model

    recipes = [_recipe(r) for r in args.recipes]
    checkpoints = sorted(set(args.checkpoints))
    width, n_exp, exp_epochs, epochs, seeds, n_models = (
        (8, 2, 4, 5, 1, 1) if args.quick else
        (args.width, args.experts, args.expert_epochs, args.eval_epochs, args.seeds,
         args.n_models))
    if args.quick:
        recipes, checkpoints = [(2, 1, 2, 3.0, "hard"), (2, 1, 2, 3.0, "learn")], [2, 4]
    for n, m, start, _, _ in recipes:
        if start - 1 + m > exp_epochs:
            raise SystemExit(f"recipe {n},{m},{start}: needs expert epoch {start - 1 + m}; the "
                             f"experts train {exp_epochs}")
    fit, val = digits_validation_split()
    net = make_model("convnet", fit.num_classes, width=width)
    per_image = dsa(default_strategy("digits"), siamese=False)
    lrn = protocol_learner(net, epochs=epochs, augment=per_image)
    keys = jax.random.split(jax.random.key(0), seeds)
    settings = {"width": width, "experts": n_exp, "expert_epochs": exp_epochs,
                "eval_epochs": epochs, "seeds": seeds, "n_models": n_models,
                "split": "digits train 75/25 (stratified, key 123), standardised on the 75 %"}
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        train_experts(net, fit, n_experts=n_exp, epochs=exp_epochs, lr=0.01, augment=per_image,
                      key=jax.random.key(0), out_dir=tmp, progress=False,
                      preprocessing="standardize")
        buf = load_buffer(tmp)
        for n, m, start, lr_img, labels in recipes:
            d = mtt(net, buf, ipc=1, syn_steps=n, expert_epochs=m, max_start_epoch=start,
                    lr_img=lr_img, soft_labels=labels != "hard", learn_labels=labels == "learn",
                    augment=dsa(default_strategy("digits")))
            state, done, cpu = None, 0, 0.0
            for stop in checkpoints:
                t0 = time.process_time()
                run = distill(d, keys, fit, stop - done, progress=False, state=state)
                cpu += time.process_time() - t0
                state, done = run.state, stop

                def score(learned: bool):
                    return np.concatenate([evaluate_set(
                        lrn, jax.random.key(10 + s), run.synthetic.x[s], run.synthetic.y[s],
                        val, n_models, lr=run.synthetic.lr[s] if learned else float("nan")
                    ).accuracies for s in range(seeds)])

                acc_l, acc = score(True), score(False)
                syn_lr = np.asarray(run.synthetic.lr).tolist()
                name = f"{n},{m},{start},{lr_img:g}" + ("" if labels == "hard" else f",{labels}")
                res = {"syn_steps": n, "expert_epochs": m, "max_start_epoch": start,
                       "lr_img": lr_img, "labels": labels, "iterations": stop,
                       "val_mean_learned_lr": float(acc_l.mean()),
                       "val_std_learned_lr": float(acc_l.std()),
                       "val_mean": float(acc.mean()), "val_std": float(acc.std()),
                       "syn_lr": syn_lr, "final_loss": float(np.mean(run.history["loss"][:, -1])),
                       "distill_cpu_s": cpu}
                results[f"{name}@{stop}"] = res
                rows.append([name, stop, pm(acc_l.mean(), acc_l.std()), pm(acc.mean(), acc.std()),
                             " ".join(f"{v:.2g}" for v in syn_lr), f"{res['final_loss']:.3f}",
                             f"{cpu:.0f}"])
                print(table(HEAD, rows[-1:]), flush=True)
                _write(args.json, args.quick, settings, results)
    print(table(HEAD, rows, title="MTT, digits IPC 1, validation split of train (never test)"))
    return 0


def _write(path: str, quick: bool, settings: dict, results: dict) -> None:
    """Write the JSON, keeping the entries of earlier runs with the same settings."""
    write_result(path, "mtt_recipe", quick, settings,
                 {**earlier_results(path, settings, quick), **results})


LABELS = ("hard", "soft", "learn")


def _recipe(text: str) -> tuple[int, int, int, float, str]:
    parts = text.split(",")
    try:
        if len(parts) not in (4, 5):
            raise ValueError
        out = int(parts[0]), int(parts[1]), int(parts[2]), float(parts[3])
    except ValueError:
        raise SystemExit(f"--recipes: expected N,M,START,LR_IMG[,LABELS] (e.g. 20,3,25,3 or "
                         f"20,3,25,3,soft); got {text!r}")
    labels = parts[4] if len(parts) == 5 else "hard"
    if min(out[:3]) < 1 or not out[3] > 0 or labels not in LABELS:
        raise SystemExit(f"--recipes: N, M, START must be >= 1, LR_IMG > 0 and LABELS one of "
                         f"{', '.join(LABELS)}; got {text!r}")
    return out + (labels,)


def _extra(p):
    p.add_argument("--recipes", nargs="+",
                   default=["20,3,25,3", "20,2,25,3", "20,2,2,3", "50,2,2,3"],
                   help="N,M,START,LR_IMG[,LABELS]: student steps, expert epochs, start epochs "
                        "below, image learning rate, labels (hard | soft | learn)")
    p.add_argument("--checkpoints", type=positive, nargs="+", default=[500, 1000],
                   help="outer iterations at which each recipe's sets are scored")
    p.add_argument("--width", type=positive, default=128)
    p.add_argument("--experts", type=positive, default=5)
    p.add_argument("--expert-epochs", type=positive, default=30)
    p.add_argument("--eval-epochs", type=positive, default=1000)
    p.add_argument("--seeds", type=positive, default=2)
    p.add_argument("--n-models", type=positive, default=3)


if __name__ == "__main__":
    sys.exit(main())
