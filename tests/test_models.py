"""Reference models: parameter counts of the papers' architectures, structure."""

import keras
import numpy as np
import pytest

from tfnorms import models, norms


def trainable(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


@pytest.mark.parametrize(
    "depth,width,expected",
    [(34, 10, 46_160_474), (28, 10, 36_479_194), (34, 1, 466_714), (34, 5, 11_554_074)],
)
def test_wide_resnet_parameter_counts_match_reference(depth, width, expected):
    model = models.wide_resnet(depth=depth, width=width)
    assert trainable(model) == expected
    bn_channels = sum(l.gamma.shape[0] for l in model.layers if isinstance(l, keras.layers.BatchNormalization))
    assert model.count_params() == expected + 2 * bn_channels  # + moving mean/variance


def test_wide_resnet_is_pytorch_equivalent():
    model = models.wide_resnet(depth=16, width=2, input_shape=(32, 32, 3))
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert all(bn.epsilon == 1e-5 and bn.momentum == 0.9 for bn in bns)
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    assert all(not c.use_bias for c in convs)
    for conv in convs:
        if conv.strides == (2, 2) and conv.kernel_size == (3, 3):
            # strided 3x3 convs are ZeroPadding2D(1) + "valid": symmetric like PyTorch
            assert conv.padding == "valid"
            geometry = norms.conv_geometry(conv)
            assert geometry["padding"] == ((1, 1), (1, 1))
    assert model.output_shape == (None, 10)
    first_block_shortcuts = [c.name for c in convs if c.name.startswith("block1_0_shortcut")]
    assert first_block_shortcuts == ["block1_0_shortcut"]  # 16 -> 32 channels needs a projection
    narrow = models.wide_resnet(depth=16, width=1)
    assert not [l for l in narrow.layers if l.name == "block1_0_shortcut"]  # 16 -> 16: identity


def test_wide_resnet_init_matches_reference_statistics():
    model = models.wide_resnet(depth=16, width=4)
    conv = model.get_layer("block3_0_conv1")
    kh, kw, _, c_out = conv.kernel.shape
    std = float(np.std(conv.kernel.numpy()))
    assert abs(std - np.sqrt(2.0 / (kh * kw * c_out))) < 0.05 * np.sqrt(2.0 / (kh * kw * c_out))
    dense = model.get_layer("logits")
    bound = 1.0 / np.sqrt(dense.kernel.shape[0])
    assert np.abs(dense.kernel.numpy()).max() <= bound + 1e-7
    assert np.all(dense.bias.numpy() == 0)


def test_other_models_and_input_normalization():
    assert trainable(models.preact_resnet18()) == 11_172_170
    model = models.small_cnn(num_classes=3, input_shape=(16, 16, 1), width=4)
    assert model(np.zeros((2, 16, 16, 1), "float32")).shape == (2, 3)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    normalized = models.wide_resnet(16, 1, normalization=(mean, std))
    layer = normalized.get_layer("normalize")
    x = np.random.default_rng(0).uniform(size=(1, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(layer(x).numpy(), (x - np.array(mean)) / np.array(std), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs,match",
    [(dict(depth=20), "`depth`"), (dict(width=0), "`width`"), (dict(dropout=1.5), "`dropout`")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.wide_resnet(**kwargs)
