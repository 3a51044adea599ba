"""``python -m devtools up|endpoint|feed|status|down|audit``: see :mod:`devtools.cli`."""

import sys

from devtools.cli import main

sys.exit(main())
