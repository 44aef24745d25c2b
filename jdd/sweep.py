"""Batch-job configuration for ``jdd distill --config FILE``: YAML run files, sweeps, and
array-job indices.

A config file is YAML (read with PyYAML's ``safe_load``: no code runs) holding one of

* a run: a mapping of option names to values, ``method`` included. Every ``jdd distill`` flag is
  an option (``lr_img`` or ``lr-img``; lists for multi-value flags; ``true``/``false`` for
  switches; ``null`` for none, the value of an option that takes none, such as KIP's
  ``batch_size: null``, the whole training set; leave a key out for its default)::

      method: dm
      dataset: fashion_mnist
      ipc: 10
      seeds: 3
      out: runs/dm-fashion-10

* a grid: a run with a ``grid`` mapping of option -> list of values, expanded to their product
  (the last option varies fastest). ``out`` may name options in braces, and ``{index}`` is the
  entry's position in the sweep::

      method: dm
      out: runs/dm-ipc{ipc}-seed{seed}
      grid: {ipc: [1, 10], seed: [0, 1, 2]}

* a sweep: a list of runs and grids, expanded in order.

The expanded entries run one after another, or one of them per array-job task: ``--index N``
(0-based) or ``--index env``, which reads the first of ``SLURM_ARRAY_TASK_ID``,
``PBS_ARRAY_INDEX``, ``PBS_ARRAYID``, ``AWS_BATCH_JOB_ARRAY_INDEX``, ``JDD_SWEEP_INDEX`` (as given)
or ``SGE_TASK_ID``, ``LSB_JOBINDEX`` (1-based there, so 1 is entry 0). Flags given on the command
line beside ``--config`` override every entry's values.

Every entry is checked (options, types, ranges, distinct writable output folders) before any
data is loaded or anything runs. Each run folder gets ``config.yaml``: the fully resolved
options (defaults and the method's step count filled in), so
``jdd distill --config RUN/config.yaml --out NEW`` reproduces the run.

Why PyYAML and not OmegaConf/Hydra: jdd's typed configs (:mod:`jdd.config`) already declare
every option's type and range, and entries are converted through the same command-line parser
so a file and a flag can never be checked differently; what remains is reading YAML, which PyYAML
(already a flax dependency) does without adding a framework that would own the command line.
"""

from __future__ import annotations

import itertools
import os
import string
from typing import Any, Iterable

#: Array-job index variables: name -> offset subtracted (1 for 1-based schedulers).
INDEX_VARIABLES = (("SLURM_ARRAY_TASK_ID", 0), ("PBS_ARRAY_INDEX", 0), ("PBS_ARRAYID", 0),
                   ("AWS_BATCH_JOB_ARRAY_INDEX", 0), ("JDD_SWEEP_INDEX", 0),
                   ("SGE_TASK_ID", 1), ("LSB_JOBINDEX", 1))


class SweepError(ValueError):
    """A config file or sweep that cannot run: the message says what was expected."""


def read(path: str) -> Any:
    """The YAML document in ``path`` (safe_load: plain data only).

    Raises:
        SweepError: missing or unreadable file, YAML syntax error, an empty document.
    """
    import yaml
    if not os.path.isfile(path):
        raise SweepError(f"--config {path}: no such file; expected a YAML run or sweep file")
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError) as e:
        raise SweepError(f"--config {path}: could not be read ({e})") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise SweepError(f"--config {path}: not valid YAML{at} "
                         f"({getattr(e, 'problem', None) or e})") from None
    if doc is None:
        raise SweepError(f"--config {path}: the file is empty; expected a mapping of options "
                         "(a run), a mapping with `grid`, or a list of them")
    return doc


def _norm_keys(entry: dict, where: str) -> dict:
    out = {}
    for k, v in entry.items():
        if not isinstance(k, str):
            raise SweepError(f"{where}: option names must be strings; got {k!r}")
        name = k.replace("-", "_")
        if name in out:
            raise SweepError(f"{where}: option {name!r} is given twice")
        out[name] = v
    return out


def expand(doc: Any, where: str = "config") -> list[dict]:
    """The runs a document describes (see the module docstring), as option dicts, in order.

    Raises:
        SweepError: a document that is not a run, grid or list of them; a grid whose values
            are not non-empty lists; a grid option also set outside the grid.
    """
    if isinstance(doc, list):
        if not doc:
            raise SweepError(f"{where}: an empty list; expected at least one run")
        runs = []
        for i, item in enumerate(doc):
            runs += expand(item, f"{where} entry {i}")
        return runs
    if not isinstance(doc, dict):
        raise SweepError(f"{where}: expected a mapping of options (a run), a mapping with `grid`, "
                         f"or a list of them; got {type(doc).__name__} {doc!r}")
    base = _norm_keys(doc, where)
    grid = base.pop("grid", None)
    if grid is None:
        return [base]
    if not isinstance(grid, dict) or not grid:
        raise SweepError(f"{where}: grid must be a mapping of option -> list of values; got "
                         f"{grid!r}")
    grid = _norm_keys(grid, f"{where} grid")
    for k, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{where} grid: {k} must be a non-empty list of values; got "
                             f"{values!r}")
        if k in base:
            raise SweepError(f"{where}: {k} is set both in the grid and outside it")
    keys = list(grid)
    return [{**base, **dict(zip(keys, combo))}
            for combo in itertools.product(*(grid[k] for k in keys))]


def env_index(environ=None) -> tuple[int, str]:
    """``(0-based index, variable name)`` from the array-job environment.

    Raises:
        SweepError: no known variable is set, or its value is not an integer.
    """
    environ = os.environ if environ is None else environ
    for name, offset in INDEX_VARIABLES:
        raw = environ.get(name)
        if raw is None or raw == "":
            continue
        try:
            return int(raw) - offset, name
        except ValueError:
            raise SweepError(f"--index env: {name}={raw!r} is not an integer") from None
    names = ", ".join(n for n, _ in INDEX_VARIABLES)
    raise SweepError(f"--index env: none of {names} is set; expected an array-job task")


def select(runs: list[dict], index: str | None, environ=None) -> list[tuple[int, dict]]:
    """``[(position, run)]``: every run, or the one ``index`` names (``"N"`` or ``"env"``).

    Raises:
        SweepError: an index that is not an integer or lies outside the sweep.
    """
    if index is None:
        return list(enumerate(runs))
    if index == "env":
        i, src = env_index(environ)
    else:
        try:
            i, src = int(index), "--index"
        except ValueError:
            raise SweepError(f"--index: expected an entry number (0-based) or env; got "
                             f"{index!r}") from None
    if not 0 <= i < len(runs):
        raise SweepError(f"{src} {i}: the sweep has {len(runs)} entries (0 .. {len(runs) - 1})")
    return [(i, runs[i])]


def format_out(out: Any, values: dict, index: int) -> Any:
    """``out`` with ``{option}`` and ``{index}`` filled in from a run's values.

    Raises:
        SweepError: a placeholder that names no option, or a malformed template.
    """
    if not isinstance(out, str) or "{" not in out:
        return out
    fields = {**values, "index": index}
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(out) if f is not None]
    except ValueError as e:
        raise SweepError(f"out {out!r}: not a valid template ({e})") from None
    missing = [n for n in names if n.split(".")[0].split("[")[0] not in fields]
    if missing:
        raise SweepError(f"out {out!r}: {{{missing[0]}}} names no option of this run; expected "
                         f"{{index}} or one of the run's options ({', '.join(sorted(values))})")
    try:
        return out.format_map(fields)
    except (KeyError, IndexError, ValueError, AttributeError) as e:
        raise SweepError(f"out {out!r}: could not be filled in ({e})") from None


def to_argv(values: dict, switches: Iterable[str] = ()) -> list[str]:
    """Command-line tokens for a run's options, so that a file is checked by exactly the parser
    that checks flags. ``None`` becomes an empty value, which the parser reads as none for an
    option that takes none and refuses for one that does not: a resolved ``config.yaml``
    holding ``batch_size: null`` reproduces a run on the whole training set, not one with the
    default batch.

    Args:
        values: option name -> value, as read from a file.
        switches: the names of on/off options (``--eval`` / ``--no-eval``). A switch
            takes ``true`` or ``false`` only; anything else (``null``, ``1``, ``"yes"``) raises
            here, where the option can still be named (argparse would only say "unrecognized
            arguments").

    Raises:
        SweepError: a switch without a boolean, an empty list or a mapping.
    """
    from jdd.config import flag
    switches = frozenset(switches)
    argv = []
    for name, v in values.items():
        f = flag(name)
        if name in switches and not isinstance(v, bool):
            shown = "null" if v is None else repr(v)
            raise SweepError(f"{f}: an on/off option; expected true or false; got {shown}")
        if v is None:
            argv += [f, ""]
            continue
        if isinstance(v, bool):
            argv.append(f if v else "--no-" + f[2:])
        elif isinstance(v, (list, tuple)):
            if not v:
                raise SweepError(f"{name}: an empty list; expected at least one value")
            argv += [f] + [str(x) for x in v]
        elif isinstance(v, dict):
            raise SweepError(f"{name}: expected a value or a list; got a mapping {v!r}")
        else:
            argv += [f, str(v)]
    return argv


def dump(values: dict, header: str = "") -> str:
    """YAML text of a resolved config (keys in the given order)."""
    import yaml
    body = yaml.safe_dump(values, sort_keys=False, default_flow_style=False)
    return "".join(f"# {line}\n" for line in header.splitlines()) + body


__all__ = ["INDEX_VARIABLES", "SweepError", "dump", "env_index", "expand", "format_out",
           "read", "select", "to_argv"]
