"""The ``jdd`` command's entry point, kept light: it sets up the signal handling before anything
heavy (JAX, the CLI) is imported, so SIGINT and SIGTERM end a run cleanly from its first
moments.

Exit codes: 0 done, 1 an unexpected error, 2 bad input (one line on stderr, before any work),
128 + the signal's number when interrupted (SIGINT 130, SIGTERM 143). An interrupted run leaves
its output folder as it was (:mod:`jdd.rundir`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

EXIT_SIGINT, EXIT_SIGTERM = 130, 143


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C so that the same clean-up runs."""

    exit_code = EXIT_SIGTERM


#: The signal received by this command, if any. A KeyboardInterrupt raised inside code that
#: swallows it (a callback from compiled code) would be lost; :func:`raise_if_interrupted`,
#: called at safe points (each chunk of a run, each evaluation phase, before a run folder is
#: committed), raises it again.
_received: list[int] = []


def _on_signal(signum, frame):
    _received.append(signum)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _quiet_unraisable(unraisable) -> None:
    """``sys.unraisablehook`` of the command: an interrupt raised where Python can only report
    it (a garbage-collector callback such as jaxlib's, a finaliser) is recorded in ``_received``
    and raised again at the next safe point, so it is not printed as an ignored exception with a
    traceback; anything else goes to the default hook."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt) and _received:
        return
    sys.__unraisablehook__(unraisable)


def install() -> None:
    """Handle SIGTERM like SIGINT (where nobody else set a handler) and keep interrupts that
    land in callbacks quiet (:func:`_quiet_unraisable`)."""
    for sig, default in ((signal.SIGTERM, signal.SIG_DFL),
                         (signal.SIGINT, signal.default_int_handler)):
        if signal.getsignal(sig) is default:
            signal.signal(sig, _on_signal)
    sys.unraisablehook = _quiet_unraisable


def raise_if_interrupted() -> None:
    """Raise the interrupt of a signal this command received, if one came (a no-op in a
    process that is not the ``jdd`` command)."""
    if _received:
        raise Terminated() if _received[0] == signal.SIGTERM else KeyboardInterrupt()


def _leave(code: int) -> None:
    """Exit without the interpreter's teardown: JAX may still have computations in flight on
    its own threads, and finalising the runtime under them can crash (exit 139)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def main() -> None:
    """Run ``jdd`` (:func:`jdd.cli.main`) with SIGTERM handled like SIGINT."""
    install()
    from jdd.rundir import signals_deferred
    try:
        with signals_deferred():  # a signal during this import acts right after it
            from jdd import cli
    except KeyboardInterrupt as e:
        code = getattr(e, "exit_code", EXIT_SIGINT)
        print(f"jdd: interrupted ({'SIGTERM' if code == EXIT_SIGTERM else 'SIGINT'}) while "
              f"starting; nothing was written.", file=sys.stderr)
        _leave(code)
    rc = cli.main()
    if rc in (EXIT_SIGINT, EXIT_SIGTERM):
        _leave(rc)
    sys.exit(rc)
