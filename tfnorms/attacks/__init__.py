"""Adversarial attacks composed from a loss, a step, a projection and a random start.

Every attack is an :class:`Attack` (:mod:`tfnorms.attacks.base`):
``attack(model, x, y, *, clean_logits=None) -> x_adv``, ``run`` (a result
with ``adversarial`` and more), ``requires_clean_logits`` / ``training`` /
``accepts_clean_logits(training)`` (whether a caller's clean logits may be
handed over), ``get_config`` / ``from_config``, ``name``. The threat model's
radius (and PGD's ``step_size`` and ``steps``) may be positional, every other
constructor argument is keyword-only. :class:`RestartAttack` is the shared
loop over target classes and restarts of APGD, FAB and Square.

Public attacks:

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
    >>> x_adv = attacks.PGD(0.1, 0.05, 3, ord=2)(model, x, np.array([0, 2]))
    >>> bool(np.all(np.linalg.norm(x_adv - x, axis=1) <= 0.1 + 1e-5))
    True
"""

from tfnorms.attacks import loop, losses, projections, starts, steps
from tfnorms.attacks.loop import AttackResult
from tfnorms.attacks.base import Attack, RestartAttack
from tfnorms.attacks.pgd import CW, FGSM, PGD
from tfnorms.attacks.apgd import APGD, APGDResult, checkpoint_schedule
from tfnorms.attacks.fab import FAB, FABResult
from tfnorms.attacks.square import Square, SquareResult, square_fraction
from tfnorms.attacks.autoattack import AutoAttack, AutoAttackResult, AutoAttackWarning

__all__ = ["Attack", "RestartAttack", "AttackResult", "CW", "FGSM", "PGD"]
__all__ += ["loop", "losses", "projections", "starts", "steps"]
__all__ += ["APGD", "APGDResult", "AutoAttack", "AutoAttackResult", "AutoAttackWarning", "FAB", "FABResult"]
__all__ += ["Square", "SquareResult", "checkpoint_schedule", "square_fraction"]
