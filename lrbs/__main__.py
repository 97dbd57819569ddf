"""``python -m lrbs ARGS`` is the ``lrbs`` command (cluster jobs call it this way)."""

import sys

from lrbs.sweeps.cli import main

sys.exit(main())
