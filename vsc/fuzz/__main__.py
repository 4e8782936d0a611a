"""``python -m vsc.fuzz``: see :mod:`vsc.fuzz.cli`."""

import sys

from .cli import main

sys.exit(main())
