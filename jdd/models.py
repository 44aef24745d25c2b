"""Flax models used in the dataset-distillation literature, with pure init/apply access.

Every model is a flax ``linen`` module; :func:`make_model` wraps one into a :class:`Model`
NamedTuple of two pure functions, ``init(key, x) -> params`` and ``apply(params, x) -> logits``,
which is what the inner training loops (:mod:`jdd.train`) consume.

No model here has mutable state (no BatchNorm): BatchNorm behaves differently in distillation and
evaluation and is a known source of irreproducible DD numbers. The DD ConvNet uses instance norm,
as in the DC/DSA/DM/MTT protocol.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS: dict[str, Callable] = {
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "gelu": nn.gelu,
    "sigmoid": nn.sigmoid,
    "softplus": nn.softplus,
    "leaky_relu": lambda x: nn.leaky_relu(x, 0.1),
    "identity": lambda x: x,
}

#: Names accepted by :func:`make_model`.
MODELS = ("mlp", "convnet", "two_layer")


def activation(name: str | Callable) -> Callable:
    """Look up an activation by name (or pass a callable through)."""
    if callable(name):
        return name
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}.")
    return ACTIVATIONS[name]


class MLP(nn.Module):
    """Fully-connected network on flattened inputs.

    Attributes:
        hidden: widths of the hidden layers, e.g. ``(128, 128)``.
        num_outputs: output dimension (number of classes, or 1 for a scalar regressor).
        activation: activation name (see ``ACTIVATIONS``) or callable.

    ``__call__(x)``: x (n, ...) -> (n, num_outputs).
    """

    hidden: Sequence[int] = (128,)
    num_outputs: int = 10
    activation: Any = "relu"

    @nn.compact
    def __call__(self, x):
        act = activation(self.activation)
        x = x.reshape((x.shape[0], -1))
        for w in self.hidden:
            x = act(nn.Dense(w)(x))
        return nn.Dense(self.num_outputs)(x)


class ConvNet(nn.Module):
    """The DD ConvNet (Gidaris & Komodakis; used by DC, DSA, DM, MTT, FRePo evaluations).

    ``depth`` blocks of [3x3 conv (``width`` channels) -> norm -> activation -> 2x2 average pool],
    then a linear classifier on the flattened features. Defaults: width 128, depth 3, instance norm,
    ReLU (the "ConvNet-D3" of the literature).

    Attributes:
        width: channels of every conv layer.
        depth: number of conv blocks.
        norm: ``"instance"`` (affine instance norm), ``"layer"``, or ``"none"``.
        activation: activation name or callable.
        pooling: ``"avg"``, ``"max"`` or ``"none"``.
        num_outputs: number of classes.

    ``__call__(x)``: x (n, h, w, c) NHWC -> (n, num_outputs). Pooling stops once the spatial size
    reaches 1, so 8x8 digits work at depth 3.
    """

    width: int = 128
    depth: int = 3
    norm: str = "instance"
    activation: Any = "relu"
    pooling: str = "avg"
    num_outputs: int = 10

    @nn.compact
    def __call__(self, x):
        if x.ndim != 4:
            raise ValueError(f"ConvNet expects NHWC images (n, h, w, c); got shape {x.shape}.")
        act = activation(self.activation)
        for _ in range(self.depth):
            x = nn.Conv(self.width, (3, 3), padding="SAME")(x)
            if self.norm == "instance":
                x = nn.GroupNorm(num_groups=None, group_size=1, epsilon=1e-5)(x)
            elif self.norm == "layer":
                x = nn.LayerNorm()(x)
            elif self.norm != "none":
                raise ValueError(f"unknown norm {self.norm!r}; valid: instance, layer, none.")
            x = act(x)
            if self.pooling != "none" and min(x.shape[1], x.shape[2]) >= 2:
                pool = nn.avg_pool if self.pooling == "avg" else nn.max_pool
                x = pool(x, (2, 2), strides=(2, 2))
        return nn.Dense(self.num_outputs)(x.reshape((x.shape[0], -1)))


class Model(NamedTuple):
    """Pure access to a network.

    Attributes:
        init: ``(key, x) -> params`` for an example batch ``x`` (n, *feature_shape).
        apply: ``(params, x) -> (n, num_outputs)`` outputs (logits).
        name: a description, e.g. ``"mlp(128,)"``.
    """

    init: Callable[[jax.Array, jax.Array], Any]
    apply: Callable[[Any, jax.Array], jax.Array]
    name: str


def from_module(module: nn.Module, name: str | None = None) -> Model:
    """Wrap any stateless flax linen module into a :class:`Model`."""
    return Model(init=lambda key, x: module.init(key, x)["params"],
                 apply=lambda params, x: module.apply({"params": params}, x),
                 name=name or type(module).__name__.lower())


def make_model(name: str, num_outputs: int, **kwargs) -> Model:
    """Build one of the literature's models by name.

    Args:
        name: ``"mlp"``, ``"convnet"`` or ``"two_layer"`` (an MLP with one hidden layer of
            ``width`` units).
        num_outputs: number of classes.
        **kwargs: module attributes (``hidden=(128,)``, ``width=128``, ``depth=3``, ``norm=...``,
            ``activation=...``).

    Returns:
        A :class:`Model`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> m = make_model("convnet", 10, width=16, depth=2)
        >>> p = m.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
        >>> m.apply(p, jnp.zeros((5, 8, 8, 1))).shape
        (5, 10)
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}.")
    if name == "two_layer":  # the theory papers' network: an MLP with one hidden layer
        kw = dict(kwargs)
        module = MLP(hidden=(kw.pop("width", 128),), num_outputs=num_outputs, **kw)
    else:
        module = {"mlp": MLP, "convnet": ConvNet}[name](num_outputs=num_outputs, **kwargs)
    desc = name + "(" + ", ".join(f"{k}={v}" for k, v in sorted(kwargs.items())) + ")"
    return from_module(module, desc)
