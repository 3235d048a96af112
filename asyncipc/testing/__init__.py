"""asyncipc.testing: a pytest plugin, message helpers, and the conformance checks.

Installed with ``pip install 'asyncipc[testing]'`` (pytest and pytest-asyncio), it is
registered as a pytest plugin through the ``pytest11`` entry point, so its fixtures are
there in any test without an import:

``asyncipc_bus``
    A :class:`~asyncipc.Bus` on a broker embedded in the test's event loop (``memory://``,
    a fresh name per test). ``asyncipc_bus.connected_url`` connects more buses to it.
``asyncipc_memory_broker``
    That embedded :class:`~asyncipc.Broker` itself (listen on more URLs, read its stats).
``asyncipc_broker``
    A :class:`BrokerProcess`: ``python -m asyncipc broker`` on a Unix socket in a temporary
    directory, ready when the test starts; ``.url`` and ``.proc`` (the ``Popen``). Stopped
    with SIGTERM at teardown, and the test fails if it did not drain and exit 0. Command-line
    options with ``@pytest.mark.asyncipc_broker(args=[...], env={...})``.
``asyncipc_client``
    A :class:`~asyncipc.Bus` connected to ``asyncipc_broker``.

The async fixtures are ``pytest_asyncio`` fixtures, so they work under pytest-asyncio's
strict mode (mark the tests ``@pytest.mark.asyncio``) and auto mode alike, in the event
loop of the test. Helpers: :func:`next_message`, :func:`expect_messages`,
:func:`expect_no_message`, :func:`capture`. For transport authors: :func:`check_transport`
and :func:`conformance_params`. See docs/testing.md.

``import asyncipc`` never imports this module (nor pytest).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from .._connect import connect
from ..broker import Broker
from ..client import Bus
from ._conformance import CHECKS, ConformanceReport, check_transport, conformance_params
from ._helpers import Capture, capture, expect_messages, expect_no_message, next_message
from ._process import BrokerProcess
from ._registry import ConformanceCheck, TransportTraits, traits_for

try:
    from pytest_asyncio import fixture as _async_fixture
except ImportError:  # pragma: no cover - 'asyncipc[testing]' brings pytest-asyncio
    # The plugin still loads (it is an entry point: it must never break a test run of a
    # project that merely has asyncipc installed); pytest then refuses the async
    # fixtures, naming them, when a test asks for one.
    _async_fixture = pytest.fixture  # type: ignore[assignment]

__all__ = [
    "CHECKS",
    "BrokerProcess",
    "Capture",
    "ConformanceCheck",
    "ConformanceReport",
    "TransportTraits",
    "asyncipc_broker",
    "asyncipc_bus",
    "asyncipc_client",
    "asyncipc_memory_broker",
    "capture",
    "check_transport",
    "conformance_params",
    "expect_messages",
    "expect_no_message",
    "next_message",
    "traits_for",
]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "asyncipc_broker(args=[...], env={...}): command-line options and environment "
        "for the asyncipc_broker fixture's broker process (asyncipc.testing)",
    )


@_async_fixture
async def asyncipc_memory_broker() -> AsyncIterator[Broker]:
    """A broker embedded in the test's event loop, listening on a fresh ``memory://``
    name (``asyncipc_memory_broker.urls[0]``); closed, drained, at teardown."""
    async with Broker() as broker:
        await broker.listen(f"memory://test-{os.urandom(4).hex()}")
        yield broker


@_async_fixture
async def asyncipc_bus(asyncipc_memory_broker: Broker) -> AsyncIterator[Bus]:
    """A bus on ``asyncipc_memory_broker``: no process, no socket, the full Bus API."""
    async with connect(asyncipc_memory_broker.urls[0]) as bus:
        yield bus


@pytest.fixture
def asyncipc_broker(request: pytest.FixtureRequest) -> Iterator[BrokerProcess]:
    """``python -m asyncipc broker`` in its own process on a temporary Unix socket."""
    marker = request.node.get_closest_marker("asyncipc_broker")
    options: dict[str, Any] = {}
    if marker is not None:
        if marker.args or marker.kwargs.keys() - {"args", "env"}:
            raise pytest.UsageError(
                "@pytest.mark.asyncipc_broker takes only args=[...] and env={...}, not "
                f"{', '.join([*map(repr, marker.args), *marker.kwargs])}"
            )
        options = dict(marker.kwargs)
    broker = BrokerProcess(**options)
    try:
        yield broker
    finally:
        status = broker.stop()
    if status != 0:
        # In the teardown: reported as an error of its own, beside the test's outcome.
        pytest.fail(f"broker process exited {status} on SIGTERM, not 0 (a clean drain)")


@_async_fixture
async def asyncipc_client(asyncipc_broker: BrokerProcess) -> AsyncIterator[Bus]:
    """A bus connected to ``asyncipc_broker``'s Unix socket; closed at teardown."""
    async with connect(asyncipc_broker.url) as bus:
        yield bus
