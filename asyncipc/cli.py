"""The ``asyncipc`` command: run a broker, publish, subscribe and request from a shell.

::

    asyncipc broker --listen unix:///tmp/asyncipc.sock --listen tcp://0.0.0.0:4222
    asyncipc sub 'orders.>' --count 10
    asyncipc pub orders.created '{"id": 7}' --header trace=abc
    asyncipc request pricing.quote sku-1 --timeout 0.5

Clients find the broker with ``--url``, else ``$ASYNCIPC_URL``, else
:func:`asyncipc.default_socket_url`; the token comes from ``--token`` or
``$ASYNCIPC_TOKEN``. Exit codes: 0 success, 1 the request failed (no responders, time-out,
the service raised), 2 usage, connection or authentication error; see ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence

from . import __version__
from ._connect import DEFAULT_URL_ENV, Connector, connect, default_socket_url
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
from .protocol import DEFAULT_MAX_FRAME
from .signals import drain_on_signals, on_signal
from .transports import lookup, parse_url

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "TOKEN_ENV", "build_parser", "main"]

log = logging.getLogger("asyncipc.cli")

TOKEN_ENV = "ASYNCIPC_TOKEN"

EXIT_OK = 0
"""Success; also what ``sub`` and ``broker`` return when stopped by SIGINT or SIGTERM."""
EXIT_FAILED = 1
"""The request failed: no responders, no reply in time, or the service raised."""
EXIT_USAGE = 2
"""Bad arguments, a bad URL, no broker at the URL, a refused token, a lost connection."""

FLUSH_TIMEOUT = 10.0
"""Seconds ``pub`` waits for the broker to confirm it has the message."""

MIN_FRAME = 1024
MAX_FRAME = 1 << 31


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


def _frame_size(text: str) -> int:
    """Bytes, optionally with a binary suffix: ``65536``, ``64K``, ``8M``, ``1G``."""
    raw = text.strip().lower().removesuffix("ib").removesuffix("b")
    factor = 1
    if raw and raw[-1] in _SIZE_SUFFIXES:
        factor = _SIZE_SUFFIXES[raw[-1]]
        raw = raw[:-1]
    try:
        value = int(raw) * factor
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size in bytes: {text!r} (e.g. 8M)") from None
    if not MIN_FRAME <= value <= MAX_FRAME:
        raise argparse.ArgumentTypeError(
            f"must be between {MIN_FRAME} bytes and 2G, not {value} bytes"
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
        epilog="Exit codes: 0 ok; 1 no responders, request time-out or the service failed; "
        "2 usage, connection or authentication error. See docs/cli.md.",
    )
    parser.add_argument("--version", action="version", version=f"asyncipc {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = commands.add_parser(
        "broker",
        parents=[verbose],
        help="run a broker until SIGINT or SIGTERM",
        description="Run a broker on one or more URLs. Prints 'listening on URL' on stdout "
        "for each listener once it accepts connections; on SIGINT or SIGTERM stops "
        "listening, waits for the replies to requests in flight, delivers what clients "
        "are owed (drain), then exits 0.",
        epilog="Examples:\n"
        "  asyncipc broker\n"
        "  asyncipc broker --listen unix:///tmp/app.sock --listen tcp://0.0.0.0:4222\n"
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
        f"(port 0: any free), tls://host:port?cert=...&key=... (repeatable; "
        f"default: {default_url})",
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
        f"allowed (default: {DEFAULT_MAX_FRAME // (1 << 20)}M)",
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
        epilog="Example:\n  asyncipc pub orders.created '{\"id\": 7}' --header trace=abc",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("subject", metavar="SUBJECT", help="a subject such as orders.created")
    p.add_argument(
        "data", metavar="DATA", nargs="?", default="", help="the payload (default: empty)"
    )
    p.add_argument("--reply-to", metavar="S", help="the reply subject to send with the message")
    p.set_defaults(func=_pub, interrupted=None, log_level=logging.ERROR)

    p = commands.add_parser(
        "sub",
        parents=[client],
        help="print the messages on a subject",
        description="Subscribe to SUBJECT (wildcards: '*' one token, '>' the rest) and print "
        "each message on stdout as one line, '[subject] data', with the data decoded as UTF-8 "
        "(undecodable bytes, newlines and carriage returns escaped with a backslash). "
        "Once subscribed, a line saying so goes to stderr. Runs until --count messages have "
        "arrived or SIGINT/SIGTERM, then exits 0.",
        epilog="Examples:\n"
        "  asyncipc sub 'orders.>'\n"
        "  asyncipc sub orders.created --queue billing --count 1 --raw > order.json",
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
    p.add_argument(
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
    p.add_argument(
        "data", metavar="DATA", nargs="?", default="", help="the payload (default: empty)"
    )
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
    return parser


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
    # argv was decoded with surrogateescape: fsencode gives back the exact bytes typed.
    return os.fsencode(text)


def _headers(args: argparse.Namespace) -> dict[str, str] | None:
    return dict(args.headers) or None


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="backslashreplace")


def _line(msg: Message) -> bytes:
    text = _text(msg.data).replace("\n", "\\n").replace("\r", "\\r")
    return f"[{msg.subject}] {text}\n".encode("utf-8", errors="backslashreplace")


async def _pub(args: argparse.Namespace) -> int:
    async with _connect(args) as bus:
        await bus.publish(
            args.subject, _payload(args.data), headers=_headers(args), reply_to=args.reply_to
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
            out.write(msg.data + b"\n" if args.raw else _line(msg))
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
            args.subject, _payload(args.data), headers=_headers(args), timeout=args.timeout
        )
    out = sys.stdout.buffer
    out.write(reply.data if args.raw else _text(reply.data).encode("utf-8") + b"\n")
    out.flush()
    return EXIT_OK


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
    broker = Broker(token=token, max_frame=args.max_frame, remote_signals=args.allow_remote_signals)
    # SIGINT/SIGTERM are caught from here on, so that one arriving during start-up still
    # lets the listeners already bound be closed in order, their socket files removed.
    # Leaving the block drains: replies to requests in flight, then buffered messages.
    async with drain_on_signals(broker) as drain:
        for url in urls:
            if drain.received is not None:
                break
            try:
                listener = await broker.listen(url)
            except (AsyncIPCError, OSError) as exc:
                raise CommandError(_listen_error(url, exc)) from None
            print(f"listening on {listener.url}", flush=True)
        network = any(not u.startswith(("unix:", "fifo:")) for u in broker.urls)
        if token is None and network:
            log.warning("no --token: any client that can reach the network listeners is served")
        if args.allow_remote_signals and network:
            log.warning(
                "--allow-remote-signals: clients on network listeners may have local "
                "clients signalled (those that allowed it, as the same user)"
            )
        await drain.wait()
    return EXIT_OK


def _listen_error(url: str, exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, OSError) and not isinstance(exc, AsyncIPCError):
        text = exc.strerror or text
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
        return EXIT_USAGE, f"{exc} (is `asyncipc broker` running there?)"
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
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr)
    try:
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
