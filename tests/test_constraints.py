"""Behaviour tests of tfnorms.constraints.

The projections and the clipping of tfnorms.norms themselves are tested in
test_norms_projections.py and test_norms_clipping.py.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import norm_bruteforce as bf
from tfnorms import norms
from tfnorms.constraints import MaxBatchNormNorm, MaxOperatorNorm, SingularValueClip, configure_constraints
from tfnorms.regularizers import NormDecay, NormDecayMomentum, configure_norm_decay

RTOL = 1e-5  # "exactly" = up to float32 rounding of the group sums


# ---------------------------------------------------------------- SVC


def test_svc_test_vector_all_formulations():
    kernel = bf.kdet()
    before = bf.l2(bf.circular_matrix(kernel, (4, 4)))
    assert before == pytest.approx(39.5368, abs=1e-4)
    for clipped in (
        norms.conv2d_clip_singular_values(kernel, 10.0, input_shape=(4, 4)),
        norms.conv2d_clip_singular_values(kernel, 10.0, input_shape=(4, 4), method="svd"),
        norms.conv2d_clip_singular_values(kernel, 10.0, input_shape=(4, 4), method="hermitian"),
        norms.conv2d_clip_singular_values_reference(kernel, 10.0, input_shape=(4, 4)),
        SingularValueClip(10.0, input_shape=(4, 4))(kernel),
    ):
        assert bf.l2(bf.circular_matrix(clipped.numpy(), (4, 4))) == pytest.approx(14.1079, abs=1e-4)


def test_svc_compiles_under_xla():
    kernel = tf.constant(np.random.default_rng(8).normal(size=(3, 3, 4, 4)), tf.float32)
    for method in ("gram", "svd", "hermitian"):
        constraint = SingularValueClip(1.0, input_shape=(8, 8), method=method)
        fn = tf.function(constraint, jit_compile=True)
        np.testing.assert_allclose(fn(kernel).numpy(), constraint(kernel).numpy(), atol=1e-5)


def test_svc_more_passes_converge_to_clip_to():
    kernel = np.random.default_rng(9).normal(size=(3, 3, 3, 6))
    one = SingularValueClip(0.5, input_shape=(8, 8))(kernel).numpy()
    many = SingularValueClip(0.5, input_shape=(8, 8), passes=8)(kernel).numpy()
    sigma_one, sigma_many = (bf.l2(bf.circular_matrix(k, (8, 8))) for k in (one, many))
    assert 0.5 < sigma_many < 1.06 * 0.5 and sigma_many < sigma_one < 1.3 * 0.5, (sigma_one, sigma_many)


def svc_model(clip_to):
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(6, 3, padding="same", kernel_constraint=SingularValueClip(clip_to), name="conv"),
            keras.layers.ReLU(),
            keras.layers.Flatten(),
            keras.layers.Dense(4, kernel_constraint=SingularValueClip(clip_to), name="dense"),
        ]
    )
    configure_constraints(model)
    return model


def test_svc_constraint_brings_spectral_norm_to_clip_to_during_fit():
    x, y = bf.synthetic_data(n=64)
    model = svc_model(0.5)
    conv, dense = model.get_layer("conv"), model.get_layer("dense")
    assert conv.kernel_constraint.input_shape == (8, 8)
    before = bf.l2(bf.circular_matrix(conv.kernel.numpy(), (8, 8)))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=16, epochs=10, verbose=0)
    after = bf.l2(bf.circular_matrix(conv.kernel.numpy(), (8, 8)))
    # One clip-and-crop pass per step against the gradient: the norm settles a little above clip_to.
    assert before > 1.5 and 0.5 * (1 - 1e-3) <= after <= 0.5 * 1.35, (before, after)
    assert np.linalg.svd(dense.kernel.numpy(), compute_uv=False)[0] <= 0.5 * (1 + RTOL)


# ---------------------------------------------------------------- MaxOperatorNorm in training


class NormRecorder(keras.callbacks.Callback):
    def __init__(self, fn):
        super().__init__()
        self.fn, self.values = fn, []

    def on_train_batch_end(self, batch, logs=None):
        self.values.append(self.fn(self.model))


@pytest.mark.parametrize("jit_compile", [False, True])
def test_max_operator_norm_holds_after_every_step(jit_compile):
    x, y = bf.synthetic_data(n=64)
    keras.utils.set_random_seed(2)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(8, 3, strides=2, padding="same", kernel_constraint=MaxOperatorNorm(1.5, ord=1), name="c1"),
            keras.layers.ReLU(),
            keras.layers.Conv2D(8, 3, padding="same", kernel_constraint=MaxOperatorNorm(2.0, ord=[1, np.inf]), name="c2"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(4, kernel_constraint=MaxOperatorNorm(1.0, ord=np.inf), name="d"),
        ]
    )
    configure_constraints(model)
    assert model.get_layer("c1").kernel_constraint.geometry["strides"] == (2, 2)

    def exact(model):
        c1, c2, d = (model.get_layer(n).kernel.numpy() for n in ("c1", "c2", "d"))
        m1, m2 = bf.conv_matrix(c1, (8, 8), 2), bf.conv_matrix(c2, (4, 4), 1)
        return bf.l1(m1), bf.l1(m2), bf.linf(m2), np.abs(d).sum(axis=0).max()

    first = exact(model)
    recorder = NormRecorder(exact)
    model.compile(
        optimizer=keras.optimizers.SGD(0.5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[recorder])
    values = np.array(recorder.values)
    assert first[0] > 1.5 and first[1] > 2.0  # the bounds are active
    assert np.all(values <= np.array([1.5, 2.0, 2.0, 1.0]) * (1 + RTOL)), values.max(axis=0)
    assert np.all(values[-1] >= np.array([1.5, 2.0, 2.0, 1.0]) * 0.5)


def test_constraints_really_applied_after_fit_on_dense():
    """Regression guard: Keras 3.0 once skipped constraints on Dense (keras-team/keras#18883)."""
    x, y = bf.synthetic_data(n=32)
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(4, kernel_constraint=MaxOperatorNorm(0.5))]
    )
    dense = model.layers[-1]
    assert np.abs(dense.kernel.numpy()).sum(axis=1).max() > 0.5
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=1, verbose=0)
    assert np.abs(dense.kernel.numpy()).sum(axis=1).max() <= 0.5 * (1 + RTOL)


# ---------------------------------------------------------------- BatchNorm


def test_batch_norm_projection_bounds_the_inference_norm():
    x, y = bf.synthetic_data(n=64)
    keras.utils.set_random_seed(4)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, padding="same"),
            keras.layers.BatchNormalization(
                momentum=0.5, gamma_initializer=keras.initializers.Constant(3.0),
                gamma_constraint=MaxBatchNormNorm(1.0), name="bn",
            ),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(4),
        ]
    )
    bn = model.get_layer("bn")
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(ValueError, match="configure_constraints"):
        model.fit(x, y, epochs=1, verbose=0)
    configure_constraints(model)
    assert bn.gamma_constraint.is_bound
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    # The bound uses the moving variance at the time of the step, which BN's own update then moves.
    gamma, var = bn.gamma.numpy(), bn.moving_variance.numpy()
    assert np.max(np.abs(gamma) / np.sqrt(var + bn.epsilon)) <= 1.5
    paper = MaxBatchNormNorm(5.0, mode="max_group")
    np.testing.assert_allclose(
        norms.batch_norm_project_gamma([3.0, -8.0, 1.0], [0.0, 3.0, 0.0], 1.0, 2.0, "max_group"), [3.0, -4.0, 1.0]
    )
    assert paper.get_config() == {"max_value": 5.0, "mode": "max_group"}


def test_batch_norm_projection_exact_right_after_the_step():
    bn = keras.layers.BatchNormalization(epsilon=1.0)
    bn.build((None, 3))
    bn.gamma.assign([3.0, -8.0, 1.0])
    bn.moving_variance.assign([0.0, 3.0, 0.0])
    bound = MaxBatchNormNorm(2.0).bind(bn)
    np.testing.assert_allclose(bound(bn.gamma).numpy(), [2.0, -4.0, 1.0])
    assert float(norms.batch_norm_norm(bound(bn.gamma), bn.moving_variance, 1.0)) == pytest.approx(2.0)


# ---------------------------------------------------------------- saving with every object


def everything_model():
    keras.utils.set_random_seed(5)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(
        6, 3, padding="same", kernel_regularizer=NormDecay(1e-3), kernel_constraint=SingularValueClip(2.0)
    )(inputs)
    x = keras.layers.BatchNormalization(gamma_constraint=MaxBatchNormNorm(5.0, mode="max_group"))(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(
        6, 3, strides=2, padding="same",
        kernel_regularizer=NormDecay(1e-3, ord=[1, np.inf]), kernel_constraint=MaxOperatorNorm(3.0, ord=1),
    )(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(
        4, kernel_regularizer=NormDecay(1e-3, ord=np.inf), kernel_constraint=MaxOperatorNorm(2.0, ord=np.inf, mode="max_group")
    )(x)
    model = keras.Model(inputs, outputs)
    configure_norm_decay(model)
    configure_constraints(model)
    model.compile(
        optimizer=NormDecayMomentum(keras.optimizers.SGD(0.05, momentum=0.9)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def test_model_with_every_object_saves_and_loads(tmp_path):
    x, y = bf.synthetic_data(n=32)
    model = everything_model()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    for a, b in zip(model.layers, loaded.layers):
        for attr in ("kernel_regularizer", "kernel_constraint", "gamma_constraint"):
            if getattr(a, attr, None) is not None:
                assert type(getattr(b, attr)) is type(getattr(a, attr))
                assert getattr(b, attr).get_config() == getattr(a, attr).get_config()
                json.dumps(getattr(a, attr).get_config())
    assert isinstance(loaded.optimizer, NormDecayMomentum)
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Training continues after re-binding the BatchNorm constraint.
    configure_constraints(loaded)
    loaded.fit(x, y, batch_size=16, epochs=1, verbose=0)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "factory, match",
    [
        (lambda: SingularValueClip(0.0), r"argument `clip_to`. Expected a finite number > 0. Received: clip_to=0.0"),
        (lambda: SingularValueClip(1.0, method="qr"), r"argument `method`. Expected one of \"gram\", \"svd\""),
        (lambda: SingularValueClip(1.0, input_shape=(8,)), "argument `input_shape`"),
        (lambda: MaxOperatorNorm(-1.0), "argument `max_value`"),
        (lambda: MaxOperatorNorm(1.0, ord=2), "argument `ord`. Expected one of 1, numpy.inf"),
        (lambda: MaxOperatorNorm(1.0, mode="every"), r"argument `mode`. Expected one of \"all\", \"max_group\""),
        (lambda: MaxBatchNormNorm(float("nan")), "argument `max_value`"),
        (lambda: SingularValueClip(1.0)(np.ones((3, 3, 2, 2))), "needs the layer's input size"),
        (lambda: MaxOperatorNorm(1.0)(np.ones((3, 2))[None]), "Dense kernels \\(rank 2\\)"),
        (lambda: norms.conv2d_clip_singular_values(np.ones((3, 3, 1, 1)), 1.0, input_shape=(2, 2)), "at least as large"),
    ],
)
def test_invalid_arguments_raise_clear_errors(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()
