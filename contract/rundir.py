"""One writer per output directory, and temporary files that cannot collide.

`RunLock(directory)` takes an exclusive `flock` on DIRECTORY/.lock for as long as it is held (the whole
run) and writes the holder's host, PID and start time into it. The kernel drops a flock when its process
dies, however it dies (kill -9 included), so a lock file whose flock is free is stale: it is taken over,
with a message naming the dead holder. A second process finds the flock held and fails with one line
naming the holder (`RunDirBusy`). DataLoader workers forked by the holder share its lock, never
contend for it.

`temporary_name(path)` gives a name beside `path` that is unique to this process and call, so two
writers (or a retried save) never write into the same temporary file; `is_temporary` recognises them,
for the clean-up of debris a crash left behind.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

LOCK_FILE = ".lock"
TMP_SUFFIX = ".tmp"


class WriteFailed(OSError):
    """Writing `filename` failed at the OS level (ENOSPC, EIO, EDQUOT, ...): one line naming the file and the
    error. A runtime failure, not bad input (exit status 3, contract.cli)."""

    def __init__(self, path: str | Path, cause: OSError):
        super().__init__(cause.errno, cause.strerror or str(cause), str(path))

    def __str__(self) -> str:
        name = errno.errorcode.get(self.errno or 0, "")
        return f"{self.filename}: write failed: {self.strerror}" + (f" ({name})" if name else "")


class RunDirBusy(BlockingIOError):
    """Another live process holds the directory's lock (bad usage: exit status 2, see contract.cli)."""


@dataclass(frozen=True)
class LockHolder:
    host: str
    pid: int
    since: str  # UTC, ISO 8601

    def describe(self) -> str:
        return f"PID {self.pid} on host {self.host} (since {self.since})"

    @classmethod
    def read(cls, path: Path) -> LockHolder | None:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return cls(str(raw["host"]), int(raw["pid"]), str(raw["since"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None  # empty (a holder that died while writing it) or not ours


class RunLock:
    """Exclusive lock on a directory for one process; a context manager, or acquire() / release()."""

    def __init__(self, directory: str | Path, what: str = "run directory", log: Callable[[str], None] = print):
        self.directory, self.what, self.log = Path(directory), what, log
        self.path = self.directory / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = LockHolder.read(self.path)
            who = holder.describe() if holder else "another process"
            raise RunDirBusy(
                f"{self.directory}: {self.what} in use by {who} (lock {self.path}); wait for it to finish, "
                f"stop it, or choose another directory"
            ) from None
        previous = LockHolder.read(self.path)
        if previous is not None and (previous.host, previous.pid) != (socket.gethostname(), os.getpid()):
            self.log(f"{self.directory}: took over the stale lock of {previous.describe()}, which is no longer running")
        me = LockHolder(socket.gethostname(), os.getpid(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me.__dict__).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)  # a released lock names nobody: the next holder reports no stale take-over
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *_: object) -> None:
        self.release()


def temporary_name(path: str | Path) -> Path:
    """`.NAME.<pid>-<random>.tmp` beside `path`: unique per process and call."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")


def is_temporary(path: Path, of: str = "") -> bool:
    """A temporary file written by `temporary_name` (of a file named `of`, if given)."""
    return path.name.startswith(f".{of}") and path.name.endswith(TMP_SUFFIX)


def remove_temporaries(directory: Path, log: Callable[[str], None] = print) -> list[Path]:
    """Delete the temporaries a crashed writer left in `directory` (call only while holding its lock)."""
    removed = [p for p in directory.glob(f".*{TMP_SUFFIX}") if p.is_file() and is_temporary(p)] if directory.is_dir() else []
    for p in removed:
        p.unlink(missing_ok=True)
    if removed:
        log(f"removed {len(removed)} temporary file(s) left by an interrupted write in {directory}: "
            + ", ".join(p.name for p in removed[:3]) + (" ..." if len(removed) > 3 else ""))
    return removed


class HashingWriter:
    """A write-only file object that hashes and counts every byte on its way to `f`, so a checksum comes
    from the bytes written, before any rename (shards, checkpoints). It keeps the OSError its target raised
    (torch.save and Arrow turn it into less helpful errors). `close` leaves `f` to its owner."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.sha, self.size, self.error, self.closed = f, hashlib.sha256(), 0, None, False

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        try:
            self.f.write(view)
        except OSError as e:
            self.error = e
            raise
        self.sha.update(view)
        self.size += len(view)
        return len(view)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.f.flush()

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True
