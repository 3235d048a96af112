"""Refusals are refusals on every adapter (issue 13, items 8 and 9).

A request the broker refuses, a publish to a ``$sys.`` subject or with a ``$sys.`` reply
subject, a subscription to ``$sys.``: HTTP ``403`` with a JSON body (REST routes and
Server-Sent Events), an ``error`` operation with the same fields (JSON WebSocket), gRPC
``PERMISSION_DENIED`` (``Publish``, ``Request``, ``Subscribe``) — never ``200``/``202``/
``OK`` with the refusal hidden in a header. And REST refuses subjects whose
percent-encoded bytes are not UTF-8 with ``400`` naming the problem.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

import asyncipc
from asyncipc.adapters.grpc.proto import bus_pb2 as pb
from asyncipc.adapters.grpc.proto import bus_pb2_grpc as pb_grpc
from asyncipc.subjects import validate_pattern, validate_queue, validate_subject

pytestmark = pytest.mark.timeout(30)


@dataclass
class Served:
    broker: asyncipc.Broker
    http: str
    grpc: str
    tcp: str
    memory: str
    client: aiohttp.ClientSession
    stub: Any


@pytest.fixture
async def srv(tmp_path: Path) -> AsyncIterator[Served]:
    async with asyncipc.Broker() as broker:
        http = (await broker.listen("http://127.0.0.1:0")).url
        grpc_url = (await broker.listen("grpc://127.0.0.1:0")).url
        tcp = (await broker.listen("tcp://127.0.0.1:0")).url
        memory = (await broker.listen(f"memory://r{os.urandom(4).hex()}")).url
        async with (
            aiohttp.ClientSession() as client,
            grpc.aio.insecure_channel(grpc_url.removeprefix("grpc://")) as channel,
        ):
            yield Served(broker, http, grpc_url, tcp, memory, client, pb_grpc.BusStub(channel))


async def refused(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    assert resp.status == 403, (resp.status, await resp.text())
    body: dict[str, Any] = await resp.json()
    assert set(body) == {"error", "message", "reason"}
    return body


# --- REST ----------------------------------------------------------------------------------


async def test_rest_request_the_broker_refuses_is_a_403(srv: Served) -> None:
    async with asyncipc.connect(
        srv.memory, options=asyncipc.ConnectOptions(name="victim", allow_signals=("HUP",))
    ):
        body = await refused(await srv.client.post(f"{srv.http}/v1/request/$sys.kill.victim"))
    assert (body["error"], body["reason"]) == ("forbidden", "remote-sender")
    assert "remote_signals" in body["message"]
    # Another $sys. request: the broker answers "reserved" itself, and that is a 403 too.
    body = await refused(await srv.client.post(f"{srv.http}/v1/request/$sys.nothing"))
    assert (body["error"], body["reason"]) == ("reserved", "reserved")


async def test_rest_publish_to_sys_or_with_a_sys_reply_is_a_403(srv: Served) -> None:
    async with asyncipc.connect(srv.tcp) as bus, bus.subscribe("a.>") as sub:
        await bus.flush()
        body = await refused(await srv.client.post(f"{srv.http}/v1/publish/$sys.x", data=b"1"))
        assert body["reason"] == "reserved"
        assert "'$sys.x'" in body["message"]
        body = await refused(
            await srv.client.post(
                f"{srv.http}/v1/publish/a.b",
                data=b"2",
                headers={"X-Asyncipc-Reply-To": "$sys.kill.1"},
            )
        )
        assert "reply subject '$sys.kill.1'" in body["message"]
        # Nothing of the refused publish went out; an ordinary one still does.
        resp = await srv.client.post(f"{srv.http}/v1/publish/a.c", data=b"3")
        assert resp.status == 202
        msg = await sub.next_msg(timeout=5)
        assert (msg.subject, msg.data) == ("a.c", b"3")


async def test_sse_subscription_to_sys_is_a_403(srv: Served) -> None:
    body = await refused(await srv.client.get(f"{srv.http}/v1/subscribe/$sys.>"))
    assert body["reason"] == "reserved"


async def test_rest_subjects_that_are_not_utf8_are_a_400(srv: Served) -> None:
    for method, path in (
        ("POST", "/v1/publish/a.%FF"),
        ("POST", "/v1/request/a.%C3"),
        ("GET", "/v1/subscribe/x.%FE.*"),
    ):
        resp = await srv.client.request(
            method, srv.http + path, data=b"" if method == "POST" else None
        )
        assert resp.status == 400, (path, resp.status)
        body = await resp.json()
        assert body["error"] == "invalid_subject"
        assert "not valid UTF-8" in body["message"], body
    # Percent-encoded UTF-8 is a subject like any other, and %25 is a percent sign.
    async with asyncipc.connect(srv.tcp) as bus, bus.subscribe("u.>") as sub:
        await bus.flush()
        for path in ("/v1/publish/u.caf%C3%A9", "/v1/publish/u.%25FF"):
            assert (await srv.client.post(srv.http + path, data=b"x")).status == 202
        got = [(await sub.next_msg(timeout=5)).subject for _ in range(2)]
    assert got == ["u.caf\u00e9", "u.%FF"]


# --- the JSON WebSocket -------------------------------------------------------------------


async def test_ws_json_refusals_are_errors_with_a_reason(srv: Served) -> None:
    async with srv.client.ws_connect(f"{srv.http}/v1/ws") as ws:
        assert (await ws.receive_json(timeout=5))["op"] == "welcome"

        async def answer(op: dict[str, Any]) -> dict[str, Any]:
            await ws.send_json(op)
            reply: dict[str, Any] = await ws.receive_json(timeout=5)
            return reply

        r = await answer({"op": "publish", "subject": "$sys.x", "data": "", "id": 1})
        assert (r["op"], r["error"], r["reason"], r["id"]) == ("error", "reserved", "reserved", 1)
        r = await answer({"op": "publish", "subject": "a", "reply_to": "$sys.y", "id": 2})
        assert (r["op"], r["reason"]) == ("error", "reserved")
        r = await answer({"op": "subscribe", "subject": "$sys.>", "id": 3})
        assert (r["op"], r["reason"], r["id"]) == ("error", "reserved", 3)
        r = await answer({"op": "request", "subject": "$sys.kill.1", "data": "", "id": 4})
        assert (r["op"], r["error"], r["reason"], r["id"]) == (
            "error",
            "forbidden",
            "remote-sender",
            4,
        )
        # The session carries on.
        r = await answer({"op": "ping", "id": 5})
        assert r == {"op": "pong", "id": 5}


# --- gRPC ---------------------------------------------------------------------------------


async def grpc_status(awaitable: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await awaitable
    return info.value.code(), info.value.details() or ""


async def test_grpc_refusals_are_permission_denied(srv: Served) -> None:
    code, details = await grpc_status(srv.stub.Publish(pb.Message(subject="$sys.x"), timeout=5))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert "'$sys.x'" in details
    code, details = await grpc_status(
        srv.stub.Publish(pb.Message(subject="a", reply_to="$sys.kill.1"), timeout=5)
    )
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert "reply subject" in details
    code, details = await grpc_status(
        srv.stub.Request(pb.RequestRequest(subject="$sys.kill.1", data=b"HUP"), timeout=5)
    )
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert "remote_signals" in details
    call = srv.stub.Subscribe(pb.SubscribeRequest(subject="$sys.>"), timeout=5)
    code, _ = await grpc_status(call.read())
    assert code is grpc.StatusCode.PERMISSION_DENIED
    # The adapter carries on: an ordinary publish is still OK and delivered.
    async with asyncipc.connect(srv.tcp) as bus, bus.subscribe("ok") as sub:
        await bus.flush()
        await srv.stub.Publish(pb.Message(subject="ok", data=b"yes"), timeout=5)
        assert (await sub.next_msg(timeout=5)).data == b"yes"


# --- text with no UTF-8 form (lone surrogates) --------------------------------------------


def test_subjects_with_no_utf8_form_are_invalid() -> None:
    for bad in ("a.\udcff", "\ud800"):
        with pytest.raises(asyncipc.InvalidSubject, match="not valid UTF-8"):
            validate_subject(bad)
        with pytest.raises(asyncipc.InvalidSubject, match="not valid UTF-8"):
            validate_pattern(bad + ".>")
        with pytest.raises(asyncipc.InvalidSubject, match="not valid UTF-8"):
            validate_queue(bad)
    assert validate_subject("caf\u00e9.\U0001f600") == "caf\u00e9.\U0001f600"


async def test_json_and_http_text_with_no_utf8_form_is_a_400(srv: Served) -> None:
    """JSON can spell a lone surrogate (``"\\udcff"``) and aiohttp reads a header byte that
    is not UTF-8 as one: refused, not a crash in the middle of the broker's fan-out (it
    used to end the JSON session with a 500 while a tcp subscriber was listening)."""
    async with (
        asyncipc.connect(srv.tcp) as bus,
        bus.subscribe(">") as sub,
        srv.client.ws_connect(f"{srv.http}/v1/ws") as ws,
    ):
        await bus.flush()
        assert (await ws.receive_json(timeout=5))["op"] == "welcome"
        await ws.send_str('{"op": "publish", "id": 1, "subject": "a.\\udcff"}')
        r = await ws.receive_json(timeout=5)
        assert (r["op"], r["error"], r["id"]) == ("error", "invalid_subject", 1)
        await ws.send_str('{"op": "publish", "id": 2, "subject": "a", "headers": {"k": "\\ud800"}}')
        r = await ws.receive_json(timeout=5)
        assert (r["op"], r["error"], r["id"]) == ("error", "bad_request", 2)
        assert "not valid UTF-8" in r["message"]
        host, port = srv.http.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /v1/publish/h HTTP/1.1\r\nHost: t\r\nX-Asyncipc-Header-K: \xff\xfe\r\n"
            b"Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 400 "), answer
        assert b"not valid UTF-8" in answer
        # Nothing half-delivered; the session and the adapter carry on.
        await ws.send_json({"op": "publish", "subject": "fine", "data": ""})
        msg = await sub.next_msg(timeout=5)
        assert msg.subject == "fine"
