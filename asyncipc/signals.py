"""OS signals as bus messages, a clean drain on SIGTERM/SIGINT, and signals between clients.

Three things, documented in ``docs/signals.md``::

    import signal
    import asyncipc
    from asyncipc import signals

    async with asyncipc.connect(url) as bus:
        # 1. This process's own signals as messages on $sys.signal.<NAME>.
        async with signals.watch(bus, signal.SIGHUP), bus.subscribe("$sys.signal.HUP") as sub:
            async for msg in sub:
                reload_config()

    # 2. A service that drains and exits cleanly on SIGTERM or SIGINT.
    async with asyncipc.connect(url) as bus:
        bus.serve("pricing.quote", quote)
        await signals.run_until_signalled(bus)   # in-flight requests are answered

    # 3. Ask the broker to signal another client that allowed it (by id or name).
    await signals.send(bus, "worker-1", "HUP")   # raises SignalRefused with the reason

Every handler asyncipc installs goes through one registry per event loop
(:func:`on_signal`): several watchers of one signal all see it, a Python-level handler
installed before (``signal.signal``) is *chained* (called after ours, with a ``None``
frame) rather than replaced, and the previous handler is restored when the last of ours
goes. A handler installed with ``loop.add_signal_handler`` by other code cannot be chained
(the event loop keeps one callback per signal), so taking over its signal raises
:class:`~asyncipc.SignalInUse` instead of replacing it silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from types import TracebackType
from typing import Any

import anyio

from ._shield import shielded
from .broker import Broker
from .client import Bus
from .errors import ConfigurationError, SignalInUse, SignalRefused
from .protocol.system import (
    ERROR_HEADER,
    KILL_PREFIX,
    REASON_HEADER,
    REFUSED_STATUS,
    RESERVED_PREFIX,
    SENDABLE,
    SIGNAL_PREFIX,
    STATUS_HEADER,
    sendable_names,
    signal_name,
    to_signal,
)

__all__ = [
    "DRAIN_SIGNALS",
    "KILL_PREFIX",
    "RESERVED_PREFIX",
    "SENDABLE",
    "SIGNAL_PREFIX",
    "Drain",
    "drain_on_signals",
    "on_signal",
    "run_until_signalled",
    "send",
    "sendable_names",
    "signal_name",
    "subject",
    "watch",
]

log = logging.getLogger("asyncipc.signals")

DRAIN_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)
"""What :func:`run_until_signalled` and :func:`drain_on_signals` stop on by default."""

# (getattr: importing asyncipc must not fail where the platform lacks them.)
_UNCATCHABLE = frozenset(
    getattr(signal, name) for name in ("SIGKILL", "SIGSTOP") if hasattr(signal, name)
)


# --- names ------------------------------------------------------------------------------


def subject(sig: int | str) -> str:
    """The subject :func:`watch` publishes a signal on: ``$sys.signal.HUP``."""
    return SIGNAL_PREFIX + signal_name(sig)


# --- the handler registry ---------------------------------------------------------------

SignalCallback = Callable[[signal.Signals], None]


class _Slot:
    """Our handler for one signal in one event loop, and what was there before."""

    __slots__ = ("callbacks", "previous")

    def __init__(self, previous: Any) -> None:
        self.previous = previous
        self.callbacks: list[SignalCallback] = []


_registry: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, _Slot]] = (
    weakref.WeakKeyDictionary()
)


def _runner_sigint(handler: Any) -> bool:
    # asyncio.Runner (asyncio.run, uvloop.run) makes Ctrl-C cancel the main task with a
    # partial of Runner._on_sigint. That is its stand-in for the default, not a handler
    # of the application's: chaining it would cancel the very drain SIGINT asks for.
    return isinstance(handler, functools.partial) and getattr(
        handler.func, "__func__", None
    ) is getattr(asyncio.Runner, "_on_sigint", 0)


def _is_default(handler: Any) -> bool:
    return (
        handler is None  # installed from C, not Python: nothing we could call
        or handler in (signal.SIG_DFL, signal.SIG_IGN, signal.default_int_handler)
        or _runner_sigint(handler)
    )


def _is_loop_handler(handler: Any) -> bool:
    # loop.add_signal_handler installs a C-level stub and keeps the real callback inside
    # the loop: asyncio's _sighandler_noop, uvloop's Loop.__sighandler.
    module = getattr(handler, "__module__", "") or ""
    name = getattr(handler, "__qualname__", "") or ""
    return (module == "asyncio.unix_events" and name == "_sighandler_noop") or (
        module.startswith("uvloop") and "sighandler" in name
    )


def _dispatch(slot: _Slot, sig: signal.Signals) -> None:
    for callback in list(slot.callbacks):
        try:
            callback(sig)
        except Exception:
            log.exception("signal callback %r for %s raised", callback, sig.name)
    previous = slot.previous
    if callable(previous) and not _is_default(previous):
        previous(int(sig), None)  # chained: what signal.signal() installed before us


def _install(
    loop: asyncio.AbstractEventLoop, sig: signal.Signals, callback: SignalCallback
) -> None:
    if sig in _UNCATCHABLE:
        raise ConfigurationError(
            f"{sig.name} cannot be caught, blocked or ignored: no handler can see it"
        )
    slots = _registry.setdefault(loop, {})
    slot = slots.get(sig)
    if slot is None:
        previous = signal.getsignal(sig)
        if _is_loop_handler(previous):
            raise SignalInUse(
                f"{sig.name} already has an event-loop handler (loop.add_signal_handler) "
                "that asyncipc.signals would replace silently; remove it first, or "
                "register it with asyncipc.signals.on_signal() so that both run"
            )
        slot = _Slot(previous)
        try:
            loop.add_signal_handler(sig, _dispatch, slot, sig)
        except (ValueError, RuntimeError) as exc:
            raise ConfigurationError(f"cannot handle {sig.name} here: {exc}") from None
        slots[sig] = slot
    slot.callbacks.append(callback)


def _uninstall(
    loop: asyncio.AbstractEventLoop, sig: signal.Signals, callback: SignalCallback
) -> None:
    slots = _registry.get(loop, {})
    slot = slots.get(sig)
    if slot is None:
        return
    with contextlib.suppress(ValueError):
        slot.callbacks.remove(callback)
    if slot.callbacks:
        return
    del slots[sig]
    if not loop.is_closed():
        loop.remove_signal_handler(sig)
    if slot.previous is not None:
        signal.signal(sig, slot.previous)


@contextlib.contextmanager
def on_signal(callback: SignalCallback, *signals: int | str) -> Iterator[None]:
    """Call ``callback(sig)`` in the running event loop each time one of ``signals``
    arrives, until the ``with`` block ends; then the previous handlers are back.

    The building block of :func:`watch` and :func:`drain_on_signals`, public so that an
    application's own handlers share the signal with them instead of replacing them.
    ``callback`` must not block; an exception it raises is logged. SIGKILL and SIGSTOP
    raise :class:`~asyncipc.ConfigurationError`; a signal another
    ``loop.add_signal_handler`` owns raises :class:`~asyncipc.SignalInUse`. A handler
    set with ``signal.signal()`` before is chained: it runs after ``callback``.
    """
    loop = asyncio.get_running_loop()
    sigs = list(dict.fromkeys(to_signal(s) for s in signals))
    if not sigs:
        raise ConfigurationError("on_signal() needs at least one signal")
    done: list[signal.Signals] = []
    try:
        for sig in sigs:
            _install(loop, sig, callback)
            done.append(sig)
        yield
    finally:
        for sig in reversed(done):
            _uninstall(loop, sig, callback)


# --- 1. signals in, as messages ---------------------------------------------------------


@contextlib.asynccontextmanager
async def watch(bus: Bus, *signals: int | str) -> AsyncIterator[None]:
    """Publish each of ``signals`` this process receives on ``$sys.signal.<NAME>``
    (:func:`subject`) through ``bus``, until the block ends.

    The broker delivers these only to ``bus``'s own subscriptions: a process sees its
    own signals, never another's. Each message's data is the name (``b"HUP"``), with
    headers ``signum`` and ``pid``. Signals that arrive together may be merged by the
    OS, as always; each one the handler sees becomes one message. On exit the handlers
    are removed, signals already caught are still published, and the previous handlers
    are restored. Raises as :func:`on_signal` does.
    """
    sigs = list(dict.fromkeys(to_signal(s) for s in signals))
    if not sigs:
        raise ConfigurationError("watch() needs at least one signal")
    loop = asyncio.get_running_loop()
    caught: deque[signal.Signals] = deque()
    wakeup = asyncio.Event()
    stopping = False
    pid = str(os.getpid())

    def received(sig: signal.Signals) -> None:
        caught.append(sig)
        wakeup.set()

    async def publish() -> None:
        while True:
            await wakeup.wait()
            wakeup.clear()
            while caught:
                sig = caught.popleft()
                name = sig.name.removeprefix("SIG")
                headers = {"signum": str(int(sig)), "pid": pid}
                try:
                    await bus.publish(SIGNAL_PREFIX + name, name.encode(), headers=headers)
                except Exception as exc:  # a closed bus must not kill the watcher
                    log.warning("could not publish %s on %s: %s", sig.name, bus.url, exc)
            if stopping:
                return

    task: asyncio.Task[None] | None = None
    try:
        with on_signal(received, *sigs):
            task = loop.create_task(publish(), name="asyncipc signals.watch")
            yield
    finally:
        # The handlers are gone; what they caught is still published, then the task ends.
        stopping = True
        wakeup.set()
        if task is not None:
            await task


# --- 2. drain on SIGTERM / SIGINT -------------------------------------------------------


class Drain:
    """What :func:`drain_on_signals` gives the ``async with`` body.

    ``received`` is the signal that asked the process to stop (``None`` until then);
    ``await wait()`` returns it, or ``None`` if a target ended by other means first (a
    broker closed, a bus whose broker went away). Leaving the block drains and closes
    the targets either way.
    """

    def __init__(self, targets: tuple[Bus | Broker, ...], signals: tuple[int | str, ...]) -> None:
        _split(targets)  # refuse anything else now, not when the signal comes
        self.targets = targets
        self.signals = tuple(dict.fromkeys(to_signal(s) for s in signals))
        self.received: signal.Signals | None = None
        self._event = asyncio.Event()
        self._stack = contextlib.ExitStack()

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.received is None:
            self.received = sig
            log.info("%s received: draining and closing", sig.name)
            self._event.set()
        else:
            log.info("%s received: already draining (bounded by the drain time-outs)", sig.name)

    async def wait(self) -> signal.Signals | None:
        """Wait for one of the signals, or until a target ends on its own (a broker
        closed by other means, a bus whose broker went away): then ``None``."""
        buses, brokers = _split(self.targets)
        waits: list[Callable[[], Awaitable[Any]]] = [self._event.wait]
        waits += [broker.serve_forever for broker in brokers]
        waits += [bus.wait_closed for bus in buses]
        # A race: the first wait to end cancels the group's scope, which ends the others
        # and returns once they are gone (asyncio.TaskGroup cannot cancel as a whole).
        async with anyio.create_task_group() as group:

            async def first(wait: Callable[[], Awaitable[Any]]) -> None:
                await wait()
                group.cancel_scope.cancel()

            for wait in waits:
                group.start_soon(first, wait)
        return self.received

    async def close(self) -> None:
        """Drain and close the targets: every bus first (its handlers answer what they
        hold, its messages are delivered), then every broker (it waits for the requests
        in flight through it, then delivers what is buffered and removes its sockets).
        A cancellation does not cut this short; it is raised once all is closed."""
        await shielded(self._close_all())

    async def _close_all(self) -> None:
        async def close(target: Bus | Broker) -> None:
            try:
                await target.close()
            except Exception as exc:
                log.warning("closing %r failed: %s", target, exc)

        for group in _split(self.targets):
            async with asyncio.TaskGroup() as tasks:  # side by side, each drain bounded
                for target in group:
                    tasks.create_task(close(target))

    async def __aenter__(self) -> Drain:
        self._stack.enter_context(on_signal(self._on_signal, *self.signals))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # The handlers stay while the targets drain: a second SIGTERM must not kill the
        # process with the default action halfway through.
        try:
            await self.close()
        finally:
            self._stack.close()


def _split(targets: Iterable[Bus | Broker]) -> tuple[list[Bus], list[Broker]]:
    buses: list[Bus] = []
    brokers: list[Broker] = []
    for target in targets:
        if isinstance(target, Bus):
            buses.append(target)
        elif isinstance(target, Broker):
            brokers.append(target)
        else:
            raise ConfigurationError(
                f"drain targets are buses and brokers, not {type(target).__name__}"
            )
    return buses, brokers


def drain_on_signals(*targets: Bus | Broker, signals: Iterable[int | str] = DRAIN_SIGNALS) -> Drain:
    """An async context manager that catches ``signals`` (SIGTERM and SIGINT) from the
    moment it is entered, and on exit drains and closes ``targets`` (buses, then
    brokers) before giving the signals back::

        async with signals.drain_on_signals(broker) as drain:
            await broker.listen(url)          # a SIGTERM here is not lost
            await drain.wait()

    Use it where start-up must be covered too (the ``asyncipc broker`` command does);
    otherwise :func:`run_until_signalled` is the one-liner.
    """
    return Drain(targets, tuple(signals))


async def run_until_signalled(
    *targets: Bus | Broker, signals: Iterable[int | str] = DRAIN_SIGNALS
) -> signal.Signals | None:
    """Serve until SIGTERM or SIGINT (or ``signals``), then drain and close ``targets``.

    Buses close first: each unsubscribes, lets its handlers finish the requests they
    already hold (their replies are sent) and delivers what was published. Brokers
    close next: they stop listening (socket files go), wait for the requests in flight
    through them to be answered, deliver what is buffered and disconnect everyone. Both
    are bounded by their ``drain_timeout``. Returns the signal, or ``None`` if a target
    ended by other means first (a broker closed, a bus whose broker went away).
    """
    async with drain_on_signals(*targets, signals=signals) as drain:
        return await drain.wait()


# --- 3. signals out, through the broker -------------------------------------------------


async def send(bus: Bus, target: int | str, sig: int | str, *, timeout: float = 5.0) -> None:
    """Ask the broker to send ``sig`` to the process of client ``target``.

    ``target`` is a client id (the ``client_id`` of that client's WELCOME, in its
    ``bus.server_info``) or the ``name`` it connected with. The broker sends the signal
    only if that client allowed it (``ConnectOptions(allow_signals=...)``), the broker
    knows its pid first-hand (a Unix socket's peer credentials, a child it spawned), the
    sender is local too (or the broker enables ``remote_signals``) and runs as the same
    user or root. Otherwise raises :class:`~asyncipc.SignalRefused` whose ``reason``
    says which rule refused it. Returns once the signal was sent (not handled).
    """
    name = signal_name(sig)
    who = str(target).strip()
    if not who or any(ch.isspace() for ch in who):
        raise ConfigurationError(f"invalid signal target {target!r}: a client id or name")
    reply = await bus.request(KILL_PREFIX + who, name.encode(), timeout=timeout)
    headers = reply.headers or {}
    if headers.get(STATUS_HEADER) == REFUSED_STATUS:
        raise SignalRefused(
            headers.get(REASON_HEADER, "refused"), headers.get(ERROR_HEADER, "refused")
        )
