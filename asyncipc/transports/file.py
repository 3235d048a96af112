"""``file:///dir``: a bus with no broker process, in log files every process of ``dir`` shares.

``asyncipc.connect("file:///dir")`` runs a broker in the calling event loop (one per loop
and directory, shared by its buses, like ``memory://``) and joins it to the directory:

- every message published here is appended to the bus log ``dir/bus/`` (a ``FileLog``
  opened in shared mode: appends under a lock, safe with any number of writer processes);
- every process tails that log (inotify where there is one, polling elsewhere) and hands
  its broker what the others wrote, so their subscribers get it live. A process that opens
  the directory sees what is published from then on, as a new subscriber does;
- the first process to lock ``dir/streams.lock`` hosts the directory's streams under
  ``dir/streams/`` (``bus.stream(...)``); the others send their stream requests through the
  log and get the answers and their consumers' messages back the same way. When the host
  exits another process takes over, and a process started after every other one has
  exited replays the streams from disk.

``Broker.listen("file:///dir")`` joins a broker process to the directory the same way
(``asyncipc broker --listen file:///dir``): its clients and the directory's processes
share subjects. ``docs/file.md`` has the details, the options and what does not work.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, get_args

from ..errors import ConfigurationError, ConnectError, StoreError
from ..link import Accept, Link, Listener
from ..protocol import Frame, Sub
from ..streams.store.base import FsyncPolicy, RecoveryReport
from ..streams.store.record import MAX_DATA
from . import URL, TransportOptions, parse_url, register
from ._file.host import HostLock
from ._file.relay import FileRelay
from .memory import MemoryLink, memory_pair

if TYPE_CHECKING:
    from ..broker import Broker
    from ..streams.store.filelog import FileLog

__all__ = ["FileBus", "FileOptions", "FileTransport", "file_bus"]

log = logging.getLogger("asyncipc.file")

SEGMENT_BYTES = (256 << 10, 16 << 20)
"""Bounds of a bus log segment: an eighth of ``max_bytes`` within these, so that trimming
by whole segments keeps the log near its bound."""
POSITION_EVERY = 1.0
"""Seconds between two saves of the streams' host's capture position (``streams.pos``)."""
CACHE_BYTES = 0
"""Recent records a process keeps in memory: none, since the tailer reads only what *other*
processes wrote, which no cache of ours would hold."""

_SIZE = re.compile(r"(\d+)\s*([kmg]?)(?:i?b)?", re.IGNORECASE)
_AGE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)", re.IGNORECASE)
_AGE_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class FileOptions:
    """What a ``file://`` URL says: ``file:///dir?fsync=never&max_bytes=64M&max_age=1d``.

    ``fsync``: when appends to the bus log reach the disk, ``"never"`` (the default: the
    kernel writes them back; a plain publish is not acknowledged, so an fsync per batch
    would buy nothing a publisher can see), ``"interval"`` or ``"always"``. A process
    killed at any moment loses nothing it appended under any policy; a power cut may.
    Streams keep their own policy (``fsync`` of ``bus.stream(...)``, ``"always"`` by
    default). ``max_bytes`` (default 64M, 0 for none) and ``max_age`` (seconds, or with
    ``s``/``m``/``h``/``d``; default none) bound the bus log: older records go, by whole
    segment files.
    """

    directory: str
    fsync: FsyncPolicy = "never"
    max_bytes: int = 64 << 20
    max_age: float = 0.0
    query: dict[str, str] = field(default_factory=dict, compare=False)

    @classmethod
    def from_url(cls, url: URL) -> FileOptions:
        """Read and check ``url``; ConfigurationError says what is wrong with it."""
        if url.host not in ("", "localhost"):
            raise ConfigurationError(
                f"{url.raw!r}: file:// takes a local directory, file:///path "
                f"(not host {url.host!r})"
            )
        path = url.path
        if not path.startswith("/") or path.rstrip("/") == "":
            raise ConfigurationError(f"{url.raw!r}: name a directory, e.g. file:///var/lib/app/bus")
        known = {"fsync", "max_bytes", "max_age", "token"}
        unknown = sorted(set(url.query) - known)
        if unknown:
            raise ConfigurationError(
                f"{url.raw!r}: unknown option(s) {', '.join(unknown)} "
                "(file:// knows fsync, max_bytes, max_age)"
            )
        fsync = url.query.get("fsync", "never")
        if fsync not in get_args(FsyncPolicy):
            raise ConfigurationError(
                f"{url.raw!r}: fsync must be always, interval or never, not {fsync!r}"
            )
        max_bytes = 64 << 20
        if "max_bytes" in url.query:
            m = _SIZE.fullmatch(url.query["max_bytes"].strip())
            if m is None:
                raise ConfigurationError(
                    f"{url.raw!r}: max_bytes is a size such as 64M, not {url.query['max_bytes']!r}"
                )
            max_bytes = int(m[1]) << {"": 0, "k": 10, "m": 20, "g": 30}[m[2].lower()]
        max_age = 0.0
        if "max_age" in url.query:
            m = _AGE.fullmatch(url.query["max_age"].strip())
            if m is None:
                raise ConfigurationError(
                    f"{url.raw!r}: max_age is seconds, or 90s, 10m, 2h, 7d, "
                    f"not {url.query['max_age']!r}"
                )
            max_age = float(m[1]) * _AGE_UNITS[m[2].lower()]
        return cls(path.rstrip("/") or "/", fsync, max_bytes, max_age, dict(url.query))  # type: ignore[arg-type]


class FileBus(Listener):
    """One broker joined to one directory: its relay, the tasks that run it, and its
    part in the streams' host election. What ``Broker.listen("file:///dir")`` returns."""

    def __init__(
        self, url: str, broker: Broker, options: FileOptions, relay: FileRelay, bus_log: FileLog
    ) -> None:
        self.url = url
        self.broker = broker
        self.options = options
        self.relay = relay
        self._log = bus_log
        self._lock: HostLock | None = None
        self._writer: asyncio.Task[None] | None = None
        self._tailer: asyncio.Task[None] | None = None
        self._election: asyncio.Task[None] | None = None
        self._saver: asyncio.Task[None] | None = None
        self._writing_position: asyncio.Future[None] | None = None
        self.on_closed: Callable[[], None] | None = None
        self._stopped = False
        self._closed = False

    @property
    def hosting(self) -> bool:
        """Whether this process hosts the directory's streams now."""
        return self.relay.hosting

    @property
    def recovery(self) -> RecoveryReport:
        """What opening the bus log found (a torn tail cut off, corrupt segments)."""
        return self._log.recovery

    @classmethod
    async def open(cls, url: URL, broker: Broker, options: FileOptions) -> FileBus:
        """Open ``dir/bus/``, start the writer and the tailer, take part in the election."""
        from ..streams.store.filelog import FileLog  # the store loads on first use

        directory = options.directory
        bus_dir = os.path.join(directory, "bus")
        try:
            await asyncio.to_thread(os.makedirs, bus_dir, exist_ok=True)
        except OSError as exc:
            raise ConnectError(
                f"{url.raw}: cannot use {bus_dir} as the bus log: {exc.strerror or exc}"
            ) from None
        try:
            low, high = SEGMENT_BYTES
            bus_log = await FileLog.open(
                bus_dir,
                fsync=options.fsync,
                shared=True,
                segment_bytes=min(max(options.max_bytes // 8, low), high),
                cache_bytes=CACHE_BYTES,
            )
        except (StoreError, OSError) as exc:
            raise ConnectError(f"{url.raw}: cannot open the bus log in {bus_dir}: {exc}") from exc
        report = bus_log.recovery
        if report.torn_bytes or report.lost_segments:
            log.warning(
                "%s: the bus log had %d torn bytes at its end (cut off) and %d corrupt "
                "segment(s) (%d records lost): %s",
                url.raw,
                report.torn_bytes,
                len(report.lost_segments),
                report.lost,
                "; ".join(f"{s.name}: {s.reason}" for s in report.lost_segments) or "-",
            )
        origin = f"{os.getpid()}.{os.urandom(4).hex()}"
        relay = FileRelay(
            broker,
            bus_log,
            origin,
            max_bytes=options.max_bytes,
            max_age=options.max_age,
            backlog=broker.options.high_water,
        )
        self = cls(url.raw, broker, options, relay, bus_log)
        broker.add_relay(relay)
        try:
            await self._elect()
        except BaseException:
            broker.remove_relay(relay)
            broker.forward_streams(None)
            await bus_log.close()
            if self._lock is not None:
                await self._lock.release()
            raise
        loop = asyncio.get_running_loop()
        self._writer = loop.create_task(relay.run_writer(), name=f"{url.raw} writer")
        self._tailer = loop.create_task(relay.run_tailer(), name=f"{url.raw} tailer")
        return self

    # --- the streams' host ----------------------------------------------------------------

    async def _elect(self) -> None:
        streams = self.broker.streams
        if streams.root is not None or streams.streams:
            # A broker process with a store of its own keeps its streams to itself.
            log.info("%s: streams stay this broker's own (it has a store)", self.url)
            return
        lock = self._lock = HostLock(os.path.join(self.options.directory, "streams.lock"))
        try:
            won = await lock.try_acquire()
        except OSError as exc:
            raise ConnectError(
                f"{self.url}: cannot use {lock.path}: {exc.strerror or exc}"
            ) from exc
        if won:
            await self._host()
        else:
            self.broker.forward_streams(self.relay)
            holder = await lock.holder()
            log.debug("%s: streams hosted by pid %s", self.url, holder)
            self._election = asyncio.get_running_loop().create_task(
                self._take_over(lock), name=f"{self.url} stream host election"
            )

    async def _take_over(self, lock: HostLock) -> None:
        await lock.wait()
        log.info(
            "%s: the streams' host left; this process (pid %d) takes over", self.url, os.getpid()
        )
        await self._host()

    async def _host(self) -> None:
        relay = self.relay
        streams = self.broker.streams
        async with relay.turn:  # the tailer stands still: capture stays in log order
            try:
                await streams.open_store(self.options.directory)
            except (StoreError, OSError) as exc:
                log.error("%s: cannot host the streams: %s", self.url, exc)
                if self._lock is not None:
                    await self._lock.release()  # let another process try
                self.broker.forward_streams(relay)
                return
            self.broker.forward_streams(None)
            relay.hosting = True
            try:
                since = await asyncio.to_thread(_read_position, self._position)
                if since is not None and streams.capturing:
                    n = await relay.catch_up(since, streams.capture)
                    if n:
                        log.info("%s: captured %d messages no host had captured", self.url, n)
                await self._save_position(relay.tailed)
            except OSError as exc:
                log.error("%s: cannot catch up with the log: %s", self.url, exc)
        self._saver = asyncio.get_running_loop().create_task(
            self._keep_position(), name=f"{self.url} capture position"
        )

    # Where the host has captured the log up to, so that the next host captures the rest
    # (what was published while no process hosted the streams) and nothing twice.

    @property
    def _position(self) -> str:
        return os.path.join(self.options.directory, "streams.pos")

    async def _save_position(self, seq: int) -> None:
        # One write at a time, in order, even across a cancelled saver: a write that was
        # still running in its thread must not land after (and over) the final one.
        before = self._writing_position
        if before is not None:
            await asyncio.wait([before])
        write = self._writing_position = asyncio.ensure_future(
            asyncio.to_thread(_write_position, self._position, seq)
        )
        await asyncio.shield(write)

    async def _keep_position(self) -> None:
        # A tick behind the tailer: what it handed over a second ago is in the streams'
        # logs by now. A host killed meanwhile leaves its successor a second to capture
        # twice (at least once), never a gap.
        saved = behind = self.relay.tailed
        while True:
            await asyncio.sleep(POSITION_EVERY)
            if behind != saved:
                try:
                    await self._save_position(behind)
                    saved = behind
                except OSError as exc:
                    log.error("%s: cannot save the capture position: %s", self.url, exc)
            behind = self.relay.tailed

    # --- closing ---------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop hearing other processes (the broker is closing). What this process still
        publishes while it closes (stream acknowledgements, replies) is written in
        :meth:`wait_closed`."""
        if self._stopped:
            return
        self._stopped = True
        for task in (self._election, self._saver, self._tailer):
            if task is not None:
                task.cancel()
                await asyncio.wait([task])

    async def wait_closed(self) -> None:
        """Write what is queued, close the log, give up the streams' lock: called by the
        broker after its streams are closed, so that the next host finds them saved."""
        if self._closed:
            return
        self._closed = True
        await self.aclose()
        relay = self.relay
        writer = self._writer
        if writer is not None and not writer.done():
            try:
                async with asyncio.timeout(self.broker.options.drain_timeout):
                    await relay.flush()
            except TimeoutError:
                log.error(
                    "%s: the log writer did not finish in %g s: messages not written",
                    self.url,
                    self.broker.options.drain_timeout,
                )
        relay.close()
        self.broker.remove_relay(relay)
        self.broker.forward_streams(None)
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.wait([self._writer])
        try:
            await self._log.close()
        except (StoreError, OSError) as exc:
            log.error("%s: the bus log did not close cleanly: %s", self.url, exc)
        if relay.hosting:
            # The streams are closed (the broker closed them first): exact, the next host
            # captures from the first record this one's tailer did not hand over.
            try:
                await self._save_position(relay.tailed)
            except OSError as exc:
                log.error("%s: cannot save the capture position: %s", self.url, exc)
        if self._lock is not None:
            await self._lock.release()
        if self.on_closed is not None:
            self.on_closed()


class FileClientLink(MemoryLink):
    """A bus's link to its ``file://`` broker: refuses what cannot work across processes."""

    def send(self, frame: Frame) -> None:
        if type(frame) is Sub and frame.queue is not None:
            raise ConfigurationError(
                f"queue group {frame.queue!r} on {frame.subject!r}: file:// has no queue "
                "groups, since every process reads every message of the log and none can "
                "decide alone which member across processes takes one. Share work between "
                "processes with a stream consumer (docs/file.md)"
            )
        super().send(frame)


@dataclass
class _Embedded:
    options: FileOptions
    broker: Broker | None = None
    bus: FileBus | None = None
    users: int = 0
    error: BaseException | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)


# Per event loop: real directory path -> the broker connect() runs for it.
_embedded: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Embedded]] = (
    weakref.WeakKeyDictionary()
)


class FileTransport:
    """The ``file`` scheme: an :class:`~asyncipc.transports.EmbeddedTransport` for
    ``connect`` and a :class:`~asyncipc.broker.BrokerAdapter` for ``Broker.listen``."""

    async def acquire(self, url: URL, options: TransportOptions) -> Callable[[], Awaitable[None]]:
        """This loop's broker for the directory, started on first use; the returned
        release closes it when its last bus is gone."""
        wanted = FileOptions.from_url(url)
        key = await asyncio.to_thread(os.path.realpath, wanted.directory)
        brokers = _embedded.setdefault(asyncio.get_running_loop(), {})
        entry = brokers.get(key)
        if entry is None:
            entry = brokers[key] = _Embedded(wanted)
            from ..broker import Broker  # the transport is below the broker; see _connect

            broker = Broker()
            try:
                listener = await broker.listen(url.raw)
            except BaseException as exc:
                del brokers[key]
                entry.error = exc
                entry.ready.set()
                await broker.close()
                raise
            entry.broker = broker
            assert isinstance(listener, FileBus)
            entry.bus = listener
            entry.ready.set()
        else:
            await entry.ready.wait()
            if entry.error is not None:
                raise ConnectError(f"{url.raw}: {entry.error}")
            if entry.options != wanted:
                raise ConfigurationError(
                    f"{url.raw}: {wanted.directory} is open in this event loop already, with "
                    f"other options ({entry.options.query or 'none'})"
                )
        entry.users += 1
        owned = entry

        async def release() -> None:
            owned.users -= 1
            if owned.users == 0 and brokers.get(key) is owned:
                del brokers[key]
                assert owned.broker is not None
                await owned.broker.close()

        return release

    async def connect(self, url: URL, options: TransportOptions) -> Link:
        """A link to the broker :meth:`acquire` started for ``url``'s directory."""
        wanted = FileOptions.from_url(url)
        key = await asyncio.to_thread(os.path.realpath, wanted.directory)
        entry = _embedded.get(asyncio.get_running_loop(), {}).get(key)
        if entry is None or entry.broker is None:
            raise ConnectError(f"{url.raw} is not open in this event loop: use asyncipc.connect")
        client, server = memory_pair(
            f"file://{wanted.directory}",
            TransportOptions(
                high_water=options.high_water, max_frame=min(options.max_frame, MAX_DATA)
            ),
            client=FileClientLink,
        )
        entry.broker.attach(server)
        return client

    async def listen(self, url: URL, accept: Accept, options: TransportOptions) -> Listener:
        """Never called: ``Broker.listen`` uses :meth:`serve_broker`."""
        raise ConfigurationError("file:// joins a broker to a directory: Broker.listen(url)")

    async def serve_broker(self, url: URL, broker: Broker, options: TransportOptions) -> Listener:
        """Join ``broker`` to ``url``'s directory (see the module docstring)."""
        wanted = FileOptions.from_url(url)
        key = await asyncio.to_thread(os.path.realpath, wanted.directory)
        joined = broker.joined_directories  # a second listen() of a directory is refused
        if key in joined:
            raise ConfigurationError(f"{url.raw}: this broker is joined to {key} already")
        joined.add(key)
        try:
            bus = await FileBus.open(url, broker, wanted)
        except BaseException:
            joined.discard(key)
            raise
        bus.on_closed = lambda: joined.discard(key)
        return bus


async def file_bus(url: str) -> FileBus | None:
    """The :class:`FileBus` that ``asyncipc.connect(url)`` opened in this event loop
    (``hosting``, ``recovery``, the relay's counters), or None if ``url``'s directory
    is not open here."""
    parsed = FileOptions.from_url(parse_url(url))
    key = await asyncio.to_thread(os.path.realpath, parsed.directory)
    entry = _embedded.get(asyncio.get_running_loop(), {}).get(key)
    return entry.bus if entry is not None else None


def _read_position(path: str) -> int | None:
    try:
        with open(path, "rb") as f:
            text = f.read(64)
    except FileNotFoundError:
        return None
    try:
        return int(text.strip())
    except ValueError:
        log.error("%s: not a capture position (%r): capturing from now on", path, text[:20])
        return None


def _write_position(path: str, seq: int) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(b"%d\n" % seq)
    os.replace(tmp, path)


register("file", FileTransport())
