"""The stream commands: ``asyncipc stream add|ls|info|pub|rm`` and
``asyncipc consumer add|ls|info|next|rm`` (``docs/streams.md``, ``docs/cli.md``)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any

from ..errors import RequestTimeout
from ..streams.config import ConsumerInfo, StreamInfo
from ._clients import _connect, _headers, _json_line, _line
from ._common import EXIT_OK, CommandError, _positive_float, _positive_int, _size

__all__ = ["add_stream_commands"]


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _stream_lines(info: StreamInfo) -> list[str]:
    c = info.config
    limits = [
        f"{name}={value}"
        for name, value in (
            ("max_msgs", c.max_msgs),
            ("max_bytes", c.max_bytes),
            ("max_age", c.max_age),
            ("max_msgs_per_subject", c.max_msgs_per_subject),
            ("max_msg_size", c.max_msg_size),
        )
        if value
    ]
    lines = [
        f"stream {info.name}: subjects {', '.join(c.subjects)}",
        f"  storage {info.storage}"
        + (f" x{c.replicas}" if c.replicas > 1 else "")
        + f", fsync {c.fsync}, discard {c.discard}, "
        f"limits: {', '.join(limits) or 'none'}",
        f"  messages {info.messages} ({_human(info.bytes)}), "
        f"seq {info.first_seq}..{info.last_seq}, "
        f"subjects {info.subjects}, consumers {info.consumers}, refused {info.refused}",
    ]
    if info.storage == "memory":
        lines.append("  (in the broker's memory: lost when the broker stops)")
    if info.lost or info.torn_bytes:
        lines.append(
            f"  recovery: {info.lost} records lost in corrupt segments, "
            f"{info.torn_bytes} torn bytes cut off"
        )
    return lines


def _consumer_lines(info: ConsumerInfo) -> list[str]:
    c = info.config
    return [
        f"consumer {info.stream}/{info.name}: deliver {c.deliver}"
        + (f", filter {c.filter_subject}" if c.filter_subject else "")
        + ("" if c.durable else ", ephemeral"),
        f"  ack_wait {c.ack_wait:g} s, max_deliver {c.max_deliver or 'unlimited'}, "
        f"dead_letter {c.dead_letter or '-'}, max_ack_pending {c.max_ack_pending}",
        f"  pending {info.num_pending}, awaiting ack {info.num_ack_pending}, redelivered "
        f"{info.num_redelivered}, waiting pulls {info.num_waiting}, delivered up to "
        f"{info.delivered}, ack floor {info.ack_floor}, dead-lettered {info.dead_lettered}",
    ]


async def _stream_add(args: argparse.Namespace) -> int:
    config: dict[str, Any] = {}
    for key in (
        "max_msgs",
        "max_bytes",
        "max_age",
        "max_msgs_per_subject",
        "max_msg_size",
        "discard",
        "duplicate_window",
        "storage",
        "fsync",
        "sync_interval",
        "replicas",
    ):
        value = getattr(args, key)
        if value is not None:
            config[key] = value
    async with _connect(args) as bus:
        stream = await bus.stream(args.name, args.subjects, **config)
        info = await stream.info()
    _print_info(args, info.to_json(), _stream_lines(info))
    return EXIT_OK


def _print_info(args: argparse.Namespace, data: Any, lines: list[str]) -> None:
    if args.json:
        _out(json.dumps(data))
    else:
        _out("\n".join(lines))


async def _stream_ls(args: argparse.Namespace) -> int:
    async with _connect(args) as bus:
        infos = await bus.streams()
    if args.json:
        _out(json.dumps([i.to_json() for i in infos]))
    elif not infos:
        _out("no streams")
    else:
        _out(
            f"{'NAME':<20} {'STORAGE':<7} {'MESSAGES':>10} {'BYTES':>11} {'LAST SEQ':>10}  SUBJECTS"
        )
        for i in infos:
            _out(
                f"{i.name:<20} {i.storage:<7} {i.messages:>10} {_human(i.bytes):>11} "
                f"{i.last_seq:>10}  {', '.join(i.config.subjects)}"
            )
    return EXIT_OK


async def _stream_info(args: argparse.Namespace) -> int:
    async with _connect(args) as bus:
        info = await (await bus.stream(args.name)).info()
    _print_info(args, info.to_json(), _stream_lines(info))
    return EXIT_OK


async def _stream_rm(args: argparse.Namespace) -> int:
    async with _connect(args) as bus:
        await (await bus.stream(args.name)).delete()
    print(f"stream {args.name} deleted", file=sys.stderr)
    return EXIT_OK


async def _stream_pub(args: argparse.Namespace) -> int:
    async with _connect(args) as bus:
        stream = await bus.stream(args.name)
        ack = await stream.publish(
            args.subject, args.payload, headers=_headers(args), msg_id=args.msg_id
        )
    dup = " (duplicate)" if ack.duplicate else ""
    _out(f"stored in {ack.stream} as {ack.seq}{dup}")
    return EXIT_OK


async def _consumer_add(args: argparse.Namespace) -> int:
    config: dict[str, Any] = {}
    for key in ("filter_subject", "ack_wait", "max_deliver", "dead_letter", "max_ack_pending"):
        value = getattr(args, key)
        if value is not None:
            config[key] = value
    start_time = None
    if args.start_time is not None:
        try:
            start_time = datetime.fromisoformat(args.start_time)
        except ValueError:
            raise CommandError(
                f"--start-time {args.start_time!r} is not an ISO 8601 time "
                "(2026-12-06T10:00:00+00:00)"
            ) from None
    async with _connect(args) as bus:
        stream = await bus.stream(args.stream)
        consumer = await stream.consumer(
            args.name,
            deliver=args.deliver,
            start_seq=args.start_seq,
            start_time=start_time,
            **config,
        )
        info = await consumer.info()
    _print_info(args, info.to_json(), _consumer_lines(info))
    return EXIT_OK


async def _consumer_ls(args: argparse.Namespace) -> int:
    async with _connect(args) as bus:
        infos = await (await bus.stream(args.stream)).consumers()
    if args.json:
        _out(json.dumps([i.to_json() for i in infos]))
    elif not infos:
        _out(f"stream {args.stream} has no consumers")
    else:
        _out(f"{'NAME':<24} {'DELIVER':<16} {'PENDING':>8} {'ACK PENDING':>11} {'DEAD':>6}")
        for i in infos:
            _out(
                f"{i.name:<24} {i.config.deliver:<16} {i.num_pending:>8} "
                f"{i.num_ack_pending:>11} {i.dead_lettered:>6}"
            )
    return EXIT_OK


async def _consumer_info(args: argparse.Namespace) -> int:
    async with _connect(args) as bus:
        stream = await bus.stream(args.stream)
        consumer = await stream.consumer(args.name)
        info = await consumer.info()
    _print_info(args, info.to_json(), _consumer_lines(info))
    return EXIT_OK


async def _consumer_next(args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    async with _connect(args) as bus:
        stream = await bus.stream(args.stream)
        consumer = await stream.consumer(args.name)
        got = await consumer.fetch(args.count, timeout=args.timeout)
        if not got:
            raise RequestTimeout(
                f"no message from {args.stream}/{args.name} within {args.timeout:g} s"
            )
        for msg in got:
            if args.json:
                line = json.loads(_json_line(msg))
                line.update(seq=msg.seq, num_delivered=msg.num_delivered)
                out.write((json.dumps(line, ensure_ascii=False) + "\n").encode())
            else:
                out.write(f"#{msg.seq} ".encode() + _line(msg))
            if not args.no_ack:
                await msg.ack_sync()
        out.flush()
    return EXIT_OK


async def _consumer_rm(args: argparse.Namespace) -> int:
    async with _connect(args) as bus:
        stream = await bus.stream(args.stream)
        consumer = await stream.consumer(args.name)
        await consumer.delete()
    print(f"consumer {args.stream}/{args.name} deleted", file=sys.stderr)
    return EXIT_OK


def add_stream_commands(
    commands: Any, client: argparse.ArgumentParser, payload: argparse.ArgumentParser
) -> None:
    """Add ``stream`` and ``consumer`` with their subcommands to the parser."""

    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON, for scripts")

    stream = commands.add_parser(
        "stream",
        help="create, list, inspect and delete durable streams",
        description="Durable streams on the broker (docs/streams.md): a stream keeps every "
        "message published on its subjects until its limits remove it.",
    )
    ops = stream.add_subparsers(dest="op", metavar="OP", required=True)
    p = ops.add_parser(
        "add",
        parents=[client, as_json],
        help="create a stream (or check an existing one)",
        epilog="Example:\n  asyncipc stream add ORDERS --subjects 'orders.>' --max-age 86400",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "--subjects", "-s", nargs="+", metavar="S", required=True, help="subjects it captures"
    )
    p.add_argument("--max-msgs", type=_positive_int, metavar="N")
    p.add_argument("--max-bytes", type=_size, metavar="BYTES", help="K/M/G suffixes allowed")
    p.add_argument("--max-age", type=_positive_float, metavar="S", help="seconds")
    p.add_argument("--max-msgs-per-subject", type=_positive_int, metavar="N")
    p.add_argument("--max-msg-size", type=_size, metavar="BYTES")
    p.add_argument(
        "--discard",
        choices=("old", "new"),
        help="at a limit: remove the oldest (old, the default) or refuse the new (new)",
    )
    p.add_argument("--duplicate-window", type=_positive_float, metavar="S")
    p.add_argument(
        "--storage",
        choices=("file", "memory"),
        help="default: file when the broker has --store, else memory",
    )
    p.add_argument(
        "--fsync",
        choices=("always", "interval", "never"),
        help="always (default): acknowledged only once fsynced; interval; never",
    )
    p.add_argument("--sync-interval", type=_positive_float, metavar="S")
    p.add_argument(
        "--replicas",
        type=int,
        metavar="N",
        help="copies on different servers: nats:// with a JetStream cluster only (1 to 5)",
    )
    p.set_defaults(func=_stream_add)

    p = ops.add_parser("ls", parents=[client, as_json], help="list the streams")
    p.set_defaults(func=_stream_ls)
    p = ops.add_parser("info", parents=[client, as_json], help="one stream's state")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=_stream_info)
    p = ops.add_parser("rm", parents=[client], help="delete a stream and its messages")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=_stream_rm)
    p = ops.add_parser(
        "pub",
        parents=[client, payload],
        help="publish one message and wait for the stream's acknowledgement",
    )
    p.add_argument("name", metavar="STREAM")
    p.add_argument("subject", metavar="SUBJECT")
    p.add_argument("data", metavar="DATA", nargs="?", default="", help="- reads stdin")
    p.add_argument("--msg-id", metavar="ID", help="deduplicate on this id")
    p.set_defaults(func=_stream_pub)
    for q in ops.choices.values():
        q.set_defaults(interrupted=None, log_level=30)

    consumer = commands.add_parser(
        "consumer",
        help="create, list, inspect, read from and delete stream consumers",
        description="Consumers of a durable stream (docs/streams.md).",
    )
    ops = consumer.add_subparsers(dest="op", metavar="OP", required=True)
    p = ops.add_parser(
        "add",
        parents=[client, as_json],
        help="create a durable consumer (or check an existing one)",
        epilog="Example:\n  asyncipc consumer add ORDERS billing --ack-wait 30 "
        "--max-deliver 5 --dead-letter orders.dead",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("stream", metavar="STREAM")
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "--deliver",
        choices=("all", "new", "last", "last_per_subject"),
        default="all",
        help="where it starts (default: all)",
    )
    p.add_argument("--start-seq", type=_positive_int, metavar="N", help="start at sequence N")
    p.add_argument("--start-time", metavar="ISO", help="start at this time (ISO 8601)")
    p.add_argument("--filter-subject", metavar="S", help="only these subjects")
    p.add_argument("--ack-wait", type=_positive_float, metavar="S")
    p.add_argument("--max-deliver", type=_positive_int, metavar="N")
    p.add_argument("--dead-letter", metavar="SUBJECT")
    p.add_argument("--max-ack-pending", type=_positive_int, metavar="N")
    p.set_defaults(func=_consumer_add)
    p = ops.add_parser("ls", parents=[client, as_json], help="list a stream's consumers")
    p.add_argument("stream", metavar="STREAM")
    p.set_defaults(func=_consumer_ls)
    p = ops.add_parser("info", parents=[client, as_json], help="one consumer's state")
    p.add_argument("stream", metavar="STREAM")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=_consumer_info)
    p = ops.add_parser(
        "next",
        parents=[client],
        help="take messages from a consumer, print them and acknowledge them",
        description="Fetch up to --count messages, print each as '#seq [subject] data' "
        "(or JSON), and acknowledge each once printed (unless --no-ack). Exits 1 if none "
        "came within --timeout.",
    )
    p.add_argument("stream", metavar="STREAM")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--count", "-n", type=_positive_int, default=1, metavar="N")
    p.add_argument("--timeout", "-t", type=_positive_float, default=1.0, metavar="S")
    p.add_argument("--no-ack", action="store_true", help="leave them unacknowledged")
    p.add_argument("--json", action="store_true", help="one JSON object per message")
    p.set_defaults(func=_consumer_next)
    p = ops.add_parser("rm", parents=[client], help="delete a consumer")
    p.add_argument("stream", metavar="STREAM")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=_consumer_rm)
    for q in ops.choices.values():
        q.set_defaults(interrupted=None, log_level=30)
