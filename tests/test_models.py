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


# ---------------------------------------------------------------- Liang & Huang's CIFAR models

PAPER_MODELS = [  # trainable parameters of the PyTorch definitions for 10 classes
    (models.vgg11, 9_231_114),
    (models.resnet18, 11_173_962),
    (models.senet18, 11_260_354),
    (models.regnetx_200mf, 2_321_946),
]


@pytest.mark.parametrize("build,expected", PAPER_MODELS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_paper_models_parameter_counts_layout_and_norms(build, expected):
    model = build()
    assert trainable(model) == expected and model.output_shape == (None, 10)
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert bns and all(bn.epsilon == 1e-5 and bn.momentum == 0.9 for bn in bns)
    for conv in (l for l in model.layers if isinstance(l, keras.layers.Conv2D)):
        kh, kw, c_in, _ = conv.kernel.shape
        bound = 1.0 / np.sqrt(kh * kw * c_in)  # PyTorch's default U(+-1/sqrt(fan_in)), per group
        assert np.abs(conv.kernel.numpy()).max() <= bound + 1e-7
        if conv.use_bias:
            assert np.abs(conv.bias.numpy()).max() <= bound + 1e-7
        if conv.strides == (2, 2) and conv.kernel_size == (3, 3):  # PyTorch's symmetric padding=1
            assert norms.conv_geometry(conv)["padding"] == ((1, 1), (1, 1))
    # Every layer with weights has an exact norm (grouped convs, SE convs on 1x1 maps included).
    assert norms.unsupported_layers(model) == []
    values = norms.model_norms(model, ord=1)
    assert len(values) == len([l for l in model.layers if norms.is_supported(l)])
    assert all(np.isfinite(float(v)) and float(v) > 0 for v in values.values())


def test_squeeze_excitation_convs_see_1x1_maps_and_have_dense_norms():
    model = models.senet18()
    se1 = model.get_layer("stage3_0_se1")
    assert norms.conv_geometry(se1)["input_shape"] == (1, 1)
    dense_view = se1.kernel.numpy()[0, 0]  # (c_in, c_out) Dense kernel
    for ord, dense_norm in ((1, norms.dense_l1_norm), (np.inf, norms.dense_linf_norm)):
        np.testing.assert_allclose(float(norms.layer_norm(se1, ord)), float(dense_norm(dense_view)), rtol=1e-6)


def test_regnet_grouped_convolutions():
    model = models.regnetx_200mf()
    groups = [model.get_layer(f"stage{s}_0_conv2").groups for s in range(1, 5)]
    assert groups == [3, 7, 19, 46]  # channels 24, 56, 152, 368 / group width 8


@pytest.mark.parametrize("build", [models.resnet18, models.senet18, models.regnetx_200mf])
def test_paper_models_take_small_inputs(build):
    model = build(num_classes=3, input_shape=(16, 16, 1))
    assert model(np.zeros((2, 16, 16, 1), "float32")).shape == (2, 3)


def test_vgg11_input_size_and_class_count_are_checked():
    with pytest.raises(ValueError, match="`input_shape`.*multiples of 32"):
        models.vgg11(input_shape=(16, 16, 1))
    with pytest.raises(ValueError, match="`num_classes`"):
        models.resnet18(num_classes=1)
    assert models.vgg11(num_classes=100, input_shape=(64, 32, 3)).output_shape == (None, 100)


def test_grouped_paper_model_saves_and_loads(tmp_path):
    model = models.regnetx_200mf(input_shape=(16, 16, 3))
    x = np.random.default_rng(0).random((2, 16, 16, 3)).astype("float32")
    path = tmp_path / "regnet.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded(x, training=False).numpy(), model(x, training=False).numpy(), atol=1e-5)


def test_build_classifier_knows_every_architecture():
    from tfnorms import data, experiments

    info = data.dataset_info("cifar10")
    for name in experiments.CLASSIFIERS:
        model = experiments.build_classifier(name, info, depth=10, width=1)
        assert model.output_shape == (None, 10), name
    assert experiments.build_classifier("senet18", info).name == "senet18"
    with pytest.raises(ValueError, match="`name`.*'regnetx_200mf'"):
        experiments.build_classifier("vgg16", info)
