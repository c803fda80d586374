"""Adversarial training in one ``train_step``: PGD-AT (Madry; Wu et al.'s lambda form), TRADES, MART, ALP.

A training method is a loss over ``(clean logits, adversarial logits, labels)``
(:func:`pgd_loss`, :func:`pgd_lambda_loss`, :func:`trades_loss`,
:func:`mart_loss`, :func:`alp_loss`); the attack is any
:mod:`tfnorms.attacks` attack. :class:`AdversarialTrainer` wraps a Keras
classifier and trains it with ``compile`` / ``fit`` as usual.

Per step (docs/theory.md#adversarial-training-step): the attack runs with the model in inference mode
(no gradient, batch norm frozen); then, inside the gradient tape, the clean and
the adversarial batches go through the network in training mode as two
**separate** forward passes (batch-norm statistics per pass, never
concatenated); the method's loss plus the model's regularization losses is
minimised.

Example:
    >>> import numpy as np, keras, tfnorms
    >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(2)])
    >>> trainer = tfnorms.AdversarialTrainer(model, method="trades", beta=6.0)
    >>> trainer.compile(optimizer="adam")
    >>> x = np.random.rand(16, 8, 8, 1).astype("float32"); y = np.arange(16) % 2
    >>> history = trainer.fit(x, y, batch_size=8, epochs=1, verbose=0)
    >>> sorted(history.history)
    ['adversarial_accuracy', 'clean_accuracy', 'loss', 'natural_loss', 'robust_loss']
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from tfnorms import _keras
from tfnorms import _inputs
from tfnorms import attacks as attacks_lib
from tfnorms import metrics as metrics_lib
from tfnorms.attacks.losses import one_hot_labels

# Attack settings of the TRADES / MART / Wu et al. / Liang & Huang reference code (docs/theory.md#pgd-attacks).
TRAINING_EPS = 0.031
TRAINING_STEP_SIZE = 0.007
TRAINING_STEPS = 10
EVALUATION_STEPS = 20

DEFAULT_BETA = {"pgd": None, "pgd_lambda": 1.0, "trades": 6.0, "mart": 6.0, "alp": 1.0}
METHODS = tuple(DEFAULT_BETA)


class LossTerms(NamedTuple):
    """Per-example terms of a training objective (all ``[batch]`` float32).

    Attributes:
        total: what is minimised (its batch mean is the ``loss``).
        natural: cross-entropy on the clean logits (the natural risk).
        robust: the robust term that ``beta`` weights (for ``"pgd"``: the
            adversarial cross-entropy, which is the whole loss).
    """

    total: tf.Tensor
    natural: tf.Tensor
    robust: tf.Tensor


def _float32(logits):
    return tf.cast(tf.convert_to_tensor(logits), tf.float32)


def _cross_entropy(log_probs, one_hot):
    return -tf.reduce_sum(one_hot * log_probs, axis=-1)


def _kl(log_p, log_q):
    return tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=-1)


def _setup(clean_logits, adversarial_logits, labels):
    clean_logits = _float32(clean_logits)
    adversarial_logits = _float32(adversarial_logits)
    one_hot = one_hot_labels(labels, clean_logits.shape[-1])
    return clean_logits, adversarial_logits, one_hot


def pgd_loss(clean_logits, adversarial_logits, labels, beta=None) -> LossTerms:
    """Madry PGD-AT: ``CE(f(x_adv), y)`` (docs/theory.md#pgd-at); ``beta`` is not used."""
    del beta
    clean_logits, adversarial_logits, one_hot = _setup(clean_logits, adversarial_logits, labels)
    ce_adv = _cross_entropy(tf.nn.log_softmax(adversarial_logits), one_hot)
    ce_nat = _cross_entropy(tf.nn.log_softmax(clean_logits), one_hot)
    return LossTerms(ce_adv, ce_nat, ce_adv)


def pgd_lambda_loss(clean_logits, adversarial_logits, labels, beta) -> LossTerms:
    """Wu et al.'s lambda form: ``CE_nat + beta * (max(CE_adv, CE_nat) - CE_nat)`` (docs/theory.md#pgd-lambda)."""
    clean_logits, adversarial_logits, one_hot = _setup(clean_logits, adversarial_logits, labels)
    ce_nat = _cross_entropy(tf.nn.log_softmax(clean_logits), one_hot)
    ce_adv = _cross_entropy(tf.nn.log_softmax(adversarial_logits), one_hot)
    robust = tf.maximum(ce_adv, ce_nat) - ce_nat
    return LossTerms(ce_nat + beta * robust, ce_nat, robust)


def trades_loss(clean_logits, adversarial_logits, labels, beta) -> LossTerms:
    """TRADES: ``CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x_adv))`` (docs/theory.md#trades).

    The batch mean of the per-example KL is PyTorch's ``batchmean``; the
    gradient flows through both arguments of the KL (the target is not
    detached), as in the official code.
    """
    clean_logits, adversarial_logits, one_hot = _setup(clean_logits, adversarial_logits, labels)
    log_p_nat = tf.nn.log_softmax(clean_logits)
    ce_nat = _cross_entropy(log_p_nat, one_hot)
    kl = _kl(log_p_nat, tf.nn.log_softmax(adversarial_logits))
    return LossTerms(ce_nat + beta * kl, ce_nat, kl)


def mart_loss(clean_logits, adversarial_logits, labels, beta) -> LossTerms:
    """MART: ``BCE + beta * KL(p_nat || p_adv) * (1 - p_nat[y])`` (docs/theory.md#mart, constants of ``mart.py``).

    ``BCE = CE(f(x_adv), y) - log(1.0001 - p_adv[y_hat] + 1e-12)`` with
    ``y_hat = argmax_{k != y} p_adv[k]``; the KL uses ``log(p_adv + 1e-12)``
    and the weight ``1.0000001 - p_nat[y]``. Labels must be hard (class ids or one-hot).
    """
    clean_logits, adversarial_logits, one_hot = _setup(clean_logits, adversarial_logits, labels)
    p_adv = tf.nn.softmax(adversarial_logits)
    log_p_nat = tf.nn.log_softmax(clean_logits)
    p_nat = tf.exp(log_p_nat)
    ce_adv = _cross_entropy(tf.nn.log_softmax(adversarial_logits), one_hot)
    best_wrong_p_adv = tf.reduce_max(tf.where(one_hot > 0, tf.zeros_like(p_adv), p_adv), axis=-1)
    bce = ce_adv - tf.math.log(1.0001 - best_wrong_p_adv + 1e-12)
    kl = tf.reduce_sum(p_nat * (log_p_nat - tf.math.log(p_adv + 1e-12)), axis=-1)
    robust = kl * (1.0000001 - tf.reduce_sum(one_hot * p_nat, axis=-1))
    ce_nat = _cross_entropy(log_p_nat, one_hot)
    return LossTerms(bce + beta * robust, ce_nat, robust)


def alp_loss(clean_logits, adversarial_logits, labels, beta) -> LossTerms:
    """ALP: ``0.5 CE(f(x), y) + 0.5 CE(f(x_adv), y) + beta * MSE(f(x), f(x_adv))`` (docs/theory.md#alp).

    The MSE is the mean over the logits, so its batch mean is the mean over
    all ``batch x classes`` entries (``F.mse_loss``).
    """
    clean_logits, adversarial_logits, one_hot = _setup(clean_logits, adversarial_logits, labels)
    ce_nat = _cross_entropy(tf.nn.log_softmax(clean_logits), one_hot)
    ce_adv = _cross_entropy(tf.nn.log_softmax(adversarial_logits), one_hot)
    mse = tf.reduce_mean(tf.square(clean_logits - adversarial_logits), axis=-1)
    return LossTerms(0.5 * ce_nat + 0.5 * ce_adv + beta * mse, ce_nat, mse)


LOSSES = {"pgd": pgd_loss, "pgd_lambda": pgd_lambda_loss, "trades": trades_loss, "mart": mart_loss, "alp": alp_loss}


def validate_method(method):
    """Returns ``method`` if it names a training method, else raises ``ValueError``."""
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(
            f"Invalid value for argument `method`. Expected one of {', '.join(repr(m) for m in METHODS)}. "
            f"Received: method={method!r}"
        )
    return method


def default_attack(method):
    """The training attack of the reference code: l_inf PGD-10, eps 0.031, step 0.007, ``0.001 * N`` start.

    The loss is the KL to the clean softmax for TRADES and cross-entropy otherwise.
    """
    loss = "kl" if validate_method(method) == "trades" else "ce"
    return attacks_lib.PGD(TRAINING_EPS, TRAINING_STEP_SIZE, TRAINING_STEPS, loss=loss, random_start="normal")


def default_eval_attack():
    """PGD-20 of Wu et al. / TRADES evaluation: l_inf, eps 0.031, step 0.007, uniform start, CE, final iterate."""
    return attacks_lib.PGD(TRAINING_EPS, TRAINING_STEP_SIZE, EVALUATION_STEPS, loss="ce", random_start="uniform")


def _validate_beta(method, beta):
    if beta is None:
        return DEFAULT_BETA[method]
    if method == "pgd":
        raise ValueError(
            "Invalid value for argument `beta`. Expected None for method='pgd' (Madry's loss has no "
            "robust-term weight; use method='pgd_lambda' for Wu et al.'s lambda form). "
            f"Received: beta={beta!r}"
        )
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not np.isfinite(beta) or beta < 0:
        raise ValueError(f"Invalid value for argument `beta`. Expected a finite float >= 0. Received: beta={beta!r}")
    return float(beta)


def _validate_attack(name, attack):
    if not callable(attack):
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected None or an attack callable as "
            f"`attack(model, x, y)` (e.g. tfnorms.attacks.PGD). Received: {name}={attack!r}"
        )
    return attack


def _weighted_batch_mean(values, sample_weight):
    """Keras' ``sum_over_batch_size``: ``sum(w * v) / batch``."""
    if sample_weight is not None:
        values = values * tf.reshape(tf.cast(sample_weight, values.dtype), [-1])
    return tf.reduce_mean(values)


def _num_replicas():
    return tf.distribute.get_strategy().num_replicas_in_sync


@keras.saving.register_keras_serializable(package="tfnorms")
class AdversarialTrainer(_keras.MultiWorkerFit, keras.Model):
    """Wraps a logits classifier and trains it adversarially with ``fit``.

    Methods (per-example loss, averaged over the batch; docs/theory.md#adversarial-losses):

    | `method` | loss | `robust_loss` (the term `beta` weighs) |
    |---|---|---|
    | `"pgd"` | `CE(f(x_adv), y)` (Madry) | `CE(f(x_adv), y)` |
    | `"pgd_lambda"` | `CE_nat + beta * (max(CE_adv, CE_nat) - CE_nat)` (Wu et al.) | `max(CE_adv, CE_nat) - CE_nat` |
    | `"trades"` | `CE_nat + beta * KL(p_nat, p_adv)` | the KL |
    | `"mart"` | `BCE(p_adv, y) + beta * KL(p_nat, p_adv) * (1 - p_nat[y])` | the weighted KL |
    | `"alp"` | `0.5 CE_nat + 0.5 CE_adv + beta * MSE(z_nat, z_adv)` | the logit MSE |

    ``natural_loss`` is always ``CE(f(x), y)``. For ``"pgd"`` the clean batch is
    not part of the loss: it runs once in inference mode, outside the tape,
    only for ``natural_loss`` and ``clean_accuracy``. For every other method
    the clean and adversarial batches are separate training-mode passes.

    Training metrics: ``loss`` (including the model's regularization losses,
    counted once), ``natural_loss``, ``robust_loss``, ``clean_accuracy`` and
    ``adversarial_accuracy`` (on the training-mode logits of the batch).
    Evaluation metrics (``evaluate`` / validation): ``loss``, ``natural_loss``
    and ``robust_loss`` at the ``eval_attack`` point, ``clean_accuracy``,
    ``robust_accuracy`` and ``stability`` (fraction of points whose prediction
    the attack does not change, docs/theory.md#perturbation-stability), all in inference mode.

    Regularization: ``model.losses`` is read once per step after the last
    training-mode pass, so weight regularizers count once; activity
    regularizers contribute for the adversarial pass only.

    Distribution and precision follow Keras' own TensorFlow ``train_step``:
    the loss is divided by the number of replicas before the gradient and
    multiplied back for the tracker; ``optimizer.scale_loss`` handles
    ``mixed_float16`` loss scaling (``compile`` wraps the optimizer in a
    ``LossScaleOptimizer`` when the policy is ``mixed_float16``). Losses and
    attack objectives are computed in float32. Create the trainer inside
    ``strategy.scope()`` for ``tf.distribute``.

    Data are checked (``tfnorms._inputs``): images must be floats in [0, 1],
    labels class ids in ``[0, classes)`` or distribution rows (one-hot / soft).
    ``fit``, ``evaluate``, ``train_on_batch`` and ``test_on_batch`` check arrays
    eagerly and a ``tf.data.Dataset`` in its pipeline, which also holds under
    ``jit_compile=True``; the steps check again with ``tf.debugging`` assertions
    (dropped by XLA). ``evaluate`` fails on non-finite logits (under XLA its
    accuracies are NaN instead).

    Args:
        model: a ``keras.Model`` mapping inputs in [0, 1] to logits.
        method: ``"pgd"``, ``"pgd_lambda"``, ``"trades"``, ``"mart"`` or ``"alp"``.
        beta: weight of the robust term (TRADES' beta, Wu et al.'s lambda).
            Defaults: trades 6.0, mart 6.0, alp 1.0, pgd_lambda 1.0; must be
            ``None`` for ``"pgd"``. Stored in the non-trainable variable
            :attr:`beta`, which callbacks may ``assign``.
        attack: training attack. Default: the reference l_inf PGD-10
            (eps 0.031, step 0.007, ``0.001 * N(0, I)`` start), with the KL loss
            for TRADES and cross-entropy otherwise.
        eval_attack: attack for ``evaluate``. Default: PGD-20 of the Wu et al. /
            TRADES evaluation (l_inf, eps 0.031, step 0.007, uniform start, CE,
            final iterate).
        **kwargs: ``keras.Model`` arguments (e.g. ``name``).

    Example:
        >>> import keras, tfnorms
        >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(2)])
        >>> trainer = tfnorms.AdversarialTrainer(model, method="mart")
        >>> float(trainer.beta.numpy())
        6.0
        >>> _ = trainer.beta.assign(3.0)  # e.g. from a callback
        >>> float(trainer.beta.numpy())
        3.0
    """

    def __init__(self, model, method="trades", beta=None, attack=None, eval_attack=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(model, keras.Layer):
            raise ValueError(
                "Invalid value for argument `model`. Expected a keras.Model returning logits. "
                f"Received: model={model!r}"
            )
        self.method = validate_method(method)
        initial_beta = _validate_beta(self.method, beta)
        self.model = model
        self.attack = default_attack(self.method) if attack is None else _validate_attack("attack", attack)
        self.eval_attack = default_eval_attack() if eval_attack is None else _validate_attack("eval_attack", eval_attack)
        self._loss_terms = LOSSES[self.method]
        self.beta = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(1.0 if initial_beta is None else initial_beta),
            trainable=False,
            dtype="float32",
            name="beta",
        )
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.natural_loss_tracker = keras.metrics.Mean(name="natural_loss")
        self.robust_loss_tracker = keras.metrics.Mean(name="robust_loss")
        self.clean_accuracy_tracker = metrics_lib.LogitAccuracy(name="clean_accuracy")
        self.adversarial_accuracy_tracker = metrics_lib.LogitAccuracy(name="adversarial_accuracy")
        self.robust_accuracy_tracker = metrics_lib.RobustAccuracy(name="robust_accuracy")
        self.stability_tracker = metrics_lib.PerturbationStability(name="stability")
        if getattr(model, "built", False):
            _keras.bind(model)
            self.built = True

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        """``keras.Model.compile`` without ``loss`` / ``metrics``: the method defines both."""
        for name, value in (("loss", loss), ("metrics", metrics)):
            if value is not None:
                raise ValueError(
                    f"Invalid value for argument `{name}`. Expected None: AdversarialTrainer's loss and metrics "
                    f"are set by `method` (method={self.method!r}). Received: {name}={value!r}"
                )
        super().compile(optimizer=optimizer, **kwargs)

    def compile_from_config(self, config):
        """Re-compiles after ``keras.models.load_model`` (the compile config holds no loss / metrics)."""
        config = dict(keras.saving.deserialize_keras_object(config))
        config.pop("loss", None)
        config.pop("metrics", None)
        self.compile(**config)
        if self.built and self.optimizer is not None:
            self.optimizer.build(self.trainable_variables)

    @property
    def _train_trackers(self):
        return (
            self.loss_tracker,
            self.natural_loss_tracker,
            self.robust_loss_tracker,
            self.clean_accuracy_tracker,
            self.adversarial_accuracy_tracker,
        )

    @property
    def _test_trackers(self):
        return (
            self.loss_tracker,
            self.natural_loss_tracker,
            self.robust_loss_tracker,
            self.clean_accuracy_tracker,
            self.robust_accuracy_tracker,
            self.stability_tracker,
        )

    def _regularization_loss(self):
        # Runs while the step is traced, after the forward passes built the model: binds every
        # tfnorms regularizer / constraint to its layer before Keras reads them (no-op once bound).
        _keras.bind(self.model, reset_functions=False)
        losses = self.model.losses
        if not losses:
            return tf.constant(0.0, tf.float32)
        return tf.add_n([tf.reduce_sum(tf.cast(loss, tf.float32)) for loss in losses])

    def _beta(self):
        return tf.cast(tf.convert_to_tensor(self.beta), tf.float32)

    # Data checks (tfnorms._inputs). In the steps they are trace-time checks plus tf.debugging assertions,
    # which XLA drops; so data are also checked where they enter, outside the compiled step.
    def _checked_data(self, x, y=None):
        """Checks arrays eagerly (``ValueError``) and adds the checks to a ``tf.data.Dataset`` as a ``map``."""
        if isinstance(x, tf.data.Dataset):
            return x.map(self._check_element)  # tf.data functions are never XLA-compiled
        if y is not None and isinstance(x, (np.ndarray, tf.Tensor)) and _inputs.is_concrete(x):
            _inputs.check_batch(self.model, x, y)
        return x

    def _check_element(self, *element):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(element if len(element) > 1 else element[0])
        with tf.control_dependencies(tf.nest.flatten(_inputs.check_batch(self.model, x, y))):
            element = tf.nest.map_structure(tf.identity, element)
        return element if len(element) > 1 else element[0]

    def fit(self, x=None, y=None, *args, **kwargs):
        """``keras.Model.fit``; ``x``, ``y`` and ``validation_data`` are checked first (:mod:`tfnorms._inputs`).

        Images must be floats in [0, 1] and labels class ids in ``[0, classes)``
        or distribution rows: arrays are checked eagerly (``ValueError``), a
        ``tf.data.Dataset`` in its pipeline (``InvalidArgumentError`` at the
        first bad batch), so the checks also hold with ``jit_compile=True``.
        """
        validation_data = kwargs.get("validation_data")
        if isinstance(validation_data, tuple) and len(validation_data) >= 2:
            kwargs["validation_data"] = (self._checked_data(*validation_data[:2]),) + validation_data[1:]
        elif validation_data is not None:
            kwargs["validation_data"] = self._checked_data(validation_data)
        return super().fit(self._checked_data(x, y), y, *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        """``keras.Model.evaluate`` with ``x``, ``y`` checked first, as in :meth:`fit`."""
        if not kwargs.get("_use_cached_eval_dataset"):  # fit's validation data, checked by fit
            x = self._checked_data(x, y)
        return super().evaluate(x, y, *args, **kwargs)

    def train_on_batch(self, x, y=None, *args, **kwargs):
        """``keras.Model.train_on_batch`` with ``x``, ``y`` checked first, as in :meth:`fit`."""
        return super().train_on_batch(self._checked_data(x, y), y, *args, **kwargs)

    def test_on_batch(self, x, y=None, *args, **kwargs):
        """``keras.Model.test_on_batch`` with ``x``, ``y`` checked first, as in :meth:`fit`."""
        return super().test_on_batch(self._checked_data(x, y), y, *args, **kwargs)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x, y = _inputs.check_batch(self.model, x, y)
        batch_size = tf.shape(x)[0]
        madry = self.method == "pgd"

        clean_logits = None
        if madry:
            clean_logits = tf.stop_gradient(self.model(x, training=False))
        x_adv = metrics_lib.attack_outputs(self.attack, self.model, x, y, clean_logits, training=False)

        with tf.GradientTape() as tape:
            if not madry:
                clean_logits = self.model(x, training=True)
            adversarial_logits = self.model(x_adv, training=True)
            terms = self._loss_terms(clean_logits, adversarial_logits, y, self._beta())
            # Keras' convention under tf.distribute: each replica's loss is divided by the number of
            # replicas (gradients are summed across replicas), regularization losses included.
            loss = _weighted_batch_mean(terms.total, sample_weight) + self._regularization_loss()
            loss = loss / tf.cast(_num_replicas(), loss.dtype)
            self.loss_tracker.update_state(loss * tf.cast(_num_replicas(), loss.dtype), sample_weight=batch_size)
            scaled_loss = self.optimizer.scale_loss(loss)

        trainable_weights = self.trainable_weights
        gradients = tape.gradient(scaled_loss, trainable_weights)
        self.optimizer.apply_gradients(zip(gradients, trainable_weights))

        self.natural_loss_tracker.update_state(terms.natural, sample_weight=sample_weight)
        self.robust_loss_tracker.update_state(terms.robust, sample_weight=sample_weight)
        self.clean_accuracy_tracker.update_state(y, clean_logits, sample_weight=sample_weight)
        self.adversarial_accuracy_tracker.update_state(y, adversarial_logits, sample_weight=sample_weight)
        return _keras.replica_logs({tracker.name: tracker.result() for tracker in self._train_trackers})

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x, y = _inputs.check_batch(self.model, x, y)
        batch_size = tf.shape(x)[0]
        # Non-finite logits have no prediction: an error here; under XLA (assertions dropped) the
        # accuracy / stability metrics are NaN instead of counting them (tfnorms.metrics.correct).
        clean_logits = _inputs.check_finite_logits(self.model(x, training=False))
        x_adv = metrics_lib.attack_outputs(self.eval_attack, self.model, x, y, clean_logits, training=False)
        adversarial_logits = _inputs.check_finite_logits(self.model(x_adv, training=False), inputs="the eval attack's outputs")
        terms = self._loss_terms(clean_logits, adversarial_logits, y, self._beta())
        loss = _weighted_batch_mean(terms.total, sample_weight) + self._regularization_loss()
        self.loss_tracker.update_state(loss, sample_weight=batch_size)
        self.natural_loss_tracker.update_state(terms.natural, sample_weight=sample_weight)
        self.robust_loss_tracker.update_state(terms.robust, sample_weight=sample_weight)
        self.clean_accuracy_tracker.update_state(y, clean_logits, sample_weight=sample_weight)
        self.robust_accuracy_tracker.update_state(y, adversarial_logits, sample_weight=sample_weight)
        self.stability_tracker.update_state(clean_logits, adversarial_logits, sample_weight=sample_weight)
        return _keras.replica_logs({tracker.name: tracker.result() for tracker in self._test_trackers})

    def get_config(self):
        beta = None if self.method == "pgd" else float(keras.ops.convert_to_numpy(self.beta))
        return {
            "name": self.name,
            "model": keras.saving.serialize_keras_object(self.model),
            "method": self.method,
            "beta": beta,
            "attack": keras.saving.serialize_keras_object(self.attack),
            "eval_attack": keras.saving.serialize_keras_object(self.eval_attack),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        for key in ("model", "attack", "eval_attack"):
            config[key] = keras.saving.deserialize_keras_object(config[key], custom_objects=custom_objects)
        return cls(**config)
