"""Monitoring (docs/monitoring.md): ``/varz``, ``/connz``, ``/subsz``, ``/streamz`` and
``/subjectz`` on the http listener, and the same figures on ``$sys.monitor.`` subjects.

Real brokers, real clients over Unix sockets and TCP; the slow consumer is a raw socket
that subscribes and never reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import asyncipc
from asyncipc.protocol import Overflow
from tests.test_wire_raw import client as raw_client
from tests.test_wire_raw import sub as raw_sub

TOKEN = "s3cret"


@dataclass
class Served:
    broker: asyncipc.Broker
    http: str
    unix: str
    tcp: str
    session: aiohttp.ClientSession
    headers: dict[str, str]

    async def get(self, path: str, status: int = 200) -> dict[str, Any]:
        async with self.session.get(self.http + path, headers=self.headers) as r:
            body: dict[str, Any] = await r.json()
            assert r.status == status, body
            return body


@contextlib.asynccontextmanager
async def serve(tmp_path: Path, **options: Any) -> AsyncIterator[Served]:
    async with asyncipc.Broker(**options) as broker:
        http = await broker.listen("http://127.0.0.1:0")
        unix = await broker.listen(f"unix://{tmp_path}/b.sock")
        tcp = await broker.listen("tcp://127.0.0.1:0")
        token = options.get("token")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with aiohttp.ClientSession() as session:
            yield Served(broker, http.url, unix.url, tcp.url, session, headers)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with serve(tmp_path) as s:
        yield s


def by_name(connz: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in connz["connections"]}


# --- /varz ------------------------------------------------------------------------------


async def test_varz_counts_follow_clients_and_messages(served: Served) -> None:
    before = await served.get("/varz")
    for key in ("server_id", "version", "start", "now", "uptime", "mem", "cores", "cpu"):
        assert key in before, key
    assert before["server_id"] == served.broker.server_id
    assert before["max_pending"] == served.broker.options.high_water
    assert before["max_payload"] == served.broker.options.max_frame
    assert served.unix in before["listen"]
    assert served.http in before["listen"]
    assert 1 << 20 < before["mem"] < 4 << 30  # RSS of a real process, in bytes
    async with (
        asyncipc.connect(served.unix, name="pub") as pub,
        asyncipc.connect(served.tcp, name="sub") as sub,
    ):
        s = sub.subscribe("v.>")
        await sub.flush()
        for _ in range(25):
            await pub.publish("v.x", b"0123456789")
        await pub.flush()
        for _ in range(25):
            await s.next_msg(timeout=5)
        after = await served.get("/varz")
    assert after["connections"] == before["connections"] + 2
    assert after["total_connections"] == before["total_connections"] + 2
    assert after["subscriptions"] == before["subscriptions"] + 1
    assert after["in_msgs"] - before["in_msgs"] == 25
    assert after["out_msgs"] - before["out_msgs"] == 25
    assert after["in_bytes"] - before["in_bytes"] == 250
    assert after["transports"]["unix"]["in_msgs"] == 25
    assert after["transports"]["tcp"]["out_msgs"] == 25


async def test_totals_keep_the_traffic_of_clients_that_left(served: Served) -> None:
    """Each connection counts on its own; the totals by transport sum the connections
    here and those gone (asyncipc/_stats.py)."""
    for i in range(3):
        async with asyncipc.connect(served.unix, name=f"gone{i}") as bus:
            for _ in range(5):
                await bus.publish("nobody", b"12345")
            await bus.flush()
    for _ in range(500):  # the broker notices the last hang-up
        if not any(
            c["name"].startswith("gone") for c in (await served.get("/connz"))["connections"]
        ):
            break
        await asyncio.sleep(0.01)
    unix = (await served.get("/varz"))["transports"]["unix"]
    assert unix["connections"] == 0
    assert unix["total_connections"] == 3
    assert (unix["in_msgs"], unix["in_bytes"]) == (15, 75)
    stats = served.broker.stats
    assert stats.transport("unix").messages_in == 15
    assert stats.transport("nothing").messages_in == 0
    async with served.session.get(f"{served.http}/metrics") as r:
        assert 'asyncipc_messages_in_total{transport="unix"} 15' in await r.text()


def test_broker_stats_sum_connections_present_and_gone() -> None:
    stats = asyncipc.BrokerStats()
    a, b = stats.connection("tcp"), stats.connection("tcp")
    a.messages_in, b.messages_in, b.bytes_out = 2, 3, 10
    assert stats.transport("tcp").messages_in == 5
    stats.retire("tcp", a)
    stats.retire("tcp", a)  # twice: counted once
    b.messages_in += 1
    assert stats.transport("tcp").messages_in == 6
    assert stats.transport("tcp").bytes_out == 10
    stats.retire("unix", b)  # under another name than it was counted: found anyway
    assert stats.transport("tcp").messages_in == 6
    assert list(stats.transports) == ["tcp"]


# --- /connz -----------------------------------------------------------------------------


async def test_connz_lists_each_client_with_its_own_traffic(served: Served) -> None:
    async with (
        asyncipc.connect(served.unix, name="alice") as alice,
        asyncipc.connect(served.tcp, name="bob") as bob,
    ):
        s1 = bob.subscribe("orders.*")
        bob.subscribe("audit.>", queue="q")
        await bob.flush()
        for _ in range(10):
            await alice.publish("orders.new", b"x" * 100)
        await alice.flush()
        for _ in range(10):
            await s1.next_msg(timeout=5)
        connz = await served.get("/connz")
        conns = by_name(connz)
        a, b = conns["alice"], conns["bob"]
        assert connz["total"] == connz["num_connections"] == len(connz["connections"])
        assert a["transport"] == "unix"
        assert b["transport"] == "tcp"
        # Unix sockets say who is there (SO_PEERCRED); TCP says where from.
        assert a["pid"] == os.getpid()
        assert a["uid"] == os.geteuid()
        assert b["ip"] == "127.0.0.1"
        assert isinstance(b["port"], int)
        assert (a["in_msgs"], a["in_bytes"], a["out_msgs"]) == (10, 1000, 0)
        assert (b["in_msgs"], b["out_msgs"], b["out_bytes"]) == (0, 10, 1000)
        assert (a["subscriptions"], b["subscriptions"]) == (0, 2)
        assert b["pending_bytes"] == 0
        assert b["write_blocked"] is False
        for field in ("cid", "start", "uptime", "idle", "in_msgs_rate", "out_msgs_rate"):
            assert field in a, field
        assert "subscriptions_list" not in b

        listed = by_name(await served.get("/connz?subs=1"))["bob"]
        assert listed["subscriptions_list"] == ["audit.>", "orders.*"]
        detail = by_name(await served.get("/connz?subs=detail"))["bob"]
        [orders] = [d for d in detail["subscriptions_list_detail"] if d["subject"] == "orders.*"]
        assert orders["overflow"] == "block"
        assert orders["qgroup"] is None
        [audit] = [d for d in detail["subscriptions_list_detail"] if d["subject"] == "audit.>"]
        assert audit["qgroup"] == "q"


async def test_connz_pages_and_sorts(served: Served) -> None:
    async with contextlib.AsyncExitStack() as stack:
        buses = [
            await stack.enter_async_context(asyncipc.connect(served.unix, name=f"c{i}"))
            for i in range(4)
        ]
        for i, bus in enumerate(buses):  # c3 publishes most, c0 least
            for _ in range(i + 1):
                await bus.publish("nobody.listens", b"")
            await bus.flush()
        everyone = await served.get("/connz")
        cids = [c["cid"] for c in everyone["connections"]]
        assert cids == sorted(cids)  # by cid unless asked
        page = await served.get("/connz?limit=2&offset=1")
        assert page["total"] == everyone["total"]
        assert page["num_connections"] == 2
        assert [c["cid"] for c in page["connections"]] == cids[1:3]
        assert (page["offset"], page["limit"]) == (1, 2)
        busiest = await served.get("/connz?sort=msgs_from&limit=1")
        assert busiest["connections"][0]["name"] == "c3"
        past_the_end = await served.get(f"/connz?offset={len(cids)}")
        assert past_the_end["connections"] == []
        assert past_the_end["total"] == len(cids)


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ("sort=fastest", "sort must be one of cid, start"),
        ("limit=0", "limit must be between 1 and"),
        ("offset=-1", "offset must be between 0 and"),
        ("limit=ten", "limit must be an integer, not 'ten'"),
        ("subs=maybe", "subs must be 1, 0, true, false or detail, not 'maybe'"),
        ("colour=red", "connz has no option 'colour'"),
    ],
)
async def test_connz_refuses_bad_options_by_name(served: Served, query: str, names: str) -> None:
    body = await served.get(f"/connz?{query}", status=400)
    assert body["error"] == "bad_request"
    assert names in body["message"]


async def test_connz_rates_measure_the_last_interval(served: Served) -> None:
    async with asyncipc.connect(served.unix, name="steady") as bus:
        await served.get("/connz")  # the first look: a sample to measure from
        start = time.monotonic()
        sent = 0
        while time.monotonic() - start < 1.2:
            for _ in range(20):
                await bus.publish("tick", b"")
            sent += 20
            await bus.flush()
            await asyncio.sleep(0.02)
        steady = by_name(await served.get("/connz"))["steady"]
        elapsed = time.monotonic() - start
        assert steady["in_msgs"] == sent
        # Measured over the interval since the first look: the average over it.
        assert sent / elapsed * 0.5 < steady["in_msgs_rate"] < sent / elapsed * 2
        await asyncio.sleep(1.1)  # silence: the next look's interval saw nothing
        idle = by_name(await served.get("/connz"))["steady"]
        assert idle["in_msgs_rate"] == 0.0
        assert idle["in_msgs"] == sent


# --- /subsz and slow consumers ------------------------------------------------------------


async def test_subsz_lists_policies_pending_and_drops_of_a_slow_consumer(tmp_path: Path) -> None:
    async with (
        serve(tmp_path, high_water=64 * 1024) as served,
        raw_client(served.unix, name="sloth") as sloth,
        asyncipc.connect(served.tcp, name="flood") as flood,
    ):
        # Subscribes and never reads: the broker's buffer for it fills, then drops.
        sloth.send(raw_sub(1, "firehose", overflow=Overflow.DROP_NEW))
        await sloth.flush()
        for _ in range(300):
            await flood.publish("firehose", b"x" * 32768)
        await flood.flush()
        subsz = await served.get("/subsz?subs=1")
        [entry] = subsz["subscriptions_list"]
        assert entry["name"] == "sloth"
        assert entry["subject"] == "firehose"
        assert entry["overflow"] == "drop_new"
        assert entry["max_pending"] == 64 * 1024
        assert entry["slow"] is True
        assert entry["pending_bytes"] >= 64 * 1024
        assert entry["dropped"] > 0
        assert subsz["dropped"] == entry["dropped"]
        sloth_conn = by_name(await served.get("/connz"))["sloth"]
        assert sloth_conn["pending_bytes"] >= 64 * 1024
        assert sloth_conn["write_blocked"] is True
        assert sloth_conn["dropped"] == entry["dropped"]


async def test_a_cut_off_slow_consumer_is_remembered(tmp_path: Path) -> None:
    async with (
        serve(tmp_path, high_water=64 * 1024) as served,
        raw_client(served.unix, name="cut") as cut,
        asyncipc.connect(served.tcp, name="flood") as flood,
    ):
        cut.send(raw_sub(7, "firehose", overflow=Overflow.ERROR))
        await cut.flush()
        for _ in range(300):
            await flood.publish("firehose", b"x" * 32768)
        await flood.flush()
        subsz = await served.get("/subsz?subs=1")
        assert subsz["subscriptions_list"] == []  # cut off: gone from the table
        assert subsz["slow_consumers"] == 1
        [gone] = subsz["recent_slow_consumers"]
        assert (gone["name"], gone["subject"], gone["sid"]) == ("cut", "firehose", 7)
        assert gone["reason"] == "cut_off"
        assert (await served.get("/varz"))["slow_consumers"] == 1


async def test_subsz_counts_pages_and_tests_a_subject(served: Served) -> None:
    async with asyncipc.connect(served.unix, name="many") as bus:
        for subject in ("a.b", "a.*", "a.>", "c.d", "e"):
            bus.subscribe(subject)
        await bus.flush()
        counts = await served.get("/subsz")
        assert counts["num_subscriptions"] == counts["total"] == 5
        assert "subscriptions_list" not in counts
        page = await served.get("/subsz?subs=1&limit=2&offset=3")
        assert [s["subject"] for s in page["subscriptions_list"]] == ["c.d", "e"]
        hit = await served.get("/subsz?subs=1&test=a.b")
        assert sorted(s["subject"] for s in hit["subscriptions_list"]) == ["a.*", "a.>", "a.b"]
        assert hit["total"] == 3
        bad = await served.get("/subsz?test=a..b", status=400)
        assert "test:" in bad["message"]


# --- /streamz ------------------------------------------------------------------------------


async def test_streamz_shows_streams_and_consumers(served: Served) -> None:
    async with asyncipc.connect(served.unix) as bus:
        stream = await bus.stream("ORDERS", subjects=["orders.>"], storage="memory")
        for i in range(3):
            await bus.publish("orders.new", b"%d" % i)
        await bus.flush()
        await stream.consumer("billing")
        await asyncio.sleep(0)  # capture happens as the broker routes: done by the flush
        streamz = await served.get("/streamz")
        assert (streamz["streams"], streamz["consumers"], streamz["messages"]) == (1, 1, 3)
        [entry] = streamz["streams_list"]
        assert entry["name"] == "ORDERS"
        assert entry["subjects"] == ["orders.>"]
        assert entry["storage"] == "memory"
        assert entry["last_seq"] == 3
        assert "consumers" not in entry
        detailed = await served.get("/streamz?consumers=1")
        [consumer] = detailed["streams_list"][0]["consumers"]
        assert consumer["config"]["name"] == "billing"
        assert consumer["num_pending"] == 3
        assert (await served.get("/varz"))["streams"] == 1


# --- /subjectz -------------------------------------------------------------------------------


async def test_subjectz_meters_while_someone_looks(served: Served) -> None:
    broker = served.broker
    async with asyncipc.connect(served.unix, name="p") as bus:
        await bus.publish("before.looking", b"")
        await bus.flush()
        assert not broker.monitor.metering  # nothing counted while nobody looks
        first = await served.get("/subjectz")
        assert first["subjects"] == []
        assert broker.monitor.metering
        for _ in range(5):
            await bus.publish("orders.new", b"")
        await bus.publish("orders.old", b"")
        s = bus.subscribe("svc")

        @bus.handler("echo")
        async def echo(msg: asyncipc.Message) -> bytes:
            return msg.data

        await bus.flush()
        for _ in range(3):
            await bus.request("echo", b"hi", timeout=5)
        await asyncio.sleep(0.1)  # a rate needs an interval to be measured over
        rows = {r["subject"]: r for r in (await served.get("/subjectz"))["subjects"]}
        assert rows["orders.new"]["msgs"] == 5
        assert rows["orders.old"]["msgs"] == 1
        assert rows["echo"]["msgs"] == 3
        assert rows["_INBOX.>"]["msgs"] == 3  # every reply inbox counted as one subject
        assert "before.looking" not in rows
        assert rows["orders.new"]["msgs_rate"] > 0
        await s.unsubscribe()
    broker.monitor.close()
    assert not broker.monitor.metering


# --- the same figures over the bus -----------------------------------------------------------


async def test_sys_monitor_subjects_answer_a_plain_client(served: Served) -> None:
    async with asyncipc.connect(served.unix, name="looker") as bus:
        varz = json.loads((await bus.request("$sys.monitor.varz", b"", timeout=5)).data)
        assert varz["server_id"] == served.broker.server_id
        assert varz["connections"] >= 1
        reply = await bus.request("$sys.monitor.connz", b'{"subs": true, "limit": 1}', timeout=5)
        connz = json.loads(reply.data)
        assert connz["limit"] == 1
        assert connz["total"] >= 1
        assert "subscriptions_list" in connz["connections"][0]
        subsz = json.loads((await bus.request("$sys.monitor.subsz", b"", timeout=5)).data)
        assert "num_subscriptions" in subsz
        streamz = json.loads((await bus.request("$sys.monitor.streamz", b"", timeout=5)).data)
        assert streamz["streams"] == 0
        subjectz = json.loads((await bus.request("$sys.monitor.subjectz", b"", timeout=5)).data)
        assert "subjects" in subjectz

        with pytest.raises(asyncipc.ServiceError, match="sort must be one of"):
            await bus.request("$sys.monitor.connz", b'{"sort": "nope"}', timeout=5)
        with pytest.raises(asyncipc.ServiceError, match="no monitoring endpoint 'routez'"):
            await bus.request("$sys.monitor.routez", b"", timeout=5)
        with pytest.raises(asyncipc.ServiceError, match="options are not JSON"):
            await bus.request("$sys.monitor.varz", b"{oops", timeout=5)
        with pytest.raises(asyncipc.ServiceError, match="JSON object"):
            await bus.request("$sys.monitor.varz", b"[1]", timeout=5)
        # The broker and this client carry on.
        assert json.loads((await bus.request("$sys.monitor.varz", b"", timeout=5)).data)


async def test_sys_monitor_without_a_reply_subject_is_an_error_frame(served: Served) -> None:
    async with raw_client(served.unix) as conn:
        from tests.test_wire_raw import pub as raw_pub

        conn.send(raw_pub("$sys.monitor.varz", b""))
        _code, _, text = await conn.expect_err()
        assert "is a request: send it with a reply subject" in text
        await conn.flush()  # still connected


# --- authentication ----------------------------------------------------------------------------


async def test_monitoring_needs_the_token_when_the_broker_has_one(tmp_path: Path) -> None:
    async with serve(tmp_path, token=TOKEN) as served:
        for path in ("/varz", "/connz", "/subsz", "/streamz", "/subjectz", "/dashboard/events"):
            async with served.session.get(served.http + path) as r:
                assert r.status == 401, path
        assert (await served.get("/varz"))["auth_required"] is True
        async with served.session.get(f"{served.http}/varz?access_token={TOKEN}") as r:
            assert r.status == 200
        async with asyncipc.connect(served.unix, token=TOKEN) as bus:
            varz = json.loads((await bus.request("$sys.monitor.varz", b"", timeout=5)).data)
            assert varz["auth_required"] is True


# --- the dashboard's event stream ---------------------------------------------------------------


async def test_dashboard_events_stream_snapshots(served: Served) -> None:
    async with asyncipc.connect(served.unix, name="watched") as bus:
        await bus.publish("x", b"")
        await bus.flush()
        url = f"{served.http}/dashboard/events?count=2&interval=0.2"
        async with served.session.get(url) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "text/event-stream"
            text = await r.text()
        events = [block for block in text.split("\n\n") if block]
        assert len(events) == 2
        for block in events:
            event, data = block.split("\n")
            assert event == "event: snapshot"
            snap = json.loads(data.removeprefix("data: "))
            assert set(snap) == {"varz", "connz", "subsz", "subjectz", "streamz"}
            assert "watched" in by_name(snap["connz"])
        async with served.session.get(f"{served.http}/dashboard/events?interval=0") as r:
            assert r.status == 400
            assert "interval must be between" in (await r.json())["message"]


async def test_dashboard_event_stream_ends_when_the_broker_closes(tmp_path: Path) -> None:
    broker = asyncipc.Broker()
    http = await broker.listen("http://127.0.0.1:0")
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{http.url}/dashboard/events?interval=30") as r:
            first = await r.content.readuntil(b"\n\n")
            assert first.startswith(b"event: snapshot")
            started = time.monotonic()
            await broker.close()
            rest = await asyncio.wait_for(r.content.read(), 5)
        assert b"event: error" in rest
        assert time.monotonic() - started < 1.5  # not held for the 30 s interval


async def test_dashboard_page_and_assets_are_served(served: Served) -> None:
    async with served.session.get(f"{served.http}/dashboard") as r:
        assert r.status == 200
        assert r.content_type == "text/html"
        page = await r.text()
        assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    assert 'src="dashboard/dashboard.js"' in page
    for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
        async with served.session.get(f"{served.http}/dashboard/{name}") as r:
            assert r.status == 200
            assert r.content_type == kind
            body = await r.text()
            if name == "dashboard.js":
                assert "innerHTML" not in body  # data goes in as text only
    async with served.session.get(f"{served.http}/dashboard/../pyproject.toml") as r:
        assert r.status == 404


# --- the pure parts -------------------------------------------------------------------------


def test_samples_measure_against_a_sample_at_least_a_second_old() -> None:
    from asyncipc._rates import Samples

    samples = Samples()
    # The first look: averages since each counter was born (the floor: 0.0).
    assert samples.rates(10.0, {"a": 100}, {}, 0.0) == {"a": 10.0}
    # 0.5 s later: the only sample is younger than a second, so it is the base anyway.
    assert samples.rates(10.5, {"a": 150}, {}, 0.0) == {"a": 100.0}
    # 1.5 s after the first: the newest sample at least 1 s old is the first one.
    assert samples.rates(11.5, {"a": 250}, {}, 0.0) == {"a": 100.0}
    # A counter new since then was zero at the base, or born later (a new connection).
    out = samples.rates(12.6, {"a": 250, "new": 10, "late": 10}, {"late": 12.1}, 0.0)
    assert out["a"] == 0.0
    assert out["new"] == pytest.approx(10 / 1.1)
    assert out["late"] == pytest.approx(10 / 0.5)


def test_subject_meter_is_bounded() -> None:
    from asyncipc._rates import METER_MAX_SUBJECTS, SubjectMeter

    meter = SubjectMeter()
    for i in range(METER_MAX_SUBJECTS + 50):
        assert meter.wants(f"s.{i}") is False  # it takes nothing
    meter.wants("_INBOX.abc.1")
    meter.wants("_INBOX.def.2")
    assert len(meter.counts) == METER_MAX_SUBJECTS + 2  # and "...", "_INBOX.>"
    assert meter.counts["..."] == 50
    assert meter.counts["_INBOX.>"] == 2
