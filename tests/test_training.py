"""Tests of tfnorms.training: method losses, the train/test steps, distribution, precision, saving."""

import json

import numpy as np
import pytest
import keras
import tensorflow as tf

from tfnorms import attacks, metrics, training
from tfnorms.training import AdversarialTrainer



# ---------------------------------------------------------------- NumPy re-derivations (docs/theory.md#adversarial-losses)
def np_log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def np_ce(z, y):
    return -np_log_softmax(z)[np.arange(len(y)), y]


def np_method_loss(method, z_nat, z_adv, y, beta):
    """Batch loss, written the way the reference PyTorch code computes it."""
    ce_nat, ce_adv = np_ce(z_nat, y), np_ce(z_adv, y)
    batch = len(y)
    if method == "pgd":
        return ce_adv.mean()
    if method == "pgd_lambda":
        return ce_nat.mean() + beta * (np.maximum(ce_adv, ce_nat) - ce_nat).mean()
    p_nat, p_adv = np.exp(np_log_softmax(z_nat)), np.exp(np_log_softmax(z_adv))
    if method == "trades":
        kl_sum = np.sum(p_nat * (np.log(p_nat) - np_log_softmax(z_adv)))
        return ce_nat.mean() + beta * kl_sum / batch
    if method == "mart":
        top2 = np.argsort(p_adv, axis=1)[:, -2:]
        new_y = np.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
        bce = ce_adv.mean() + np.mean(-np.log(1.0001 - p_adv + 1e-12)[np.arange(batch), new_y])
        kl = np.sum(p_nat * (np.log(p_nat) - np.log(p_adv + 1e-12)), axis=1)
        true_probs = p_nat[np.arange(batch), y]
        return bce + beta * np.sum(kl * (1.0000001 - true_probs)) / batch
    if method == "alp":
        return 0.5 * ce_nat.mean() + 0.5 * ce_adv.mean() + beta * np.mean((z_nat - z_adv) ** 2)
    raise AssertionError(method)


@pytest.mark.parametrize("method", training.METHODS)
def test_method_losses_match_numpy(method):
    rng = np.random.default_rng(0)
    z_nat = rng.normal(size=(32, 10)) * 3
    z_adv = z_nat + rng.normal(size=(32, 10)) * 2
    y = rng.integers(0, 10, 32)
    beta = None if method == "pgd" else 2.5
    terms = training.LOSSES[method](z_nat.astype("float32"), z_adv.astype("float32"), y, beta)
    expected = np_method_loss(method, z_nat, z_adv, y, beta)
    assert float(tf.reduce_mean(terms.total)) == pytest.approx(expected, rel=1e-5)
    assert float(tf.reduce_mean(terms.natural)) == pytest.approx(np_ce(z_nat, y).mean(), rel=1e-5)
    if method != "pgd":
        robust = (expected - np_method_loss(method, z_nat, z_adv, y, 0.0)) / beta
        assert float(tf.reduce_mean(terms.robust)) == pytest.approx(robust, rel=1e-4)
    one_hot = training.LOSSES[method](z_nat.astype("float32"), z_adv.astype("float32"), np.eye(10)[y], beta)
    np.testing.assert_allclose(one_hot.total.numpy(), terms.total.numpy(), rtol=1e-6)


# ---------------------------------------------------------------- train step
def tiny_cnn(seed=0, batch_norm=False, regularizer=None):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation="relu", kernel_regularizer=regularizer)]
    if batch_norm:
        layers.append(keras.layers.BatchNormalization(momentum=0.9))
    layers += [keras.layers.Flatten(), keras.layers.Dense(2, kernel_regularizer=regularizer)]
    return keras.Sequential(layers)


def random_batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 8, 8, 1)).astype("float32"), rng.integers(0, 2, n)


def deterministic_attack(loss="ce"):
    # The KL gradient vanishes at x itself, so the KL attack needs its 0.001 * N start (seeded: deterministic).
    if loss == "kl":
        return attacks.PGD(0.1, 0.03, 3, loss="kl", random_start="normal", seed=0)
    return attacks.PGD(0.1, 0.03, 3, loss=loss, random_start=None)


@pytest.mark.parametrize("method", ["trades", "pgd"])
def test_regularization_losses_counted_once(method):
    model = tiny_cnn(1, batch_norm=True, regularizer=keras.regularizers.L2(0.5))
    x, y = random_batch()
    attack = deterministic_attack("kl" if method == "trades" else "ce")
    initial = model.get_weights()
    x_adv = attack(model, x, y)
    if method == "pgd":
        z_nat = model(x, training=False).numpy()
    else:
        z_nat = model(x, training=True).numpy()
    z_adv = model(x_adv, training=True).numpy()
    regularization = float(sum(model.losses))
    assert regularization > 1.0  # large enough that counting it twice would show
    beta = None if method == "pgd" else 6.0
    expected = np_method_loss(method, z_nat.astype(np.float64), z_adv.astype(np.float64), y, beta) + regularization
    model.set_weights(initial)  # undo the moving-statistics updates of the passes above

    trainer = AdversarialTrainer(model, method=method, attack=attack)
    trainer.compile(optimizer=keras.optimizers.SGD(0.0))
    history = trainer.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert history.history["loss"][0] == pytest.approx(expected, rel=1e-5)


def test_beta_variable_is_read_at_every_step():
    model = tiny_cnn(2)
    x, y = random_batch()
    trainer = AdversarialTrainer(model, method="trades", beta=6.0, attack=deterministic_attack("kl"))
    trainer.compile(optimizer=keras.optimizers.SGD(0.0))

    class ZeroBeta(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.model.beta.assign(0.0)

    first = trainer.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    assert first["loss"][0] == pytest.approx(first["natural_loss"][0] + 6.0 * first["robust_loss"][0], rel=1e-5)
    assert first["robust_loss"][0] > 0
    second = trainer.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[ZeroBeta()]).history
    assert second["loss"][0] == pytest.approx(second["natural_loss"][0], rel=1e-6)


def test_batch_norm_sees_two_separate_training_passes_and_no_attack_pass():
    model = tiny_cnn(3, batch_norm=True)
    x, y = random_batch(seed=1)
    attack = deterministic_attack()
    x_adv = attack(model, x, y)  # the trainer's attack sees the same (initial) statistics
    conv = keras.Sequential(model.layers[:1])
    clean_mean = conv(x).numpy().mean(axis=(0, 1, 2))
    adversarial_mean = conv(x_adv).numpy().mean(axis=(0, 1, 2))
    moving_mean = model.layers[1].moving_mean
    before = moving_mean.numpy().copy()
    trainer = AdversarialTrainer(model, method="mart", attack=attack)
    trainer.compile(optimizer=keras.optimizers.SGD(0.0))
    trainer.fit(x, y, batch_size=16, epochs=1, verbose=0)
    # Momentum 0.9: one update from the clean pass, then one from the adversarial pass; none from the attack.
    expected = 0.9 * (0.9 * before + 0.1 * clean_mean) + 0.1 * adversarial_mean
    np.testing.assert_allclose(moving_mean.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_jit_compile_gives_the_same_loss():
    x, y = random_batch(seed=2)
    histories = []
    for jit_compile in (False, True):
        model = tiny_cnn(4, batch_norm=True)
        trainer = AdversarialTrainer(model, method="alp", attack=deterministic_attack())
        trainer.compile(optimizer=keras.optimizers.SGD(0.05), jit_compile=jit_compile)
        histories.append(trainer.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0).history)
    np.testing.assert_allclose(histories[0]["loss"], histories[1]["loss"], rtol=1e-4)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(policy):
    x, y = random_batch(seed=3)
    reference = AdversarialTrainer(tiny_cnn(5), method="trades", attack=deterministic_attack("kl"))
    reference.compile(optimizer=keras.optimizers.SGD(0.0))
    reference_loss = reference.fit(x, y, batch_size=16, epochs=1, verbose=0).history["loss"][0]
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        trainer = AdversarialTrainer(tiny_cnn(5), method="trades", attack=deterministic_attack("kl"))
        trainer.compile(optimizer=keras.optimizers.SGD(0.0))
    finally:
        keras.config.set_dtype_policy(previous)
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer) == (policy == "mixed_float16")
    history = trainer.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    assert history["loss"][0] == pytest.approx(reference_loss, rel=0.05)
    assert history["robust_loss"][0] > 0


def test_mirrored_strategy_gives_the_same_loss_as_one_device(two_cpu_strategy):
    x, y = random_batch(n=16, seed=4)
    initial = tiny_cnn(6, regularizer=keras.regularizers.L2(0.01)).get_weights()

    def train(strategy):
        with strategy.scope():
            model = tiny_cnn(6, regularizer=keras.regularizers.L2(0.01))
            model.set_weights(initial)
            # A seeded start depends on the per-replica shape, so use the start-free CE attack here.
            trainer = AdversarialTrainer(model, method="trades", attack=deterministic_attack("ce"))
            trainer.compile(optimizer=keras.optimizers.SGD(0.5))
        history = trainer.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0).history
        return history, model.get_weights()

    single, single_weights = train(tf.distribute.get_strategy())
    mirrored, mirrored_weights = train(two_cpu_strategy)
    for name in ("loss", "natural_loss", "robust_loss", "clean_accuracy", "adversarial_accuracy"):
        np.testing.assert_allclose(mirrored[name], single[name], rtol=1e-5, atol=1e-6, err_msg=name)
    assert single["loss"][2] < single["loss"][0]  # the weights moved, so epochs 2-3 also check the gradients
    for a, b in zip(single_weights, mirrored_weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- robustness on a synthetic task
def robust_task(n, seed):
    """2 classes on 8x8 images: a robust 4x4 block (+-0.3, 10% label noise) and a weak global shift (+-0.1).

    The shift is perfectly predictive in aggregate but an eps = 0.15 attack erases it; the block survives.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    sign = (2.0 * y - 1.0)[:, None, None, None]
    x = 0.5 + 0.1 * sign + 0.08 * rng.standard_normal((n, 8, 8, 1))
    flip = np.where(rng.random(n) < 0.1, -1.0, 1.0)[:, None, None, None]
    x[:, :4, :4, :] = 0.5 + 0.3 * sign * flip + 0.05 * rng.standard_normal((n, 4, 4, 1))
    return np.clip(x, 0, 1).astype("float32"), y


def task_cnn():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, strides=2, activation="relu"), keras.layers.Flatten(), keras.layers.Dense(2)]
    )


def test_adversarial_training_raises_robust_accuracy_and_more_steps_never_help():
    eps = 0.15
    x_train, y_train = robust_task(1024, 0)
    x_test, y_test = robust_task(256, 1)
    natural = task_cnn()
    natural.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    natural.fit(x_train, y_train, batch_size=64, epochs=5, verbose=0)

    robust = task_cnn()
    pgd_10 = attacks.PGD(eps, eps / 4, 10, seed=0)
    trainer = AdversarialTrainer(robust, method="pgd", attack=attacks.PGD(eps, eps / 4, 5), eval_attack=pgd_10)
    trainer.compile(keras.optimizers.Adam(1e-2))
    trainer.fit(x_train, y_train, batch_size=64, epochs=5, verbose=0)

    natural_result = metrics.evaluate_robustness(natural, x_test, y_test, pgd_10, batch_size=256)
    robust_result = metrics.evaluate_robustness(robust, x_test, y_test, pgd_10, batch_size=256)
    assert natural_result["clean_accuracy"] > 0.85
    assert robust_result["robust_accuracy"] > 0.8
    assert robust_result["robust_accuracy"] > natural_result["robust_accuracy"] + 0.25
    # evaluate() reports the same numbers as the stand-alone metrics (same seeded attack).
    evaluated = trainer.evaluate(x_test, y_test, batch_size=256, verbose=0, return_dict=True)
    for name in ("clean_accuracy", "robust_accuracy", "stability"):
        assert evaluated[name] == pytest.approx(robust_result[name])

    for model in (natural, robust):
        for stop in (False, True):
            accuracy = {
                steps: metrics.robust_accuracy(
                    model, x_test, y_test, attacks.PGD(eps, eps / 4, steps, seed=0, stop_at_misclassification=stop), 256
                )
                for steps in (10, 50)
            }
            assert accuracy[50] <= accuracy[10]


# ---------------------------------------------------------------- saving and configuration
def test_saving_and_config_round_trip(tmp_path):
    x, y = random_batch(seed=5)
    model = tiny_cnn(7, batch_norm=True)
    trainer = AdversarialTrainer(
        model, method="mart", beta=4.0, attack=attacks.PGD(0.05, 0.01, 2), eval_attack=attacks.CW(0.05, 0.01, 2, seed=1)
    )
    trainer.compile(optimizer="adam")
    trainer.fit(x, y, batch_size=8, epochs=1, verbose=0)
    trainer.beta.assign(5.0)

    model.save(tmp_path / "classifier.keras")
    plain = keras.models.load_model(tmp_path / "classifier.keras")
    assert not isinstance(plain, AdversarialTrainer)
    np.testing.assert_allclose(plain.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)

    config = trainer.get_config()
    json.dumps(config)
    assert config["beta"] == 5.0 and config["method"] == "mart"
    rebuilt = AdversarialTrainer.from_config(config)
    assert rebuilt.get_config()["attack"] == config["attack"]
    assert isinstance(rebuilt.eval_attack, attacks.CW)

    trainer.save(tmp_path / "trainer.keras")
    loaded = keras.models.load_model(tmp_path / "trainer.keras")
    assert isinstance(loaded, AdversarialTrainer) and loaded.method == "mart"
    assert float(loaded.beta.numpy()) == 5.0
    assert isinstance(loaded.optimizer, keras.optimizers.Adam) and int(loaded.optimizer.iterations.numpy()) == 2
    np.testing.assert_allclose(loaded.predict(x, verbose=0), trainer.predict(x, verbose=0), atol=1e-6)
    loaded.fit(x, y, batch_size=8, epochs=1, verbose=0)  # trains on after loading
    assert int(loaded.optimizer.iterations.numpy()) == 4


def test_invalid_arguments_name_argument_and_accepted_values():
    model = tiny_cnn()
    with pytest.raises(ValueError, match=r"argument `method`. Expected one of 'pgd', 'pgd_lambda', 'trades', 'mart', 'alp'. Received: method='madry'"):
        AdversarialTrainer(model, method="madry")
    with pytest.raises(ValueError, match=r"argument `beta`. Expected None for method='pgd'"):
        AdversarialTrainer(model, method="pgd", beta=2.0)
    with pytest.raises(ValueError, match=r"argument `beta`. Expected a finite float >= 0. Received: beta=-1"):
        AdversarialTrainer(model, method="trades", beta=-1)
    with pytest.raises(ValueError, match=r"argument `model`"):
        AdversarialTrainer("resnet")
    with pytest.raises(ValueError, match=r"argument `attack`"):
        AdversarialTrainer(model, attack="pgd")
    trainer = AdversarialTrainer(model)
    with pytest.raises(ValueError, match=r"argument `loss`. Expected None"):
        trainer.compile(optimizer="sgd", loss="mse")
