"""One classification of secrets for every trace: the masker, PIV's rules, the card, the relay."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import logging
import pkgutil
import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yubikit.piv import PivSession

import applets
from applets.catalog import APPLETS, trace_rules_for
from applets.echo import ECHO_AID, EchoApplet
from applets.piv import PivApplet
from applets.piv.applet import PIV_TRACE_RULES
from applets.piv.objects import PIN_PROTECTED, PIV_AID, ObjectId
from vsc import Applet, Card, CommandApdu, command
from vsc.inproc import YubikitConnection
from vsc.masking import PREFIX, UNKNOWN, Mask, TraceMasker, TraceRules
from vsc.share.masking import ApduTrace
from vsc.testing.traces import leaks
from vsc.tlv import encode_length
from vsc.trace import TRACE

SELECT_PIV = bytes.fromhex("00A4040005A000000308")
FCI = bytes.fromhex("61114F0600001000010079074F05A0000003089000")
OK = b"\x90\x00"
FACTORY_KEY = bytes.fromhex("0102030405060708" * 3)


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def put_data(tag: int, value: bytes) -> bytes:
    name = tag.to_bytes(3 if tag > 0xFFFF else 2 if tag > 0xFF else 1, "big")
    return b"\x5c" + bytes((len(name),)) + name + b"\x53" + encode_length(len(value)) + value


def chunks(ins: int, data: bytes, size: int, *, cla: int = 0) -> list[bytes]:
    pieces = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
    return [
        bytes((cla | (0x10 if i < len(pieces) - 1 else 0), ins, 0x3F, 0xFF, len(piece))) + piece
        for i, piece in enumerate(pieces)
    ]


def masker() -> TraceMasker:
    """A relay's masker: it knows vsc's applets by AID, nothing of the card's state."""
    m = TraceMasker(trace_rules_for)
    m.forget()
    return m


def piv_masker() -> TraceMasker:
    m = masker()
    assert m.exchange(SELECT_PIV, FCI) == Mask.NONE
    return m


# --- the masker ------------------------------------------------------------------------------


def test_a_chained_put_data_of_the_protected_key_is_hidden_to_the_last_chunk() -> None:
    m = piv_masker()
    apdus = chunks(0xDB, put_data(0x5FC109, bytes(40)), 16)
    assert [m.exchange(apdu, OK) for apdu in apdus] == [Mask.COMMAND] * len(apdus)


def test_a_name_cut_across_chunks_is_hidden_until_it_decides() -> None:
    m = piv_masker()
    secret = [m.exchange(apdu, OK) for apdu in chunks(0xDB, put_data(0x5FC109, bytes(9)), 3)]
    assert all(mask & Mask.COMMAND for mask in secret)
    public = [m.exchange(apdu, OK) for apdu in chunks(0xDB, put_data(0x5FC102, bytes(10)), 3)]
    # "5C 03 5F" could still be 5FC109; "5C 03 5F C1 02" is the CHUID.
    assert public[0] == Mask.BOTH and public[1:] == [Mask.NONE] * (len(public) - 1)


def test_a_command_that_ends_undecided_is_hidden() -> None:
    m = piv_masker()
    assert m.exchange(h("00DB3FFF03 5C035F"), h("6A80")) == Mask.BOTH


def test_each_chunk_is_also_read_as_a_new_command() -> None:
    # The card dropped the CHUID chain (6A84); the client starts 5FC109 with the same header.
    m = piv_masker()
    m.exchange(b"\x10\xdb\x3f\xff\x07" + h("5C035FC10253FF"), h("6A84"))
    assert m.exchange(b"\x10\xdb\x3f\xff\x07" + h("5C035FC10953FF"), OK) & Mask.COMMAND
    # What that reading hid stays hidden for the rest of the chain.
    assert m.exchange(b"\x00\xdb\x3f\xff\x03" + h("010203"), OK) & Mask.COMMAND


def test_a_chain_that_never_decides_is_hidden_past_the_prefix() -> None:
    never = TraceRules({0x01: lambda p1, p2, data: None})
    m = TraceMasker(lambda aid: never)
    m.exchange(h("00A4040001AA"), OK)
    first = b"\x10\x01\x00\x00" + bytes((PREFIX,)) + bytes(PREFIX)
    assert m.exchange(first, OK) == Mask.BOTH
    assert m.exchange(h("0001000001AA"), OK) == Mask.BOTH


def test_get_response_continues_the_mask_of_the_cut_response() -> None:
    m = piv_masker()
    assert m.exchange(h("0087079A04 7C028100"), h("AABB6104")) == Mask.BOTH
    assert m.exchange(h("00C0000004"), h("CCDD6102")) == Mask.BOTH & Mask.RESPONSE
    assert m.exchange(h("00C0000002"), h("EEFF9000")) == Mask.RESPONSE
    assert m.exchange(h("00CB3FFF05 5C035FC102"), h("5301016101")) == Mask.NONE
    assert m.exchange(h("00C0000001"), h("029000")) == Mask.NONE


def test_select_switches_the_rules_and_a_failed_one_keeps_them() -> None:
    m = masker()
    assert m.exchange(h("00CB3FFF05 5C035FC102"), h("6D00")) == Mask.BOTH  # unknown: all hidden
    m.exchange(SELECT_PIV, FCI)
    assert m.exchange(h("00CB3FFF05 5C035FC102"), h("6A82")) == Mask.NONE
    m.exchange(h("00A4040005 F000000000"), h("6A82"))
    assert m.exchange(h("00CB3FFF05 5C035FC102"), h("6A82")) == Mask.NONE
    m.exchange(b"\x00\xa4\x04\x00\x06" + ECHO_AID, OK)
    assert m.exchange(h("0001000003 313233"), h("3132339000")) == Mask.NONE
    m.exchange(h("00A4040005 D276000124"), OK)  # an applet nobody knows
    assert m.exchange(h("0001000003 313233"), h("3132339000")) == Mask.BOTH


def test_manage_channel_opens_with_the_origins_applet_and_closes() -> None:
    m = TraceMasker(trace_rules_for)
    m.forget(PIV_TRACE_RULES)  # the card's default applet is PIV
    m.exchange(SELECT_PIV, FCI)
    m.exchange(b"\x00\xa4\x04\x00\x06" + ECHO_AID, OK)
    assert m.exchange(h("0070000001"), h("019000")) == Mask.NONE
    assert m.exchange(h("0120008008 3132333435360000"), OK) == Mask.COMMAND  # PIV on 1
    assert m.exchange(h("0170000001"), h("029000")) == Mask.NONE  # from 1: PIV on 2
    assert m.exchange(h("0220008008 3132333435360000"), OK) == Mask.COMMAND
    assert m.exchange(h("0070800200"), OK) == Mask.NONE
    assert m.exchange(h("0201000001 AA"), h("6881")) == Mask.BOTH  # closed: unknown
    assert m.exchange(h("0001000001 AA"), h("AA9000")) == Mask.NONE  # echo stays on 0


def test_a_rule_that_fails_hides_and_forgets(caplog: pytest.LogCaptureFixture) -> None:
    def broken(p1: int, p2: int, data: bytes) -> Mask | None:
        raise ValueError("a bug in a rule")

    m = TraceMasker(lambda aid: TraceRules({0x01: broken}))
    m.exchange(h("00A4040001AA"), OK)
    with caplog.at_level(logging.ERROR, logger="vsc.masking"):
        assert m.exchange(h("0001000001AA"), OK) == Mask.BOTH
    assert "a bug in a rule" in caplog.text
    assert m.exchange(h("0002000001AA"), OK) == Mask.BOTH  # forgotten: unknown until SELECT


@pytest.mark.parametrize(
    "apdu",
    [
        h("0020"),  # too short
        h("00200080 09 3132"),  # Lc and data disagree
        h("FF20008002 3132"),  # invalid CLA
        h("0C20008002 3132"),  # secure messaging
    ],
)
def test_what_cannot_be_read_is_hidden(apdu: bytes) -> None:
    assert piv_masker().exchange(apdu, h("6700")) == Mask.BOTH


def test_rules_from_secret_ins_and_inheritance() -> None:
    class Plain(Applet[None]):
        aid = h("F001")
        secret_ins = frozenset({0x42})

    class Piv2(PivApplet):
        pass

    with pytest.raises(TypeError, match="is_secret is no longer called"):

        class Old(Applet[None]):  # the hook before trace_rules: refused, not ignored
            def is_secret(self, apdu: CommandApdu) -> bool:
                return True

    assert Plain.trace_rules.classify(0x42, 0, 0, b"") == Mask.BOTH
    assert Plain.trace_rules.classify(0x43, 0, 0, b"") == Mask.NONE
    assert Piv2.trace_rules is PIV_TRACE_RULES
    assert UNKNOWN.classify(0x43, 0, 0, b"") == Mask.BOTH


# --- PIV's rules ----------------------------------------------------------------------------


def test_every_piv_instruction_has_a_rule() -> None:
    assert set(PivApplet.commands) <= set(PIV_TRACE_RULES.by_ins)
    assert PIV_TRACE_RULES.default == Mask.BOTH  # one added without a rule is hidden


@given(st.binary(max_size=PREFIX))
def test_piv_rules_never_change_their_mind(data: bytes) -> None:
    for ins in (0xCB, 0xDB):
        decided = None
        for end in range(len(data) + 1):
            mask = PIV_TRACE_RULES.classify(ins, 0x3F, 0xFF, data[:end])
            if decided is not None:
                assert mask == decided, data[:end].hex()
            elif mask is not None:
                decided = mask


_TAGS = st.sampled_from(sorted({*PIN_PROTECTED, *(int(t) for t in ObjectId)} - {0x7E, 0x7F61}))


@given(tag=_TAGS, long_form=st.booleans(), size=st.integers(1, 300))
@settings(max_examples=60, deadline=None)
def test_piv_put_data_rule_matches_what_the_applet_stores(
    tag: int, long_form: bool, size: int
) -> None:
    name = tag.to_bytes(3, "big")
    header = b"\x5c" + (b"\x81\x03" if long_form else b"\x03") + name
    data = header + b"\x53" + encode_length(size) + bytes(size)
    mask = PIV_TRACE_RULES.classify(0xDB, 0x3F, 0xFF, data[:PREFIX])
    applet = PivApplet()
    connection = YubikitConnection(Card([applet]))
    PivSession(connection).authenticate(FACTORY_KEY)
    for apdu in chunks(0xDB, data, 255):
        assert connection.send_and_receive(apdu)[1] == 0x9000
    assert applet.data.get_object(tag) == bytes(size)  # the handler read the same name
    assert mask == (Mask.COMMAND if tag in PIN_PROTECTED else Mask.NONE)


# --- the catalog ------------------------------------------------------------------------------


def _applet_classes() -> Iterator[type[Applet[Any]]]:
    for info in pkgutil.walk_packages(applets.__path__, "applets."):
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, Applet) and cls.__module__ == module.__name__ and cls.aid:
                yield cls


def test_the_catalog_knows_every_applet() -> None:
    found = set(_applet_classes())
    assert found and found <= set(APPLETS)
    for cls in APPLETS:
        assert trace_rules_for(cls.aid) is cls.trace_rules


def test_the_catalog_resolves_as_select_does() -> None:
    assert trace_rules_for(PIV_AID[:5]) is PIV_TRACE_RULES  # the RID selects PIV
    assert trace_rules_for(PIV_AID[:4]) is None
    assert trace_rules_for(ECHO_AID) is EchoApplet.trace_rules
    assert trace_rules_for(ECHO_AID[:5]) is None


# --- the card's trace and the relay's, on the same exchanges -----------------------------------


class Vault(Applet[None]):
    """Everything hidden: to show the card resyncs its masker from its own state."""

    aid = h("F07673630002")
    secret_ins = frozenset({0x01})

    def new_session(self) -> None:
        return None

    @command(0x01)
    def echo(self, apdu: CommandApdu, session: None) -> bytes:
        return apdu.data


_CARD_LINE = re.compile(r"\[\d+\] ([<>]) (.*)$")
_RELAY_LINE = re.compile(r"relay > (.*?) < (.*)$")


def _card_pairs(text: str) -> list[tuple[str, str]]:
    lines = [m.groups() for m in map(_CARD_LINE.search, text.splitlines()) if m]
    commands = [t for arrow, t in lines if arrow == ">"]
    responses = [t for arrow, t in lines if arrow == "<"]
    return list(zip(commands, responses, strict=True))


def _relay_pairs(text: str) -> list[tuple[str, str]]:
    return [m.groups() for m in map(_RELAY_LINE.search, text.splitlines()) if m]  # type: ignore[misc]


# Each op: (what, argument, size). Secrets go only where an applet hides them.
_OPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("put"), st.sampled_from([0x5FC109, 0x5FC102, 0x5FC123]), st.integers(1, 90)
        ),
        st.tuples(st.just("get"), st.sampled_from([0x5FC109, 0x5FC102, 0x7E]), st.just(0)),
        st.tuples(st.just("verify"), st.just(0), st.just(0)),
        st.tuples(st.just("select"), st.integers(0, 2), st.just(0)),
        st.tuples(st.just("vault"), st.just(0), st.integers(1, 600)),
        st.tuples(st.just("echo"), st.just(0), st.integers(1, 300)),
    ),
    max_size=12,
)
_SELECTS = (SELECT_PIV, b"\x00\xa4\x04\x00\x06" + ECHO_AID, b"\x00\xa4\x04\x00\x06" + Vault.aid)


def _run(card: Card, ops: list[tuple[str, int, int]], secret: bytes) -> list[tuple[bytes, bytes]]:
    exchanges = []

    def send(apdu: bytes) -> None:
        response = card.transmit(apdu)
        exchanges.append((apdu, response))
        while response[-2] == 0x61:
            apdu = bytes((0, 0xC0, 0, 0, response[-1]))
            response = card.transmit(apdu)
            exchanges.append((apdu, response))

    for op, arg, size in ops:
        if op == "put":
            send(SELECT_PIV)
            value = (secret * 8)[:size] if arg in PIN_PROTECTED else bytes(size)
            for apdu in chunks(0xDB, put_data(arg, value), 7 + size % 50):
                send(apdu)
        elif op == "get":
            send(b"\x00\xcb\x3f\xff" + put_data(arg, b"")[:-2] + b"\x00")
        elif op == "verify":
            send(SELECT_PIV)
            send(h("0020008008") + secret[:6] + b"\xff\xff")
        elif op == "select":
            send(_SELECTS[arg])
        else:  # the vault hides; the echo shows (not a secret)
            send(_SELECTS[2 if op == "vault" else 1])
            data = (secret * 40)[:size] if op == "vault" else bytes(size)
            for apdu in chunks(0x01, data, 200):
                send(apdu)
    return exchanges


# Hashed, so a secret never looks like the fillers, AIDs or FCIs around it.
_SECRETS = st.binary().map(lambda seed: hashlib.sha256(seed).digest()[:20])


@given(ops=_OPS, secret=_SECRETS)
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_the_card_and_the_relay_mask_alike(
    ops: list[tuple[str, int, int]], secret: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    applet = PivApplet()
    card = Card([applet, EchoApplet(), Vault()], default=applet)
    PivSession(YubikitConnection(card)).authenticate(FACTORY_KEY)  # PUT DATA is allowed
    caplog.clear()
    with caplog.at_level(TRACE, logger="vsc.apdu"):
        exchanges = _run(card, [("select", 0, 0), *ops], secret)
    card_text = caplog.text
    caplog.clear()
    relay = ApduTrace("relay")
    with caplog.at_level(TRACE, logger="vsc.share.apdu"):
        for command_bytes, response in exchanges:
            relay.exchange(command_bytes, response)
    relay_text = caplog.text

    assert _card_pairs(card_text) == _relay_pairs(relay_text)
    assert len(_card_pairs(card_text)) == len(exchanges)
    assert not leaks(card_text, {"secret": secret}, window=6)


def test_the_trace_turned_on_mid_chain_hides_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    card = Card([Vault(), PivApplet()])
    assert card.transmit(SELECT_PIV)[-2:] == OK
    PivSession(YubikitConnection(card)).authenticate(FACTORY_KEY)
    first, *rest = chunks(0xDB, put_data(0x5FC109, b"\x11" * 40), 16)
    assert card.transmit(first) == OK  # the trace is off: the masker does not see this
    with caplog.at_level(TRACE, logger="vsc.apdu"):
        for apdu in rest:
            assert card.transmit(apdu) == OK
    assert "11 11" not in caplog.text
    assert caplog.text.count("secret bytes") == len(rest)


def test_the_trace_costs_nothing_when_off(caplog: pytest.LogCaptureFixture) -> None:
    card = Card([PivApplet()])
    with caplog.at_level(logging.DEBUG, logger="vsc.apdu"):
        card.transmit(SELECT_PIV)
    assert caplog.records == []
