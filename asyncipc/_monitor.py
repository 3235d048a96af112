"""What a running broker looks like: the figures of ``/varz``, ``/connz``, ``/subsz``,
``/streamz`` and ``/subjectz`` as plain dicts (``docs/monitoring.md``).

One :class:`Monitor` per broker (``broker.monitor``) produces them for every reader: the
HTTP adapter's endpoints and its dashboard, the ``$sys.monitor.`` request subjects, and so
``asyncipc stats`` on the command line. Field names follow nats-server's monitoring
endpoints where the concept is the same (``in_msgs``, ``pending_bytes``, ``cid``...), so
that whoever knows those reads these; our own names where it is not.

Nothing here runs on the hot path. Totals are the counters the broker and its sessions
keep anyway; rates are differences between the samples readers' looks leave behind (see
:class:`~asyncipc._rates.Samples`); subjects are metered only while somebody looks at
them (:class:`~asyncipc._rates.SubjectMeter`).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from ._rates import METER_MAX_SUBJECTS, RATE_INTERVAL, Samples, SubjectMeter, rss
from .errors import InvalidSubject
from .protocol import PROTOCOL_VERSION, Headers, Pub
from .protocol.system import ERROR_HEADER, MONITOR_PREFIX, SERVICE_ERROR_STATUS, STATUS_HEADER
from .subjects import matches, validate_subject

if TYPE_CHECKING:
    from ._session import Session
    from ._stats import BrokerStats
    from .options import BrokerOptions
    from .router import Route, Router
    from .streams.manager import StreamManager

__all__ = [
    "CONNZ_SORTS",
    "DEFAULT_LIMIT",
    "ENDPOINTS",
    "MAX_LIMIT",
    "METER_IDLE",
    "METER_MAX_SUBJECTS",
    "RATE_INTERVAL",
    "Monitor",
    "MonitorHost",
    "QueryError",
    "SubjectMeter",
]

DEFAULT_LIMIT = 1024
"""Entries per page of ``connz``/``subsz`` without ``limit`` (nats-server's default)."""
MAX_LIMIT = 100_000
"""The largest ``limit`` accepted: a page is built in memory."""
METER_IDLE = 60.0
"""Seconds after the last look at ``subjectz`` that the subject meter stops counting."""
RECENT_SLOW = 50
"""Slow-consumer cut-offs remembered for ``subsz`` and the dashboard."""

CONNZ_SORTS = {
    "cid": lambda c: c["cid"],
    "start": lambda c: c["start_ts"],
    "subs": lambda c: -c["subscriptions"],
    "pending": lambda c: -c["pending_bytes"],
    "msgs_to": lambda c: -c["out_msgs"],
    "msgs_from": lambda c: -c["in_msgs"],
    "bytes_to": lambda c: -c["out_bytes"],
    "bytes_from": lambda c: -c["in_bytes"],
    "idle": lambda c: -(c["idle"] or 0.0),
    "uptime": lambda c: -c["uptime"],
    "rate_to": lambda c: -c["out_msgs_rate"],
    "rate_from": lambda c: -c["in_msgs_rate"],
}
"""``connz``'s ``sort`` values: nats-server's (``cid`` and ``start`` ascending, the others
largest first), and ours for the rates."""

ENDPOINTS = ("varz", "connz", "subsz", "streamz", "subjectz")
"""What ``$sys.monitor.<name>`` and ``GET /<name>`` answer."""


class QueryError(ValueError):
    """A monitoring query with a bad option: the HTTP endpoint answers 400, a
    ``$sys.monitor.`` request a failure status, both with this text."""


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")


def _uptime(seconds: float) -> str:
    """nats-server's spelling: ``1d2h3m4s``."""
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    out = f"{days}d" if days else ""
    if days or hours:
        out += f"{hours}h"
    if days or hours or minutes:
        out += f"{minutes}m"
    return out + f"{s}s"


# --- query options ----------------------------------------------------------------------


def _flag(value: object, name: str, *, detail: bool = False) -> bool | str:
    if isinstance(value, bool):
        return value
    text = str(value)
    if text in ("1", "true"):
        return True
    if text in ("0", "false"):
        return False
    if detail and text == "detail":
        return "detail"
    allowed = "1, 0, true or false" if not detail else "1, 0, true, false or detail"
    raise QueryError(f"{name} must be {allowed}, not {value!r}")


def _int(value: object, name: str, default: int, lo: int, hi: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool):
        raise QueryError(f"{name} must be an integer, not {value!r}")
    try:
        number = int(str(value))
    except (TypeError, ValueError):
        raise QueryError(f"{name} must be an integer, not {value!r}") from None
    if not lo <= number <= hi:
        raise QueryError(f"{name} must be between {lo} and {hi}, not {number}")
    return number


def _known(options: Mapping[str, object], allowed: tuple[str, ...], what: str) -> None:
    extra = sorted(set(options) - set(allowed) - {"access_token"})
    if extra:
        raise QueryError(
            f"{what} has no option {extra[0]!r} (it takes: {', '.join(allowed) or 'none'})"
        )


# --- the monitor ---------------------------------------------------------------------------


class MonitorHost(Protocol):
    """What a :class:`Monitor` reads of its broker (package-internal).

    :class:`~asyncipc.Broker` is the one implementation; the monitor depends on this
    interface rather than on the broker module, so that imports point one way."""

    server_id: str
    options: BrokerOptions
    stats: BrokerStats
    router: Router[Session]
    streams: StreamManager

    @property
    def urls(self) -> list[str]:
        """The listeners' URLs."""
        ...

    def clients(self) -> list[Session]:
        """The sessions connected now."""
        ...

    def add_relay(self, relay: SubjectMeter) -> None:
        """Hand ``relay`` every subject published."""
        ...

    def remove_relay(self, relay: SubjectMeter) -> None:
        """Stop that."""
        ...

    def publish(
        self,
        subject: str,
        data: bytes | None,
        reply: str | None,
        headers: Headers | None,
        pub: Pub | None,
        source: Session | None,
    ) -> None:
        """Route a message (a reply to a ``$sys.monitor.`` request)."""
        ...


class Monitor:
    """The figures of one broker, for every reader. See the module docstring."""

    def __init__(self, broker: MonitorHost) -> None:
        self.broker = broker
        self.start = time.time()
        self._cpu_start = time.process_time()
        self._totals = Samples()
        self._conns = Samples()
        self._subjects = Samples()
        self.recent_slow: deque[dict[str, Any]] = deque(maxlen=RECENT_SLOW)
        """The latest slow-consumer cut-offs (``overflow="error"``), newest last."""
        self._meter: SubjectMeter | None = None
        self._meter_timer: asyncio.TimerHandle | None = None

    # --- hooks the broker calls ---------------------------------------------------------

    def slow_consumer(self, session: Session, route: Route[Session]) -> None:
        """``route`` of ``session`` was cut off (``overflow="error"``): remember it."""
        self.recent_slow.append(
            {
                "time": _iso(time.time()),
                "cid": session.client_id,
                "name": session.name,
                "subject": route.subject,
                "qgroup": route.queue,
                "sid": route.sid,
                "reason": "cut_off",
            }
        )

    def close(self) -> None:
        """The broker is closing: stop metering subjects."""
        self._stop_meter()

    # --- varz ---------------------------------------------------------------------------

    def varz(self, options: Mapping[str, object] | None = None) -> dict[str, Any]:
        """General figures: the server, its totals and rates, memory, CPU, limits."""
        _known(options or {}, (), "varz")
        from . import __version__  # the package imports the broker, which imports us

        broker = self.broker
        stats = broker.stats
        sessions = broker.clients()
        now = time.time()
        opts = broker.options
        transports = stats.transports
        in_bytes = sum(t.bytes_in for t in transports.values())
        out_bytes = sum(t.bytes_out for t in transports.values())
        cpu = time.process_time()
        rates = self._totals.rates(
            now,
            {
                "in_msgs": stats.messages_in,
                "out_msgs": stats.messages_out,
                "in_bytes": in_bytes,
                "out_bytes": out_bytes,
                "cpu": cpu - self._cpu_start,
            },
            {},
            self.start,
        )
        streams = broker.streams.streams
        return {
            "server_id": broker.server_id,
            "server_name": "asyncipc",
            "version": __version__,
            "proto": PROTOCOL_VERSION,
            "start": _iso(self.start),
            "now": _iso(now),
            "uptime": _uptime(now - self.start),
            "uptime_seconds": round(now - self.start, 3),
            "pid": os.getpid(),
            "mem": rss(),
            "cores": os.cpu_count() or 1,
            "cpu": round(rates["cpu"] * 100, 1),
            "listen": broker.urls,
            "auth_required": opts.token is not None,
            "max_payload": opts.max_frame,
            "max_pending": opts.high_water,
            "ping_interval": opts.ping_interval,
            "ping_max": opts.dead_peer_factor,
            "handshake_timeout": opts.handshake_timeout,
            "drain_timeout": opts.drain_timeout,
            "connections": len(sessions),
            "total_connections": stats.connections,
            "subscriptions": sum(len(s.routes) for s in sessions),
            "in_msgs": stats.messages_in,
            "out_msgs": stats.messages_out,
            "in_bytes": in_bytes,
            "out_bytes": out_bytes,
            "in_msgs_rate": round(rates["in_msgs"], 1),
            "out_msgs_rate": round(rates["out_msgs"], 1),
            "in_bytes_rate": round(rates["in_bytes"], 1),
            "out_bytes_rate": round(rates["out_bytes"], 1),
            "slow_consumers": stats.slow_consumers,
            "dropped": stats.dropped,
            "no_responders": stats.no_responders,
            "pending_bytes": sum(s.link.buffered for s in sessions),
            "streams": len(streams),
            "consumers": sum(len(e.consumers) for e in streams.values()),
            "transports": {
                name: {
                    "connections": sum(1 for s in sessions if s.link.transport == name),
                    "total_connections": t.connections,
                    "in_msgs": t.messages_in,
                    "out_msgs": t.messages_out,
                    "in_bytes": t.bytes_in,
                    "out_bytes": t.bytes_out,
                    "dropped": t.dropped,
                }
                for name, t in transports.items()
            },
        }

    # --- connz ---------------------------------------------------------------------------

    def connz(self, options: Mapping[str, object] | None = None) -> dict[str, Any]:
        """The connections now, paged (``offset``, ``limit``), sorted (``sort``), with
        their subscriptions on ``subs=1`` (subjects) or ``subs=detail`` (objects)."""
        options = options or {}
        _known(options, ("subs", "offset", "limit", "sort"), "connz")
        subs = _flag(options.get("subs", False), "subs", detail=True)
        offset = _int(options.get("offset"), "offset", 0, 0, 1 << 62)
        limit = _int(options.get("limit"), "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        sort = str(options.get("sort") or "cid")
        if sort not in CONNZ_SORTS:
            raise QueryError(f"sort must be one of {', '.join(CONNZ_SORTS)}, not {sort!r}")
        broker = self.broker
        sessions = broker.clients()
        now = time.time()
        loop_now = asyncio.get_running_loop().time()
        values: dict[Any, float] = {}
        born: dict[Any, float] = {}
        for s in sessions:
            cid = s.client_id
            c = s.counters
            for field, value in (
                ("in_msgs", c.messages_in),
                ("out_msgs", c.messages_out),
                ("in_bytes", c.bytes_in),
                ("out_bytes", c.bytes_out),
            ):
                values[cid, field] = value
                born[cid, field] = s.start
        rates = self._conns.rates(now, values, born, self.start)
        rows = [self._connection(s, now, loop_now, rates, subs) for s in sessions]
        rows.sort(key=CONNZ_SORTS[sort])
        page = rows[offset : offset + limit]
        for row in page:
            del row["start_ts"]
        return {
            "server_id": broker.server_id,
            "now": _iso(now),
            "num_connections": len(page),
            "total": len(rows),
            "offset": offset,
            "limit": limit,
            "sort": sort,
            "connections": page,
        }

    def _connection(
        self,
        s: Session,
        now: float,
        loop_now: float,
        rates: dict[Any, float],
        subs: bool | str,
    ) -> dict[str, Any]:
        link = s.link
        peer = link.peer
        cid = s.client_id
        row: dict[str, Any] = {
            "cid": cid,
            "kind": "Client",
            "type": "asyncipc",
            "transport": link.transport,
            "name": s.name,
            "start": _iso(s.start),
            "start_ts": s.start,
            "uptime": round(now - s.start, 3),
        }
        address = peer.address
        if isinstance(address, tuple) and len(address) >= 2:
            row["ip"], row["port"] = str(address[0]), address[1]
        elif isinstance(address, (str, bytes)) and address:
            row["address"] = os.fsdecode(address)
        if peer.pid is not None:
            row["pid"] = peer.pid
        if peer.uid is not None:
            row["uid"] = peer.uid
        last = link.last_received
        if last > 0 and not link.in_process:
            idle = max(0.0, loop_now - last)
            row["last_activity"] = _iso(now - idle)
            row["idle"] = round(idle, 3)
        else:
            row["idle"] = None  # an in-process link is not watched for silence
        row.update(
            pending_bytes=link.buffered,
            write_blocked=link.write_blocked,
            in_msgs=s.counters.messages_in,
            out_msgs=s.counters.messages_out,
            in_bytes=s.counters.bytes_in,
            out_bytes=s.counters.bytes_out,
            in_msgs_rate=round(rates[cid, "in_msgs"], 1),
            out_msgs_rate=round(rates[cid, "out_msgs"], 1),
            in_bytes_rate=round(rates[cid, "in_bytes"], 1),
            out_bytes_rate=round(rates[cid, "out_bytes"], 1),
            dropped=s.counters.dropped,
            subscriptions=len(s.routes),
        )
        if subs == "detail":
            row["subscriptions_list_detail"] = [
                self._subscription(s, r) for r in sorted(s.routes.values(), key=lambda r: r.sid)
            ]
        elif subs:
            row["subscriptions_list"] = sorted(r.subject for r in s.routes.values())
        return row

    # --- subsz ---------------------------------------------------------------------------

    def subsz(self, options: Mapping[str, object] | None = None) -> dict[str, Any]:
        """The subscriptions: counts, and the list on ``subs=1`` (paged; ``test=SUBJECT``
        keeps those that would receive a message on that subject)."""
        options = options or {}
        _known(options, ("subs", "offset", "limit", "test"), "subsz")
        listed = _flag(options.get("subs", False), "subs")
        offset = _int(options.get("offset"), "offset", 0, 0, 1 << 62)
        limit = _int(options.get("limit"), "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        test = options.get("test")
        broker = self.broker
        routes = [
            (s, r)
            for s in sorted(broker.clients(), key=lambda s: s.client_id)
            for r in sorted(s.routes.values(), key=lambda r: r.sid)
        ]
        if test is not None:
            subject = str(test)
            try:
                validate_subject(subject)
            except InvalidSubject as exc:
                raise QueryError(f"test: {exc}") from None
            routes = [(s, r) for s, r in routes if matches(r.subject, subject)]
        out: dict[str, Any] = {
            "server_id": broker.server_id,
            "now": _iso(time.time()),
            "num_subscriptions": len(broker.router),
            "total": len(routes),
            "offset": offset,
            "limit": limit,
            "slow_consumers": broker.stats.slow_consumers,
            "dropped": broker.stats.dropped,
            "recent_slow_consumers": list(self.recent_slow),
        }
        if test is not None:
            out["test"] = str(test)
        if listed:
            out["subscriptions_list"] = [
                self._subscription(s, r) for s, r in routes[offset : offset + limit]
            ]
        return out

    def _subscription(self, s: Session, r: Route[Session]) -> dict[str, Any]:
        link = s.link
        return {
            "subject": r.subject,
            "qgroup": r.queue,
            "sid": r.sid,
            "cid": s.client_id,
            "name": s.name,
            "overflow": r.overflow.name.lower(),
            "max_pending": self.broker.options.high_water,
            "pending_bytes": link.buffered,
            "slow": link.write_blocked,
            "dropped": r.dropped,
        }

    # --- streamz -------------------------------------------------------------------------

    def streamz(self, options: Mapping[str, object] | None = None) -> dict[str, Any]:
        """The durable streams and, on ``consumers=1``, each one's consumers."""
        options = options or {}
        _known(options, ("consumers",), "streamz")
        detail = _flag(options.get("consumers", False), "consumers")
        manager = self.broker.streams
        streams = []
        for name, engine in sorted(manager.streams.items()):
            info = engine.info()
            entry: dict[str, Any] = {
                "name": name,
                "subjects": list(info.config.subjects),
                "storage": info.storage,
                "messages": info.messages,
                "bytes": info.bytes,
                "first_seq": info.first_seq,
                "last_seq": info.last_seq,
                "num_subjects": info.subjects,
                "consumer_count": info.consumers,
                "refused": info.refused,
                "lost": info.lost,
                "config": info.config.to_json(),
            }
            if detail:
                entry["consumers"] = [
                    c.info().to_json() for _, c in sorted(engine.consumers.items())
                ]
            streams.append(entry)
        return {
            "server_id": self.broker.server_id,
            "now": _iso(time.time()),
            "store": self.broker.options.store,
            "streams": len(streams),
            "consumers": sum(s["consumer_count"] for s in streams),
            "messages": sum(s["messages"] for s in streams),
            "bytes": sum(s["bytes"] for s in streams),
            "problems": list(manager.problems),
            "streams_list": streams,
        }

    # --- subjectz ----------------------------------------------------------------------

    def subjectz(self, options: Mapping[str, object] | None = None) -> dict[str, Any]:
        """Messages published per subject and their rates, busiest first (``limit``).

        Counting starts at the first look and stops :data:`METER_IDLE` seconds after the
        last one (``metering_since`` says when it started)."""
        options = options or {}
        _known(options, ("limit",), "subjectz")
        limit = _int(options.get("limit"), "limit", 100, 1, METER_MAX_SUBJECTS)
        meter = self._watch_subjects()
        now = time.time()
        counts = dict(meter.counts)
        rates = self._subjects.rates(now, dict(counts), {}, meter.since)
        rows: list[dict[str, Any]] = [
            {"subject": subject, "msgs": n, "msgs_rate": round(rates[subject], 1)}
            for subject, n in counts.items()
        ]
        rows.sort(key=lambda row: (-row["msgs_rate"], -row["msgs"], row["subject"]))
        return {
            "server_id": self.broker.server_id,
            "now": _iso(now),
            "metering_since": _iso(meter.since),
            "total": len(rows),
            "subjects": rows[:limit],
        }

    def _watch_subjects(self) -> SubjectMeter:
        loop = asyncio.get_running_loop()
        meter = self._meter
        if meter is None:
            meter = self._meter = SubjectMeter()
            self._subjects = Samples()
            self.broker.add_relay(meter)
        if self._meter_timer is not None:
            self._meter_timer.cancel()
        self._meter_timer = loop.call_later(METER_IDLE, self._stop_meter)
        return meter

    def _stop_meter(self) -> None:
        if self._meter_timer is not None:
            self._meter_timer.cancel()
            self._meter_timer = None
        if self._meter is not None:
            self.broker.remove_relay(self._meter)
            self._meter = None

    @property
    def metering(self) -> bool:
        """Whether subjects are being counted now."""
        return self._meter is not None

    # --- all at once ------------------------------------------------------------------

    def snapshot(self, name: str, options: Mapping[str, object] | None = None) -> dict[str, Any]:
        """The figures of endpoint ``name`` (one of :data:`ENDPOINTS`)."""
        if name not in ENDPOINTS:
            raise QueryError(f"no monitoring endpoint {name!r} (there are: {', '.join(ENDPOINTS)})")
        result: dict[str, Any] = getattr(self, name)(options)
        return result

    def dashboard(self) -> dict[str, Any]:
        """What the dashboard shows, in one object: its SSE stream sends one a second."""
        return {
            "varz": self.varz(),
            "connz": self.connz({"sort": "cid", "limit": 500}),
            "subsz": self.subsz({"subs": True, "limit": 500}),
            "subjectz": self.subjectz({"limit": 50}),
            "streamz": self.streamz(),
        }

    # --- $sys.monitor. -----------------------------------------------------------------

    def request(self, subject: str, data: bytes, reply: str) -> None:
        """Answer a ``$sys.monitor.<endpoint>`` request: ``data`` is empty or a JSON
        object of options (``{"subs": true, "limit": 10}``). A bad one gets a failure
        status (the requester raises :class:`~asyncipc.ServiceError` naming it)."""
        name = subject[len(MONITOR_PREFIX) :]
        try:
            options: object = json.loads(data) if data.strip() else {}
            if not isinstance(options, dict):
                raise QueryError(f"the options of {subject} are a JSON object, not {data[:40]!r}")
            body = self.snapshot(name, options)
        except (QueryError, ValueError) as exc:
            text = str(exc) if isinstance(exc, QueryError) else f"options are not JSON: {exc}"
            headers = {STATUS_HEADER: SERVICE_ERROR_STATUS, ERROR_HEADER: text[:1000]}
            payload = json.dumps({"error": "bad_request", "message": text}).encode()
            self.broker.publish(reply, payload, None, headers, None, None)
            return
        self.broker.publish(reply, json.dumps(body).encode(), None, None, None, None)
