"""``/v1/streams`` (docs/rest.md, "Streams") against a real broker: an aiohttp server on a
loopback port, aiohttp clients, and native buses on tcp:// beside them that see the same
streams through the client API.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import asyncipc
from asyncipc.adapters.rest import RestServer
from asyncipc.adapters.rest import _streams as rest_streams

pytestmark = pytest.mark.timeout(60)

TOKEN = "s3cret"


@dataclass
class Served:
    broker: asyncipc.Broker
    http: str
    tcp: str
    client: aiohttp.ClientSession

    async def call(self, method: str, path: str, expect: int, **kwargs: Any) -> tuple[int, Any]:
        """``method path``; asserts the status and returns it with the decoded JSON."""
        resp = await self.client.request(method, self.http + path, **kwargs)
        body = await resp.read()
        assert resp.status == expect, (method, path, resp.status, body)
        if resp.status == 204:
            assert body == b""
            return resp.status, None
        assert resp.content_type == "application/json", (path, resp.content_type)
        return resp.status, await resp.json()

    async def error(self, method: str, path: str, expect: int, code: str, **kwargs: Any) -> str:
        """A refused call: its status, its error code; returns the message."""
        _, body = await self.call(method, path, expect, **kwargs)
        assert body["error"] == code, body
        assert isinstance(body["message"], str)
        assert body["message"]
        return str(body["message"])


async def serve(**options: Any) -> AsyncIterator[Served]:
    async with asyncipc.Broker(**options) as broker:
        rest = await broker.listen("http://127.0.0.1:0")
        assert isinstance(rest, RestServer)
        tcp = await broker.listen("tcp://127.0.0.1:0")
        async with aiohttp.ClientSession() as client:
            yield Served(broker, rest.url, tcp.url, client)


@pytest.fixture
async def srv() -> AsyncIterator[Served]:
    async for s in serve():
        yield s


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


ORDERS = {"name": "ORDERS", "subjects": ["orders.>"]}


async def make_orders(srv: Served, **config: Any) -> dict[str, Any]:
    _, info = await srv.call("POST", "/v1/streams", 200, json={**ORDERS, **config})
    return dict(info)


async def publish(srv: Served, subject: str, data: bytes, **headers: str) -> dict[str, Any]:
    _, ack = await srv.call(
        "POST", f"/v1/streams/ORDERS/publish/{subject}", 200, data=data, headers=headers
    )
    return dict(ack)


async def fetch(srv: Served, consumer: str, query: str = "batch=10&timeout=0.5") -> list[Any]:
    _, got = await srv.call("POST", f"/v1/streams/ORDERS/consumers/{consumer}/fetch?{query}", 200)
    assert isinstance(got, list)
    return got


async def ack(srv: Served, consumer: str, token: str, kind: str = "ack", **more: Any) -> None:
    await srv.call(
        "POST",
        f"/v1/streams/ORDERS/consumers/{consumer}/ack",
        204,
        json={"token": token, "kind": kind, **more},
    )


# --- streams -----------------------------------------------------------------------------


async def test_create_publish_with_acks_and_a_native_client_reads_the_stream(srv: Served) -> None:
    info = await make_orders(srv, max_msgs=100)
    assert info["config"]["name"] == "ORDERS"
    assert info["config"]["subjects"] == ["orders.>"]
    assert info["config"]["max_msgs"] == 100
    assert (info["storage"], info["messages"], info["last_seq"]) == ("memory", 0, 0)
    # create-or-get: the same options again get the stream; other ones are a conflict
    _, again = await srv.call("POST", "/v1/streams", 200, json=ORDERS)
    assert again["created"] == info["created"]
    await srv.error("POST", "/v1/streams", 409, "exists", json={**ORDERS, "max_msgs": 5})
    await srv.error("POST", "/v1/streams", 409, "overlap", json={"name": "O2", "subjects": [">"]})

    first = await publish(
        srv,
        "orders.created",
        b'{"id": 7}',
        **{"X-Asyncipc-Msg-Id": "o-7", "X-Asyncipc-Header-Trace": "abc"},
    )
    assert first == {"stream": "ORDERS", "seq": 1, "duplicate": False}
    dup = await publish(srv, "orders.created", b'{"id": 7}', **{"X-Asyncipc-Msg-Id": "o-7"})
    assert dup == {"stream": "ORDERS", "seq": 1, "duplicate": True}
    assert (await publish(srv, "orders.paid", b"\x00\xff"))["seq"] == 2

    async with asyncipc.connect(srv.tcp) as bus:
        await bus.publish("orders.shipped", b"native")  # captured like the others
        stream = await bus.stream("ORDERS")
        consumer = await stream.consumer("native")
        got = await consumer.fetch(10, timeout=2)
        assert [(m.seq, m.subject, m.data) for m in got] == [
            (1, "orders.created", b'{"id": 7}'),
            (2, "orders.paid", b"\x00\xff"),
            (3, "orders.shipped", b"native"),
        ]
        assert got[0].headers is not None
        assert got[0].headers["trace"] == "abc"
        for m in got:
            await m.ack_sync()

    _, listed = await srv.call("GET", "/v1/streams", 200)
    assert [s["config"]["name"] for s in listed["streams"]] == ["ORDERS"]
    _, info = await srv.call("GET", "/v1/streams/ORDERS", 200)
    assert (info["messages"], info["first_seq"], info["last_seq"], info["consumers"]) == (
        3,
        1,
        3,
        1,
    )
    assert info["last_time_ns"] >= info["first_time_ns"] > 0

    _, purged = await srv.call(
        "POST", "/v1/streams/ORDERS/purge", 200, json={"subject": "orders.paid"}
    )
    assert purged == {"purged": 1}
    _, purged = await srv.call("POST", "/v1/streams/ORDERS/purge", 200)
    assert purged == {"purged": 2}

    await srv.call("DELETE", "/v1/streams/ORDERS", 204)
    await srv.error("GET", "/v1/streams/ORDERS", 404, "stream_not_found")
    await srv.error("DELETE", "/v1/streams/ORDERS", 404, "stream_not_found")
    _, listed = await srv.call("GET", "/v1/streams", 200)
    assert listed == {"streams": []}


async def test_a_full_stream_that_discards_new_refuses_with_409(srv: Served) -> None:
    await make_orders(srv, max_msgs=1, discard="new", max_msg_size=4)
    await publish(srv, "orders.a", b"1")
    await srv.error("POST", "/v1/streams/ORDERS/publish/orders.b", 409, "limit", data=b"2")
    await srv.call("POST", "/v1/streams/ORDERS/purge", 200)
    await srv.error("POST", "/v1/streams/ORDERS/publish/orders.b", 409, "too_large", data=b"12345")
    _, info = await srv.call("GET", "/v1/streams/ORDERS", 200)
    assert info["refused"] == 2


# --- consumers ---------------------------------------------------------------------------


async def test_fetch_ack_nak_term_and_the_counts(srv: Served) -> None:
    await make_orders(srv)
    _, created = await srv.call(
        "POST",
        "/v1/streams/ORDERS/consumers",
        200,
        json={"name": "billing", "dead_letter": "dead.orders", "max_deliver": 5},
    )
    assert created["stream"] == "ORDERS"
    assert created["config"]["name"] == "billing"
    assert (created["config"]["durable"], created["config"]["max_deliver"]) == (True, 5)
    # create-or-get, and a conflict
    await srv.call(
        "POST",
        "/v1/streams/ORDERS/consumers",
        200,
        json={"name": "billing", "dead_letter": "dead.orders", "max_deliver": 5},
    )
    _, found = await srv.call(  # the options left out are not compared
        "POST", "/v1/streams/ORDERS/consumers", 200, json={"name": "billing"}
    )
    assert found["config"]["dead_letter"] == "dead.orders"
    await srv.error(
        "POST",
        "/v1/streams/ORDERS/consumers",
        409,
        "exists",
        json={"name": "billing", "max_deliver": 3},
    )
    _, listed = await srv.call("GET", "/v1/streams/ORDERS/consumers", 200)
    assert [c["config"]["name"] for c in listed["consumers"]] == ["billing"]

    for i in range(1, 6):
        await publish(srv, f"orders.{i}", f"m{i}".encode(), **{"X-Asyncipc-Header-N": str(i)})

    got = await fetch(srv, "billing")
    assert [m["seq"] for m in got] == [1, 2, 3, 4, 5]
    m = got[0]
    assert (m["subject"], base64.b64decode(m["data"]), m["headers"]["n"]) == (
        "orders.1",
        b"m1",
        "1",
    )
    assert (m["stream"], m["consumer"], m["num_delivered"]) == ("ORDERS", "billing", 1)
    assert m["time_ns"] > 0
    assert isinstance(m["ack_token"], str)
    assert await fetch(srv, "billing", "batch=10&timeout=0") == []  # all are out

    async with asyncipc.connect(srv.tcp) as bus, bus.subscribe("dead.orders") as dead:
        await bus.flush()
        await ack(srv, "billing", got[0]["ack_token"])
        await ack(srv, "billing", got[1]["ack_token"], "in_progress")
        await ack(srv, "billing", got[1]["ack_token"])
        await ack(srv, "billing", got[2]["ack_token"], "nak")
        await ack(srv, "billing", got[3]["ack_token"], "term")
        await ack(srv, "billing", got[4]["ack_token"], "nak", delay=0.4)
        buried = await dead.next_msg(timeout=5)
        assert (buried.subject, buried.data) == ("dead.orders", b"m4")
        assert buried.headers is not None
        assert buried.headers["asyncipc-dead-reason"] == "terminated"

    again = await fetch(srv, "billing", "batch=10&timeout=0")
    assert [(m["seq"], m["num_delivered"]) for m in again] == [(3, 2)]  # 5 waits its delay
    later = await fetch(srv, "billing", "batch=10&timeout=5")
    assert [(m["seq"], m["num_delivered"]) for m in later] == [(5, 2)]
    _, info = await srv.call("GET", "/v1/streams/ORDERS/consumers/billing", 200)
    assert (info["num_ack_pending"], info["num_redelivered"]) == (2, 2)
    await ack(srv, "billing", again[0]["ack_token"])
    await ack(srv, "billing", later[0]["ack_token"])
    # acknowledged already: the broker says so
    await srv.error(
        "POST",
        "/v1/streams/ORDERS/consumers/billing/ack",
        409,
        "not_pending",
        json={"token": got[0]["ack_token"]},
    )

    _, info = await srv.call("GET", "/v1/streams/ORDERS/consumers/billing", 200)
    assert info["num_pending"] == 0
    assert info["num_ack_pending"] == 0
    assert (info["delivered"], info["ack_floor"], info["dead_lettered"]) == (5, 5, 1)

    await srv.call("DELETE", "/v1/streams/ORDERS/consumers/billing", 204)
    await srv.error("GET", "/v1/streams/ORDERS/consumers/billing", 404, "consumer_not_found")
    await srv.error("DELETE", "/v1/streams/ORDERS/consumers/billing", 404, "consumer_not_found")


async def test_fetch_waits_for_the_first_message_and_takes_only_what_is_at_hand(
    srv: Served,
) -> None:
    await make_orders(srv)
    await srv.call("POST", "/v1/streams/ORDERS/consumers", 200, json={"name": "w"})
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await fetch(srv, "w", "batch=5&timeout=0") == []
    assert loop.time() - started < 2
    async with asyncipc.connect(srv.tcp) as bus:
        waiting = asyncio.create_task(fetch(srv, "w", "batch=5&timeout=10"))
        await asyncio.sleep(0.3)
        await bus.publish("orders.late", b"late")
        got = await asyncio.wait_for(waiting, 5)  # the one that came, not five
    assert [base64.b64decode(m["data"]) for m in got] == [b"late"]
    assert loop.time() - started < 8


async def test_a_fetch_whose_client_hangs_up_leaves_its_messages_to_the_next(srv: Served) -> None:
    await make_orders(srv)
    await srv.call("POST", "/v1/streams/ORDERS/consumers", 200, json={"name": "w"})
    gone = asyncio.create_task(
        srv.client.post(f"{srv.http}/v1/streams/ORDERS/consumers/w/fetch?timeout=20")
    )
    await asyncio.sleep(0.3)
    gone.cancel()  # the client hangs up while its fetch waits at the broker
    with pytest.raises(asyncio.CancelledError):
        await gone
    await asyncio.sleep(0.2)
    await publish(srv, "orders.a", b"x")
    got = await fetch(srv, "w", "batch=1&timeout=5")
    assert [(m["seq"], m["num_delivered"]) for m in got] == [(1, 1)]


async def test_a_fetch_holds_a_bounded_number_of_payload_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each message may be as large as the broker allows: a fetch asks for as many as fit
    in MAX_FETCH_BYTES, and leaves the others with the consumer, not delivered."""
    monkeypatch.setattr(rest_streams, "MAX_FETCH_BYTES", 200 * 1024)
    async for srv in serve(max_frame=64 * 1024):
        await make_orders(srv)
        await srv.call("POST", "/v1/streams/ORDERS/consumers", 200, json={"name": "w"})
        for i in range(10):
            await publish(srv, f"orders.{i}", bytes([i]) * 60_000)
        first = await fetch(srv, "w", "batch=10&timeout=1")
        assert [m["seq"] for m in first] == [1, 2, 3]  # 3 x 64 KiB fit in 200 KiB
        _, info = await srv.call("GET", "/v1/streams/ORDERS/consumers/w", 200)
        assert (info["num_ack_pending"], info["num_pending"]) == (3, 7)
        second = await fetch(srv, "w", "batch=2&timeout=1")
        assert [m["seq"] for m in second] == [4, 5]


# --- what is refused ---------------------------------------------------------------------


async def test_unknown_streams_and_consumers_are_404(srv: Served) -> None:
    await srv.error("GET", "/v1/streams/NOPE", 404, "stream_not_found")
    await srv.error("POST", "/v1/streams/NOPE/purge", 404, "stream_not_found")
    await srv.error("POST", "/v1/streams/NOPE/publish/a", 404, "stream_not_found", data=b"x")
    await srv.error("GET", "/v1/streams/NOPE/consumers", 404, "stream_not_found")
    await srv.error(
        "POST", "/v1/streams/NOPE/consumers", 404, "stream_not_found", json={"name": "c"}
    )
    await srv.error("GET", "/v1/streams/NOPE/consumers/c", 404, "stream_not_found")
    await srv.error("POST", "/v1/streams/NOPE/consumers/c/fetch", 404, "stream_not_found")
    # Only a name: a look-up, as bus.stream(name) is
    message = await srv.error("POST", "/v1/streams", 404, "stream_not_found", json={"name": "N"})
    assert "subjects" in message
    await make_orders(srv)
    await srv.error("GET", "/v1/streams/ORDERS/consumers/c", 404, "consumer_not_found")
    await srv.error("POST", "/v1/streams/ORDERS/consumers/c/fetch", 404, "consumer_not_found")
    await srv.error(
        "POST",
        "/v1/streams/ORDERS/consumers/c/ack",
        404,
        "consumer_not_found",
        json={"token": "$sys.stream.ack.ORDERS.c.1.1.1"},
    )


@pytest.mark.parametrize(
    ("config", "code"),
    [
        ({"subjects": ["a..b"]}, "invalid_subject"),
        ({"subjects": ["$sys.x"]}, "bad_config"),
        ({"subjects": "orders.>"}, "bad_config"),
        ({"subjects": [7]}, "bad_config"),
        ({"max_msgs": -1}, "bad_config"),
        ({"max_msgs": 1.5}, "bad_config"),
        ({"max_age": "1h"}, "bad_config"),
        ({"max_age": 1e300}, "bad_config"),  # past what nanoseconds since 1970 hold
        ({"duplicate_window": 1e300}, "bad_config"),
        ({"discard": "maybe"}, "bad_config"),
        ({"fsync": "sometimes"}, "bad_config"),
        ({"storage": "file"}, "bad_config"),  # this broker has no store
        ({"colour": "red"}, "bad_config"),
        ({"name": "no spaces"}, "bad_config"),
        ({"name": 7}, "bad_config"),
    ],
)
async def test_bad_stream_configurations_are_400(
    srv: Served, config: dict[str, Any], code: str
) -> None:
    await srv.error(
        "POST", "/v1/streams", 400, code, json={"name": "S", "subjects": ["s"], **config}
    )
    _, listed = await srv.call("GET", "/v1/streams", 200)
    assert listed == {"streams": []}


async def test_bad_bodies_parameters_and_tokens_are_400(srv: Served) -> None:
    for body in (b"{not json", b"[1, 2]", b'"ORDERS"', b'{"name": "S", "max_age": NaN}', b""):
        await srv.call("POST", "/v1/streams", 400, data=body)
    await make_orders(srv)
    await srv.error("GET", "/v1/streams/bad%20name", 400, "bad_request")
    await srv.error("GET", "/v1/streams/ORDERS/consumers/a.b", 400, "bad_request")
    await srv.error("POST", "/v1/streams/ORDERS/publish/elsewhere", 400, "wrong_subject", data=b"x")
    await srv.error("POST", "/v1/streams/ORDERS/publish/orders..x", 400, "invalid_subject")
    await srv.error(
        "POST",
        "/v1/streams/ORDERS/publish/orders.x",
        400,
        "bad_request",
        headers={"X-Asyncipc-Msg-Id": ""},
    )
    await srv.error(
        "POST", "/v1/streams/ORDERS/purge", 400, "invalid_subject", json={"subject": "a..b"}
    )
    await srv.error("POST", "/v1/streams/ORDERS/purge", 400, "bad_config", json={"all": True})
    await srv.error("POST", "/v1/streams/ORDERS/purge", 400, "bad_request", data=b"{")

    consumers = "/v1/streams/ORDERS/consumers"
    for config in ({}, {"durable": False, "name": "c"}, {"name": "c", "ack_wait": 0}):
        await srv.error("POST", consumers, 400, "bad_config", json=config)
    await srv.error("POST", consumers, 400, "bad_config", json={"name": "c", "deliver": "soon"})
    await srv.error("POST", consumers, 400, "bad_config", json={"name": "c", "ack_wait": "1"})
    await srv.error(
        "POST",
        consumers,
        400,
        "bad_config",
        json={"name": "c", "deliver": "by_start_time", "start_time": 1e300},
    )
    await srv.error("POST", consumers, 400, "bad_config", json={"name": "c", "filter_subject": "x"})
    await srv.error("POST", consumers, 400, "bad_request", data=b"nope")
    _, listed = await srv.call("GET", consumers, 200)
    assert listed == {"consumers": []}

    await srv.call("POST", consumers, 200, json={"name": "c"})
    for query in ("batch=0", "batch=1001", "batch=x", "batch=1.5", "timeout=-1", "timeout=31",
                  "timeout=nan", "timeout=inf"):  # fmt: skip
        await srv.error("POST", f"{consumers}/c/fetch?{query}", 400, "bad_request")
    for batch in (1, rest_streams.MAX_FETCH_BATCH):
        await srv.call("POST", f"{consumers}/c/fetch?batch={batch}&timeout=0", 200)

    await publish(srv, "orders.a", b"x")
    [msg] = await fetch(srv, "c")
    token = msg["ack_token"]
    for body, code in [
        ({"token": token, "kind": "maybe"}, "bad_request"),
        ({"token": token, "why": "because"}, "bad_request"),
        ({"token": token, "kind": "ack", "delay": 1}, "bad_config"),
        ({"token": token, "kind": "nak", "delay": -1}, "bad_config"),
        ({"token": token, "kind": "nak", "delay": "1"}, "bad_config"),
        ({"token": "orders.a"}, "bad_config"),
        ({"token": "$sys.stream.ack.ORDERS.c.x.1.1"}, "bad_config"),
        ({"token": "$sys.stream.ack.OTHER.c.1.1.1"}, "bad_config"),  # not this consumer's
        ({"token": 7}, "bad_config"),
        ({}, "bad_config"),
    ]:
        await srv.error("POST", f"{consumers}/c/ack", 400, code, json=body)
    await srv.error("POST", f"{consumers}/c/ack", 400, "bad_request", data=b"{")
    await srv.error("POST", f"{consumers}/c/ack", 400, "bad_request", json=[token])
    await ack(srv, "c", token)  # none of that touched it


async def test_the_generic_routes_refuse_the_streams_api(srv: Served) -> None:
    """$sys.stream. requests through the shared bus would make consumers nobody removes
    and pull past the fetch bounds: /v1/streams is the way."""
    await make_orders(srv)
    for route in ("publish", "request"):
        await srv.error("POST", f"/v1/{route}/$sys.stream.list", 403, "reserved")
        await srv.error(
            "POST",
            f"/v1/{route}/$sys.stream.consumer.create.ORDERS",
            403,
            "reserved",
            json={"name": "sneaky"},
        )
    _, listed = await srv.call("GET", "/v1/streams/ORDERS/consumers", 200)
    assert listed == {"consumers": []}
    # Other $sys. subjects still reach the broker, which answers for itself.
    resp = await srv.client.post(f"{srv.http}/v1/request/$sys.kill.nobody", data=b"HUP")
    assert resp.status == 403
    assert (await resp.json())["reason"] == "remote-sender"


async def test_the_token_is_required_on_the_stream_routes() -> None:
    async for srv in serve(token=TOKEN):
        good = {"Authorization": f"Bearer {TOKEN}"}
        for method, path in [
            ("POST", "/v1/streams"),
            ("GET", "/v1/streams"),
            ("GET", "/v1/streams/S"),
            ("DELETE", "/v1/streams/S"),
            ("POST", "/v1/streams/S/purge"),
            ("POST", "/v1/streams/S/publish/s"),
            ("POST", "/v1/streams/S/consumers"),
            ("GET", "/v1/streams/S/consumers"),
            ("GET", "/v1/streams/S/consumers/c"),
            ("DELETE", "/v1/streams/S/consumers/c"),
            ("POST", "/v1/streams/S/consumers/c/fetch"),
            ("POST", "/v1/streams/S/consumers/c/ack"),
        ]:
            await srv.error(method, path, 401, "unauthorized")
            await srv.error(
                method, path, 401, "unauthorized", headers={"Authorization": "Bearer x"}
            )
        await srv.call("GET", "/v1/streams", 200, headers=good)
        await srv.call("GET", f"/v1/streams?access_token={TOKEN}", 200)


async def test_a_broker_with_a_store_keeps_streams_on_file(tmp_path: Path) -> None:
    async for srv in serve(store=tmp_path):
        _, doc = await srv.call("GET", "/v1/openapi.json", 200)
        storage = doc["components"]["schemas"]["StreamConfig"]["properties"]["storage"]
        assert storage["enum"] == ["file", "memory"]
        info = await make_orders(srv, storage="file")
        assert (info["storage"], info["config"]["storage"]) == ("file", "file")
        assert (await publish(srv, "orders.a", b"kept"))["seq"] == 1
        await srv.call("POST", "/v1/streams/ORDERS/consumers", 200, json={"name": "c"})
        [msg] = await fetch(srv, "c")
        await ack(srv, "c", msg["ack_token"])
    async for srv in serve(store=tmp_path):  # the next broker on the same store
        _, info = await srv.call("GET", "/v1/streams/ORDERS", 200)
        assert (info["storage"], info["messages"]) == ("file", 1)
        _, consumer = await srv.call("GET", "/v1/streams/ORDERS/consumers/c", 200)
        assert (consumer["ack_floor"], consumer["num_pending"]) == (1, 0)
    async for srv in serve():
        _, doc = await srv.call("GET", "/v1/openapi.json", 200)
        storage = doc["components"]["schemas"]["StreamConfig"]["properties"]["storage"]
        assert storage["enum"] == ["memory"]
