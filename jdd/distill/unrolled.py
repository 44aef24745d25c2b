"""Dataset distillation by back-propagation through unrolled inner training (Wang et al. 2018).

"Performance matching": learn synthetic inputs, soft labels and the inner learning rate so that a
network freshly initialised and trained on the synthetic set for ``T`` steps has a low loss on real
data. The meta-gradient is ``jax.grad`` through the whole :func:`jdd.train.fit` loop.

This is one instance of the general bilevel problem (:func:`jdd.distill.bilevel`):

* inner learner ``fit(params, key)``: initialise a network from ``key`` and train it on
  ``(params["x"], softmax(params["label_logits"]))`` with learning rate ``exp(params["log_lr"])``;
* outer objective ``outer_loss(model, batch)``: the trained network's cross-entropy on a batch of
  real data.

Swapping either function gives another method; see :func:`unrolled`'s source for how little is
specific to classification.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

from jdd.distill.compose import Objective, Out, Parameterization, Probe, compose, pixels
from jdd.distill.core import Distiller, sample_rows
from jdd.config import opt, to_dict, validate
from jdd.methods import (ExtraOptions, Method, NetworkOptions, ParamOptions, Plan, RunSpec,
                         make_extra, make_network, make_param, param_info)
from jdd.models import Model
from jdd.train import MEMORY, OPTIMIZERS, TrainConfig, check_config, init_and_fit, loss_fn

#: Bounds on the learned inner learning rate: keeps exp(log_lr) from exploding to NaN (a known
#: failure of learnable-lr DD) or collapsing to zero.
LOG_LR_BOUNDS = (math.log(1e-5), math.log(10.0))


def performance_matching(model: Model, *, inner: TrainConfig = TrainConfig(steps=20),
                         batch_size: int = 256, inner_lr: float = 0.01,
                         learn_lr: bool = True) -> Objective:
    """The unrolled objective: train a fresh network on the synthetic set, score it on real data.

    ``loss = CE(f_T(x_real), y_real)`` where ``f_T`` is ``model`` initialised from the step's key
    and trained for ``inner.steps`` steps on the (augmented) synthetic set with learning rate
    ``exp(log_lr)`` by :func:`jdd.train.fit` (its memory strategies, including RaT-BPTT's random
    truncation, apply). The gradient flows through the whole inner run.

    Args:
        model: the learner network.
        inner: inner training recipe.
        batch_size: real examples per outer step.
        inner_lr: initial inner learning rate.
        learn_lr: learn the inner rate (log-parameterised, clipped to ``LOG_LR_BOUNDS``); else
            ``inner_lr`` is used exactly.

    Returns:
        An :class:`jdd.distill.compose.Objective` with learnable ``{"log_lr": ()}``; metrics
        ``accuracy`` (real batch, after inner training) and ``inner_lr``.
    """
    check_config(inner)
    if not inner_lr > 0 or not math.isfinite(inner_lr):
        raise ValueError(f"inner_lr must be a finite number > 0; got {inner_lr}.")
    ce = loss_fn("ce")

    def init(key, data, syn):
        return {"log_lr": jnp.asarray(math.log(inner_lr), syn.x.dtype)}, ()

    def lr_of(params):
        log_lr = params["log_lr"] if learn_lr else jax.lax.stop_gradient(params["log_lr"])
        return jnp.exp(log_lr)

    def loss(params, syn, classes, data, key, state, augment):
        k_batch, k_obj = jax.random.split(key)
        batch = sample_rows(k_batch, data, batch_size)
        k_fit, k_out = jax.random.split(k_obj)
        x_s, x_r = syn.x, batch.x
        if augment is not None:
            k_aug = jax.random.fold_in(k_out, 7)
            x_s, x_r = augment(k_aug, x_s), augment(k_aug, x_r)
        trained = init_and_fit(model, k_fit, x_s, syn.y, lr_of(params), inner)
        out = model.apply(trained, x_r)
        value = ce(out, jax.nn.one_hot(batch.y, out.shape[-1], dtype=out.dtype))
        acc = jnp.mean(jnp.argmax(out, -1) == batch.y)
        probe = Probe(params=trained, x_real=x_r, y_real=batch.y, x_syn=x_s, y_syn=classes)
        return Out(value, {"accuracy": acc, "inner_lr": lr_of(params)}, probe)

    def finalize(params, syn):
        return syn.replace(lr=jnp.exp(params["log_lr"]))

    def project(params):
        return {"log_lr": jnp.clip(params["log_lr"], *LOG_LR_BOUNDS)}

    return Objective(init=init, loss=loss, finalize=finalize,
                     project=project if learn_lr else None, model=model,
                     name=f"performance matching[{model.name}, {inner.steps} inner steps]")


def unrolled(model: Model, *, ipc: int, inner: TrainConfig = TrainConfig(steps=20),
             optimizer: optax.GradientTransformation | None = None, batch_size: int = 256,
             init: str = "real", inner_lr: float = 0.01, learn_labels: bool = True,
             learn_lr: bool = True, label_init: float = 3.0, augment=None,
             extra=(), param: Parameterization | None = None) -> Distiller:
    """Unrolled meta-gradient distiller with learnable inputs, soft labels and inner lr.

    The composition ``pixels(labels="softmax") x performance_matching(...)`` on
    :func:`jdd.distill.compose.compose`.

    Args:
        model: the learner network (pure init/apply), e.g. ``make_model("mlp", 10)``.
        ipc: synthetic examples per class.
        inner: the inner training recipe (steps, optimizer, memory strategy ...). Evaluate the
            distilled set with the same recipe and its learned learning rate.
        optimizer: outer optimizer (default ``optax.adam(1e-2)``).
        batch_size: real examples per outer step.
        init: ``"real"`` (random real examples of each class) or ``"noise"`` (Gaussian with the
            data's mean and std).
        inner_lr: initial inner learning rate.
        learn_labels: learn soft labels (label logits); else keep one-hot targets.
        learn_lr: learn the inner learning rate (log-parameterised; the learned value is clipped
            to LOG_LR_BOUNDS). When False, ``inner_lr`` is used exactly as given.
        label_init: initial logit of the true class (others 0), i.e. a softened one-hot.
        augment: optional ``(key, x) -> x`` applied with one draw to the synthetic set and the
            real batch.
        extra: extra loss terms (:class:`jdd.distill.compose.ExtraTerm`).
        param: the synthetic set's :class:`jdd.distill.Parameterization` (e.g.
            :func:`jdd.distill.low_rank.low_rank`); None: ``pixels(init=init, labels="softmax" or "hard", label_init=label_init)``. A given
            parameterization brings its own initialisation and labels.

    Returns:
        A :class:`jdd.distill.Distiller`. ``step(state, key, data)`` takes ``data`` a
        :class:`jdd.data.Dataset`; its metrics are ``loss`` (real-batch cross-entropy after inner
        training), ``accuracy`` (on that batch), ``inner_lr`` and ``grad_norm``.

    Example:
        >>> import jax
        >>> from jdd.data import load_digits
        >>> from jdd.distill import distill
        >>> from jdd.models import make_model
        >>> train, test = load_digits()
        >>> d = unrolled(make_model("mlp", 10, hidden=(32,)), ipc=1, inner=TrainConfig(steps=5))
        >>> r = distill(d, jax.random.split(jax.random.key(0), 2), train, 10, progress=False)
        >>> r.synthetic.x.shape
        (2, 10, 8, 8, 1)
    """
    if param is None:
        param = pixels(init=init, labels="softmax" if learn_labels else "hard",
                       label_init=label_init)
    objective = performance_matching(model, inner=inner, batch_size=batch_size,
                                     inner_lr=inner_lr, learn_lr=learn_lr)
    return compose(param, objective, ipc=ipc, optimizer=optimizer or optax.adam(1e-2),
                   augment=augment, extra=extra)


# ----------------------------------------------------------------------------- registry entry

@dataclasses.dataclass(frozen=True)
class UnrolledConfig(ParamOptions, ExtraOptions, NetworkOptions):
    """``jdd distill --method unrolled``. Defaults: the recipe of benchmarks/unrolled_digits.py
    (MLP with one hidden layer of 128, 20 inner Adam steps, outer Adam 0.01, 1000 steps:
    93.3 % at IPC 1 and 96.9 % at IPC 10 on digits)."""

    model: str = opt("mlp", "network trained in the inner loop (and evaluated)",
                     choices=("mlp", "convnet", "resnet", "two_layer"))
    inner_steps: int = opt(20, "inner training steps", ge=1, le=100000)
    inner_optimizer: str = opt("adam", "inner optimizer", choices=OPTIMIZERS)
    inner_lr: float = opt(0.01, "initial inner learning rate", gt=0, le=100)
    memory: str = opt("unroll", "inner-loop memory strategy (rat: RaT-BPTT random truncation)",
                      choices=MEMORY)
    truncate: int = opt(10, "steps carrying gradients with --memory truncated/rat", ge=1)
    lr: float = opt(0.01, "outer Adam learning rate of the synthetic set", gt=0, le=1e4)
    schedule: str = opt("constant", "outer learning-rate schedule", choices=("constant", "cosine"))
    batch_size: int = opt(256, "real examples per outer step", ge=1)
    init: str = opt("real", "initialisation of the synthetic inputs", choices=("real", "noise"))
    learn_labels: bool = opt(True, "learn soft labels")
    learn_lr: bool = opt(True, "learn the inner learning rate")
    full_data_epochs: int = opt(30, "epochs of the full-data baseline", ge=1, le=100000)


def outer_adam(lr: float, schedule: str, steps: int) -> optax.GradientTransformation:
    """Adam at ``lr``, constant or cosine-decayed to 0 over ``steps``."""
    return optax.adam(optax.cosine_decay_schedule(lr, steps) if schedule == "cosine" else lr)


def _build(cfg: UnrolledConfig, spec: RunSpec) -> Plan:
    from jdd.evaluate import full_data_config, network_learner
    validate(cfg)
    model = make_network(cfg, spec.num_classes)
    inner = TrainConfig(steps=cfg.inner_steps, optimizer=cfg.inner_optimizer, memory=cfg.memory,
                        truncate=cfg.truncate)
    d = unrolled(model, ipc=spec.ipc, inner=inner,
                 optimizer=outer_adam(cfg.lr, cfg.schedule, spec.steps),
                 batch_size=cfg.batch_size, inner_lr=cfg.inner_lr, learn_lr=cfg.learn_lr,
                 param=make_param(cfg, spec, init=cfg.init, label_init=3.0,
                                  labels="softmax" if cfg.learn_labels else "hard"),
                 extra=make_extra(cfg, model, spec.feature_shape))
    eval_cfg = inner._replace(memory="unroll")
    learner = network_learner(model, eval_cfg, cfg.inner_lr,
                              full_data=full_data_config(eval_cfg, spec.n_train,
                                                         epochs=cfg.full_data_epochs))
    return Plan(d, learner, {**to_dict(cfg), "model_name": model.name,
                             "inner": inner._asdict(), **param_info(cfg, spec)})


METHOD = Method(name="unrolled", config=UnrolledConfig, build=_build,
                summary="back-propagation through unrolled training (Wang et al. 2018; "
                        "--memory rat: RaT-BPTT, Feng et al. 2024)",
                default_steps=lambda cfg, ipc: 1000)
