"""Distilling measurement points for a physics-informed network (task-specific DD, case B).

Kungurtsev et al. 2024 (arXiv 2409.01410), second case study. Training measurements of a PDE family
(:mod:`jdd.tasks.pinn`) come from one tail of the boundary parameter's distribution and are noisy;
the test problems come from the other tail. We learn m measurement points ``(x, alpha, y)`` such
that a PINN trained on them (inner learner: unrolled Adam through ``lax.scan``,
:func:`jdd.tasks.pinn.train_pinn`, differentiated end to end) does well on the outer objective

    mean_batch (u(x, a) - y)^2                                  (fit the real noisy measurements)
  + w_phys * [ mean r(x', a')^2 * w_res + mean BC(a')^2 ]       (physics over the whole alpha prior)

with (x', a') fresh each step, x' ~ U(0, 1), a' ~ N(0, outer_alpha_std^2).

Choices the paper leaves open (all parameters, documented here and in the notebook):

* The outer objective is the task: the PINN must be physically right for every alpha the
  application may meet, so the physics term samples alpha from the full prior N(0, 1), not only the
  training tail. It uses the known PDE and boundary law only; no test-tail solution value is ever
  used. The inner learner imposes physics only on the training tail (that is the PINN the user
  trains), so the distilled points are what carries information to the other tail.
* Learnable: x (clipped to [0, 1] after each step), alpha and y of every point.
* Initialisation: m random real training measurements.
* Each outer step trains a fresh PINN from a new random initialisation, so the points must work for
  any initialisation, as in evaluation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jdd.distill.core import Distiller, Synthetic, bilevel, sample_rows
from jdd.tasks.pinn import PINN, boundary_residual, residual, train_pinn

PRNGKey = jax.Array


def pinn_points(pinn: PINN, num_points: int,
                optimizer: optax.GradientTransformation | None = None, *,
                inner_steps: int = 100, inner_lr: float = 1e-2, num_colloc: int = 32,
                tail: str = "left", threshold: float = 0.5, w_res: float = 1e-2,
                w_bc: float = 1.0, batch_size: int | None = 64, w_phys: float = 1.0,
                outer_alpha_std: float = 1.0, outer_num_colloc: int = 64,
                checkpoint: bool = False) -> Distiller:
    """Distil ``num_points`` measurement points that train a PINN to generalise across alpha.

    Args:
        pinn: the network (:func:`jdd.tasks.pinn.make_pinn`).
        num_points: m, distilled measurement points.
        optimizer: outer optax optimizer (default ``optax.adam(1e-2)``).
        inner_steps: Adam steps of the inner PINN training (unrolled, static).
        inner_lr: inner Adam learning rate.
        num_colloc: collocation points per inner step (alpha from the training ``tail``).
        tail, threshold: the training tail of alpha (``"left"``: alpha < -threshold).
        w_res, w_bc: inner and outer residual / boundary weights.
        batch_size: real measurements per outer step (None: all).
        w_phys: weight of the outer physics term.
        outer_alpha_std: the outer physics term draws alpha ~ N(0, outer_alpha_std^2).
        outer_num_colloc: outer physics points per step.
        checkpoint: ``jax.checkpoint`` each inner step (memory for time).

    Returns:
        A :class:`jdd.distill.core.Distiller` over real measurement dicts ``{"x", "alpha", "y"}``
        of (n,) arrays; params are such a dict of (m,) arrays; ``synthetic(state)`` gives
        ``Synthetic(x=(m, 2) [x, alpha], y=(m, 1))``; metrics add ``"data"`` and ``"physics"``.

    Example:
        >>> from jdd.tasks.pinn import make_pinn, measurements
        >>> from jdd.distill.core import distill
        >>> pinn = make_pinn((8,))
        >>> real = measurements(jax.random.key(0), 64, noise_std=0.1)
        >>> d = pinn_points(pinn, 4, inner_steps=5, batch_size=16, outer_num_colloc=8)
        >>> res = distill(d, jax.random.key(1), real, steps=2, progress=False)
        >>> res.synthetic.x.shape
        (4, 2)
    """
    optimizer = optimizer or optax.adam(1e-2)

    def init_params(key, real):
        return dict(sample_rows(key, real, num_points))

    def fit(params, key):
        return train_pinn(pinn, key, params, steps=inner_steps, lr=inner_lr,
                          num_colloc=num_colloc, tail=tail, threshold=threshold, w_res=w_res,
                          w_bc=w_bc, checkpoint=checkpoint)

    def outer_loss(model, batch, params, key):
        u = lambda x, a: pinn.u(model, x, a)  # noqa: E731
        pred = jax.vmap(u)(batch["x"], batch["alpha"])
        data = jnp.mean((pred - batch["y"]) ** 2)
        kx, ka = jax.random.split(key)
        cx = jax.random.uniform(kx, (outer_num_colloc,))
        ca = outer_alpha_std * jax.random.normal(ka, (outer_num_colloc,))
        res = jax.vmap(lambda x, a: residual(u, x, a))(cx, ca)
        bc = jax.vmap(lambda a: boundary_residual(u, a))(ca)
        phys = w_res * jnp.mean(res ** 2) + w_bc * jnp.mean(bc ** 2)
        return data + w_phys * phys, {"data": data, "physics": phys}

    def project(params):
        return {**params, "x": jnp.clip(params["x"], 0.0, 1.0)}

    def to_synthetic(params):
        return Synthetic(x=jnp.stack([params["x"], params["alpha"]], axis=1),
                         y=params["y"][:, None])

    return bilevel(init_params, fit, outer_loss, optimizer, batch_size=batch_size,
                   to_synthetic=to_synthetic, project=project)


def points_from_synthetic(syn: Synthetic) -> dict:
    """Turn ``Synthetic(x=(m, 2), y=(m, 1))`` back into a measurement dict of (m,) arrays."""
    return {"x": syn.x[..., 0], "alpha": syn.x[..., 1], "y": syn.y[..., 0]}
