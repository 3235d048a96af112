"""Services: named, versioned groups of endpoints that can be discovered, as NATS micro's.

::

    svc = asyncipc.Service("pricing", version="1.2.0", description="prices quotes")

    @svc.endpoint("quote", max_concurrency=16)        # subject "pricing.quote"
    async def quote(q: Quote) -> Price: ...

    async with svc.start(bus):                         # or: await svc.start(bus) ... stop()
        await bus.wait_closed()

Every started service answers ``$SRV.PING``, ``$SRV.INFO`` and ``$SRV.STATS``, also with
its name (``$SRV.PING.pricing``) and its instance id (``$SRV.PING.pricing.<id>``), with the
JSON documents of the NATS micro specification (ADR-32: ``io.nats.micro.v1.ping_response``
and so on), so the tools written for one read the other. :func:`discover` gathers every
answer; ``asyncipc services ls|info|stats`` prints them. See ``docs/services.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import re
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar

from ._responder import EndpointStats
from .client import DEFAULT_HANDLER_CONCURRENCY
from .errors import ConfigurationError
from .message import Message
from .subjects import validate_queue, validate_subject
from .typed import schema_of, signature_of

if TYPE_CHECKING:
    from .client import Bus
    from .subscription import Subscription

__all__ = [
    "DEFAULT_QUEUE",
    "INFO_RESPONSE",
    "PING_RESPONSE",
    "STATS_RESPONSE",
    "Endpoint",
    "Service",
    "discover",
]

log = logging.getLogger("asyncipc.service")

SRV_PREFIX: Final = "$SRV"
PING_RESPONSE: Final = "io.nats.micro.v1.ping_response"
INFO_RESPONSE: Final = "io.nats.micro.v1.info_response"
STATS_RESPONSE: Final = "io.nats.micro.v1.stats_response"
VERBS: Final = {"PING": PING_RESPONSE, "INFO": INFO_RESPONSE, "STATS": STATS_RESPONSE}
DEFAULT_QUEUE: Final = "q"
"""The queue group of an endpoint unless told otherwise (NATS micro's): the instances of
a service share its requests."""

_NAME_RE = re.compile(r"[A-Za-z0-9_-]+")
# semver.org's own expression, as NATS micro checks it.
_SEMVER_RE = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?"
)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


@dataclass
class Endpoint:
    """One endpoint of a :class:`Service`: its handler, where it listens, its counts."""

    name: str
    subject: str
    handler: Callable[..., Awaitable[Any]]
    queue: str | None
    max_concurrency: int
    metadata: dict[str, str]
    expose_errors: bool
    stats: EndpointStats = field(default_factory=EndpointStats)

    def schema(self) -> dict[str, Any] | None:
        """The JSON schemas of a typed endpoint's request and reply, else ``None``."""
        sig = signature_of(self.handler)
        if sig.request is None:
            return None
        return {"request": schema_of(sig.request), "response": schema_of(sig.response)}

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "subject": self.subject,
            "queue_group": self.queue or "",
            "metadata": dict(self.metadata),
        }
        schema = self.schema()
        if schema is not None:
            out["schema"] = schema  # an asyncipc addition; NATS tools ignore it
        return out

    def stats_doc(self) -> dict[str, Any]:
        s = self.stats
        return {
            "name": self.name,
            "subject": self.subject,
            "queue_group": self.queue or "",
            "num_requests": s.num_requests,
            "num_errors": s.num_errors,
            "last_error": s.last_error,
            "processing_time": s.processing_time,
            "average_processing_time": s.processing_time // s.num_requests if s.num_requests else 0,
        }


class Service:
    """A named, versioned group of endpoints that answers the ``$SRV`` discovery subjects.

    ``name`` (letters, digits, ``-`` and ``_``) is shared by every instance of the
    service; each instance gets its own :attr:`id`. ``version`` is a semantic version.
    Add endpoints with :meth:`endpoint` (or :meth:`add_endpoint`), then
    ``await svc.start(bus)`` (stop with :meth:`stop`) or ``async with svc.start(bus):``.
    """

    def __init__(
        self,
        name: str,
        version: str = "0.0.0",
        description: str = "",
        *,
        metadata: dict[str, str] | None = None,
    ) -> None:
        if not _NAME_RE.fullmatch(name):
            raise ConfigurationError(
                f"a service name is letters, digits, '-' and '_', not {name!r}"
            )
        if not _SEMVER_RE.fullmatch(version):
            raise ConfigurationError(
                f"a service version is a semantic version (1.2.0), not {version!r}"
            )
        self.name = name
        self.version = version
        self.description = description
        self.metadata = dict(metadata or {})
        self.id = os.urandom(11).hex()
        """This instance's id (22 hex digits): ``$SRV.PING.<name>.<id>`` reaches it alone."""
        self.endpoints: list[Endpoint] = []
        self.started: datetime.datetime | None = None
        self._bus: Bus | None = None
        self._subs: list[Subscription] = []

    def __repr__(self) -> str:
        return f"<Service {self.name} {self.version} id={self.id}>"

    # --- endpoints --------------------------------------------------------------------

    def endpoint(
        self,
        name: str,
        *,
        subject: str | None = None,
        queue: str | None = DEFAULT_QUEUE,
        max_concurrency: int = DEFAULT_HANDLER_CONCURRENCY,
        metadata: dict[str, str] | None = None,
        expose_errors: bool = False,
    ) -> Callable[[F], F]:
        """Decorate a handler (typed, ``async def f(q: Quote) -> Price``, or bytes, as
        :meth:`Bus.handler <asyncipc.Bus.handler>`) as the endpoint ``name``.

        It serves ``subject``, by default ``<service name>.<endpoint name>``, in the
        queue group ``queue`` (``"q"``, as NATS micro; ``None``: every instance gets every
        request), running up to ``max_concurrency`` requests at once (``1``: one at a
        time, in order)."""

        def decorate(fn: F) -> F:
            self.add_endpoint(
                name,
                fn,
                subject=subject,
                queue=queue,
                max_concurrency=max_concurrency,
                metadata=metadata,
                expose_errors=expose_errors,
            )
            return fn

        return decorate

    def add_endpoint(
        self,
        name: str,
        handler: Callable[..., Awaitable[Any]],
        *,
        subject: str | None = None,
        queue: str | None = DEFAULT_QUEUE,
        max_concurrency: int = DEFAULT_HANDLER_CONCURRENCY,
        metadata: dict[str, str] | None = None,
        expose_errors: bool = False,
    ) -> Endpoint:
        """Add the endpoint ``name`` served by ``handler`` (see :meth:`endpoint`)."""
        if not _NAME_RE.fullmatch(name):
            raise ConfigurationError(
                f"an endpoint name is letters, digits, '-' and '_', not {name!r}"
            )
        if any(ep.name == name for ep in self.endpoints):
            raise ConfigurationError(f"service {self.name!r} already has an endpoint {name!r}")
        if max_concurrency < 1:
            raise ConfigurationError(f"max_concurrency must be at least 1, not {max_concurrency}")
        subject = subject if subject is not None else f"{self.name}.{name}"
        validate_subject(subject)
        if queue is not None:
            validate_queue(queue)
        ep = Endpoint(
            name, subject, handler, queue, max_concurrency, dict(metadata or {}), expose_errors
        )
        self.endpoints.append(ep)
        if self._bus is not None:
            self._serve(self._bus, ep)
        return ep

    # --- running ----------------------------------------------------------------------

    def start(self, bus: Bus) -> _Starting:
        """Serve the endpoints and the ``$SRV`` subjects on ``bus``. Await it (``await
        svc.start(bus)`` returns the service once the broker has every subscription), or
        use it as ``async with svc.start(bus):``, which stops the service on leaving."""
        return _Starting(self, bus)

    async def _start(self, bus: Bus) -> Self:
        if self._bus is not None:
            raise ConfigurationError(f"service {self.name!r} is already started")
        self._bus = bus
        self.started = datetime.datetime.now(datetime.UTC)
        try:
            for ep in self.endpoints:
                self._serve(bus, ep)
            for verb in VERBS:
                for subject in (
                    f"{SRV_PREFIX}.{verb}",
                    f"{SRV_PREFIX}.{verb}.{self.name}",
                    f"{SRV_PREFIX}.{verb}.{self.name}.{self.id}",
                ):
                    self._subs.append(bus.serve(subject, self._discovery(verb)))
            await bus.flush()
        except BaseException:
            await self.stop()
            raise
        log.info("service %s %s started (id %s)", self.name, self.version, self.id)
        return self

    def _serve(self, bus: Bus, ep: Endpoint) -> None:
        self._subs.append(
            bus.serve(
                ep.subject,
                ep.handler,
                ep.queue,
                expose_errors=ep.expose_errors,
                max_concurrency=ep.max_concurrency,
                stats=ep.stats,
            )
        )

    def _discovery(self, verb: str) -> Callable[..., Awaitable[bytes]]:
        document = {"PING": self.ping, "INFO": self.info, "STATS": self.stats}[verb]

        async def answer(msg: Message) -> bytes:
            return json.dumps(document()).encode()

        return answer

    async def stop(self) -> None:
        """Stop serving: unsubscribe, answering the requests already received."""
        subs, self._subs = self._subs, []
        self._bus = None
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.drain()

    # --- the discovery documents --------------------------------------------------------

    def _common(self, kind: str) -> dict[str, Any]:
        return {
            "type": kind,
            "name": self.name,
            "id": self.id,
            "version": self.version,
            "metadata": dict(self.metadata),
        }

    def ping(self) -> dict[str, Any]:
        """The answer to ``$SRV.PING``: ``io.nats.micro.v1.ping_response``."""
        return self._common(PING_RESPONSE)

    def info(self) -> dict[str, Any]:
        """The answer to ``$SRV.INFO``: ``io.nats.micro.v1.info_response``, each endpoint
        with its subject, queue group and (typed endpoints) JSON schemas."""
        doc = self._common(INFO_RESPONSE)
        doc["description"] = self.description
        doc["endpoints"] = [ep.info() for ep in self.endpoints]
        return doc

    def stats(self) -> dict[str, Any]:
        """The answer to ``$SRV.STATS``: ``io.nats.micro.v1.stats_response``, per endpoint
        the requests, errors (with the last one's text) and processing time in ns."""
        doc = self._common(STATS_RESPONSE)
        started = self.started or datetime.datetime.now(datetime.UTC)
        doc["started"] = started.isoformat().replace("+00:00", "Z")
        doc["endpoints"] = [ep.stats_doc() for ep in self.endpoints]
        return doc

    def reset(self) -> None:
        """Zero every endpoint's counts."""
        for ep in self.endpoints:
            ep.stats.reset()


class _Starting:
    """What :meth:`Service.start` returns: awaitable, and an async context manager."""

    __slots__ = ("_bus", "_service")

    def __init__(self, service: Service, bus: Bus) -> None:
        self._service = service
        self._bus = bus

    def __await__(self) -> Generator[Any, None, Service]:
        return self._service._start(self._bus).__await__()

    async def __aenter__(self) -> Service:
        return await self._service._start(self._bus)

    async def __aexit__(self, *exc_info: object) -> None:
        await self._service.stop()


async def discover(
    bus: Bus,
    verb: str = "PING",
    name: str | None = None,
    *,
    service_id: str | None = None,
    timeout: float = 0.5,
    expected: int | None = None,
) -> list[dict[str, Any]]:
    """Ask ``$SRV.<verb>[.<name>[.<id>]]`` and gather every answer within ``timeout``
    seconds (or until ``expected`` answers came), as dicts, in arrival order.

    ``verb`` is ``"PING"``, ``"INFO"`` or ``"STATS"``. An answer that is not a JSON
    document of the expected ``type`` is skipped (and logged)."""
    verb = verb.upper()
    kind = VERBS.get(verb)
    if kind is None:
        raise ConfigurationError(f"verb must be one of {sorted(VERBS)}, not {verb!r}")
    if service_id is not None and name is None:
        raise ConfigurationError("service_id needs a service name")
    subject = ".".join(part for part in (SRV_PREFIX, verb, name, service_id) if part is not None)
    validate_subject(subject)
    inbox = f"_INBOX.{os.urandom(11).hex()}"
    found: list[dict[str, Any]] = []
    async with bus.subscribe(inbox) as sub:
        await bus.publish(subject, b"", reply_to=inbox)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while expected is None or len(found) < expected:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                msg = await sub.next_msg(timeout=left)
            except TimeoutError:
                break
            try:
                doc = json.loads(msg.data)
            except ValueError:
                log.warning("%s: an answer that is not JSON: %r", subject, msg.data[:80])
                continue
            if not isinstance(doc, dict) or doc.get("type") != kind:
                log.warning("%s: an answer that is not a %s", subject, kind)
                continue
            found.append(doc)
    return found
