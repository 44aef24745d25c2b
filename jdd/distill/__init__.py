"""Distillers: the Distiller abstraction, the run loop, and one file per method."""

from jdd.distill.core import (BilevelState, Distiller, RunResult, Synthetic, bilevel, distill,
                              init_per_class,
                              num_params, sample_rows, scan_steps, seed_keys)

__all__ = ["BilevelState", "Distiller", "RunResult", "Synthetic", "bilevel", "distill", "init_per_class",
           "num_params", "sample_rows", "scan_steps", "seed_keys"]
