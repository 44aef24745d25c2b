"""Two-phase two-layer networks on multi-index tasks, and their two distilled sets D1^S and D2^S.

The learner (Damian, Lee, Soltanolkotabi 2022; the setting of Kinoshita, Nishikawa, Toyoizumi 2026)
is a two-layer network of width L,

    f(x) = a^T sigma(W x + b) / sqrt(L),        W: (L, d), b: (L,), a: (L,),

trained in two phases, each a pure, jittable, vmappable function:

* **phase 1** (feature learning): ONE gradient step on W of the squared loss
  ``l(W) = 1/(2J) sum_i (f(x_i) - y_i)^2 + (wd/2) ||W||^2`` on a real batch of size J, from a
  *symmetric* initialisation (neurons come in pairs with equal (w, b) and opposite a = +-a_scale, so
  f = 0 at init and the gradient is the label-weighted average ``-(1/J) sum y_i a_j sigma'(.) x_i``),
  with weight decay ``wd = 1 / lr`` so the step erases the random init: ``W1 = -lr * grad``. For a
  centred target with a full-rank Hessian ``E[grad^2 g]`` (e.g. the ``"he2"`` link) every row of that
  gradient is, up to O(sqrt(d / J)) noise, a vector in span(U): the step aligns W with the principal
  subspace. jdd then rescales every row of W1 to unit norm (``normalize=True``, our choice: it makes
  the features' scale independent of lr and of the target's scale; the paper's normalisation is not
  stated in the text we could read). Biases b are drawn once at init (N(0, bias_scale^2), equal within
  a pair) and kept for phase 2.
* **phase 2** (readout): ridge regression of a on the learned features
  ``phi(x) = sigma(W1 x + b) / sqrt(L)`` from N samples:
  ``a = argmin 1/(2N) ||Phi a - y||^2 + (reg/2) ||a||^2 = (Phi^T Phi + N reg I)^{-1} Phi^T y``.

Distilled data (what replaces the J + N real samples):

* **D1^S** (:func:`d1_gradient_matching`): m synthetic points (x~, y~) whose phase-1 gradient on W at
  the same init equals the real batch's, found by gradient matching (Adam on
  ``||G(x~, y~) - G_real||_F^2 / ||G_real||_F^2``). Training phase 1 on D1^S then gives the same first
  layer as training on the real batch, up to the matching error. The real gradient is (nearly) rank r
  with rows in span(U), and a synthetic set's gradient is a masked combination of its m inputs, so
  the default size is ``m = r^2`` points of dimension d (the paper's r^2 d memory term; we take the
  constant 1, a parameter). ReLU's derivative is a step, so d G / d x~ is zero almost everywhere:
  the matching differentiates through a straight-through surrogate (exact forward pass, a sigmoid of
  slope ``surrogate_beta`` for the step's derivative), our reading of the paper's "surrogate"
  assumption. Inputs start uniform on the sphere of radius sqrt(d) (the real inputs' typical norm),
  labels at the constant ``y_init``.
* **D2^S** (:func:`d2_rank_certify`, :func:`d2_compact`): m points whose ridge fit (the learner's own
  phase 2, same reg) returns the teacher's second layer a* (the ridge fit of the real N samples on the
  features the student has after phase 1 on D1^S). With m >= L points in general position the feature
  matrix Phi_S (m, L) has rank L, and labels ``y~ = (Phi_S Phi_S^T + m reg I) c`` with
  ``Phi_S^T c = a*`` make the ridge solution exactly a* (the rank-certifying construction, in closed
  form). With m < L points only an m-dimensional part of a* can be reproduced: the rank-certifying
  labels give the Euclidean projection of a* on the row space of Phi_S; the compact variant
  (:func:`d2_compact`) chooses the projection that is best *in function space* (weighted by the real
  feature covariance) and moves the m inputs by gradient descent to make that projection as good
  as possible, which reconstructs far more of the teacher's accuracy per point.

Memory (floats): D1^S stores m1 (d + 1), D2^S stores m2 (d + 1); with m1 = r^2 and m2 = L this is
r^2 d + L d + O(r^2 + L), against (J + N)(d + 1) for the real data. (:func:`memory_floats`.)

Example:
    >>> import jax, optax
    >>> from jdd.tasks import multi_index, sample
    >>> from jdd.distill import distill
    >>> task = multi_index(jax.random.key(0), d=20, r=2, link="he2", n=4000)
    >>> net = two_phase(width=32)
    >>> d1 = d1_gradient_matching(net, m=4, optimizer=optax.adam(0.05))
    >>> run = distill(d1, jax.random.key(1), {"x": task.x, "y": task.y}, steps=100, progress=False)
    >>> p0 = run.state.params0                       # the init shared by teacher and student
    >>> student1 = net.phase1(p0, run.synthetic.x, run.synthetic.y)
    >>> a_star = net.phase2(student1, task.x, task.y).a   # teacher readout on the student's features
    >>> x2, y2 = d2_rank_certify(jax.random.key(2), net, student1, a_star, m=32)
    >>> student = net.phase2(student1, x2, y2)       # == net.phase2(student1, task.x, task.y)
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jdd.distill.core import Distiller, Synthetic, num_params

PRNGKey = jax.Array
Activation = Callable[[jax.Array], jax.Array]


class TwoLayer(NamedTuple):
    """Parameters of ``f(x) = a^T sigma(W x + b) / sqrt(L)``.

    Attributes:
        W: (L, d) first layer.
        b: (L,) biases.
        a: (L,) second layer.
    """

    W: jax.Array
    b: jax.Array
    a: jax.Array


# ----------------------------------------------------------------------------- network primitives

def init_two_layer(key: PRNGKey, d: int, width: int, *, a_scale: float = 1.0,
                   bias_scale: float = 1.0, dtype=None) -> TwoLayer:
    """Symmetric initialisation: ``width / 2`` neuron pairs with equal (w, b) and a = +-a_scale.

    Rows of W are uniform on the unit sphere, b ~ N(0, bias_scale^2). The network output is exactly
    zero at init, so the first gradient step only sees the labels.

    Args:
        key: PRNG key.
        d: input dimension.
        width: L, an even number of hidden units.
        a_scale: magnitude of the second-layer weights at init.
        bias_scale: standard deviation of the biases.
        dtype: float dtype (default: JAX's default float).

    Returns:
        A :class:`TwoLayer` with W: (L, d), b: (L,), a: (L,).
    """
    if width < 2 or width % 2:
        raise ValueError(f"width must be an even number >= 2 (symmetric pairs); got {width}.")
    dtype = jnp.result_type(float) if dtype is None else dtype
    kw, kb = jax.random.split(key)
    half = width // 2
    w = jax.random.normal(kw, (half, d), dtype)
    w = w / jnp.linalg.norm(w, axis=1, keepdims=True)
    b = bias_scale * jax.random.normal(kb, (half,), dtype)
    a = jnp.full((half,), a_scale, dtype)
    return TwoLayer(W=jnp.concatenate([w, w]), b=jnp.concatenate([b, b]),
                    a=jnp.concatenate([a, -a]))


def features(params: TwoLayer, x: jax.Array, activation: Activation = jax.nn.relu) -> jax.Array:
    """Hidden features ``sigma(W x + b) / sqrt(L)``: x (n, d) -> (n, L)."""
    width = params.W.shape[0]
    return activation(x @ params.W.T + params.b) / jnp.sqrt(jnp.asarray(width, x.dtype))


def apply(params: TwoLayer, x: jax.Array, activation: Activation = jax.nn.relu) -> jax.Array:
    """Network output ``a^T sigma(W x + b) / sqrt(L)``: x (n, d) -> (n,)."""
    return features(params, x, activation) @ params.a


def first_layer_grad(params: TwoLayer, x: jax.Array, y: jax.Array,
                     activation: Activation = jax.nn.relu) -> jax.Array:
    """Gradient on W of the data loss ``1/(2n) sum_i (f(x_i) - y_i)^2`` (no weight decay).

    Args:
        params: the network.
        x: (n, d) inputs.
        y: (n,) targets.
        activation: sigma.

    Returns:
        (L, d) gradient.
    """

    def loss(W):
        return 0.5 * jnp.mean((apply(params._replace(W=W), x, activation) - y) ** 2)

    return jax.grad(loss)(params.W)


def ridge(phi: jax.Array, y: jax.Array, reg: float) -> jax.Array:
    """Ridge readout ``argmin_a 1/(2n) ||phi a - y||^2 + (reg/2) ||a||^2``.

    Solves the primal ``(phi^T phi + n reg I) a = phi^T y`` when n >= L and the equivalent dual
    ``a = phi^T (phi phi^T + n reg I)^{-1} y`` when n < L (both need reg > 0 unless phi has full
    rank).

    Args:
        phi: (n, L) features.
        y: (n,) targets.
        reg: ridge strength (per-sample scaling, as above).

    Returns:
        (L,) second-layer weights.
    """
    n, width = phi.shape
    if n >= width:
        gram = phi.T @ phi + n * reg * jnp.eye(width, dtype=phi.dtype)
        return jnp.linalg.solve(gram, phi.T @ y)
    gram = phi @ phi.T + n * reg * jnp.eye(n, dtype=phi.dtype)
    return phi.T @ jnp.linalg.solve(gram, y)


def relu_surrogate(beta: float = 4.0) -> Activation:
    """ReLU with exact values and first derivative, whose *second* derivative is a smooth surrogate.

    ``sigma(z) = max(z, 0)``, ``sigma'(z) = 1[z > 0]`` exactly, but d sigma'/dz is taken as
    ``beta * s (1 - s)`` with ``s = sigmoid(beta z)`` (a straight-through estimator). Gradient matching
    differentiates the phase-1 gradient with respect to the synthetic inputs, which for ReLU is zero
    almost everywhere; this surrogate lets the inputs move the activation pattern.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> act = relu_surrogate(4.0)
        >>> float(act(jnp.float32(-1.0))), float(jax.grad(act)(jnp.float32(2.0)))
        (0.0, 1.0)
    """

    @jax.custom_jvp
    def step(z):
        return (z > 0).astype(z.dtype)

    @step.defjvp
    def _step_jvp(primals, tangents):
        (z,), (dz,) = primals, tangents
        s = jax.nn.sigmoid(beta * z)
        return step(z), beta * s * (1.0 - s) * dz

    @jax.custom_jvp
    def relu(z):
        return jnp.maximum(z, 0.0)

    @relu.defjvp
    def _relu_jvp(primals, tangents):
        (z,), (dz,) = primals, tangents
        return relu(z), step(z) * dz

    return relu


_ACTIVATIONS: dict[str, Activation] = {"relu": jax.nn.relu, "tanh": jnp.tanh,
                                       "softplus": jax.nn.softplus, "gelu": jax.nn.gelu}


# ----------------------------------------------------------------------------- the learner

class TwoPhase(NamedTuple):
    """A two-phase learner for a width-L two-layer network (built by :func:`two_phase`).

    Attributes:
        width: L.
        reg: ridge strength of phase 2.
        activation: sigma.
        init: ``(key, d) -> TwoLayer`` symmetric initialisation.
        grad_w: ``(params, x (n, d), y (n,)) -> (L, d)`` phase-1 data gradient on W.
        phase1: ``(params, x, y) -> TwoLayer``: the one large step on W (a, b unchanged).
        phase2: ``(params, x, y) -> TwoLayer``: ridge readout a on the current features.
        fit: ``(params0, x1, y1, x2, y2) -> TwoLayer``: phase 1 on (x1, y1) then phase 2 on (x2, y2).
        features: ``(params, x) -> (n, L)``.
        predict: ``(params, x) -> (n,)``.
        mse: ``(params, x, y) -> ()`` mean squared error.
    """

    width: int
    reg: float
    activation: Activation
    init: Callable[[PRNGKey, int], TwoLayer]
    grad_w: Callable[[TwoLayer, jax.Array, jax.Array], jax.Array]
    phase1: Callable[[TwoLayer, jax.Array, jax.Array], TwoLayer]
    phase2: Callable[[TwoLayer, jax.Array, jax.Array], TwoLayer]
    fit: Callable[..., TwoLayer]
    features: Callable[[TwoLayer, jax.Array], jax.Array]
    predict: Callable[[TwoLayer, jax.Array], jax.Array]
    mse: Callable[[TwoLayer, jax.Array, jax.Array], jax.Array]


def two_phase(width: int, *, activation: str | Activation = "relu", lr: float = 1.0,
              weight_decay: float | None = None, normalize: bool = True, reg: float = 1e-3,
              a_scale: float = 1.0, bias_scale: float = 1.0) -> TwoPhase:
    """The two-phase learner: one large gradient step on W, then ridge regression on the features.

    Args:
        width: L (even; symmetric pairs).
        activation: ``"relu"`` (default), ``"tanh"``, ``"softplus"``, ``"gelu"`` or a callable.
        lr: phase-1 step size eta.
        weight_decay: phase-1 weight decay; None means ``1 / lr``, which makes the step erase the
            random init (``W1 = -lr * grad``), Damian et al.'s choice.
        normalize: rescale every row of W1 to unit norm after the step (jdd's default; see module).
        reg: phase-2 ridge strength (``(Phi^T Phi + N reg I) a = Phi^T y``).
        a_scale: |a| at init (only scales the phase-1 gradient; irrelevant when ``normalize``).
        bias_scale: std of the biases (kept through both phases).

    Returns:
        A :class:`TwoPhase` of pure functions (jit and vmap them freely).

    Example:
        >>> import jax
        >>> from jdd.tasks import multi_index
        >>> task = multi_index(jax.random.key(0), d=20, r=2, n=2000)
        >>> net = two_phase(width=32)
        >>> p = net.fit(net.init(jax.random.key(1), 20), task.x, task.y, task.x, task.y)
        >>> float(net.mse(p, task.x, task.y)) < 1.0
        True
    """
    act = _ACTIVATIONS[activation] if isinstance(activation, str) else activation
    if isinstance(activation, str) and activation not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; valid: {', '.join(_ACTIVATIONS)}.")
    wd = 1.0 / lr if weight_decay is None else weight_decay

    def init(key, d):
        return init_two_layer(key, d, width, a_scale=a_scale, bias_scale=bias_scale)

    def grad_w(params, x, y):
        return first_layer_grad(params, x, y, act)

    def phase1(params, x, y):
        g = grad_w(params, x, y)
        W = params.W - lr * (g + wd * params.W)
        if normalize:
            norm = jnp.linalg.norm(W, axis=1, keepdims=True)
            W = W / jnp.maximum(norm, jnp.finfo(W.dtype).tiny)
        return params._replace(W=W)

    def phase2(params, x, y):
        return params._replace(a=ridge(features(params, x, act), y, reg))

    def fit(params0, x1, y1, x2, y2):
        return phase2(phase1(params0, x1, y1), x2, y2)

    def feats(params, x):
        return features(params, x, act)

    def predict(params, x):
        return apply(params, x, act)

    def mse(params, x, y):
        return jnp.mean((predict(params, x) - y) ** 2)

    return TwoPhase(width=width, reg=reg, activation=act, init=init, grad_w=grad_w, phase1=phase1,
                    phase2=phase2, fit=fit, features=feats, predict=predict, mse=mse)


# ----------------------------------------------------------------------------- D1^S: gradient matching

class D1State(NamedTuple):
    """State of :func:`d1_gradient_matching`.

    Attributes:
        x: (m, d) synthetic inputs.
        y: (m,) synthetic labels.
        params0: the network init shared by the real and the synthetic phase 1.
        target: (L, d) the real batch's phase-1 gradient at ``params0``.
        opt_state: optax state.
        step: () int32 step counter.
    """

    x: jax.Array
    y: jax.Array
    params0: TwoLayer
    target: jax.Array
    opt_state: Any
    step: jax.Array


def _xy(data) -> tuple[jax.Array, jax.Array]:
    if isinstance(data, dict):
        return data["x"], data["y"]
    return data.x, data.y


def d1_gradient_matching(learner: TwoPhase, *, m: int,
                         optimizer: optax.GradientTransformation | None = None,
                         surrogate_beta: float | None = 1.0, y_init: float = 1.0,
                         x_radius: float | None = None) -> Distiller:
    """D1^S: m synthetic points whose phase-1 gradient matches a real batch's (a :class:`Distiller`).

    ``data`` is the real phase-1 batch: a dict ``{"x": (J, d), "y": (J,)}`` or any object with ``x``
    and ``y`` (e.g. a :class:`jdd.tasks.MultiIndexTask`). ``init`` draws the shared network init
    (``state.params0``) and computes the real gradient ``G_real`` once; each ``step`` takes one
    optimizer step on ``||G(x~, y~) - G_real||_F^2 / ||G_real||_F^2``.

    Args:
        learner: the :class:`TwoPhase` learner whose phase 1 is being distilled.
        m: number of synthetic points (default choice in jdd's benchmarks: r^2).
        optimizer: outer optimizer (default ``optax.adam(0.03)``).
        surrogate_beta: when the learner's activation is ReLU, differentiate the synthetic gradient
            through :func:`relu_surrogate` with this slope (None: plain autodiff, which leaves the
            activation pattern fixed).
        y_init: initial value of every synthetic label.
        x_radius: initial norm of the synthetic inputs (uniform directions); None means sqrt(d).

    Returns:
        A :class:`Distiller`; ``synthetic(state)`` is a :class:`Synthetic` with x: (m, d) and 1-D
        regression labels y: (m,). Metrics: ``loss`` (relative squared gradient error) and
        ``rel_grad_err`` (its square root).

    Example:
        >>> import jax
        >>> from jdd.tasks import multi_index
        >>> from jdd.distill import distill
        >>> task = multi_index(jax.random.key(0), d=16, r=2, n=2000)
        >>> d1 = d1_gradient_matching(two_phase(16), m=4)
        >>> run = distill(d1, jax.random.key(1), task, steps=50, progress=False)
        >>> run.synthetic.x.shape
        (4, 16)
    """
    optimizer = optimizer or optax.adam(0.03)
    act = learner.activation
    if surrogate_beta is not None and act is jax.nn.relu:
        act = relu_surrogate(surrogate_beta)

    def init(key, data):
        x, y = _xy(data)
        d = x.shape[-1]
        k_net, k_x = jax.random.split(key)
        params0 = learner.init(k_net, d)
        target = learner.grad_w(params0, x, y)
        radius = jnp.sqrt(jnp.asarray(d, x.dtype)) if x_radius is None else x_radius
        xs = jax.random.normal(k_x, (m, d), x.dtype)
        xs = radius * xs / jnp.linalg.norm(xs, axis=1, keepdims=True)
        ys = jnp.full((m,), y_init, x.dtype)
        opt_state = optimizer.init((xs, ys))
        return D1State(xs, ys, params0, target, opt_state, jnp.zeros((), jnp.int32))

    def loss_fn(syn, state):
        xs, ys = syn
        g = first_layer_grad(state.params0, xs, ys, act)
        return jnp.sum((g - state.target) ** 2) / jnp.sum(state.target ** 2)

    def step(state, key, data):
        del key, data
        syn = (state.x, state.y)
        loss, grads = jax.value_and_grad(loss_fn)(syn, state)
        updates, opt_state = optimizer.update(grads, state.opt_state, syn)
        xs, ys = optax.apply_updates(syn, updates)
        new = D1State(xs, ys, state.params0, state.target, opt_state, state.step + 1)
        return new, {"loss": loss, "rel_grad_err": jnp.sqrt(loss)}

    def synthetic(state):
        return Synthetic(x=state.x, y=state.y)

    return Distiller(init=init, step=step, synthetic=synthetic)


def gradient_error(learner: TwoPhase, params0: TwoLayer, xs: jax.Array, ys: jax.Array,
                   x: jax.Array, y: jax.Array) -> jax.Array:
    """Relative error ``||G(xs, ys) - G(x, y)||_F / ||G(x, y)||_F`` of the exact phase-1 gradients."""
    g_s = learner.grad_w(params0, xs, ys)
    g = learner.grad_w(params0, x, y)
    return jnp.linalg.norm(g_s - g) / jnp.linalg.norm(g)


# ----------------------------------------------------------------------------- D2^S: readout

def _labels_for(phi_s: jax.Array, c: jax.Array, reg: float) -> jax.Array:
    m = phi_s.shape[0]
    return (phi_s @ phi_s.T + m * reg * jnp.eye(m, dtype=phi_s.dtype)) @ c


def d2_rank_certify(key: PRNGKey, learner: TwoPhase, params: TwoLayer, a_target: jax.Array, m: int,
                    *, x: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """D2^S by the rank-certifying construction: m points whose ridge readout equals ``a_target``.

    Inputs are m fresh N(0, I_d) points (or the given ``x``); with features Phi_S (m, L), the labels
    are ``y~ = (Phi_S Phi_S^T + m reg I) c`` with c the minimum-norm least-squares solution of
    ``Phi_S^T c = a_target``. The learner's phase 2 on (x~, y~) then returns
    ``Phi_S^T c = P a_target``, the orthogonal projection of a_target on the row space of Phi_S:
    exactly ``a_target`` once rank(Phi_S) = L (m >= L points in general position), the
    rank-certifying case; a partial reconstruction for m < L. ReLU features can vanish on all of a
    few points (a "dead" unit), so m = L random points sometimes falls short of rank L; jdd's
    benchmarks use m = 2L and check the rank. (At the symmetric init, paired neurons
    coincide and the rank is at most L / 2; after phase 1 the pairs point in opposite directions.)

    Args:
        key: PRNG key for the inputs.
        learner: the :class:`TwoPhase` learner (its activation and reg are used).
        params: the network after phase 1 (its W and b define the features).
        a_target: (L,) the second layer to reproduce.
        m: number of synthetic points.
        x: optional (m, d) inputs to use instead of random ones.

    Returns:
        (x~ (m, d), y~ (m,)).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> net = two_phase(8)
        >>> p = net.init(jax.random.key(0), 5)
        >>> p = p._replace(W=jax.random.normal(jax.random.key(2), (8, 5)))  # as after phase 1
        >>> a = jnp.arange(8.0)
        >>> xs, ys = d2_rank_certify(jax.random.key(1), net, p, a, m=16)
        >>> bool(jnp.allclose(net.phase2(p, xs, ys).a, a, atol=1e-2))
        True
    """
    if x is None:
        x = jax.random.normal(key, (m, params.W.shape[1]), params.W.dtype)
    phi_s = learner.features(params, x)
    c = jnp.linalg.lstsq(phi_s.T, a_target)[0]
    return x, _labels_for(phi_s, c, learner.reg)


def d2_compact(key: PRNGKey, learner: TwoPhase, params: TwoLayer, a_target: jax.Array, m: int,
               x_ref: jax.Array, *, steps: int = 300,
               optimizer: optax.GradientTransformation | None = None,
               x: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Compact D2^S: m < L points chosen to reproduce the teacher's *function*, not its weights.

    With m < L points the ridge readout can only reach ``a_S = Phi_S^T c``, a vector in the
    m-dimensional row space of the synthetic features. The compact variant

    1. measures error in function space, ``E_x[(phi(x) . (a_S - a_target))^2] =
       ||a_S - a_target||^2_Sigma`` (Sigma = the feature second-moment matrix on the reference
       inputs ``x_ref``), whose best c is ``(Phi_S Sigma Phi_S^T)^{-1} Phi_S Sigma a_target``;
    2. moves the m inputs by ``steps`` optimizer steps (gradient descent through the features) to
       minimise that error relative to ``||a_target||^2_Sigma``;
    3. sets labels ``y~ = (Phi_S Phi_S^T + m reg I) c`` so the learner's ridge returns a_S.

    For m >= L it coincides with the rank-certifying set (both give a_target exactly).

    Args:
        key: PRNG key for the initial inputs.
        learner: the :class:`TwoPhase` learner.
        params: the network after phase 1.
        a_target: (L,) the second layer to reproduce.
        m: number of synthetic points.
        x_ref: (n, d) inputs that define Sigma (real, unlabeled inputs; e.g. the phase-2 inputs).
        steps: optimisation steps on the inputs (0: keep the initial inputs).
        optimizer: optax optimizer for the inputs (default ``optax.adam(0.05)``).
        x: optional (m, d) initial inputs instead of random N(0, I_d) ones.

    Returns:
        (x~ (m, d), y~ (m,)).

    Example:
        >>> import jax
        >>> from jdd.tasks import multi_index
        >>> task = multi_index(jax.random.key(0), d=10, r=2, n=2000)
        >>> net = two_phase(16)
        >>> p = net.phase1(net.init(jax.random.key(1), 10), task.x, task.y)
        >>> a = net.phase2(p, task.x, task.y).a
        >>> xs, ys = d2_compact(jax.random.key(2), net, p, a, m=4, x_ref=task.x, steps=50)
        >>> xs.shape, ys.shape
        ((4, 10), (4,))
    """
    optimizer = optimizer or optax.adam(0.05)
    if x is None:
        x = jax.random.normal(key, (m, params.W.shape[1]), params.W.dtype)
    phi_r = learner.features(params, x_ref)
    f_target = phi_r @ a_target                       # the teacher's outputs on x_ref

    def loss(xs):
        # ||a_S - a*||_Sigma^2 = mean_x (phi(x).(a_S - a*))^2, minimised over a_S in the row space
        # of Phi_S: the residual of projecting f_target on the columns of phi_r Phi_S^T (by QR,
        # which avoids squaring the condition number).
        q, _ = jnp.linalg.qr(phi_r @ learner.features(params, xs).T)
        resid = f_target - q @ (q.T @ f_target)
        return jnp.sum(resid ** 2) / jnp.sum(f_target ** 2)

    def body(carry, _):
        xs, opt_state = carry
        g = jax.grad(loss)(xs)
        updates, opt_state = optimizer.update(g, opt_state, xs)
        return (optax.apply_updates(xs, updates), opt_state), None

    if steps:
        (x, _), _ = jax.lax.scan(body, (x, optimizer.init(x)), None, length=steps)
    phi_s = learner.features(params, x)
    c = jnp.linalg.lstsq(phi_r @ phi_s.T, f_target)[0]
    return x, _labels_for(phi_s, c, learner.reg)


class Reconstruction(NamedTuple):
    """How much of the teacher a D2^S reconstructs (see :func:`reconstruction`).

    Attributes:
        mse: () test MSE of the network with the D2^S readout.
        mse_pct: () 100 (MSE_0 - mse) / (MSE_0 - MSE_teacher), MSE_0 = the MSE of a zero readout.
        rank: () numerical rank of the D2^S feature matrix.
        rank_pct: () 100 rank / L (the width: the maximal attainable rank of the readout's span).
        weight_err: () ||a_S - a_teacher|| / ||a_teacher||.
    """

    mse: jax.Array
    mse_pct: jax.Array
    rank: jax.Array
    rank_pct: jax.Array
    weight_err: jax.Array


def reconstruction(learner: TwoPhase, params: TwoLayer, a_teacher: jax.Array, xs: jax.Array,
                   ys: jax.Array, x_test: jax.Array, y_test: jax.Array) -> Reconstruction:
    """Reconstruction percentages of a D2^S set against the teacher readout.

    Args:
        learner: the learner.
        params: the network after phase 1.
        a_teacher: (L,) teacher readout (ridge on real data with these features).
        xs, ys: the D2^S set, (m, d) and (m,).
        x_test, y_test: held-out data, (n, d) and (n,).

    Returns:
        A :class:`Reconstruction`.
    """
    student = learner.phase2(params, xs, ys)
    teacher = params._replace(a=a_teacher)
    mse = learner.mse(student, x_test, y_test)
    mse_t = learner.mse(teacher, x_test, y_test)
    mse_0 = jnp.mean(y_test ** 2)
    rank = jnp.linalg.matrix_rank(learner.features(params, xs))
    return Reconstruction(
        mse=mse, mse_pct=100.0 * (mse_0 - mse) / (mse_0 - mse_t), rank=rank,
        rank_pct=100.0 * rank / params.W.shape[0],
        weight_err=jnp.linalg.norm(student.a - a_teacher) / jnp.linalg.norm(a_teacher))


def memory_floats(*arrays) -> int:
    """Number of floats stored by the given arrays / pytrees (the memory of a distilled set)."""
    return sum(num_params(a) for a in arrays)


__all__ = ["D1State", "Reconstruction", "TwoLayer", "TwoPhase", "apply", "d1_gradient_matching",
           "d2_compact", "d2_rank_certify", "features", "first_layer_grad", "gradient_error",
           "init_two_layer", "memory_floats", "reconstruction", "relu_surrogate", "ridge",
           "two_phase"]
