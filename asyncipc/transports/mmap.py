"""``mmap:///path``: the rings of ``shm://``, backed by files that outlive the processes.

Two uses, one file format (a ring file is a ring header and its data, ``docs/shm.md``;
records always carry a CRC-32 here):

* **A broker transport.** ``mmap:///dir`` names a private directory (0700, made if
  missing). The broker binds ``dir/broker.sock`` (the control socket, as for ``shm://``)
  and gives each client a ring pair in a file ``dir/conn-<broker pid>-<n>.ring``, passed
  over the socket as a descriptor. The file is removed when the link closes; files of
  brokers that died are removed when a broker next listens there. Sessions do not
  survive their link, as on every transport: this form is for inspecting or keeping the
  bytes on a file system of your choice, not for resuming.
* **Durable one-way rings.** :func:`open_writer` and :func:`open_reader` attach to one
  ring file by path, with no broker and no control socket: a writer process and a reader
  process that come and go independently. A reader that restarts resumes at the first
  record it did not consume; a writer that restarts continues after the last record it
  committed; a record torn by a machine crash (or anything else that breaks its length,
  header check or CRC) is skipped, logged and counted, never delivered. Doorbells are
  FIFOs beside the file (``path.bell`` wakes the reader, ``path.space`` the writer); each
  role holds a lock on its FIFO, so a second writer or reader is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import mmap
import os
import re
import stat
from collections.abc import Callable

from ..errors import ConfigurationError
from ..link import Accept, Link, Listener, PeerInfo
from . import URL, TransportOptions, register
from ._ring.channel import RingChannel
from ._ring.doorbell import FifoBell
from ._ring.link import RingLink
from ._ring.port import DEFAULT_SPIN
from ._ring.ring import RingReader, RingWriter, format_ring, ring_size
from ._ring.setup import (
    Endpoint,
    Segment,
    connect_control,
    listen_control,
    parse_size,
    private_dir,
)

__all__ = ["MmapTransport", "open_reader", "open_writer"]

CONTROL = "broker.sock"
_CONN = re.compile(r"conn-(\d+)-\d+\.ring\Z")


def _dir(url: URL) -> str:
    path = url.path if not url.host else f"/{url.host}{url.path}"
    if not path or path == "/":
        raise ConfigurationError(f"mmap URL {url.raw!r} has no directory (mmap:///path/dir)")
    unknown = set(url.query) - {"size", "spin"}
    if unknown:
        raise ConfigurationError(f"unknown option(s) {sorted(unknown)} in {url.raw!r}")
    return path.rstrip("/") or "/"


def _spin(url: URL) -> float:
    try:
        spin = float(url.query.get("spin", DEFAULT_SPIN))
    except ValueError:
        spin = -1.0
    if not 0 <= spin <= 1:
        raise ConfigurationError(f"bad spin in {url.raw!r}: seconds between 0 and 1")
    return spin


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(directory: str) -> list[str]:
    """Remove ring files of brokers that are no longer running; return their names."""
    removed = []
    for entry in os.listdir(directory):
        m = _CONN.match(entry)
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, entry))
            removed.append(entry)
    return removed


def file_segments(directory: str) -> Callable[[int, str], tuple[int, Callable[[], None]]]:
    """A segment factory making ``conn-<pid>-<n>.ring`` files, removed with their link."""
    counter = itertools.count(1)

    def make(size: int, label: str) -> tuple[int, Callable[[], None]]:
        path = os.path.join(directory, f"conn-{os.getpid()}-{next(counter)}.ring")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, size)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise

        def remove() -> None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

        return fd, remove

    return make


def _check_platform() -> None:
    if not hasattr(os, "eventfd"):
        raise ConfigurationError("mmap:// broker links need Linux (eventfd, SCM_RIGHTS)")


class MmapTransport:
    """The ``mmap`` scheme (broker links over ring files)."""

    async def connect(self, url: URL, options: TransportOptions) -> Link:
        _check_platform()
        directory = private_dir(_dir(url), create=False)
        size = parse_size(url.query["size"]) if "size" in url.query else None
        endpoint = await connect_control(
            url.raw,
            os.path.join(directory, CONTROL),
            kind="link",
            transport="mmap",
            address=directory,
            size=size,
            checksum=True,
            timeout=options.connect_timeout,
            sealed=False,  # a file cannot be sealed; the 0700 directory guards it
        )
        return RingLink.from_endpoint(endpoint, "mmap", options, _spin(url), server=False)

    async def listen(self, url: URL, accept: Accept, options: TransportOptions) -> Listener:
        _check_platform()
        directory = private_dir(_dir(url), create=True)
        spin = _spin(url)
        remove_leftovers(directory)

        def on_endpoint(endpoint: Endpoint) -> None:
            accept(RingLink.from_endpoint(endpoint, "mmap", options, spin, server=True))

        return await listen_control(
            f"mmap://{directory}",
            os.path.join(directory, CONTROL),
            kind="link",
            transport="mmap",
            address=directory,
            capacity=parse_size(url.query.get("size")),
            checksum=True,
            make_segment=file_segments(directory),
            on_endpoint=on_endpoint,
        )


# --- durable one-way rings ------------------------------------------------------------------


def _map_ring_file(path: str, size: int | str | None) -> mmap.mmap:
    """Map the ring file at ``path``, creating it (atomically: made whole under a temporary
    name, then linked into place) if it does not exist. An existing file keeps its size."""
    capacity = parse_size(size if isinstance(size, str) or size is None else str(size))
    if not os.path.exists(path):
        total = (ring_size(capacity) + 4095) & -4096
        tmp = f"{path}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, total)
            with mmap.mmap(fd, total) as mm:
                format_ring(mm, capacity, checksum=True)
            with contextlib.suppress(FileExistsError):  # another end made it first: fine
                os.link(tmp, path)
        finally:
            os.close(fd)
            os.unlink(tmp)
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigurationError(f"refusing {path}: not a regular file")
        if st.st_uid != os.getuid():
            raise ConfigurationError(
                f"refusing {path}: it belongs to uid {st.st_uid}, not to us (uid {os.getuid()})"
            )
        if st.st_size < 4096:
            raise ConfigurationError(f"{path} is not a ring file ({st.st_size} bytes)")
        return mmap.mmap(fd, st.st_size)
    finally:
        os.close(fd)


def _locked_waiter(path: str, role: str, ring: str) -> FifoBell:
    bell = FifoBell(path, waiter=True)
    try:
        fcntl.flock(bell.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        bell.close()
        raise ConfigurationError(f"{ring} already has a live {role}") from None
    return bell


async def open_writer(
    path: str | os.PathLike[str], *, size: int | str | None = None, spin: float = DEFAULT_SPIN
) -> RingChannel:
    """The writing end of the durable ring file at ``path`` (made with ``size`` data bytes,
    default 4M, if missing). ``await w.send(data)`` appends a record; it returns once the
    record is committed (in the page cache: it survives this process, not a power cut).
    ``aclose()`` waits for queued records; it writes no FIN, the writer may come back."""
    path = os.fspath(path)
    mm = _map_ring_file(path, size)
    try:
        tx = RingWriter(mm)
    except BaseException:
        mm.close()
        raise
    try:
        bell_in = _locked_waiter(f"{path}.space", "writer", path)
    except BaseException:
        tx.close()
        mm.close()
        raise
    return RingChannel(
        peer=PeerInfo("mmap", path),
        rx=None,
        tx=tx,
        bell_in=bell_in,
        bell_out=FifoBell(f"{path}.bell", waiter=False),
        ctl=None,
        segment=Segment(mm),
        spin=spin,
        fin=False,
    )


async def open_reader(
    path: str | os.PathLike[str], *, size: int | str | None = None, spin: float = DEFAULT_SPIN
) -> RingChannel:
    """The reading end of the durable ring file at ``path`` (made if missing, as for
    :func:`open_writer`). ``recv()`` consumes a record as it returns it (at most once);
    ``recv_record()`` consumes it on release, so a reader that dies holding it gets it
    again (at least once). Torn records are skipped: ``skipped_records`` counts them."""
    path = os.fspath(path)
    mm = _map_ring_file(path, size)
    try:
        rx = RingReader(mm)
    except BaseException:
        mm.close()
        raise
    try:
        bell_in = _locked_waiter(f"{path}.bell", "reader", path)
    except BaseException:
        rx.close()
        mm.close()
        raise
    return RingChannel(
        peer=PeerInfo("mmap", path),
        rx=rx,
        tx=None,
        bell_in=bell_in,
        bell_out=FifoBell(f"{path}.space", waiter=False),
        ctl=None,
        segment=Segment(mm),
        spin=spin,
        fin=False,
        torn="skip",
    )


register("mmap", MmapTransport())
