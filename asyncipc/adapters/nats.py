"""``nats://h1:4222,h2:4222``: the Bus API on a NATS server or cluster, through nats-py.

``asyncipc.connect("nats://...")`` returns the same :class:`~asyncipc.Bus` as every other
URL. What is NATS-specific is this module's :class:`NatsLink`: a link that answers the
Bus's frames in process by calling nats-py, instead of sending them to an asyncipc
broker. SUB becomes ``nc.subscribe`` (with the queue group), PUB ``nc.publish``, UNSUB
``sub.unsubscribe``, PING ``nc.flush`` and then a PONG, HELLO a WELCOME with the server's
``max_payload``. Every feature built on frames (requests, handlers, serve, the overflow
policies, drain, close) therefore works unchanged; ``docs/transports.md`` ("NATS") lists
what cannot mean the same here, and why.

Design choices, and the reasons:

* nats-py owns reconnecting (its ``servers`` list, ``allow_reconnect``): the link stays
  the same object across a reconnect, nats-py re-subscribes on the new server and
  buffers publishes meanwhile (``ConnectOptions.reconnect_buffer`` bytes). Its
  disconnected/reconnected/closed callbacks become the Bus's ConnectionEvents through
  :class:`~asyncipc.link.SelfHealingReceiver`; when nats-py gives up, the link is lost
  and the Bus ends with :class:`~asyncipc.Disconnected`, as a Bus does over ``unix://``.
  nats-py bounds attempts, not time: ``ConnectOptions.reconnect_time_limit`` is the
  link's own timer from the disconnect, which closes nats-py's client when it elapses.
* Messages are taken from nats-py's parser synchronously (``_Client._process_msg``, an
  override of a private method, stable across nats-py 2.x), not through a callback task
  per subscription: so a flush's PONG comes after every message the server sent before
  it, which ``Subscription.drain`` and ``Bus.close`` rely on, as over a socket.
* Frames from the Bus are executed in order by one writer task (nats-py's calls are
  coroutines; a SUB must reach the server before a PUB sent after it).
* ``$sys.`` subjects are answered by an asyncipc broker, and there is none on NATS:
  publishing to one raises :class:`~asyncipc.ConfigurationError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import re
import ssl as _ssl
from collections import deque
from typing import Any
from urllib.parse import urlsplit

from ..errors import (
    AuthenticationError,
    BrokenLinkError,
    BrokerError,
    ClosedError,
    ConfigurationError,
    ConnectError,
    Disconnected,
    FrameTooLarge,
    ProtocolError,
)
from ..link import Link, LinkReceiver, PeerInfo, SelfHealingReceiver
from ..protocol import (
    PONG,
    PROTOCOL_VERSION,
    Err,
    ErrorCode,
    Frame,
    Headers,
    Hello,
    Ping,
    Pub,
    Sub,
    Unsub,
    Welcome,
)
from ..protocol.system import (
    ERROR_HEADER,
    NO_RESPONDERS_STATUS,
    RESERVED_PREFIX,
    STATUS_HEADER,
    STREAM_MSG_ID_HEADER,
    STREAM_PREFIX,
)
from ..transports import URL, TransportOptions, register
from . import _natspy as natspy
from . import missing_extra
from .jetstream import (
    EXPECTED,
    JS_ACK,
    MSG_ID,
    JetStreamGateway,
    delivery_reply,
    message_headers,
)

try:
    from nats import errors as nats_errors
    from nats.aio.client import Client as _NatsClient
    from nats.aio.subscription import Subscription as _NatsSub
except ModuleNotFoundError as exc:  # a plain install: say which extra adds it
    raise missing_extra("nats://", "NATS adapter", "nats", exc) from exc

__all__ = ["NatsLink", "NatsTransport", "servers_of"]

log = logging.getLogger("asyncipc.nats")

DEFAULT_PORT = 4222
INBOX_LIMIT = 64 * 1024 * 1024
"""Bytes of messages the link keeps for a Bus that paused reading (a full ``block``
subscription); past it messages are dropped, as nats-py's own slow-consumer limit does:
a NATS server cannot be held back by one subscriber (docs/transports.md, NATS)."""
_OVERHEAD = 64
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""What nats-py accepts as a header name (it refuses others when sending)."""
# nats-py's status header ("NATS/1.0 503" becomes {"Status": "503"}).
_NATS_STATUS = "Status"


def servers_of(url: URL) -> list[str]:
    """The server URLs nats-py dials for ``url``: ``nats://h1:4222,h2:4222`` is two.

    User info written once (``nats://u:p@h1,h2``) goes to every server of the list."""
    parts = [part.strip() for part in urlsplit(url.raw).netloc.split(",") if part.strip()]
    userinfo = parts[0].rpartition("@")[0] + "@" if parts and "@" in parts[0] else ""
    servers = []
    for part in parts:
        if "@" in part:  # a server of the list with its own credentials
            auth, _, part = part.rpartition("@")
            auth += "@"
        else:
            auth = userinfo
        host, sep, port = part.rpartition(":")
        if not sep or not port.isdigit() or host.endswith(":"):
            host, port = part, str(DEFAULT_PORT)
        servers.append(f"nats://{auth}{host}:{port}")
    if not servers:
        raise ConfigurationError(f"{url.raw!r} names no NATS server")
    return servers


def _address(server: str) -> str:
    """A server URL without its user info: what events and logs may show."""
    scheme, _, rest = server.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"


def _tls_context(url: URL, given: _ssl.SSLContext | None) -> _ssl.SSLContext | None:
    """``ConnectOptions.ssl``, else one built from ``?tls=1``, ``?ca=``, ``?cert=&key=``."""
    if given is not None:
        return given
    q = url.query
    if not any(k in q for k in ("tls", "ca", "cert")):
        return None
    ctx = _ssl.create_default_context(cafile=q.get("ca"))
    if "cert" in q:
        ctx.load_cert_chain(q["cert"], q.get("key"))
    return ctx


def _check_readable(url: URL, *keys: str) -> None:
    """ConfigurationError unless each file the query names for ``keys`` can be read.

    nats-py reads ``?creds=`` and ``?nkey=`` only when the server asks for a signature:
    against a server without authentication a wrong path would pass unnoticed. (A few
    hundred bytes, read when connecting, as nats-py reads them: blocking is harmless.)"""
    for key in keys:
        if key in url.query:
            try:
                with open(url.query[key], "rb"):
                    pass
            except OSError as exc:
                raise ConfigurationError(
                    f"{url.raw}: cannot read the ?{key}= file: {exc}"
                ) from None


class _Client(_NatsClient):
    """nats-py's client, handing the messages of the link's subscriptions straight to it."""

    link: NatsLink | None = None

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes
    ) -> None:
        link = self.link
        ours = link._sids.get(sid) if link is not None else None
        if link is None or ours is None:
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        hdr: dict[str, str] | None = None
        if headers:
            hdr = await self._process_headers(headers)
        js = link._js
        if ours < 0:  # the JetStream gateway's own inbox
            if js is not None:
                js.reply(subject.decode(), data, hdr)
            return
        subj = subject.decode()
        rep = reply.decode() or None
        if hdr:
            if _NATS_STATUS in hdr:
                if js is not None and (
                    ours in js.pulls or hdr[_NATS_STATUS] != NO_RESPONDERS_STATUS
                ):
                    hdr = js.status(ours, subj, hdr)
                    if hdr is None:
                        return
                else:
                    hdr = _status_headers(hdr, data)
            elif MSG_ID in hdr or EXPECTED in hdr:
                message_headers(hdr)
        if rep is not None and js is not None and rep.startswith(JS_ACK):
            end = js.delivered(ours)
            link._incoming((ours, subj, data, delivery_reply(rep), hdr or None))
            if end is not None:
                link._incoming((ours, end[0], b"", None, end[1]))
            return
        link._incoming((ours, subj, data, rep, hdr or None))


def _status_headers(hdr: dict[str, str], data: bytes) -> dict[str, str]:
    """A NATS status message in asyncipc's terms: 503 "no responders" is the same."""
    status = hdr.pop(_NATS_STATUS)
    text = hdr.pop("Description", None)
    if status == NO_RESPONDERS_STATUS and not data:
        hdr[STATUS_HEADER] = NO_RESPONDERS_STATUS
    elif text:
        hdr[ERROR_HEADER] = f"NATS status {status}: {text}"
    return hdr


_Entry = Frame | tuple[int, str, bytes, "str | None", "Headers | None"]


class NatsLink(Link):
    """The Bus's frames, executed with nats-py. See the module docstring."""

    in_process = True  # no asyncipc keep-alive: nats-py pings the server itself

    def __init__(self, where: str, options: TransportOptions) -> None:
        self.transport = "nats"
        self.peer = PeerInfo("nats", where)
        self.max_frame = options.max_frame
        self._high_water = options.high_water
        self._low_water = options.high_water // 4
        self._loop = asyncio.get_running_loop()
        self.nc = _Client()
        self.nc.link = self
        self._receiver: LinkReceiver | None = None
        self._inbox: deque[_Entry] = deque()
        self._inbox_bytes = 0
        self._paused = False
        self.dropped = 0
        self._ops: deque[tuple[Any, ...]] = deque()
        self._ops_bytes = 0
        self._wake = asyncio.Event()
        self._unblocked = asyncio.Event()
        self._unblocked.set()
        self._up = asyncio.Event()
        self._up.set()
        self._sids: dict[int, int] = {}  # nats-py sid -> the Bus's sid (-1: the gateway's)
        self._subs: dict[int, _NatsSub] = {}  # the Bus's sid -> nats-py subscription
        self._subjects: dict[str, int] = {}  # subject -> the Bus's sid (no queue group)
        self._subject_of: dict[int, str] = {}
        self._js: JetStreamGateway | None = None  # made by the first $sys.stream. request
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._lost = False
        self._exc: BaseException | None = None
        self._closed_fut: asyncio.Future[None] = self._loop.create_future()
        self._writer: asyncio.Task[None] | None = None
        limit = getattr(options.connect_options, "reconnect_time_limit", None)
        self._time_limit: float | None = None if limit is None else float(limit)
        self._give_up: asyncio.Task[None] | None = None  # the reconnect_time_limit timer
        self._gave_up: Disconnected | None = None

    def start(self) -> None:
        self._writer = self._loop.create_task(self._write_loop(), name="asyncipc nats writer")

    # --- from the Bus -------------------------------------------------------------------

    def set_receiver(self, receiver: LinkReceiver) -> None:
        self._receiver = receiver
        self._deliver_inbox()

    def send(self, frame: Frame) -> None:
        self._check()
        kind = type(frame)
        if kind is Pub:
            assert isinstance(frame, Pub)
            self.publish(frame.subject, frame.data, frame.reply, frame.headers)
        elif kind is Hello:
            nc = self.nc
            self._incoming(
                Welcome(
                    {
                        "version": PROTOCOL_VERSION,
                        "server": "nats",
                        "server_id": nc._server_info.get("server_id", ""),
                        "server_version": nc._server_info.get("version", ""),
                        "max_frame": int(nc.max_payload),
                    }
                )
            )
        elif kind is Sub:
            assert isinstance(frame, Sub)
            if not frame.queue:
                self._subjects[frame.subject] = frame.sid
                self._subject_of[frame.sid] = frame.subject
            self._queue(("sub", frame.sid, frame.subject, frame.queue), _OVERHEAD)
        elif kind is Unsub:
            assert isinstance(frame, Unsub)
            subject = self._subject_of.pop(frame.sid, None)
            if subject is not None and self._subjects.get(subject) == frame.sid:
                del self._subjects[subject]
            self._queue(("unsub", frame.sid), _OVERHEAD)
        elif kind is Ping:
            self._queue(("ping",), _OVERHEAD)
        # Anything else (a PONG to a broker's PING, ...) has no meaning on NATS.

    def publish(
        self, subject: str, data: bytes, reply: str | None, headers: Headers | None
    ) -> None:
        self._check()
        if subject.startswith(RESERVED_PREFIX):
            if subject.startswith(STREAM_PREFIX):
                self.jetstream().publish(subject, data, reply, headers)
                return
            raise ConfigurationError(
                f"{subject!r}: $sys. subjects are answered by an asyncipc broker, and there "
                "is none on nats:// (streams are, by JetStream; signals and the broker's "
                "own requests are not: docs/transports.md, NATS)"
            )
        size = len(data)
        if headers:
            if STREAM_MSG_ID_HEADER in headers:  # JetStream's name for it (deduplication)
                headers = dict(headers)
                headers[MSG_ID] = headers.pop(STREAM_MSG_ID_HEADER)
            for key, value in headers.items():
                if not _HEADER_NAME.fullmatch(key):
                    raise ConfigurationError(
                        f"header name {key!r} cannot travel on NATS (an HTTP token: letters, "
                        "digits and !#$%&'*+-.^_`|~)"
                    )
                size += len(key) + len(value) + 4
        if size + 12 > self.nc.max_payload:  # 12: "NATS/1.0\r\n\r\n"
            raise FrameTooLarge(
                f"message of {size} bytes with its headers exceeds the NATS server's "
                f"max_payload of {self.nc.max_payload} bytes"
            )
        self._queue(("pub", subject, data, reply, headers), size + _OVERHEAD)

    def jetstream(self) -> JetStreamGateway:
        """The gateway that answers ``$sys.stream.`` requests with JetStream."""
        if self._js is None:
            self._js = JetStreamGateway(
                self.nc, self._send_raw, self._deliver_local, self._subscribe_own, self.sid_for
            )
        return self._js

    def _send_raw(
        self, subject: str, data: bytes, reply: str | None, headers: Headers | None
    ) -> None:
        """Queue a publish as given, in order with the Bus's frames (the gateway's)."""
        self._check()
        size = len(data) + sum(len(k) + len(v) + 4 for k, v in (headers or {}).items())
        self._queue(("pub", subject, data, reply, headers), size + _OVERHEAD)

    def _subscribe_own(self, subject: str) -> None:
        self._queue(("sub", -1, subject, None), _OVERHEAD)

    def sid_for(self, subject: str) -> int | None:
        """The Bus subscription (no queue group) that ``subject`` is delivered to: one on
        the subject itself, or on its parent with ``*`` or ``>`` (an inbox)."""
        subjects = self._subjects
        sid = subjects.get(subject)
        if sid is None:
            head = subject[: subject.rfind(".") + 1]
            sid = subjects.get(head + "*")
            if sid is None:
                sid = subjects.get(head + ">")
        return sid

    def _deliver_local(self, subject: str, data: bytes, headers: Headers | None) -> None:
        """A message for the Bus from the gateway: straight to its subscription, else
        through the server (a reply subject that is not ours)."""
        sid = self.sid_for(subject)
        if sid is not None:
            self._incoming((sid, subject, data, None, headers))
        elif not self._lost and not self._closing:
            self._send_raw(subject, data, None, headers)

    def _check(self) -> None:
        if self._closing or self._lost:
            if self._closing and not isinstance(self._exc, BrokenLinkError):
                raise ClosedError("nats link is closed")
            raise BrokenLinkError(f"nats connection is gone: {self._exc}")

    def _queue(self, op: tuple[Any, ...], size: int) -> None:
        self._ops.append((size, op))
        self._ops_bytes += size
        if self._ops_bytes > self._high_water:
            self.write_blocked = True
            self._unblocked.clear()
        self._wake.set()

    @property
    def buffered(self) -> int:
        return self._ops_bytes

    async def drain(self) -> None:
        while self.write_blocked:
            self._check()
            await self._unblocked.wait()

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            self._deliver_inbox()

    @property
    def closed(self) -> bool:
        return self._closing or self._lost

    def close(self) -> None:
        if self._closing or self._lost:
            return
        self._closing = True
        self._exc = ClosedError("nats link is closed")
        self._ops.append((0, ("close",)))
        self._wake.set()

    def abort(self) -> None:
        if self._lost:
            return
        self._closing = True
        self._exc = ClosedError("nats link was aborted")
        self._ops.clear()
        if self._writer is not None:
            self._writer.cancel()
        self._spawn(self._close_nats(flush=False))

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed_fut)

    # --- doing it with nats-py ----------------------------------------------------------

    async def _write_loop(self) -> None:
        ops = self._ops
        try:
            while True:
                while not ops:
                    self._wake.clear()
                    await self._wake.wait()
                size, op = ops.popleft()
                what = op[0]
                if what == "pub":
                    await self._publish(*op[1:])
                elif what == "sub":
                    await self._subscribe(*op[1:])
                elif what == "unsub":
                    await self._unsubscribe(op[1])
                elif what == "ping":
                    self._spawn(self._flush_then_pong())
                else:  # close: everything before it was handed to nats-py
                    await self._close_nats(flush=True)
                    return
                self._ops_bytes -= size
                if self.write_blocked and self._ops_bytes <= self._low_water:
                    self.write_blocked = False
                    self._unblocked.set()
                    if self._receiver is not None:
                        self._receiver.writing_resumed()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("nats link failed: %r", exc)
            self._finish(BrokenLinkError(f"nats connection failed: {exc!r}"))

    async def _publish(
        self, subject: str, data: bytes, reply: str | None, headers: Headers | None
    ) -> None:
        while True:
            try:
                await self.nc.publish(subject, data, reply or "", headers)
                return
            except nats_errors.OutboundBufferLimitError:
                # Reconnecting and nats-py's buffer is full: wait for the server (the
                # ``block`` principle; the publisher waits in Link.drain meanwhile).
                self._up.clear()
                if not self.nc.is_connected and not self.nc.is_closed:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.1):
                            await self._up.wait()
                if self.nc.is_closed:
                    raise
            except (
                nats_errors.BadHeaderError,
                nats_errors.MaxPayloadError,
                nats_errors.BadSubjectError,
            ) as exc:
                log.warning("nats: message on %r not sent: %r", subject, exc)
                return

    async def _subscribe(self, sid: int, subject: str, queue: str | None) -> None:
        nc = self.nc
        # Register the sid nats-py is about to use before the SUB can reach the server:
        # a message may come back before subscribe() returns.
        expected = nc._sid + 1
        self._sids[expected] = sid
        try:
            sub = await nc.subscribe(subject, queue=queue or "")
        except (nats_errors.BadSubjectError, nats_errors.BadSubscriptionError) as exc:
            # asyncipc validated it; should NATS still refuse, the subscription ends with
            # InvalidSubject, as a broker's refusal would, and the link goes on.
            self._sids.pop(expected, None)
            self._incoming(Err(ErrorCode.INVALID_SUBJECT, f"NATS refused {subject!r}: {exc}", sid))
            return
        if sub._id != expected:
            self._sids.pop(expected, None)
            self._sids[sub._id] = sid
        self._subs[sid] = sub

    async def _unsubscribe(self, sid: int) -> None:
        sub = self._subs.pop(sid, None)
        if sub is None:
            return
        await sub.unsubscribe()
        # What the server sent before it saw the UNSUB still reaches the Bus (which drops
        # it, or delivers it to a draining subscription): forget the sid after a round trip.
        self._spawn(self._forget_after_flush(sub._id))

    async def _forget_after_flush(self, nats_sid: int) -> None:
        try:
            await self._round_trip()
        finally:
            self._sids.pop(nats_sid, None)

    async def _round_trip(self) -> bool:
        """A PING/PONG with the server (waiting through a reconnect); False if closed."""
        nc = self.nc
        while not nc.is_closed:
            if not nc.is_connected:
                # Reconnecting: nats-py's flush would only write its buffer and return,
                # and a PONG then would promise what the server has not seen.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.1):
                        await self._up.wait()
                continue
            try:
                await natspy.flush(nc, timeout=5)  # after the SUBs nats-py still holds
                return True
            except (nats_errors.FlushTimeoutError, nats_errors.ConnectionReconnectingError):
                continue
            except nats_errors.ConnectionClosedError:
                return False
            except nats_errors.Error:
                await asyncio.sleep(0.05)
        return False

    async def _flush_then_pong(self) -> None:
        if await self._round_trip() and not self._lost:
            self._incoming(PONG)

    async def _close_nats(self, flush: bool) -> None:
        nc = self.nc
        try:
            if flush and nc.is_connected:
                with contextlib.suppress(nats_errors.Error, TimeoutError, OSError):
                    await natspy.flush(nc, timeout=2)
            if not nc.is_closed:
                with contextlib.suppress(nats_errors.Error, OSError):
                    await nc.close()
        finally:
            self._finish(None)

    def _spawn(self, coro: Any) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- to the Bus ---------------------------------------------------------------------

    def _incoming(self, entry: _Entry) -> None:
        if self._lost:
            return
        receiver = self._receiver
        if receiver is not None and not self._paused and not self._inbox:
            if type(entry) is tuple:
                receiver.msg_received(*entry)
            else:
                receiver.frame_received(entry)  # type: ignore[arg-type]
            return
        size = len(entry[2]) + _OVERHEAD if type(entry) is tuple else _OVERHEAD
        if type(entry) is tuple and self._inbox_bytes + size > INBOX_LIMIT:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("nats: slow consumer, %d messages dropped so far", self.dropped)
            return
        self._inbox.append(entry)
        self._inbox_bytes += size

    def _deliver_inbox(self) -> None:
        receiver = self._receiver
        inbox = self._inbox
        while inbox and not self._paused and receiver is not None and not self._lost:
            entry = inbox.popleft()
            if type(entry) is tuple:
                self._inbox_bytes -= len(entry[2]) + _OVERHEAD
                receiver.msg_received(*entry)
            else:
                self._inbox_bytes -= _OVERHEAD
                receiver.frame_received(entry)  # type: ignore[arg-type]
        if not inbox:
            self._inbox_bytes = 0

    def _finish(self, exc: BaseException | None) -> None:
        """The link is gone: ``exc`` None for our own close."""
        if self._lost:
            return
        self._lost = True
        if exc is not None:
            self._exc = exc
        self.write_blocked = False
        self._unblocked.set()
        self._inbox.clear()
        if self._js is not None:
            self._js.close()
        if self._writer is not None and self._writer is not asyncio.current_task():
            self._writer.cancel()
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        if not self._closed_fut.done():
            self._closed_fut.set_result(None)
        if self._receiver is not None:
            self._receiver.link_lost(exc)

    # --- nats-py's callbacks ------------------------------------------------------------

    def _healing(self) -> SelfHealingReceiver | None:
        r = self._receiver
        return r if isinstance(r, SelfHealingReceiver) else None

    async def _on_disconnected(self) -> None:
        if self._closing or self._lost:
            return
        self._up.clear()
        if self._js is not None:
            self._js.link_down()
        if self._time_limit is not None and self._give_up is None and not self.nc.is_closed:
            self._give_up = self._loop.create_task(
                self._give_up_after(self._time_limit), name="asyncipc nats time limit"
            )
            self._tasks.add(self._give_up)  # cancelled by _finish with the others
            self._give_up.add_done_callback(self._tasks.discard)
        r = self._healing()
        if r is not None:
            where = self.peer.address
            r.link_interrupted(BrokenLinkError(f"lost the NATS server at {where}"), where)

    async def _give_up_after(self, limit: float) -> None:
        """``ConnectOptions.reconnect_time_limit``, which nats-py has not (it counts
        attempts only): no server ``limit`` seconds after the disconnect, close nats-py's
        client, and the link is lost with Disconnected, as when nats-py gives up."""
        lost = self.peer.address
        await asyncio.sleep(limit)
        if self.nc.is_connected or self._closing or self._lost:
            return
        self._gave_up = Disconnected(
            f"gave up reconnecting to {lost}: no NATS server within reconnect_time_limit "
            f"({limit:g} s); last error: {self.nc.last_error!r}"
        )
        log.warning("%s", self._gave_up)
        try:
            if not self.nc.is_closed:
                with contextlib.suppress(nats_errors.Error, OSError):
                    await self.nc.close()  # stops its reconnecting; calls _on_closed
        finally:
            self._finish(self._gave_up)

    async def _on_reconnected(self) -> None:
        self._up.set()
        if self._give_up is not None:
            self._give_up.cancel()
            self._give_up = None
        where = self.nc.connected_url
        if where is not None:
            self.peer = PeerInfo("nats", _address(where.geturl()))
        r = self._healing()
        if r is not None and not self._lost:
            r.link_resumed(self.peer.address)

    async def _on_closed(self) -> None:
        if self._closing:
            return
        self._finish(
            self._gave_up or Disconnected(f"nats-py gave up reconnecting: {self.nc.last_error!r}")
        )

    async def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, nats_errors.SlowConsumerError):
            return  # not ours: our subscriptions never queue in nats-py
        quiet = (
            OSError,
            TimeoutError,
            nats_errors.StaleConnectionError,
            nats_errors.ConnectionClosedError,
            nats_errors.NoServersError,
        )
        log.debug("nats: %r", exc)
        r = self._healing()
        if r is not None and not isinstance(exc, quiet) and not self._lost:
            text = str(exc).removeprefix("nats: ")
            code = ErrorCode.PERMISSION if "permission" in text.lower() else ErrorCode.PROTOCOL
            r.link_error(BrokerError(code, f"NATS server: {text}"))


class NatsTransport:
    """The ``nats`` scheme: a client only (NATS servers are nats-server's to run)."""

    async def connect(self, url: URL, options: TransportOptions) -> Link:
        co = options.connect_options
        servers = servers_of(url)
        q = url.query
        kwargs: dict[str, Any] = {
            "servers": servers,
            "connect_timeout": max(0.1, options.connect_timeout),
            "name": q.get("name") or getattr(co, "name", "") or None,
            "allow_reconnect": bool(getattr(co, "reconnect", True)),
            "reconnect_time_wait": float(getattr(co, "reconnect_max_delay", 0.25)),
            "pending_size": int(getattr(co, "reconnect_buffer", 8 * 1024 * 1024)),
            "dont_randomize": "randomize" not in q,
        }
        attempts = getattr(co, "max_reconnect_attempts", None)
        kwargs["max_reconnect_attempts"] = -1 if attempts is None else attempts
        ping = float(getattr(co, "ping_interval", 20.0))
        if ping > 0:
            kwargs["ping_interval"] = max(1, round(ping))
            kwargs["max_outstanding_pings"] = max(1, int(getattr(co, "dead_peer_factor", 3)))
        token = options.token or q.get("token")
        if token:
            kwargs["token"] = token
        if "user" in q:
            kwargs["user"] = q["user"]
            kwargs["password"] = q.get("password", "")
        if ("creds" in q or "nkey" in q) and importlib.util.find_spec("nkeys") is None:
            raise ConfigurationError(
                f"{url.raw}: NATS credentials and nkeys need the nkeys package: "
                "pip install 'nats-py[nkeys]'"
            )
        _check_readable(url, "creds", "nkey")
        if "creds" in q:
            kwargs["user_credentials"] = q["creds"]
        if "nkey" in q:
            kwargs["nkeys_seed"] = q["nkey"]
        try:
            tls = _tls_context(url, options.ssl)
        except (OSError, _ssl.SSLError) as exc:
            raise ConfigurationError(f"{url.raw}: cannot load TLS files: {exc}") from None
        if tls is not None:
            kwargs["tls"] = tls
            if "tls_hostname" in q:
                kwargs["tls_hostname"] = q["tls_hostname"]
        link = NatsLink(",".join(_address(s) for s in servers), options)
        first_error: list[Exception] = []

        async def on_error(exc: Exception) -> None:
            if not first_error:
                first_error.append(exc)
            await link._on_error(exc)

        # The first connection tries each server of the list (twice: nats-py's smallest
        # bound), never forever as nats-py's reconnecting does: a cluster that is not
        # there at start is the caller's to handle, as with any asyncipc URL. Once
        # connected, nats-py reconnects as ConnectOptions say.
        reconnecting = (kwargs["allow_reconnect"], kwargs["max_reconnect_attempts"])
        kwargs["allow_reconnect"], kwargs["max_reconnect_attempts"] = False, 1
        guard = (options.connect_timeout + 0.5) * 2 * len(servers)
        try:
            async with asyncio.timeout(guard):
                await link.nc.connect(
                    **kwargs,
                    error_cb=on_error,
                    disconnected_cb=link._on_disconnected,
                    reconnected_cb=link._on_reconnected,
                    closed_cb=link._on_closed,
                )
        except nats_errors.AuthorizationError as exc:
            raise AuthenticationError(f"{url.raw}: the NATS server refused us: {exc}") from None
        except (nats_errors.NoServersError, OSError, TimeoutError, nats_errors.Error) as exc:
            cause: Exception = first_error[0] if first_error else exc
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1):  # after a failed TLS handshake it can hang
                    await link.nc.close()
            transport = getattr(link.nc, "_transport", None)
            if transport is not None:  # what nats-py's close may have left open
                with contextlib.suppress(Exception):
                    transport.close()
            if (
                isinstance(cause, nats_errors.AuthorizationError)
                or "authorization" in str(cause).lower()
            ):
                raise AuthenticationError(
                    f"{url.raw}: the NATS server refused us: {cause}"
                ) from None
            if isinstance(cause, _ssl.SSLError):
                raise ConnectError(f"{url.raw}: TLS with the NATS server failed: {cause}") from None
            if isinstance(cause, (nats_errors.ProtocolError, ValueError, KeyError)):
                raise ProtocolError(
                    f"{url.raw}: not a NATS server (its greeting did not parse): {cause!r}"
                ) from None
            if "INFO" in str(cause):  # something answered, and not with NATS's greeting
                raise ConnectError(
                    f"{', '.join(servers)}: not a NATS server (no INFO greeting): {cause}"
                ) from None
            raise ConnectError(
                f"cannot connect to a NATS server at {', '.join(servers)}: {cause!r}"
            ) from None
        link.nc.options["allow_reconnect"], link.nc.options["max_reconnect_attempts"] = reconnecting
        where = link.nc.connected_url
        if where is not None:
            link.peer = PeerInfo("nats", _address(where.geturl()))
            link.reached = link.peer.address
        link.start()
        return link

    async def listen(self, url: URL, accept: Any, options: TransportOptions) -> Any:
        raise ConfigurationError(
            "nats:// is a client transport: run nats-server for NATS, or an asyncipc broker "
            "on another URL (docs/transports.md, NATS)"
        )


register("nats", NatsTransport())
