"""MTT on digits at IPC 1: the image learning rate, chosen on a VALIDATION split of the training
set (never on test): the evidence behind the default ``lr_img``.

MTT's published ``lr_img = 1000`` is its recipe for ZCA-whitened CIFAR. Protocol here: digits
train split 75 % / 25 % (stratified, fixed key), standardised on the 75 %; 5 experts (ConvNet-D3,
``--width``, 15 epochs, SGD 0.01, DSA per image) trained on the 75 %; MTT with 20 student steps,
2 expert epochs, start epochs below 10, DSA, for ``--steps`` steps, 2 seeds; each set scored by 3
models of the protocol learner (300 epochs, DSA) on the 25 %, at the protocol's lr 0.01 and at
the set's learned lr.

Usage::

    python benchmarks/mtt_lr_img.py                       # lr_img 3, 10, 30, 100 (~30 min, 2 cores)
    python benchmarks/mtt_lr_img.py --lr-img 1000 3       # any list
    python benchmarks/mtt_lr_img.py --quick               # smoke test
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import parse_args, pm, table, write_result  # noqa: E402


def main(argv=None) -> int:
    args = parse_args("mtt_lr_img", __doc__.splitlines()[0], extra=_extra, argv=argv)
    import jax
    import numpy as np
    from jdd.augment import default_strategy, dsa
    from jdd.data import load_dataset, preprocess
    from jdd.data.dataset import stratified_split
    from jdd.distill import distill
    from jdd.distill.mtt import mtt
    from jdd.evaluate import evaluate_set, protocol_learner
    from jdd.experts import load_buffer, train_experts
    from jdd.models import make_model

    quick = args.quick
    width, steps, epochs, n_exp, exp_epochs = ((8, 4, 3, 2, 3) if quick else
                                               (args.width, args.steps, 300, 5, 15))
    train, _ = load_dataset("digits")
    fit, val = stratified_split(jax.random.key(123), train, 0.25)
    fit, val, _ = preprocess(fit, val, "standardize")
    net = make_model("convnet", fit.num_classes, width=width)
    per_image = dsa(default_strategy("digits"), siamese=False)
    with tempfile.TemporaryDirectory() as tmp:
        train_experts(net, fit, n_experts=n_exp, epochs=exp_epochs, lr=0.01, augment=per_image,
                      key=jax.random.key(0), out_dir=tmp, progress=False,
                      preprocessing="standardize")
        buf = load_buffer(tmp)
        lrn = protocol_learner(net, epochs=epochs, augment=per_image)
        rows, results = [], {}
        for lr_img in args.lr_img:
            t0 = time.process_time()
            d = mtt(net, buf, ipc=1, syn_steps=20, expert_epochs=2,
                    max_start_epoch=min(10, exp_epochs - 2), lr_img=lr_img,
                    augment=dsa(default_strategy("digits")))
            run = distill(d, jax.random.split(jax.random.key(0), 2), fit, steps, progress=False)
            def score(learned: bool):
                return np.concatenate([evaluate_set(
                    lrn, jax.random.key(10 + s), run.synthetic.x[s], run.synthetic.y[s], val, 3,
                    lr=run.synthetic.lr[s] if learned else float("nan")).accuracies
                    for s in range(2)])
            accs, accs_l = score(False), score(True)
            syn_lr = np.asarray(run.synthetic.lr).tolist()
            results[str(lr_img)] = {"val_mean": float(accs.mean()), "val_std": float(accs.std()),
                                    "val_mean_learned_lr": float(accs_l.mean()),
                                    "val_std_learned_lr": float(accs_l.std()),
                                    "syn_lr": syn_lr, "final_loss": float(
                                        np.mean(run.history["loss"][:, -1])),
                                    "cpu_s": time.process_time() - t0}
            rows.append([lr_img, pm(accs.mean(), accs.std()), pm(accs_l.mean(), accs_l.std()),
                         " ".join(f"{v:.2g}" for v in syn_lr),
                         f"{results[str(lr_img)]['final_loss']:.3f}"])
            print(table(HEAD, rows[-1:]),
                  flush=True)
    print(table(HEAD, rows,
                title="MTT, digits IPC 1, validation split of train"))
    write_result(args.json, "mtt_lr_img", quick,
                 {"width": width, "steps": steps, "eval_epochs": epochs, "experts": n_exp,
                  "expert_epochs": exp_epochs, "split": "digits train 75/25, key 123"}, results)
    return 0


HEAD = ["lr_img", "val % (eval lr 0.01)", "val % (learned lr)", "learned syn_lr", "final loss"]


def _extra(p):
    p.add_argument("--lr-img", type=float, nargs="+", default=[3.0, 10.0, 30.0, 100.0])
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--steps", type=int, default=200)


if __name__ == "__main__":
    sys.exit(main())
