"""A consumer on the broker: its position, its unacknowledged set, its pull requests.

Pull-based, like JetStream's pull consumers: a worker asks for up to ``batch`` messages
(``$sys.stream.next.<stream>.<consumer>``), the consumer hands out what it has to the
waiting requests in turn, each message to one of them (the work-queue pattern), and
waits ``ack_wait`` for each acknowledgement before handing the message out again.

Sans-network: the :class:`ConsumerHost` (the manager) delivers, ends pull requests and
publishes dead letters. Runs on the event loop; reads that miss the log's cache go off
the loop in batches.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from ..subjects import matches
from .config import ConsumerConfig, ConsumerInfo, StreamConfig
from .store.base import Log, StoredMessage

__all__ = ["ConsumerEngine", "ConsumerHost", "PullRequest", "StreamView"]

log = logging.getLogger("asyncipc.streams")

READ_BATCH = 512
"""Records read from disk in one trip when a consumer runs past the log's cache."""


class StreamView(Protocol):
    """What a consumer needs of its stream (:class:`~.engine.StreamEngine` is one)."""

    config: StreamConfig
    log: Log
    storage: str

    def last_seq_for(self, pattern: str | None) -> list[int]:
        """The last live sequence of every subject matching ``pattern``."""
        ...


class ConsumerHost(Protocol):
    """What a consumer needs from the broker side (the stream manager)."""

    def interest(self, subject: str) -> bool:
        """Someone is subscribed to ``subject`` (a pull request's reply subject)."""
        ...

    def deliver(self, reply: str, msg: StoredMessage, ack: str) -> None:
        """Send ``msg`` to ``reply``; acknowledgements go to ``ack``."""
        ...

    def end_pull(self, reply: str, status: str, text: str, delivered: int) -> None:
        """Tell a pull request's owner it is over (status ``204``, ``408``, ``409``)."""
        ...

    def dead_letter(
        self, consumer: ConsumerEngine, msg: StoredMessage, reason: str, deliveries: int
    ) -> None:
        """Publish ``msg`` to the consumer's ``dead_letter`` subject, saying why and after
        how many deliveries."""
        ...

    def changed(self, consumer: ConsumerEngine) -> None:
        """The consumer's durable state moved: save it (soon)."""
        ...


@dataclass(slots=True)
class PullRequest:
    """A worker's request for up to ``remaining`` more messages, sent to ``reply``."""

    reply: str
    remaining: int
    expires: float | None
    owner: object
    delivered: int = 0
    no_wait: bool = False
    max_bytes: int = 0
    """Payload bytes at most for the whole request (0: no limit); the first message is
    delivered whatever its size, so that a large one cannot block the consumer."""


class ConsumerEngine:
    """One consumer of one stream. See the module docstring."""

    def __init__(
        self,
        stream: StreamView,
        config: ConsumerConfig,
        host: ConsumerHost,
        state: dict[str, Any] | None = None,
        owner: object = None,
    ) -> None:
        assert config.name is not None
        self.stream = stream
        self.config = config
        self.name = config.name
        self.host = host
        self.owner = owner  # the session of an ephemeral consumer
        self.closed = False
        self._closed_why = ("409", "consumer deleted")  # what a pull is told once closed
        self.waiting: deque[PullRequest] = deque()
        self.pending: dict[int, int] = {}  # seq -> deliveries so far, not yet acked
        self.dead_lettered = 0
        self._due: dict[int, float] = {}  # seq -> loop time its redelivery is due
        self._heap: list[tuple[float, int]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._redeliver: deque[int] = deque()
        self._initial: deque[int] = deque()  # "last"/"last_per_subject" starts
        self._filter_cache: dict[str, bool] = {}
        self._readahead: dict[int, StoredMessage] = {}
        self._reading = False
        self._read_upto = 0  # the highest sequence read ahead so far
        self._ending_scheduled = False
        self._loop = asyncio.get_running_loop()
        self.last_delivered = 0
        """The highest stream sequence handed out so far (``ConsumerInfo.delivered``)."""
        self._tasks: set[asyncio.Task[None]] = set()
        log_ = stream.log
        if state is not None:
            self.next_seq = int(state.get("next_seq", 1))
            self.last_delivered = int(state.get("last_delivered", self.next_seq - 1))
            self.dead_lettered = int(state.get("dead_lettered", 0))
            for seq, count in state.get("pending", []):
                if log_.entry(int(seq)) is not None:
                    self.pending[int(seq)] = int(count)
            self._initial.extend(int(s) for s in state.get("initial", []))
            # What was out when the broker stopped is due again after ack_wait.
            for seq in self.pending:
                self._schedule(seq, self._loop.time() + config.ack_wait)
        else:
            self.next_seq = self._start_seq()

    # --- where it starts ---------------------------------------------------------------

    def _start_seq(self) -> int:
        config = self.config
        log_ = self.stream.log
        deliver = config.deliver
        if deliver == "all":
            return log_.first_seq
        if deliver == "new":
            return log_.last_seq + 1
        if deliver == "by_start_seq":
            return max(config.start_seq, log_.first_seq)
        if deliver == "by_start_time":
            return log_.seq_at_time(int(config.start_time * 1e9))
        if deliver == "last":
            lasts = self.stream.last_seq_for(config.filter_subject)
            if lasts:
                self._initial.append(lasts[-1])
            return log_.last_seq + 1
        # last_per_subject
        self._initial.extend(self.stream.last_seq_for(config.filter_subject))
        return log_.last_seq + 1

    def _wanted(self, subject: str) -> bool:
        pattern = self.config.filter_subject
        if pattern is None:
            return True
        cache = self._filter_cache
        hit = cache.get(subject)
        if hit is None:
            if len(cache) > 4096:
                cache.clear()
            hit = cache[subject] = matches(pattern, subject)
        return hit

    # --- events from the stream and from workers --------------------------------------

    def stored(self, seq: int, subject: str) -> None:
        """A new record: hand it out if a worker waits for one."""
        if self.waiting and self._wanted(subject):
            self.dispatch()

    def pull(self, request: PullRequest) -> None:
        """A worker asks for messages."""
        if self.closed:
            self.host.end_pull(request.reply, *self._closed_why, 0)
            return
        self.waiting.append(request)
        self.dispatch()
        if request.no_wait and request in self.waiting:
            self.waiting.remove(request)
            self.host.end_pull(request.reply, "404", "no messages", request.delivered)
        elif request.expires is not None and request in self.waiting:
            self._schedule_expiry(request.expires)

    def ack(self, seq: int, kind: str, delay: float = 0.0) -> bool:
        """An acknowledgement from a worker: ``+ACK``, ``-NAK``, ``+TERM`` or ``+WPI``.
        False when ``seq`` was not out (acked already, or never delivered)."""
        count = self.pending.get(seq)
        if count is None:
            return False
        if kind == "+ACK":
            del self.pending[seq]
            self._due.pop(seq, None)
            self.host.changed(self)
            if self.waiting:
                self.dispatch()
        elif kind == "-NAK":
            if delay > 0:
                self._schedule(seq, self._loop.time() + delay)
            else:
                self._due.pop(seq, None)
                self._expired(seq)
                if self.waiting:
                    self.dispatch()
        elif kind == "+TERM":
            del self.pending[seq]
            self._due.pop(seq, None)
            self._bury(seq, "terminated", count)
            self.host.changed(self)
            if self.waiting:
                self.dispatch()
        elif kind == "+WPI":
            self._schedule(seq, self._loop.time() + self.config.ack_wait)
        else:
            return False
        return True

    def forget_owner(self, owner: object) -> None:
        """The connection ``owner`` went: drop its pull requests."""
        if any(r.owner is owner for r in self.waiting):
            self.waiting = deque(r for r in self.waiting if r.owner is not owner)

    # --- handing out ---------------------------------------------------------------------

    def _next(self) -> tuple[int, int] | None:
        pending = self.pending
        while self._redeliver:
            seq = self._redeliver.popleft()
            count = pending.get(seq)
            if count is not None:
                return seq, count + 1
        if len(pending) >= self.config.max_ack_pending:
            return None
        log_ = self.stream.log
        while self._initial:
            seq = self._initial.popleft()
            if log_.entry(seq) is not None and seq not in pending:
                return seq, 1
        last = log_.last_seq
        if self.next_seq < log_.first_seq:
            self.next_seq = log_.first_seq
        while self.next_seq <= last:
            seq = self.next_seq
            self.next_seq = seq + 1
            entry = log_.entry(seq)
            if entry is None or not self._wanted(entry.subject):
                continue
            return seq, 1
        return None

    def _unnext(self, seq: int, count: int) -> None:
        """Put back what :meth:`_next` gave when it cannot be sent yet."""
        if count > 1:
            self._redeliver.appendleft(seq)
        elif seq == self.next_seq - 1:
            self.next_seq = seq
        else:
            self._initial.appendleft(seq)

    def dispatch(self) -> None:
        """Hand out messages to the waiting requests, in turn, while there are any."""
        if self.closed:
            return
        waiting = self.waiting
        host = self.host
        log_ = self.stream.log
        now = self._loop.time()
        prefix = f"$sys.stream.ack.{self.stream.config.name}.{self.name}."
        moved = False
        while waiting:
            req = waiting[0]
            if req.expires is not None and req.expires <= now:
                waiting.popleft()
                self._end(req, "408", "request expired")
                continue
            if not host.interest(req.reply):
                waiting.popleft()  # the worker is gone
                continue
            nxt = self._next()
            if nxt is None:
                break
            seq, count = nxt
            msg = self._readahead.pop(seq, None) or log_.cached(seq)
            if msg is None:
                if log_.entry(seq) is None:  # deleted meanwhile
                    self.pending.pop(seq, None)
                    continue
                self._unnext(seq, count)
                self._read_from(seq)
                break
            if count > 1 and self.config.max_deliver and count > self.config.max_deliver:
                del self.pending[seq]
                self._bury_msg(msg, "max-deliver", count - 1)
                continue
            if req.max_bytes:
                if req.delivered and len(msg.data) > req.max_bytes:
                    self._readahead[seq] = msg
                    self._unnext(seq, count)
                    waiting.popleft()
                    self._end(req, "204", "max_bytes reached")
                    continue
                req.max_bytes = max(1, req.max_bytes - len(msg.data))
            self.pending[seq] = count
            self._schedule(seq, now + self.config.ack_wait)
            host.deliver(req.reply, msg, f"{prefix}{seq}.{count}.{msg.time}")
            if seq > self.last_delivered:
                self.last_delivered = seq
            moved = True
            req.delivered += 1
            req.remaining -= 1
            if req.remaining <= 0:
                waiting.popleft()
        if moved:
            host.changed(self)
            self._prefetch()
        if waiting and not self._ending_scheduled and any(r.delivered for r in waiting):
            # Requests that got something end once nothing more is at hand: in a moment,
            # so that what arrives in this turn of the loop joins their batch.
            self._ending_scheduled = True
            self._loop.call_soon(self._end_partials)

    def _end_partials(self) -> None:
        self._ending_scheduled = False
        self.dispatch()
        if self._reading:
            return
        keep: deque[PullRequest] = deque()
        for req in self.waiting:
            if req.delivered:
                self._end(req, "204", "no more messages now")
            else:
                keep.append(req)
        self.waiting = keep

    def _end(self, req: PullRequest, status: str, text: str) -> None:
        self.host.end_pull(req.reply, status, text, req.delivered)

    def _read_from(self, seq: int) -> None:
        if self._reading:
            return
        self._reading = True
        self._spawn(self._read(seq))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read(self, seq: int) -> None:
        log_ = self.stream.log
        readahead = self._readahead
        want = [seq]
        want.extend(s for s in self._redeliver if s not in readahead and s != seq)
        for entry in log_.entries(max(seq + 1, self.next_seq, self._read_upto + 1)):
            if len(want) >= READ_BATCH:
                break
            if self._wanted(entry.subject):
                want.append(entry.seq)
        try:
            found = await log_.read(want)
        except Exception:
            log.exception(
                "consumer %s/%s could not read the stream", self.stream.config.name, self.name
            )
            found = []
        finally:
            self._reading = False
        if len(readahead) > 4 * READ_BATCH:
            # Keep what is still ahead; what was delivered is read again if redelivered.
            for old in [s for s in readahead if s < self.next_seq]:
                del readahead[old]
        for msg in found:
            if msg is not None:
                readahead[msg.seq] = msg
        self._read_upto = max(self._read_upto, want[-1])
        if found:
            self.dispatch()

    def _prefetch(self) -> None:
        """Keep about a batch of records read ahead of the position, so that a consumer
        running behind the log's cache is not held up by a read each batch."""
        if self._reading:
            return
        log_ = self.stream.log
        start = max(self.next_seq, self._read_upto + 1)
        if start > log_.last_seq or start - self.next_seq > READ_BATCH // 2:
            return
        if log_.cached(start) is not None:
            return  # the tail is in memory: nothing to read
        self._reading = True
        self._spawn(self._read(start))

    # --- time-outs ---------------------------------------------------------------------------

    def _schedule(self, seq: int, due: float) -> None:
        self._due[seq] = due
        heapq.heappush(self._heap, (due, seq))
        if self._timer is None or due < self._timer_at:
            self._arm(due)

    def _schedule_expiry(self, due: float) -> None:
        heapq.heappush(self._heap, (due, 0))
        if self._timer is None or due < self._timer_at:
            self._arm(due)

    def _arm(self, due: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = due
        self._timer = self._loop.call_at(due, self._fire)

    def _fire(self) -> None:
        self._timer = None
        if self.closed:
            return
        now = self._loop.time()
        heap = self._heap
        expiring = False
        while heap and heap[0][0] <= now:
            due, seq = heapq.heappop(heap)
            if seq == 0:
                expiring = True  # a pull request's expiry
                continue
            if self._due.get(seq) != due:
                continue  # superseded by an ack/WPI/NAK
            del self._due[seq]
            self._expired(seq)
        if heap:
            self._arm(heap[0][0])
        if expiring:
            self._end_expired(now)
        self.dispatch()

    def _end_expired(self, now: float) -> None:
        """End every expired pull request, not only the first in line (dispatch looks at
        the first only: one behind a longer request would wait for it)."""
        if not any(r.expires is not None and r.expires <= now for r in self.waiting):
            return
        keep: deque[PullRequest] = deque()
        over: list[PullRequest] = []
        for req in self.waiting:
            (over if req.expires is not None and req.expires <= now else keep).append(req)
        self.waiting = keep
        for req in over:
            self._end(req, "408", "request expired")

    def _expired(self, seq: int) -> None:
        count = self.pending.get(seq)
        if count is None:
            return
        if self.config.max_deliver and count >= self.config.max_deliver:
            del self.pending[seq]
            self._bury(seq, "max-deliver", count)
            self.host.changed(self)
        else:
            self._redeliver.append(seq)

    def _bury(self, seq: int, reason: str, deliveries: int) -> None:
        msg = self.stream.log.cached(seq) or self._readahead.pop(seq, None)
        if msg is not None:
            self._bury_msg(msg, reason, deliveries)
        elif self.config.dead_letter is not None:
            self._spawn(self._bury_later(seq, reason, deliveries))
        else:
            self.dead_lettered += 1  # counted as _bury_msg would, with nothing to read

    async def _bury_later(self, seq: int, reason: str, deliveries: int) -> None:
        [msg] = await self.stream.log.read([seq])
        if msg is not None:
            self._bury_msg(msg, reason, deliveries)

    def _bury_msg(self, msg: StoredMessage, reason: str, deliveries: int) -> None:
        self.dead_lettered += 1
        if self.config.dead_letter is not None:
            self.host.dead_letter(self, msg, reason, deliveries)

    # --- state ---------------------------------------------------------------------------------

    @property
    def ack_floor(self) -> int:
        floor = self.next_seq - 1
        if self.pending:
            floor = min(floor, min(self.pending) - 1)
        if self._initial:
            floor = min(floor, min(self._initial) - 1)
        return max(floor, 0)

    def state(self) -> dict[str, Any]:
        """What a durable consumer keeps across restarts."""
        return {
            "next_seq": self.next_seq,
            "last_delivered": self.last_delivered,
            "pending": sorted(self.pending.items()),
            "initial": list(self._initial),
            "dead_lettered": self.dead_lettered,
        }

    def info(self) -> ConsumerInfo:
        log_ = self.stream.log
        start = max(self.next_seq, log_.first_seq)
        if self.config.filter_subject is None:
            undelivered = (
                sum(1 for _ in log_.entries(start))
                if log_.last_seq - start < 100_000
                else max(0, log_.last_seq - start + 1)
            )
        else:
            undelivered = sum(1 for e in log_.entries(start) if self._wanted(e.subject))
        undelivered += len(self._initial)
        return ConsumerInfo(
            stream=self.stream.config.name,
            config=self.config,
            num_pending=undelivered,
            # Records purged or expired while out are not awaited any more (they are
            # dropped from ``pending`` at their next redelivery): not counted.
            num_ack_pending=sum(1 for s in self.pending if log_.entry(s) is not None),
            num_redelivered=sum(
                1 for s, c in self.pending.items() if c > 1 and log_.entry(s) is not None
            ),
            num_waiting=len(self.waiting),
            delivered=self.last_delivered,
            ack_floor=self.ack_floor,
            dead_lettered=self.dead_lettered,
        )

    def close(self, status: str = "409", text: str = "consumer closed") -> None:
        """Stop, ending the waiting pull requests with ``status``: ``409`` when the
        consumer is gone, ``503`` when the broker stops (it comes back with the broker)."""
        if not self.closed:
            self._closed_why = (status, text)
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for req in self.waiting:
            self._end(req, status, text)
        self.waiting.clear()
