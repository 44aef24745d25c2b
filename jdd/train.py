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
* ``"rat"``: RaT-BPTT (Feng, Vedantam & Kempe, ICLR 2024, "Embarrassingly simple dataset
  distillation"): each call draws a random length ``t ~ U{W, ..., T}`` (``W = truncate``,
  ``T = steps``; :func:`rat_length`) from the ``key`` it receives, trains exactly ``t`` steps, and
  lets gradients flow only through the window of the last ``W`` of them. See :func:`fit`.

Minibatches (``batch_size < n``): step ``t`` draws ``batch_size`` distinct examples with
``jax.random.choice(fold_in(key, t), n, replace=False)``, independently at every step (sampling
without replacement within a step, with replacement across steps). The DC/DSA/DM/MTT torch code
instead shuffles once per epoch and walks through the permutation (``DataLoader(shuffle=True)``,
last batch smaller); in both, an example is in a given step's batch with probability
``batch_size / n``.

Random streams derived from ``key``: minibatch of step ``t``: ``fold_in(key, t)``; augmentation of
step ``t``: ``fold_in(fold_in(key, 2**32 - 1), t)``; RaT-BPTT length: ``fold_in(key, 2**32 - 2)``
(distinct inputs of the PRF for any run shorter than 2**32 - 2 steps).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jdd.models import Model

MEMORY = ("unroll", "checkpoint", "truncated", "rat")
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
        truncate: with ``memory="truncated"``, the number of final steps that carry gradients;
            with ``memory="rat"``, the window ``W`` (>= 1; ``steps`` is the maximum length T).
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
    if cfg.memory == "rat" and cfg.truncate < 1:
        raise ValueError(f"memory='rat' needs a window truncate >= 1; got {cfg.truncate}.")


def direction(cfg: TrainConfig) -> optax.GradientTransformation:
    """The optimizer without its learning rate: returns the descent *direction* (to be scaled by
    ``-lr``). Built from optax's own transformations.

    For ``"momentum"`` with ``weight_decay`` this is torch's ``SGD(momentum=m,
    weight_decay=wd)`` (dampening 0, no Nesterov) step for step: ``d = g + wd * p`` (coupled
    decay, added before the momentum), ``buf = m * buf + d`` (``buf`` starts at 0, so the first
    ``buf`` is ``d`` as in torch), then :func:`fit` applies ``p -= lr * schedule(t) * buf``.
    Like torch, the buffer does not contain the learning rate, so a step schedule rescales
    the whole step.
    """
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
    """Multiplier of the base learning rate at step ``t`` (0-based), in the default float dtype
    (float32; float64 when x64 is enabled, so a float64 loop decays by exactly 0.1)."""
    dt = jnp.result_type(float)
    if cfg.schedule == "constant":
        return jnp.ones((), dt)
    if cfg.schedule == "step":
        return jnp.where(t < cfg.steps // 2, 1.0, 0.1).astype(dt)
    return optax.cosine_decay_schedule(1.0, cfg.steps)(t).astype(dt)


def loss_fn(kind: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``(outputs (n, k), targets (n, k)) -> mean loss``."""
    if kind == "ce":
        return lambda out, tgt: jnp.mean(optax.softmax_cross_entropy(out, tgt))
    return lambda out, tgt: jnp.mean(jnp.sum((out - tgt) ** 2, axis=-1))


#: fold_in data of the augmentation stream and of RaT-BPTT's length (never a step index).
_AUG_STREAM = 2**32 - 1
_RAT_STREAM = 2**32 - 2


def rat_length(key: jax.Array, steps: int, window: int) -> jax.Array:
    """The unroll length RaT-BPTT draws: ``t ~ U{window, ..., steps}`` (both ends included).

    :func:`fit` with ``memory="rat"`` and the same ``key`` trains exactly this many steps (the
    official code's ``random.randint(minwindow, totwindow - window)`` no-gradient steps followed by
    ``window`` differentiable ones, with ``minwindow = 0``).

    Args:
        key: the key given to :func:`fit`.
        steps: T, the maximum length (``TrainConfig.steps``).
        window: W, the window (``TrainConfig.truncate``), clipped to ``steps``.

    Returns:
        () int32 length ``t``.

    Example:
        >>> import jax
        >>> t = int(rat_length(jax.random.key(0), 20, 5))
        >>> 5 <= t <= 20
        True
    """
    if steps < 1 or window < 1:
        raise ValueError(f"rat_length needs steps >= 1 and window >= 1; got {steps}, {window}.")
    window = min(window, steps)
    k = jax.random.fold_in(key, _RAT_STREAM)
    return jax.random.randint(k, (), window, steps + 1, dtype=jnp.int32)


def fit(model: Model, params: Any, x: jax.Array, targets: jax.Array, lr: jax.Array,
        key: jax.Array, cfg: TrainConfig = TrainConfig(),
        augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
        relabel: Callable[[jax.Array], jax.Array] | None = None) -> Any:
    """Train ``params`` on ``(x, targets)`` for ``cfg.steps`` steps; differentiable in x, targets, lr.

    With ``memory="rat"`` (RaT-BPTT) the run is ``t = rat_length(key, T, W)`` steps long
    (``T = cfg.steps``, ``W = min(cfg.truncate, T)``) and the returned parameters are those after
    step ``t``: steps ``0 .. t-W-1`` run forward only, in a ``lax.fori_loop`` whose inputs
    (params, optimizer state, x, targets, lr) are ``stop_gradient``-ed (so reverse mode never
    enters it); steps ``t-W .. t-1`` run in a ``lax.scan`` of static length ``W`` that is
    differentiated as usual. Step indices are the absolute ``0 .. t-1`` (minibatches,
    augmentation and the ``cfg.steps``-long schedule are those of a plain run), so the result
    equals the first ``t`` steps of a plain ``T``-step run. Memory: what ``"truncated"`` with
    ``truncate=W`` uses, W steps of activations plus carries, independent of ``T``; compute:
    ``t`` forward steps and ``W`` backward steps. (A single masked scan of length ``T`` would
    instead store residuals, or with ``jax.checkpoint`` the carries, of all ``T`` steps and run
    ``T`` backward steps whatever ``t`` is.) Under ``vmap`` with one key per model, every model
    draws its own ``t``; the loop runs to the largest, masked per model.

    Args:
        model: the network (pure init/apply).
        params: initial parameters (e.g. ``model.init(key, x[:1])``).
        x: (n, *feature_shape) training inputs.
        targets: (n, k) targets: class probabilities for ``loss="ce"``, values for ``"mse"``.
        lr: () base learning rate (may be a traced value, e.g. ``exp(log_lr)``).
        key: PRNG key for minibatch sampling (unused when full-batch), augmentation and the
            RaT-BPTT length.
        cfg: static :class:`TrainConfig`.
        augment: optional ``augment(key, xb) -> xb`` applied to every minibatch ``xb``
            (batch, *feature_shape) at every step, with key ``fold_in(fold_in(key, 2**32 - 1),
            t)`` at step ``t`` (e.g. jdd.augment's DSA in per-image mode, as in the evaluation
            protocol). None (default) trains exactly as without the argument. Targets are not
            augmented.
        relabel: optional ``relabel(xb) -> (batch, k)`` targets computed from every (augmented)
            minibatch, replacing ``targets`` (knowledge distillation: a teacher's soft labels per
            crop, as SRe2L's evaluation); no gradient flows into it.

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
    k_aug = None if augment is None else jax.random.fold_in(key, _AUG_STREAM)

    def make_body(x, targets, lr):
        def batch_loss(p, t):
            if full_batch:
                xb, tb = x, targets
            else:
                idx = jax.random.choice(jax.random.fold_in(key, t), n, (cfg.batch_size,),
                                        replace=False)
                xb, tb = x[idx], targets[idx]
            if augment is not None:
                xb = augment(jax.random.fold_in(k_aug, t), xb)
            if relabel is not None:
                tb = jax.lax.stop_gradient(relabel(xb)).astype(tb.dtype)
            return loss(model.apply(p, xb), tb)

        def body(carry, t):
            p, opt_state = carry
            grads = jax.grad(batch_loss)(p, t)
            d, opt_state = tx.update(grads, opt_state, p)
            scale = -lr * schedule_factor(cfg, t)
            p = jax.tree.map(lambda a, u: a + (scale * u).astype(a.dtype), p, d)
            return (p, opt_state), None

        return body

    body = make_body(x, targets, lr)
    carry = (params, tx.init(params))
    ts = jnp.arange(cfg.steps)
    if cfg.memory == "checkpoint":
        carry, _ = jax.lax.scan(jax.checkpoint(body), carry, ts)
    elif cfg.memory == "truncated":
        k = max(0, min(cfg.truncate, cfg.steps))
        carry, _ = jax.lax.scan(body, carry, ts[: cfg.steps - k])
        carry = jax.lax.stop_gradient(carry)
        carry, _ = jax.lax.scan(body, carry, ts[cfg.steps - k:])
    elif cfg.memory == "rat":
        w = min(cfg.truncate, cfg.steps)
        start = rat_length(key, cfg.steps, w) - w           # () int32 in [0, T - W]
        sg = jax.lax.stop_gradient
        const_body = make_body(sg(x), sg(targets), sg(lr))
        carry = jax.lax.fori_loop(0, start, lambda t, c: const_body(c, t)[0], sg(carry))
        carry, _ = jax.lax.scan(body, carry, start + jnp.arange(w, dtype=start.dtype))
    else:
        carry, _ = jax.lax.scan(body, carry, ts)
    return carry[0]


def init_and_fit(model: Model, key: jax.Array, x: jax.Array, targets: jax.Array, lr: jax.Array,
                 cfg: TrainConfig = TrainConfig(),
                 augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
                 relabel: Callable[[jax.Array], jax.Array] | None = None) -> Any:
    """Fresh initialisation from ``key`` then :func:`fit`: one trained model per key (vmap-able).

    The parameters are cast to the dtype of ``x`` (flax initialises in float32 even when
    float64 is enabled), so float64 inputs give a float64 inner loop end to end. ``augment`` is
    passed to :func:`fit`.
    """
    k_init, k_fit = jax.random.split(key)
    params = cast_like(model.init(k_init, x[:1]), x.dtype)
    return fit(model, params, x, targets, lr, k_fit, cfg, augment, relabel)


def protocol_config(n: int, *, epochs: int, batch_size: int = 256, momentum: float = 0.9,
                    weight_decay: float = 5e-4) -> TrainConfig:
    """The DC/DSA/DM/MTT evaluation recipe for a training set of ``n`` examples.

    SGD with momentum 0.9 and coupled weight decay 5e-4 (torch's ``SGD``, see
    :func:`direction`), the learning rate x0.1 at half of the steps, minibatches of
    ``batch_size`` (full batch when ``n <= batch_size``), ``epochs * ceil(n / batch_size)`` steps.
    The learning rate (0.01 in the official code) is :func:`fit`'s ``lr`` argument.

    Facts from the official code (VICO-UoE/DatasetCondensation ``utils.py::evaluate_synset``,
    GeorgeCazenavette/mtt-distillation ``utils.py::evaluate_synset``): epochs default to 300 in
    DC's ``main.py`` but are set to 1000 whenever augmentation is used (DSA, and DC on MNIST), 1000
    in ``main_DM.py`` and MTT's ``distill.py``; batch 256. Their loop runs ``epochs + 1`` epochs,
    multiplies the lr by 0.1 after epoch ``epochs // 2 + 1`` and re-creates the optimizer there
    (the momentum buffer restarts from zero); here there are exactly ``epochs`` epochs' worth of
    steps, the decay is at ``steps // 2`` and the buffer is kept.

    Args:
        n: number of training examples.
        epochs: passes over the data (300 or 1000 in the literature; see above).
        batch_size: examples per step.
        momentum: SGD momentum.
        weight_decay: coupled L2 weight decay.

    Returns:
        A :class:`TrainConfig` (``optimizer="momentum"``, ``schedule="step"``, ``memory="unroll"``).

    Example:
        >>> protocol_config(500, epochs=300).steps   # ceil(500 / 256) = 2 steps per epoch
        600
    """
    for what, v in (("n", n), ("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{what} must be an integer >= 1; got {v!r}.")
    return TrainConfig(steps=epochs * math.ceil(n / batch_size), optimizer="momentum",
                       momentum=momentum, weight_decay=weight_decay, batch_size=batch_size,
                       schedule="step", memory="unroll", loss="ce")


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
