"""Tests of APGD, FAB-T, Square and the AutoAttack cascade: test vectors, invariants, ordering, sanity flags."""

import json
import pathlib
import subprocess
import sys
import threading

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.optimize import linprog

from tfnorms import _keras, attacks, data, metrics
from tfnorms.attacks import _common, apgd, losses
from tfnorms.attacks.fab import project_linf_box

ROOT = pathlib.Path(__file__).resolve().parents[1]
EPS = 0.1


@pytest.fixture(scope="module")
def digits():
    (x_train, y_train), (x_test, y_test) = data.digits_arrays(8)
    return x_train, y_train, x_test[:96], y_test[:96]


def tiny_classifier(name="tiny_digits", softmax=False):
    layers = [
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, activation="relu", padding="same"),
        keras.layers.Flatten(),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(10, activation="softmax" if softmax else None),
    ]
    return keras.Sequential(layers, name=name)


@pytest.fixture(scope="module")
def trained(digits):
    """A naturally trained CNN on 8x8 digits (~97% test accuracy, a few seconds on 2 cores)."""
    x_train, y_train, _, _ = digits
    keras.utils.set_random_seed(0)
    model = tiny_classifier()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, epochs=15, batch_size=64, verbose=0)
    return model


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(np.asarray(x), verbose=0), -1) == y))


def linf(x_adv, x):
    return np.abs(np.asarray(x_adv, np.float64) - np.asarray(x, np.float64)).reshape(len(x), -1).max(1)


def test_dlr_test_vectors():
    # The DLR test vector of docs/theory.md#dlr.
    z = np.array([[2.0, 1.0, 0.5, -1.0, 0.0]], "float32")
    assert round(float(losses.dlr(z, np.array([0]))[0]), 4) == -0.6667
    assert round(float(losses.targeted_dlr(z, np.array([0]), np.array([1]))[0]), 4) == -0.5714


def test_apgd_checkpoint_schedule():
    # The APGD checkpoints of docs/theory.md#apgd.
    assert attacks.checkpoint_schedule(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert attacks.checkpoint_schedule(10) == [2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert attacks.checkpoint_schedule(1) == [1]
    assert attacks.checkpoint_schedule(1000)[:3] == [220, 410, 570]
    with pytest.raises(ValueError, match="argument `n_iter`"):
        attacks.checkpoint_schedule(0)


def test_square_fraction_schedule():
    p = [attacks.square_fraction(i) for i in (0, 10, 11, 50, 51, 200, 201, 4999, 8001)]
    assert p == [0.8, 0.8, 0.4, 0.4, 0.2, 0.2, 0.1, 0.8 / 128, 0.8 / 512]
    assert float(attacks.square_fraction(tf.constant(201))) == pytest.approx(0.1)


def test_fab_projection_is_the_minimal_linf_step_in_the_box():
    rng = np.random.default_rng(0)
    for trial in range(30):
        d = int(rng.integers(2, 7))
        p = rng.random(d).astype("float32")
        p[rng.random(d) < 0.2] = rng.integers(0, 2)
        w = rng.normal(size=d).astype("float32")
        w[rng.random(d) < 0.2] = 0.0
        c = np.float32(rng.normal() * (0.3 if trial % 3 else 3.0))
        step = project_linf_box(p[None], w[None], np.array([c]))[0].numpy()
        assert np.all(p + step >= -1e-6) and np.all(p + step <= 1 + 1e-6)
        # Reference: the LP  min s  s.t.  <w, d> = c,  -s <= d <= s,  -p <= d <= 1 - p.
        objective = np.r_[np.zeros(d), 1.0]
        a_ub = np.block([[np.eye(d), -np.ones((d, 1))], [-np.eye(d), -np.ones((d, 1))]])
        bounds = [(-p[i], 1 - p[i]) for i in range(d)] + [(0, None)]
        lp = linprog(objective, A_ub=a_ub, b_ub=np.zeros(2 * d), A_eq=np.r_[w, 0.0][None], b_eq=[c], bounds=bounds)
        if lp.status == 0:
            assert np.dot(w, step) == pytest.approx(c, abs=1e-4)
            assert np.abs(step).max() == pytest.approx(lp.x[-1], abs=1e-5)
        else:  # the hyperplane is out of the box: the step goes to the corner that gets closest
            corner = np.where(np.sign(c * w) > 0, 1 - p, -p) * (w != 0)
            np.testing.assert_allclose(step, corner, atol=1e-6)


def test_apgd_one_iteration_matches_the_update_rule(trained, digits):
    """n_iter=1: x0 = clip(x + eps t/||t||), x1 = P(x0 + 2 eps sign(g0)); the best loss is max(L(x0), L(x1))."""
    _, _, x, y = digits
    x, y = x[:16], y[:16]
    eps = 0.01
    attack = attacks.APGD(eps, n_iter=1)
    result = attack.run(trained, x, y, seed=5)
    t = tf.random.stateless_uniform(x.shape, tf.constant([5, 0], tf.int32), -1.0, 1.0).numpy()
    x0 = np.clip(x + eps * t / np.abs(t).reshape(16, -1).max(1)[:, None, None, None], 0, 1)
    x0_tensor = tf.constant(x0, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x0_tensor)
        loss0 = losses.cross_entropy(trained(x0_tensor), y)
        total = tf.reduce_sum(loss0)
    gradient = tape.gradient(total, x0_tensor).numpy()
    x1 = np.clip(np.clip(x0 + 2 * eps * np.sign(gradient), x - eps, x + eps), 0, 1).astype(np.float32)
    loss1 = losses.cross_entropy(trained(x1), y).numpy()
    clean_wrong = np.argmax(trained(x).numpy(), -1) != y
    expected = np.maximum(loss0.numpy(), loss1)
    np.testing.assert_allclose(result.loss.numpy()[~clean_wrong], expected[~clean_wrong], rtol=1e-5)


def numpy_apgd_ce(weights, x, y, x0, eps, n_iter, rho=0.75):
    """An independent NumPy transcription of APGD (docs/theory.md#apgd) for ``z = tanh(x w1 + b1) w2 + b2``."""
    w1, b1, w2, b2 = weights
    onehot = np.eye(w2.shape[1])[y]

    def loss_and_gradient(points):
        h = np.tanh(points @ w1 + b1)
        z = h @ w2 + b2
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        return -np.log((p * onehot).sum(1)), (((p - onehot) @ w2.T) * (1 - h**2)) @ w1.T

    project = lambda v: np.clip(np.clip(v, x - eps, x + eps), 0, 1)  # noqa: E731
    checks = attacks.checkpoint_schedule(n_iter)
    x_adv, x_prev = x0.copy(), x0.copy()
    loss, gradient = loss_and_gradient(x_adv)
    x_best, gradient_best, loss_best = x_adv.copy(), gradient.copy(), loss.copy()
    step = np.full(len(x), 2 * eps)
    loss_steps = np.zeros((n_iter, len(x)))
    reduced_last, loss_best_last = np.ones(len(x), bool), loss_best.copy()
    previous_check = 0
    for i in range(n_iter):
        a = 1.0 if i == 0 else 0.75
        z = project(x_adv + step[:, None] * np.sign(gradient))
        x_new = project(x_adv + a * (z - x_adv) + (1 - a) * (x_adv - x_prev))
        x_prev, x_adv = x_adv, x_new
        loss, gradient = loss_and_gradient(x_adv)
        loss_steps[i] = loss
        better = loss > loss_best
        x_best[better], gradient_best[better], loss_best[better] = x_adv[better], gradient[better], loss[better]
        if i + 1 in checks:
            k = i + 1 - previous_check
            previous_check = i + 1
            increases = sum(loss_steps[i - j] > loss_steps[i - j - 1] for j in range(k))  # index -1 wraps
            halve = (increases <= rho * k) | (~reduced_last & (loss_best_last >= loss_best))
            reduced_last, loss_best_last = halve, loss_best.copy()
            step[halve] /= 2
            x_adv[halve], gradient[halve] = x_best[halve], gradient_best[halve]
    return loss_best, step


def test_apgd_matches_an_independent_transcription():
    rng = np.random.default_rng(3)
    d, hidden, classes, n, eps, n_iter = 20, 16, 5, 16, 0.3, 40
    weights = [rng.normal(size=(d, hidden)) * 2, rng.normal(size=hidden), rng.normal(size=(hidden, classes)) * 2,
               rng.normal(size=classes)]
    weights = [v.astype(np.float32) for v in weights]
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(hidden, activation="tanh"),
                              keras.layers.Dense(classes)])
    model.set_weights(weights)
    x = rng.random((n, d)).astype(np.float32)
    y = np.argmax(model.predict(x, verbose=0), 1)  # every point starts correctly classified
    t = tf.random.stateless_uniform(x.shape, tf.constant([7, 0], tf.int32), -1.0, 1.0).numpy()
    x0 = np.clip(x + eps * t / np.abs(t).max(1, keepdims=True), 0, 1)
    expected_loss, expected_step = numpy_apgd_ce([v.astype(np.float64) for v in weights], x, y, x0, eps, n_iter)
    assert len(set(expected_step)) > 2  # the checks halved the step sizes of different examples differently
    result = attacks.APGD(eps, n_iter=n_iter).run(model, x, y, seed=7)
    np.testing.assert_allclose(result.loss.numpy(), expected_loss, rtol=1e-4)


@pytest.mark.parametrize(
    "attack",
    [
        attacks.APGD(EPS, n_iter=5),
        attacks.APGD(EPS, loss="dlr", n_iter=5),
        attacks.APGD(EPS, loss="dlr", targeted=True, n_iter=5, n_target_classes=2),
        attacks.APGD(0.5, ord=2, n_iter=5),
        attacks.FAB(EPS, n_iter=5, n_target_classes=2, n_restarts=2),
        attacks.Square(EPS, n_queries=50),
    ],
    ids=lambda a: f"{type(a).__name__}-{a.get_config().get('loss', '')}-{a.get_config().get('ord', '')}",
)
def test_every_attack_stays_in_ball_and_box(attack, trained, digits):
    _, _, x, y = digits
    x = x[:24].copy()
    x[::2, :2] = 1.0  # pixels on the box boundary
    x_adv = attack(trained, x, y[:24]).numpy()
    assert x_adv.dtype == np.float32 and x_adv.shape == x.shape
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    if attack.get_config().get("ord") == "2":
        assert np.all(np.linalg.norm((x_adv - x).reshape(24, -1), axis=1) <= attack.eps * (1 + 1e-5))
    else:
        assert np.all(linf(x_adv, x) <= attack.eps + 1e-6)
    assert linf(x_adv, x).max() > 0  # the attack moved


def test_attacks_also_run_inside_tf_function(trained, digits):
    """evaluate_robustness traces the attack; restarts/targets then run on possibly empty subsets."""
    _, _, x, y = digits
    x, y = x[:16], y[:16]
    for attack in (attacks.APGD(0.3, "dlr", targeted=True, n_iter=3, n_target_classes=3, seed=0),
                   attacks.FAB(0.3, n_iter=5, n_target_classes=3, seed=0), attacks.Square(0.3, n_queries=20, seed=0)):
        graph = metrics.evaluate_robustness(trained, x, y, attack=attack, batch_size=16)["robust_accuracy"]
        eager = accuracy(trained, attack(trained, x, y), y)
        assert graph == pytest.approx(eager)
        assert graph < 0.5


def test_autoattack_is_at_most_apgd_ce_which_is_at_most_pgd20(trained, digits):
    _, _, x, y = digits
    pgd20 = accuracy(trained, attacks.PGD(EPS, EPS / 4, 20, seed=0)(trained, x, y), y)
    apgd_ce = accuracy(trained, attacks.APGD(EPS, n_iter=40, seed=1)(trained, x, y), y)
    evaluation = attacks.AutoAttack(EPS, seed=2, n_iter=40, n_queries=300, verbose=0).evaluate(trained, x, y)
    one_point = 1.0 / len(y)
    assert evaluation.robust_accuracy <= apgd_ce + one_point
    assert apgd_ce <= pgd20 + one_point
    assert 0.2 < evaluation.robust_accuracy < evaluation.clean_accuracy  # a non-trivial comparison
    # Per-point results agree with the report and with the model on the returned examples.
    assert evaluation.report["robust_accuracy"] == evaluation.robust_accuracy
    broken = ~evaluation.robust & evaluation.clean_correct
    predictions = np.argmax(trained.predict(evaluation.adversarial, verbose=0), -1)
    assert np.all(predictions[broken] != y[broken])
    assert np.all(linf(evaluation.adversarial, x) <= EPS + 1e-6)
    assert set(evaluation.broken_by[broken]) <= {"apgd-ce", "apgd-t", "fab-t", "square"}
    per_attack = list(evaluation.report["robust_accuracy_per_attack"].values())
    assert per_attack == sorted(per_attack, reverse=True) and per_attack[-1] == evaluation.robust_accuracy
    assert evaluation.flags == []


def test_square_alone_breaks_a_naturally_trained_model(trained, digits):
    _, _, x, y = digits
    result = attacks.Square(EPS, n_queries=300, seed=0).run(trained, x, y)
    clean = accuracy(trained, x, y)
    after = accuracy(trained, result.adversarial, y)
    assert after < clean - 0.15
    predictions = np.argmax(trained.predict(result.adversarial.numpy(), verbose=0), -1)
    assert np.all(predictions[result.success.numpy()] != y[result.success.numpy()])
    assert result.queries.numpy().max() <= 301  # the stripes start plus one query per iteration


def test_fab_finds_small_adversarial_perturbations(trained, digits):
    _, _, x, y = digits
    result = attacks.FAB(EPS, n_iter=30, n_target_classes=3, seed=0).run(trained, x[:48], y[:48])
    success = result.success.numpy()
    assert success.mean() > 0.2
    predictions = np.argmax(trained.predict(result.adversarial.numpy(), verbose=0), -1)
    assert np.all(predictions[success] != y[:48][success])
    assert np.all(result.norm.numpy()[success] <= EPS)


def test_softmax_output_is_flagged(trained, digits):
    _, _, x, y = digits
    probabilities = tiny_classifier("softmax_model", softmax=True)
    probabilities.set_weights(trained.get_weights())
    auto = attacks.AutoAttack(EPS, version="custom", attacks=["apgd-ce"], n_iter=2, seed=0, verbose=0)
    with pytest.warns(attacks.AutoAttackWarning, match="probabilities"):
        evaluation = auto.evaluate(probabilities, x[:16], y[:16])
    assert any("logits" in flag for flag in evaluation.flags)
    # The logits model raises no flag.
    assert auto.evaluate(trained, x[:16], y[:16]).flags == []


class NoisyLogits(keras.layers.Layer):
    def call(self, inputs):
        return inputs + tf.random.normal(tf.shape(inputs), stddev=0.5)


def test_randomness_and_masked_gradients_are_flagged(trained, digits):
    _, _, x, y = digits
    noisy = keras.Sequential([trained, NoisyLogits()])
    auto = attacks.AutoAttack(EPS, version="custom", attacks=["apgd-ce"], n_iter=2, seed=0, verbose=0)
    with pytest.warns(attacks.AutoAttackWarning, match="randomised"):
        auto.evaluate(noisy, x[:16], y[:16])
    # Gradients blocked at the input: zero gradients, and Square breaks what APGD cannot.
    inputs = keras.Input((8, 8, 1))
    masked = keras.Model(inputs, trained(keras.layers.Lambda(tf.stop_gradient)(inputs)), name="masked")
    cascade = attacks.AutoAttack(EPS, version="custom", attacks=["apgd-ce", "square"], n_iter=5, n_queries=300,
                                 seed=0, verbose=0)
    with pytest.warns(attacks.AutoAttackWarning):
        evaluation = cascade.evaluate(masked, x[:48], y[:48])
    text = " ".join(evaluation.flags)
    assert "zero input gradient" in text and "Square" in text
    assert evaluation.report["points_broken_per_attack"]["apgd-ce"] == 0


def test_report_is_json_reproducible_and_records_the_seed(trained, digits, tmp_path):
    _, _, x, y = digits
    x, y = x[:32], y[:32]
    auto = attacks.AutoAttack(EPS, version="custom", attacks=["apgd-ce", "apgd-t"], n_iter=5, batch_size=12, verbose=0)
    first = auto.evaluate(trained, x, y, dataset="digits")
    report = first.report
    for key in ("name", "dataset", "threat_model", "eps", "clean_acc", "autoattack_acc", "clean_accuracy",
                "robust_accuracy", "robust_accuracy_per_attack", "n_points", "version", "seed", "flags"):
        assert key in report
    assert report["name"] == "tiny_digits" and report["n_points"] == 32 and report["dataset"] == "digits"
    assert report["autoattack_acc"] == f"{100 * first.robust_accuracy:.2f}"
    first.to_json(tmp_path / "report.json")
    assert json.loads((tmp_path / "report.json").read_text()) == report
    # The recorded seed reproduces the run exactly, on arrays or on a tf.data pipeline.
    again = attacks.AutoAttack(EPS, version="custom", attacks=["apgd-ce", "apgd-t"], n_iter=5, batch_size=12,
                               seed=report["seed"], verbose=0)
    repeat = again.evaluate(trained, tf.data.Dataset.from_tensor_slices((x, y)).batch(7))
    np.testing.assert_array_equal(repeat.robust, first.robust)
    np.testing.assert_array_equal(repeat.adversarial, first.adversarial)


def test_cascade_traces_each_compiled_function_once(trained, digits):
    """Every subset size (target classes, batches, a second call on fewer points) reuses one trace per function."""
    _, _, x, y = digits
    auto = attacks.AutoAttack(EPS, seed=0, n_iter=2, n_queries=5, batch_size=10, verbose=0)
    for n in (24, 13):
        result = auto.evaluate(trained, x[:n], y[:n])
        assert 0 < result.robust_accuracy < result.clean_accuracy  # points left and broken: subsets shrink
    assert auto.tracing_counts() == {name: 1 for name in ("clean_pass", "predict", "apgd-ce", "apgd-t", "fab-t", "square")}
    fab = auto._attack_list()[2][1]
    fab.run(trained, x[:3], y[:3], seed=1)
    assert fab.tracing_count() == 1


def test_apgd_ce_and_apgd_t_share_one_trace_and_keep_their_results(trained, digits):
    """The cascade's APGD-CE and APGD-T run one compiled loop (loss picked by a tensor) with the results of each alone."""
    _, _, x, y = digits
    x, y = x[:12], y[:12]
    auto = attacks.AutoAttack(EPS, seed=0, n_iter=3, verbose=0)
    (_, apgd_ce), (_, apgd_t) = auto._attack_list()[:2]
    shared = [attack.run(trained, x, y, seed=5) for attack in (apgd_ce, apgd_t)]
    assert apgd_ce.tracing_count() == apgd_t.tracing_count() == 1 and apgd_ce._compiled is apgd_t._compiled
    alone = [attack.run(trained, x, y, seed=5) for attack in (attacks.APGD(EPS, "ce", n_iter=3),
                                                              attacks.APGD(EPS, "dlr", targeted=True, n_iter=3))]
    assert not np.all(shared[1].success) and np.any(shared[1].success)  # APGD-T both fails and succeeds here
    for got, want in zip(shared, alone):
        for got_field, want_field in zip(got, want):
            np.testing.assert_array_equal(got_field, want_field)


def test_shared_apgd_run_on_a_model_too_small_for_the_targeted_loss():
    """A shared run of APGD-CE with APGD-T traces on 3 classes (the targeted DLR needs 4): CE as if alone."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    x, y = np.random.default_rng(0).random((5, 4, 4, 1)).astype("float32"), np.arange(5) % 3
    apgd_ce, apgd_t = attacks.APGD(0.1, "ce", n_iter=3), attacks.APGD(0.1, "dlr", targeted=True, n_iter=3)
    apgd.share_compiled_runs([apgd_ce, apgd_t])
    for got, want in zip(apgd_ce.run(model, x, y, seed=1), attacks.APGD(0.1, n_iter=3).run(model, x, y, seed=1)):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="at least 4 classes"):
        apgd_t.run(model, x, y)


@pytest.mark.parametrize("kernel, strides, padding", [
    ((3, 3), 1, "SAME"), ((1, 1), 1, "SAME"), ((5, 3), 1, "SAME"), ((2, 2), 1, "SAME"), ((3, 3), 1, "VALID"),
    ((3, 3), 2, "SAME"), ((3, 3), 2, "VALID"), ((1, 1), 2, "VALID"), ((2, 4), (2, 3), "SAME"), ((4, 3), 3, "VALID"),
    ((3, 3), 1, [[0, 0], [1, 1], [1, 1], [0, 0]]),  # explicit padding: TensorFlow's gradient
])
def test_conv_input_gradients_as_convolutions_equal_tensorflows(kernel, strides, padding):
    """Input and kernel gradients equal TensorFlow's own (odd and even sizes, every stride remainder).

    Only explicitly padded convolutions keep Conv2DBackpropInput (CPUs have no dilated gradients to compare).
    """
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(2, 7, 6, 3)), tf.float32)
    k = tf.constant(rng.normal(size=(*kernel, 3, 4)), tf.float32)

    def gradients(x, k):
        with tf.GradientTape() as tape:
            tape.watch([x, k])
            y = tf.reduce_sum(tf.sin(tf.nn.conv2d(x, k, strides, padding)))
        return tape.gradient(y, [x, k])

    with _keras.conv_input_gradients_as_convolutions():
        concrete = tf.function(gradients, autograph=False).get_concrete_function(x, k)
    for got, want in zip(concrete(x, k), gradients(x, k)):  # eagerly: TensorFlow's own gradient
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    ops = {op.type for op in concrete.graph.get_operations()}
    assert ("Conv2DBackpropInput" not in ops) == isinstance(padding, str)
    assert "Conv2DBackpropFilter" in ops


def test_gradient_swap_nests_and_restores_tensorflows_gradient_across_threads():
    from tensorflow.python.framework import ops as tf_ops

    entry = tf_ops._gradient_registry._registry["Conv2D"]
    original = entry["type"]
    entered, release = threading.Barrier(4), threading.Event()

    def hold():
        with _keras.conv_input_gradients_as_convolutions():
            entered.wait()
            release.wait()

    threads = [threading.Thread(target=hold) for _ in range(3)]
    for thread in threads:
        thread.start()
    entered.wait()  # three overlapping uses, in any order
    swapped = entry["type"]
    with _keras.conv_input_gradients_as_convolutions():  # nested in this thread: the same one installed
        assert entry["type"] is swapped is not original
    assert entry["type"] is swapped
    release.set()
    for thread in threads:
        thread.join()
    assert entry["type"] is original


def test_attack_runs_trace_conv_input_gradients_as_convolutions(trained, digits):
    """The attacks' compiled functions (AnyBatchFunction) build the rewritten gradient; outside them TensorFlow's."""
    _, _, x, y = digits

    def input_gradient(model, x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(losses.cross_entropy(model(x), y))
        return tape.gradient(loss, x)

    function = _common.AnyBatchFunction(input_gradient)
    got = function(trained, tf.constant(x[:4]), tf.constant(y[:4]))
    np.testing.assert_allclose(got, input_gradient(trained, tf.constant(x[:4]), tf.constant(y[:4])), rtol=1e-4, atol=1e-6)
    graph = function.function.get_concrete_function(trained, tf.TensorSpec([None, 8, 8, 1]), tf.TensorSpec([None], tf.int64)).graph
    assert "Conv2DBackpropInput" not in {op.type for op in graph.get_operations()}
    assert "Conv2DBackpropInput" in {op.type for op in tf.function(input_gradient).get_concrete_function(
        trained, tf.TensorSpec([None, 8, 8, 1]), tf.TensorSpec([None], tf.int64)).graph.get_operations()}


def test_rand_version_runs_apgd_with_eot(trained, digits):
    _, _, x, y = digits
    auto = attacks.AutoAttack(EPS, version="rand", n_iter=2, seed=0, verbose=0)
    assert auto.attack_names == ["apgd-ce", "apgd-dlr"]
    assert all(config["config"]["eot_iter"] == 20 for config in auto.evaluate(trained, x[:8], y[:8]).report["attacks"])


def test_config_round_trips():
    for attack in (
        attacks.APGD(0.03, loss="dlr", targeted=True, n_iter=7, n_restarts=2, ord=2, n_target_classes=3, seed=1),
        attacks.FAB(0.03, n_target_classes=4, n_iter=9, alpha_max=0.2, seed=2),
        attacks.Square(0.03, n_queries=10, p_init=0.5, seed=3),
        attacks.AutoAttack(0.03, version="custom", attacks=["square", attacks.PGD(0.03, 0.01, 3)], seed=4),
        attacks.AutoAttack(8 / 255),
    ):
        config = attack.get_config()
        json.dumps(config)
        restored = type(attack).from_config(config)
        assert restored.get_config() == config
        rebuilt = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(attack))
        assert type(rebuilt) is type(attack) and rebuilt.get_config() == config


@pytest.mark.parametrize(
    "build, argument, accepted",
    [
        (lambda: attacks.APGD(0.1, loss="cw"), "loss", "'ce', 'dlr'"),
        (lambda: attacks.APGD(0.1, n_iter=0), "n_iter", "int >= 1"),
        (lambda: attacks.APGD(-0.1), "eps", "> 0"),
        (lambda: attacks.APGD(0.1, ord=1), "ord", "numpy.inf, 2"),
        (lambda: attacks.APGD(0.1, rho=1.5), "rho", "[0.0, 1.0]"),
        (lambda: attacks.FAB(0.1, eta=0), "eta", "(0.0, 10.0]"),
        (lambda: attacks.Square(0.1, p_init=0), "p_init", "(0.0, 1.0]"),
        (lambda: attacks.Square(0.1, n_queries=2.5), "n_queries", "int >= 1"),
        (lambda: attacks.AutoAttack(0.1, version="fast"), "version", "'standard', 'rand', 'custom'"),
        (lambda: attacks.AutoAttack(0.1, attacks=["apgd-ce"]), "attacks", "unless version='custom'"),
        (lambda: attacks.AutoAttack(0.1, version="custom"), "attacks", "non-empty list"),
        (lambda: attacks.AutoAttack(0.1, version="custom", attacks=["pgd"]), "attacks", "'apgd-ce'"),
        (lambda: attacks.AutoAttack(0.1, batch_size=0), "batch_size", "int >= 1"),
    ],
)
def test_invalid_arguments_raise_clear_value_errors(build, argument, accepted):
    with pytest.raises(ValueError) as error:
        build()
    message = str(error.value)
    assert f"argument `{argument}`" in message and accepted in message and "Received:" in message


def test_evaluate_rejects_bad_data(trained):
    auto = attacks.AutoAttack(EPS, version="custom", attacks=["apgd-ce"], verbose=0)
    with pytest.raises(ValueError, match=r"images in \[0, 1\]"):
        auto.evaluate(trained, np.full((2, 8, 8, 1), 255.0, "float32"), np.array([0, 1]))
    with pytest.raises(ValueError, match="argument `y`"):
        auto.evaluate(trained, np.zeros((2, 8, 8, 1), "float32"))


def test_evaluate_script_on_a_saved_classifier(trained, tmp_path):
    path = tmp_path / "tiny.keras"
    trained.save(path)
    output = tmp_path / "evaluation.json"
    subprocess.run(
        [sys.executable, str(ROOT / "examples" / "evaluate.py"), f"--model={path}", "--dataset=digits",
         "--image_size=8", "--eps=0.1", "--examples=24", "--n_iter=3", "--n_queries=20", "--steps=3",
         f"--output={output}", "--seed=0"],
        check=True, cwd=ROOT, capture_output=True, timeout=300,
    )
    report = json.loads(output.read_text())
    assert report["n_points"] == 24
    results = report["results"]
    assert results["autoattack"]["robust_accuracy"] <= results["clean_accuracy"]
    assert {"pgd3", "cw3", "autoattack"} <= set(results)
