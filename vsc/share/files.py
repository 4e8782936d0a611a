"""The private files of a share home: ours, mode 0600, never through a symbolic link.

Everything a share home holds decides whom this machine trusts, so every
file is opened with ``O_NOFOLLOW``, must belong to the user running vsc and
is narrowed to mode 0600 when it is more open; new files are written to a
temporary name (mode 0600) and renamed into place, so a crash never leaves
half a file. Problems are :class:`ShareHomeError` naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import stat
import tempfile
from pathlib import Path

__all__ = ["ShareHomeError", "check_owner", "open_private", "read_private", "write_atomic"]


class ShareHomeError(Exception):
    """The share home, or a file in it, cannot be trusted or read; the message says which."""


def _owner(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def check_owner(path: Path, info: os.stat_result) -> None:
    if info.st_uid != os.geteuid():
        raise ShareHomeError(
            f"{path} is owned by another user, {_owner(info.st_uid)}, not by "
            f"{_owner(os.geteuid())}: refusing a share home someone else controls"
        )


def open_private(path: Path, flags: int) -> int:
    """Open a file of a share home: never through a symlink, ours, mode 0600 (narrowed).

    ``flags`` are ``os.open`` flags (``O_CREAT`` creates it 0600). Returns
    the descriptor; raises :class:`ShareHomeError` naming the file.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ShareHomeError(f"{path} is a symbolic link; refusing to follow it") from None
        raise ShareHomeError(f"cannot open {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ShareHomeError(f"{path} is not a regular file")
        check_owner(path, info)
        if stat.S_IMODE(info.st_mode) != 0o600:
            os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_private(path: Path) -> bytes:
    fd = open_private(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def write_atomic(path: Path, data: bytes) -> None:
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
