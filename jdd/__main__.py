"""``python -m jdd``: the ``jdd`` command."""

from jdd.console import main

main()
