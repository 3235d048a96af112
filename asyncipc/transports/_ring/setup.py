"""Setting up a ring pair between two processes: the control socket and what crosses it.

The data path of ``shm://`` and ``mmap://`` is shared memory only; this module is the
small control channel beside it. A listener binds a ``SOCK_SEQPACKET`` Unix socket
(mode 0600, in a directory private to the user). A client connects and sends one JSON
hello; the listener checks the client's uid (``SO_PEERCRED``), makes a segment holding
two rings, and answers with one JSON message carrying three file descriptors
(``SCM_RIGHTS``): the segment, the client's doorbell and the listener's doorbell.
After that the socket stays open and silent: its end-of-file is how each side learns
that the other is gone, even after ``SIGKILL`` (the kernel closes a dead process's
sockets). Anything else arriving on it is a protocol violation.

Every check names what failed: a control socket or segment of another user, a segment
that is not sealed against shrinking (a peer could truncate it under us and turn our
next read into ``SIGBUS``), a reply that is not the expected JSON, the wrong number of
descriptors, descriptors of the wrong kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import mmap
import os
import re
import socket
import stat
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..._logsafe import peer_log
from ...errors import ConfigurationError, ConnectError, CorruptRing, RemoteProtocolError
from ...link import Listener, PeerInfo
from .._unixpath import bind_and_listen, is_live
from .doorbell import EventfdBell
from .ring import RingReader, RingWriter, format_ring, ring_size

__all__ = [
    "DEFAULT_SIZE",
    "ControlListener",
    "Endpoint",
    "SegmentFactory",
    "connect_control",
    "listen_control",
    "parse_size",
    "private_dir",
]

log = logging.getLogger("asyncipc.transport")

DEFAULT_SIZE = 4 * 1024 * 1024
"""Data bytes per ring (per direction) when the URL does not say ``?size=``."""
MIN_SIZE = 64 * 1024
MAX_SIZE = 1024 * 1024 * 1024
HELLO_VERSION = "rings/1"
_MAX_MESSAGE = 4096
_UCRED = struct.Struct("3i")
_SIZE = re.compile(r"\s*(\d+)\s*([kKmMgG]?)(i?[bB])?\s*\Z")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}\Z")

SegmentFactory = Callable[[int, str], tuple[int, Callable[[], None] | None]]
"""Makes the shared segment for one ring pair: (size, label) -> (fd, clean-up or None)."""


def parse_size(text: str | None, what: str = "size") -> int:
    """``"16M"`` -> 16777216 (K, M, G are powers of 1024), rounded up to 4096 bytes."""
    if text is None:
        return DEFAULT_SIZE
    m = _SIZE.match(text)
    if not m:
        raise ConfigurationError(f"bad {what} {text!r}: expected bytes like 65536, 64K or 16M")
    n = int(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]
    n = (n + 4095) & -4096
    if not MIN_SIZE <= n <= MAX_SIZE:
        raise ConfigurationError(f"{what} {text!r} is outside 64K..1G")
    return n


def check_name(name: str, url: str) -> str:
    if not _NAME.match(name):
        raise ConfigurationError(
            f"bad channel name in {url!r}: use 1-100 letters, digits, '.', '_' or '-'"
        )
    return name


def private_dir(path: str, *, create: bool) -> str:
    """``path`` as a directory only this user can enter; made 0700 if missing.

    Refuses a directory of another user, a symbolic link, or one that others may enter:
    the control sockets in it are the way in to this user's shared memory.
    """
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise ConnectError(f"no directory {path}: nothing listens there") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigurationError(f"refusing {path}: it is not a directory")
    if st.st_uid != os.getuid():
        raise ConfigurationError(
            f"refusing {path}: it belongs to uid {st.st_uid}, not to us (uid {os.getuid()})"
        )
    if st.st_mode & 0o077:
        raise ConfigurationError(
            f"refusing {path}: mode {stat.S_IMODE(st.st_mode):04o} lets other users in "
            "(expected 0700)"
        )
    return path


def default_dir() -> str:
    """``/dev/shm/asyncipc-<uid>`` (a RAM file system), or the same under the temp dir."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    return os.path.join(base, f"asyncipc-{os.getuid()}")


def layout(capacity: int) -> tuple[int, int, int]:
    """(segment size, offset of the client->listener ring, of the listener->client ring)."""
    one = (ring_size(capacity) + 4095) & -4096
    return 2 * one, 0, one


def peer_credentials(sock: socket.socket) -> tuple[int | None, int | None, int | None]:
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except (OSError, AttributeError):
        return None, None, None
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


class Segment:
    """A mapped segment and what to do when the link is done with it."""

    def __init__(self, mm: mmap.mmap, cleanup: Callable[[], None] | None = None) -> None:
        self.mm = mm
        self._cleanup = cleanup

    def close(self) -> None:
        cleanup, self._cleanup = self._cleanup, None
        try:
            self.mm.close()
        finally:
            if cleanup is not None:
                cleanup()


@dataclass
class Endpoint:
    """One side of a ring pair, set up and ready for a link or a channel."""

    rx: RingReader
    tx: RingWriter
    bell_in: EventfdBell
    bell_out: EventfdBell
    ctl: socket.socket
    segment: Segment
    peer: PeerInfo
    hello: dict[str, Any]


# --- the listening side --------------------------------------------------------------------


class ControlListener(Listener):
    """A control socket handing out ring pairs; see the module docstring."""

    def __init__(
        self,
        url: str,
        path: str,
        sock: socket.socket,
        *,
        kind: str,
        transport: str,
        address: str,
        capacity: int,
        checksum: bool,
        make_segment: SegmentFactory,
        on_endpoint: Callable[[Endpoint], None],
    ) -> None:
        self.url = url
        self._path = path
        self._sock = sock
        self._ino = os.stat(path).st_ino
        self._kind = kind
        self._transport = transport
        self._address = address
        self._capacity = capacity
        self._checksum = checksum
        self._make_segment = make_segment
        self._on_endpoint = on_endpoint
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self._count = 0
        self._closed = False
        self._loop.add_reader(sock.fileno(), self._on_accept)

    def _on_accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: log, keep listening
                log.warning("%s: accept failed: %s", self.url, exc)
                return
            conn.setblocking(False)
            task = self._loop.create_task(self._serve_one(conn))
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: set-up of a client failed", self.url, exc_info=task.exception())

    async def _serve_one(self, conn: socket.socket) -> None:
        try:
            await self._handshake(conn)
        except BaseException:
            conn.close()  # cancelled (the listener closed) or an unexpected failure
            raise

    async def _handshake(self, conn: socket.socket) -> None:
        pid, uid, gid = peer_credentials(conn)
        who = f"{self._transport} client pid {pid}"
        try:
            try:
                async with asyncio.timeout(5.0):
                    raw = await self._loop.sock_recv(conn, _MAX_MESSAGE + 1)
            except TimeoutError:
                raise _Refused("no hello within 5 s") from None
            # (Read first: closing on unread bytes would reset the socket before the
            # refusal could be read.)
            if uid != os.getuid():
                raise _Refused(f"uid {uid} may not use {self.url} of uid {os.getuid()}")
            hello = _parse_hello(raw, self._kind, self.url)
            capacity = self._capacity
            if hello.get("size") is not None:
                capacity = _checked_size(hello["size"])
            checksum = self._checksum if hello.get("checksum") is None else hello["checksum"]
            self._count += 1
            label = f"asyncipc:{os.getuid()}:{self._address}:{os.getpid()}:{self._count}"
            endpoint = self._make_pair(conn, capacity, bool(checksum), label, hello)
        except _Refused as exc:
            peer_log().warning(
                "ring-refused", "refused %s on %s: %s", who, self.url, exc, logger=log
            )
            with contextlib.suppress(OSError):
                conn.send(json.dumps({"error": str(exc)}).encode())
            conn.close()
            return
        except (OSError, ConnectionError) as exc:
            log.warning("set-up with %s on %s failed: %s", who, self.url, exc)
            conn.close()
            return
        endpoint.peer = PeerInfo(self._transport, self._address, pid, uid, gid)
        self._on_endpoint(endpoint)

    def _make_pair(
        self, conn: socket.socket, capacity: int, checksum: bool, label: str, hello: dict[str, Any]
    ) -> Endpoint:
        total, off_a, off_b = layout(capacity)
        fd, cleanup = self._make_segment(total, label)
        bell_server = bell_client = None
        try:
            mm = mmap.mmap(fd, total)
            segment = Segment(mm, cleanup)
            cleanup = None
            format_ring(mm, capacity, offset=off_a, checksum=checksum)
            format_ring(mm, capacity, offset=off_b, checksum=checksum)
            rx, tx = RingReader(mm, off_a), RingWriter(mm, off_b)
            bell_server, bell_client = EventfdBell(), EventfdBell()
            reply = {
                "ok": True,
                "version": HELLO_VERSION,
                "size": capacity,
                "total": total,
                "offsets": [off_a, off_b],
                "checksum": checksum,
            }
            socket.send_fds(
                conn,
                [json.dumps(reply).encode()],
                [fd, bell_client.fileno(), bell_server.fileno()],
            )
        except BaseException:
            for bell in (bell_server, bell_client):
                if bell is not None:
                    bell.close()
            if cleanup is not None:
                cleanup()
            raise
        finally:
            os.close(fd)  # the mapping holds its own reference
        return Endpoint(
            rx, tx, bell_server, bell_client, conn, segment, PeerInfo(self._transport), hello
        )

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        with contextlib.suppress(OSError):
            if os.stat(self._path).st_ino == self._ino:  # only our own file
                os.unlink(self._path)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))


class _Refused(Exception):
    """A client the listener will not serve, and the reason it is told."""


def _checked_size(value: Any) -> int:
    if type(value) is not int or not MIN_SIZE <= value <= MAX_SIZE or value % 4096:
        raise _Refused(f"ring size {value!r} is not a multiple of 4096 in 64K..1G")
    return value


def _parse_hello(raw: bytes, kind: str, url: str) -> dict[str, Any]:
    if len(raw) > _MAX_MESSAGE:
        raise _Refused(f"hello longer than {_MAX_MESSAGE} bytes")
    if not raw:
        raise _Refused("closed before saying hello")
    try:
        hello = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise _Refused(f"hello is not JSON: {raw[:40]!r}") from None
    if not isinstance(hello, dict) or hello.get("asyncipc") != HELLO_VERSION:
        raise _Refused(f"not an asyncipc {HELLO_VERSION} hello: {raw[:60]!r}")
    if hello.get("kind") != kind:
        raise _Refused(
            f"{url} serves {kind}s; this client asked for a {hello.get('kind')!r} "
            f"({'use asyncipc.connect' if kind == 'link' else 'use connect_channel'})"
        )
    if hello.get("checksum") not in (None, True, False):
        raise _Refused(f"checksum must be true, false or null, not {hello['checksum']!r}")
    return hello


async def listen_control(
    url: str,
    path: str,
    *,
    kind: str,
    transport: str,
    address: str,
    capacity: int,
    checksum: bool,
    make_segment: SegmentFactory,
    on_endpoint: Callable[[Endpoint], None],
) -> ControlListener:
    """Bind the control socket at ``path`` (replacing a dead listener's) and serve."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise ConfigurationError(f"refusing to replace {path}: it exists and is not a socket")
        if st.st_uid != os.getuid():
            raise ConfigurationError(f"refusing {path}: it belongs to uid {st.st_uid}")
        if await is_live(path, socket.SOCK_SEQPACKET):
            raise ConfigurationError(f"{url} is in use: a live listener answers at {path}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        bind_and_listen(sock, path, 0o600, 128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"cannot listen on {url}: {exc.strerror or exc}") from None
    return ControlListener(
        url,
        path,
        sock,
        kind=kind,
        transport=transport,
        address=address,
        capacity=capacity,
        checksum=checksum,
        make_segment=make_segment,
        on_endpoint=on_endpoint,
    )


# --- the connecting side ---------------------------------------------------------------------


async def connect_control(
    url: str,
    path: str,
    *,
    kind: str,
    transport: str,
    address: str,
    size: int | None,
    checksum: bool | None,
    timeout: float,
    sealed: bool,
) -> Endpoint:
    """Connect to the listener at ``path`` and map the ring pair it hands out."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise ConnectError(f"cannot connect to {url}: no control socket at {path}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise ConnectError(f"cannot connect to {url}: {path} is not a socket")
    if st.st_uid != os.getuid():
        raise ConnectError(
            f"refusing {url}: its control socket {path} belongs to uid {st.st_uid}, "
            f"not to us (uid {os.getuid()})"
        )
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.setblocking(False)
    fds: list[int] = []
    try:
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, path)
                pid, uid, gid = peer_credentials(sock)
                if uid != os.getuid():
                    raise ConnectError(f"refusing {url}: the listener runs as uid {uid}")
                hello = {"asyncipc": HELLO_VERSION, "kind": kind, "size": size}
                hello["checksum"] = checksum
                await loop.sock_sendall(sock, json.dumps(hello).encode())
                msg, fds = await _recv_with_fds(sock)
        except ConnectionRefusedError:
            raise ConnectError(f"cannot connect to {url}: nothing listens at {path}") from None
        except TimeoutError:
            raise ConnectError(f"cannot connect to {url}: no answer within {timeout:g} s") from None
        except OSError as exc:
            if isinstance(exc, ConnectError):
                raise
            raise ConnectError(f"cannot connect to {url}: {exc.strerror or exc}") from None
        reply = _parse_reply(msg, fds, url)
        endpoint = _map_pair(reply, fds, sock, url, sealed=sealed)
        fds = []  # owned by the endpoint now
    except BaseException:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        sock.close()
        raise
    endpoint.peer = PeerInfo(transport, address, pid, uid, gid)
    return endpoint


async def _recv_with_fds(sock: socket.socket) -> tuple[bytes, list[int]]:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[tuple[bytes, list[int]]] = loop.create_future()

    def readable() -> None:
        if fut.done():
            return
        try:
            msg, fds, flags, _ = socket.recv_fds(sock, _MAX_MESSAGE, 8)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            fut.set_exception(exc)
            return
        if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
            for fd in fds:
                os.close(fd)
            fut.set_exception(RemoteProtocolError("the listener's reply was truncated"))
            return
        fut.set_result((msg, fds))

    loop.add_reader(sock.fileno(), readable)
    try:
        return await fut
    finally:
        loop.remove_reader(sock.fileno())


def _parse_reply(msg: bytes, fds: list[int], url: str) -> dict[str, Any]:
    if not msg:
        raise ConnectError(f"cannot connect to {url}: the listener hung up during set-up")
    try:
        reply = json.loads(msg)
    except (UnicodeDecodeError, ValueError):
        raise RemoteProtocolError(f"{url}: set-up reply is not JSON: {msg[:40]!r}") from None
    if not isinstance(reply, dict):
        raise RemoteProtocolError(f"{url}: set-up reply is not a JSON object")
    if "error" in reply:
        raise ConnectError(f"{url} refused the connection: {reply['error']}")
    if reply.get("ok") is not True or reply.get("version") != HELLO_VERSION:
        raise RemoteProtocolError(f"{url}: unexpected set-up reply {msg[:80]!r}")
    if len(fds) != 3:
        raise RemoteProtocolError(
            f"{url}: set-up reply carried {len(fds)} file descriptors, expected 3"
        )
    size, total, offsets = reply.get("size"), reply.get("total"), reply.get("offsets")
    if (
        type(size) is not int
        or not MIN_SIZE <= size <= MAX_SIZE
        or (total, offsets) != (layout(size)[0], list(layout(size)[1:]))
    ):
        raise RemoteProtocolError(
            f"{url}: set-up reply has an inconsistent layout: size {size!r}, total {total!r}, "
            f"offsets {offsets!r}"
        )
    return reply


def _fd_kind(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


def _map_pair(
    reply: dict[str, Any], fds: list[int], sock: socket.socket, url: str, *, sealed: bool
) -> Endpoint:
    seg_fd, client_fd, server_fd = fds
    st = os.fstat(seg_fd)
    total = reply["total"]
    if not stat.S_ISREG(st.st_mode):
        raise RemoteProtocolError(f"{url}: the segment descriptor is not a memory file")
    if st.st_uid != os.getuid():
        raise ConnectError(f"refusing {url}: its segment belongs to uid {st.st_uid}")
    if st.st_mode & 0o077:
        raise ConnectError(
            f"refusing {url}: its segment has mode {stat.S_IMODE(st.st_mode):04o} (expected 0600)"
        )
    if st.st_size < total:
        raise RemoteProtocolError(f"{url}: segment of {st.st_size} bytes, expected {total}")
    if sealed:
        seals = fcntl.fcntl(seg_fd, fcntl.F_GET_SEALS)
        if not seals & fcntl.F_SEAL_SHRINK:
            raise RemoteProtocolError(
                f"{url}: the segment is not sealed against shrinking (refused: a truncation "
                "would crash this process with SIGBUS)"
            )
    for fd in (client_fd, server_fd):
        kind = _fd_kind(fd)
        if kind not in ("anon_inode:[eventfd]", "?"):
            raise RemoteProtocolError(f"{url}: a doorbell descriptor is {kind}, not an eventfd")
    _, off_a, off_b = layout(reply["size"])
    mm = mmap.mmap(seg_fd, total)
    os.close(seg_fd)
    try:
        tx = RingWriter(mm, off_a)
    except CorruptRing:
        mm.close()
        raise
    try:
        rx = RingReader(mm, off_b)
    except CorruptRing:
        tx.close()
        mm.close()
        raise
    return Endpoint(
        rx,
        tx,
        EventfdBell(client_fd),
        EventfdBell(server_fd),
        sock,
        Segment(mm),
        PeerInfo("?"),
        reply,
    )
