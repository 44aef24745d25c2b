"""jdd: dataset distillation in JAX.

Pure-function distillers (factories returning NamedTuples of pure functions), jit-compiled and
vmapped across seeds. The public API is re-exported here; submodules:

* :mod:`jdd.data` — Dataset pytree, loaders (digits, MNIST/Fashion-MNIST, CIFAR, npz), preprocessing;
* :mod:`jdd.models` — MLP, DD ConvNet, two-layer network with pure init/apply;
* :mod:`jdd.train` — differentiable inner training (lax.scan, optax, memory strategies);
* :mod:`jdd.kernels` — NNGP/NTK closed forms, empirical NTK, random features, KRR;
* :mod:`jdd.distill` — Distiller, the run loop :func:`jdd.distill.distill`, methods;
* :mod:`jdd.evaluate` — the evaluation protocol and baselines;
* :mod:`jdd.tasks` — synthetic tasks of the seed papers;
* :mod:`jdd.artifacts` — atomic saving/loading of distilled sets.

Example:
    >>> import jax, jdd
    >>> train, test = jdd.load_digits()
    >>> d = jdd.unrolled(jdd.make_model("mlp", 10, hidden=(32,)), ipc=1,
    ...                  inner=jdd.TrainConfig(steps=5))
    >>> run = jdd.distill.distill(d, jax.random.split(jax.random.key(0), 2), train, 10, progress=False)
    >>> run.synthetic.x.shape
    (2, 10, 8, 8, 1)
"""

__version__ = "0.1.0"

import importlib as _importlib

# Imported on first use (PEP 562), so that `import jdd` and the `jdd` command start in
# milliseconds: the command installs its signal handling before JAX is imported, and
# `jdd --help` needs no JAX at all. `from jdd import X` and `jdd.X` work as with eager imports.
_SUBMODULES = ("artifacts", "data", "distill", "evaluate", "kernels", "models", "train")
_EXPORTS = {
    "jdd.artifacts": ("load_distilled", "save_distilled"),
    "jdd.data": ("DataError", "Dataset", "fit_preprocessor", "load_dataset", "load_digits",
                 "preprocess", "sample_per_class"),
    "jdd.distill": ("Distiller", "Synthetic", "bilevel", "closed_form_distill", "kip",
                    "unrolled"),
    "jdd.evaluate": ("EvalResult", "Learner", "evaluate_full_data", "evaluate_random_subset",
                     "evaluate_set", "kernel_learner", "network_learner"),
    "jdd.models": ("make_model",),
    "jdd.train": ("TrainConfig", "fit"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str):
    if name in _SUBMODULES:
        return _importlib.import_module(f"jdd.{name}")
    if name in _WHERE:
        value = getattr(_importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jdd' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


__all__ = ["DataError", "Dataset", "Distiller", "EvalResult", "Learner", "Synthetic", "TrainConfig", "artifacts",
           "bilevel", "closed_form_distill", "data", "distill", "evaluate",
           "evaluate_full_data", "evaluate_random_subset", "evaluate_set", "fit",
           "fit_preprocessor", "kernel_learner", "kernels", "kip", "load_dataset",
           "load_digits", "load_distilled", "make_model", "models", "network_learner",
           "preprocess", "sample_per_class", "save_distilled", "train", "unrolled"]
