"""Where work runs: one device mesh (``jax.sharding``) with two named axes.

* ``"seeds"``: the independent distillations of a run (the leading axis of every vmapped state,
  key and synthetic set) are split across it; the seeds never talk to each other, so this axis
  costs no communication;
* ``"data"``: the real training set's examples (its leading axis) are split across it, and XLA
  partitions what reads them (real batches, KIP/KRR kernel blocks against the data) with the
  collectives it needs.

The synthetic set of a seed lives with its seed (replicated over ``"data"``). ``--mesh auto``
(the default) uses every device: as many on ``"seeds"`` as divide the number of seeds, the rest
on ``"data"`` (when the training set divides evenly; else those devices idle and the run says
so). ``--mesh seeds=S,data=D`` names the shape; ``S * D`` must equal the devices used, ``S`` must
divide the seeds and ``D`` the training examples: otherwise one clear error before any work.

A sharded run computes what the single-device run computes: seeds exactly, data-sharded
reductions up to float reassociation (tested with 8 host devices:
``XLA_FLAGS=--xla_force_host_platform_device_count=8``).

Multiple processes (hosts): :func:`initialize` joins a multi-process job described by the
environment (``JDD_COORDINATOR`` ``host:port`` with ``JDD_NUM_PROCESSES`` and ``JDD_PROCESS_ID``;
or SLURM with more than one task, Open MPI, or ``JAX_COORDINATOR_ADDRESS``, which
``jax.distributed.initialize()`` reads itself). The mesh then spans every process's devices;
arrays are assembled from each process's identical copy of the data
(:func:`jax.make_array_from_callback`), results are gathered to every process
(:func:`fetch`), and only process 0 writes files and draws progress (:func:`is_writer`). On CPU
the processes talk through gloo.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("seeds", "data")


class MeshError(ValueError):
    """A mesh that cannot place a run: the message says what was expected."""


class MeshSpec(NamedTuple):
    """A requested mesh shape: ``seeds`` x ``data`` devices (None: chosen automatically)."""

    seeds: int | None = None
    data: int | None = None


def parse(text: str | None) -> MeshSpec:
    """``"auto"`` / None, ``"seeds=4,data=2"``, ``"4x2"`` -> :class:`MeshSpec`.

    Raises:
        MeshError: anything else, naming the accepted forms.
    """
    if text is None or text.strip().lower() in ("", "auto"):
        return MeshSpec()
    t = text.replace(" ", "").lower()
    vals: dict[str, int] = {}
    try:
        if "=" in t:
            for part in t.split(","):
                k, v = part.split("=")
                if k not in AXES or k in vals:
                    raise ValueError
                vals[k] = int(v)
        else:
            s, d = t.split("x")
            vals = {"seeds": int(s), "data": int(d)}
        if any(v < 1 for v in vals.values()):
            raise ValueError
    except ValueError:
        raise MeshError(f"--mesh {text}: expected auto, seeds=S,data=D (either may be left "
                        "out) or SxD, with positive integers") from None
    return MeshSpec(vals.get("seeds"), vals.get("data"))


def make_mesh(spec: MeshSpec | str | None, seeds: int, n_data: int | None = None,
              devices=None) -> tuple[Mesh, list[str]]:
    """The mesh of a run with ``seeds`` seeds on ``n_data`` training examples.

    Args:
        spec: the requested shape (or its text, see :func:`parse`).
        seeds: the run's number of seeds.
        n_data: training examples (None: not known yet; the data axis is then only checked
            against the devices).
        devices: devices to use (default ``jax.devices()``, every process's).

    Returns:
        ``(mesh, notes)``: the mesh (axes ``("seeds", "data")``) and one-line notes about
        devices left idle.

    Raises:
        MeshError: a shape that does not fit the devices, the seeds or the data.
    """
    if not isinstance(spec, MeshSpec):
        spec = parse(spec)
    devices = list(jax.devices() if devices is None else devices)
    n_dev = len(devices)
    notes = []
    s, d = spec.seeds, spec.data
    if s is None and d is None:
        s = math.gcd(seeds, n_dev)
        d = n_dev // s
        if n_data is not None and d > 1 and n_data % d:
            notes.append(f"--mesh auto: {n_data} training examples do not split over {d} "
                         f"devices; {n_dev - s} device(s) idle (pass --mesh seeds=S,data=D)")
            d = 1
        elif s * d < n_dev:
            notes.append(f"--mesh auto: {n_dev - s * d} device(s) idle")
    elif s is None:
        s = max(1, n_dev // d)
    elif d is None:
        d = max(1, n_dev // s)
    if s * d > n_dev:
        raise MeshError(f"--mesh seeds={s},data={d}: needs {s * d} devices; {n_dev} available")
    if seeds % s:
        raise MeshError(f"--mesh seeds={s}: the {seeds} seeds do not split over {s} devices; "
                        f"expected a seeds axis that divides --seeds (e.g. {math.gcd(seeds, s)})")
    if n_data is not None and n_data % d:
        raise MeshError(f"--mesh data={d}: the {n_data} training examples do not split over "
                        f"{d} devices; expected a data axis that divides them")
    grid = np.asarray(devices[:s * d], dtype=object).reshape(s, d)
    return Mesh(grid, AXES), notes


def describe(mesh: Mesh) -> str:
    """``"seeds=4 x data=2 (8 cpu devices)"``."""
    shape = dict(mesh.shape)
    kind = mesh.devices.flat[0].platform
    return f"seeds={shape['seeds']} x data={shape['data']} ({mesh.devices.size} {kind} devices)"


def seed_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis along ``"seeds"``, the rest replicated."""
    return NamedSharding(mesh, P("seeds"))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis along ``"data"``, replicated over ``"seeds"``."""
    return NamedSharding(mesh, P("data"))


def _place(a, sharding):
    """``a`` (the same value in every process) as a global array with ``sharding``; typed PRNG
    keys travel as their raw data."""
    if not hasattr(a, "shape"):
        return a
    if isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
        impl = jax.random.key_impl(a)
        raw = _place(jax.random.key_data(a), sharding)
        return jax.random.wrap_key_data(raw, impl=impl)
    if isinstance(a, jax.Array) and a.is_fully_addressable is False:
        return a                                   # already global
    host = np.asarray(a)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def put_seeds(tree: Any, mesh: Mesh) -> Any:
    """Place every array leaf of a vmapped (seeds-leading) pytree along ``"seeds"``."""
    sh = seed_sharding(mesh)
    return jax.tree.map(lambda a: _place(a, sh) if hasattr(a, "shape") and np.ndim(a) >= 1
                        else a, tree)


def put_data(data: Any, mesh: Mesh) -> Any:
    """Place the real data's example axis along ``"data"`` (leaves whose leading size is the
    example count; everything else replicated)."""
    leaves = [a for a in jax.tree.leaves(data) if hasattr(a, "shape") and np.ndim(a) >= 1]
    if not leaves:
        return data
    n = leaves[0].shape[0]
    sh, rep = data_sharding(mesh), NamedSharding(mesh, P())
    return jax.tree.map(lambda a: _place(a, sh if hasattr(a, "shape") and np.ndim(a) >= 1
                                         and a.shape[0] == n else rep), data)


def fetch(tree: Any) -> Any:
    """Host numpy copies of a pytree's arrays, gathered from every process when they are
    sharded across processes (``jax.device_get`` otherwise)."""
    def one(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            from jax.experimental import multihost_utils
            if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
                return jax.random.wrap_key_data(one(jax.random.key_data(a)),
                                                impl=jax.random.key_impl(a))
            return np.asarray(multihost_utils.process_allgather(a, tiled=True))
        return jax.device_get(a)
    return jax.tree.map(one, tree)


# ----------------------------------------------------------------------------- multiple processes

def initialize(environ=None) -> bool:
    """Join a multi-process job when the environment describes one (see the module docstring);
    returns whether it did. Call before anything touches a device.

    Raises:
        MeshError: ``JDD_COORDINATOR`` without integer ``JDD_NUM_PROCESSES`` /
            ``JDD_PROCESS_ID``.
    """
    import os
    env = os.environ if environ is None else environ
    if jax.distributed.is_initialized():
        return True
    explicit = env.get("JDD_COORDINATOR")
    many = (int(env.get("SLURM_NTASKS", "1") or 1) > 1
            or int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1
            or bool(env.get("JAX_COORDINATOR_ADDRESS")))
    if not explicit and not many:
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit:
        try:
            n, i = int(env["JDD_NUM_PROCESSES"]), int(env["JDD_PROCESS_ID"])
        except (KeyError, ValueError):
            raise MeshError("JDD_COORDINATOR is set: expected JDD_NUM_PROCESSES and "
                            "JDD_PROCESS_ID as integers too") from None
        jax.distributed.initialize(explicit, num_processes=n, process_id=i)
    else:
        jax.distributed.initialize()
    return True


def is_writer() -> bool:
    """Whether this process writes files and draws progress (process 0 of the job)."""
    return jax.process_index() == 0


__all__ = ["AXES", "MeshError", "MeshSpec", "data_sharding", "describe", "fetch", "initialize",
           "is_writer", "make_mesh", "parse", "put_data", "put_seeds", "seed_sharding"]
