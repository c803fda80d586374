"""NormDecay, MaxOperatorNorm, SingularValueClip and NormDecayMomentum on DepthwiseConv2D kernels.

The oracle is the DepthwiseConv2D operator itself: ``tf.nn.depthwise_conv2d``
applied to every basis vector of the input gives the dense matrix, whose
column / row sums are the l1 / l_inf norms, differentiably in the kernel.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import norm_bruteforce as bf
from tfnorms import norms
from tfnorms.constraints import MaxOperatorNorm, SingularValueClip, configure_constraints
from tfnorms.regularizers import NormDecay, NormDecayMomentum, add_norm_decay, configure_norm_decay

CASES = [  # (input (h, w, c), depth_multiplier, strides, padding)
    ((5, 6, 3), 1, 1, "same"),
    ((5, 6, 3), 2, 2, "same"),
    ((6, 5, 2), 3, 2, "valid"),
    ((4, 4, 3), 2, 1, "valid"),
]


def dense_norm(kernel, input_shape, strides, padding, ord):
    """Brute-force l1 / l_inf norm of the depthwise operator (differentiable in ``kernel``)."""
    size = int(np.prod(input_shape))
    basis = tf.reshape(tf.eye(size, dtype=kernel.dtype), (size,) + tuple(input_shape))
    out = tf.nn.depthwise_conv2d(basis, kernel, [1, strides, strides, 1], padding.upper())
    matrix = tf.transpose(tf.reshape(out, (size, -1)))  # rows: outputs, columns: inputs
    axis = 0 if ord == 1 else 1
    return tf.reduce_max(tf.reduce_sum(tf.abs(matrix), axis=axis))


def depthwise_model(input_shape, multiplier, strides, padding, **layer_kwargs):
    layer = keras.layers.DepthwiseConv2D(
        3, strides=strides, padding=padding, depth_multiplier=multiplier, use_bias=False, **layer_kwargs
    )
    model = keras.Sequential([keras.Input(input_shape), layer])
    rng = np.random.default_rng(sum(input_shape) + 7 * multiplier + strides)
    layer.kernel.assign(rng.normal(size=layer.kernel.shape).astype("float32"))
    return model, layer


@pytest.mark.parametrize("ord", [1, np.inf])
@pytest.mark.parametrize("input_shape,multiplier,strides,padding", CASES)
def test_norm_decay_on_depthwise_is_the_exact_norm_and_subgradient(input_shape, multiplier, strides, padding, ord):
    model, layer = depthwise_model(
        input_shape, multiplier, strides, padding, depthwise_regularizer=NormDecay(0.5, ord=ord)
    )
    configured = configure_norm_decay(model)
    regularizer = layer.depthwise_regularizer
    assert list(configured.values()) == [regularizer] and layer.kernel.regularizer is regularizer
    assert regularizer.depthwise and regularizer.geometry["groups"] == 1
    assert regularizer.geometry["input_shape"] == input_shape[:2]

    kernel = tf.convert_to_tensor(layer.kernel)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(kernel)
        ours = regularizer(kernel)
        expected = 0.5 * dense_norm(tf.cast(kernel, tf.float64), input_shape, strides, padding, ord)
    np.testing.assert_allclose(float(ours), float(expected), rtol=1e-5)
    np.testing.assert_allclose(float(model.losses[0]), float(expected), rtol=1e-5)
    np.testing.assert_allclose(tape.gradient(ours, kernel), tape.gradient(expected, kernel), atol=1e-6)


def test_depthwise_switch_changes_the_reading_of_a_kernel():
    """Without the switch a depthwise kernel is read as a Conv2D kernel: a different operator.

    (At stride 1 the two readings share the l1 norm, a column sum over one input
    channel; the l_inf row sums differ: a Conv2D output reads every input channel.)
    """
    kernel = np.random.default_rng(0).normal(size=(3, 3, 4, 2)).astype("float32")
    as_depthwise = float(NormDecay(1.0, ord=np.inf, depthwise=True)(kernel))
    expected = float(dense_norm(tf.constant(kernel, tf.float64), (8, 8, 4), 1, "same", np.inf))
    assert as_depthwise == pytest.approx(expected, rel=1e-5)
    assert float(NormDecay(1.0, ord=np.inf)(kernel)) > 1.5 * expected


def test_norm_decay_momentum_memory_on_depthwise_marks_the_maximal_group():
    model, layer = depthwise_model((5, 6, 3), 2, 2, "same", depthwise_regularizer=NormDecay(1e-2, ord=1))
    configure_norm_decay(model)
    optimizer = NormDecayMomentum(keras.optimizers.SGD(0.0), momentum=0.5)
    weights = tf.convert_to_tensor(layer.kernel)
    optimizer.apply([tf.zeros_like(weights)], [layer.kernel])
    (memory,) = optimizer._memory[optimizer._var_key(layer.kernel)]
    with tf.GradientTape() as tape:
        tape.watch(weights)
        norm = dense_norm(weights, (5, 6, 3), 2, "same", 1)
    # The maximal group is where the brute-force norm's subgradient is non-zero; the memory holds sign(W) there.
    subgradient = tape.gradient(norm, weights).numpy()
    np.testing.assert_array_equal(memory.numpy(), np.where(subgradient != 0, np.sign(weights.numpy()), 0.0))


@pytest.mark.parametrize("ord", [1, np.inf])
@pytest.mark.parametrize("mode", ["all", "max_group"])
def test_max_operator_norm_on_depthwise_bounds_the_brute_force_norm(ord, mode):
    input_shape, multiplier, strides, padding = (6, 5, 2), 3, 2, "valid"
    model, layer = depthwise_model(
        input_shape, multiplier, strides, padding, depthwise_constraint=MaxOperatorNorm(1.0, ord=ord, mode=mode)
    )
    configure_constraints(model)
    constraint = layer.depthwise_constraint
    assert constraint.depthwise and layer.kernel.constraint is constraint
    kernel = tf.convert_to_tensor(layer.kernel)
    with tf.GradientTape() as tape:
        tape.watch(kernel)
        before = dense_norm(kernel, input_shape, strides, padding, ord)
    maximal_group = tape.gradient(before, kernel).numpy() != 0  # the entries of the maximal column / row
    projected = constraint(layer.kernel)
    assert projected.shape == layer.kernel.shape
    after = float(dense_norm(projected, input_shape, strides, padding, ord))
    assert float(before) > 1.5
    if mode == "all":
        assert after == pytest.approx(1.0, rel=1e-5)
    else:  # only the maximal group is projected (Liang & Huang's `project`); the next one may lead now
        changed = projected.numpy() != kernel.numpy()
        assert changed.any() and not (changed & ~maximal_group).any()
        assert np.abs(projected.numpy()[maximal_group]).sum() == pytest.approx(1.0, rel=1e-5)
        assert after < float(before)


def test_max_operator_norm_holds_after_training_a_depthwise_layer():
    model, layer = depthwise_model(
        (6, 6, 2), 2, 1, "same", depthwise_constraint=MaxOperatorNorm(0.8, ord=[1, "inf"])
    )
    model.add(keras.layers.GlobalAveragePooling2D())
    configure_constraints(model)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    rng = np.random.default_rng(1)
    model.fit(rng.random((16, 6, 6, 2)), rng.normal(size=(16, 4)) * 10, epochs=2, verbose=0)
    kernel = tf.convert_to_tensor(layer.kernel)
    for ord in (1, np.inf):
        assert float(dense_norm(kernel, (6, 6, 2), 1, "same", ord)) <= 0.8 * (1 + 1e-5)


def test_singular_value_clip_on_depthwise_equals_clipping_the_full_block_diagonal_kernel():
    """Clipping a depthwise kernel = clipping the dense Conv2D kernel with zeros outside each channel's block."""
    rng = np.random.default_rng(2)
    c_in, multiplier, hw = 3, 2, (6, 6)
    depthwise = rng.normal(size=(3, 3, c_in, multiplier)).astype("float32")
    full = np.zeros((3, 3, c_in, c_in * multiplier), "float32")
    for c in range(c_in):
        full[:, :, c, c * multiplier:(c + 1) * multiplier] = depthwise[:, :, c, :]
    ours = SingularValueClip(1.0, input_shape=hw, depthwise=True)(depthwise).numpy()
    reference = norms.conv2d_clip_singular_values_reference(full, 1.0, input_shape=hw).numpy()
    expected = np.stack([reference[:, :, c, c * multiplier:(c + 1) * multiplier] for c in range(c_in)], axis=2)
    np.testing.assert_allclose(ours, expected, atol=1e-4)
    before = np.linalg.norm(bf.circular_matrix(full, hw), 2)
    ours_full = np.zeros_like(full)
    for c in range(c_in):
        ours_full[:, :, c, c * multiplier:(c + 1) * multiplier] = ours[:, :, c, :]
    # One clip-and-crop pass leaves the norm somewhat above clip_to (docs/theory.md#svc-crop), far below where it was.
    assert before > 5 and np.linalg.norm(bf.circular_matrix(ours_full, hw), 2) < 1.5


def test_configure_constraints_sets_singular_value_clip_on_depthwise():
    model, layer = depthwise_model((6, 6, 3), 2, 1, "same", depthwise_constraint=SingularValueClip(1.0))
    configure_constraints(model)
    constraint = layer.depthwise_constraint
    assert constraint.depthwise and constraint.input_shape == (6, 6) and constraint.groups == 1
    assert constraint(layer.kernel).shape == layer.kernel.shape


def test_add_norm_decay_covers_depthwise_layers():
    model = keras.Sequential([
        keras.Input((8, 8, 3)), keras.layers.DepthwiseConv2D(3, strides=2),
        keras.layers.Conv2D(4, 1), keras.layers.Flatten(), keras.layers.Dense(2),
    ])
    configured = add_norm_decay(model, 1e-3, ord=[1, "inf"])
    assert len(configured) == 3
    depthwise = model.layers[0].depthwise_regularizer
    assert depthwise.depthwise and depthwise.geometry["strides"] == (2, 2)
    assert not model.layers[1].kernel_regularizer.depthwise
    assert len(model.losses) == 3


def test_depthwise_adapters_save_and_load(tmp_path):
    model, layer = depthwise_model(
        (6, 6, 2), 2, 2, "same",
        depthwise_regularizer=NormDecay(1e-3, ord=np.inf), depthwise_constraint=MaxOperatorNorm(2.0),
    )
    configure_norm_decay(model)
    configure_constraints(model)
    for adapter in (layer.depthwise_regularizer, layer.depthwise_constraint, SingularValueClip(1.0, depthwise=True)):
        config = json.loads(json.dumps(adapter.get_config()))
        assert config["depthwise"] is True
        assert type(adapter).from_config(config).get_config() == adapter.get_config()
    path = tmp_path / "depthwise.keras"
    model.save(path)
    loaded = keras.saving.load_model(path).layers[0]
    assert loaded.depthwise_regularizer.get_config() == layer.depthwise_regularizer.get_config()
    assert loaded.depthwise_constraint.get_config() == layer.depthwise_constraint.get_config()
    assert float(loaded.depthwise_regularizer(loaded.kernel)) == pytest.approx(
        float(layer.depthwise_regularizer(layer.kernel))
    )


@pytest.mark.parametrize("make", [
    lambda: NormDecay(depthwise="yes"),
    lambda: MaxOperatorNorm(1.0, depthwise=1),
    lambda: SingularValueClip(1.0, depthwise=None),
])
def test_depthwise_switch_must_be_a_bool(make):
    with pytest.raises(ValueError, match="`depthwise`"):
        make()


@pytest.mark.parametrize("cls", [NormDecay, MaxOperatorNorm, SingularValueClip])
def test_groups_stay_one_with_depthwise(cls):
    args = () if cls is NormDecay else (1.0,)
    with pytest.raises(ValueError, match="`groups`.*depthwise=True"):
        cls(*args, groups=3, depthwise=True)


@pytest.mark.parametrize("adapter", [
    NormDecay(depthwise=True), MaxOperatorNorm(1.0, depthwise=True), SingularValueClip(1.0, depthwise=True),
])
def test_depthwise_switch_on_a_dense_kernel_is_reported(adapter):
    with pytest.raises(ValueError, match="depthwise=True expects a DepthwiseConv2D kernel"):
        adapter(np.ones((4, 3), "float32"))


def test_norm_decay_on_a_bias_is_reported():
    model = keras.Sequential(
        [keras.Input((6, 6, 3)), keras.layers.DepthwiseConv2D(3, bias_regularizer=NormDecay())]
    )
    with pytest.raises(ValueError, match="supported are Conv2D, DepthwiseConv2D and Dense kernels"):
        configure_norm_decay(model)
