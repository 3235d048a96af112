"""The Node.js example (examples/node/pubsub.js) against a real broker.

A client in another language, written only from protos/asyncipc/v1/bus.proto with
@grpc/grpc-js and @grpc/proto-loader from npm: it publishes, subscribes (on a Connect
stream and with the Subscribe call), answers a request and makes two. A Python bus on a
Unix socket checks that what Node publishes reaches it. Skips only where `node` is not
installed; the npm packages are installed into examples/node/node_modules on first use
(``make test`` does it beforehand).
"""

from __future__ import annotations

import asyncio
import importlib.resources
import shutil
import subprocess
from pathlib import Path

import pytest

import asyncipc

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "node"
NODE = shutil.which("node")

pytestmark = [
    pytest.mark.skipif(NODE is None, reason="node is not installed: the Node.js example needs it"),
    pytest.mark.timeout(300),  # a first run installs the npm packages
]


def _install() -> None:
    """``npm ci`` from the committed lock file, once."""
    if (EXAMPLE / "node_modules" / "@grpc" / "grpc-js").is_dir():
        return
    npm = shutil.which("npm")
    assert npm is not None, "node is installed but npm is not: cannot install the example"
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=EXAMPLE,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert result.returncode == 0, f"npm ci failed:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def node_example() -> Path:
    _install()
    return EXAMPLE / "pubsub.js"


@pytest.mark.parametrize("token", [None, "s3cret"])
async def test_node_client_publishes_subscribes_and_asks(
    node_example: Path, tmp_path: Path, token: str | None
) -> None:
    assert NODE is not None
    async with asyncipc.Broker(token=token) as broker:
        grpc_url = (await broker.listen("grpc://127.0.0.1:0")).url
        unix_url = (await broker.listen(f"unix://{tmp_path}/b.sock")).url
        async with (
            asyncipc.connect(unix_url, token=token) as bus,
            bus.subscribe("greetings.>") as greetings,
            bus.subscribe("news.*") as news,
        ):
            await bus.flush()
            env = {"PATH": str(Path(NODE).parent), "ASYNCIPC_TOKEN": token or ""}
            proc = await asyncio.create_subprocess_exec(
                NODE,
                str(node_example),
                grpc_url.removeprefix("grpc://"),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
            out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
            text = out.decode()
            assert proc.returncode == 0, f"node exited {proc.returncode}:\n{text}\n{err.decode()}"
            greeting = await greetings.next_msg(timeout=5)
            headline = await news.next_msg(timeout=5)
    lines = text.splitlines()
    assert lines[-1] == "ok"
    assert "stream got [greetings.node] hello from node lang=js" in lines
    assert "subscribe got [news.today] node publishes on Connect" in lines
    assert "request node.upper -> SHOUT" in lines
    assert any(line.startswith("request nobody.home -> UNAVAILABLE") for line in lines)
    # Node's messages are ordinary messages to a Python client on a Unix socket.
    assert (greeting.subject, greeting.data, greeting.headers) == (
        "greetings.node",
        b"hello from node",
        {"lang": "js"},
    )
    assert (headline.subject, headline.data) == ("news.today", b"node publishes on Connect")


# --- outside the repository -------------------------------------------------------------

# The .proto an installed asyncipc ships, found as docs/grpc.md tells a user to find it.
SHIPPED_PROTO = importlib.resources.files("asyncipc") / "adapters/grpc/proto/asyncipc/v1/bus.proto"


@pytest.fixture
def example_elsewhere(node_example: Path, tmp_path: Path) -> Path:
    """pubsub.js copied out of the repository (no ``../../protos`` beside it), with the
    npm packages it needs linked next to it."""
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy(node_example, app / "pubsub.js")
    (app / "node_modules").symlink_to(EXAMPLE / "node_modules", target_is_directory=True)
    return app / "pubsub.js"


async def _run_node(script: Path, args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    assert NODE is not None
    proc = await asyncio.create_subprocess_exec(
        NODE,
        str(script),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": str(Path(NODE).parent), **env},
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.one_loop("where the Node.js client finds the .proto")
@pytest.mark.parametrize("given_by", ["env", "argument"])
async def test_node_client_outside_the_repository_uses_the_shipped_proto(
    example_elsewhere: Path, given_by: str
) -> None:
    proto = str(SHIPPED_PROTO)
    assert Path(proto).is_file(), "the package does not ship asyncipc/v1/bus.proto"
    async with asyncipc.Broker() as broker:
        target = (await broker.listen("grpc://127.0.0.1:0")).url.removeprefix("grpc://")
        if given_by == "env":
            code, out, err = await _run_node(example_elsewhere, [target], {"ASYNCIPC_PROTO": proto})
        else:
            code, out, err = await _run_node(example_elsewhere, [target, proto], {})
    assert code == 0, f"node exited {code}:\n{out}\n{err}"
    assert out.splitlines()[-1] == "ok"


@pytest.mark.one_loop("where the Node.js client finds the .proto")
async def test_node_client_without_a_proto_says_where_to_find_one(
    example_elsewhere: Path,
) -> None:
    code, out, err = await _run_node(example_elsewhere, ["127.0.0.1:1"], {})
    assert code == 1
    assert "no service definition at" in err
    assert "ASYNCIPC_PROTO" in err
    assert out == ""
