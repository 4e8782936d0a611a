"""Card profiles: what ``vsc create --profile`` sets up, and what each allows.

Every profile is a PIV card, so every PIN is a PIV PIN: 6 to 8 bytes (SP
800-73-4's 8-byte PIN block, which also caps a Windows-style policy, whose
minimum is 8). A profile gives the card the PIV applet is (its card profile,
docs/piv.md "Profiles": the same names as the emulator's ``--profile``), the
default PIN policy, the bounds a custom policy must stay within, the keys
``--generate`` makes on the card, and the admin (management) key's algorithm.

* ``yubikey-5.4`` (default; ``yubikey`` is its older name): a YubiKey 5.4:
  6-8 printable ASCII characters, any mix. ``--generate``: 9A
  (authentication) and 9C (signature), ECC P-256. 3DES admin key.
* ``yubikey-5.7``: the same on a YubiKey 5.7, with an AES-192 admin key (the
  algorithm of its factory key).
* ``piv``: a plain SP 800-73-4 card, strictly: 6-8 digits only.
  ``--generate``: 9A, 9C, 9D (key management) and 9E (card authentication,
  no PIN), ECC P-256. 3DES admin key.
* ``windows``: a TPM virtual smart card made by ``tpmvscmgr``, with the PIV
  applet of a YubiKey 5.4: Windows wants at least 8 characters and PIV allows
  at most 8, so exactly 8, any mix. ``--generate``: 9A (authentication),
  RSA-2048, like Windows' VSC keys. 3DES admin key (Windows' admin key is a
  24-byte 3DES key, and yubico-piv-tool 2.2.0 knows no other).

``--admin-key-type`` chooses another algorithm the card accepts.

ECC keys (:func:`ecc_policy`, shown by ``vsc info``): the curves of the
card's profile. On a card protected by a TPM its keys live in the TPM, so
only the curves TPM 2.0 implements (P-256, and P-384 on most TPMs and on
swtpm): Ed25519 and X25519 (a YubiKey 5.7 profile) are refused there, as
the card's TPM key store refuses any algorithm its TPM lacks.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from applets.piv import PIV, YUBIKEY_5_4, YUBIKEY_5_7, PivProfile
from applets.piv.keys import KeyType, PinPolicy
from applets.piv.mgmt import ManagementKeyType
from applets.piv.pinrules import CharRule, PinRules

__all__ = [
    "DEFAULT_PROFILE",
    "PIV_PIN_MAX",
    "PIV_PIN_MIN",
    "PROFILES",
    "TPM_CURVES",
    "KeySpec",
    "Profile",
    "ecc_policy",
]

#: The PIV PIN block's bounds (SP 800-73-4 Part 2 §2.4.3).
PIV_PIN_MIN = 6
PIV_PIN_MAX = 8

#: The curves a TPM 2.0 holds keys on (P-256 everywhere, P-384 on most TPMs).
TPM_CURVES = frozenset({KeyType.ECCP256, KeyType.ECCP384})
_CURVE_NAMES = {
    KeyType.ECCP256: "P-256",
    KeyType.ECCP384: "P-384",
    KeyType.ED25519: "Ed25519",
    KeyType.X25519: "X25519",
}


def ecc_policy(key_types: Collection[KeyType], *, tpm: bool) -> str:
    """The ECC keys a card whose applet takes ``key_types`` holds, on a TPM card or not."""
    curves = [t for t in _CURVE_NAMES if t in key_types]
    if not curves:
        return "none"
    if not tpm:
        return ", ".join(_CURVE_NAMES[t] for t in curves) + " (keys in software)"
    held = [_CURVE_NAMES[t] for t in curves if t in TPM_CURVES]
    refused = [_CURVE_NAMES[t] for t in curves if t not in TPM_CURVES]
    text = ", ".join(held) + " in the TPM (where the TPM implements the curve)"
    if refused:
        text += f"; {', '.join(refused)} refused: no TPM 2.0 holds them"
    return text


@dataclass(frozen=True, slots=True)
class KeySpec:
    """One key ``--generate`` makes: slot, algorithm, PIN policy."""

    slot: int
    key_type: KeyType
    pin_policy: PinPolicy


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    summary: str
    pin_rules: PinRules
    keys: tuple[KeySpec, ...]
    #: The card the PIV applet is (kept in the card's PIV record).
    card: PivProfile = YUBIKEY_5_4
    admin_key_type: ManagementKeyType = ManagementKeyType.TDES

    def rules(
        self,
        *,
        min_length: int | None = None,
        max_length: int | None = None,
        classes: dict[str, CharRule] | None = None,
    ) -> PinRules:
        """The profile's rules with overrides; ``ValueError`` outside what a PIV PIN allows."""
        fields = self.pin_rules.to_dict()
        if min_length is not None:
            fields["min_length"] = min_length
        if max_length is not None:
            fields["max_length"] = max_length
        fields.update({name: rule.value for name, rule in (classes or {}).items()})
        rules = PinRules.from_dict(fields)  # one construction: checked once, as a whole
        if rules.min_length < PIV_PIN_MIN or rules.max_length > PIV_PIN_MAX:
            longer = (
                ". Windows allows up to 127 characters and MyID recommends 8 to 24 on TPM"
                " virtual smart cards: vsc create --applet gids"
                if rules.max_length > PIV_PIN_MAX
                else ""
            )
            raise ValueError(
                f"a PIV PIN has {PIV_PIN_MIN} to {PIV_PIN_MAX} characters (SP 800-73-4's"
                f" 8-byte PIN block): the policy cannot ask for {rules.min_length} to"
                f" {rules.max_length}{longer}"
            )
        return rules


_ALL = CharRule.OPTIONAL
_YUBIKEY_RULES = PinRules(6, 8, _ALL, _ALL, _ALL, _ALL)
_YUBIKEY_KEYS = (
    KeySpec(0x9A, KeyType.ECCP256, PinPolicy.ONCE),
    KeySpec(0x9C, KeyType.ECCP256, PinPolicy.ALWAYS),
)
PROFILES: dict[str, Profile] = {
    profile.name: profile
    for profile in (
        Profile(
            "yubikey-5.4",
            "a YubiKey 5.4: PIN of 6-8 printable characters; 9A and 9C ECC P-256",
            _YUBIKEY_RULES,
            _YUBIKEY_KEYS,
        ),
        Profile(
            "yubikey-5.7",
            "a YubiKey 5.7: as yubikey-5.4, with an AES-192 admin key",
            _YUBIKEY_RULES,
            _YUBIKEY_KEYS,
            card=YUBIKEY_5_7,
            admin_key_type=ManagementKeyType.AES192,
        ),
        Profile(
            "piv",
            "a plain SP 800-73-4 card: PIN of 6-8 digits; 9A, 9C, 9D and 9E ECC P-256",
            PinRules(
                6,
                8,
                CharRule.NOT_ALLOWED,
                CharRule.NOT_ALLOWED,
                CharRule.MANDATORY,
                CharRule.NOT_ALLOWED,
            ),
            (
                KeySpec(0x9A, KeyType.ECCP256, PinPolicy.ONCE),
                KeySpec(0x9C, KeyType.ECCP256, PinPolicy.ALWAYS),
                KeySpec(0x9D, KeyType.ECCP256, PinPolicy.ONCE),
                KeySpec(0x9E, KeyType.ECCP256, PinPolicy.NEVER),
            ),
            card=PIV,
        ),
        Profile(
            "windows",
            "like a Windows TPM virtual smart card: PIN of exactly 8 characters; 9A RSA-2048",
            PinRules(8, 8, _ALL, _ALL, _ALL, _ALL),
            (KeySpec(0x9A, KeyType.RSA2048, PinPolicy.ONCE),),
        ),
    )
}
DEFAULT_PROFILE = "yubikey-5.4"
#: Cards made before the YubiKey profiles had versions say "yubikey".
PROFILES["yubikey"] = PROFILES[DEFAULT_PROFILE]
