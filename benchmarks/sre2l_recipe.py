"""SRe2L on digits at IPC 10: its recover recipe (image learning rate, BatchNorm-statistics
weight r_bn, recover iterations; with or without DWA) scored on a VALIDATION split of the
training set, never on test: the evidence behind ``jdd distill --method sre2l``'s defaults.

Protocol: digits train split 75 % / 25 % (stratified, fixed key 123), standardised on the 75 %.
One teacher squeezed on the 75 % exactly as the method squeezes it (ConvNet-BN, the method's
``--teacher-epochs`` and ``--teacher-lr``, DSA); for each recipe
``LR,R_BN,STEPS[,dwa|dwa-own][,real]`` and each of ``--seeds`` seeds, ``ipc`` batches of one
image per class are recovered (the method's :func:`jdd.distill.sre2l.recover`, its crop
augmentation, Adam (0.5, 0.9), cosine); each set is
scored by ``--n-models`` students of the method's evaluation protocol (ConvNet-D3, SGD 0.01,
lr x0.1 at half, DSA, ``--eval-epochs``) trained by knowledge distillation from the teacher
(the method's default) and, beside it, on the hard labels, tested on the 25 %. The random
subset of the 75 % under the same two learners is the bar.

Usage::

    python benchmarks/sre2l_recipe.py                     # the sweep quoted in the README
    python benchmarks/sre2l_recipe.py --recipes 0.1,0.01,500 0.25,1,1000,dwa
    python benchmarks/sre2l_recipe.py --recipes 0.05,1,1000,real 0.05,1,1000,dwa-own,real
    python benchmarks/sre2l_recipe.py --quick             # smoke test

Writes results/sre2l_recipe.json after every recipe; entries of earlier invocations with the same
settings are kept (a recipe run again replaces its entry), the random-subset bar included, so
recipes can be added by separate invocations.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (digits_validation_split, earlier_results, parse_args, pm,  # noqa: E402
                     positive, table, write_result)

HEAD = ["lr, r_bn, steps", "val % (KD)", "val % (hard labels)", "diversity", "CPU s"]


def main(argv=None) -> int:
    args = parse_args("sre2l_recipe", __doc__.splitlines()[0], extra=_extra, argv=argv)
    import jax
    import numpy as np
    from jdd.augment import default_strategy, dsa
    from jdd.bn_models import make_bn_model
    from jdd.distill.sre2l import (SRe2LConfig, diversity, recover, teacher_labels,
                                   train_teacher)
    from jdd.evaluate import evaluate_random_subset, evaluate_set, protocol_learner
    from jdd.models import make_model

    recipes = [_recipe(r) for r in args.recipes]
    base = SRe2LConfig()
    ipc, width, t_epochs, epochs, seeds, n_models = (
        (2, 16, 2, 5, 1, 1) if args.quick else
        (args.ipc, None, base.teacher_epochs, args.eval_epochs, args.seeds, args.n_models))
    if args.quick:
        recipes = [(0.1, 0.01, 5, None, "noise"), (0.1, 0.01, 5, "dwa-own", "real")]
    fit, val = digits_validation_split()
    k = fit.num_classes
    teacher_model = make_bn_model(base.teacher, k, width=width)
    t0 = time.process_time()
    teacher = train_teacher(teacher_model, fit, jax.random.key(0x5E2), epochs=t_epochs,
                            lr=base.teacher_lr,
                            augment=dsa(default_strategy("digits"), mode="single",
                                        siamese=False))
    teacher_cpu = time.process_time() - t0
    teacher_val = float(np.mean(np.argmax(np.asarray(
        teacher_model.apply(teacher, val.x, False)[0]), -1) == np.asarray(val.y)))
    student = make_model("convnet", k, width=width or 128)
    per_image = dsa(default_strategy("digits"), siamese=False)
    hard = protocol_learner(student, epochs=epochs, augment=per_image)
    kd = protocol_learner(student, epochs=epochs, augment=per_image,
                          relabel=(f"teacher {teacher_model.name}",
                                   teacher_labels(teacher_model, teacher)))
    crop = dsa("crop", mode="all", siamese=True)
    settings = {"ipc": ipc, "teacher": teacher_model.name, "teacher_epochs": t_epochs,
                "teacher_lr": base.teacher_lr, "eval_epochs": epochs, "seeds": seeds,
                "n_models": n_models,
                "split": "digits train 75/25 (stratified, key 123), standardised on the 75 %"}
    results = {**earlier_results(args.json, settings, args.quick),
               "teacher_val_accuracy": teacher_val, "teacher_cpu_s": teacher_cpu}
    rows = []
    for label, learner in (("KD", kd), ("hard", hard)):
        if f"random_{label}" in results:        # an earlier invocation with these settings
            continue
        r = np.concatenate([evaluate_random_subset(learner, jax.random.key(20 + s), fit, val,
                                                   ipc, n_models).accuracies
                            for s in range(seeds)])
        results[f"random_{label}"] = {"mean": float(r.mean()), "std": float(r.std())}
    rows.append([f"random {ipc}/class", pm(results["random_KD"]["mean"],
                                          results["random_KD"]["std"]),
                 pm(results["random_hard"]["mean"], results["random_hard"]["std"]), "", ""])
    print(table(HEAD, rows), flush=True)
    classes = np.repeat(np.arange(k), ipc)
    for lr, r_bn, steps, dwa, init in recipes:
        t0 = time.process_time()

        @jax.jit
        def sets(ks, lr=lr, r_bn=r_bn, steps=steps, dwa=dwa, init=init):
            return jax.vmap(lambda kk: recover(
                teacher_model, teacher, kk, fit, ipc=ipc, iterations=steps, lr=lr, r_bn=r_bn,
                augment=crop, dwa=dwa is not None, rho=base.rho, dwa_steps=base.dwa_steps,
                dwa_batch=None if dwa == "dwa-own" else 256, init=init))(ks)

        xs = np.asarray(sets(jax.random.split(jax.random.key(0), seeds)))
        cpu = time.process_time() - t0
        acc = {label: np.concatenate([evaluate_set(learner, jax.random.key(10 + s), xs[s],
                                                   classes, val, n_models).accuracies
                                      for s in range(seeds)])
               for label, learner in (("KD", kd), ("hard", hard))}
        div = float(np.mean([diversity(teacher_model, teacher, x, classes, k) for x in xs]))
        name = (f"{lr:g},{r_bn:g},{steps}" + (f",{dwa}" if dwa else "")
                + (",real" if init == "real" else ""))
        results[name] = {"lr": lr, "r_bn": r_bn, "steps": steps, "dwa": dwa is not None,
                         "dwa_batch": {"dwa": 256, "dwa-own": "own"}.get(dwa), "init": init,
                         "val_mean_kd": float(acc["KD"].mean()),
                         "val_std_kd": float(acc["KD"].std()),
                         "val_mean_hard": float(acc["hard"].mean()),
                         "val_std_hard": float(acc["hard"].std()),
                         "diversity": div, "recover_cpu_s": cpu}
        rows.append([name, pm(acc["KD"].mean(), acc["KD"].std()),
                     pm(acc["hard"].mean(), acc["hard"].std()), f"{div:.3f}", f"{cpu:.0f}"])
        print(table(HEAD, rows[-1:]), flush=True)
        write_result(args.json, "sre2l_recipe", args.quick, settings, results)
    print(table(HEAD, rows, title=f"SRe2L, digits IPC {ipc}, validation split of train (never "
                                  f"test); teacher {teacher_val * 100:.2f} % on it"))
    return 0


#: Tokens a recipe may carry after LR,R_BN,STEPS: DWA with a random real batch of 256 (``dwa``)
#: or with the batch's own real images (``dwa-own``, DWA's official code), and real-image
#: initialisation (``real``, DWA's official code).
FLAGS = ("dwa", "dwa-own", "real")


def _recipe(text: str) -> tuple[float, float, int, str | None, str]:
    """``LR,R_BN,STEPS[,dwa|dwa-own][,real]`` -> ``(lr, r_bn, steps, dwa, init)`` with ``dwa``
    None, ``"dwa"`` or ``"dwa-own"``, checked against the ranges ``SRe2LConfig`` declares for
    ``--lr`` and ``--r-bn`` (and ``--steps`` >= 1) before any data is loaded."""
    from jdd.config import ConfigError, from_dict
    from jdd.distill.sre2l import SRe2LConfig
    parts = text.split(",")
    tokens = parts[3:]
    try:
        if (len(parts) < 3 or any(t not in FLAGS for t in tokens)
                or len(set(tokens)) != len(tokens) or {"dwa", "dwa-own"} <= set(tokens)):
            raise ValueError
        steps = int(parts[2])
    except ValueError:
        raise SystemExit(f"--recipes: expected LR,R_BN,STEPS[,dwa|dwa-own][,real] (e.g. "
                         f"0.05,1,1000,dwa-own,real); got {text!r}")
    try:
        cfg = from_dict(SRe2LConfig, {"lr": parts[0], "r_bn": parts[1]})
    except ConfigError as e:
        raise SystemExit(f"--recipes {text}: {e}")
    if steps < 1:
        raise SystemExit(f"--recipes {text}: STEPS: expected an integer >= 1")
    dwa = next((t for t in tokens if t.startswith("dwa")), None)
    return cfg.lr, cfg.r_bn, steps, dwa, "real" if "real" in tokens else "noise"


def _extra(p):
    p.add_argument("--recipes", nargs="+",
                   default=["0.25,0.01,1000", "0.25,1,1000", "0.05,0.01,1000", "0.05,0.1,1000",
                            "0.05,1,1000", "0.05,3,1000", "0.05,10,1000", "0.02,1,1000",
                            "0.05,1,1000,dwa", "0.05,1,1000,dwa-own", "0.05,1,1000,real",
                            "0.05,1,1000,dwa-own,real", "0.05,1,1000,dwa,real"],
                   help="LR,R_BN,STEPS[,dwa|dwa-own][,real]: the recover stage's Adam learning "
                        "rate, BatchNorm-statistics weight and iterations; DWA on a random real "
                        "batch (dwa) or on the batch's own real images (dwa-own); real-image "
                        "initialisation (real)")
    p.add_argument("--ipc", type=positive, default=10)
    p.add_argument("--eval-epochs", type=positive, default=300)
    p.add_argument("--seeds", type=positive, default=2)
    p.add_argument("--n-models", type=positive, default=2)


if __name__ == "__main__":
    raise SystemExit(main())
