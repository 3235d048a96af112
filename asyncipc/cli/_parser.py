"""The argument parser of the ``asyncipc`` command, whose help ships the docs' essentials."""

from __future__ import annotations

import argparse
import logging

from .. import __version__
from .._connect import DEFAULT_URL_ENV, TOKEN_ENV, default_socket_url
from ..options import BrokerOptions
from ..protocol import DEFAULT_MAX_FRAME
from ._bench import add_bench_command
from ._broker import _broker
from ._clients import _pub, _request, _sub, _wait
from ._common import (
    EXIT_OK,
    WAIT_TIMEOUT,
    _frame_size,
    _header,
    _hello_size,
    _high_water,
    _nonnegative_int,
    _positive_float,
    _positive_int,
    _rate,
    _seconds_or_zero,
    _size_text,
)
from ._passwd import _passwd
from ._services import add_service_commands
from ._stats import add_stats_command
from ._streams import add_stream_commands
from ._top import add_top_command


def _add_limits(group: argparse._ArgumentGroup) -> None:
    """The broker's resource limits: one flag per ``BrokerOptions`` field, same name."""
    d = BrokerOptions()
    group.add_argument(
        "--max-hello",
        metavar="BYTES",
        type=_hello_size,
        default=d.max_hello,
        help="largest HELLO (first frame) from a connection that has not authenticated, "
        f"refused on its length prefix (default: {_size_text(d.max_hello)})",
    )
    group.add_argument(
        "--max-pending-handshakes",
        metavar="N",
        type=_positive_int,
        default=d.max_pending_handshakes,
        help="connections waiting for their handshake, at most; more are refused "
        f"(default: {d.max_pending_handshakes})",
    )
    group.add_argument(
        "--frame-timeout",
        metavar="SECONDS",
        type=_seconds_or_zero,
        default=d.frame_timeout,
        help="seconds a started frame has to arrive whole, plus 1 s per --frame-min-rate "
        f"bytes of its length; 0: no deadline (default: {d.frame_timeout:g})",
    )
    group.add_argument(
        "--frame-min-rate",
        metavar="BYTES",
        type=_rate,
        default=d.frame_min_rate,
        help="bytes per second a large frame is allowed on top of --frame-timeout; K/M/G "
        f"suffixes allowed (default: {_size_text(d.frame_min_rate)})",
    )
    group.add_argument(
        "--max-connections",
        metavar="N",
        type=_positive_int,
        default=d.max_connections,
        help="clients connected at once, at most; lowered to fit the file descriptor "
        f"limit (ulimit -n) (default: {d.max_connections})",
    )
    group.add_argument(
        "--max-connections-per-peer",
        metavar="N",
        type=_positive_int,
        default=d.max_connections_per_peer,
        help="connections at once from one IP address (tcp, tls) or one Unix user (unix, "
        f"fifo), at most (default: {d.max_connections_per_peer})",
    )
    group.add_argument(
        "--max-failed-handshakes",
        metavar="N",
        type=_nonnegative_int,
        default=d.max_failed_handshakes,
        help="connections from one IP address that may fail their handshake (in a bucket "
        "draining N per 4 s) before it is refused at once for a while; 0: no limit "
        f"(default: {d.max_failed_handshakes})",
    )
    group.add_argument(
        "--max-subscriptions",
        metavar="N",
        type=_positive_int,
        default=d.max_subscriptions,
        help=f"subscriptions one connection may hold (default: {d.max_subscriptions})",
    )


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
    conn.add_argument(
        "--user",
        metavar="NAME",
        help="connect as this user of a broker with users (docs/security.md); the password "
        "comes from $ASYNCIPC_PASSWORD (tcp://user:password@host:port works too)",
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
        "'tls://0.0.0.0:4223?cert=server.pem&key=server.key'\n"
        "  asyncipc broker --listen unix:///tmp/app.sock --bridge nats://nats1:4222,nats2:4222 "
        "--bridge-subjects 'orders.>,pricing.>'\n"
        "  asyncipc broker --config /etc/asyncipc.toml          # SIGHUP reloads it\n"
        "  asyncipc broker --config /etc/asyncipc.toml --check-config",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="read listeners, users and their permissions, limits and streams from the "
        "TOML file FILE (docs/security.md); options given here too win over the file's. "
        "SIGHUP reloads its users and permissions without dropping connections",
    )
    p.add_argument(
        "--check-config",
        action="store_true",
        help="only check --config FILE: exit 0 if it is good, else 1 with one line "
        "naming the key and line that is wrong",
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
    block_timeout = BrokerOptions().block_timeout
    p.add_argument(
        "--block-timeout",
        metavar="SECONDS",
        type=_seconds_or_zero,
        default=block_timeout,
        help="how long a subscriber with overflow=block may hold its publishers back "
        "without catching up before it is cut off as a slow consumer; 0: no limit "
        f"(default: {block_timeout:g})",
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
    p.add_argument(
        "--store",
        metavar="DIR",
        help="keep durable streams under DIR (created if missing): their messages and "
        "consumers survive restarts (docs/streams.md). Without it streams live in memory",
    )
    p.add_argument(
        "--bridge",
        metavar="URL",
        help="bridge to the NATS cluster at URL (nats://h1:4222,h2:4222): messages on "
        "--bridge-subjects flow both ways, requests cross both ways (docs/bridge.md; "
        "needs pip install 'asyncipc[nats]')",
    )
    p.add_argument(
        "--bridge-subjects",
        metavar="PATTERNS",
        help="the subjects the bridge carries, comma-separated patterns: 'orders.>,pricing.>'",
    )
    _add_limits(p.add_argument_group("limits (docs/guide.md, Limits)"))
    p.set_defaults(func=_broker, interrupted=EXIT_OK, log_level=logging.INFO)

    p = commands.add_parser(
        "passwd",
        parents=[verbose],
        help="print a password hash for a configuration file",
        description="Read a password (twice on a terminal, else one line of stdin) and "
        "print its salted scrypt hash: the password_hash of a [[users]] entry in "
        "the broker's --config file (docs/security.md). The password itself is never "
        "stored.",
        epilog="Example:\n  printf '%s\\n' \"$SECRET\" | asyncipc passwd",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=_passwd, interrupted=None, log_level=logging.ERROR)

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
        "connection is lost (unless --reconnect).",
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
    p.add_argument(
        "--reconnect",
        action="store_true",
        help="when the broker goes away, wait for it to come back and subscribe again "
        "(default: exit 2, so that a script learns it)",
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
    add_stream_commands(commands, client, payload)
    add_bench_command(commands, client)
    add_stats_command(commands, client)
    add_top_command(commands, client)
    add_service_commands(commands, client)
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
