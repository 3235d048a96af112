"""``asyncipc.spawn_peer``: a parent and one child over pipes, no broker process between.

The child is an ordinary asyncipc program (``asyncipc.connect("pipe:")``); the parent
gets a :class:`~asyncipc.Bus` as usual. Routing has to happen somewhere, since both ends
are clients of the protocol: it happens in the parent, in a private
:class:`~asyncipc.Broker` that only these two use. The parent's bus reaches it through
``memory://`` (no encoding, no copy, no system call) and the child through the pipes, so
a message between the two crosses the kernel once, where a broker process makes it cross
twice (publisher → broker → subscriber).
"""

from __future__ import annotations

import os
from collections.abc import Generator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ._connect import connect
from .broker import Broker
from .client import Bus
from .options import BrokerOptions, ConnectOptions

if TYPE_CHECKING:
    from .transports.pipe import PipeChild

__all__ = ["PeerStarter", "PipePeer", "spawn_peer"]


class PipePeer:
    """A child process linked to this one over pipes: ``bus`` talks to it.

    ``child`` is the :class:`~asyncipc.transports.pipe.PipeChild` (``process``, ``pid``,
    ``wait()``); ``broker`` the private router the two share (its ``stats`` and
    ``peers`` are there to read). ``async with`` it, or call :meth:`aclose`.
    """

    def __init__(self, bus: Bus, child: PipeChild, broker: Broker) -> None:
        self.bus = bus
        self.child = child
        self.broker = broker

    def __repr__(self) -> str:
        return f"<PipePeer pid={self.pid} returncode={self.child.returncode}>"

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.child.pid

    async def wait(self) -> int:
        """Wait until the child has exited and its link is closed; its exit status."""
        return await self.child.wait()

    async def aclose(self, timeout: float = 5.0) -> int:
        """Close the bus (what it published is delivered), then the child's pipes: an
        asyncipc child sees its parent go. SIGTERM after ``timeout`` seconds, SIGKILL
        after another ``timeout``. Returns the child's exit status."""
        try:
            await self.bus.close()
            return await self.child.aclose(timeout)
        finally:
            await self.broker.close()

    async def __aenter__(self) -> PipePeer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class PeerStarter:
    """What :func:`spawn_peer` returns: ``await`` it for a :class:`PipePeer`, or
    ``async with`` it to have the peer closed on exit (as :func:`asyncipc.connect`)."""

    def __init__(self, argv: Sequence[str], kwargs: dict[str, Any]) -> None:
        self._argv = argv
        self._kwargs = kwargs
        self._peer: PipePeer | None = None

    def __await__(self) -> Generator[Any, None, PipePeer]:
        return _start(self._argv, **self._kwargs).__await__()

    async def __aenter__(self) -> PipePeer:
        self._peer = await _start(self._argv, **self._kwargs)
        return self._peer

    async def __aexit__(self, *exc_info: object) -> None:
        if self._peer is not None:
            await self._peer.aclose()


async def _start(
    argv: Sequence[str],
    *,
    options: ConnectOptions | None,
    broker_options: BrokerOptions | None,
    env: Mapping[str, str] | None,
    popen_kwargs: dict[str, Any],
) -> PipePeer:
    broker = Broker(broker_options)
    try:
        listener = await broker.listen(f"memory://_peer{os.urandom(6).hex()}")
        bus = await connect(listener.url, options=options)
        try:
            child = await broker.spawn(argv, env=env, **popen_kwargs)
        except BaseException:
            await bus.close()
            raise
    except BaseException:
        await broker.close()
        raise
    return PipePeer(bus, child, broker)


def spawn_peer(
    argv: Sequence[str],
    *,
    options: ConnectOptions | None = None,
    broker_options: BrokerOptions | None = None,
    env: Mapping[str, str] | None = None,
    **popen_kwargs: Any,
) -> PeerStarter:
    """Start ``argv`` as a child linked to this process over pipes, with no broker
    process between the two::

        async with asyncipc.spawn_peer([sys.executable, "worker.py"]) as peer:
            reply = await peer.bus.request("work", b"job")

    The child connects with ``asyncipc.connect("pipe:")``. ``options`` configure the
    parent's bus, ``broker_options`` the private router in this process; ``env`` and
    the other keyword arguments go to :func:`asyncio.create_subprocess_exec`.
    """
    kwargs: dict[str, Any] = {
        "options": options,
        "broker_options": broker_options,
        "env": env,
        "popen_kwargs": popen_kwargs,
    }
    return PeerStarter(argv, kwargs)
