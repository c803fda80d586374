"""Optimisation settings of the reference PyTorch code, reproduced in Keras.

* :func:`piecewise_learning_rate`: the TRADES / Wu et al. step schedule
  (epoch-indexed from 1: ``lr * 0.1`` from epoch 75, ``* 0.01`` from 90,
  ``* 0.001`` from 100), as a ``keras.optimizers.schedules`` object over steps.
* :func:`add_coupled_weight_decay`: PyTorch ``SGD(weight_decay=wd)`` adds
  ``wd * w`` to the gradient of every parameter before momentum (coupled L2;
  methods.md §7.1). Keras' ``weight_decay`` argument is decoupled and not
  equivalent under momentum; an L2 penalty ``wd / 2 * ||w||^2`` on every
  trainable variable is.
"""

from __future__ import annotations

from typing import Sequence

import keras


def piecewise_learning_rate(
    base_lr: float,
    steps_per_epoch: int,
    milestones: Sequence[int] = (75, 90, 100),
    factor: float = 0.1,
):
    """Step schedule: ``base_lr * factor**k`` from the k-th milestone epoch on.

    Milestones are 1-based epochs as in the reference code
    (``adjust_learning_rate(optimizer, epoch)`` before each epoch), so the
    first decay starts after ``milestones[0] - 1`` full epochs.

    Example:
        >>> schedule = piecewise_learning_rate(0.1, steps_per_epoch=10, milestones=(3, 5))
        >>> tuple(round(float(schedule(step)), 4) for step in (0, 19, 20, 39, 40))
        (0.1, 0.1, 0.01, 0.01, 0.001)
    """
    if base_lr <= 0:
        raise ValueError(f"Invalid value for argument `base_lr`. Expected > 0. Received: base_lr={base_lr!r}")
    if not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
        raise ValueError(
            f"Invalid value for argument `steps_per_epoch`. Expected a positive int. Received: {steps_per_epoch!r}"
        )
    milestones = [int(m) for m in milestones]
    if any(m < 2 for m in milestones) or milestones != sorted(set(milestones)):
        raise ValueError(
            "Invalid value for argument `milestones`. Expected increasing 1-based epochs >= 2. "
            f"Received: milestones={milestones!r}"
        )
    if not milestones:
        return float(base_lr)
    # PiecewiseConstantDecay keeps values[k] while step <= boundaries[k]; step counts
    # the updates already applied, so epoch m (1-based) starts at step (m-1)*steps_per_epoch.
    boundaries = [(m - 1) * steps_per_epoch - 1 for m in milestones]
    values = [base_lr * factor**k for k in range(len(milestones) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


class _Sum:
    """Adds an L2 penalty to a variable's existing regularizer."""

    def __init__(self, existing, extra):
        self.existing, self.extra = existing, extra

    def __call__(self, x):
        return self.existing(x) + self.extra(x)


def add_coupled_weight_decay(model: keras.Model, weight_decay: float) -> int:
    """Adds ``weight_decay / 2 * ||w||^2`` to every trainable variable of ``model``.

    Its gradient is ``weight_decay * w``: PyTorch's coupled SGD weight decay
    (BatchNorm scales/offsets and biases included, as in the reference
    runs). Existing regularizers (e.g. norm decay) are kept and summed.
    The penalty appears in ``model.losses`` and so in the training loss.

    Returns:
        The number of variables that received the penalty.

    Example:
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> add_coupled_weight_decay(model, 2e-4)
        2
    """
    if weight_decay < 0:
        raise ValueError(
            f"Invalid value for argument `weight_decay`. Expected >= 0. Received: weight_decay={weight_decay!r}"
        )
    if weight_decay == 0:
        return 0
    l2 = keras.regularizers.L2(weight_decay / 2.0)
    count = 0
    for variable in model.trainable_variables:
        existing = variable.regularizer
        variable.regularizer = l2 if existing is None else _Sum(existing, l2)
        count += 1
    return count
