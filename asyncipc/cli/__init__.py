"""The ``asyncipc`` command: run a broker, publish, subscribe and request from a shell.

::

    asyncipc broker --listen unix:///tmp/asyncipc.sock --listen tcp://0.0.0.0:4222
    asyncipc sub 'orders.>' --count 10
    asyncipc pub orders.created '{"id": 7}' --header trace=abc
    asyncipc request pricing.quote sku-1 --timeout 0.5
    asyncipc wait --timeout 5      # until a broker answers: for scripts
    asyncipc stats connz           # the broker's connections (docs/monitoring.md)

Clients find the broker with ``--url``, else ``$ASYNCIPC_URL``, else
:func:`asyncipc.default_socket_url`; the token comes from ``--token`` or
``$ASYNCIPC_TOKEN``. Exit codes: 0 success, 1 the request failed (no responders, time-out,
the service raised), 2 usage, connection or authentication error. ``asyncipc --help``
carries the essentials of ``docs/cli.md`` (an installed wheel has no ``docs/``).
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

from .._connect import TOKEN_ENV
from .._logjson import JsonFormatter
from ..errors import (
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
from ..signals import on_signal
from ._broker import _broker
from ._clients import _client_url, _payload
from ._common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CommandError
from ._parser import build_parser

log = logging.getLogger("asyncipc.cli")


__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "TOKEN_ENV", "build_parser", "main"]


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
        if args.command == "passwd":
            return int(await args.func(args))
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
