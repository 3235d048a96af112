"""``GET /metrics``: the broker's counters in the Prometheus text format (version 0.0.4).

Rendered from :attr:`Broker.stats` (totals and :class:`~asyncipc.broker.TransportStats`
by transport) and from the sessions connected now; nothing is counted here. Written out by
hand: the format is a few lines of text, not worth a dependency.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

from . import __version__

if TYPE_CHECKING:
    from .broker import Broker

__all__ = ["CONTENT_TYPE", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}"


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(
        self, name: str, kind: str, help: str, samples: Iterable[tuple[dict[str, str], int]]
    ) -> None:
        self.lines.append(f"# HELP {name} {help}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self.lines.append(f"{name}{_labels(labels)} {value}")


_BRIDGE_COUNTERS = (
    ("asyncipc_bridge_messages_out_total", "messages_out", "Messages the bridge sent to NATS."),
    ("asyncipc_bridge_messages_in_total", "messages_in", "Messages from NATS delivered here."),
    ("asyncipc_bridge_bytes_out_total", "bytes_out", "Payload bytes sent to NATS."),
    ("asyncipc_bridge_bytes_in_total", "bytes_in", "Payload bytes from NATS delivered here."),
    (
        "asyncipc_bridge_dropped_out_total",
        "dropped_out",
        "Messages for NATS not sent: the bridge's queue was full, or NATS refused them.",
    ),
    (
        "asyncipc_bridge_dropped_in_total",
        "dropped_in",
        "Messages from NATS lost because the local side did not keep up.",
    ),
    ("asyncipc_bridge_reconnects_total", "disconnects", "Times the NATS connection dropped."),
)
"""The counters of :class:`~asyncipc.bridge.BridgeStats` exposed per bridge."""


def render(
    broker: Broker,
    adapter_dropped: int,
    adapter_queued: int,
    responses: Counter[tuple[str, int]],
) -> str:
    """The exposition text. ``adapter_dropped`` and ``adapter_queued``: what the HTTP
    adapter's own subscription queues dropped and hold now (counted under
    ``transport="http"``); ``responses``: its HTTP responses by route and status."""
    stats = broker.stats
    sessions = broker.clients()
    names = sorted(set(stats.transports) | {s.link.transport for s in sessions})
    live: Counter[str] = Counter()
    subs: Counter[str] = Counter()
    buffered: Counter[str] = Counter()
    for s in sessions:
        t = s.link.transport
        live[t] += 1
        subs[t] += len(s.routes)
        buffered[t] += s.link.buffered
    if adapter_queued:
        buffered["http"] += adapter_queued
    per = {t: stats.transport(t) for t in names}

    def by(values: dict[str, int]) -> list[tuple[dict[str, str], int]]:
        return [({"transport": t}, values.get(t, 0)) for t in names]

    dropped = {t: per[t].dropped for t in names}
    if adapter_dropped:
        dropped["http"] = dropped.get("http", 0) + adapter_dropped
    w = _Writer()
    w.metric(
        "asyncipc_info",
        "gauge",
        "The broker: its id and the asyncipc version.",
        [({"server_id": broker.server_id, "version": __version__}, 1)],
    )
    w.metric("asyncipc_connections", "gauge", "Clients connected now.", by(live))
    w.metric(
        "asyncipc_connections_total",
        "counter",
        "Clients accepted since the broker started.",
        by({t: per[t].connections for t in names}),
    )
    w.metric("asyncipc_subscriptions", "gauge", "Subscriptions now.", by(subs))
    w.metric(
        "asyncipc_messages_in_total",
        "counter",
        "Messages published by clients.",
        by({t: per[t].messages_in for t in names}),
    )
    w.metric(
        "asyncipc_bytes_in_total",
        "counter",
        "Payload bytes published by clients.",
        by({t: per[t].bytes_in for t in names}),
    )
    w.metric(
        "asyncipc_messages_out_total",
        "counter",
        "Messages delivered to subscriptions (one per subscription reached).",
        by({t: per[t].messages_out for t in names}),
    )
    w.metric(
        "asyncipc_bytes_out_total",
        "counter",
        "Payload bytes delivered to subscriptions.",
        by({t: per[t].bytes_out for t in names}),
    )
    w.metric(
        "asyncipc_dropped_total",
        "counter",
        "Messages a slow subscriber lost to drop_new or drop_oldest.",
        by(dropped),
    )
    w.metric(
        "asyncipc_buffered_bytes",
        "gauge",
        "Bytes held for clients that have not taken them yet (broker and adapter).",
        by(buffered),
    )
    w.metric(
        "asyncipc_slow_consumers_total",
        "counter",
        'Subscriptions cut off as slow consumers (overflow="error", or "block" past '
        "block_timeout).",
        [({}, stats.slow_consumers)],
    )
    w.metric(
        "asyncipc_no_responders_total",
        "counter",
        "Requests nobody was subscribed to.",
        [({}, stats.no_responders)],
    )
    bridges = [(",".join(b.servers), b.stats) for b in broker.bridges]
    if bridges:
        w.metric(
            "asyncipc_bridge_connected",
            "gauge",
            "Whether the bridge's NATS connection is up (1) or not (0).",
            [({"servers": servers}, int(st.connected)) for servers, st in bridges],
        )
        for name, field, help_text in _BRIDGE_COUNTERS:
            w.metric(
                name,
                "counter",
                help_text,
                [({"servers": servers}, getattr(st, field)) for servers, st in bridges],
            )
    w.metric(
        "asyncipc_http_responses_total",
        "counter",
        "HTTP responses of the REST adapter, by route and status.",
        [
            ({"route": route, "status": str(status)}, n)
            for (route, status), n in sorted(responses.items())
        ],
    )
    return "\n".join(w.lines) + "\n"
