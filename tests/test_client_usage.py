"""What a new user meets in the first hour, against real brokers: the wrong port, the
default URL, handlers that fail or return the wrong type."""

from __future__ import annotations

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
