"""Gradient matching: DC (Zhao, Mopuri & Bilen, ICLR 2021) and DSA (Zhao & Bilen, ICML 2021).

The synthetic set is learned so that a network's loss gradient on it matches, class by class, the
gradient on real data, along the training trajectory of networks trained on the synthetic set:

    for each outer iteration:                       (``iterations`` = 1000 in the papers)
        theta <- fresh random network
        for ol in range(outer_loop):                (one jdd step = one synthetic update)
            L = sum_c D(grad_theta CE(theta; real batch of class c),
                        grad_theta CE(theta; synthetic images of class c))
            synthetic images <- SGD step on L       (lr 0.1, momentum 0.5)
            if ol < outer_loop - 1:
                theta <- inner_loop epochs of SGD (lr_net 0.01) on the synthetic set

:func:`gradient_matching` is that objective on the composable core
(:func:`jdd.distill.compose.compose`): its :attr:`~jdd.distill.compose.Objective.loss` is ``L``
(all classes in one ``vmap``, the real-side gradients under ``stop_gradient``), and its
:attr:`~jdd.distill.compose.Objective.update` runs after every synthetic update: it either trains
the current network ``inner_loop`` epochs on the new set or, after the last update of an outer
iteration, replaces it by a freshly initialised one (``lax.cond`` on the step counter). So ONE jdd
step is ONE synthetic update, and the paper's outer iteration is ``outer_loop`` jdd steps: the
registry's default number of steps is ``iterations * outer_loop``, and ``--steps`` counts jdd steps.

DSA is the same objective with a differentiable siamese augmentation (:func:`jdd.augment.dsa`): for
each class one key is drawn and the SAME transform is applied to that class's real batch and to its
synthetic images before each gradient; the network trained between updates also sees augmented
synthetic images (independent parameters per image), as in the official code.

The distance ``D`` (``distance=``):

* ``"layerwise"`` (the papers' "ours", :func:`layerwise_distance`): for every parameter array with
  2 or more dimensions, the gradient is reshaped to ``(out, -1)`` (one row per output unit or
  output channel) and ``sum_rows 1 - <g_r, g_s> / (|g_r| |g_s| + 1e-6)`` is added; 1-D arrays
  (biases, norm scales and offsets) contribute nothing;
* ``"mse"``: ``sum (g_s - g_r)^2`` over every parameter (biases included);
* ``"cosine"``: ``1 - cos`` between the two gradients flattened into single vectors (biases
  included), with the same ``1e-6`` in the denominator.

Facts checked in the official code (VICO-UoE/DatasetCondensation, ``main.py`` and ``utils.py``;
the same file serves DC and DSA since July 2021):

* ``utils.distance_wb``: torch conv weights ``(out, in, h, w)`` become ``(out, in*h*w)``, linear
  weights ``(out, in)`` stay, 3-D (layer-norm) ``(C, h, w)`` become ``(C, h*w)``, and 1-D tensors
  return 0 (skipped). flax stores the output axis LAST (conv ``(h, w, in, out)``, dense
  ``(in, out)``), so here the last axis is moved to the front before reshaping: the same rows.
  ``utils.match_loss``: "mse" and "cos" concatenate every gradient (biases included).
* ``utils.get_loops``: (outer_loop, inner_loop) = (1, 1) at IPC 1, (10, 50) at 10, (20, 25) at 20,
  (30, 20) at 30, (40, 15) at 40, (50, 10) at 50 (other IPCs are refused there; here they take
  the entry of the nearest listed IPC, the smaller on a tie).
* ``main.py``: images SGD lr 0.1 momentum 0.5 (``--lr_img``); ``--lr_net`` 0.01; ``--batch_real``
  256 (``get_images(c, 256)``: a random permutation of the class cut to 256, i.e. the whole class
  when it is smaller); ``--batch_train`` 256; ``--Iteration`` 1000; the loss is the SUM over
  classes; synthetic labels are hard. The network optimizer is ``SGD(lr=lr_net)`` with no
  momentum and no weight decay (DC's first releases, Jan-Mar 2021, used momentum 0.5:
  ``net_momentum=0.5`` reproduces them); it is created with each fresh network, so its state
  restarts then. Each inner step is one EPOCH over the synthetic set in shuffled minibatches of
  ``batch_train`` (last batch smaller), which is what ``inner_loop`` counts here too.
* Initialisation: ``--init`` defaults to ``noise`` (standard normal in the normalised space) in
  ``main.py`` (DC); the README's DSA command passes ``--init real``. Hence ``dc(init="noise")``
  and ``dsa(init="real")``.
* DSA (``--method DSA``): ``DiffAugment(img_real, seed=s)`` and ``DiffAugment(img_syn, seed=s)``
  with one seed per class per update (siamese); inner network training uses
  ``DiffAugment(seed=-1)`` (per-image parameters). Strategy: ``color_crop_cutout_flip_scale_rotate``
  for Fashion-MNIST/CIFAR, ``color_crop_cutout_scale_rotate`` for MNIST/SVHN (README), i.e.
  :func:`jdd.augment.default_strategy`. In ``'S'`` mode the official code picks one family per
  call for the whole batch; the per-image augmentation of inner training here draws the family
  per image as well (a detail that only matters for IPC > 1, where the network is trained).
* Networks: the official ConvNet is a torch module with torch's default initialisation
  (``kaiming_uniform_(a=sqrt(5))`` weights, ``U(+-1/sqrt(fan_in))`` biases); every fresh network
  of the outer loop is drawn from it. jdd's ConvNet uses the same (``param_init="torch"``,
  :func:`jdd.models.layer_init`); with flax's LeCun-normal kernels and zero biases, DC on digits
  at IPC 1 lands about 7 points lower (see :class:`jdd.models.ConvNet`).
* Evaluation (``evaluate_synset``): ConvNet, SGD momentum 0.9, weight decay 5e-4, lr 0.01 x0.1 at
  half, batch 256; 300 epochs for DC without augmentation and 1000 epochs whenever augmentation is
  used (DSA always; DC on MNIST uses its own crop/scale/rotate augmentation).

Real batches come from :func:`jdd.distill.compose.class_batches` with ``b = min(batch_real,
ceil(n / k))`` rows per class (``n`` real examples, ``k`` classes; both static): a class with at
most ``b`` examples is taken whole, its rows beyond its size being padding with weight 0 (the class
mean uses every example of the class, as the official code's ``get_images`` does), and a larger
class gives a random ``b`` of them. The cap ``ceil(n / k)`` changes nothing on large datasets
(MNIST, CIFAR: ``b = batch_real``); on a small balanced set such as digits (about 135 per class,
batch_real 256) it avoids computing about as many padding rows as real ones (half of the step's
cost), at the price of leaving out the one or two examples by which a class exceeds the mean size.
On strongly imbalanced data, classes larger than ``ceil(n / k)`` are subsampled to it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdd.config import ConfigError, opt, to_dict, validate
from jdd.distill.compose import (Objective, Out, Parameterization, Probe, by_class,
                                 class_batches, compose, pixels)
from jdd.distill.core import Distiller
from jdd.methods import (EvalOptions, ExtraOptions, Method, NetworkOptions, ParamOptions, Plan,
                         RunSpec, check_dsa_strategy, make_extra, make_network, make_param,
                         param_info)
from jdd.models import Model
from jdd.train import cast_like

#: Gradient distances: the papers' layer-wise one, and the official code's "mse" and "cos".
DISTANCES = ("layerwise", "mse", "cosine")

#: The official (outer_loop, inner_loop) per IPC (``utils.get_loops``).
LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}

#: The small constant of the official distance's denominator.
EPS = 1e-6


def default_loops(ipc: int) -> tuple[int, int]:
    """The official ``(outer_loop, inner_loop)`` for ``ipc`` (``utils.get_loops``); an IPC that
    is not listed there takes the entry of the nearest listed one (the smaller on a tie).

    Example:
        >>> default_loops(10), default_loops(3), default_loops(100)
        ((10, 50), (1, 1), (50, 10))
    """
    if isinstance(ipc, bool) or int(ipc) != ipc or ipc < 1:
        raise ValueError(f"ipc must be a positive integer; got {ipc!r}.")
    best = min(LOOPS, key=lambda i: (abs(i - ipc), i))
    return LOOPS[best]


# ----------------------------------------------------------------------------- distances

def _safe_norm(a: jax.Array, axis=-1) -> jax.Array:
    """Euclidean norm along ``axis`` whose gradient at 0 is 0 (not NaN), as torch's norm."""
    s = jnp.sum(a * a, axis=axis)
    pos = s > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, s, 1.0)), 0.0)


def _rows(g: jax.Array) -> jax.Array:
    """(out, -1): one row per output unit / channel (flax keeps the output axis last)."""
    return jnp.moveaxis(g, -1, 0).reshape(g.shape[-1], -1)


def layerwise_distance(g_real: Any, g_syn: Any) -> jax.Array:
    """DC's gradient distance between two gradient pytrees of the same structure.

    For every leaf with ``ndim >= 2`` (conv kernel ``(h, w, in, out)``, dense kernel
    ``(in, out)``): rows ``r = g.moveaxis(-1, 0).reshape(out, -1)`` and
    ``sum_rows 1 - <r_real, r_syn> / (|r_real| |r_syn| + 1e-6)``; leaves with ``ndim <= 1``
    (biases, norm parameters) are skipped, as in the official ``distance_wb``.

    Args:
        g_real: gradient pytree (real data).
        g_syn: gradient pytree (synthetic data), same structure.

    Returns:
        () the summed distance.

    Example:
        >>> import jax.numpy as jnp
        >>> g = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
        >>> float(layerwise_distance(g, g)) < 1e-5
        True
    """
    total = jnp.zeros((), jnp.result_type(*jax.tree.leaves(g_syn)))
    for gr, gs in zip(jax.tree.leaves(g_real), jax.tree.leaves(g_syn)):
        if gr.ndim < 2:
            continue
        r, s = _rows(gr), _rows(gs)
        cos = jnp.sum(r * s, axis=-1) / (_safe_norm(r) * _safe_norm(s) + EPS)
        total = total + jnp.sum(1.0 - cos)
    return total


def mse_distance(g_real: Any, g_syn: Any) -> jax.Array:
    """``sum (g_syn - g_real)^2`` over every leaf (the official ``dis_metric='mse'``)."""
    return sum(jnp.sum((s - r) ** 2) for r, s in zip(jax.tree.leaves(g_real),
                                                      jax.tree.leaves(g_syn)))


def cosine_distance(g_real: Any, g_syn: Any) -> jax.Array:
    """``1 - cos`` of the two gradients flattened into one vector each (``dis_metric='cos'``)."""
    r = jnp.concatenate([a.reshape(-1) for a in jax.tree.leaves(g_real)])
    s = jnp.concatenate([a.reshape(-1) for a in jax.tree.leaves(g_syn)])
    return 1.0 - jnp.sum(r * s) / (_safe_norm(r) * _safe_norm(s) + EPS)


_DISTANCE_FNS = {"layerwise": layerwise_distance, "mse": mse_distance, "cosine": cosine_distance}


# ----------------------------------------------------------------------------- objective

class GMState(NamedTuple):
    """Non-learnable state of :func:`gradient_matching`.

    Attributes:
        net: parameters of the current network (the one the next synthetic update matches on).
        opt_state: optax state of the network's SGD (momentum buffer; restarts with each network).
        age: () int32 synthetic updates since this network was initialised (0 .. outer_loop - 1).
        inits: () int32 networks initialised so far (1 after ``init``).
    """

    net: Any
    opt_state: Any
    age: jax.Array
    inits: jax.Array


def _check_positive_int(name: str, v, low: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
        raise ValueError(f"{name} must be an integer >= {low}; got {v!r}.")
    return int(v)


def _check_rate(name: str, v, *, zero_ok: bool = False, below_one: bool = False) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number; got {v!r}.") from None
    ok = math.isfinite(f) and (f >= 0 if zero_ok else f > 0) and (f < 1 if below_one else True)
    if not ok:
        rng = "in [0, 1)" if below_one else (">= 0" if zero_ok else "> 0")
        raise ValueError(f"{name} must be a finite number {rng}; got {v!r}.")
    return f


def _weighted_ce(model: Model, params, x, onehot, w) -> jax.Array:
    """() ``sum_i w_i CE(model(x_i), onehot_i)`` (``w`` (n,) sums to 1: a (masked) mean)."""
    logits = model.apply(params, x)
    return jnp.sum(w * optax.softmax_cross_entropy(logits, onehot))


def _per_image(augment, key, x):
    """Apply ``augment`` with an independent key to every image of ``x`` (n, ...)."""
    keys = jax.random.split(key, x.shape[0])
    return jax.vmap(lambda k, xi: augment(k, xi[None])[0])(keys, x)


def gradient_matching(model: Model, *, outer_loop: int, inner_loop: int,
                      distance: str = "layerwise", batch_real: int = 256, lr_net: float = 0.01,
                      net_momentum: float = 0.0, net_batch: int = 256,
                      train_augment=None) -> Objective:
    """DC's objective: per-class gradient matching along networks trained on the synthetic set.

    ``loss = sum_c D(stop_gradient(grad CE(net; real_c)), grad CE(net; syn_c))`` where ``real_c``
    is a batch of up to ``batch_real`` real examples of class ``c`` (padding rows excluded from
    the mean), ``syn_c`` the synthetic images of class ``c`` with hard labels, ``net`` the
    objective state's current network and ``D`` the distance named by ``distance`` (see the
    module docstring). All classes run in one ``vmap``. With an augmentation, class ``c`` gets
    one key and both its batches are augmented with it (siamese) before the gradients.

    After each synthetic update, :attr:`Objective.update` at step ``s`` (0-based): if
    ``s % outer_loop == outer_loop - 1`` (the outer iteration is complete) the network is
    replaced by a fresh initialisation; otherwise it is trained ``inner_loop`` epochs on the new
    synthetic set (hard labels; shuffled minibatches of ``net_batch``, last one smaller; SGD with
    ``lr_net`` and ``net_momentum``; each image augmented with its own key by
    ``train_augment`` when one is given, as DSA's official inner training does).

    Args:
        model: the network (e.g. ``make_model("convnet", k)``, ConvNet-D3 as in the papers).
        outer_loop: synthetic updates per network (see :func:`default_loops`).
        inner_loop: network training epochs between two synthetic updates.
        distance: ``"layerwise"`` (the papers'), ``"mse"`` or ``"cosine"``.
        batch_real: real examples per class per update (capped at ``ceil(n / k)`` for ``n``
            real examples of ``k`` classes; smaller classes are taken whole: see the module
            docstring).
        lr_net: SGD learning rate of the network.
        net_momentum: SGD momentum of the network (0 in the current official code).
        net_batch: minibatch size of the network's training on the synthetic set.
        train_augment: ``(key, x) -> x`` applied per image while the network trains on the
            synthetic set (:func:`dsa` passes its DSA augmentation), or None. The matching
            augmentation itself is the ``augment`` that :func:`compose` hands to the loss.

    Returns:
        An :class:`jdd.distill.compose.Objective` with no learnable parameters of its own, state
        :class:`GMState`, metric ``net_loss`` (the network's mean real-batch cross-entropy over
        classes), and a :class:`~jdd.distill.compose.Probe` with the current network, the
        (augmented) real rows ``x_real`` (k * n, ...) with classes ``y_real`` (-1 marks padding
        rows of classes smaller than n), and the (augmented) synthetic images.

    Raises:
        ValueError: unknown distance, loops or batch sizes below 1, NaN or negative rates.

    Example:
        >>> import optax
        >>> from jdd.models import make_model
        >>> obj = gradient_matching(make_model("convnet", 10), outer_loop=10, inner_loop=50)
        >>> d = compose(pixels(init="noise"), obj, ipc=10,
        ...             optimizer=optax.sgd(0.1, momentum=0.5))   # what dc(...) builds
        >>> obj.name
        'gradient matching[convnet(), layerwise, outer 10, inner 50]'
    """
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}; valid: {', '.join(DISTANCES)}.")
    outer_loop = _check_positive_int("outer_loop", outer_loop)
    inner_loop = _check_positive_int("inner_loop", inner_loop, low=0)
    batch_real = _check_positive_int("batch_real", batch_real)
    net_batch = _check_positive_int("net_batch", net_batch)
    lr_net = _check_rate("lr_net", lr_net)
    net_momentum = _check_rate("net_momentum", net_momentum, zero_ok=True, below_one=True)
    dist = _DISTANCE_FNS[distance]
    tx = optax.sgd(lr_net, momentum=net_momentum if net_momentum > 0 else None)

    def fresh(key, syn, inits):
        net = cast_like(model.init(key, syn.x[:1]), syn.x.dtype)
        return GMState(net=net, opt_state=tx.init(net), age=jnp.zeros((), jnp.int32),
                       inits=inits + 1)

    def init(key, data, syn):
        if data.num_classes < 2:
            raise ValueError("gradient matching needs data with num_classes >= 2.")
        return {}, fresh(key, syn, jnp.zeros((), jnp.int32))

    def loss(params, syn, classes, data, key, state, augment):
        del params
        k = data.num_classes
        dt = syn.x.dtype
        net = state.net
        k_real, k_aug = jax.random.split(key)
        n_real = min(batch_real, -(-data.y.shape[0] // k))          # static: see the docstring
        xr, cr, mask = class_batches(k_real, data, n_real)          # (k, n, ...), (k, n), (k, n)
        xr = xr.astype(dt)
        mask = mask.astype(dt)
        xs = by_class(syn.x, k)                                     # (k, ipc, ...)
        cs = by_class(classes, k)                                   # (k, ipc)
        keys = jax.random.split(k_aug, k)

        def per_class(akey, xr_c, cr_c, m_c, xs_c, cs_c):
            if augment is not None:
                xr_c, xs_c = augment(akey, xr_c), augment(akey, xs_c)
            w_r = m_c / jnp.maximum(jnp.sum(m_c), 1.0)
            ce_r, g_r = jax.value_and_grad(_weighted_ce, argnums=1)(
                model, net, xr_c, jax.nn.one_hot(cr_c, k, dtype=dt), w_r)
            g_r = jax.lax.stop_gradient(g_r)
            w_s = jnp.full(cs_c.shape, 1.0 / cs_c.shape[0], dt)
            g_s = jax.grad(_weighted_ce, argnums=1)(model, net, xs_c,
                                                    jax.nn.one_hot(cs_c, k, dtype=dt), w_s)
            return dist(g_r, g_s), jax.lax.stop_gradient(ce_r), xr_c, xs_c

        d, ce_r, xr_a, xs_a = jax.vmap(per_class)(keys, xr, cr, mask, xs, cs)
        value = jnp.sum(d)
        y_real = jnp.where(mask > 0, cr, -1).reshape(-1)
        probe = Probe(params=net, x_real=xr_a.reshape((-1,) + xr_a.shape[2:]), y_real=y_real,
                      x_syn=xs_a.reshape(syn.x.shape), y_syn=classes)
        return Out(value, {"net_loss": jnp.mean(ce_r)}, probe)

    def train_net(state, syn, classes, k, key, augment):
        x = syn.x
        m = x.shape[0]
        b = min(net_batch, m)
        nb = -(-m // b)
        onehot = jax.nn.one_hot(classes, k, dtype=x.dtype)
        k_perm, k_aug = jax.random.split(key)

        def epoch_batches(ek):
            if nb == 1:
                return jnp.arange(m)[None], jnp.ones((1, m), x.dtype)
            idx = jnp.concatenate([jax.random.permutation(ek, m),
                                   jnp.zeros((nb * b - m,), jnp.int32)])
            valid = (jnp.arange(nb * b) < m).astype(x.dtype)
            return idx.reshape(nb, b), valid.reshape(nb, b)

        idx, valid = jax.vmap(epoch_batches)(jax.random.split(k_perm, inner_loop))
        idx, valid = idx.reshape(-1, b), valid.reshape(-1, b)     # (inner_loop * nb, b)
        bkeys = jax.random.split(k_aug, idx.shape[0])

        def body(carry, inp):
            net, opt_state = carry
            ib, vb, kb = inp
            xb = x[ib]
            if augment is not None:
                xb = _per_image(augment, kb, xb)
            g = jax.grad(_weighted_ce, argnums=1)(model, net, xb, onehot[ib], vb / jnp.sum(vb))
            upd, opt_state = tx.update(g, opt_state, net)
            return (optax.apply_updates(net, upd), opt_state), None

        (net, opt_state), _ = jax.lax.scan(body, (state.net, state.opt_state), (idx, valid, bkeys))
        return GMState(net=net, opt_state=opt_state, age=state.age + 1, inits=state.inits)

    def update(state, syn, classes, data, key, step):
        k_new, k_train = jax.random.split(key)
        if outer_loop == 1:          # a fresh network for every update (IPC 1): nothing to train
            return fresh(k_new, syn, state.inits)
        if inner_loop == 0:
            trained = lambda: state._replace(age=state.age + 1)  # noqa: E731
        else:
            trained = lambda: train_net(state, syn, classes, data.num_classes,  # noqa: E731
                                        k_train, train_augment)
        last = (step % outer_loop) == outer_loop - 1
        return jax.lax.cond(last, lambda: fresh(k_new, syn, state.inits), trained)

    return Objective(init=init, loss=loss, update=update, model=model,
                     name=f"gradient matching[{model.name}, {distance}, outer {outer_loop}, "
                          f"inner {inner_loop}]")


# ----------------------------------------------------------------------------- factories

def dc(model: Model, *, ipc: int, optimizer: optax.GradientTransformation | None = None,
       lr: float = 0.1, momentum: float = 0.5, outer_loop: int | None = None,
       inner_loop: int | None = None, distance: str = "layerwise", batch_real: int = 256,
       lr_net: float = 0.01, net_momentum: float = 0.0, net_batch: int = 256,
       init: str = "noise", augment=None, train_augment=None, extra=(),
       param: Parameterization | None = None) -> Distiller:
    """Dataset Condensation with gradient matching (DC) as a :class:`jdd.distill.Distiller`.

    The composition ``pixels(init, hard labels) x gradient_matching(...)`` on
    :func:`jdd.distill.compose.compose`, with the official defaults. One ``step`` is one
    synthetic update; the paper's 1000 outer iterations are ``1000 * outer_loop`` steps.

    Args:
        model: the network matched on (ConvNet-D3 in the paper: ``make_model("convnet", k)``).
        ipc: synthetic images per class.
        optimizer: optax optimizer of the images; default ``optax.sgd(lr, momentum=momentum)``.
        lr: image learning rate (0.1, DC's, validated at IPC 1 on digits against the official
            code). From real images at IPC 10 on 8 x 8 digits it is too large: a validation
            split ends below the starting images after 20 outer iterations, where 0.003-0.03
            improve them (``benchmarks/dc_recipe.py``; ``jdd continual`` uses 0.003 there).
        momentum: image SGD momentum (0.5).
        outer_loop, inner_loop: None takes :func:`default_loops` of ``ipc``.
        distance, batch_real, lr_net, net_momentum, net_batch: see :func:`gradient_matching`.
        init: ``"noise"`` (DC's default) or ``"real"``.
        augment: siamese ``(key, x) -> x`` applied per class to the real and synthetic batch
            (None for DC; :func:`dsa` passes DSA's).
        train_augment: per-image augmentation of the network's training on the synthetic set.
        extra: extra loss terms (:class:`jdd.distill.compose.ExtraTerm`).
        param: the synthetic set's :class:`jdd.distill.Parameterization` (e.g.
            :func:`jdd.distill.low_rank.low_rank`); None: ``pixels(init=init, labels="hard")``. A given
            parameterization brings its own initialisation and labels.

    Returns:
        A Distiller; ``step`` metrics: ``loss`` (the summed distance before the update),
        ``grad_norm``, ``net_loss``.

    Raises:
        ValueError: any bad argument, before anything is compiled.

    Example:
        >>> import jax
        >>> from jdd.data import load_digits
        >>> from jdd.distill import distill
        >>> from jdd.models import make_model
        >>> train, _ = load_digits()
        >>> d = dc(make_model("convnet", 10), ipc=10)       # outer_loop 10, inner_loop 50
        >>> keys = jax.random.split(jax.random.key(0), 2)   # 2 seeds, one vmapped run
        >>> run = distill(d, keys, train, steps=1000 * 10)  # doctest: +SKIP

        The paper's 1000 outer iterations are ``1000 * outer_loop`` steps (one step = one
        synthetic update).
    """
    ipc = _check_positive_int("ipc", ipc)
    lo, li = default_loops(ipc)
    outer_loop = lo if outer_loop is None else outer_loop
    inner_loop = li if inner_loop is None else inner_loop
    if optimizer is None:
        lr = _check_rate("lr", lr)
        momentum = _check_rate("momentum", momentum, zero_ok=True, below_one=True)
        optimizer = optax.sgd(lr, momentum=momentum if momentum > 0 else None)
    param = param if param is not None else pixels(init=init, labels="hard")
    objective = gradient_matching(model, outer_loop=outer_loop, inner_loop=inner_loop,
                                  distance=distance, batch_real=batch_real, lr_net=lr_net,
                                  net_momentum=net_momentum, net_batch=net_batch,
                                  train_augment=train_augment)
    return compose(param, objective, ipc=ipc, optimizer=optimizer, augment=augment, extra=extra)


def dsa(model: Model, *, ipc: int, strategy: str = "color_crop_cutout_flip_scale_rotate",
        mode: str = "single", init: str = "real", **kwargs) -> Distiller:
    """Dataset Condensation with Differentiable Siamese Augmentation (DSA).

    :func:`dc` with ``augment = jdd.augment.dsa(strategy, mode=mode)`` for matching (one draw per
    class shared by its real and synthetic batch) and for the network's training between updates
    (per image), and real-image initialisation (the official README's command).

    Args:
        model: the network matched on.
        ipc: synthetic images per class.
        strategy: DSA families joined by ``_`` (use
            ``jdd.augment.default_strategy(dataset)``: no flip for digits).
        mode: ``"single"`` (one random family per draw, DSA's default) or ``"all"``.
        init: ``"real"`` (DSA's) or ``"noise"``.
        **kwargs: any other argument of :func:`dc`.

    Returns:
        A Distiller.

    Example:
        >>> from jdd.augment import default_strategy
        >>> from jdd.models import make_model
        >>> d = dsa(make_model("convnet", 10), ipc=1,
        ...         strategy=default_strategy("digits"))    # no flip for digits
    """
    from jdd.augment import dsa as make_dsa
    for name in ("augment", "train_augment"):
        if name in kwargs:
            raise ValueError(f"dsa() sets {name} itself; use dc() for a custom augmentation.")
    aug = make_dsa(strategy, mode=mode, siamese=True)
    return dc(model, ipc=ipc, init=init, augment=aug, train_augment=aug, **kwargs)


# ----------------------------------------------------------------------------- registry entries

@dataclasses.dataclass(frozen=True)
class DCConfig(ParamOptions, ExtraOptions, NetworkOptions, EvalOptions):
    """``jdd distill --method dc``: the official DC recipe (VICO-UoE/DatasetCondensation).

    ``--steps`` counts jdd steps, i.e. SYNTHETIC UPDATES; the paper's outer iteration is
    ``outer_loop`` of them, so the default number of steps is ``iterations * outer_loop``
    (1000 at IPC 1, 10000 at IPC 10). Evaluation: ConvNet-D3 protocol without augmentation.
    """

    lr: float = opt(0.1, "SGD learning rate of the synthetic images (lr_img)", gt=0, le=1e4)
    momentum: float = opt(0.5, "SGD momentum of the synthetic images", ge=0, lt=1)
    outer_loop: int | None = opt(None, "synthetic updates per fresh network (none: by ipc, "
                                 "1 at ipc 1, 10 at 10, 50 at 50)", ge=1, le=100000)
    inner_loop: int | None = opt(None, "network training epochs on the synthetic set between "
                                 "updates (none: by ipc, 1 at ipc 1, 50 at 10, 10 at 50)",
                                 ge=0, le=100000)
    lr_net: float = opt(0.01, "SGD learning rate of the network trained on the synthetic set",
                        gt=0, le=100)
    net_momentum: float = opt(0.0, "SGD momentum of that network (0.5 in DC's first release)",
                              ge=0, lt=1)
    net_batch: int = opt(256, "minibatch of that network's training", ge=1)
    batch_real: int = opt(256, "real images per class per update", ge=1)
    distance: str = opt("layerwise", "gradient distance (layerwise: the paper's per-output "
                        "1 - cosine)", choices=DISTANCES)
    init: str = opt("noise", "initialisation of the synthetic images", choices=("noise", "real"))
    iterations: int = opt(1000, "the paper's outer iterations: the default --steps is "
                          "iterations * outer_loop (--steps counts synthetic updates)",
                          ge=1, le=10**7)


@dataclasses.dataclass(frozen=True)
class DSAConfig(DCConfig):
    """``jdd distill --method dsa``: DC plus differentiable siamese augmentation (official
    recipe: real initialisation, the dataset's DSA strategy, DSA during evaluation training).
    ``--steps`` counts synthetic updates (default ``iterations * outer_loop``)."""

    init: str = opt("real", "initialisation of the synthetic images", choices=("noise", "real"))
    eval_epochs: int = opt(1000, "evaluation training epochs (lr x0.1 at half; the official "
                           "protocol trains 1000 epochs whenever it augments)", ge=1,
                           le=100000)
    dsa_strategy: str = opt("auto", "DSA families joined by _ (auto: the dataset's: "
                            "color_crop_cutout_scale_rotate for digits/MNIST/SVHN, else "
                            "color_crop_cutout_flip_scale_rotate)")

    def check(self) -> None:
        check_dsa_strategy(self.dsa_strategy, allow_none=False)


def resolved_loops(cfg: DCConfig, ipc: int) -> tuple[int, int]:
    """``(outer_loop, inner_loop)`` of a config: the given values, else :func:`default_loops`."""
    lo, li = default_loops(ipc)
    return (lo if cfg.outer_loop is None else cfg.outer_loop,
            li if cfg.inner_loop is None else cfg.inner_loop)


def _build(cfg: DCConfig, spec: RunSpec, *, with_dsa: bool) -> Plan:
    from jdd.methods import protocol_learner, run_augment
    validate(cfg)
    if cfg.model in ("convnet", "resnet") and len(spec.feature_shape) != 3:
        raise ConfigError(f"--model {cfg.model} needs image data (h, w, c); got feature shape "
                          f"{spec.feature_shape}")
    outer, inner = resolved_loops(cfg, spec.ipc)
    model = make_network(cfg, spec.num_classes)
    info = {**to_dict(cfg), "outer_loop": outer, "inner_loop": inner, "model_name": model.name,
            "steps_per_iteration": outer}
    aug = None
    if with_dsa:
        aug, info["dsa_strategy"] = run_augment(cfg.dsa_strategy, spec, siamese=True)
    d = dc(model, ipc=spec.ipc, lr=cfg.lr, momentum=cfg.momentum, outer_loop=outer,
           inner_loop=inner, distance=cfg.distance, batch_real=cfg.batch_real, lr_net=cfg.lr_net,
           net_momentum=cfg.net_momentum, net_batch=cfg.net_batch, augment=aug,
           train_augment=aug, param=make_param(cfg, spec, init=cfg.init, labels="hard"),
           extra=make_extra(cfg, model, spec.feature_shape))
    info.update(param_info(cfg, spec))
    learner = protocol_learner(cfg, spec, paper_augment=with_dsa)
    return Plan(d, learner, info)


METHOD = Method(name="dc", config=DCConfig, build=lambda cfg, spec: _build(cfg, spec,
                                                                            with_dsa=False),
                summary="gradient matching, DC (Zhao, Mopuri & Bilen, ICLR 2021); --steps counts "
                        "synthetic updates (iterations * outer_loop)",
                default_steps=lambda cfg, ipc: cfg.iterations * resolved_loops(cfg, ipc)[0],
                needs_images=True)

DSA_METHOD = Method(name="dsa", config=DSAConfig,
                    build=lambda cfg, spec: _build(cfg, spec, with_dsa=True),
                    summary="gradient matching with differentiable siamese augmentation, DSA "
                            "(Zhao & Bilen, ICML 2021); --steps counts synthetic updates",
                    default_steps=lambda cfg, ipc: cfg.iterations * resolved_loops(cfg, ipc)[0],
                    needs_images=True)
