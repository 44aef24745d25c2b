"""The Distiller abstraction, the generic bilevel distiller, and the (seed-vmapped) run loop.

Every method in jdd is a :class:`Distiller`: a NamedTuple of three pure functions built by a
factory, in the style of optax's ``GradientTransformation``:

* ``init(key, data) -> state``: make the learnable synthetic set (and its optimizer state);
* ``step(state, key, data) -> (state, metrics)``: one outer update;
* ``synthetic(state) -> Synthetic``: the distilled set as a learner consumes it.

Real data is an explicit argument of ``step`` rather than a constant closed over by the factory:
that keeps large datasets out of the compiled program and lets ``jax.vmap`` broadcast one copy of
the data across seeds (``in_axes=(0, 0, None)``). Everything is written for ONE seed; batching over
seeds is a ``jax.vmap`` at the call site, which :func:`distill` does for you.

:func:`bilevel` is the general task-specific form (Kungurtsev et al. 2024): the user supplies an
inner learner ``fit(params, key) -> model`` and an outer objective ``outer_loss(model, batch, params,
key)``; the distiller differentiates the outer objective through the inner fit. Classification DD by
unrolled training (:func:`jdd.distill.unrolled`) is one instance of it.
"""

from __future__ import annotations

import contextlib
import functools
import math
import signal
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

PRNGKey = jax.Array
Metrics = dict


@struct.dataclass
class Synthetic:
    """A distilled set, as a learner consumes it.

    Attributes:
        x: (m, *feature_shape) float32 synthetic inputs (in the preprocessed space of the data).
        y: (m, k) float32 targets: class probabilities (soft labels) for cross-entropy learners,
            regression targets for kernel ridge regression.
        lr: () float32 learned inner learning rate, or NaN when the method learns none.
    """

    x: Any
    y: Any
    lr: Any = struct.field(default_factory=lambda: jnp.float32(jnp.nan))


class Distiller(NamedTuple):
    """A distillation method: a NamedTuple of pure functions (see the module docstring).

    Attributes:
        init: ``(key, data) -> state``.
        step: ``(state, key, data) -> (state, metrics)``; metrics is a dict of scalars.
        synthetic: ``state -> Synthetic``.
        stored: ``state -> {name: array}``: the arrays that store the synthetic inputs when
            they are not the decoded inputs (low-rank factors), for byte counts and for saving
            beside the decoded set; None: the inputs are stored as decoded.
    """

    init: Callable[[PRNGKey, Any], Any]
    step: Callable[[Any, PRNGKey, Any], tuple[Any, Metrics]]
    synthetic: Callable[[Any], Synthetic]
    stored: Callable[[Any], dict] | None = None


class BilevelState(NamedTuple):
    """State of :func:`bilevel`: learnable params (any pytree), optax state, step counter."""

    params: Any
    opt_state: Any
    step: jax.Array


def sample_rows(key: PRNGKey, data: Any, batch_size: int) -> Any:
    """A random batch of ``batch_size`` rows (without replacement) from every leaf of ``data``.

    Every leaf must share the leading axis. Works under jit and vmap (static ``batch_size``).
    """
    leaves = jax.tree.leaves(data)
    n = leaves[0].shape[0]
    if batch_size >= n:
        return data
    idx = jax.random.choice(key, n, (batch_size,), replace=False)
    return jax.tree.map(lambda a: a[idx], data)


def bilevel(init_params: Callable[[PRNGKey, Any], Any],
            fit: Callable[[Any, PRNGKey], Any],
            outer_loss: Callable[[Any, Any, Any, PRNGKey], Any],
            optimizer: optax.GradientTransformation,
            *,
            batch_size: int | None = None,
            sample_batch: Callable[[PRNGKey, Any], Any] | None = None,
            to_synthetic: Callable[[Any], Synthetic] | None = None,
            project: Callable[[Any], Any] | None = None) -> Distiller:
    """General bilevel (task-specific) dataset distillation.

    Solves ``min_params E_batch[ outer_loss(fit(params), batch) ]`` by gradient descent, where
    ``fit`` is any differentiable inner learner (closed form, or unrolled training by
    :func:`jdd.train.fit`) and ``outer_loss`` is the downstream task's loss on real data.

    Args:
        init_params: ``(key, data) -> params``: the learnable pytree (synthetic inputs, labels,
            hyperparameters such as a log learning rate).
        fit: ``(params, key) -> model``: the inner learner, differentiable in ``params``.
        outer_loss: ``(model, batch, params, key) -> loss`` or ``-> (loss, metrics_dict)``: scalar
            outer objective on a batch of real data (lower is better).
        optimizer: optax transformation for the outer update.
        batch_size: real rows per outer step (with the default sampler); None uses all data.
        sample_batch: ``(key, data) -> batch``; default samples ``batch_size`` rows of every leaf.
        to_synthetic: ``params -> Synthetic`` (default: the params themselves).
        project: ``params -> params`` applied after each update (constraints, clipping).

    Returns:
        A :class:`Distiller` whose metrics contain ``"loss"`` (the outer loss before the update)
        and ``"grad_norm"``, plus any metrics ``outer_loss`` returns.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> data = {"x": jnp.linspace(-1, 1, 64)[:, None]}
        >>> data["y"] = 3.0 * data["x"]
        >>> d = bilevel(lambda k, _: {"xs": jnp.ones((2, 1)), "ys": jnp.zeros((2, 1))},
        ...             lambda p, k: jnp.linalg.lstsq(p["xs"], p["ys"])[0],
        ...             lambda w, b, p, k: jnp.mean((b["x"] @ w - b["y"]) ** 2),
        ...             optax.adam(0.1), batch_size=16)
        >>> s = d.init(jax.random.key(0), data)
        >>> s, m = d.step(s, jax.random.key(1), data)
    """
    if sample_batch is None:
        if batch_size is None:
            sample_batch = lambda key, data: data  # noqa: E731
        else:
            sample_batch = lambda key, data: sample_rows(key, data, batch_size)  # noqa: E731
    to_synthetic = to_synthetic or (lambda p: p)

    def init(key, data):
        params = init_params(key, data)
        return BilevelState(params=params, opt_state=optimizer.init(params),
                            step=jnp.zeros((), jnp.int32))

    def objective(params, key, batch):
        k_fit, k_out = jax.random.split(key)
        model = fit(params, k_fit)
        out = outer_loss(model, batch, params, k_out)
        if isinstance(out, tuple):
            return out[0], dict(out[1])
        return out, {}

    def step(state, key, data):
        k_batch, k_obj = jax.random.split(key)
        batch = sample_batch(k_batch, data)
        (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(state.params, k_obj, batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if project is not None:
            params = project(params)
        metrics = {"loss": loss, "grad_norm": optax.tree_utils.tree_norm(grads), **aux}
        return BilevelState(params, opt_state, state.step + 1), metrics

    def synthetic(state):
        return to_synthetic(state.params)

    return Distiller(init=init, step=step, synthetic=synthetic)


def scan_steps(distiller: Distiller, state: Any, key: PRNGKey, data: Any, n: int):
    """Run ``n`` (static) steps of ONE seed with ``lax.scan``.

    Step ``i`` uses ``jax.random.fold_in(key, state.step + i)``-style keys so a run split into
    chunks gives the same bytes as one long run.

    Returns:
        (state, metrics) with every metric stacked to shape (n,).
    """

    def body(s, _):
        k = jax.random.fold_in(key, _step_of(s))
        return distiller.step(s, k, data)

    return jax.lax.scan(body, state, None, length=n)


def _step_of(state) -> jax.Array:
    step = getattr(state, "step", None)
    if step is None:
        raise TypeError("a Distiller state must expose an integer `step` field for the run loop")
    return step


class RunResult(NamedTuple):
    """Output of :func:`distill`.

    Attributes:
        state: final state (leading seed axis when several keys were given).
        synthetic: the distilled :class:`Synthetic` set (leading seed axis likewise).
        history: dict of metric name -> (num_logged,) or (seeds, num_logged) numpy arrays: each
            entry is the mean of that metric over one logging chunk.
        steps_logged: (num_logged,) int step index at the end of each chunk.
        seconds: wall-clock seconds spent in distillation (compilation included).
    """

    state: Any
    synthetic: Synthetic
    history: dict
    steps_logged: np.ndarray
    seconds: float


def distill(distiller: Distiller, key: PRNGKey, data: Any, steps: int, *,
            log_every: int = 50, progress: bool = True, desc: str = "distill",
            state: Any = None, checkpoints: Any = None,
            prior: tuple[dict, list] | None = None, mesh: Any = None) -> RunResult:
    """Initialise and run a distiller, for one seed or many seeds in one vmapped computation.

    ``key`` is a single PRNG key (one seed) or a stack of keys with shape (seeds,) (typed keys) or
    (seeds, 2) (raw uint32 keys): then ``init`` and every chunk of steps are ``jax.vmap``-ed over the
    seed axis with the real data broadcast, so S seeds cost one compiled computation.

    Steps run in jitted ``lax.scan`` chunks of ``log_every`` steps; between chunks a progress bar
    (tqdm) shows step, loss and ETA. ``progress=False`` silences it.

    A run continues from the ``state`` of an earlier result with the same ``key``: ``steps``
    more steps then give the same bytes as one run of the summed length (step keys fold in the
    state's step counter), so a sweep can score a set at several lengths of one run.

    Args:
        distiller: the method.
        key: PRNG key or stacked keys (see above).
        data: real data (a Dataset or any pytree the distiller's step accepts).
        steps: total number of outer steps.
        log_every: steps per jitted chunk (and per history entry).
        progress: show a progress bar.
        desc: progress bar label.
        state: continue from this state (``RunResult.state`` of a run with the same ``key``,
            distiller and data) instead of initialising; ``None`` initialises.
        checkpoints: a :class:`jdd.checkpoint.RunCheckpoints`: the state is saved when a
            checkpoint is due after a chunk, and once more when SIGINT/SIGTERM arrives (the last
            completed chunk's state) before the interrupt propagates. Only finite states are
            saved. In a multi-process job the processes agree after each chunk whether any of
            them got a signal, and stop (and save) together.
        prior: ``(history, steps_logged)`` of the run ``state`` continues (as
            :meth:`jdd.checkpoint.RunCheckpoints.restore` returns them): the result's history
            then covers the whole run.
        mesh: a ``jax.sharding.Mesh`` with axes ``("seeds", "data")``
            (:func:`jdd.mesh.make_mesh`): the seeds' states and keys are placed along
            ``"seeds"`` and the real data's examples along ``"data"``; XLA partitions the
            jitted chunks accordingly. None: jax's default placement (one device).

    Raises:
        FloatingPointError: the loss or the state became NaN/inf; the message names the step
            (the chunk's steps for the state) and the likely causes. Nothing is checkpointed
            from that chunk on.

    Returns:
        A :class:`RunResult` (``history`` and ``steps_logged`` cover this call's steps;
        ``steps_logged`` counts from the state's step).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0; got {steps}")
    batched = _is_key_batch(key)
    log_every = max(1, min(int(log_every), max(steps, 1)))

    if batched:
        run_keys = jax.vmap(lambda k: jax.random.split(k)[1])(key)
        init_keys = jax.vmap(lambda k: jax.random.split(k)[0])(key)
    else:
        init_keys, run_keys = jax.random.split(key)

    t0 = time.perf_counter()
    if mesh is not None:
        from jdd.mesh import put_data, put_seeds
        if not batched and dict(mesh.shape)["seeds"] != 1:
            raise ValueError(f"mesh: one key (one seed) needs a seeds axis of 1; got "
                             f"{dict(mesh.shape)}")
        data = put_data(data, mesh)
        if batched:
            init_keys, run_keys = put_seeds(init_keys, mesh), put_seeds(run_keys, mesh)
    if state is None:
        state = _compiled_init(distiller, batched)(init_keys, data)
        done = 0
    else:
        step = np.asarray(_fetch(_step_of(state)))
        if (step.ndim != 0) != batched or (batched and step.shape[0] != len(run_keys)):
            raise ValueError(f"state: its step counter has shape {step.shape}; expected "
                             + (f"({len(run_keys)},) for {len(run_keys)} keys" if batched
                                else "() for one key"))
        done = int(step.reshape(-1)[0])
    if mesh is not None and batched:
        state = put_seeds(state, mesh)
    n_full, rem = divmod(steps, log_every)
    chunks = [log_every] * n_full + ([rem] if rem else [])
    history: dict[str, list] = {k: list(v) for k, v in (prior[0] if prior else {}).items()}
    logged = list(prior[1]) if prior else []
    from jdd.console import raise_if_interrupted
    from jdd.rundir import signals_deferred
    bar = _progress_bar(steps, desc, progress)
    good = state                      # the newest state known to be finite
    # In a multi-process job every process must stop at the same chunk boundary (a process that
    # stops alone leaves the others waiting in a collective): signals are only recorded during
    # the loop, and after each chunk the processes agree on whether any of them got one.
    multi = jax.process_count() > 1
    agreed = []
    try:
        with signals_deferred() if multi else contextlib.nullcontext([]) as pending:
            for n in chunks:
                new, metrics, finite = _compiled_chunk(distiller, n, batched)(state, run_keys,
                                                                              data)
                metrics, finite = _fetch((metrics, finite))
                _check_finite(metrics, bool(np.all(finite)), done, n)
                state = good = new
                done += n
                logged.append(done)
                for name, v in metrics.items():
                    history.setdefault(name, []).append(np.mean(np.asarray(v), axis=-1))
                if bar is not None:
                    loss = np.mean(history["loss"][-1]) if "loss" in history else float("nan")
                    bar.set_postfix(loss=f"{loss:.4g}")
                    bar.update(n)
                if checkpoints is not None and checkpoints.due(done):
                    with signals_deferred():
                        checkpoints.save(good, history, logged)
                if multi:
                    _stop_together(pending, agreed)
                else:
                    raise_if_interrupted()  # the `jdd` command's signal, if its interrupt was lost
    except KeyboardInterrupt:
        # (multi-process: only an interrupt every process raised together writes a checkpoint)
        if checkpoints is not None and (agreed or not multi):
            with signals_deferred():
                _save_on_interrupt(checkpoints, good, history, logged)
        raise
    finally:
        if bar is not None:
            bar.close()
    jax.block_until_ready(state)
    seconds = time.perf_counter() - t0
    synth_fn = jax.vmap(distiller.synthetic) if batched else distiller.synthetic
    synthetic = jax.jit(synth_fn)(state)
    if jax.process_count() > 1:        # gathered to every process (the state stays global)
        synthetic = _fetch(synthetic)
    hist = {k: np.stack(v, axis=-1) for k, v in history.items()}
    return RunResult(state, synthetic, hist, np.asarray(logged, np.int64), seconds)


@functools.lru_cache(maxsize=64)
def _compiled_chunk(distiller: Distiller, n: int, batched: bool):
    """Jitted ``n``-step chunk (vmapped over seeds when ``batched``), cached per distiller so
    repeated :func:`distill` calls with the same distiller reuse jax's compilation cache."""
    def f(s, k, d):
        s, metrics = scan_steps(distiller, s, k, d, n)
        return s, metrics, _all_finite(s)

    if batched:
        f = jax.vmap(f, in_axes=(0, 0, None))
    return jax.jit(f)


@functools.lru_cache(maxsize=64)
def _compiled_init(distiller: Distiller, batched: bool):
    init = jax.vmap(distiller.init, in_axes=(0, None)) if batched else distiller.init
    return jax.jit(init)


def _fetch(tree):
    """Host copies (gathered across processes in a multi-process job)."""
    if jax.process_count() > 1:
        from jdd.mesh import fetch
        return fetch(tree)
    return jax.device_get(tree)


def _all_finite(state) -> jax.Array:
    """() bool: every floating leaf of ``state`` is finite."""
    flags = [jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(state)
             if jnp.issubdtype(jnp.asarray(a).dtype, jnp.inexact)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


_CAUSES = ("lower the outer learning rate (--lr, --lr-img), the initial inner learning rate, "
           "or the number of inner steps; with learned soft labels, a smaller label "
           "initialisation (a sharper label temperature) can overflow too")


def _check_finite(metrics: dict, state_finite: bool, done: int, n: int) -> None:
    """Raise FloatingPointError naming the first step whose loss is NaN/inf (steps ``done + 1 ..
    done + n`` just ran), or the chunk whose final state is not finite."""
    loss = metrics.get("loss")
    if loss is not None:
        bad = ~np.isfinite(np.asarray(loss)).reshape(-1, n).all(axis=0)     # per step
        if bad.any():
            step = done + 1 + int(np.argmax(bad))
            raise FloatingPointError(f"the outer loss became NaN/inf at step {step}; {_CAUSES}.")
    if not state_finite:
        raise FloatingPointError(f"the synthetic set (or the method's state) became NaN/inf "
                                 f"during steps {done + 1}..{done + n}; {_CAUSES}.")


def _stop_together(pending: list, agreed: list) -> None:
    """Multi-process runs, after each chunk: raise, in every process at once, the interrupt that
    any process received during the chunk (SIGTERM before SIGINT), so that all of them write the
    same last checkpoint. ``pending``: this process's signals (emptied when acted on); ``agreed``
    gets True appended when the processes stop together."""
    from jax.experimental import multihost_utils
    from jdd.console import Terminated
    mine = np.asarray(pending[0] if pending else 0, np.int32)
    got = {int(v) for v in np.ravel(multihost_utils.process_allgather(mine))} - {0}
    if got:
        pending.clear()
        agreed.append(True)
        e = Terminated() if int(signal.SIGTERM) in got else KeyboardInterrupt()
        e.together = True      # the command leaves through a shutdown barrier (jdd.cli.main)
        raise e


def _save_on_interrupt(checkpoints, state, history, logged) -> None:
    """The last checkpoint when a signal arrives: the newest finite state (never a cut chunk)."""
    import sys
    step = checkpoints.save(state, history, logged)
    if jax.process_index() == 0:
        print(f"\ninterrupted: checkpoint of step {step} written to {checkpoints.folder}",
              file=sys.stderr, flush=True)


def _is_key_batch(key) -> bool:
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key.ndim == 1
    return key.ndim == 2


def _progress_bar(total: int, desc: str, enabled: bool):
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, leave=True)


def seed_keys(seed: int, seeds: int) -> jax.Array:
    """(seeds,) typed PRNG keys for ``seeds`` independent runs derived from one integer seed."""
    return jax.random.split(jax.random.key(seed), seeds)


def num_params(tree) -> int:
    """Number of scalars in a pytree (e.g. the storage of a distilled set)."""
    return int(sum(math.prod(np.shape(x)) for x in jax.tree.leaves(tree)))


def init_per_class(key: PRNGKey, data, ipc: int):
    """Jittable draw of ``ipc`` distinct real examples per class (class-major order).

    Every class must hold at least ``ipc`` examples; check that host-side first with
    :func:`jdd.data.check_ipc` (this function cannot raise inside jit).

    Args:
        key: PRNG key.
        data: a :class:`jdd.data.Dataset`.
        ipc: examples per class (static).

    Returns:
        (x (k * ipc, *feature_shape), y (k * ipc,) int32).
    """
    k = data.num_classes
    u = jax.random.uniform(key, (data.y.shape[0],))
    classes = jnp.arange(k)[:, None]
    scores = jnp.where(data.y[None, :] == classes, u[None, :], -1.0)
    _, idx = jax.lax.top_k(scores, ipc)
    idx = idx.reshape(-1)
    return data.x[idx], data.y[idx]
