"""``pip install asyncipc`` with no extras: a light install that works, and adapters that
say which extra they need (pyproject.toml's ``grpc``, ``http``, ``nats`` and ``all``).

The first tests build a fresh virtual environment and ``pip install`` this source tree into
it the way a user would (dependencies from the package index, no ``--no-deps``), then run
the installed ``asyncipc`` command and clients there, from outside the repository so that
nothing of the source tree is imported by accident. The last one checks, in this
environment, that a half-installed extra is reported as the extra, not as one of its
modules.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# What the adapters need and a plain install must not bring (pyproject.toml's extras).
ADAPTER_DISTRIBUTIONS = {
    "grpcio",
    "protobuf",
    "grpcio-health-checking",
    "grpcio-reflection",
    "aiohttp",
    "nats-py",
}

pytestmark = pytest.mark.timeout(240)  # pip may have to fetch anyio and uvloop first


class PlainInstall:
    """A virtual environment holding ``pip install <this tree>`` and nothing else."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "venv" / "bin"
        self.work = root / "work"  # the cwd of every command: not the repository

    def env(self) -> dict[str, str]:
        """This process's environment without what would let the source tree, or another
        environment, stand in for the installed package."""
        drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
        env = {k: v for k, v in os.environ.items() if k not in drop}
        env = {k: v for k, v in env.items() if not k.startswith("ASYNCIPC_")}
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        return env

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a command of the environment (``python``, ``asyncipc``) to completion."""
        return subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            cwd=self.work,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def python(self, code: str, *args: str) -> subprocess.CompletedProcess[str]:
        """``python -c code args...`` in the environment."""
        return self.run("python", "-c", code, *args)


def _copy_source(dest: Path) -> None:
    """The source tree as a user's checkout has it: building in place would leave
    ``build/`` and ``*.egg-info`` in the repository."""
    shutil.copytree(
        ROOT,
        dest,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            "node_modules",
            "build",
            "*.egg-info",
            "__pycache__",
            ".*_cache",
            ".hypothesis",
        ),
    )


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> PlainInstall:
    root = tmp_path_factory.mktemp("plain-install")
    install = PlainInstall(root)
    install.work.mkdir()
    _copy_source(root / "src")
    # No pip inside: this environment's pip installs into it (`pip --python`), which saves
    # bootstrapping a second pip and installs exactly as `pip install` run there would.
    venv.create(root / "venv", with_pip=False, symlinks=True)
    pip = [sys.executable, "-m", "pip", "--python", str(install.bin / "python")]
    result = subprocess.run(
        [*pip, "install", "--quiet", str(root / "src")],
        cwd=install.work,
        env=install.env(),
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )
    assert result.returncode == 0, f"pip install failed:\n{result.stdout}\n{result.stderr}"
    return install


INSPECT = """
import importlib.metadata, importlib.resources, json, re
import asyncipc
names = sorted(re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower()
               for d in importlib.metadata.distributions())
proto = importlib.resources.files("asyncipc") / "adapters/grpc/proto/asyncipc/v1/bus.proto"
static = importlib.resources.files("asyncipc") / "adapters/rest/static"
page = [f for f in ("dashboard.html", "dashboard.js", "dashboard.css") if (static / f).is_file()]
print(json.dumps({"names": names, "file": asyncipc.__file__, "proto": proto.is_file(),
                  "dashboard": page}))
"""


def test_a_plain_install_brings_no_adapter_packages(plain: PlainInstall) -> None:
    result = plain.python(INSPECT)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    # The installed package, not the source tree, answered.
    assert Path(found["file"]).is_relative_to(plain.root / "venv"), found["file"]
    assert "asyncipc" in found["names"]
    assert set(found["names"]) & ADAPTER_DISTRIBUTIONS == set()
    # A Node or Go client can be generated from what the plain install ships.
    assert found["proto"] is True
    # The dashboard page is package data: no build step, nothing fetched (monitoring.md).
    assert found["dashboard"] == ["dashboard.html", "dashboard.js", "dashboard.css"]


CLIENT = """
import asyncio, sys
import asyncipc

async def main(url):
    async with asyncipc.connect(url) as service, asyncipc.connect(url) as client:
        @service.handler("text.upper")
        async def upper(msg):
            return msg.data.upper()

        async with client.subscribe("news.>") as news:
            await service.flush()  # the handler and the subscription are at the broker
            await client.flush()
            await service.publish("news.today", b"plain install")
            got = await news.next_msg(timeout=10)
        reply = await client.request("text.upper", b"shout", timeout=10)
    print(got.subject, got.data.decode(), reply.data.decode())

asyncio.run(main(sys.argv[1]))
"""


def test_a_plain_install_runs_a_broker_and_its_clients(plain: PlainInstall, tmp_path: Path) -> None:
    url = f"unix://{tmp_path}/b.sock"
    broker = subprocess.Popen(
        [str(plain.bin / "asyncipc"), "broker", "--listen", url],
        cwd=plain.work,
        env=plain.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert broker.stdout is not None
        ready = broker.stdout.readline()  # "" if the broker died: no hang
        assert ready.startswith("listening on unix://"), broker.communicate(timeout=10)
        result = plain.python(CLIENT, url)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["news.today", "plain", "install", "SHOUT"]
    finally:
        broker.send_signal(signal.SIGTERM)
        _, err = broker.communicate(timeout=30)
    assert broker.returncode == 0, err  # SIGTERM drains and exits 0


MISSING_EXTRAS = """
import asyncio, json
import asyncipc

async def attempts():
    async def connect_grpc():
        await asyncipc.connect("grpc://127.0.0.1:1")

    async def connect_https():
        await asyncipc.connect("https://127.0.0.1:1")

    async def listen_http():
        async with asyncipc.Broker() as broker:
            await broker.listen("http://127.0.0.1:0")

    async def connect_nats():
        await asyncipc.connect("nats://127.0.0.1:1")

    async def import_grpc():
        import asyncipc.adapters.grpc

    async def import_stubs():
        from asyncipc.adapters.grpc.proto import bus_pb2

    async def bridge_nats():
        async with asyncipc.Broker() as broker:
            await broker.bridge("nats://127.0.0.1:1", ["orders.>"])

    attempts = (
        connect_grpc, connect_https, listen_http, import_grpc, import_stubs, bridge_nats,
        connect_nats,
    )
    for attempt in attempts:
        try:
            await attempt()
        except asyncipc.ConfigurationError as exc:
            cause = type(exc.__cause__).__name__
            yield attempt.__name__, [str(exc), cause]
        else:
            yield attempt.__name__, ["no error", None]

async def main():
    print(json.dumps({name: outcome async for name, outcome in attempts()}))

asyncio.run(main())
"""

GRPC = "grpc:// needs the gRPC adapter's packages: pip install 'asyncipc[grpc]' (missing module"
NATS = "needs the NATS bridge's packages: pip install 'asyncipc[nats]' (missing module 'nats')"
NATS_URL = "nats:// needs the NATS adapter's packages: pip install 'asyncipc[nats]' (missing module"
HTTP = "needs the REST adapter's packages: pip install 'asyncipc[http]' (missing module 'aiohttp')"


def test_a_plain_install_names_the_extra_an_adapter_needs(plain: PlainInstall) -> None:
    result = plain.python(MISSING_EXTRAS)
    assert result.returncode == 0, result.stderr
    outcomes = json.loads(result.stdout)
    for name in ("connect_grpc", "import_grpc", "import_stubs"):
        message, cause = outcomes[name]
        assert message.startswith(GRPC), (name, message)
        assert cause == "ModuleNotFoundError", name
    for name in ("connect_https", "listen_http"):
        message, cause = outcomes[name]
        assert message.startswith("http://"), (name, message)
        assert HTTP in message, (name, message)
        assert cause == "ModuleNotFoundError", name

    message, cause = outcomes["bridge_nats"]
    assert NATS in message, message
    assert cause == "ModuleNotFoundError"
    message, cause = outcomes["connect_nats"]
    assert message.startswith(NATS_URL), message
    assert cause == "ModuleNotFoundError"

    cli = plain.run("asyncipc", "broker", "--grpc", "127.0.0.1:0")
    assert cli.returncode == 2, cli.stderr  # EXIT_USAGE, before anything is bound
    assert "cannot listen on grpc://127.0.0.1:0" in cli.stderr
    assert "pip install 'asyncipc[grpc]'" in cli.stderr

    cli = plain.run(
        "asyncipc", "broker", "--bridge", "nats://127.0.0.1:1", "--bridge-subjects", "a.>"
    )
    assert cli.returncode == 2, cli.stderr  # before anything is bound
    assert NATS in cli.stderr


PARTIAL = """
import sys
sys.modules[sys.argv[1]] = None  # as if this one package of the extra were not installed
import asyncipc.transports
try:
    asyncipc.transports.lookup(sys.argv[2])
except asyncipc.ConfigurationError as exc:
    print(exc)
"""


@pytest.mark.parametrize(
    ("module", "scheme", "extra"),
    [
        ("grpc_health", "grpc", "grpc"),
        ("grpc_reflection", "grpc", "grpc"),
        ("aiohttp", "http", "http"),
        ("nats", "nats", "nats"),
    ],
)
def test_a_partly_installed_extra_is_named_with_its_missing_module(
    module: str, scheme: str, extra: str
) -> None:
    """Here every extra is installed; one of its packages is hidden in a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, "-c", PARTIAL, module, scheme],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # The module the import stopped at: the package itself, or (as here, where the package
    # is hidden) the first of its modules the adapter imports.
    assert f"pip install 'asyncipc[{extra}]' (missing module '{module}" in result.stdout
