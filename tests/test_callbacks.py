"""Behaviour tests of tfnorms.callbacks (SingularValueClipping, LayerNormLogger)."""

import collections
import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import norm_bruteforce as bf
from tfnorms import norms
from tfnorms.callbacks import LayerNormLogger, SingularValueClipping


def model_and_data(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", name="c1")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="c2")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(4, name="d")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model, bf.synthetic_data(n=64)


def read_events(log_dir):
    """``{tag: [(step, value)]}`` for scalars and ``{tag: [step]}`` for histograms, from log_dir/train."""
    scalars, histograms = collections.defaultdict(list), collections.defaultdict(list)
    files = sorted(glob.glob(os.path.join(log_dir, "train", "events.out.tfevents.*")))
    assert files, os.listdir(log_dir)
    for path in files:
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name
                array = tf.make_ndarray(value.tensor)
                if plugin == "histograms":
                    histograms[value.tag].append((event.step, array))
                elif plugin == "scalars":
                    scalars[value.tag].append((event.step, float(array)))
    return scalars, histograms


# ---------------------------------------------------------------- SingularValueClipping


class KernelSnapshots(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.snapshots = []

    def on_train_batch_end(self, batch, logs=None):
        self.snapshots.append({w.path: w.numpy() for w in self.model.trainable_weights if w.name == "kernel"})


def test_singular_value_clipping_every_n_steps():
    model, (x, y) = model_and_data()
    clipping = SingularValueClipping(0.5, every_n_steps=3)
    snapshots = KernelSnapshots()
    model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[clipping, snapshots])  # 12 steps
    assert sorted(clipping._targets_paths) == ["c1", "c2", "d", "dw"]

    def dense_sigma(snapshot):
        return np.linalg.svd(snapshot["d/kernel"], compute_uv=False)[0]

    sigmas = [dense_sigma(s) for s in snapshots.snapshots]
    # Callbacks run in list order: the clip after steps 3, 6, 9, 12 precedes the snapshot.
    for step, sigma in enumerate(sigmas, start=1):
        if step % 3 == 0:
            assert sigma <= 0.5 * (1 + 1e-5), (step, sigma)
    assert max(sigmas) > 0.6  # between clips the gradient pushes it up again
    c1 = model.get_layer("c1").kernel.numpy()
    assert bf.l2(bf.circular_matrix(c1, (8, 8))) <= 0.5 * 1.3
    dw = model.get_layer("dw")
    grouped = norms.conv_geometry(dw)["kernel"]  # depthwise as a grouped conv on 4x4
    sv = norms.conv2d_singular_values(grouped, input_shape=(4, 4), groups=8)
    assert float(sv[0]) <= 0.5 * 1.5


def test_singular_value_clipping_matches_reference_formulation_on_conv():
    model, _ = model_and_data()
    c2 = model.get_layer("c2")
    before = c2.kernel.numpy()
    clipping = SingularValueClipping(0.3)
    clipping.set_model(model)
    clipping.clip_now()
    expected = norms.conv2d_clip_singular_values_reference(before, 0.3, input_shape=(8, 8)).numpy()
    np.testing.assert_allclose(c2.kernel.numpy(), expected, atol=1e-5)


# ---------------------------------------------------------------- LayerNormLogger


def test_layer_norm_logger_writes_documented_tags_with_right_values(tmp_path):
    model, (x, y) = model_and_data()
    logger = LayerNormLogger(str(tmp_path), power_iterations=60)
    model.fit(
        x, y, batch_size=16, epochs=2, verbose=0,
        callbacks=[keras.callbacks.TensorBoard(str(tmp_path)), logger],
    )
    scalars, histograms = read_events(str(tmp_path))
    paths = ["c1", "bn", "c2", "dw", "d"]
    for path in paths:
        for name in ("l1", "linf", "l2"):
            tag = f"norms/{path}/{name}"
            assert [step for step, _ in scalars[tag]] == [0, 1], tag
    assert "epoch_loss" in scalars  # Keras' own curves sit in the same directory
    final = {tag: values[-1][1] for tag, values in scalars.items()}
    c1, c2, d = (model.get_layer(n).kernel.numpy() for n in ("c1", "c2", "d"))
    m1, m2 = bf.conv_matrix(c1, (8, 8)), bf.conv_matrix(c2, (8, 8), 2)
    assert final["norms/c1/l1"] == pytest.approx(bf.l1(m1), rel=1e-5)
    assert final["norms/c1/linf"] == pytest.approx(bf.linf(m1), rel=1e-5)
    assert final["norms/c2/l1"] == pytest.approx(bf.l1(m2), rel=1e-5)
    assert final["norms/c1/l2"] == pytest.approx(bf.l2(m1), rel=1e-3)
    assert final["norms/c2/l2"] == pytest.approx(bf.l2(m2), rel=1e-3)
    assert final["norms/d/l1"] == pytest.approx(np.abs(d).sum(axis=1).max(), rel=1e-5)
    assert final["norms/d/l2"] == pytest.approx(np.linalg.svd(d, compute_uv=False)[0], rel=1e-4)
    bn = model.get_layer("bn")
    bn_norm = np.max(np.abs(bn.gamma.numpy()) / np.sqrt(bn.moving_variance.numpy() + bn.epsilon))
    assert final["norms/bn/l1"] == pytest.approx(bn_norm, rel=1e-5)
    for name in ("l1", "linf", "l2"):
        layer_values = [final[f"norms/{p}/{name}"] for p in paths]
        assert final[f"norm_product/{name}"] == pytest.approx(np.prod(layer_values), rel=1e-4)
        assert final[f"norm_log10_product/{name}"] == pytest.approx(np.sum(np.log10(layer_values)), rel=1e-4)
        steps = [step for step, _ in histograms[f"norm_histograms/{name}"]]
        assert steps == [0, 1]
        counts = histograms[f"norm_histograms/{name}"][-1][1][:, 2]
        assert counts.sum() == pytest.approx(len(paths))


def test_layer_norm_logger_batch_frequency_and_bound(tmp_path):
    model, (x, y) = model_and_data()
    logger = LayerNormLogger(str(tmp_path), ords=(2,), update_freq=2, l2_method="bound")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[logger])  # 4 steps
    scalars, _ = read_events(str(tmp_path))
    assert [step for step, _ in scalars["norms/c1/l2"]] == [2, 4]
    assert "norms/c1/l1" not in scalars
    c1 = model.get_layer("c1").kernel.numpy()
    exact = bf.l2(bf.conv_matrix(c1, (8, 8)))
    bound = scalars["norms/c1/l2"][-1][1]
    assert exact <= bound * (1 + 1e-5) <= exact * 1.3


def test_layer_norm_logger_gram_bound(tmp_path):
    model, _ = model_and_data()
    logger = LayerNormLogger(str(tmp_path), ords=(2,), l2_method="gram")
    logger.set_model(model)
    values = logger.compute_norms()
    c1 = model.get_layer("c1").kernel.numpy()
    exact = bf.l2(bf.conv_matrix(c1, (8, 8)))
    assert exact <= values[("c1", 2)] <= exact * 1.3


@pytest.mark.parametrize(
    "factory, match",
    [
        (lambda: LayerNormLogger("/tmp/x", ords=(3,)), r"argument `ords`. Expected one of 1, 2, numpy.inf"),
        (lambda: LayerNormLogger("/tmp/x", update_freq="batch"), r"argument `update_freq`. Expected \"epoch\""),
        (lambda: LayerNormLogger("/tmp/x", l2_method="svd"), "argument `l2_method`"),
        (lambda: LayerNormLogger(None), "argument `log_dir`"),
        (lambda: SingularValueClipping(1.0, every_n_steps=0), "argument `every_n_steps`. Expected a positive int"),
        (lambda: SingularValueClipping(-1.0), "argument `clip_to`"),
    ],
)
def test_invalid_arguments_raise_clear_errors(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()
