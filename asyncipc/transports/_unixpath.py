"""Unix socket files that a listener owns: what ``unix://`` and the ring transports'
control sockets share.

A listener's socket file is bound under a temporary name in the same directory, its mode
set, listening, then renamed into place: there is no moment at which the path exists with
looser permissions, or exists and refuses connections, and a stale file left by a dead
listener is replaced atomically. The temporary name is short and random, cut to fit, so
that any path the kernel takes can be listened on (but for a one-byte file name at exactly
:data:`MAX_PATH` bytes).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket

__all__ = ["MAX_PATH", "bind_and_listen", "is_live"]

MAX_PATH = 107
"""Bytes of a Unix socket path at most: ``sun_path`` holds 108 with the final NUL (Linux)."""


def _temporary(path: str) -> str:
    """A name to bind under before renaming to ``path``: in its directory (a rename does
    not cross file systems), random, and as short as the path allows."""
    directory = os.path.dirname(path)
    room = MAX_PATH - len(os.fsencode(directory)) - len("/.")
    # 8 random hex digits when they fit; with fewer, a clash is only a bind to redo.
    return f"{directory}/.{os.urandom(4).hex()[: max(1, min(8, room))]}"


def bind_and_listen(sock: socket.socket, path: str, mode: int, backlog: int) -> None:
    """Bind ``sock`` (``AF_UNIX``) at ``path`` with permissions ``mode`` and listen, by way
    of a temporary name renamed into place. Raises :class:`OSError`, having removed what it
    created; the caller closes ``sock``."""
    tmp: str | None = None  # set once bound: only then is the file ours to remove
    try:
        for _ in range(16):
            name = _temporary(path)
            try:
                sock.bind(name)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    continue  # a file has that name: draw another
                raise
            tmp = name
            break
        else:
            raise OSError(errno.EADDRINUSE, "no free temporary name beside the socket")
        os.chmod(tmp, mode)
        sock.listen(backlog)
        os.rename(tmp, path)  # atomic: replaces a stale socket file, never half-exists
    except OSError:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise


async def is_live(path: str, kind: socket.SocketKind = socket.SOCK_STREAM) -> bool:
    """True if something accepts connections at ``path`` (so it is not a stale file)."""
    probe = socket.socket(socket.AF_UNIX, kind)
    probe.setblocking(False)
    try:
        async with asyncio.timeout(1.0):
            await asyncio.get_running_loop().sock_connect(probe, path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except (OSError, TimeoutError):
        return True  # something is there and not refusing: leave it alone
    finally:
        probe.close()
    return True
