"""Services (DESIGN.md §11, docs/services.md): endpoints grouped under a name, discovery on
``$SRV.PING``/``INFO``/``STATS`` with NATS micro's documents, per-endpoint stats, and the
``asyncipc services`` command, against a real broker process."""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Iterator

import msgspec
import pydantic
import pytest

import asyncipc
from asyncipc.service import INFO_RESPONSE, PING_RESPONSE, STATS_RESPONSE, discover
from tests.test_cli import TOKEN, BrokerProc, arun, cli_env


class Quote(pydantic.BaseModel):
    sku: str
    qty: int


class Price(msgspec.Struct):
    sku: str
    total: float


# The JSON schemas of ADR-32 (io.nats.micro.v1.*) require these keys.
PING_KEYS = {"type", "name", "id", "version", "metadata"}
INFO_KEYS = PING_KEYS | {"description", "endpoints"}
STATS_KEYS = PING_KEYS | {"started", "endpoints"}
STAT_KEYS = {
    "name",
    "subject",
    "queue_group",
    "num_requests",
    "num_errors",
    "last_error",
    "processing_time",
    "average_processing_time",
}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProc]:
    """``asyncipc broker`` on a Unix socket, for the module."""
    d = tmp_path_factory.mktemp("svc")
    proc = BrokerProc(
        f"unix://{d}/broker.sock", log=d / "broker.log", env=cli_env(ASYNCIPC_TOKEN=TOKEN)
    )
    yield proc
    assert proc.stop() == 0


def pricing(prefix: str) -> asyncipc.Service:
    svc = asyncipc.Service(f"{prefix}pricing", "1.2.0", "prices quotes", metadata={"team": "a"})

    @svc.endpoint("quote")
    async def quote(q: Quote) -> Price:
        if q.qty < 0:
            raise asyncipc.ServiceError("qty must not be negative")
        return Price(q.sku, q.qty * 2.5)

    @svc.endpoint("echo", subject=f"{prefix}echo.raw", queue=None, max_concurrency=1)
    async def echo(msg: asyncipc.Message) -> bytes:
        return msg.data

    return svc


def billing(prefix: str) -> asyncipc.Service:
    svc = asyncipc.Service(f"{prefix}billing", "0.3.1-beta.2")

    @svc.endpoint("charge")
    async def charge(q: Quote) -> Price:
        return Price(q.sku, float(q.qty))

    return svc


@pytest.fixture
def prefix() -> str:
    return f"t{os.urandom(3).hex()}_"


@pytest.mark.one_loop("the $SRV protocol; three discoveries wait their whole 2 s each")
async def test_two_services_answer_ping_info_stats(broker: BrokerProc, prefix: str) -> None:
    async with (
        asyncipc.connect(broker.url, token=TOKEN) as a,
        asyncipc.connect(broker.url, token=TOKEN) as b,
        asyncipc.connect(broker.url, token=TOKEN) as client,
        pricing(prefix).start(a) as p_svc,
        billing(prefix).start(b) as b_svc,
    ):
        pings = await discover(client, "PING", timeout=2)
        mine = {d["name"]: d for d in pings if d["name"].startswith(prefix)}
        assert set(mine) == {f"{prefix}pricing", f"{prefix}billing"}
        for doc in mine.values():
            assert set(doc) == PING_KEYS
            assert doc["type"] == PING_RESPONSE
        assert mine[f"{prefix}pricing"] == {
            "type": PING_RESPONSE,
            "name": f"{prefix}pricing",
            "id": p_svc.id,
            "version": "1.2.0",
            "metadata": {"team": "a"},
        }
        # By name, and by name and id: only that service answers.
        infos = await discover(client, "INFO", f"{prefix}billing", timeout=2)
        assert [d["id"] for d in infos] == [b_svc.id]
        assert set(infos[0]) == INFO_KEYS
        assert infos[0]["type"] == INFO_RESPONSE
        [charge] = infos[0]["endpoints"]
        assert charge["subject"] == f"{prefix}billing.charge"
        assert charge["queue_group"] == "q"
        assert charge["schema"]["request"]["properties"]["qty"]["type"] == "integer"
        assert "Price" in json.dumps(charge["schema"]["response"])
        one = await discover(client, "PING", f"{prefix}pricing", service_id=p_svc.id, timeout=2)
        assert [d["id"] for d in one] == [p_svc.id]
        info = (await discover(client, "INFO", f"{prefix}pricing", expected=1))[0]
        echo = next(ep for ep in info["endpoints"] if ep["name"] == "echo")
        assert echo == {
            "name": "echo",
            "subject": f"{prefix}echo.raw",
            "queue_group": "",
            "metadata": {},
        }  # a bytes endpoint has no schema

        subject = f"{prefix}pricing.quote"
        for qty in (1, 2, 3):
            assert await client.request(subject, Quote(sku="a", qty=qty), response=Price)
        with pytest.raises(asyncipc.ServiceError, match="negative"):
            await client.request(subject, Quote(sku="a", qty=-1))
        with pytest.raises(asyncipc.ServiceError, match="qty"):
            await client.request(subject, {"sku": "a"})
        assert (await client.request(f"{prefix}echo.raw", b"hi")).data == b"hi"

        [stats] = await discover(client, "STATS", f"{prefix}pricing", expected=1)
        assert set(stats) == STATS_KEYS
        assert stats["type"] == STATS_RESPONSE
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", stats["started"])
        by_name = {ep["name"]: ep for ep in stats["endpoints"]}
        quote = by_name["quote"]
        assert set(quote) == STAT_KEYS
        assert quote["num_requests"] == 5
        assert quote["num_errors"] == 2
        assert "qty" in quote["last_error"]
        assert quote["processing_time"] > 0
        assert quote["average_processing_time"] == quote["processing_time"] // 5
        assert by_name["echo"]["num_requests"] == 1
        assert by_name["echo"]["num_errors"] == 0
        # The other service counted nothing.
        [other] = await discover(client, "STATS", f"{prefix}billing", expected=1)
        assert other["endpoints"][0]["num_requests"] == 0
    # Stopped with the context: nobody answers any more.
    async with asyncipc.connect(broker.url, token=TOKEN) as client:
        assert await discover(client, "PING", f"{prefix}pricing", timeout=0.3) == []
        with pytest.raises(asyncipc.NoResponders):
            await client.request(f"{prefix}pricing.quote", Quote(sku="a", qty=1))


async def test_instances_share_requests_through_the_queue_group(
    broker: BrokerProc, prefix: str
) -> None:
    async with (
        asyncipc.connect(broker.url, token=TOKEN) as a,
        asyncipc.connect(broker.url, token=TOKEN) as b,
        asyncipc.connect(broker.url, token=TOKEN) as client,
    ):
        one, two = pricing(prefix), pricing(prefix)
        await one.start(a)
        await two.start(b)
        try:
            pings = await discover(client, "PING", f"{prefix}pricing", expected=2, timeout=5)
            assert sorted(d["id"] for d in pings) == sorted([one.id, two.id])
            for i in range(20):
                await client.request(f"{prefix}pricing.quote", Quote(sku="x", qty=i))
            counts = [svc.endpoints[0].stats.num_requests for svc in (one, two)]
            assert sum(counts) == 20, "each request served once"
            # The echo endpoint has no queue group: every instance answers (the
            # requester takes the first reply).
            await client.request(f"{prefix}echo.raw", b"x")
            await client.flush()
            await a.flush()
            await b.flush()
        finally:
            await one.stop()
            await two.stop()


def test_names_and_versions_are_checked() -> None:
    with pytest.raises(asyncipc.ConfigurationError, match="service name"):
        asyncipc.Service("has space")
    with pytest.raises(asyncipc.ConfigurationError, match="semantic version"):
        asyncipc.Service("ok", version="1.2")
    svc = asyncipc.Service("ok", version="1.2.3")

    async def h(msg: asyncipc.Message) -> bytes:
        return b""

    svc.add_endpoint("a", h)
    with pytest.raises(asyncipc.ConfigurationError, match="already has an endpoint"):
        svc.add_endpoint("a", h)
    with pytest.raises(asyncipc.InvalidSubject):
        svc.add_endpoint("b", h, subject="bad subject")
    with pytest.raises(asyncipc.ConfigurationError, match="max_concurrency"):
        svc.add_endpoint("c", h, max_concurrency=0)


async def test_service_endpoint_concurrency() -> None:
    """A Service endpoint's max_concurrency bounds it as Bus.handler's does."""
    svc = asyncipc.Service("conc", "1.0.0")
    in_progress = most = 0
    full = asyncio.Event()
    release = asyncio.Event()

    @svc.endpoint("work", max_concurrency=2)
    async def work(msg: asyncipc.Message) -> bytes:
        nonlocal in_progress, most
        in_progress += 1
        most = max(most, in_progress)
        if in_progress == 2:
            full.set()
        await release.wait()
        in_progress -= 1
        return b"done"

    async with asyncipc.connect("memory://svc-conc") as bus, svc.start(bus):
        requests = [asyncio.ensure_future(bus.request("conc.work", timeout=10)) for _ in range(5)]
        await asyncio.wait_for(full.wait(), 10)
        await bus.flush()
        for _ in range(20):
            await asyncio.sleep(0)
        assert in_progress == 2
        release.set()
        assert [r.data for r in await asyncio.gather(*requests)] == [b"done"] * 5
        assert most == 2
        assert svc.stats()["endpoints"][0]["num_requests"] == 5


@pytest.mark.one_loop("the command runs in processes of its own")
async def test_cli_services_ls_info_stats(broker: BrokerProc, prefix: str) -> None:
    async with (
        asyncipc.connect(broker.url, token=TOKEN) as a,
        asyncipc.connect(broker.url, token=TOKEN) as client,
        pricing(prefix).start(a) as svc,
        billing(prefix).start(a),
    ):
        await client.request(f"{prefix}pricing.quote", Quote(sku="a", qty=2), response=Price)
        with pytest.raises(asyncipc.ServiceError):
            await client.request(f"{prefix}pricing.quote", Quote(sku="a", qty=-2))
        url = ["--url", broker.url]
        (ls_rc, ls_out, ls_err), (info_rc, info_out, _), (st_rc, st_out, _) = await asyncio.gather(
            arun("services", "ls", *url),
            arun("services", "info", f"{prefix}pricing", *url),
            arun("services", "stats", f"{prefix}pricing", "--json", *url),
        )
        assert (ls_rc, ls_err) == (0, "")
        assert ls_out.splitlines()[0].split() == [
            "NAME",
            "VERSION",
            "ID",
            "ENDPOINTS",
            "DESCRIPTION",
        ]
        rows = {line.split()[0]: line.split() for line in ls_out.splitlines()[1:]}
        assert rows[f"{prefix}pricing"][:4] == [f"{prefix}pricing", "1.2.0", svc.id, "2"]
        assert rows[f"{prefix}billing"][1] == "0.3.1-beta.2"
        assert info_rc == 0
        assert f"service {prefix}pricing 1.2.0 (id {svc.id})" in info_out
        assert re.search(rf"quote\s+{prefix}pricing\.quote\s+q\s+Quote -> Price", info_out)
        # billing's charge takes a pydantic Quote (its schema has a title) and returns a
        # msgspec Price (a $ref): both named.
        billing_info = (await arun("services", "info", f"{prefix}billing", *url))[1]
        assert re.search(r"charge\s+\S+\s+q\s+Quote -> Price", billing_info)
        assert re.search(rf"echo\s+{prefix}echo\.raw\s+-\s+bytes -> bytes", info_out)
        assert st_rc == 0
        [doc] = json.loads(st_out)
        quote = next(ep for ep in doc["endpoints"] if ep["name"] == "quote")
        assert (quote["num_requests"], quote["num_errors"]) == (2, 1)
        rc, table, _ = await arun("services", "stats", f"{prefix}pricing", *url)
        assert rc == 0
        line = next(x for x in table.splitlines() if " quote " in x)
        assert line.split()[3:5] == ["2", "1"]
        assert "negative" in line
    rc, _, err = await arun("services", "info", f"{prefix}gone", "--timeout", "0.2", *url)
    assert rc == 1
    assert f"no service '{prefix}gone' answered" in err


@pytest.mark.one_loop("the command runs in processes of its own")
async def test_cli_prints_what_a_service_says_of_itself_escaped(
    broker: BrokerProc, prefix: str
) -> None:
    """A service chooses its description (and its endpoints' subjects): a terminal
    escape there is shown as text by ``asyncipc services``, never sent to the terminal."""
    rogue = asyncipc.Service(f"{prefix}rogue", "1.0.0", "fine\x1b[2J\x1b]0;pwned\x07")

    @rogue.endpoint("x")
    async def x(msg: asyncipc.Message) -> bytes:
        return b""

    async with asyncipc.connect(broker.url, token=TOKEN) as a, rogue.start(a):
        url = ["--url", broker.url]
        for verb in ("ls", "info"):
            rc, out, err = await arun("services", verb, f"{prefix}rogue", *url)
            assert rc == 0, err
            assert "\x1b" not in out
            assert "\x07" not in out
            assert "fine\\x1b[2J" in out
