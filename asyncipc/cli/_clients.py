"""The client commands: ``pub``, ``sub``, ``request``, ``wait``."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
from typing import Any

from .._connect import DEFAULT_URL_ENV, TOKEN_ENV, Connector, connect, default_socket_url
from ..errors import (
    AsyncIPCError,
    ConnectError,
    ConnectionClosed,
    PermissionDenied,
)
from ..message import Message
from ..options import ConnectOptions
from ..transports import parse_url
from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    FLUSH_TIMEOUT,
    WAIT_RETRY,
    CommandError,
    _env,
    _oserror_text,
)


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
    # A shell command reports a lost broker (exit 2) rather than waiting for it, unless
    # asked: a script must learn that its broker went away.
    options = ConnectOptions(reconnect=getattr(args, "reconnect", False), **_user(args))
    return connect(args.url, token=token, name=f"asyncipc {args.command}", options=options)


PASSWORD_ENV = "ASYNCIPC_PASSWORD"
"""The password that goes with ``--user`` (never on the command line: ``ps`` shows it)."""


def _user(args: argparse.Namespace) -> dict[str, Any]:
    """``--user`` and ``$ASYNCIPC_PASSWORD`` for ConnectOptions (docs/security.md)."""
    user = getattr(args, "user", None)
    if not user:
        return {}
    return {"user": user, "password": _env(PASSWORD_ENV)}


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
        events = bus.events()
        await bus.publish(
            args.subject, args.payload, headers=_headers(args), reply_to=args.reply_to
        )
        try:
            await bus.flush(timeout=FLUSH_TIMEOUT)
        except TimeoutError:
            raise CommandError(
                f"{args.url} did not confirm the message within {FLUSH_TIMEOUT:g} s"
            ) from None
        if bus.refused:  # the broker's ERR came before the flush's PONG
            async for event in events:
                if isinstance(event.error, PermissionDenied):
                    raise CommandError(str(event.error), EXIT_FAILED)
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
        options = ConnectOptions(connect_timeout=remaining + 1.0, ping_interval=0, **_user(args))
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
