"""PyTorch definitions of the architectures whose checkpoints tfnorms loads, for the tests only.

Written for these tests from the published descriptions (docs/pytorch.md#key-mapping):
the module attribute names give the state_dict keys of the released checkpoints
(TRADES / MART / RobustBench WideResNet, adversarial-training PreAct-ResNet-18 with
its final BatchNorm ``bn``, and the pytorch-cifar ResNet18, VGG11, SENet18,
RegNetX-200MF). Pooling is global (``adaptive_avg_pool2d``), which equals the
references' fixed ``avg_pool2d`` on 32x32 inputs and lets the tests use others.
Without torch, importing the module (pytest's doctest collection does) skips it.
"""

import pytest

torch = pytest.importorskip("torch", reason='the PyTorch definitions need torch: pip install "tfnorms[torch]"')
from torch import nn
from torch.nn import functional as F


def _conv3x3(c_in, c_out, stride=1, bias=False, groups=1):
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias, groups=groups)


def _pool_flat(x):
    return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


class PreActBlock(nn.Module):
    """Pre-activation block; where the shape changes, a 1x1 projection of the activated input: ``shortcut.0``,
    or ``convShortcut`` in the WideResNet (``wide=True``)."""

    def __init__(self, c_in, c_out, stride, wide=False):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = _conv3x3(c_out, c_out)
        if stride != 1 or c_in != c_out:
            projection = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)
            if wide:
                self.convShortcut = projection
            else:
                self.shortcut = nn.Sequential(projection)

    def skip(self, activated, x):
        for name in ("convShortcut", "shortcut"):
            if hasattr(self, name):
                return getattr(self, name)(activated)
        return x

    def forward(self, x):
        a = F.relu(self.bn1(x))
        return self.conv2(F.relu(self.bn2(self.conv1(a)))) + self.skip(a, x)


class WideGroup(nn.Module):
    def __init__(self, blocks, c_in, c_out, stride):
        super().__init__()
        self.layer = nn.Sequential(*[PreActBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1, wide=True)
                                     for i in range(blocks)])

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-width; ``sub_block1`` (defined, never called) as in the TRADES / MART releases."""

    def __init__(self, depth=34, width=10, num_classes=10, in_channels=3, sub_block1=True):
        super().__init__()
        n = (depth - 4) // 6
        c = [16, 16 * width, 32 * width, 64 * width]
        self.conv1 = _conv3x3(in_channels, c[0])
        self.block1 = WideGroup(n, c[0], c[1], 1)
        if sub_block1:
            self.sub_block1 = WideGroup(n, c[0], c[1], 1)
        self.block2 = WideGroup(n, c[1], c[2], 2)
        self.block3 = WideGroup(n, c[2], c[3], 2)
        self.bn1 = nn.BatchNorm2d(c[3])
        self.fc = nn.Linear(c[3], num_classes)

    def forward(self, x):
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(_pool_flat(F.relu(self.bn1(x))))


class SEPreActBlock(PreActBlock):
    """SENet18's block: the pre-activation pair, then a squeeze-and-excitation gate (``fc1``, ``fc2``)."""

    def __init__(self, c_in, c_out, stride):
        super().__init__(c_in, c_out, stride)
        self.fc1 = nn.Conv2d(c_out, c_out // 16, 1)
        self.fc2 = nn.Conv2d(c_out // 16, c_out, 1)

    def forward(self, x):
        a = F.relu(self.bn1(x))
        h = self.conv2(F.relu(self.bn2(self.conv1(a))))
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(h, 1)))))
        return h * gate + self.skip(a, x)


class BasicBlock(nn.Module):
    """Post-activation block with a conv + BN projection shortcut."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = _conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        h = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(h + self.shortcut(x))


def _stages(block, widths, depths, strides, c_in):
    stages = []
    for width, depth, stride in zip(widths, depths, strides):
        blocks = []
        for i in range(depth):
            blocks.append(block(c_in, width, stride if i == 0 else 1))
            c_in = width
        stages.append(nn.Sequential(*blocks))
    return stages


class ResNetFamily(nn.Module):
    """conv1 (+ bn1 stem for the post-activation nets), layer1..layer4, optional final ``bn``, ``linear``."""

    def __init__(self, block, widths, depths, strides, num_classes=10, stem_bn=True, final_bn=False):
        super().__init__()
        self.conv1 = _conv3x3(3, 64)
        self.stem_bn = stem_bn
        if stem_bn:
            self.bn1 = nn.BatchNorm2d(64)
        for index, stage in enumerate(_stages(block, widths, depths, strides, 64), start=1):
            setattr(self, f"layer{index}", stage)
        self.stages = len(widths)
        if final_bn:
            self.bn = nn.BatchNorm2d(widths[-1])
        self.linear = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        x = self.conv1(x)
        if self.stem_bn:
            x = F.relu(self.bn1(x))
        for index in range(1, self.stages + 1):
            x = getattr(self, f"layer{index}")(x)
        if hasattr(self, "bn"):
            x = F.relu(self.bn(x))
        return self.linear(_pool_flat(x))


def preact_resnet18(num_classes=10):
    return ResNetFamily(PreActBlock, (64, 128, 256, 512), (2, 2, 2, 2), (1, 2, 2, 2), num_classes,
                        stem_bn=False, final_bn=True)


def resnet18(num_classes=10):
    return ResNetFamily(BasicBlock, (64, 128, 256, 512), (2, 2, 2, 2), (1, 2, 2, 2), num_classes)


def senet18(num_classes=10):
    return ResNetFamily(SEPreActBlock, (64, 128, 256, 512), (2, 2, 2, 2), (1, 2, 2, 2), num_classes)


class RegNetBlock(nn.Module):
    """1x1 - grouped 3x3 (group width 8) - 1x1, each with BN; conv + BN projection shortcut."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = _conv3x3(c_out, c_out, stride, groups=c_out // 8)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv3 = nn.Conv2d(c_out, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(h)))))
        return F.relu(h + self.shortcut(x))


def regnetx_200mf(num_classes=10):
    return ResNetFamily(RegNetBlock, (24, 56, 152, 368), (1, 1, 4, 7), (1, 1, 2, 2), num_classes)


class VGG11(nn.Module):
    """``features``: (Conv2d with bias, BatchNorm2d, ReLU) per conv, MaxPool2d per 'M'; ``classifier`` on the
    (C, H, W)-flattened map (512 * H/32 * W/32 inputs)."""

    LAYOUT = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")

    def __init__(self, num_classes=10, image_size=(32, 32)):
        super().__init__()
        layers, c_in = [], 3
        for item in self.LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [_conv3x3(c_in, item, bias=True), nn.BatchNorm2d(item), nn.ReLU()]
                c_in = item
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512 * (image_size[0] // 32) * (image_size[1] // 32), num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class Normalized(nn.Sequential):
    """RobustBench's layout of a model with input normalization: ``normalize`` (buffers ``mean``, ``std``), ``model``."""

    def __init__(self, model, mean, std):
        normalize = nn.Module()
        normalize.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        normalize.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        super().__init__()
        self.add_module("normalize", normalize)
        self.add_module("model", model)

    def forward(self, x):
        return self.model((x - self.normalize.mean) / self.normalize.std)
