"""Distillers: the Distiller abstraction, the run loop, and one file per method.

* :func:`bilevel` — the general task-specific form (inner learner + outer objective);
* :func:`unrolled` — back-propagation through unrolled training (Wang et al. 2018);
* :func:`kip` — Kernel Inducing Points (Nguyen et al. 2021);
* :func:`closed_form_distill` — exact closed-form KRR distillation (Chen et al. 2024);
* :mod:`jdd.distill.multi_index`, :mod:`jdd.distill.dbn_merge`, :mod:`jdd.distill.pinn_points` —
  the seed papers' own experiments.
"""

from jdd.distill.core import (BilevelState, Distiller, RunResult, Synthetic, bilevel, distill,
                              init_per_class, num_params, sample_rows, scan_steps, seed_keys)
from jdd.distill.compose import (ComposedState, ExtraTerm, Objective, Out, Parameterization,
                                 Probe, compose, partition_optimizer, pixels)
from jdd.distill.kip import kip, kip_objective
from jdd.distill.krr_closed_form import (ClosedFormResult, DPConfig, closed_form_distill,
                                         fit_ridge, select_lambda)
from jdd.distill.multi_index import (d1_gradient_matching, d2_compact, d2_rank_certify,
                                     reconstruction, two_phase)
from jdd.distill.unrolled import performance_matching, unrolled

__all__ = ["BilevelState", "ClosedFormResult", "DPConfig", "Distiller", "RunResult", "ComposedState", "ExtraTerm",
           "Objective", "Out", "Parameterization", "Probe", "compose", "kip_objective",
           "partition_optimizer", "performance_matching", "pixels",
           "Synthetic", "bilevel", "closed_form_distill", "distill", "fit_ridge",
           "d1_gradient_matching", "d2_compact", "d2_rank_certify", "init_per_class", "kip",
           "num_params", "sample_rows", "scan_steps", "seed_keys",
           "reconstruction", "select_lambda", "two_phase", "unrolled"]
