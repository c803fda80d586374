"""PyTorch ``state_dict`` checkpoints loaded into the :mod:`tfnorms.models` architectures.

:func:`load_torch_weights` maps every parameter and buffer of the PyTorch
definitions that :mod:`tfnorms.models` reproduces (the TRADES / MART /
RobustBench WideResNet, the PreAct-ResNet-18 of adversarial-training code, and
the pytorch-cifar ``ResNet18``, ``VGG('VGG11')``, ``SENet18`` and
``RegNetX_200MF`` of Liang & Huang) onto the Keras model, checked key by key
and shape by shape (docs/pytorch.md#key-mapping). PyTorch itself is needed
only to read a ``.pt`` / ``.pth`` file: a ``state_dict`` of NumPy arrays
loads without it.

Layouts (PyTorch -> Keras):

* ``Conv2d.weight`` ``(out, in / groups, kh, kw)`` -> ``Conv2D.kernel``
  ``(kh, kw, in / groups, out)``; both frameworks number a grouped
  convolution's output channels group after group, so grouped and depthwise
  (``groups == in``) convolutions take the same transpose.
* ``Linear.weight`` ``(out, in)`` -> ``Dense.kernel`` ``(in, out)``; where the
  Dense reads a ``Flatten`` of a feature map, PyTorch flattened ``(C, H, W)``
  and Keras ``(H, W, C)``, so the kernel's rows are permuted.
* ``BatchNorm2d`` ``weight, bias, running_mean, running_var`` -> ``gamma,
  beta, moving_mean, moving_variance``. The state_dict holds no epsilon: the
  reference definitions use PyTorch's default 1e-5, which the Keras models
  use too (checked). ``num_batches_tracked`` only drives PyTorch's
  ``momentum=None`` cumulative average; it is accepted and ignored (listed in
  :attr:`TorchLoadReport.ignored`). Momentum is not stored either: the Keras
  models use ``momentum=0.9``, PyTorch's 0.1, which matters only for further
  training.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from collections.abc import Mapping

import keras
import numpy as np

from tfnorms import _args

TORCH_INSTALL_HINT = 'pip install "tfnorms[torch]" (tested with torch==2.13.0, CPU build)'
TORCH_EXTENSIONS = (".pt", ".pth")
TORCH_BN_EPSILON = 1e-5  # PyTorch's BatchNorm2d default; not stored in a state_dict
_LISTED = 20  # keys listed per category in an error message

# Keras layer name (as tfnorms.models builds it) -> PyTorch module path, per architecture.
# A block's layers are "<block|stage><group>_<index>_<suffix>"; the tables map the suffix.
_BLOCK_MODULES = {
    "wide_resnet": {"1_bn": "bn1", "conv1": "conv1", "2_bn": "bn2", "conv2": "conv2", "shortcut": "convShortcut"},
    "preact_resnet18": {"1_bn": "bn1", "conv1": "conv1", "2_bn": "bn2", "conv2": "conv2", "shortcut": "shortcut.0"},
    "resnet18": {"conv1": "conv1", "1_bn": "bn1", "conv2": "conv2", "2_bn": "bn2",
                 "shortcut": "shortcut.0", "shortcut_bn": "shortcut.1"},
    "senet18": {"1_bn": "bn1", "conv1": "conv1", "2_bn": "bn2", "conv2": "conv2", "shortcut": "shortcut.0",
                "se1": "fc1", "se2": "fc2"},
    "regnetx_200mf": {"conv1": "conv1", "1_bn": "bn1", "conv2": "conv2", "2_bn": "bn2", "conv3": "conv3",
                      "3_bn": "bn3", "shortcut": "shortcut.0", "shortcut_bn": "shortcut.1"},
}
_TOP_MODULES = {
    "wide_resnet": {"conv1": "conv1", "final_bn": "bn1", "logits": "fc"},
    "preact_resnet18": {"conv1": "conv1", "final_bn": "bn", "logits": "linear"},
    "resnet18": {"conv1": "conv1", "conv1_bn": "bn1", "logits": "linear"},
    "senet18": {"conv1": "conv1", "conv1_bn": "bn1", "logits": "linear"},
    "regnetx_200mf": {"conv1": "conv1", "conv1_bn": "bn1", "logits": "linear"},
    "vgg11": {"logits": "classifier"},  # plus features.<i>, numbered from the layer order
}
# Checked in this order: the first architecture whose marker layer the model has.
_MARKERS = (("wide_resnet", "block1_0_conv1"), ("vgg11", "conv0"), ("regnetx_200mf", "stage1_0_conv3"),
            ("senet18", "stage1_0_se1"), ("preact_resnet18", "final_bn"), ("resnet18", "stage1_0_conv1"))
ARCHITECTURES = tuple(_TOP_MODULES)
# Modules of the reference code that the forward pass never calls: TRADES' and MART's
# WideResNet (and RobustBench's with sub_block1=True) define an unused ``sub_block1``.
_UNUSED_MODULES = {"wide_resnet": ("sub_block1.",)}
_BLOCK_NAME = re.compile(r"^(block|stage)(\d+)_(\d+)_(.+)$")
_NORMALIZE_KEYS = ("normalize.mean", "normalize.std")


@dataclasses.dataclass
class TorchLoadReport:
    """What :func:`load_torch_weights` did with each key of the checkpoint.

    Attributes:
        architecture: the :mod:`tfnorms.models` builder the model was recognised as.
        loaded: checkpoint keys copied into the model.
        missing: keys the model needs that the checkpoint lacks.
        unexpected: checkpoint keys that belong to no layer of the model.
        mismatched: ``{key: (checkpoint shape, expected shape)}``.
        ignored: keys accepted on purpose and not loaded (BatchNorm
            ``num_batches_tracked``; the WideResNet's unused ``sub_block1``).
        prefixes_removed: prefixes stripped from every key (``"module."`` of
            ``DataParallel``; ``"model."`` of RobustBench's ``normalize_model``).
    """

    architecture: str
    loaded: list = dataclasses.field(default_factory=list)
    missing: list = dataclasses.field(default_factory=list)
    unexpected: list = dataclasses.field(default_factory=list)
    mismatched: dict = dataclasses.field(default_factory=dict)
    ignored: list = dataclasses.field(default_factory=list)
    prefixes_removed: list = dataclasses.field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True if nothing was missing, unexpected or mis-shaped."""
        return not (self.missing or self.unexpected or self.mismatched)

    def problems(self) -> str:
        """The missing, unexpected and mis-shaped keys, one category per line (empty if complete)."""
        lines = []
        for title, keys in (("missing", self.missing), ("unexpected", self.unexpected)):
            if keys:
                more = f" ... and {len(keys) - _LISTED} more" if len(keys) > _LISTED else ""
                lines.append(f"{len(keys)} {title} key(s): {', '.join(keys[:_LISTED])}{more}")
        if self.mismatched:
            shapes = [f"{key} {tuple(got)} (expected {tuple(want)})" for key, (got, want) in self.mismatched.items()]
            more = f" ... and {len(shapes) - _LISTED} more" if len(shapes) > _LISTED else ""
            lines.append(f"{len(shapes)} mis-shaped key(s): {', '.join(shapes[:_LISTED])}{more}")
        if any(key in _NORMALIZE_KEYS for key in self.unexpected):
            lines.append("The checkpoint carries an input normalization: build the model with "
                         "normalization=(mean, std), or load it with tfnorms.models.load_classifier.")
        return "\n".join(lines)


def _import_torch():
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            "Reading a PyTorch checkpoint file needs PyTorch, an optional dependency of tfnorms: "
            f"{TORCH_INSTALL_HINT}. A state_dict of NumPy arrays loads without it."
        ) from error
    return torch


def _to_numpy(value):
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):  # a torch.Tensor; torch is already imported by whoever made it
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()  # float16 / bfloat16 -> float32 (NumPy has no bfloat16)
        return value.numpy()
    return None


def read_state_dict(state_dict_or_path) -> dict:
    """A checkpoint as ``{key: numpy.ndarray}``.

    Args:
        state_dict_or_path: a mapping from keys to NumPy arrays or torch
            tensors, or the path of a ``.pt`` / ``.pth`` file holding one
            (read with ``torch.load(..., map_location="cpu", weights_only=True)``).
            A mapping with a ``"state_dict"`` or ``"model_state_dict"`` entry
            (a training checkpoint) is read from that entry.

    Raises:
        ImportError: a file was given and PyTorch is not installed (the
            message names the ``tfnorms[torch]`` extra).
        ValueError: not a mapping of arrays, or not a ``.pt`` / ``.pth`` path.

    Example:
        >>> import numpy as np
        >>> read_state_dict({"state_dict": {"fc.bias": np.zeros(10)}})["fc.bias"].shape
        (10,)
    """
    source = state_dict_or_path
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.splitext(path)[1].lower() not in TORCH_EXTENSIONS:
            raise _args.invalid("state_dict_or_path", "a state_dict, or the path of a .pt or .pth file", path)
        source = _import_torch().load(path, map_location="cpu", weights_only=True)
    if isinstance(source, Mapping):
        for wrapper in ("state_dict", "model_state_dict"):
            if isinstance(source.get(wrapper), Mapping):
                source = source[wrapper]
                break
    if not isinstance(source, Mapping) or not source:
        raise _args.invalid("state_dict_or_path", "a non-empty mapping from parameter names to arrays or tensors, "
                            "or the path of a .pt or .pth file", type(source).__name__ if source else source)
    arrays = {str(key): _to_numpy(value) for key, value in source.items()}
    not_arrays = [key for key, value in arrays.items() if value is None]
    if not_arrays:
        raise _args.invalid("state_dict_or_path", "a mapping whose values are all NumPy arrays or torch tensors",
                            f"<mapping whose entries {not_arrays} are not arrays>")
    return arrays


def architecture_of(model) -> str:
    """The :mod:`tfnorms.models` builder that made ``model``, recognised from its layer names.

    Example:
        >>> from tfnorms import models
        >>> architecture_of(models.wide_resnet(depth=10, width=1))
        'wide_resnet'
    """
    names = {layer.name for layer in model.layers}
    for architecture, marker in _MARKERS:
        if marker in names:
            return architecture
    raise _args.invalid("model", "a model built by tfnorms.models."
                        f"{{{', '.join(ARCHITECTURES)}}} (recognised by its layer names)", model.name)


def _module_paths(model, architecture):
    """``{Keras layer: PyTorch module path}`` for every layer that has weights (or is the input normalization)."""
    top = dict(_TOP_MODULES[architecture])
    if architecture == "vgg11":
        # nn.Sequential "features": each conv is (Conv2d, BatchNorm2d, ReLU), each pooling one MaxPool2d.
        index = 0
        for layer in model.layers:
            if isinstance(layer, keras.layers.Conv2D):
                top[layer.name], top[f"{layer.name}_bn"] = f"features.{index}", f"features.{index + 1}"
                index += 3
            elif isinstance(layer, keras.layers.MaxPooling2D):
                index += 1
    paths, unknown = {}, []
    for layer in model.layers:
        if not layer.weights and not isinstance(layer, keras.layers.Normalization):
            continue
        match = _BLOCK_NAME.match(layer.name)
        if isinstance(layer, keras.layers.Normalization):
            path = "normalize"
        elif layer.name in top:
            path = top[layer.name]
        elif match and match.group(4) in _BLOCK_MODULES.get(architecture, {}):
            _, group, index, suffix = match.groups()
            block = f"block{group}.layer.{index}" if architecture == "wide_resnet" else f"layer{group}.{index}"
            path = f"{block}.{_BLOCK_MODULES[architecture][suffix]}"
        else:
            unknown.append(layer.name)
            continue
        paths[layer] = path
    if unknown:
        raise _args.invalid("model", f"only the layers of tfnorms.models.{architecture} (no PyTorch "
                            "counterpart is known for the others)", f"<model with layers {unknown}>")
    return paths


def _flatten_input_shape(model, dense):
    """``(H, W, C)`` of the feature map that a Flatten turns into ``dense``'s input, else None."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.Flatten) and layer.output is dense.input and len(layer.input.shape) == 4:
            return tuple(int(n) for n in layer.input.shape[1:])
    return None


def _targets(model, architecture):
    """``{torch key: (Keras variable, expected torch shape, to_keras)}`` and the BatchNorm module paths."""
    targets, batch_norms = {}, []
    for layer, path in _module_paths(model, architecture).items():
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, fan_in, out = layer.kernel.shape
            targets[f"{path}.weight"] = (layer.kernel, (out, fan_in, kh, kw), lambda w: np.transpose(w, (2, 3, 1, 0)))
            if layer.use_bias:
                targets[f"{path}.bias"] = (layer.bias, tuple(layer.bias.shape), None)
        elif isinstance(layer, keras.layers.Dense):
            fan_in, out = layer.kernel.shape
            to_keras = np.transpose
            flattened = _flatten_input_shape(model, layer)
            if flattened is not None:
                h, w, c = flattened

                def to_keras(weight, h=h, w=w, c=c):
                    # PyTorch's column c * H * W + i * W + j is Keras' row (i * W + j) * C + c.
                    return weight.reshape(-1, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, -1)
            targets[f"{path}.weight"] = (layer.kernel, (out, fan_in), to_keras)
            if layer.use_bias:
                targets[f"{path}.bias"] = (layer.bias, tuple(layer.bias.shape), None)
        elif isinstance(layer, keras.layers.BatchNormalization):
            if not np.isclose(layer.epsilon, TORCH_BN_EPSILON, rtol=1e-6, atol=0):
                raise _args.invalid("model", f"BatchNormalization layers with PyTorch's epsilon {TORCH_BN_EPSILON} "
                                    f"(layer {layer.name!r} has {layer.epsilon})", model.name)
            for key, variable in (("weight", layer.gamma), ("bias", layer.beta),
                                  ("running_mean", layer.moving_mean), ("running_var", layer.moving_variance)):
                targets[f"{path}.{key}"] = (variable, tuple(variable.shape), None)
            batch_norms.append(path)
        elif not isinstance(layer, keras.layers.Normalization):
            raise _args.invalid("model", "Conv2D, Dense and BatchNormalization layers with weights",
                                f"<layer {layer.name!r} of type {type(layer).__name__}>")
    return targets, batch_norms


def _strip_prefixes(arrays):
    removed = []
    if all(key.startswith("module.") for key in arrays):  # torch.nn.DataParallel
        arrays = {key.removeprefix("module."): value for key, value in arrays.items()}
        removed.append("module.")
    rest = [key for key in arrays if key not in _NORMALIZE_KEYS]
    if len(rest) < len(arrays) and rest and all(key.startswith("model.") for key in rest):
        # RobustBench's normalize_model: nn.Sequential(normalize=ImageNormalizer, model=<network>).
        arrays = {key.removeprefix("model."): value for key, value in arrays.items()}
        removed.append("model.")
    return arrays, removed


def _check_normalization(model, arrays):
    """The checkpoint's ``normalize.mean`` / ``normalize.std`` equal the model's Normalization layer."""
    layer = next(layer for layer in model.layers if isinstance(layer, keras.layers.Normalization))
    config = layer.get_config()
    mean, std = np.reshape(config["mean"], -1), np.sqrt(np.reshape(config["variance"], -1))
    got_mean, got_std = (np.reshape(arrays[key], -1) for key in _NORMALIZE_KEYS)
    if got_mean.shape != mean.shape or got_std.shape != std.shape or not (
            np.allclose(got_mean, mean, rtol=1e-5, atol=1e-6) and np.allclose(got_std, std, rtol=1e-5, atol=1e-6)):
        raise _args.invalid(
            "state_dict_or_path", f"normalize.mean / normalize.std equal to the model's normalization "
            f"(mean {mean.tolist()}, std {std.tolist()}); build the model with the checkpoint's normalization",
            f"<checkpoint with mean {got_mean.tolist()}, std {got_std.tolist()}>")


def load_torch_weights(model, state_dict_or_path, *, strict: bool = True) -> TorchLoadReport:
    """Loads a PyTorch checkpoint of a :mod:`tfnorms.models` architecture into ``model``.

    ``model`` is a model built by :func:`~tfnorms.models.wide_resnet`,
    :func:`~tfnorms.models.preact_resnet18`, :func:`~tfnorms.models.resnet18`,
    :func:`~tfnorms.models.vgg11`, :func:`~tfnorms.models.senet18` or
    :func:`~tfnorms.models.regnetx_200mf` with the checkpoint's configuration
    (depth, width, classes, input shape). The PyTorch key layout of each is in
    docs/pytorch.md#key-mapping. A ``module.`` prefix on every key
    (``DataParallel``) is removed. RobustBench's ``normalize.mean`` /
    ``normalize.std`` (with the network's keys under ``model.``) must equal
    the model's ``normalization=(mean, std)``.

    Args:
        model: the Keras model to load into.
        state_dict_or_path: a ``state_dict`` (NumPy arrays or torch tensors) or
            the path of a ``.pt`` / ``.pth`` file (needs PyTorch: the
            ``tfnorms[torch]`` extra); see :func:`read_state_dict`.
        strict: if True, any missing, unexpected or mis-shaped key raises one
            ``ValueError`` listing them all, before any weight is changed. If
            False, the well-formed keys are loaded and the others reported
            (warning and :class:`TorchLoadReport`).

    Returns:
        A :class:`TorchLoadReport`.

    Example:
        >>> import warnings
        >>> from tfnorms import models
        >>> model = models.wide_resnet(depth=10, width=1)
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     report = load_torch_weights(model, {"fc.bias": np.zeros(10, "float32")}, strict=False)
        >>> report.loaded, report.missing[:2]
        (['fc.bias'], ['conv1.weight', 'block1.layer.0.bn1.weight'])
    """
    _args.boolean(strict, "strict")
    architecture = architecture_of(model)
    targets, batch_norms = _targets(model, architecture)
    arrays, removed = _strip_prefixes(read_state_dict(state_dict_or_path))
    report = TorchLoadReport(architecture, prefixes_removed=removed)
    has_normalization = any(isinstance(layer, keras.layers.Normalization) for layer in model.layers)
    ignored_prefixes = _UNUSED_MODULES.get(architecture, ())
    for key in arrays:
        if key in targets:
            continue
        if (key.endswith(".num_batches_tracked") and key.rsplit(".", 1)[0] in batch_norms) or key.startswith(
                ignored_prefixes):
            report.ignored.append(key)
        elif not (has_normalization and key in _NORMALIZE_KEYS):
            report.unexpected.append(key)
    if has_normalization and any(key in arrays for key in _NORMALIZE_KEYS):
        report.missing.extend(key for key in _NORMALIZE_KEYS if key not in arrays)
        if all(key in arrays for key in _NORMALIZE_KEYS):
            _check_normalization(model, arrays)
            report.loaded.extend(_NORMALIZE_KEYS)  # checked equal to the model's own
    report.missing.extend(key for key in targets if key not in arrays)
    for key, (variable, torch_shape, _) in targets.items():
        if key in arrays and arrays[key].shape != tuple(torch_shape):
            report.mismatched[key] = (arrays[key].shape, tuple(torch_shape))
    if strict and not report.complete:
        raise ValueError(f"The checkpoint does not match the {architecture} model {model.name!r}:\n"
                         f"{report.problems()}\n(load_torch_weights(..., strict=False) loads the rest and "
                         "reports these.)")
    for key, (variable, _, to_keras) in targets.items():
        if key in arrays and key not in report.mismatched:
            value = arrays[key] if to_keras is None else to_keras(arrays[key])
            variable.assign(np.asarray(value, dtype=variable.dtype))
            report.loaded.append(key)
    if not report.complete:
        warnings.warn(f"load_torch_weights(strict=False) into {model.name!r}: some weights were not loaded.\n"
                      f"{report.problems()}", stacklevel=2)
    return report
