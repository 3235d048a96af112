"""The committed gRPC stubs are what ``make proto`` makes from ``protos/asyncipc/v1/bus.proto``.

Regenerates into a temporary directory with the pinned grpcio-tools and compares byte
for byte: an edit to the ``.proto`` without ``make proto`` (or a hand edit of the stubs,
or of the copy of the ``.proto`` the package ships) fails here, naming the files that differ.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncipc

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = ROOT / "protos" / "generate.py"
COMMITTED = ROOT / "asyncipc" / "adapters" / "grpc" / "proto"
# The stubs, and the copy of the .proto shipped in the package for other languages.
GENERATED = ("bus_pb2.py", "bus_pb2.pyi", "bus_pb2_grpc.py", "asyncipc/v1/bus.proto")


def _pinned_tools_version() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    for line in text.splitlines():
        if '"grpcio-tools==' in line:
            return line.split("==", 1)[1].split('"', 1)[0]
    raise AssertionError("pyproject.toml no longer pins grpcio-tools")


def test_the_pinned_generator_is_installed() -> None:
    assert importlib.metadata.version("grpcio-tools") == _pinned_tools_version(), (
        "the installed grpcio-tools differs from the pin in pyproject.toml: "
        "run `make` (pip install -e '.[dev]') so that `make proto` output is reproducible"
    )


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(GENERATOR), str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    differ = [
        name
        for name in GENERATED
        if (tmp_path / name).read_bytes() != (COMMITTED / name).read_bytes()
    ]
    assert not differ, (
        f"{', '.join(differ)} differ from what protos/asyncipc/v1/bus.proto generates: "
        "run `make proto` and commit the result"
    )


def test_the_stubs_import_and_name_the_service() -> None:
    from asyncipc.adapters.grpc.proto import bus_pb2, bus_pb2_grpc

    service = bus_pb2.DESCRIPTOR.services_by_name["Bus"]
    assert service.full_name == "asyncipc.v1.Bus"
    assert [m.name for m in service.methods] == ["Publish", "Request", "Subscribe", "Connect"]
    assert hasattr(bus_pb2_grpc, "BusStub")


def _documented_stub_example() -> str:
    """The Python block of docs/grpc.md's "The Python stubs" section."""
    text = (ROOT / "docs" / "grpc.md").read_text()
    section = text.split("\n## The Python stubs\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


async def test_the_documented_stub_example_publishes_and_asks() -> None:
    """docs/grpc.md shows the public import path of the stubs; its example runs as written."""
    namespace: dict[str, Any] = {}
    exec(compile(_documented_stub_example(), "docs/grpc.md", "exec"), namespace)
    async with asyncipc.Broker() as broker:
        target = (await broker.listen("grpc://127.0.0.1:0")).url.removeprefix("grpc://")
        tcp = (await broker.listen("tcp://127.0.0.1:0")).url
        async with asyncipc.connect(tcp) as bus, bus.subscribe("orders.created") as orders:

            @bus.handler("pricing.quote")
            async def price(msg: asyncipc.Message) -> bytes:
                return b"42 for " + msg.data

            await bus.flush()
            assert await namespace["quote"](target) == b"42 for sku-1"
            order = await orders.next_msg(timeout=5)
    assert (order.subject, order.data) == ("orders.created", b'{"id": 7}')
