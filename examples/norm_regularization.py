"""Norm-regularization study (Liang & Huang, experiment A; docs/reproducing.md#norm-regularization).

Trains one architecture naturally (cross-entropy, no attack) with: no
regularization; norm decay on the exact l1 and l_inf operator norms (with the
paper's decaying memory of maximal groups, momentum 0.5) at several factors;
coupled weight decay at several factors; and singular value clipping (SVC) at
several clip values. Reports clean accuracy, robust accuracy at a small eps
(APGD-CE + APGD-T, the paper's reduced AutoAttack, worst case; or PGD-20 with
``--attack=pgd``) and the per-layer l1 / l_inf norms; writes ``results.json``,
``results.md``, ``layer_norms_l1.png``, ``layer_norms_linf.png`` and
``accuracy.png`` into ``--output_dir``. Every configuration runs with
``--seeds`` seeds; ``results.json`` holds, per configuration, the per-seed
rows and their ``mean`` and ``std``, ``results.md`` shows ``mean ± std`` and
the plots the spread.

CPU default (embedded digits data, small CNN, factor 1e-2, 6 configurations, 3 seeds,
about 13 minutes on 2 cores; each run is dominated by its APGD evaluation):

    python examples/norm_regularization.py

Two factors per regularizer (9 configurations, about 19 minutes):

    python examples/norm_regularization.py --factors=1e-4,1e-2

Full scale (CIFAR-10, the paper's grid and schedule; one model per call: the
paper's vgg11, resnet18, senet18 or regnetx_200mf):

    python examples/norm_regularization.py --dataset=cifar10 --data_dir=~/tensorflow_datasets \
        --model=resnet18 --epochs=120 --batch_size=128 --lr=0.01 --milestones=75,90,100 \
        --factors=1e-5,1e-4,1e-3,1e-2,1e-1 --clip_values=2,1.5,1,0.5,0.1 --svc_every=100 \
        --eps=0.00392156862745098 --eval_examples=1024 --attack=apgd --apgd_iter=100 --output_dir=runs/norm_reg_cifar10
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

from tfnorms import experiments  # noqa: E402

FLAGS = flags.FLAGS

experiments.define_flags(
    dataset="digits", data_dir=None, image_size=16, model="small_cnn", width=16, depth=10, svc_every=10,
    norm_decay_momentum=0.5, epochs=15, batch_size=64, lr=0.05, milestones=["11", "14"], eps=2.0 / 255,
    attack="apgd", eval_steps=20, apgd_iter=20, train_examples=0, eval_batch_size=512, eval_examples=0,
    output_dir="runs/norm_regularization", seed=0, seeds=3,
    helps=dict(svc_every="Clip singular values every N steps (the paper: 100 on 391 steps/epoch).",
               norm_decay_momentum="Decaying memory of maximal groups (the paper: 0.5).",
               lr="Initial SGD learning rate (the paper: 0.01).",
               eps="l_inf radius of the robustness evaluation (the paper: 1/255 on CIFAR-10).",
               eval_steps="Steps of PGD (--attack=pgd).",
               eval_examples="Evaluate on this many test examples (0 = all; the paper: 1024).",
               seed="First random seed (the same initialisation for every configuration of a seed)."),
)
flags.DEFINE_list("methods", ["none", "nd_l1", "nd_linf", "wd", "svc"],
                  "Regularizers: none, nd_l1, nd_linf (norm decay), wd (weight decay), svc.")
flags.DEFINE_list("factors", ["1e-2"], "Norm decay and weight decay factors.")
flags.DEFINE_list("clip_values", ["1.0", "0.5"], "SVC clip values.")


def configurations():
    """``[(label, kwargs of train_classifier)]`` from the flags."""
    runs = []
    factors = [float(f) for f in FLAGS.factors]
    for method in FLAGS.methods:
        if method == "none":
            runs.append(("none", {}))
        elif method in ("nd_l1", "nd_linf"):
            ord = method[3:]
            runs += [(f"{method} {f:g}", dict(norm_decay=(ord, f), norm_decay_momentum=FLAGS.norm_decay_momentum))
                     for f in factors]
        elif method == "wd":
            runs += [(f"wd {f:g}", dict(weight_decay=f)) for f in factors]
        elif method == "svc":
            runs += [(f"svc {float(c):g}", dict(svc=(float(c), FLAGS.svc_every))) for c in FLAGS.clip_values]
        else:
            raise ValueError(
                f"Invalid value for flag `methods`. Expected none, nd_l1, nd_linf, wd, svc. Received: {method!r}")
    return runs


METRICS = ("train_accuracy", "clean_accuracy", "robust_accuracy", "stability", "max_l1", "max_linf", "log10_prod_l1",
           "train_seconds")


def _train_and_measure(label, kwargs, seed, info, train_ds, test_ds, attack):
    """Trains one configuration from the seed's initialisation; returns its table row and per-layer norms."""
    keras.utils.set_random_seed(seed)
    classifier = experiments.build_classifier(FLAGS.model, info, depth=FLAGS.depth, width=FLAGS.width)
    start = time.time()
    history = experiments.train_classifier(
        classifier, train_ds, method="natural", epochs=FLAGS.epochs, lr=FLAGS.lr,
        milestones=[int(m) for m in FLAGS.milestones], **kwargs)
    row = experiments.evaluate(classifier, test_ds, attack)
    l1, linf = experiments.layer_norms(classifier, 1), experiments.layer_norms(classifier, np.inf)
    row.update(run=label, seed=seed, train_accuracy=history["clean_accuracy"][-1], max_l1=max(l1.values()),
               max_linf=max(linf.values()), log10_prod_l1=float(np.sum(np.log10(list(l1.values())))),
               train_seconds=round(time.time() - start, 1))
    print(f"{label} (seed {seed}): clean {row['clean_accuracy']:.4f} robust {row['robust_accuracy']:.4f}", flush=True)
    return row, l1, linf


def run():
    """Runs the study with the current FLAGS; returns the report dict."""
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    runs, per_seed_l1, per_seed_linf = [], {}, {}
    for seed in experiments.seed_values(FLAGS.seed, FLAGS.seeds):
        info, train_ds, test_ds = experiments.study_data(FLAGS, seed=seed)
        attack = experiments.evaluation_attacks(FLAGS.eps, FLAGS.eval_steps, kind=FLAGS.attack,
                                                apgd_iter=FLAGS.apgd_iter,
                                                n_target_classes=min(9, info.num_classes - 1))
        for label, kwargs in configurations():
            row, l1, linf = _train_and_measure(label, kwargs, seed, info, train_ds, test_ds, attack)
            runs.append(row)
            per_seed_l1.setdefault(label, []).append(l1)
            per_seed_linf.setdefault(label, []).append(linf)

    rows = experiments.summarize_runs(runs, ["run"], METRICS)
    norms_l1 = {label: experiments.summarize_seeds(v, list(v[0])) for label, v in per_seed_l1.items()}
    norms_linf = {label: experiments.summarize_seeds(v, list(v[0])) for label, v in per_seed_linf.items()}
    report = dict(study="norm_regularization", dataset=FLAGS.dataset, model=FLAGS.model, eps=FLAGS.eps,
                  epochs=FLAGS.epochs, seeds=FLAGS.seeds, attacks=list(attack), runs=rows,
                  layer_norms={"l1": norms_l1, "linf": norms_linf})
    return experiments.write_results(
        FLAGS.output_dir, report,
        header=(f"Norm regularization: {FLAGS.dataset}, {FLAGS.model}, natural training, {FLAGS.epochs} epochs; "
                f"robust accuracy at eps {FLAGS.eps:.4f} under {' + '.join(attack)} "
                f"(worst case), {runs[0]['examples']} test examples, {experiments.over_seeds(FLAGS.seeds)}\n\n"),
        rows=rows,
        columns=["run", "train_accuracy", "clean_accuracy", "robust_accuracy", "max_l1", "max_linf",
                 "log10_prod_l1", "train_seconds"],
        plots={
            "layer_norms_l1.png": lambda path: experiments.plot_layer_norms(
                experiments.layer_norm_spreads(norms_l1), path,
                title=f"Per-layer l1 norms ({FLAGS.model}, {FLAGS.dataset})"),
            "layer_norms_linf.png": lambda path: experiments.plot_layer_norms(
                experiments.layer_norm_spreads(norms_linf), path, ylabel="l_inf operator norm",
                title=f"Per-layer l_inf norms ({FLAGS.model}, {FLAGS.dataset})"),
            "accuracy.png": lambda path: experiments.plot_accuracies(
                rows, path, title=f"Clean and robust (eps {FLAGS.eps:.4f}) accuracy"),
        },
    )


def main(argv):
    del argv
    run()


if __name__ == "__main__":
    app.run(main)
