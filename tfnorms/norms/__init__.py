"""Exact operator norms of CNN layers (pure math, no training logic).

Kernels are in Keras layout: Conv2D ``(kh, kw, c_in, c_out)``, Dense
``(in, out)``. Every function returns a differentiable TensorFlow scalar that
also works inside ``tf.function(jit_compile=True)``.

* :func:`conv2d_l1_norm`, :func:`conv2d_linf_norm`: exact closed forms for any
  stride, padding, dilation and input size (docs/theory.md#conv-norms).
* :func:`conv2d_spectral_norm`: FFT for circular padding (Sedghi et al.),
  power iteration for zero padding; ``method="gram"``: a certified upper
  bound by Gram iteration (:func:`log_gram_bound`, Delattre et al. 2023).
* :func:`dense_l1_norm`, :func:`dense_linf_norm`, :func:`dense_spectral_norm`,
  :func:`batch_norm_norm`.
* :func:`layer_norm`, :func:`model_norms`: the same for built Keras layers and
  models, reading stride, padding and input size from the layers;
  :func:`compiled_model_norms`: all of a model's norms as one vector from one
  cached compiled function.
"""

from tfnorms.norms.layers import (
    SUPPORTED_LAYERS,
    compiled_model_norms,
    conv_geometry,
    is_supported,
    layer_norm,
    model_norms,
    unsupported_layers,
    validate_ord,
)
from tfnorms.norms.operator_norms import (
    batch_norm_norm,
    conv2d_group_sums,
    conv2d_l1_norm,
    conv2d_linf_norm,
    dense_l1_norm,
    dense_linf_norm,
    depthwise_as_grouped,
    grouped_as_depthwise,
)
from tfnorms.norms.spectral import (
    conv2d_singular_values,
    conv2d_spectral_norm,
    dense_spectral_norm,
)

from tfnorms.norms.clipping import (
    SVC_METHODS,
    clip_matrix_singular_values,
    conv2d_clip_singular_values,
    conv2d_clip_singular_values_reference,
    dense_clip_singular_values,
)
from tfnorms.norms.estimates import conv2d_power_iteration, conv2d_spectral_norm_bound
from tfnorms.norms.gram import log_gram_bound
from tfnorms.norms.projections import (
    batch_norm_project_gamma,
    max_group_mask,
    project_l1_ball,
    project_max_group,
    project_operator_norm,
)

__all__ = [
    "SUPPORTED_LAYERS",
    "SVC_METHODS",
    "batch_norm_norm",
    "compiled_model_norms",
    "conv2d_group_sums",
    "conv2d_l1_norm",
    "conv2d_linf_norm",
    "conv2d_singular_values",
    "conv2d_spectral_norm",
    "conv_geometry",
    "dense_l1_norm",
    "dense_linf_norm",
    "dense_spectral_norm",
    "depthwise_as_grouped",
    "grouped_as_depthwise",
    "is_supported",
    "layer_norm",
    "model_norms",
    "unsupported_layers",
    "validate_ord",
]

__all__ += [
    "batch_norm_project_gamma",
    "clip_matrix_singular_values",
    "conv2d_clip_singular_values",
    "conv2d_clip_singular_values_reference",
    "conv2d_power_iteration",
    "conv2d_spectral_norm_bound",
    "dense_clip_singular_values",
    "log_gram_bound",
    "max_group_mask",
    "project_l1_ball",
    "project_max_group",
    "project_operator_norm",
]
