"""``asyncipc stats [varz|connz|subsz|streamz|subjectz]``: a broker's figures as tables.

Asked over the bus (``$sys.monitor.<name>``, docs/monitoring.md), so any URL a client can
use works and the broker needs no HTTP listener; ``--json`` prints the broker's answer
as it came.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from .._monitor import CONNZ_SORTS, ENDPOINTS
from ..protocol.system import MONITOR_PREFIX
from ._clients import _connect
from ._common import EXIT_OK, _positive_float, _positive_int

__all__ = ["add_stats_command", "table"]


def _clean(value: object) -> str:
    """A value for the terminal: what a client chose (its name, a subject) may hold
    control characters, which are shown escaped rather than sent to the terminal."""
    text = "" if value is None else str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _num(value: float) -> str:
    if value >= 1e9:
        return f"{value / 1e9:.1f}G"
    if value >= 1e6:
        return f"{value / 1e6:.1f}M"
    if value >= 1e4:
        return f"{value / 1e3:.1f}k"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)  # pragma: no cover


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell; numbers (and their headers) right-aligned."""
    cells = [[_clean(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    right = [
        bool(rows) and all(isinstance(r[i], (int, float)) or r[i] == "" for r in rows)
        for i in range(len(headers))
    ]

    def line(row: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(list(headers)), *(line(row) for row in cells)])


def _peer(c: dict[str, Any]) -> str:
    if "ip" in c:
        return f"{c['ip']}:{c['port']}"
    # A Unix socket's address is the broker's own path: who is there (pid, uid) says more.
    parts = [f"{k} {c[k]}" for k in ("pid", "uid") if k in c]
    if not parts and c.get("address"):
        parts.append(str(c["address"]))
    return " ".join(parts)


def _varz(v: dict[str, Any]) -> str:
    pairs = [
        ("server", f"{v['server_id']} (asyncipc {v['version']}, protocol {v['proto']})"),
        ("listening on", ", ".join(v["listen"]) or "-"),
        ("uptime", f"{v['uptime']} (since {v['start']})"),
        ("connections", f"{v['connections']} now, {v['total_connections']} in total"),
        ("subscriptions", str(v["subscriptions"])),
        (
            "messages in",
            f"{v['in_msgs']} ({_bytes(v['in_bytes'])}), {_num(v['in_msgs_rate'])}/s",
        ),
        (
            "messages out",
            f"{v['out_msgs']} ({_bytes(v['out_bytes'])}), {_num(v['out_msgs_rate'])}/s",
        ),
        ("slow consumers", f"{v['slow_consumers']} cut off, {v['dropped']} messages dropped"),
        ("pending", _bytes(v["pending_bytes"])),
        ("no responders", str(v["no_responders"])),
        ("streams", f"{v['streams']} with {v['consumers']} consumers"),
        ("memory", _bytes(v["mem"])),
        ("cpu", f"{v['cpu']:.1f} % of one core, {v['cores']} cores"),
        ("limits", f"max_payload {_bytes(v['max_payload'])}, "
                   f"max_pending {_bytes(v['max_pending'])}, "
                   f"auth {'required' if v['auth_required'] else 'none'}"),
    ]  # fmt: skip
    width = max(len(k) for k, _ in pairs)
    lines = [f"{k.ljust(width)}  {_clean(val)}" for k, val in pairs]
    if v["transports"]:
        lines += ["", "by transport:"]
        lines.append(
            table(
                ["TRANSPORT", "CONNS", "TOTAL", "IN MSGS", "OUT MSGS", "DROPPED"],
                [
                    [
                        name,
                        t["connections"],
                        t["total_connections"],
                        t["in_msgs"],
                        t["out_msgs"],
                        t["dropped"],
                    ]
                    for name, t in v["transports"].items()
                ],
            )
        )
    return "\n".join(lines)


def _connz(c: dict[str, Any]) -> str:
    rows = [
        [x["cid"], x["name"], x["transport"], _peer(x), x["in_msgs"], x["out_msgs"],
         x["in_msgs_rate"], x["out_msgs_rate"], x["pending_bytes"], x["subscriptions"]]
        for x in c["connections"]
    ]  # fmt: skip
    head = f"{c['num_connections']} of {c['total']} connections (sorted by {c['sort']})"
    out = [head, table(
        ["CID", "NAME", "TRANSPORT", "PEER", "IN MSGS", "OUT MSGS", "IN/S", "OUT/S",
         "PENDING", "SUBS"], rows)]  # fmt: skip
    for x in c["connections"]:
        subs = x.get("subscriptions_list")
        if subs is None and "subscriptions_list_detail" in x:
            subs = [d["subject"] for d in x["subscriptions_list_detail"]]
        if subs:
            out.append(f"  {x['cid']}: {', '.join(_clean(s) for s in subs)}")
    return "\n".join(out)


def _subsz(s: dict[str, Any]) -> str:
    out = [
        f"{s['num_subscriptions']} subscriptions; {s['slow_consumers']} slow consumers cut "
        f"off, {s['dropped']} messages dropped"
    ]
    listed = s.get("subscriptions_list")
    if listed is not None:
        out.append(
            table(
                ["CID", "NAME", "SUBJECT", "QUEUE", "OVERFLOW", "PENDING", "DROPPED", "SLOW"],
                [
                    [
                        x["cid"],
                        x["name"],
                        x["subject"],
                        x["qgroup"] or "",
                        x["overflow"],
                        x["pending_bytes"],
                        x["dropped"],
                        "yes" if x["slow"] else "",
                    ]
                    for x in listed
                ],
            )
        )
    if s["recent_slow_consumers"]:
        out += ["", "recently cut off:"]
        out.append(
            table(
                ["TIME", "CID", "NAME", "SUBJECT", "SID"],
                [
                    [x["time"], x["cid"], x["name"], x["subject"], x["sid"]]
                    for x in s["recent_slow_consumers"]
                ],
            )
        )
    return "\n".join(out)


def _streamz(s: dict[str, Any]) -> str:
    head = (
        f"{s['streams']} streams, {s['consumers']} consumers, {s['messages']} messages "
        f"({_bytes(s['bytes'])})"
    )
    rows = [
        [x["name"], ", ".join(x["subjects"]), x["storage"], x["messages"], x["bytes"],
         x["consumer_count"]]
        for x in s["streams_list"]
    ]  # fmt: skip
    return "\n".join(
        [head, table(["STREAM", "SUBJECTS", "STORAGE", "MSGS", "BYTES", "CONSUMERS"], rows)]
    )


def _subjectz(s: dict[str, Any]) -> str:
    head = f"{s['total']} subjects since {s['metering_since']}"
    if not s["subjects"]:
        head += " (counting starts with this look: run it again to see traffic)"
    rows = [[x["subject"], x["msgs"], x["msgs_rate"]] for x in s["subjects"]]
    return "\n".join([head, table(["SUBJECT", "MSGS", "MSGS/S"], rows)])


_RENDER = {
    "varz": _varz,
    "connz": _connz,
    "subsz": _subsz,
    "streamz": _streamz,
    "subjectz": _subjectz,
}


def _options(args: argparse.Namespace) -> dict[str, Any]:
    what = args.what
    options: dict[str, Any] = {}
    if what in ("connz", "subsz") and args.limit is not None:
        options["limit"] = args.limit
    if what in ("connz", "subsz") and args.offset:
        options["offset"] = args.offset
    if what == "connz":
        if args.subs:
            options["subs"] = True
        if args.sort:
            options["sort"] = args.sort
    if what == "subsz":
        options["subs"] = True
        if args.test:
            options["test"] = args.test
    if what == "subjectz" and args.limit is not None:
        options["limit"] = args.limit
    if what == "streamz" and args.consumers:
        options["consumers"] = True
    return options


async def _stats(args: argparse.Namespace) -> int:
    body = json.dumps(_options(args)).encode()
    async with _connect(args) as bus:
        reply = await bus.request(MONITOR_PREFIX + args.what, body, timeout=args.timeout)
    figures = json.loads(reply.data)
    text = json.dumps(figures, indent=2) if args.json else _RENDER[args.what](figures)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    return EXIT_OK


def add_stats_command(commands: Any, client: argparse.ArgumentParser) -> None:
    """Add ``stats`` to the parser."""
    p = commands.add_parser(
        "stats",
        parents=[client],
        help="show a broker's figures: connections, subscriptions, streams, subjects",
        description="Ask the broker for its monitoring figures over the bus "
        "($sys.monitor.<WHAT>, docs/monitoring.md) and print them as tables (--json: as "
        "the broker sent them). No HTTP listener is needed. WHAT: varz (the server: "
        "totals, rates, memory, CPU; the default), connz (connections), subsz "
        "(subscriptions and slow consumers), streamz (durable streams), subjectz (messages "
        "per subject: counted from the first look on).",
        epilog="Examples:\n"
        "  asyncipc stats\n"
        "  asyncipc stats connz --sort msgs_from --limit 10\n"
        "  asyncipc stats subsz --test orders.new\n"
        "  asyncipc stats connz --json | jq '.connections[].name'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("what", metavar="WHAT", nargs="?", default="varz", choices=ENDPOINTS)
    p.add_argument("--json", action="store_true", help="print the broker's JSON")
    p.add_argument(
        "--sort", choices=list(CONNZ_SORTS), metavar="KEY",
        help=f"connz: the order ({', '.join(CONNZ_SORTS)}; default cid)",
    )  # fmt: skip
    p.add_argument("--limit", type=_positive_int, metavar="N", help="entries to show")
    p.add_argument("--offset", type=int, default=0, metavar="N", help="entries to skip")
    p.add_argument("--subs", action="store_true", help="connz: list each one's subscriptions")
    p.add_argument("--test", metavar="SUBJECT", help="subsz: only those SUBJECT reaches")
    p.add_argument(
        "--consumers", action="store_true", help="streamz: each stream's consumers (--json)"
    )
    p.add_argument(
        "--timeout", "-t", metavar="S", type=_positive_float, default=5.0,
        help="seconds to wait for the broker's answer (default: 5)",
    )  # fmt: skip
    p.set_defaults(func=_stats, interrupted=None, log_level=logging.ERROR)
