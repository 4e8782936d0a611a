"""The PIV security state against an independent model (hypothesis stateful).

A :class:`RuleBasedStateMachine` drives a card (PIV default, echo beside it)
with raw APDUs through ``Card.transmit`` and predicts every status word from
its own model of docs/piv.md ("Commands", "PIN and touch policies",
"Security state") — PIN/PUK counters, the PIN
and PIN-always status and the management-key status of each logical channel,
the management key, the keys in the slots and their PIN policies, the data
objects. Nothing of the applet's logic is imported: policies, counters and
the clearing table ("Security state") are written out here, and signatures are verified
with ``cryptography`` against public keys the model holds. (The applet's own
types appear only in the deliberately broken subclasses at the end, which
prove that the machine can fail.)

What a failure means: the card granted something the model says needs an
authentication it does not have (PUT DATA, GENERATE, IMPORT, MOVE/DELETE,
SET MANAGEMENT KEY, SET PIN RETRIES, RESET, a PIN-protected key or object),
counted a retry differently, or kept/cleared state on a power event, a
SELECT or another channel differently from "Security state".

After every step an *observer* — logical channel 19, which never
authenticates — compares the card's GET METADATA (counters, default flags,
the management key, every modelled slot) with the model and checks that it
cannot write. Commands on one channel leave another channel's state alone,
so observing does not disturb the rules.

Modelled choices where the sources leave room (the implementation's reading):
a correct old PIN/PUK restores its counter even if the new value is then
rejected (``6985``, a YubiKey's answer); PIN-always arming is per channel and is disarmed only by
commands the PIV applet processes on that channel (MANAGE CHANNEL and SELECT
of an unknown AID are card-level and leave it, chaining continuations too);
SET PIN RETRIES clears the PIN status of every channel, RESET (FB) every
status of every channel.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from applets.echo import EchoApplet
from applets.piv import YUBIKEY_5_7, PivApplet, PivProfile
from applets.piv.security import SecurityState
from vsc import Card, CommandApdu, command
from vsc.applet import Response
from vsc.sw import ApduError

from .stateful import assert_the_model_catches, cla

PIV_AID = bytes.fromhex("A000000308000010000100")
ECHO_AID = bytes.fromhex("F07673630001")
UNKNOWN_AID = bytes.fromhex("A000000308FF")

OK = 0x9000
SECURITY = 0x6982
BLOCKED = 0x6983
CONDITIONS = 0x6985
INVALID_DATA = 0x6A80
REFUSED_NEW = 0x6985  # a YubiKey's answer to a new PIN or PUK it refuses
NOT_FOUND = 0x6A82
BAD_P1P2 = 0x6A86
REF_NOT_FOUND = 0x6A88

FACTORY_PIN = b"123456\xff\xff"
FACTORY_PUK = b"12345678"
FACTORY_KEY = (0x0A, bytes(range(1, 9)) * 3)  # the 5.7 factory key: AES-192
TDES, AES128, AES192, AES256 = 0x03, 0x08, 0x0A, 0x0C
KEY_LENGTH = {TDES: 24, AES128: 16, AES192: 24, AES256: 32}

# PIN policies (tag AA) and the slot defaults ("PIN and touch policies").
DEFAULT, NEVER, ONCE, ALWAYS, MATCH_ONCE, MATCH_ALWAYS = range(6)
SLOT_DEFAULT = {0x9A: ONCE, 0x9C: ALWAYS, 0x9D: ONCE, 0x9E: NEVER, 0x82: ONCE}
SLOTS = sorted(SLOT_DEFAULT)
POLICIES = (DEFAULT, NEVER, ONCE, ALWAYS, MATCH_ONCE, MATCH_ALWAYS)
P256 = 0x11
GENERATED, IMPORTED = 1, 2

# Objects: two free ones, one the PIN protects for reading (printed information).
OBJECTS = (0x5FC102, 0x5FFF10, 0x5FC109)
PIN_READ = frozenset({0x5FC109})

OBSERVER = 19
#: Step 2 answered with the current key, the key step 1 was issued under, or a wrong one.
KEY_CHOICES = ("current", "issued", "wrong")
CHANNELS = (0, 1, 2, 3)

PIN_CANDIDATES = (
    FACTORY_PIN,
    b"654321\xff\xff",
    b"12345678",
    b"000000\xff\xff",
    b"12345\xff\xff\xff",  # too short
    b"1234\xff56\xff",  # padding in the middle
    b"\xff" * 8,  # what ykman sends to block the PIN
)
PUK_CANDIDATES = (FACTORY_PUK, b"87654321", b"\xff" * 8, b"0badf00d")
assert all(len(v) == 8 for v in PIN_CANDIDATES + PUK_CANDIDATES)
#: Stands for the model's current PIN/PUK; repeated so the right value is drawn often.
CURRENT = ("current",) * 4
Secret = bytes | str  # a value, or "current"


def valid_pin_block(block: bytes) -> bool:
    """6 to 8 bytes, then FF padding only (SP 800-73-4 Part 2)."""
    body = block.rstrip(b"\xff")
    return 6 <= len(body) <= 8 and b"\xff" not in body


def ecb(alg: int, key: bytes, block: bytes, *, decrypt: bool = False) -> bytes:
    cipher = Cipher(TripleDES(key) if alg == TDES else algorithms.AES(key), modes.ECB())
    op = cipher.decryptor() if decrypt else cipher.encryptor()
    return op.update(block) + op.finalize()


def tlv(tag: int, value: bytes) -> bytes:
    """Tags of 1-3 bytes, lengths < 65536: enough for everything sent here."""
    t = tag.to_bytes((tag.bit_length() + 7) // 8 or 1, "big")
    n = len(value)
    if n < 0x80:
        length = bytes((n,))
    elif n < 0x100:
        length = bytes((0x81, n))
    else:
        length = bytes((0x82,)) + n.to_bytes(2, "big")
    return t + length + value


def short_tlvs(data: bytes) -> dict[int, bytes]:
    out = {}
    pos = 0
    while pos < len(data):
        tag, n = data[pos], data[pos + 1]
        pos += 2
        if n & 0x80:
            k = n & 0x7F
            n = int.from_bytes(data[pos : pos + k], "big")
            pos += k
        out[tag] = data[pos : pos + n]
        pos += n
    return out


@dataclass
class Session:
    """What the model says one channel's PIV session holds ("Security state")."""

    verified: bool = False
    always: bool = False
    admin: bool = False
    # The pending GA 9B step 1: (tag 80/81, algorithm, value, the key it was issued under).
    pending: tuple[int, int, bytes, bytes] | None = None


@dataclass
class Key:
    policy: int  # resolved: NEVER, ONCE or ALWAYS
    origin: int
    public: ec.EllipticCurvePublicKey


@dataclass
class Model:
    pin: bytes = FACTORY_PIN
    puk: bytes = FACTORY_PUK
    pin_max: int = 3
    pin_left: int = 3
    puk_max: int = 3
    puk_left: int = 3
    mgmt: tuple[int, bytes] = FACTORY_KEY
    keys: dict[int, Key] = field(default_factory=dict)
    objects: dict[int, bytes] = field(default_factory=dict)
    # channel -> the PIV session, or None when the echo applet is selected there.
    channels: dict[int, Session | None] = field(default_factory=lambda: {0: Session()})


class PivSecurityMachine(RuleBasedStateMachine):
    #: The applet under test (the mutant tests below swap in broken ones).
    make_applet: Callable[[], PivApplet] = staticmethod(
        lambda: PivApplet(serial=24681357, profile=YUBIKEY_5_7)
    )

    def __init__(self) -> None:
        super().__init__()
        self.card = Card()
        self.card.register(self.make_applet(), default=True)
        self.card.register(EchoApplet())
        self.card.power_on()
        self.model = Model()
        self.observer_open = False

    # -- plumbing ---------------------------------------------------------------------------------

    def send(
        self, channel: int, ins: int, p1: int, p2: int, data: bytes = b"", *, chain: bool = False
    ) -> tuple[bytes, int]:
        head = bytes((cla(channel, chain), ins, p1, p2))
        apdu = head + (bytes((len(data),)) + data if data else b"")
        assert len(data) < 256
        resp = self.card.transmit(apdu)
        assert len(resp) >= 2
        return resp[:-2], int.from_bytes(resp[-2:], "big")

    def expect(self, what: str, got: int, want: int) -> None:
        assert got == want, f"{what}: card answered {got:04X}, the model expects {want:04X}"
        # `pytest --hypothesis-show-statistics` lists how often each outcome was reached.
        event(f"{what.split(' (')[0]} -> {want:04X}")

    def session(self, channel: int) -> Session:
        session = self.model.channels[channel]
        assert session is not None
        return session

    def processed(self, channel: int, *, verify: bool = False) -> None:
        """A command ran through the PIV applet on ``channel``: the pending
        challenge lasts one command, PIN-always arming survives only VERIFY."""
        session = self.session(channel)
        session.pending = None
        if not verify:
            session.always = False

    def piv_channels(self) -> list[int]:
        return sorted(c for c, s in self.model.channels.items() if s is not None)

    def open_observer(self) -> None:
        resp = self.card.transmit(bytes((0, 0x70, 0, OBSERVER)))
        assert resp == b"\x90\x00", resp.hex()

    def retries_sw(self, left: int) -> int:
        return BLOCKED if left == 0 else 0x63C0 | min(left, 15)

    def channel(self, data: st.DataObject) -> int:
        return data.draw(st.sampled_from(self.piv_channels()), label="channel")

    # -- PIN and PUK ------------------------------------------------------------------------------

    def _verify(self, channel: int, pin: bytes | None) -> None:
        """VERIFY with a PIN block, or the status query without data (None)."""
        m, s = self.model, self.session(channel)
        _, sw = self.send(channel, 0x20, 0x00, 0x80, pin or b"")
        if pin is None:
            what, want = "VERIFY status", OK if s.verified else self.retries_sw(m.pin_left)
        elif m.pin_left == 0:
            what, want = "VERIFY blocked", BLOCKED
            s.verified = s.always = False
        elif pin == m.pin:
            what, want, m.pin_left = "VERIFY right PIN", OK, m.pin_max
            s.verified = s.always = True
        else:
            m.pin_left -= 1
            what, want = "VERIFY wrong PIN", 0x63C0 | min(m.pin_left, 15)  # 63C0 as it blocks
            s.verified = s.always = False
        self.processed(channel, verify=True)
        self.expect(f"{what} (channel {channel})", sw, want)

    @precondition(lambda self: self.piv_channels())
    @rule(data=st.data(), pin=st.sampled_from((*CURRENT, *PIN_CANDIDATES, None)))
    def verify(self, data: st.DataObject, pin: Secret | None) -> None:
        self._verify(self.channel(data), self.model.pin if isinstance(pin, str) else pin)

    @precondition(lambda self: self.piv_channels())
    @rule(data=st.data())
    def logout(self, data: st.DataObject) -> None:
        channel = self.channel(data)
        _, sw = self.send(channel, 0x20, 0xFF, 0x80)
        s = self.session(channel)
        s.verified = s.always = False
        self.processed(channel, verify=True)
        self.expect("VERIFY P1=FF", sw, OK)

    @precondition(lambda self: self.piv_channels())
    @rule(
        data=st.data(),
        puk=st.booleans(),
        old=st.sampled_from((*CURRENT, *PIN_CANDIDATES, *PUK_CANDIDATES)),
        new=st.sampled_from(PIN_CANDIDATES + PUK_CANDIDATES),
    )
    def change_reference(self, data: st.DataObject, puk: bool, old: Secret, new: bytes) -> None:
        """CHANGE REFERENCE DATA of the PIN (80) or the PUK (81)."""
        channel = self.channel(data)
        m, s = self.model, self.session(channel)
        if isinstance(old, str):
            old = m.puk if puk else m.pin
        _, sw = self.send(channel, 0x24, 0x00, 0x81 if puk else 0x80, old + new)
        current, left = (m.puk, m.puk_left) if puk else (m.pin, m.pin_left)
        if left == 0:
            want = BLOCKED
        elif old != current:
            left -= 1
            want = 0x63C0 | min(left, 15)
        else:
            left = m.puk_max if puk else m.pin_max
            want = OK if valid_pin_block(new) else REFUSED_NEW
        if puk:
            m.puk_left = left
            m.puk = new if want == OK else m.puk
        else:
            m.pin_left = left
            if want == OK:
                m.pin, s.verified = new, True
            elif want != REFUSED_NEW:
                s.verified = s.always = False
        self.processed(channel)
        self.expect(f"CHANGE REFERENCE {'PUK' if puk else 'PIN'}", sw, want)

    @precondition(lambda self: self.piv_channels())
    @rule(
        data=st.data(),
        puk=st.sampled_from((*CURRENT, *PUK_CANDIDATES)),
        new=st.sampled_from(PIN_CANDIDATES),
    )
    def unblock_pin(self, data: st.DataObject, puk: Secret, new: bytes) -> None:
        """RESET RETRY COUNTER: the PUK first; the PIN status is unchanged."""
        channel = self.channel(data)
        m = self.model
        if isinstance(puk, str):
            puk = m.puk
        _, sw = self.send(channel, 0x2C, 0x00, 0x80, puk + new)
        if m.puk_left == 0:
            want = BLOCKED
        elif puk != m.puk:
            m.puk_left -= 1
            want = 0x63C0 | min(m.puk_left, 15)
        else:
            m.puk_left = m.puk_max
            want = OK if valid_pin_block(new) else REFUSED_NEW
            if want == OK:
                m.pin, m.pin_left = new, m.pin_max
        self.processed(channel)
        self.expect("RESET RETRY COUNTER", sw, want)

    @precondition(lambda self: self.piv_channels())
    @rule(data=st.data())
    def block_pin_and_puk(self, data: st.DataObject) -> None:
        """What ``ykman piv reset`` does before FB: wrong values until blocked."""
        channel = self.channel(data)
        m, s = self.model, self.session(channel)
        while m.pin_left:
            _, sw = self.send(channel, 0x20, 0x00, 0x80, b"\xff" * 8)
            m.pin_left -= 1
            self.expect("VERIFY FF..FF", sw, 0x63C0 | min(m.pin_left, 15))
        while m.puk_left:
            _, sw = self.send(channel, 0x2C, 0x00, 0x80, b"\xff" * 16)
            m.puk_left -= 1
            self.expect("RESET RETRY FF..FF", sw, 0x63C0 | min(m.puk_left, 15))
        s.verified = s.always = False
        self.processed(channel, verify=True)
        self._verify(channel, m.pin)

    # -- the management key -----------------------------------------------------------------------

    def _request(self, channel: int, single: bool) -> None:
        """GA 9B step 1: a witness (mutual, ykman) or a challenge (single, piv-tool A:9B)."""
        alg, key = self.model.mgmt
        size = 8 if alg == TDES else 16
        tag = 0x81 if single else 0x80
        resp, sw = self.send(channel, 0x87, alg, 0x9B, bytes((0x7C, 2, tag, 0)))
        self.processed(channel)
        self.expect("GA 9B step 1", sw, OK)
        assert resp[:4] == bytes((0x7C, size + 2, tag, size)) and len(resp) == size + 4
        self.session(channel).pending = (tag, alg, resp[4:], key)

    def _answer(self, channel: int, which: str, single: bool) -> None:
        """GA 9B step 2 with the current key, the key step 1 was issued under, or a wrong one."""
        alg, current = self.model.mgmt
        s = self.session(channel)
        size = 8 if alg == TDES else 16
        pending, tag = s.pending, 0x81 if single else 0x80
        if pending is None or pending[0] != tag or pending[1] != alg:
            pending = None
        key = {"current": current, "wrong": bytes(b ^ 0x5A for b in current)}.get(
            which, pending[3] if pending is not None else current
        )
        value = pending[2] if pending is not None else secrets.token_bytes(size)
        challenge = secrets.token_bytes(size)
        if single:
            body = tlv(0x7C, tlv(0x82, ecb(alg, key, value)))
        else:
            plain = ecb(alg, key, value, decrypt=True)
            body = tlv(0x7C, tlv(0x80, plain) + tlv(0x81, challenge))
        resp, sw = self.send(channel, 0x87, alg, 0x9B, body)
        # Success proves knowledge of the card's current key, right after a step 1
        # issued under that same key (a key changed meanwhile voids the challenge).
        ok = pending is not None and pending[3] == current and key == current
        s.admin = ok  # a failed attempt clears the status
        self.processed(channel)
        what = f"GA 9B step 2 ({which} key, pending {pending is not None})"
        self.expect(what, sw, OK if ok else SECURITY)
        if ok and not single:
            assert resp == tlv(0x7C, tlv(0x82, ecb(alg, key, challenge)))

    @precondition(lambda self: self.piv_channels())
    @rule(data=st.data(), right_key=st.booleans(), single=st.booleans())
    def authenticate(self, data: st.DataObject, right_key: bool, single: bool) -> None:
        channel = self.channel(data)
        self._request(channel, single)
        self._answer(channel, "current" if right_key else "wrong", single)

    @precondition(lambda self: self.piv_channels())
    @rule(data=st.data(), single=st.booleans())
    def request_challenge(self, data: st.DataObject, single: bool) -> None:
        """Step 1 alone: other rules may run before the answer."""
        self._request(self.channel(data), single)

    @precondition(lambda self: self.piv_channels())
    @rule(data=st.data(), which=st.sampled_from(KEY_CHOICES), single=st.booleans())
    def answer_challenge(self, data: st.DataObject, which: str, single: bool) -> None:
        """Step 2 alone: valid only right after step 1 on the same channel."""
        self._answer(self.channel(data), which, single)

    @precondition(lambda self: self.piv_channels())
    @rule(data=st.data(), alg=st.sampled_from(sorted(KEY_LENGTH)), factory=st.booleans())
    def set_management_key(self, data: st.DataObject, alg: int, factory: bool) -> None:
        channel = self.channel(data)
        size = KEY_LENGTH[alg]
        key = (FACTORY_KEY[1] * 2)[:size] if factory else secrets.token_bytes(size)
        _, sw = self.send(channel, 0xFF, 0xFF, 0xFF, bytes((alg, 0x9B, len(key))) + key)
        want = self.admin_or_6982(channel)
        if want == OK:
            self.model.mgmt = (alg, key)  # the administrator stays authenticated
        self.processed(channel)
        self.expect("SET MANAGEMENT KEY", sw, want)

    def admin_or_6982(self, channel: int) -> int:
        return OK if self.session(channel).admin else SECURITY

    # -- data objects -----------------------------------------------------------------------------

    @precondition(lambda self: self.piv_channels())
    @rule(data=st.data(), tag=st.sampled_from(OBJECTS), value=st.binary(max_size=40))
    def put_data(self, data: st.DataObject, tag: int, value: bytes) -> None:
        channel = self.channel(data)
        body = tlv(0x5C, tag.to_bytes(3, "big")) + tlv(0x53, value)
        _, sw = self.send(channel, 0xDB, 0x3F, 0xFF, body)
        want = self.admin_or_6982(channel)
        if want == OK:
            if value:
                self.model.objects[tag] = value
            else:
                self.model.objects.pop(tag, None)  # 53 00 deletes
        self.processed(channel)
        self.expect(f"PUT DATA {tag:X}", sw, want)

    @precondition(lambda self: self.piv_channels())
    @rule(data=st.data(), tag=st.sampled_from(OBJECTS))
    def get_data(self, data: st.DataObject, tag: int) -> None:
        channel = self.channel(data)
        resp, sw = self.send(channel, 0xCB, 0x3F, 0xFF, tlv(0x5C, tag.to_bytes(3, "big")))
        value = self.model.objects.get(tag)
        # A YubiKey says "absent" before it asks for the PIN.
        if tag in PIN_READ and not self.session(channel).verified and value is not None:
            want = SECURITY
        else:
            want = OK if value is not None else NOT_FOUND
        self.processed(channel)
        self.expect(f"GET DATA {tag:X}", sw, want)
        if want == OK:
            assert resp == tlv(0x53, value or b"")

    # -- keys -------------------------------------------------------------------------------------

    def _generate(self, channel: int, slot: int, policy: int) -> None:
        template = tlv(0x80, bytes((P256,))) + tlv(0xAA, bytes((policy,)))
        resp, sw = self.send(channel, 0x47, 0x00, slot, tlv(0xAC, template))
        want = self.admin_or_6982(channel)
        if want == OK and policy in (MATCH_ONCE, MATCH_ALWAYS):
            want = INVALID_DATA  # YubiKey Bio policies
        self.processed(channel)
        self.expect(f"GENERATE {slot:02X}", sw, want)
        if want == OK:
            assert resp[:5] == bytes.fromhex("7F49438641"), resp.hex()
            public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), resp[5:])
            self.model.keys[slot] = Key(policy or SLOT_DEFAULT[slot], GENERATED, public)

    def _import(self, channel: int, slot: int, policy: int, scalar: int) -> None:
        private = ec.derive_private_key(scalar, ec.SECP256R1())
        body = tlv(0x06, scalar.to_bytes(32, "big")) + tlv(0xAA, bytes((policy,)))
        _, sw = self.send(channel, 0xFE, P256, slot, body)
        want = self.admin_or_6982(channel)
        if want == OK and policy in (MATCH_ONCE, MATCH_ALWAYS):
            want = INVALID_DATA
        self.processed(channel)
        self.expect(f"IMPORT {slot:02X}", sw, want)
        if want == OK:
            public = private.public_key()
            self.model.keys[slot] = Key(policy or SLOT_DEFAULT[slot], IMPORTED, public)

    @precondition(lambda self: self.piv_channels())
    @rule(data=st.data(), slot=st.sampled_from(SLOTS), policy=st.sampled_from(POLICIES))
    def generate(self, data: st.DataObject, slot: int, policy: int) -> None:
        self._generate(self.channel(data), slot, policy)

    @precondition(lambda self: self.piv_channels())
    @rule(
        data=st.data(),
        slot=st.sampled_from(SLOTS),
        policy=st.sampled_from(POLICIES),
        scalar=st.integers(1, 2**255),
    )
    def import_key(self, data: st.DataObject, slot: int, policy: int, scalar: int) -> None:
        self._import(self.channel(data), slot, policy, scalar)

    @precondition(lambda self: self.piv_channels())
    @rule(
        data=st.data(),
        slot=st.sampled_from(SLOTS),
        policy=st.sampled_from(POLICIES),
        generate=st.booleans(),
    )
    def provision_key(self, data: st.DataObject, slot: int, policy: int, generate: bool) -> None:
        """What ``ykman piv keys generate/import`` sends: authenticate, then the key."""
        channel = self.channel(data)
        self._request(channel, single=False)
        self._answer(channel, "current", single=False)
        if generate:
            self._generate(channel, slot, policy)
        else:
            self._import(channel, slot, policy, secrets.randbelow(2**255) + 1)

    def _sign(self, channel: int, slot: int, chained: bool) -> None:
        """GA with the slot's key: the PIN policy decides."""
        s, key = self.session(channel), self.model.keys.get(slot)
        digest = secrets.token_bytes(32)
        body = tlv(0x7C, tlv(0x82, b"") + tlv(0x81, digest))
        if chained:  # continuations are card-level: they must not disarm PIN-always
            _, sw = self.send(channel, 0x87, P256, slot, body[:10], chain=True)
            self.expect("chained GA, first chunk", sw, OK)
            body = body[10:]
        resp, sw = self.send(channel, 0x87, P256, slot, body)
        if key is None:
            what, want = "GA sign, empty slot", INVALID_DATA
        elif key.policy == ALWAYS:
            what, want = "GA sign, PIN always", OK if s.verified and s.always else SECURITY
        elif key.policy == ONCE:
            what, want = "GA sign, PIN once", OK if s.verified else SECURITY
        else:
            what, want = "GA sign, PIN never", OK
        self.processed(channel)
        self.expect(f"{what} ({slot:02X})", sw, want)
        if key is not None and want == OK:
            inner = short_tlvs(short_tlvs(resp)[0x7C])[0x82]
            try:
                key.public.verify(inner, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
            except InvalidSignature:
                raise AssertionError(f"signature of slot {slot:02X} does not verify") from None

    @precondition(lambda self: self.piv_channels())
    @rule(data=st.data(), slot=st.sampled_from(SLOTS), chained=st.booleans())
    def sign(self, data: st.DataObject, slot: int, chained: bool) -> None:
        self._sign(self.channel(data), slot, chained)

    @precondition(lambda self: self.piv_channels() and self.model.keys)
    @rule(data=st.data(), chained=st.booleans(), twice=st.booleans())
    def verify_then_sign(self, data: st.DataObject, chained: bool, twice: bool) -> None:
        """OpenSC's context-specific login: VERIFY right before GA (a second GA needs another)."""
        channel = self.channel(data)
        slot = data.draw(st.sampled_from(sorted(self.model.keys)), label="slot")
        self._verify(channel, self.model.pin)
        self._sign(channel, slot, chained)
        if twice:
            self._sign(channel, slot, chained)

    @precondition(lambda self: self.piv_channels())
    @rule(data=st.data(), src=st.sampled_from(SLOTS), dst=st.sampled_from((*SLOTS, 0xFF)))
    def move_or_delete(self, data: st.DataObject, src: int, dst: int) -> None:
        channel = self.channel(data)
        _, sw = self.send(channel, 0xF6, dst, src)
        keys = self.model.keys
        if dst == src:
            want = BAD_P1P2
        elif not self.session(channel).admin:
            want = SECURITY
        elif src not in keys:
            want = REF_NOT_FOUND
        elif dst != 0xFF and dst in keys:
            want = INVALID_DATA
        else:
            want = OK
            key = keys.pop(src)
            if dst != 0xFF:
                keys[dst] = key
        self.processed(channel)
        self.expect(f"MOVE {src:02X}->{dst:02X}", sw, want)

    # -- Yubico extensions that need more than one thing ------------------------------------------

    def _set_pin_retries(self, channel: int, pin_tries: int, puk_tries: int) -> None:
        """FA needs the management key AND the PIN."""
        s, m = self.session(channel), self.model
        _, sw = self.send(channel, 0xFA, pin_tries, puk_tries)
        want = OK if s.admin and s.verified else SECURITY
        self.processed(channel)
        if want == OK:
            m.pin, m.puk = FACTORY_PIN, FACTORY_PUK
            m.pin_max = m.pin_left = pin_tries
            m.puk_max = m.puk_left = puk_tries
            for other in m.channels.values():  # the PIN was replaced: nobody keeps it
                if other is not None:
                    other.verified = other.always = False
        self.expect("SET PIN RETRIES", sw, want)

    @precondition(lambda self: self.piv_channels())
    @rule(data=st.data(), pin_tries=st.integers(1, 4), puk_tries=st.integers(0, 4))
    def set_pin_retries(self, data: st.DataObject, pin_tries: int, puk_tries: int) -> None:
        self._set_pin_retries(self.channel(data), pin_tries, puk_tries)

    @precondition(lambda self: self.piv_channels())
    @rule(data=st.data(), pin_tries=st.integers(1, 4), puk_tries=st.integers(0, 4))
    def administer_retries(self, data: st.DataObject, pin_tries: int, puk_tries: int) -> None:
        """``ykman piv access set-retries``: authenticate, VERIFY, FA."""
        channel = self.channel(data)
        self._request(channel, single=True)
        self._answer(channel, "current", single=True)
        self._verify(channel, self.model.pin)
        self._set_pin_retries(channel, pin_tries, puk_tries)

    @precondition(lambda self: self.piv_channels())
    @rule(data=st.data())
    def reset_piv(self, data: st.DataObject) -> None:
        """FB: only with PIN and PUK blocked; then factory state everywhere."""
        channel = self.channel(data)
        m = self.model
        _, sw = self.send(channel, 0xFB, 0x00, 0x00)
        self.processed(channel)
        if m.pin_left or m.puk_left:
            self.expect("RESET with a usable PIN or PUK", sw, CONDITIONS)
            return
        self.expect("RESET", sw, OK)
        channels = {c: (Session() if s is not None else None) for c, s in m.channels.items()}
        self.model = Model(channels=channels)

    # -- selection, channels, power ---------------------------------------------------------------

    @rule(channel=st.sampled_from(CHANNELS), name=st.sampled_from(("piv", "echo", "unknown")))
    def select(self, channel: int, name: str) -> None:
        if channel not in self.model.channels:
            return
        aid = {"piv": PIV_AID, "echo": ECHO_AID, "unknown": UNKNOWN_AID}[name]
        _, sw = self.send(channel, 0xA4, 0x04, 0x00, aid)
        current = self.model.channels[channel]
        if name == "unknown":
            self.expect("SELECT of an unknown AID", sw, NOT_FOUND)  # and nothing changes
        elif name == "echo":
            self.expect("SELECT echo", sw, OK)
            self.model.channels[channel] = None
        else:
            self.expect("SELECT PIV", sw, OK)
            if current is None:
                self.model.channels[channel] = Session()
            else:  # re-selection keeps the status, not the arming or a challenge
                current.always, current.pending = False, None

    @precondition(lambda self: len(self.model.channels) < len(CHANNELS))
    @rule()
    def open_channel(self) -> None:
        """MANAGE CHANNEL open from channel 0: the lowest free number, PIV selected."""
        resp = self.card.transmit(bytes((0, 0x70, 0, 0, 1)))
        assert resp[-2:] == b"\x90\x00" and len(resp) == 3, resp.hex()
        number = resp[0]
        assert number == min(set(range(1, 19)) - set(self.model.channels)), number
        self.model.channels[number] = Session()

    @precondition(lambda self: len(self.model.channels) > 1)
    @rule(data=st.data())
    def close_channel(self, data: st.DataObject) -> None:
        channel = data.draw(st.sampled_from(sorted(set(self.model.channels) - {0})))
        _, sw = self.send(0, 0x70, 0x80, channel)
        self.expect("MANAGE CHANNEL close", sw, OK)
        del self.model.channels[channel]

    @rule(event=st.sampled_from(("reset", "cycle", "off-then-apdu")))
    def power(self, event: str) -> None:
        if event == "reset":
            self.card.reset()
        elif event == "cycle":
            self.card.power_off()
            self.card.power_on()
        else:
            self.card.power_off()  # the next APDU powers the card on implicitly
        self.model.channels = {0: Session()}
        self.observer_open = False

    @precondition(lambda self: 0 in self.model.channels)
    @rule(payload=st.binary(min_size=1, max_size=20))
    def echo_on_a_channel(self, payload: bytes) -> None:
        """Use the echo applet on channel 3 without touching the others."""
        if 3 not in self.model.channels:
            resp = self.card.transmit(bytes((0, 0x70, 0, 3)))
            self.expect("MANAGE CHANNEL open 3", int.from_bytes(resp[-2:], "big"), OK)
            self.model.channels[3] = Session()
        resp, sw = self.send(3, 0xA4, 0x04, 0x00, ECHO_AID)
        self.expect("SELECT echo on 3", sw, OK)
        self.model.channels[3] = None
        resp, sw = self.send(3, 0x01, 0x00, 0x00, payload)
        assert (resp, sw) == (payload, OK)
        # A privileged PIV command sent to the echo applet is not PIV's business.
        _, sw = self.send(3, 0xFB, 0x00, 0x00)
        self.expect("RESET sent to the echo applet", sw, 0x6D00)

    # -- what the observer sees -------------------------------------------------------------------

    def observe(self, ins: int, p1: int, p2: int, data: bytes = b"") -> tuple[bytes, int]:
        if not self.observer_open:  # after a power event (it may power the card on)
            self.open_observer()
            self.observer_open = True
        return self.send(OBSERVER, ins, p1, p2, data)

    @invariant()
    def counters_and_defaults_match(self) -> None:
        m = self.model
        for ref, (value, factory, maximum, left) in {
            0x80: (m.pin, FACTORY_PIN, m.pin_max, m.pin_left),
            0x81: (m.puk, FACTORY_PUK, m.puk_max, m.puk_left),
        }.items():
            resp, sw = self.observe(0xF7, 0x00, ref)
            self.expect(f"GET METADATA {ref:02X}", sw, OK)
            meta = short_tlvs(resp)
            assert meta[0x06] == bytes((maximum, left)), (hex(ref), meta[0x06].hex(), maximum, left)
            assert meta[0x05] == bytes((value == factory,)), hex(ref)
        _, sw = self.observe(0x20, 0x00, 0x80)
        self.expect("VERIFY status on the observer", sw, self.retries_sw(m.pin_left))

    @invariant()
    def management_key_matches(self) -> None:
        resp, sw = self.observe(0xF7, 0x00, 0x9B)
        self.expect("GET METADATA 9B", sw, OK)
        meta = short_tlvs(resp)
        alg, key = self.model.mgmt
        assert meta[0x01] == bytes((alg,))
        assert meta[0x05] == bytes((key == FACTORY_KEY[1],))

    @invariant()
    def slots_match(self) -> None:
        for slot in SLOTS:
            resp, sw = self.observe(0xF7, 0x00, slot)
            key = self.model.keys.get(slot)
            if key is None:
                self.expect(f"GET METADATA {slot:02X} (empty)", sw, REF_NOT_FOUND)
                continue
            self.expect(f"GET METADATA {slot:02X}", sw, OK)
            meta = short_tlvs(resp)
            point = key.public.public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
            assert meta[0x01] == bytes((P256,))
            assert meta[0x02] == bytes((key.policy, 0x01)), (hex(slot), meta[0x02].hex())
            assert meta[0x03] == bytes((key.origin,))
            assert meta[0x04] == tlv(0x86, point)

    @invariant()
    def observer_cannot_write_or_use_keys(self) -> None:
        """The observer never authenticated: nothing privileged may work there."""
        body = tlv(0x5C, (0x5FFF10).to_bytes(3, "big")) + tlv(0x53, b"observer")
        self.expect("PUT DATA on the observer", self.observe(0xDB, 0x3F, 0xFF, body)[1], SECURITY)
        self.expect(
            "GENERATE on the observer",
            self.observe(0x47, 0, 0x9A, tlv(0xAC, tlv(0x80, b"\x11")))[1],
            SECURITY,
        )
        self.expect("DELETE on the observer", self.observe(0xF6, 0xFF, 0x9A)[1], SECURITY)


TestPivSecurity = PivSecurityMachine.TestCase
TestPivSecurity.settings = settings(
    max_examples=int(os.environ.get("VSC_STATEFUL_EXAMPLES", "600")),
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


# -- a bug found by the state machine -------------------------------------------------------------


def test_witness_does_not_survive_a_key_change(monkeypatch: pytest.MonkeyPatch) -> None:
    """Channel 0 asks for a witness under the factory key; channel 1 (administrator)
    changes the key; channel 0 answers with the old key. Knowing only a replaced
    key must not authenticate: the answer must be 6982 and PUT DATA must fail."""
    monkeypatch.setattr(sys.modules[__name__], "event", lambda _: None)  # outside hypothesis
    machine = PivSecurityMachine()
    card = machine.card
    new_key = bytes(range(0x20, 0x38))
    assert card.transmit(bytes.fromhex("0070000001")) == b"\x01\x90\x00"
    machine.model.channels[1] = Session()
    machine._request(1, single=False)
    machine._answer(1, "current", single=False)
    machine._request(0, single=False)
    witness = machine.session(0).pending
    assert witness is not None
    _, sw = machine.send(1, 0xFF, 0xFF, 0xFF, bytes((TDES, 0x9B, 24)) + new_key)
    assert sw == OK
    plain = ecb(TDES, FACTORY_KEY[1], witness[2], decrypt=True)
    body = tlv(0x7C, tlv(0x80, plain) + tlv(0x81, bytes(8)))
    _, sw = machine.send(0, 0x87, TDES, 0x9B, body)
    put = tlv(0x5C, (0x5FFF10).to_bytes(3, "big")) + tlv(0x53, b"x")
    _, put_sw = machine.send(0, 0xDB, 0x3F, 0xFF, put)
    assert (sw, put_sw) == (SECURITY, SECURITY)


# -- the machine can fail: broken applets it must catch -------------------------------------------


class LaxRetries(PivApplet):
    """SET PIN RETRIES without the PIN (it needs both)."""

    @command(0xFA)
    def lax_set_pin_retries(self, apdu: CommandApdu, session: SecurityState) -> bytes:
        session.pin_verified = True
        return PivApplet.set_pin_retries(self, apdu, session)


class PinAlwaysActsOnce(PivApplet):
    """PIN-always keys usable again and again after one VERIFY."""

    def process(self, apdu: CommandApdu, session: SecurityState) -> bytes | Response:
        try:
            return super().process(apdu, session)
        finally:
            session.pin_always = session.pin_verified


class ForgivingCounter(PivApplet):
    """A wrong PIN does not count."""

    @command(0x20)
    def forgiving_verify(self, apdu: CommandApdu, session: SecurityState) -> bytes:
        left = self.data.record.pin_tries
        try:
            return PivApplet.verify(self, apdu, session)
        except ApduError:
            if left.remaining:
                self.data.set_retries(left.maximum, self.data.record.puk_tries.maximum)
            raise


class OneSessionForAll(PivApplet):
    """One security state for every channel and across power cycles."""

    def __init__(self, serial: int, profile: PivProfile) -> None:
        super().__init__(serial=serial, profile=profile)
        self.shared = SecurityState()

    def new_session(self) -> SecurityState:
        return self.shared


class WritableByAnyone(PivApplet):
    """PUT DATA without the management key."""

    @command(0xDB)
    def open_put_data(self, apdu: CommandApdu, session: SecurityState) -> bytes:
        admin, session.admin = session.admin, True
        try:
            return PivApplet.put_data(self, apdu, session)
        finally:
            session.admin = admin


@pytest.mark.parametrize(
    "broken",
    [LaxRetries, PinAlwaysActsOnce, ForgivingCounter, OneSessionForAll, WritableByAnyone],
)
def test_the_model_catches_a_broken_applet(broken: type[PivApplet]) -> None:
    class Machine(PivSecurityMachine):
        make_applet = staticmethod(lambda: broken(serial=24681357, profile=YUBIKEY_5_7))

    assert_the_model_catches(Machine, max_examples=500, steps=40)
