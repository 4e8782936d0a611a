"""Private directories and files: what vsc creates is 0700 / 0600, what it trusts is its own.

Every directory vsc creates for a store (the root, ``cards/``, each card) is
created 0700, intermediate ones included, and every file 0600. A file vsc
appends to or locks (``audit.log``, a card's ``lock``, ``.lifecycle.lock``)
is opened with ``O_NOFOLLOW``: a symbolic link planted in its place is
refused instead of followed to another file.

A directory that already exists is trusted only if it is private:
:func:`check_private_dir` refuses one that another user owns (root excepted:
it could do anything anyway) or that its group or others may write, and one
whose parent others may write without the sticky bit (they could rename it
away and put their own in its place). Such a store could have its cards or
its audit log swapped under the user's feet.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .errors import StoreError, os_storage_failure

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "UnsafePath",
    "check_private_dir",
    "make_private_dirs",
    "open_private",
]

DIR_MODE = 0o700
FILE_MODE = 0o600


class UnsafePath(StoreError):
    """A store directory or file that someone else could change: refused, never used."""


def _describe_owner(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def check_private_dir(path: Path, what: str = "store") -> None:
    """:class:`UnsafePath` unless ``path`` is a directory only this user (or root) can change."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise UnsafePath(f"{what} {path}: cannot check it ({e.strerror or e})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"{what} {path} is not a directory")
    me = os.geteuid()
    if st.st_uid not in (me, 0):
        raise UnsafePath(
            f"{what} {path} belongs to {_describe_owner(st.st_uid)}, not to you"
            f" ({_describe_owner(me)}): refusing to use a store another user controls"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafePath(
            f"{what} {path} is writable by {'others' if st.st_mode & stat.S_IWOTH else 'its group'}"
            f" (mode {stat.S_IMODE(st.st_mode):04o}): anyone who can write there could swap"
            f" its files; use a private directory (chmod 700 {path})"
        )
    parent = path.absolute().parent
    if parent == path.absolute():
        return
    try:
        pst = os.stat(parent)
    except OSError:
        return
    if pst.st_mode & stat.S_IWOTH and not pst.st_mode & stat.S_ISVTX:
        raise UnsafePath(
            f"{what} {path}: its parent {parent} is writable by others without the sticky bit"
            f" (mode {stat.S_IMODE(pst.st_mode):04o}): anyone could replace {path.name}"
        )


def make_private_dirs(path: Path, what: str = "store") -> None:
    """Create ``path`` and any missing parent 0700; check it if it exists already."""
    path = Path(path)
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue  # another process was faster: checked below like any existing one
        except OSError as e:
            failure = os_storage_failure(f"cannot create {directory}", e)
            if failure is None:
                raise
            raise failure from None
    check_private_dir(path, what)


def open_private(path: Path, flags: int, what: str = "file") -> int:
    """``os.open`` of a store file: never through a symbolic link, created 0600.

    A symbolic link in its place is :class:`UnsafePath` (``ELOOP``), so is a
    file another user owns.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafePath(
                f"{what} {path} is a symbolic link: refusing to follow it (remove it)"
            ) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(f"{what} {path} is not a regular file")
        if st.st_uid not in (os.geteuid(), 0):
            raise UnsafePath(f"{what} {path} belongs to {_describe_owner(st.st_uid)}, not to you")
    except BaseException:
        os.close(fd)
        raise
    return fd
