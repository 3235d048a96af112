"""``asyncipc top``: a broker's live view in the terminal, redrawn every ``--interval``.

The figures of the dashboard (``GET /dashboard``), asked over the bus like ``asyncipc
stats`` does (``$sys.monitor.*``): no HTTP listener needed. On a terminal each frame
replaces the last; into a pipe, or with ``--once``/``--frames N``, frames follow one
another, separated by a blank line, for scripts and logs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from typing import Any

from ..client import Bus
from ..protocol.system import MONITOR_PREFIX
from ._clients import _connect
from ._common import EXIT_OK, _positive_float, _positive_int
from ._stats import _bytes, _clean, _num, _peer, table

__all__ = ["add_top_command", "frame"]

CLEAR = "\x1b[H\x1b[2J"
"""Cursor home, clear screen: each frame replaces the last on a terminal."""


async def _ask(bus: Bus, what: str, options: dict[str, Any], timeout: float) -> dict[str, Any]:
    reply = await bus.request(MONITOR_PREFIX + what, json.dumps(options).encode(), timeout=timeout)
    figures: dict[str, Any] = json.loads(reply.data)
    return figures


async def snapshot(bus: Bus, rows: int, timeout: float) -> dict[str, Any]:
    """Everything one frame shows, asked at once."""
    varz, connz, subjectz, subsz = await asyncio.gather(
        _ask(bus, "varz", {}, timeout),
        _ask(bus, "connz", {"sort": "rate_to", "limit": rows}, timeout),
        _ask(bus, "subjectz", {"limit": rows}, timeout),
        _ask(bus, "subsz", {}, timeout),
    )
    return {"varz": varz, "connz": connz, "subjectz": subjectz, "subsz": subsz}


def frame(snap: dict[str, Any], url: str, now: float | None = None) -> str:
    """One screen of ``snap`` (what :func:`snapshot` returns) as text."""
    v, c, j, s = snap["varz"], snap["connz"], snap["subjectz"], snap["subsz"]
    stamp = time.strftime("%H:%M:%S", time.localtime(now))
    lines = [
        f"asyncipc top - {_clean(url)} - {stamp} - up {v['uptime']}",
        f"connections {v['connections']} (total {v['total_connections']})   "
        f"subscriptions {v['subscriptions']}   streams {v['streams']}",
        f"in  {_num(v['in_msgs_rate'])} msgs/s   {v['in_msgs']} msgs   {_bytes(v['in_bytes'])}",
        f"out {_num(v['out_msgs_rate'])} msgs/s   {v['out_msgs']} msgs   {_bytes(v['out_bytes'])}",
        f"slow consumers {v['slow_consumers']}   dropped {v['dropped']}   "
        f"pending {_bytes(v['pending_bytes'])}   memory {_bytes(v['mem'])}   "
        f"cpu {v['cpu']:.1f} %",
        "",
        table(
            ["CID", "NAME", "TRANSPORT", "PEER", "IN/S", "OUT/S", "PENDING", "SUBS"],
            [
                [
                    x["cid"],
                    x["name"],
                    x["transport"],
                    _peer(x),
                    x["in_msgs_rate"],
                    x["out_msgs_rate"],
                    x["pending_bytes"],
                    x["subscriptions"],
                ]
                for x in c["connections"]
            ],
        ),
        "",
    ]
    subjects = j["subjects"]
    if subjects:
        lines.append(
            table(
                ["SUBJECT", "MSGS/S", "MSGS"],
                [[x["subject"], x["msgs_rate"], x["msgs"]] for x in subjects],
            )
        )
    else:
        lines.append("subjects: counting (rates appear from the next frame)")
    slow = s.get("recent_slow_consumers") or []
    if slow:
        lines += ["", "slow consumers cut off:"]
        lines.append(
            table(
                ["TIME", "CID", "NAME", "SUBJECT"],
                [[x["time"], x["cid"], x["name"], x["subject"]] for x in slow[-5:]],
            )
        )
    return "\n".join(lines)


async def _top(args: argparse.Namespace) -> int:
    frames = 1 if args.once else args.frames
    live = frames is None and sys.stdout.isatty()
    out = sys.stdout
    shown = 0
    async with _connect(args) as bus:
        url = bus.url
        # The subject meter counts from its first look: one look before the first frame,
        # so that the first frame already has rates when there is traffic.
        await _ask(bus, "subjectz", {"limit": 1}, args.timeout)
        while frames is None or shown < frames:
            if shown or frames != 1:
                await asyncio.sleep(args.interval if shown else min(args.interval, 1.0))
            snap = await snapshot(bus, args.rows, args.timeout)
            text = frame(snap, url)
            out.write((CLEAR + text + "\n") if live else (("\n" if shown else "") + text + "\n"))
            out.flush()
            shown += 1
    return EXIT_OK


def add_top_command(commands: Any, client: argparse.ArgumentParser) -> None:
    """Add ``top`` to the parser."""
    p = commands.add_parser(
        "top",
        parents=[client],
        help="a broker's live view in the terminal: connections, subjects, slow consumers",
        description="Redraw a broker's figures every --interval seconds until Ctrl-C: "
        "message rates in and out, the busiest connections, the busiest subjects, slow "
        "consumers cut off. Asked over the bus ($sys.monitor.*), like `asyncipc stats`.",
        epilog="Examples:\n  asyncipc top\n  asyncipc top --interval 5 --rows 20\n"
        "  asyncipc top --frames 3 > top.log   # three frames, for a log",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--interval", type=_positive_float, default=2.0, help="seconds (default 2)")
    p.add_argument("--rows", type=_positive_int, default=10, help="rows per table (default 10)")
    p.add_argument("--timeout", type=_positive_float, default=5.0, help="seconds per question")
    count = p.add_mutually_exclusive_group()
    count.add_argument("--once", action="store_true", help="print one frame and exit")
    count.add_argument("--frames", type=_positive_int, help="print N frames and exit")
    p.set_defaults(func=_top, interrupted=EXIT_OK, log_level=logging.ERROR)
