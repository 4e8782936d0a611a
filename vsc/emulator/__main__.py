"""``python -m vsc.emulator``."""

import sys

from .cli import main

sys.exit(main())
