"""The monitoring endpoints and the dashboard on the http listener (docs/monitoring.md).

``GET /varz``, ``/connz``, ``/subsz``, ``/streamz`` and ``/subjectz`` answer the broker's
:class:`~asyncipc._monitor.Monitor` figures as JSON, their query string being the
options (``/connz?subs=1&sort=msgs_from&limit=10``). ``GET /dashboard`` is a page of
plain HTML, CSS and JavaScript shipped in the package (``static/``, no build step) that
reads ``GET /dashboard/events``: Server-Sent Events, one JSON snapshot a second
(``?interval=`` seconds, ``?count=`` snapshots and the stream ends).

Every JSON route needs the broker's token when it has one, like ``/metrics`` (the page
passes ``?access_token=`` on to its event stream: EventSource cannot set headers). The
page itself holds no data and is served to anyone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web

from ..._monitor import ENDPOINTS, Monitor, QueryError
from ._envelope import HttpError
from ._params import positive_int
from ._sse import sse_event

__all__ = [
    "DASHBOARD_FILES",
    "DEFAULT_INTERVAL",
    "MAX_INTERVAL",
    "MIN_INTERVAL",
    "MonitorRoutes",
]

DEFAULT_INTERVAL = 1.0
"""Seconds between two snapshots of ``/dashboard/events`` without ``?interval=``."""
MIN_INTERVAL = 0.2
MAX_INTERVAL = 60.0

DASHBOARD_FILES = {
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
}
"""The page's assets, served under ``/dashboard/``."""

# The page builds every element with textContent: no inline script, no HTML from data.
# The policy says so to the browser too, so that a name that slipped through would still
# not run.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _static(name: str) -> bytes:
    return resources.files(__name__.rpartition(".")[0]).joinpath("static", name).read_bytes()


class MonitorRoutes:
    """The routes of one :class:`~asyncipc.adapters.rest.RestServer`: ``monitor`` is its
    broker's; ``authorize(request, what)`` checks the caller may read ``what`` (an
    endpoint's name; ``dashboard`` for the page's event stream): 401 without the token or
    a user, 403 for a user who may not publish to ``$sys.monitor.<what>``."""

    def __init__(
        self, monitor: Monitor, authorize: Callable[[web.Request, str], Awaitable[None]]
    ) -> None:
        self.monitor = monitor
        self.authorize = authorize
        self._stop = asyncio.Event()
        self._files: dict[str, bytes] = {}

    def add_to(self, router: web.UrlDispatcher) -> None:
        """Register the routes."""
        for name in ENDPOINTS:
            router.add_get(f"/{name}", self._endpoint(name), allow_head=False)
        router.add_get("/dashboard", self._page, allow_head=False)
        router.add_get("/dashboard/events", self._events, allow_head=False)
        for name in DASHBOARD_FILES:
            router.add_get(f"/dashboard/{name}", self._asset, allow_head=False)

    def close(self) -> None:
        """The listener is closing: end every event stream now."""
        self._stop.set()

    def _endpoint(self, name: str) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            await self.authorize(request, name)
            try:
                body = self.monitor.snapshot(name, request.query)
            except QueryError as exc:
                raise HttpError(400, "bad_request", str(exc)) from None
            return web.json_response(body)

        return handler

    def _file(self, name: str) -> bytes:
        data = self._files.get(name)
        if data is None:
            data = self._files[name] = _static(name)
        return data

    async def _page(self, request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=self._file("dashboard.html"),
            content_type="text/html",
            charset="utf-8",
            headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-cache"},
        )

    async def _asset(self, request: web.Request) -> web.StreamResponse:
        name = request.path.rpartition("/")[2]
        kind = DASHBOARD_FILES[name]
        return web.Response(
            body=self._file(name),
            content_type=kind,
            charset="utf-8",
            headers={"Cache-Control": "no-cache"},
        )

    async def _events(self, request: web.Request) -> web.StreamResponse:
        await self.authorize(request, "dashboard")
        text = request.query.get("interval", str(DEFAULT_INTERVAL))
        try:
            interval = float(text)
        except ValueError:
            interval = -1.0
        if not MIN_INTERVAL <= interval <= MAX_INTERVAL:
            raise HttpError(
                400,
                "bad_request",
                f"interval must be between {MIN_INTERVAL} and {MAX_INTERVAL} seconds, not {text!r}",
            )
        count = positive_int(request.query, "count", 0) if "count" in request.query else 0
        if self._stop.is_set():
            raise HttpError(503, "unavailable", "the broker is shutting down")
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        response.force_close()
        await response.prepare(request)
        sent = 0
        try:
            while not self._stop.is_set():
                # A snapshot is built in one go, between two awaits: a consistent view.
                await response.write(sse_event(self.monitor.dashboard(), event="snapshot"))
                sent += 1
                if sent == count:
                    await response.write_eof()
                    return response
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), interval)
            await response.write(
                sse_event({"error": "unavailable", "message": "the broker is shutting down"},
                          event="error")
            )  # fmt: skip
            await response.write_eof()
        except ConnectionResetError:
            pass  # the page was closed
        return response
