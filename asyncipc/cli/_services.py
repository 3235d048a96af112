"""The service commands: ``asyncipc services ls|info|stats [NAME]`` (``docs/services.md``).

They ask the ``$SRV`` discovery subjects every :class:`~asyncipc.Service` answers (NATS
micro's), gather the answers for ``--timeout`` seconds, and print a table or ``--json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from ..service import discover
from ._clients import _connect
from ._common import EXIT_FAILED, EXIT_OK, CommandError, _positive_float
from ._stats import _clean, table

__all__ = ["add_service_commands"]

DISCOVERY_TIMEOUT = 0.5
"""Seconds ``services`` waits for answers: every instance answers, and none says it was
the last (as ``nats micro ls``)."""


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.3f} ms"


def _type_name(schema: object) -> str:
    """A model's name from its JSON schema: its ``title`` (pydantic), the name its
    ``$ref`` points to (msgspec), else its JSON type; ``-`` when not declared."""
    if not isinstance(schema, dict):
        return "-"
    title = schema.get("title")
    if isinstance(title, str) and title:
        return title
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref:
        return ref.rpartition("/")[2]
    return str(schema.get("type", "?"))


async def _gather(args: argparse.Namespace, verb: str) -> list[dict[str, Any]]:
    async with _connect(args) as bus:
        found = await discover(bus, verb, args.name, service_id=args.id, timeout=args.timeout)
    found.sort(key=lambda d: (str(d.get("name")), str(d.get("id"))))
    return found


def _none_found(args: argparse.Namespace) -> int:
    what = f"service {args.name!r}" if args.name else "services"
    if args.json:
        _out("[]")
        return EXIT_OK if not args.name else EXIT_FAILED
    if args.name:
        raise CommandError(f"no {what} answered within {args.timeout:g} s", EXIT_FAILED)
    _out("no services")
    return EXIT_OK


async def _services(args: argparse.Namespace) -> int:
    """``services ls|info|stats``: gather the answers to ``args.verb``; print them as
    JSON, or as ``args.render`` makes them text."""
    found = await _gather(args, args.verb)
    if not found:
        return _none_found(args)
    _out(json.dumps(found) if args.json else args.render(found))
    return EXIT_OK


def _ls(found: list[dict[str, Any]]) -> str:
    rows = [
        [
            str(d.get("name", "")),
            str(d.get("version", "")),
            str(d.get("id", "")),
            str(len(d.get("endpoints") or [])),
            str(d.get("description", "")),
        ]
        for d in found
    ]
    return table(["NAME", "VERSION", "ID", "ENDPOINTS", "DESCRIPTION"], rows)


def _info(found: list[dict[str, Any]]) -> str:
    blocks = []
    for d in found:
        # What a service says of itself is printed escaped, as every peer-chosen text is.
        head = f"service {d.get('name')} {d.get('version')} (id {d.get('id')})"
        lines = [_clean(head)]
        if d.get("description"):
            lines.append(f"  {_clean(d['description'])}")
        rows = []
        for ep in d.get("endpoints") or []:
            schema = ep.get("schema")
            if isinstance(schema, dict):
                types = (
                    f"{_type_name(schema.get('request'))} -> {_type_name(schema.get('response'))}"
                )
            else:
                types = "bytes -> bytes"
            rows.append(
                [
                    str(ep.get("name", "")),
                    str(ep.get("subject", "")),
                    str(ep.get("queue_group", "")) or "-",
                    types,
                ]
            )
        if rows:
            lines += [
                "  " + r
                for r in table(["ENDPOINT", "SUBJECT", "QUEUE", "TYPES"], rows).splitlines()
            ]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _stats(found: list[dict[str, Any]]) -> str:
    rows = []
    for d in found:
        for ep in d.get("endpoints") or []:
            rows.append(
                [
                    str(d.get("name", "")),
                    str(d.get("id", ""))[:8],
                    str(ep.get("name", "")),
                    str(ep.get("num_requests", 0)),
                    str(ep.get("num_errors", 0)),
                    _ms(int(ep.get("processing_time", 0))),
                    _ms(int(ep.get("average_processing_time", 0))),
                    str(ep.get("last_error", "")) or "-",
                ]
            )
    header = ["SERVICE", "ID", "ENDPOINT", "REQUESTS", "ERRORS", "TIME", "AVERAGE", "LAST ERROR"]
    return table(header, rows) if rows else "no endpoints"


def add_service_commands(commands: Any, client: argparse.ArgumentParser) -> None:
    """Add ``services`` with ``ls``, ``info`` and ``stats`` to the parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("name", metavar="NAME", nargs="?", help="only the service NAME")
    common.add_argument("--id", metavar="ID", help="only the instance ID (needs NAME)")
    common.add_argument("--json", action="store_true", help="print the answers as JSON")
    common.add_argument(
        "--timeout",
        "-t",
        metavar="S",
        type=_positive_float,
        default=DISCOVERY_TIMEOUT,
        help=f"seconds to gather answers (default: {DISCOVERY_TIMEOUT:g})",
    )
    services = commands.add_parser(
        "services",
        aliases=["svc"],
        help="discover the running services: ls, info, stats",
        description="Ask $SRV.INFO / $SRV.STATS (as NATS micro) and print every answer "
        "that came within --timeout (docs/services.md).",
        epilog="Example:\n  asyncipc services ls\n  asyncipc services stats pricing --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ops = services.add_subparsers(dest="op", metavar="OP", required=True)
    p = ops.add_parser("ls", parents=[client, common], help="one line per service instance")
    p.set_defaults(func=_services, verb="INFO", render=_ls)
    p = ops.add_parser(
        "info", parents=[client, common], help="each instance's endpoints and their types"
    )
    p.set_defaults(func=_services, verb="INFO", render=_info)
    p = ops.add_parser(
        "stats", parents=[client, common], help="requests, errors and time per endpoint"
    )
    p.set_defaults(func=_services, verb="STATS", render=_stats)
    for q in ops.choices.values():
        q.set_defaults(interrupted=None, log_level=logging.ERROR)
