"""The ``asyncipc`` command: run a broker, publish, subscribe and request from a shell.

::

    asyncipc broker --listen unix:///tmp/asyncipc.sock --listen tcp://0.0.0.0:4222
    asyncipc sub 'orders.>' --count 10
    asyncipc pub orders.created '{"id": 7}' --header trace=abc
    asyncipc request pricing.quote sku-1 --timeout 0.5
    asyncipc wait --timeout 5      # until a broker answers: for scripts

Clients find the broker with ``--url``, else ``$ASYNCIPC_URL``, else
:func:`asyncipc.default_socket_url`; the token comes from ``--token`` or
``$ASYNCIPC_TOKEN``. Exit codes: 0 success, 1 the request failed (no responders, time-out,
the service raised), 2 usage, connection or authentication error. ``asyncipc --help``
carries the essentials of ``docs/cli.md`` (an installed wheel has no ``docs/``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence

from . import __version__
from ._connect import DEFAULT_URL_ENV, TOKEN_ENV, Connector, connect, default_socket_url
from ._logjson import JsonFormatter
from .broker import Broker
from .errors import (
    AsyncIPCError,
    AuthenticationError,
    ConfigurationError,
    ConnectError,
    ConnectionClosed,
    FrameTooLarge,
    HandshakeError,
    NoResponders,
    RequestTimeout,
    ServiceError,
)
from .message import Message
from .options import BrokerOptions, ConnectOptions
from .protocol import DEFAULT_MAX_FRAME
from .signals import drain_on_signals, on_signal
from .transports import lookup, parse_url

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "TOKEN_ENV", "build_parser", "main"]

log = logging.getLogger("asyncipc.cli")


EXIT_OK = 0
"""Success; also what ``sub`` and ``broker`` return when stopped by SIGINT or SIGTERM."""
EXIT_FAILED = 1
"""The request failed: no responders, no reply in time, or the service raised."""
EXIT_USAGE = 2
"""Bad arguments, a bad URL, no broker at the URL, a refused token, a lost connection."""

FLUSH_TIMEOUT = 10.0
"""Seconds ``pub`` waits for the broker to confirm it has the message."""

WAIT_TIMEOUT = 10.0
"""Seconds ``wait`` gives a broker to answer, unless ``--timeout`` says otherwise."""
WAIT_RETRY = 0.05
"""Seconds between ``wait``'s attempts: short, because a broker binds in milliseconds."""

MIN_FRAME = 1024
MAX_FRAME = 1 << 31
MIN_HIGH_WATER = 1024
MAX_HIGH_WATER = 1 << 40


class CommandError(Exception):
    """An expected failure: printed as one line on stderr, then exit with ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


# --- argument types -------------------------------------------------------------------


def _header(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


_SIZE_SUFFIXES = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _size(text: str) -> int:
    """Bytes, optionally with a binary suffix: ``65536``, ``64K``, ``8M``, ``1G``."""
    raw = text.strip().lower().removesuffix("ib").removesuffix("b")
    factor = 1
    if raw and raw[-1] in _SIZE_SUFFIXES:
        factor = _SIZE_SUFFIXES[raw[-1]]
        raw = raw[:-1]
    try:
        return int(raw) * factor
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size in bytes: {text!r} (e.g. 8M)") from None


def _size_text(value: int) -> str:
    """The shortest exact spelling of a size that ``_size`` reads back: ``8M``, ``1536K``."""
    for suffix, factor in sorted(_SIZE_SUFFIXES.items(), key=lambda kv: -kv[1]):
        if value and value % factor == 0:
            return f"{value // factor}{suffix.upper()}"
    return str(value)


def _frame_size(text: str) -> int:
    """``--max-frame``: a size from 1K to 2G."""
    value = _size(text)
    if not MIN_FRAME <= value <= MAX_FRAME:
        raise argparse.ArgumentTypeError(
            f"must be between {MIN_FRAME} bytes and 2G, not {value} bytes"
        )
    return value


def _high_water(text: str) -> int:
    """``--high-water``: a size from 1K to 1024G."""
    value = _size(text)
    if not MIN_HIGH_WATER <= value <= MAX_HIGH_WATER:
        raise argparse.ArgumentTypeError(
            f"must be between {MIN_HIGH_WATER} bytes and 1024G, not {value} bytes"
        )
    return value


# --- the parser -------------------------------------------------------------------------


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def build_parser() -> argparse.ArgumentParser:
    """The ``asyncipc`` argument parser (each subcommand sets ``func``)."""
    default_url = default_socket_url()

    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true", help="log debug details to stderr")

    client = argparse.ArgumentParser(add_help=False, parents=[verbose])
    conn = client.add_argument_group("connection")
    conn.add_argument(
        "--url",
        metavar="URL",
        help=f"the broker to use: unix:///path.sock, tcp://host:port or tls://host:port "
        f"(default: ${DEFAULT_URL_ENV}, else {default_url})",
    )
    conn.add_argument(
        "--token",
        metavar="T",
        help=f"the broker's shared secret (default: ${TOKEN_ENV}; ?token= in the URL works too)",
    )

    payload = argparse.ArgumentParser(add_help=False)
    payload.add_argument(
        "--header",
        "-H",
        dest="headers",
        metavar="K=V",
        type=_header,
        action="append",
        default=[],
        help="add a message header (repeatable)",
    )

    parser = argparse.ArgumentParser(
        prog="asyncipc",
        description="Run an asyncipc broker, or publish, subscribe and make requests on one.",
        epilog=_OVERVIEW.format(default_url=default_url),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"asyncipc {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = commands.add_parser(
        "broker",
        parents=[verbose],
        help="run a broker until SIGINT or SIGTERM",
        description="Run a broker on one or more URLs. Once every listener accepts "
        "connections, prints 'listening on URL' on stdout for each (and writes --ready-file); "
        "on SIGINT or SIGTERM stops listening, waits for the replies to requests in flight, "
        "delivers what clients are owed (drain), then exits 0. A URL it cannot listen on: "
        "one line on stderr, exit 2.",
        epilog="Examples:\n"
        "  asyncipc broker\n"
        "  asyncipc broker --listen unix:///tmp/app.sock --listen tcp://0.0.0.0:4222\n"
        "  asyncipc broker --listen tcp://127.0.0.1:0 --ready-file broker.ready --log-json\n"
        "  ASYNCIPC_TOKEN=s3cret asyncipc broker --listen "
        "'tls://0.0.0.0:4223?cert=server.pem&key=server.key'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--listen",
        "-l",
        metavar="URL",
        action="append",
        default=[],
        help=f"serve clients at URL: unix:///path.sock[?mode=0660], tcp://host:port "
        f"(port 0: any free), tls://host:port?cert=...&key=..., udp://host:port (best "
        f"effort), http://host:port (REST) and the other schemes of docs/transports.md "
        f"(repeatable; default: {default_url})",
    )
    p.add_argument(
        "--grpc",
        metavar="HOST:PORT",
        action="append",
        default=[],
        help="also serve the gRPC adapter there, for clients in any language: the same "
        "as --listen grpc://HOST:PORT (repeatable; see docs/grpc.md)",
    )
    p.add_argument(
        "--http",
        metavar="HOST:PORT",
        action="append",
        default=[],
        help="also serve the REST adapter (HTTP, Server-Sent Events, WebSocket) there: the "
        "same as --listen http://HOST:PORT (repeatable; see docs/rest.md)",
    )
    p.add_argument(
        "--token",
        metavar="T",
        help=f"require this shared secret from every client (default: ${TOKEN_ENV}; "
        "none: any client that can reach a listener is served)",
    )
    p.add_argument(
        "--max-frame",
        metavar="BYTES",
        type=_frame_size,
        default=DEFAULT_MAX_FRAME,
        help="largest frame accepted from a client, announced to clients; K/M/G suffixes "
        f"allowed (default: {_size_text(DEFAULT_MAX_FRAME)})",
    )
    high_water = BrokerOptions().high_water
    p.add_argument(
        "--high-water",
        metavar="BYTES",
        type=_high_water,
        default=high_water,
        help="bytes the broker buffers for one client before it counts as slow and its "
        "subscriptions' overflow policies (block, drop_*, error) apply; K/M/G suffixes "
        f"allowed (default: {_size_text(high_water)})",
    )
    p.add_argument(
        "--ready-file",
        metavar="PATH",
        help="once every listener accepts connections, write their URLs to PATH, one per "
        "line (atomically: the file appears complete); removed when the broker stops",
    )
    p.add_argument(
        "--log-json",
        action="store_true",
        help="log to stderr as JSON, one object per line: time, level, logger, message and "
        "any extra fields",
    )
    p.add_argument(
        "--allow-remote-signals",
        action="store_true",
        help="let clients on tcp:// and tls:// listeners ask the broker to signal local "
        "clients that allowed it (default: only local clients may; see docs/signals.md)",
    )
    p.set_defaults(func=_broker, interrupted=EXIT_OK, log_level=logging.INFO)

    p = commands.add_parser(
        "pub",
        parents=[client, payload],
        help="publish one message",
        description="Publish DATA on SUBJECT and wait until the broker has it (a flush).",
        epilog="Examples:\n"
        "  asyncipc pub orders.created '{\"id\": 7}' --header trace=abc\n"
        "  asyncipc pub reports.daily - < report.pdf",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("subject", metavar="SUBJECT", help="a subject such as orders.created")
    p.add_argument("data", metavar="DATA", nargs="?", default="", help=_DATA_HELP)
    p.add_argument("--reply-to", metavar="S", help="the reply subject to send with the message")
    p.set_defaults(func=_pub, interrupted=None, log_level=logging.ERROR)

    p = commands.add_parser(
        "sub",
        parents=[client],
        help="print the messages on a subject",
        description="Subscribe to SUBJECT (wildcards: '*' one token, '>' the rest) and print "
        "each message on stdout as one line, '[subject] data', with the data decoded as UTF-8 "
        "(undecodable bytes, newlines and carriage returns escaped with a backslash). "
        "With --headers, the headers as a JSON object come between the two: '[subject] "
        '{"trace": "abc"} data\'. Once subscribed, a line saying so goes to stderr. Runs '
        "until --count messages have arrived or SIGINT/SIGTERM, then exits 0; exits 2 if the "
        "connection is lost.",
        epilog="Examples:\n"
        "  asyncipc sub 'orders.>'\n"
        "  asyncipc sub orders.created --queue billing --count 1 --raw > order.json\n"
        "  asyncipc sub 'orders.>' --json | jq -r .data",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("subject", metavar="SUBJECT", help="a subject or wildcard pattern")
    p.add_argument(
        "--queue", "-q", metavar="Q", help="join queue group Q: its members share the messages"
    )
    p.add_argument(
        "--count",
        "-n",
        metavar="N",
        type=_positive_int,
        help="exit after N messages (default: run until interrupted)",
    )
    output = p.add_mutually_exclusive_group()
    output.add_argument(
        "--headers",
        action="store_true",
        help="show each message's headers, as a JSON object after the subject",
    )
    output.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per message and line, for scripts: subject, data (text if "
        'UTF-8, else base64 with "base64": true), base64, headers, reply_to',
    )
    output.add_argument(
        "--raw",
        action="store_true",
        help="write only each message's data, as received, followed by a newline",
    )
    p.set_defaults(func=_sub, interrupted=EXIT_OK, log_level=logging.ERROR)

    p = commands.add_parser(
        "request",
        aliases=["req"],
        parents=[client, payload],
        help="send a request and print the reply",
        description="Send DATA as a request on SUBJECT and print the first reply's data on "
        "stdout (decoded as UTF-8, undecodable bytes escaped; --raw: the exact bytes). "
        "Exits 1 when nobody subscribes to SUBJECT, when no reply comes in time, or when "
        "the service's handler raised.",
        epilog="Example:\n  asyncipc request pricing.quote sku-1 --timeout 0.5",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("subject", metavar="SUBJECT", help="the service's subject")
    p.add_argument("data", metavar="DATA", nargs="?", default="", help=_DATA_HELP)
    p.add_argument(
        "--timeout",
        "-t",
        metavar="S",
        type=_positive_float,
        default=1.0,
        help="seconds to wait for the reply (default: 1)",
    )
    p.add_argument(
        "--raw", action="store_true", help="write the reply's bytes exactly, no newline added"
    )
    p.set_defaults(func=_request, interrupted=None, log_level=logging.ERROR)

    p = commands.add_parser(
        "wait",
        parents=[client],
        help="wait until a broker answers",
        description="Connect to the broker, retrying while nothing answers at the URL (no "
        "socket yet, connection refused), until it completes a handshake; then exit 0. A "
        "refused token fails at once; no answer within --timeout: exit 2.",
        epilog="Example:\n"
        "  asyncipc broker --listen unix:///tmp/app.sock &\n"
        "  asyncipc wait --url unix:///tmp/app.sock --timeout 5 && echo ready",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--timeout",
        "-t",
        metavar="S",
        type=_positive_float,
        default=WAIT_TIMEOUT,
        help=f"seconds to wait for the broker (default: {WAIT_TIMEOUT:g})",
    )
    p.set_defaults(func=_wait, interrupted=None, log_level=logging.ERROR)
    return parser


_DATA_HELP = "the payload; - reads it from stdin (default: empty)"

# The essentials of docs/cli.md, shipped with the command: an installed wheel has no docs/.
_OVERVIEW = """\
Finding the broker: --url, else $ASYNCIPC_URL, else {default_url}
(also the broker's default listener). The token: --token, else $ASYNCIPC_TOKEN.
URLs: unix:///path.sock, tcp://host:port, tls://host:port?ca=ca.pem, udp://host:port
(best effort), fifo:///path, shm://name, mmap:///dir, http://host:port (the REST adapter),
grpc://host:port. `asyncipc COMMAND --help` describes each command.

In a script, wait for the broker, then for the subscription, before publishing:
  export ASYNCIPC_URL=unix:///tmp/app.sock
  asyncipc broker --listen "$ASYNCIPC_URL" & broker=$!
  asyncipc wait --timeout 5 || exit
  asyncipc sub 'jobs.>' --count 1 2> sub.err & sub=$!
  until grep -q '^subscribed to' sub.err; do kill -0 $sub || exit; sleep 0.1; done
  asyncipc pub jobs.done '{{"ok": true}}'
  wait $sub; kill -TERM $broker; wait $broker

Exit codes:
  0    success; also broker and sub stopped by SIGINT or SIGTERM
  1    request: no responders, no reply in time, the handler failed; sub: stdout closed
  2    usage error, bad URL, cannot connect, token refused, connection lost, a URL
       the broker cannot listen on, wait: no broker answered in time
  130  pub, request or wait interrupted by SIGINT (143: SIGTERM)
Expected failures print one line on stderr, "asyncipc COMMAND: what went wrong"."""


# --- client commands -------------------------------------------------------------------


def _client_url(args: argparse.Namespace) -> str:
    url: str = args.url or _env(DEFAULT_URL_ENV) or default_socket_url()
    scheme = parse_url(url).scheme
    if scheme == "memory":
        raise CommandError(
            f"{url} is an in-process broker, which another process cannot reach; "
            "use the unix://, tcp:// or tls:// URL of an `asyncipc broker`"
        )
    return url


def _connect(args: argparse.Namespace) -> Connector:
    token = args.token or _env(TOKEN_ENV)
    return connect(args.url, token=token, name=f"asyncipc {args.command}")


def _payload(text: str) -> bytes:
    """DATA as bytes: ``-`` is the whole of stdin, anything else the argument itself."""
    if text == "-":
        # Read before the event loop starts (main): a blocking read inside the loop would
        # keep its SIGINT handler from running, so Ctrl-C could not stop a forgotten `-`.
        return sys.stdin.buffer.read() if sys.stdin is not None else b""
    # argv was decoded with surrogateescape: fsencode gives back the exact bytes typed.
    return os.fsencode(text)


def _headers(args: argparse.Namespace) -> dict[str, str] | None:
    return dict(args.headers) or None


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="backslashreplace")


def _line(msg: Message, headers: bool = False) -> bytes:
    text = _text(msg.data).replace("\n", "\\n").replace("\r", "\\r")
    if headers:
        # A JSON object: it cannot run into the data, and escapes newlines in values.
        text = f"{json.dumps(dict(msg.headers or {}), ensure_ascii=False)} {text}"
    return f"[{msg.subject}] {text}\n".encode("utf-8", errors="backslashreplace")


def _json_line(msg: Message) -> bytes:
    """``sub --json``: one object per message; data is text unless it is not UTF-8."""
    try:
        data, b64 = msg.data.decode("utf-8"), False
    except UnicodeDecodeError:
        data, b64 = base64.b64encode(msg.data).decode("ascii"), True
    entry = {
        "subject": msg.subject,
        "data": data,
        "base64": b64,
        "headers": dict(msg.headers or {}),
        "reply_to": msg.reply_to,
    }
    line = json.dumps(entry, ensure_ascii=False) + "\n"
    return line.encode("utf-8", errors="backslashreplace")


async def _pub(args: argparse.Namespace) -> int:
    async with _connect(args) as bus:
        await bus.publish(
            args.subject, args.payload, headers=_headers(args), reply_to=args.reply_to
        )
        try:
            await bus.flush(timeout=FLUSH_TIMEOUT)
        except TimeoutError:
            raise CommandError(
                f"{args.url} did not confirm the message within {FLUSH_TIMEOUT:g} s"
            ) from None
    return EXIT_OK


async def _sub(args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    received = 0
    async with _connect(args) as bus, bus.subscribe(args.subject, args.queue) as sub:
        where = f" (queue {args.queue})" if args.queue else ""
        print(f"subscribed to {args.subject}{where} on {args.url}", file=sys.stderr, flush=True)
        async for msg in sub:
            if args.json:
                out.write(_json_line(msg))
            else:
                out.write(msg.data + b"\n" if args.raw else _line(msg, args.headers))
            received += 1
            if args.count is not None and received >= args.count:
                break
            if not sub.pending:  # flush per burst, not per message
                out.flush()
        out.flush()
    return EXIT_OK


async def _request(args: argparse.Namespace) -> int:
    async with _connect(args) as bus:
        reply = await bus.request(
            args.subject, args.payload, headers=_headers(args), timeout=args.timeout
        )
    out = sys.stdout.buffer
    out.write(reply.data if args.raw else _text(reply.data).encode("utf-8") + b"\n")
    out.flush()
    return EXIT_OK


async def _wait(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.timeout
    token = args.token or _env(TOKEN_ENV)
    last: BaseException | None = None
    while (remaining := deadline - loop.time()) > 0:
        # Our own deadline must fire first, so that the handshake's time-out (a
        # HandshakeError, which is not retried) cannot pre-empt it.
        options = ConnectOptions(connect_timeout=remaining + 1.0, ping_interval=0)
        try:
            async with asyncio.timeout(remaining):
                bus = await connect(args.url, token=token, name="asyncipc wait", options=options)
        except TimeoutError:
            break
        except (ConnectError, ConnectionClosed) as exc:
            last = exc  # nobody there yet: a broker may be about to bind
        except OSError as exc:
            if isinstance(exc, AsyncIPCError):
                raise
            last = exc
        else:
            await bus.close()
            print(f"broker ready at {args.url}", file=sys.stderr, flush=True)
            return EXIT_OK
        await asyncio.sleep(min(WAIT_RETRY, max(0.0, deadline - loop.time())))
    what = f"no broker answered at {args.url} within {args.timeout:g} s"
    if last is not None:
        what += f" (last: {_oserror_text(last)})"
    raise CommandError(what)


def _oserror_text(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, AsyncIPCError):
        return exc.strerror or str(exc)
    return str(exc)


# --- the broker ------------------------------------------------------------------------


async def _broker(args: argparse.Namespace) -> int:
    urls: list[str] = args.listen + [f"grpc://{a}" for a in args.grpc]
    urls += [f"http://{a}" for a in args.http]
    urls = urls or [default_socket_url()]
    for url in urls:  # every URL checked before anything is bound
        try:
            scheme = parse_url(url).scheme
            lookup(scheme)
        except ConfigurationError as exc:
            raise CommandError(f"cannot listen on {url}: {exc}") from None
        if scheme == "memory":
            raise CommandError(
                f"cannot listen on {url}: memory:// is in-process only; a broker process "
                "serves other processes on unix://, tcp:// or tls://"
            )
    token = args.token or _env(TOKEN_ENV)
    broker = Broker(
        token=token,
        max_frame=args.max_frame,
        high_water=args.high_water,
        remote_signals=args.allow_remote_signals,
    )
    if args.ready_file:
        _remove_ready_file(args.ready_file)  # a stale one must not say "ready" meanwhile
    # SIGINT/SIGTERM are caught from here on, so that one arriving during start-up still
    # lets the listeners already bound be closed in order, their socket files removed.
    # Leaving the block drains: replies to requests in flight, then buffered messages.
    with _StartupLog(logging.getLogger().handlers) as startup:
        async with drain_on_signals(broker) as drain:
            bound: list[str] = []
            for url in urls:
                if drain.received is not None:
                    break
                try:
                    listener = await broker.listen(url)
                except (AsyncIPCError, OSError) as exc:
                    raise CommandError(_listen_error(url, exc)) from None
                bound.append(listener.url)
            try:
                if args.ready_file and len(bound) == len(urls):
                    _write_ready_file(args.ready_file, bound)
                startup.release()
                for url in bound:
                    print(f"listening on {url}", flush=True)
                _warn_about_exposure(broker, args, token)
                await drain.wait()
            finally:
                # Before the drain: from here on the broker no longer accepts clients.
                if args.ready_file:
                    _remove_ready_file(args.ready_file, quiet=True)
    return EXIT_OK


def _warn_about_exposure(broker: Broker, args: argparse.Namespace, token: str | None) -> None:
    network = any(not u.startswith(("unix:", "fifo:")) for u in broker.urls)
    if token is None and network:
        log.warning("no --token: any client that can reach the network listeners is served")
    if args.allow_remote_signals and network:
        log.warning(
            "--allow-remote-signals: clients on network listeners may have local "
            "clients signalled (those that allowed it, as the same user)"
        )


class _StartupLog:
    """Holds back the records below WARNING that reach ``handlers`` while the broker starts.

    Released once every listener is bound, they are logged as they would have been. If
    the start-up fails they are dropped: the user asked for listeners and gets one line
    saying which could not be served, not "listening on" and "broker closed" about the
    ones that were bound and closed again on the way out. A filter on the handlers, not
    on a logger, because the adapters' own clients log under other names as they close.
    """

    def __init__(self, handlers: Sequence[logging.Handler]) -> None:
        self._filters = [(handler, self._holder(handler)) for handler in handlers]
        self._held: list[tuple[logging.Handler, logging.LogRecord]] = []
        self._holding = True

    def _holder(self, handler: logging.Handler) -> Callable[[logging.LogRecord], bool]:
        def hold(record: logging.LogRecord) -> bool:
            if self._holding and record.levelno < logging.WARNING:
                self._held.append((handler, record))
                return False
            return True

        return hold

    def release(self) -> None:
        """Log what was held, and hold nothing more."""
        self._holding = False
        held, self._held = self._held, []
        for handler, record in held:
            handler.handle(record)

    def __enter__(self) -> _StartupLog:
        for handler, hold in self._filters:
            handler.addFilter(hold)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handler, hold in self._filters:
            handler.removeFilter(hold)


def _write_ready_file(path: str, urls: list[str]) -> None:
    # Written aside and renamed, so that whoever polls for the file never reads half of it.
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("".join(f"{url}\n" for url in urls))
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise CommandError(f"cannot write --ready-file {path}: {exc.strerror or exc}") from None


def _remove_ready_file(path: str, *, quiet: bool = False) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if not quiet:
            raise CommandError(
                f"cannot remove the old --ready-file {path}: {exc.strerror or exc}"
            ) from None
        log.warning("cannot remove --ready-file %s: %s", path, exc.strerror or exc)


def _listen_error(url: str, exc: BaseException) -> str:
    text = _oserror_text(exc)
    prefix = f"cannot listen on {url}"
    return text if text.startswith(prefix) else f"{prefix}: {text}"


# --- running -----------------------------------------------------------------------------


def _describe(exc: BaseException, args: argparse.Namespace) -> tuple[int, str]:
    """Exit code and one line for an expected failure."""
    url = getattr(args, "url", None)
    if isinstance(exc, CommandError):
        return exc.code, str(exc)
    if isinstance(exc, (NoResponders, RequestTimeout, ServiceError)):
        return EXIT_FAILED, str(exc)
    if isinstance(exc, AuthenticationError):
        return EXIT_USAGE, (
            f"authentication failed at {url}: {exc} (check --token or ${TOKEN_ENV})"
        )
    if isinstance(exc, HandshakeError):
        return EXIT_USAGE, f"handshake with {url} failed: {exc}"
    if isinstance(exc, ConnectError):
        # The transport says "is `asyncipc broker` running there?" where that is the
        # likely cause (no socket, refused), and not after, say, "this is an HTTP server".
        return EXIT_USAGE, str(exc)
    if isinstance(exc, ConnectionClosed):
        return EXIT_USAGE, f"connection to {url} lost: {exc}"
    if isinstance(exc, (ConfigurationError, FrameTooLarge)):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, AsyncIPCError):
        return EXIT_FAILED, str(exc)
    if isinstance(exc, OSError):
        return EXIT_USAGE, f"{url}: {exc.strerror or exc}"
    raise exc


async def _run(
    func: Callable[[argparse.Namespace], Awaitable[int]], args: argparse.Namespace
) -> int:
    """Run a client command until SIGINT/SIGTERM, which cancels it: its ``async with``
    blocks still close (drain) the bus, and a second signal cuts that short. Then the
    command's ``interrupted`` exit code is returned, or 128 + the signal number if it has
    none. (The broker command drains instead: ``_broker``.)"""
    task = asyncio.current_task()
    assert task is not None
    received: list[int] = []

    def cancel(signum: int) -> None:
        received.append(signum)
        task.cancel()

    with on_signal(cancel, signal.SIGINT, signal.SIGTERM):
        try:
            return await func(args)
        except asyncio.CancelledError:
            if not received:
                raise
            code: int | None = args.interrupted
            return 128 + received[0] if code is None else code


async def _command(args: argparse.Namespace) -> int:
    try:
        if args.command == "broker":
            return await _broker(args)
        args.url = _client_url(args)
        return await _run(args.func, args)
    except (AsyncIPCError, OSError, CommandError) as exc:
        if isinstance(exc, BrokenPipeError):
            raise
        code, message = _describe(exc, args)
        if getattr(args, "log_json", False):
            # Every line on stderr is then JSON, the last one too.
            log.error(message, extra={"command": args.command, "exit_code": code})
        else:
            print(f"asyncipc {args.command}: {message}", file=sys.stderr, flush=True)
        return code


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``asyncipc`` command (and ``python -m asyncipc``)."""
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else args.log_level
    fmt = "%(levelname)s %(name)s: %(message)s"
    if args.command == "broker":
        fmt = "%(asctime)s " + fmt
    handler = logging.StreamHandler(sys.stderr)
    json_logs = getattr(args, "log_json", False)
    handler.setFormatter(JsonFormatter() if json_logs else logging.Formatter(fmt))
    logging.basicConfig(level=level, handlers=[handler])
    try:
        if hasattr(args, "data"):
            args.payload = _payload(args.data)
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(_command(args))
    except KeyboardInterrupt:  # before our handlers were installed, or after they left
        return EXIT_OK if args.interrupted == EXIT_OK else 128 + signal.SIGINT
    except BrokenPipeError:
        # Whoever read stdout stopped (`| head`): exit quietly, and keep Python from
        # complaining again when it flushes stdout at exit.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
