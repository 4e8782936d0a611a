"""The PIV card application: SP 800-73-4, as a YubiKey 5.4 or 5.7 or a plain PIV card.

``PivApplet()`` is a factory-fresh card of the default profile, a YubiKey 5
NFC with firmware 5.4.3 (PIN 123456, PUK 12345678, 3DES management key
01 02 .. 08 three times, an attestation key in F9) whose keys live in memory;
``PivApplet(profile=YUBIKEY_5_7)`` or ``profile=PIV`` makes the others. See
docs/piv.md.
"""

from .applet import PivApplet
from .profile import DEFAULT_PROFILE, PIV, PROFILES, YUBIKEY_5_4, YUBIKEY_5_7, PivProfile
from .state import PivData, PivRecord, PivStore

__all__ = [
    "DEFAULT_PROFILE",
    "PIV",
    "PROFILES",
    "YUBIKEY_5_4",
    "YUBIKEY_5_7",
    "PivApplet",
    "PivData",
    "PivProfile",
    "PivRecord",
    "PivStore",
]
