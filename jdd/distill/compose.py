"""The composable core: parameterization x objective x augmentation x extra loss terms.

Every distillation method in jdd is four separable values (see ../DESIGN.md, "the composable
core"):

* a :class:`Parameterization` of the synthetic set: how the learnable arrays are initialised from
  real data and decoded to a :class:`Synthetic` set ``(x, y)`` inside the jitted step (today:
  :func:`pixels`; a low-rank factorisation is another value of the same type);
* an :class:`Objective`: the loss that says how good a decoded set is (performance matching by
  unrolled training, KIP, gradient matching, distribution matching, trajectory matching, ...);
  a method file holds only its objective;
* an optional augmentation ``augment(key, x) -> x`` (:mod:`jdd.augment`): an objective that uses it
  applies it with the SAME key to the real and the synthetic batch (DSA's siamese augmentation);
* optional :class:`ExtraTerm` values: ``weight * term(model, probe, key)`` added to the loss, where
  ``probe`` is what the objective exposes of the network it already runs (see :class:`Probe`).

:func:`compose` turns the four into a :class:`jdd.distill.Distiller` (``init``, ``step``,
``synthetic``), so the run loop, seed vmapping, artifacts and evaluation are shared by every method.

The learnable pytree is ``{"set": parameterization params, "obj": objective params}`` (the
objective's learnable part is e.g. a log learning rate); one optax transformation updates it, so a
method that wants different rates for images and for its own parameters passes
``optax.multi_transform`` (see :func:`partition_optimizer`). Non-learnable objective state (e.g.
gradient matching's current network) is threaded through ``Objective.update``, which runs after
each outer update on the new (stop-gradient) synthetic set.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdd.distill.core import Distiller, Synthetic, init_per_class

PRNGKey = jax.Array
Augment = Callable[[PRNGKey, jax.Array], jax.Array]


def identity_augment(key: PRNGKey, x: jax.Array) -> jax.Array:
    """The augmentation that does nothing (the default of every objective)."""
    del key
    return x


# ----------------------------------------------------------------------------- parameterization

class Parameterization(NamedTuple):
    """How the synthetic set is stored and decoded.

    Attributes:
        init: ``(key, data, ipc) -> (params, fixed)``: the learnable pytree (floating leaves)
            and a non-learnable pytree (class ids, fixed targets), from real data (a
            :class:`jdd.data.Dataset`); ``ipc`` (static) is the storage budget in images per
            class: a parameterization that stores images more compactly holds more of them.
        decode: ``(params, fixed) -> Synthetic``: inputs (m, *feature_shape) and targets (m, k);
            runs inside the jitted step, so it must be differentiable in ``params``.
        classes: ``fixed -> (m,) int32``: the class each synthetic example stands for
            (class-major order, the same number of examples per class, for per-class
            objectives).
        name: short description for metadata (e.g. ``"pixels[hard labels]"``).
        stored: ``params -> {name: array}``: the arrays that store the inputs when they are not
            the decoded inputs themselves (e.g. low-rank factors), for byte counts and saving;
            None: the inputs are stored as decoded.
    """

    init: Callable[[PRNGKey, Any, int], tuple[Any, Any]]
    decode: Callable[[Any, Any], Synthetic]
    classes: Callable[[Any], jax.Array]
    name: str
    stored: Callable[[Any], dict] | None = None


LABEL_MODES = ("hard", "softmax", "raw")
INITS = ("real", "noise")


class Labels(NamedTuple):
    """How a parameterization stores its targets (shared by :func:`pixels` and
    :func:`jdd.distill.low_rank.low_rank`).

    Attributes:
        init: ``(c (m,) int32, k, dtype) -> (params, target)``: the learnable label params
            (``{}`` for hard labels) and the fixed (m, k) target.
        decode: ``(params, target) -> (m, k)`` targets.
        mode: the label mode (one of :data:`LABEL_MODES`).
    """

    init: Callable
    decode: Callable
    mode: str


def labels_of(mode: str = "hard", *, label_init: float = 1.0, label_scale: float = 1.0,
              center_labels: bool = False) -> Labels:
    """The label part of a parameterization.

    Args:
        mode: ``"hard"``: fixed one-hot targets (DC, DSA, DM, MTT); ``"softmax"``: learnable label
            logits, targets ``softmax(logits)`` starting from ``label_init`` on the true class
            (unrolled training); ``"raw"``: learnable regression targets starting from
            ``label_scale * one_hot`` (minus ``label_scale / k`` when ``center_labels``; KIP).
        label_init: initial logit of the true class with ``"softmax"``.
        label_scale: one-hot scale of the targets with ``"hard"`` or ``"raw"``.
        center_labels: subtract ``label_scale / k`` from every target entry.

    Raises:
        ValueError: unknown mode, a non-finite or non-positive scale.
    """
    if mode not in LABEL_MODES:
        raise ValueError(f"unknown label mode {mode!r}; valid: {', '.join(LABEL_MODES)}.")
    for name, v in (("label_init", label_init), ("label_scale", label_scale)):
        if not np.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be a finite number > 0; got {v}.")

    def init(c, k, dt):
        target = jax.nn.one_hot(c, k, dtype=dt) * label_scale
        if center_labels:
            target = target - label_scale / k
        if mode == "softmax":
            return {"label_logits": label_init * jax.nn.one_hot(c, k, dtype=dt)}, target
        if mode == "raw":
            return {"y": target}, target
        return {}, target

    def decode(params, target):
        if mode == "softmax":
            return jax.nn.softmax(params["label_logits"])
        if mode == "raw":
            return params["y"]
        return target

    return Labels(init=init, decode=decode, mode=mode)


def compute_dtype(data, dtype=None):
    """The dtype of a learnable synthetic set: ``dtype``, else the real data's (at least
    float32)."""
    return jnp.dtype(dtype) if dtype is not None else jnp.result_type(data.x.dtype, jnp.float32)


def pixels(*, init: str = "real", labels: str = "hard", label_init: float = 1.0,
           label_scale: float = 1.0, center_labels: bool = False, dtype: Any = None
           ) -> Parameterization:
    """Synthetic inputs stored as pixels (one array), class-major, plus their labels.

    Args:
        init: ``"real"`` (distinct random real examples of each class) or ``"noise"`` (Gaussian with
            the real data's mean and std).
        labels: ``"hard"``, ``"softmax"`` or ``"raw"`` (see :func:`labels_of`).
        label_init: initial logit of the true class with ``labels="softmax"``.
        label_scale: one-hot scale of the targets with ``labels="hard"`` or ``"raw"``.
        center_labels: subtract ``label_scale / k`` from every target entry.
        dtype: dtype of the learnable inputs; None follows the real data (at least float32).

    Returns:
        A :class:`Parameterization`. Learnable params: ``{"x": (m, ...)}`` plus
        ``{"y": (m, k)}`` (raw) or ``{"label_logits": (m, k)}`` (softmax). Fixed:
        ``{"c": (m,) int32 classes, "y": (m, k) one-hot targets}``.
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; valid: {', '.join(INITS)}.")
    lab = labels_of(labels, label_init=label_init, label_scale=label_scale,
                    center_labels=center_labels)

    def init_fn(key, data, ipc):
        k = data.num_classes
        dt = compute_dtype(data, dtype)
        x, c = init_per_class(key, data, ipc)
        x = x.astype(dt)
        c = c.astype(jnp.int32)
        if init == "noise":
            mean, std = jnp.mean(data.x).astype(dt), jnp.std(data.x).astype(dt)
            x = mean + std * jax.random.normal(jax.random.fold_in(key, 1), x.shape, dt)
            c = jnp.repeat(jnp.arange(k, dtype=jnp.int32), ipc)
        label_params, target = lab.init(c, k, dt)
        return {"x": x, **label_params}, {"c": c, "y": target}

    def decode(params, fixed):
        return Synthetic(x=params["x"], y=lab.decode(params, fixed["y"]))

    return Parameterization(init=init_fn, decode=decode, classes=lambda fixed: fixed["c"],
                            name=f"pixels[{labels} labels]")


# ----------------------------------------------------------------------------- objective

class Probe(NamedTuple):
    """What an objective exposes of the network it runs, for extra loss terms.

    Every field may be None when the objective runs no network (KIP) or has no real batch.

    Attributes:
        params: network parameters at which the objective evaluated both batches.
        x_real: (n, *feature_shape) the (augmented) real inputs the objective used.
        y_real: (n,) int32 their classes.
        x_syn: (m, *feature_shape) the (augmented) synthetic inputs, differentiable.
        y_syn: (m,) int32 the classes the synthetic examples stand for.
        data: the real :class:`jdd.data.Dataset` the step was given (filled in by
            :func:`compose`), for terms that draw their own real batch when the objective uses
            none (trajectory matching).
    """

    params: Any = None
    x_real: Any = None
    y_real: Any = None
    x_syn: Any = None
    y_syn: Any = None
    data: Any = None


class Out(NamedTuple):
    """What :attr:`Objective.loss` returns.

    Attributes:
        loss: () scalar to minimise.
        metrics: dict of () scalars to log (e.g. accuracy on the real batch).
        probe: a :class:`Probe` for extra terms (``Probe()`` when there is nothing to expose).
    """

    loss: jax.Array
    metrics: dict
    probe: Probe = Probe()


class Objective(NamedTuple):
    """How good a synthetic set is (a method's one essential part).

    Attributes:
        init: ``(key, data, synthetic) -> (params, state)``: the objective's own learnable
            parameters (a pytree, e.g. ``{"log_lr": ()}``; ``{}`` for none) and its non-learnable
            state (any pytree, e.g. the network gradient matching trains between steps; ``()``).
        loss: ``(params, synthetic, classes, data, key, state, augment) -> Out``: the loss of
            the decoded set, where ``classes`` (m,) int32 are the classes of the synthetic
            examples, ``data`` is the real :class:`jdd.data.Dataset` (the objective samples its
            own real batch from it) and ``augment`` is ``(key, x) -> x`` or None (then do not
            augment). Differentiated with respect to ``params`` and ``synthetic``.
        update: ``(state, synthetic, classes, data, key, step) -> state`` after each outer update
            (``synthetic`` is the new set under stop_gradient), or None.
        finalize: ``(params, synthetic) -> Synthetic``: what a learner consumes (e.g. attaches
            the learned learning rate ``exp(log_lr)``), or None (the decoded set as is).
        project: ``params -> params`` applied after each update (clipping), or None.
        model: the network the objective runs (a :class:`jdd.models.Model`), for extra terms;
            None for kernel objectives.
        name: short description.
    """

    init: Callable
    loss: Callable
    update: Callable | None = None
    finalize: Callable | None = None
    project: Callable | None = None
    model: Any = None
    name: str = "objective"


class ExtraTerm(NamedTuple):
    """``weight * fn(model, probe, key)`` added to an objective's loss.

    Attributes:
        fn: ``(model, probe, key) -> ()``: a differentiable scalar computed from the objective's
            :class:`Probe` (``model`` is :attr:`Objective.model`).
        weight: its weight in the total loss.
        name: metric name under which its value is logged.
    """

    fn: Callable[[Any, Probe, PRNGKey], jax.Array]
    weight: float = 1.0
    name: str = "extra"


class ComposedState(NamedTuple):
    """State of a composed distiller.

    Attributes:
        params: ``{"set": parameterization params, "obj": objective params}`` (learnable).
        fixed: the parameterization's non-learnable part (class ids, fixed targets).
        opt_state: optax state of ``params``.
        obj_state: the objective's non-learnable state.
        step: () int32 outer steps taken.
    """

    params: Any
    fixed: Any
    opt_state: Any
    obj_state: Any
    step: jax.Array


def compose(param: Parameterization, objective: Objective, *, ipc: int,
            optimizer: optax.GradientTransformation,
            augment: Augment | None = None,
            extra: Sequence[ExtraTerm] = ()) -> Distiller:
    """Build a :class:`jdd.distill.Distiller` from the four parts of a method.

    Args:
        param: the synthetic set's :class:`Parameterization` (e.g. :func:`pixels`).
        objective: the :class:`Objective`.
        ipc: synthetic examples per class (storage budget of the parameterization).
        optimizer: optax transformation of ``{"set": ..., "obj": ...}`` (integer leaves such as
            the class ids are skipped).
        augment: ``(key, x) -> x`` handed to the objective (None: no augmentation; objectives
            skip the call then, so an unaugmented run computes exactly what it did before).
        extra: extra loss terms.

    Returns:
        A Distiller whose ``step`` is one jittable outer update; its metrics hold ``loss`` (the
        objective's loss before the update, without extra terms), ``total_loss``, ``grad_norm``,
        each extra term's value under its name, and the objective's own metrics.

    Example:
        >>> import jax, optax
        >>> from jdd.data import load_digits
        >>> from jdd.distill.kip import kip_objective
        >>> from jdd.kernels import fc_kernel
        >>> train, _ = load_digits()
        >>> d = compose(pixels(labels="raw"), kip_objective(fc_kernel(depth=1), batch_size=64),
        ...             ipc=1, optimizer=optax.adam(1e-2))
        >>> s = d.init(jax.random.key(0), train)
        >>> s, m = jax.jit(d.step)(s, jax.random.key(1), train)
        >>> d.synthetic(s).x.shape
        (10, 8, 8, 1)
    """
    if int(ipc) != ipc or ipc < 1:
        raise ValueError(f"ipc must be a positive integer; got {ipc}.")
    ipc = int(ipc)
    extra = tuple(extra)
    for t in extra:
        if not isinstance(t, ExtraTerm):
            raise TypeError(f"extra terms must be jdd.distill.ExtraTerm values; got {type(t)}")
        if not np.isfinite(t.weight):
            raise ValueError(f"extra term {t.name!r}: weight must be finite; got {t.weight}.")
    names = [t.name for t in extra]
    if len(set(names)) != len(names):
        raise ValueError(f"extra terms need distinct names; got {names}.")
    tx = optimizer

    def init(key, data):
        from jdd.data.dataset import check_ipc
        _check_ipc_if_concrete(data, ipc, check_ipc)
        set_params, fixed = param.init(key, data, ipc)
        syn = param.decode(set_params, fixed)
        obj_params, obj_state = objective.init(jax.random.fold_in(key, 2), data, syn)
        params = {"set": set_params, "obj": obj_params}
        return ComposedState(params=params, fixed=fixed, opt_state=tx.init(params),
                             obj_state=obj_state, step=jnp.zeros((), jnp.int32))

    def total_loss(params, fixed, key, data, obj_state):
        syn = param.decode(params["set"], fixed)
        classes = param.classes(fixed)
        out = objective.loss(params["obj"], syn, classes, data, key, obj_state, augment)
        probe = out.probe._replace(data=data)
        total = out.loss
        metrics = dict(out.metrics)
        metrics["loss"] = out.loss
        for i, t in enumerate(extra):
            v = t.fn(objective.model, probe, jax.random.fold_in(key, 1000 + i))
            total = total + t.weight * v
            metrics[t.name] = v
        if extra:
            metrics["total_loss"] = total
        return total, metrics

    def step(state, key, data):
        # the objective gets the step key itself; the update and extra terms fold in constants
        grads, metrics = jax.grad(total_loss, has_aux=True)(state.params, state.fixed, key, data,
                                                            state.obj_state)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if objective.project is not None:
            params = {**params, "obj": objective.project(params["obj"])}
        obj_state = state.obj_state
        if objective.update is not None:
            syn = jax.lax.stop_gradient(param.decode(params["set"], state.fixed))
            obj_state = objective.update(obj_state, syn, param.classes(state.fixed), data,
                                         jax.random.fold_in(key, 999), state.step)
        metrics["grad_norm"] = optax.tree_utils.tree_norm(grads)
        return ComposedState(params, state.fixed, opt_state, obj_state, state.step + 1), metrics

    def synthetic(state):
        syn = param.decode(state.params["set"], state.fixed)
        if objective.finalize is not None:
            syn = objective.finalize(state.params["obj"], syn)
        return syn

    def stored(state):
        return param.stored(state.params["set"])

    return Distiller(init=init, step=step, synthetic=synthetic,
                     stored=stored if param.stored is not None else None)


def partition_optimizer(set_tx: optax.GradientTransformation,
                        obj_tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """One optax transformation for ``{"set": ..., "obj": ...}`` with a rate for each part (e.g.
    MTT's image rate and its learning-rate rate)."""
    return optax.multi_transform({"set": set_tx, "obj": obj_tx},
                                 lambda p: {"set": jax.tree.map(lambda _: "set", p["set"]),
                                            "obj": jax.tree.map(lambda _: "obj", p["obj"])})


def _check_ipc_if_concrete(data, ipc: int, check_ipc) -> None:
    """Raise DataError for classes smaller than ``ipc`` when the labels are concrete (not traced)."""
    try:
        y = np.asarray(data.y)
    except jax.errors.TracerArrayConversionError:
        return
    check_ipc(y, data.num_classes, ipc, data.name)


# ----------------------------------------------------------------------------- helpers for objectives

def class_batches(key: PRNGKey, data, n: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-class real batches for per-class objectives (gradient / distribution matching).

    One ``top_k`` draw for all classes (no Python loop over classes): ``n`` distinct random
    examples of each class. A class with fewer than ``n`` examples is padded with rows of other
    classes whose ``mask`` entry is 0, so losses must weight rows by ``mask`` (a masked mean uses
    every example of that class). Jittable and vmappable (shapes are static).

    Args:
        key: PRNG key.
        data: a :class:`jdd.data.Dataset`.
        n: examples per class (static).

    Returns:
        ``x (k, n, *feature_shape)``, ``c (k, n)`` int32 classes (the class of the batch, also for
        padded rows) and ``mask (k, n)`` float32, 1 for rows of the right class.
    """
    k = data.num_classes
    n = min(int(n), int(data.y.shape[0]))
    u = jax.random.uniform(key, (data.y.shape[0],))
    same = data.y[None, :] == jnp.arange(k)[:, None]
    scores = jnp.where(same, u[None, :], -1.0)
    top, idx = jax.lax.top_k(scores, n)
    x = data.x[idx]
    c = jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32)[:, None], (k, n))
    return x, c, (top >= 0).astype(jnp.float32)


def by_class(a: jax.Array, num_classes: int) -> jax.Array:
    """Reshape class-major rows (k * ipc, ...) to (k, ipc, ...)."""
    return a.reshape((num_classes, a.shape[0] // num_classes) + a.shape[1:])
