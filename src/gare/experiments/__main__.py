"""``python -m gare.experiments GRID.yaml ...``: the same as ``gare sweep``."""

import sys

from .command import main

sys.exit(main())
