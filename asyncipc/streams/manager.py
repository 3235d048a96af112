"""The broker's streams: the ``$sys.stream.`` API, capture, acknowledgements, storage.

The broker holds one :class:`StreamManager`. It

- captures every message published on a stream's subjects (:meth:`capture`, called from
  the broker's publish path only while some stream exists);
- answers the ``$sys.stream.`` requests of ``docs/streams.md`` (create, info, list,
  delete, purge, get, publish with acknowledgement, consumers, pull, ack);
- sends each acknowledgement once the record is durable under its stream's fsync policy,
  waiting once for every acknowledgement queued behind the same sync (group commit);
- keeps streams under ``store/streams/<name>/`` (``stream.json``, ``log/``, and
  ``consumers/<name>.json`` written atomically a moment after their state moves).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .._logsafe import printable
from ..errors import AsyncIPCError, ConfigurationError, StoreError, StreamError
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
from ..subjects import covers, overlap, validate_subject
from .config import ConsumerConfig, StreamConfig, check_name
from .consumer import ConsumerEngine, PullRequest
from .engine import StreamEngine
from .store.base import Log, StoredMessage
from .store.memory import MemoryLog

if TYPE_CHECKING:
    from .._session import Session

__all__ = [
    "Refusal",
    "StreamHost",
    "StreamManager",
    "ack_body",
    "ack_kind",
    "pull_options",
    "refusal",
]

log = logging.getLogger("asyncipc.streams")

ACKS_TOKEN = "acks"
"""The last token of the subject that carries a batch of ``apub`` acknowledgements."""

SAVE_DELAY = 0.05
"""Seconds between a durable consumer's state moving and it being written (grouped)."""

DEAD_HEADERS = (
    "asyncipc-dead-reason",
    "asyncipc-dead-stream",
    "asyncipc-dead-consumer",
    "asyncipc-dead-seq",
    "asyncipc-dead-subject",
    "asyncipc-dead-deliveries",
)


class StreamHost(Protocol):
    """What the manager needs of the broker."""

    def publish(
        self,
        subject: str,
        data: bytes | None,
        reply: str | None,
        headers: Headers | None,
        pub: Any,
        source: Any,
    ) -> None: ...

    def deliver_to(
        self, inbox: str, subject: str, data: bytes, reply: str | None, headers: Headers | None
    ) -> bool: ...

    def interest(self, subject: str) -> bool: ...


class Refusal(Exception):
    """A ``$sys.stream.`` request refused: the status, reason and text of the reply."""

    def __init__(self, status: str, reason: str, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.reason = reason
        self.text = text


def refusal(exc: BaseException) -> Refusal:
    """The refusal that answers a request which failed with ``exc``."""
    if isinstance(exc, Refusal):
        return exc
    if isinstance(exc, LookupError) and isinstance(exc, StreamError):
        return Refusal("404", exc.reason, str(exc))
    if isinstance(exc, StreamError):
        status = "409" if exc.reason in ("exists", "limit", "too-large", "overlap") else "400"
        return Refusal(status, exc.reason, str(exc))
    if isinstance(exc, ConfigurationError):
        return Refusal("400", "bad-request", str(exc))
    if isinstance(exc, StoreError):
        return Refusal("500", "store", str(exc))
    return Refusal("500", "internal", f"internal error: {type(exc).__name__}")


def _json(data: bytes) -> Any:
    if not data:
        return {}
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refusal("400", "bad-request", f"the request body is not JSON: {exc}") from None


def _write_atomic(path: Path, payload: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_dir(root: Path) -> list[tuple[str, bytes | None, list[tuple[str, bytes | None]], str]]:
    """Every stream directory under ``root``: name, stream.json, consumer files, problem."""
    out: list[tuple[str, bytes | None, list[tuple[str, bytes | None]], str]] = []
    if not root.is_dir():
        return out
    for entry in sorted(root.iterdir()):
        if not entry.is_dir():
            continue
        meta = entry / "stream.json"
        problem = ""
        raw: bytes | None = None
        try:
            raw = meta.read_bytes()
        except OSError as exc:
            problem = f"{meta}: {exc.strerror or exc}"
        consumers: list[tuple[str, bytes | None]] = []
        cdir = entry / "consumers"
        if cdir.is_dir():
            for cfile in sorted(cdir.glob("*.json")):
                try:
                    consumers.append((cfile.stem, cfile.read_bytes()))
                except OSError:
                    consumers.append((cfile.stem, None))
        out.append((entry.name, raw, consumers, problem))
    return out


class StreamManager:
    """The broker's streams. See the module docstring."""

    def __init__(self, host: StreamHost, store: str | os.PathLike[str] | None) -> None:
        self.host = host
        self.root = Path(store) / "streams" if store is not None else None
        self.streams: dict[str, StreamEngine] = {}
        self.problems: list[str] = []
        self.capturing = False
        self._capture_cache: dict[str, StreamEngine | None] = {}
        self._forwarding = False
        self._admin = asyncio.Lock()
        self._acks: dict[str, deque[tuple[int, str, bool, bool]]] = {}
        self._ack_tasks: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[ConsumerEngine] = set()
        self._saving: asyncio.Task[None] | None = None
        self._saved: list[asyncio.Future[None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._opened = False
        self._closed = False
        self._next_ephemeral = 0
        self.log_io: Any = None
        """The file-I/O layer the streams' logs use (``None``: the real one). A seam for
        the power-cut tests (:class:`~asyncipc.streams.store.fileio.PowerCutIO`)."""

    # --- lifecycle ----------------------------------------------------------------------

    async def open(self) -> None:
        """Load every stream under the store (recovering its log) and its consumers."""
        if self._opened:
            return
        self._opened = True
        if self.root is None:
            return
        try:
            found = await asyncio.to_thread(_read_dir, self.root)
        except OSError as exc:
            raise StoreError(f"cannot read the store at {self.root}: {exc}") from exc
        for name, raw, consumers, problem in found:
            if problem or raw is None:
                self._problem(f"stream {name} skipped: {problem or 'no stream.json'}")
                continue
            try:
                meta = json.loads(raw)
                config = StreamConfig.from_json(meta["config"])
                created = float(meta.get("created", 0.0))
            except (ValueError, KeyError, TypeError, AsyncIPCError) as exc:
                self._problem(f"stream {name} skipped: {self.root / name / 'stream.json'}: {exc}")
                continue
            try:
                engine = await self._open_engine(config, created)
            except (StoreError, OSError) as exc:
                self._problem(f"stream {name} skipped: its log cannot be opened: {exc}")
                continue
            rec = engine.log.recovery
            if rec.lost or rec.torn_bytes:
                log.warning(
                    "stream %s recovered %d records; %d lost in %d corrupt segment(s), "
                    "%d torn bytes cut off",
                    name,
                    rec.recovered,
                    rec.lost,
                    len(rec.lost_segments),
                    rec.torn_bytes,
                )
            for cname, craw in consumers:
                try:
                    cmeta = json.loads(craw or b"")
                    cconfig = ConsumerConfig.from_json(cmeta["config"])
                    state = cmeta["state"]
                    if not isinstance(state, dict):
                        raise TypeError("state is not an object")
                except (ValueError, KeyError, TypeError, AsyncIPCError) as exc:
                    self._problem(f"consumer {name}/{cname} skipped: its file is unreadable: {exc}")
                    continue
                engine.consumers[cname] = ConsumerEngine(engine, cconfig, self, state)
            self._add(engine)

    async def open_store(self, store: str | os.PathLike[str]) -> None:
        """Take ``store`` as this manager's store from now on and load what it holds: a
        ``file://`` process that has just become the stream host of its directory
        (``docs/file.md``). Only for a manager with no store and no stream yet."""
        if self.root is not None or self.streams:
            raise StoreError(f"the streams already have a store ({self.root or 'memory'})")
        self.root = Path(store) / "streams"
        self._opened = False
        await self.open()

    def _problem(self, text: str) -> None:
        log.error("store: %s", text)
        self.problems.append(text)

    async def _open_engine(self, config: StreamConfig, created: float) -> StreamEngine:
        storage = config.storage or ("file" if self.root is not None else "memory")
        log_: Log
        if storage == "file":
            if self.root is None:
                raise StreamError(
                    "bad-config",
                    f"stream {config.name} asks for file storage but the broker has no store "
                    "(start it with --store DIR)",
                )
            from .store.filelog import FileLog

            log_ = await FileLog.open(
                self.root / config.name / "log",
                fsync=config.fsync,
                sync_interval=config.sync_interval,
                io=self.log_io,
            )
        else:
            log_ = MemoryLog()
        engine = StreamEngine(config, log_, storage, created)
        if log_.durable:
            await engine.rebuild_dedup()
        return engine

    def _add(self, engine: StreamEngine) -> None:
        self.streams[engine.config.name] = engine
        self.capturing = True
        self._capture_cache.clear()

    async def close(self) -> None:
        """Send what is acknowledged, save consumer state, close every log."""
        if self._closed:
            return
        self._closed = True
        for task in list(self._ack_tasks.values()):
            with contextlib.suppress(Exception):
                await task
        await self._save_now()
        for task in list(self._tasks):
            task.cancel()
        for engine in list(self.streams.values()):
            for consumer in engine.consumers.values():
                # Stopping is not deleting: workers fetch again once their bus is back.
                consumer.close("503", "the broker is stopping")
            try:
                await engine.close()
            except StoreError as exc:
                log.error("stream %s did not close cleanly: %s", engine.config.name, exc)

    # --- capture (the broker's publish path) ---------------------------------------------

    def capture(self, subject: str, data: bytes, headers: Headers | None) -> None:
        """A plain publish: store it in the stream that captures ``subject``, if any."""
        if self._forwarding or subject.startswith("_INBOX."):
            return
        cache = self._capture_cache
        engine = cache.get(subject, False)
        if engine is False:
            engine = None
            for candidate in self.streams.values():
                if candidate.captures(subject):
                    engine = candidate
                    break
            if len(cache) > 8192:
                cache.clear()
            cache[subject] = engine
        if engine is None:
            return
        assert isinstance(engine, StreamEngine)
        msg_id = headers.get(STREAM_MSG_ID_HEADER) if headers else None
        try:
            seq = engine.store(subject, headers, data, msg_id)
        except StreamError as exc:
            log.debug("stream %s refused a message on %s: %s", engine.config.name, subject, exc)
            return
        del seq

    # --- the $sys.stream. API ----------------------------------------------------------------

    def session_closed(self, session: object) -> None:
        """``session`` left: its ephemeral consumers go, and its pull requests."""
        for engine in list(self.streams.values()):
            for name, consumer in list(engine.consumers.items()):
                if consumer.owner is session:
                    consumer.close()
                    del engine.consumers[name]
                else:
                    consumer.forget_owner(session)

    def handle(
        self,
        session: Session | None,
        subject: str,
        data: bytes,
        reply: str | None,
        headers: Headers | None,
    ) -> None:
        """A PUB on ``$sys.stream.…`` from ``session`` (None: a request that came through
        a relay, from a ``file://`` process that does not host the streams; an ephemeral
        consumer it makes has no session to end with it)."""
        op, _, rest = subject[len(STREAM_PREFIX) :].partition(".")
        try:
            if (op == "pub" or op == "apub") and rest:
                name, _, target = rest.partition(".")
                self._publish(session, name, target, data, reply, headers, op == "apub")
                return
            tokens = [op, *rest.split(".")] if rest else [op]
            if op == "ack" and len(tokens) == 6:
                self._ack(tokens, data, reply)
            elif op == "acks" and len(tokens) == 3:
                consumer = self._consumer(tokens[1], tokens[2])
                for seq in data.split():
                    if seq.isdigit():
                        consumer.ack(int(seq), "+ACK")
            elif op == "next" and len(tokens) == 3:
                self._pull(session, tokens[1], tokens[2], data, reply)
            elif reply is None:
                raise Refusal("400", "bad-request", f"{subject} is a request: give a reply subject")
            else:
                self._spawn(self._admin_request(session, op, tokens[1:], data, reply))
        except Exception as exc:
            why = refusal(exc)
            if why.status == "500" and not isinstance(exc, (StoreError, Refusal)):
                log.exception("stream request %s failed", subject)
            if reply is not None:
                self._refuse(reply, why)
            elif op in ("ack", "acks") and isinstance(exc, LookupError):
                # A late ack for a consumer (or stream) deleted meanwhile: nothing to do,
                # and an error frame would only alarm a worker that did nothing wrong.
                log.debug("ignored an ack on %s: %s", subject, exc)
            elif session is not None:
                from ..protocol import ErrorCode

                session.send_error(ErrorCode.PERMISSION, why.text[:1000])

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _refuse(self, reply: str, why: Refusal) -> None:
        headers = {
            STATUS_HEADER: why.status,
            REASON_HEADER: why.reason,
            ERROR_HEADER: why.text[:1000],
        }
        self.host.publish(reply, b"", None, headers, None, None)

    def _answer(self, reply: str, body: Any) -> None:
        self.host.publish(reply, json.dumps(body).encode(), None, None, None, None)

    def _stream(self, name: str) -> StreamEngine:
        engine = self.streams.get(name)
        if engine is None:
            from ..errors import StreamNotFound

            raise StreamNotFound(f"no stream {name!r}")
        return engine

    def _consumer(self, stream: str, name: str) -> ConsumerEngine:
        engine = self._stream(stream)
        consumer = engine.consumers.get(name)
        if consumer is None:
            from ..errors import ConsumerNotFound

            raise ConsumerNotFound(f"stream {stream} has no consumer {name!r}")
        return consumer

    # --- publish with acknowledgement --------------------------------------------------------

    def _publish(
        self,
        session: Session | None,
        name: str,
        subject: str,
        data: bytes,
        reply: str | None,
        headers: Headers | None,
        batched: bool = False,
    ) -> None:
        """``$sys.stream.pub.<stream>.<subject>`` (or ``$sys.stream.pub.<stream>`` with the
        subject in the ``asyncipc-stream-subject`` header). ``batched`` (``apub``): the
        acknowledgement goes in one message with the others due to the same inbox, as a
        line ``<token> <seq>[ d]`` of ``<inbox>.acks`` (the reply subject is
        ``<inbox>.<token>``)."""
        engine = self._stream(name)
        user: dict[str, str] | None = None
        msg_id = None
        if headers:
            user = dict(headers)
            if not subject:
                subject = user.pop(STREAM_SUBJECT_HEADER, "")
            # The id stays in the stored headers (as Nats-Msg-Id does in JetStream): it
            # is how the deduplication window is rebuilt after a restart.
            msg_id = user.get(STREAM_MSG_ID_HEADER)
            user.pop(TIMEOUT_HEADER, None)  # how long stream.publish waits: not the message's
        if not subject:
            raise Refusal(
                "400",
                "bad-request",
                f"a publish to stream {name} names its subject: $sys.stream.pub.{name}.<subject>"
                f" (or the {STREAM_SUBJECT_HEADER} header)",
            )
        validate_subject(subject)
        if not engine.captures(subject):
            raise Refusal(
                "400",
                "wrong-subject",
                f"stream {name} does not capture {subject!r} "
                f"(its subjects: {', '.join(engine.config.subjects)})",
            )
        ack = engine.store(subject, user or None, data, msg_id)
        if not ack.duplicate:
            # Live subscribers get it as a plain publish, without capturing it twice.
            self._forwarding = True
            try:
                self.host.publish(subject, data, None, user or None, None, session)
            finally:
                self._forwarding = False
        if reply is None:
            return
        if not batched and not engine.log.durable:  # nothing to wait for: answer now
            self.host.publish(reply, ack_body(name, ack.seq, ack.duplicate), None, None, None, None)
            return
        queue = self._acks.get(name)
        if queue is None:
            queue = self._acks[name] = deque()
        queue.append((ack.seq, reply, ack.duplicate, batched))
        if name not in self._ack_tasks:
            task = asyncio.ensure_future(self._send_acks(engine, queue))
            self._ack_tasks[name] = task

    async def _send_acks(
        self, engine: StreamEngine, queue: deque[tuple[int, str, bool, bool]]
    ) -> None:
        """Send the acknowledgements queued for ``engine`` as their records become durable:
        one sync for all that are queued, then each reply; the replies of ``apub``
        publishes go as one message per inbox (``_batch_acks``)."""
        name = engine.config.name
        publish = self.host.publish
        try:
            while queue:
                target = max(item[0] for item in queue) if len(queue) < 64 else queue[-1][0]
                target = max(target, queue[0][0])
                failure: BaseException | None = None
                try:
                    await engine.log.sync(target)
                except Exception as exc:
                    failure = exc
                batches: dict[str, list[bytes]] = {}
                n = len(queue)
                for _ in range(n):
                    seq, reply, dup, batched = queue[0]
                    if seq > target:
                        break
                    queue.popleft()
                    if failure is not None:
                        self._refuse(reply, refusal(failure))
                    elif batched:
                        inbox, _, token = reply.rpartition(".")
                        lines = batches.get(inbox)
                        if lines is None:
                            lines = batches[inbox] = []
                        lines.append(b"%s %d%s" % (token.encode(), seq, b" d" if dup else b""))
                    else:
                        publish(reply, ack_body(name, seq, dup), None, None, None, None)
                for inbox, lines in batches.items():
                    publish(f"{inbox}.{ACKS_TOKEN}", b"\n".join(lines), None, None, None, None)
        finally:
            self._ack_tasks.pop(name, None)

    # --- consumers: pull and ack ----------------------------------------------------------------

    def _pull(
        self, session: Session | None, stream: str, name: str, data: bytes, reply: str | None
    ) -> None:
        if reply is None:
            raise Refusal("400", "bad-request", "a pull request needs a reply subject")
        consumer = self._consumer(stream, name)
        batch, expires, no_wait, max_bytes = pull_options(data)
        loop = asyncio.get_running_loop()
        consumer.pull(
            PullRequest(
                reply=reply,
                remaining=min(batch, 100_000),
                expires=loop.time() + expires if expires else None,
                owner=session,
                no_wait=no_wait,
                max_bytes=max_bytes,
            )
        )

    def _ack(self, tokens: list[str], data: bytes, reply: str | None) -> None:
        _, stream, name, seq_text, _count, _time = tokens
        consumer = self._consumer(stream, name)
        try:
            seq = int(seq_text)
        except ValueError:
            raise Refusal(
                "400", "bad-request", f"bad sequence {seq_text!r} in an ack subject"
            ) from None
        text, delay = ack_kind(data)
        done = consumer.ack(seq, text, delay)
        if reply is not None:
            if not done:
                self._refuse(
                    reply,
                    Refusal(
                        "409",
                        "not-pending",
                        f"message {seq} is not awaiting an ack on {stream}/{name}",
                    ),
                )
            else:
                self._spawn(self._ack_reply(reply))

    async def _ack_reply(self, reply: str) -> None:
        await self._save_soon(wait=True)
        self.host.publish(reply, b"", None, None, None, None)

    # --- ConsumerHost ---------------------------------------------------------------------------

    def interest(self, subject: str) -> bool:
        return self.host.interest(subject)

    def deliver(self, reply: str, msg: StoredMessage, ack: str) -> None:
        # A copy: an in-process consumer must not edit the stored record's headers.
        headers = dict(msg.headers) if msg.headers else None
        self.host.deliver_to(reply, msg.subject, msg.data, ack, headers)

    def end_pull(self, reply: str, status: str, text: str, delivered: int) -> None:
        headers = {STATUS_HEADER: status, ERROR_HEADER: text, "asyncipc-delivered": str(delivered)}
        self.host.deliver_to(reply, reply, b"", None, headers)

    def dead_letter(
        self, consumer: ConsumerEngine, msg: StoredMessage, reason: str, deliveries: int
    ) -> None:
        subject = consumer.config.dead_letter
        if subject is None:
            return
        headers = dict(msg.headers or {})
        headers.update(
            zip(
                DEAD_HEADERS,
                (
                    reason,
                    consumer.stream.config.name,
                    consumer.name,
                    str(msg.seq),
                    msg.subject,
                    str(deliveries),
                ),
                strict=True,
            )
        )
        self.host.publish(subject, msg.data, None, headers, None, None)

    def changed(self, consumer: ConsumerEngine) -> None:
        if self.root is None or not consumer.config.durable or consumer.stream.storage != "file":
            return
        self._dirty.add(consumer)
        if self._saving is None and not self._closed:
            self._saving = asyncio.ensure_future(self._save_later())

    async def _save_later(self) -> None:
        try:
            await asyncio.sleep(SAVE_DELAY)
            await self._save_now()
        finally:
            self._saving = None

    async def _save_soon(self, *, wait: bool) -> None:
        if not self._dirty:
            return
        fut = asyncio.get_running_loop().create_future()
        self._saved.append(fut)
        if self._saving is None:
            self._saving = asyncio.ensure_future(self._save_later())
        if wait:
            await fut

    async def _save_now(self) -> None:
        dirty = [c for c in self._dirty if not c.closed]
        self._dirty.clear()
        waiters, self._saved = self._saved, []
        writes = [
            (
                self._consumer_path(c),
                json.dumps({"config": c.config.to_json(), "state": c.state()}).encode(),
            )
            for c in dirty
        ]
        try:
            if writes:
                await asyncio.to_thread(_write_all, writes)
        except OSError as exc:
            log.error("could not save consumer state: %s", exc)
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _consumer_path(self, consumer: ConsumerEngine) -> Path:
        assert self.root is not None
        return self.root / consumer.stream.config.name / "consumers" / f"{consumer.name}.json"

    # --- admin requests ---------------------------------------------------------------------------

    async def ensure(self, config: StreamConfig) -> None:
        """Create the stream ``config`` describes, or check that the one by its name has
        that configuration (a configuration file's ``[[streams]]``). Raises
        :class:`~asyncipc.StreamError` (``exists``) naming what differs: a stream with
        messages is not reconfigured behind its users' backs."""
        given = config.to_json()
        given.pop("name")
        async with self._admin:
            await self.open()
            await self._create(config.name, given)

    async def _admin_request(
        self, session: Session | None, op: str, args: list[str], data: bytes, reply: str
    ) -> None:
        try:
            async with self._admin:
                # A broker used before start() (no listen, no `async with`): load what the
                # store holds first, so that nothing on disk is created over.
                await self.open()
                body = await self._admin_op(session, op, args, data)
        except Exception as exc:
            why = refusal(exc)
            if why.status == "500" and not isinstance(exc, (StoreError, Refusal)):
                log.exception("stream request %s failed", op)
            self._refuse(reply, why)
            return
        self._answer(reply, body)

    async def _admin_op(
        self, session: Session | None, op: str, args: list[str], data: bytes
    ) -> Any:
        if op == "list" and not args:
            return {
                "streams": [e.info().to_json() for e in self.streams.values()],
                "problems": self.problems,
            }
        if op == "create" and len(args) == 1:
            return (await self._create(args[0], _json(data))).to_json()
        if op == "info" and len(args) == 1:
            return self._stream(args[0]).info().to_json()
        if op == "delete" and len(args) == 1:
            await self._delete(args[0])
            return {"deleted": True}
        if op == "purge" and len(args) == 1:
            body = _json(data)
            subject = body.get("subject") if isinstance(body, dict) else None
            return {"purged": self._stream(args[0]).purge(subject)}
        if op == "get" and len(args) == 1:
            return await self._get(args[0], _json(data))
        if op == "consumer" and args:
            sub, rest = args[0], args[1:]
            if sub == "create" and len(rest) == 1:
                return (await self._create_consumer(session, rest[0], _json(data))).to_json()
            if sub == "info" and len(rest) == 2:
                return self._consumer(rest[0], rest[1]).info().to_json()
            if sub == "delete" and len(rest) == 2:
                await self._delete_consumer(rest[0], rest[1])
                return {"deleted": True}
            if sub == "list" and len(rest) == 1:
                engine = self._stream(rest[0])
                return {"consumers": [c.info().to_json() for c in engine.consumers.values()]}
        raise Refusal(
            "404", "unknown-request", f"no stream API request {op!r} with {len(args)} argument(s)"
        )

    async def _create(self, name: str, body: Any) -> Any:
        check_name("stream", name)
        if not isinstance(body, dict):
            raise Refusal("400", "bad-request", "a stream configuration is a JSON object")
        given = dict(body)
        given.pop("name", None)
        # Unknown or bad options are refused even when the stream exists.
        config = StreamConfig.from_json({**given, "name": name})
        if config.replicas != 1:
            raise StreamError(
                "unsupported",
                f"replicas={config.replicas}: one broker keeps one copy of a stream; "
                "replicated streams need nats:// on a JetStream cluster (docs/streams.md)",
            )
        existing = self.streams.get(name)
        if existing is not None:
            current = existing.config.to_json()
            differs = [
                k
                for k, v in given.items()
                if k in current
                and (list(v) if k == "subjects" and isinstance(v, (list, tuple)) else v)
                != current[k]
            ]
            if differs:
                raise StreamError(
                    "exists",
                    f"stream {name} exists with a different {', '.join(sorted(differs))}",
                )
            return existing.info()
        if not given:
            from ..errors import StreamNotFound

            raise StreamNotFound(f"no stream {name!r} (give its subjects to create it)")
        for other in self.streams.values():
            for mine in config.subjects:
                for theirs in other.config.subjects:
                    if overlap(mine, theirs):
                        raise StreamError(
                            "overlap",
                            f"stream {name}'s subject {mine!r} overlaps {theirs!r} of stream "
                            f"{other.config.name}: a message may belong to one stream only",
                        )
        created = time.time()
        engine = await self._open_engine(config, created)
        if engine.storage == "file":
            assert self.root is not None
            meta = json.dumps({"config": config.to_json(), "created": created}).encode()
            path = self.root / name / "stream.json"
            await asyncio.to_thread(_write_all, [(path, meta)])
        self._add(engine)
        subjects = printable(", ".join(config.subjects))  # a client's choice: escaped
        log.info("stream %s created on %s (%s)", printable(name), subjects, engine.storage)
        return engine.info()

    async def _delete(self, name: str) -> None:
        engine = self._stream(name)
        del self.streams[name]
        self.capturing = bool(self.streams)
        self._capture_cache.clear()
        await engine.close()
        if engine.storage == "file" and self.root is not None:
            await asyncio.to_thread(shutil.rmtree, self.root / name, True)
        log.info("stream %s deleted", printable(name))

    async def _get(self, name: str, body: Any) -> Any:
        engine = self._stream(name)
        if not isinstance(body, dict):
            raise Refusal("400", "bad-request", "a get request is a JSON object")
        seq = body.get("seq")
        last_by = body.get("last_by_subject")
        if last_by is not None:
            seqs = engine.last_seq_for(str(last_by))
            if not seqs:
                raise StreamError("not-found", f"stream {name} has no message on {last_by!r}")
            seq = seqs[-1]
        if isinstance(seq, bool) or not isinstance(seq, int):
            raise Refusal("400", "bad-request", "give seq (an integer) or last_by_subject")
        [msg] = await engine.log.read([seq])
        if msg is None:
            raise StreamError("not-found", f"stream {name} has no message {seq}")
        return {
            "seq": msg.seq,
            "time": msg.time,
            "subject": msg.subject,
            "headers": msg.headers,
            "data": msg.data.decode("latin-1"),
        }

    async def _create_consumer(self, session: Session | None, stream: str, body: Any) -> Any:
        engine = self._stream(stream)
        if not isinstance(body, dict):
            raise Refusal("400", "bad-request", "a consumer configuration is a JSON object")
        name = body.get("name")
        existing = engine.consumers.get(name) if isinstance(name, str) else None
        if existing is not None:
            mine = existing.config.to_json()
            ConsumerConfig.from_json(body)  # the options given must be valid ones
            differs = sorted(k for k, v in body.items() if k in mine and mine[k] != v)
            if differs:
                raise StreamError(
                    "exists",
                    f"consumer {stream}/{name} exists with a different {', '.join(differs)}",
                )
            return existing.info()
        config = ConsumerConfig.from_json(body)
        owner: object = None
        if config.name is None:
            self._next_ephemeral += 1
            config = replace(
                config, name=f"eph-{os.urandom(4).hex()}-{self._next_ephemeral}", durable=False
            )
            owner = session
        elif not config.durable:
            owner = session
        assert config.name is not None
        if config.filter_subject is not None and not any(
            covers(s, config.filter_subject) for s in engine.config.subjects
        ):
            raise StreamError(
                "bad-config",
                f"filter_subject {config.filter_subject!r} is outside stream {stream}'s "
                f"subjects ({', '.join(engine.config.subjects)})",
            )
        if config.dead_letter is not None and engine.captures(config.dead_letter):
            raise StreamError(
                "bad-config",
                f"dead_letter {config.dead_letter!r} is captured by stream {stream} itself: "
                "dead messages would come back",
            )
        consumer = ConsumerEngine(engine, config, self, owner=owner)
        engine.consumers[config.name] = consumer
        self.changed(consumer)
        await self._save_soon(wait=True)
        return consumer.info()

    async def _delete_consumer(self, stream: str, name: str) -> None:
        consumer = self._consumer(stream, name)
        consumer.close()
        del self._stream(stream).consumers[name]
        self._dirty.discard(consumer)
        if self.root is not None and consumer.stream.storage == "file":
            path = self._consumer_path(consumer)
            await asyncio.to_thread(lambda: path.unlink(missing_ok=True))


_ACK_TEXTS = ("+ACK", "-NAK", "+TERM", "+WPI")
"""The bodies an acknowledgement may start with (empty means ``+ACK``)."""


def ack_kind(data: bytes) -> tuple[str, float]:
    """An acknowledgement's body checked: its kind and a NAK's delay in seconds (0 for
    none), or a :class:`Refusal`."""
    kind, _, rest = data.partition(b" ")
    text = kind.decode("ascii", "replace") or "+ACK"
    if text not in _ACK_TEXTS:
        raise Refusal("400", "bad-request", f"unknown acknowledgement {text[:20]!r}")
    delay = 0.0
    if text == "-NAK" and rest:
        try:
            delay = float(json.loads(rest).get("delay", 0.0))
            if not math.isfinite(delay):
                raise ValueError(delay)
        except (ValueError, AttributeError, TypeError):
            raise Refusal(
                "400", "bad-request", 'a NAK\'s body is -NAK {"delay": seconds}'
            ) from None
    return text, delay


def pull_options(data: bytes) -> tuple[int, float | None, bool, int]:
    """A pull request's body (``{"batch", "expires", "no_wait", "max_bytes"}``) checked:
    ``(batch, expires or None, no_wait, max_bytes)``, or a :class:`Refusal`."""
    body = _json(data)
    if not isinstance(body, dict):
        raise Refusal("400", "bad-request", "a pull request's body is a JSON object")
    batch = body.get("batch", 1)
    expires = body.get("expires")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise Refusal("400", "bad-request", f"batch must be an integer >= 1, not {batch!r}")
    if expires is not None and (
        isinstance(expires, bool)
        or not isinstance(expires, (int, float))
        or not math.isfinite(expires)  # JSON from Python takes NaN and Infinity
        or expires <= 0
    ):
        raise Refusal("400", "bad-request", f"expires must be seconds > 0, not {expires!r}")
    max_bytes = body.get("max_bytes", 0)
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
        raise Refusal("400", "bad-request", f"max_bytes must be an integer >= 0, not {max_bytes!r}")
    return batch, float(expires) if expires else None, bool(body.get("no_wait", False)), max_bytes


def ack_body(stream: str, seq: int, duplicate: bool) -> bytes:
    """A PubAck as JSON, written by hand: it is sent once per stored message."""
    dup = b',"duplicate":true' if duplicate else b""
    return b'{"stream":"%s","seq":%d%s}' % (stream.encode(), seq, dup)


def _write_all(writes: list[tuple[Path, bytes]]) -> None:
    for path, payload in writes:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, payload)
