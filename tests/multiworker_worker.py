"""One process of tests/test_multiworker.py: a tiny adversarial training run under a tf.distribute strategy.

    python tests/multiworker_worker.py multi_worker OUT_DIR SHARED_DIR   # TF_CONFIG names the cluster and this task
    python tests/multiworker_worker.py mirrored OUT_DIR SHARED_DIR       # one process, MirroredStrategy on 2 CPUs
    python tests/multiworker_worker.py MODE OUT_DIR SHARED_DIR resume    # only the resumable natural run

Both train the same tiny model (same seed) on the same 4 global batches of 8 for
two epochs with TRADES (seeded training attack), norm decay and its momentum
optimizer, validating on 2 batches, and write the initial and final weights
(``initial.npz``, ``weights.npz``) and the history (``history.json``) to ``OUT_DIR``.
Then PGD-AT and MART (one epoch each, plain SGD; ALP differs from PGD-AT only in its loss) and TRADES under the
``mixed_bfloat16`` policy train fresh copies (``<run>.npz``), and a last model
trains naturally through ``tfnorms.experiments.train_classifier``
with TensorBoard logs and backups in ``SHARED_DIR`` (the same directory for all
workers: only the chief may write there); its weights go to ``natural.npz``.

With ``resume`` only a natural run of ``RESUME_EPOCHS`` epochs with backups in
``SHARED_DIR`` runs (``resumed.npz``); ``TFNORMS_FAULT_AT=natural:2`` kills a
worker during its second epoch (:func:`tfnorms.resume.fault_injection`).
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

GLOBAL_BATCH = 8
EXAMPLES = 32
EPOCHS = 2
RESUME_EPOCHS = 3


def tiny_model(tfnorms, keras):
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu",
                            kernel_regularizer=tfnorms.NormDecay(1e-3)),
        keras.layers.BatchNormalization(momentum=0.9),
        keras.layers.Flatten(),
        keras.layers.Dense(3),
    ])


def main(mode, out_dir, shared_dir, phase="all"):
    import keras
    import numpy as np
    import tensorflow as tf

    import tfnorms
    from tfnorms import experiments

    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    else:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((EXAMPLES, 8, 8, 1), dtype=np.float32)
    y = rng.integers(0, 3, EXAMPLES).astype("int32")
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    os.makedirs(out_dir, exist_ok=True)
    if phase == "resume":
        from tfnorms import resume

        with strategy.scope():
            model = tiny_model(tfnorms, keras)
        experiments.train_classifier(model, dataset, method="natural", epochs=RESUME_EPOCHS, lr=0.05,
                                     strategy=strategy, backup_dir=os.path.join(shared_dir, "backup"),
                                     extra_callbacks=resume.fault_injection("natural"))
        np.savez(os.path.join(out_dir, "resumed.npz"), *model.get_weights())
        return
    with strategy.scope():
        model = tiny_model(tfnorms, keras)
        attack = tfnorms.attacks.PGD(0.1, 0.05, 2, loss="kl", random_start="normal", seed=0)
        trainer = tfnorms.AdversarialTrainer(model, method="trades", attack=attack)
        # Liang & Huang's norm decay memory around SGD with momentum.
        trainer.compile(tfnorms.NormDecayMomentum(keras.optimizers.SGD(0.1, momentum=0.9), momentum=0.5))
    np.savez(os.path.join(out_dir, "initial.npz"), *model.get_weights())
    history = trainer.fit(dataset, epochs=EPOCHS, validation_data=dataset.take(2), verbose=0)
    np.savez(os.path.join(out_dir, "weights.npz"), *model.get_weights())
    with open(os.path.join(out_dir, "history.json"), "w") as f:
        json.dump({key: [float(v) for v in values] for key, values in history.history.items()}, f)

    for method in ("pgd", "mart", "trades_bf16"):
        keras.mixed_precision.set_global_policy("mixed_bfloat16" if method == "trades_bf16" else "float32")
        with strategy.scope():
            model = tiny_model(tfnorms, keras)
            attack = tfnorms.attacks.PGD(0.1, 0.05, 1, loss="kl" if method.startswith("trades") else "ce", seed=0)
            trainer = tfnorms.AdversarialTrainer(model, method=method.split("_")[0], attack=attack)
            trainer.compile(keras.optimizers.SGD(0.1))
        trainer.fit(dataset, epochs=1, verbose=0)
        np.savez(os.path.join(out_dir, f"{method}.npz"), *[np.asarray(w, np.float32) for w in model.get_weights()])
    keras.mixed_precision.set_global_policy("float32")

    with strategy.scope():
        natural = tiny_model(tfnorms, keras)
    experiments.train_classifier(natural, dataset, method="natural", epochs=EPOCHS, lr=0.05, strategy=strategy,
                                 log_dir=os.path.join(shared_dir, "logs"), backup_dir=os.path.join(shared_dir, "backup"))
    np.savez(os.path.join(out_dir, "natural.npz"), *natural.get_weights())


if __name__ == "__main__":
    main(*sys.argv[1:])
