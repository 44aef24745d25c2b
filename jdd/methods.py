"""The method registry: one name -> (typed config with defaults and ranges, builder).

Each method file (``jdd/distill/NAME.py``) defines, beside its objective,

* a config dataclass whose fields are declared with :func:`jdd.config.opt` (types, defaults =
  the validated recipe, ranges), usually mixing in :class:`NetworkOptions` /
  :class:`EvalOptions` below;
* ``build(cfg, spec) -> Plan``: the :class:`jdd.distill.Distiller` and the evaluation
  :class:`jdd.evaluate.Learner` for a run described by a :class:`RunSpec`;
* ``METHOD = Method(name, config, build, summary, default_steps)``.

and this module lists it with ONE line in :data:`ENTRIES`. The CLI (``jdd distill --method NAME``
and its flags, ``jdd methods``), run metadata and the tests all discover methods from here, so
cli.py never grows a branch per method. Entries are imported lazily.

Example:
    >>> from jdd.methods import get, names
    >>> "dm" in names() and get("dm").config.__name__
    'DMConfig'
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, NamedTuple

from jdd.config import ConfigError, opt

#: name -> "module:attribute" of its :class:`Method`. Adding a method = one line here.
ENTRIES: dict[str, str] = {
    "unrolled": "jdd.distill.unrolled:METHOD",
    "kip": "jdd.distill.kip:METHOD",
    "krr-closed-form": "jdd.distill.krr_closed_form:METHOD",
    "dc": "jdd.distill.dc:METHOD",
    "dsa": "jdd.distill.dc:DSA_METHOD",
    "dm": "jdd.distill.dm:METHOD",
    "mtt": "jdd.distill.mtt:METHOD",
    "sre2l": "jdd.distill.sre2l:METHOD",
}


class RunSpec(NamedTuple):
    """What a builder knows about the run before anything is compiled.

    Attributes:
        ipc: synthetic examples per class (the storage budget).
        steps: outer steps of the run.
        seeds: number of vmapped seeds.
        dataset: dataset name (e.g. ``"digits"``, ``"fashion_mnist"``).
        num_classes: number of classes.
        feature_shape: shape of one input, e.g. (8, 8, 1).
        n_train: training-set size.
        seed: the run's base seed (for builders that draw random features).
    """

    ipc: int
    steps: int
    seeds: int
    dataset: str
    num_classes: int
    feature_shape: tuple
    n_train: int
    seed: int = 0


class Plan(NamedTuple):
    """What ``build`` returns.

    Attributes:
        distiller: the :class:`jdd.distill.Distiller` to run (None when the method overrides
            :attr:`Method.run`, as the closed form does).
        learner: the :class:`jdd.evaluate.Learner` that scores the distilled set AND both
            baselines.
        info: JSON-ready description of the settings actually used (resolved defaults).
    """

    distiller: Any
    learner: Any
    info: dict


class Method(NamedTuple):
    """A registered method.

    Attributes:
        name: the CLI name.
        config: the config dataclass (fields declared with :func:`jdd.config.opt`).
        build: ``(cfg, spec) -> Plan``.
        summary: one line for ``jdd methods`` (with the paper).
        default_steps: ``(cfg, ipc) -> int``: outer steps when ``--steps`` is not given (the
            validated recipe).
        run: optional ``(cfg, spec, train, keys, progress) -> MethodRun`` for methods that are not
            an iterative Distiller (the closed form).
        needs_images: the method's default learner or networks need (h, w, c) images.
    """

    name: str
    config: type
    build: Callable
    summary: str
    default_steps: Callable[[Any, int], int] = lambda cfg, ipc: 1000
    run: Callable | None = None
    needs_images: bool = False


def names() -> tuple[str, ...]:
    """Registered method names."""
    return tuple(ENTRIES)


def get(name: str) -> Method:
    """The :class:`Method` registered as ``name``.

    Raises:
        ConfigError: unknown name (lists the valid ones).
    """
    if name not in ENTRIES:
        raise ConfigError(f"unknown method {name!r}; valid methods: {', '.join(ENTRIES)}")
    module, attr = ENTRIES[name].split(":")
    method = getattr(importlib.import_module(module), attr)
    if method.name != name:
        raise RuntimeError(f"registry entry {name!r} points at method {method.name!r}")
    return method


# ----------------------------------------------------------------------------- shared options

@dataclasses.dataclass(frozen=True)
class NetworkOptions:
    """The network a method distils with (gradient/distribution/trajectory matching, unrolled)."""

    model: str = opt("convnet", "network the method runs",
                     choices=("convnet", "mlp", "resnet", "two_layer"))
    width: int = opt(128, "ConvNet/ResNet channels, two-layer width", ge=1, le=4096)
    depth: int = opt(3, "ConvNet depth (conv blocks)", ge=1, le=16)
    norm: str = opt("instance", "ConvNet/ResNet normalisation", choices=("instance", "layer", "none"))
    hidden: tuple[int, ...] = opt((128,), "MLP hidden widths", ge=1, le=65536)


PARAMS = ("pixels", "low-rank")


@dataclasses.dataclass(frozen=True)
class ParamOptions:
    """How the synthetic set is stored (the parameterization of the composable core)."""

    param: str = opt("pixels", "how the synthetic set is stored: pixels, or low-rank (every "
                     "image channel as rank-r factors A (h x r) B (r x w): more images in the "
                     "same --ipc storage budget)", choices=PARAMS)
    rank: int = opt(2, "rank r of every image channel with --param low-rank", ge=1, le=4096)


def make_param(cfg: ParamOptions, spec: "RunSpec", **kwargs):
    """The :class:`jdd.distill.Parameterization` a config's ``param`` / ``rank`` name, with the
    method's own init and label options in ``kwargs`` (those of :func:`jdd.distill.pixels`).

    Raises:
        ConfigError: low-rank on data that are not images, or a rank that does not fit the
            ``--ipc`` budget or the image (names the largest rank that does), before anything
            is compiled.
    """
    from jdd.distill import pixels
    if cfg.param == "pixels":
        return pixels(**kwargs)
    from jdd.distill.low_rank import images_per_class, low_rank
    if len(spec.feature_shape) != 3:
        raise ConfigError(f"--param low-rank needs image data (h, w, c); {spec.dataset} has "
                          f"features of shape {spec.feature_shape}")
    h, w, _ = spec.feature_shape
    if cfg.rank > min(h, w):
        raise ConfigError(f"--rank {cfg.rank}: expected at most min(h, w) = {min(h, w)} for "
                          f"{h}x{w} images")
    try:
        images_per_class(spec.ipc, h, w, cfg.rank)
    except ValueError as e:
        raise ConfigError(f"--rank: {e}") from None
    return low_rank(rank=cfg.rank, **kwargs)


def param_info(cfg: ParamOptions, spec: "RunSpec") -> dict:
    """What a run records of its parameterization: the images it holds per class."""
    if cfg.param == "pixels":
        return {"images_per_class": spec.ipc}
    from jdd.distill.low_rank import images_per_class
    h, w, _ = spec.feature_shape
    return {"images_per_class": images_per_class(spec.ipc, h, w, cfg.rank)}


@dataclasses.dataclass(frozen=True)
class ExtraOptions:
    """Extra loss terms a network-based method can add (the composable core's fourth part)."""

    mim4dd_weight: float = opt(0.0, "weight of the MIM4DD contrastive (InfoNCE) term on the "
                               "network's features (0: off; Shang et al. 2023)", ge=0, le=1e6)
    mim4dd_temperature: float = opt(0.1, "MIM4DD InfoNCE temperature", gt=0, le=1e3)
    mim4dd_layers: tuple[int, ...] | None = opt(None, "MIM4DD feature layers: indices into the "
                                                "network's per-block features, negative from "
                                                "the embedding (none: all)", ge=-64, le=64)
    mim4dd_real: int = opt(256, "real examples in the MIM4DD term per step", ge=1, le=10**6)


def make_extra(cfg: ExtraOptions, model, feature_shape: tuple) -> tuple:
    """The :class:`jdd.distill.ExtraTerm` values a config asks for (empty when none), after
    checking the MIM4DD layers against ``model``'s features on ``feature_shape`` inputs (shapes
    only: nothing is compiled).

    Raises:
        ConfigError: a layer index the network does not have.
    """
    if not cfg.mim4dd_weight:
        return ()
    import jax
    import jax.numpy as jnp
    from jdd.distill.mim4dd import mim4dd
    if cfg.mim4dd_layers is not None:
        x = jax.ShapeDtypeStruct((2,) + tuple(feature_shape), jnp.float32)
        params = jax.eval_shape(model.init, jax.random.key(0), x)
        n = len(jax.eval_shape(model.features, params, x))
        bad = [i for i in cfg.mim4dd_layers if not -n <= i < n]
        if bad:
            raise ConfigError(f"--mim4dd-layers {' '.join(map(str, bad))}: the network "
                              f"{model.name} exposes {n} feature layers; expected indices in "
                              f"{-n} .. {n - 1}")
    return (mim4dd(weight=cfg.mim4dd_weight, temperature=cfg.mim4dd_temperature,
                   layers=cfg.mim4dd_layers, real_batch=cfg.mim4dd_real),)


def network_kwargs(cfg, prefix: str = "") -> tuple[str, dict]:
    """``(model name, make_model keyword arguments)`` of a config's network fields ``model``,
    ``width``, ``depth``, ``norm``, ``hidden`` (``prefix`` selects e.g. the ``eval_`` fields);
    only the fields the named model takes."""
    g = lambda name: getattr(cfg, prefix + name)  # noqa: E731
    name = g("model")
    if name == "mlp":
        kw = {"hidden": tuple(g("hidden"))}
    elif name == "convnet":
        kw = {"width": g("width"), "depth": g("depth"), "norm": g("norm")}
    elif name == "resnet":
        kw = {"width": g("width"), "norm": g("norm")}
    else:
        kw = {"width": g("width")}
    return name, kw


def make_network(cfg: NetworkOptions, num_classes: int, prefix: str = ""):
    """The :class:`jdd.models.Model` named by a config's network fields (``prefix`` selects e.g.
    the ``eval_`` fields)."""
    from jdd.models import make_model
    name, kw = network_kwargs(cfg, prefix)
    return make_model(name, num_classes, **kw)


def check_networks(cfg, spec: RunSpec) -> None:
    """Refuse, before any data reaches a network or anything compiles, a configured network (the
    method's ``model`` fields, the evaluation's ``eval_`` fields) that cannot take the dataset's
    inputs, e.g. a ResNet-18 with instance norm on 8x8 digits (1x1 maps in its last stage).

    Raises:
        ConfigError: which option, the input shape and why.
    """
    from jdd.models import check_input_shape
    for prefix in ("", "eval_"):
        if not hasattr(cfg, prefix + "model"):
            continue
        flag = "--" + (prefix + "model").replace("_", "-")
        try:
            check_input_shape(make_network(cfg, spec.num_classes, prefix), spec.feature_shape,
                              f"{flag} {getattr(cfg, prefix + 'model')}", spec.dataset)
        except ValueError as e:
            raise ConfigError(str(e)) from None


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """The evaluation protocol of image methods (DC/DSA/DM/MTT papers): ConvNet-D3, SGD with
    momentum 0.9, weight decay 5e-4, lr x0.1 at half, a fixed number of epochs, batch 256, DSA
    augmentation during evaluation training for the methods whose papers use it."""

    eval_model: str = opt("convnet", "evaluation network",
                          choices=("convnet", "mlp", "resnet", "two_layer"))
    eval_width: int = opt(128, "evaluation ConvNet/ResNet channels", ge=1, le=4096)
    eval_depth: int = opt(3, "evaluation ConvNet depth", ge=1, le=16)
    eval_norm: str = opt("instance", "evaluation normalisation", choices=("instance", "layer", "none"))
    eval_hidden: tuple[int, ...] = opt((128,), "evaluation MLP hidden widths", ge=1, le=65536)
    eval_epochs: int = opt(300, "evaluation training epochs (lr x0.1 at half)", ge=1, le=100000)
    eval_lr: float = opt(0.01, "evaluation SGD learning rate", gt=0, le=10)
    eval_batch_size: int = opt(256, "evaluation minibatch size", ge=1)
    eval_augment: str = opt("auto", "augmentation while training evaluation models: auto (the "
                            "method paper's choice), dsa or none", choices=("auto", "dsa", "none"))
    full_data_epochs: int = opt(30, "epochs of the full-data baseline", ge=1, le=100000)


def protocol_learner(cfg: EvalOptions, spec: RunSpec, *, paper_augment: bool, relabel=None):
    """The evaluation learner of an :class:`EvalOptions` config (used for the distilled set and
    both baselines). ``paper_augment``: whether the method's paper trains evaluation models with
    DSA augmentation (the meaning of ``eval_augment="auto"``); ``relabel``: knowledge
    distillation (see :func:`jdd.evaluate.protocol_learner`)."""
    from jdd.augment import default_strategy, dsa
    from jdd.evaluate import protocol_learner as make
    use = paper_augment if cfg.eval_augment == "auto" else cfg.eval_augment == "dsa"
    augment = None
    if use:
        if len(spec.feature_shape) != 3:
            raise ConfigError("--eval-augment dsa needs image data (h, w, c)")
        augment = dsa(default_strategy(spec.dataset), siamese=False)
    model = make_network(cfg, spec.num_classes, prefix="eval_")
    return make(model, epochs=cfg.eval_epochs, lr=cfg.eval_lr, batch_size=cfg.eval_batch_size,
                augment=augment, full_data_epochs=cfg.full_data_epochs, relabel=relabel)


def check_dsa_strategy(value: str, *, allow_none: bool = True) -> None:
    """The check of a method's ``dsa_strategy`` option: ``"auto"`` (the dataset's default),
    ``"none"`` (when ``allow_none``) or DSA families joined by ``_``.

    Raises:
        ConfigError: naming ``--dsa-strategy`` and what was expected.
    """
    if value == "auto" or (allow_none and value == "none"):
        return
    from jdd.augment import parse_strategy
    try:
        parse_strategy(value)
    except ValueError as e:
        raise ConfigError(f"--dsa-strategy: {e}") from None


def run_augment(value: str, spec: RunSpec, *, siamese: bool):
    """The DSA augmentation a ``dsa_strategy`` option means for a run (``"auto"``: the dataset's
    default strategy), one random family per call (``mode="single"``, the papers' ``'S'``).

    Returns:
        ``(augment or None, resolved strategy name or "none")``.

    Raises:
        ConfigError: DSA asked for on flat features, or no default strategy for the dataset.
    """
    from jdd.augment import default_strategy, dsa
    strategy = value
    if value == "auto":
        try:
            strategy = default_strategy(spec.dataset)
        except ValueError as e:
            raise ConfigError(f"--dsa-strategy auto: {e} (or --dsa-strategy none)") from None
    if strategy == "none":
        return None, "none"
    if len(spec.feature_shape) != 3:
        raise ConfigError("--dsa-strategy: DSA needs image data (h, w, c); use "
                          "--dsa-strategy none for flat features.")
    return dsa(strategy, mode="single", siamese=siamese), strategy


class MethodRun(NamedTuple):
    """What running a method gives the CLI (one entry per seed along the leading axis).

    Attributes:
        x: (seeds, m, ...) synthetic inputs.
        y: (seeds, m, k) targets.
        lr: (seeds,) learned learning rate or NaN.
        seconds: distillation wall time (compilation included).
        learner: the :class:`jdd.evaluate.Learner` for the result AND the baselines.
        history: metric -> (seeds, t) arrays (empty for non-iterative methods).
        steps_logged: (t,) steps at which history was logged.
        info: settings actually used, for metrics.json.
        extra: method-specific results for metrics.json.
        stored: name -> (seeds, ...) arrays that store the inputs when they are not ``x``
            (low-rank factors), or None.
        alt_learners: name -> another :class:`jdd.evaluate.Learner` that also scores the set
            and both baselines (e.g. SRe2L's hard-label evaluation beside its KD one), or None.
    """

    x: Any
    y: Any
    lr: Any
    seconds: float
    learner: Any
    history: dict
    steps_logged: Any
    info: dict
    extra: dict
    stored: dict | None = None
    alt_learners: dict | None = None


_DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "cifar100_coarse", "npz")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The options every ``jdd distill`` run shares (the method's own config holds the rest)."""

    dataset: str = opt("digits", "dataset", choices=_DATASETS)
    data_dir: str | None = opt(None, "folder with the dataset files (the .npz path for npz); "
                               "default $JDD_DATA_DIR, then the system folder "
                               "(fashion_mnist); not needed for digits")
    ipc: int = opt(10, "synthetic examples per class (storage budget)", ge=1, le=100000)
    preprocess: str = opt("standardize", "preprocessing fitted on train, applied to train and "
                          "test, saved with the set", choices=("none", "standardize", "zca"))
    zca_reg: float = opt(0.1, "ZCA regulariser (x mean eigenvalue)", ge=0, le=1e6)
    seeds: int = opt(1, "independent distillations (one vmapped computation)", ge=1, le=4096)
    seed: int = opt(0, "base random seed", ge=0, le=2**31 - 1)
    steps: int | None = opt(None, "outer steps (none: the method's validated recipe)", ge=1,
                            le=10**8)
    log_every: int = opt(50, "steps per jitted chunk / log entry", ge=1)
    out: str | None = opt(None, "output folder (required); written as a whole when the run ends")
    overwrite: bool = opt(False, "replace the run already in --out (refused without this flag)")
    quiet: bool = opt(False, "no progress bar or table")
    n_models: int = opt(10, "fresh models per evaluated set", ge=1, le=10000)
    full_data_models: int | None = opt(None, "models of the full-data baseline (none: "
                                       "--n-models; fewer saves time on a large dataset)",
                                       ge=1, le=10000)
    eval: bool = opt(True, "evaluate the set and both baselines (--no-eval: skip)")
    mesh: str = opt("auto", "device mesh (jdd.mesh): auto (every device: seeds split first, "
                    "then the training examples), seeds=S,data=D, or SxD")
    checkpoint_every: int | None = opt(None, "write a checkpoint of the whole state every N "
                                       "steps into OUT.ckpt (and on SIGTERM/SIGINT); continue a "
                                       "killed run with --resume OUT (none: no checkpoints)",
                                       ge=1, le=10**8)

    def check(self):
        if not self.out:
            raise ConfigError("--out: expected an output folder; got nothing")
        from jdd.mesh import MeshError, parse
        try:
            parse(self.mesh)
        except MeshError as e:
            raise ConfigError(str(e)) from None
