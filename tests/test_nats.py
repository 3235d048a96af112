"""``nats://`` beyond the conformance suite: failover in a cluster, reconnect events,
authentication and TLS passing through, bad input (docs/transports.md, NATS).

The conformance suite (test_conformance.py) runs over ``nats://`` too; this file has what
only NATS has: a real 3-node cluster, nats-py's own reconnecting, NATS's credentials.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import asyncipc
from tests.conftest import Certs
from tests.nats_creds import (
    account_jwt,
    creds_file,
    new_key,
    operator_config,
    user_jwt,
)
from tests.nats_server import NatsCluster, NatsServer, free_port, nats_server_binary

pytestmark = pytest.mark.skipif(
    nats_server_binary() is None, reason="nats-server is not installed (the dev extra)"
)

GUARD = 15.0
"""Seconds any one wait may take before the test fails (never a hang)."""


@pytest.fixture
def p() -> str:
    return f"t{os.urandom(4).hex()}"


@pytest.fixture
def server() -> Iterator[NatsServer]:
    s = NatsServer()
    try:
        yield s
    finally:
        s.close()


async def collect(events: AsyncIterator[asyncipc.ConnectionEvent], kind: str) -> list[str]:
    """The kinds of the events up to and including the first ``kind``."""
    seen = []
    async with asyncio.timeout(GUARD):
        async for ev in events:
            seen.append(ev.kind)
            if ev.kind == kind:
                return seen
    return seen


async def test_a_list_of_urls_fails_over_when_its_node_is_killed(
    nats_cluster: NatsCluster, p: str
) -> None:
    """A bus connected with the cluster's URLs is on node 0; SIGKILL node 0: the bus
    reconnects to another node by itself, and goes on publishing and receiving, requests
    included, with ``disconnected`` and ``reconnected`` events as over unix://."""
    urls = nats_cluster.urls
    async with (
        asyncipc.connect(urls) as roamer,
        asyncipc.connect(urls[1]) as other,
    ):
        assert roamer.connected_url == urls[0]  # the server reached, not the list
        events = roamer.events().__aiter__()
        to_roamer = roamer.subscribe(f"{p}.to-roamer")
        to_other = other.subscribe(f"{p}.to-other")

        @other.handler(f"{p}.svc")
        async def svc(msg: asyncipc.Message) -> bytes:
            return b"re:" + msg.data

        await roamer.flush()
        await other.flush()
        await asyncio.sleep(0.2)  # interest crosses the routes
        await other.publish(f"{p}.to-roamer", b"before")
        assert (await to_roamer.next_msg(timeout=GUARD)).data == b"before"

        nats_cluster.servers[0].kill()
        async with asyncio.timeout(GUARD):
            down = await anext(events)
            up = await anext(events)
        assert (down.kind, down.url) == ("disconnected", urls[0])
        assert up.kind == "reconnected"
        assert up.url in urls[1:]
        assert roamer.connected_url == up.url
        assert roamer.is_connected
        assert str(nats_cluster.servers[0].port) not in str(roamer.connected_url)
        await roamer.flush(timeout=GUARD)
        await asyncio.sleep(0.2)  # the re-subscription crosses the routes

        for i in range(20):
            await roamer.publish(f"{p}.to-other", b"%d" % i)
            await other.publish(f"{p}.to-roamer", b"%d" % i)
        got_other = [(await to_other.next_msg(timeout=GUARD)).data for _ in range(20)]
        got_roamer = [(await to_roamer.next_msg(timeout=GUARD)).data for _ in range(20)]
        assert got_other == got_roamer == [b"%d" % i for i in range(20)]
        reply = await roamer.request(f"{p}.svc", b"q", timeout=GUARD)
        assert reply.data == b"re:q"


async def test_publishes_while_reconnecting_are_buffered_and_sent(
    nats_cluster: NatsCluster, p: str
) -> None:
    """What the bus publishes while nats-py reconnects waits in nats-py's buffer
    (ConnectOptions.reconnect_buffer) and is sent once connected again."""
    urls = nats_cluster.urls
    async with asyncipc.connect(urls) as pub, asyncipc.connect(urls[2]) as subbus:
        sub = subbus.subscribe(f"{p}.x")
        await subbus.flush()
        await asyncio.sleep(0.2)
        events = pub.events().__aiter__()
        nats_cluster.servers[0].kill()
        assert await collect(events, "disconnected") == ["disconnected"]
        assert not pub.is_connected
        for i in range(10):
            await pub.publish(f"{p}.x", b"%d" % i)
        await pub.flush(timeout=GUARD)  # waits for the new server
        got = [(await sub.next_msg(timeout=GUARD)).data for _ in range(10)]
        assert got == [b"%d" % i for i in range(10)]


async def test_flush_while_reconnecting_waits_for_the_server(server: NatsServer, p: str) -> None:
    """nats-py's own flush returns at once while it reconnects (it only writes its
    buffer): the Bus's flush must wait until a server has answered."""
    async with asyncipc.connect(server.url) as bus:
        events = bus.events().__aiter__()
        server.kill()
        assert await collect(events, "disconnected") == ["disconnected"]
        await bus.publish(f"{p}.x", b"held")
        flushing = asyncio.ensure_future(bus.flush(timeout=GUARD))
        await asyncio.sleep(0.5)
        assert not flushing.done(), "flush returned with no server to answer it"
        server.start()
        await flushing
        assert bus.is_connected


async def test_server_restart_resumes_subscriptions(server: NatsServer, p: str) -> None:
    """One server, SIGKILLed and started again on its port: subscriptions and handlers
    made before come back (nats-py restores them), a request in flight fails at once
    with Disconnected."""
    async with asyncipc.connect(server.url) as a, asyncipc.connect(server.url) as b:
        sub = a.subscribe(f"{p}.s")

        @a.handler(f"{p}.svc")
        async def svc(msg: asyncipc.Message) -> bytes:
            return b"ok"

        release = asyncio.Event()

        async def slow(msg: asyncipc.Message) -> bytes:
            await release.wait()
            return b""

        a.serve(f"{p}.slow", slow)
        await a.flush()
        events = b.events().__aiter__()
        asking = asyncio.create_task(b.request(f"{p}.slow", timeout=GUARD))
        await asyncio.sleep(0.1)
        server.kill()
        with pytest.raises(asyncipc.Disconnected):
            await asking
        server.start()
        assert await collect(events, "reconnected") == ["disconnected", "reconnected"]
        await a.flush(timeout=GUARD)
        await b.flush(timeout=GUARD)
        await b.publish(f"{p}.s", b"again")
        assert (await sub.next_msg(timeout=GUARD)).data == b"again"
        assert (await b.request(f"{p}.svc", timeout=GUARD)).data == b"ok"
        release.set()


async def test_giving_up_ends_the_bus_with_closed(server: NatsServer, p: str) -> None:
    options = asyncipc.ConnectOptions(max_reconnect_attempts=1, reconnect_max_delay=0.05)
    bus = await asyncipc.connect(server.url, options=options)
    events = bus.events().__aiter__()
    sub = bus.subscribe(f"{p}.x")
    server.kill()
    kinds = await collect(events, "closed")
    assert kinds[0] == "disconnected"
    assert kinds[-1] == "closed"
    async with asyncio.timeout(GUARD):
        await bus.wait_closed()
    assert bus.is_closed
    with pytest.raises(asyncipc.BrokenLinkError):
        await sub.next_msg(timeout=GUARD)
    with pytest.raises(asyncipc.ConnectionClosed):
        await bus.publish(f"{p}.x", b"late")
    await bus.close()


@pytest.mark.one_loop("nats-py's reconnection, timed by the link")
async def test_reconnect_time_limit_ends_the_bus_with_disconnected(
    server: NatsServer, p: str
) -> None:
    """nats-py counts attempts only; the link adds ConnectOptions.reconnect_time_limit:
    with the server gone for good, the bus ends with Disconnected (saying the limit
    elapsed) about a second after the disconnect, though nats-py would retry forever."""
    options = asyncipc.ConnectOptions(reconnect_time_limit=1.0, reconnect_max_delay=0.05)
    bus = await asyncipc.connect(server.url, options=options)
    events = bus.events().__aiter__()
    sub = bus.subscribe(f"{p}.x")
    await bus.flush()
    server.kill()
    loop = asyncio.get_running_loop()
    assert await collect(events, "disconnected") == ["disconnected"]
    down = loop.time()
    async with asyncio.timeout(GUARD):
        closed = await anext(events)
        await bus.wait_closed()
    took = loop.time() - down
    assert closed.kind == "closed"
    assert isinstance(closed.error, asyncipc.Disconnected)
    assert "reconnect_time_limit" in str(closed.error)
    assert 0.8 <= took < 5.0, took
    assert bus.is_closed
    with pytest.raises(asyncipc.BrokenLinkError):
        await sub.next_msg(timeout=GUARD)
    with pytest.raises(asyncipc.ConnectionClosed):
        await bus.publish(f"{p}.x", b"late")
    await bus.close()


@pytest.mark.one_loop("nats-py's reconnection, timed by the link")
async def test_reconnect_time_limit_is_not_spent_by_a_server_back_in_time(
    server: NatsServer, p: str
) -> None:
    """Back within the limit: reconnected, the timer is off. A second outage gets the
    whole limit again, and the bus goes on working after both."""
    options = asyncipc.ConnectOptions(reconnect_time_limit=2.0, reconnect_max_delay=0.05)
    async with (
        asyncipc.connect(server.url, options=options) as bus,
        bus.subscribe(f"{p}.x") as sub,
    ):
        await bus.flush()
        events = bus.events().__aiter__()
        for _ in range(2):
            server.kill()
            assert await collect(events, "disconnected") == ["disconnected"]
            await asyncio.sleep(1.2)  # the two outages together exceed the limit
            server.start()
            assert await collect(events, "reconnected") == ["reconnected"]
        await asyncio.sleep(2.5)  # past a timer that was not cancelled
        assert bus.is_connected
        assert not bus.is_closed
        await bus.publish(f"{p}.x", b"still here")
        assert (await sub.next_msg(timeout=GUARD)).data == b"still here"


async def test_block_keeps_what_it_can_without_holding_the_publisher(
    nats_server: str, p: str
) -> None:
    """On NATS a full ``block`` subscription pauses the bus's reading: the link keeps
    what arrives meanwhile (up to INBOX_LIMIT), nothing is lost below it, in order; the
    publisher is not held back (a NATS server never does that)."""
    n, size = 200, 64 * 1024  # 12.5 MiB, under the link's bound
    async with asyncipc.connect(nats_server) as pub, asyncipc.connect(nats_server) as subbus:
        sub = subbus.subscribe(f"{p}.b", max_pending=8)
        await subbus.flush()
        for i in range(n):
            await pub.publish(f"{p}.b", i.to_bytes(4, "big") * (size // 4))
        await pub.flush()
        got = []
        async with asyncio.timeout(GUARD):
            async for msg in sub:
                got.append(int.from_bytes(msg.data[:4], "big"))
                if len(got) == n:
                    break
        assert got == list(range(n))


async def test_token_and_user_password_pass_through(p: str) -> None:
    with_token = NatsServer("--auth", "s3cret")
    with_user = NatsServer("--user", "alice", "--pass", "pw")
    try:
        async with asyncipc.connect(with_token.url, token="s3cret") as bus:
            await bus.flush()
        async with asyncipc.connect(with_token.url + "?token=s3cret") as bus:
            await bus.flush()
        with pytest.raises(asyncipc.AuthenticationError):
            await asyncipc.connect(with_token.url, token="wrong")
        with pytest.raises(asyncipc.AuthenticationError):
            await asyncipc.connect(with_token.url)
        async with asyncipc.connect(f"nats://alice:pw@127.0.0.1:{with_user.port}") as bus:
            await bus.flush()
        async with asyncipc.connect(with_user.url + "?user=alice&password=pw") as bus:
            await bus.flush()
        with pytest.raises(asyncipc.AuthenticationError):
            await asyncipc.connect(f"nats://alice:nope@127.0.0.1:{with_user.port}")
    finally:
        with_token.close()
        with_user.close()


async def test_tls_passes_through(certs: Certs, p: str) -> None:
    tls = NatsServer("--tls", "--tlscert", certs.server_cert, "--tlskey", certs.server_key)
    try:
        url = tls.url + certs.client_query()  # ?ca=...
        async with asyncipc.connect(url) as bus, bus.subscribe(f"{p}.t") as sub:
            await bus.publish(f"{p}.t", b"secret")
            assert (await sub.next_msg(timeout=GUARD)).data == b"secret"
        with pytest.raises(asyncipc.ConnectError):
            await asyncipc.connect(tls.url + "?tls=1")  # the private CA is not trusted
    finally:
        tls.close()


async def test_nkey_passes_through(tmp_path: Path, p: str) -> None:
    """``?nkey=SEEDFILE``: nats-py signs the server's nonce with the seed; the server
    knows the user by its public nkey. A seed it does not know is AuthenticationError."""
    user, stranger = new_key("user"), new_key("user")
    seed = tmp_path / "user.nk"
    seed.write_text(user.seed + "\n")
    wrong = tmp_path / "stranger.nk"
    wrong.write_text(stranger.seed + "\n")
    server = NatsServer(config=f"authorization {{ users = [ {{ nkey: {user.public} }} ] }}")
    try:
        async with (
            asyncipc.connect(f"{server.url}?nkey={seed}") as bus,
            bus.subscribe(f"{p}.n") as sub,
        ):
            await bus.publish(f"{p}.n", b"signed")
            assert (await sub.next_msg(timeout=GUARD)).data == b"signed"
        with pytest.raises(asyncipc.AuthenticationError):
            await asyncipc.connect(f"{server.url}?nkey={wrong}")
        with pytest.raises(asyncipc.AuthenticationError):
            await asyncipc.connect(server.url)
    finally:
        server.close()


async def test_creds_file_passes_through(tmp_path: Path, p: str) -> None:
    """``?creds=FILE`` on a server in operator mode (JWTs signed here, tests/nats_creds.py):
    a user of a known account gets in and round-trips; a user signed by an account the
    operator never signed is refused with AuthenticationError."""
    operator, account, rogue = new_key("operator"), new_key("account"), new_key("account")
    user, intruder = new_key("user"), new_key("user")
    good = creds_file(tmp_path / "user.creds", user_jwt(account, user), user)
    bad = creds_file(tmp_path / "intruder.creds", user_jwt(rogue, intruder), intruder)
    server = NatsServer(config=operator_config(operator, (account, account_jwt(operator, account))))
    try:
        async with (
            asyncipc.connect(f"{server.url}?creds={good}") as bus,
            bus.subscribe(f"{p}.c") as sub,
        ):
            await bus.publish(f"{p}.c", b"with a jwt")
            assert (await sub.next_msg(timeout=GUARD)).data == b"with a jwt"
        with pytest.raises(asyncipc.AuthenticationError):
            await asyncipc.connect(f"{server.url}?creds={bad}")
        with pytest.raises(asyncipc.AuthenticationError):
            await asyncipc.connect(server.url)
    finally:
        server.close()


async def test_a_missing_creds_or_nkey_file_is_said(nats_server: str) -> None:
    """nats-py reads these files only when the server asks for a signature; a server
    without authentication (this one) would never show a wrong path: the link checks."""
    for key in ("creds", "nkey"):
        with pytest.raises(asyncipc.ConfigurationError, match=f"cannot read the \\?{key}= file"):
            await asyncipc.connect(f"{nats_server}?{key}=/nonexistent/user.{key}")


async def test_garbage_server_is_a_clear_connect_error() -> None:
    async def junk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n\x00\xffgarbage\r\n")
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(junk, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        with pytest.raises((asyncipc.ConnectError, asyncipc.ProtocolError), match="NATS"):
            async with asyncio.timeout(GUARD):
                await asyncipc.connect(f"nats://127.0.0.1:{port}")
    finally:
        srv.close()
        await srv.wait_closed()


async def test_nobody_listening_is_a_connect_error() -> None:
    with pytest.raises(asyncipc.ConnectError, match="cannot connect"):
        async with asyncio.timeout(GUARD):
            await asyncipc.connect(f"nats://127.0.0.1:{free_port()}")


async def test_oversized_is_refused_before_sending(nats_server: str, p: str) -> None:
    """The server's max_payload (8 MiB here) bounds payload and headers together."""
    async with asyncipc.connect(nats_server) as bus, bus.subscribe(f"{p}.x") as sub:
        assert bus.max_payload < 8 * 1024 * 1024
        with pytest.raises(asyncipc.FrameTooLarge):
            await bus.publish(f"{p}.x", b"\0" * (8 * 1024 * 1024 + 1))
        with pytest.raises(asyncipc.FrameTooLarge):
            # Under the payload bound, over it with its headers.
            await bus.publish(f"{p}.x", b"\0" * bus.max_payload, headers={"big": "v" * 1000})
        await bus.publish(f"{p}.x", b"after")
        assert (await sub.next_msg(timeout=GUARD)).data == b"after"


async def test_sys_subjects_other_than_streams_are_refused(nats_server: str) -> None:
    """$sys.stream. is answered by JetStream (tests/test_nats_streams.py); the rest of
    $sys. needs an asyncipc broker, and there is none on NATS."""
    async with asyncipc.connect(nats_server) as bus:
        with pytest.raises(asyncipc.ConfigurationError, match=r"\$sys\..*nats://"):
            await bus.publish("$sys.anything", b"")
        with pytest.raises(asyncipc.ConfigurationError, match=r"\$sys\."):
            await bus.request("$sys.kill.x", b"")


async def test_urls_that_cannot_go_together(nats_server: str, tmp_path: object) -> None:
    with pytest.raises(asyncipc.ConfigurationError, match="share a list"):
        await asyncipc.connect([nats_server, "unix:///tmp/nope.sock"])
    with pytest.raises(asyncipc.ConfigurationError, match="client transport"):
        await asyncipc.Broker().listen(nats_server)


async def test_a_comma_separated_url_is_a_list(nats_cluster: NatsCluster, p: str) -> None:
    one = "nats://" + ",".join(u.removeprefix("nats://") for u in nats_cluster.urls)
    async with asyncipc.connect(one) as bus, bus.subscribe(f"{p}.x") as sub:
        await bus.publish(f"{p}.x", b"hi")
        assert (await sub.next_msg(timeout=GUARD)).data == b"hi"


async def test_a_header_name_nats_cannot_carry_is_refused(nats_server: str, p: str) -> None:
    async with asyncipc.connect(nats_server) as bus, bus.subscribe(f"{p}.h") as sub:
        with pytest.raises(asyncipc.ConfigurationError, match="header name"):
            await bus.publish(f"{p}.h", b"", headers={"with space": "v"})
        await bus.publish(f"{p}.h", b"ok", headers={"trace-id": "  padded  "})
        msg = await sub.next_msg(timeout=GUARD)
        assert msg.data == b"ok"
        assert msg.headers == {"trace-id": "padded"}  # NATS trims values


PERMISSIONS = """
authorization {
  users = [
    {user: alice, password: pw, permissions: {publish: {deny: ["secret.>"]}}}
  ]
}
"""


async def test_a_permission_violation_is_an_error_event_and_the_bus_goes_on(p: str) -> None:
    server = NatsServer(config=PERMISSIONS)
    try:
        url = f"nats://alice:pw@127.0.0.1:{server.port}"
        async with asyncipc.connect(url) as bus, bus.subscribe(f"{p}.ok") as sub:
            events = bus.events().__aiter__()
            await bus.publish("secret.plans", b"no")
            async with asyncio.timeout(GUARD):
                event = await anext(events)
            assert event.kind == "error"
            assert isinstance(event.error, asyncipc.BrokerError)
            assert "permissions violation" in str(event.error)
            await bus.publish(f"{p}.ok", b"yes")
            assert (await sub.next_msg(timeout=GUARD)).data == b"yes"
            assert bus.is_connected
    finally:
        server.close()


async def test_close_while_reconnecting_is_bounded(server: NatsServer, p: str) -> None:
    """close() while nats-py reconnects to a server that never comes back: the drain
    waits at most drain_timeout, then the bus is closed."""
    options = asyncipc.ConnectOptions(drain_timeout=0.5)
    bus = await asyncipc.connect(server.url, options=options)
    events = bus.events().__aiter__()
    bus.subscribe(f"{p}.x")
    server.kill()
    assert await collect(events, "disconnected") == ["disconnected"]
    await bus.publish(f"{p}.x", b"never sent")
    async with asyncio.timeout(GUARD):
        await bus.close()
    assert bus.is_closed


async def test_block_beyond_the_link_bound_drops_and_counts(
    nats_server: str, p: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past INBOX_LIMIT a paused link drops what arrives (NATS's slow consumer) and
    counts it; what is kept stays in order."""
    from asyncipc.adapters import nats as adapter

    monkeypatch.setattr(adapter, "INBOX_LIMIT", 1024 * 1024)
    n, size = 64, 64 * 1024  # 4 MiB against a 1 MiB bound
    async with asyncipc.connect(nats_server) as pub, asyncipc.connect(nats_server) as subbus:
        sub = subbus.subscribe(f"{p}.b", max_pending=2)
        await subbus.flush()
        for i in range(n):
            await pub.publish(f"{p}.b", i.to_bytes(4, "big") * (size // 4))
        await pub.flush()
        await asyncio.sleep(0.3)  # (a flush of subbus would wait behind the paused link)
        link = subbus._link
        assert isinstance(link, adapter.NatsLink)
        assert link.dropped > 0
        got = []
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except asyncipc.RequestTimeout:
                break
            except TimeoutError:
                break
            got.append(int.from_bytes(msg.data[:4], "big"))
        assert got == sorted(got)
        assert len(got) + link.dropped == n


async def test_past_the_reconnect_buffer_publishers_wait_for_the_server(
    server: NatsServer, p: str
) -> None:
    """While nats-py reconnects, publishes fill its buffer (reconnect_buffer bytes); past
    it publish() waits, as over unix://, and everything goes once the server is back."""
    # The publisher retries every second, the subscriber every 50 ms: the subscriber is
    # back (subscribed) before the publisher's buffer goes out.
    options = asyncipc.ConnectOptions(
        reconnect_buffer=64 * 1024, high_water=64 * 1024, reconnect_max_delay=1.0
    )
    async with (
        asyncipc.connect(server.url, options=options) as pub,
        asyncipc.connect(
            server.url, options=asyncipc.ConnectOptions(reconnect_max_delay=0.05)
        ) as subbus,
    ):
        sub = subbus.subscribe(f"{p}.x")
        await subbus.flush()
        events = pub.events().__aiter__()
        back = subbus.events().__aiter__()
        server.kill()
        assert await collect(events, "disconnected") == ["disconnected"]
        n = 40  # 40 x 16 KiB: ten times the buffer

        async def produce() -> None:
            for i in range(n):
                await pub.publish(f"{p}.x", i.to_bytes(4, "big") * 4096)

        task = asyncio.create_task(produce())
        await asyncio.sleep(0.5)
        assert not task.done(), "publish() should wait while nats-py's buffer is full"
        server.start()
        assert await collect(back, "reconnected") == ["disconnected", "reconnected"]
        async with asyncio.timeout(GUARD):
            await task
        await pub.flush(timeout=GUARD)
        got = []
        while len(got) < n:
            msg = await sub.next_msg(timeout=GUARD)
            got.append(int.from_bytes(msg.data[:4], "big"))
        assert got == list(range(n))
