"""OpenTelemetry: spans and traceparent headers across a real broker, and nothing without it.

Each test passes its own tracer provider through ``ConnectOptions(tracing=provider)``:
the global provider stays unset, so the rest of the suite runs untraced.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import asyncipc
from asyncipc.options import ConnectOptions


@pytest.fixture
def spans() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@pytest.fixture
async def url(tmp_path: Path) -> AsyncIterator[str]:
    async with asyncipc.Broker() as broker:
        listener = await broker.listen(f"unix://{tmp_path}/b.sock")
        yield listener.url


def named(finished: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    found = [s for s in finished if s.name == name]
    assert len(found) == 1, [s.name for s in finished]
    return found[0]


def traceparent(span: ReadableSpan) -> str:
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


async def test_publish_carries_the_context_to_a_callback(
    url: str, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    options = ConnectOptions(tracing=provider)
    got: asyncio.Queue[asyncipc.Message] = asyncio.Queue()

    async def on_msg(msg: asyncipc.Message) -> None:
        await got.put(msg)

    async with (
        asyncipc.connect(url, options=options) as pub,
        asyncipc.connect(url, options=options) as sub,
    ):
        sub.subscribe("orders.*", callback=on_msg)
        await sub.flush()
        with provider.get_tracer("test").start_as_current_span("checkout") as parent:
            await pub.publish("orders.created", b"{}", headers={"k": "v"})
        msg = await asyncio.wait_for(got.get(), 5)
        await asyncio.sleep(0)  # the callback's span ends after it returns
    finished = exporter.get_finished_spans()
    send = named(finished, "send orders.created")
    process = named(finished, "process orders.created")
    assert send.kind is SpanKind.PRODUCER
    assert send.parent is not None
    assert send.parent.span_id == parent.get_span_context().span_id
    assert msg.headers is not None
    assert msg.headers["k"] == "v"  # the caller's headers are kept
    assert msg.headers["traceparent"] == traceparent(send)
    assert process.kind is SpanKind.CONSUMER
    assert process.parent is not None
    assert process.parent.span_id == send.context.span_id
    assert process.context.trace_id == parent.get_span_context().trace_id
    assert process.attributes is not None
    assert process.attributes["messaging.destination.name"] == "orders.created"
    assert process.attributes["messaging.destination.subscription.name"] == "orders.*"
    assert process.attributes["messaging.system"] == "asyncipc"


async def test_request_to_a_handler_is_one_trace(
    url: str, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    options = ConnectOptions(tracing=provider)
    async with (
        asyncipc.connect(url, options=options) as client,
        asyncipc.connect(url, options=options) as service,
    ):

        @service.handler("pricing.quote")
        async def quote(msg: asyncipc.Message) -> bytes:
            # The handler runs in its span: what it asks joins the same trace.
            assert trace.get_current_span().get_span_context().is_valid
            return b"42"

        @service.handler("pricing.fail")
        async def fail(msg: asyncipc.Message) -> bytes:
            raise asyncipc.ServiceError("no stock")

        await service.flush()
        assert (await client.request("pricing.quote", b"sku", timeout=5)).data == b"42"
        with pytest.raises(asyncipc.ServiceError, match="no stock"):
            await client.request("pricing.fail", b"sku", timeout=5)
    finished = exporter.get_finished_spans()
    request = named(finished, "request pricing.quote")
    send = named(finished, "send pricing.quote")
    process = named(finished, "process pricing.quote")
    assert request.kind is SpanKind.CLIENT
    assert send.parent is not None
    assert send.parent.span_id == request.context.span_id
    assert process.kind is SpanKind.SERVER
    assert process.parent is not None
    assert process.parent.span_id == send.context.span_id
    assert {request.context.trace_id, send.context.trace_id, process.context.trace_id} == {
        request.context.trace_id
    }
    assert request.status.status_code is StatusCode.UNSET
    failed = named(finished, "request pricing.fail")
    assert failed.status.status_code is StatusCode.ERROR
    assert "no stock" in (failed.status.description or "")


async def test_off_means_no_header_and_no_span(
    url: str, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    async with (
        asyncipc.connect(url, options=ConnectOptions(tracing=False)) as pub,
        asyncipc.connect(url) as sub,  # default: no provider was set globally, so off
    ):
        s = sub.subscribe("x")
        await sub.flush()
        with provider.get_tracer("test").start_as_current_span("outer"):
            await pub.publish("x", b"1")
            await sub.publish("x", b"2")
        first = await asyncio.wait_for(s.next_msg(), 5)
        second = await asyncio.wait_for(s.next_msg(), 5)
    assert first.headers is None
    assert second.headers is None
    assert [span.name for span in exporter.get_finished_spans()] == ["outer"]


def test_bad_tracing_option() -> None:
    async def main() -> None:
        with pytest.raises(asyncipc.ConfigurationError, match="tracer provider"):
            await asyncipc.connect("memory://t", options=ConnectOptions(tracing="yes"))

    asyncio.run(main())


def test_without_opentelemetry_nothing_changes(tmp_path: Path) -> None:
    """A process where opentelemetry cannot be imported: untraced by default, and asking
    for tracing is a ConfigurationError naming the extra."""
    script = tmp_path / "no_otel.py"
    script.write_text(
        "import sys\n"
        "sys.modules['opentelemetry'] = None  # as if not installed\n"
        "import asyncio, asyncipc\n"
        "from asyncipc.options import ConnectOptions\n"
        "async def main():\n"
        "    async with asyncipc.connect('memory://n') as bus:\n"
        "        sub = bus.subscribe('x')\n"
        "        await bus.publish('x', b'1')\n"
        "        assert (await sub.next_msg()).headers is None\n"
        "    try:\n"
        "        await asyncipc.connect('memory://n', options=ConnectOptions(tracing=True))\n"
        "    except asyncipc.ConfigurationError as exc:\n"
        "        print(exc)\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'asyncipc[otel]'" in done.stdout
