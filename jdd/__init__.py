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

from jdd import artifacts, data, distill, evaluate, kernels, models, train  # noqa: E402
from jdd.artifacts import load_distilled, save_distilled  # noqa: E402
from jdd.data import (DataError, Dataset, fit_preprocessor, load_dataset, load_digits,  # noqa: E402
                      preprocess, sample_per_class)
from jdd.distill import (Distiller, Synthetic, bilevel, closed_form_distill, kip,  # noqa: E402
                         unrolled)
from jdd.evaluate import (EvalResult, Learner, evaluate_full_data,  # noqa: E402
                          evaluate_random_subset, evaluate_set, kernel_learner, network_learner)
from jdd.models import make_model  # noqa: E402
from jdd.train import TrainConfig, fit  # noqa: E402

__all__ = ["DataError", "Dataset", "Distiller", "EvalResult", "Learner", "Synthetic", "TrainConfig", "artifacts",
           "bilevel", "closed_form_distill", "data", "distill", "evaluate",
           "evaluate_full_data", "evaluate_random_subset", "evaluate_set", "fit",
           "fit_preprocessor", "kernel_learner", "kernels", "kip", "load_dataset",
           "load_digits", "load_distilled", "make_model", "models", "network_learner",
           "preprocess", "sample_per_class", "save_distilled", "train", "unrolled"]
