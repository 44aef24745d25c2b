"""DD-Ranking's robust scores (Li et al. 2025, "DD-Ranking: Rethinking the Evaluation of Dataset
Distillation"): how much of a distilled set's accuracy survives without its soft labels and
without the evaluation augmentation.

Implemented: the definitions of DD-Ranking v0.2.0 (repository NUS-HPC-AI-Lab/DD-Ranking, the
release that introduced LRS and ARS; its documentation, ``doc/introduction.md``):

* hard-label recovery ``HLR = acc(full data, hard labels) - acc(distilled set, hard labels)``
  (lower is better: what the images alone leave unrecovered);
* improvement over random ``IOR = acc(distilled set, its labels) - acc(random subset)`` under the
  same learner;
* label-robust score ``LRS = norm(w * IOR - (1 - w) * HLR)``, ``w = 0.5``;
* augmentation-robust score ``ARS = norm(g * (syn_aug - rand_aug) + (1 - g) * (syn_noaug -
  rand_noaug))``, ``g = 0.5``, where ``_aug`` trains with the evaluation augmentation (DSA) and
  ``_noaug`` without it;
* ``norm(a) = (e^a - e^-1) / (e - e^-1)``, which maps ``a = -1`` to 0 and ``a = 1`` to 1.

Two choices, said out loud: (1) accuracies enter as fractions in [0, 1], as the documentation
states (the scores then lie in [0, 1] whenever ``|a| <= 1``, which always holds); v0.2.0's code
feeds accuracies in percent into the same exponential, which puts any clearly negative
combination at the floor (-0.157) and is not reproduced. (2) DD-Ranking trains the random subset
of a soft-label method on a teacher's soft labels; jdd has no teacher for an arbitrary method, so
its random subset carries hard labels, under the same learner as the set (jdd's usual baseline).
Every arm uses the run's evaluation learner, models and keys: a soft-label set's hard-label arm
changes only the labels (argmax), the augmentation arms only the augmentation.
"""

from __future__ import annotations

import math

#: DD-Ranking v0.2.0 defaults (``lrs_lambda``, ``ars_lambda``).
LRS_WEIGHT = 0.5
ARS_WEIGHT = 0.5


def normalise(a: float) -> float:
    """``(e^a - e^-1) / (e - e^-1)``: -1 -> 0, 0 -> 0.269, 1 -> 1."""
    return (math.exp(a) - math.exp(-1.0)) / (math.e - math.exp(-1.0))


def label_robust_score(full_hard: float, syn_hard: float, syn: float, rand: float,
                       w: float = LRS_WEIGHT) -> dict:
    """LRS from four mean accuracies (fractions).

    Args:
        full_hard: the full training set, hard labels.
        syn_hard: the distilled set with hard labels (the argmax of its labels).
        syn: the distilled set with its own labels.
        rand: the random subset of the same size, same learner.
        w: the weight of IOR (DD-Ranking's ``lrs_lambda``).

    Returns:
        ``{"hlr", "ior", "alpha", "lrs", "w"}``.
    """
    hlr, ior = full_hard - syn_hard, syn - rand
    alpha = w * ior - (1.0 - w) * hlr
    return {"hlr": hlr, "ior": ior, "alpha": alpha, "lrs": normalise(alpha), "w": w}


def augmentation_robust_score(syn_aug: float, rand_aug: float, syn_noaug: float,
                              rand_noaug: float, g: float = ARS_WEIGHT) -> dict:
    """ARS from four mean accuracies (fractions): the set against the random subset, with and
    without the evaluation augmentation.

    Returns:
        ``{"beta", "ars", "gain_aug", "gain_noaug", "g"}``.
    """
    gain_aug, gain_noaug = syn_aug - rand_aug, syn_noaug - rand_noaug
    beta = g * gain_aug + (1.0 - g) * gain_noaug
    return {"beta": beta, "ars": normalise(beta), "gain_aug": gain_aug,
            "gain_noaug": gain_noaug, "g": g}
