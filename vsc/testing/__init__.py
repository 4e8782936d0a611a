"""Test support: a private pcscd with vpcd, and the emulator as a subprocess.

Adapters for end-to-end tests only; the engine never imports this package.
"""

from .emulator_proc import EmulatorProcess
from .pcscd import PcscdEnv, reader_name, skip_reason
from .process import HarnessError, HarnessTimeout

__all__ = [
    "EmulatorProcess",
    "HarnessError",
    "HarnessTimeout",
    "PcscdEnv",
    "reader_name",
    "skip_reason",
]
