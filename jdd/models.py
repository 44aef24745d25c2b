"""Flax models used in the dataset-distillation literature, with pure init/apply/features access.

Every model is a flax ``linen`` module; :func:`make_model` wraps one into a :class:`Model`
NamedTuple of pure functions, ``init(key, x) -> params``, ``apply(params, x) -> logits`` and
``features(params, x) -> tuple of per-block activations``, which is what the inner training loops
(:mod:`jdd.train`) and the matching objectives consume. ``Model.embed(params, x)`` is the last of
those features: the (n, d) vector that feeds the linear classifier (what distribution matching
embeds with).

Features come from the SAME module definition as the logits (no second copy of the network): each
module's compact ``__call__`` takes ``return_features=True`` and returns the list of activations it
built on the way, and the module's ``features`` method is what ``Model.features`` applies (with
``module.apply(..., method="features")``).

No model here has mutable state (no BatchNorm): BatchNorm behaves differently in distillation and
evaluation and is a known source of irreproducible DD numbers. The DD ConvNet uses instance norm,
as in the DC/DSA/DM/MTT protocol; so does the ResNet (as DC's own ``ResNet18``).

Names and values are checked by :func:`make_model` before anything is traced: an unknown norm,
pooling or activation, a width, depth, hidden width or stage count below 1, or an unknown keyword
raises one ValueError that lists the valid choices.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdd.conv import CONV_IMPLS, conv_fn

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
MODELS = ("mlp", "convnet", "two_layer", "resnet")

#: Normalisations of the ConvNet and the ResNet (all per example; no batch statistics).
NORMS = ("instance", "layer", "none")

#: Poolings of the ConvNet.
POOLINGS = ("avg", "max", "none")

#: Parameter initialisations of the ConvNet and the ResNet: ``"torch"`` (PyTorch's defaults for
#: ``nn.Conv2d`` / ``nn.Linear``, those of the official DC/DSA/DM/MTT networks) or ``"flax"``
#: (flax's: LeCun-normal kernels, zero biases).
PARAM_INITS = ("torch", "flax")


def _torch_uniform(fan_in: int) -> Callable:
    """``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``: torch's default weight AND bias distribution
    (``kaiming_uniform_(a=sqrt(5))`` reduces to this bound for the weights).

    The draw is made flat and reshaped: the same bytes as drawing ``shape`` directly (JAX's
    threefry numbers each element by its flat index; a test checks it), but XLA's CPU compiler
    takes seconds on the multi-dimensional form of small kernels (jax 0.10; measured ad hoc:
    about 3 s for a (3, 3, 8, 8) draw against under 1 s flat), which every test and every fresh
    network of a distiller pays."""
    bound = 1.0 / float(fan_in) ** 0.5

    def init(key, shape, dtype=jnp.float32):
        size = math.prod(shape)
        return jax.random.uniform(key, (size,), dtype, -bound, bound).reshape(shape)
    return init


def layer_init(kind: str, fan_in: int) -> dict:
    """``kernel_init`` / ``bias_init`` keywords of ``nn.Conv`` / ``nn.Dense`` for ``kind``.

    ``"torch"``: torch's ``kaiming_uniform_(a=sqrt(5))`` kernels, i.e. ``U(-b, b)`` with
    ``b = 1/sqrt(fan_in)`` (``fan_in = in_channels * kh * kw``, or the input features of a
    dense layer), and biases ``U(-b, b)`` with the same ``b``; ``"flax"``: flax's defaults
    (no keywords). The two differ by more than a constant: torch's weights have variance
    ``1/(3 fan_in)`` against LeCun's ``1/fan_in``, and its biases are not zero. Gradient
    matching is sensitive to it (see :class:`ConvNet`).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> w = layer_init("torch", 9 * 4)["kernel_init"](jax.random.key(0), (3, 3, 4, 8))
        >>> bool(jnp.max(jnp.abs(w)) <= 1 / 6)
        True
    """
    if kind == "flax":
        return {}
    if kind == "torch":
        init = _torch_uniform(fan_in)
        return {"kernel_init": init, "bias_init": init}
    raise ValueError(f"unknown param_init {kind!r}; valid: {', '.join(PARAM_INITS)}.")


def activation(name: str | Callable) -> Callable:
    """Look up an activation by name (or pass a callable through)."""
    if callable(name):
        return name
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}.")
    return ACTIVATIONS[name]


def _norm(kind: str) -> nn.Module | None:
    """A fresh norm layer of ``kind`` (one of ``NORMS``); None for ``"none"``."""
    if kind == "instance":  # per image and channel over space, affine (torch GroupNorm(C, C))
        return nn.GroupNorm(num_groups=None, group_size=1, epsilon=1e-5)
    if kind == "layer":
        return nn.LayerNorm()
    if kind == "none":
        return None
    raise ValueError(f"unknown norm {kind!r}; valid: {', '.join(NORMS)}.")


def _check_norm_size(norm: str, x, where: str) -> None:
    """Refuse instance normalisation of 1x1 maps: per image and channel it subtracts the only
    value there, so the layer outputs its bias whatever the input (the network then learns
    nothing: every prediction is the same)."""
    if norm == "instance" and x.shape[1] * x.shape[2] == 1:
        raise ValueError(
            f"{where} instance-normalises 1x1 maps at this input size, which outputs a constant "
            f"whatever the input; use norm 'layer' or 'none', fewer blocks or stages, or larger "
            f"inputs.")


class MLP(nn.Module):
    """Fully-connected network on flattened inputs.

    Attributes:
        hidden: widths of the hidden layers, e.g. ``(128, 128)``; ``()`` is a linear model.
        num_outputs: output dimension (number of classes, or 1 for a scalar regressor).
        activation: activation name (see ``ACTIVATIONS``) or callable.

    ``__call__(x)``: x (n, ...) -> (n, num_outputs). ``features(x)``: one (n, w) activation per
    hidden layer, the last being the classifier's input (for ``hidden=()``, the flattened input
    (n, prod(feature_shape)) is the only entry).
    """

    hidden: Sequence[int] = (128,)
    num_outputs: int = 10
    activation: Any = "relu"

    @nn.compact
    def __call__(self, x, return_features: bool = False):
        act = activation(self.activation)
        x = x.reshape((x.shape[0], -1))
        feats = []
        for w in self.hidden:
            x = act(nn.Dense(w)(x))
            feats.append(x)
        if return_features:
            return tuple(feats) if feats else (x,)
        return nn.Dense(self.num_outputs)(x)

    def features(self, x):
        """Per-layer activations: a tuple of (n, w) arrays, last = the classifier's input."""
        return self(x, return_features=True)


class ConvNet(nn.Module):
    """The DD ConvNet (Gidaris & Komodakis; used by DC, DSA, DM, MTT, FRePo evaluations).

    ``depth`` blocks of [3x3 conv (``width`` channels) -> norm -> activation -> 2x2 average pool],
    then a linear classifier on the flattened features. Defaults: width 128, depth 3, instance norm,
    ReLU (the "ConvNet-D3" of the literature).

    As the official torch ConvNet (VICO-UoE/DatasetCondensation ``networks.py``), the first conv
    of a 1-channel input is padded by 3 (``gray_padding``): 28x28 MNIST gives 32x32 maps and a
    4x4x128 embedding, 8x8 digits 12x12 maps and 1x1x128 (every other conv is "SAME"). This
    matters beyond bookkeeping: with "SAME" everywhere, depth 3 on 8x8 digits instance-normalises
    2x2 maps in the last block, and gradient matching (DC/DSA) does not learn at all (14 % at
    IPC 1, 76 % with the padding; benchmarks/matching.py). Its parameters are initialised as
    torch initialises them (``param_init="torch"``, :func:`layer_init`), which gradient matching
    is also sensitive to: DC on digits at IPC 1, 200 iterations, scored on a validation split
    of the training set (2 seeds x 5 models), 86.4 +- 1.3 % with torch's initialisation against
    79.6 +- 3.2 % with flax's. The one difference left: ``"layer"`` is flax's LayerNorm over
    channels where theirs normalises over (C, H, W).

    Attributes:
        width: channels of every conv layer.
        depth: number of conv blocks.
        norm: ``"instance"`` (affine instance norm), ``"layer"``, or ``"none"``.
        activation: activation name or callable.
        pooling: ``"avg"``, ``"max"`` or ``"none"``.
        num_outputs: number of classes.
        conv: convolution implementation, ``"auto"`` (on CPU the native value with the matrix
            form's derivatives, see :mod:`jdd.conv`), ``"xla"``, ``"matmul"`` or ``"hybrid"``;
            the same function either way.
        gray_padding: padding of the first conv when the input has 1 channel (3, the official
            network's; 1 is "SAME").
        param_init: ``"torch"`` (the official network's PyTorch initialisation, see
            :func:`layer_init`) or ``"flax"``.

    ``__call__(x)``: x (n, h, w, c) NHWC -> (n, num_outputs). Pooling (2x2, stride 2, floor) stops
    once the spatial size reaches 1. ``features(x)``: ``depth + 1`` arrays: each block's
    output (n, h_i, w_i, width) (after norm, activation and pooling), then the flattened embedding
    (n, h_depth * w_depth * width) that feeds the classifier.
    """

    width: int = 128
    depth: int = 3
    norm: str = "instance"
    activation: Any = "relu"
    pooling: str = "avg"
    num_outputs: int = 10
    conv: str = "auto"
    gray_padding: int = 3
    param_init: str = "torch"

    @nn.compact
    def __call__(self, x, return_features: bool = False):
        if x.ndim != 4:
            raise ValueError(f"ConvNet expects NHWC images (n, h, w, c); got shape {x.shape}.")
        act = activation(self.activation)
        feats = []
        for d in range(self.depth):
            pad = self.gray_padding if (d == 0 and x.shape[-1] == 1) else 1
            x = nn.Conv(self.width, (3, 3), padding=((pad, pad), (pad, pad)),
                        conv_general_dilated=conv_fn(self.conv),
                        **layer_init(self.param_init, 9 * x.shape[-1]))(x)
            _check_norm_size(self.norm, x, f"ConvNet(depth={self.depth}) block {d + 1}")
            norm = _norm(self.norm)
            if norm is not None:
                x = norm(x)
            x = act(x)
            if self.pooling != "none" and min(x.shape[1], x.shape[2]) >= 2:
                pool = nn.avg_pool if self.pooling == "avg" else nn.max_pool
                x = pool(x, (2, 2), strides=(2, 2))
            feats.append(x)
        emb = x.reshape((x.shape[0], -1))
        if return_features:
            return tuple(feats) + (emb,)
        return nn.Dense(self.num_outputs, **layer_init(self.param_init, emb.shape[-1]))(emb)

    def features(self, x):
        """Per-block activations (n, h_i, w_i, width), then the (n, d) embedding."""
        return self(x, return_features=True)


class ResBlock(nn.Module):
    """The basic residual block (two 3x3 convs) of ResNet-18, with a per-example norm.

    ``y = act(norm(conv(act(norm(conv_s(x))))) + shortcut(x))``; ``conv_s`` has stride
    ``stride``; the shortcut is the identity, or a 1x1 conv with that stride and a norm where the
    shape changes. Convs are padded by 1 on each side (torch's ``padding=1``: a stride-2 conv
    samples rows 0, 2, 4, ... centred as in torch) and have no bias unless ``norm="none"``.
    """

    channels: int
    stride: int = 1
    norm: str = "instance"
    activation: Any = "relu"
    conv: str = "auto"
    param_init: str = "torch"

    @nn.compact
    def __call__(self, x):
        act = activation(self.activation)
        bias = self.norm == "none"
        cf = conv_fn(self.conv)
        c_in = x.shape[-1]

        def normed(h):
            n = _norm(self.norm)
            return h if n is None else n(h)

        s = (self.stride, self.stride)
        y = nn.Conv(self.channels, (3, 3), strides=s, padding=((1, 1), (1, 1)), use_bias=bias,
                    conv_general_dilated=cf, **layer_init(self.param_init, 9 * c_in))(x)
        _check_norm_size(self.norm, y, f"a ResNet block of {self.channels} channels")
        y = act(normed(y))
        y = nn.Conv(self.channels, (3, 3), padding=((1, 1), (1, 1)), use_bias=bias,
                    conv_general_dilated=cf,
                    **layer_init(self.param_init, 9 * self.channels))(y)
        y = normed(y)
        if self.stride != 1 or c_in != self.channels:
            x = nn.Conv(self.channels, (1, 1), strides=s, padding="VALID", use_bias=bias,
                        conv_general_dilated=cf, **layer_init(self.param_init, c_in))(x)
            x = normed(x)
        return act(y + x)


class ResNet(nn.Module):
    """A ResNet for small images (CIFAR-style: 3x3 stem, no max-pool), instance norm by default.

    ``stages=(2, 2, 2, 2)``, ``width=64`` is the ResNet-18 of DC's evaluation code
    (VICO-UoE/DatasetCondensation ``networks.py``: ``ResNet18`` = ``ResNet(BasicBlock,
    [2, 2, 2, 2])``, whose default norm is ``'instancenorm'``, i.e. ``GroupNorm(C, C)``; their
    ``ResNet18BN`` is the BatchNorm variant). Same layout: a 3x3 stride-1 stem conv of ``width``
    channels + norm + activation; stage ``i`` has ``stages[i]`` basic blocks of
    ``width * 2**i`` channels, the first with stride 2 for ``i > 0``; bias-free convs; then an
    average pool and a linear classifier. Differences: the final pool here is global (theirs is
    ``avg_pool2d(out, 4)``, which equals the global mean on 28x28 and 32x32 inputs but fails below
    that), so 8x8 inputs work with ``norm="layer"`` or ``"none"``; with instance norm the
    last stage's 1x1 maps on 8x8 inputs are refused (a ValueError at ``init``: instance norm of a
    single position outputs its bias whatever the input, as their ``GroupNorm(C, C)`` would;
    the network would stay at chance). There is no BatchNorm variant (models here are stateless).
    ``stages=(1, 1, 1, 1)`` is the usual ResNet-10.

    Attributes:
        stages: residual blocks per stage (each >= 1).
        width: channels of the stem and the first stage (doubling every stage).
        norm: ``"instance"``, ``"layer"`` or ``"none"``.
        activation: activation name or callable.
        num_outputs: number of classes.
        conv: convolution implementation (as :class:`ConvNet`).
        param_init: ``"torch"`` (as the official torch ResNet-18) or ``"flax"``
            (:func:`layer_init`).

    ``__call__(x)``: x (n, h, w, c) NHWC -> (n, num_outputs). ``features(x)``: the stem output
    (n, h, w, width), each stage's output (n, h_i, w_i, width * 2**i) with
    ``h_i = ceil(h / 2**i)``, then the pooled embedding (n, width * 2**(len(stages) - 1)).
    """

    stages: Sequence[int] = (2, 2, 2, 2)
    width: int = 64
    norm: str = "instance"
    activation: Any = "relu"
    num_outputs: int = 10
    conv: str = "auto"
    param_init: str = "torch"

    @nn.compact
    def __call__(self, x, return_features: bool = False):
        if x.ndim != 4:
            raise ValueError(f"ResNet expects NHWC images (n, h, w, c); got shape {x.shape}.")
        act = activation(self.activation)
        x = nn.Conv(self.width, (3, 3), padding=((1, 1), (1, 1)),
                    use_bias=self.norm == "none", conv_general_dilated=conv_fn(self.conv),
                    **layer_init(self.param_init, 9 * x.shape[-1]))(x)
        norm = _norm(self.norm)
        x = act(x if norm is None else norm(x))
        feats = [x]
        for i, blocks in enumerate(self.stages):
            for b in range(blocks):
                stride = 2 if (i > 0 and b == 0) else 1
                x = ResBlock(self.width * 2 ** i, stride, self.norm, self.activation,
                             conv=self.conv, param_init=self.param_init)(x)
            feats.append(x)
        emb = jnp.mean(x, axis=(1, 2))
        if return_features:
            return tuple(feats) + (emb,)
        return nn.Dense(self.num_outputs, **layer_init(self.param_init, emb.shape[-1]))(emb)

    def features(self, x):
        """Stem and per-stage activations (n, h_i, w_i, c_i), then the (n, d) embedding."""
        return self(x, return_features=True)


class Model(NamedTuple):
    """Pure access to a network.

    Attributes:
        init: ``(key, x) -> params`` for an example batch ``x`` (n, *feature_shape).
        apply: ``(params, x) -> (n, num_outputs)`` outputs (logits).
        name: a description, e.g. ``"mlp(hidden=(128,))"``.
        features: ``(params, x) -> tuple`` of per-block activations (see each module), the last
            entry (n, d) being the input of the linear classifier; None for a module that has no
            ``features`` method.

    ``embed(params, x) -> (n, d)`` is ``features(params, x)[-1]`` (a method, so it can never
    disagree with ``features``).
    """

    init: Callable[[jax.Array, jax.Array], Any]
    apply: Callable[[Any, jax.Array], jax.Array]
    name: str
    features: Callable[[Any, jax.Array], tuple] | None = None

    def embed(self, params: Any, x: jax.Array) -> jax.Array:
        """(n, d) embedding of ``x`` (n, *feature_shape): the classifier's input.

        Example:
            >>> import jax, jax.numpy as jnp
            >>> m = make_model("convnet", 10, width=8, depth=2)
            >>> p = m.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
            >>> m.embed(p, jnp.zeros((3, 8, 8, 1))).shape
            (3, 72)
        """
        if self.features is None:
            raise ValueError(f"model {self.name!r} has no features function; build it from a "
                             "module with a `features` method (see jdd.models).")
        return self.features(params, x)[-1]


def from_module(module: nn.Module, name: str | None = None) -> Model:
    """Wrap any stateless flax linen module into a :class:`Model` (``features`` is filled in
    when the module has a ``features`` method)."""
    def features(params, x):
        return module.apply({"params": params}, x, method="features")

    feats = features if callable(getattr(module, "features", None)) else None
    return Model(init=lambda key, x: module.init(key, x)["params"],
                 apply=lambda params, x: module.apply({"params": params}, x),
                 name=name or type(module).__name__.lower(), features=feats)


def _positive_int(what: str, v) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{what} must be an integer >= 1; got {v!r}.")


def check_module(module: nn.Module) -> None:
    """Raise ValueError (listing the valid choices) if ``module``'s settings are invalid.

    Checks names (norm, pooling, activation) and sizes (width, depth, hidden widths, stages);
    called by :func:`make_model` so errors surface before any tracing.
    """
    if hasattr(module, "activation"):
        activation(module.activation)
    if hasattr(module, "norm") and module.norm not in NORMS:
        raise ValueError(f"unknown norm {module.norm!r}; valid: {', '.join(NORMS)}.")
    if hasattr(module, "conv") and module.conv not in CONV_IMPLS:
        raise ValueError(f"unknown conv {module.conv!r}; valid: {', '.join(CONV_IMPLS)}.")
    if hasattr(module, "param_init") and module.param_init not in PARAM_INITS:
        raise ValueError(f"unknown param_init {module.param_init!r}; valid: "
                         f"{', '.join(PARAM_INITS)}.")
    if hasattr(module, "pooling") and module.pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {module.pooling!r}; valid: {', '.join(POOLINGS)}.")
    if hasattr(module, "gray_padding") and (isinstance(module.gray_padding, bool) or not isinstance(
            module.gray_padding, int) or module.gray_padding < 0):
        raise ValueError(f"gray_padding must be an integer >= 0; got {module.gray_padding!r}.")
    for attr in ("width", "depth", "num_outputs"):
        if hasattr(module, attr):
            _positive_int(attr, getattr(module, attr))
    if isinstance(module, MLP):
        for w in module.hidden:
            _positive_int("every hidden width", w)
    if isinstance(module, ResNet):
        if len(module.stages) < 1:
            raise ValueError("stages must list at least one stage, e.g. (2, 2, 2, 2).")
        for s in module.stages:
            _positive_int("every stage's block count", s)


_MODULES = {"mlp": MLP, "convnet": ConvNet, "resnet": ResNet}


def check_input_shape(model: Model, feature_shape: Sequence[int], who: str | None = None,
                      dataset: str = "") -> None:
    """Raise the model's ValueError for inputs of ``feature_shape`` it cannot take (e.g. instance
    norm of 1x1 maps), by tracing ``model.init`` on one abstract example: nothing is computed or
    compiled.

    Args:
        model: a :class:`Model`.
        feature_shape: one example's shape, e.g. ``(8, 8, 1)``.
        who, dataset: for the message, e.g. ``"--model resnet"``, ``"digits"``: the error then
            reads ``"--model resnet cannot take digits inputs of shape (8, 8, 1): ..."``.

    Raises:
        ValueError: the model's message (prefixed as above when ``who`` is given).
    """
    shape = tuple(int(d) for d in feature_shape)
    try:
        jax.eval_shape(model.init, jax.random.key(0),
                       jax.ShapeDtypeStruct((1, *shape), jnp.float32))
    except ValueError as e:
        if who is None:
            raise
        where = f"{dataset} inputs" if dataset else "inputs"
        raise ValueError(f"{who} cannot take {where} of shape {shape}: {e}") from None


def make_model(name: str, num_outputs: int, **kwargs) -> Model:
    """Build one of the literature's models by name.

    Args:
        name: ``"mlp"``, ``"convnet"``, ``"two_layer"`` (an MLP with one hidden layer of
            ``width`` units) or ``"resnet"`` (:class:`ResNet`; default ResNet-18, width 64,
            instance norm).
        num_outputs: number of classes.
        **kwargs: module attributes (``hidden=(128,)``, ``width=128``, ``depth=3``, ``norm=...``,
            ``pooling=...``, ``activation=...``, ``stages=(2, 2, 2, 2)``).

    Returns:
        A :class:`Model` with ``init``, ``apply`` and ``features``.

    Raises:
        ValueError: unknown model, keyword, norm, pooling or activation, or a size below 1
            (before any computation).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> m = make_model("convnet", 10, width=16, depth=2)
        >>> p = m.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
        >>> m.apply(p, jnp.zeros((5, 8, 8, 1))).shape
        (5, 10)
        >>> [f.shape for f in m.features(p, jnp.zeros((5, 8, 8, 1)))]
        [(5, 6, 6, 16), (5, 3, 3, 16), (5, 144)]
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}.")
    kw = dict(kwargs)
    if name == "two_layer":  # the theory papers' network: an MLP with one hidden layer
        width = kw.pop("width", 128)
        _positive_int("width", width)
        kw["hidden"] = (width,)
        cls = MLP
    else:
        cls = _MODULES[name]
    valid = [f.name for f in dataclasses.fields(cls)
             if f.name not in ("parent", "name", "num_outputs")]
    if name == "two_layer":
        valid = ["width"] + [v for v in valid if v != "hidden"]
    bad = sorted(set(kwargs) - set(valid))
    if bad:
        raise ValueError(f"unknown keyword(s) {', '.join(bad)} for model {name!r}; "
                         f"valid: {', '.join(valid)}.")
    if "hidden" in kw:
        kw["hidden"] = tuple(kw["hidden"])
    if "stages" in kw:
        kw["stages"] = tuple(kw["stages"])
    _positive_int("num_outputs", num_outputs)
    module = cls(num_outputs=num_outputs, **kw)
    check_module(module)
    desc = name + "(" + ", ".join(f"{k}={v}" for k, v in sorted(kwargs.items())) + ")"
    return from_module(module, desc)
