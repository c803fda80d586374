"""Layer norms of robust versus natural models (Liang & Huang, experiment B; docs/reproducing.md#compare-norms).

Trains one architecture naturally and with PGD-AT, TRADES and ALP (beta 1 for
TRADES and ALP, as in the paper's script), or loads saved ``.keras`` models
given with ``--models``, then compares the exact per-layer l1 operator norms
(Conv2D, Dense and BatchNorm layers): a side-by-side bar chart
(``layer_norms_l1.png``) and the distribution of all layer norms per model
(``norm_distribution.png``) with "(clean % | robust %)" in the legend, plus
``results.json`` and ``results.md`` in ``--output_dir``. Trained models are
saved there as ``<method>_s<seed>.keras``. Every method trains with
``--seeds`` seeds: ``results.json`` holds per-seed rows with their ``mean`` and
``std`` (per-layer norms too), ``results.md`` shows ``mean ± std`` and the
plots the spread (error bars of the per-layer means).

CPU default (embedded digits data, WideResNet-10-1, 15 epochs, 3 seeds, about
19 minutes on 2 cores; PGD-AT reaches 96 % clean accuracy, where the former small CNN
stopped at 48 %):

    python examples/compare_norms.py

Saved models (any Keras classifiers of the same data set; labels before '='):

    python examples/compare_norms.py --models=natural=runs/a/model.keras,trades=runs/b/model.keras

Full scale (CIFAR-10, the paper's settings; one architecture per call, e.g. the
paper's vgg11, resnet18, senet18 or regnetx_200mf; GPUs):

    python examples/compare_norms.py --dataset=cifar10 --data_dir=~/tensorflow_datasets \
        --model=resnet18 --epochs=120 --batch_size=128 --lr=0.1 --milestones=75,90,100 \
        --eps=0.031 --step_size=0.007 --attack_steps=10 --eval_eps=0.03137254901960784 \
        --apgd_iter=100 --eval_examples=1024 --output_dir=runs/compare_norms_cifar10
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow's oneDNN kernels: on by default only on CPUs with AVX-512 VNNI / BF16 / AMX; on an
# AVX2 CPU they trained these studies' models 1.1-1.4x faster (docs/benchmarks.md#onednn). Set
# before TensorFlow is imported; TF_ENABLE_ONEDNN_OPTS=0 turns them off.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from absl import app, flags  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfnorms  # noqa: E402,F401  (registers the tfnorms objects for load_model)
from tfnorms import experiments  # noqa: E402

FLAGS = flags.FLAGS

experiments.define_flags(
    dataset="digits", data_dir=None, image_size=16, model="wrn", width=1, depth=10, beta=1.0, epochs=15,
    batch_size=64, lr=0.05, milestones=["11", "14"], eps=0.1, step_size=0.025, attack_steps=5, attack="apgd",
    eval_steps=20, apgd_iter=20, train_examples=0, eval_batch_size=512, eval_examples=0,
    output_dir="runs/compare_norms", seed=0, seeds=3,
    helps=dict(beta="TRADES / ALP beta (the paper's script: 1.0).",
               eps="l_inf radius of the training attack (0.031 on CIFAR-10).",
               eval_steps="Steps of PGD (--attack=pgd).",
               eval_examples="Evaluate on this many test examples (0 = all; the paper: 1024).",
               seed="First random seed (the same initialisation for every method of a seed)."),
)
flags.DEFINE_list("methods", ["natural", "pgd", "trades", "alp"], "Training methods to compare.")
flags.DEFINE_list("models", [], "Saved .keras classifiers ('label=path' or 'path') instead of training.")
flags.DEFINE_float("eval_eps", None, "l_inf radius of the evaluation (default --eps; the paper: 8/255).")


METRICS = ("clean_accuracy", "robust_accuracy", "stability", "mean_l1", "median_l1", "max_l1", "log10_prod_l1")


def _saved_models():
    for item in FLAGS.models:
        label, _, path = item.rpartition("=")
        path = os.path.expanduser(path)
        label = label or os.path.splitext(os.path.basename(path))[0]
        loaded = keras.models.load_model(path)
        yield label, FLAGS.seed, getattr(loaded, "model", loaded), dict(source=path)  # a saved trainer: its classifier


def _trained_models(seed, info, train_ds):
    for method in FLAGS.methods:
        keras.utils.set_random_seed(seed)
        classifier = experiments.build_classifier(FLAGS.model, info, depth=FLAGS.depth, width=FLAGS.width)
        attack = None
        if method != "natural":
            attack = experiments.training_attack(method, FLAGS.eps, FLAGS.step_size, FLAGS.attack_steps)
        start = time.time()
        experiments.train_classifier(
            classifier, train_ds, method=method, epochs=FLAGS.epochs, lr=FLAGS.lr,
            milestones=[int(m) for m in FLAGS.milestones], beta=FLAGS.beta if method in ("trades", "alp") else None,
            attack=attack)
        path = os.path.join(FLAGS.output_dir, f"{method}_s{seed}.keras")
        classifier.save(path)
        yield method, seed, classifier, dict(source=path, train_seconds=round(time.time() - start, 1))


def _measure(label, classifier, test_ds, attack):
    """The table row of one model: accuracies and statistics of its per-layer l1 norms; and those norms."""
    row = experiments.evaluate(classifier, test_ds, attack)
    norms = experiments.layer_norms(classifier, 1)
    values = np.array(list(norms.values()))
    row.update(model=label, layers=len(values), mean_l1=float(values.mean()), median_l1=float(np.median(values)),
               max_l1=float(values.max()), log10_prod_l1=float(np.sum(np.log10(values))))
    print(f"{label}: clean {row['clean_accuracy']:.4f} robust {row['robust_accuracy']:.4f} "
          f"median l1 {row['median_l1']:.3f}", flush=True)
    return row, norms


def _sources():
    """``(label, seed, classifier, extra)`` of every model: the saved ones, or each seed's trained ones."""
    if FLAGS.models:
        if FLAGS.seeds != 1:
            raise ValueError(f"Invalid value for flag `seeds`. Expected 1 with --models (saved models have no "
                             f"seeds to repeat). Received: {FLAGS.seeds}")
        yield from _saved_models()
        return
    for seed in experiments.seed_values(FLAGS.seed, FLAGS.seeds):
        info, train_ds, _ = experiments.study_data(FLAGS, seed=seed)
        yield from _trained_models(seed, info, train_ds)


def run():
    """Runs the comparison with the current FLAGS; returns the report dict."""
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    info, _, test_ds = experiments.study_data(FLAGS)
    eval_eps = FLAGS.eval_eps if FLAGS.eval_eps is not None else FLAGS.eps
    attack = experiments.evaluation_attacks(eval_eps, FLAGS.eval_steps, kind=FLAGS.attack, apgd_iter=FLAGS.apgd_iter,
                                            n_target_classes=min(9, info.num_classes - 1))
    runs, per_seed_norms = [], {}
    for label, seed, classifier, extra in _sources():
        row, norms = _measure(label, classifier, test_ds, attack)
        runs.append(dict(row, seed=seed, **extra))
        per_seed_norms.setdefault(label, []).append(norms)

    rows = experiments.summarize_runs(runs, ["model"], METRICS)
    norms_l1 = {label: experiments.summarize_seeds(v, list(v[0])) for label, v in per_seed_norms.items()}
    report = dict(study="compare_norms", dataset=FLAGS.dataset, model=FLAGS.model, eval_eps=eval_eps,
                  seeds=FLAGS.seeds, attacks=list(attack), runs=rows, layer_norms_l1=norms_l1)
    spreads = experiments.layer_norm_spreads(norms_l1)
    legend = {
        f"{r['model']} ({100 * r['mean']['clean_accuracy']:.1f}% | {100 * r['mean']['robust_accuracy']:.1f}%)":
            r["model"] for r in rows
    }
    return experiments.write_results(
        FLAGS.output_dir, report,
        header=(f"Layer l1 norms: {FLAGS.dataset}, {FLAGS.model}; robust accuracy at eps {eval_eps:.4f} under "
                f"{' + '.join(attack)} (worst case), {runs[0]['examples']} test examples, "
                f"{experiments.over_seeds(FLAGS.seeds)}\n\n"),
        rows=rows,
        columns=["model", "clean_accuracy", "robust_accuracy", "mean_l1", "median_l1", "max_l1", "log10_prod_l1"],
        plots={
            "layer_norms_l1.png": lambda path: experiments.plot_layer_norms(
                {text: spreads[model] for text, model in legend.items()}, path,
                title=f"Per-layer l1 norms (clean | robust accuracy), {FLAGS.dataset}"),
            "norm_distribution.png": lambda path: experiments.plot_norm_distributions(
                {text: [v for seed_norms in norms_l1[model]["per_seed"] for v in seed_norms.values()]
                 for text, model in legend.items()}, path,
                title="Distribution of layer l1 norms, all seeds (clean | robust)"),
        },
    )


def main(argv):
    del argv
    run()


if __name__ == "__main__":
    app.run(main)
