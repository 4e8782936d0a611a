"""One card, one process: an exclusive ``flock`` on a lock file inside the card directory.

The kernel drops the lock when the holder dies, SIGKILL included, so a crash
never leaves a card stuck "in use". Locks belong to open file descriptions:
opening the same card twice in one process also fails, on purpose.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from .errors import CardInUse, CardNotFound, os_storage_failure
from .files import open_private


class CardLock:
    """Held from :meth:`acquire` until :meth:`release`; records the holder's PID for messages."""

    def __init__(self, path: Path, label: str) -> None:
        self.path = path
        self.label = label
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            raise RuntimeError("lock already held")
        try:
            # Never through a symbolic link: the lock is the card's, not another file.
            fd = open_private(self.path, os.O_RDWR | os.O_CREAT, "card lock")
        except FileNotFoundError:
            raise CardNotFound(self.label, self.path.parent) from None
        except OSError as e:  # a read-only store, a full disk: say so, not a traceback
            failure = os_storage_failure(f"card {self.label!r}: cannot open {self.path}", e)
            if failure is None:
                raise
            raise failure from None
        try:
            _flock_briefly(fd)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise CardInUse(self.label, self.path.parent, _read_pid(self.path)) from None
            raise
        # The card may have been destroyed (its directory renamed away) between our
        # open() and flock(): then we hold the lock of a file nobody will look at.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(self.path))
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            raise CardNotFound(self.label, self.path.parent)
        self._fd = fd
        # The PID is for CardInUse messages only: a full disk must not fail the open
        # (nor leak the descriptor, and with it the lock).
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing the description releases the flock

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def is_locked(path: Path) -> bool:
    """Whether some process holds the lock at ``path`` right now (a snapshot)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # not a lock we can read (a symbolic link...): assume held, touch nothing
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _flock_briefly(fd: int, tries: int = 5, pause: float = 0.01) -> None:
    """LOCK_EX, retried a few times: :func:`is_locked` holds a shared lock for an instant."""
    for attempt in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if attempt == tries - 1:
                raise
            time.sleep(pause)


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdecimal() else None
