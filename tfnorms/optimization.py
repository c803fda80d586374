"""Optimisation settings of the reference PyTorch code, reproduced in Keras.

* :func:`piecewise_learning_rate`: the TRADES / Wu et al. step schedule
  (epoch-indexed from 1: ``lr * 0.1`` from epoch 75, ``* 0.01`` from 90,
  ``* 0.001`` from 100), as a ``keras.optimizers.schedules`` object over steps.
* :func:`add_coupled_weight_decay`: PyTorch ``SGD(weight_decay=wd)`` adds
  ``wd * w`` to the gradient of every parameter before momentum (coupled L2;
  docs/theory.md#coupled-weight-decay). Keras' ``weight_decay`` argument is decoupled and not
  equivalent under momentum; an L2 penalty ``wd / 2 * ||w||^2`` on every
  trainable variable is.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import keras

from tfnorms import _args, _keras
from tfnorms.regularizers import Sum


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
    base_lr = _args.positive(base_lr, "base_lr")
    steps_per_epoch = _args.positive_int(steps_per_epoch, "steps_per_epoch")
    factor = _args.number(factor, "factor", low=0, high=1, low_open=True)
    expected = "increasing 1-based epochs (ints) >= 2"
    try:
        milestones = [_args.positive_int(m, "milestones", minimum=2) for m in milestones]
    except (TypeError, ValueError):
        raise _args.invalid("milestones", expected, milestones) from None
    if milestones != sorted(set(milestones)):
        raise _args.invalid("milestones", expected, milestones)
    if not milestones:
        return float(base_lr)
    # PiecewiseConstantDecay keeps values[k] while step <= boundaries[k]; step counts
    # the updates already applied, so epoch m (1-based) starts at step (m-1)*steps_per_epoch.
    boundaries = [(m - 1) * steps_per_epoch - 1 for m in milestones]
    values = [base_lr * factor**k for k in range(len(milestones) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


def add_coupled_weight_decay(model: keras.Model, weight_decay: float) -> int:
    """Adds ``weight_decay / 2 * ||w||^2`` to every trainable variable of ``model``.

    Its gradient is ``weight_decay * w``: PyTorch's coupled SGD weight decay
    (BatchNorm scales/offsets and biases included, as in the reference
    runs). An existing regularizer (e.g. norm decay) is kept: both are
    summed in a :class:`tfnorms.regularizers.Sum`, which tfnorms still sees
    through. The penalty appears in ``model.losses`` (so in the training
    loss) and is set where Keras saves it, so it survives ``model.save`` /
    ``keras.models.load_model``; a variable of a custom layer without a
    ``*_regularizer`` argument gets it too, with a warning that it is not saved.

    Returns:
        The number of variables that received the penalty.

    Example:
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> add_coupled_weight_decay(model, 2e-4)
        2
    """
    weight_decay = _args.nonnegative(weight_decay, "weight_decay")
    if weight_decay == 0:
        return 0
    l2 = keras.regularizers.L2(weight_decay / 2.0)
    owners = _keras.owner_of(model)
    unsaved = []
    for variable in model.trainable_variables:
        layer = owners.get(id(variable), model)
        if not _keras.attach(layer, variable, "regularizer", Sum.of(variable.regularizer, l2)):
            unsaved.append(variable.path)
    if unsaved:
        warnings.warn(
            "add_coupled_weight_decay: these variables' layers have no constructor argument for a "
            f"regularizer, so the weight decay on them is not saved with the model: {', '.join(unsaved)}.",
            stacklevel=2,
        )
    return len(model.trainable_variables)
