"""Norm-regularization study (Liang & Huang, experiment A; docs/reproducing.md#norm-regularization).

Trains one architecture naturally (cross-entropy, no attack) with: no
regularization; norm decay on the exact l1 and l_inf operator norms (with the
paper's decaying memory of maximal groups, momentum 0.5) at several factors;
coupled weight decay at several factors; and singular value clipping (SVC) at
several clip values. Reports clean accuracy, robust accuracy at a small eps
(APGD-CE + APGD-T, the paper's reduced AutoAttack, when
``tfnorms.attacks.APGD`` exists; PGD + CW worst case otherwise) and the
per-layer l1 / l_inf norms; writes ``results.json``, ``results.md``,
``layer_norms_l1.png``, ``layer_norms_linf.png`` and ``accuracy.png`` into
``--output_dir``.

CPU default (embedded digits data, small CNN, about 5 minutes on 2 cores):

    python examples/norm_regularization.py

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

from absl import app, flags  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from tfnorms import data, experiments  # noqa: E402

FLAGS = flags.FLAGS

flags.DEFINE_enum("dataset", "digits", sorted(data.DATASETS), "Data set ('digits' is embedded and offline).")
flags.DEFINE_string("data_dir", None, "tensorflow-datasets directory with pre-downloaded data.")
flags.DEFINE_integer("image_size", 16, "Side of the upsampled 'digits' images.")
flags.DEFINE_enum("model", "small_cnn", list(experiments.CLASSIFIERS), "Architecture.")
flags.DEFINE_integer("width", 16, "small_cnn base width / WRN widening factor.")
flags.DEFINE_integer("depth", 10, "WRN depth.")
flags.DEFINE_list("methods", ["none", "nd_l1", "nd_linf", "wd", "svc"],
                  "Regularizers: none, nd_l1, nd_linf (norm decay), wd (weight decay), svc.")
flags.DEFINE_list("factors", ["1e-4", "1e-2"], "Norm decay and weight decay factors.")
flags.DEFINE_list("clip_values", ["1.0", "0.5"], "SVC clip values.")
flags.DEFINE_integer("svc_every", 10, "Clip singular values every N steps (the paper: 100 on 391 steps/epoch).")
flags.DEFINE_float("norm_decay_momentum", 0.5, "Decaying memory of maximal groups (the paper: 0.5).")
flags.DEFINE_integer("epochs", 15, "Training epochs.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_float("lr", 0.05, "Initial SGD learning rate (the paper: 0.01).")
flags.DEFINE_list("milestones", ["11", "14"], "1-based epochs where the learning rate is multiplied by 0.1.")
flags.DEFINE_float("eps", 2.0 / 255, "l_inf radius of the robustness evaluation (the paper: 1/255 on CIFAR-10).")
flags.DEFINE_enum("attack", "apgd", ["apgd", "pgd"], "apgd = APGD-CE + APGD-T if available; pgd = PGD-20.")
flags.DEFINE_integer("eval_steps", 20, "Steps of PGD (and of the PGD + CW fallback of --attack=apgd).")
flags.DEFINE_integer("apgd_iter", 20, "Iterations of APGD-CE and of APGD-T per target (100 in AutoAttack).")
flags.DEFINE_integer("train_examples", 0, "Use only this many training examples (0 = all).")
flags.DEFINE_integer("eval_batch_size", 512, "Test batch size (large: fewer attack re-traces on CPU).")
flags.DEFINE_integer("eval_examples", 0, "Evaluate on this many test examples (0 = all; the paper: 1024).")
flags.DEFINE_string("output_dir", "runs/norm_regularization", "Output directory.")
flags.DEFINE_integer("seed", 0, "Random seed (same initialisation for every run).")


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


def run():
    """Runs the study with the current FLAGS; returns the report dict."""
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    info, train_ds, test_ds = experiments.load_study_data(
        FLAGS.dataset, batch_size=FLAGS.batch_size, image_size=FLAGS.image_size, data_dir=FLAGS.data_dir,
        train_examples=FLAGS.train_examples, eval_examples=FLAGS.eval_examples,
        eval_batch_size=FLAGS.eval_batch_size, seed=FLAGS.seed)
    attack = experiments.evaluation_attacks(FLAGS.eps, FLAGS.eval_steps, kind=FLAGS.attack,
                                            apgd_iter=FLAGS.apgd_iter, n_target_classes=min(9, info.num_classes - 1))
    rows, norms_l1, norms_linf = [], {}, {}
    for label, kwargs in configurations():
        keras.utils.set_random_seed(FLAGS.seed)
        classifier = experiments.build_classifier(FLAGS.model, info, depth=FLAGS.depth, width=FLAGS.width)
        start = time.time()
        history = experiments.train_classifier(
            classifier, train_ds, method="natural", epochs=FLAGS.epochs, lr=FLAGS.lr,
            milestones=[int(m) for m in FLAGS.milestones], **kwargs)
        row = experiments.evaluate(classifier, test_ds, attack)
        norms_l1[label] = experiments.layer_norms(classifier, 1)
        norms_linf[label] = experiments.layer_norms(classifier, np.inf)
        row.update(run=label, train_accuracy=history["clean_accuracy"][-1],
                   max_l1=max(norms_l1[label].values()), max_linf=max(norms_linf[label].values()),
                   log10_prod_l1=float(np.sum(np.log10(list(norms_l1[label].values())))),
                   train_seconds=round(time.time() - start, 1))
        rows.append(row)
        print(f"{label}: clean {row['clean_accuracy']:.4f} robust {row['robust_accuracy']:.4f}", flush=True)

    report = dict(study="norm_regularization", dataset=FLAGS.dataset, model=FLAGS.model, eps=FLAGS.eps,
                  epochs=FLAGS.epochs, attacks=list(attack), runs=rows,
                  layer_norms={"l1": norms_l1, "linf": norms_linf})
    experiments.write_json(os.path.join(FLAGS.output_dir, "results.json"), report)
    columns = ["run", "train_accuracy", "clean_accuracy", "robust_accuracy", "max_l1", "max_linf",
               "log10_prod_l1", "train_seconds"]
    header = (f"Norm regularization: {FLAGS.dataset}, {FLAGS.model}, natural training, {FLAGS.epochs} epochs; "
              f"robust accuracy at eps {FLAGS.eps:.4f} under {' + '.join(attack)} "
              f"(worst case), {rows[0]['examples']} test examples\n\n")
    table = experiments.format_table(rows, columns)
    with open(os.path.join(FLAGS.output_dir, "results.md"), "w") as f:
        f.write(header + table + "\n")
    print(header + table)
    experiments.plot_layer_norms(norms_l1, os.path.join(FLAGS.output_dir, "layer_norms_l1.png"),
                                 title=f"Per-layer l1 norms ({FLAGS.model}, {FLAGS.dataset})")
    experiments.plot_layer_norms(norms_linf, os.path.join(FLAGS.output_dir, "layer_norms_linf.png"),
                                 ylabel="l_inf operator norm",
                                 title=f"Per-layer l_inf norms ({FLAGS.model}, {FLAGS.dataset})")
    experiments.plot_accuracies(rows, os.path.join(FLAGS.output_dir, "accuracy.png"),
                                title=f"Clean and robust (eps {FLAGS.eps:.4f}) accuracy")
    print(f"wrote {FLAGS.output_dir}/results.json, results.md, layer_norms_l1.png, layer_norms_linf.png, accuracy.png")
    return report


def main(argv):
    del argv
    run()


if __name__ == "__main__":
    app.run(main)
