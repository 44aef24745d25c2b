"""Networks with BatchNorm, for SRe2L-style teachers (:mod:`jdd.distill.sre2l`).

jdd's other models (:mod:`jdd.models`) are stateless, as distillation's inner loops need; a
BatchNorm network carries running statistics, so it has its own small interface,
:class:`BNModel`: ``init`` gives ``{"params", "batch_stats"}`` variables, ``apply(variables, x,
train)`` updates the running statistics in training mode, and ``stats(variables, x)`` returns,
with the logits in evaluation mode, every BatchNorm layer's batch mean and variance of its input
beside its running mean and variance: what SRe2L's recovery matches.

:class:`StatBatchNorm` is written here rather than taken from ``flax.linen.BatchNorm`` because
the recovery needs each layer's input statistics next to its running statistics; it computes
exactly what torch's ``BatchNorm2d`` (and flax's) computes: normalise by the batch's biased
variance in training, by the running estimates in evaluation, running estimates updated as
``(1 - momentum) * running + momentum * batch`` with the unbiased batch variance (torch's
convention; momentum 0.1).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdd.models import conv_fn, layer_init


class StatBatchNorm(nn.Module):
    """BatchNorm over all axes but the last, sowing ``(batch mean, batch var, running mean,
    running var)`` of its input into the ``"bn_stats"`` collection."""

    momentum: float = 0.1
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x, train: bool):
        c = x.shape[-1]
        axes = tuple(range(x.ndim - 1))
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        mean = jnp.mean(x, axis=axes)
        var = jnp.mean(jnp.square(x - mean), axis=axes)                  # biased
        self.sow("bn_stats", "stats", (mean, var, ra_mean.value, ra_var.value))
        if train:
            n = math.prod(x.shape[a] for a in axes)
            if not self.is_initializing():
                unbiased = var * n / max(n - 1, 1)
                m = self.momentum
                ra_mean.value = (1 - m) * ra_mean.value + m * jax.lax.stop_gradient(mean)
                ra_var.value = (1 - m) * ra_var.value + m * jax.lax.stop_gradient(unbiased)
            use_mean, use_var = mean, var
        else:
            use_mean, use_var = ra_mean.value, ra_var.value
        y = (x - use_mean) * jax.lax.rsqrt(use_var + self.epsilon)
        return y * scale + bias


class ConvNetBN(nn.Module):
    """ConvNet-D``depth`` with BatchNorm: [3x3 conv, BatchNorm, ReLU, 2x2 average pool] x depth,
    then a linear classifier (the DC/DSA code's ``ConvNet`` with ``net_norm='batchnorm'``)."""

    width: int = 128
    depth: int = 3
    num_outputs: int = 10
    param_init: str = "torch"

    @nn.compact
    def __call__(self, x, train: bool = False):
        for d in range(self.depth):
            pad = 3 if (d == 0 and x.shape[-1] == 1) else 1
            x = nn.Conv(self.width, (3, 3), padding=((pad, pad), (pad, pad)),
                        conv_general_dilated=conv_fn("auto"),
                        **layer_init(self.param_init, 9 * x.shape[-1]))(x)
            x = nn.relu(StatBatchNorm()(x, train))
            if min(x.shape[1], x.shape[2]) >= 2:
                x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        emb = x.reshape((x.shape[0], -1))
        out = nn.Dense(self.num_outputs, **layer_init(self.param_init, emb.shape[-1]))(emb)
        self.sow("features", "embedding", emb)
        return out


class _Block(nn.Module):
    channels: int
    stride: int
    param_init: str

    @nn.compact
    def __call__(self, x, train: bool):
        c_in = x.shape[-1]
        s = (self.stride, self.stride)
        y = nn.Conv(self.channels, (3, 3), strides=s, padding=((1, 1), (1, 1)), use_bias=False,
                    **layer_init(self.param_init, 9 * c_in))(x)
        y = nn.relu(StatBatchNorm()(y, train))
        y = nn.Conv(self.channels, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                    **layer_init(self.param_init, 9 * self.channels))(y)
        y = StatBatchNorm()(y, train)
        if self.stride != 1 or c_in != self.channels:
            x = nn.Conv(self.channels, (1, 1), strides=s, padding="VALID", use_bias=False,
                        **layer_init(self.param_init, c_in))(x)
            x = StatBatchNorm()(x, train)
        return nn.relu(y + x)


class ResNetBN(nn.Module):
    """A small BatchNorm ResNet for small images: 3x3 stem, ``stages`` basic blocks per stage
    (``width * 2**i`` channels, stride 2 from the second stage), global average pool, linear.
    ``stages=(1, 1, 1, 1)`` (ResNet-10) by default; ``(2, 2, 2, 2)`` is ResNet-18BN."""

    stages: Sequence[int] = (1, 1, 1, 1)
    width: int = 32
    num_outputs: int = 10
    param_init: str = "torch"

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.width, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                    **layer_init(self.param_init, 9 * x.shape[-1]))(x)
        x = nn.relu(StatBatchNorm()(x, train))
        for i, blocks in enumerate(self.stages):
            for b in range(blocks):
                x = _Block(self.width * 2 ** i, 2 if (i > 0 and b == 0) else 1,
                           self.param_init)(x, train)
        emb = jnp.mean(x, axis=(1, 2))
        self.sow("features", "embedding", emb)
        return nn.Dense(self.num_outputs, **layer_init(self.param_init, emb.shape[-1]))(emb)


class BNModel(NamedTuple):
    """Pure access to a BatchNorm network.

    Attributes:
        init: ``(key, x) -> {"params", "batch_stats"}``.
        apply: ``(variables, x, train) -> (logits, batch_stats)``: in training mode the running
            statistics are updated (returned); in evaluation mode they are returned unchanged.
        stats: ``(variables, x) -> (logits, [(mean, var, running_mean, running_var), ...])``:
            evaluation-mode logits and, one entry per BatchNorm layer, its input's batch
            statistics (differentiable in ``x``) beside its running statistics.
        embed: ``(variables, x) -> (n, d)`` evaluation-mode penultimate features.
        name: description.
    """

    init: Callable
    apply: Callable
    stats: Callable
    embed: Callable
    name: str


def _wrap(module: nn.Module, name: str) -> BNModel:
    def init(key, x):
        v = module.init(key, x, train=False)
        return {"params": v["params"], "batch_stats": v["batch_stats"]}

    def apply(variables, x, train: bool = False):
        if train:
            out, upd = module.apply(variables, x, train=True, mutable=["batch_stats"])
            return out, upd["batch_stats"]
        return module.apply(variables, x, train=False), variables["batch_stats"]

    def stats(variables, x):
        out, col = module.apply(variables, x, train=False, mutable=["bn_stats"])
        return out, [s for s in jax.tree.leaves(col["bn_stats"], is_leaf=lambda t: isinstance(
            t, tuple) and len(t) == 4)]

    def embed(variables, x):
        _, col = module.apply(variables, x, train=False, mutable=["features"])
        return col["features"]["embedding"][0]

    return BNModel(init=init, apply=apply, stats=stats, embed=embed, name=name)


BN_MODELS = ("convnet-bn", "resnet-bn")


def make_bn_model(name: str, num_outputs: int, *, width: int | None = None, depth: int = 3,
                  stages: Sequence[int] = (1, 1, 1, 1), param_init: str = "torch") -> BNModel:
    """``"convnet-bn"`` (:class:`ConvNetBN`, width 128 by default) or ``"resnet-bn"``
    (:class:`ResNetBN`, width 32 by default) as a :class:`BNModel`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> m = make_bn_model("convnet-bn", 10, width=8, depth=2)
        >>> v = m.init(jax.random.key(0), jnp.zeros((2, 8, 8, 1)))
        >>> logits, stats = m.stats(v, jnp.ones((4, 8, 8, 1)))
        >>> logits.shape, len(stats), stats[0][0].shape
        ((4, 10), 2, (8,))
    """
    if name == "convnet-bn":
        w = 128 if width is None else width
        return _wrap(ConvNetBN(width=w, depth=depth, num_outputs=num_outputs,
                               param_init=param_init), f"convnet-bn(depth={depth}, width={w})")
    if name == "resnet-bn":
        w = 32 if width is None else width
        return _wrap(ResNetBN(stages=tuple(stages), width=w, num_outputs=num_outputs,
                              param_init=param_init),
                     f"resnet-bn(stages={tuple(stages)}, width={w})")
    raise ValueError(f"unknown BatchNorm model {name!r}; valid: {', '.join(BN_MODELS)}")


__all__ = ["BNModel", "BN_MODELS", "ConvNetBN", "ResNetBN", "StatBatchNorm", "make_bn_model"]

