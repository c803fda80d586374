"""Adversarial attacks composed from a loss, a step, a projection and a random start.

Public attacks (callables ``attack(model, x, y) -> x_adv``):

* :class:`PGD` -- projected gradient ascent, l_inf or l2, any loss;
* :class:`FGSM` -- one step of size ``eps``;
* :class:`CW` -- CW-l_inf: PGD on the CW margin loss;
* :class:`APGD` -- Auto-PGD (CE, DLR, targeted APGD-T), :class:`FAB` (FAB-T),
  :class:`Square` -- the attacks of :class:`AutoAttack` (standard / rand /
  custom cascade with sanity checks and a JSON report).

Components, reusable by further attacks (APGD, FAB, Square):

* :mod:`~tfnorms.attacks.losses`: ``cross_entropy``, ``kl_divergence``,
  ``cw_margin``, ``dlr``, ``targeted_dlr`` (per-example, float32);
* :mod:`~tfnorms.attacks.steps`: ``sign_step`` (l_inf), ``normalized_step`` (l2);
* :mod:`~tfnorms.attacks.projections`: ``project`` (eps-ball intersected with [0, 1]);
* :mod:`~tfnorms.attacks.starts`: ``"uniform"``, ``"normal"`` (``0.001 * N``), ``None``;
* :func:`~tfnorms.attacks.loop.run`: the one fixed-trip-count loop.

Models are expected to return logits for float inputs in [0, 1] and run in
inference mode during attacks unless ``training=True`` is asked for.

Example:
    >>> import numpy as np, keras
    >>> from tfnorms import attacks
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> x = np.random.rand(2, 4).astype("float32")
    >>> x_adv = attacks.PGD(eps=0.1, step_size=0.05, steps=3, ord=2)(model, x, np.array([0, 2]))
    >>> bool(np.all(np.linalg.norm(x_adv - x, axis=1) <= 0.1 + 1e-5))
    True
"""

from tfnorms.attacks import loop, losses, projections, starts, steps
from tfnorms.attacks.loop import AttackResult
from tfnorms.attacks.pgd import CW, FGSM, PGD
from tfnorms.attacks.apgd import APGD, APGDResult, checkpoint_schedule
from tfnorms.attacks.fab import FAB, FABResult
from tfnorms.attacks.square import Square, SquareResult, square_fraction
from tfnorms.attacks.autoattack import AutoAttack, AutoAttackResult, AutoAttackWarning

__all__ = ["AttackResult", "CW", "FGSM", "PGD", "loop", "losses", "projections", "starts", "steps"]
__all__ += ["APGD", "APGDResult", "AutoAttack", "AutoAttackResult", "AutoAttackWarning", "FAB", "FABResult"]
__all__ += ["Square", "SquareResult", "checkpoint_schedule", "square_fraction"]
