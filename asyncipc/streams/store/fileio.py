"""The file operations the file store makes, behind one small interface.

:class:`~asyncipc.streams.store.filelog.FileLog` does every write, sync, truncation and
deletion through a :class:`FileIO`. :class:`OsFileIO` is the real thing.
:class:`PowerCutIO` performs the same real operations but remembers what an fsync made
durable, so that :meth:`PowerCutIO.power_cut` can put the files back the way a power cut
would leave them: each file cut to the length its last fsync covered, each file created
since the last fsync of its directory gone. That is how the tests prove that with
``fsync="always"`` no acknowledged record is lost, and measure what ``"interval"`` and
``"never"`` lose. It ships in the package so that a test's child process can use it too:
with a ``journal`` file it logs every durable step, and
:meth:`PowerCutIO.replay_power_cut` applies the cut from another process after the child
was killed.

Every method blocks; the store calls them from its own threads, never from the event loop.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Protocol

__all__ = ["FileIO", "OsFileIO", "PowerCutIO"]


class FileIO(Protocol):
    """The blocking file operations of the store (paths are ``str``, files are fds)."""

    def makedirs(self, path: str) -> None:
        """Create ``path`` and its parents if missing."""
        ...

    def listdir(self, path: str) -> list[str]:
        """The names in directory ``path``."""
        ...

    def open(self, path: str, *, write: bool = False, create: bool = False) -> int:
        """An fd: read-only, or (``write``) read-write in append mode; ``create`` makes a
        new file (it must not exist: ``FileExistsError``)."""
        ...

    def close(self, fd: int) -> None:
        """Close ``fd``."""
        ...

    def append(self, fd: int, data: bytes) -> None:
        """Write all of ``data`` at the end of the file."""
        ...

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (fewer only at the end of the file)."""
        ...

    def size(self, fd: int) -> int:
        """The file's length."""
        ...

    def truncate(self, fd: int, size: int) -> None:
        """Cut the file to ``size`` bytes."""
        ...

    def fsync(self, fd: int) -> None:
        """Make the file's data and metadata durable."""
        ...

    def fdatasync(self, fd: int) -> None:
        """Make the file's data (and its length) durable."""
        ...

    def fsync_dir(self, path: str) -> None:
        """Make the directory's entries (files created, removed) durable."""
        ...

    def unlink(self, path: str) -> None:
        """Remove the file ``path``."""
        ...


class OsFileIO:
    """:class:`FileIO` with the real ``os`` calls."""

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def open(self, path: str, *, write: bool = False, create: bool = False) -> int:
        flags = os.O_RDWR | os.O_APPEND if write else os.O_RDONLY
        if create:
            flags |= os.O_CREAT | os.O_EXCL
        return os.open(path, flags | getattr(os, "O_CLOEXEC", 0), 0o644)

    def close(self, fd: int) -> None:
        os.close(fd)

    def append(self, fd: int, data: bytes) -> None:
        n = os.write(fd, data)
        if n < len(data):  # a short write (a signal, a nearly full disk): finish it
            view = memoryview(data)
            while n < len(data):
                n += os.write(fd, view[n:])

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        data = os.pread(fd, size, offset)
        if len(data) < size:
            parts = [data]
            got = len(data)
            while got < size:
                more = os.pread(fd, size - got, offset + got)
                if not more:
                    break
                parts.append(more)
                got += len(more)
            data = b"".join(parts)
        return data

    def size(self, fd: int) -> int:
        return os.fstat(fd).st_size

    def truncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def fdatasync(self, fd: int) -> None:
        if sys.platform == "darwin":  # pragma: no cover - no fdatasync there
            os.fsync(fd)
        else:
            os.fdatasync(fd)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def unlink(self, path: str) -> None:
        os.unlink(path)


class PowerCutIO(OsFileIO):
    """:class:`OsFileIO` that remembers what was made durable, for power-cut tests.

    Files it did not create are taken as durable at the length it first saw them with.
    A file's contents are durable up to the length its last ``fsync``/``fdatasync``
    covered; a file it created is durable once its directory was fsynced afterwards.
    Removing a file is taken as durable at once (the store never relies on a removal
    for what it acknowledges).

    :meth:`power_cut` applies that to the real files, and from then on every operation
    fails with ``EIO``: the machine is off. With ``journal``, every durable step is also
    appended to that file, so :meth:`replay_power_cut` can apply the cut from another
    process (after a child that used this was killed with SIGKILL).
    """

    def __init__(self, journal: str | os.PathLike[str] | None = None) -> None:
        self._lock = threading.Lock()
        self._paths: dict[int, str] = {}
        self._durable: dict[str, int] = {}
        self._unsynced: set[str] = set()  # created, directory not fsynced since
        self._dead = False
        self._journal = (
            os.open(os.fspath(journal), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if journal is not None
            else None
        )
        self.fsyncs = 0
        """fsync/fdatasync calls on files so far."""

    def _log(self, line: str) -> None:
        if self._journal is not None:
            os.write(self._journal, (line + "\n").encode("utf-8", "surrogateescape"))

    def _alive(self) -> None:
        if self._dead:
            raise OSError(5, "Input/output error (the power was cut)")

    def open(self, path: str, *, write: bool = False, create: bool = False) -> int:
        with self._lock:
            self._alive()
            path = os.path.abspath(path)
            existed = os.path.exists(path)
            fd = super().open(path, write=write, create=create)
            self._paths[fd] = path
            if path not in self._durable:
                if existed:
                    self._durable[path] = os.fstat(fd).st_size
                    self._log(f"O\t{self._durable[path]}\t{path}")
                else:
                    self._durable[path] = 0
                    self._unsynced.add(path)
                    self._log(f"C\t0\t{path}")
            return fd

    def close(self, fd: int) -> None:
        with self._lock:
            self._paths.pop(fd, None)
            super().close(fd)

    def append(self, fd: int, data: bytes) -> None:
        with self._lock:
            self._alive()
            super().append(fd, data)

    def truncate(self, fd: int, size: int) -> None:
        with self._lock:
            self._alive()
            super().truncate(fd, size)
            path = self._paths[fd]
            if self._durable.get(path, 0) > size:
                self._durable[path] = size
                self._log(f"T\t{size}\t{path}")

    def _synced(self, fd: int) -> None:
        path = self._paths[fd]
        size = os.fstat(fd).st_size
        self._durable[path] = size
        self.fsyncs += 1
        self._log(f"S\t{size}\t{path}")

    def fsync(self, fd: int) -> None:
        with self._lock:
            self._alive()
            super().fsync(fd)
            self._synced(fd)

    def fdatasync(self, fd: int) -> None:
        with self._lock:
            self._alive()
            super().fdatasync(fd)
            self._synced(fd)

    def fsync_dir(self, path: str) -> None:
        with self._lock:
            self._alive()
            super().fsync_dir(path)
            path = os.path.abspath(path)
            done = {p for p in self._unsynced if os.path.dirname(p) == path}
            self._unsynced -= done
            self._log(f"D\t0\t{path}")

    def unlink(self, path: str) -> None:
        with self._lock:
            self._alive()
            super().unlink(path)
            path = os.path.abspath(path)
            self._durable.pop(path, None)
            self._unsynced.discard(path)
            self._log(f"U\t0\t{path}")

    def makedirs(self, path: str) -> None:
        with self._lock:
            self._alive()
            super().makedirs(path)

    def power_cut(self, *, torn: int = 0) -> dict[str, int]:
        """Cut the power: every file goes back to what its last fsync made durable (plus
        up to ``torn`` bytes of what followed, a write the disk had half done), every file
        created since its directory's last fsync disappears. Every later call fails with
        EIO. Returns, per file, the bytes no fsync covered (``-1``: the file itself was
        never made durable), the ``torn`` bytes kept included."""
        with self._lock:
            self._dead = True
            return _cut(self._durable, self._unsynced, torn)

    @staticmethod
    def replay_power_cut(journal: str | os.PathLike[str], *, torn: int = 0) -> dict[str, int]:
        """:meth:`power_cut` from the ``journal`` a :class:`PowerCutIO` wrote (in another
        process, killed since). Returns what :meth:`power_cut` returns."""
        durable: dict[str, int] = {}
        unsynced: set[str] = set()
        with open(journal, "rb") as f:
            lines = f.read().decode("utf-8", "surrogateescape").split("\n")
        for line in lines:
            parts = line.split("\t", 2)
            if len(parts) != 3 or not parts[1].isdigit():
                continue  # the last line, cut by the kill
            op, n, path = parts[0], int(parts[1]), parts[2]
            if op in ("O", "S"):
                durable[path] = n
            elif op == "C":
                durable[path] = 0
                unsynced.add(path)
            elif op == "T":
                durable[path] = min(durable.get(path, n), n)
            elif op == "D":
                unsynced -= {p for p in unsynced if os.path.dirname(p) == path}
            elif op == "U":
                durable.pop(path, None)
                unsynced.discard(path)
        return _cut(durable, unsynced, torn)


def _cut(durable: dict[str, int], unsynced: set[str], torn: int) -> dict[str, int]:
    lost: dict[str, int] = {}
    for path, size in durable.items():
        try:
            if path in unsynced:
                os.unlink(path)
                lost[path] = -1
                continue
            actual = os.path.getsize(path)
            keep = min(actual, size + torn)
            if actual > keep:
                os.truncate(path, keep)
            lost[path] = max(0, actual - size)
        except FileNotFoundError:
            continue
    return lost
