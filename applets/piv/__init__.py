"""The PIV card application: SP 800-73-4 plus the YubiKey 5.7 extensions.

``PivApplet()`` is a factory-fresh card (PIN 123456, PUK 12345678, 3DES
management key 01 02 .. 08 three times, an attestation key in F9) whose keys live in
memory. See docs/piv.md.
"""

from .applet import VERSION, PivApplet
from .state import PivData, PivRecord, PivStore

__all__ = ["VERSION", "PivApplet", "PivData", "PivRecord", "PivStore"]
