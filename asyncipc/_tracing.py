"""OpenTelemetry for the Bus: ``traceparent`` in headers, and spans, when it is installed.

With ``opentelemetry-api`` (``pip install 'asyncipc[otel]'``) and a tracer provider, a
:class:`~asyncipc.Bus` makes the spans of the OpenTelemetry messaging conventions and
carries their context in the message headers (W3C ``traceparent``/``tracestate``, through
the globally configured propagator):

* ``send SUBJECT`` (``PRODUCER``) for each publish, its context injected into the headers;
* ``request SUBJECT`` (``CLIENT``) around a request, the parent of its ``send``;
* ``process SUBJECT`` (``SERVER`` for a handler, ``CONSUMER`` for a ``callback=``
  subscription), whose parent is the context the message carried, so a trace runs from
  the requester through the broker to the service and on to whatever the service asks.

Without the package, or with ``ConnectOptions(tracing=False)``, none of this exists: the
hot path pays one ``is None`` test per publish. ``docs/guide.md`` ("Tracing") is the
user's view.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from .errors import ConfigurationError

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, StatusCode
except ImportError:  # the otel extra is not installed: tracing is off
    trace = None  # type: ignore[assignment]

__all__ = ["Tracing", "tracing_for"]

SYSTEM = "asyncipc"
"""``messaging.system`` on every span."""

R = TypeVar("R")


def tracing_for(option: object) -> Tracing | None:
    """The tracing of a Bus with ``ConnectOptions.tracing = option``, or None for none.

    ``None`` (the default): on when opentelemetry-api is installed *and* a tracer provider
    has been set (``trace.set_tracer_provider``, or ``opentelemetry-instrument``) by the
    time the bus connects; off otherwise, so that an installed but unconfigured API costs
    nothing. ``True``: on, through the global provider (even one set later). ``False``:
    off. A tracer provider object: on, through that provider (tests, or a service that
    keeps its own).
    """
    if option is False:
        return None
    if trace is None:
        if option is None:
            return None
        raise ConfigurationError(
            "ConnectOptions.tracing needs opentelemetry-api: pip install 'asyncipc[otel]'"
        )
    from . import __version__

    if option is None or option is True:
        provider = trace.get_tracer_provider()
        if option is None and isinstance(provider, trace.ProxyTracerProvider):
            return None  # nothing configured: the API would only make no-op spans
        return Tracing(trace.get_tracer(SYSTEM, __version__))
    get_tracer = getattr(option, "get_tracer", None)
    if get_tracer is None:
        raise ConfigurationError(
            f"ConnectOptions.tracing must be None, True, False or a tracer provider, "
            f"not {type(option).__name__}"
        )
    return Tracing(get_tracer(SYSTEM, __version__))


class Tracing:
    """A bus's spans and context propagation (made by :func:`tracing_for`)."""

    def __init__(self, tracer: Any) -> None:
        self.tracer = tracer

    def send(self, subject: str, headers: Mapping[str, str] | None, size: int) -> dict[str, str]:
        """A ``send`` span for one publish; the headers to send, its context injected."""
        attributes = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "messaging.destination.name": subject,
            "messaging.message.body.size": size,
        }
        out = dict(headers) if headers else {}
        with self.tracer.start_as_current_span(
            f"send {subject}", kind=SpanKind.PRODUCER, attributes=attributes
        ):
            propagate.inject(out)
        return out

    def start_request(self, subject: str) -> tuple[Any, object]:
        """A ``request`` span made current; :meth:`end_request` ends it."""
        span = self.tracer.start_span(
            f"request {subject}",
            kind=SpanKind.CLIENT,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "send",
                "messaging.operation.name": "request",
                "messaging.destination.name": subject,
            },
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        return span, token

    def end_request(self, started: tuple[Any, object], exc: BaseException | None) -> None:
        span, token = started
        otel_context.detach(token)  # type: ignore[arg-type]
        if exc is not None:
            span.record_exception(exc)
            span.set_status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
        span.end()

    def wrap(
        self, subject: str, fn: Callable[[Any], Awaitable[R]], *, handler: bool
    ) -> Callable[[Any], Awaitable[R]]:
        """``fn`` run in a ``process`` span, child of the context its message carries."""
        kind = SpanKind.SERVER if handler else SpanKind.CONSUMER
        tracer = self.tracer

        async def traced(msg: Any) -> R:
            parent = propagate.extract(msg.headers) if msg.headers else None
            attributes = {
                "messaging.system": SYSTEM,
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": msg.subject,
                "messaging.destination.subscription.name": subject,
                "messaging.message.body.size": len(msg.data),
            }
            with tracer.start_as_current_span(
                f"process {msg.subject}", context=parent, kind=kind, attributes=attributes
            ):
                return await fn(msg)

        traced.__name__ = getattr(fn, "__name__", "traced")
        traced.__doc__ = getattr(fn, "__doc__", None)
        traced.asyncipc_traced = True  # type: ignore[attr-defined]
        return traced
