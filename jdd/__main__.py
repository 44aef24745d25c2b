"""``python -m jdd``: the ``jdd`` command."""

from jdd.cli import console_main

console_main()
