"""Pure, differentiable inner training loops.

:func:`fit` trains a :class:`jdd.models.Model` for a static number of steps with ``lax.scan`` and
an optax optimizer. The result is differentiable with respect to the training inputs, the (soft)
targets and the learning rate, which is what unrolled meta-gradient distillation needs.

Learning rate: the optimizer is built *without* its final ``scale(-lr)`` and the loop multiplies
the update by ``-lr * schedule(t)`` itself. That is exactly optax's own SGD/momentum/Adam (they all
end in ``scale_by_learning_rate``), but lets ``lr`` be a traced, differentiable scalar without
``inject_hyperparams`` rebuilding state, and keeps one compiled program for every lr value.

Memory strategies (``memory=``), the same code path with a different scan body:

* ``"unroll"``: plain reverse-mode through the scan; memory grows with steps x activations.
* ``"checkpoint"``: ``jax.checkpoint`` per step; only the carry (params + optimizer state) is
  stored per step and activations are recomputed in the backward pass.
* ``"truncated"``: gradient flows through the last ``truncate`` steps only (truncated
  back-propagation); the earlier steps run under ``stop_gradient``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jdd.models import Model

MEMORY = ("unroll", "checkpoint", "truncated")
OPTIMIZERS = ("sgd", "momentum", "adam")


class TrainConfig(NamedTuple):
    """Static settings of an inner training run (hashable; lives in closures, not in state).

    Attributes:
        steps: number of optimizer steps.
        optimizer: ``"sgd"``, ``"momentum"`` (SGD with momentum) or ``"adam"``.
        momentum: momentum coefficient for ``"momentum"``.
        weight_decay: L2 weight decay added to the gradient (coupled, as in torch SGD).
        batch_size: examples per step; None or >= n trains full-batch.
        schedule: ``"constant"``, ``"step"`` (x0.1 at half, the DD evaluation protocol) or
            ``"cosine"``.
        memory: one of ``MEMORY``.
        truncate: with ``memory="truncated"``, the number of final steps that carry gradients.
        loss: ``"ce"`` (soft-target cross-entropy) or ``"mse"``.
    """

    steps: int = 100
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int | None = None
    schedule: str = "constant"
    memory: str = "unroll"
    truncate: int = 10
    loss: str = "ce"


def check_config(cfg: TrainConfig) -> None:
    """Raise ValueError with the valid choices if ``cfg`` names an unknown option."""
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; valid: {', '.join(OPTIMIZERS)}.")
    if cfg.memory not in MEMORY:
        raise ValueError(f"unknown memory strategy {cfg.memory!r}; valid: {', '.join(MEMORY)}.")
    if cfg.schedule not in ("constant", "step", "cosine"):
        raise ValueError(f"unknown schedule {cfg.schedule!r}; valid: constant, step, cosine.")
    if cfg.loss not in ("ce", "mse"):
        raise ValueError(f"unknown loss {cfg.loss!r}; valid: ce, mse.")
    if cfg.steps < 1:
        raise ValueError(f"steps must be >= 1; got {cfg.steps}.")


def direction(cfg: TrainConfig) -> optax.GradientTransformation:
    """The optimizer without its learning rate: returns the descent *direction* (to be scaled by
    ``-lr``). Built from optax's own transformations."""
    parts = []
    if cfg.weight_decay:
        parts.append(optax.add_decayed_weights(cfg.weight_decay))
    if cfg.optimizer == "momentum":
        parts.append(optax.trace(decay=cfg.momentum))
    elif cfg.optimizer == "adam":
        # eps_root > 0 keeps sqrt(v) differentiable where a gradient is exactly zero (dead
        # ReLU units): without it the meta-gradient through Adam is NaN.
        parts.append(optax.scale_by_adam(eps_root=1e-8))
    return optax.chain(*parts) if parts else optax.identity()


def schedule_factor(cfg: TrainConfig, t: jax.Array) -> jax.Array:
    """Multiplier of the base learning rate at step ``t`` (0-based)."""
    if cfg.schedule == "constant":
        return jnp.ones((), jnp.float32)
    if cfg.schedule == "step":
        return jnp.where(t < cfg.steps // 2, 1.0, 0.1).astype(jnp.float32)
    return optax.cosine_decay_schedule(1.0, cfg.steps)(t).astype(jnp.float32)


def loss_fn(kind: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``(outputs (n, k), targets (n, k)) -> mean loss``."""
    if kind == "ce":
        return lambda out, tgt: jnp.mean(optax.softmax_cross_entropy(out, tgt))
    return lambda out, tgt: jnp.mean(jnp.sum((out - tgt) ** 2, axis=-1))


def fit(model: Model, params: Any, x: jax.Array, targets: jax.Array, lr: jax.Array,
        key: jax.Array, cfg: TrainConfig = TrainConfig()) -> Any:
    """Train ``params`` on ``(x, targets)`` for ``cfg.steps`` steps; differentiable in x, targets, lr.

    Args:
        model: the network (pure init/apply).
        params: initial parameters (e.g. ``model.init(key, x[:1])``).
        x: (n, *feature_shape) training inputs.
        targets: (n, k) targets: class probabilities for ``loss="ce"``, values for ``"mse"``.
        lr: () base learning rate (may be a traced value, e.g. ``exp(log_lr)``).
        key: PRNG key for minibatch sampling (unused when full-batch).
        cfg: static :class:`TrainConfig`.

    Returns:
        The trained parameters.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jdd.models import make_model
        >>> m = make_model("mlp", 2, hidden=(8,))
        >>> x = jax.random.normal(jax.random.key(0), (6, 3))
        >>> t = jax.nn.one_hot((x[:, 0] > 0).astype(jnp.int32), 2)
        >>> p = fit(m, m.init(jax.random.key(1), x), x, t, 0.1, jax.random.key(2),
        ...         TrainConfig(steps=20))
    """
    check_config(cfg)
    tx = direction(cfg)
    loss = loss_fn(cfg.loss)
    n = x.shape[0]
    full_batch = cfg.batch_size is None or cfg.batch_size >= n

    def batch_loss(p, t):
        if full_batch:
            xb, tb = x, targets
        else:
            idx = jax.random.choice(jax.random.fold_in(key, t), n, (cfg.batch_size,),
                                    replace=False)
            xb, tb = x[idx], targets[idx]
        return loss(model.apply(p, xb), tb)

    def body(carry, t):
        p, opt_state = carry
        grads = jax.grad(batch_loss)(p, t)
        d, opt_state = tx.update(grads, opt_state, p)
        scale = -lr * schedule_factor(cfg, t)
        p = jax.tree.map(lambda a, u: a + (scale * u).astype(a.dtype), p, d)
        return (p, opt_state), None

    carry = (params, tx.init(params))
    ts = jnp.arange(cfg.steps)
    if cfg.memory == "checkpoint":
        carry, _ = jax.lax.scan(jax.checkpoint(body), carry, ts)
    elif cfg.memory == "truncated":
        k = max(0, min(cfg.truncate, cfg.steps))
        carry, _ = jax.lax.scan(body, carry, ts[: cfg.steps - k])
        carry = jax.lax.stop_gradient(carry)
        carry, _ = jax.lax.scan(body, carry, ts[cfg.steps - k:])
    else:
        carry, _ = jax.lax.scan(body, carry, ts)
    return carry[0]


def init_and_fit(model: Model, key: jax.Array, x: jax.Array, targets: jax.Array, lr: jax.Array,
                 cfg: TrainConfig = TrainConfig()) -> Any:
    """Fresh initialisation from ``key`` then :func:`fit`: one trained model per key (vmap-able).

    The parameters are cast to the dtype of ``x`` (flax initialises in float32 even when
    float64 is enabled), so float64 inputs give a float64 inner loop end to end.
    """
    k_init, k_fit = jax.random.split(key)
    params = cast_like(model.init(k_init, x[:1]), x.dtype)
    return fit(model, params, x, targets, lr, k_fit, cfg)


def cast_like(params: Any, dtype) -> Any:
    """Cast the floating leaves of ``params`` to ``dtype`` (other leaves untouched)."""
    return jax.tree.map(
        lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, params)


def accuracy(model: Model, params: Any, x: jax.Array, y: jax.Array,
             batch_size: int = 2048) -> jax.Array:
    """() float32 top-1 accuracy of ``model`` on (x (n, ...), y (n,) int), in chunks of
    ``batch_size`` rows so large test sets fit in memory."""
    n = x.shape[0]
    if n <= batch_size:
        return jnp.mean(jnp.argmax(model.apply(params, x), -1) == y)
    pad = (-n) % batch_size
    xp = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)])
    yp = jnp.concatenate([y, -jnp.ones((pad,), y.dtype)])
    xs = xp.reshape((-1, batch_size) + x.shape[1:])
    ys = yp.reshape((-1, batch_size))

    def chunk(c, xy):
        xb, yb = xy
        return c + jnp.sum(jnp.argmax(model.apply(params, xb), -1) == yb), None

    correct, _ = jax.lax.scan(chunk, jnp.zeros((), jnp.int32), (xs, ys))
    return correct / n
