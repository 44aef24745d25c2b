"""Run folders: one folder holds one run, whatever is interrupted or run at the same time.

* A run's files are written into a hidden staging folder beside ``--out``
  (``.NAME.staging-RUNID``) and moved into place as a whole when the run is complete: a run that
  dies (an exception, SIGINT, SIGTERM, even SIGKILL) leaves the folder exactly as it was.
* A lock file beside the folder (``.NAME.jdd-lock``: pid, host, command, start time) makes a second
  writer of the same folder fail at once with a message naming the first; a lock whose process is
  gone (SIGKILL) is taken over, and that run's staging folder removed.
* ``manifest.json`` ties every file to the run's id (size and SHA-256 of each); ``metrics.json``
  and the set's metadata carry the same id. Files added later (``jdd evaluate``'s ``eval-*.json``)
  are added to the manifest under the lock, only while the set they evaluated is still there.
* An existing run is replaced only with ``overwrite=True`` (``--overwrite``).
* Files and folders get the usual permissions (``0666`` / ``0777`` less the umask).

Plain file I/O (``os.rename`` within one folder is atomic on POSIX); no library offers the
staging-plus-lock-plus-manifest combination, hence this module.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import shutil
import signal
import socket
import threading
import time
import uuid

MANIFEST = "manifest.json"


class RunFolderError(Exception):
    """A run folder that cannot be used; the message says why and what to do."""


def umask() -> int:
    """The process umask (read without changing it for longer than one call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def usual_mode(path: str, folder: bool = False) -> None:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would: 0666 / 0777 less the umask."""
    os.chmod(path, (0o777 if folder else 0o666) & ~umask())


def sha256(path: str) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def new_run_id() -> str:
    """A unique, sortable run id: UTC time plus 8 random hex digits."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + \
        uuid.uuid4().hex[:8]


def _sibling(out: str, what: str) -> str:
    out = os.path.abspath(out)
    return os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.{what}")


def lock_path(out: str) -> str:
    """The lock file guarding the run folder ``out`` (beside it)."""
    return _sibling(out, "jdd-lock")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def signals_deferred():
    """Hold SIGINT and SIGTERM until the block ends, then act on the first one that came, as its
    handler would have; a rename pair or a clean-up is never cut in half. (Python-level handlers
    are swapped: blocking with ``pthread_sigmask`` would not do, since the signal may be
    delivered to one of XLA's threads.) A no-op off the main thread.

    Yields the list of signals received so far (empty off the main thread): a caller may act on
    them itself and empty the list, so that nothing more happens at the block's end.
    """
    got: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return
    old = {}
    for s in (signal.SIGINT, signal.SIGTERM):
        h = signal.getsignal(s)
        if h not in (signal.SIG_IGN, None):
            old[s] = h
            signal.signal(s, lambda signum, frame: got.append(signum))
    try:
        yield got
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if got:
            h = old[got[0]]
            if callable(h):
                h(got[0], None)
            else:  # SIG_DFL: the default action, now
                signal.raise_signal(got[0])


def acquire_lock(out: str, command: str, wait_s: float = 0.0) -> str:
    """Take the lock of run folder ``out`` for ``command``; return a token for
    :func:`release_lock`.

    Args:
        out: the run folder (need not exist; its parent is created).
        command: what holds the lock, shown to a second writer (e.g. ``"jdd distill"``).
        wait_s: how long to wait for a busy lock before giving up.

    Raises:
        RunFolderError: the lock is held by a live process (after ``wait_s``).
    """
    path = lock_path(out)

    def unwritable(e: OSError) -> RunFolderError:
        return RunFolderError(f"{out}: cannot write beside it in {os.path.dirname(path)} "
                              f"({e.strerror or e}); expected a writable folder")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    except OSError as e:
        raise unwritable(e) from None
    token = uuid.uuid4().hex
    info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
            "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "token": token}
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            fd = None
        except OSError as e:
            raise unwritable(e) from None
        if fd is not None:
            with os.fdopen(fd, "w") as f:
                json.dump(info, f)
            usual_mode(path)
            return token
        holder = _read_json(path)
        if holder is None:  # being written this instant, or garbage: look again
            with contextlib.suppress(OSError):
                if time.time() - os.path.getmtime(path) > 5:
                    _remove(path)
            time.sleep(0.05)
            continue
        if holder.get("host") == info["host"] and not _alive(int(holder.get("pid", -1))):
            _remove_stale(out, holder)  # its process is gone (SIGKILL): take over
            continue
        if time.monotonic() < deadline:
            time.sleep(0.2)
            continue
        raise RunFolderError(
            f"{out} is being written by another run ({holder.get('command', 'jdd')}, pid "
            f"{holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}); "
            f"wait for it to finish or choose another folder")


def release_lock(out: str, token: str) -> None:
    """Remove the lock of ``out`` if ``token`` still holds it."""
    path = lock_path(out)
    holder = _read_json(path)
    if holder is not None and holder.get("token") == token:
        _remove(path)


def _exchange(a: str, b: str) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system
    or the file system cannot (the caller falls back to two renames)."""
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _remove_stale(out: str, holder: dict) -> None:
    """A dead process's lock: put back a run it had moved aside (killed between the two renames
    of a commit), remove its staging / old folders, then the lock."""
    parent, base = os.path.split(os.path.abspath(out))
    with contextlib.suppress(FileNotFoundError):
        names = os.listdir(parent)
        olds = [n for n in names if n.startswith(f".{base}.old-")]
        if olds and not os.path.lexists(out):
            os.rename(os.path.join(parent, olds[0]), out)
        for name in names:
            if name.startswith(f".{base}.staging-") or name.startswith(f".{base}.old-"):
                shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
    if _read_json(lock_path(out)) == holder:
        _remove(lock_path(out))


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            obj = json.load(f)
        return obj if isinstance(obj, dict) else None
    except (OSError, ValueError):
        return None


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def read_manifest(out: str) -> dict | None:
    """The manifest of run folder ``out`` (None when it has none)."""
    return _read_json(os.path.join(out, MANIFEST))


def describe(out: str) -> str:
    """What an existing folder holds, for an error message."""
    m = read_manifest(out)
    if m is not None:
        return (f"the {m.get('command', 'jdd')} run {m.get('run_id')} "
                f"({m.get('method', '?')}, {m.get('created', '?')})")
    names = sorted(os.listdir(out))
    shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    return f"{len(names)} file(s) ({shown})"


def check_replaceable(out: str, overwrite: bool, flag: str = "--out") -> None:
    """Refuse a folder that already holds files unless ``overwrite``."""
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise RunFolderError(f"{flag} {out}: already holds {describe(out)}; pass --overwrite to "
                             f"replace it, or choose a new folder")


def _entry(path: str) -> dict:
    return {"bytes": os.path.getsize(path), "sha256": sha256(path)}


class RunWriter:
    """Writes one run into ``out`` as a whole. Use as a context manager around the run.

    Entering takes the lock and refuses an existing run unless ``overwrite``; :meth:`path` names
    a file in the staging folder; :meth:`commit` writes the manifest and moves the staging
    folder into place; leaving without a commit removes the staging folder and leaves ``out``
    as it was.

    Attributes:
        out: the run folder.
        run_id: this run's id (:func:`new_run_id`).
    """

    def __init__(self, out: str, *, overwrite: bool = False, command: str = "jdd distill",
                 flag: str = "--out"):
        self.out = os.path.abspath(out)
        self.overwrite = overwrite
        self.command = command
        self.flag = flag
        self.run_id = new_run_id()
        self._token = None
        self._staging = None
        self._made = []
        self.committed = False

    def __enter__(self) -> "RunWriter":
        parent = os.path.dirname(self.out)
        top = parent
        while not os.path.exists(top):
            self._made.append(top)
            top = os.path.dirname(top)
        self._token = acquire_lock(self.out, self.command)
        for d in reversed(self._made):
            with contextlib.suppress(OSError):
                usual_mode(d, folder=True)
        try:
            check_replaceable(self.out, self.overwrite, self.flag)
        except BaseException:
            self._cleanup()
            raise
        return self

    def path(self, name: str) -> str:
        """Where to write the file ``name`` of this run (in the staging folder)."""
        if self._staging is None:
            self._staging = _sibling(self.out, f"staging-{self.run_id}")
            os.mkdir(self._staging)
            usual_mode(self._staging, folder=True)
        return os.path.join(self._staging, name)

    def commit(self, **info) -> dict:
        """Write ``manifest.json`` (``info`` added to it) and move the run into place.

        Returns:
            The manifest.
        """
        from jdd.artifacts import write_json
        from jdd.console import raise_if_interrupted
        raise_if_interrupted()  # a signal whose interrupt was lost never lets a run commit
        staging = os.path.dirname(self.path(MANIFEST))
        files = {}
        for root, dirs, names in os.walk(staging):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for n in sorted(names):
                if not n.startswith("."):
                    rel = os.path.relpath(os.path.join(root, n), staging)
                    files[rel] = _entry(os.path.join(root, n))
        manifest = {"run_id": self.run_id, "command": self.command,
                    "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                    **info, "files": files}
        write_json(os.path.join(staging, MANIFEST), manifest)
        with signals_deferred():
            if not os.path.lexists(self.out):
                os.rename(staging, self.out)
            elif _exchange(staging, self.out):  # one atomic swap; the old run is in staging now
                shutil.rmtree(staging, ignore_errors=True)
            else:  # no renameat2: two renames (a SIGKILL between them is repaired on takeover)
                old = _sibling(self.out, f"old-{self.run_id}")
                os.rename(self.out, old)
                os.rename(staging, self.out)
                shutil.rmtree(old, ignore_errors=True)
            self.committed = True
            self._staging = None
        return manifest

    def _cleanup(self) -> None:
        with signals_deferred():
            if self._staging is not None:
                shutil.rmtree(self._staging, ignore_errors=True)
                self._staging = None
            if self._token is not None:
                release_lock(self.out, self._token)
                self._token = None
            if not self.committed:
                for d in self._made:  # parents this run created, innermost first
                    with contextlib.suppress(OSError):
                        os.rmdir(d)

    def __exit__(self, *exc) -> bool:
        self._cleanup()
        return False


def add_file(out: str, name: str, write, *, expect_sha256: str, set_name: str = "distilled.npz",
             command: str = "jdd evaluate", wait_s: float = 60.0) -> None:
    """Add the file ``name`` to an existing run folder, tied to the set it was computed from.

    Under the folder's lock: checks that ``set_name`` still has the bytes it had when the work
    started (``expect_sha256``), writes the file with ``write(path)`` (an atomic writer), and
    adds it to the manifest when the folder has one.

    Raises:
        RunFolderError: the folder is locked by a writer for longer than ``wait_s``, or its set
            was replaced meanwhile (nothing is written then).
    """
    token = acquire_lock(out, command, wait_s=wait_s)
    try:
        src = os.path.join(out, set_name)
        if not os.path.exists(src) or sha256(src) != expect_sha256:
            raise RunFolderError(f"{out}: the distilled set was replaced while this ran (another "
                                 f"run wrote the folder); {name} was not written")
        path = os.path.join(out, name)
        with signals_deferred():
            write(path)
            m = read_manifest(out)
            if m is not None:
                from jdd.artifacts import write_json
                m.setdefault("files", {})[name] = _entry(path)
                write_json(os.path.join(out, MANIFEST), m)
    finally:
        release_lock(out, token)
