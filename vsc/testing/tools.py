"""Where the real PC/SC clients' pieces live on this machine."""

from __future__ import annotations

from pathlib import Path

#: OpenSC's PKCS#11 module, by Debian multiarch directory.
PKCS11_MODULES = (
    "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so",
    "/usr/lib/aarch64-linux-gnu/opensc-pkcs11.so",
    "/usr/lib/opensc-pkcs11.so",
)


def find_pkcs11_module() -> str | None:
    """The path of opensc-pkcs11.so, or None when OpenSC is not installed."""
    for path in PKCS11_MODULES:
        if Path(path).exists():
            return path
    return None
