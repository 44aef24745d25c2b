"""The ``jdd`` command line: a thin layer over the public API.

``jdd distill``  distil a dataset (several seeds in one vmapped computation), evaluate, save.
``jdd evaluate`` re-evaluate a saved distilled set (e.g. on another architecture).
``jdd methods``  list methods, datasets, models and kernels.

Run ``jdd COMMAND --help`` for every option.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from typing import Callable, NamedTuple

#: Distillation methods the CLI knows (``jdd distill --method``).
METHODS = ("unrolled", "kip", "krr-closed-form")
KERNELS = ("fc-ntk", "fc-nngp", "conv-ntk", "conv-nngp", "conv-gap-ntk", "conv-gap-nngp",
           "linear", "rbf")
FEATURES = ("linear", "rff", "fcnn")


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


# ----------------------------------------------------------------------------- parsing

def build_parser() -> argparse.ArgumentParser:
    from jdd.data import DATASETS

    p = argparse.ArgumentParser(
        prog="jdd", description="Dataset distillation in JAX.",
        epilog="Example: jdd distill --method unrolled --dataset digits --ipc 10 --seeds 4 "
               "--steps 1000 --out runs/digits-ipc10")
    p.add_argument("--version", action="version", version=f"jdd {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser(
        "distill", help="distil a dataset, evaluate it against baselines, save the result",
        description="Distil --seeds independent synthetic sets in one vmapped, jitted "
                    "computation, evaluate them (and the random-subset and full-data baselines "
                    "with the same learner), and write OUT/distilled.npz, OUT/metrics.json and "
                    "PNGs of the distilled set and the loss curve.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = d.add_argument_group("what to distil")
    g.add_argument("--method", required=True,
                   help=f"distillation method, one of: {', '.join(METHODS)}")
    g.add_argument("--dataset", default="digits",
                   help=f"dataset, one of: {', '.join(DATASETS)}")
    g.add_argument("--data-dir", default=None,
                   help="folder with the dataset files (or the .npz path for --dataset npz); "
                        "default $JDD_DATA_DIR; not needed for digits")
    g.add_argument("--ipc", type=int, default=10, help="synthetic examples per class")
    g.add_argument("--preprocess", default="standardize", choices=("none", "standardize", "zca"),
                   help="preprocessing fitted on train, applied to train and test, saved")
    g.add_argument("--zca-reg", type=float, default=0.1, help="ZCA regulariser (x mean eigenvalue)")
    g = d.add_argument_group("run")
    g.add_argument("--seeds", type=int, default=1, help="independent distillations (vmapped)")
    g.add_argument("--seed", type=int, default=0, help="base random seed")
    g.add_argument("--steps", type=int, default=1000, help="outer (distillation) steps")
    g.add_argument("--lr", type=float, default=None,
                   help="outer Adam learning rate (default: 0.01 unrolled, 0.01 kip)")
    g.add_argument("--schedule", default="constant", choices=("constant", "cosine"),
                   help="outer learning-rate schedule: constant, or cosine decay to 0 over --steps")
    g.add_argument("--batch-size", type=int, default=256, help="real examples per outer step")
    g.add_argument("--init", default=None,
                   help="initialisation of the synthetic set: real or noise (default: real)")
    g.add_argument("--log-every", type=int, default=50, help="steps per jitted chunk / log entry")
    g.add_argument("--out", required=True, help="output folder")
    g.add_argument("--quiet", action="store_true", help="no progress bar or table")
    g = d.add_argument_group("learner (unrolled; also the evaluation learner)")
    _add_learner_args(g, defaults=True)
    g.add_argument("--no-learn-labels", action="store_true", help="keep one-hot labels fixed")
    g.add_argument("--no-learn-lr", action="store_true", help="keep the inner lr fixed")
    g = d.add_argument_group("kernel methods")
    g.add_argument("--kernel", default="fc-ntk", help=f"kip kernel, one of: {', '.join(KERNELS)}")
    g.add_argument("--kernel-depth", type=int, default=3, help="hidden layers of the kernel's net")
    g.add_argument("--reg", type=float, default=1e-6,
                   help="KRR regulariser, relative to trace(K_ss)/m")
    g.add_argument("--features", default="linear",
                   help=f"krr-closed-form feature map, one of: {', '.join(FEATURES)}")
    g.add_argument("--lam-s", type=_lam_s, default="auto",
                   help="closed form: distilled-set ridge lambda_S (a number >= 0, or 'auto': 0 "
                        "when the constructed features are realisable by the map, else the small "
                        "admissible value that keeps bounded RFF features in range)")
    g.add_argument("--float64", action="store_true",
                   help="closed form: construct in float64 (|W_S - W|/|W| ~1e-10 instead of ~1e-3)")
    g.add_argument("--ridge-solver", default="svd", choices=("svd", "gram"),
                   help="closed form: how the original ridge model is fitted; 'gram' "
                        "eigendecomposes the smaller Gram matrix (fast when n >> p; best with "
                        "--float64 or a clearly positive ridge), 'svd' is the accurate default")
    g.add_argument("--dp-epsilon", type=float, default=None, help="closed form: DP epsilon")
    g.add_argument("--dp-delta", type=float, default=1e-5, help="closed form: DP delta")
    g = d.add_argument_group("evaluation")
    g.add_argument("--n-models", type=int, default=10, help="fresh models per evaluated set")
    g.add_argument("--no-eval", action="store_true", help="skip evaluation and baselines")
    g.add_argument("--full-data-epochs", type=int, default=30,
                   help="epochs of minibatch training for the full-data network baseline")

    e = sub.add_parser(
        "evaluate", help="re-evaluate a saved distilled set",
        description="Train fresh learners on a saved distilled set (optionally another "
                    "architecture) and on the random-subset and full-data baselines with the same "
                    "learner; print a table and write RUN/eval-NAME.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    e.add_argument("run", help="run folder (or its distilled.npz)")
    e.add_argument("--data-dir", default=None, help="dataset folder (default: as in the run)")
    e.add_argument("--n-models", type=int, default=10, help="fresh models per evaluated set")
    e.add_argument("--seed", type=int, default=1, help="evaluation random seed")
    e.add_argument("--learner", default=None, choices=("network", "krr"),
                   help="learner kind (default: the run's). A network trained on a kip or "
                        "krr-closed-form set uses squared error on its targets (200 Adam steps "
                        "unless --inner-steps)")
    _add_learner_args(e, defaults=False)
    e.add_argument("--kernel", default=None, help="krr learner kernel (default: the run's)")
    e.add_argument("--reg", type=float, default=None, help="krr regulariser")
    e.add_argument("--no-baselines", action="store_true", help="evaluate the distilled set only")
    e.add_argument("--quiet", action="store_true", help="print nothing")

    sub.add_parser("methods", help="list methods, datasets, models and kernels")
    return p


def _lam_s(text: str):
    if text == "auto":
        return text
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0 or 'auto'; got {text!r}")
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"lambda_S must be >= 0; got {v}")
    return v


def _add_learner_args(g, defaults: bool):
    from jdd.models import MODELS

    dv = (lambda v: v) if defaults else (lambda v: None)
    g.add_argument("--model", default=dv("mlp"), help=f"network, one of: {', '.join(MODELS)}")
    g.add_argument("--hidden", type=int, nargs="+", default=dv([128]), help="MLP hidden widths")
    g.add_argument("--width", type=int, default=dv(128), help="ConvNet channels / two-layer width")
    g.add_argument("--depth", type=int, default=dv(3), help="ConvNet depth")
    g.add_argument("--norm", default=dv("instance"), help="ConvNet norm: instance, layer, none")
    g.add_argument("--inner-steps", type=int, default=dv(20), help="inner training steps")
    g.add_argument("--inner-optimizer", default=dv("adam"), help="sgd, momentum or adam")
    g.add_argument("--inner-lr", type=float, default=dv(0.01),
                   help="initial inner lr (unrolled) / default lr for sets without a learned one")
    g.add_argument("--memory", default=dv("unroll"), help="unroll, checkpoint or truncated")
    g.add_argument("--truncate", type=int, default=dv(10), help="steps kept by --memory truncated")


# ----------------------------------------------------------------------------- helpers

def _version() -> str:
    from jdd import __version__
    return __version__


def versions() -> dict:
    """Versions of jdd and its main dependencies (for metrics.json)."""
    import flax
    import jax
    import jaxlib
    import numpy
    import optax
    return {"jdd": _version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "optax": optax.__version__, "flax": flax.__version__, "numpy": numpy.__version__,
            "python": platform.python_version(), "backend": jax.default_backend()}


def _model_kwargs(name: str, a) -> dict:
    if name == "mlp":
        return {"hidden": tuple(a.hidden)}
    if name == "convnet":
        return {"width": a.width, "depth": a.depth, "norm": a.norm}
    return {"width": a.width}


def _model(a, num_classes: int):
    from jdd.models import MODELS, make_model
    if a.model not in MODELS:
        raise CLIError(f"unknown model {a.model!r}; valid models: {', '.join(MODELS)}")
    return make_model(a.model, num_classes, **_model_kwargs(a.model, a))


def _train_config(a):
    from jdd.train import TrainConfig, check_config
    cfg = TrainConfig(steps=a.inner_steps, optimizer=a.inner_optimizer, memory=a.memory,
                      truncate=a.truncate)
    try:
        check_config(cfg)
    except ValueError as e:
        raise CLIError(str(e)) from None
    return cfg


def kernel_fn_by_name(name: str, depth: int = 3):
    """A jdd kernel function by CLI name (see ``KERNELS``)."""
    import jdd.kernels as K
    if name not in KERNELS:
        raise CLIError(f"unknown kernel {name!r}; valid kernels: {', '.join(KERNELS)}")
    if name == "linear":
        return K.linear_kernel()
    if name == "rbf":
        return K.rbf_kernel()
    kind = name.rsplit("-", 1)[1]
    if name.startswith("fc-"):
        return K.fc_kernel(depth=depth, activation="relu", kind=kind)
    readout = "gap" if name.startswith("conv-gap") else "flatten"
    return K.conv_kernel(depth=depth, readout=readout, kind=kind)


def _load_data(name: str, data_dir, preprocess: str, zca_reg: float, quiet: bool):
    from jdd.data import DATASETS, DataError, load_dataset, preprocess as prep
    if name not in DATASETS:
        raise CLIError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")
    try:
        train, test = load_dataset(name, data_dir)
        train, test, pre = prep(train, test, preprocess, zca_reg=zca_reg)
    except DataError as e:
        raise CLIError(str(e)) from None
    _say(quiet, f"data: {train.name} {train.n} x {train.feature_shape}, {test.name} {test.n}, "
                f"{train.num_classes} classes, preprocess={preprocess}")
    return train, test, pre


def _say(quiet: bool, msg: str) -> None:
    if not quiet:
        print(msg, flush=True)


def results_table(rows: list[tuple[str, dict]]) -> str:
    """Format ``[(label, eval dict)]`` as a plain-text table (accuracies in %)."""
    head = f"{'set':<28} {'test accuracy (%)':>20} {'models':>7}  learner"
    lines = [head, "-" * len(head)]
    for label, r in rows:
        acc = f"{100 * r['test_accuracy_mean']:.2f} +- {100 * r['test_accuracy_std']:.2f}"
        lines.append(f"{label:<28} {acc:>20} {r['n_models']:>7}  {r['learner']}")
    return "\n".join(lines)


def _pool(results) -> dict:
    """Pool several EvalResults (one per seed) into one metrics dict."""
    import numpy as np
    accs = np.concatenate([r.accuracies for r in results])
    return {"test_accuracy_mean": float(accs.mean()), "test_accuracy_std": float(accs.std()),
            "n_models": int(accs.size), "learner": results[0].learner,
            "per_seed_mean": [r.mean for r in results],
            "accuracies": [float(a) for a in accs]}


# ----------------------------------------------------------------------------- distill

class MethodRun(NamedTuple):
    """What a method's runner returns to the CLI."""

    x: object            # (seeds, m, ...) synthetic inputs
    y: object            # (seeds, m, k) targets
    lr: object           # (seeds,) learned lr or NaN
    seconds: float       # distillation wall time
    learner: object      # jdd.evaluate.Learner used for the result AND the baselines
    history: dict        # metric -> (seeds, t) arrays
    steps_logged: object
    config: dict         # method settings for metrics.json
    extra: dict          # method-specific results for metrics.json


def _run_unrolled(a, train, test, keys) -> MethodRun:
    from jdd.distill import distill
    from jdd.distill.unrolled import unrolled
    from jdd.evaluate import full_data_config, network_learner

    model = _model(a, train.num_classes)
    cfg = _train_config(a)
    init = a.init or "real"
    if init not in ("real", "noise"):
        raise CLIError(f"unknown --init {init!r} for unrolled; valid: real, noise")
    d = unrolled(model, ipc=a.ipc, inner=cfg, optimizer=_outer_optimizer(a),
                 batch_size=a.batch_size, init=init, inner_lr=a.inner_lr,
                 learn_labels=not a.no_learn_labels, learn_lr=not a.no_learn_lr)
    r = distill(d, keys, train, a.steps, log_every=a.log_every, progress=not a.quiet,
                desc=f"unrolled ipc={a.ipc} seeds={len(keys)}")
    eval_cfg = cfg._replace(memory="unroll")
    learner = network_learner(model, eval_cfg, a.inner_lr,
                              full_data=full_data_config(eval_cfg, train.n,
                                                         epochs=a.full_data_epochs))
    config = {"model": model.name, "inner": cfg._asdict(), "outer_lr": a.lr or 1e-2,
              "outer_schedule": a.schedule,
              "batch_size": a.batch_size, "init": init, "inner_lr_init": a.inner_lr,
              "learn_labels": not a.no_learn_labels, "learn_lr": not a.no_learn_lr}
    return MethodRun(r.synthetic.x, r.synthetic.y, r.synthetic.lr, r.seconds, learner,
                     r.history, r.steps_logged, config, {})


def _outer_optimizer(a):
    """Adam on the synthetic set at ``--lr`` (default 0.01), constant or cosine-decayed to 0."""
    import optax
    lr = a.lr or 1e-2
    return optax.adam(optax.cosine_decay_schedule(lr, a.steps) if a.schedule == "cosine" else lr)


def _run_kip(a, train, test, keys) -> MethodRun:
    from jdd.distill import distill
    from jdd.distill.kip import kip
    from jdd.evaluate import kernel_learner

    kfn = kernel_fn_by_name(a.kernel, a.kernel_depth)
    init = a.init or "real"
    d = kip(kfn, ipc=a.ipc, optimizer=_outer_optimizer(a), reg=a.reg,
            learn_labels=not a.no_learn_labels, batch_size=a.batch_size, init=init)
    r = distill(d, keys, train, a.steps, log_every=a.log_every, progress=not a.quiet,
                desc=f"kip {a.kernel} ipc={a.ipc} seeds={len(keys)}")
    learner = kernel_learner(kfn, a.reg, name=f"krr[{a.kernel}, depth {a.kernel_depth}]")
    import numpy as np
    lr = np.full((len(keys),), np.nan, np.float32)
    config = {"kernel": a.kernel, "kernel_depth": a.kernel_depth, "reg": a.reg,
              "outer_lr": a.lr or 1e-2, "outer_schedule": a.schedule,
              "batch_size": a.batch_size, "init": init,
              "learn_labels": not a.no_learn_labels}
    return MethodRun(r.synthetic.x, r.synthetic.y, lr, r.seconds, learner, r.history,
                     r.steps_logged, config, {})


def _run_closed_form(a, train, test, keys) -> MethodRun:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jdd.distill import krr_closed_form as cf
    from jdd.evaluate import feature_ridge_learner
    from jdd.kernels.features import feature_map

    init = a.init or "noise"
    if init not in ("noise", "real"):
        raise CLIError(f"unknown --init {init!r} for krr-closed-form; valid: noise, real")
    if getattr(a, "float64", False):
        return _in_float64(_run_closed_form_64, a, train, test, keys)
    t0 = time.perf_counter()
    k_feat, k_lam = jax.random.split(jax.random.key(a.seed + 7919))
    d = int(np.prod(train.feature_shape))
    fm = feature_map(a.features, k_feat, d)
    # lam on a validation split of TRAIN, never the test set
    lam = cf.select_lambda(k_lam, fm, train, solver=a.ridge_solver)
    phi = fm.phi(train.x)
    w = cf.fit_ridge(phi, train.one_hot(phi.dtype), lam, solver=a.ridge_solver)
    dp = None
    if a.dp_epsilon is not None:
        bound = float(jnp.max(jnp.linalg.norm(phi, axis=1)))
        dp = cf.DPConfig(a.dp_epsilon, a.dp_delta, cf.ridge_sensitivity(train.n, bound, lam))
    results = []
    try:
        for key in keys:
            results.append(cf.closed_form_distill(key, fm, train, ipc=a.ipc, lam=lam,
                                                  lam_s=a.lam_s, init=init, dp=dp, W=w))
    except ValueError as e:
        raise CLIError(str(e)) from None
    jax.block_until_ready(results)
    seconds = time.perf_counter() - t0
    lam_s = float(results[0].lam_s)
    learner = feature_ridge_learner(fm, lam_s, float(lam))
    rel = [float(r.rel_err) for r in results]
    _say(a.quiet, f"closed form: lam={float(lam):.3g} (validation split), lam_s={lam_s:.3g}, "
                  f"max |W_S - W| / |W| = {max(rel):.2e}")
    config = {"features": a.features, "p": fm.p, "lam": float(lam), "lam_s": lam_s,
              "init": init, "ridge_solver": a.ridge_solver, "dp": dp._asdict() if dp else None}
    extra = {"closed_form": {"rel_err_W": rel,
                             "feature_err": [float(r.feature_err) for r in results],
                             "lam_s_max": [float(r.lam_s_max) for r in results]}}
    x = np.stack([np.asarray(r.x_s, np.float32) for r in results])
    y = np.stack([np.asarray(r.y_s, np.float32) for r in results])
    lr = np.full((len(keys),), np.nan, np.float32)
    return MethodRun(x, y, lr, seconds, learner, {}, np.zeros(0), config, extra)


def _in_float64(fn, a, train, test, keys):
    import jax
    import jax.numpy as jnp
    with jax.enable_x64(True):
        return fn(a, train.replace(x=jnp.asarray(train.x, jnp.float64)), test, keys)


def _run_closed_form_64(a, train, test, keys):
    a64 = argparse.Namespace(**{**vars(a), "float64": False})
    run = _run_closed_form(a64, train, test, keys)
    run.config["float64"] = True
    return run


RUNNERS: dict[str, Callable] = {"unrolled": _run_unrolled, "kip": _run_kip,
                                "krr-closed-form": _run_closed_form}


def cmd_distill(a) -> int:
    import jax
    import numpy as np
    from jdd.artifacts import save_curve, save_distilled, save_image_grid, write_json
    from jdd.data import DataError, check_ipc
    from jdd.evaluate import evaluate_full_data, evaluate_random_subset, evaluate_set

    # -- validate everything cheap before any long computation
    if a.method not in METHODS:
        raise CLIError(f"unknown method {a.method!r}; valid methods: {', '.join(METHODS)}")
    for name, v in (("--ipc", a.ipc), ("--seeds", a.seeds), ("--n-models", a.n_models),
                    ("--batch-size", a.batch_size), ("--log-every", a.log_every)):
        if v < 1:
            raise CLIError(f"{name} must be >= 1; got {v}")
    if a.steps < 0:
        raise CLIError(f"--steps must be >= 0; got {a.steps}")
    if a.method == "kip":
        kernel_fn_by_name(a.kernel, a.kernel_depth)
    if a.method == "krr-closed-form" and a.features not in FEATURES:
        raise CLIError(f"unknown --features {a.features!r}; valid: {', '.join(FEATURES)}")
    if a.method == "unrolled":
        _model(a, 2)
        _train_config(a)
    if os.path.exists(a.out) and not os.path.isdir(a.out):
        raise CLIError(f"--out {a.out} exists and is not a folder")
    train, test, pre = _load_data(a.dataset, a.data_dir, a.preprocess, a.zca_reg, a.quiet)
    try:
        check_ipc(np.asarray(train.y), train.num_classes, a.ipc, train.name)
    except DataError as e:
        raise CLIError(str(e)) from None

    keys = jax.random.split(jax.random.key(a.seed), a.seeds)
    run = RUNNERS[a.method](a, train, test, keys)
    x, y, lr = np.asarray(run.x), np.asarray(run.y), np.asarray(run.lr, np.float32)
    _say(a.quiet, f"distilled {a.seeds} seed(s) in {run.seconds:.1f} s")

    meta = {"method": a.method, "dataset": a.dataset, "data_dir": a.data_dir, "ipc": a.ipc,
            "seeds": a.seeds, "seed": a.seed, "steps": a.steps, "preprocess": a.preprocess,
            "zca_reg": a.zca_reg, "num_classes": train.num_classes,
            "learner": run.learner.config, "config": run.config}
    os.makedirs(a.out, exist_ok=True)
    save_distilled(os.path.join(a.out, "distilled.npz"), x, y, lr, pre, meta)

    metrics = {"method": a.method, "dataset": a.dataset, "ipc": a.ipc, "seeds": a.seeds,
               "steps": a.steps, "distill_seconds": run.seconds, "config": run.config,
               **run.extra}
    if run.history:
        metrics["history"] = {"steps": np.asarray(run.steps_logged).tolist(),
                              **{k: np.asarray(v).tolist() for k, v in run.history.items()}}
    if not a.no_eval:
        t0 = time.perf_counter()
        ekey = jax.random.key(a.seed + 10_000)
        per_seed = [evaluate_set(run.learner, jax.random.fold_in(ekey, s), x[s], y[s], test,
                                 a.n_models, lr[s]) for s in range(a.seeds)]
        result = _pool(per_seed)
        rand = evaluate_random_subset(run.learner, jax.random.fold_in(ekey, 1 << 20), train, test,
                                      a.ipc, a.n_models).to_dict()
        full = evaluate_full_data(run.learner, jax.random.fold_in(ekey, 1 << 21), train, test,
                                  a.n_models).to_dict()
        metrics["result"] = result
        metrics["baselines"] = {"random_subset": rand, "full_data": full}
        metrics["eval_seconds"] = time.perf_counter() - t0
        if not a.quiet:
            print()
            print(results_table([(f"distilled ({a.method}, ipc {a.ipc})", result),
                                 (f"random subset (ipc {a.ipc})", rand),
                                 ("full data", full)]))
    metrics["versions"] = versions()
    write_json(os.path.join(a.out, "metrics.json"), metrics)
    _save_pictures(a.out, x, y, pre, run, train.feature_shape, a.method, save_image_grid,
                   save_curve)
    _say(a.quiet, f"wrote {a.out}/distilled.npz, metrics.json, distilled.png")
    return 0


def _save_pictures(out, x, y, pre, run, feature_shape, method, save_image_grid, save_curve):
    import numpy as np
    try:
        imgs = np.asarray(pre.invert(x[0]))
    except Exception:  # a preprocessing that cannot be inverted: show the raw values
        imgs = x[0]
    # Group by the class slot the set was initialised with (class-major order) unless the labels
    # say otherwise: learned soft labels may move their argmax away from the slot's class.
    m, k = y.shape[1], y.shape[2]
    labels = np.argmax(y[0], -1)
    if m % k == 0:
        slots = np.arange(m) // (m // k)
        if np.mean(slots == labels) > 0.5:
            labels = slots
    if len(feature_shape) == 3:
        save_image_grid(os.path.join(out, "distilled.png"), imgs, labels,
                        title=f"{method}: distilled set (seed 0), one column per class")
    else:
        save_image_grid(os.path.join(out, "distilled.png"), imgs.reshape(len(imgs), -1),
                        labels, title=f"{method}: distilled set (seed 0)")
    if run.history and "loss" in run.history:
        save_curve(os.path.join(out, "loss.png"), run.steps_logged, run.history["loss"],
                   ylabel="outer loss", title=f"{method}: outer loss")


# ----------------------------------------------------------------------------- evaluate

def cmd_evaluate(a) -> int:
    import jax
    from jdd.artifacts import load_distilled, write_json
    from jdd.data import DataError, load_dataset
    from jdd.evaluate import (evaluate_full_data, evaluate_random_subset, evaluate_set,
                              full_data_config, kernel_learner, network_learner)
    from jdd.models import MODELS
    from jdd.train import TrainConfig

    if a.n_models < 1:
        raise CLIError(f"--n-models must be >= 1; got {a.n_models}")
    try:
        ds = load_distilled(a.run)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e)) from None
    meta = ds.meta
    run_dir = a.run if os.path.isdir(a.run) else os.path.dirname(a.run)
    try:
        train, test = load_dataset(meta["dataset"], a.data_dir or meta.get("data_dir"))
    except DataError as e:
        raise CLIError(str(e)) from None
    pre = ds.preprocessor
    train = train.replace(x=pre.apply(train.x))
    test = test.replace(x=pre.apply(test.x))
    if tuple(ds.x.shape[2:]) != train.feature_shape:
        raise CLIError(f"the distilled set has feature shape {ds.x.shape[2:]} but "
                       f"{meta['dataset']} has {train.feature_shape}")

    saved = meta.get("learner", {})
    kind = a.learner or ("krr" if saved.get("kind") == "krr" else "network")
    if kind == "krr":
        kname = a.kernel or meta.get("config", {}).get("kernel", "fc-ntk")
        depth = meta.get("config", {}).get("kernel_depth", 3)
        reg = a.reg if a.reg is not None else saved.get("reg", 1e-6)
        learner = kernel_learner(kernel_fn_by_name(kname, depth), reg,
                                 name=f"krr[{kname}, depth {depth}]")
        tag = f"krr-{kname}"
    else:
        model_name = a.model or saved.get("model", "mlp").split("(")[0]
        if model_name not in MODELS:
            model_name = "mlp"
        ns = argparse.Namespace(
            model=model_name, hidden=a.hidden or [128], width=a.width or 128,
            depth=a.depth or 3, norm=a.norm or "instance")
        model = _model(ns, train.num_classes)
        base = {k: saved[k] for k in TrainConfig._fields if k in saved}
        cfg = TrainConfig(**base) if base else TrainConfig(steps=20)
        if saved.get("kind") != "network":
            # kernel-method sets carry regression targets, not class probabilities: train the
            # finite network on them with squared error (as KIP does), for longer.
            cfg = TrainConfig(steps=200, optimizer="adam", loss="mse")
        cfg = cfg._replace(steps=a.inner_steps or cfg.steps,
                           optimizer=a.inner_optimizer or cfg.optimizer, memory="unroll")
        lr_default = a.inner_lr or saved.get("lr_default", 0.01)
        learner = network_learner(model, cfg, lr_default,
                                  full_data=full_data_config(cfg, train.n))
        tag = model_name
    key = jax.random.key(a.seed)
    per_seed = [evaluate_set(learner, jax.random.fold_in(key, s), ds.x[s], ds.y[s], test,
                             a.n_models, ds.lr[s]) for s in range(ds.x.shape[0])]
    out = {"run": os.path.abspath(run_dir), "method": meta["method"], "dataset": meta["dataset"],
           "ipc": meta["ipc"], "learner_config": learner.config, "result": _pool(per_seed)}
    rows = [(f"distilled ({meta['method']}, ipc {meta['ipc']})", out["result"])]
    if not a.no_baselines:
        ipc = int(meta["ipc"])
        out["baselines"] = {
            "random_subset": evaluate_random_subset(learner, jax.random.fold_in(key, 1 << 20),
                                                    train, test, ipc, a.n_models).to_dict(),
            "full_data": evaluate_full_data(learner, jax.random.fold_in(key, 1 << 21), train,
                                            test, a.n_models).to_dict()}
        rows += [(f"random subset (ipc {ipc})", out["baselines"]["random_subset"]),
                 ("full data", out["baselines"]["full_data"])]
    out["versions"] = versions()
    path = os.path.join(run_dir, f"eval-{tag}.json")
    write_json(path, out)
    if not a.quiet:
        print(results_table(rows))
        print(f"wrote {path}")
    return 0


def cmd_methods(a) -> int:
    from jdd.data import DATASETS
    from jdd.models import MODELS
    print("methods:  " + ", ".join(METHODS))
    print("datasets: " + ", ".join(DATASETS))
    print("models:   " + ", ".join(MODELS))
    print("kernels:  " + ", ".join(KERNELS))
    print("features: " + ", ".join(FEATURES))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jdd`` console command."""
    parser = build_parser()
    a = parser.parse_args(argv)
    if a.command is None:
        parser.print_help()
        return 2
    try:
        return {"distill": cmd_distill, "evaluate": cmd_evaluate, "methods": cmd_methods}[
            a.command](a)
    except CLIError as e:
        print(f"jdd {a.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"jdd {a.command}: interrupted; nothing half-written was left behind.",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
