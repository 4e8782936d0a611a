"""The YubiKey around the PIV applet: its Management application (device information).

See docs/piv.md, "The device".
"""

from .management import (
    MANAGEMENT_AID,
    Capability,
    DeviceInfo,
    FormFactor,
    ManagementApplet,
)

__all__ = ["MANAGEMENT_AID", "Capability", "DeviceInfo", "FormFactor", "ManagementApplet"]
