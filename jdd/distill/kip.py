"""KIP: Kernel Inducing Points (Nguyen, Chen, Lee 2021).

Learn a small support set ``(x_s, y_s)`` so that kernel ridge regression from it predicts real
data: each step samples a batch ``(x_t, y_t)`` of real examples and takes an optax step on

    loss = mean_{t, c} (y_t - K_ts (K_ss + reg * tr(K_ss) / m * I)^{-1} y_s)_{t c}^2

(the squared error averaged over batch rows and classes: ``||.||_F^2 / (batch * k)``, so the loss
scale does not depend on the batch size), with Cholesky solves. The inner learner is the
closed-form KRR of :mod:`jdd.kernels.krr`, so ``kip`` is one outer objective + one inner learner +
one parameterization (inputs, and labels when ``learn_labels``).

Labels: targets are one-hot rows times ``label_scale``; with ``center_labels=True`` ``1/k`` is
subtracted from every entry (rows sum to zero, as in KIP's public recipe for some runs). The
batch targets get the same transform, so the loss compares like with like. Centring does not
change KRR's argmax predictions for fixed supports (it shifts every class score of a query by the
same amount) but it changes what the loss rewards, hence the learned set.

Settings that work (digits, FC ReLU NTK depth 2, chosen by 4-fold cross-validation on the training
split in ``benchmarks/kip_digits.py``): per-channel standardisation (``jdd.data.preprocess``'s
default; per-pixel standardisation was worse), learned labels, batches of 256, ``reg=1e-6``;
IPC 1: Adam 0.03 with cosine decay over 3000 steps (96.4 % KRR test accuracy); IPC 10: Adam 0.01
for 1000 steps (98.7 %).

dtype: ``dtype=None`` follows the real inputs' dtype (float32 by default; float64 data inside
``with jax.enable_x64(True):`` gives a float64 run); pass ``dtype=jnp.float64`` to force it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdd.config import opt, to_dict, validate
from jdd.distill.compose import Objective, Out, Parameterization, compose, pixels
from jdd.distill.core import Distiller, sample_rows
from jdd.kernels.krr import krr_solve
from jdd.methods import Method, ParamOptions, Plan, RunSpec, make_param, param_info

KernelFn = Callable[..., jax.Array]


def kip_objective(kernel_fn: KernelFn, *, reg: float = 1e-6, batch_size: int | None = None,
                  label_scale: float = 1.0, center_labels: bool = False,
                  target_block: int | None = None) -> Objective:
    """KIP's loss: KRR from the synthetic set, squared error on a real batch.

    ``loss = mean (y_t - K_ts (K_ss + reg tr(K_ss)/m I)^-1 y_s)^2`` with Cholesky solves; the real
    targets get the same ``label_scale`` / ``center_labels`` transform as the support targets.
    An augmentation, when given, is applied with one draw to the support and the real batch.

    ``target_block=B`` evaluates the batch (the whole training set with ``batch_size=None``) in
    blocks of ``B`` rows inside a ``lax.scan`` whose body is rematerialised in the backward pass
    (``jax.checkpoint``): only one (B, m) block of ``K_ts`` and its intermediates is alive at a
    time, so the step's memory beyond the data is O(B m + m^2) whatever the number of targets.
    The loss and its gradient equal the unblocked ones up to summation order (the last, ragged
    block overlaps the one before it, its repeated rows weighted 0).

    Returns:
        An :class:`jdd.distill.compose.Objective` with no learnable parameters of its own; metric
        ``batch_acc`` (KRR accuracy on the batch).
    """
    if not (np.isfinite(reg) and reg >= 0):
        raise ValueError(f"reg must be a finite number >= 0; got {reg}.")
    if batch_size is not None and (int(batch_size) != batch_size or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None; got {batch_size}.")
    if target_block is not None and (int(target_block) != target_block or target_block < 1):
        raise ValueError(f"target_block must be a positive integer or None; got {target_block}.")

    def targets(labels, num_classes, dt):
        t = jax.nn.one_hot(labels, num_classes, dtype=dt) * label_scale
        if center_labels:
            t = t - label_scale / num_classes
        return t

    def init(key, data, syn):
        if data.num_classes < 2:
            raise ValueError("kip needs data with num_classes >= 2 (a jdd.data.Dataset).")
        return {}, ()

    def loss(params, syn, classes, data, key, state, augment):
        dt = syn.x.dtype
        batch = data if batch_size is None else sample_rows(key, data, batch_size)
        x_s, x_t = syn.x, batch.x.astype(dt)
        if augment is not None:
            k_aug = jax.random.fold_in(key, 7)
            x_s, x_t = augment(k_aug, x_s), augment(k_aug, x_t)
        k_ss = kernel_fn(x_s, x_s)
        alpha = krr_solve(k_ss, syn.y, reg)
        if target_block is None or x_t.shape[0] <= target_block:
            y_t = targets(batch.y, data.num_classes, dt)
            pred = kernel_fn(x_t, x_s) @ alpha
            value = jnp.mean((pred - y_t) ** 2)
            acc = jnp.mean((jnp.argmax(pred, -1) == batch.y).astype(pred.dtype))
        else:
            sq, hits = _blocked_errors(kernel_fn, x_t, batch.y,
                                       lambda lb: targets(lb, data.num_classes, dt), x_s, alpha,
                                       target_block)
            value = sq / (x_t.shape[0] * data.num_classes)
            acc = hits / x_t.shape[0]
        return Out(value, {"batch_acc": acc})

    return Objective(init=init, loss=loss, name="kip")


def _blocked_errors(kernel_fn, x_t, labels, targets, x_s, alpha, block: int):
    """``(sum of squared errors, correct argmax count)`` of ``K_ts alpha`` against
    ``targets(labels)``, over row blocks of ``block`` in a rematerialised scan (see
    :func:`kip_objective`).

    Blocks are sliced out of ``x_t`` inside the loop (no blocked copy of the targets is made);
    the last block starts at ``n - block`` and its rows already counted get weight 0. Needs
    ``n >= block``.
    """
    n = x_t.shape[0]
    nb = -(-n // block)

    @jax.checkpoint
    def body(carry, i):
        start = jnp.minimum(i * block, n - block)
        xb = jax.lax.dynamic_slice_in_dim(x_t, start, block)
        lb = jax.lax.dynamic_slice_in_dim(labels, start, block)
        wb = (start + jnp.arange(block) >= i * block).astype(alpha.dtype)
        pred = kernel_fn(xb, x_s) @ alpha
        sq = jnp.sum(wb * jnp.sum((pred - targets(lb)) ** 2, axis=-1))
        hits = jnp.sum(wb * (jnp.argmax(pred, -1) == lb).astype(alpha.dtype))
        return (carry[0] + sq, carry[1] + hits), None

    zero = jnp.zeros((), alpha.dtype)
    (sq, hits), _ = jax.lax.scan(body, (zero, zero), jnp.arange(nb))
    return sq, jax.lax.stop_gradient(hits)


def kip(kernel_fn: KernelFn, *, ipc: int,
        optimizer: optax.GradientTransformation | None = None, reg: float = 1e-6,
        learn_labels: bool = True, batch_size: int | None = None, init: str = "real",
        label_scale: float = 1.0, center_labels: bool = False,
        dtype: Any = None, augment=None, extra=(),
        param: Parameterization | None = None, target_block: int | None = None) -> Distiller:
    """Kernel Inducing Points as a :class:`jdd.distill.Distiller`.

    The composition ``pixels(labels="raw" | "hard") x kip_objective(...)`` on
    :func:`jdd.distill.compose.compose`.

    Args:
        kernel_fn: ``kernel_fn(x1, x2) -> (n1, n2)``, differentiable in both arguments (e.g.
            :func:`jdd.kernels.fc_kernel`, :func:`jdd.kernels.conv_kernel`).
        ipc: support images per class (m = ipc * num_classes).
        optimizer: optax optimizer for the support set; default ``optax.adam(0.01)``.
        reg: relative ridge: ``reg * trace(K_ss) / m`` is added to ``K_ss``'s diagonal.
        learn_labels: also learn the support targets (else they stay one-hot).
        batch_size: real examples per step (sampled without replacement); None uses all data.
        target_block: evaluate the batch in row blocks of this size with rematerialisation, so
            that memory does not grow with the batch (see :func:`kip_objective`); None: one block.
        init: ``"real"`` (random real examples of each class; labels their one-hot rows) or
            ``"noise"`` (Gaussian inputs with the data's mean and std; balanced labels).
        label_scale: multiplier of the one-hot targets (support and batch alike).
        center_labels: subtract ``1 / num_classes`` from every target entry (see the module
            docstring).
        dtype: compute dtype; None follows ``data.x``.
        augment: optional ``(key, x) -> x`` applied with one draw to support and batch.
        extra: extra loss terms (KIP runs no network, so terms that need one do not apply).
        param: the synthetic set's :class:`jdd.distill.Parameterization` (e.g.
            :func:`jdd.distill.low_rank.low_rank`); None: ``pixels(init=init, labels="raw" or "hard", ...)``. A given
            parameterization brings its own initialisation and labels.

    Returns:
        A Distiller whose ``init(key, data)`` takes a :class:`jdd.data.Dataset`, whose
        ``step(state, key, data)`` returns metrics ``loss`` (before the update), ``grad_norm`` and
        ``batch_acc`` (KRR accuracy on the batch), and whose ``synthetic(state)`` is
        ``Synthetic(x=support inputs, y=support targets)`` for :func:`jdd.kernels.krr_predict`.
        The step is one jitted computation (no host round trips) and vmaps over seeds
        (:func:`jdd.distill.distill` with stacked keys).

    Example:
        >>> import jax
        >>> from jdd.data import load_digits
        >>> from jdd.distill import distill
        >>> from jdd.kernels import fc_kernel
        >>> train, _ = load_digits()
        >>> d = kip(fc_kernel(depth=1), ipc=1, batch_size=256)
        >>> res = distill(d, jax.random.key(0), train, steps=5, progress=False)
        >>> res.synthetic.x.shape, res.synthetic.y.shape
        ((10, 8, 8, 1), (10, 10))
    """
    if param is None:
        param = pixels(init=init, labels="raw" if learn_labels else "hard",
                       label_scale=label_scale, center_labels=center_labels, dtype=dtype)
    objective = kip_objective(kernel_fn, reg=reg, batch_size=batch_size,
                              label_scale=label_scale, center_labels=center_labels,
                              target_block=target_block)
    return compose(param, objective, ipc=ipc,
                   optimizer=optax.adam(0.01) if optimizer is None else optimizer,
                   augment=augment, extra=extra)


# ----------------------------------------------------------------------------- registry entry

#: Kernel names accepted by :func:`kernel_by_name` (``--kernel``).
KERNELS = ("fc-ntk", "fc-nngp", "conv-ntk", "conv-nngp", "conv-gap-ntk", "conv-gap-nngp",
           "linear", "rbf")


#: Kernel entries (input pairs x image positions) per tile when a learner evaluates a kernel:
#: intermediates of about 64 MB each in float32.
EVAL_TILE_ENTRIES = 2 ** 24


def evaluation_kernel(kernel_fn: KernelFn, name: str, feature_shape: tuple) -> KernelFn:
    """``kernel_fn`` evaluated in square tiles of bounded size, for the KRR learner.

    Scoring a set means ``K(test, support)``, and a baseline's support can be thousands of
    images: a convolutional kernel (flatten readout) keeps an (n1, n2, H, W) covariance per layer,
    233 GB for Fashion-MNIST's 10 000 test images against 500 support images. The tiles hold
    about :data:`EVAL_TILE_ENTRIES` pair-position entries (positions: ``H * W`` for the ``conv``
    kernels, 1 otherwise); a product that fits in one tile is evaluated unchanged.

    Args:
        kernel_fn: ``(x1: (n1, ...), x2: (n2, ...)) -> (n1, n2)``.
        name: its name in :data:`KERNELS` (which decides the positions per pair).
        feature_shape: one input's shape, e.g. (28, 28, 1).
    """
    from jdd.kernels.blocked import blocked
    positions = math.prod(feature_shape[:-1]) if name.startswith("conv") else 1
    b = max(1, math.isqrt(EVAL_TILE_ENTRIES // positions))
    return blocked(kernel_fn, b, b)


def kernel_by_name(name: str, depth: int = 2) -> KernelFn:
    """A jdd kernel function by name (see :data:`KERNELS`); ``depth`` hidden layers."""
    import jdd.kernels as K
    if name not in KERNELS:
        raise ValueError(f"unknown kernel {name!r}; valid kernels: {', '.join(KERNELS)}")
    if int(depth) != depth or depth < 1:
        raise ValueError(f"kernel depth must be an integer >= 1; got {depth}")
    if name == "linear":
        return K.linear_kernel()
    if name == "rbf":
        return K.rbf_kernel()
    kind = name.rsplit("-", 1)[1]
    if name.startswith("fc-"):
        return K.fc_kernel(depth=depth, activation="relu", kind=kind)
    readout = "gap" if name.startswith("conv-gap") else "flatten"
    return K.conv_kernel(depth=depth, readout=readout, kind=kind)


@dataclasses.dataclass(frozen=True)
class KipConfig(ParamOptions):
    """``jdd distill --method kip``. Defaults are the recipe that 4-fold cross-validation on the
    training split chose in benchmarks/kip_digits.py: FC ReLU NTK of depth 2, ridge 1e-6, learned
    labels, batches of 256; IPC 1: Adam 0.03 with cosine decay over 3000 steps (96.4 %); larger
    IPC: Adam 0.01 constant for 1000 steps (98.7 % at IPC 10)."""

    kernel: str = opt("fc-ntk", "kernel of the KRR learner", choices=KERNELS)
    kernel_depth: int = opt(2, "hidden layers of the kernel's network", ge=1, le=64)
    reg: float = opt(1e-6, "KRR ridge, relative to trace(K_ss)/m", ge=0, le=1e6)
    lr: float | None = opt(None, "outer Adam learning rate (none: 0.03 at IPC 1, else 0.01)",
                           gt=0, le=1e4)
    schedule: str = opt("auto", "outer schedule (auto: cosine at IPC 1, else constant)",
                        choices=("auto", "constant", "cosine"))
    batch_size: int | None = opt(256, "real examples per outer step (none: the whole training "
                                      "set every step)", ge=1)
    target_block: int | None = opt(None, "evaluate the real batch in blocks of this many rows, "
                                         "recomputed in the backward pass: memory O(block x "
                                         "support) whatever the batch (none: one block)", ge=1)
    init: str = opt("real", "initialisation of the support set", choices=("real", "noise"))
    learn_labels: bool = opt(True, "learn the support targets")
    full_data_max: int | None = opt(20000, "the full-data KRR baseline fits at most this many "
                                           "training examples, a random subset per model (exact "
                                           "KRR holds an n x n kernel: 1.6 GB at 20 000, 14.4 GB "
                                           "at 60 000); none: all of them", ge=1)


def _resolved(cfg: KipConfig, ipc: int) -> tuple[float, str]:
    lr = cfg.lr if cfg.lr is not None else (0.03 if ipc == 1 else 0.01)
    schedule = cfg.schedule if cfg.schedule != "auto" else ("cosine" if ipc == 1 else "constant")
    return lr, schedule


def _build(cfg: KipConfig, spec: RunSpec) -> Plan:
    from jdd.distill.unrolled import outer_adam
    from jdd.evaluate import kernel_learner
    validate(cfg)
    kfn = kernel_by_name(cfg.kernel, cfg.kernel_depth)
    lr, schedule = _resolved(cfg, spec.ipc)
    d = kip(kfn, ipc=spec.ipc, optimizer=outer_adam(lr, schedule, spec.steps), reg=cfg.reg,
            batch_size=cfg.batch_size, target_block=cfg.target_block,
            param=make_param(cfg, spec, init=cfg.init,
                             labels="raw" if cfg.learn_labels else "hard"))
    learner = kernel_learner(evaluation_kernel(kfn, cfg.kernel, spec.feature_shape), cfg.reg,
                             name=f"krr[{cfg.kernel}, depth {cfg.kernel_depth}]",
                             full_data_max=cfg.full_data_max)
    return Plan(d, learner, {**to_dict(cfg), "outer_lr": lr, "outer_schedule": schedule,
                             **param_info(cfg, spec)})


METHOD = Method(name="kip", config=KipConfig, build=_build,
                summary="Kernel Inducing Points (Nguyen, Chen, Lee 2021)",
                default_steps=lambda cfg, ipc: 3000 if ipc == 1 else 1000)
