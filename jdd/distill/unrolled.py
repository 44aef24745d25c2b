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

import math

import jax
import jax.numpy as jnp
import optax

from jdd.distill.core import Distiller, Synthetic, bilevel, init_per_class
from jdd.models import Model
from jdd.train import TrainConfig, check_config, init_and_fit, loss_fn

#: Bounds on the learned inner learning rate: keeps exp(log_lr) from exploding to NaN (a known
#: failure of learnable-lr DD) or collapsing to zero.
LOG_LR_BOUNDS = (math.log(1e-5), math.log(10.0))


def unrolled(model: Model, *, ipc: int, inner: TrainConfig = TrainConfig(steps=20),
             optimizer: optax.GradientTransformation | None = None, batch_size: int = 256,
             init: str = "real", inner_lr: float = 0.01, learn_labels: bool = True,
             learn_lr: bool = True, label_init: float = 3.0) -> Distiller:
    """Unrolled meta-gradient distiller with learnable inputs, soft labels and inner lr.

    Args:
        model: the learner network (pure init/apply), e.g. ``make_model("mlp", 10)``.
        ipc: synthetic examples per class.
        inner: the inner training recipe (steps, optimizer, memory strategy ...). Evaluate the
            distilled set with the same recipe and its learned learning rate.
        optimizer: outer optimizer (default ``optax.adam(1e-2)``).
        batch_size: real examples per outer step.
        init: ``"real"`` (random real examples of each class) or ``"noise"`` (standard normal).
        inner_lr: initial inner learning rate.
        learn_labels: learn soft labels (label logits); else keep one-hot targets.
        learn_lr: learn the inner learning rate (log-parameterised; the learned value is clipped
            to LOG_LR_BOUNDS). When False, ``inner_lr`` is used exactly as given.
        label_init: initial logit of the true class (others 0), i.e. a softened one-hot.

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
    check_config(inner)
    if init not in ("real", "noise"):
        raise ValueError(f"unknown init {init!r}; valid: real, noise.")
    if not inner_lr > 0:
        raise ValueError(f"inner_lr must be > 0; got {inner_lr}.")
    optimizer = optimizer or optax.adam(1e-2)
    ce = loss_fn("ce")

    def init_params(key, data):
        k = data.num_classes
        x, y = init_per_class(key, data, ipc)
        if init == "noise":
            x = jax.random.normal(jax.random.fold_in(key, 1), x.shape, x.dtype)
        logits = label_init * jax.nn.one_hot(y, k, dtype=x.dtype)
        return {"x": x, "label_logits": logits,
                "log_lr": jnp.asarray(math.log(inner_lr), x.dtype)}

    def targets(params):
        logits = params["label_logits"]
        if not learn_labels:
            logits = jax.lax.stop_gradient(logits)
            return jax.nn.one_hot(jnp.argmax(logits, -1), logits.shape[-1], dtype=logits.dtype)
        return jax.nn.softmax(logits)

    def lr_of(params):
        log_lr = params["log_lr"] if learn_lr else jax.lax.stop_gradient(params["log_lr"])
        return jnp.exp(log_lr)

    def fit(params, key):
        return init_and_fit(model, key, params["x"], targets(params), lr_of(params), inner)

    def outer_loss(trained, batch, params, key):
        out = model.apply(trained, batch.x)
        loss = ce(out, jax.nn.one_hot(batch.y, out.shape[-1], dtype=out.dtype))
        acc = jnp.mean(jnp.argmax(out, -1) == batch.y)
        return loss, {"accuracy": acc, "inner_lr": lr_of(params)}

    def project(params):
        return {**params, "log_lr": jnp.clip(params["log_lr"], *LOG_LR_BOUNDS)}

    def to_synthetic(params):
        return Synthetic(x=params["x"], y=targets(params), lr=jnp.exp(params["log_lr"]))

    return bilevel(init_params, fit, outer_loss, optimizer, batch_size=batch_size,
                   to_synthetic=to_synthetic, project=project if learn_lr else None)
