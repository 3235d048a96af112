"""The conformance checks (DESIGN.md §6): what every transport must do, shipped so that
someone writing a transport tests it the way asyncipc's own suite does.

Each check connects its own buses to a broker already listening at ``url``, works under
a subject prefix of its own (so checks may share one broker), and leaves nothing
subscribed behind. ``tests/test_conformance.py`` runs every check over every built-in
transport; :func:`check_transport` runs them all against one URL.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pytest

from .._connect import connect
from ..errors import (
    ClosedError,
    FrameTooLarge,
    InvalidSubject,
    NoResponders,
    RequestTimeout,
    ServiceError,
    SlowConsumer,
)
from ..message import Message
from ..subscription import Subscription

__all__ = [
    "CHECKS",
    "ConformanceCheck",
    "ConformanceReport",
    "TransportTraits",
    "check_transport",
    "conformance_params",
    "traits_for",
]

UDP_MAX_PAYLOAD = 65419
"""The largest payload over udp:// with the default max_datagram (docs/transports.md)."""


@dataclass(frozen=True)
class TransportTraits:
    """What a transport does not promise, so the checks that need it skip (with ``why``)
    rather than fail. The defaults are a stream transport's: every check applies."""

    max_payload: int | None = None
    """The largest message body it carries (None: up to the broker's frame limit, 8 MiB
    by default); the size checks above it skip."""
    holds_back_publishers: bool = True
    """Whether a subscriber that stops reading slows the publisher down (the ``block``
    policy end to end); False skips that check."""
    why: str = ""
    """Where the reader learns why (a docs reference), quoted in each skip."""


def traits_for(url: str) -> TransportTraits:
    """The traits of a built-in transport, by the URL's scheme."""
    scheme = url.split(":", 1)[0]
    if scheme == "udp":
        return TransportTraits(
            max_payload=UDP_MAX_PAYLOAD,
            why="udp carries one frame per datagram: see docs/transports.md, UDP",
        )
    if scheme == "nats":
        return TransportTraits(
            holds_back_publishers=False,
            why="a NATS server never holds a publisher back for a slow subscriber: "
            "docs/transports.md, NATS (tests/test_nats.py checks what block keeps there)",
        )
    return TransportTraits()


CheckFn = Callable[[str, str, TransportTraits], Awaitable[None]]


@dataclass(frozen=True)
class ConformanceCheck:
    """One check: ``await check(url)``; its ``name`` is a stable id for test reports."""

    name: str
    fn: CheckFn
    doc: str

    async def __call__(
        self, url: str, prefix: str | None = None, traits: TransportTraits | None = None
    ) -> None:
        """Run against the broker at ``url``, under ``prefix`` (default: a random one).
        Raises AssertionError (or the library's exception) if the transport misbehaves,
        and ``pytest.skip.Exception`` if ``traits`` say the check does not apply."""
        await self.fn(url, prefix or f"t{os.urandom(4).hex()}", traits or traits_for(url))

    def __repr__(self) -> str:
        return f"<ConformanceCheck {self.name}>"


CHECKS: dict[str, ConformanceCheck] = {}
"""Every check by name, in the order :func:`check_transport` runs them."""


def _check(*variants: tuple[str, dict[str, Any]]) -> Callable[[Any], Any]:
    """Register a check, once per ``(suffix, keyword arguments)`` variant if given."""

    def register(fn: Any) -> Any:
        base = fn.__name__.lstrip("_")
        for suffix, kwargs in variants or (("", {}),):
            name = f"{base}_{suffix}" if suffix else base
            bound = functools.partial(fn, **kwargs) if kwargs else fn
            CHECKS[name] = ConformanceCheck(name, bound, (fn.__doc__ or "").strip())
        return fn

    return register


def _drain(sub: Subscription) -> list[Message]:
    """What the subscription holds now, without waiting (after a flush of both sides)."""
    out = []
    while sub.pending:
        out.append(sub._queue.popleft())
    return out


# --- the checks ----------------------------------------------------------------------------


@_check()
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


@_check()
async def _between_two_connections_in_order(url: str, p: str, t: TransportTraits) -> None:
    """2000 messages from one connection reach another, in order."""
    async with connect(url) as pub, connect(url) as subbus, subbus.subscribe(f"{p}.seq") as sub:
        for i in range(2000):
            await pub.publish(f"{p}.seq", i.to_bytes(4, "big"))
        got = [int.from_bytes((await sub.next_msg(timeout=5)).data, "big") for _ in range(2000)]
    assert got == list(range(2000))


@_check()
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
        assert [m.subject for m in _drain(star)] == [f"{p}.a.created", f"{p}.b.created"]
        assert len(_drain(full)) == 4
        assert [m.subject for m in _drain(exact)] == [f"{p}.a.created"]


@_check()
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
        got1, got2 = _drain(w1), _drain(w2)
        assert len(got1) + len(got2) == 100
        assert got1, "both members of the group get a share"
        assert got2, "both members of the group get a share"
        assert sorted(int(m.data) for m in got1 + got2) == list(range(100))
        assert len(_drain(audit)) == 100


@_check()
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


@_check()
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


@_check(*((str(n), {"size": n}) for n in (0, 1, 64 * 1024, 1024 * 1024, 6 * 1024 * 1024)))
async def _message_sizes(url: str, p: str, t: TransportTraits, size: int) -> None:
    """A body of this many random bytes arrives intact."""
    if t.max_payload is not None and size > t.max_payload:
        pytest.skip(t.why or f"{size} bytes is over this transport's max_payload")
    payload = os.urandom(size)
    async with connect(url) as bus, bus.subscribe(f"{p}.big") as sub:
        await bus.publish(f"{p}.big", payload)
        msg = await sub.next_msg(timeout=10)
    assert msg.data == payload


@_check()
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


@_check()
async def _oversized_refused_at_sender_and_bus_goes_on(
    url: str, p: str, t: TransportTraits
) -> None:
    """A body over the frame limit raises FrameTooLarge before sending; the bus goes on."""
    async with connect(url) as bus, bus.subscribe(f"{p}.x") as sub:
        with pytest.raises(FrameTooLarge, match="exceeds"):
            await bus.publish(f"{p}.x", b"\0" * (9 * 1024 * 1024))
        await bus.publish(f"{p}.x", b"after")
        assert (await sub.next_msg(timeout=5)).data == b"after"


@_check()
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


@_check(
    ("drop_new", {"overflow": "drop_new", "kept": range(10)}),
    ("drop_oldest", {"overflow": "drop_oldest", "kept": range(90, 100)}),
)
async def _drop_policies(url: str, p: str, t: TransportTraits, overflow: str, kept: range) -> None:
    """A full subscription keeps the first (drop_new) or the last (drop_oldest) messages."""
    async with (
        connect(url) as pub,
        connect(url) as subbus,
        subbus.subscribe(f"{p}.d", max_pending=10, overflow=overflow) as sub,
    ):
        for i in range(100):
            await pub.publish(f"{p}.d", str(i).encode())
        await pub.flush()
        await subbus.flush()
        assert sub.dropped == 90
        assert [int(m.data) for m in _drain(sub)] == list(kept)


@_check()
async def _error_policy_yields_what_it_has_then_raises(
    url: str, p: str, t: TransportTraits
) -> None:
    """overflow="error": the messages held are read, then SlowConsumer."""
    async with connect(url) as bus:
        sub = bus.subscribe(f"{p}.e", max_pending=5, overflow="error")
        await bus.flush()
        for i in range(20):
            await bus.publish(f"{p}.e", str(i).encode())
        await bus.flush()
        got = [int((await sub.next_msg(timeout=5)).data) for _ in range(5)]
        assert got == [0, 1, 2, 3, 4]
        with pytest.raises(SlowConsumer, match="fell behind"):
            await sub.next_msg(timeout=5)
        assert not sub.active


@_check()
async def _block_policy_slows_the_publisher_and_loses_nothing(
    url: str, p: str, t: TransportTraits
) -> None:
    """A subscriber that stops reading holds the publisher back (through the broker), and
    once it reads again every message arrives, in order."""
    if not t.holds_back_publishers:
        pytest.skip(t.why or "this transport does not hold a publisher back")
    # 62 MiB: far more than every buffer on the way together. 25 MiB was not, once, over
    # TCP loopback, whose autotuned socket buffers reach several MiB on each of four ends.
    n, size = 1000, 64 * 1024
    if t.max_payload is not None and t.max_payload < size:
        # One datagram each over udp (docs/transports.md, UDP): 60 KiB, still 58 MiB.
        size = (t.max_payload - 4096) // 1024 * 1024
    async with connect(url) as pub, connect(url) as subbus:
        sub = subbus.subscribe(f"{p}.b", max_pending=8)
        await subbus.flush()
        progress = 0

        async def produce() -> None:
            nonlocal progress
            for i in range(n):
                await pub.publish(f"{p}.b", i.to_bytes(4, "big") * (size // 4))
                progress = i + 1

        task = asyncio.create_task(produce())
        try:
            for _ in range(50):  # let it run until it stalls
                await asyncio.sleep(0.02)
            assert not task.done(), "the publisher should be held back by the stalled subscriber"
            assert progress < n
            got = []
            async for msg in sub:
                got.append(int.from_bytes(msg.data[:4], "big"))
                if len(got) == n:
                    break
            await task
        finally:
            task.cancel()
        assert got == list(range(n))


@_check()
async def _close_drains_what_was_published(url: str, p: str, t: TransportTraits) -> None:
    """close() returns once the broker has every message published before it."""
    async with connect(url) as subbus, subbus.subscribe(f"{p}.drain") as sub:
        pub = await connect(url)
        for i in range(500):
            await pub.publish(f"{p}.drain", str(i).encode())
        await pub.close()  # returns only once the broker has everything
        got = [int((await sub.next_msg(timeout=5)).data) for _ in range(500)]
        assert got == list(range(500))
        with pytest.raises(ClosedError):
            await pub.publish(f"{p}.drain", b"late")


@_check()
async def _close_lets_handlers_finish(url: str, p: str, t: TransportTraits) -> None:
    """close() waits for a handler in progress, whose reply reaches the requester."""
    started = asyncio.Event()
    release = asyncio.Event()
    async with connect(url) as client:
        server = await connect(url)

        @server.handler(f"{p}.slow")
        async def slow(msg: Message) -> bytes:
            started.set()
            await release.wait()
            return b"done"

        await server.flush()
        pending = asyncio.create_task(client.request(f"{p}.slow", b"", timeout=10))
        await started.wait()
        closing = asyncio.create_task(server.close())
        await asyncio.sleep(0.05)
        release.set()
        await closing
        assert (await pending).data == b"done"


@_check()
async def _reconnect_after_close_and_subscriptions_go_with_the_bus(
    url: str, p: str, t: TransportTraits
) -> None:
    """A closed bus's handlers are gone; a new connection serves again."""
    bus = await connect(url)

    @bus.handler(f"{p}.svc")
    async def svc(msg: Message) -> bytes:
        return b"one"

    await bus.flush()
    await bus.close()
    async with connect(url) as again:
        with pytest.raises(NoResponders):
            await again.request(f"{p}.svc", b"", timeout=5)

        @again.handler(f"{p}.svc")
        async def svc2(msg: Message) -> bytes:
            return b"two"

        await again.flush()
        assert (await again.request(f"{p}.svc", b"", timeout=5)).data == b"two"


@_check()
async def _unsubscribe_stops_delivery(url: str, p: str, t: TransportTraits) -> None:
    """Nothing published after unsubscribe() is delivered."""
    async with connect(url) as bus:
        sub = bus.subscribe(f"{p}.u")
        await bus.flush()
        await bus.publish(f"{p}.u", b"1")
        await bus.flush()
        await sub.unsubscribe()
        await bus.publish(f"{p}.u", b"2")
        await bus.flush()
        assert [m.data async for m in sub] == [b"1"]


@_check()
async def _drain_leaves_a_queue_group_without_losing_a_message(
    url: str, p: str, t: TransportTraits
) -> None:
    """unsubscribe() drops what the broker already sent; drain() keeps it, so every
    message reaches exactly one member while one of them leaves mid-stream."""
    n = 2000
    async with connect(url) as pub, connect(url) as a, connect(url) as b:
        # A small bound on a: its link pauses, so messages wait in flight for it.
        sa = a.subscribe(f"{p}.work", queue="g", max_pending=10)
        sb = b.subscribe(f"{p}.work", queue="g")
        await a.flush()
        await b.flush()
        got_b: list[int] = []

        async def read_b() -> None:
            async for m in sb:
                got_b.append(int(m.data[:8]))

        async def publish() -> None:
            for i in range(n):
                # 4 KiB each: more than a socket buffer holds is in flight for a.
                await pub.publish(f"{p}.work", b"%08d" % i + bytes(4096))
            await pub.flush()

        reader = asyncio.create_task(read_b())
        publisher = asyncio.create_task(publish())
        try:
            got_a: list[int] = []
            async for m in sa:
                got_a.append(int(m.data[:8]))
                if len(got_a) == 50:
                    await sa.drain(timeout=10)  # iteration goes on with what was in flight
            await publisher
            await b.flush()  # b's PONG follows every message routed to it
            await sb.drain(timeout=10)
            await reader
        finally:
            reader.cancel()
            publisher.cancel()
    assert sorted(got_a + got_b) == list(range(n))
    assert len(got_a) >= 50


@_check()
async def _serve_drain_answers_the_request_in_hand(url: str, p: str, t: TransportTraits) -> None:
    """A served subscription's drain() waits for the handler; then no responders."""
    async with connect(url) as service, connect(url) as client:
        started = asyncio.Event()
        release = asyncio.Event()

        async def slow(msg: Message) -> bytes:
            started.set()
            await release.wait()
            return b"done:" + msg.data

        sub = service.serve(f"{p}.slow", slow)
        await service.flush()
        request = asyncio.create_task(client.request(f"{p}.slow", b"x", timeout=10))
        await started.wait()
        draining = asyncio.create_task(sub.drain(timeout=10))
        await asyncio.sleep(0.05)
        assert not draining.done(), "drain() returned before the handler finished"
        release.set()
        await draining
        assert (await request).data == b"done:x"
        with pytest.raises(NoResponders):
            await client.request(f"{p}.slow", b"y", timeout=5)


# --- running them ----------------------------------------------------------------------------


def conformance_params(exclude: Iterable[str] = ()) -> list[Any]:
    """``pytest.param(check, id=name)`` for each check: for
    ``@pytest.mark.parametrize("check", conformance_params())``."""
    skip = set(exclude)
    unknown = skip - CHECKS.keys()
    if unknown:
        raise ValueError(f"no conformance check named {sorted(unknown)}: see CHECKS")
    return [pytest.param(c, id=name) for name, c in CHECKS.items() if name not in skip]


@dataclass
class ConformanceReport:
    """What :func:`check_transport` ran: the names that passed and those skipped (why)."""

    url: str
    passed: list[str]
    skipped: dict[str, str]


async def check_transport(
    url: str,
    *,
    traits: TransportTraits | None = None,
    exclude: Iterable[str] = (),
    timeout: float = 60.0,
) -> ConformanceReport:
    """Run every conformance check against the broker listening at ``url``.

    Runs them one after another (each under its own subject prefix and time-out), and
    raises one AssertionError listing every check that failed, with what went wrong, if
    any did; otherwise returns what passed and what was skipped for ``traits`` (default:
    those of the URL's built-in scheme, :func:`traits_for`). ``exclude`` names checks
    not to run (:data:`CHECKS` lists them)."""
    traits = traits or traits_for(url)
    report = ConformanceReport(url, [], {})
    failures: list[tuple[str, BaseException]] = []
    for param in conformance_params(exclude):
        check: ConformanceCheck = param.values[0]
        guard = asyncio.timeout(timeout)
        try:
            async with guard:
                await check(url, traits=traits)
        except pytest.skip.Exception as exc:
            report.skipped[check.name] = str(exc.msg)
        except Exception as exc:
            failure: BaseException = exc
            if isinstance(exc, TimeoutError) and guard.expired():
                failure = AssertionError(f"did not finish within {timeout} s")
                failure.__cause__ = exc
            failures.append((check.name, failure))
        else:
            report.passed.append(check.name)
    if failures:
        lines = [f"  {name}: {type(exc).__name__}: {exc}" for name, exc in failures]
        raise AssertionError(
            f"{len(failures)} of {len(failures) + len(report.passed) + len(report.skipped)} "
            f"conformance checks failed against {url}:\n" + "\n".join(lines)
        ) from failures[0][1]
    return report
