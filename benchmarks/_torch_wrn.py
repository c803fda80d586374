"""The PyTorch twin of :func:`tfnorms.models.wide_resnet` for the benchmarks' reference rows, and a weight copy.

The twin is the TRADES WideResNet of ``tests/torch_models.py`` (the definition the
checkpoint tests load into Keras; one definition for both), built without the
unused ``sub_block1``. :func:`copy_keras_weights` writes a Keras ``wide_resnet``'s
weights into it (Keras -> PyTorch, the direction only the benchmarks need) and
proves the copy by loading the twin's ``state_dict`` back into a fresh Keras
model with :func:`tfnorms.checkpoints.load_torch_weights` (strict: every key)
and comparing every weight. ``torch`` is imported lazily (an optional benchmark
dependency).

Example:
    >>> model = torch_wide_resnet(16, 4)          # doctest: +SKIP
    >>> copy_keras_weights(keras_wrn, model)      # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
import sys

import keras
import numpy as np

from tfnorms import checkpoints

_TESTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests")
# Keras block layer suffix -> module of the twin's block (the key layout of docs/pytorch.md#key-mapping).
_BLOCK = {"1_bn": "bn1", "conv1": "conv1", "2_bn": "bn2", "conv2": "conv2", "shortcut": "convShortcut"}
_TOP = {"conv1": "conv1", "final_bn": "bn1", "logits": "fc"}


def torch_wide_resnet(depth, width, num_classes=10):
    """``tests/torch_models.WideResNet(depth, width)``: the layers of :func:`tfnorms.models.wide_resnet`."""
    if _TESTS not in sys.path:
        sys.path.append(_TESTS)
    import torch_models

    return torch_models.WideResNet(depth, width, num_classes, sub_block1=False)


def _module_of(layer_name):
    match = re.match(r"^block(\d+)_(\d+)_(.+)$", layer_name)
    if match:
        group, index, suffix = match.groups()
        return f"block{group}.layer.{index}.{_BLOCK[suffix]}"
    return _TOP[layer_name]


def copy_keras_weights(keras_model, torch_model):
    """Copies a Keras :func:`tfnorms.models.wide_resnet`'s weights into :func:`torch_wide_resnet` (in place).

    Conv kernels ``[kh, kw, in, out] -> [out, in, kh, kw]``, the Dense kernel
    transposed, BatchNorm's gamma / beta / moving statistics as they are (both
    use ``epsilon=1e-5``). Raises ``ValueError`` unless loading the twin's
    ``state_dict`` back into a copy of ``keras_model`` gives every weight exactly.
    """
    import torch

    state = torch_model.state_dict()
    for layer in keras_model.layers:
        if not layer.weights:
            continue
        path = _module_of(layer.name)
        if isinstance(layer, keras.layers.BatchNormalization):
            names = ("weight", "bias", "running_mean", "running_var")
            values = [np.asarray(w) for w in (layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance)]
        elif isinstance(layer, keras.layers.Conv2D):
            names, values = ("weight",), [np.asarray(layer.kernel).transpose(3, 2, 0, 1)]
        else:
            names, values = ("weight", "bias"), [np.asarray(layer.kernel).T, np.asarray(layer.bias)]
        for name, value in zip(names, values):
            state[f"{path}.{name}"] = torch.from_numpy(np.ascontiguousarray(value, np.float32))
    torch_model.load_state_dict(state)
    back = keras.models.clone_model(keras_model)
    checkpoints.load_torch_weights(back, {key: value.numpy() for key, value in torch_model.state_dict().items()})
    for original, loaded in zip(keras_model.weights, back.weights):
        if not np.array_equal(np.asarray(original), np.asarray(loaded)):
            raise ValueError(f"the PyTorch twin does not hold the Keras weight {original.path}")
    return torch_model
