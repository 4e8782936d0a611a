"""ISO 7816-4 status words and the exceptions that carry them.

Applets signal every failure by raising :class:`ApduError` (or a subclass);
:class:`vsc.card.Card` is the one place that turns exceptions into status
words. An exception of any other type becomes ``6F00`` and is logged.
"""

from __future__ import annotations

from enum import IntEnum


class SW(IntEnum):
    """Status words, named as in ISO 7816-4 and SP 800-73-4."""

    OK = 0x9000
    # 61xx and 63Cx carry a count in SW2; these are their SW1 bases.
    MORE_DATA = 0x6100
    #: ISO 7816-4 "selected file deactivated": an application put out of use (a locked card).
    FILE_DEACTIVATED = 0x6283
    VERIFY_FAIL_NO_RETRY = 0x63C0
    WARNING_NV_CHANGED = 0x6300
    EXECUTION_ERROR = 0x6400
    MEMORY_FAILURE = 0x6581
    WRONG_LENGTH = 0x6700
    LOGICAL_CHANNEL_NOT_SUPPORTED = 0x6881
    SECURE_MESSAGING_NOT_SUPPORTED = 0x6882
    LAST_COMMAND_EXPECTED = 0x6883
    CHAINING_NOT_SUPPORTED = 0x6884
    COMMAND_INCOMPATIBLE = 0x6981
    SECURITY_CONDITION_NOT_SATISFIED = 0x6982
    AUTH_METHOD_BLOCKED = 0x6983
    REFERENCE_DATA_NOT_USABLE = 0x6984
    CONDITIONS_NOT_SATISFIED = 0x6985
    COMMAND_NOT_ALLOWED = 0x6986
    INCORRECT_SM_DATA = 0x6988
    INVALID_DATA = 0x6A80
    FUNCTION_NOT_SUPPORTED = 0x6A81
    FILE_NOT_FOUND = 0x6A82
    RECORD_NOT_FOUND = 0x6A83
    NO_SPACE = 0x6A84
    INCORRECT_PARAMETERS = 0x6A86
    NC_INCONSISTENT_WITH_P1P2 = 0x6A87
    REFERENCE_NOT_FOUND = 0x6A88
    FILE_EXISTS = 0x6A89
    WRONG_P1P2 = 0x6B00
    WRONG_LE = 0x6C00
    INVALID_INSTRUCTION = 0x6D00
    CLASS_NOT_SUPPORTED = 0x6E00
    NO_PRECISE_DIAGNOSIS = 0x6F00


def is_valid_sw(sw: int) -> bool:
    """True for a status word a card may send (SW1 of 61-6F or 90-9F).

    ISO 7816-3 forbids SW1 = 6X other than 61-6F and 9X other than 90-9F;
    60 is a procedure byte, never a status word.
    """
    sw1 = sw >> 8
    return 0x61 <= sw1 <= 0x6F or 0x90 <= sw1 <= 0x9F


class ApduError(Exception):
    """A command failed; the card answers with ``sw``.

    The message is for logs and people; it never reaches the wire.
    """

    def __init__(self, sw: int, message: str = "") -> None:
        super().__init__(message or f"{sw:04X}")
        self.sw = sw


class WrongLength(ApduError):
    def __init__(self, message: str = "wrong length") -> None:
        super().__init__(SW.WRONG_LENGTH, message)


class InvalidData(ApduError):
    def __init__(self, message: str = "invalid data") -> None:
        super().__init__(SW.INVALID_DATA, message)


class IncorrectParameters(ApduError):
    def __init__(self, message: str = "incorrect P1/P2") -> None:
        super().__init__(SW.INCORRECT_PARAMETERS, message)


class SecurityStatusNotSatisfied(ApduError):
    def __init__(self, message: str = "security status not satisfied") -> None:
        super().__init__(SW.SECURITY_CONDITION_NOT_SATISFIED, message)


class ConditionsNotSatisfied(ApduError):
    def __init__(self, message: str = "conditions of use not satisfied") -> None:
        super().__init__(SW.CONDITIONS_NOT_SATISFIED, message)


class NotFound(ApduError):
    def __init__(self, message: str = "not found") -> None:
        super().__init__(SW.FILE_NOT_FOUND, message)


class InvalidPin(ApduError):
    """A wrong PIN/PUK/key: ``63Cx`` with x tries left, or ``6983`` when blocked."""

    def __init__(self, attempts_remaining: int, message: str = "verification failed") -> None:
        sw = (
            SW.AUTH_METHOD_BLOCKED
            if attempts_remaining <= 0
            else SW.VERIFY_FAIL_NO_RETRY | min(attempts_remaining, 15)
        )
        super().__init__(sw, message)
        self.attempts_remaining = attempts_remaining
