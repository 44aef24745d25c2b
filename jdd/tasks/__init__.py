"""Synthetic tasks with known structure (multi-index models, ...), for theory-grounded distillation."""

from jdd.tasks.multi_index import (LINKS, Link, MultiIndexTask, get_link, multi_index, random_frame, sample, subspace_fraction, targets, with_link)  # noqa: E501

from jdd.tasks import dbn, pinn  # noqa: E402  (task-specific case studies, used as modules)

__all__ = [
    "dbn", "pinn",
    "LINKS", "Link", "MultiIndexTask", "get_link", "multi_index", "random_frame", "sample",
    "subspace_fraction", "targets", "with_link",
]
