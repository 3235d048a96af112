"""What a new user meets in the first hour, against real brokers: the wrong port, the
default URL, handlers that fail or return the wrong type."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import asyncipc


@pytest.fixture
async def unix_url(tmp_path: Path) -> AsyncIterator[str]:
    """A broker in this process on a Unix socket: requests cross a real socket."""
    async with asyncipc.Broker(max_frame=64 * 1024) as broker:
        listener = await broker.listen(f"unix://{tmp_path}/b.sock")
        yield listener.url


# --- the wrong port -----------------------------------------------------------------------


async def test_tcp_url_at_an_http_listener_says_use_http() -> None:
    pytest.importorskip("aiohttp")
    async with asyncipc.Broker() as broker:
        rest = await broker.listen("http://127.0.0.1:0")
        tcp_url = rest.url.replace("http://", "tcp://", 1)
        with pytest.raises(asyncipc.ConnectError) as raised:
            await asyncipc.connect(tcp_url)
        text = str(raised.value)
        assert f"cannot connect to {tcp_url}" in text
        assert "this is an HTTP server" in text
        assert f"use {rest.url}" in text
        assert "frame" not in text.replace("asyncipc frame", ""), "not a frame-size complaint"
        # The same listener, by the URL the error names, is a working bus.
        async with asyncipc.connect(rest.url) as bus, bus.subscribe("first.hour") as sub:
            await bus.flush()
            await bus.publish("first.hour", b"ok")
            assert (await sub.next_msg(timeout=10)).data == b"ok"


# --- connect() with no URL -----------------------------------------------------------------

SERVICE = """
import asyncio, asyncipc

async def main():
    async with asyncipc.connect() as bus:  # no URL: $ASYNCIPC_URL
        await bus.publish("first.hour", bus.url.encode())

asyncio.run(main())
"""


async def test_a_process_without_a_url_joins_the_broker_of_asyncipc_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with asyncipc.Broker() as broker:
        url = (await broker.listen(f"unix://{tmp_path}/b.sock")).url
        monkeypatch.setenv("ASYNCIPC_URL", url)
        async with asyncipc.connect() as bus, bus.subscribe("first.hour") as sub:
            assert bus.url == url
            assert broker.sessions == 1, "this bus is the broker's client"
            # Another process, same environment, same broker: it reaches our subscription.
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
            proc = await asyncio.create_subprocess_exec(sys.executable, "-c", SERVICE, env=env)
            assert await proc.wait() == 0
            assert (await sub.next_msg(timeout=30)).data == url.encode()


async def test_memory_still_means_the_embedded_broker(
    unix_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASYNCIPC_URL", unix_url)
    async with asyncipc.connect("memory://") as embedded, asyncipc.connect() as remote:
        assert embedded.url == "memory://"
        assert embedded.peer.transport == "memory"
        assert remote.peer.transport == "unix"
    monkeypatch.delenv("ASYNCIPC_URL")
    async with asyncipc.connect() as bus:
        assert bus.url == "memory://"
    monkeypatch.setenv("ASYNCIPC_URL", "")  # set but empty: as if unset, like the CLI
    async with asyncipc.connect() as bus:
        assert bus.url == "memory://"


async def test_asyncipc_token_goes_only_with_asyncipc_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with asyncipc.Broker(token="s3cret") as broker:
        url = (await broker.listen(f"unix://{tmp_path}/b.sock")).url
        monkeypatch.setenv("ASYNCIPC_URL", url)
        monkeypatch.setenv("ASYNCIPC_TOKEN", "s3cret")
        async with asyncipc.connect() as bus:
            await bus.flush()
        with pytest.raises(asyncipc.AuthenticationError):
            await asyncipc.connect(url)  # an explicit URL takes no secret from elsewhere
        with pytest.raises(asyncipc.AuthenticationError):
            await asyncipc.connect(token="wrong")  # an explicit token wins


async def test_a_bad_asyncipc_url_says_where_the_url_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASYNCIPC_URL", f"unix://{tmp_path}/nobody.sock")
    with pytest.raises(asyncipc.ConnectError, match=r"no socket at .*\$ASYNCIPC_URL"):
        await asyncipc.connect()
    monkeypatch.setenv("ASYNCIPC_URL", "carrier-pigeon://loft")
    with pytest.raises(asyncipc.ConfigurationError, match=r"^\$ASYNCIPC_URL: "):
        await asyncipc.connect()


# --- bad arguments are errors of the one tree ----------------------------------------------


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"overflow": "sometimes"}, "overflow must be one of"),
        ({"max_pending": 0}, "must be positive, not 0 and"),
        ({"max_bytes": -1}, "must be positive, not 65536 and -1"),
    ],
)
async def test_bad_subscribe_options_are_configuration_errors(
    options: dict[str, object], match: str
) -> None:
    async with asyncipc.connect() as bus:
        with pytest.raises(asyncipc.ConfigurationError, match=match) as raised:
            bus.subscribe("a.b", **options)  # type: ignore[arg-type]
        assert isinstance(raised.value, ValueError), "`except ValueError` still catches it"


async def test_a_closed_broker_refuses_to_listen(tmp_path: Path) -> None:
    broker = asyncipc.Broker()
    await broker.close()
    with pytest.raises(asyncipc.ClosedError, match="broker is closed"):
        await broker.listen(f"unix://{tmp_path}/late.sock")
    with pytest.raises(asyncipc.ClosedError, match="broker is closed"):
        await broker.spawn([sys.executable, "-c", "pass"])


# --- handlers: what the requester gets --------------------------------------------------


class Price:
    """Not bytes: a model a handler forgot to encode."""


@pytest.mark.parametrize(
    ("returned", "kind"),
    [("price: 7", "str"), ({"price": 7}, "dict"), (7, "int"), (Price(), "Price")],
)
async def test_a_reply_that_is_not_bytes_is_a_service_error_not_a_time_out(
    unix_url: str, returned: Any, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with asyncipc.connect(unix_url) as service, asyncipc.connect(unix_url) as client:

        @service.handler("pricing.quote")
        async def quote(msg: asyncipc.Message) -> Any:
            return returned

        await service.flush()
        # A time-out long enough that a reply which never comes fails the test on its own
        # (RequestTimeout is not a ServiceError).
        with pytest.raises(asyncipc.ServiceError) as raised:
            await client.request("pricing.quote", b"sku-1", timeout=30)
    assert str(raised.value) == (
        f"handler for 'pricing.quote' failed: the handler returned {kind}, not bytes"
    )
    assert any(
        r.levelno == logging.ERROR and f"returned {kind}, not bytes" in r.getMessage()
        for r in caplog.records
    ), "the service's own log says what went wrong"


@pytest.mark.parametrize(
    ("returned", "body"),
    [(b"x", b"x"), (bytearray(b"ab"), b"ab"), (memoryview(b"cd"), b"cd"), (None, b"")],
)
async def test_bytes_like_replies_and_none_for_an_empty_one(
    unix_url: str, returned: Any, body: bytes
) -> None:
    async with asyncipc.connect(unix_url) as service, asyncipc.connect(unix_url) as client:
        service.serve("echo", lambda msg: _value(returned))
        await service.flush()
        reply = await client.request("echo", b"", timeout=30)
    assert reply.data == body


async def _value(value: Any) -> Any:
    return value


async def test_handler_exceptions_stay_in_the_service_by_default(
    unix_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with asyncipc.connect(unix_url) as service, asyncipc.connect(unix_url) as client:

        @service.handler("orders.get")
        async def get(msg: asyncipc.Message) -> bytes:
            raise PermissionError("open('/srv/secrets/db.key') failed for uid 1000")

        await service.flush()
        with pytest.raises(asyncipc.ServiceError) as raised:
            await client.request("orders.get", b"7", timeout=30)
    text = str(raised.value)
    match = re.fullmatch(
        r"handler for 'orders.get' failed: "
        r"internal error \(the service logged it as error ([0-9a-f]{8})\)",
        text,
    )
    assert match, text
    assert "secrets" not in text
    assert "PermissionError" not in text
    [logged] = [r for r in caplog.records if r.exc_info and match[1] in r.getMessage()]
    assert logged.exc_info is not None
    assert logged.exc_info[0] is PermissionError


async def test_expose_errors_sends_the_type_and_text(unix_url: str) -> None:
    async with asyncipc.connect(unix_url) as service, asyncipc.connect(unix_url) as client:

        @service.handler("stock.take", expose_errors=True)
        async def take(msg: asyncipc.Message) -> bytes:
            raise RuntimeError("out of stock")

        async def check(msg: asyncipc.Message) -> bytes:
            raise KeyError("sku-9")

        service.serve("stock.check", check, expose_errors=True)
        await service.flush()
        with pytest.raises(asyncipc.ServiceError, match=r"failed: RuntimeError: out of stock$"):
            await client.request("stock.take", timeout=30)
        with pytest.raises(asyncipc.ServiceError, match=r"failed: KeyError: 'sku-9'$"):
            await client.request("stock.check", timeout=30)


async def test_a_service_error_raised_on_purpose_is_sent_as_written(unix_url: str) -> None:
    async with asyncipc.connect(unix_url) as service, asyncipc.connect(unix_url) as client:

        @service.handler("pricing.quote")
        async def quote(msg: asyncipc.Message) -> bytes:
            raise asyncipc.ServiceError(f"unknown sku {msg.data.decode()!r}")

        await service.flush()
        with pytest.raises(asyncipc.ServiceError) as raised:
            await client.request("pricing.quote", b"sku-404", timeout=30)
    assert str(raised.value) == "handler for 'pricing.quote' failed: unknown sku 'sku-404'"


async def test_a_reply_too_large_to_send_is_a_service_error(unix_url: str) -> None:
    async with asyncipc.connect(unix_url) as service, asyncipc.connect(unix_url) as client:

        @service.handler("report")
        async def report(msg: asyncipc.Message) -> bytes:
            return b"x" * (128 * 1024)  # twice the broker's maximum frame

        await service.flush()
        with pytest.raises(asyncipc.ServiceError, match="the reply is too large to send"):
            await client.request("report", timeout=30)
        # The service carries on.
        await service.flush()
        assert not service.is_closed


@pytest.mark.parametrize("where", ["memory", "unix"])
async def test_request_timeouts_of_different_lengths(where: str, unix_url: str) -> None:
    """Time-outs share one timer per bus: a short one asked after a long one still ends
    first, answered requests between them are unaffected, and the long one still ends."""
    url = "memory://timeouts" if where == "memory" else unix_url
    p = "t"
    async with asyncipc.connect(url) as server, asyncipc.connect(url) as client:

        @server.handler(f"{p}.echo")
        async def echo(msg: asyncipc.Message) -> bytes:
            return msg.data

        server.subscribe(f"{p}.silent")
        await server.flush()
        ended: list[str] = []

        async def ask(name: str, timeout: float) -> None:
            with pytest.raises(asyncipc.RequestTimeout, match=f"within {timeout:g} s"):
                await client.request(f"{p}.silent", name.encode(), timeout=timeout)
            ended.append(name)

        slow = asyncio.create_task(ask("slow", 0.6))
        await asyncio.sleep(0)  # the slow one arms the timer first
        fast = asyncio.create_task(ask("fast", 0.05))
        for i in range(20):
            assert (await client.request(f"{p}.echo", b"%d" % i, timeout=5)).data == b"%d" % i
        await fast
        assert ended == ["fast"]
        assert not slow.done()
        await slow
        assert ended == ["fast", "slow"]
        assert client._requests == {}, "every request left the table"


async def test_a_round_trip_does_not_validate_its_inbox_but_a_user_s_reply_is(
    broker_process: dict[str, str],
) -> None:
    """The inbox a request makes, and the reply subject a handler answers (which the
    broker checked), are not validated again in the client: an inbox is new each time and
    costs the full check. The broker runs in its own process, so the only validation here
    is the clients'. A subject or reply a user passes is still checked, after requests
    too."""
    from asyncipc import subjects

    url = broker_process["unix"]
    async with asyncipc.connect(url) as service, asyncipc.connect(url) as client:

        @service.handler("skip.echo")
        async def echo(msg: asyncipc.Message) -> bytes:
            return msg.data

        await service.flush()
        assert (await client.request("skip.echo", b"a")).data == b"a"
        subjects._inbox_heads.clear()  # what validating an inbox fills
        for i in range(3):
            assert (await client.request("skip.echo", str(i).encode())).data == str(i).encode()
        assert not subjects._inbox_heads, "an inbox was validated in the client"
        # What a user passes is checked as before, whatever a request left behind.
        with pytest.raises(asyncipc.InvalidSubject):
            await client.publish("skip.echo", b"", reply_to="not valid")
        with pytest.raises(asyncipc.InvalidSubject):
            await client.publish("_INBOX.x.not valid", b"")
        with pytest.raises(asyncipc.InvalidSubject):
            await service.publish("skip.*", b"")
        await client.publish("skip.echo", b"", reply_to="_INBOX.user.1")  # a valid one
        assert "_INBOX.user." in subjects._inbox_heads
