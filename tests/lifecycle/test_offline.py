"""The offline challenge and response: codes to read aloud that bind purpose and duration."""

from __future__ import annotations

import pytest

from vsc.lifecycle.offline import (
    ALPHABET,
    UNRESTRICTED,
    MistypedCode,
    Purpose,
    Request,
    check_response,
    compute_response,
    describe_minutes,
    parse_response,
)

KEY = bytes.fromhex("00112233445566778899AABBCCDDEEFF0011223344556677")
OTHER_KEY = bytes(24)
NONCE = bytes.fromhex("0102030405")


def test_challenge_looks_like_four_groups_of_four_and_round_trips() -> None:
    request = Request(Purpose.UNLOCK, 480, NONCE)
    text = request.encode()
    groups = text.split("-")
    assert [len(g) for g in groups] == [4, 4, 4, 4]
    assert set(text.replace("-", "")) <= set(ALPHABET)
    assert Request.decode(text) == request
    assert Request.decode(text.lower().replace("-", " ")) == request
    assert Request.from_bytes(request.to_bytes()) == request
    # Crockford: O is 0, I and L are 1.
    assert Request.decode(text.replace("0", "O").replace("1", "I")) == request
    assert request.describe() == "unlock the card for 8 hours"
    assert Request(Purpose.UNBLOCK, 0, NONCE).describe() == "unblock the PIN"
    assert "unrestricted" in Request(Purpose.UNLOCK, UNRESTRICTED, NONCE).describe()


def test_a_mistyped_challenge_is_caught() -> None:
    text = Request(Purpose.UNBLOCK, 0, NONCE).encode().replace("-", "")
    typos = [text[:i] + c + text[i + 1 :] for i in range(len(text)) for c in "0Z" if text[i] != c]
    caught = 0
    for typo in typos:
        try:
            Request.decode(typo)
        except MistypedCode:
            caught += 1
    assert len(typos) >= 16 and caught >= len(typos) - 1  # an 8-bit check: 1 in 256 slips
    for bad in ("", "ABCD", "UUUU-UUUU-UUUU-UUUU", text + "0"):
        with pytest.raises(MistypedCode):
            Request.decode(bad)


def test_requests_refuse_nonsense() -> None:
    with pytest.raises(ValueError):
        Request(Purpose.UNBLOCK, 60, NONCE)
    with pytest.raises(ValueError):
        Request(Purpose.UNLOCK, 0, NONCE)
    with pytest.raises(ValueError):
        Request(Purpose.UNLOCK, 60, b"\x00")
    assert Request.new(Purpose.UNBLOCK).nonce != Request.new(Purpose.UNBLOCK).nonce


def test_the_response_binds_key_purpose_duration_and_nonce() -> None:
    request = Request(Purpose.UNLOCK, 480, NONCE)
    response = compute_response(KEY, request)
    assert len(response) == 11 and response[5] == "-"
    mac = parse_response(response)
    assert check_response(KEY, request, mac)
    assert not check_response(OTHER_KEY, request, mac)
    # A user who stretches the duration, or swaps purpose or nonce, gets nothing from it.
    for other in (
        Request(Purpose.UNLOCK, 10080, NONCE),
        Request(Purpose.UNLOCK, UNRESTRICTED, NONCE),
        Request(Purpose.UNBLOCK, 0, NONCE),
        Request(Purpose.UNLOCK, 480, bytes.fromhex("0102030406")),
    ):
        assert not check_response(KEY, other, mac)
        assert compute_response(KEY, other) != response


def test_a_modified_challenge_gets_a_response_the_original_request_refuses() -> None:
    """The card checks against the request it stored, never against what was read out."""
    stored = Request(Purpose.UNLOCK, 480, NONCE)
    stretched = Request.decode(Request(Purpose.UNLOCK, 10080, NONCE).encode())
    mac = parse_response(compute_response(KEY, stretched))
    assert not check_response(KEY, stored, mac)


def test_a_mistyped_response_is_caught_before_any_check() -> None:
    response = compute_response(KEY, Request(Purpose.UNBLOCK, 0, NONCE)).replace("-", "")
    typos = [
        response[:i] + c + response[i + 1 :]
        for i in range(len(response))
        for c in "0Z"
        if response[i] != c
    ]
    caught = 0
    for typo in typos:
        try:
            parse_response(typo)
        except MistypedCode:
            caught += 1
    assert caught >= len(typos) - 3  # a 5-bit check: 1 in 32 slips (and then costs a try)
    with pytest.raises(MistypedCode, match="10 characters"):
        parse_response("ABCDE")


def test_durations_read_naturally() -> None:
    assert describe_minutes(480) == "8 hours"
    assert describe_minutes(1440) == "1 day"
    assert describe_minutes(10080) == "1 week"
    assert describe_minutes(90) == "90 minutes"
    assert describe_minutes(UNRESTRICTED) == "unrestricted"
