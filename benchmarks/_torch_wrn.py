"""The PyTorch twin of :func:`tfnorms.models.wide_resnet` for the benchmarks' reference rows, and a weight copy.

The TRADES WideResNet (docs/theory.md#reference-models) in PyTorch: pre-activation
blocks, bias-free 3x3 convolutions with padding 1 (tfnorms pads strided ones with
``ZeroPadding2D(1)``, the same operator), BN-ReLU, global average pooling and a
linear classifier. :func:`copy_keras_weights` loads a Keras ``wide_resnet``'s
weights (Keras -> PyTorch: the direction only the benchmarks need), so both
frameworks run the same function; ``torch`` is imported lazily (an optional
benchmark dependency).

Example:
    >>> model = torch_wide_resnet(16, 4)          # doctest: +SKIP
    >>> copy_keras_weights(keras_wrn, model)      # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np


def torch_wide_resnet(depth, width, num_classes=10):
    """An ``nn.Module`` WideResNet-``depth``-``width`` with the layers of :func:`tfnorms.models.wide_resnet`."""
    import torch.nn.functional as F
    from torch import nn

    class BasicBlock(nn.Module):
        """Pre-activation block of the TRADES WideResNet (docs/theory.md#reference-models)."""

        def __init__(self, in_planes, out_planes, stride):
            super().__init__()
            self.bn1, self.bn2 = nn.BatchNorm2d(in_planes), nn.BatchNorm2d(out_planes)
            self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
            self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
            self.equal = in_planes == out_planes and stride == 1
            self.shortcut = None if self.equal else nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)

        def forward(self, x):
            activated = F.relu(self.bn1(x))
            h = self.conv1(activated)
            h = self.conv2(F.relu(self.bn2(h)))
            return (x if self.equal else self.shortcut(activated)) + h

    class WideResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks_per_group = (depth - 4) // 6
            channels = [16, 16 * width, 32 * width, 64 * width]
            self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
            layers = []
            for group, stride in zip(range(3), (1, 2, 2)):
                for i in range(self.blocks_per_group):
                    layers.append(BasicBlock(channels[group] if i == 0 else channels[group + 1],
                                             channels[group + 1], stride if i == 0 else 1))
            self.blocks = nn.Sequential(*layers)
            self.bn = nn.BatchNorm2d(channels[3])
            self.fc = nn.Linear(channels[3], num_classes)

        def forward(self, x):
            h = F.relu(self.bn(self.blocks(self.conv1(x))))
            return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))

    return WideResNet()


def copy_keras_weights(keras_model, torch_model):
    """Copies a Keras :func:`tfnorms.models.wide_resnet`'s weights into :func:`torch_wide_resnet` (in place).

    Conv kernels ``[kh, kw, in, out] -> [out, in, kh, kw]``, the Dense kernel
    transposed, BatchNorm's gamma / beta / moving statistics as they are (both
    use ``epsilon=1e-5``). Every PyTorch parameter and buffer but the BN batch
    counters must be written exactly once.
    """
    import torch

    def layer(name):
        return [np.asarray(w) for w in keras_model.get_layer(name).get_weights()]

    written = {}

    def put(module_name, torch_module, values):
        if isinstance(torch_module, torch.nn.BatchNorm2d):
            gamma, beta, mean, variance = values
            pairs = dict(weight=gamma, bias=beta, running_mean=mean, running_var=variance)
        elif isinstance(torch_module, torch.nn.Conv2d):
            pairs = dict(weight=values[0].transpose(3, 2, 0, 1))
        else:
            kernel, bias = values
            pairs = dict(weight=kernel.T, bias=bias)
        state = torch_module.state_dict()
        for key, value in pairs.items():
            if tuple(state[key].shape) != value.shape:
                raise ValueError(f"{module_name}.{key}: shape {tuple(state[key].shape)} vs Keras {value.shape}")
            state[key] = torch.from_numpy(np.ascontiguousarray(value, np.float32))
            written[f"{module_name}.{key}"] = True
        torch_module.load_state_dict(state)

    put("conv1", torch_model.conv1, layer("conv1"))
    n = torch_model.blocks_per_group
    for index, block in enumerate(torch_model.blocks):
        prefix = f"block{index // n + 1}_{index % n}"
        put(f"blocks.{index}.bn1", block.bn1, layer(f"{prefix}_1_bn"))
        put(f"blocks.{index}.conv1", block.conv1, layer(f"{prefix}_conv1"))
        put(f"blocks.{index}.bn2", block.bn2, layer(f"{prefix}_2_bn"))
        put(f"blocks.{index}.conv2", block.conv2, layer(f"{prefix}_conv2"))
        if block.shortcut is not None:
            put(f"blocks.{index}.shortcut", block.shortcut, layer(f"{prefix}_shortcut"))
    put("bn", torch_model.bn, layer("final_bn"))
    put("fc", torch_model.fc, layer("logits"))
    missing = [key for key in torch_model.state_dict() if not key.endswith("num_batches_tracked") and key not in written]
    if missing:
        raise ValueError(f"PyTorch weights not copied from the Keras model: {missing}")
    return torch_model
