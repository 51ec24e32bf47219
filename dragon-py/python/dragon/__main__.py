"""``python -m dragon``: the ``dragon`` command (see :mod:`dragon.cli`)."""
import sys

from dragon.cli import main

sys.exit(main())
