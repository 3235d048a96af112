"""Conformance checks: messages and what they carry (publish and subscribe, order,
wildcards, queue groups, request/reply and its errors, sizes, bad subjects)."""

from __future__ import annotations

import asyncio
import os

import pytest

from .._connect import connect
from ..errors import (
    FrameTooLarge,
    InvalidSubject,
    NoResponders,
    RequestTimeout,
    ServiceError,
)
from ..message import Message
from ._registry import ConformanceCheck, TransportTraits, drain, registrar

MESSAGES: dict[str, ConformanceCheck] = {}
"""These checks by name, in the order they are defined."""
check = registrar(MESSAGES)


@check()
async def _publish_subscribe_carries_every_field(url: str, p: str, t: TransportTraits) -> None:
    """Subject, data, headers and reply_to arrive as published."""
    async with connect(url) as bus, bus.subscribe(f"{p}.orders.*") as sub:
        await bus.publish(
            f"{p}.orders.created", b'{"id": 7}', headers={"trace": "abc"}, reply_to=f"{p}.r"
        )
        msg = await sub.next_msg(timeout=5)
    assert msg.subject == f"{p}.orders.created"
    assert msg.data == b'{"id": 7}'
    assert msg.headers == {"trace": "abc"}
    assert msg.reply_to == f"{p}.r"


@check()
async def _between_two_connections_in_order(url: str, p: str, t: TransportTraits) -> None:
    """2000 messages from one connection reach another, in order."""
    async with connect(url) as pub, connect(url) as subbus, subbus.subscribe(f"{p}.seq") as sub:
        for i in range(2000):
            await pub.publish(f"{p}.seq", i.to_bytes(4, "big"))
        got = [int.from_bytes((await sub.next_msg(timeout=5)).data, "big") for _ in range(2000)]
    assert got == list(range(2000))


@check()
async def _wildcards(url: str, p: str, t: TransportTraits) -> None:
    """``*`` matches one token, ``>`` the rest, an exact subject itself."""
    async with connect(url) as bus:
        star = bus.subscribe(f"{p}.*.created")
        full = bus.subscribe(f"{p}.>")
        exact = bus.subscribe(f"{p}.a.created")
        await bus.flush()
        for subject in (f"{p}.a.created", f"{p}.b.created", f"{p}.a.b.created", f"{p}.x"):
            await bus.publish(subject, b"")
        await bus.flush()
        assert [m.subject for m in drain(star)] == [f"{p}.a.created", f"{p}.b.created"]
        assert len(drain(full)) == 4
        assert [m.subject for m in drain(exact)] == [f"{p}.a.created"]


@check()
async def _queue_group_shares_and_plain_subscribers_get_all(
    url: str, p: str, t: TransportTraits
) -> None:
    """Members of a queue group split the messages; a plain subscriber gets them all."""
    async with connect(url) as a, connect(url) as b, connect(url) as c:
        w1 = a.subscribe(f"{p}.jobs", queue="workers")
        w2 = b.subscribe(f"{p}.jobs", queue="workers")
        audit = c.subscribe(f"{p}.jobs")
        for bus in (a, b, c):
            await bus.flush()
        for i in range(100):
            await c.publish(f"{p}.jobs", str(i).encode())
        for bus in (c, a, b):
            await bus.flush()
        got1, got2 = drain(w1), drain(w2)
        assert len(got1) + len(got2) == 100
        assert got1, "both members of the group get a share"
        assert got2, "both members of the group get a share"
        assert sorted(int(m.data) for m in got1 + got2) == list(range(100))
        assert len(drain(audit)) == 100


@check()
async def _request_reply_and_its_errors(url: str, p: str, t: TransportTraits) -> None:
    """A reply; NoResponders, RequestTimeout and ServiceError for the three failures; 50
    requests at once each get their own reply."""
    async with connect(url) as server, connect(url) as client:

        @server.handler(f"{p}.upper")
        async def upper(msg: Message) -> bytes:
            return msg.data.upper()

        @server.handler(f"{p}.fail")
        async def fail(msg: Message) -> bytes:
            raise RuntimeError("no stock")

        silent = server.subscribe(f"{p}.silent")
        await server.flush()

        reply = await client.request(f"{p}.upper", b"sku-1", timeout=5)
        assert reply.data == b"SKU-1"
        with pytest.raises(NoResponders):
            await client.request(f"{p}.nobody", b"", timeout=5)
        with pytest.raises(RequestTimeout) as timeout:
            await client.request(f"{p}.silent", b"", timeout=0.2)
        assert isinstance(timeout.value, TimeoutError)
        assert silent.pending == 1
        with pytest.raises(ServiceError, match="internal error") as failed:
            await client.request(f"{p}.fail", b"", timeout=5)
        assert "no stock" not in str(failed.value), "the handler's text stays in the service"
        # Many at once: replies find their own requests.
        replies = await asyncio.gather(
            *(client.request(f"{p}.upper", f"x{i}".encode(), timeout=5) for i in range(50))
        )
        assert [r.data for r in replies] == [f"X{i}".encode() for i in range(50)]


@check()
async def _respond_and_callback_subscriptions(url: str, p: str, t: TransportTraits) -> None:
    """A callback subscription gets the request and answers with ``msg.respond``."""
    seen: list[bytes] = []

    async def on_msg(msg: Message) -> None:
        seen.append(msg.data)
        await msg.respond(b"ack:" + msg.data)

    async with connect(url) as server, connect(url) as client:
        server.subscribe(f"{p}.cb", callback=on_msg)
        await server.flush()
        reply = await client.request(f"{p}.cb", b"1", timeout=5)
    assert reply.data == b"ack:1"
    assert seen == [b"1"]


@check(*((str(n), {"size": n}) for n in (0, 1, 64 * 1024, 1024 * 1024, 6 * 1024 * 1024)))
async def _message_sizes(url: str, p: str, t: TransportTraits, size: int) -> None:
    """A body of this many random bytes arrives intact."""
    if t.max_payload is not None and size > t.max_payload:
        pytest.skip(t.why or f"{size} bytes is over this transport's max_payload")
    payload = os.urandom(size)
    async with connect(url) as bus, bus.subscribe(f"{p}.big") as sub:
        await bus.publish(f"{p}.big", payload)
        msg = await sub.next_msg(timeout=10)
    assert msg.data == payload


@check()
async def _largest_payload_passes_and_one_byte_more_is_refused(
    url: str, p: str, t: TransportTraits
) -> None:
    """A body of exactly ``bus.max_payload`` bytes (what the broker's frame limit leaves)
    arrives intact; one byte more raises FrameTooLarge at the sender."""
    async with connect(url) as bus, bus.subscribe(f"{p}.max") as sub:
        size = bus.max_payload
        if t.max_payload is not None and size > t.max_payload:
            pytest.skip(t.why or f"{size} bytes is over this transport's max_payload")
        payload = os.urandom(size)
        await bus.publish(f"{p}.max", payload, headers={"h": "v"})
        msg = await sub.next_msg(timeout=10)
        assert msg.data == payload
        with pytest.raises(FrameTooLarge, match="exceeds"):
            await bus.publish(f"{p}.max", payload + b"!")


@check()
async def _oversized_refused_at_sender_and_bus_goes_on(
    url: str, p: str, t: TransportTraits
) -> None:
    """A body over the frame limit raises FrameTooLarge before sending; the bus goes on."""
    async with connect(url) as bus, bus.subscribe(f"{p}.x") as sub:
        with pytest.raises(FrameTooLarge, match="exceeds"):
            await bus.publish(f"{p}.x", b"\0" * (9 * 1024 * 1024))
        await bus.publish(f"{p}.x", b"after")
        assert (await sub.next_msg(timeout=5)).data == b"after"


@check()
async def _invalid_subjects_raise_before_sending(url: str, p: str, t: TransportTraits) -> None:
    """Bad subjects and queue names raise at the caller; the connection stays usable."""
    async with connect(url) as bus:
        for bad in ("", "a..b", "a.*", "a.>", " a", "a b"):
            with pytest.raises(InvalidSubject):
                await bus.publish(bad, b"")
        with pytest.raises(ValueError, match="'>' must be the last token"):
            bus.subscribe("a.>.b")
        with pytest.raises(ValueError, match="invalid queue group name"):
            bus.subscribe("a", queue="bad queue")
        await bus.flush()  # still connected and usable
