"""Streams on ``nats://``: the ``$sys.stream.`` requests answered with NATS JetStream.

A :class:`~asyncipc.Stream` and its consumers speak the ``$sys.stream.`` API
(``docs/streams.md``, "On the wire") whatever the URL. On an asyncipc broker the broker
answers it; on ``nats://`` there is no asyncipc broker, so the link's
:class:`JetStreamGateway` answers it in process by translating each request into
JetStream's own API (``$JS.API.``), and JetStream's answers back. Nothing above the link
changes: ``bus.stream``, ``stream.publish``/``publish_async``, consumers, ``fetch``,
``async for``, ``ack``/``nak``/``term``/``in_progress`` and ``ack_sync`` behave as on a
broker, and the streams live in the NATS cluster, replicated when ``replicas`` says so.

How each part maps, and why:

* **publish**: a JetStream publish to the subject itself, with ``Nats-Msg-Id`` (from
  ``msg_id``) and ``Nats-Expected-Stream`` (so a subject of another stream is refused, as
  a broker refuses it). JetStream's acknowledgement comes to the gateway's own inbox and
  goes to the caller as the broker's ``{"stream", "seq", "duplicate"}``; those of
  ``publish_async`` are gathered per inbox and loop turn, as the broker gathers them.
* **deliveries** come from JetStream with their own subject and a ``$JS.ACK.`` reply
  subject. The link rewrites that reply into ``$sys.stream.ack.<S>.<C>.<seq>.<n>.<time>``
  followed by JetStream's other tokens, so a :class:`~asyncipc.streams.StreamMessage`
  reads it as usual, and an acknowledgement published there is turned back into
  ``$JS.ACK.`` without any state kept here.
* **pull requests**: JetStream holds a request with ``expires`` until its whole batch
  came; a broker's ``fetch`` returns what is at hand, or the first message to come. So a
  pull is first sent with ``no_wait``; if nothing was at hand it is sent again for one
  message with what is left of ``expires``. JetStream's statuses become the broker's
  (``204`` when messages came, ``404``, ``408``, ``409`` consumer deleted, ``503`` when
  the link drops).
* **dead letter**: JetStream has none; it emits advisories. The consumer's
  ``dead_letter`` subject is kept in its metadata, and every asyncipc client that uses
  the consumer listens to its max-deliveries and terminated advisories in one queue group,
  so that one of them fetches the message and publishes it to the dead-letter subject with
  the ``asyncipc-dead-*`` headers. What this cannot do (no client connected when the
  advisory fires) is in ``docs/streams.md``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..errors import AsyncIPCError, ConfigurationError, StreamError
from ..protocol import Headers
from ..protocol.system import (
    ERROR_HEADER,
    REASON_HEADER,
    STATUS_HEADER,
    STREAM_MSG_ID_HEADER,
    STREAM_PREFIX,
    STREAM_SUBJECT_HEADER,
    TIMEOUT_HEADER,
)
from ..streams.config import (
    MAX_COUNT,
    ConsumerConfig,
    ConsumerInfo,
    StreamConfig,
    StreamInfo,
    check_name,
)
from ..streams.manager import DEAD_HEADERS, Refusal, ack_body, ack_kind, pull_options, refusal
from ..subjects import covers, validate_subject
from . import _natspy as natspy

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg as NatsMsg

__all__ = ["EXPECTED", "MSG_ID", "JetStreamGateway", "delivery_reply", "message_headers"]

log = logging.getLogger("asyncipc.nats")

ACK_PREFIX = STREAM_PREFIX + "ack."
JS_ACK = "$JS.ACK."
DEAD_LETTER_KEY = "asyncipc.dead_letter"
"""The consumer metadata key that carries its ``dead_letter`` subject."""
EPHEMERAL_IDLE = 30.0
"""Seconds an ephemeral consumer lives on JetStream without a pull request (JetStream's
``inactive_threshold``: there, ephemeral consumers end by inactivity, not with a
connection)."""
MIN_DUPLICATE_WINDOW = 0.1
"""JetStream's smallest deduplication window, in seconds."""
PENDING_ACKS = 100_000
"""Publishes awaiting JetStream's acknowledgement that the gateway remembers at most."""
SERVER_SYNC_INTERVAL = 120.0
"""nats-server's default ``sync_interval``, what ``info()`` reports (a client cannot see
the server's setting)."""

_NS = 1_000_000_000
MSG_ID = "Nats-Msg-Id"
EXPECTED = "Nats-Expected-Stream"
# JetStream error codes (nats-server's errors.json) that have a reason of ours.
_REASONS: dict[int, tuple[str, str]] = {
    10059: ("404", "stream-not-found"),
    10014: ("404", "consumer-not-found"),
    10037: ("404", "not-found"),
    10058: ("409", "exists"),
    10148: ("409", "exists"),
    10013: ("409", "exists"),
    10065: ("409", "overlap"),
    10060: ("400", "wrong-subject"),
    10054: ("409", "too-large"),
    10077: ("409", "limit"),
    10078: ("409", "limit"),
    10039: ("502", "jetstream-unavailable"),
    10052: ("400", "bad-config"),
}
_DELIVER_TO_JS = {"by_start_seq": "by_start_sequence"}
_DELIVER_FROM_JS = {"by_start_sequence": "by_start_seq"}


def _ns(seconds: float) -> int:
    return round(seconds * _NS)


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time_ns(text: str | None) -> int:
    """JetStream's RFC 3339 times (nanoseconds, ``Z``) as ns since the epoch; 0 for its
    zero time."""
    if not text or text.startswith("0001-"):
        return 0
    head, _, frac = text.rstrip("Z").partition(".")
    try:
        base = datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        return int(datetime.fromisoformat(text).timestamp() * _NS)
    digits = "".join(ch for ch in frac if ch.isdigit())[:9].ljust(9, "0")
    return int(base.timestamp()) * _NS + int(digits)


def _refusal_of(error: dict[str, Any]) -> Refusal:
    code = int(error.get("code") or 500)
    err_code = int(error.get("err_code") or 0)
    text = str(error.get("description") or "error")
    # 500 and 503 would read as a handler's failure and as "no responders" (asyncipc's
    # statuses for those): an upstream failure is 502 here.
    status, reason = _REASONS.get(err_code, ("502" if code >= 500 else str(code), "jetstream"))
    return Refusal(status, reason, f"JetStream: {text} (err_code {err_code})")


def _headers_of(block: str | None) -> dict[str, str] | None:
    """A base64 ``NATS/1.0`` header block (``MSG.GET``'s ``hdrs``) as a dict."""
    if not block:
        return None
    lines = base64.b64decode(block).decode("utf-8", "replace").split("\r\n")
    out: dict[str, str] = {}
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return _stored_headers(out)


def message_headers(hdr: dict[str, str]) -> dict[str, str]:
    """Headers of a message from NATS as asyncipc shows them (in place): see
    :func:`_stored_headers`."""
    _stored_headers(hdr)
    return hdr


def _stored_headers(hdr: dict[str, str]) -> dict[str, str] | None:
    """What JetStream stored, as a broker's deliveries carry it: the message id under our
    header, and no ``Nats-Expected-Stream`` (a check of the publish, not the message's)."""
    hdr.pop(EXPECTED, None)
    msg_id = hdr.pop(MSG_ID, None)
    if msg_id is not None:
        hdr[STREAM_MSG_ID_HEADER] = msg_id
    return hdr or None


def delivery_reply(reply: str) -> str:
    """A JetStream delivery's ``$JS.ACK.`` reply subject as a broker's ack subject.

    ``$JS.ACK.<S>.<C>.<n>.<seq>.<cseq>.<time>.<pending>`` becomes
    ``$sys.stream.ack.<S>.<C>.<seq>.<n>.<time>.<cseq>.<pending>``; the longer form with a
    domain, an account hash and a random token keeps those three at the end. Any other
    shape is left alone (a :class:`~asyncipc.streams.StreamMessage` refuses it)."""
    t = reply.split(".")
    if len(t) == 9:
        _, _, s, c, n, seq, cseq, ts, pending = t
        return f"{ACK_PREFIX}{s}.{c}.{seq}.{n}.{ts}.{cseq}.{pending}"
    if len(t) == 12:
        _, _, domain, account, s, c, n, seq, cseq, ts, pending, token = t
        return f"{ACK_PREFIX}{s}.{c}.{seq}.{n}.{ts}.{cseq}.{pending}.{domain}.{account}.{token}"
    return reply


def _js_ack_subject(tokens: list[str]) -> str:
    """The inverse of :func:`delivery_reply`, from the tokens after ``$sys.stream.ack.``."""
    if len(tokens) == 7:
        s, c, seq, n, ts, cseq, pending = tokens
        return f"{JS_ACK}{s}.{c}.{n}.{seq}.{cseq}.{ts}.{pending}"
    if len(tokens) == 10:
        s, c, seq, n, ts, cseq, pending, domain, account, token = tokens
        return f"{JS_ACK}{domain}.{account}.{s}.{c}.{n}.{seq}.{cseq}.{ts}.{pending}.{token}"
    raise Refusal(
        "400",
        "bad-request",
        "not the ack subject of a JetStream delivery (on nats:// an ack subject has the "
        "7 or 10 tokens the link wrote)",
    )


# --- configurations both ways ---------------------------------------------------------------


def stream_to_js(c: StreamConfig) -> dict[str, Any]:
    """A stream's configuration as JetStream's ``StreamConfig``."""
    window = max(c.duplicate_window, MIN_DUPLICATE_WINDOW)
    if c.max_age:
        window = min(window, c.max_age)
    return {
        "name": c.name,
        "subjects": list(c.subjects),
        "retention": "limits",
        "max_msgs": c.max_msgs or -1,
        "max_bytes": c.max_bytes or -1,
        "max_age": _ns(c.max_age),
        "max_msgs_per_subject": c.max_msgs_per_subject or -1,
        "max_msg_size": c.max_msg_size or -1,
        "discard": c.discard,
        "storage": c.storage or "file",
        "num_replicas": c.replicas,
        "duplicate_window": _ns(window),
        # discard="new" refuses at max_msgs_per_subject too, as a broker does.
        "discard_new_per_subject": c.discard == "new" and c.max_msgs_per_subject > 0,
    }


def stream_from_js(cfg: dict[str, Any]) -> StreamConfig:
    """JetStream's ``StreamConfig`` in our terms. ``fsync`` is nats-server's default,
    ``"interval"`` every two minutes: the server's own setting is not visible to a client."""

    def count(key: str) -> int:
        return max(0, int(cfg.get(key) or 0))

    return StreamConfig(
        name=cfg["name"],
        subjects=tuple(cfg.get("subjects") or ()),
        max_msgs=count("max_msgs"),
        max_bytes=count("max_bytes"),
        max_age=int(cfg.get("max_age") or 0) / _NS,
        max_msgs_per_subject=count("max_msgs_per_subject"),
        max_msg_size=count("max_msg_size"),
        discard="new" if cfg.get("discard") == "new" else "old",
        duplicate_window=int(cfg.get("duplicate_window") or 0) / _NS,
        storage="memory" if cfg.get("storage") == "memory" else "file",
        fsync="interval",
        sync_interval=SERVER_SYNC_INTERVAL,
        replicas=max(1, int(cfg.get("num_replicas") or 1)),
    )


def stream_info_from_js(info: dict[str, Any]) -> StreamInfo:
    config = stream_from_js(info["config"])
    state = info.get("state") or {}
    lost = state.get("lost") or {}
    messages = int(state.get("messages") or 0)
    last_seq = int(state.get("last_seq") or 0)
    first_seq = int(state.get("first_seq") or 0)
    if not messages:  # the broker's convention: the next record's sequence
        first_seq = last_seq + 1
    return StreamInfo(
        config=config,
        storage=config.storage or "file",
        messages=messages,
        bytes=int(state.get("bytes") or 0),
        first_seq=first_seq,
        last_seq=last_seq,
        first_time_ns=parse_time_ns(state.get("first_ts")),
        last_time_ns=parse_time_ns(state.get("last_ts")),
        consumers=int(state.get("consumer_count") or 0),
        subjects=int(state.get("num_subjects") or 0),
        lost=len(lost.get("msgs") or ()),
        created=parse_time_ns(info.get("created")) / _NS,
    )


def consumer_to_js(c: ConsumerConfig) -> dict[str, Any]:
    """A consumer's configuration as JetStream's ``ConsumerConfig`` (pull, explicit acks)."""
    cfg: dict[str, Any] = {
        "ack_policy": "explicit",
        "ack_wait": _ns(c.ack_wait),
        "max_deliver": c.max_deliver or -1,
        "max_ack_pending": c.max_ack_pending,
        "deliver_policy": _DELIVER_TO_JS.get(c.deliver, c.deliver),
        "replay_policy": "instant",
    }
    if c.name is not None:
        cfg["name"] = c.name
        if c.durable:
            cfg["durable_name"] = c.name
    if c.name is None or not c.durable:
        cfg["inactive_threshold"] = _ns(EPHEMERAL_IDLE)
    if c.deliver == "by_start_seq":
        cfg["opt_start_seq"] = c.start_seq
    elif c.deliver == "by_start_time":
        cfg["opt_start_time"] = _rfc3339(c.start_time)
    if c.filter_subject is not None:
        cfg["filter_subject"] = c.filter_subject
    if c.dead_letter is not None:
        cfg["metadata"] = {DEAD_LETTER_KEY: c.dead_letter}
    return cfg


def consumer_from_js(name: str, cfg: dict[str, Any]) -> ConsumerConfig:
    deliver = _DELIVER_FROM_JS.get(cfg.get("deliver_policy", "all"), cfg.get("deliver_policy"))
    pending = int(cfg.get("max_ack_pending") or 0)
    return ConsumerConfig(
        name=name,
        durable=bool(cfg.get("durable_name")),
        deliver=deliver,  # type: ignore[arg-type]  # checked by ConsumerConfig
        start_seq=int(cfg.get("opt_start_seq") or 0),
        start_time=parse_time_ns(cfg.get("opt_start_time")) / _NS,
        # filter_subjects (several) only come from deliver="last_per_subject" with no
        # filter (create_consumer), or from a consumer made by another client: no filter.
        filter_subject=cfg.get("filter_subject") or None,
        ack_wait=int(cfg.get("ack_wait") or 30 * _NS) / _NS,
        max_deliver=max(0, int(cfg.get("max_deliver") or 0)),
        dead_letter=(cfg.get("metadata") or {}).get(DEAD_LETTER_KEY),
        max_ack_pending=pending if pending > 0 else MAX_COUNT,
    )


def consumer_info_from_js(info: dict[str, Any]) -> ConsumerInfo:
    delivered = info.get("delivered") or {}
    return ConsumerInfo(
        stream=info["stream_name"],
        config=consumer_from_js(info["name"], info.get("config") or {}),
        num_pending=int(info.get("num_pending") or 0),
        num_ack_pending=int(info.get("num_ack_pending") or 0),
        num_redelivered=int(info.get("num_redelivered") or 0),
        num_waiting=int(info.get("num_waiting") or 0),
        # JetStream's delivered.stream_seq is where a consumer starts before it delivers.
        delivered=int(delivered.get("stream_seq") or 0) if delivered.get("consumer_seq") else 0,
        ack_floor=int((info.get("ack_floor") or {}).get("stream_seq") or 0),
    )


def _differs(
    given: dict[str, Any], normalized: dict[str, Any], current: dict[str, Any]
) -> list[str]:
    """The options given whose value (as JetStream keeps it) is not the current one."""
    return sorted(k for k in given if k in current and normalized.get(k) != current[k])


# --- the gateway ----------------------------------------------------------------------------


class _Pull:
    """A pull request in progress for the Bus subscription it delivers to."""

    __slots__ = ("asked", "batch", "consumer", "deadline", "got", "max_bytes", "reply", "stream")

    def __init__(
        self,
        reply: str,
        stream: str,
        consumer: str,
        batch: int,
        deadline: float | None,
        max_bytes: int,
    ) -> None:
        self.reply = reply
        self.stream = stream
        self.consumer = consumer
        self.asked = batch  # what the Bus asked for; ``batch``: the request JetStream has
        self.batch = batch
        self.deadline = deadline  # loop time: wait for one message until then if none came
        self.got = 0
        self.max_bytes = max_bytes


class JetStreamGateway:
    """Answers a link's ``$sys.stream.`` requests with JetStream (module docstring).

    ``send`` queues a publish in the link's writer, in order with the Bus's other frames;
    ``deliver`` hands a message to the Bus subscription whose subject covers ``subject``
    (or publishes it when there is none); ``subscribe`` queues a subscription of the
    gateway's own, whose messages come to :meth:`reply`; ``sid_for`` names the Bus
    subscription a subject is delivered to, if any.
    """

    def __init__(
        self,
        nc: NatsClient,
        send: Callable[[str, bytes, str | None, Headers | None], None],
        deliver: Callable[[str, bytes, Headers | None], None],
        subscribe: Callable[[str], None],
        sid_for: Callable[[str], int | None],
    ) -> None:
        self._nc = nc
        self._sid_for = sid_for
        self._send = send
        self._deliver = deliver
        self._subscribe = subscribe
        self._loop = asyncio.get_running_loop()
        self._inbox = f"_INBOX.{os.urandom(8).hex()}."
        self._subscribed = False
        self._next = 0
        # token -> (the caller's reply subject, stream, batched: publish_async)
        self._acks: OrderedDict[str, tuple[str, str, bool]] = OrderedDict()
        self._batches: dict[str, list[bytes]] = {}
        self._flushing = False
        self.pulls: dict[int, _Pull] = {}
        self._dead: dict[tuple[str, str], str] = {}
        # Each stream's subjects, from the answers seen: a publish to one checks them here
        # instead of sending Nats-Expected-Stream, which JetStream counts in max_msg_size.
        self._subjects: dict[str, tuple[str, ...]] = {}
        self._checked: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # --- from the Bus -----------------------------------------------------------------

    def publish(
        self, subject: str, data: bytes, reply: str | None, headers: Headers | None
    ) -> None:
        """A PUB on ``$sys.stream.…``: answered (to ``reply``) or refused. Without a
        reply subject a refusal raises :class:`~asyncipc.ConfigurationError`."""
        op, _, rest = subject[len(STREAM_PREFIX) :].partition(".")
        try:
            if op in ("pub", "apub") and rest:
                self._publish(rest, data, reply, headers, op == "apub")
            elif op == "ack":
                self._ack(rest.split("."), data, reply)
            elif op == "next":
                self._pull(rest.split("."), data, reply)
            elif op == "acks":
                raise Refusal(
                    "400",
                    "bad-request",
                    "acknowledgements by sequence have no JetStream equivalent: publish "
                    "each to its message's ack subject",
                )
            elif reply is None:
                raise Refusal("400", "bad-request", f"{subject} is a request: give a reply subject")
            else:
                args = rest.split(".") if rest else []
                self._spawn(self._admin(op, args, data, reply, headers))
        except Exception as exc:
            why = refusal(exc)
            if reply is None:
                raise ConfigurationError(why.text) from None
            self._refuse(reply, why)

    def _refuse(self, reply: str, why: Refusal) -> None:
        headers = {STATUS_HEADER: why.status, REASON_HEADER: why.reason, ERROR_HEADER: why.text}
        self._deliver(reply, b"", headers)

    def _publish(
        self, rest: str, data: bytes, reply: str | None, headers: Headers | None, batched: bool
    ) -> None:
        name, _, target = rest.partition(".")
        check_name("stream", name)
        sent = dict(headers) if headers else {}
        if not target:
            target = sent.pop(STREAM_SUBJECT_HEADER, "")
        if not target:
            raise Refusal("400", "bad-request", f"a publish to stream {name} names its subject")
        validate_subject(target)
        sent.pop(TIMEOUT_HEADER, None)
        msg_id = sent.pop(STREAM_MSG_ID_HEADER, None)
        if msg_id is not None:
            sent[MSG_ID] = msg_id
        subjects = self._subjects.get(name)
        if subjects is None:
            sent[EXPECTED] = name
        elif not any(covers(s, target) for s in subjects):
            raise Refusal(
                "400",
                "wrong-subject",
                f"stream {name} does not capture {target!r} (its subjects: {', '.join(subjects)})",
            )
        if reply is None:
            self._send(target, data, None, sent or None)
            return
        if not self._subscribed:
            self._subscribed = True
            self._subscribe(self._inbox + "*")
        self._next += 1
        token = f"{self._next:x}"
        acks = self._acks
        acks[token] = (reply, name, batched)
        if len(acks) > PENDING_ACKS:  # their callers gave up long ago (a time-out)
            acks.popitem(last=False)
        self._send(target, data, self._inbox + token, sent or None)

    def reply(self, subject: str, data: bytes, hdr: dict[str, str] | None) -> None:
        """A message to the gateway's inbox: JetStream's acknowledgement of a publish."""
        entry = self._acks.pop(subject[len(self._inbox) :], None)
        if entry is None:
            return
        reply, name, batched = entry
        why: Refusal | None = None
        seq, dup = 0, False
        if hdr and hdr.get("Status") == "503":
            why = Refusal(
                "400",
                "wrong-subject",
                f"stream {name} does not capture that subject (no JetStream stream does, "
                "or JetStream is off)",
            )
        else:
            try:
                body = json.loads(data)
                if "error" in body:
                    why = _refusal_of(body["error"])
                else:
                    seq, dup = int(body["seq"]), bool(body.get("duplicate", False))
            except (ValueError, KeyError, TypeError):
                why = Refusal(
                    "502", "jetstream", f"JetStream's acknowledgement did not parse: {data[:100]!r}"
                )
        if why is not None:
            self._refuse(reply, why)
        elif not batched:
            self._deliver(reply, ack_body(name, seq, dup), None)
        else:
            inbox, _, token = reply.rpartition(".")
            lines = self._batches.get(inbox)
            if lines is None:
                lines = self._batches[inbox] = []
            lines.append(b"%s %d%s" % (token.encode(), seq, b" d" if dup else b""))
            if not self._flushing:
                self._flushing = True
                self._loop.call_soon(self._flush_batches)

    def _flush_batches(self) -> None:
        self._flushing = False
        batches, self._batches = self._batches, {}
        for inbox, lines in batches.items():
            self._deliver(f"{inbox}.acks", b"\n".join(lines), None)

    def _ack(self, tokens: list[str], data: bytes, reply: str | None) -> None:
        subject = _js_ack_subject(tokens)
        _, delay = ack_kind(data)
        if delay:  # JetStream's delay is in nanoseconds
            data = b'-NAK {"delay": %d}' % max(0, _ns(delay))
        self._send(subject, data, reply, None)

    def _pull(self, tokens: list[str], data: bytes, reply: str | None) -> None:
        if len(tokens) != 2:
            raise Refusal("400", "bad-request", "a pull request is $sys.stream.next.<S>.<C>")
        if reply is None:
            raise Refusal("400", "bad-request", "a pull request needs a reply subject")
        stream, consumer = tokens
        batch, expires, no_wait, max_bytes = pull_options(data)
        if (stream, consumer) not in self._checked:
            self._checked.add((stream, consumer))
            self._spawn(self._check_dead_letter(stream, consumer))
        sid = self._sid_for(reply)
        body: dict[str, Any] = {"batch": batch, "no_wait": True}
        if max_bytes:
            body["max_bytes"] = max_bytes
        if sid is None:  # not one of our subscriptions: JetStream's semantics as they are
            if not no_wait and expires:
                body = {"batch": batch, "expires": _ns(expires)}
        else:
            deadline = None if no_wait or not expires else self._loop.time() + expires
            pull = _Pull(reply, stream, consumer, batch, deadline, max_bytes)
            self.pulls[sid] = pull
            if batch > 1:
                self._spawn(self._sized_pull(sid, pull, body))
                return
        self._send_pull(stream, consumer, body, reply)

    async def _sized_pull(self, sid: int, pull: _Pull, body: dict[str, Any]) -> None:
        """Send a pull of more than one message for no more than the consumer's
        max_ack_pending lets JetStream deliver now. A ``no_wait`` pull that JetStream
        stops at max_ack_pending short of its batch ends with no status at all (it stays
        on the server until acknowledgements make room), so the Bus would wait its whole
        time-out for a batch that is not coming; a batch cut to the room it has ends as
        a full batch does. One request more per batched fetch; the room may be
        under-counted while JetStream applies acknowledgements (then the next fetch gets
        the rest), and over-counted when another client pulls at the same moment (then
        this fetch lasts its time-out, as before)."""
        try:
            info = await self._js(f"$JS.API.CONSUMER.INFO.{pull.stream}.{pull.consumer}")
        except (Refusal, AsyncIPCError, OSError):
            info = {}  # the pull itself says what is wrong, if anything
        if self.pulls.get(sid) is not pull:
            return  # ended meanwhile (the link dropped)
        limit = int((info.get("config") or {}).get("max_ack_pending") or 0)
        room = limit - int(info.get("num_ack_pending") or 0)
        if limit > 0 and 0 < room < pull.batch:
            pull.batch = body["batch"] = room
        self._send_pull(pull.stream, pull.consumer, body, pull.reply)

    def _send_pull(self, stream: str, consumer: str, body: dict[str, Any], reply: str) -> None:
        self._send(
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}", json.dumps(body).encode(), reply, None
        )

    # --- from JetStream, on the Bus's subscriptions ----------------------------------------

    def delivered(self, sid: int) -> tuple[str, dict[str, str]] | None:
        """A JetStream delivery reached Bus subscription ``sid``: count it for its pull.
        Returns the end of that pull (reply subject and headers) when it is over but the
        Bus asked for more: the Bus expects a status then, JetStream sends none."""
        pull = self.pulls.get(sid)
        if pull is None:
            return None
        pull.got += 1
        if pull.got < pull.batch:
            return None
        del self.pulls[sid]  # JetStream ends a full batch without a status
        if pull.got >= pull.asked:
            return None
        return pull.reply, {STATUS_HEADER: "204", "asyncipc-delivered": str(pull.got)}

    def status(self, sid: int, subject: str, hdr: dict[str, str]) -> dict[str, str] | None:
        """A JetStream status on Bus subscription ``sid``: the broker's end of a pull, or
        None when the pull goes on (it was asked again)."""
        code = hdr.get("Status", "")
        text = hdr.get("Description", "") or f"status {code}"
        if code == "100":  # a heartbeat: nothing to say
            return None
        pull = self.pulls.get(sid)
        if pull is None or pull.reply != subject:
            return _end(code, text)
        if code == "503":  # nobody serves that consumer: say which of the two is missing
            del self.pulls[sid]
            self._spawn(self._missing(pull))
            return None
        if code == "409" and "MaxBytes" in text and pull.got == 0 and pull.max_bytes:
            # The first message is larger than max_bytes: it comes whatever its size.
            pull.batch, pull.max_bytes = 1, 0
            self._send_pull(pull.stream, pull.consumer, {"batch": 1, "no_wait": True}, pull.reply)
            return None
        if code in ("404", "408") and pull.got == 0 and pull.deadline is not None:
            remaining = pull.deadline - self._loop.time()
            if remaining > 0.005:
                # Nothing at hand: wait for the first message to come, until expires.
                pull.deadline, pull.batch = None, 1
                body = {"batch": 1, "expires": _ns(remaining)}
                self._send_pull(pull.stream, pull.consumer, body, pull.reply)
                return None
        del self.pulls[sid]
        if pull.got and (code in ("404", "408") or "MaxBytes" in text):
            return {STATUS_HEADER: "204", ERROR_HEADER: text, "asyncipc-delivered": str(pull.got)}
        return _end(code, text)

    async def _missing(self, pull: _Pull) -> None:
        """End a pull that nobody served with the broker's refusal: no such stream, or
        no such consumer."""
        why = Refusal(
            "404", "consumer-not-found", f"stream {pull.stream} has no consumer {pull.consumer!r}"
        )
        try:
            await self._js(f"$JS.API.STREAM.INFO.{pull.stream}")
        except Refusal as exc:
            if exc.reason == "stream-not-found":
                why = Refusal("404", "stream-not-found", f"no stream {pull.stream!r}")
            else:
                why = exc
        except (AsyncIPCError, OSError):
            pass
        self._refuse(pull.reply, why)

    def link_down(self) -> None:
        """The link to NATS dropped: the pulls in progress are over (their requests died
        with the connection); each ends with 503, as a stopping broker ends them."""
        pulls, self.pulls = self.pulls, {}
        for pull in pulls.values():
            self._deliver(
                pull.reply, b"", {STATUS_HEADER: "503", ERROR_HEADER: "lost the NATS server"}
            )

    # --- the rest of the API: one JetStream request (or two) each ---------------------------

    def _spawn(self, coro: Any) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def _js(self, subject: str, body: Any = None, timeout: float = 4.0) -> dict[str, Any]:
        from nats import errors as nats_errors

        data = b"" if body is None else json.dumps(body).encode()
        try:
            msg = await self._nc.request(subject, data, timeout=timeout)
        except nats_errors.NoRespondersError:
            raise Refusal(
                "502",
                "jetstream-unavailable",
                "the NATS server has no JetStream for this account (start nats-server with -js)",
            ) from None
        except nats_errors.TimeoutError:
            raise Refusal(
                "504", "timeout", f"JetStream did not answer {subject} in {timeout:g} s"
            ) from None
        try:
            out = json.loads(msg.data)
        except ValueError:
            raise Refusal(
                "502", "jetstream", f"JetStream's answer did not parse: {msg.data[:100]!r}"
            ) from None
        if not isinstance(out, dict):
            raise Refusal("502", "jetstream", "JetStream's answer is not an object")
        error = out.get("error")
        if error:
            raise _refusal_of(error)
        return out

    async def _admin(
        self, op: str, args: list[str], data: bytes, reply: str, headers: Headers | None
    ) -> None:
        timeout = 4.0
        if headers and TIMEOUT_HEADER in headers:
            with contextlib.suppress(ValueError):
                timeout = max(0.05, min(timeout, float(headers[TIMEOUT_HEADER]) - 0.05))
        try:
            body = json.loads(data) if data else {}
        except (ValueError, UnicodeDecodeError) as exc:
            self._refuse(
                reply, Refusal("400", "bad-request", f"the request body is not JSON: {exc}")
            )
            return
        try:
            answer = await self._admin_op(op, args, body, timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            why = refusal(exc)
            if why.status == "500" and not isinstance(exc, (Refusal, AsyncIPCError)):
                log.exception("stream request %s on JetStream failed", op)
            self._refuse(reply, why)
            return
        self._deliver(reply, json.dumps(answer).encode(), None)

    async def _admin_op(self, op: str, args: list[str], body: Any, timeout: float) -> Any:
        api = "$JS.API."
        if op == "list" and not args:
            return await self._list(api + "STREAM.LIST", "streams", timeout)
        if op == "create" and len(args) == 1:
            return (await self._create(args[0], body, timeout)).to_json()
        if op == "info" and len(args) == 1:
            return self._seen(
                await self._js(f"{api}STREAM.INFO.{args[0]}", None, timeout)
            ).to_json()
        if op == "delete" and len(args) == 1:
            self._subjects.pop(args[0], None)
            await self._js(f"{api}STREAM.DELETE.{args[0]}", None, timeout)
            return {"deleted": True}
        if op == "purge" and len(args) == 1:
            subject = body.get("subject") if isinstance(body, dict) else None
            got = await self._js(
                f"{api}STREAM.PURGE.{args[0]}", {"filter": subject} if subject else None, timeout
            )
            return {"purged": int(got.get("purged") or 0)}
        if op == "get" and len(args) == 1:
            return await self._get(args[0], body, timeout)
        if op == "consumer" and args:
            sub, rest = args[0], args[1:]
            if sub == "create" and len(rest) == 1:
                return (await self._create_consumer(rest[0], body, timeout)).to_json()
            if sub == "info" and len(rest) == 2:
                got = await self._js(f"{api}CONSUMER.INFO.{rest[0]}.{rest[1]}", None, timeout)
                return consumer_info_from_js(got).to_json()
            if sub == "delete" and len(rest) == 2:
                await self._js(f"{api}CONSUMER.DELETE.{rest[0]}.{rest[1]}", None, timeout)
                return {"deleted": True}
            if sub == "list" and len(rest) == 1:
                return await self._list(f"{api}CONSUMER.LIST.{rest[0]}", "consumers", timeout)
        raise Refusal(
            "404", "unknown-request", f"no stream API request {op!r} with {len(args)} argument(s)"
        )

    async def _list(self, subject: str, key: str, timeout: float) -> dict[str, Any]:
        items: list[dict[str, Any]] = []
        problems: list[str] = []
        while True:
            page = await self._js(subject, {"offset": len(items) + len(problems)}, timeout)
            got = page.get(key) or []
            for item in got:
                try:
                    if key == "streams":
                        items.append(self._seen(item).to_json())
                    else:
                        items.append(consumer_info_from_js(item).to_json())
                except (ConfigurationError, KeyError, TypeError, ValueError) as exc:
                    name = (item.get("config") or {}).get("name") or item.get("name")
                    problems.append(f"{name}: not an asyncipc {key[:-1]}: {exc}")
            if not got or len(items) + len(problems) >= int(page.get("total") or 0):
                break
        out: dict[str, Any] = {key: items}
        if key == "streams":
            out["problems"] = problems
        return out

    async def _create(self, name: str, body: Any, timeout: float) -> StreamInfo:
        check_name("stream", name)
        if not isinstance(body, dict):
            raise Refusal("400", "bad-request", "a stream configuration is a JSON object")
        given = dict(body)
        given.pop("name", None)
        config = StreamConfig.from_json({**given, "name": name})
        for key in ("fsync", "sync_interval"):
            if key in given:
                raise StreamError(
                    "unsupported",
                    f"{key}: on nats:// fsync is nats-server's jetstream sync_interval setting "
                    "(and replicas are what keeps an acknowledged message; docs/streams.md)",
                )
        try:
            info = await self._js(f"$JS.API.STREAM.INFO.{name}", None, timeout)
        except Refusal as why:
            if why.reason != "stream-not-found":
                raise
            if not given:
                raise Refusal(
                    "404",
                    "stream-not-found",
                    f"no stream {name!r} (give its subjects to create it)",
                ) from None
            info = await self._js(f"$JS.API.STREAM.CREATE.{name}", stream_to_js(config), timeout)
            return self._seen(info)
        current = stream_from_js(info["config"]).to_json()
        normalized = stream_from_js(stream_to_js(config)).to_json()
        differs = _differs(given, normalized, current)
        if differs:
            raise StreamError(
                "exists", f"stream {name} exists with a different {', '.join(differs)}"
            )
        return self._seen(info)

    async def _get(self, name: str, body: Any, timeout: float) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise Refusal("400", "bad-request", "a get request is a JSON object")
        last_by = body.get("last_by_subject")
        seq = body.get("seq")
        if last_by is not None:
            request: dict[str, Any] = {"last_by_subj": str(last_by)}
        elif isinstance(seq, int) and not isinstance(seq, bool):
            request = {"seq": seq}
        else:
            raise Refusal("400", "bad-request", "give seq (an integer) or last_by_subject")
        got = (await self._js(f"$JS.API.STREAM.MSG.GET.{name}", request, timeout))["message"]
        return {
            "seq": int(got["seq"]),
            "time": parse_time_ns(got.get("time")),
            "subject": got["subject"],
            "headers": _headers_of(got.get("hdrs")),
            "data": base64.b64decode(got.get("data") or "").decode("latin-1"),
        }

    async def _create_consumer(self, stream: str, body: Any, timeout: float) -> ConsumerInfo:
        check_name("stream", stream)
        if not isinstance(body, dict):
            raise Refusal("400", "bad-request", "a consumer configuration is a JSON object")
        config = ConsumerConfig.from_json(body)
        name = config.name
        if name is not None:
            try:
                info = await self._js(f"$JS.API.CONSUMER.INFO.{stream}.{name}", None, timeout)
            except Refusal as why:
                if why.reason != "consumer-not-found":
                    raise
            else:
                current = consumer_from_js(name, info.get("config") or {}).to_json()
                normalized = consumer_from_js(name, consumer_to_js(config)).to_json()
                differs = _differs(body, normalized, current)
                if differs:
                    raise StreamError(
                        "exists",
                        f"consumer {stream}/{name} exists with a different {', '.join(differs)}",
                    )
                if config.dead_letter is not None:
                    await self._watch_dead_letter(stream, name, config.dead_letter)
                return consumer_info_from_js(info)
        subjects = stream_from_js(
            (await self._js(f"$JS.API.STREAM.INFO.{stream}", None, timeout))["config"]
        ).subjects
        if config.filter_subject is not None and not any(
            covers(s, config.filter_subject) for s in subjects
        ):
            raise StreamError(
                "bad-config",
                f"filter_subject {config.filter_subject!r} is outside stream {stream}'s "
                f"subjects ({', '.join(subjects)})",
            )
        if config.dead_letter is not None and any(covers(s, config.dead_letter) for s in subjects):
            raise StreamError(
                "bad-config",
                f"dead_letter {config.dead_letter!r} is captured by stream {stream} itself: "
                "dead messages would come back",
            )
        js_config = consumer_to_js(config)
        if config.deliver == "last_per_subject" and config.filter_subject is None:
            # JetStream wants a filter for it: the stream's own subjects are "no filter".
            js_config["filter_subjects"] = list(subjects)
        request = {"stream_name": stream, "config": js_config, "action": "create"}
        subject = f"$JS.API.CONSUMER.CREATE.{stream}" + (f".{name}" if name else "")
        info = await self._js(subject, request, timeout)
        made = consumer_info_from_js(info)
        if config.dead_letter is not None:
            await self._watch_dead_letter(stream, made.name, config.dead_letter)
        return made

    def _seen(self, info: dict[str, Any]) -> StreamInfo:
        """A stream's info from JetStream, its subjects remembered for publishes."""
        out = stream_info_from_js(info)
        self._subjects[out.name] = out.config.subjects
        return out

    # --- dead letter ----------------------------------------------------------------------

    async def _check_dead_letter(self, stream: str, consumer: str) -> None:
        """The first pull on a consumer this link did not create: does it have a dead
        letter subject to serve?"""
        try:
            info = await self._js(f"$JS.API.CONSUMER.INFO.{stream}.{consumer}")
        except (Refusal, AsyncIPCError, OSError):
            self._checked.discard((stream, consumer))  # try again with the next pull
            return
        subject = ((info.get("config") or {}).get("metadata") or {}).get(DEAD_LETTER_KEY)
        if subject:
            await self._watch_dead_letter(stream, consumer, subject)

    async def _watch_dead_letter(self, stream: str, consumer: str, subject: str) -> None:
        key = (stream, consumer)
        self._checked.add(key)
        known = key in self._dead
        self._dead[key] = subject
        if known:
            return
        for kind, reason in (("MAX_DELIVERIES", "max-deliver"), ("MSG_TERMINATED", "terminated")):

            async def on_advisory(msg: NatsMsg, reason: str = reason) -> None:
                await self._bury(key, reason, msg.data)

            await self._nc.subscribe(
                f"$JS.EVENT.ADVISORY.CONSUMER.{kind}.{stream}.{consumer}",
                queue="asyncipc-dead-letter",
                cb=on_advisory,
            )
        await natspy.flush(self._nc, timeout=2)  # the advisories' SUBs are on the server

    async def _bury(self, key: tuple[str, str], reason: str, data: bytes) -> None:
        """An advisory: publish the message it names to the consumer's dead letter."""
        stream, consumer = key
        subject = self._dead.get(key)
        try:
            advisory = json.loads(data)
            seq = int(advisory["stream_seq"])
            deliveries = int(advisory.get("deliveries") or 0)
            got = (await self._js(f"$JS.API.STREAM.MSG.GET.{stream}", {"seq": seq}))["message"]
        except (ValueError, KeyError, TypeError, Refusal) as exc:
            log.warning("dead letter of %s/%s: cannot read the message: %s", stream, consumer, exc)
            return
        if subject is None:
            return
        headers = _headers_of(got.get("hdrs")) or {}
        headers.update(
            zip(
                DEAD_HEADERS,
                (reason, stream, consumer, str(seq), got["subject"], str(deliveries)),
                strict=True,
            )
        )
        await self._nc.publish(subject, base64.b64decode(got.get("data") or ""), headers=headers)


def _end(code: str, text: str) -> dict[str, str]:
    """A JetStream status as the end of a broker's pull request."""
    if code == "409" and "Deleted" in text:
        return {STATUS_HEADER: "409", ERROR_HEADER: text}
    if code in ("404", "408"):
        return {STATUS_HEADER: code, ERROR_HEADER: text}
    if code == "409" and ("Leadership" in text or "Shutdown" in text):
        return {STATUS_HEADER: "503", ERROR_HEADER: text}
    if code == "503":
        return {
            STATUS_HEADER: "404",
            REASON_HEADER: "consumer-not-found",
            ERROR_HEADER: "no such consumer (or no JetStream)",
        }
    return {STATUS_HEADER: "400", REASON_HEADER: "jetstream", ERROR_HEADER: f"JetStream: {text}"}
