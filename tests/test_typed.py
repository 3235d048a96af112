"""Typed messages (DESIGN.md §11, docs/services.md): handlers, requests and subscriptions
that take and return pydantic models, msgspec structs and dataclasses, over real brokers."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os

import msgspec
import pydantic
import pytest

import asyncipc
from asyncipc.typed import CONTENT_TYPE_HEADER, JSON, MSGPACK

# A broker in this event loop, one in its own process on a Unix socket, and real pipes.
URLS = ["memory", "unix-process", "pipe"]


class Quote(pydantic.BaseModel):
    sku: str
    qty: int


class Price(pydantic.BaseModel):
    sku: str
    total: float


class SQuote(msgspec.Struct):
    sku: str
    qty: int


class SPrice(msgspec.Struct):
    sku: str
    total: float


@dataclasses.dataclass
class DOrder:
    id: int
    item: str


@pytest.fixture
def p() -> str:
    """A subject prefix of this test's own: the broker process is shared."""
    return f"t{os.urandom(4).hex()}"


@pytest.mark.parametrize("url", URLS, indirect=True)
async def test_pydantic_handler_and_request(url: str, p: str) -> None:
    async with asyncipc.connect(url) as server, asyncipc.connect(url) as client:

        @server.handler(f"{p}.pricing.quote")
        async def quote(q: Quote) -> Price:
            assert isinstance(q, Quote)
            return Price(sku=q.sku, total=q.qty * 2.5)

        await server.flush()
        price = await client.request(f"{p}.pricing.quote", Quote(sku="a", qty=4), response=Price)
        assert price == Price(sku="a", total=10.0)
        # Without response= the reply is the Message, its JSON body labelled as such.
        reply = await client.request(f"{p}.pricing.quote", Quote(sku="b", qty=1))
        assert isinstance(reply, asyncipc.Message)
        assert reply.headers is not None
        assert reply.headers[CONTENT_TYPE_HEADER] == JSON
        assert msgspec.json.decode(reply.data) == {"sku": "b", "total": 2.5}


@pytest.mark.parametrize("url", URLS, indirect=True)
async def test_msgspec_handler_and_request(url: str, p: str) -> None:
    async with asyncipc.connect(url) as server, asyncipc.connect(url) as client:

        @server.handler(f"{p}.quote")
        async def quote(q: SQuote) -> SPrice:
            assert isinstance(q, SQuote)
            return SPrice(q.sku, q.qty * 1.5)

        await server.flush()
        price = await client.request(f"{p}.quote", SQuote("x", 2), response=SPrice)
        assert price == SPrice("x", 3.0)
        # The two libraries meet on the wire: a pydantic requester, a msgspec service.
        assert await client.request(f"{p}.quote", Quote(sku="y", qty=2), response=Price) == (
            Price(sku="y", total=3.0)
        )


async def test_dataclass_and_dict_bodies() -> None:
    async with asyncipc.connect("memory://typed-dc") as bus:

        @bus.handler("orders.make")
        async def make(order: DOrder) -> dict[str, object]:
            assert isinstance(order, DOrder)
            return {"made": order.id, "item": order.item.upper()}

        await bus.flush()
        got = await bus.request("orders.make", DOrder(7, "tea"), response=dict)
        assert got == {"made": 7, "item": "TEA"}


@pytest.mark.parametrize("url", URLS, indirect=True)
async def test_subscribe_with_model_decodes_body_and_keeps_bytes(url: str, p: str) -> None:
    async with asyncipc.connect(url) as bus:
        async with bus.subscribe(f"{p}.orders.*", model=Quote) as sub:
            await bus.publish(f"{p}.orders.created", Quote(sku="k", qty=3))
            msg = await sub.next_msg(timeout=5)
        assert isinstance(msg, asyncipc.TypedMessage)
        assert msg.body == Quote(sku="k", qty=3)
        assert msg.data == b'{"sku":"k","qty":3}'
        assert msg.headers == {CONTENT_TYPE_HEADER: JSON}
        assert msg.subject == f"{p}.orders.created"


@pytest.mark.parametrize("url", URLS, indirect=True)
async def test_msgpack_on_request(url: str, p: str) -> None:
    seen: list[str | None] = []
    async with asyncipc.connect(url) as server, asyncipc.connect(url) as client:

        @server.handler(f"{p}.quote")
        async def quote(q: Quote, msg: asyncipc.Message) -> Price:
            seen.append((msg.headers or {}).get(CONTENT_TYPE_HEADER))
            return Price(sku=q.sku, total=q.qty * 2.0)

        await server.flush()
        reply = await client.request(f"{p}.quote", Quote(sku="m", qty=5), encoding="msgpack")
        assert seen == [MSGPACK]
        assert reply.headers is not None
        assert reply.headers[CONTENT_TYPE_HEADER] == MSGPACK
        assert msgspec.msgpack.decode(reply.data) == {"sku": "m", "total": 10.0}
        price = await client.request(
            f"{p}.quote", SQuote("n", 1), encoding="msgpack", response=SPrice
        )
        assert price == SPrice("n", 2.0)
        # A subscriber with a model reads msgpack by the header too.
        async with client.subscribe(f"{p}.ev", model=SQuote) as sub:
            await client.publish(f"{p}.ev", SQuote("z", 9), {CONTENT_TYPE_HEADER: MSGPACK})
            msg = await sub.next_msg(timeout=5)
        assert msg.body == SQuote("z", 9)
        assert msg.data == msgspec.msgpack.encode(SQuote("z", 9))


@pytest.mark.parametrize("url", URLS, indirect=True)
@pytest.mark.parametrize("model", [Quote, SQuote], ids=["pydantic", "msgspec"])
async def test_invalid_request_body_is_a_service_error_naming_the_field(
    url: str, p: str, model: type
) -> None:
    calls: list[object] = []
    async with asyncipc.connect(url) as server, asyncipc.connect(url) as client:

        async def quote(q: Quote | SQuote) -> Price:
            calls.append(q)
            return Price(sku=q.sku, total=float(q.qty))

        quote.__annotations__["q"] = model  # the same handler, typed by each library
        server.serve(f"{p}.quote", quote)
        await server.flush()
        with pytest.raises(asyncipc.ServiceError) as err:
            await client.request(f"{p}.quote", {"sku": "a", "qty": "many"}, timeout=5)
        assert "invalid request body" in str(err.value)
        assert "qty" in str(err.value)
        with pytest.raises(asyncipc.ServiceError, match="sku"):
            await client.request(f"{p}.quote", {"qty": 1}, timeout=5)
        assert calls == []  # the handler never saw the bad bodies
        # ... and the service carries on.
        assert await client.request(f"{p}.quote", {"sku": "a", "qty": 2}, response=Price) == (
            Price(sku="a", total=2.0)
        )


async def test_content_type_mismatch_and_unknown_content_type() -> None:
    async with asyncipc.connect("memory://typed-ctype") as bus:

        @bus.handler("quote")
        async def quote(q: Quote) -> Price:
            return Price(sku=q.sku, total=1.0)

        await bus.flush()
        json_body = b'{"sku":"a","qty":1}'
        # JSON bytes labelled msgpack: read as msgpack, they are not a Quote.
        with pytest.raises(asyncipc.ServiceError, match="invalid request body"):
            await bus.request("quote", json_body, headers={CONTENT_TYPE_HEADER: MSGPACK})
        with pytest.raises(asyncipc.ServiceError, match="unsupported content-type 'text/plain'"):
            await bus.request("quote", json_body, headers={CONTENT_TYPE_HEADER: "text/plain"})
        # No header at all: JSON, so a bytes client (a shell, the REST adapter) can call it;
        # parameters after the type are ignored.
        assert (await bus.request("quote", json_body)).data == b'{"sku":"a","total":1.0}'
        charset = {CONTENT_TYPE_HEADER: "application/json; charset=utf-8"}
        assert (await bus.request("quote", json_body, headers=charset)).data.startswith(b"{")


async def test_reply_that_does_not_validate_raises_invalid_body() -> None:
    async with asyncipc.connect("memory://typed-reply") as bus:

        @bus.handler("quote")
        async def quote(msg: asyncipc.Message) -> bytes:
            return b'{"sku": "a", "total": "lots"}'

        await bus.flush()
        with pytest.raises(asyncipc.InvalidBody, match=r"not a valid Price: total"):
            await bus.request("quote", Quote(sku="a", qty=1), response=Price)
        with pytest.raises(asyncipc.InvalidBody, match=r"not a valid SPrice: total"):
            await bus.request("quote", b"", response=SPrice)


async def test_bytes_handlers_are_unchanged() -> None:
    """A first parameter annotated Message, or not annotated, is today's bytes handler:
    it gets the Message, must return bytes, and no content-type is added."""
    async with asyncipc.connect("memory://typed-bytes") as bus:

        @bus.handler("annotated")
        async def annotated(msg: asyncipc.Message) -> bytes:
            return msg.data[::-1]

        @bus.handler("bare")
        async def bare(msg):  # type: ignore[no-untyped-def]
            assert isinstance(msg, asyncipc.Message)
            return msg.data.upper()

        @bus.handler("wrong")
        async def wrong(msg: asyncipc.Message) -> bytes:
            return {"not": "bytes"}  # type: ignore[return-value]

        await bus.flush()
        reply = await bus.request("annotated", b"abc")
        assert reply.data == b"cba"
        assert reply.headers is None
        assert (await bus.request("bare", b"abc")).data == b"ABC"
        with pytest.raises(asyncipc.ServiceError, match="returned dict, not bytes"):
            await bus.request("wrong", b"")
        # publish() still refuses a str: its encoding is the caller's to choose.
        with pytest.raises(TypeError, match="not str"):
            await bus.publish("x", "text")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="not int"):
            await bus.publish("x", 5)  # type: ignore[arg-type]


async def test_invalid_message_on_typed_subscription_is_counted_logged_and_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "asyncipc.client")
    async with asyncipc.connect("memory://typed-sub") as bus:
        got: list[Quote] = []
        done = asyncio.Event()

        async def on_quote(msg: asyncipc.Message) -> None:
            assert isinstance(msg, asyncipc.TypedMessage)
            got.append(msg.body)
            if len(got) == 2:
                done.set()

        sub = bus.subscribe("q.*", model=Quote, callback=on_quote)
        await bus.flush()
        await bus.publish("q.1", Quote(sku="a", qty=1))
        await bus.publish("q.2", b"not json")
        await bus.publish("q.3", {"sku": "b"})
        await bus.publish("q.4", {"sku": "c", "qty": "x"})
        await bus.publish("q.5", Quote(sku="d", qty=4))
        await asyncio.wait_for(done.wait(), 5)
        assert [q.sku for q in got] == ["a", "d"]
        assert isinstance(sub, asyncipc.TypedSubscription)
        assert sub.invalid == 3
        assert sub.last_invalid.startswith("q.4: qty")
        assert sub.active  # the loop did not crash
        warnings = [r for r in caplog.records if "skipped a message" in r.getMessage()]
        assert len(warnings) == 1, "logged once per interval, not once per message"
        assert "q.2" in warnings[0].getMessage()


async def test_typed_next_batch_leaves_out_invalid() -> None:
    async with asyncipc.connect("memory://typed-batch") as bus:
        async with bus.subscribe("b", model=SQuote) as sub:
            for body in (SQuote("a", 1), b"{}", SQuote("b", 2)):
                await bus.publish("b", body)
            await bus.flush()
            batch = await sub.next_batch(timeout=5)
        assert [m.body for m in batch] == [SQuote("a", 1), SQuote("b", 2)]  # type: ignore[attr-defined]
        assert sub.invalid == 1


async def test_handler_errors_still_reach_the_requester() -> None:
    async with asyncipc.connect("memory://typed-errors") as bus:

        @bus.handler("div")
        async def div(q: Quote) -> Price:
            if q.qty == 0:
                raise asyncipc.ServiceError("qty must not be 0")
            return Price(sku=q.sku, total=1 / q.qty)

        @bus.handler("unencodable")
        async def unencodable(q: Quote) -> Price:
            return object()  # type: ignore[return-value]

        await bus.flush()
        with pytest.raises(asyncipc.ServiceError, match="qty must not be 0"):
            await bus.request("div", Quote(sku="a", qty=0))
        with pytest.raises(asyncipc.ServiceError, match="cannot be encoded"):
            await bus.request("unencodable", Quote(sku="a", qty=1))


@pytest.mark.parametrize("url", ["memory", "unix-process"], indirect=True)
@pytest.mark.parametrize("limit", [1, 3])
async def test_max_concurrency_bounds_handlers_in_progress(url: str, p: str, limit: int) -> None:
    """Exactly ``limit`` requests are in the handler at once: the rest wait in the
    subscription's queue, not in tasks, until one finishes."""
    in_progress = 0
    most = 0
    order: list[int] = []
    full = asyncio.Event()
    release = asyncio.Event()
    async with asyncipc.connect(url) as server, asyncipc.connect(url) as client:

        @server.handler(f"{p}.slow", max_concurrency=limit)
        async def slow(q: Quote) -> Quote:
            nonlocal in_progress, most
            in_progress += 1
            most = max(most, in_progress)
            order.append(q.qty)
            if in_progress == limit:
                full.set()
            await release.wait()
            in_progress -= 1
            return q

        sub_count = limit + 2
        await server.flush()
        requests = [
            asyncio.ensure_future(
                client.request(f"{p}.slow", Quote(sku="s", qty=i), response=Quote, timeout=30)
            )
            for i in range(sub_count)
        ]
        await asyncio.wait_for(full.wait(), 10)
        # Every request has reached the server's queue (the broker answered our PING after
        # routing them); give the runner every chance to start more than it may.
        await client.flush()
        await server.flush()
        for _ in range(20):
            await asyncio.sleep(0)
        assert in_progress == limit
        release.set()
        replies = await asyncio.gather(*requests)
        assert [r.qty for r in replies] == list(range(sub_count))
        assert most == limit
        if limit == 1:
            assert order == list(range(sub_count)), "max_concurrency=1 keeps the order"


async def test_default_handler_concurrency_is_not_one_at_a_time() -> None:
    started = 0
    all_in = asyncio.Event()
    async with asyncipc.connect("memory://typed-default") as bus:

        @bus.handler("wait")
        async def wait(msg: asyncipc.Message) -> bytes:
            nonlocal started
            started += 1
            if started == 10:
                all_in.set()
            await all_in.wait()  # only returns once ten run at the same time
            return b"ok"

        await bus.flush()
        replies = await asyncio.gather(*(bus.request("wait", timeout=10) for _ in range(10)))
        assert [r.data for r in replies] == [b"ok"] * 10


async def test_close_waits_for_concurrent_handlers_and_their_replies() -> None:
    release = asyncio.Event()
    async with asyncipc.Broker() as broker:
        await broker.listen("memory://typed-close")
        client = await asyncipc.connect("memory://typed-close")
        server = await asyncipc.connect("memory://typed-close")

        @server.handler("slow", max_concurrency=4)
        async def slow(msg: asyncipc.Message) -> bytes:
            await release.wait()
            return msg.data

        await server.flush()
        requests = [
            asyncio.ensure_future(client.request("slow", b"%d" % i, timeout=10)) for i in range(6)
        ]
        await client.flush()
        await server.flush()
        closing = asyncio.ensure_future(server.close())
        await asyncio.sleep(0)
        release.set()
        await closing
        assert sorted(r.data for r in await asyncio.gather(*requests)) == [
            b"%d" % i for i in range(6)
        ]
        await client.close()


async def test_bad_max_concurrency_and_encoding() -> None:
    async with asyncipc.connect("memory://typed-bad") as bus:
        with pytest.raises(asyncipc.ConfigurationError, match="max_concurrency"):
            bus.subscribe("x", callback=lambda m: asyncio.sleep(0), max_concurrency=0)
        with pytest.raises(asyncipc.ConfigurationError, match="encoding"):
            await bus.request("x", Quote(sku="a", qty=1), encoding="xml")


async def test_close_cancels_a_handler_that_never_ends() -> None:
    cancelled = asyncio.Event()
    entered = asyncio.Event()
    options = asyncipc.ConnectOptions(drain_timeout=0.5)
    async with asyncipc.Broker() as broker:
        await broker.listen("memory://typed-stuck")
        bus = await asyncipc.connect("memory://typed-stuck", options=options)

        @bus.handler("stuck")
        async def stuck(msg: asyncipc.Message) -> bytes:
            entered.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return b""

        await bus.flush()
        await bus.publish("stuck", b"", reply_to="nobody.listens")
        await asyncio.wait_for(entered.wait(), 5)
        await asyncio.wait_for(bus.close(), 10)
        assert cancelled.is_set()


NO_EXTRAS = """
import asyncio, dataclasses, sys
sys.modules["msgspec"] = None    # as on a plain install: neither extra
sys.modules["pydantic"] = None
import asyncipc

@dataclasses.dataclass
class Quote:
    sku: str
    qty: int

async def main():
    async with asyncipc.connect("memory://plain") as bus:
        @bus.handler("quote")
        async def quote(q: Quote) -> dict:
            return {"sku": q.sku, "total": q.qty * 2}

        await bus.flush()
        print(await bus.request("quote", Quote("a", 3), response=dict))
        try:
            await bus.request("quote", {"sku": "a"})
        except asyncipc.ServiceError as exc:
            print("refused:", exc)
        try:
            await bus.request("quote", Quote("a", 3), encoding="msgpack")
        except asyncipc.ConfigurationError as exc:
            print("msgpack:", exc)

asyncio.run(main())
"""


def test_dataclasses_and_json_work_without_either_extra() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", NO_EXTRAS], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "{'sku': 'a', 'total': 6}"
    assert lines[1].startswith("refused: handler for 'quote' failed: invalid request body")
    assert "qty" in lines[1]
    assert lines[2] == "msgpack: msgpack needs msgspec: pip install 'asyncipc[msgspec]'"


async def test_a_message_handler_may_return_models() -> None:
    """First parameter a Message, return annotation a model: the reply is encoded."""
    async with asyncipc.connect("memory://typed-ret") as bus:

        @bus.handler("latest")
        async def latest(msg: asyncipc.Message) -> dict[str, float]:
            return {"cpu": 0.5, "asked": float(len(msg.data))}

        await bus.flush()
        assert await bus.request("latest", b"abc", response=dict) == {"cpu": 0.5, "asked": 3.0}
        packed = await bus.request("latest", b"", encoding="msgpack")
        assert packed.headers == {CONTENT_TYPE_HEADER: MSGPACK}
        assert msgspec.msgpack.decode(packed.data) == {"cpu": 0.5, "asked": 0.0}


async def test_handlers_see_their_own_task() -> None:
    """Each concurrent handler runs as its own task: ``asyncio.timeout()`` and
    ``current_task()`` inside it are about the handler, never about the bus's reader."""
    async with asyncipc.connect("memory://typed-own-task") as bus:

        @bus.handler("slow", expose_errors=True)
        async def slow(msg: asyncipc.Message) -> bytes:
            async with asyncio.timeout(0.05):
                await asyncio.Event().wait()  # never set: the time-out ends it
            return b"unreachable"

        tasks: list[asyncio.Task[object] | None] = []
        both = asyncio.Event()

        @bus.handler("who")
        async def who(msg: asyncipc.Message) -> bytes:
            tasks.append(asyncio.current_task())
            if len(tasks) == 2:
                both.set()
            await both.wait()  # two at once: each must be in a task of its own
            return b""

        await bus.flush()
        for _ in range(2):
            with pytest.raises(asyncipc.ServiceError, match="TimeoutError"):
                await bus.request("slow", timeout=5)
        await asyncio.gather(bus.request("who", timeout=5), bus.request("who", timeout=5))
        assert len(set(tasks)) == 2, "two handlers waiting at once shared a task"


async def test_worker_pool_shrinks_after_a_burst_and_drain_waits_for_it() -> None:
    from asyncipc._workers import KEEP_IDLE

    release = asyncio.Event()
    started = 0
    all_in = asyncio.Event()
    async with asyncipc.connect("memory://typed-burst") as bus:

        async def slow(msg: asyncipc.Message) -> bytes:
            nonlocal started
            started += 1
            if started == 20:
                all_in.set()
            if started == 21:
                late_in.set()
            await release.wait()
            return msg.data

        late_in = asyncio.Event()
        sub = bus.serve("burst", slow)
        await bus.flush()
        requests = [
            asyncio.ensure_future(bus.request("burst", b"%d" % i, timeout=10)) for i in range(20)
        ]
        await asyncio.wait_for(all_in.wait(), 10)
        assert sub._running is not None
        assert len(sub._running) >= 19  # one task per waiting handler (the first is the runner)
        release.set()
        assert len(await asyncio.gather(*requests)) == 20
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(sub._running) <= KEEP_IDLE, "idle workers beyond the few kept must end"
        # Requests in progress when drain() starts are answered before it returns.
        release.clear()
        late = asyncio.ensure_future(bus.request("burst", b"late", timeout=10))
        await asyncio.wait_for(late_in.wait(), 10)
        draining = asyncio.ensure_future(sub.drain())
        await asyncio.sleep(0)
        assert not draining.done()
        release.set()
        await asyncio.wait_for(draining, 10)
        assert late.done()
        assert (await late).data == b"late"
        assert not sub._running


def test_bytes_annotations_keep_the_bytes_path() -> None:
    """``-> bytes | None`` (the Handler alias) or ``Optional[bytes]`` is the bytes
    handler, served by the old code: a str returned stays an error, not JSON."""
    from typing import Optional

    from asyncipc._responder import responder
    from asyncipc.typed import signature_of

    async def union(msg: asyncipc.Message) -> bytes | None:
        return None

    async def optional(msg: asyncipc.Message | None) -> Optional[bytes]:  # noqa: UP045
        return None

    async def model_or_none(msg: asyncipc.Message) -> Price | None:
        return None

    for fn in (union, optional):
        sig = signature_of(fn)
        assert (sig.request, sig.response) == (None, None)
        served = responder("s", fn)
        # The plain bytes responder: by its name, or its class's once compiled (mypyc).
        name = getattr(served, "__qualname__", None) or type(served).__name__
        assert name in ("responder.<locals>.serve", "serve_responder_obj")
    assert signature_of(model_or_none).response == Price | None


async def test_a_concurrent_callback_may_return_any_awaitable() -> None:
    seen: list[bytes] = []
    got_two = asyncio.Event()
    async with asyncipc.connect("memory://typed-awaitable") as bus:
        loop = asyncio.get_running_loop()

        def callback(msg: asyncipc.Message) -> asyncio.Future[None]:
            seen.append(msg.data)
            fut: asyncio.Future[None] = loop.create_future()
            loop.call_soon(fut.set_result, None)  # a future, not a coroutine, that waits
            if len(seen) == 2:
                got_two.set()
            return fut

        bus.subscribe("aw", callback=callback, max_concurrency=8)
        await bus.flush()
        await bus.publish("aw", b"1")
        await bus.publish("aw", b"2")
        await asyncio.wait_for(got_two.wait(), 5)
        assert seen == [b"1", b"2"]
