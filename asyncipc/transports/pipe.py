"""``pipe:``: child services wired to their parent's broker over anonymous pipes.

A parent that runs a broker starts a child with :meth:`asyncipc.Broker.spawn` (or
:func:`spawn_child` with any ``accept`` callback). Two ``os.pipe()`` pairs are made, the
child inherits one end of each, and the environment variable :data:`ENV_VAR`
(``ASYNCIPC_PIPE_FDS="r,w"``) tells it which: in the child, ``asyncipc.connect("pipe:")``
reads it. The child's stdin, stdout and stderr are left alone for the child's own use.

URLs a client connects to:

* ``pipe:`` — the pipes this process inherited, named by ``$ASYNCIPC_PIPE_FDS`` (removed
  from the environment once used, and the descriptors made non-inheritable, so the
  child's own children do not pick them up);
* ``pipe:?fds=R,W`` — explicit descriptors: read frames from ``R``, write to ``W`` (for
  a process that got its pipes some other way, e.g. from a supervisor);
* ``pipe://name`` — a fresh pair of pipes to the broker that listens on ``pipe://name``
  in this event loop (``broker.listen("pipe://name")``). Slower than ``memory://`` and
  useful mainly to run the stream framing over real pipes in one process (tests, measuring).

Pipes carry the same preamble, handshake and frames as stream sockets (``_stream``). They
have no peer credentials; the broker knows a spawned child's pid because it started it.
Either side's exit closes its ends of the pipes, which the other side sees as EOF: the
broker drops a child's session and subscriptions, and a child's bus breaks with
:class:`~asyncipc.BrokenLinkError` ("pipe parent pid=N closed the connection").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ConfigurationError, ConnectError
from ..link import Accept, Link, Listener, PeerInfo
from . import URL, TransportOptions, register
from ._stream.link import StreamLink
from ._stream.pipes import check_pipe_fd, open_pipe_link

__all__ = ["ENV_VAR", "PipeChild", "PipeTransport", "attach", "parse_fds", "spawn_child"]

ENV_VAR = "ASYNCIPC_PIPE_FDS"
"""Names the inherited pipes in a spawned child: ``"R,W"``, the descriptor the child
reads frames from and the one it writes frames to."""

# Per event loop: name -> (accept, options) of the broker listening on pipe://name.
_listeners: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[str, tuple[Accept, TransportOptions]]
] = weakref.WeakKeyDictionary()

_env_used: str | None = None  # the value of $ASYNCIPC_PIPE_FDS a bus already took


def parse_fds(text: str, where: str) -> tuple[int, int]:
    """``"R,W"`` → ``(R, W)``; ConfigurationError naming ``where`` the text came from."""
    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        r, w = int(parts[0]), int(parts[1])
    except ValueError:
        raise ConfigurationError(
            f"{where}={text!r} is not 'R,W' (two file descriptor numbers, read then write)"
        ) from None
    if r < 0 or w < 0 or r == w:
        raise ConfigurationError(f"{where}={text!r}: need two different non-negative descriptors")
    return r, w


def _pipes() -> tuple[tuple[int, int], tuple[int, int]]:
    """Two fresh pipes, (read, write) each; the second is closed if the first fails."""
    a = os.pipe()
    try:
        b = os.pipe()
    except BaseException:
        os.close(a[0])
        os.close(a[1])
        raise
    return a, b


class PipeChild:
    """A child process started by :meth:`asyncipc.Broker.spawn`, wired to the broker
    over two pipes.

    ``process`` is the :class:`asyncio.subprocess.Process`; ``link`` the broker's end of
    the pipes, which the broker adopts as a client once the child first speaks (so a
    child slow to start is not held to the handshake time-out from the fork on). The
    child's exit closes the link: the broker drops its session and subscriptions.
    """

    def __init__(self, process: asyncio.subprocess.Process, link: StreamLink) -> None:
        self.process = process
        self.link: Link = link

    def __repr__(self) -> str:
        return f"<PipeChild pid={self.pid} returncode={self.returncode}>"

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once the child has exited (negative: killed by that signal)."""
        return self.process.returncode

    async def wait(self) -> int:
        """Wait until the child has exited *and* its link is closed (so the broker has
        dropped its subscriptions); return the exit status."""
        code = await self.process.wait()
        await self.link.wait_closed()
        return code

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the child, unless it has already exited."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)

    def terminate(self) -> None:
        """SIGTERM to the child, unless it has already exited."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to the child, unless it has already exited."""
        self.send_signal(signal.SIGKILL)

    async def aclose(self, timeout: float = 5.0) -> int:
        """Stop the child: close its link (an asyncipc child sees its parent go and its
        bus breaks), wait ``timeout`` seconds for it to exit, then SIGTERM, and after
        another ``timeout`` SIGKILL. Returns the exit status."""
        self.link.close()
        for escalate in (self.terminate, self.kill):
            try:
                async with asyncio.timeout(timeout):
                    return await self.wait()
            except TimeoutError:
                escalate()
        return await self.wait()

    async def __aenter__(self) -> PipeChild:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


async def spawn_child(
    accept: Accept,
    argv: Sequence[str],
    options: TransportOptions | None = None,
    *,
    env: Mapping[str, str] | None = None,
    pass_fds: Sequence[int] = (),
    **popen_kwargs: Any,
) -> PipeChild:
    """Start ``argv`` with a pair of inherited pipes and hand the parent's end, as a
    link, to ``accept`` when the child first writes to it.

    ``env`` is the child's environment (default: this process's) plus
    :data:`ENV_VAR`. Other keyword arguments go to
    :func:`asyncio.create_subprocess_exec` (``stdin``, ``stdout``, ``cwd``, ...). Raises
    what starting the process raises (``FileNotFoundError`` for a missing program).
    """
    if isinstance(argv, (str, bytes)):
        raise ConfigurationError(
            f"argv must be a list of arguments, not a string: [{argv!r}] or shlex.split()"
        )
    if not argv:
        raise ConfigurationError("argv is empty: nothing to start")
    options = options or TransportOptions()
    (down_r, down_w), (up_r, up_w) = _pipes()  # down: parent -> child; up: child -> parent
    environ = dict(os.environ if env is None else env)
    environ[ENV_VAR] = f"{down_r},{up_w}"
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, env=environ, pass_fds=(*pass_fds, down_r, up_w), **popen_kwargs
        )
    except BaseException as exc:
        for fd in (up_r, down_w):
            os.close(fd)
        if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
            # uvloop does not say which program it could not start; the caller should hear.
            raise type(exc)(exc.errno, exc.strerror, argv[0]) from None
        raise
    finally:
        # The child has its own copies now (or there is no child): ours would keep its
        # ends open after it exits and hide its EOF.
        os.close(down_r)
        os.close(up_w)
    peer = PeerInfo("pipe", "child", pid=process.pid)
    link = StreamLink("pipe", options, server_side=True, peer_info=lambda _: peer)
    await open_pipe_link(link, up_r, down_w, on_first_data=accept)
    return PipeChild(process, link)


async def attach(
    accept: Accept, read_fd: int, write_fd: int, options: TransportOptions | None = None
) -> Link:
    """Serve a client on pipes made some other way: the broker reads the client's frames
    from ``read_fd`` and writes to ``write_fd`` (both now owned by the link). The client,
    holding the other ends, connects with ``pipe:?fds=R,W``::

        (c_r, b_w), (b_r, c_w) = os.pipe(), os.pipe()
        await asyncipc.transports.pipe.attach(broker.attach, b_r, b_w)
        bus = await asyncipc.connect(f"pipe:?fds={c_r},{c_w}")

    ``accept`` (the broker's ``attach``) gets the link when the client first speaks.
    Raises :class:`~asyncipc.ConnectError` if a descriptor is not an open pipe.
    """
    for fd in (read_fd, write_fd):
        problem = check_pipe_fd(fd)
        if problem is not None:
            raise ConnectError(f"cannot serve on pipes: {problem}")
    peer = PeerInfo("pipe", f"fds={read_fd},{write_fd}")
    link = StreamLink(
        "pipe", options or TransportOptions(), server_side=True, peer_info=lambda _: peer
    )
    return await open_pipe_link(link, read_fd, write_fd, on_first_data=accept)


class _PipeListener(Listener):
    def __init__(self, name: str, loop: asyncio.AbstractEventLoop) -> None:
        self.url = f"pipe://{name}"
        self._name = name
        self._loop = loop

    async def aclose(self) -> None:
        _listeners.get(self._loop, {}).pop(self._name, None)


class PipeTransport:
    """The ``pipe`` scheme; see the module docstring for the three URL forms."""

    async def connect(self, url: URL, options: TransportOptions) -> Link:
        global _env_used
        fds = url.query.get("fds")
        if fds is not None:
            r, w = parse_fds(fds, f"{url.raw}: fds")
            return await self._open(r, w, options, PeerInfo("pipe", f"fds={r},{w}"))
        if url.name:
            return await self._in_process(url, options)
        text = os.environ.get(ENV_VAR)
        if text is None:
            if _env_used is not None:
                raise ConnectError(
                    f"cannot connect to pipe: the inherited pipes (${ENV_VAR}={_env_used}) "
                    "are already used by another bus of this process"
                )
            raise ConnectError(
                f"cannot connect to pipe: ${ENV_VAR} is not set; pipe: is for a child "
                "started by Broker.spawn() or asyncipc.spawn_peer() (or use pipe:?fds=R,W)"
            )
        r, w = parse_fds(text, f"${ENV_VAR}")
        link = await self._open(r, w, options, PeerInfo("pipe", "parent", pid=os.getppid()))
        # Used once: a second bus, or a child of ours, must not read from the same pipes.
        _env_used = text
        os.environ.pop(ENV_VAR, None)
        return link

    async def _open(self, r: int, w: int, options: TransportOptions, peer: PeerInfo) -> Link:
        for fd in (r, w):
            problem = check_pipe_fd(fd)
            if problem is not None:
                raise ConnectError(f"cannot connect to pipe: {problem}")
        link = StreamLink("pipe", options, server_side=False, peer_info=lambda _: peer)
        try:
            return await open_pipe_link(link, r, w)
        except OSError as exc:
            raise ConnectError(f"cannot connect to pipe: {exc.strerror or exc}") from None

    async def _in_process(self, url: URL, options: TransportOptions) -> Link:
        entry = _listeners.get(asyncio.get_running_loop(), {}).get(url.name)
        if entry is None:
            raise ConnectError(
                f"no broker listens on pipe://{url.name} in this event loop "
                "(a spawned child connects with pipe:)"
            )
        accept, server_options = entry
        (down_r, down_w), (up_r, up_w) = _pipes()
        peer = PeerInfo("pipe", f"pipe://{url.name}", pid=os.getpid())
        server = StreamLink("pipe", server_options, server_side=True, peer_info=lambda _: peer)
        client = StreamLink("pipe", options, server_side=False, peer_info=lambda _: peer)
        try:
            await open_pipe_link(server, up_r, down_w)
        except BaseException:
            for fd in (down_r, up_w):
                os.close(fd)
            raise
        accept(server)
        try:
            return await open_pipe_link(client, down_r, up_w)
        except BaseException:
            server.abort()
            raise

    async def listen(self, url: URL, accept: Accept, options: TransportOptions) -> Listener:
        if "fds" in url.query or not url.name:
            raise ConfigurationError(
                f"cannot listen on {url.raw!r}: a broker listens on pipe://name (for clients "
                "in this event loop); to start a child over pipes use Broker.spawn()"
            )
        loop = asyncio.get_running_loop()
        names = _listeners.setdefault(loop, {})
        if url.name in names:
            raise ConfigurationError(f"pipe://{url.name} already has a broker in this loop")
        names[url.name] = (accept, options)
        return _PipeListener(url.name, loop)


register("pipe", PipeTransport())
