"""PIN policy rules, profiles and the CLI's durations and times: each refusal names its rule."""

from __future__ import annotations

import pytest

from applets.piv.pinrules import CharRule, PinRuleError, PinRules, strip_padding
from vsc.lifecycle.offline import UNRESTRICTED
from vsc.lifecycle.profiles import PROFILES
from vsc.lifecycle.timespec import parse_duration, parse_time
from vsc.sw import SW

M, N, OPT = CharRule.MANDATORY, CharRule.NOT_ALLOWED, CharRule.OPTIONAL


@pytest.mark.parametrize(
    ("rules", "pin", "rule"),
    [
        (PinRules(6, 8), b"12345", "min-length"),
        (PinRules(6, 8), b"123456789", "max-length"),
        (PinRules(6, 8), b"12345\x07", "printable"),
        (PinRules(6, 8), "123456é".encode(), "printable"),
        (PinRules(6, 8, lowercase=M), b"ABC123", "lowercase"),
        (PinRules(6, 8, uppercase=M), b"abc123", "uppercase"),
        (PinRules(6, 8, digits=M), b"abcdef", "digits"),
        (PinRules(6, 8, symbols=M), b"abc123", "symbols"),
        (PinRules(6, 8, lowercase=N), b"abc123", "lowercase"),
        (PinRules(6, 8, uppercase=N), b"ABC123", "uppercase"),
        (PinRules(6, 8, digits=N), b"abc123", "digits"),
        (PinRules(6, 8, symbols=N), b"abc 12", "symbols"),  # the space is a symbol
        (PinRules(6, 8, symbols=N), b"abc!12", "symbols"),
    ],
)
def test_each_rule_refuses_by_name(rules: PinRules, pin: bytes, rule: str) -> None:
    error = rules.violation(pin)
    assert error is not None and error.rule == rule
    assert f"rule {rule}" in str(error)
    with pytest.raises(PinRuleError) as raised:
        rules.check(pin)
    assert raised.value.sw == SW.INVALID_DATA  # what CHANGE REFERENCE DATA answers


@pytest.mark.parametrize(
    ("rules", "pin"),
    [
        (PinRules(6, 8), b"123456"),
        (PinRules(6, 8), b"aB3!xY9~"),
        (PinRules(8, 8, M, M, M, M), b"aB3!xY9~"),
        (PinRules(6, 6, N, N, M, N), b"246813"),
        (PinRules(6, 8, symbols=M), b"a b c 1"),
    ],
)
def test_valid_pins_pass(rules: PinRules, pin: bytes) -> None:
    assert rules.violation(pin) is None
    rules.check(pin)


def test_impossible_policies_are_refused() -> None:
    with pytest.raises(ValueError, match="min <= max"):
        PinRules(8, 6)
    with pytest.raises(ValueError, match="no PIN could be set"):
        PinRules(6, 8, N, N, N, N)
    with pytest.raises(ValueError, match="do not fit"):
        PinRules(1, 3, M, M, M, M)


def test_rules_round_trip_and_parse_windows_words() -> None:
    rules = PinRules(7, 8, M, N, OPT, M)
    assert PinRules.from_dict(rules.to_dict()) == rules
    assert CharRule.parse("REQUIRED") is M
    assert CharRule.parse("disallowed") is N
    assert CharRule.parse("Allowed") is OPT
    assert CharRule.parse("not_allowed") is N
    with pytest.raises(ValueError, match="not one of"):
        CharRule.parse("sometimes")
    with pytest.raises(ValueError, match="malformed"):
        PinRules.from_dict({"min_length": 6})
    assert strip_padding(b"1234\xff\xff\xff\xff") == b"1234"


def test_profiles_bound_custom_policies_by_the_piv_pin() -> None:
    piv = PROFILES["piv"]
    assert piv.pin_rules.violation(b"12345678") is None
    assert piv.pin_rules.violation(b"1234567a") is not None  # SP 800-73-4: digits only
    windows = PROFILES["windows"]
    assert windows.pin_rules.violation(b"1234567") is not None  # Windows' minimum is 8
    with pytest.raises(ValueError, match="6 to 8"):
        PROFILES["yubikey"].rules(min_length=4)
    with pytest.raises(ValueError, match="6 to 8"):
        PROFILES["yubikey"].rules(max_length=9)
    # Overrides apply together: an intermediate state with no class allowed is not refused.
    rules = piv.rules(classes={"digits": N, "lowercase": M})
    assert rules.violation(b"abcdefg") is None


def test_durations() -> None:
    assert parse_duration("8h") == 480
    assert parse_duration("1d") == 1440
    assert parse_duration("1w") == 10080
    assert parse_duration("1d12h") == 2160
    assert parse_duration("30m") == 30
    assert parse_duration("unrestricted") == UNRESTRICTED
    for bad in ("", "8", "h", "-1h", "0m", "8x", "1.5h"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_times() -> None:
    now = 1_700_000_000.0
    assert parse_time("now", now) == now
    assert parse_time("+2h", now) == now + 7200
    assert parse_time("2023-11-14T22:13:20+00:00", now) == now
    at = parse_time("18:00", now)
    assert now < at <= now + 86400
    with pytest.raises(ValueError, match="not a time"):
        parse_time("teatime", now)
