"""One process per run folder: an OS-level lock that dies with its process.

``ml3tf train`` and ``ml3tf eval`` hold an exclusive ``flock`` on ``<out_dir>/.lock`` while
they write there. The kernel releases it when the process ends, however it ends (``kill -9``
included), so a lock is never stale; the file itself stays (deleting a lock file races with a
process that has just opened it) and holds the PID of the last holder, which the refusal names.

Example:
    >>> with RunDirLock("runs/sine"):
    ...     ...   # nobody else writes runs/sine meanwhile
"""

from __future__ import annotations

import errno
import logging
import os
from types import TracebackType

try:  # POSIX; elsewhere runs are not locked (logged once per lock)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("ml3tf")

LOCK_NAME = ".lock"


class RunDirBusyError(ValueError):
    """Another process holds the run folder (a ``ValueError``: the CLI prints one line, exit 2)."""


class RunDirLock:
    """Exclusive, non-blocking lock on a run folder (created if missing).

    Raises:
        RunDirBusyError: on ``acquire`` when another process holds the folder.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = os.path.abspath(os.fspath(directory))
        self.path = os.path.join(self.directory, LOCK_NAME)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunDirLock:
        if self._fd is not None:
            return self
        os.makedirs(self.directory, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is None:  # pragma: no cover
            log.warning(
                "no fcntl on this platform: %s is not locked against a second process", self.directory
            )
        else:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_pid(fd)
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise RunDirBusyError(
                    f"out_dir {self.directory!r} is in use by another ml3tf process"
                    f"{f' (pid {holder})' if holder else ''}; wait for it to finish or use another --out-dir"
                ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None
