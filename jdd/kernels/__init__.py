"""Kernels: closed-form NNGP/NTK (FC and conv), empirical NTK, linear/RBF, blocking, KRR.

Every kernel is a plain function ``kernel_fn(x1, x2=None) -> (n1, n2)`` built by a factory; any
function of that form (including a neural-tangents kernel_fn bound with
``functools.partial(nt_kernel_fn, get='ntk')``) plugs into :func:`krr_predict`, :func:`blocked`
and :func:`jdd.distill.kip.kip`.
"""

from jdd.kernels.blocked import blocked
from jdd.kernels.conv import conv_kernel
from jdd.kernels.empirical import empirical_ntk
from jdd.kernels.fc import ActivationMap, activation_map, fc_kernel
from jdd.kernels.krr import (krr_accuracy, krr_predict, krr_predict_from_kernels, krr_solve,
                             regularize)
from jdd.kernels.simple import linear_kernel, rbf_kernel

__all__ = ["ActivationMap", "activation_map", "blocked", "conv_kernel", "empirical_ntk",
           "fc_kernel", "krr_accuracy", "krr_predict", "krr_predict_from_kernels", "krr_solve",
           "linear_kernel", "rbf_kernel", "regularize"]
