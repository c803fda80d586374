"""Reference CNNs: TRADES-style WideResNet, PreAct-ResNet-18 and a small CNN.

All models take images in [0, 1] and return logits. Layers follow the PyTorch
reference code (methods.md §6) so that parameter counts, layer norms and
results compare with the papers: BatchNorm ``epsilon=1e-5, momentum=0.9``
(PyTorch's 1e-5 / 0.1), bias-free convolutions with fan-out He-normal
initialisation, and strided 3x3 convolutions as ``ZeroPadding2D(1)`` followed
by ``"valid"`` (PyTorch's symmetric ``padding=1``; TensorFlow's ``"same"``
would pad (0, 1) on even inputs).
"""

from __future__ import annotations

from typing import Optional, Sequence

import keras

_BN_KWARGS = dict(epsilon=1e-5, momentum=0.9)


def _conv_init():
    # PyTorch reference: N(0, sqrt(2 / (kh * kw * c_out))), i.e. He normal on fan-out.
    return keras.initializers.VarianceScaling(2.0, mode="fan_out", distribution="untruncated_normal")


def _conv3x3(x, filters, stride, name):
    if stride == 1:
        return keras.layers.Conv2D(
            filters, 3, padding="same", use_bias=False, kernel_initializer=_conv_init(), name=name
        )(x)
    x = keras.layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
    return keras.layers.Conv2D(
        filters, 3, strides=stride, padding="valid", use_bias=False,
        kernel_initializer=_conv_init(), name=name,
    )(x)


def _bn_relu(x, name):
    x = keras.layers.BatchNormalization(**_BN_KWARGS, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _basic_block(x, in_filters, out_filters, stride, dropout, name):
    """Pre-activation block; the shortcut convolution sees the activated input."""
    activated = _bn_relu(x, f"{name}_1")
    if in_filters == out_filters and stride == 1:
        shortcut = x
    else:
        shortcut = keras.layers.Conv2D(
            out_filters, 1, strides=stride, padding="valid", use_bias=False,
            kernel_initializer=_conv_init(), name=f"{name}_shortcut",
        )(activated)
    h = _conv3x3(activated, out_filters, stride, f"{name}_conv1")
    h = _bn_relu(h, f"{name}_2")
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
    classifier (methods.md §6; no unused ``sub_block1``).

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
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"Invalid value for argument `width`. Expected a positive int. Received: width={width!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"Invalid value for argument `dropout`. Expected a rate in [0, 1). Received: dropout={dropout!r}")
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
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"Invalid value for argument `width`. Expected a positive int. Received: width={width!r}")
    inputs = keras.Input(tuple(input_shape), name="images")
    x = inputs
    for index, (filters, stride) in enumerate(((width, 1), (2 * width, 2), (2 * width, 1)), start=1):
        x = _conv3x3(x, filters, stride, f"conv{index}")
        x = _bn_relu(x, f"conv{index}")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, _dense_logits(x, num_classes), name=name)


def _normalize(x, normalization):
    if normalization is None:
        return x
    mean, std = normalization
    return keras.layers.Normalization(mean=mean, variance=[s * s for s in std], name="normalize")(x)


def _dense_logits(x, num_classes):
    # PyTorch nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)); reference sets bias to 0.
    return keras.layers.Dense(
        num_classes,
        kernel_initializer=keras.initializers.VarianceScaling(1.0 / 3.0, mode="fan_in", distribution="uniform"),
        name="logits",
    )(x)


def _classifier_head(inputs, x, num_classes, name):
    x = _bn_relu(x, "final")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, _dense_logits(x, num_classes), name=name)
