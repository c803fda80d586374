"""Reference CNNs: TRADES-style WideResNet, PreAct-ResNet-18, Liang & Huang's four models, a small CNN.

PyTorch checkpoints of all but the small CNN load with :func:`load_torch_weights`
(docs/pytorch.md#using-pytorch-checkpoints); :func:`load_classifier` is the one
loader of a saved classifier, ``.keras`` or PyTorch.

All models take images in [0, 1] and return logits. Layers follow the PyTorch
reference code (docs/theory.md#reference-models) so that parameter counts, layer norms and
results compare with the papers: BatchNorm ``epsilon=1e-5, momentum=0.9``
(PyTorch's 1e-5 / 0.1), and strided 3x3 convolutions as ``ZeroPadding2D(1)``
followed by ``"valid"`` (PyTorch's symmetric ``padding=1``; TensorFlow's
``"same"`` would pad (0, 1) on even inputs). The WideResNet and PreAct-ResNet
use bias-free convolutions with fan-out He-normal initialisation, as the
TRADES code; :func:`vgg11`, :func:`resnet18`, :func:`senet18` and
:func:`regnetx_200mf` are the CIFAR definitions Liang & Huang train
(the pytorch-cifar models; docs/theory.md#reference-models) with PyTorch's default
initialisation, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for kernels and biases.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import keras

from tfnorms import _args
from tfnorms.checkpoints import (
    ARCHITECTURES,
    TORCH_EXTENSIONS,
    TorchLoadReport,
    load_torch_weights,
    read_state_dict,
)

__all__ = ["TORCH_ARCHITECTURES", "TorchLoadReport", "load_classifier", "load_torch_weights", "preact_resnet18",
           "regnetx_200mf", "resnet18", "senet18", "small_cnn", "vgg11", "wide_resnet"]
_BN_KWARGS = dict(epsilon=1e-5, momentum=0.9)


def _conv_init():
    # PyTorch reference: N(0, sqrt(2 / (kh * kw * c_out))), i.e. He normal on fan-out.
    return keras.initializers.VarianceScaling(2.0, mode="fan_out", distribution="untruncated_normal")


def _torch_default_init():
    # PyTorch's default for Conv2d / Linear weights (kaiming_uniform, a=sqrt(5)): U(+-1/sqrt(fan_in)).
    return keras.initializers.VarianceScaling(1.0 / 3.0, mode="fan_in", distribution="uniform")


def _torch_default_bias(fan_in):
    bound = 1.0 / fan_in**0.5
    return keras.initializers.RandomUniform(-bound, bound)


def _conv(x, filters, kernel_size, stride, name, groups=1, torch_default=False, use_bias=False):
    """A Conv2D with PyTorch's symmetric padding ``(kernel_size - 1) // 2``.

    ``torch_default`` selects PyTorch's default initialisation (kuangliu's
    models), otherwise the TRADES code's fan-out He normal.
    """
    padding = (kernel_size - 1) // 2
    kwargs = dict(groups=groups, use_bias=use_bias, name=name)
    kwargs["kernel_initializer"] = _torch_default_init() if torch_default else _conv_init()
    if use_bias:
        kwargs["bias_initializer"] = _torch_default_bias(int(x.shape[-1]) // groups * kernel_size * kernel_size)
    if stride == 1 or padding == 0:
        return keras.layers.Conv2D(filters, kernel_size, strides=stride,
                                   padding="same" if padding else "valid", **kwargs)(x)
    x = keras.layers.ZeroPadding2D(padding, name=f"{name}_pad")(x)
    return keras.layers.Conv2D(filters, kernel_size, strides=stride, padding="valid", **kwargs)(x)


def _conv3x3(x, filters, stride, name):
    return _conv(x, filters, 3, stride, name)


def _bn(x, name, relu=False):
    x = keras.layers.BatchNormalization(**_BN_KWARGS, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x


def _basic_block(x, in_filters, out_filters, stride, dropout, name):
    """Pre-activation block; the shortcut convolution sees the activated input."""
    activated = _bn(x, f"{name}_1", relu=True)
    if in_filters == out_filters and stride == 1:
        shortcut = x
    else:
        shortcut = keras.layers.Conv2D(
            out_filters, 1, strides=stride, padding="valid", use_bias=False,
            kernel_initializer=_conv_init(), name=f"{name}_shortcut",
        )(activated)
    h = _conv3x3(activated, out_filters, stride, f"{name}_conv1")
    h = _bn(h, f"{name}_2", relu=True)
    if dropout:
        h = keras.layers.Dropout(dropout, name=f"{name}_dropout")(h)
    h = _conv3x3(h, out_filters, 1, f"{name}_conv2")
    return keras.layers.Add(name=f"{name}_add")([shortcut, h])


def wide_resnet(
    depth: int = 34,
    width: int = 10,
    num_classes: int = 10,
    input_shape: Sequence[int] = (32, 32, 3),
    dropout: float = 0.0,
    normalization: Optional[tuple] = None,
    name: Optional[str] = None,
) -> keras.Model:
    """TRADES-style pre-activation WideResNet-``depth``-``width``.

    ``(depth - 4) / 6`` blocks per group, channels ``16, 16w, 32w, 64w``, groups
    with strides 1, 2, 2, then BN-ReLU, global average pooling and a Dense
    classifier (docs/theory.md#reference-models; no unused ``sub_block1``).

    Args:
        depth: ``6n + 4`` (34 and 28 in the papers).
        width: widening factor.
        num_classes: number of logits.
        input_shape: ``(H, W, C)`` of the [0, 1] images.
        dropout: dropout rate inside the blocks (0 in the papers).
        normalization: optional ``(mean, std)`` per channel applied inside the
            model, so attacks still see [0, 1] inputs.
        name: model name (default ``"wrn_<depth>_<width>"``).

    Returns:
        An uncompiled ``keras.Model`` returning logits.

    Example:
        >>> model = wide_resnet(depth=34, width=10)
        >>> sum(int(v.numpy().size) for v in model.trainable_variables)
        46160474
    """
    if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        raise ValueError(
            f"Invalid value for argument `depth`. Expected 6n + 4 with n >= 1 (e.g. 16, 28, 34). Received: depth={depth!r}"
        )
    _args.positive_int(width, "width")
    _args.number(dropout, "dropout", low=0, high=1, high_open=True)
    blocks = (depth - 4) // 6
    channels = (16, 16 * width, 32 * width, 64 * width)

    inputs = keras.Input(tuple(input_shape), name="images")
    x = _normalize(inputs, normalization)
    x = _conv3x3(x, channels[0], 1, "conv1")
    in_filters = channels[0]
    for group, (filters, stride) in enumerate(zip(channels[1:], (1, 2, 2)), start=1):
        for block in range(blocks):
            x = _basic_block(
                x, in_filters, filters, stride if block == 0 else 1, dropout, f"block{group}_{block}"
            )
            in_filters = filters
    return _classifier_head(inputs, x, num_classes, name or f"wrn_{depth}_{width}")


def preact_resnet18(
    num_classes: int = 10,
    input_shape: Sequence[int] = (32, 32, 3),
    normalization: Optional[tuple] = None,
    name: str = "preact_resnet18",
) -> keras.Model:
    """Pre-activation ResNet-18 (four stages of two blocks, 64-512 channels).

    Same pre-activation block and PyTorch-equivalent padding as
    :func:`wide_resnet`; stages with strides 1, 2, 2, 2 and a final BN-ReLU
    before pooling (the variant common in adversarial training code, e.g. Rice
    et al. 2020): 11,172,170 trainable parameters for 10 classes.

    Example:
        >>> model = preact_resnet18()
        >>> model.output_shape
        (None, 10)
    """
    inputs = keras.Input(tuple(input_shape), name="images")
    x = _normalize(inputs, normalization)
    x = _conv3x3(x, 64, 1, "conv1")
    in_filters = 64
    for stage, (filters, stride) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2)), start=1):
        for block in range(2):
            x = _basic_block(x, in_filters, filters, stride if block == 0 else 1, 0.0, f"stage{stage}_{block}")
            in_filters = filters
    return _classifier_head(inputs, x, num_classes, name)


def small_cnn(
    num_classes: int = 10,
    input_shape: Sequence[int] = (32, 32, 3),
    width: int = 32,
    name: str = "small_cnn",
) -> keras.Model:
    """A three-convolution CNN with BatchNorm for quick CPU runs and tests.

    ``conv(width) - conv(2*width, stride 2) - conv(2*width)``, each followed by
    BN-ReLU, then global average pooling and a Dense classifier.

    Example:
        >>> small_cnn(input_shape=(16, 16, 1), width=8).count_params() > 0
        True
    """
    _args.positive_int(width, "width")
    inputs = keras.Input(tuple(input_shape), name="images")
    x = inputs
    for index, (filters, stride) in enumerate(((width, 1), (2 * width, 2), (2 * width, 1)), start=1):
        x = _conv3x3(x, filters, stride, f"conv{index}")
        x = _bn(x, f"conv{index}", relu=True)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, _dense_logits(x, num_classes), name=name)


def _check_num_classes(num_classes):
    _args.positive_int(num_classes, "num_classes", minimum=2)


def vgg11(
    num_classes: int = 10,
    input_shape: Sequence[int] = (32, 32, 3),
    normalization: Optional[tuple] = None,
    name: str = "vgg11",
) -> keras.Model:
    """VGG11 with BatchNorm, the CIFAR variant of Liang & Huang's experiments.

    Eight ``conv3x3 (with bias) - BN - ReLU`` stages with 64, 128, 256, 256,
    512, 512, 512, 512 channels and 2x2 max pooling after the 1st, 2nd, 4th,
    6th and 8th, then a Dense classifier on the flattened map (1x1x512 for
    32x32 inputs): 9,231,114 trainable parameters for 10 classes, as the
    PyTorch definition.

    Args:
        num_classes: number of logits.
        input_shape: ``(H, W, C)``; H and W must be multiples of 32 (five poolings).
        normalization: optional ``(mean, std)`` per channel applied inside the model.
        name: model name.

    Example:
        >>> model = vgg11()
        >>> sum(int(v.numpy().size) for v in model.trainable_variables)
        9231114
    """
    _check_num_classes(num_classes)
    if any(int(n) % 32 for n in tuple(input_shape)[:2]):
        raise ValueError(
            "Invalid value for argument `input_shape`. VGG11 pools five times by 2: height and width "
            f"must be multiples of 32. Received: input_shape={tuple(input_shape)!r}"
        )
    inputs = keras.Input(tuple(input_shape), name="images")
    x = _normalize(inputs, normalization)
    for index, filters in enumerate((64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")):
        if filters == "M":
            x = keras.layers.MaxPooling2D(2, name=f"pool{index}")(x)
        else:
            x = _conv(x, filters, 3, 1, f"conv{index}", torch_default=True, use_bias=True)
            x = _bn(x, f"conv{index}", relu=True)
    x = keras.layers.Flatten(name="flatten")(x)
    return keras.Model(inputs, _dense_logits(x, num_classes, torch_default_bias=True), name=name)


def _post_activation_block(x, in_filters, filters, stride, name):
    """ResNet basic block: conv-BN-ReLU-conv-BN, plus the (projected) input, then ReLU."""
    h = _conv(x, filters, 3, stride, f"{name}_conv1", torch_default=True)
    h = _bn(h, f"{name}_1", relu=True)
    h = _conv(h, filters, 3, 1, f"{name}_conv2", torch_default=True)
    h = _bn(h, f"{name}_2")
    if stride != 1 or in_filters != filters:
        x = _conv(x, filters, 1, stride, f"{name}_shortcut", torch_default=True)
        x = _bn(x, f"{name}_shortcut")
    x = keras.layers.Add(name=f"{name}_add")([h, x])
    return keras.layers.ReLU(name=f"{name}_out")(x)


def _squeeze_excite(x, reduction, name):
    """``x * sigmoid(conv1x1(relu(conv1x1(mean over space of x))))``; the 1x1 convs have biases."""
    filters = int(x.shape[-1])
    w = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_squeeze")(x)
    w = _conv(w, filters // reduction, 1, 1, f"{name}_se1", torch_default=True, use_bias=True)
    w = keras.layers.ReLU(name=f"{name}_se_relu")(w)
    w = _conv(w, filters, 1, 1, f"{name}_se2", torch_default=True, use_bias=True)
    w = keras.layers.Activation("sigmoid", name=f"{name}_se_gate")(w)
    return keras.layers.Multiply(name=f"{name}_excite")([x, w])


def _se_preact_block(x, in_filters, filters, stride, name):
    """SENet18's block: pre-activation conv pair, squeeze-and-excitation (reduction 16), plus the shortcut."""
    activated = _bn(x, f"{name}_1", relu=True)
    shortcut = x
    if stride != 1 or in_filters != filters:  # a bare 1x1 conv on the activated input, no BatchNorm
        shortcut = _conv(activated, filters, 1, stride, f"{name}_shortcut", torch_default=True)
    h = _conv(activated, filters, 3, stride, f"{name}_conv1", torch_default=True)
    h = _bn(h, f"{name}_2", relu=True)
    h = _conv(h, filters, 3, 1, f"{name}_conv2", torch_default=True)
    h = _squeeze_excite(h, 16, name)
    return keras.layers.Add(name=f"{name}_add")([h, shortcut])


def _torch_stem(num_classes, input_shape, normalization):
    """Checks ``num_classes``; returns the input and ``conv3x3(64) - BN - ReLU`` of the pytorch-cifar models."""
    _check_num_classes(num_classes)
    inputs = keras.Input(tuple(input_shape), name="images")
    x = _normalize(inputs, normalization)
    return inputs, _bn(_conv(x, 64, 3, 1, "conv1", torch_default=True), "conv1", relu=True)


def _pooled_torch_head(inputs, x, num_classes, name):
    """Global average pooling and a Dense classifier with PyTorch's default init."""
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, _dense_logits(x, num_classes, torch_default_bias=True), name=name)


def _resnet(block, num_classes, input_shape, normalization, name):
    inputs, x = _torch_stem(num_classes, input_shape, normalization)
    in_filters = 64
    for stage, (filters, stride) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2)), start=1):
        for index in range(2):
            x = block(x, in_filters, filters, stride if index == 0 else 1, f"stage{stage}_{index}")
            in_filters = filters
    return _pooled_torch_head(inputs, x, num_classes, name)


def resnet18(
    num_classes: int = 10,
    input_shape: Sequence[int] = (32, 32, 3),
    normalization: Optional[tuple] = None,
    name: str = "resnet18",
) -> keras.Model:
    """ResNet-18 (post-activation basic blocks), the CIFAR variant of Liang & Huang's experiments.

    Stem ``conv3x3(64) - BN - ReLU``; four stages of two blocks with 64, 128,
    256, 512 channels and strides 1, 2, 2, 2 (1x1 conv + BN shortcuts where
    the shape changes); global average pooling (PyTorch's ``avg_pool2d(4)`` on
    32x32 inputs) and a Dense classifier: 11,173,962 trainable parameters for
    10 classes, as the PyTorch definition.

    Example:
        >>> model = resnet18()
        >>> sum(int(v.numpy().size) for v in model.trainable_variables)
        11173962
    """
    return _resnet(_post_activation_block, num_classes, input_shape, normalization, name)


def senet18(
    num_classes: int = 10,
    input_shape: Sequence[int] = (32, 32, 3),
    normalization: Optional[tuple] = None,
    name: str = "senet18",
) -> keras.Model:
    """SENet-18: ResNet-18's layout with pre-activation squeeze-and-excitation blocks (Liang & Huang's SENet18).

    Each block: BN-ReLU, conv3x3, BN-ReLU, conv3x3, then a squeeze-and-excitation
    gate (global mean, 1x1 conv to ``c / 16`` channels, ReLU, 1x1 conv back,
    sigmoid; the 1x1 convs have biases and see 1x1 maps, so their operator
    norms are those of Dense layers), plus the input or a bias-free 1x1 conv of
    the activated input. No BN-ReLU after the last stage, as the PyTorch
    definition: 11,260,354 trainable parameters for 10 classes.

    Example:
        >>> model = senet18()
        >>> sum(int(v.numpy().size) for v in model.trainable_variables)
        11260354
    """
    return _resnet(_se_preact_block, num_classes, input_shape, normalization, name)


def _regnet_block(x, in_filters, filters, stride, group_width, name):
    """RegNetX block (bottleneck ratio 1, no SE): 1x1 - grouped 3x3 (stride) - 1x1, each with BN, plus shortcut."""
    groups = filters // group_width
    h = _bn(_conv(x, filters, 1, 1, f"{name}_conv1", torch_default=True), f"{name}_1", relu=True)
    h = _bn(_conv(h, filters, 3, stride, f"{name}_conv2", groups=groups, torch_default=True), f"{name}_2", relu=True)
    h = _bn(_conv(h, filters, 1, 1, f"{name}_conv3", torch_default=True), f"{name}_3")
    if stride != 1 or in_filters != filters:
        x = _bn(_conv(x, filters, 1, stride, f"{name}_shortcut", torch_default=True), f"{name}_shortcut")
    x = keras.layers.Add(name=f"{name}_add")([h, x])
    return keras.layers.ReLU(name=f"{name}_out")(x)


def regnetx_200mf(
    num_classes: int = 10,
    input_shape: Sequence[int] = (32, 32, 3),
    normalization: Optional[tuple] = None,
    name: str = "regnetx_200mf",
) -> keras.Model:
    """RegNetX-200MF, the CIFAR variant of Liang & Huang's experiments (grouped convolutions).

    Stem ``conv3x3(64) - BN - ReLU``; stages of 1, 1, 4 and 7 blocks with
    24, 56, 152, 368 channels, strides 1, 1, 2, 2 and group width 8 (so the
    3x3 convolutions have 3, 7, 19 and 46 groups); global average pooling and
    a Dense classifier: 2,321,946 trainable parameters for 10 classes, as the
    PyTorch definition. On CPUs Keras runs grouped convolutions through XLA
    (TensorFlow has no CPU kernel for them), which makes this model several
    times slower to train there than its size suggests.

    Example:
        >>> model = regnetx_200mf()
        >>> sum(int(v.numpy().size) for v in model.trainable_variables)
        2321946
    """
    inputs, x = _torch_stem(num_classes, input_shape, normalization)
    in_filters = 64
    for stage, (depth, filters, stride) in enumerate(zip((1, 1, 4, 7), (24, 56, 152, 368), (1, 1, 2, 2)), start=1):
        for index in range(depth):
            x = _regnet_block(x, in_filters, filters, stride if index == 0 else 1, 8, f"stage{stage}_{index}")
            in_filters = filters
    return _pooled_torch_head(inputs, x, num_classes, name)


def _normalize(x, normalization):
    if normalization is None:
        return x
    mean, std = normalization
    return keras.layers.Normalization(mean=mean, variance=[s * s for s in std], name="normalize")(x)


def _dense_logits(x, num_classes, torch_default_bias=False):
    """PyTorch nn.Linear's default kernel init; bias 0 (TRADES code) or PyTorch's default U(+-1/sqrt(fan_in))."""
    bias = _torch_default_bias(int(x.shape[-1])) if torch_default_bias else "zeros"
    return keras.layers.Dense(num_classes, kernel_initializer=_torch_default_init(), bias_initializer=bias,
                              name="logits")(x)


def _classifier_head(inputs, x, num_classes, name):
    x = _bn(x, "final", relu=True)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, _dense_logits(x, num_classes), name=name)


TORCH_ARCHITECTURES = ARCHITECTURES
"""Builders of this module whose PyTorch checkpoints :func:`load_torch_weights` maps."""


def load_classifier(path, architecture: Optional[str] = None, **builder_kwargs) -> keras.Model:
    """Loads a classifier for evaluation: a saved ``.keras`` model, or a PyTorch checkpoint.

    A ``.keras`` file is read with ``keras.saving.load_model(path,
    compile=False)``. A ``.pt`` / ``.pth`` file (needs PyTorch: ``pip install
    "tfnorms[torch]"``) is loaded strictly with :func:`load_torch_weights`
    into ``architecture(**builder_kwargs)``; if the checkpoint carries
    RobustBench's ``normalize.mean`` / ``normalize.std`` and
    ``builder_kwargs`` has no ``normalization``, the model is built with that
    normalization (so it still takes images in [0, 1]).

    Args:
        path: a ``.keras``, ``.pt`` or ``.pth`` file.
        architecture: for a PyTorch checkpoint, one of :data:`TORCH_ARCHITECTURES`
            (the builders of this module); None for a ``.keras`` file.
        **builder_kwargs: arguments of the builder for a PyTorch checkpoint,
            e.g. ``depth=34, width=10`` for ``"wide_resnet"``, ``num_classes``,
            ``input_shape``, ``normalization=(mean, std)``.

    Returns:
        A ``keras.Model`` returning logits (uncompiled).

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "tiny.keras")
        >>> small_cnn(input_shape=(8, 8, 1), width=4).save(path)
        >>> load_classifier(path).name
        'small_cnn'
    """
    extension = os.path.splitext(os.fspath(path))[1].lower()
    if extension not in (".keras",) + TORCH_EXTENSIONS:
        raise _args.invalid("path", "a .keras, .pt or .pth file", os.fspath(path))
    if extension == ".keras":
        if architecture is not None:
            raise _args.invalid("architecture", "None for a .keras file (it stores its own architecture)",
                                architecture)
        if builder_kwargs:
            raise _args.invalid("builder_kwargs", "none for a .keras file (it stores its own architecture)",
                                builder_kwargs)
        return keras.saving.load_model(path, compile=False)
    if architecture is None:
        raise _args.invalid("architecture", f"one of {', '.join(map(repr, TORCH_ARCHITECTURES))} for the PyTorch "
                            f"checkpoint {os.fspath(path)!r}", architecture)
    _args.choice(architecture, "architecture", TORCH_ARCHITECTURES)
    state_dict = read_state_dict(path)
    stats = [state_dict.get(key, state_dict.get(f"module.{key}")) for key in ("normalize.mean", "normalize.std")]
    if "normalization" not in builder_kwargs and all(value is not None for value in stats):
        builder_kwargs["normalization"] = tuple(tuple(float(v) for v in value.reshape(-1)) for value in stats)
    model = globals()[architecture](**builder_kwargs)  # the builder of this module with that name
    load_torch_weights(model, state_dict)
    return model
