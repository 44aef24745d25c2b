"""Checkpoints of long runs (orbax-checkpoint), so that a killed or preempted ``jdd distill``
continues where it stopped and ends with the same bytes as an uninterrupted run.

A run with ``--checkpoint-every N`` keeps its checkpoints in a folder beside its output,
``OUT.ckpt/`` (the output folder itself only ever holds a finished run, :mod:`jdd.rundir`):

* ``identity.json``: what the checkpoints belong to: the method, every option that changes the
  result (the resolved config less output-only options such as ``out``, ``quiet``,
  ``log_every``), the jdd version, and a SHA-256 fingerprint of the (preprocessed) training data;
* ``config.yaml``: the resolved options, which ``jdd distill --resume OUT`` runs again;
* ``<step>/``: orbax checkpoints (the newest two) of the whole distiller state, seeds included,
  with the loss history so far.

A checkpoint is written at the end of the chunk of steps (``--log-every``) in which ``N`` steps
have passed since the last one, and once more when SIGTERM or SIGINT arrives (the state of the
last completed chunk: compiled chunks are never cut). Only a state whose loss and synthetic set
are finite is ever written, so a run that diverges leaves its last good checkpoint. When the run
finishes and its folder is written, the checkpoints are removed.

Multi-process jobs (:mod:`jdd.mesh`): ``OUT.ckpt`` must be on a filesystem that every process
sees. Every process saves its own shards of each checkpoint (orbax coordinates them); process 0
writes ``identity.json`` / ``config.yaml`` and removes the folder at the end. A signal to any one
process stops every process at the same chunk boundary (:func:`jdd.distill.core.distill` agrees
on it after each chunk), so that they all write the same last checkpoint.

Step keys fold in the state's own step counter (:func:`jdd.distill.core.scan_steps`), so the
steps after a restore are the same computation as in an uninterrupted run: the final set is
byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Any

import numpy as np

#: Options that do not change a run's result (and may differ on resume).
OUTPUT_ONLY = ("out", "overwrite", "quiet", "log_every", "checkpoint_every", "eval",
               "n_models", "full_data_models", "data_dir", "mesh")


class CheckpointError(ValueError):
    """Checkpoints that cannot be used: the message says whose they are and what differs."""


def data_fingerprint(*arrays) -> str:
    """SHA-256 over the shapes, dtypes and bytes of ``arrays`` (the training inputs and labels)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def identity(resolved: dict, fingerprint: str | None) -> dict:
    """The identity of a run's checkpoints: its result-changing options and data."""
    from jdd import __version__
    opts = {k: v for k, v in resolved.items() if k not in OUTPUT_ONLY}
    return {"jdd": __version__, "options": opts, "data_sha256": fingerprint}


def folder_of(out: str) -> str:
    """The checkpoint folder of a run writing to ``out``."""
    return os.path.abspath(out).rstrip(os.sep) + ".ckpt"


def _differences(want: dict, have: dict) -> list[str]:
    out = []
    for k in sorted(set(want) | set(have)):
        if want.get(k) != have.get(k):
            out.append(f"{k}: checkpointed {have.get(k)!r}, now {want.get(k)!r}")
    return out


class RunCheckpoints:
    """The checkpoints of one run (see the module docstring).

    Args:
        folder: ``OUT.ckpt``.
        every: steps between checkpoints (None: only the one written when a signal arrives).
        max_to_keep: newest checkpoints kept.
    """

    def __init__(self, folder: str, every: int | None, max_to_keep: int = 2):
        self.folder = os.path.abspath(folder)
        self.every = every
        self.max_to_keep = max_to_keep
        self._mgr = None
        self._last = None

    # ------------------------------------------------------------------ identity

    def exists(self) -> bool:
        """Whether the folder holds checkpoints of some run."""
        return os.path.isfile(os.path.join(self.folder, "identity.json"))

    def read_identity(self) -> dict:
        path = os.path.join(self.folder, "identity.json")
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{self.folder}: identity.json could not be read ({e}); the "
                                  "folder is not a jdd checkpoint folder or is damaged") from None

    def check_options(self, ident: dict) -> None:
        """Refuse checkpoints of another method or other options (before any data is loaded).

        Raises:
            CheckpointError: naming each option that differs.
        """
        have = self.read_identity()
        diff = _differences(ident["options"], have.get("options", {}))
        if diff:
            raise CheckpointError(f"{self.folder} holds checkpoints of a different run ("
                                  + "; ".join(diff[:6]) + ("; ..." if len(diff) > 6 else "")
                                  + "); resume it with its own options, or remove the folder")

    def check_data(self, fingerprint: str) -> None:
        """Refuse checkpoints made on other training data.

        Raises:
            CheckpointError: the data fingerprints differ.
        """
        have = self.read_identity().get("data_sha256")
        if have is not None and have != fingerprint:
            raise CheckpointError(f"{self.folder}: the checkpoints were made on other training "
                                  f"data (SHA-256 {have[:12]}..., now {fingerprint[:12]}...); "
                                  "the dataset files or the preprocessing changed")

    def start(self, ident: dict, config_text: str) -> None:
        """Create the folder for a new run (any old checkpoints must have been removed). In a
        multi-process job process 0 writes it and every process waits until it has."""
        from jdd.artifacts import atomic_write
        if _primary():
            os.makedirs(self.folder, exist_ok=True)
            with atomic_write(os.path.join(self.folder, "config.yaml"), "w") as f:
                f.write(config_text)
            with atomic_write(os.path.join(self.folder, "identity.json"), "w") as f:
                json.dump(ident, f, indent=1)
        _barrier("jdd-checkpoints-started")

    def remove(self) -> None:
        """Delete the folder (the run finished; in a multi-process job, process 0 does)."""
        if _primary():
            shutil.rmtree(self.folder, ignore_errors=True)

    # ------------------------------------------------------------------ state

    def _manager(self):
        if self._mgr is None:
            import orbax.checkpoint as ocp
            self._mgr = ocp.CheckpointManager(
                os.path.join(self.folder, "steps"),
                options=ocp.CheckpointManagerOptions(max_to_keep=self.max_to_keep,
                                                     enable_async_checkpointing=False))
        return self._mgr

    def latest_step(self) -> int | None:
        """The newest checkpoint's step, or None."""
        if not os.path.isdir(os.path.join(self.folder, "steps")):
            return None
        return self._manager().latest_step()

    def due(self, step: int) -> bool:
        """Whether a checkpoint is due at ``step`` (``every`` steps since the last one)."""
        if self.every is None:
            return False
        last = self._last if self._last is not None else (self.latest_step() or 0)
        return step - last >= self.every

    def save(self, state: Any, history: dict, logged: list) -> int:
        """Write ``state`` (with the history so far) as the checkpoint of its step.

        Returns:
            The step written.
        """
        import orbax.checkpoint as ocp
        from jdd.distill.core import _step_of
        step = _first(_step_of(state))
        hist = {"steps_logged": [int(s) for s in logged],
                "history": {k: np.stack(v, axis=-1).tolist() for k, v in history.items() if v}}
        mgr = self._manager()
        if step in mgr.all_steps():
            self._last = step
            return step
        mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               history=ocp.args.JsonSave(hist)))
        mgr.wait_until_finished()
        self._last = step
        return step

    def restore(self, template: Any) -> tuple[Any, dict, list]:
        """The newest checkpoint: ``(state, history, steps_logged)``.

        Args:
            template: a state of the same structure (e.g. the distiller's ``init`` output, or its
                ``jax.eval_shape``), giving shapes, dtypes and the pytree types.

        Raises:
            CheckpointError: no checkpoint, or one whose arrays do not fit the template.
        """
        import jax
        import orbax.checkpoint as ocp
        step = self.latest_step()
        if step is None:
            raise CheckpointError(f"{self.folder}: no checkpoint was written yet (the run "
                                  "stopped before its first one); start it again")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        try:
            got = self._manager().restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), history=ocp.args.JsonRestore()))
        except Exception as e:  # orbax raises many kinds for a mismatched tree
            raise CheckpointError(f"{self.folder}: checkpoint {step} does not fit this run's "
                                  f"state ({type(e).__name__}: {str(e)[:200]})") from None
        hist = got["history"]
        history = {k: [np.asarray(v)[..., i] for i in range(np.asarray(v).shape[-1])]
                   for k, v in hist["history"].items()}
        self._last = step
        return got["state"], history, list(hist["steps_logged"])


def _primary() -> bool:
    """Whether this process writes the checkpoint folder's own files (process 0 of a job)."""
    import jax
    return jax.process_index() == 0


def _barrier(name: str) -> None:
    """Wait for every process of a multi-process job (a no-op in a single process)."""
    import jax
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def _first(a) -> int:
    """The first element of an integer array (the seeds' shared step counter) as an int, read
    from this process's own shard (a global array may not be fully addressable)."""
    import jax
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
        a = a.addressable_shards[0].data
    return int(np.asarray(jax.device_get(a)).reshape(-1)[0])


__all__ = ["CheckpointError", "OUTPUT_ONLY", "RunCheckpoints", "data_fingerprint", "folder_of",
           "identity"]
