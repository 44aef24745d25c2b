"""A parametric 1D Poisson problem and a small physics-informed neural network (PINN) for it.

The task of case study B in Kungurtsev et al. 2024 (arXiv 2409.01410): a PDE family indexed by a
boundary-condition parameter alpha; the training measurements come from one tail of a normal
distribution of alpha (with measurement noise), the test problems from the other tail (clean).

The problem (chosen here; the paper's exact PDE is not reproduced):

    -u''(x) = f(x) = pi^2 sin(pi x)   on [0, 1],     u(0) = 0,   u(1) = alpha,

whose solution is ``u(x; alpha) = sin(pi x) + alpha x``. The PINN is a tanh MLP
(:class:`jdd.models.MLP`) taking (x, alpha); its residual ``-u_xx - f`` uses nested ``jax.grad``.
The PINN loss on a set of measurement points P and collocation points C is

    mean_P (u(x, a) - y)^2 + w_res mean_C r(x, a)^2 + w_bc mean_C [u(0, a)^2 + (u(1, a) - a)^2]

Collocation alphas come from the TRAINING tail only: the physics is imposed where the learner has
data; what it predicts for other alphas depends on the measurement points it was trained on, which
is what distillation (:mod:`jdd.distill.pinn_points`) changes.

Example:
    >>> import jax
    >>> pinn = make_pinn((16, 16))
    >>> params = pinn.init(jax.random.key(0))
    >>> pts = measurements(jax.random.key(1), 32, tail="left")
    >>> params = train_pinn(pinn, jax.random.key(2), pts, steps=10)
    >>> float(rmse(pinn, params, pts)) >= 0.0
    True
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from jdd.models import MLP

PRNGKey = jax.Array
Points = dict  # {"x": (n,), "alpha": (n,), "y": (n,)}


def forcing(x: jax.Array) -> jax.Array:
    """Right-hand side f(x) = pi^2 sin(pi x) (any shape)."""
    return math.pi ** 2 * jnp.sin(math.pi * x)


def exact_solution(x: jax.Array, alpha: jax.Array) -> jax.Array:
    """u(x; alpha) = sin(pi x) + alpha x, the solution of -u'' = f, u(0)=0, u(1)=alpha."""
    return jnp.sin(math.pi * x) + alpha * x


def residual(u: Callable[[jax.Array, jax.Array], jax.Array], x: jax.Array,
             alpha: jax.Array) -> jax.Array:
    """PDE residual ``-u_xx(x, alpha) - f(x)`` of a scalar function at one point.

    Args:
        u: ``(x (), alpha ()) -> ()`` candidate solution.
        x: () position.
        alpha: () boundary parameter.

    Returns:
        () residual; vmap it over points.

    Example:
        >>> float(abs(residual(exact_solution, jnp.float32(0.3), jnp.float32(2.0)))) < 1e-4
        True
    """
    uxx = jax.grad(jax.grad(u, argnums=0), argnums=0)(x, alpha)
    return -uxx - forcing(x)


def boundary_residual(u: Callable, alpha: jax.Array) -> jax.Array:
    """(2,) boundary mismatches ``(u(0, a), u(1, a) - a)`` at one alpha."""
    zero, one = jnp.zeros_like(alpha), jnp.ones_like(alpha)
    return jnp.stack([u(zero, alpha), u(one, alpha) - alpha])


class PINN(NamedTuple):
    """A PINN as two pure functions.

    Attributes:
        init: ``key -> params``.
        u: ``(params, x (), alpha ()) -> ()`` the network's solution at one point.
    """

    init: Callable[[PRNGKey], dict]
    u: Callable[[dict, jax.Array, jax.Array], jax.Array]


def make_pinn(hidden: Sequence[int] = (32, 32), activation: str = "tanh") -> PINN:
    """A PINN from :class:`jdd.models.MLP` on the input (x, alpha) (smooth activation: tanh).

    Args:
        hidden: hidden layer widths.
        activation: activation name (must be twice differentiable for the residual).

    Returns:
        A :class:`PINN`.
    """
    net = MLP(hidden=tuple(hidden), num_outputs=1, activation=activation)

    def init(key):
        return net.init(key, jnp.zeros((1, 2)))

    def u(params, x, alpha):
        return net.apply(params, jnp.stack([x, alpha])[None, :])[0, 0]

    return PINN(init=init, u=u)


def sample_alphas(key: PRNGKey, n: int, tail: str = "left", threshold: float = 0.5,
                  dtype=jnp.float32) -> jax.Array:
    """(n,) alphas from one tail of N(0, 1): ``alpha < -threshold`` (left) or ``> threshold``."""
    if tail not in ("left", "right"):
        raise ValueError(f"tail must be 'left' or 'right'; got {tail!r}")
    a = jax.random.truncated_normal(key, threshold, jnp.inf, (n,), dtype)
    return -a if tail == "left" else a


def measurements(key: PRNGKey, n: int, *, tail: str = "left", threshold: float = 0.5,
                 noise_std: float = 0.0) -> Points:
    """``n`` measurements (x ~ U(0, 1), alpha from a tail, y = u(x; alpha) + noise).

    Args:
        key: PRNG key.
        n: number of points.
        tail: ``"left"`` or ``"right"`` tail of N(0, 1) for alpha.
        threshold: the tail starts at |alpha| = threshold.
        noise_std: standard deviation of the Gaussian measurement noise on y.

    Returns:
        dict of (n,) arrays ``x``, ``alpha``, ``y``.
    """
    kx, ka, kn = jax.random.split(key, 3)
    x = jax.random.uniform(kx, (n,))
    alpha = sample_alphas(ka, n, tail, threshold)
    y = exact_solution(x, alpha) + noise_std * jax.random.normal(kn, (n,))
    return {"x": x, "alpha": alpha, "y": y}


def eval_grid(key: PRNGKey, num_alphas: int = 32, num_x: int = 33, *, tail: str = "right",
              threshold: float = 0.5) -> Points:
    """Clean evaluation points: ``num_alphas`` tail alphas times a uniform x grid (flattened)."""
    alpha = sample_alphas(key, num_alphas, tail, threshold)
    x = jnp.linspace(0.0, 1.0, num_x)
    aa, xx = jnp.meshgrid(alpha, x, indexing="ij")
    aa, xx = aa.reshape(-1), xx.reshape(-1)
    return {"x": xx, "alpha": aa, "y": exact_solution(xx, aa)}


def pinn_loss(pinn: PINN, params, points: Points, colloc_x: jax.Array, colloc_alpha: jax.Array,
              *, w_res: float = 1e-2, w_bc: float = 1.0, weights: jax.Array | None = None):
    """The PINN training loss (see the module docstring).

    Args:
        pinn: the network.
        params: its parameters.
        points: measurement points, dict of (n,) arrays.
        colloc_x: (c,) collocation positions.
        colloc_alpha: (c,) collocation alphas (the boundary term uses these alphas).
        w_res: residual weight (f is O(10), so the residual is O(10) before training).
        w_bc: boundary-condition weight.
        weights: optional (n,) per-point weights of the data term.

    Returns:
        () scalar loss.
    """
    u = lambda x, a: pinn.u(params, x, a)  # noqa: E731
    pred = jax.vmap(u)(points["x"], points["alpha"])
    err = (pred - points["y"]) ** 2
    data = jnp.mean(err) if weights is None else jnp.sum(weights * err) / jnp.sum(weights)
    res = jax.vmap(lambda x, a: residual(u, x, a))(colloc_x, colloc_alpha)
    bc = jax.vmap(lambda a: boundary_residual(u, a))(colloc_alpha)
    return data + w_res * jnp.mean(res ** 2) + w_bc * jnp.mean(bc ** 2)


def collocation(key: PRNGKey, n: int, *, tail: str = "left", threshold: float = 0.5):
    """(x (n,), alpha (n,)) collocation points: x ~ U(0, 1), alpha from the given tail."""
    kx, ka = jax.random.split(key)
    return jax.random.uniform(kx, (n,)), sample_alphas(ka, n, tail, threshold)


def train_pinn(pinn: PINN, key: PRNGKey, points: Points, *, steps: int = 200, lr: float = 1e-2,
               num_colloc: int = 32, tail: str = "left", threshold: float = 0.5,
               w_res: float = 1e-2, w_bc: float = 1.0, checkpoint: bool = False):
    """Train a fresh PINN with Adam for a static number of steps (``lax.scan``, differentiable).

    Each step draws fresh collocation points (x ~ U(0, 1), alpha from the training ``tail``).
    Gradients flow through the whole unrolled run into ``points``, so this is the inner learner of
    :func:`jdd.distill.pinn_points.pinn_points`.

    Args:
        pinn: the network.
        key: PRNG key (initialisation and collocation draws).
        points: measurement points, dict of (n,) arrays.
        steps: Adam steps (static).
        lr: Adam learning rate.
        num_colloc: collocation points per step.
        tail, threshold: where collocation alphas come from.
        w_res, w_bc: loss weights (see :func:`pinn_loss`).
        checkpoint: wrap each step in ``jax.checkpoint`` (less memory when differentiated).

    Returns:
        The trained parameters.
    """
    k_init, k_col = jax.random.split(key)
    params = pinn.init(k_init)
    opt = optax.adam(lr)

    def step(carry, k):
        p, s = carry
        cx, ca = collocation(k, num_colloc, tail=tail, threshold=threshold)
        g = jax.grad(lambda q: pinn_loss(pinn, q, points, cx, ca, w_res=w_res, w_bc=w_bc))(p)
        upd, s = opt.update(g, s, p)
        return (optax.apply_updates(p, upd), s), None

    if checkpoint:
        step = jax.checkpoint(step)
    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), jax.random.split(k_col, steps))
    return params


def rmse(pinn: PINN, params, points: Points) -> jax.Array:
    """() root-mean-square error of the PINN against ``points["y"]``."""
    pred = jax.vmap(lambda x, a: pinn.u(params, x, a))(points["x"], points["alpha"])
    return jnp.sqrt(jnp.mean((pred - points["y"]) ** 2))
