"""Synthetic tasks with known structure (multi-index models, ...), for theory-grounded distillation."""

from jdd.tasks.multi_index import (LINKS, Link, MultiIndexTask, get_link, multi_index, random_frame, sample, subspace_fraction, targets, with_link)  # noqa: E501

__all__ = [
    "LINKS", "Link", "MultiIndexTask", "get_link", "multi_index", "random_frame", "sample",
    "subspace_fraction", "targets", "with_link",
]
