"""Tests of tfnorms.metrics: accuracy / stability definitions, data-set evaluation, local Lipschitz."""

import numpy as np
import pytest
import keras
import tensorflow as tf

from tfnorms import attacks, metrics
from tfnorms.attacks import projections, starts


def small_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(8, "tanh"), keras.layers.Dense(3)])


def test_per_example_definitions():
    clean = np.array([[3.0, 0.0, 1.0], [0.0, 2.0, 1.0], [0.0, 1.0, 2.0], [1.0, 0.0, 0.0]], "float32")
    adversarial = np.array([[3.0, 4.0, 1.0], [0.0, 2.0, 1.0], [0.0, 3.0, 2.0], [1.0, 0.0, 0.0]], "float32")
    labels = np.array([0, 1, 1, 2])
    np.testing.assert_array_equal(metrics.correct(labels, clean).numpy(), [1, 1, 0, 0])
    np.testing.assert_array_equal(metrics.correct(np.eye(3)[labels], adversarial).numpy(), [0, 1, 1, 0])
    np.testing.assert_array_equal(metrics.unchanged(clean, adversarial).numpy(), [0, 1, 0, 1])

    accuracy = metrics.RobustAccuracy()
    accuracy.update_state(labels, adversarial)
    assert float(accuracy.result()) == pytest.approx(0.5)
    stability = metrics.PerturbationStability()
    stability.update_state(clean, adversarial, sample_weight=np.array([1.0, 1.0, 0.0, 0.0]))
    assert float(stability.result()) == pytest.approx(0.5)
    restored = metrics.PerturbationStability.from_config(stability.get_config())
    assert restored.name == "stability"


def test_evaluate_robustness_matches_manual_and_identity():
    model = small_model(1)
    rng = np.random.default_rng(0)
    x = rng.random((40, 4, 4, 1)).astype("float32")
    y = rng.integers(0, 3, 40)
    attack = attacks.PGD(0.2, 0.05, 5, seed=1)
    result = metrics.evaluate_robustness(model, x, y, attack, batch_size=40)
    clean_logits = model(x).numpy()
    adversarial_logits = model(attack(model, x, y)).numpy()
    assert result["clean_accuracy"] == pytest.approx(np.mean(clean_logits.argmax(1) == y))
    assert result["robust_accuracy"] == pytest.approx(np.mean(adversarial_logits.argmax(1) == y))
    assert result["stability"] == pytest.approx(np.mean(adversarial_logits.argmax(1) == clean_logits.argmax(1)))
    # docs/theory.md#perturbation-stability: robust >= natural + stability - 1; the attack must find something here.
    assert result["robust_accuracy"] >= result["clean_accuracy"] + result["stability"] - 1 - 1e-6
    assert result["robust_accuracy"] < result["clean_accuracy"]
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(40)
    assert metrics.evaluate_robustness(model, dataset, attack=attack) == result
    assert metrics.robust_accuracy(model, x, y, attack, batch_size=40) == result["robust_accuracy"]
    assert metrics.perturbation_stability(model, x, y, attack, batch_size=40) == result["stability"]


def test_evaluate_robustness_traces_once_for_uneven_batches():
    """The last batch is usually smaller: one trace serves every batch size (no retracing warnings)."""
    model = small_model(2)
    traces = []

    def counted(x, training=False):
        traces.append(x.shape[0])  # runs while tracing only
        return model(x, training=training)

    rng = np.random.default_rng(1)
    x = rng.random((40, 4, 4, 1)).astype("float32")
    y = rng.integers(0, 3, 40)
    attack = attacks.PGD(0.2, 0.05, 3, random_start=None)  # deterministic: batching cannot change the result
    whole = metrics.evaluate_robustness(counted, x, y, attack, batch_size=40)
    per_trace = len(traces)
    traces.clear()
    uneven = metrics.evaluate_robustness(counted, x, y, attack, batch_size=16)  # 16, 16, 8
    assert len(traces) == per_trace and set(traces) == {None}
    assert uneven == pytest.approx(whole)


def test_local_lipschitz_is_max_dual_gradient_norm_of_kl():
    model = small_model(2)
    x = np.random.default_rng(3).uniform(0.2, 0.8, (6, 4, 4, 1)).astype("float32")
    estimate = metrics.local_lipschitz(model, x, eps=0.1, step_size=0.02, steps=1, reduction="none", seed=5).numpy()
    # One step: the l1 norm of grad_x KL(p(x) || p(x_0)) at the projected 0.001 * N start.
    x_tensor = tf.constant(x)
    x_start = projections.project(starts.normal_start(x_tensor, 0.1, np.inf, seed=5), x_tensor, 0.1, np.inf)
    clean = tf.nn.softmax(model(x_tensor))
    with tf.GradientTape() as tape:
        tape.watch(x_start)
        log_q = tf.nn.log_softmax(model(x_start))
        kl = tf.reduce_sum(clean * (tf.math.log(clean) - log_q))
    expected = tf.reduce_sum(tf.abs(tape.gradient(kl, x_start)), axis=[1, 2, 3]).numpy()
    np.testing.assert_allclose(estimate, expected, rtol=2e-3)  # tiny KL: float32 cancellation
    several = metrics.local_lipschitz(model, x, eps=0.1, step_size=0.02, steps=4, reduction="none", seed=5).numpy()
    assert np.all(several >= estimate - 1e-7)  # a running maximum over steps
    total = metrics.local_lipschitz(model, x, eps=0.1, step_size=0.02, steps=4, reduction="sum", seed=5)
    mean = metrics.local_lipschitz(model, x, eps=0.1, step_size=0.02, steps=4, seed=5)
    assert float(total) == pytest.approx(6 * float(mean), rel=1e-5)


def test_invalid_arguments():
    model = small_model()
    with pytest.raises(ValueError, match="argument `reduction`. Expected one of 'mean', 'sum', 'none'"):
        metrics.local_lipschitz(model, np.zeros((1, 4, 4, 1), "float32"), reduction="max")
    with pytest.raises(ValueError, match="argument `y`"):
        metrics.evaluate_robustness(model, np.zeros((2, 4, 4, 1), "float32"))
    with pytest.raises(ValueError, match="argument `batch_size`"):
        metrics.evaluate_robustness(model, np.zeros((2, 4, 4, 1), "float32"), np.zeros(2), batch_size=0)


def test_evaluate_is_the_per_example_worst_case_over_the_attacks():
    model = small_model(3)
    rng = np.random.default_rng(4)
    x, y = rng.random((30, 4, 4, 1)).astype("float32"), rng.integers(0, 3, 30)
    pgd, cw = attacks.PGD(0.2, 0.05, 4, seed=2), attacks.CW(0.2, 0.05, 4, seed=3)
    report = metrics.evaluate(model, x, y, {"pgd": pgd, "cw": cw}, batch_size=30)
    clean = model(x).numpy().argmax(1)
    adv = {name: model(attack(model, x, y)).numpy().argmax(1) for name, attack in (("pgd", pgd), ("cw", cw))}
    robust = np.mean((adv["pgd"] == y) & (adv["cw"] == y))
    stable = np.mean((adv["pgd"] == clean) & (adv["cw"] == clean))
    assert report.n_points == 30
    assert report.clean_accuracy == pytest.approx(np.mean(clean == y))
    assert report.robust_accuracy == pytest.approx(robust)
    assert report.stability == pytest.approx(stable)
    for name in ("pgd", "cw"):
        assert report.per_attack[name]["robust_accuracy"] == pytest.approx(np.mean(adv[name] == y))
        assert report.per_attack[name]["stability"] == pytest.approx(np.mean(adv[name] == clean))
    assert report.robust_accuracy <= min(s["robust_accuracy"] for s in report.per_attack.values())
    as_json = report.to_json()
    assert as_json["attacks"]["pgd"]["steps"] == 4 and as_json["per_attack"]["cw"] == report.per_attack["cw"]
    row = report.flat()
    assert row["pgd_robust_accuracy"] == report.per_attack["pgd"]["robust_accuracy"] and row["examples"] == 30


def test_evaluate_takes_exactly_max_examples_and_names_a_list_of_attacks():
    model = small_model(5)
    x = np.random.default_rng(6).random((25, 4, 4, 1)).astype("float32")
    y = np.arange(25) % 3
    attack = attacks.PGD(0.1, 0.05, 1, random_start=None)
    report = metrics.evaluate(model, x, y, [attack, attack], batch_size=10, max_examples=13)
    assert report.n_points == 13 and sorted(report.per_attack) == ["pgd", "pgd_1"]
    alone = metrics.evaluate(model, x[:13], y[:13], attack, batch_size=13)
    assert report.robust_accuracy == pytest.approx(alone.robust_accuracy)
    with pytest.raises(ValueError, match="argument `attacks`"):
        metrics.evaluate(model, x, y, {})
    with pytest.raises(ValueError, match="argument `max_examples`"):
        metrics.evaluate(model, x, y, attack, max_examples=0)


def test_the_trainer_evaluation_is_the_same_definition_as_metrics_evaluate():
    import tfnorms

    model = small_model(7)
    x = np.random.default_rng(8).random((24, 4, 4, 1)).astype("float32")
    y = np.arange(24) % 3
    attack = attacks.PGD(0.2, 0.05, 3, random_start=None)
    trainer = tfnorms.AdversarialTrainer(model, method="trades", eval_attack=attack)
    trainer.compile("sgd")
    logs = trainer.evaluate(x, y, batch_size=24, verbose=0, return_dict=True)
    report = metrics.evaluate(model, x, y, attack, batch_size=24)
    assert logs["clean_accuracy"] == pytest.approx(report.clean_accuracy)
    assert logs["robust_accuracy"] == pytest.approx(report.robust_accuracy)
    assert logs["stability"] == pytest.approx(report.stability)
