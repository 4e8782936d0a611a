"""``make demo``: the main job, shown.

Puts ``python -m vsc.emulator`` into the vpcd readers of a private pcscd,
named as a YubiKey's USB reader is, and lets real PC/SC clients (OpenSC,
ykman, yubico-piv-tool) find and use the two emulated YubiKeys.
Where pcscd and vpcd can't be had (not root, not Debian, packages missing) it
says why and runs the same conversation in-process through yubikit instead.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from applets.cards import YUBIKEY_READER_NAME

from .testing.emulator_proc import EmulatorProcess
from .testing.pcscd import PcscdEnv, skip_reason
from .testing.tools import find_pkcs11_module

PIN = "123456"


def _show(title: str, argv: Sequence[str], output: str) -> None:
    print(f"\n### {title}\n$ {shlex.join(argv)}")
    print(output.rstrip() or "(no output)")


def _run(env: PcscdEnv, title: str, argv: list[str]) -> bool:
    result = env.run(argv, timeout=60, check=False)
    _show(title, argv, result.stdout + result.stderr)
    if result.returncode != 0:
        print(f"(exit status {result.returncode})")
    return result.returncode == 0


#: Two YubiKeys, one per reader of the vpcd entry (an empty "YubiKey" reader would
#: count as a key ykman cannot open).
SERIALS = (10_000_001, 10_000_002)


def through_pcscd() -> bool:
    # The vpcd reader named like a YubiKey's USB reader: ykman then takes the card for a
    # YubiKey on USB (extended APDUs), given the USB ATR (--transport usb).
    with (
        PcscdEnv(friendly_name=YUBIKEY_READER_NAME) as env,
        EmulatorProcess(
            env.vpcd_port(),
            "--slots",
            "2",
            "--transport",
            "usb",
            *(f"--serial={serial}" for serial in SERIALS),
        ) as emulator,
    ):
        reader = env.reader()
        for slot in (0, 1):
            env.wait_for_card(
                env.reader(slot), present=True, timeout=15, check=emulator.check_running
            )
        print(f"Two emulated YubiKeys 5.4 are in the readers of a private pcscd, {reader!r}")
        print(f"and {env.reader(1)!r}, with this reader configuration (reader.conf.d):\n")
        print((env.conf_dir / "vpcd").read_text())
        serial = str(SERIALS[0])
        steps: list[tuple[str, list[str]]] = [
            ("List the readers", ["opensc-tool", "--list-readers"]),
            ("The card's ATR", ["opensc-tool", "-r", reader, "--atr"]),
            ("What OpenSC thinks the card is", ["opensc-tool", "-r", reader, "--name"]),
            (
                "Raw APDUs: SELECT PIV, GET DATA discovery object, GET VERSION",
                [
                    "opensc-tool", "-c", "default", "-r", reader,
                    "-s", "00A4040009A00000030800001000",
                    "-s", "00CB3FFF035C017E00",
                    "-s", "00FD000000",
                ],
            ),
        ]  # fmt: skip
        ykman = _ykman()
        if ykman is not None:
            steps += [
                ("ykman: the YubiKeys it finds", [ykman, "list"]),
                ("ykman: one of them, by serial", [ykman, "--device", serial, "info"]),
                ("ykman: its PIV application", [ykman, "--device", serial, "piv", "info"]),
            ]
        if shutil.which("yubico-piv-tool"):
            steps += [
                ("yubico-piv-tool: version", ["yubico-piv-tool", "-r", reader, "-a", "version"]),
                (
                    "yubico-piv-tool: generate an ECC P-256 key in slot 9a",
                    [
                        "yubico-piv-tool",
                        "-r",
                        reader,
                        "-a",
                        "generate",
                        "-s",
                        "9a",
                        "-A",
                        "ECCP256",
                    ],
                ),
                ("yubico-piv-tool: status", ["yubico-piv-tool", "-r", reader, "-a", "status"]),
            ]
        steps.append(
            (
                "pkcs11-tool (OpenSC's PKCS#11 module): the tokens",
                ["pkcs11-tool", "--module", _pkcs11_module(), "--list-slots"],
            )
        )
        return all([_run(env, title, argv) for title, argv in steps])


def _ykman() -> str | None:
    """ykman beside this interpreter (the venv's), else on PATH."""
    beside = Path(sys.executable).parent / "ykman"
    return str(beside) if beside.exists() else shutil.which("ykman")


def _pkcs11_module() -> str:
    return find_pkcs11_module() or "opensc-pkcs11.so"


def in_process() -> bool:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from yubikit.piv import DEFAULT_MANAGEMENT_KEY, KEY_TYPE, SLOT, PivSession

    from .emulator import default_card
    from .inproc import TRANSPORT, YubikitConnection

    card = default_card()
    piv = PivSession(YubikitConnection(card, TRANSPORT.NFC))
    print(f"PIV version {piv.version}, serial {piv.get_serial()}")
    piv.authenticate(DEFAULT_MANAGEMENT_KEY)
    public = piv.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256)
    piv.verify_pin(PIN)
    message = b"signed by a card that lives in software"
    signature = piv.sign(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256, message, hashes.SHA256())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    print("Generated a P-256 key in slot 9A, signed with it, verified the signature.")
    return True


def main() -> int:
    reason = skip_reason()
    if reason is None:
        ok = through_pcscd()
    else:
        print(f"pcscd/vpcd can't be used here ({reason}); running the in-process demo instead.")
        ok = in_process()
    print("\nDemo finished." if ok else "\nDemo finished with errors (see above).")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
