"""tfnorms.experiments: the pure and cheap building blocks of the studies, on tiny synthetic data.

``experiments.evaluate`` and the resume logic are tested elsewhere.
"""

import json
import math
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import norm_bruteforce as bf
from tfnorms import attacks, experiments, metrics
from tfnorms.data import DatasetInfo
from tfnorms.regularizers import NormDecay, NormDecayMomentum, Sum, norm_decay_terms
from tfnorms.training import AdversarialTrainer

TINY = DatasetInfo("tiny", None, 3, (8, 8, 1), flip=False)


def tiny_dataset(n=16, batch_size=8, seed=0):
    """``n`` images in [0, 1] of shape ``TINY.image_shape``, labels in ``range(3)``, batched (known cardinality)."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, *TINY.image_shape)).astype("float32")
    y = rng.integers(0, TINY.num_classes, n)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)


# ---------------------------------------------------------------- format_table, write_json


def test_format_table_is_markdown_with_formatted_floats_nan_and_missing_cells():
    rows = [{"run": "a", "acc": 0.5, "n": 3}, {"run": "b", "acc": float("nan")}, {"acc": 1 / 3, "extra": 1}]
    assert experiments.format_table(rows, ["run", "acc", "n"]).splitlines() == [
        "| run | acc | n |",
        "|---|---|---|",
        "| a | 0.5000 | 3 |",
        "| b | nan |  |",
        "|  | 0.3333 |  |",
    ]
    assert experiments.format_table([{"x": 2.0}], ["x"], floatfmt="{:.1e}").splitlines()[-1] == "| 2.0e+00 |"
    assert experiments.format_table([], ["x"]) == "| x |\n|---|"


def test_seed_summaries_are_mean_and_sample_std_and_render_as_plus_minus(tmp_path):
    rng = np.random.default_rng(0)
    per_seed = [{"seed": s, "acc": float(a), "loss": float(b)} for s, (a, b) in enumerate(rng.random((3, 2)))]
    row = experiments.summarize_seeds(per_seed, ["acc", "loss"], run="wd")
    for key in ("acc", "loss"):
        values = np.array([r[key] for r in per_seed])
        assert row["mean"][key] == pytest.approx(values.mean())
        assert row["std"][key] == pytest.approx(math.sqrt(((values - values.mean()) ** 2).sum() / 2))
    assert row["run"] == "wd" and row["per_seed"] == per_seed
    cell = f"{row['mean']['acc']:.4f} ± {row['std']['acc']:.4f}"
    assert experiments.format_table([row], ["run", "acc"]).splitlines()[-1] == f"| wd | {cell} |"
    # One seed: no spread (NaN in the table's place, null in JSON), the mean alone.
    single = experiments.summarize_seeds(per_seed[:1], ["acc"])
    assert math.isnan(single["std"]["acc"])
    assert experiments.format_table([single], ["acc"]).splitlines()[-1] == f"| {per_seed[0]['acc']:.4f} |"
    experiments.write_json(tmp_path / "r.json", single)
    assert json.loads((tmp_path / "r.json").read_text())["std"] == {"acc": None}
    grouped = experiments.summarize_runs(per_seed + [{"seed": 0, "acc": 1.0, "loss": 0.0}], ["seed"], ["acc"])
    assert [(g["seed"], len(g["per_seed"])) for g in grouped] == [(0, 2), (1, 1), (2, 1)]
    assert experiments.seed_values(5, 3) == [5, 6, 7]
    with pytest.raises(ValueError, match="`seeds`"):
        experiments.seed_values(0, 0)
    with pytest.raises(ValueError, match="`per_seed`"):
        experiments.summarize_seeds([], ["acc"])


def test_split_holdout_removes_the_first_points_from_the_evaluation():
    dataset = tiny_dataset(n=20, batch_size=8)
    x_all = np.concatenate([x.numpy() for x, _ in dataset])
    (x_held, y_held), rest = experiments.split_holdout(dataset, 6)
    assert x_held.shape == (6, *TINY.image_shape) and y_held.shape == (6,)
    np.testing.assert_array_equal(x_held, x_all[:6])
    np.testing.assert_array_equal(np.concatenate([x.numpy() for x, _ in rest]), x_all[6:])
    assert max(int(x.shape[0]) for x, _ in rest) == 8
    with pytest.raises(ValueError, match="`examples`"):
        experiments.split_holdout(dataset, 21)


def test_write_json_makes_nan_and_numpy_values_json_safe(tmp_path):
    payload = {
        "accuracy": np.float32(0.25),
        "count": np.int64(7),
        "missing": float("nan"),
        "diverged": np.float64(np.inf),
        "per_epoch": [np.float32(1.5), float("-inf"), (np.int32(2), "text")],
        3: {"nested": np.float64(0.125), "flag": True, "none": None},
    }
    path = tmp_path / "new" / "dir" / "result.json"
    assert experiments.write_json(str(path), payload) == str(path)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    loaded = json.loads(text)
    assert loaded == {
        "accuracy": 0.25,
        "count": 7,
        "missing": None,
        "diverged": None,
        "per_epoch": [1.5, None, [2, "text"]],
        "3": {"nested": 0.125, "flag": True, "none": None},
    }
    assert type(loaded["count"]) is int and type(loaded["accuracy"]) is float


# ---------------------------------------------------------------- build_classifier


@pytest.mark.parametrize("name", experiments.CLASSIFIERS)
def test_build_classifier_gives_logits_of_the_number_of_classes(name):
    # VGG11 pools five times by 2: its input side must be a multiple of 32.
    info = DatasetInfo("tiny", None, 3, (32, 32, 1) if name == "vgg11" else (8, 8, 1), flip=False)
    model = experiments.build_classifier(name, info, depth=10, width=2)
    x = np.random.default_rng(0).random((2, *info.image_shape)).astype("float32")
    logits = model(x, training=False)
    assert model.input_shape == (None, *info.image_shape)
    assert tuple(logits.shape) == (2, 3)
    assert np.all(np.isfinite(logits.numpy()))


def test_build_classifier_passes_width_and_depth():
    assert experiments.build_classifier("small_cnn", TINY, width=4).get_layer("conv1").filters == 4
    assert experiments.build_classifier("small_cnn", TINY, width=6).get_layer("conv1").filters == 6
    shallow = experiments.build_classifier("wrn", TINY, depth=10, width=1)
    deeper = experiments.build_classifier("wrn", TINY, depth=16, width=1)
    wider = experiments.build_classifier("wrn", TINY, depth=10, width=2)
    conv_count = lambda m: sum(isinstance(layer, keras.layers.Conv2D) for layer in m.layers)  # noqa: E731
    assert conv_count(deeper) == conv_count(shallow) + 6  # depth 6n + 4: one more block (2 convs) per stage
    assert max(layer.filters for layer in wider.layers if isinstance(layer, keras.layers.Conv2D)) == 128
    assert max(layer.filters for layer in shallow.layers if isinstance(layer, keras.layers.Conv2D)) == 64


# ---------------------------------------------------------------- attacks


@pytest.mark.parametrize("method,loss", [("trades", "kl"), ("natural", "ce"), ("pgd", "ce"), ("mart", "ce")])
def test_training_attack_is_pgd_from_a_normal_start_with_the_method_loss(method, loss):
    attack = experiments.training_attack(method, eps=0.03, step_size=0.007, steps=10, seed=4)
    assert type(attack) is attacks.PGD
    assert (attack.eps, attack.step_size, attack.steps, attack.loss) == pytest.approx((0.03, 0.007, 10, loss))
    assert attack.random_start == "normal" and attack.seed == 4 and attack.ord == np.inf


def test_evaluation_attacks_pgd_by_default_and_reduced_autoattack():
    (name, pgd), = experiments.evaluation_attacks(0.1, steps=7, seed=3).items()
    assert name == "pgd7" and type(pgd) is attacks.PGD
    assert (pgd.eps, pgd.step_size, pgd.steps, pgd.loss, pgd.random_start, pgd.seed) == (
        pytest.approx(0.1), pytest.approx(0.025), 7, "ce", "uniform", 3)  # step size eps / 4 by default
    assert experiments.evaluation_attacks(0.1, step_size=0.01)["pgd20"].step_size == pytest.approx(0.01)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # APGD exists: no fallback to PGD + CW
        apgd = experiments.evaluation_attacks(0.1, kind="apgd", seed=5, apgd_iter=12, n_target_classes=2)
    assert list(apgd) == ["apgd-ce", "apgd-t"]
    ce, targeted = apgd["apgd-ce"], apgd["apgd-t"]
    assert type(ce) is attacks.APGD and type(targeted) is attacks.APGD
    assert (ce.loss, ce.targeted, ce.n_iter, ce.seed, ce.eps) == ("ce", False, 12, 5, pytest.approx(0.1))
    assert (targeted.loss, targeted.targeted, targeted.n_iter, targeted.n_target_classes) == ("dlr", True, 12, 2)
    with pytest.raises(ValueError, match="`kind`"):
        experiments.evaluation_attacks(0.1, kind="fgsm")


# ---------------------------------------------------------------- layer_norms, mean_local_lipschitz


def test_layer_norms_are_plain_floats_of_the_exact_norms_in_layer_order():
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(3, 3, strides=2, padding="same", name="conv"),
            keras.layers.Reshape((9, 3)),
            keras.layers.Conv1D(2, 1, name="unsupported"),
            keras.layers.Flatten(),
            keras.layers.Dense(4, name="fc"),
        ],
        name="net",
    )
    kernel, dense = model.get_layer("conv").kernel.numpy(), model.get_layer("fc").kernel.numpy()
    matrix = bf.conv_matrix(kernel, (6, 6), strides=2, padding="same")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # unsupported layers are skipped silently
        l1, linf = experiments.layer_norms(model), experiments.layer_norms(model, np.inf)
    assert list(l1) == list(linf) == ["net/conv", "net/fc"]
    assert all(type(value) is float for value in (*l1.values(), *linf.values()))
    # y = x @ kernel: the l1 norm is the largest row abs sum of the kernel, l_inf the largest column sum.
    assert l1 == pytest.approx({"net/conv": bf.l1(matrix), "net/fc": np.abs(dense).sum(axis=1).max()}, rel=1e-5)
    assert linf == pytest.approx({"net/conv": bf.linf(matrix), "net/fc": np.abs(dense).sum(axis=0).max()}, rel=1e-5)


def test_mean_local_lipschitz_averages_the_first_max_examples_and_stops_reading(monkeypatch):
    calls, read = [], []

    def per_example_first_pixel(model, x, **kwargs):
        calls.append(kwargs)
        return x[:, 0]

    monkeypatch.setattr(metrics, "local_lipschitz", per_example_first_pixel)
    batches = [(np.arange(4 * i, 4 * i + 4, dtype="float32")[:, None], np.zeros(4)) for i in range(3)]

    def dataset():
        for index, batch in enumerate(batches):
            read.append(index)
            yield batch

    value = experiments.mean_local_lipschitz("model", dataset(), eps=0.1, step_size=0.05, steps=3, max_examples=6)
    assert value == 2.5 and type(value) is float  # mean of the examples 0..5, not 0..7
    assert read == [0, 1, 2]  # the third batch is fetched but not attacked: 8 >= 6 examples already
    assert calls == [dict(eps=0.1, step_size=0.05, steps=3, reduction="none", seed=0)] * 2


def test_mean_local_lipschitz_on_a_tiny_model():
    x = np.random.default_rng(1).random((5, 4)).astype("float32")
    data = [(x, np.zeros(5))]
    constant = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, kernel_initializer="zeros")])
    assert experiments.mean_local_lipschitz(constant, data, eps=0.1, step_size=0.05, steps=2) == 0.0
    linear = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    value = experiments.mean_local_lipschitz(linear, data, eps=0.1, step_size=0.05, steps=2)
    expected = metrics.local_lipschitz(linear, x, eps=0.1, step_size=0.05, steps=2, seed=0)
    assert value == pytest.approx(float(expected), rel=1e-6) and value > 0


# ---------------------------------------------------------------- train_classifier


def weights_of(model):
    return [v.numpy().copy() for v in model.trainable_variables]


class KeepModel(keras.callbacks.Callback):
    """Keeps the model that ``fit`` trains (the classifier itself or the trainer around it)."""

    def on_train_end(self, logs=None):
        self.trained = self.model


def test_train_classifier_natural_one_epoch_with_norm_decay_and_weight_decay():
    model = experiments.build_classifier("small_cnn", TINY, width=4)
    before = weights_of(model)
    history = experiments.train_classifier(
        model, tiny_dataset(), epochs=1, lr=0.05, momentum=0.8, milestones=(2, 3), weight_decay=5e-4,
        norm_decay=("linf", 1e-3), norm_decay_momentum=0.25,
    )
    assert set(history) == {"loss", "clean_accuracy"}
    assert all(len(values) == 1 and type(values[0]) is float for values in history.values())
    assert math.isfinite(history["loss"][0]) and 0.0 <= history["clean_accuracy"][0] <= 1.0
    assert all(np.any(b != a) for b, a in zip(before, weights_of(model)))
    # Norm decay (bound to each layer's geometry) and weight decay, summed on every kernel.
    kernels = [layer for layer in model.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]
    assert [layer.name for layer in kernels] == ["conv1", "conv2", "conv3", "logits"]
    for layer in kernels:
        regularizer = layer.kernel_regularizer
        assert isinstance(regularizer, Sum) and layer.kernel.regularizer is regularizer, layer.name
        (term,) = norm_decay_terms(regularizer)
        assert type(term) is NormDecay and term.ords == (np.inf,) and term.factor == pytest.approx(1e-3)
        l2 = [r for r in regularizer.regularizers if isinstance(r, keras.regularizers.L2)]
        assert len(l2) == 1 and l2[0].l2 == pytest.approx(2.5e-4), layer.name
    assert norm_decay_terms(model.get_layer("conv2").kernel_regularizer)[0].geometry["strides"] == (2, 2)
    bn = model.get_layer("conv1_bn")
    assert isinstance(bn.gamma_regularizer, keras.regularizers.L2) and not norm_decay_terms(bn.gamma_regularizer)
    # SGD with the schedule (milestones after the last epoch dropped) inside the norm-decay memory.
    optimizer = model.optimizer
    assert type(optimizer) is NormDecayMomentum and optimizer.momentum == pytest.approx(0.25)
    assert type(optimizer.inner_optimizer) is keras.optimizers.SGD
    assert optimizer.inner_optimizer.momentum == pytest.approx(0.8)
    assert float(optimizer.learning_rate) == pytest.approx(0.05)
    assert int(optimizer.iterations) == 2  # 16 examples in batches of 8
    assert any("norm_decay_memory_linf" in v.path for v in optimizer.variables)


def test_train_classifier_trades_one_epoch():
    model = experiments.build_classifier("small_cnn", TINY, width=4)
    before = weights_of(model)
    attack = experiments.training_attack("trades", eps=0.03, step_size=0.01, steps=2, seed=0)
    keep = KeepModel()
    history = experiments.train_classifier(
        model, tiny_dataset(), method="trades", beta=6.0, attack=attack, lr=0.05, extra_callbacks=[keep]
    )
    assert {"loss", "natural_loss", "robust_loss", "clean_accuracy"} <= set(history)
    assert all(len(values) == 1 and math.isfinite(values[0]) for values in history.values())
    # No regularizer: the trainer's loss is the TRADES loss alone.
    assert history["loss"][0] == pytest.approx(history["natural_loss"][0] + 6.0 * history["robust_loss"][0], rel=1e-4)
    assert all(np.any(b != a) for b, a in zip(before, weights_of(model)))
    trainer = keep.trained
    assert isinstance(trainer, AdversarialTrainer) and trainer.method == "trades" and trainer.attack is attack
    assert type(trainer.optimizer) is keras.optimizers.SGD and trainer.optimizer.momentum == pytest.approx(0.9)
    assert not model.losses


def test_train_classifier_rejects_unknown_methods_and_datasets_without_a_length():
    model = experiments.build_classifier("small_cnn", TINY, width=4)
    with pytest.raises(ValueError, match="`method`"):
        experiments.train_classifier(model, tiny_dataset(), method="fgsm")
    endless = tiny_dataset().repeat()
    with pytest.raises(ValueError, match="`train_ds`"):
        experiments.train_classifier(model, endless)
