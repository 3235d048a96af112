"""Users and permissions on the adapters (issue 13, docs/security.md): REST, Server-Sent
Events, WebSocket (JSON and the binary wire protocol) and gRPC refuse what a user may not
do with 403 / ``permission_denied`` / PERMISSION_DENIED, with a real broker and real
clients (aiohttp, grpcio stubs); allowed calls go through."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import pytest

import asyncipc
from asyncipc import Permissions, User, hash_password
from asyncipc.adapters.grpc.proto import bus_pb2 as pb
from asyncipc.adapters.grpc.proto import bus_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(30)

PASSWORD = "p4ss"
CLERK = User(
    "clerk",
    password_hash=hash_password(PASSWORD),
    permissions=Permissions.build(
        publish=["orders.>", "$sys.stream.info.>"], subscribe=["orders.>", "_INBOX.>"]
    ),
)


def basic(name: str = "clerk", password: str = PASSWORD) -> str:
    return "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()


@dataclass
class Served:
    broker: asyncipc.Broker
    http: str
    grpc: str
    unix: str


@pytest.fixture
async def srv(tmp_path: Path) -> AsyncIterator[Served]:
    async with asyncipc.Broker(users=(CLERK,), token="admin") as broker:
        http = (await broker.listen("http://127.0.0.1:0")).url
        grpc_url = (await broker.listen("grpc://127.0.0.1:0")).url
        unix = (await broker.listen(f"unix://{tmp_path}/b.sock")).url
        yield Served(broker, http, grpc_url.removeprefix("grpc://"), unix)


async def test_rest_refuses_with_403_and_serves_what_is_allowed(srv: Served) -> None:
    async with (
        aiohttp.ClientSession(headers={"Authorization": basic()}) as http,
        asyncipc.connect(srv.unix, token="admin") as admin,
        admin.subscribe("orders.>") as orders,
    ):
        admin.serve("orders.quote", _quote)
        await admin.flush()
        async with http.post(f"{srv.http}/v1/publish/orders.new", data=b"1") as resp:
            assert resp.status == 202
        assert (await orders.next_msg(timeout=5)).data == b"1"
        for path in ("publish/payroll.run", "request/payroll.run"):
            async with http.post(f"{srv.http}/v1/{path}", data=b"") as resp:
                body = await resp.json()
                assert resp.status == 403, (path, body)
                assert body["error"] == "permission_denied"
                assert "'clerk'" in body["message"]
        # $sys. is the broker's for every HTTP caller: refused as reserved, before any
        # user's permissions are asked.
        async with http.post(f"{srv.http}/v1/publish/$sys.kill.1", data=b"") as resp:
            assert resp.status == 403
            assert (await resp.json())["error"] == "reserved"
        reply_to = {"X-Asyncipc-Reply-To": "payroll.r"}
        async with http.post(f"{srv.http}/v1/publish/orders.x", headers=reply_to) as resp:
            assert resp.status == 403
            assert "reply subject 'payroll.r'" in (await resp.json())["message"]
        async with http.post(f"{srv.http}/v1/request/orders.quote", data=b"q") as resp:
            assert resp.status == 200
            assert await resp.read() == b"quoted q"
        async with http.get(f"{srv.http}/v1/subscribe/payroll.>") as resp:
            assert resp.status == 403
            assert (await resp.json())["error"] == "permission_denied"
        # the streams API: the user's own bus, refused by the broker itself
        async with http.post(
            f"{srv.http}/v1/streams", json={"name": "S", "subjects": ["orders.>"]}
        ) as resp:
            assert resp.status == 403, await resp.text()
            assert (await resp.json())["error"] == "permission_denied"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{srv.http}/v1/publish/orders.new") as resp:
            assert resp.status == 401
            assert "credentials required" in (await resp.json())["message"]
        headers = {"Authorization": basic(password="wrong")}
        async with http.post(f"{srv.http}/v1/publish/orders.new", headers=headers) as resp:
            assert resp.status == 401
            assert "wrong password" in (await resp.json())["message"]
        headers = {"Authorization": "Bearer admin"}
        async with http.post(f"{srv.http}/v1/publish/payroll.run", headers=headers) as resp:
            assert resp.status == 202  # the token may do everything
    assert srv.broker.stats.permission_denied >= 1  # the stream request, at the broker


async def _quote(msg: asyncipc.Message) -> bytes:
    return b"quoted " + msg.data


async def test_websocket_json_refuses_each_operation(srv: Served) -> None:
    async with (
        aiohttp.ClientSession(headers={"Authorization": basic()}) as http,
        http.ws_connect(f"{srv.http}/v1/ws", protocols=("asyncipc.v1.json",)) as ws,
    ):
        welcome = json.loads((await ws.receive(timeout=5)).data)
        assert welcome["op"] == "welcome"

        async def ask(op: dict[str, object]) -> dict[str, object]:
            await ws.send_str(json.dumps(op))
            reply: dict[str, object] = json.loads((await ws.receive(timeout=5)).data)
            return reply

        for op in (
            {"op": "publish", "subject": "payroll.run", "data": ""},
            {"op": "subscribe", "id": 1, "subject": "payroll.*"},
            {"op": "request", "id": 2, "subject": "payroll.run", "data": ""},
        ):
            got = await ask(op)
            assert got["op"] == "error"
            assert got["error"] == "permission_denied"
            assert "payroll" in str(got["message"])
        got = await ask({"op": "subscribe", "id": 3, "subject": "orders.*"})
        assert got["op"] == "subscribed"
        assert got["id"] == 3


async def test_websocket_binary_is_a_link_like_any_other(srv: Served) -> None:
    options = asyncipc.ConnectOptions(user="clerk", password=PASSWORD, reconnect=False)
    async with asyncipc.connect(srv.http, options=options) as bus:
        assert bus.server_info["user"] == "clerk"
        with pytest.raises(asyncipc.PermissionDenied):
            await bus.request("payroll.run", b"", timeout=5)
    with pytest.raises(asyncipc.AuthenticationError):
        await asyncipc.connect(srv.http, options=asyncipc.ConnectOptions(reconnect=False))


async def test_grpc_refuses_with_permission_denied(srv: Served) -> None:
    async with grpc.aio.insecure_channel(srv.grpc) as channel:
        stub = pb_grpc.BusStub(channel)
        creds = (("authorization", basic()),)
        await stub.Publish(pb.Message(subject="orders.new"), metadata=creds)
        for call in (
            stub.Publish(pb.Message(subject="payroll.run"), metadata=creds),
            stub.Request(pb.RequestRequest(subject="payroll.run"), metadata=creds),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
            assert "'clerk'" in (info.value.details() or "")
        # $sys. is the broker's for every caller: refused as reserved, whoever asks.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Publish(pb.Message(subject="$sys.x"), metadata=creds)
        assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "reserved for the broker" in (info.value.details() or "")
        stream = stub.Subscribe(pb.SubscribeRequest(subject="payroll.>"), metadata=creds)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stream:
                pass
        assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Publish(pb.Message(subject="orders.new"))
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        bad = (("authorization", basic(password="nope")),)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Publish(pb.Message(subject="orders.new"), metadata=bad)
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_the_python_client_over_grpc_connects_as_a_user(srv: Served) -> None:
    options = asyncipc.ConnectOptions(user="clerk", password=PASSWORD, reconnect=False)
    async with asyncipc.connect(f"grpc://{srv.grpc}", options=options) as bus:
        # (the gRPC Welcome message has no user field: the refusal names the user)
        with pytest.raises(asyncipc.PermissionDenied, match=r"user 'clerk'.*payroll"):
            await bus.request("payroll.run", b"", timeout=5)
    wrong = asyncipc.ConnectOptions(user="clerk", password="nope", reconnect=False)
    with pytest.raises(asyncipc.HandshakeError, match="wrong password"):
        await asyncipc.connect(f"grpc://{srv.grpc}", options=wrong)
