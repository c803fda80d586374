"""Evaluation throughput (images/s) of PGD-20 and AutoAttack on a WRN-16-4 on CPU, and agreement with ART.

Part 1 -- steady-state throughput (each attack is called twice on the same
batch; the first call, which traces and compiles, is reported separately) on a WRN-16-4 (:func:`tfnorms.models.wide_resnet`, 32x32x3,
random initialisation, ``--images`` random images, batch = all images, eps 8/255).
The labels are the model's own clean predictions, so every point starts
correctly classified; a randomly initialised WRN predicts one class for all
inputs and no attack flips it, so every attack runs its full budget on every
point: this is the **worst case** of AutoAttack, whose cascade cost otherwise
depends on how many points survive.

* ``pgd20``: PGD-20 (step eps/4, uniform start), measured.
* ``apgd_ce``: APGD-CE, 100 iterations, measured.
* ``autoattack_standard_worst_case``: APGD-CE + APGD-T (9 targets x 100
  iterations) + FAB-T (9 targets x 100 iterations) + Square (5000 queries),
  **extrapolated** from measured runs of one target with ``--probe_iter``
  iterations (APGD-T, FAB-T) and ``--probe_queries`` queries (Square): all
  loops have a fixed cost per iteration, so the cost is linear in the budget.
* ``art_apgd_ce``: the adversarial-robustness-toolbox's
  ``AutoProjectedGradientDescent`` (cross-entropy, 100 iterations, 1 restart)
  on the same Keras model through ``TensorFlowV2Classifier``, when ART is installed.

Part 2 -- agreement on a naturally trained small CNN (embedded digits, 8x8,
``--agreement_points`` test points, eps 0.1): robust accuracy of our APGD-CE,
APGD-DLR, Square and their cascade next to ART's implementations with the same
budgets (1 restart each; ART's three attacks run in cascade by this script), and
our standard AutoAttack for reference. The two implementations draw different
random starts, so a difference of a few points is expected; a large gap means
one of them is weak.

Usage:
    python benchmarks/eval_throughput.py            # full run (about 10 minutes on 2 cores)
    python benchmarks/eval_throughput.py --quick    # seconds; smoke test (WRN-10-1, 16x16, tiny budgets)
Writes benchmarks/results/eval_throughput.json (or --output).
"""

from __future__ import annotations

import time

from _machine import define_common_flags, machine_facts, write_json
from absl import app, flags
import keras
import numpy as np
import tensorflow as tf

from tfnorms import attacks, data
from tfnorms.models import wide_resnet

FLAGS = flags.FLAGS
define_common_flags("eval_throughput")
flags.DEFINE_integer("images", 32, "Images in the throughput batch.")
flags.DEFINE_integer("probe_iter", 10, "Iterations of the APGD-T / FAB-T probes that are extrapolated to 100.")
flags.DEFINE_integer("probe_queries", 200, "Queries of the Square probe that is extrapolated to 5000.")
flags.DEFINE_integer("agreement_points", 200, "Test points of the agreement study.")
flags.DEFINE_bool("art", True, "Compare with the adversarial-robustness-toolbox when it is installed.")

EPS = 8 / 255
AGREEMENT_EPS = 0.1


def art_or_none():
    if not FLAGS.art:
        return None
    try:
        import art  # noqa: F401
        from art.attacks import evasion
        from art.estimators.classification import TensorFlowV2Classifier
    except Exception:  # not installed (an optional benchmark dependency) or broken
        return None
    return evasion, TensorFlowV2Classifier


def art_classifier(art_modules, model, num_classes):
    _, classifier_class = art_modules
    return classifier_class(
        model=model,  # ART calls model(x, training=False) for predictions and gradients
        nb_classes=num_classes,
        input_shape=tuple(model.input_shape[1:]),
        loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        clip_values=(0.0, 1.0),
    )


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(np.asarray(x, np.float32), verbose=0, batch_size=256), -1) == y))


def throughput(art_modules):
    quick = FLAGS.quick
    depth, width, size = (10, 1, 16) if quick else (16, 4, 32)
    images = 4 if quick else FLAGS.images
    n_iter, probe_iter = (4, 2) if quick else (100, FLAGS.probe_iter)
    n_queries, probe_queries = (20, 10) if quick else (5000, FLAGS.probe_queries)
    keras.utils.set_random_seed(0)
    model = wide_resnet(depth, width, 10, (size, size, 3))
    x = np.random.default_rng(0).random((images, size, size, 3)).astype("float32")
    y = np.argmax(model.predict(x, verbose=0), -1)

    rows = []

    def add(name, seconds, robust, note, budget, first_call_seconds=None):
        rows.append(dict(name=name, seconds=round(seconds, 3), images_per_second=round(images / seconds, 4),
                         robust_accuracy=robust, budget=budget, note=note,
                         first_call_seconds=None if first_call_seconds is None else round(first_call_seconds, 3)))

    def warm_then_time(fn):
        # The first call traces and compiles (timed separately); the second is the steady state.
        _, first = timed(fn)
        value, seconds = timed(fn)
        return value, seconds, first

    pgd = attacks.PGD(EPS, EPS / 4, 20, seed=0)
    x_adv, seconds, first = warm_then_time(lambda: pgd(model, x, y))
    add("pgd20", seconds, accuracy(model, x_adv, y), "measured", "20 steps", first)

    apgd = attacks.APGD(EPS, n_iter=n_iter, seed=0)
    x_adv, apgd_seconds, first = warm_then_time(lambda: apgd(model, x, y))
    add("apgd_ce", apgd_seconds, accuracy(model, x_adv, y), "measured", f"{n_iter} iterations", first)

    probes = {}
    for name, attack in (
        ("apgd_t", attacks.APGD(EPS, "dlr", targeted=True, n_iter=probe_iter, n_target_classes=1, seed=0)),
        ("fab_t", attacks.FAB(EPS, n_target_classes=1, n_iter=probe_iter, seed=0)),
        ("square", attacks.Square(EPS, n_queries=probe_queries, seed=0)),
    ):
        result, seconds, first = warm_then_time(lambda: attack.run(model, x, y))
        probes[name] = dict(seconds=seconds, first_call_seconds=first, success=float(np.mean(result.success)))
    scale_iter = n_iter / probe_iter
    worst_case = (apgd_seconds + 9 * scale_iter * probes["apgd_t"]["seconds"]
                  + 9 * scale_iter * probes["fab_t"]["seconds"]
                  + n_queries / probe_queries * probes["square"]["seconds"])
    add("autoattack_standard_worst_case", worst_case, None,
        f"extrapolated from probes ({probe_iter} iterations, 1 target; {probe_queries} queries)",
        f"APGD-CE {n_iter} + APGD-T 9x{n_iter} + FAB-T 9x{n_iter} + Square {n_queries}")

    if art_modules is not None:
        evasion, _ = art_modules
        classifier = art_classifier(art_modules, model, 10)
        art_apgd = evasion.AutoProjectedGradientDescent(
            classifier, norm=np.inf, eps=EPS, eps_step=2 * EPS, max_iter=n_iter, nb_random_init=1,
            batch_size=images, loss_type="cross_entropy", verbose=False)
        x_art, seconds, first = warm_then_time(lambda: art_apgd.generate(x, y=y))
        add("art_apgd_ce", seconds, accuracy(model, x_art, y), "measured (ART)", f"{n_iter} iterations", first)
    return dict(model=f"wrn_{depth}_{width}", input_shape=[size, size, 3], images=images, eps=EPS,
                labels="clean predictions (all points start correct)", probes=probes, rows=rows)


def agreement(art_modules):
    quick = FLAGS.quick
    points = 24 if quick else FLAGS.agreement_points
    n_iter, n_queries = (5, 30) if quick else (100, 5000)
    (x_train, y_train), (x_test, y_test) = data.digits_arrays(8)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, activation="relu", padding="same"),
        keras.layers.Flatten(),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(10),
    ], name="digits_cnn")
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, epochs=3 if quick else 15, batch_size=64, verbose=0)
    x, y = x_test[:points], y_test[:points]
    eps = AGREEMENT_EPS

    def cascade(names):
        auto = attacks.AutoAttack(eps, version="custom", attacks=names, seed=0, n_iter=n_iter, n_queries=n_queries,
                                  verbose=0)
        return auto.evaluate(model, x, y).robust_accuracy

    ours = {
        "apgd_ce": cascade(["apgd-ce"]),
        "apgd_dlr": cascade(["apgd-dlr"]),
        "square": cascade(["square"]),
        "cascade_apgd_ce_apgd_dlr_square": cascade(["apgd-ce", "apgd-dlr", "square"]),
    }
    standard = attacks.AutoAttack(eps, seed=0, n_iter=n_iter, n_queries=n_queries, verbose=0).evaluate(model, x, y)
    theirs = {}
    if art_modules is not None:
        evasion, _ = art_modules
        classifier = art_classifier(art_modules, model, 10)

        def apgd(loss_type):
            return evasion.AutoProjectedGradientDescent(
                classifier, norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=n_iter, nb_random_init=1,
                batch_size=256, loss_type=loss_type, verbose=False)

        square = evasion.SquareAttack(classifier, norm=np.inf, eps=eps, max_iter=n_queries, p_init=0.8,
                                      nb_restarts=1, batch_size=256, verbose=False)
        theirs["apgd_ce"] = accuracy(model, apgd("cross_entropy").generate(x, y=y), y)
        theirs["apgd_dlr"] = accuracy(model, apgd("difference_logits_ratio").generate(x, y=y), y)
        theirs["square"] = accuracy(model, square.generate(x, y=y), y)
        # ART's AutoAttack.generate imports the optional `multiprocess` package; run its attacks in
        # cascade here instead (each on the points the previous ones did not break).
        robust = np.argmax(model.predict(x, verbose=0), -1) == y
        for attack in (apgd("cross_entropy"), apgd("difference_logits_ratio"), square):
            index = np.flatnonzero(robust)
            if len(index):
                robust[index] = np.argmax(model.predict(attack.generate(x[index], y=y[index]), verbose=0), -1) == y[index]
        theirs["cascade_apgd_ce_apgd_dlr_square"] = float(robust.mean())
    rows = [dict(attack=name, tfnorms=ours[name], art=theirs.get(name)) for name in ours]
    return dict(model="digits_cnn (8x8, naturally trained)", points=points, eps=eps, n_iter=n_iter,
                n_queries=n_queries, clean_accuracy=accuracy(model, x, y), rows=rows,
                tfnorms_autoattack_standard=standard.robust_accuracy, tfnorms_flags=standard.flags)


def main(argv):
    del argv
    art_modules = art_or_none()
    result = dict(
        machine=machine_facts(tensorflow=tf.__version__, keras=keras.__version__,
                              art=None if art_modules is None else __import__("art").__version__),
        quick=FLAGS.quick,
        throughput=throughput(art_modules),
        agreement=agreement(art_modules),
    )
    write_json(result, FLAGS.output)

    t = result["throughput"]
    print(f"\nThroughput on {t['model']} {t['input_shape']}, {t['images']} images, eps={EPS:.4f} (CPU):")
    print(f"{'attack':>32} {'seconds':>10} {'images/s':>10} {'1st call s':>10} {'robust acc':>10}  note")
    for row in t["rows"]:
        robust = "-" if row["robust_accuracy"] is None else f"{row['robust_accuracy']:.3f}"
        first = "-" if row["first_call_seconds"] is None else f"{row['first_call_seconds']:.2f}"
        print(f"{row['name']:>32} {row['seconds']:>10.2f} {row['images_per_second']:>10.4f} {first:>10} {robust:>10}"
              f"  {row['note']}")
    a = result["agreement"]
    print(f"\nRobust accuracy agreement on {a['model']}, {a['points']} points, eps={a['eps']}, "
          f"clean {a['clean_accuracy']:.3f}:")
    print(f"{'attack':>32} {'tfnorms':>10} {'ART':>10}")
    for row in a["rows"]:
        art_value = "n/a" if row["art"] is None else f"{row['art']:.3f}"
        print(f"{row['attack']:>32} {row['tfnorms']:>10.3f} {art_value:>10}")
    print(f"{'tfnorms AutoAttack standard':>32} {a['tfnorms_autoattack_standard']:>10.3f}")
    print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
    app.run(main)
