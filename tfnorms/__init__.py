"""tfnorms: exact layer norms, norm control and adversarial training for Keras 3.

Example:
    >>> import numpy as np, tfnorms
    >>> float(tfnorms.norms.conv2d_linf_norm(np.ones((3, 3, 2, 4))))
    18.0
"""

__version__ = "0.1.0"

from tfnorms import norms  # noqa: E402
from tfnorms._keras import UnboundWarning, bind  # noqa: E402
from tfnorms import attacks, metrics  # noqa: E402
from tfnorms.training import AdversarialTrainer  # noqa: E402
from tfnorms import callbacks, constraints, regularizers, war  # noqa: E402
from tfnorms.constraints import MaxBatchNormNorm, MaxOperatorNorm, SingularValueClip  # noqa: E402
from tfnorms.regularizers import NormDecay, NormDecayMomentum  # noqa: E402

__all__ = ["norms", "__version__", "UnboundWarning", "bind"]
__all__ += ["AdversarialTrainer", "attacks", "metrics"]
__all__ += [
    "MaxBatchNormNorm",
    "MaxOperatorNorm",
    "NormDecay",
    "NormDecayMomentum",
    "SingularValueClip",
    "callbacks",
    "constraints",
    "regularizers",
    "war",
]
