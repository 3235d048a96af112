"""What a new user meets in the first hour, against real brokers: the wrong port, the
default URL, handlers that fail or return the wrong type."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import asyncipc

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
