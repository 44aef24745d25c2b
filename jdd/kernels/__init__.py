"""Kernels: closed-form NNGP/NTK (FC and conv), empirical NTK, linear/RBF, blocking, KRR.

Every kernel is a plain function ``kernel_fn(x1, x2=None) -> (n1, n2)`` built by a factory; any
function of that form (including a neural-tangents kernel_fn bound with
``functools.partial(nt_kernel_fn, get='ntk')``) plugs into :func:`krr_predict`, :func:`blocked`
and :func:`jdd.distill.kip.kip`. Explicit feature maps (random Fourier features, random
one-hidden-layer networks) live in :mod:`jdd.kernels.features` and are re-exported here.
"""

from jdd.kernels.blocked import blocked
from jdd.kernels.conv import conv_kernel
from jdd.kernels.empirical import empirical_ntk
from jdd.kernels.fc import ActivationMap, activation_map, fc_kernel
from jdd.kernels.features import (FeatureMap, fcnn_features, feature_map, linear_features,
                                  rff_features)
from jdd.kernels.krr import (krr_accuracy, krr_predict, krr_predict_from_kernels,
                             krr_predict_path, krr_solve, regularize)
from jdd.kernels.simple import linear_kernel, rbf_kernel

__all__ = ["ActivationMap", "FeatureMap", "activation_map", "blocked", "conv_kernel",
           "empirical_ntk", "fc_kernel", "fcnn_features", "feature_map", "krr_accuracy",
           "krr_predict", "krr_predict_from_kernels", "krr_predict_path", "krr_solve", "linear_features",
           "linear_kernel", "rbf_kernel", "regularize", "rff_features"]
