"""Streams as a client sees them: :class:`Stream`, :class:`Consumer`, :class:`StreamMessage`.

Every call is a request on ``$sys.stream.`` (``docs/streams.md``), so a stream works the
same over every transport that reaches a broker, and from any language that speaks the
wire protocol. Get one with ``await bus.stream(name, subjects=[...])``.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any, Protocol

from ..errors import (
    AsyncIPCError,
    ClosedError,
    ConfigurationError,
    ConsumerNotFound,
    Disconnected,
    RequestTimeout,
    StreamError,
    StreamNotFound,
)
from ..message import Message
from ..protocol.system import (
    ERROR_HEADER,
    REASON_HEADER,
    STATUS_HEADER,
    STREAM_MSG_ID_HEADER,
    STREAM_PREFIX,
)
from ..subjects import validate_subject
from ..subscription import Subscription
from .config import ConsumerConfig, ConsumerInfo, PubAck, StreamConfig, StreamInfo, check_name

__all__ = [
    "ACK_BODIES",
    "Consumer",
    "Stream",
    "StreamBus",
    "StreamMessage",
    "list_streams",
    "open_stream",
    "stream_failure",
]

ACK_PREFIX = STREAM_PREFIX + "ack."
ACK_BODIES = {"ack": b"+ACK", "nak": b"-NAK", "term": b"+TERM", "in_progress": b"+WPI"}
"""What each kind of acknowledgement sends (``docs/streams.md``, "On the wire")."""
API_TIMEOUT = 5.0
"""Seconds a stream request (create, info, ...) waits for the broker by default."""
MAX_PENDING_ACKS = 10_000
"""``publish_async`` acknowledgements outstanding at most, per stream handle."""


class StreamBus(Protocol):
    """What streams need of a bus: :class:`~asyncipc.Bus` is one."""

    async def publish(
        self,
        subject: str,
        data: bytes = b"",
        headers: dict[str, str] | None = None,
        reply_to: str | None = None,
    ) -> None: ...

    async def request(
        self,
        subject: str,
        data: bytes = b"",
        *,
        headers: dict[str, str] | None = None,
        timeout: float = 1.0,
    ) -> Message: ...

    def subscribe(
        self,
        subject: str,
        queue: str | None = None,
        *,
        max_pending: int = ...,
        max_bytes: int = ...,
        overflow: str = "block",
    ) -> Subscription: ...


def stream_failure(headers: dict[str, str] | None, what: str = "request") -> StreamError | None:
    """The :class:`~asyncipc.StreamError` a broker's status reply stands for (a refusal of
    a ``$sys.stream.`` request), or ``None`` for an answer."""
    status = headers.get(STATUS_HEADER) if headers else None
    if status is None:
        return None
    assert headers is not None
    reason = headers.get(REASON_HEADER, "error")
    text = headers.get(ERROR_HEADER, f"{what} failed with status {status}")
    if reason == "stream-not-found":
        return StreamNotFound(text)
    if reason == "consumer-not-found":
        return ConsumerNotFound(text)
    return StreamError(reason, text)


async def _call(
    bus: StreamBus, subject: str, body: Any = None, timeout: float = API_TIMEOUT
) -> Any:
    data = b"" if body is None else json.dumps(body).encode()
    try:
        reply = await bus.request(subject, data, timeout=timeout)
    except RequestTimeout:
        raise RequestTimeout(f"the broker did not answer {subject} within {timeout:g} s") from None
    failure = stream_failure(reply.headers, subject)
    if failure is not None:
        raise failure
    return json.loads(reply.data)


async def open_stream(
    bus: StreamBus,
    name: str,
    subjects: list[str] | tuple[str, ...] | str | None,
    config: dict[str, Any],
) -> Stream:
    """``bus.stream(...)``: the stream ``name``, created with ``config`` if it does not exist.

    With no subjects and no options it only looks the stream up
    (:class:`~asyncipc.StreamNotFound` if missing). A stream that exists with other values
    for the options given raises :class:`~asyncipc.StreamError` (``reason="exists"``).
    """
    check_name("stream", name)
    known = {f.name for f in fields(StreamConfig)}
    unknown = set(config) - known
    if unknown:
        raise ConfigurationError(f"unknown stream option(s): {', '.join(sorted(unknown))}")
    body: dict[str, Any] = dict(config)
    if subjects is not None:
        body["subjects"] = [subjects] if isinstance(subjects, str) else list(subjects)
    if body:
        StreamConfig(
            name=name, **{**body, "subjects": tuple(body.get("subjects", ()))}
        )  # check here
    info = StreamInfo.from_json(await _call(bus, f"{STREAM_PREFIX}create.{name}", body))
    return Stream(bus, info)


async def list_streams(bus: StreamBus, timeout: float = API_TIMEOUT) -> list[StreamInfo]:
    """Every stream on the broker (``bus.streams()``)."""
    body = await _call(bus, f"{STREAM_PREFIX}list", None, timeout)
    return [StreamInfo.from_json(s) for s in body["streams"]]


class StreamMessage(Message):
    """A message delivered by a :class:`Consumer`: acknowledge it when it is handled.

    Attributes (besides :class:`~asyncipc.Message`'s): ``stream``, ``consumer``, ``seq``
    (its sequence in the stream), ``num_delivered`` (1 the first time), ``time`` (when it
    was stored, a UTC datetime).
    """

    __slots__ = (
        "_acked",
        "_batched",
        "_handle",
        "_stream_bus",
        "_time_ns",
        "consumer",
        "num_delivered",
        "seq",
        "stream",
    )

    def __init__(self, msg: Message, bus: StreamBus, handle: Consumer | None = None) -> None:
        super().__init__(msg.subject, msg.data, msg.headers, msg.reply_to, bus)
        self._handle = handle  # the Consumer that fetched it: acks go out in batches
        self._stream_bus = bus  # the whole StreamBus: settle() makes a request
        reply = msg.reply_to or ""
        parts = reply[len(ACK_PREFIX) :].split(".")
        if not reply.startswith(ACK_PREFIX) or len(parts) < 5:
            raise AsyncIPCError(f"not a stream delivery: reply subject {reply!r}")
        self.stream, self.consumer = parts[0], parts[1]
        self.seq = int(parts[2])
        self.num_delivered = int(parts[3])
        self._time_ns = int(parts[4])
        self._acked = False
        # Tokens after the fifth are the server's own (nats:// adds JetStream's): such a
        # message is acknowledged on its own subject, not in a handle's batch by sequence.
        self._batched = handle is not None and len(parts) == 5

    @classmethod
    def from_token(cls, bus: StreamBus, token: str) -> StreamMessage:
        """The delivered message an ack token stands for (its reply subject, as the REST
        and gRPC adapters hand it out), to acknowledge it from elsewhere. Its data is
        empty. :class:`~asyncipc.ConfigurationError` unless ``token`` is one."""
        try:
            validate_subject(token)
            return cls(Message(token, b"", None, token), bus)
        except (AsyncIPCError, ValueError):
            raise ConfigurationError(
                f"{token[:200]!r} is not an ack token (the reply subject of a stream delivery)"
            ) from None

    async def settle(
        self, kind: str, *, delay: float | None = None, timeout: float = API_TIMEOUT
    ) -> None:
        """Acknowledge as ``kind`` (``"ack"``, ``"nak"``, ``"term"``, ``"in_progress"``)
        and wait until the broker has recorded it: a :class:`~asyncipc.StreamError`
        (``not-pending``) if the message was not awaiting one any more."""
        body = ACK_BODIES.get(kind)
        if body is None:
            raise ConfigurationError(f"kind must be one of {', '.join(ACK_BODIES)}, not {kind!r}")
        if delay:
            if kind != "nak":
                raise ConfigurationError("delay goes with kind 'nak' only")
            body += b" " + json.dumps({"delay": delay}).encode()
        if self._acked:
            raise StreamError("already-acked", f"message {self.seq} was already acknowledged")
        assert self.reply_to is not None
        if kind != "in_progress":
            self._acked = True
        reply = await self._stream_bus.request(self.reply_to, body, timeout=timeout)
        failure = stream_failure(reply.headers, kind)
        if failure is not None:
            raise failure

    @property
    def time_ns(self) -> int:
        """When it was stored, in nanoseconds since the epoch."""
        return self._time_ns

    @property
    def time(self) -> datetime:

        return datetime.fromtimestamp(self._time_ns / 1e9, tz=UTC)

    async def _send(self, body: bytes, final: bool) -> None:
        if self._acked:
            raise StreamError(
                "already-acked", f"message {self.seq} of {self.stream} was already acknowledged"
            )
        if self._bus is None or self.reply_to is None:
            raise AsyncIPCError("message is not attached to a bus")
        if final:
            self._acked = True
        await self._bus.publish(self.reply_to, body)

    async def ack(self) -> None:
        """Handled: it will not be delivered again. Not confirmed (see :meth:`ack_sync`):
        the acknowledgements of one consumer handle leave together, once per turn of the
        event loop, and always before its next fetch."""
        handle = self._handle
        if handle is None or not self._batched:
            await self._send(b"+ACK", True)
            return
        if self._acked:
            raise StreamError(
                "already-acked", f"message {self.seq} of {self.stream} was already acknowledged"
            )
        self._acked = True
        handle._queue_ack(self.seq)

    async def ack_sync(self, timeout: float = API_TIMEOUT) -> None:
        """Like :meth:`ack`, and wait until the broker has recorded it (saved, for a
        durable consumer): a crash of the broker after this returns cannot redeliver it."""
        await self.settle("ack", timeout=timeout)

    async def nak(self, delay: float | None = None) -> None:
        """Not handled: deliver it again, after ``delay`` seconds if given."""
        body = b"-NAK" if not delay else b"-NAK " + json.dumps({"delay": delay}).encode()
        await self._send(body, True)

    async def term(self) -> None:
        """Never deliver it again; it goes to the consumer's dead letter subject if any."""
        await self._send(b"+TERM", True)

    async def in_progress(self) -> None:
        """Still working on it: restart its ``ack_wait``."""
        await self._send(b"+WPI", False)

    def __repr__(self) -> str:
        return (
            f"StreamMessage({self.stream}#{self.seq} {self.subject!r}, "
            f"delivered {self.num_delivered})"
        )


class Stream:
    """A handle on a stream of the broker: publish with acknowledgement, consumers, info.

    Cheap to hold; several handles (in several processes) may name the same stream.
    """

    def __init__(self, bus: StreamBus, info: StreamInfo) -> None:
        self._bus = bus
        self.name = info.name
        self.config = info.config
        self._pub_prefix = f"{STREAM_PREFIX}pub.{self.name}."
        # publish_async: acknowledged in batches, one message per sync (docs/streams.md).
        self._apub_prefix = f"{STREAM_PREFIX}apub.{self.name}."
        self._ack_head = b'{"stream":"%s","seq":' % self.name.encode()
        self._inbox = f"_INBOX.{os.urandom(10).hex()}."
        self._acks_sub: Subscription | None = None
        self._reader: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._waiting: OrderedDict[str, tuple[asyncio.Future[PubAck], float]] = OrderedDict()
        self._outbox: list[tuple[str, bytes, dict[str, str] | None, str]] = []
        self._writer: asyncio.Task[None] | None = None
        self._next = 0
        self._ack_timeout = API_TIMEOUT
        self._reaper: asyncio.TimerHandle | None = None

    @classmethod
    def named(cls, bus: StreamBus, name: str) -> Stream:
        """A handle on stream ``name`` without asking the broker: every call on it names
        the stream, and one that does not exist answers with
        :class:`~asyncipc.StreamNotFound`. Its ``config`` is only the name."""
        check_name("stream", name)
        return cls(bus, StreamInfo(StreamConfig(name=name), "", 0, 0, 0, 0, 0, 0, 0, 0))

    def __repr__(self) -> str:
        return f"Stream({self.name!r}, subjects={list(self.config.subjects)})"

    # --- publishing -----------------------------------------------------------------------

    def _headers(self, headers: dict[str, str] | None, msg_id: str | None) -> dict[str, str] | None:
        if msg_id is None:
            return headers or None
        out = dict(headers) if headers else {}
        out[STREAM_MSG_ID_HEADER] = msg_id
        return out

    async def publish(
        self,
        subject: str,
        data: bytes = b"",
        *,
        headers: dict[str, str] | None = None,
        msg_id: str | None = None,
        timeout: float = API_TIMEOUT,
    ) -> PubAck:
        """Store ``data`` on ``subject`` and return the stream's acknowledgement, which
        comes once the record is durable under the stream's ``fsync`` policy. Raises
        :class:`~asyncipc.StreamError` when the stream refuses it (a limit with
        ``discard="new"``, a subject it does not capture) and
        :class:`~asyncipc.RequestTimeout` if no acknowledgement comes in ``timeout``: then
        the message may or may not be stored (publish again with the same ``msg_id``)."""
        sent = self._headers(headers, msg_id)
        target = self._pub_prefix + validate_subject(subject)
        try:
            reply = await self._bus.request(target, data, headers=sent, timeout=timeout)
        except RequestTimeout:
            raise RequestTimeout(
                f"no acknowledgement from stream {self.name} within {timeout:g} s "
                "(the message may be stored: publish it again with the same msg_id)"
            ) from None
        return self._ack_of(reply)

    def _ack_of(self, reply: Message) -> PubAck:
        if reply.headers:
            failure = stream_failure(reply.headers, f"publish to {self.name}")
            if failure is not None:
                raise failure
        data = reply.data
        if data.startswith(self._ack_head) and data.endswith(b"}"):
            # The broker's own shape (manager.ack_body): read without the JSON parser.
            seq, dup = data[len(self._ack_head) : -1], False
            if seq.endswith(b',"duplicate":true'):
                seq, dup = seq[:-17], True
            if seq.isdigit():
                return PubAck(self.name, int(seq), dup)
        body = json.loads(data)
        return PubAck(body["stream"], body["seq"], bool(body.get("duplicate", False)))

    def publish_async(
        self,
        subject: str,
        data: bytes = b"",
        *,
        headers: dict[str, str] | None = None,
        msg_id: str | None = None,
    ) -> asyncio.Future[PubAck]:
        """Send at once and return a future for the acknowledgement: keep many in flight
        and the broker shares its fsyncs between them. The future fails like
        :meth:`publish` would. At most ``MAX_PENDING_ACKS`` (10,000) may be outstanding
        per handle: past that it raises :class:`~asyncipc.StreamError` (``too-many-pending``);
        await :meth:`publish_async_complete` to make room."""
        if len(self._waiting) >= MAX_PENDING_ACKS:
            raise StreamError(
                "too-many-pending",
                f"{len(self._waiting)} acknowledgements from {self.name} outstanding: "
                "await publish_async_complete() first",
            )
        sent = self._headers(headers, msg_id)
        target = self._apub_prefix + validate_subject(subject)
        loop = asyncio.get_running_loop()
        if self._acks_sub is None:
            self._acks_sub = self._bus.subscribe(
                self._inbox + "*", max_pending=1 << 20, max_bytes=1 << 30
            )
            self._reader = loop.create_task(self._read_acks(self._acks_sub))
            self._watcher = loop.create_task(self._watch())
        self._next += 1
        token = f"{self._next:x}"
        fut: asyncio.Future[PubAck] = loop.create_future()
        self._waiting[token] = (fut, loop.time() + self._ack_timeout)
        self._outbox.append((target, data, sent, self._inbox + token))
        if self._writer is None:
            self._writer = loop.create_task(self._write())
        if self._reaper is None:
            self._reaper = loop.call_later(self._ack_timeout, self._reap)
        return fut

    async def _write(self) -> None:
        publish = self._bus.publish
        try:
            while self._outbox:
                batch, self._outbox = self._outbox, []
                for i, (subject, data, headers, reply) in enumerate(batch):
                    try:
                        await publish(subject, data, headers, reply)
                    except Exception as exc:
                        for _, _, _, r in batch[i:]:
                            self._fail(r, exc)
                        break
        finally:
            self._writer = None

    def _fail(self, reply: str, exc: BaseException) -> None:
        entry = self._waiting.pop(reply[len(self._inbox) :], None)
        if entry is not None and not entry[0].done():
            entry[0].set_exception(exc)

    async def _read_acks(self, sub: Subscription) -> None:
        waiting = self._waiting
        cut = len(self._inbox)
        batch_subject = self._inbox + "acks"
        name = self.name
        try:
            async for reply in sub:
                if reply.subject == batch_subject and not reply.headers:
                    for line in reply.data.split(b"\n"):
                        token, _, rest = line.partition(b" ")
                        seq, _, dup = rest.partition(b" ")
                        if not seq.isdigit():
                            continue  # not the broker's line: that publish's time-out tells
                        entry = waiting.pop(token.decode("ascii", "replace"), None)
                        if entry is not None and not entry[0].done():
                            entry[0].set_result(PubAck(name, int(seq), dup == b"d"))
                    continue
                entry = waiting.pop(reply.subject[cut:], None)
                if entry is None or entry[0].done():
                    continue
                try:
                    entry[0].set_result(self._ack_of(reply))
                except Exception as exc:
                    entry[0].set_exception(exc)
        except Exception as exc:  # the bus is gone: nobody will answer the rest
            self._fail_all(exc)
        else:
            self._fail_all(ClosedError(f"the bus of stream handle {self.name} closed"))

    async def _watch(self) -> None:
        """Fail what is outstanding when the link drops: the broker that held those
        acknowledgements is gone (DESIGN §7), so waiting for them would only hide it."""
        events = getattr(self._bus, "events", None)
        if events is None:
            return
        async for event in events():
            if event.kind in ("disconnected", "closed"):
                self._fail_all(
                    Disconnected(
                        f"the link to the broker dropped before stream {self.name} "
                        "acknowledged: publish again with the same msg_id"
                    )
                )

    def _fail_all(self, exc: BaseException) -> None:
        waiting = list(self._waiting.values())
        self._waiting.clear()  # in place: the reader holds this very dict
        for fut, _ in waiting:
            if not fut.done():
                fut.set_exception(exc)

    def _reap(self) -> None:
        self._reaper = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        waiting = self._waiting
        while waiting:
            token, (fut, due) = next(iter(waiting.items()))
            if due > now:
                break
            del waiting[token]
            if not fut.done():
                fut.set_exception(
                    RequestTimeout(
                        f"no acknowledgement from stream {self.name} within "
                        f"{self._ack_timeout:g} s (publish it again with the same msg_id)"
                    )
                )
        if waiting:
            self._reaper = loop.call_later(
                max(0.01, next(iter(waiting.values()))[1] - now), self._reap
            )

    async def publish_async_complete(self, timeout: float | None = None) -> None:
        """Wait until every ``publish_async`` so far is acknowledged (or failed)."""
        futures = [fut for fut, _ in self._waiting.values()]
        if futures:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*futures, return_exceptions=True)

    async def close(self) -> None:
        """Stop listening for acknowledgements (outstanding ones fail with ClosedError)."""
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None
        if self._acks_sub is not None:
            await self._acks_sub.unsubscribe()
            self._acks_sub = None
        for fut, _ in self._waiting.values():
            if not fut.done():
                fut.set_exception(ClosedError(f"stream handle {self.name} closed"))
        self._waiting.clear()

    # --- the stream itself ------------------------------------------------------------------

    async def info(self, timeout: float = API_TIMEOUT) -> StreamInfo:
        """Counts, limits, storage (``"memory"`` when nothing survives the broker)."""
        return StreamInfo.from_json(
            await _call(self._bus, f"{STREAM_PREFIX}info.{self.name}", None, timeout)
        )

    async def purge(self, subject: str | None = None) -> int:
        """Remove every message (or those on ``subject``); how many went."""
        body = {} if subject is None else {"subject": subject}
        return int((await _call(self._bus, f"{STREAM_PREFIX}purge.{self.name}", body))["purged"])

    async def delete(self) -> None:
        """Remove the stream, its records and its consumers."""
        await _call(self._bus, f"{STREAM_PREFIX}delete.{self.name}")

    async def get(self, seq: int | None = None, *, last_by_subject: str | None = None) -> Message:
        """One stored message by sequence, or the last one on a subject. Its headers
        include ``asyncipc-seq`` and ``asyncipc-time`` (ns)."""
        body: dict[str, Any] = (
            {"seq": seq} if last_by_subject is None else {"last_by_subject": last_by_subject}
        )
        got = await _call(self._bus, f"{STREAM_PREFIX}get.{self.name}", body)
        headers = dict(got["headers"] or {})
        headers["asyncipc-seq"] = str(got["seq"])
        headers["asyncipc-time"] = str(got["time"])
        return Message(got["subject"], got["data"].encode("latin-1"), headers)

    # --- consumers ------------------------------------------------------------------------------

    async def consumer(
        self,
        name: str | None = None,
        *,
        deliver: str | None = None,
        start_seq: int | None = None,
        start_time: datetime | float | None = None,
        batch: int = 100,
        **config: Any,
    ) -> Consumer:
        """A consumer of this stream, created if it does not exist (with the options
        given and the defaults of :class:`~asyncipc.streams.ConsumerConfig` for the rest).
        If it exists, the options given must match its own
        (:class:`~asyncipc.StreamError` ``reason="exists"`` otherwise); the others are not
        compared, so ``stream.consumer("billing")`` simply finds it.

        ``name`` ``None``: an ephemeral consumer, gone when this connection closes.
        ``deliver``: ``"all"``, ``"new"``, ``"last"``, ``"last_per_subject"``; or give
        ``start_seq=N`` / ``start_time=datetime``. Other options are
        :class:`~asyncipc.streams.ConsumerConfig`'s (``ack_wait``, ``max_deliver``,
        ``dead_letter``, ``filter_subject``, ``max_ack_pending``, ``durable``).
        ``batch`` is how many messages ``async for`` asks for at a time.
        """
        given: dict[str, Any] = dict(config)
        if deliver is not None:
            given["deliver"] = deliver
        if start_seq is not None:
            given["deliver"] = "by_start_seq"
            given["start_seq"] = start_seq
        if start_time is not None:
            given["deliver"] = "by_start_time"
            given["start_time"] = (
                start_time.timestamp() if isinstance(start_time, datetime) else float(start_time)
            )
        given["name"] = name
        return await self.consumer_from(given, batch)

    async def consumer_from(self, options: Mapping[str, Any], batch: int = 100) -> Consumer:
        """A consumer from options as JSON carries them (the fields of
        :class:`~asyncipc.streams.ConsumerConfig`, ``name`` among them): created, or found
        and compared on the options given only. What the REST and gRPC adapters call with
        what their clients sent; :meth:`consumer` is the same for Python callers."""
        given = dict(options)
        ConsumerConfig.from_json(given)  # refuse bad options before anything is sent
        info = ConsumerInfo.from_json(
            await _call(self._bus, f"{STREAM_PREFIX}consumer.create.{self.name}", given)
        )
        return Consumer(self._bus, info, batch)

    async def consumers(self) -> list[ConsumerInfo]:
        """Every consumer of this stream."""
        body = await _call(self._bus, f"{STREAM_PREFIX}consumer.list.{self.name}")
        return [ConsumerInfo.from_json(c) for c in body["consumers"]]


class Consumer:
    """A handle on a consumer: ``fetch`` batches, or ``async for`` one at a time.

    Every handle on the same consumer (in any process) shares its messages: each goes to
    one of them at a time, and back to the others if it is not acknowledged within
    ``ack_wait``.
    """

    def __init__(self, bus: StreamBus, info: ConsumerInfo, batch: int = 100) -> None:
        if batch < 1:
            raise ConfigurationError(f"batch must be >= 1, not {batch}")
        self._bus = bus
        self.stream = info.stream
        self.name = info.name
        self.config = info.config
        self.batch = batch
        self._next_subject = f"{STREAM_PREFIX}next.{self.stream}.{self.name}"
        self._inbox = f"_INBOX.{os.urandom(10).hex()}."
        self._sub: Subscription | None = None
        self._lock = asyncio.Lock()
        self._buffer: list[StreamMessage] = []
        self._n = 0
        self._acks_subject = f"{STREAM_PREFIX}acks.{self.stream}.{self.name}"
        self._acks: list[bytes] = []
        self._acks_flush: asyncio.Task[None] | None = None

    @classmethod
    def named(cls, bus: StreamBus, stream: str, name: str, batch: int = 100) -> Consumer:
        """A handle on ``stream``/``name`` without asking the broker (as
        :meth:`Stream.named`); its ``config`` is only the name."""
        check_name("stream", stream)
        return cls(bus, ConsumerInfo(stream, ConsumerConfig(name=name), 0, 0, 0, 0, 0, 0), batch)

    def __repr__(self) -> str:
        return f"Consumer({self.stream}/{self.name})"

    def _queue_ack(self, seq: int) -> None:
        """``msg.ack()`` of a message this handle fetched: sent with the others of this
        turn of the loop, as one ``$sys.stream.acks.<stream>.<consumer>`` message."""
        self._acks.append(b"%d" % seq)
        if self._acks_flush is None:
            self._acks_flush = asyncio.get_running_loop().create_task(self._flush_acks())

    async def _flush_acks(self) -> None:
        try:
            while self._acks:
                body = b" ".join(self._acks)
                self._acks.clear()
                await self._bus.publish(self._acks_subject, body)
        except AsyncIPCError:
            # The bus is closing or gone: those messages come back after ack_wait.
            self._acks.clear()
        finally:
            self._acks_flush = None

    def _subscription(self) -> Subscription:
        if self._sub is None:
            self._sub = self._bus.subscribe(
                self._inbox + "*", max_pending=1 << 20, max_bytes=1 << 30
            )
        return self._sub

    async def fetch(
        self, batch: int = 1, timeout: float = 1.0, *, max_bytes: int = 0
    ) -> list[StreamMessage]:
        """Up to ``batch`` messages: what the consumer has now, or, if it has none, the
        first to come within ``timeout`` seconds; ``[]`` if nothing came. ``max_bytes``
        (0: no limit) bounds their payloads together; the first message comes whatever
        its size."""
        if batch < 1:
            raise ConfigurationError(f"batch must be >= 1, not {batch}")
        if max_bytes < 0:
            raise ConfigurationError(f"max_bytes must be >= 0, not {max_bytes}")
        async with self._lock:
            return await self._fetch(batch, timeout, max_bytes)

    async def _fetch(self, batch: int, timeout: float, max_bytes: int = 0) -> list[StreamMessage]:
        out: list[StreamMessage] = []
        if self._buffer:
            out, self._buffer = self._buffer[:batch], self._buffer[batch:]
            if len(out) == batch:
                return out
            batch -= len(out)
            timeout = 0.0
        sub = self._subscription()
        if self._acks:  # what was acknowledged goes first: it may free max_ack_pending
            acked = b" ".join(self._acks)
            self._acks.clear()
            await self._bus.publish(self._acks_subject, acked)
        self._n += 1
        reply = f"{self._inbox}{self._n:x}"
        body: dict[str, Any] = {"batch": batch}
        if max_bytes:
            body["max_bytes"] = max_bytes
        if timeout > 0:
            # The broker ends the request a little before we stop waiting for it, so that
            # what it sends does not arrive after we have gone.
            body["expires"] = max(0.001, timeout - min(0.05, timeout * 0.1))
        else:
            body["no_wait"] = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0) + 1.0
        await self._bus.publish(self._next_subject, json.dumps(body).encode(), None, reply)
        got = 0
        while got < batch:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                msg = await sub.next_msg(timeout=remaining)
            except TimeoutError:
                break
            headers = msg.headers
            if headers is not None and STATUS_HEADER in headers:
                if REASON_HEADER in headers and msg.subject == reply:
                    failure = stream_failure(headers, f"fetch from {self.stream}/{self.name}")
                    assert failure is not None
                    raise failure
                if msg.subject == reply:
                    if headers[STATUS_HEADER] == "409":
                        raise ConsumerNotFound(f"consumer {self.stream}/{self.name} was deleted")
                    if headers[STATUS_HEADER] == "503":
                        # The broker is stopping: the next request is for the one that
                        # comes back (a reconnecting bus holds it until then).
                        await self._link_dropped(deadline)
                    break  # our request is over
                continue  # the end of an earlier request
            out.append(StreamMessage(msg, self._bus, self))
            got += 1
        return out

    async def _link_dropped(self, deadline: float) -> None:
        """Wait (until ``deadline``, loop time) for the bus to lose its link."""
        events = getattr(self._bus, "events", None)
        if events is None:
            return
        async with events() as stream:
            if not getattr(self._bus, "is_connected", False):
                return
            try:
                async with asyncio.timeout_at(deadline):
                    async for event in stream:
                        if event.kind in ("disconnected", "closed"):
                            return
            except TimeoutError:
                pass

    async def next(self, timeout: float = 1.0) -> StreamMessage:
        """One message; :class:`~asyncipc.RequestTimeout` if none comes in ``timeout``."""
        got = await self.fetch(1, timeout)
        if not got:
            raise RequestTimeout(f"no message from {self.stream}/{self.name} within {timeout:g} s")
        return got[0]

    def __aiter__(self) -> AsyncIterator[StreamMessage]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[StreamMessage]:
        while True:
            async with self._lock:
                if not self._buffer:
                    self._buffer = await self._fetch(self.batch, 5.0)
                if not self._buffer:
                    continue
                msg = self._buffer.pop(0)
            yield msg

    async def info(self, timeout: float = API_TIMEOUT) -> ConsumerInfo:
        """Counts: pending, waiting for acks, redelivered, dead-lettered."""
        return ConsumerInfo.from_json(
            await _call(
                self._bus, f"{STREAM_PREFIX}consumer.info.{self.stream}.{self.name}", None, timeout
            )
        )

    async def delete(self) -> None:
        """Remove the consumer (its position and unacknowledged set go with it)."""
        await _call(self._bus, f"{STREAM_PREFIX}consumer.delete.{self.stream}.{self.name}")
        await self.close()

    async def close(self) -> None:
        """Stop this handle (after sending the acknowledgements it holds); messages it
        held and did not ack are redelivered later."""
        if self._acks:
            body = b" ".join(self._acks)
            self._acks.clear()
            await self._bus.publish(self._acks_subject, body)
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await sub.unsubscribe()
