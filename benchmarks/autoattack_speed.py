"""Wall time of the standard AutoAttack: tfnorms against a PyTorch AutoAttack on the same WRN-16-4 weights.

Setting (issue 12, part 3): a WRN-16-4 (:func:`tfnorms.models.wide_resnet`)
trained for ``--epochs`` epoch(s) on the embedded digits (grey level copied to 3
channels) with ``tfnorms.experiments.train_classifier``, once per image side of
``--sizes``: the digits' own 8x8, and 32x32 (upsampled; the CIFAR-10 shape of the
papers, where the per-operation overhead of tiny images matters less). The model is
weakly trained, so that at ``--eps`` every attack of the cascade still has points
to work on (a randomly initialised WRN predicts one class and APGD-CE alone
breaks it). The same weights are copied into the PyTorch twin
(``benchmarks/_torch_wrn.py``: ``tests/torch_models.py``'s WideResNet); the logits
must agree to ``1e-4`` before anything is timed. Both cascades run on the same
``--points`` test points.

* ``tfnorms``: ``AutoAttack(eps, version="standard")`` (APGD-CE, APGD-T 9 targets,
  FAB-T 9 targets, 100 iterations each; Square 5000 queries). The first call
  (``cold``: tracing and compilation included) and a second call on the same points
  (``warm``) are timed; per-attack seconds and the number of traces of every
  compiled function come from the run.
* ``torchattacks_official_budgets``: ``torchattacks.MultiAttack`` of its APGD (CE),
  APGDT, FAB (``multi_targeted``) and Square with the official AutoAttack budgets
  (``steps=100``, 9 target classes, 5000 queries, Square's schedule not rescaled).
  ``torchattacks.AutoAttack`` itself builds the same cascade with the attacks'
  default ``steps=10`` and a rescaled Square schedule: ``--torchattacks_default``
  times it as a separate, weaker row.

The ratio is PyTorch seconds over tfnorms seconds (higher is faster for tfnorms);
robust accuracies are the share of points misclassified by neither cascade's
output (each output point checked to be in the eps-ball and [0, 1]). On shared cores
give both frameworks one thread (``--threads=1``): PyTorch's OpenMP threads slow down
about 10x on oversubscribed cores, which would inflate the ratio.

Usage:
    python benchmarks/autoattack_speed.py --n_iter=20 --n_queries=1000 --threads=1 --sizes=8   # ~10 minutes under load
    python benchmarks/autoattack_speed.py --n_iter=20 --n_queries=1000 --threads=1 --sizes=32 --epochs=1
    python benchmarks/autoattack_speed.py              # standard budgets: hours on 2 shared cores
    python benchmarks/autoattack_speed.py --quick      # smoke test (WRN-10-1, 16x16, tiny budgets)
Writes benchmarks/results/autoattack_speed.json (or --output).
"""

from __future__ import annotations

import os
import time

from _machine import define_common_flags, machine_facts, write_json
from _torch_wrn import copy_keras_weights, torch_wide_resnet
from absl import app, flags
import keras
import numpy as np
import tensorflow as tf

from tfnorms import attacks, data, experiments
from tfnorms.models import wide_resnet

FLAGS = flags.FLAGS
define_common_flags("autoattack_speed", "Tiny configuration (WRN-10-1, 16x16, 8 points, small budgets).")
flags.DEFINE_integer("points", 32, "Test points attacked by both cascades.")
flags.DEFINE_integer("epochs", 3, "Training epochs on the digits (a weakly trained model).")
flags.DEFINE_list("sizes", ["8", "32"], "Image sides, one model and one table each: the digits' own 8, or upsampled.")
flags.DEFINE_integer("n_iter", 100, "Iterations of APGD-CE, APGD-T and FAB-T in both cascades (100 is standard).")
flags.DEFINE_integer("n_queries", 5000, "Queries of Square in both cascades (5000 is standard).")
flags.DEFINE_float("eps", 0.1, "l_inf radius of both cascades (the digits tests' radius).")
flags.DEFINE_integer("threads", 0, "Intra-op threads for both TensorFlow and PyTorch (0: library defaults).")
flags.DEFINE_string("model_cache", "", "Directory of trained weights: loaded if there (same configuration), "
                    "else trained and saved there; empty: always train.")
flags.DEFINE_bool("warm", True, "Time a second tfnorms call (after tracing) as well.")
flags.DEFINE_bool("torch", True, "Time the PyTorch reference (off: tfnorms rows only, no ratio).")
flags.DEFINE_bool("torchattacks_default", False, "Also time torchattacks.AutoAttack with its own defaults.")

LOGIT_TOLERANCE = 1e-4


def digits_rgb(size):
    (x_train, y_train), (x_test, y_test) = data.digits_arrays(size)
    return (np.repeat(x_train, 3, -1), y_train), (np.repeat(x_test, 3, -1), y_test)


def trained_model(config):
    (x_train, y_train), (x_test, y_test) = digits_rgb(config["size"])
    keras.utils.set_random_seed(0)
    model = wide_resnet(config["depth"], config["width"], 10, (config["size"], config["size"], 3))
    cache = FLAGS.model_cache and os.path.join(
        FLAGS.model_cache, f"wrn-{config['depth']}-{config['width']}_{config['size']}px_{config['epochs']}ep.weights.h5")
    if cache and os.path.exists(cache):
        model.load_weights(cache)
    else:
        train = tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(len(x_train), seed=0).batch(64)
        experiments.train_classifier(model, train, epochs=config["epochs"], lr=0.05)
        if cache:
            os.makedirs(FLAGS.model_cache, exist_ok=True)
            model.save_weights(cache)
    return model, x_test[:config["points"]], y_test[:config["points"]]


def torch_twin(model, config, x):
    import torch

    twin = copy_keras_weights(model, torch_wide_resnet(config["depth"], config["width"])).eval()
    with torch.no_grad():
        torch_logits = twin(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    difference = float(np.abs(torch_logits - np.asarray(model(x, training=False))).max())
    if not difference <= LOGIT_TOLERANCE:
        raise RuntimeError(f"the PyTorch twin's logits differ from Keras' by {difference:.2e} > {LOGIT_TOLERANCE}")
    return twin, difference


def verified_robust(predict, x_adv, x, y, eps):
    """Points still classified correctly at the returned point, after checking it is in the threat model."""
    distance = np.abs(x_adv.astype(np.float64) - x).reshape(len(x), -1).max(1)
    if distance.max() > eps + 1e-6 or x_adv.min() < 0.0 or x_adv.max() > 1.0:
        raise RuntimeError(f"an attack returned points outside the threat model (max distance {distance.max()})")
    return predict(x_adv) == y


def run_tfnorms(model, x, y, config):
    auto = attacks.AutoAttack(config["eps"], seed=0, n_iter=config["n_iter"], n_queries=config["n_queries"],
                              batch_size=len(x), verbose=0)
    runs = []
    for call in ("cold", "warm")[:2 if FLAGS.warm else 1]:
        start = time.perf_counter()
        result = auto.evaluate(model, x, y)
        seconds = time.perf_counter() - start
        robust = verified_robust(lambda v: np.argmax(model.predict(v, verbose=0), -1), result.adversarial, x, y,
                                 config["eps"])
        if not np.array_equal(robust, result.robust):
            raise RuntimeError("tfnorms' AutoAttack result disagrees with a re-check of its adversarial points")
        runs.append(dict(call=call, seconds=seconds, robust_accuracy=float(robust.mean()),
                         seconds_per_attack=result.report["seconds_per_attack"],
                         robust_accuracy_per_attack=result.report["robust_accuracy_per_attack"],
                         traces=auto.tracing_counts()))
        print(f"tfnorms ({call}): {seconds:.1f} s, robust accuracy {robust.mean():.3f}, "
              f"per attack {result.report['seconds_per_attack']}", flush=True)
    return runs


def torch_cascades(twin, config):
    import torchattacks

    eps, seed = config["eps"], 0
    budget = dict(steps=config["n_iter"])
    official = torchattacks.MultiAttack([
        torchattacks.APGD(twin, eps=eps, loss="ce", n_restarts=1, seed=seed, **budget),
        torchattacks.APGDT(twin, eps=eps, n_classes=10, n_restarts=1, seed=seed, **budget),
        torchattacks.FAB(twin, eps=eps, multi_targeted=True, n_classes=10, n_restarts=1, seed=seed, **budget),
        torchattacks.Square(twin, eps=eps, n_queries=config["n_queries"], n_restarts=1, seed=seed,
                            resc_schedule=False),
    ])
    cascades = {"torchattacks_official_budgets": official}
    if FLAGS.torchattacks_default:
        cascades["torchattacks_autoattack_default"] = torchattacks.AutoAttack(
            twin, eps=eps, version="standard", n_classes=10, seed=seed)
    return cascades, torchattacks.__version__


def run_torch(twin, cascade, x, y, config):
    import torch

    attack_list = getattr(cascade, "attacks", None) or cascade._autoattack.attacks
    seconds_per_attack, points_per_attack = {}, {}

    def timed(forward, name):
        def timed_forward(images, labels):
            start = time.perf_counter()
            out = forward(images, labels)
            seconds_per_attack[name] = round(time.perf_counter() - start, 3)
            points_per_attack[name] = int(images.shape[0])
            return out
        return timed_forward

    for attack in attack_list:  # per-attack wall time and the points each attack was given
        attack.forward = timed(attack.forward, type(attack).__name__.lower())
    x_torch, y_torch = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(y.astype(np.int64))
    start = time.perf_counter()
    x_adv = cascade(x_torch, y_torch).detach().numpy().transpose(0, 2, 3, 1)
    seconds = time.perf_counter() - start

    def predict(v):
        with torch.no_grad():
            return twin(torch.from_numpy(v.transpose(0, 3, 1, 2).copy())).argmax(1).numpy()

    robust = verified_robust(predict, x_adv, x, y, config["eps"])
    return dict(seconds=seconds, robust_accuracy=float(robust.mean()), seconds_per_attack=seconds_per_attack,
                points_per_attack=points_per_attack)


def run_size(config, machine):
    """Both cascades on one model and image size: rows, ratios and the accuracy gap."""
    model, x, y = trained_model(config)
    clean_accuracy = float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))
    twin, logit_difference = torch_twin(model, config, x)
    print(f"WRN-{config['depth']}-{config['width']}: clean accuracy {clean_accuracy:.3f} on {len(x)} points; "
          f"max |logits Keras - PyTorch| = {logit_difference:.2e}", flush=True)
    cascades = {}
    if FLAGS.torch:
        cascades, machine["torchattacks"] = torch_cascades(twin, config)

    tfnorms_runs = run_tfnorms(model, x, y, config)
    rows = [dict(implementation=f"tfnorms_{run['call']}", **run) for run in tfnorms_runs]
    for name, cascade in cascades.items():
        row = run_torch(twin, cascade, x, y, config)
        print(f"{name}: {row['seconds']:.1f} s, robust accuracy {row['robust_accuracy']:.3f}, "
              f"per attack {row['seconds_per_attack']}", flush=True)
        rows.append(dict(implementation=name, **row))

    by_name = {row["implementation"]: row for row in rows}
    reference = by_name.get("torchattacks_official_budgets")
    ratios, accuracy_gap = {}, None
    if reference is not None:
        ratios = {f"{row['implementation']}_speedup_vs_reference": reference["seconds"] / row["seconds"]
                  for row in rows if row["implementation"].startswith("tfnorms")}
        accuracy_gap = abs(by_name["tfnorms_cold"]["robust_accuracy"] - reference["robust_accuracy"])

    print(f"\nStandard AutoAttack, WRN-{config['depth']}-{config['width']} ({config['epochs']} epoch(s) on digits "
          f"{config['size']}x{config['size']}x3), {len(x)} points, eps {config['eps']:.5f}, clean {clean_accuracy:.3f}")
    print(f"{'implementation':<34}{'seconds':>10}{'robust acc':>12}")
    for row in rows:
        print(f"{row['implementation']:<34}{row['seconds']:>10.1f}{row['robust_accuracy']:>12.3f}")
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}x (goal 2x: {'met' if value >= 2.0 else 'NOT met'})")
    if accuracy_gap is not None:
        print(f"robust accuracy gap (tfnorms cold vs reference): {100 * accuracy_gap:.1f} points (goal <= 1)")
    return dict(config=config, clean_accuracy=clean_accuracy, logit_max_difference=logit_difference, rows=rows,
                ratios=ratios, robust_accuracy_gap=accuracy_gap)


def main(argv):
    del argv
    if FLAGS.quick:
        configs = [dict(depth=10, width=1, size=16, points=8, epochs=1, n_iter=5, n_queries=50, eps=FLAGS.eps)]
    else:
        configs = [dict(depth=16, width=4, size=int(size), points=FLAGS.points, epochs=FLAGS.epochs,
                        n_iter=FLAGS.n_iter, n_queries=FLAGS.n_queries, eps=FLAGS.eps) for size in FLAGS.sizes]
    import torch

    if FLAGS.threads:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.threads)
        torch.set_num_threads(FLAGS.threads)
    machine = machine_facts(tensorflow=tf.__version__, keras=keras.__version__, torch=torch.__version__,
                            torch_threads=torch.get_num_threads())
    sizes = [run_size(config, machine) for config in configs]
    result = dict(benchmark="autoattack_speed", quick=FLAGS.quick, machine=machine, sizes=sizes,
                  goals=dict(speedup=2.0, robust_accuracy_gap=0.01))
    write_json(result, FLAGS.output)


if __name__ == "__main__":
    app.run(main)
