"""Generate the Python code for ``protos/asyncipc/v1/bus.proto`` (``make proto``).

Usage: ``python protos/generate.py [OUTDIR]`` (default: ``asyncipc/adapters/grpc/proto``).

protoc (from grpcio-tools, whose version pyproject.toml pins so that the output is the
same on every machine) writes ``bus_pb2.py``, ``bus_pb2.pyi`` and ``bus_pb2_grpc.py``.
The ``.proto`` itself is copied beside them as ``asyncipc/v1/bus.proto``: the package
ships it (pyproject.toml's package data), so that a client in another language can be
generated from an installed asyncipc; ``protos/`` stays the one source.
The file keeps its canonical name, ``asyncipc/v1/bus.proto``, which is what reflection
shows; but protoc would then make the gRPC module import ``asyncipc.v1.bus_pb2``, a
module our own ``asyncipc`` package does not have, so that one import is made relative.
``tests/test_grpc_proto.py`` runs this into a temporary directory and compares.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
SOURCE = "asyncipc/v1/bus.proto"
DEFAULT_OUT = ROOT / "asyncipc" / "adapters" / "grpc" / "proto"
GENERATED = ("bus_pb2.py", "bus_pb2.pyi", "bus_pb2_grpc.py")
SHIPPED = SOURCE  # the copy of the .proto in OUTDIR, under its canonical name

_ABSOLUTE = re.compile(r"^from asyncipc\.v1 import (bus_pb2 as \w+)$", re.MULTILINE)


def generate(out: Path) -> list[Path]:
    """Write the generated modules into ``out``; return their paths."""
    from grpc_tools import protoc  # the dev dependency, imported only when generating

    with tempfile.TemporaryDirectory() as tmp:
        code = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{PROTOS}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}",
                str(PROTOS / SOURCE),
            ]
        )
        if code != 0:
            raise SystemExit(f"protoc failed with exit status {code}")
        built = Path(tmp) / "asyncipc" / "v1"
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for name in GENERATED:
            text = (built / name).read_text()
            if name == "bus_pb2_grpc.py":
                text, n = _ABSOLUTE.subn(r"from . import \1", text)
                if n != 1:
                    raise SystemExit(f"expected one bus_pb2 import in {name}, found {n}")
            path = out / name
            path.write_text(text)
            paths.append(path)
    # Under its canonical name, so that `protoc -I OUTDIR asyncipc/v1/bus.proto` names the
    # file as reflection does; copied byte for byte (tests/test_grpc_proto.py compares).
    shipped = out / SHIPPED
    shipped.parent.mkdir(parents=True, exist_ok=True)
    shipped.write_bytes((PROTOS / SOURCE).read_bytes())
    paths.append(shipped)
    return paths


def main(argv: list[str]) -> None:
    out = Path(argv[0]) if argv else DEFAULT_OUT
    for path in generate(out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
