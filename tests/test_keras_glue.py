"""tfnorms/_keras.py: each private Keras attribute it relies on, pinned by a test that breaks if Keras changes it."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfnorms
from tfnorms import _keras
from tfnorms.regularizers import NormDecay


class _Block(keras.layers.Layer):
    """A subclassed layer holding a conv and a weight of its own (not visible through ``model.layers``)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(2, 3, strides=2, kernel_regularizer=NormDecay(1e-3), name="inner")

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(), initializer="ones", name="scale")

    def call(self, x):
        return self.scale * self.conv(x)


def test_flatten_layers_reaches_layers_inside_subclassed_layers():  # Layer._flatten_layers
    model = keras.Sequential([keras.Input((9, 9, 1)), _Block(name="block")])
    names = [layer.name for layer in _keras.flatten_layers(model)]
    assert names[-2:] == ["block", "inner"]
    assert [layer.name for layer in model.layers] == ["block"]


def test_own_variables_excludes_sublayers():
    model = keras.Sequential([keras.Input((9, 9, 1)), _Block(name="block")])
    block = model.get_layer("block")
    assert [v.name for v in _keras.own_variables(block)] == ["scale"]
    assert _keras.owner_of(model)[id(block.conv.kernel)] is block.conv


def test_built_input_shape_of_a_layer_called_outside_a_functional_graph():  # Layer._build_shapes_dict
    conv = keras.layers.Conv2D(2, 3)
    conv(np.zeros((1, 7, 5, 1), "float32"))
    with pytest.raises((AttributeError, ValueError)):
        conv.input  # noqa: B018  (no functional graph: Keras has no public record of the shape)
    assert _keras.built_input_shape(conv) == (1, 7, 5, 1)


def test_bind_reads_the_input_size_of_a_conv_inside_a_subclassed_layer():
    model = keras.Sequential([keras.Input((9, 9, 1)), _Block(name="block")])
    tfnorms.bind(model)
    geometry = model.get_layer("block").conv.kernel.regularizer.geometry
    assert geometry["input_shape"] == (9, 9) and geometry["strides"] == (2, 2)


def test_feeding_layer_finds_a_preceding_zero_padding():  # Layer._inbound_nodes, Node.parent_nodes
    inputs = keras.Input((8, 8, 1))
    padded = keras.layers.ZeroPadding2D(1, name="pad")(inputs)
    outputs = keras.layers.Conv2D(2, 3, name="conv")(padded)
    model = keras.Model(inputs, outputs)
    assert _keras.feeding_layer(model.get_layer("conv")).name == "pad"
    assert _keras.feeding_layer(keras.layers.Conv2D(2, 3)) is None


def test_optimizer_keys_and_own_variables():  # Optimizer._var_key, _variables, _trainable_variables
    variable = keras.Variable(np.ones((2, 2), "float32"))
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build([variable])
    assert _keras.variable_key(optimizer, variable) == _keras.variable_key(optimizer, variable)
    assert any(v.shape == (2, 2) for v in _keras.optimizer_own_variables(optimizer))  # the momentum slot
    assert list(_keras.optimizer_trainable_variables(optimizer)) == [variable]


@pytest.mark.parametrize(
    "layer, weight, attribute",
    [
        (keras.layers.Conv2D(2, 3), "kernel", "kernel_regularizer"),
        (keras.layers.DepthwiseConv2D(3), "kernel", "depthwise_regularizer"),
        (keras.layers.Dense(2), "bias", "bias_regularizer"),
        (keras.layers.BatchNormalization(), "gamma", "gamma_regularizer"),
        (keras.layers.SeparableConv2D(2, 3), "pointwise_kernel", "pointwise_regularizer"),
    ],
)
def test_weight_attribute_names_the_constructor_argument_keras_saves(layer, weight, attribute):
    layer.build((None, 6, 6, 2))
    variable = next(v for v in layer.weights if v.name == weight)
    assert _keras.weight_attribute(layer, variable, "regularizer") == attribute
    assert attribute in layer.get_config()


def test_attach_reports_a_custom_weight_that_keras_cannot_save():
    block = _Block()
    block(np.zeros((1, 9, 9, 1), "float32"))
    assert _keras.attach(block, block.scale, "regularizer", keras.regularizers.L2(1e-4)) is False
    assert block.scale.regularizer is not None
    assert _keras.attach(block.conv, block.conv.kernel, "constraint", keras.constraints.NonNeg()) is True
    assert isinstance(block.conv.kernel_constraint, keras.constraints.NonNeg)


def test_tensorboard_writers_are_found_to_flush(tmp_path):  # TensorBoard._writers
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    board = keras.callbacks.TensorBoard(str(tmp_path))
    model.fit(np.zeros((4, 3)), np.zeros((4, 2)), epochs=1, verbose=0, callbacks=[board])
    assert _keras.tensorboard_writers(board)



def test_the_multi_worker_workaround_overrides_a_keras_method_and_reads_the_strategys_mode(two_cpu_strategy):
    # Trainer._maybe_symbolic_build (TensorFlow trainer), CollectiveAllReduceExtended._in_multi_worker_mode;
    # tests/test_multiworker.py runs them on two workers.
    from tensorflow.python.distribute.collective_all_reduce_strategy import (
        CollectiveAllReduceExtended,
    )

    assert callable(getattr(keras.Model, "_maybe_symbolic_build", None))
    assert "_maybe_symbolic_build" in _keras.MultiWorkerFit.__dict__
    assert callable(getattr(CollectiveAllReduceExtended, "_in_multi_worker_mode", None))
    assert not _keras.in_multi_worker_mode(two_cpu_strategy)
    logs = {"loss": tf.constant(1.0)}
    assert _keras.replica_logs(logs) is logs  # unchanged outside a multi-worker cluster
