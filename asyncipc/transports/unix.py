"""``unix:///path.sock``: Unix domain stream sockets.

The socket file is created with mode 0600 (``?mode=0660`` to share with a group): it is
bound under a temporary name, its mode set, then renamed into place, so there is no moment
at which the path exists with looser permissions (``_unixpath.py``). Any path the kernel
takes (107 bytes on Linux) can be listened on; a longer one is refused with its length. A
file left at the path by a dead broker is replaced; a live broker's socket, or anything
that is not a socket, is never touched.
Peer credentials (pid, uid, gid) come from ``SO_PEERCRED``.

The socket buffers stay at the kernel's default (``net.core.wmem_default``, 208 KiB on
Linux), although TCP on loopback grows its own to 4 MiB. On a Unix stream socket only the
sender's ``SO_SNDBUF`` bounds the bytes in flight. Raising it did not help (issue 12):
16 KiB pub/sub through the broker went from 26-31k msgs/s to 20-24k with 1 MiB and
24-29k with 4 MiB, and the broker spent more CPU per message (likely: more bytes in flight
fall out of the CPU caches). At 16 KiB unix:// costs the broker 14-18 us of CPU per
message against 23-28 us for tcp://. What held unix:// back at 16 KiB was the
publisher joining a megabyte batch per turn, which a 208 KiB buffer then took a fifth
at a time; large payloads are now written with ``writev`` beside the joined small
frames (docs/decisions.md, the two "level" targets, session 14).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import stat
import struct
from collections.abc import Callable

from ..errors import ConfigurationError, ConnectError
from ..link import Accept, Link, Listener, PeerInfo
from . import NOBODY, URL, TransportOptions, register
from ._stream.link import StreamLink, StreamListener
from ._unixpath import MAX_PATH, bind_and_listen, is_live

__all__ = ["UnixTransport"]

_UCRED = struct.Struct("3i")


def _path(url: URL) -> str:
    path = url.path if not url.host else f"/{url.host}{url.path}"
    if not path or path == "/":
        raise ConfigurationError(f"unix URL {url.raw!r} has no socket path (unix:///path.sock)")
    size = len(os.fsencode(path))
    if size > MAX_PATH:
        raise ConfigurationError(
            f"unix URL {url.raw!r}: the socket path is {size} bytes long, a Unix socket's "
            f"can be {MAX_PATH} at most"
        )
    return path


def _peer_info(path: str) -> Callable[[asyncio.Transport], PeerInfo]:
    def info(tr: asyncio.Transport) -> PeerInfo:
        sock = tr.get_extra_info("socket")
        pid = uid = gid = None
        if sock is not None and hasattr(socket, "SO_PEERCRED"):
            with contextlib.suppress(OSError):
                raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
                pid, uid, gid = _UCRED.unpack(raw)
        return PeerInfo("unix", path, pid, uid, gid)

    return info


class UnixTransport:
    """The ``unix`` scheme."""

    async def connect(self, url: URL, options: TransportOptions) -> Link:
        path = _path(url)
        loop = asyncio.get_running_loop()
        info = _peer_info(path)
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            # that lands as the connect fails, which left a cancelled redial running.
            async with asyncio.timeout(options.connect_timeout):
                _, link = await loop.create_unix_connection(
                    lambda: StreamLink("unix", options, server_side=False, peer_info=info),
                    path,
                )
        except FileNotFoundError:
            raise ConnectError(
                f"cannot connect to {url.raw}: no socket at {path}{NOBODY}"
            ) from None
        except ConnectionRefusedError:
            raise ConnectError(f"cannot connect to {url.raw}: connection refused{NOBODY}") from None
        except TimeoutError:
            raise ConnectError(f"cannot connect to {url.raw}: timed out") from None
        except OSError as exc:
            raise ConnectError(f"cannot connect to {url.raw}: {exc.strerror or exc}") from None
        return link

    async def listen(self, url: URL, accept: Accept, options: TransportOptions) -> Listener:
        path = _path(url)
        try:
            mode = int(url.query.get("mode", "600"), 8)
        except ValueError:
            raise ConfigurationError(f"bad mode in {url.raw!r}: expected octal like 0600") from None
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise ConfigurationError(
                    f"refusing to replace {path}: it exists and is not a socket"
                )
            if await is_live(path):
                raise ConfigurationError(f"{path} is in use: a live server is listening there")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            bind_and_listen(sock, path, mode, 512)
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise ConfigurationError(
                    f"cannot create socket at {path}: permission denied"
                ) from None
            raise ConfigurationError(f"cannot listen on {url.raw}: {exc.strerror or exc}") from None
        ino = os.stat(path).st_ino
        info = _peer_info(path)

        def factory() -> StreamLink:
            # Accepted once connected, when its peer (address, uid) is known: the
            # broker's per-peer limits need it before it takes the link.
            return StreamLink(
                "unix", options, server_side=True, peer_info=info, on_connected=accept
            )

        server = await asyncio.get_running_loop().create_unix_server(factory, sock=sock)

        def remove_socket_file() -> None:
            # Only our own file: a newer broker may have replaced it meanwhile.
            with contextlib.suppress(OSError):
                if os.stat(path).st_ino == ino:
                    os.unlink(path)

        return StreamListener(f"unix://{path}", server, remove_socket_file)


register("unix", UnixTransport())
