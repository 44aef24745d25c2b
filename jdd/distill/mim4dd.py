"""MIM4DD (Shang et al., NeurIPS 2023, "MIM4DD: Mutual Information Maximization for Dataset
Distillation") as an extra loss term: an InfoNCE (contrastive) bound on the mutual information
between the synthetic and the real set, on features of several layers of the network the
objective already runs.

For every synthetic example (the anchor), the real examples of its class are positives and the
real examples of other classes negatives. With ``z`` the L2-normalised features of one layer and
``s_ij = z_syn_i . z_real_j / temperature``:

    loss_i = - mean_{j in positives(i)} [ s_ij - logsumexp_{a in real} s_ia ]

averaged over the anchors (that have a positive) and over the chosen layers; minimising it pulls
each synthetic example towards the real examples of its class in feature space and pushes it away
from the others (a lower bound on the MI grows as the loss falls).

Choices the paper's abstract leaves open (each a parameter):

* layers: any of the network's per-block activations (``Model.features``; negative indices count
  from the last, the embedding); default every layer the network exposes, each weighted equally;
* spatial maps are average-pooled to one vector per channel before normalising, and no projection
  head is learned (the term has no parameters of its own, so it composes with every objective
  without adding state);
* anchors are synthetic examples and candidates real ones (pairs across the two sets, as the
  paper's positive/negative pairs are);
* the network is the one the objective evaluates both batches with (gradient / distribution
  matching: the matched network; unrolled: the trained learner; trajectory matching: the student
  after its steps on the synthetic set), at the parameters the objective used; gradients flow
  into the synthetic set through every path, including the student's dependence on it;
* the real batch is the objective's own (augmented with the same draw) when it has one, else a
  class-balanced batch drawn from the real data (trajectory matching); at most ``real_batch``
  rows of it are used.

Example:
    >>> import jax, optax
    >>> from jdd.data import load_digits
    >>> from jdd.distill import compose, pixels
    >>> from jdd.distill.dm import distribution_matching
    >>> from jdd.models import make_model
    >>> train, _ = load_digits()
    >>> d = compose(pixels(), distribution_matching(make_model("convnet", 10, width=16)), ipc=1,
    ...             optimizer=optax.sgd(1.0), extra=[mim4dd(weight=0.1)])
    >>> s = d.init(jax.random.key(0), train)
    >>> s, m = d.step(s, jax.random.key(1), train)             # doctest: +SKIP
    >>> sorted(k for k in m if k.startswith("mim"))            # doctest: +SKIP
    ['mim4dd']
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

from jdd.distill.compose import ExtraTerm, Probe, class_batches


def _pool(f: jax.Array) -> jax.Array:
    """(n, ..., c) activations -> (n, c): average over the spatial axes."""
    return f if f.ndim == 2 else jnp.mean(f, axis=tuple(range(1, f.ndim - 1)))


def _normalise(z: jax.Array) -> jax.Array:
    return z * jax.lax.rsqrt(jnp.sum(z * z, axis=-1, keepdims=True) + 1e-12)


def infonce(z_syn: jax.Array, c_syn: jax.Array, z_real: jax.Array, c_real: jax.Array,
            temperature: float, valid: jax.Array | None = None) -> jax.Array:
    """The supervised InfoNCE loss of synthetic anchors against real candidates.

    Args:
        z_syn: (m, d) synthetic features (normalised here).
        c_syn: (m,) int classes of the anchors.
        z_real: (n, d) real features (normalised here).
        c_real: (n,) int classes of the candidates.
        temperature: softmax temperature (> 0).
        valid: (n,) bool mask of real rows to use (None: all).

    Returns:
        () mean over anchors with at least one positive of ``-mean_pos log softmax``; 0 when no
        anchor has a positive.
    """
    z_s, z_r = _normalise(z_syn), _normalise(z_real)
    logits = (z_s @ z_r.T) / temperature                                  # (m, n)
    if valid is None:
        valid = jnp.ones(z_r.shape[0], bool)
    logits = jnp.where(valid[None, :], logits, -1e9)
    log_p = logits - jax.nn.logsumexp(logits, axis=1, keepdims=True)
    pos = (c_syn[:, None] == c_real[None, :]) & valid[None, :]
    n_pos = jnp.sum(pos, axis=1)
    per_anchor = -jnp.sum(jnp.where(pos, log_p, 0.0), axis=1) / jnp.maximum(n_pos, 1)
    has = n_pos > 0
    return jnp.sum(jnp.where(has, per_anchor, 0.0)) / jnp.maximum(jnp.sum(has), 1)


def _real_rows(probe: Probe, key: jax.Array, real_batch: int):
    """(x, c, valid) of at most ``real_batch`` real rows: the objective's batch, else a
    class-balanced draw from ``probe.data``."""
    if probe.x_real is not None:
        x, c = probe.x_real, probe.y_real
        if x.shape[0] > real_batch:
            idx = jax.random.choice(key, x.shape[0], (real_batch,), replace=False)
            x, c = x[idx], c[idx]
        return x, c, c >= 0
    data = probe.data
    if data is None:
        raise ValueError("mim4dd: the objective exposes no real batch and no data")
    k = data.num_classes
    x, c, mask = class_batches(key, data, max(1, math.ceil(real_batch / k)))
    x = x.reshape((-1,) + x.shape[2:])[:real_batch]
    return x, c.reshape(-1)[:real_batch], mask.reshape(-1)[:real_batch] > 0


def mim4dd(*, weight: float = 0.1, temperature: float = 0.1,
           layers: Sequence[int] | None = None, real_batch: int = 256,
           name: str = "mim4dd") -> ExtraTerm:
    """The MIM4DD contrastive term as a :class:`jdd.distill.ExtraTerm` (see the module docstring).

    Args:
        weight: its weight in the total loss (> 0).
        temperature: InfoNCE temperature (> 0).
        layers: indices into ``Model.features`` (negative: from the embedding back); None: every
            layer the network exposes.
        real_batch: at most this many real rows per step.
        name: the metric name of its value.

    Returns:
        An ExtraTerm for ``compose(..., extra=[...])`` or a method factory's ``extra=``; it needs
        an objective that runs a network (not KIP or the closed form).

    Raises:
        ValueError: a non-finite or non-positive weight or temperature, a real batch < 1; at
            trace time, a layer index the network does not have, or an objective without a
            network.
    """
    for what, v in (("weight", weight), ("temperature", temperature)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (
                math.isfinite(v) and v > 0):
            raise ValueError(f"mim4dd {what} must be a finite number > 0; got {v!r}.")
    if isinstance(real_batch, bool) or int(real_batch) != real_batch or real_batch < 1:
        raise ValueError(f"mim4dd real_batch must be a positive integer; got {real_batch!r}.")
    real_batch = int(real_batch)
    layers = None if layers is None else tuple(int(i) for i in layers)

    def fn(model, probe: Probe, key):
        if model is None or getattr(model, "features", None) is None or probe.params is None:
            raise ValueError("mim4dd needs an objective that runs a network with per-layer "
                             "features (DC, DSA, DM, MTT, unrolled); KIP and the closed form "
                             "run none.")
        x_r, c_r, valid = _real_rows(probe, key, real_batch)
        f_s = model.features(probe.params, probe.x_syn)
        f_r = model.features(probe.params, x_r)
        chosen = range(len(f_s)) if layers is None else layers
        for i in chosen:
            if not -len(f_s) <= i < len(f_s):
                raise ValueError(f"mim4dd layer {i}: the network {model.name} exposes "
                                 f"{len(f_s)} feature layers (indices {-len(f_s)} .. "
                                 f"{len(f_s) - 1}).")
        total = 0.0
        for i in chosen:
            total = total + infonce(_pool(f_s[i]), probe.y_syn, _pool(f_r[i]), c_r, temperature,
                                    valid)
        return total / len(chosen)

    return ExtraTerm(fn=fn, weight=float(weight), name=name)


__all__ = ["infonce", "mim4dd"]
