"""DM: dataset condensation with distribution matching (Zhao & Bilen, WACV 2023).

Every outer iteration samples a FRESH randomly initialised network (never trained) and, for each
class ``c``, embeds a real batch of class ``c`` and the synthetic images of class ``c`` with the
network's embedding ``phi`` (the flattened input of its classifier,
``model.features(params, x)[-1]``), both after the same DSA augmentation (one draw per class,
shared by its real and synthetic batch). The loss is the squared distance between the mean
embeddings, summed over classes::

    loss = sum_c || mean_{x in real_c} phi(A_c(x)) - mean_{s in syn_c} phi(A_c(s)) ||^2

(a linear-kernel MMD per class); the synthetic images take one SGD step on it.

Facts checked in the official code (VICO-UoE/DatasetCondensation ``main_DM.py`` and ``utils.py``):

* the loss is ``sum((mean(embed(real), 0) - mean(embed(syn), 0)) ** 2)`` accumulated over the
  classes (a sum over classes and embedding dimensions, not a mean; the printed value is divided
  by the number of classes, the optimised one is not); the real embeddings are detached;
* a new ``get_network`` every iteration, put in ``train()`` mode with its parameters frozen (train
  mode only matters for BatchNorm, which jdd's stateless models do not have);
* images: ``SGD(lr_img=1.0, momentum=0.5)``, ``batch_real=256`` per class (``get_images`` returns
  ``permutation(class)[:256]``, i.e. the whole class when it is smaller: this file uses every
  example of such a class too), ``init='real'``, ``Iteration=20000``;
* DSA strategy ``color_crop_cutout_flip_scale_rotate`` (``ParamDiffAug`` in mode ``'S'``: one
  family per call), seeded once per class so the real and the synthetic batch get the same
  transform; the README asks for ``color_crop_cutout_scale_rotate`` on digit datasets
  (:func:`jdd.augment.default_strategy`);
* evaluation: ConvNet-D3 trained with ``epoch_eval_train=1000`` epochs, SGD lr 0.01 momentum 0.9
  wd 5e-4, lr x0.1 at half, batch 256, with DSA augmentation of every minibatch
  (``evaluate_synset`` calls ``epoch(..., aug=True)``, which applies ``DiffAugment`` when DSA is
  on).

Implementation notes. No Python loop over classes: the real batches come from
:func:`jdd.distill.compose.class_batches` (``(k, n)`` rows with a mask for classes smaller than
``n``) and each class's real and synthetic batch are augmented with that class's key inside one
``lax.map`` over classes (a vmapped ``lax.switch`` would run every DSA family for every class;
``lax.map`` runs only the drawn one, about 4x less augmentation work on CPU). Before embedding,
only the valid rows are kept: ``min(k * n, N)`` rows (static), so on a dataset whose classes are all
smaller than ``batch_real`` (sklearn digits: ~135 per class) each step embeds the training set
once instead of ``k * n`` mostly padded rows; the per-class means are then a masked one-hot
matmul. The real embeddings carry no gradient. The synthetic set must be class-major with the same
number of examples per class (what every :class:`jdd.distill.compose.Parameterization` produces).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from jdd.config import opt, to_dict, validate
from jdd.distill.compose import (Objective, Out, Parameterization, Probe, by_class,
                                 class_batches, compose, pixels)
from jdd.distill.compose import INITS
from jdd.distill.core import Distiller
from jdd.methods import (EvalOptions, ExtraOptions, Method, NetworkOptions, ParamOptions, Plan,
                         RunSpec, make_extra, make_network, make_param, param_info)
from jdd.methods import check_dsa_strategy, protocol_learner, run_augment
from jdd.train import cast_like

Augment = Callable[[jax.Array, jax.Array], jax.Array]


def _check_batch_real(batch_real) -> None:
    if isinstance(batch_real, bool) or not isinstance(batch_real, int) or batch_real < 1:
        raise ValueError(f"batch_real must be an integer >= 1; got {batch_real!r}.")


def _check_model(model) -> None:
    if getattr(model, "features", None) is None:
        name = getattr(model, "name", type(model).__name__)
        raise ValueError(f"distribution matching embeds with model.features(params, x)[-1], but "
                         f"model {name!r} has no features function (build it with "
                         "jdd.models.make_model or from a module with a `features` method).")


def distribution_matching(model, *, batch_real: int = 256) -> Objective:
    """DM's objective: match per-class mean embeddings of a freshly sampled network.

    At every call (one outer step) the network's parameters are drawn from the step key with
    ``model.init`` (no training), then for every class ``c`` (no Python loop over classes)::

        loss_c = || masked_mean_i phi(A_c(x_real_ci)) - mean_j phi(A_c(x_syn_cj)) ||^2

    with ``phi(x) = model.features(params, x)[-1]`` (n, d) and ``A_c = augment(key_c, .)`` applied
    with ONE key per class to its real and its synthetic batch (siamese); ``loss = sum_c loss_c``.
    The real means are constants (no gradient flows into the real batch).

    Args:
        model: a :class:`jdd.models.Model` with ``features`` (ConvNet-D3 in the paper).
        batch_real: real examples per class per step (256 in the official code); a class with
            fewer examples contributes all of them (masked mean).

    Returns:
        An :class:`jdd.distill.compose.Objective` with no learnable parameters and no state.
        ``Out.probe``: ``params`` (the sampled network), ``x_real`` (r, *feature_shape) the
        augmented real rows used (``r = min(k * batch_real, N)``; when the classes hold fewer
        valid rows than ``r`` the remaining rows repeat a valid row with zero weight), ``y_real``
        (r,) their classes, ``x_syn`` (m, ...) the augmented synthetic images, ``y_syn`` (m,).
        Metric ``loss_per_class`` (the value the official code prints).

    Raises:
        ValueError: ``batch_real`` not a positive integer, or a model without ``features``.
    """
    _check_batch_real(batch_real)
    _check_model(model)

    def init(key, data, syn):
        if data.num_classes < 1:
            raise ValueError("distribution matching needs a jdd.data.Dataset with "
                             "num_classes >= 1.")
        return {}, ()

    def embed(params, x):
        return model.features(params, x)[-1]

    def loss(params, syn, classes, data, key, state, augment):
        del params, state
        k = data.num_classes
        dt = syn.x.dtype
        k_net, k_batch, k_aug = jax.random.split(key, 3)
        net = cast_like(model.init(k_net, syn.x[:1]), dt)
        net = jax.lax.stop_gradient(net)

        # real: (k, n, ...) per-class batches, augmented with one key per class
        xr, cr, mask = class_batches(k_batch, data, batch_real)
        xr = xr.astype(dt)
        xs = by_class(syn.x, k)                                   # (k, ipc, ...)
        class_keys = jax.random.split(k_aug, k)
        if augment is not None:
            # lax.map, not vmap: DSA picks one family per call with lax.switch, which vmap turns
            # into computing every family for every class (4x the augmentation cost on CPU)
            xr, xs = jax.lax.map(lambda a: (augment(a[0], a[1]), augment(a[0], a[2])),
                                 (class_keys, xr, xs))

        # keep only valid real rows (static count), embed them once, average per class
        n = xr.shape[1]
        rows = min(k * n, int(data.y.shape[0]))
        flat_mask = mask.reshape(-1)
        order = jnp.argsort(1.0 - flat_mask, stable=True)[:rows]  # valid rows first
        weight = flat_mask[order]
        order = jnp.where(weight > 0, order, order[0])            # pad with a valid row
        x_real = xr.reshape((k * n,) + xr.shape[2:])[order]
        y_real = cr.reshape(-1)[order]
        x_real = jax.lax.stop_gradient(x_real)
        e_real = embed(net, x_real)                               # (rows, d)
        w = weight.astype(e_real.dtype)[:, None]
        onehot = jax.nn.one_hot(y_real, k, dtype=e_real.dtype) * w          # (rows, k)
        mean_real = (onehot.T @ e_real) / jnp.maximum(jnp.sum(onehot, 0), 1.0)[:, None]
        mean_real = jax.lax.stop_gradient(mean_real)              # (k, d)

        x_syn = xs.reshape(syn.x.shape)
        e_syn = embed(net, x_syn)                                 # (m, d)
        mean_syn = jnp.mean(by_class(e_syn, k), axis=1)           # (k, d)
        per_class = jnp.sum((mean_real - mean_syn) ** 2, axis=-1)
        value = jnp.sum(per_class)
        probe = Probe(params=net, x_real=x_real, y_real=y_real, x_syn=x_syn, y_syn=classes)
        return Out(value, {"loss_per_class": value / k}, probe)

    return Objective(init=init, loss=loss, model=model, name="distribution-matching")


def _check_factory(ipc, lr_img, momentum, init, augment) -> None:
    if isinstance(ipc, bool) or int(ipc) != ipc or ipc < 1:
        raise ValueError(f"ipc must be a positive integer; got {ipc!r}.")
    if isinstance(lr_img, bool) or not isinstance(lr_img, (int, float)) or not (
            math.isfinite(lr_img) and lr_img > 0):
        raise ValueError(f"lr_img must be a finite number > 0; got {lr_img!r}.")
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not (
            math.isfinite(momentum) and 0 <= momentum < 1):
        raise ValueError(f"momentum must be a number in [0, 1); got {momentum!r}.")
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; valid: {', '.join(INITS)}.")
    if augment is not None and not callable(augment):
        raise ValueError(f"augment must be a function (key, x) -> x or None; got {augment!r}.")


def dm(model, *, ipc: int, lr_img: float = 1.0, momentum: float = 0.5, batch_real: int = 256,
       init: str = "real", augment: Augment | None = None, extra=(),
       param: Parameterization | None = None) -> Distiller:
    """Distribution matching as a :class:`jdd.distill.Distiller`.

    The composition ``pixels(init, hard labels) x distribution_matching(model, batch_real)`` with
    ``optax.sgd(lr_img, momentum)`` on the images (the official recipe: lr 1.0, momentum 0.5,
    batch 256, real init).

    Args:
        model: embedding network (a :class:`jdd.models.Model` with ``features``), e.g.
            ``make_model("convnet", k)`` (ConvNet-D3, width 128, instance norm).
        ipc: synthetic images per class.
        lr_img: SGD learning rate of the images.
        momentum: SGD momentum of the images.
        batch_real: real images per class per step.
        init: ``"real"`` (random real images of each class) or ``"noise"``.
        augment: siamese augmentation ``(key, x) -> x`` used while matching, or None. The paper
            uses DSA: ``jdd.augment.dsa(jdd.augment.default_strategy(dataset_name))``.
        extra: extra loss terms (:class:`jdd.distill.ExtraTerm`), given this objective's probe.
        param: the synthetic set's :class:`jdd.distill.Parameterization` (e.g.
            :func:`jdd.distill.low_rank.low_rank`); None: ``pixels(init=init, labels="hard")``. A given
            parameterization brings its own initialisation and labels.

    Returns:
        A Distiller whose ``synthetic(state)`` is ``Synthetic(x (k * ipc, ...), y one-hot)``;
        step metrics ``loss`` (sum over classes), ``loss_per_class`` and ``grad_norm``.

    Raises:
        ValueError: any invalid argument (before anything is compiled).
    """
    _check_factory(ipc, lr_img, momentum, init, augment)
    objective = distribution_matching(model, batch_real=batch_real)
    param = param if param is not None else pixels(init=init, labels="hard")
    return compose(param, objective, ipc=int(ipc),
                   optimizer=optax.sgd(float(lr_img), momentum=float(momentum) or None),
                   augment=augment, extra=extra)


# ----------------------------------------------------------------------------- registry

@dataclasses.dataclass(frozen=True)
class DMConfig(ParamOptions, ExtraOptions, NetworkOptions, EvalOptions):
    """Distribution matching's options (defaults: the official ``main_DM.py`` recipe)."""

    lr_img: float = opt(1.0, "SGD learning rate of the synthetic images", gt=0, le=1e6)
    momentum: float = opt(0.5, "SGD momentum of the synthetic images", ge=0, lt=1)
    batch_real: int = opt(256, "real images per class per step (a smaller class: all of it)",
                          ge=1, le=1_000_000)
    init: str = opt("real", "initial synthetic images", choices=INITS)
    dsa_strategy: str = opt("auto", "DSA strategy while matching: auto (the dataset's default), "
                            "none, or families joined by _ (e.g. color_crop_cutout_scale_rotate)")
    eval_epochs: int = opt(1000, "evaluation training epochs (lr x0.1 at half)", ge=1, le=100000)

    def check(self) -> None:
        """Cross-field checks run by :func:`jdd.config.validate`."""
        check_dsa_strategy(self.dsa_strategy)


def build(cfg: DMConfig, spec: RunSpec) -> Plan:
    """The DM distiller and the evaluation learner for a run."""
    validate(cfg)
    model = make_network(cfg, spec.num_classes)
    augment, strategy = run_augment(cfg.dsa_strategy, spec, siamese=True)
    distiller = dm(model, ipc=spec.ipc, lr_img=cfg.lr_img, momentum=cfg.momentum,
                   batch_real=cfg.batch_real, augment=augment,
                   param=make_param(cfg, spec, init=cfg.init, labels="hard"),
                   extra=make_extra(cfg, model, spec.feature_shape))
    learner = protocol_learner(cfg, spec, paper_augment=True)
    info = dict(to_dict(cfg), dsa_strategy_resolved=strategy, network=model.name,
                optimizer=f"sgd(lr={cfg.lr_img:g}, momentum={cfg.momentum:g})",
                **param_info(cfg, spec))
    return Plan(distiller=distiller, learner=learner, info=info)


def default_steps(cfg: DMConfig, ipc: int) -> int:
    """Outer iterations when none are given: 2000 at IPC 1, 1000 otherwise (the runs of the
    official code on digits that reached 92.7 % / 98.9 %; the paper runs 20000 on CIFAR)."""
    del cfg
    return 2000 if ipc <= 1 else 1000


METHOD = Method(name="dm", config=DMConfig, build=build,
                summary="distribution matching: per-class mean embeddings of random ConvNets "
                        "(Zhao & Bilen, WACV 2023)",
                default_steps=default_steps, needs_images=True)
