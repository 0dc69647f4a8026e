"""One run at a time: an exclusive ``flock`` on a file beside the store.

The kernel drops the lock when the process dies, however it dies, so a crashed run never
leaves a stale lock behind (unlike a PID file).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType

from sfsync.errors import AlreadyRunning, ConfigError


class RunLock:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot create the lock file {self.path} ({exc}); check SFSYNC_STATE_DIR") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            with contextlib.suppress(OSError):
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            os.close(fd)
            raise AlreadyRunning(
                f"another sfsync run holds {self.path}{f' (pid {holder})' if holder else ''}; "
                "this run exits without doing anything. Nothing to fix unless that run is stuck."
            ) from None
        # The pid only helps the "already running" message: on a full disk the lock holds without it.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def is_free(self) -> bool:
        """Whether no one holds the lock now (for `sfsync doctor`)."""
        try:
            self.acquire()
        except AlreadyRunning:
            return False
        self.release()
        return True

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
