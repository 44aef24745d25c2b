"""Closed-form dataset distillation for kernel ridge regression (Chen, Huang & Weng, NeurIPS 2024).

Setting. A model linear in a fixed feature map ``phi: R^d -> R^p`` (see :mod:`jdd.kernels.features`),
``f(x) = W phi(x)`` with ``W: (k, p)``, trained by ridge regression on one-hot labels. jdd stores
data row-wise, so with ``F = phi(X): (n, p)`` and ``Y: (n, k)`` the original model is

    W = Y^T F (F^T F + lam I)^-1        (lam > 0),    W = (F^+ Y)^T   (lam = 0, pseudo-inverse),

the paper's ``W = Y Phi_lam^+`` with ``Phi = F^T``. A distilled set ``(X_S, Y_S)`` of ``m`` points
trained with ridge ``lam_S`` gives ``W_S`` by the same formula; the goal is ``W_S == W`` exactly, so
the distilled model predicts exactly like the original one everywhere.

Construction (paper notation, ``Y_S: (k, m)`` so ``Y_S = y_s.T``). ``W_S = Y_S D`` with
``D = phi_{lam_S}(X_S)^+: (m, p)``; every solution of ``Y_S D = W`` is

    D = Y_S^+ W + (I - Y_S^+ Y_S) Z,     Z: (m, p) free,

which exists iff ``rank(Y_S) = k`` (so ``m >= k``: one point per class is necessary and
sufficient). The distilled features ``phi_s: (m, p)`` follow from the SVD ``D = V diag(s') U^T``:
``phi_s = V diag(s) U^T`` with ``s = s' / (s'^2 + lam_S)`` solved for ``s``:

    s = (1 +- sqrt(1 - 4 lam_S s'^2)) / (2 s')   (0 where s' = 0),

real only when ``lam_S <= 1 / (4 s'_1^2)``. At ``lam_S = 0`` the "+" branch is ``s = 1/s'``, i.e.
``phi_s = (D^+)^T``. The "-" branch (``s ~ lam_S s'``, small features) is offered too: it matters
for bounded feature maps such as random Fourier features, whose range is ``[-sqrt(2/p), sqrt(2/p)]``.
Finally ``x_s = invert(phi_s)`` maps the features back to inputs.

Choice of ``Z`` (``init``):

* ``"noise"``: balanced one-hot ``Y_S`` and Gaussian ``Z`` with std ``noise_scale * std(Y_S^+ W)``
  (the paper's code uses 0.1). The distilled inputs look like noise yet train the same model.
* ``"real"``: ``ipc`` real points ``X0`` per class, ``P0 = phi(X0)``; ``Y_S`` is the original
  model's prediction on them (soft labels; one-hot if that has rank < k) and
  ``Z = (I - Y_S^+ Y_S)(P0^+ - Y_S^+ W)``, so ``D`` is the solution nearest to ``P0^+`` and the
  distilled points stay close to the real ones.
* differential privacy (``dp=DPConfig(...)``, noise init): ``Z`` Gaussian with the std of
  :func:`dp_noise_std`; see there for the calibration and what it does and does not protect.

Everything is written for one key and in the dtype of the data (float64 inside
``jax.enable_x64`` when the data are float64); :func:`closed_form_distill` can be ``jax.jit``-ed and
``jax.vmap``-ed over keys (its input checks run only on concrete values).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jdd.data.dataset import Dataset, check_ipc, stratified_mask
from jdd.config import ConfigError, opt, to_dict, validate
from jdd.distill.core import Synthetic
from jdd.methods import Method, MethodRun, RunSpec

PRNGKey = jax.Array

#: The paper's ridge grid: 10^-6, 10^-5.5, ..., 10^5.5 (24 values).
DEFAULT_LAMBDA_GRID = tuple(float(10.0 ** e) for e in np.arange(-6.0, 5.5 + 1e-9, 0.5))


# ----------------------------------------------------------------------------------------------
# ridge regression in feature space

def _concrete(*xs) -> bool:
    """True when no argument is a tracer (so host-side checks may look at the values)."""
    return not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(xs))


def _filter_factors(s, lam):
    """``s / (s^2 + lam)`` with the pseudo-inverse cutoff for (numerically) zero ``s``."""
    s_max = jnp.max(s, initial=0.0)
    tol = jnp.finfo(s.dtype).eps * max(s.shape[0], 1) * 10 * s_max
    keep = s > tol
    return jnp.where(keep, s / jnp.where(keep, s * s + lam, 1.0), 0.0)


def _gram_factors(e, lam):
    """``1 / (e + lam)`` for Gram eigenvalues ``e = s^2``, 0 below the pseudo-inverse cutoff.

    The cutoff is the Gram matrix's own rounding level, ``eps * e_max`` (i.e. singular values
    below ``sqrt(eps) * s_max``). A cutoff scaled like the SVD's (``eps * dim * 10``) would be
    applied to ``s^2`` here and drop directions the data resolve: on digits' random-network
    features it moved ``W`` by 55 % in float32, against 1.7e-4 with this cutoff."""
    e_max = jnp.max(e, initial=0.0)
    keep = e > jnp.finfo(e.dtype).eps * e_max
    return jnp.where(keep, 1.0 / jnp.where(keep, e + lam, 1.0), 0.0)


#: Valid ``solver`` values of :func:`fit_ridge` / :func:`select_lambda`.
SOLVERS = ("svd", "gram")


def ridge_path(phi, y, solver: str = "svd"):
    """Factor ridge regression once; return ``W(lam)`` for any ridge (a regularisation path).

    ``W(lam) = (A^T * h(lam)) @ B`` with, for ``solver="svd"`` (thin SVD ``F = U S V^T``):
    ``A = U^T Y``, ``h = s / (s^2 + lam)``, ``B = V^T``; for ``solver="gram"`` with ``n >= p``
    (``F^T F = V diag(e) V^T``): ``A = V^T F^T Y``, ``h = 1 / (e + lam)``, ``B = V^T``; and with
    ``n < p`` (``F F^T = U diag(e) U^T``): ``A = U^T Y``, ``h = 1 / (e + lam)``, ``B = U^T F``.

    "svd" never forms normal equations: accurate in float32 and exact to rounding in float64.
    "gram" costs one (min(n, p))^2 eigendecomposition plus matmuls, the fast choice when
    ``n >> p`` (e.g. all of MNIST's 60000 rows with p = 784), but it squares the condition
    number: directions with singular values below about ``sqrt(eps) * s_max`` are lost or noisy.
    In float64 that is ``1.5e-8 * s_max`` and rarely matters. In float32 (``3.5e-4 * s_max``)
    it matters for ill-conditioned features, especially with a small ridge: on digits, float32
    ``W`` differs from the float64 ridge solution by 1.7e-4 (relative) with the random-network
    features but by 0.55 with the raw pixels (rank-deficient: constant border pixels) at
    ``lam = 0``. Use "gram" in float64, or in float32 with well-conditioned features or a ridge
    well above ``eps * s_max^2``; otherwise use "svd".

    Args:
        phi: (n, p) features ``F``.
        y: (n, k) targets.
        solver: ``"svd"`` or ``"gram"``.

    Returns:
        ``w_of(lam) -> (k, p)``, jittable and vmappable in ``lam``.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown ridge solver {solver!r}; valid solvers: {', '.join(SOLVERS)}.")
    phi = jnp.asarray(phi)
    y = jnp.asarray(y, phi.dtype)
    n, p = phi.shape
    if solver == "svd":
        u, s, b = jnp.linalg.svd(phi, full_matrices=False)
        a, spectrum, filt = u.T @ y, s, _filter_factors
    elif n >= p:
        e, v = jnp.linalg.eigh(phi.T @ phi)
        a, spectrum, b, filt = v.T @ (phi.T @ y), e, v.T, _gram_factors
    else:
        e, u = jnp.linalg.eigh(phi @ phi.T)
        a, spectrum, b, filt = u.T @ y, e, u.T @ phi, _gram_factors

    def w_of(lam):
        return (a.T * filt(spectrum, jnp.asarray(lam, phi.dtype))) @ b

    return w_of


def fit_ridge(phi, y, lam, *, solver: str = "svd"):
    """Ridge regression in feature space: ``W = Y^T F (F^T F + lam I)^-1`` (pseudo-inverse at 0).

    Computed from the thin SVD of ``F`` by default (no normal equations, so it is accurate in
    float32 and exact to rounding in float64), branch-free in ``lam``: jittable with a traced
    ``lam``. ``solver="gram"`` uses the eigendecomposition of the smaller Gram matrix instead
    (:func:`ridge_path` says when that is the better choice).

    Args:
        phi: (n, p) features ``F`` of the training points.
        y: (n, k) targets (one-hot labels or soft labels).
        lam: () ridge ``lam >= 0``; ``0`` gives the minimum-norm least-squares solution
            ``(F^+ Y)^T``.
        solver: ``"svd"`` (default) or ``"gram"``.

    Returns:
        W: (k, p), predictions are ``phi(x) @ W.T``.

    Example:
        >>> import jax.numpy as jnp
        >>> f = jnp.eye(3); y = jnp.eye(3)[:, :2]
        >>> fit_ridge(f, y, 0.0).shape
        (2, 3)
    """
    return ridge_path(phi, y, solver)(lam)


def predict(w, phi):
    """(n, k) predictions ``phi @ W.T`` of a model ``W: (k, p)`` on features ``phi: (n, p)``."""
    return phi @ w.T


def accuracy(w, phi, y):
    """() fraction of rows whose argmax prediction equals the integer label ``y: (n,)``."""
    return jnp.mean(jnp.argmax(predict(w, phi), axis=-1) == y)


def select_lambda(key: PRNGKey, features, train: Dataset, grid=DEFAULT_LAMBDA_GRID, *,
                  val_fraction: float = 0.05, solver: str = "svd"):
    """Choose the ridge ``lam`` on a stratified validation split of the TRAINING data.

    Holds out ``val_fraction`` of every class (:func:`jdd.data.stratified_mask`), fits
    :func:`fit_ridge` on the rest for every ``lam`` in ``grid`` (one factorisation shared by the
    whole grid; held-out rows are zeroed rather than removed, so shapes are static) and returns the
    ``lam`` with the best validation accuracy, ties broken by the lower validation squared error.
    The test set is never seen. Jittable: under ``jax.jit`` it returns the chosen value as a
    traced scalar, so ridge selection, the fit of ``W`` and :func:`closed_form_distill` compile
    into one program.

    Args:
        key: PRNG key for the split.
        features: a :class:`jdd.kernels.features.FeatureMap`.
        train: training Dataset.
        grid: candidate ridges (default :data:`DEFAULT_LAMBDA_GRID`, the paper's).
        val_fraction: fraction of each class held out.
        solver: ``"svd"`` or ``"gram"`` (:func:`ridge_path`).

    Returns:
        The chosen ``lam``: a Python float (an element of ``grid``) on concrete inputs, a ()
        array of the data's dtype under a transformation.

    Example:
        >>> import jax
        >>> from jdd.data import load_digits
        >>> from jdd.kernels.features import linear_features
        >>> train, _ = load_digits()
        >>> lam = select_lambda(jax.random.key(0), linear_features(64), train)
        >>> lam in DEFAULT_LAMBDA_GRID
        True
    """
    phi = features.phi(jnp.asarray(train.x))
    held = stratified_mask(key, train.y, train.num_classes, val_fraction)
    y = jax.nn.one_hot(train.y, train.num_classes, dtype=phi.dtype)
    best = _best_ridge(phi, y, train.y, held, jnp.asarray(grid, phi.dtype), solver)
    if _concrete(best):
        return float(np.asarray(grid, np.float64)[int(best)])
    return jnp.asarray(grid, phi.dtype)[best]


def _best_ridge(phi, y, labels, held, lams, solver):
    """() index into ``lams`` of the best ridge on the ``held`` rows (fit on the others)."""
    keep = (~held).astype(phi.dtype)[:, None]
    w_va = held.astype(phi.dtype)
    n_va = jnp.sum(w_va)
    w_of = ridge_path(phi * keep, y * keep, solver)

    def one(lam):
        pred = predict(w_of(lam), phi)
        acc = jnp.sum(w_va * (jnp.argmax(pred, -1) == labels)) / n_va
        mse = jnp.sum(w_va[:, None] * (pred - y) ** 2) / (n_va * y.shape[1])
        return acc, mse

    acc, mse = jax.vmap(one)(lams)
    return jnp.lexsort((mse, -acc))[0]


# ----------------------------------------------------------------------------------------------
# the closed-form construction

def _pinv(a):
    return jnp.linalg.pinv(a)


def solution_matrix(w, y_s, z):
    """``D = Y_S^+ W + (I - Y_S^+ Y_S) Z``: every ``D`` with ``Y_S D = W`` (the paper's form).

    Args:
        w: (k, p) original model.
        y_s: (m, k) distilled labels (row-wise; the paper's ``Y_S`` is ``y_s.T``).
        z: (m, p) free matrix.

    Returns:
        D: (m, p), ``D = phi_{lam_S}(X_S)^+`` for the distilled features.
    """
    ys = y_s.T                                  # (k, m), paper layout
    ysp = _pinv(ys)                             # (m, k)
    return ysp @ w + z - ysp @ (ys @ z)


def lam_s_bound(d) -> jax.Array:
    """() the largest admissible distilled ridge ``1 / (4 s'_1^2)`` for ``D`` (``s'_1`` its top
    singular value); ``inf`` when ``D = 0``."""
    s1 = jnp.linalg.norm(d, ord=2)
    return jnp.where(s1 > 0, 1.0 / (4.0 * s1 * s1), jnp.inf)


def features_from_solution(d, lam_s=0.0, *, branch: str = "+"):
    """Distilled features ``phi_s`` with ``phi_{lam_s}(phi_s)^+ = D`` via the SVD of ``D``.

    ``D = V diag(s') U^T`` gives ``phi_s = V diag(s) U^T`` with
    ``s = (1 + sqrt(q)) / (2 s')`` ("+") or ``s = 2 lam_s s' / (1 + sqrt(q))`` ("-", the same root
    written without cancellation), ``q = 1 - 4 lam_s s'^2``, and ``s = 0`` where ``s' = 0``.
    ``lam_s > 1/(4 s'_1^2)`` makes ``q < 0`` and the result NaN: check with :func:`lam_s_bound`.

    Args:
        d: (m, p) solution matrix (:func:`solution_matrix`).
        lam_s: () distilled ridge ``>= 0``.
        branch: ``"+"`` (default; continuous with ``lam_s = 0``) or ``"-"`` (small features;
            needs ``lam_s > 0``).

    Returns:
        phi_s: (m, p).
    """
    if branch not in ("+", "-"):
        raise ValueError(f"branch must be '+' or '-'; got {branch!r}.")
    v, sp, ut = jnp.linalg.svd(d, full_matrices=False)
    lam_s = jnp.asarray(lam_s, d.dtype)
    keep = sp > jnp.finfo(d.dtype).eps * max(d.shape) * 10 * jnp.max(sp, initial=0.0)
    spk = jnp.where(keep, sp, 1.0)
    root = jnp.sqrt(1.0 - 4.0 * lam_s * spk * spk)
    s = (1.0 + root) / (2.0 * spk) if branch == "+" else 2.0 * lam_s * spk / (1.0 + root)
    s = jnp.where(keep, s, 0.0)
    return (v * s) @ ut


def auto_lam_s(d, feature_bound: float = math.inf):
    """A distilled ridge and branch that keep the features inside a bounded map's range.

    For an unbounded map (``feature_bound = inf``) this is ``(0, "+")``, the paper's choice. For a
    bounded one (RFF: every ``|phi_j| <= r = sqrt(2/p)``) the "-" root gives
    ``s_i = 2 lam_s s'_i / (1 + sqrt(1 - 4 lam_s s'_i^2)) <= 2 lam_s s'_1``, so
    ``lam_s = min(1/(4 s'_1^2), r / (2 s'_1)) / 2`` is admissible and bounds every entry of
    ``phi_s`` by its top singular value ``<= r / 2``: the features are realisable and ``invert``
    is exact.

    Args:
        d: (m, p) solution matrix.
        feature_bound: the map's :attr:`~jdd.kernels.features.FeatureMap.bound`.

    Returns:
        ``(lam_s, branch)``: a () array and ``"+"`` or ``"-"``.
    """
    if not math.isfinite(feature_bound):
        return jnp.zeros((), d.dtype), "+"
    s1 = jnp.linalg.norm(d, ord=2)
    return 0.5 * jnp.minimum(1.0 / (4.0 * s1 * s1), feature_bound / (2.0 * s1)), "-"


def _auto_features(d, feature_bound: float):
    """``lam_s = "auto"``: the paper's ``(0, "+")`` features when they are realisable (every entry
    within ``feature_bound``), else :func:`auto_lam_s`'s small "-" features. Jittable."""
    plus = features_from_solution(d, 0.0, branch="+")
    if not math.isfinite(feature_bound):
        return jnp.zeros((), d.dtype), plus
    lam_m, _ = auto_lam_s(d, feature_bound)
    minus = features_from_solution(d, lam_m, branch="-")
    ok = jnp.max(jnp.abs(plus)) <= feature_bound
    return jnp.where(ok, 0.0, lam_m).astype(d.dtype), jnp.where(ok, plus, minus)


def distilled_features(w, y_s, z, lam_s=0.0, *, branch: str = "+"):
    """Distilled features whose ridge model (``lam_s``) on labels ``y_s`` is exactly ``w``.

    Args:
        w: (k, p) original model.
        y_s: (m, k) distilled labels; ``rank(y_s) = k`` is required, so ``m >= k``.
        z: (m, p) free matrix (noise, or the real-init choice).
        lam_s: () distilled ridge, ``0 <= lam_s <= 1/(4 s'_1^2)``.
        branch: root of the singular-value equation, see :func:`features_from_solution`.

    Returns:
        phi_s: (m, p).

    Raises:
        ValueError: (concrete inputs only) ``m < k``, ``rank(y_s) < k``, ``lam_s < 0``, the
            ``"-"`` branch with ``lam_s = 0``, or ``lam_s`` above the admissible bound.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> w = jax.random.normal(jax.random.key(0), (3, 5))
        >>> phi_s = distilled_features(w, jnp.eye(3), jnp.zeros((3, 5)))
        >>> bool(jnp.allclose(fit_ridge(phi_s, jnp.eye(3), 0.0), w, atol=1e-4))
        True
    """
    check_labels(y_s, w.shape[0])
    d = solution_matrix(w, y_s, z)
    if _concrete(d, lam_s):
        _check_lam_s(float(lam_s), float(lam_s_bound(d)), branch)
    return features_from_solution(d, lam_s, branch=branch)


def check_labels(y_s, k: int) -> None:
    """Raise ValueError unless ``y_s: (m, k)`` has ``m >= k`` rows and rank ``k`` (concrete only)."""
    if y_s.ndim != 2 or y_s.shape[1] != k:
        raise ValueError(f"distilled labels must have shape (m, {k}); got {y_s.shape}.")
    m = y_s.shape[0]
    if m < k:
        raise ValueError(f"{m} distilled points cannot recover a {k}-class model: at least one "
                         f"point per class (m >= k = {k}) is necessary. Use ipc >= 1 / m >= {k}.")
    if _concrete(y_s):
        r = int(np.linalg.matrix_rank(np.asarray(y_s, np.float64)))
        if r < k:
            raise ValueError(f"distilled labels have rank {r} < k = {k}: W_S = Y_S D can only "
                             "reach W when every class is represented; use labels of rank k "
                             "(e.g. balanced one-hot).")


def _check_lam_s(lam_s: float, bound: float, branch: str) -> None:
    if not lam_s >= 0:
        raise ValueError(f"lam_s must be >= 0; got {lam_s}.")
    if branch == "-" and lam_s == 0:
        raise ValueError("the '-' branch needs lam_s > 0 (at lam_s = 0 its features vanish); use "
                         "branch='+' or a positive lam_s.")
    if lam_s > bound:
        raise ValueError(f"lam_s={lam_s:.4g} exceeds the admissible bound 1/(4 s'_1^2)={bound:.4g}"
                         " for this construction (s'_1: top singular value of D): no real "
                         f"features give W_S = W. Use lam_s <= {bound:.4g} (smaller is better).")


# ----------------------------------------------------------------------------------------------
# differential privacy of the noise construction

class DPConfig(NamedTuple):
    """Privacy target of the noise construction (see :func:`dp_noise_std`).

    Attributes:
        epsilon: in (0, 1) (the classical Gaussian mechanism's range).
        delta: in (0, 1).
        sensitivity: l2 sensitivity of one row of ``W`` when one training example is replaced
            (a bound, e.g. :func:`ridge_sensitivity`).
    """

    epsilon: float
    delta: float
    sensitivity: float


def ridge_sensitivity(n: int, feature_bound: float, lam: float) -> float:
    """An l2 bound on how much ``W`` can move when one training example is replaced.

    For ``J(W) = sum_i |W phi_i - y_i|^2 + lam |W|_F^2`` (one-hot ``y``, ``|phi_i| <= B``):
    ``J`` is ``2 lam``-strongly convex, so the minimisers of two neighbouring objectives satisfy
    ``|W - W'| <= |grad l_i(W') - grad l_i'(W')| / (2 lam)``; each gradient is
    ``2 (W' phi - y) phi^T`` with norm ``<= 2 B (1 + B |W'|)`` and ``lam |W'|^2 <= J'(0) = n``. Hence

        |W - W'|_F <= 2 B (1 + B sqrt(n / lam)) / lam,

    which also bounds every row. Loose, but valid; needs ``lam > 0``.
    """
    if not lam > 0:
        raise ValueError(f"the sensitivity bound needs lam > 0; got {lam}.")
    b = float(feature_bound)
    return 2.0 * b * (1.0 + b * math.sqrt(n / lam)) / lam


def dp_noise_std(dp: DPConfig, ipc: int) -> float:
    """Std of the Gaussian ``Z`` that makes each row of ``D`` (epsilon, delta)-DP.

    Derivation (jdd's own calibration; the paper's Theorem 6.2 makes the same kind of statement,
    its exact constant is not reproduced here). With balanced one-hot labels and ``c = ipc`` points
    per class, ``P = Y_S^+ Y_S`` is block diagonal with blocks ``(1/c) 1 1^T``, so row ``i`` (class
    ``j``) of ``D`` is ``W_j / c + ((I - P) Z)_i``. For i.i.d. ``Z ~ N(0, sigma^2)`` the noise term is
    ``N(0, sigma^2 (1 - 1/c) I)`` (``I - P`` is a symmetric projection, ``sum_l (I-P)_il^2 =
    (I-P)_ii``). The private signal ``W_j / c`` has l2 sensitivity ``Delta / c``. The Gaussian
    mechanism (Dwork & Roth 2014, Thm A.1; ``epsilon < 1``) needs noise std
    ``>= (Delta / c) sqrt(2 ln(1.25/delta)) / epsilon``, i.e.

        sigma = Delta sqrt(2 ln(1.25 / delta)) / (epsilon sqrt(c (c - 1))).

    What it does NOT protect: the guarantee is per row of ``D`` taken alone. The rows of one class
    sum to ``W_j`` exactly (the noise cancels), so the set as a whole reveals ``W``; ``phi_s`` and
    ``x_s`` are functions of all of ``D``. ``ipc = 1`` has no noise at all. The ridge ``lam`` is
    chosen from data as well (not accounted for).

    Raises:
        ValueError: epsilon or delta outside (0, 1), sensitivity < 0, or ipc < 2.
    """
    eps, delta, sens = float(dp.epsilon), float(dp.delta), float(dp.sensitivity)
    if not 0 < eps < 1:
        raise ValueError(f"dp.epsilon must be in (0, 1) for the Gaussian mechanism; got {eps}.")
    if not 0 < delta < 1:
        raise ValueError(f"dp.delta must be in (0, 1); got {delta}.")
    if not sens >= 0:
        raise ValueError(f"dp.sensitivity must be >= 0; got {sens}.")
    if ipc < 2:
        raise ValueError(f"differential privacy needs ipc >= 2 (with ipc = 1 the distilled rows "
                         f"are a deterministic function of W); got ipc={ipc}.")
    return sens * math.sqrt(2.0 * math.log(1.25 / delta)) / (eps * math.sqrt(ipc * (ipc - 1)))


# ----------------------------------------------------------------------------------------------
# the public entry point

class ClosedFormResult(NamedTuple):
    """Output of :func:`closed_form_distill` (all arrays; m = ipc * k).

    Attributes:
        x_s: (m, *feature_shape) distilled inputs, ``invert(phi_s)`` reshaped.
        y_s: (m, k) distilled labels (one-hot, or the original model's predictions for ``"real"``).
        phi_s: (m, p) the constructed distilled features.
        W: (k, p) original model (ridge ``lam`` on all of ``train``).
        W_s: (k, p) the model refitted on the distilled set, ``fit_ridge(phi(x_s), y_s, lam_s)``.
        lam: () original ridge.
        lam_s: () distilled ridge.
        rel_err: () ``|W_s - W|_F / |W|_F``.
        feature_err: () ``|phi(x_s) - phi_s|_F / |phi_s|_F`` (0 up to rounding when the features
            are realisable; > 0 e.g. for RFF features outside the cosine's range).
        lam_s_max: () admissible bound ``1/(4 s'_1^2)`` of this construction.
        init_idx: (m,) int32 indices of the real points used by ``"real"`` (-1 for ``"noise"``).
    """

    x_s: Any
    y_s: Any
    phi_s: Any
    W: Any
    W_s: Any
    lam: Any
    lam_s: Any
    rel_err: Any
    feature_err: Any
    lam_s_max: Any
    init_idx: Any

    def synthetic(self) -> Synthetic:
        """The distilled set as :class:`jdd.distill.Synthetic` (x, y)."""
        return Synthetic(x=self.x_s, y=self.y_s)


def _class_indices(key, y, k: int, ipc: int):
    """(k * ipc,) distinct random indices per class, class-major; jittable (static k, ipc)."""
    u = jax.random.uniform(key, y.shape)

    def one(c):
        return jax.lax.top_k(jnp.where(y == c, u, -1.0), ipc)[1]

    return jax.vmap(one)(jnp.arange(k)).reshape(-1).astype(jnp.int32)


def closed_form_distill(key: PRNGKey, features, train: Dataset, *, ipc: int, lam,
                        lam_s=0.0, init: str = "noise", noise_scale: float = 0.1,
                        branch: str = "+", dp: DPConfig | None = None, W=None,
                        solver: str = "svd") -> ClosedFormResult:
    """Distil ``train`` into ``ipc`` points per class whose ridge model equals the original one.

    Args:
        key: PRNG key (the real points drawn, or the noise ``Z``).
        features: a :class:`jdd.kernels.features.FeatureMap` (``phi``, ``invert``).
        train: training Dataset, ``x: (n, ...)``, ``y: (n,)``; its dtype is the working dtype.
        ipc: distilled points per class (>= 1; ``m = ipc * k``).
        lam: ridge of the original model (choose it with :func:`select_lambda`).
        lam_s: ridge of the distilled model, ``0 <= lam_s <= 1/(4 s'_1^2)``; smaller is better.
            ``"auto"``: 0 (the "+" root) when those features are realisable by the map, else
            :func:`auto_lam_s`'s small ``lam_s`` on the "-" root (bounded maps such as RFF);
            overrides ``branch``. The value used is returned in ``lam_s``.
        init: ``"noise"`` or ``"real"`` (module docstring).
        noise_scale: std of ``Z`` relative to ``std(Y_S^+ W)`` for ``"noise"``.
        branch: ``"+"`` or ``"-"`` root for ``lam_s > 0`` (:func:`features_from_solution`).
        dp: a :class:`DPConfig` to draw ``Z`` with the std of :func:`dp_noise_std` (noise init).
        W: (k, p) optional precomputed original model (skips the ridge fit on ``train``).
        solver: how the original model is fitted when ``W`` is None: ``"svd"`` or ``"gram"``
            (:func:`ridge_path`).

    Returns:
        A :class:`ClosedFormResult`.

    Raises:
        ValueError / DataError: bad ``ipc``, unknown ``init``, ``dp`` with ``"real"``, a class with
            fewer than ``ipc`` examples, ``lam_s`` out of range (concrete inputs only).

    Example:
        >>> import jax
        >>> from jdd.data import load_digits
        >>> from jdd.kernels.features import linear_features
        >>> train, test = load_digits()
        >>> fm = linear_features(64)
        >>> res = closed_form_distill(jax.random.key(0), fm, train, ipc=1, lam=1e-2)
        >>> res.x_s.shape, bool(res.rel_err < 1e-3)
        ((10, 8, 8, 1), True)
    """
    if init not in ("noise", "real"):
        raise ValueError(f"init must be 'noise' or 'real'; got {init!r}.")
    if int(ipc) != ipc or ipc < 1:
        raise ValueError(f"ipc (distilled points per class) must be an integer >= 1; got {ipc}: "
                         "fewer than one point per class cannot recover the original model.")
    if dp is not None and init != "noise":
        raise ValueError("dp applies to the noise construction; use init='noise' with dp.")
    ipc = int(ipc)
    k = train.num_classes
    m = k * ipc
    if init == "real" and _concrete(train.y):
        check_ipc(np.asarray(train.y), k, ipc, train.name)
    x = jnp.asarray(train.x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    dtype = x.dtype
    phi_tr = features.phi(x)
    if W is None:
        W = fit_ridge(phi_tr, jax.nn.one_hot(train.y, k, dtype=dtype), lam, solver=solver)
    W = jnp.asarray(W, dtype)
    onehot = jnp.repeat(jnp.eye(k, dtype=dtype), ipc, axis=0)          # (m, k), class-major
    k_idx, k_z = jax.random.split(key)

    if init == "noise":
        y_s = onehot
        idx = jnp.full((m,), -1, jnp.int32)
        if dp is not None:
            std = jnp.asarray(dp_noise_std(dp, ipc), dtype)
        else:
            std = noise_scale * jnp.std(_pinv(y_s.T) @ W)
        z = std * jax.random.normal(k_z, (m, features.p), dtype)
    else:
        idx = _class_indices(k_idx, train.y, k, ipc)
        p0 = features.phi(x[idx])                                         # (m, p)
        pred = predict(W, p0)                                             # paper: Y_S = W P0
        sv = jnp.linalg.svd(pred, compute_uv=False)
        full_rank = jnp.sum(sv > jnp.finfo(dtype).eps * m * 10 * sv[0]) == k
        y_s = jnp.where(full_rank, pred, onehot)
        # Z = (I - Y_S^+ Y_S)(P0^+ - Y_S^+ W); solution_matrix applies the projection itself and
        # (I - Y_S^+ Y_S) Y_S^+ = 0, so passing P0^+ gives the same D.
        z = _pinv(p0.T)                                                   # (m, p): paper's P0^+

    check_labels(y_s, k)
    d = solution_matrix(W, y_s, z)
    bound = lam_s_bound(d)
    if isinstance(lam_s, str):
        if lam_s != "auto":
            raise ValueError(f"lam_s must be a number >= 0 or 'auto'; got {lam_s!r}.")
        lam_s, phi_s = _auto_features(d, getattr(features, "bound", math.inf))
    else:
        if _concrete(d, lam_s):
            _check_lam_s(float(lam_s), float(bound), branch)
        phi_s = features_from_solution(d, lam_s, branch=branch)
    x_s = features.invert(phi_s).reshape((m,) + tuple(x.shape[1:]))
    phi_real = features.phi(x_s)
    W_s = fit_ridge(phi_real, y_s, lam_s)
    rel_err = jnp.linalg.norm(W_s - W) / jnp.linalg.norm(W)
    feature_err = jnp.linalg.norm(phi_real - phi_s) / jnp.linalg.norm(phi_s)
    return ClosedFormResult(x_s=x_s, y_s=y_s, phi_s=phi_s, W=W, W_s=W_s,
                            lam=jnp.asarray(lam, dtype), lam_s=jnp.asarray(lam_s, dtype),
                            rel_err=rel_err, feature_err=feature_err, lam_s_max=bound,
                            init_idx=idx)


__all__ = ["DEFAULT_LAMBDA_GRID", "SOLVERS", "ClosedFormResult", "DPConfig", "accuracy", "auto_lam_s", "check_labels",
           "closed_form_distill", "distilled_features", "dp_noise_std", "features_from_solution",
           "fit_ridge", "lam_s_bound", "predict", "ridge_path", "ridge_sensitivity", "select_lambda",
           "solution_matrix"]


# ----------------------------------------------------------------------------- registry entry

@dataclasses.dataclass(frozen=True)
class ClosedFormConfig:
    """``jdd distill --method krr-closed-form``. The default (float64 construction) reproduces the
    original ridge model exactly (``|W_S - W| / |W|`` ~1e-10, equal test accuracy) for every
    feature map and init; float32 (``--no-float64``) is ~1e-3 off and can change predictions."""

    features: str = opt("linear", "feature map of the ridge model",
                        choices=("linear", "rff", "fcnn"))
    init: str = opt("noise", "choice of the free part Z of the solution", choices=("noise", "real"))
    lam_s: str = opt("auto", "distilled-set ridge lambda_S: a number >= 0, or auto (0 when the "
                     "constructed features are realisable by the map, else the small admissible "
                     "value that keeps bounded RFF features in range)")
    float64: bool = opt(True, "construct in float64 (exact); --no-float64 for float32")
    ridge_solver: str = opt("svd", "how the original ridge model is fitted: svd (accurate) or "
                            "gram (eigendecomposes the smaller Gram matrix; fast when n >> p)",
                            choices=SOLVERS)
    dp_epsilon: float | None = opt(None, "differential privacy epsilon (none: no DP)", gt=0)
    dp_delta: float = opt(1e-5, "differential privacy delta", gt=0, lt=1)

    def check(self):
        if self.lam_s != "auto":
            try:
                v = float(self.lam_s)
            except ValueError:
                v = float("nan")
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"--lam-s: expected a number >= 0 or 'auto'; got {self.lam_s!r}")


def _build(cfg, spec):
    raise NotImplementedError("krr-closed-form is not iterative: use METHOD.run")


def _run(cfg: ClosedFormConfig, spec: RunSpec, train: Dataset, keys, progress: bool) -> MethodRun:
    """Fit the original ridge model (lambda chosen on a validation split of TRAIN) and construct
    one exact distilled set per key."""
    validate(cfg)
    if cfg.float64:
        with jax.enable_x64(True):
            return _run_in(cfg, spec, train.replace(x=jnp.asarray(train.x, jnp.float64)), keys,
                           progress)
    return _run_in(cfg, spec, train, keys, progress)


def _run_in(cfg, spec, train, keys, progress):
    import time
    from jdd.evaluate import feature_ridge_learner
    from jdd.kernels.features import feature_map
    t0 = time.perf_counter()
    lam_s = cfg.lam_s if cfg.lam_s == "auto" else float(cfg.lam_s)
    k_feat, k_lam = jax.random.split(jax.random.key(spec.seed + 7919))
    d = int(np.prod(train.feature_shape))
    fm = feature_map(cfg.features, k_feat, d)
    lam = select_lambda(k_lam, fm, train, solver=cfg.ridge_solver)  # validation split of TRAIN
    phi = fm.phi(train.x)
    w = fit_ridge(phi, train.one_hot(phi.dtype), lam, solver=cfg.ridge_solver)
    dp = None
    if cfg.dp_epsilon is not None:
        bound = float(jnp.max(jnp.linalg.norm(phi, axis=1)))
        dp = DPConfig(cfg.dp_epsilon, cfg.dp_delta, ridge_sensitivity(train.n, bound, lam))
    results = [closed_form_distill(key, fm, train, ipc=spec.ipc, lam=lam, lam_s=lam_s,
                                   init=cfg.init, dp=dp, W=w) for key in keys]
    jax.block_until_ready(results)
    seconds = time.perf_counter() - t0
    used_lam_s = float(results[0].lam_s)
    learner = feature_ridge_learner(fm, used_lam_s, float(lam))
    rel = [float(r.rel_err) for r in results]
    if progress:
        print(f"closed form: lam={float(lam):.3g} (validation split), lam_s={used_lam_s:.3g}, "
              f"max |W_S - W| / |W| = {max(rel):.2e}", flush=True)
    info = {**to_dict(cfg), "p": fm.p, "lam": float(lam), "lam_s_used": used_lam_s,
            "dp": dp._asdict() if dp else None}
    extra = {"closed_form": {"rel_err_W": rel,
                             "feature_err": [float(r.feature_err) for r in results],
                             "lam_s_max": [float(r.lam_s_max) for r in results]}}
    x = np.stack([np.asarray(r.x_s) for r in results])  # float64 runs stay float64 (exact)
    y = np.stack([np.asarray(r.y_s) for r in results])
    lr = np.full((len(keys),), np.nan, np.float32)
    return MethodRun(x, y, lr, seconds, learner, {}, np.zeros(0), info, extra)


METHOD = Method(name="krr-closed-form", config=ClosedFormConfig, build=_build,
                summary="exact closed-form KRR distillation (Chen, Huang & Weng 2024)",
                default_steps=lambda cfg, ipc: 1, run=_run)
