"""The public Hypothesis strategies (vsc.fuzz.strategies) draw what they promise."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from applets.echo import ECHO_AID, EchoApplet
from vsc import Card, CommandApdu
from vsc.apdu import decode_cla
from vsc.fuzz import Harness, check_response
from vsc.fuzz.inputs import FuzzInput, Step, StepKind
from vsc.fuzz.strategies import (
    Case,
    apdus,
    ber_tlvs,
    chained,
    classes,
    commands,
    fuzz_inputs,
    piv_commands,
    raw_apdus,
    tags,
)
from vsc.tlv import encode_tlv, parse_tlvs, tag_bytes


@pytest.mark.parametrize("case", list(Case), ids=lambda c: c.value)
@given(data=st.data())
@settings(max_examples=25)
def test_apdus_of_each_case_parse_as_that_case(case: Case, data: st.DataObject) -> None:
    raw = data.draw(apdus(case))
    cmd = CommandApdu.parse(raw)
    assert bool(cmd.data) is case.has_data
    assert (cmd.le is not None) is case.has_le
    assert cmd.extended is case.extended or case is Case.CASE_1
    if case is Case.CASE_1:
        assert len(raw) == 4


@given(commands())
def test_commands_are_parsed_apdus(cmd: CommandApdu) -> None:
    assert CommandApdu.parse(cmd.encode()).data == cmd.data


@given(classes(channels=(0, 3, 4, 19), chaining=None, proprietary=None))
def test_classes_address_the_channels_asked_for(cla: int) -> None:
    decoded = decode_cla(cla)
    assert decoded.channel in (0, 3, 4, 19)
    assert not decoded.secure_messaging


@given(classes(chaining=True))
def test_classes_with_chaining(cla: int) -> None:
    assert decode_cla(cla).chaining


@given(raw_apdus())
@settings(max_examples=150)
def test_any_raw_apdu_gets_a_well_formed_answer(apdu: bytes) -> None:
    card = Card([EchoApplet()])
    assert check_response(apdu, card.transmit(apdu)) is None


def _parse_nested(data: bytes) -> int:
    """Parse a BER run, descending into constructed items; returns the items seen."""
    count = 0
    for tlv in parse_tlvs(data):
        count += 1
        if tag_bytes(tlv.tag)[0] & 0x20:
            count += _parse_nested(tlv.value)
    return count


@given(ber_tlvs())
def test_ber_tlvs_parse_and_reencode(data: bytes) -> None:
    _parse_nested(data)
    assert b"".join(encode_tlv(t.tag, t.value) for t in parse_tlvs(data)) == data


@given(ber_tlvs(minimal=False))
def test_ber_tlvs_with_long_lengths_parse(data: bytes) -> None:
    _parse_nested(data)


@given(tags(), tags(constructed=True))
def test_tags_are_one_to_three_bytes(primitive: int, constructed: int) -> None:
    assert 1 <= len(tag_bytes(primitive)) <= 3
    assert tag_bytes(constructed)[0] & 0x20
    (tlv,) = parse_tlvs(tag_bytes(primitive) + b"\x00")
    assert tlv.tag == primitive


_ECHO = apdus((Case.CASE_3S, Case.CASE_3E), cla=st.just(0), ins=st.just(0x01), max_data=700)


@given(chained(_ECHO, max_chunk=40))
@settings(max_examples=50)
def test_a_chain_reaches_the_card_whole(chunks: list[bytes]) -> None:
    card = Card([EchoApplet()])
    card.transmit(b"\x00\xa4\x04\x00\x06" + ECHO_AID)
    *middle, last = chunks
    assert all(c[0] & 0x10 for c in middle) and not last[0] & 0x10
    for chunk in middle:
        assert card.transmit(chunk) == b"\x90\x00"
    answer = card.transmit(last)
    data = answer[:-2]
    while answer[-2] == 0x61:
        answer = card.transmit(bytes((0, 0xC0, 0, 0, answer[-1])))
        data += answer[:-2]
    assert answer[-2:] == b"\x90\x00"
    assert data == b"".join(CommandApdu.parse(c).data for c in chunks)


@given(piv_commands())
@settings(max_examples=100, deadline=None)
def test_piv_commands_parse_and_keep_the_law(apdu: bytes) -> None:
    CommandApdu.parse(apdu)
    outcome = Harness(probe=None).run((Step(StepKind.APDU, apdu),))
    assert outcome.violation is None, outcome.violation


@given(fuzz_inputs())
@settings(max_examples=40, deadline=None)
def test_fuzz_inputs_keep_the_law_on_the_piv_card(steps: FuzzInput) -> None:
    outcome = Harness().run(steps)
    assert outcome.violation is None, outcome.violation
