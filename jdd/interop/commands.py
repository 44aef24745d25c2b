"""The ``jdd export`` and ``jdd import`` commands (options declared in their config classes)."""

from __future__ import annotations

import os


def add_parsers(sub) -> None:
    """Add ``export`` and ``import`` to the ``jdd`` sub-command parsers."""
    from jdd.config import add_arguments
    from jdd.interop.export import ExportConfig
    from jdd.interop.imports import ImportConfig
    e = sub.add_parser(
        "export", help="write a distilled set in pixel space for PyTorch (safetensors, pt, npz, "
                       "png)",
        description="Write a run's distilled set in pixel space (the saved preprocessing "
                    "inverted): images, hard and soft labels, the learned learning rate, and "
                    "export.json with the preprocessing and the evaluation recipe.")
    e.add_argument("run", help="run folder (or its distilled.npz)")
    add_arguments(e, ExportConfig)
    i = sub.add_parser(
        "import", help="make a run folder from a set distilled elsewhere, for jdd evaluate",
        description="Read a synthetic set (a .safetensors, .pt/.pth or .npz dict of tensors, "
                    "or a folder of PNGs per class), check it against the dataset, and write a "
                    "run folder that `jdd evaluate` scores under jdd's protocol with both "
                    "baselines. .pt files are read weights-only: a pickled object is refused, "
                    "never run.")
    i.add_argument("file", help="the set: a file, or a folder of class folders of PNGs")
    add_arguments(i, ImportConfig)


def cmd_export(a) -> int:
    from jdd.cli import CLIError, check_output_folder
    from jdd.config import ConfigError, from_namespace
    from jdd.interop.export import ExportConfig, export_run
    from jdd.interop.formats import FormatError
    from jdd.rundir import RunFolderError
    try:
        cfg = from_namespace(ExportConfig, a)
        if cfg.out is not None:
            check_output_folder(cfg.out)
        out, info = export_run(a.run, cfg)
    except (ConfigError, FormatError, FileNotFoundError, ValueError, RunFolderError) as e:
        raise CLIError(str(e)) from None
    if not cfg.quiet:
        files = ", ".join(sorted(info["files"]))
        print(f"wrote {out}: {files}, export.json, manifest.json")
        if cfg.format == "png":
            lo, hi = info["png_range"]
            print(f"note: PNG rounds to 8 bits of [{lo:.3g}, {hi:.3g}] (a step of "
                  f"{(hi - lo) / 255:.3g}); sets whose labels were fitted to exact pixels (KIP) "
                  f"can lose much accuracy: share safetensors for exact numbers")
    return 0


def cmd_import(a) -> int:
    from jdd.cli import CLIError, check_output_folder
    from jdd.config import ConfigError, from_namespace
    from jdd.data import DataError
    from jdd.interop.formats import FormatError
    from jdd.interop.imports import ImportConfig, import_set
    from jdd.rundir import RunFolderError
    try:
        cfg = from_namespace(ImportConfig, a)
        check_output_folder(cfg.out)
        out, info = import_set(a.file, cfg)
    except (ConfigError, FormatError, FileNotFoundError, DataError, RunFolderError) as e:
        raise CLIError(str(e)) from None
    if not cfg.quiet:
        src = info["source"]
        print(f"imported {src['examples']} {src['labels']}-labelled examples ({info['ipc']} per "
              f"class) from {os.path.basename(src['path'].rstrip(os.sep))} into {out}; score it "
              f"with: jdd evaluate {out}")
    return 0


def add_report_parser(sub) -> None:
    """Add ``report`` to the ``jdd`` sub-command parsers."""
    from jdd.config import add_arguments
    from jdd.report import ReportConfig
    r = sub.add_parser(
        "report", help="compare runs: accuracy beside both baselines, robust scores, bytes",
        description="Print (and write as Markdown, JSON and PNG) a comparison of run folders: "
                    "accuracy mean +- std beside the random-subset and full-data baselines, "
                    "DD-Ranking's robust scores (jdd evaluate --robust), stored bytes, distill "
                    "time and device, and every jdd evaluate result. A number is never shown "
                    "without its baselines.")
    r.add_argument("runs", nargs="+", help="run folders")
    add_arguments(r, ReportConfig)


def cmd_report(a) -> int:
    from jdd.cli import CLIError, check_output_folder
    from jdd.config import ConfigError, from_namespace
    from jdd.report import ReportConfig, report
    try:
        cfg = from_namespace(ReportConfig, a)
        if cfg.out:
            check_output_folder(cfg.out)
        text, _ = report(a.runs, cfg)
    except (ConfigError, FileNotFoundError, ValueError, OSError) as e:
        raise CLIError(str(e)) from None
    if not cfg.quiet:
        print(text, end="")
        if cfg.out:
            print(f"wrote {cfg.out}/report.md, report.json, report.png")
    return 0
