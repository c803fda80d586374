"""``python -m tfnorms``: the ``tfnorms`` command (:mod:`tfnorms.cli`)."""

import sys

from tfnorms.cli import main

if __name__ == "__main__":
    sys.exit(main())
