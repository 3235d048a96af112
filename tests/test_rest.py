"""The REST adapter (docs/rest.md) against real peers: an aiohttp server on a loopback port,
aiohttp clients, WebSocket clients, raw HTTP/1.1 sockets for malformed requests, and
ordinary buses on tcp://, unix:// and memory:// on the same broker.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import asyncipc
from asyncipc.adapters.rest import RestServer
from asyncipc.protocol import ErrorCode, FrameDecoder, Hello, Pub, encode

TOKEN = "s3cret"


@dataclass
class Served:
    broker: asyncipc.Broker
    http: str  # http://127.0.0.1:port
    tcp: str
    unix: str
    memory: str
    server: RestServer


async def serve(tmp_path: Path, **options: Any) -> AsyncIterator[Served]:
    async with asyncipc.Broker(**options) as broker:
        rest = await broker.listen("http://127.0.0.1:0")
        assert isinstance(rest, RestServer)
        tcp = await broker.listen("tcp://127.0.0.1:0")
        unix = await broker.listen(f"unix://{tmp_path}/b.sock")
        memory = await broker.listen(f"memory://r{os.urandom(4).hex()}")
        yield Served(broker, rest.url, tcp.url, unix.url, memory.url, rest)


@pytest.fixture
async def srv(tmp_path: Path) -> AsyncIterator[Served]:
    async for s in serve(tmp_path):
        yield s


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def events(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """Server-Sent Events as (event name, decoded data); comments are skipped."""
    event, data = "message", ""
    while True:
        line = (await resp.content.readline()).decode()
        if not line:
            return
        line = line.rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif not line and data:
            yield event, json.loads(data)
            event, data = "message", ""


async def next_event(stream: AsyncIterator[tuple[str, dict[str, Any]]]) -> tuple[str, Any]:
    return await asyncio.wait_for(anext(stream), 5)


async def raw_http(url: str, request: bytes, *, read: bool = True) -> bytes:
    """Send ``request`` bytes on a fresh connection; the one response it gets."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(read_response(reader), 5) if read else b""
    finally:
        writer.close()


async def read_response(reader: asyncio.StreamReader) -> bytes:
    """One HTTP/1.1 response with a Content-Length (or up to the end of the stream)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length: *(\d+)", head)
    if length is None:
        return head + await reader.read()
    return head + await reader.readexactly(int(length.group(1)))


# --- publish and request -----------------------------------------------------------------


async def test_publish_reaches_a_tcp_subscriber_with_headers_and_reply_subject(
    srv: Served, http: aiohttp.ClientSession
) -> None:
    async with asyncipc.connect(srv.tcp) as bus, bus.subscribe("orders.*") as sub:
        resp = await http.post(
            f"{srv.http}/v1/publish/orders.created",
            data=b'{"id": 7}',
            headers={"X-Asyncipc-Header-Trace": "abc", "X-Asyncipc-Reply-To": "orders.ack"},
        )
        assert resp.status == 202
        msg = await sub.next_msg(timeout=5)
        await msg.respond(b"ack")  # else the broker, closing, waits for this reply
    assert (msg.subject, msg.data, msg.headers, msg.reply_to) == (
        "orders.created",
        b'{"id": 7}',
        {"trace": "abc"},
        "orders.ack",
    )


async def test_http_request_answered_by_a_handler_on_tcp(
    srv: Served, http: aiohttp.ClientSession
) -> None:
    async with asyncipc.connect(srv.tcp) as service:

        @service.handler("pricing.quote")
        async def quote(msg: asyncipc.Message) -> bytes:
            await msg.respond(b"price:" + msg.data, headers={"currency": "EUR", "x y": "hidden"})
            return b"ignored second reply"

        await service.flush()
        resp = await http.post(f"{srv.http}/v1/request/pricing.quote?timeout=5", data=b"sku-1")
        assert resp.status == 200
        assert resp.content_type == "application/octet-stream"
        assert await resp.read() == b"price:sku-1"
        assert resp.headers["X-Asyncipc-Header-Currency"] == "EUR"
        assert not any(" " in name for name in resp.headers)  # not an HTTP field name

        resp = await http.post(
            f"{srv.http}/v1/request/pricing.quote",
            data=b"sku-2",
            headers={"Accept": "application/json"},
        )
        body = await resp.json()
        assert resp.status == 200
        assert base64.b64decode(body["data"]) == b"price:sku-2"
        assert body["headers"] == {"currency": "EUR", "x y": "hidden"}  # all of them in JSON


async def test_request_errors_have_their_status_and_a_json_body(
    srv: Served, http: aiohttp.ClientSession
) -> None:
    async with asyncipc.connect(srv.tcp) as service:

        @service.handler("svc.fail")
        async def fail(msg: asyncipc.Message) -> bytes:
            raise RuntimeError("out of stock")

        silent = service.subscribe("svc.silent")
        await service.flush()
        cases = [
            ("svc.nobody", "", 503, "no_responders"),
            ("svc.silent", "?timeout=0.1", 504, "timeout"),
            ("svc.fail", "", 502, "service_error"),
            ("svc..bad", "", 400, "invalid_subject"),
            ("svc.x", "?timeout=0", 400, "bad_request"),
            ("svc.x", "?timeout=soon", 400, "bad_request"),
            ("svc.x", "?timeout=301", 400, "bad_request"),
        ]
        for subject, query, status, error in cases:
            resp = await http.post(f"{srv.http}/v1/request/{subject}{query}", data=b"x")
            assert resp.status == status, subject
            assert resp.content_type == "application/json"
            body = await resp.json()
            assert body["error"] == error
            assert body["message"]
        assert silent.pending == 1
        await (await silent.next_msg()).respond(b"late")  # the broker waits for no reply
        failed = await http.post(f"{srv.http}/v1/request/svc.fail")
        message = (await failed.json())["message"]
        assert "internal error" in message
        assert "out of stock" not in message, "the handler's text stays in the service"


async def test_invalid_subjects_unknown_routes_and_methods(
    srv: Served, http: aiohttp.ClientSession
) -> None:
    for path in ("/v1/publish/a..b", "/v1/publish/a.*", "/v1/publish/a.>", "/v1/publish/%20a"):
        resp = await http.post(srv.http + path, data=b"")
        assert resp.status == 400, path
        assert (await resp.json())["error"] == "invalid_subject"
    resp = await http.post(
        f"{srv.http}/v1/publish/a.b", headers={"X-Asyncipc-Reply-To": "bad subject"}
    )
    assert (resp.status, (await resp.json())["error"]) == (400, "invalid_subject")
    resp = await http.get(f"{srv.http}/v1/subscribe/a.>.b")
    assert (resp.status, (await resp.json())["error"]) == (400, "invalid_subject")
    resp = await http.get(f"{srv.http}/v1/subscribe/a?queue=bad%20queue")
    assert (resp.status, (await resp.json())["error"]) == (400, "invalid_subject")
    for query in ("overflow=sometimes", "max_pending=0", "max_bytes=-1", "count=x"):
        resp = await http.get(f"{srv.http}/v1/subscribe/a?{query}")
        assert (resp.status, (await resp.json())["error"]) == (400, "bad_request"), query
    resp = await http.get(f"{srv.http}/v2/nothing")
    assert (resp.status, (await resp.json())["error"]) == (404, "not_found")
    resp = await http.get(f"{srv.http}/v1/publish/a.b")
    assert (resp.status, (await resp.json())["error"]) == (405, "method_not_allowed")
    assert resp.headers["Allow"] == "POST"


async def test_a_remote_http_client_cannot_signal_local_processes(
    srv: Served, http: aiohttp.ClientSession
) -> None:
    """The adapter's links are http, not in-process: $sys.kill is refused (docs/signals.md)."""
    async with asyncipc.connect(
        srv.memory, options=asyncipc.ConnectOptions(name="victim", allow_signals=("USR1",))
    ):
        resp = await http.post(f"{srv.http}/v1/request/$sys.kill.victim", data=b"USR1")
        assert resp.status == 403  # a refusal, not a 200 with the status in a header
        body = await resp.json()
        assert (body["error"], body["reason"]) == ("forbidden", "remote-sender")


# --- limits and malformed requests ----------------------------------------------------------


async def test_oversized_bodies_get_413_and_the_server_goes_on(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async for s in serve(tmp_path, max_frame=64 * 1024):
        limit = 64 * 1024 - 64
        async with asyncipc.connect(s.tcp) as bus, bus.subscribe("big") as sub:
            resp = await http.post(f"{s.http}/v1/publish/big", data=b"x" * (limit + 1))
            assert (resp.status, (await resp.json())["error"]) == (413, "payload_too_large")
            resp = await http.post(f"{s.http}/v1/request/big", data=b"x" * (limit + 1))
            assert resp.status == 413

            # Chunked, so no Content-Length to refuse it by: refused while being read.
            async def chunks(half: int = limit // 2) -> AsyncIterator[bytes]:
                for _ in range(4):
                    yield b"y" * half

            resp = await http.post(f"{s.http}/v1/publish/big", data=chunks())
            assert resp.status == 413
            # A huge Content-Length is refused before a byte of the body is sent.
            answer = await raw_http(
                s.http,
                b"POST /v1/publish/big HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999\r\n\r\n",
            )
            assert answer.startswith(b"HTTP/1.1 413 ")
            assert b'"payload_too_large"' in answer
            resp = await http.post(f"{s.http}/v1/publish/big", data=b"x" * limit)
            assert resp.status == 202
            assert len((await sub.next_msg(timeout=5)).data) == limit
            assert sub.pending == 0


async def test_malformed_http_is_refused_and_others_carry_on(
    srv: Served, http: aiohttp.ClientSession
) -> None:
    garbage = await raw_http(srv.http, b"\x16\x03\x01\x02\x00garbage\r\n\r\n")
    assert re.match(rb"HTTP/1\.[01] 400 ", garbage)
    bad_header = await raw_http(srv.http, b"POST /v1/publish/a HTTP/1.1\r\nHost t\r\n\r\n")
    assert re.match(rb"HTTP/1\.[01] 400 ", bad_header)
    bad_length = await raw_http(
        srv.http, b"POST /v1/publish/a HTTP/1.1\r\nHost: t\r\nContent-Length: -5\r\n\r\n"
    )
    assert re.match(rb"HTTP/1\.[01] 400 ", bad_length)
    async with asyncipc.connect(srv.tcp) as bus, bus.subscribe("trunc") as sub:
        # A body cut short: the client leaves, nothing is published.
        await raw_http(
            srv.http,
            b"POST /v1/publish/trunc HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly 10..",
            read=False,
        )
        resp = await http.post(f"{srv.http}/v1/publish/trunc", data=b"whole")
        assert resp.status == 202
        assert (await sub.next_msg(timeout=5)).data == b"whole"
        await bus.flush()
        assert sub.pending == 0
    resp = await http.get(f"{srv.http}/healthz")
    assert (await resp.json())["status"] == "ok"


# --- authentication ------------------------------------------------------------------------


async def test_the_token_is_required_on_every_route_but_health_and_openapi(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async for s in serve(tmp_path, token=TOKEN):
        good = {"Authorization": f"Bearer {TOKEN}"}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            for method, path in [
                ("POST", "/v1/publish/a"),
                ("POST", "/v1/request/a"),
                ("GET", "/v1/subscribe/a"),
                ("GET", "/metrics"),
            ]:
                resp = await http.request(method, s.http + path, headers=headers)
                assert resp.status == 401, (method, path, headers)
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                assert (await resp.json())["error"] == "unauthorized"
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{s.http}/v1/ws")  # JSON: the header is the check
        assert refused.value.status == 401
        assert (await http.post(f"{s.http}/v1/publish/a", headers=good)).status == 202
        assert (await http.post(f"{s.http}/v1/publish/a?access_token={TOKEN}")).status == 202
        assert (await http.get(f"{s.http}/healthz")).status == 200
        assert (await http.get(f"{s.http}/v1/openapi.json")).status == 200
        assert (await http.get(f"{s.http}/metrics", headers=good)).status == 200
        # The Bus over the WebSocket authenticates in its HELLO, as on every transport.
        with pytest.raises(asyncipc.AuthenticationError):
            await asyncipc.connect(s.http, token="wrong")
        with pytest.raises(asyncipc.AuthenticationError):
            await asyncipc.connect(s.http)
        async with asyncipc.connect(s.http, token=TOKEN) as bus:
            await bus.flush()
        async with asyncipc.connect(f"{s.http}?token={TOKEN}") as bus:
            await bus.flush()


# --- Server-Sent Events --------------------------------------------------------------------


async def test_sse_sees_what_a_memory_service_publishes(
    srv: Served, http: aiohttp.ClientSession
) -> None:
    async with asyncipc.connect(srv.memory) as service:
        resp = await http.get(f"{srv.http}/v1/subscribe/prices.>")
        assert resp.status == 200
        assert resp.content_type == "text/event-stream"
        stream = events(resp)
        assert await next_event(stream) == (
            "subscribed",
            # The bounds in effect: the defaults, capped by the broker's.
            {"subject": "prices.>", "queue": None, "max_pending": 8192, "max_bytes": 4 << 20},
        )
        for i in range(3):
            await service.publish(f"prices.sku{i}", b"\x00\xff%d" % i, headers={"n": str(i)})
        await service.publish("prices.x", b"", reply_to="prices.reply")
        for i in range(3):
            event, msg = await next_event(stream)
            assert event == "message"
            assert msg["subject"] == f"prices.sku{i}"
            assert base64.b64decode(msg["data"]) == b"\x00\xff%d" % i
            assert msg["headers"] == {"n": str(i)}
            assert msg["reply_to"] is None
        assert (await next_event(stream))[1]["reply_to"] == "prices.reply"
        resp.close()


async def test_sse_count_queue_groups_and_ids(srv: Served, http: aiohttp.ClientSession) -> None:
    async with asyncipc.connect(srv.memory) as pub:
        a = await http.get(f"{srv.http}/v1/subscribe/jobs?queue=g&count=10")
        b = await http.get(f"{srv.http}/v1/subscribe/jobs?queue=g&count=10")
        for resp in (a, b):
            assert (await resp.content.readuntil(b"\n\n")).startswith(b"event: subscribed")
        for i in range(20):
            await pub.publish("jobs", str(i).encode())
        texts = [(await a.read()).decode(), (await b.read()).decode()]  # ended after 10 each
    got = [int(base64.b64decode(d)) for t in texts for d in re.findall(r'"data":"([^"]*)"', t)]
    assert sorted(got) == list(range(20))
    assert re.findall(r"^id: (\d+)$", texts[0], re.M) == [str(i) for i in range(1, 11)]


async def test_a_slow_sse_reader_is_bounded_by_its_subscription_policy(tmp_path: Path) -> None:
    """A reader that stops reading: the adapter queues at most what the subscription's
    bounds allow, the rest is dropped and counted, and nothing grows without bound."""
    high_water, size, n, max_pending = 64 * 1024, 8 * 1024, 4000, 16
    async for s in serve(tmp_path, high_water=high_water):
        host, port = s.http.removeprefix("http://").rsplit(":", 1)
        # A small receive buffer, set before connecting so the window stays small: the
        # kernel holds little for this reader, the adapter's bounds are what is tested.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(
            f"GET /v1/subscribe/slow?overflow=drop_new&max_pending={max_pending} HTTP/1.1\r\n"
            "Host: t\r\n\r\n".encode()
        )
        assert b"event: subscribed" in await reader.readuntil(b"event: subscribed")
        # From here on this reader reads nothing: its socket buffers fill, then the
        # adapter's queue, then its drop policy applies.
        async with asyncipc.connect(s.tcp) as pub:
            for i in range(n):
                await pub.publish("slow", i.to_bytes(4, "big") * (size // 4))
            await pub.flush()  # all routed: every drop has happened
        dropped = s.server.dropped + sum(sub.dropped for sub in s.server._live)
        held = s.broker.buffered + s.server.queued
        assert dropped > 0
        assert held <= high_water + max_pending * size
        metrics = await scrape(s.http)
        assert metrics['asyncipc_dropped_total{transport="http"}'] == dropped
        assert metrics['asyncipc_buffered_bytes{transport="http"}'] == held
        # Now it reads: exactly what was not dropped arrives, in order.
        body = b""
        want = n - dropped
        while body.count(b"\nid: ") + body.startswith(b"id: ") < want:
            chunk = await asyncio.wait_for(reader.read(1 << 20), 5)
            assert chunk, "stream ended early"
            body += chunk
        writer.close()
        ids = [int(x) for x in re.findall(rb"id: (\d+)\n", body)]
        assert ids == list(range(1, want + 1))


async def test_a_slow_sse_reader_with_overflow_error_is_cut_off(srv: Served) -> None:
    host, port = srv.http.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /v1/subscribe/cut?overflow=error&max_pending=4 HTTP/1.1\r\nHost: t\r\n\r\n")
    await reader.readuntil(b"event: subscribed")
    async with asyncipc.connect(srv.tcp) as pub:
        for _ in range(2000):
            await pub.publish("cut", b"z" * 8192)
        await pub.flush()
    body = b""
    while b"event: error" not in body:
        chunk = await asyncio.wait_for(reader.read(1 << 20), 5)
        assert chunk, "stream ended without an error event"
        body += chunk
    body += await asyncio.wait_for(reader.read(), 5)  # then the stream ends
    writer.close()
    assert b'"error":"slow_consumer"' in body


# --- WebSockets --------------------------------------------------------------------------


async def test_a_websocket_publisher_reaches_a_unix_subscriber(
    srv: Served, http: aiohttp.ClientSession
) -> None:
    async with (
        asyncipc.connect(srv.unix) as bus,
        bus.subscribe("sensors.*") as sub,
        http.ws_connect(f"{srv.http}/v1/ws") as ws,
    ):
        welcome = await ws.receive_json(timeout=5)
        assert welcome["op"] == "welcome"
        assert welcome["max_payload"] > 0
        await ws.send_json(
            {"op": "publish", "subject": "sensors.t1", "data": b64(b"21.5"), "headers": {"u": "C"}}
        )
        msg = await sub.next_msg(timeout=5)
    assert (msg.subject, msg.data, msg.headers) == ("sensors.t1", b"21.5", {"u": "C"})


async def test_websocket_json_operations(srv: Served, http: aiohttp.ClientSession) -> None:
    async with (
        asyncipc.connect(srv.tcp) as bus,
        http.ws_connect(f"{srv.http}/v1/ws", protocols=("asyncipc.v1.json",)) as ws,
    ):
        assert ws.protocol == "asyncipc.v1.json"
        assert (await ws.receive_json(timeout=5))["op"] == "welcome"

        async def said() -> dict[str, Any]:
            reply: dict[str, Any] = await ws.receive_json(timeout=5)
            return reply

        # subscribe, then a message from a tcp publisher, then answer the request it carries
        await ws.send_json({"op": "subscribe", "id": 1, "subject": "quote.*", "queue": "q"})
        assert await said() == {
            "op": "subscribed",
            "id": 1,
            "max_pending": 8192,
            "max_bytes": 4 << 20,
        }
        asking = asyncio.create_task(bus.request("quote.eur", b"sku", timeout=5))
        msg = await said()
        assert (msg["op"], msg["id"], msg["subject"]) == ("message", 1, "quote.eur")
        assert base64.b64decode(msg["data"]) == b"sku"
        await ws.send_json({"op": "publish", "subject": msg["reply_to"], "data": b64(b"9.99")})
        assert (await asking).data == b"9.99"

        # request from the WebSocket, answered by a tcp handler
        @bus.handler("echo")
        async def echo(m: asyncipc.Message) -> bytes:
            return m.data + b"!"

        await bus.flush()
        await ws.send_json({"op": "request", "id": 7, "subject": "echo", "data": b64(b"hi")})
        reply = await said()
        assert (reply["op"], reply["id"], base64.b64decode(reply["data"])) == ("reply", 7, b"hi!")
        await ws.send_json({"op": "request", "id": 8, "subject": "nobody", "timeout": 2})
        assert await said() == {
            "op": "error",
            "id": 8,
            "error": "no_responders",
            "message": "no responders for request on 'nobody'",
        }

        # errors keep the connection; ids correlate them
        for bad, error in [
            ({"op": "subscribe", "id": 1, "subject": "x"}, "id_in_use"),
            ({"op": "subscribe", "id": 2, "subject": "a..b"}, "invalid_subject"),
            ({"op": "publish", "id": 3, "subject": "a", "data": "%%%"}, "bad_request"),
            ({"op": "fly", "id": 4}, "bad_request"),
            ({"op": "unsubscribe", "id": 99}, "not_found"),
        ]:
            await ws.send_json(bad)
            answer = await said()
            assert (answer["op"], answer["id"], answer["error"]) == ("error", bad["id"], error)
        await ws.send_str("not json")
        assert (await said())["error"] == "bad_request"

        # unsubscribe, then a ping proves nothing more arrives for it
        await ws.send_json({"op": "unsubscribe", "id": 1})
        assert await said() == {"op": "unsubscribed", "id": 1}
        await bus.publish("quote.usd", b"late")
        await bus.flush()
        await ws.send_json({"op": "ping", "id": 5})
        assert await said() == {"op": "pong", "id": 5}

        # a binary message on the JSON protocol: an error, then the socket is closed
        await ws.send_bytes(b"\x00")
        assert (await said())["error"] == "bad_request"
        assert (await ws.receive(timeout=5)).type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1003


async def test_websocket_binary_protocol_violations_get_an_err_frame(
    srv: Served, http: aiohttp.ClientSession
) -> None:
    for first in (b"\x00\x00\x00\x01\x63", b"\x00\x00\x00\x10\x07cut short", "text"):
        async with http.ws_connect(f"{srv.http}/v1/ws", protocols=("asyncipc.v1",)) as ws:
            hello = encode(Hello({"version": 1}))
            await ws.send_bytes(hello)
            if isinstance(first, str):
                await ws.send_str(first)
            else:
                await ws.send_bytes(first)
            frames = []
            while True:
                m = await ws.receive(timeout=5)
                if m.type is not aiohttp.WSMsgType.BINARY:
                    break
                frames += FrameDecoder(max_frame=1 << 24).feed(m.data)
            errors = [f for f in frames if type(f).__name__ == "Err"]
            assert len(errors) == 1, first
            assert errors[0].code == ErrorCode.PROTOCOL
    # The same frames as on a socket, batched in one message, are fine.
    async with (
        asyncipc.connect(srv.tcp) as bus,
        bus.subscribe("raw") as sub,
        http.ws_connect(f"{srv.http}/v1/ws", protocols=("asyncipc.v1",)) as ws,
    ):
        await ws.send_bytes(encode(Hello({"version": 1})) + encode(Pub("raw", b"ok")))
        assert (await sub.next_msg(timeout=5)).data == b"ok"


# --- health, metrics, shutdown -------------------------------------------------------------


async def scrape(url: str, token: str | None = None) -> dict[str, float]:
    """/metrics parsed: every sample line checked against the text format."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics", headers=headers) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = await r.text()
    samples: dict[str, float] = {}
    kinds: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            kinds[name] = kind
            continue
        if line.startswith("# HELP "):
            continue
        m = re.fullmatch(r'([a-z_]+)(\{[a-z_]+="[^"]*"(?:,[a-z_]+="[^"]*")*\})? (\d+)', line)
        assert m, f"not a sample line: {line!r}"
        assert m.group(1) in kinds, f"{m.group(1)} has no TYPE"
        if kinds[m.group(1)] == "counter":
            assert m.group(1).endswith("_total")
        samples[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return samples


async def test_metrics_count_by_transport(srv: Served, http: aiohttp.ClientSession) -> None:
    async with asyncipc.connect(srv.tcp) as bus, bus.subscribe("m.*") as sub:
        for _ in range(3):
            await http.post(f"{srv.http}/v1/publish/m.x", data=b"12345")
        for _ in range(3):
            await sub.next_msg(timeout=5)
        m = await scrape(srv.http)
    assert m['asyncipc_messages_in_total{transport="http"}'] >= 3
    assert m['asyncipc_bytes_in_total{transport="http"}'] >= 15
    assert m['asyncipc_messages_out_total{transport="tcp"}'] == 3
    assert m['asyncipc_bytes_out_total{transport="tcp"}'] == 15
    assert m['asyncipc_connections{transport="tcp"}'] == 1
    assert m['asyncipc_subscriptions{transport="tcp"}'] >= 1
    assert m['asyncipc_http_responses_total{route="/v1/publish/{subject}",status="202"}'] == 3


async def test_a_request_waiting_when_the_broker_shuts_down_gets_503(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async for s in serve(tmp_path, drain_timeout=0.2):
        async with asyncipc.connect(s.tcp) as service:
            silent = service.subscribe("never.answers")
            await service.flush()
            asking = asyncio.create_task(http.post(f"{s.http}/v1/request/never.answers?timeout=60"))
            await silent.next_msg(timeout=5)  # the request is in flight
            await s.broker.close()  # gives up on its reply after drain_timeout
            resp = await asyncio.wait_for(asking, 5)
            assert (resp.status, (await resp.json())["error"]) == (503, "unavailable")
            with pytest.raises(ConnectionRefusedError):  # ... and the port is closed
                await raw_http(s.http, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")


# --- the command line and the example ------------------------------------------------------


async def test_broker_command_serves_http_and_the_curl_example_runs(tmp_path: Path) -> None:
    """``asyncipc broker --http`` in its own process; examples/http_client.sh (curl) against
    it, its request answered by a Python service whose Bus runs over http:// too."""
    script = Path(__file__).resolve().parent.parent / "examples" / "http_client.sh"
    broker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "asyncipc", "broker", "--http", "127.0.0.1:0",
        "--listen", f"unix://{tmp_path}/b.sock",
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "ASYNCIPC_TOKEN": TOKEN},
    )  # fmt: skip
    try:
        assert broker.stdout is not None
        lines = [(await asyncio.wait_for(broker.stdout.readline(), 10)).decode() for _ in "ab"]
        assert lines[0].startswith("listening on unix://"), lines
        url = lines[1].removeprefix("listening on ").strip()
        assert url.startswith("http://127.0.0.1:"), lines
        async with asyncipc.connect(url, token=TOKEN) as service:

            @service.handler("demo.echo")
            async def echo(msg: asyncipc.Message) -> bytes:
                return b"echo: " + msg.data

            await service.flush()
            done = await asyncio.create_subprocess_exec(
                "bash", str(script), url,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "ASYNCIPC_TOKEN": TOKEN},
            )  # fmt: skip
            out, err = await asyncio.wait_for(done.communicate(), 30)
        text = out.decode()
        assert done.returncode == 0, text + err.decode()
        assert '"status": "ok"' in text
        assert "received on greetings.en: hello from curl" in text
        assert "received on greetings.fr: bonjour" in text
        assert "request demo.echo: echo: ping (HTTP 200)" in text
    finally:
        if broker.returncode is None:
            broker.terminate()
        assert await asyncio.wait_for(broker.wait(), 10) == 0
