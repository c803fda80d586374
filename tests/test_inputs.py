"""Tests of the validation boundary (tfnorms._inputs) at every entry point: attacks, trainer, metrics, norms.

Each case used to give a plausible wrong number (or crash deep inside); now it
is right or a clear error. Synthetic tensors only.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfnorms import AdversarialTrainer, _inputs, attacks, metrics, norms
from tfnorms.attacks import loop, losses, projections, steps

NUM_CLASSES = 5
SHAPE = (4, 4, 1)


def dense_model(bias=None, kernel=None):
    """A 4x4x1 -> 5 linear model; ``bias`` / ``kernel`` fix its weights (e.g. "always class 0")."""
    model = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(NUM_CLASSES)])
    layer = model.layers[-1]
    if kernel is not None or bias is not None:
        layer.set_weights([
            np.zeros((16, NUM_CLASSES), "float32") if kernel is None else np.asarray(kernel, "float32"),
            np.zeros(NUM_CLASSES, "float32") if bias is None else np.asarray(bias, "float32"),
        ])
    return model


def images(n=4, seed=0):
    return np.random.default_rng(seed).random((n,) + SHAPE).astype("float32")


def loop_run(model, x, y):
    return loop.run(model, x, y, loss_fn=losses.cross_entropy, step_fn=lambda v, g: steps.sign_step(v, g, 0.01),
                    project_fn=lambda v, x0: projections.project(v, x0, 0.05, np.inf), steps=2)


def trainer_fit(model, x, y):
    trainer = AdversarialTrainer(model, method="pgd", attack=attacks.PGD(0.05, 0.02, 1))
    trainer.compile(optimizer="sgd")
    return trainer.fit(x, y, batch_size=4, epochs=1, verbose=0)


def trainer_evaluate(model, x, y, jit_compile=False):
    trainer = AdversarialTrainer(model, method="trades", eval_attack=attacks.PGD(0.05, 0.02, 1))
    trainer.compile(optimizer="sgd", jit_compile=jit_compile)
    return trainer.evaluate(x, y, batch_size=4, verbose=0, return_dict=True)


ENTRY_POINTS = {
    "PGD": lambda m, x, y: attacks.PGD(0.05, 0.02, 2)(m, x, y),
    "FGSM": lambda m, x, y: attacks.FGSM(0.05)(m, x, y),
    "CW": lambda m, x, y: attacks.CW(0.05, 0.02, 2)(m, x, y),
    "APGD": lambda m, x, y: attacks.APGD(0.05, n_iter=2, seed=0)(m, x, y),
    "FAB": lambda m, x, y: attacks.FAB(0.05, n_iter=2, n_target_classes=1, seed=0)(m, x, y),
    "Square": lambda m, x, y: attacks.Square(0.05, n_queries=2, seed=0)(m, x, y),
    "AutoAttack": lambda m, x, y: attacks.AutoAttack(0.05, version="custom", attacks=["apgd-ce"], n_iter=2,
                                                     verbose=0).evaluate(m, x, y),
    "loop.run": loop_run,
    "evaluate_robustness": lambda m, x, y: metrics.evaluate_robustness(m, x, y, attacks.PGD(0.05, 0.02, 1)),
    "AdversarialTrainer.fit": trainer_fit,
    "AdversarialTrainer.evaluate": trainer_evaluate,
}


# ------------------------------------------------------------------------------------------ 1. labels
@pytest.mark.parametrize("labels, received", [
    (np.array([7, 7, 7, 7]), "min=7, max=7"),  # out of range: was a zero loss, counted as class 0
    (np.array([0, -1, 2, 3]), "min=-1"),  # negative ids
    (np.array([1.7, 0.0, 2.0, 3.0]), "non-integral float labels such as 1.7"),  # was truncated to 1
    (np.full((4, NUM_CLASSES), 0.5, "float32"), "row sums in [2.5, 2.5]"),  # rows that are no distribution
    (np.zeros((4, 3), "int64"), "shape (4, 3)"),  # rows of the wrong length
], ids=["out_of_range", "negative", "non_integral", "not_a_distribution", "wrong_row_length"])
@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_invalid_labels_are_a_clear_error_at_every_entry_point(entry, labels, received):
    with pytest.raises(ValueError) as error:
        ENTRY_POINTS[entry](dense_model(), images(), labels)
    message = str(error.value)
    assert "Invalid value for argument `" in message and "Expected integer class ids in [0, 5)" in message
    assert received in message


def test_out_of_range_labels_no_longer_give_perfect_accuracy():
    always_class_0 = dense_model(bias=[1.0, 0.0, 0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"argument `y`. Expected integer class ids in \[0, 5\)"):
        metrics.evaluate_robustness(always_class_0, images(), np.full(4, 7), attacks.PGD(0.05, 0.02, 1))
    with pytest.raises(ValueError, match="argument `labels`"):
        metrics.correct(np.full(4, 7), np.tile([[1.0, 0, 0, 0, 0]], (4, 1)))


def test_integer_valued_float_ids_and_one_hot_rows_are_the_same_labels():
    model, x = dense_model(), images()
    ids = np.array([0, 3, 1, 4])
    expected = metrics.evaluate_robustness(model, x, ids, attacks.PGD(0.05, 0.02, 2, seed=1))
    for same in (ids.astype("float32"), ids[:, None], np.eye(NUM_CLASSES, dtype="float32")[ids],
                 np.eye(NUM_CLASSES, dtype="int32")[ids]):
        assert metrics.evaluate_robustness(model, x, same, attacks.PGD(0.05, 0.02, 2, seed=1)) == expected


@pytest.mark.parametrize("make", [
    lambda: attacks.PGD(0.1, 0.03, 3, seed=0),
    lambda: attacks.CW(0.1, 0.03, 3, seed=0),
    lambda: attacks.APGD(0.1, n_iter=3, seed=0),
    lambda: attacks.FAB(0.1, n_iter=3, n_target_classes=2, seed=0),
    lambda: attacks.Square(0.1, n_queries=3, seed=0),
], ids=["PGD", "CW", "APGD", "FAB", "Square"])
@pytest.mark.parametrize("dtype", ["int64", "float32"])
def test_an_attack_gives_the_same_result_whatever_it_was_called_with_before(make, dtype):
    # PGD's traced function, relaxed to labels of unknown rank after a call with ids of the same dtype,
    # read one-hot rows as ids (a crash, or a wrong objective).
    model, x = dense_model(), images()
    ids = np.array([0, 3, 1, 4]).astype(dtype)
    one_hot = np.eye(NUM_CLASSES, dtype=dtype)[ids.astype(int)]
    fresh = make()(model, x, one_hot)
    for first, second in ((ids, one_hot), (one_hot, ids)):
        reused = make()
        reused(model, x, first)
        np.testing.assert_allclose(reused(model, x, second), fresh, atol=1e-6)


def test_labels_inside_a_compiled_function_are_checked_at_run_time():
    model, attack = dense_model(), attacks.PGD(0.05, 0.02, 2)
    compiled = tf.function(lambda x, y: attack(model, x, y))
    compiled(tf.constant(images()), tf.constant([0, 1, 2, 3]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"argument `y`. Expected integer class ids in \[0, 5\)"):
        compiled(tf.constant(images()), tf.constant([0, 1, 2, 9]))


# ------------------------------------------------------------------------------------------ 2. images
@pytest.mark.parametrize("bad, received, fix", [
    ((images() * 255).astype("uint8"), "dtype=uint8, min=", "Divide by 255"),  # was all ones after clipping
    (images() * 255, "dtype=float32, min=", "Divide by 255"),
    ((images() - 0.5) / 0.25, "dtype=float32, min=-", "undo a mean/std normalisation"),
    (np.where(images() > 0.5, np.nan, images()).astype("float32"), "(NaN or Inf values)", "Replace the NaN"),
], ids=["uint8", "0_to_255_floats", "standardised", "nan"])
@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_images_outside_unit_interval_are_a_clear_error_at_every_entry_point(entry, bad, received, fix):
    with pytest.raises(ValueError) as error:
        ENTRY_POINTS[entry](dense_model(), bad, np.array([0, 1, 2, 3]))
    message = str(error.value)
    assert "Invalid value for argument `x`. Expected floating-point images in [0, 1]" in message
    assert received in message and fix in message


@pytest.mark.parametrize("jit_compile", [False, True])
def test_trainer_checks_a_tf_data_pipeline_also_under_xla(jit_compile):
    # tf.debugging assertions are dropped by XLA; the trainer checks tf.data batches in their pipeline.
    trainer = AdversarialTrainer(dense_model(), method="pgd", attack=attacks.PGD(0.05, 0.02, 1))
    trainer.compile(optimizer="sgd", jit_compile=jit_compile)
    good = tf.data.Dataset.from_tensor_slices((images(8), np.arange(8) % NUM_CLASSES)).batch(4)
    trainer.fit(good, epochs=1, verbose=0, shuffle=False)
    for x, y in ((images(8) * 255, np.arange(8) % NUM_CLASSES), (images(8), np.full(8, 7))):
        bad = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
        with pytest.raises(tf.errors.InvalidArgumentError, match="Invalid value for argument"):
            trainer.fit(bad, epochs=1, verbose=0, shuffle=False)
    uint8 = tf.data.Dataset.from_tensor_slices(((images(8) * 255).astype("uint8"), np.zeros(8, "int32"))).batch(4)
    with pytest.raises(ValueError, match="dtype=uint8"):  # the dtype is static: a trace-time error
        trainer.fit(uint8, epochs=1, verbose=0, shuffle=False)


# ---------------------------------------------------------------------------------- 3. non-finite logits
def nan_model():
    model = dense_model()
    model.set_weights([np.full(w.shape, np.nan, "float32") for w in model.get_weights()])
    return model


def test_nan_weights_give_no_accuracy():
    x, y = images(), np.zeros(4, "int32")  # argmax of NaN logits is 0: these labels were all "correct"
    with pytest.raises(ValueError, match="argument `model`. Expected finite logits .* for 4 of 4 points"):
        metrics.evaluate_robustness(nan_model(), x, y, attacks.PGD(0.05, 0.02, 1))
    assert np.isnan(metrics.correct(y, nan_model()(x)).numpy()).all()
    assert np.isnan(metrics.unchanged(nan_model()(x), dense_model()(x)).numpy()).all()
    with pytest.raises(tf.errors.InvalidArgumentError, match="Expected finite logits"):
        trainer_evaluate(nan_model(), x, y)
    logs = trainer_evaluate(nan_model(), x, y, jit_compile=True)  # XLA drops the assertion: NaN, not 1.0
    assert all(np.isnan(logs[name]) for name in ("clean_accuracy", "robust_accuracy", "stability"))
    history = trainer_fit(nan_model(), x, y)  # training diverged: NaN loss, and no accuracy of 1.0
    assert np.isnan(history.history["clean_accuracy"][-1]) and np.isnan(history.history["adversarial_accuracy"][-1])
    with pytest.raises(ValueError, match="Expected finite logits"):
        attacks.APGD(0.05, n_iter=2)(nan_model(), x, y)


def test_autoattack_counts_non_finite_points_neither_correct_nor_broken():
    # Class 1 wins at every point; an attack that returns NaN used to "break" them all (argmax of NaN is 0).
    model, x, y = dense_model(bias=[0.0, 2.0, 0.0, 0.0, 0.0]), images(), np.ones(4, "int32")
    nan_attack = lambda model, x, y: np.full(np.shape(x), np.nan, "float32")  # noqa: E731
    with pytest.warns(attacks.AutoAttackWarning, match="returned 4 points with NaN / Inf values"):
        evaluation = attacks.AutoAttack(0.05, version="custom", attacks=[nan_attack], verbose=0).evaluate(model, x, y)
    assert evaluation.robust_accuracy == 1.0 and evaluation.report["points_broken_per_attack"] == {"function": 0}
    assert evaluation.report["non_finite_candidates_per_attack"] == {"function": 4}
    np.testing.assert_array_equal(evaluation.adversarial, x)

    # Infinite clean logits (float32 overflow): no prediction, so neither correct nor broken by an attack.
    overflow = dense_model(kernel=np.tile([0.0, 1e38, 0.0, 0.0, 0.0], (16, 1)))
    with pytest.warns(attacks.AutoAttackWarning, match="4 points have non-finite clean logits"):
        evaluation = attacks.AutoAttack(0.05, version="custom", attacks=["apgd-ce"], n_iter=2,
                                        verbose=0).evaluate(overflow, x, y)
    assert evaluation.clean_accuracy == 0.0 and evaluation.report["non_finite_points"] == 4
    assert list(evaluation.broken_by) == ["non-finite"] * 4 and evaluation.report["points_broken_per_attack"]["apgd-ce"] == 0


# ------------------------------------------------------------------------------------------ 4. empty batches
@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_empty_batches_and_data_sets_are_a_clear_error(entry):
    with pytest.raises(ValueError, match=r"argument `x`. Expected (a non-empty batch|at least one point)"):
        ENTRY_POINTS[entry](dense_model(), np.zeros((0,) + SHAPE, "float32"), np.zeros(0, "int32"))


def test_an_empty_tf_data_set_has_no_accuracy():
    empty = tf.data.Dataset.from_tensor_slices((np.zeros((0,) + SHAPE, "float32"), np.zeros(0, "int32"))).batch(4)
    with pytest.raises(ValueError, match="zero points have no accuracy"):
        metrics.evaluate_robustness(dense_model(), empty, attack=attacks.PGD(0.05, 0.02, 1))


# ------------------------------------------------------------------------------------------ 5. NaN kernels
NAN_CONV = np.where(np.eye(3)[:, :, None, None] > 0, np.nan, 1.0) * np.ones((3, 3, 2, 2))
NAN_DENSE = np.array([[1.0, np.nan], [0.5, 2.0]])


@pytest.mark.parametrize("compute", [
    lambda: norms.dense_spectral_norm(NAN_DENSE),
    lambda: norms.conv2d_spectral_norm(NAN_CONV, input_shape=(6, 6), padding="circular"),
    lambda: norms.conv2d_spectral_norm(NAN_CONV, input_shape=(6, 6), padding="same"),
    lambda: norms.dense_clip_singular_values(NAN_DENSE, 1.0),
    lambda: norms.conv2d_clip_singular_values(NAN_CONV, 1.0, input_shape=(6, 6)),
], ids=["dense_spectral_norm", "conv_circular", "conv_same", "dense_clip", "conv_clip"])
def test_nan_kernels_are_a_clear_error(compute):
    with pytest.raises(ValueError, match=r"argument `kernel`. Expected finite values. Received: \d+ NaN and 0 infinite"):
        compute()


def test_nan_kernels_inside_a_compiled_function():
    clip = tf.function(lambda kernel: norms.conv2d_clip_singular_values(kernel, 1.0, input_shape=(6, 6)))
    clip(tf.ones((3, 3, 2, 2)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="argument `kernel`. Expected finite values"):
        clip(tf.constant(NAN_CONV, tf.float32))


# ------------------------------------------------------------------------------------------ the checks themselves
def test_check_labels_normalises_to_ids_or_rows():
    np.testing.assert_array_equal(_inputs.check_labels(np.array([[2], [0]]), 3).numpy(), [2, 0])
    rows = _inputs.check_labels(np.array([[0.1, 0.9, 0.0]], "float16"), 3)
    assert rows.dtype == tf.float32 and rows.shape == (1, 3)
    with pytest.raises(ValueError, match="one label per example"):
        _inputs.check_labels(np.arange(3), 5, batch_size=4)
    with pytest.raises(ValueError, match="dtype=bool"):
        _inputs.check_labels(np.array([True, False]), 2)
