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


def _raise_terminated(signum, frame):
    raise Terminated()


def _leave(code: int) -> None:
    """Exit without the interpreter's teardown: JAX may still have computations in flight on
    its own threads, and finalising the runtime under them can crash (exit 139)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def main() -> None:
    """Run ``jdd`` (:func:`jdd.cli.main`) with SIGTERM handled like SIGINT."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_terminated)
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
