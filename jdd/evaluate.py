"""The evaluation protocol: train fresh learners on a set, report test accuracy mean +- std.

A :class:`Learner` turns a training set into a predictor. :func:`evaluate_set` trains
``n_models`` learners from independent keys on one set (vmapped: one compiled computation) and
reports the mean and standard deviation of their test accuracy. The two baselines use the SAME
learner:

* :func:`evaluate_random_subset`: every model gets its own random subset with the same number of
  examples per class (so the std covers both subset and initialisation randomness);
* :func:`evaluate_full_data`: models trained on the whole training set (for a network learner, with
  minibatches and more steps: ``full_data_config``).

:func:`protocol_learner` is the field's own recipe (DC/DSA/DM/MTT): a fixed number of epochs of SGD
with momentum 0.9, weight decay 5e-4, lr 0.01 x0.1 at half, batch 256, optionally with DSA
augmentation, and the same recipe on the whole training set for the full-data baseline.

Nothing here looks at the test set except to report the final accuracy: no checkpoint or
hyperparameter is ever selected on it.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jdd.data.dataset import Dataset, per_class_indices
from jdd.models import Model
from jdd.train import TrainConfig, accuracy, check_config, init_and_fit, protocol_config


class Learner(NamedTuple):
    """How a set is turned into a predictor.

    Attributes:
        name: short description written to metrics.json (``result.learner``).
        fit: ``(key, x (m, ...), y (m, k), lr ()) -> state``: train one model (``lr`` may be NaN,
            meaning "use the learner's default").
        accuracy: ``(state, x (n, ...), y (n,) int) -> ()`` test accuracy.
        config: JSON-serialisable description of the settings.
        full_data: the learner to use for the full-data baseline (None: this one).
    """

    name: str
    fit: Callable[..., Any]
    accuracy: Callable[..., jax.Array]
    config: dict
    full_data: "Learner | None" = None


class EvalResult(NamedTuple):
    """Test accuracies of ``n_models`` independently trained learners.

    Attributes:
        accuracies: (n_models,) float numpy array, fractions in [0, 1].
        learner: the learner's name.
    """

    accuracies: np.ndarray
    learner: str

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def std(self) -> float:
        return float(np.std(self.accuracies))

    def to_dict(self) -> dict:
        """``{"test_accuracy_mean", "test_accuracy_std", "n_models", "learner", "accuracies"}``."""
        return {"test_accuracy_mean": self.mean, "test_accuracy_std": self.std,
                "n_models": int(len(self.accuracies)), "learner": self.learner,
                "accuracies": [float(a) for a in self.accuracies]}

    def __str__(self) -> str:
        return f"{100 * self.mean:.2f} +- {100 * self.std:.2f} % ({len(self.accuracies)} models)"


def full_data_config(cfg: TrainConfig, n: int, *, epochs: int = 30,
                     batch_size: int = 128) -> TrainConfig:
    """The recipe for training on a whole dataset of ``n`` examples: same optimizer, minibatches
    of ``batch_size``, ``epochs`` passes (at least ``cfg.steps`` steps), full backprop."""
    steps = max(cfg.steps, math.ceil(epochs * n / batch_size))
    return cfg._replace(steps=steps, batch_size=batch_size, memory="unroll")


def augment_name(augment: Callable | None) -> str:
    """A short description of an augmentation for learner names and metrics.json.

    ``"none"`` for None; else the augmentation's ``name`` attribute when it is a string (set one
    on your function, e.g. ``f.name = "dsa(color_crop)"``), the wrapped function's name for a
    ``functools.partial``, or its ``__name__``.
    """
    if augment is None:
        return "none"
    name = getattr(augment, "name", None)
    if isinstance(name, str):
        return name
    if isinstance(augment, functools.partial):
        return augment_name(augment.func)
    return getattr(augment, "__name__", type(augment).__name__)


def _augment_config(augment: Callable | None) -> dict:
    """``{"augmentation": name}`` plus ``"augmentation_doc"`` (the first line of its docstring,
    which for jdd.augment's DSA spells out strategy, mode and parameters) when there is one."""
    out = {"augmentation": augment_name(augment)}
    doc = (getattr(augment, "__doc__", None) or "").strip() if augment is not None else ""
    if doc:
        out["augmentation_doc"] = doc.splitlines()[0]
    return out


def network_learner(model: Model, cfg: TrainConfig, lr: float = 0.01, *,
                    full_data: TrainConfig | None = None, full_data_lr: float | None = None,
                    name: str | None = None, augment: Callable | None = None) -> Learner:
    """A neural-network learner: fresh init from the key, then :func:`jdd.train.fit`.

    Args:
        model: the network.
        cfg: training recipe for small (synthetic / subset) sets.
        lr: default learning rate, used when a set carries no learned rate (``lr`` NaN).
        full_data: recipe for the full-data baseline (default :func:`full_data_config`, built when
            the size of the training set is known).
        full_data_lr: learning rate for the full-data baseline (default ``lr``).
        name: description (default from the model and recipe).
        augment: optional ``augment(key, x) -> x`` applied to every minibatch (see
            :func:`jdd.train.fit`), for this learner and its full-data baseline; recorded in
            ``config["augmentation"]`` (the key is absent when None).
    """
    check_config(cfg)
    aug = f", {augment_name(augment)}" if augment is not None else ""
    name = name or f"{model.name} [{cfg.optimizer}, {cfg.steps} steps{aug}]"

    def fit(key, x, y, set_lr):
        use = jnp.where(jnp.isfinite(set_lr), set_lr, lr)
        return init_and_fit(model, key, x, y, use, cfg, augment)

    def acc(params, x, y):
        return accuracy(model, params, x, y)

    config = {"kind": "network", "model": model.name, "lr_default": lr, **cfg._asdict()}
    if augment is not None:
        config.update(_augment_config(augment))
    full = None
    if full_data is not None:
        full = network_learner(model, full_data, full_data_lr or lr,
                               name=f"{model.name} [{full_data.optimizer}, {full_data.steps} steps,"
                                    f" batch {full_data.batch_size}{aug}]", augment=augment)
    return Learner(name=name, fit=fit, accuracy=acc, config=config, full_data=full)


def protocol_learner(model: Model, *, epochs: int, lr: float = 0.01, batch_size: int = 256,
                     momentum: float = 0.9, weight_decay: float = 5e-4,
                     augment: Callable | None = None, full_data_epochs: int | None = None,
                     name: str | None = None,
                     relabel: tuple[str, Callable] | None = None) -> Learner:
    """The DC/DSA/DM/MTT evaluation protocol as a :class:`Learner`.

    Each model: fresh init from its key, then ``epochs * ceil(m / batch_size)`` steps of SGD with
    momentum and coupled weight decay (torch's ``SGD``), lr x0.1 at half of the steps, on
    minibatches of ``batch_size`` (full batch when ``m <= batch_size``), each minibatch passed
    through ``augment`` (DSA in per-image mode in DSA/DM/MTT); see
    :func:`jdd.train.protocol_config` for the facts checked in the official code and the small
    differences. The number of steps is computed from the static size ``m = x.shape[0]`` of the
    set at fit time, so one learner serves sets of any size. A set's learned lr (not NaN)
    overrides ``lr``. The full-data baseline uses the same recipe, augmentation included, on the
    whole training set for ``full_data_epochs`` (default ``epochs``) epochs.

    Args:
        model: the network (the protocol's is ``make_model("convnet", k)``: ConvNet-D3, width
            128, instance norm).
        epochs: training epochs (300 in DC without augmentation; 1000 in DSA, DM and MTT).
        lr: default learning rate (0.01 in the official code).
        batch_size: minibatch size (256).
        momentum: SGD momentum (0.9).
        weight_decay: coupled weight decay (5e-4).
        augment: optional ``augment(key, x) -> x`` applied to every minibatch.
        full_data_epochs: epochs of the full-data baseline (default ``epochs``).
        name: description (default from the model and the recipe).
        relabel: ``(description, fn)``: knowledge distillation, every augmented minibatch's
            targets are ``fn(xb)`` (a teacher's softmax), for the set AND both baselines
            (:func:`jdd.train.fit`'s ``relabel``); None: the set's own labels.

    Returns:
        A :class:`Learner` whose ``config`` (for metrics.json) holds the model, epochs, lr,
        momentum, weight decay, batch size, schedule and augmentation.

    Example:
        >>> from jdd.models import make_model
        >>> ln = protocol_learner(make_model("mlp", 10, hidden=(16,)), epochs=300)
        >>> ln.config["epochs"], ln.config["schedule"], ln.full_data.config["epochs"]
        (300, 'step', 300)
    """
    full_epochs = epochs if full_data_epochs is None else full_data_epochs
    protocol_config(1, epochs=epochs, batch_size=batch_size)        # validates the numbers
    protocol_config(1, epochs=full_epochs, batch_size=batch_size)
    aug = augment_name(augment)

    def make(ep: int, label: str) -> Learner:
        def fit(key, x, y, set_lr):
            cfg = protocol_config(x.shape[0], epochs=ep, batch_size=batch_size,
                                  momentum=momentum, weight_decay=weight_decay)
            use = jnp.where(jnp.isfinite(set_lr), set_lr, lr)
            return init_and_fit(model, key, x, y, use, cfg, augment,
                                None if relabel is None else relabel[1])

        def acc(params, x, y):
            return accuracy(model, params, x, y)

        cfg = protocol_config(1, epochs=ep, batch_size=batch_size, momentum=momentum,
                              weight_decay=weight_decay)
        config = {"kind": "network", "recipe": "protocol", "model": model.name,
                  "epochs": ep, "lr_default": lr,
                  **{k: v for k, v in cfg._asdict().items() if k != "steps" and k != "truncate"},
                  "steps_rule": "epochs * ceil(set size / batch_size)",
                  "schedule_rule": "lr x0.1 from step steps // 2",
                  **_augment_config(augment),
                  **({"relabel": relabel[0]} if relabel is not None else {})}
        return Learner(name=label, fit=fit, accuracy=acc, config=config)

    def label(ep):
        kd = f", labels from {relabel[0]}" if relabel is not None else ""
        return (f"{model.name} [sgd-momentum {momentum}, wd {weight_decay:g}, lr {lr:g} step, "
                f"{ep} epochs, batch {batch_size}, aug {aug}{kd}]")

    full = make(full_epochs, label(full_epochs))
    small = make(epochs, name or label(epochs))
    config = dict(small.config, full_data_epochs=full_epochs)
    return small._replace(config=config, full_data=full)


def kernel_learner(kernel_fn: Callable, reg: float = 1e-6, name: str = "krr",
                   full_data_max: int | None = None) -> Learner:
    """Kernel ridge regression from the set: predictions ``K_ts (K_ss + reg tr(K_ss)/m I)^-1 y_s``.

    Deterministic (the key is unused), so ``n_models`` > 1 only matters for random subsets.

    Args:
        kernel_fn: ``(x1: (n1, ...), x2: (n2, ...)) -> (n1, n2)``.
        reg: ridge relative to ``tr(K_ss) / m``.
        name: the learner's name in reports.
        full_data_max: the full-data baseline's cap. Exact KRR on ``n`` training examples needs
            the ``n x n`` kernel and its factorisation (4 n^2 bytes each in float32: 14.4 GB for
            Fashion-MNIST's 60 000), so with a cap the baseline fits each model on a random
            subset of ``full_data_max`` examples (a different one per model key) when the
            training set is larger, and is named so. None: all of them, whatever it costs.
    """
    from jdd.kernels.krr import krr_predict  # kernels are optional until used

    if full_data_max is not None and (isinstance(full_data_max, bool) or
                                      int(full_data_max) != full_data_max or full_data_max < 1):
        raise ValueError(f"full_data_max must be a positive integer or None; got {full_data_max!r}")

    def fit(key, x, y, lr):
        return (x, y)

    def acc(state, x, y):
        xs, ys = state
        pred = krr_predict(kernel_fn, xs, ys, x, reg)
        return jnp.mean(jnp.argmax(pred, -1) == y)

    config = {"kind": "krr", "reg": reg}
    full = None
    if full_data_max is not None:
        cap = int(full_data_max)

        def fit_capped(key, x, y, lr):
            if x.shape[0] <= cap:
                return (x, y)
            idx = jax.random.choice(key, x.shape[0], (cap,), replace=False)
            return (x[idx], y[idx])

        config["full_data_max"] = cap
        full = Learner(name=f"{name} on at most {cap} training examples (a random subset)",
                       fit=fit_capped, accuracy=acc, config=config)
    return Learner(name=name, fit=fit, accuracy=acc, config=config, full_data=full)


def evaluate_set(learner: Learner, key: jax.Array, x: jax.Array, y: jax.Array, test: Dataset,
                 n_models: int = 10, lr: Any = float("nan")) -> EvalResult:
    """Train ``n_models`` learners on ``(x, y)`` from independent keys; test accuracy of each.

    Args:
        learner: the learner.
        key: PRNG key; model ``i`` uses ``split(key, n_models)[i]``.
        x: (m, *feature_shape) training inputs.
        y: (m, k) targets (soft labels) or (m,) int labels (one-hot encoded here).
        test: the test set.
        n_models: number of independent models.
        lr: learned learning rate carried by the set (NaN: the learner's default).

    Returns:
        :class:`EvalResult`.
    """
    y = _as_targets(y, test.num_classes)
    keys = jax.random.split(key, n_models)
    lr = jnp.asarray(lr, jnp.float32)
    accs = _set_evaluator(learner.fit, learner.accuracy)(keys, jnp.asarray(x), y, lr, test.x,
                                                         test.y)
    return EvalResult(np.asarray(accs, np.float64), learner.name)


def evaluate_random_subset(learner: Learner, key: jax.Array, train: Dataset, test: Dataset,
                           ipc: int, n_models: int = 10) -> EvalResult:
    """The random-subset baseline: model ``i`` trains on its own random ``ipc``-per-class subset."""
    k_sub, k_fit = jax.random.split(key)
    idx = np.stack([per_class_indices(k, np.asarray(train.y), train.num_classes, ipc, train.name)
                    for k in jax.random.split(k_sub, n_models)])
    keys = jax.random.split(k_fit, n_models)
    run = _subset_evaluator(learner.fit, learner.accuracy, train.num_classes)
    accs = run(keys, jnp.asarray(idx), train.x, train.y, test.x, test.y)
    return EvalResult(np.asarray(accs, np.float64), learner.name)


def evaluate_full_data(learner: Learner, key: jax.Array, train: Dataset, test: Dataset,
                       n_models: int = 10) -> EvalResult:
    """The full-data baseline: ``n_models`` learners trained on all of ``train``."""
    full = learner.full_data or learner
    res = evaluate_set(full, key, train.x, train.y, test, n_models)
    return res._replace(learner=full.name)


@functools.lru_cache(maxsize=64)
def _set_evaluator(fit, acc):
    """Jitted "train n models (vmapped), then test each" for one learner; cached so evaluating
    several sets of the same shapes with the same learner compiles once."""

    @jax.jit
    def run(keys, x, y, lr, tx, ty):
        states = jax.vmap(fit, in_axes=(0, None, None, None))(keys, x, y, lr)
        return jax.lax.map(lambda s: acc(s, tx, ty), states)

    return run


@functools.lru_cache(maxsize=64)
def _subset_evaluator(fit, acc, num_classes: int):
    nan = jnp.float32(jnp.nan)

    @jax.jit
    def run(keys, idx, x, y, tx, ty):
        def one(k, i):
            return fit(k, x[i], jax.nn.one_hot(y[i], num_classes), nan)
        states = jax.vmap(one)(keys, idx)
        return jax.lax.map(lambda s: acc(s, tx, ty), states)

    return run


def _as_targets(y, k: int) -> jax.Array:
    y = jnp.asarray(y)
    if y.ndim == 1:
        return jax.nn.one_hot(y, k, dtype=jnp.float32)
    return y.astype(jnp.float32)


def feature_ridge_learner(features, lam_s: float, full_lam: float) -> Learner:
    """Ridge regression on a fixed feature map (the closed-form KRR method's learner).

    ``fit`` solves ``W = fit_ridge(phi(x), y, lam_s)``; the full-data baseline uses the original
    model's ridge ``full_lam`` (chosen on a validation split of the training data). Deterministic:
    the key is unused.

    Args:
        features: a :class:`jdd.kernels.features.FeatureMap`.
        lam_s: ridge used on small (distilled / subset) sets.
        full_lam: ridge of the original model on all training data.
    """
    from jdd.distill.krr_closed_form import accuracy as w_accuracy
    from jdd.distill.krr_closed_form import fit_ridge

    def make(lam, name):
        def fit(key, x, y, lr):
            return fit_ridge(features.phi(x), y.astype(x.dtype), lam)

        def acc(w, x, y):
            return w_accuracy(w, features.phi(x), y)

        return Learner(name=name, fit=fit, accuracy=acc,
                       config={"kind": "feature-ridge", "features": features.name,
                               "p": features.p, "lam": float(lam)})

    full = make(full_lam, f"ridge[{features.name} features, lam={full_lam:.3g}]")
    small = make(lam_s, f"ridge[{features.name} features, lam={lam_s:.3g}]")
    return small._replace(full_data=full)
