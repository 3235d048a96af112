"""The ``broker`` command: listeners, start-up log, ready file, drain on signals."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

from .._connect import TOKEN_ENV, default_socket_url
from .._limits import raise_fd_limit
from ..bridge import require_nats
from ..broker import Broker
from ..config import BrokerConfig, load_config
from ..errors import (
    AsyncIPCError,
    ConfigurationError,
)
from ..options import BrokerOptions
from ..signals import drain_on_signals, on_signal
from ..subjects import validate_pattern
from ..transports import lookup, parse_url
from ._common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CommandError, _env, _oserror_text

log = logging.getLogger("asyncipc.cli")

LIMIT_OPTIONS = (
    "max_hello",
    "max_pending_handshakes",
    "frame_timeout",
    "frame_min_rate",
    "max_connections",
    "max_connections_per_peer",
    "max_failed_handshakes",
    "max_subscriptions",
    "block_timeout",
)
"""The BrokerOptions fields the command's limit flags set (``--max-hello`` ...)."""


# --- the broker ------------------------------------------------------------------------


async def _broker(args: argparse.Namespace) -> int:
    config = _read_config(args)  # --config FILE (issue 13, docs/security.md)
    urls: list[str] = args.listen + [f"grpc://{a}" for a in args.grpc]
    urls += [f"http://{a}" for a in args.http]
    if config is not None:
        urls += [u for u in config.listen if u not in urls]
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
    if args.check_config:
        assert config is not None
        print(
            f"{config.path}: ok: {len(urls)} listeners, {len(config.options.users)} users, "
            f"{len(config.streams)} streams",
            flush=True,
        )
        return EXIT_OK
    bridge_subjects = _bridge_subjects(args)
    overrides = _command_line_options(args)
    base = config.options if config is not None else BrokerOptions()
    options = replace(base, **overrides)
    # Before the broker exists: it sizes its accepting to the limit it finds.
    raised = raise_fd_limit(options.max_connections)
    if raised is not None:
        log.info("raised the file descriptor limit (ulimit -n) to %d", raised)
    broker = Broker(options)
    token = broker.options.token
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
            if config is not None and drain.received is None:
                await _ensure_streams(broker, config)
            if args.bridge and drain.received is None:
                try:
                    await broker.bridge(args.bridge, bridge_subjects)
                except AsyncIPCError as exc:
                    raise CommandError(f"cannot bridge to {args.bridge}: {exc}") from None
            try:
                if args.ready_file and len(bound) == len(urls):
                    _write_ready_file(args.ready_file, bound)
                startup.release()
                for url in bound:
                    print(f"listening on {url}", flush=True)
                _warn_about_exposure(broker, args, token)
                with _reloading(broker, args, overrides):
                    await drain.wait()
            finally:
                # Before the drain: from here on the broker no longer accepts clients.
                if args.ready_file:
                    _remove_ready_file(args.ready_file, quiet=True)
    return EXIT_OK


# --- the configuration file (issue 13, docs/security.md) -----------------------------------


def _read_config(args: argparse.Namespace) -> BrokerConfig | None:
    if args.check_config and not args.config:
        raise CommandError("--check-config needs --config FILE")
    if not args.config:
        return None
    code = EXIT_FAILED if args.check_config else EXIT_USAGE
    try:
        config = load_config(args.config)
    except ConfigurationError as exc:
        raise CommandError(str(exc), code) from None
    for i, url in enumerate(config.listen):
        try:
            lookup(parse_url(url).scheme)
        except ConfigurationError as exc:
            raise CommandError(f"{config.path}: listen[{i}]: {exc}", code) from None
    return config


def _command_line_options(args: argparse.Namespace) -> dict[str, Any]:
    """The broker options the command line sets: these win over the file's."""
    out: dict[str, Any] = {}
    token = args.token or _env(TOKEN_ENV)
    if token:
        out["token"] = token
    # A value equal to the default is taken as not given: the file's then stands.
    defaults = BrokerOptions()
    if args.max_frame != defaults.max_frame:
        out["max_frame"] = args.max_frame
    if args.high_water != defaults.high_water:
        out["high_water"] = args.high_water
    if args.allow_remote_signals:
        out["remote_signals"] = True
    if args.store is not None:
        out["store"] = args.store
    for name in LIMIT_OPTIONS:  # --max-connections and the other limits (docs/guide.md)
        value = getattr(args, name)
        if value != getattr(defaults, name):
            out[name] = value
    return out


async def _ensure_streams(broker: Broker, config: BrokerConfig) -> None:
    for stream in config.streams:
        try:
            await broker.streams.ensure(stream)
        except AsyncIPCError as exc:
            raise CommandError(f"{config.path}: stream {stream.name}: {exc}") from None


@contextlib.contextmanager
def _reloading(
    broker: Broker, args: argparse.Namespace, overrides: dict[str, Any]
) -> Iterator[None]:
    """With --config: SIGHUP reads the file again and applies its users, permissions and
    limits to the running broker (connected clients included); a file with a mistake is
    logged and the configuration in effect is kept."""
    if not args.config:
        yield
        return
    listening = set(broker.urls)

    def reload(_sig: object) -> None:
        try:
            config = load_config(args.config)
        except ConfigurationError as exc:
            log.error("SIGHUP: %s; keeping the configuration in effect", exc)
            return
        broker.reconfigure(replace(config.options, **overrides))
        log.info(
            "SIGHUP: reloaded %s: %d users, permissions re-applied to %d clients",
            config.path,
            len(config.options.users),
            broker.sessions,
        )
        if any(u not in listening for u in config.listen):
            log.warning("SIGHUP: new listen URLs take effect when the broker restarts")

    with on_signal(reload, "HUP"):
        yield


def _bridge_subjects(args: argparse.Namespace) -> list[str]:
    """The patterns of --bridge-subjects, checked before anything is bound."""
    text = args.bridge_subjects
    if not args.bridge:
        if text:
            raise CommandError("--bridge-subjects needs --bridge nats://...")
        return []
    subjects = [s.strip() for s in (text or "").split(",") if s.strip()]
    if not subjects:
        raise CommandError("--bridge needs --bridge-subjects, e.g. 'orders.>,pricing.>'")
    for pattern in subjects:
        try:
            validate_pattern(pattern)
        except AsyncIPCError as exc:
            raise CommandError(f"--bridge-subjects: {exc}") from None
    try:
        require_nats()
    except AsyncIPCError as exc:
        raise CommandError(f"cannot bridge to {args.bridge}: {exc}") from None
    return subjects


_NETWORK_SCHEMES = frozenset({"tcp", "tls", "udp", "http", "https", "grpc"})
"""Schemes whose listeners are reached through an IP address; the others (unix, fifo,
shm, mmap, file, pipe) are guarded by file permissions and peer credentials."""


def exposed(url: str) -> bool:
    """Whether the listener at ``url`` is reachable from other hosts: a network scheme on
    an address that is not loopback (a wildcard such as ``0.0.0.0`` or ``[::]`` is
    every address; a host name other than ``localhost`` may be anything)."""
    parsed = parse_url(url)
    if parsed.scheme not in _NETWORK_SCHEMES:
        return False
    host = (parsed.host or "").strip("[]")
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a name, or no host at all (every address)


def _warn_about_exposure(broker: Broker, args: argparse.Namespace, token: str | None) -> None:
    public = [u for u in broker.urls if exposed(u)]
    if token is None and not broker.options.users and public:
        log.warning("no --token: any client that can reach %s is served", ", ".join(public))
    # Loopback TCP counts here: any local user reaches it, and the broker cannot tell who.
    network = any(parse_url(u).scheme in _NETWORK_SCHEMES for u in broker.urls)
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
