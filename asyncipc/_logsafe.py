"""Log lines a peer cannot forge or flood: :func:`printable` and :class:`RateLimitedLog`.

Two defences, for everything the broker logs about its clients:

* **Escaping.** A client chooses its HELLO ``name``, the text of the ERR frames it sends,
  its subjects and, over some channels, what its address looks like. Logged raw, a
  newline in any of them starts a forged log line, an ANSI escape repaints the operator's
  terminal, a NUL truncates the line for some collectors. :func:`printable` escapes every
  character that is not printable (and the backslash, so that an escaped ``\\n`` cannot be
  told apart from one the peer typed): a log record about a peer is always one line.
* **Rate limiting.** A bad connection costs its sender one ``connect()``; it must not cost
  the operator one WARNING line each (20,000 fuzzed connections gave 18,426 lines). A
  :class:`RateLimitedLog` logs the first line of a kind, then counts the others of that
  kind for ``interval`` seconds and logs one summary line with the count when the interval
  ends. UDP's listener has one per socket; stream transports and broker sessions share
  :func:`peer_log`, one per event loop (one per broker process in practice).

Pure logging, no I/O of its own besides a timer for the summary line.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

__all__ = ["RateLimitedLog", "peer_log", "printable"]

_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: object) -> str:
    """``str(text)`` with every non-printable character escaped (``\\n``, ``\\x1b``,
    ``\\x00``, ``\\u2028``...) and the backslash doubled: one line, no terminal control.
    Use it on anything a peer controls before it goes into a log line."""
    s = text if isinstance(text, str) else str(text)
    if s.isprintable() and "\\" not in s:
        return s  # the common case: one C-level scan, no copy
    out = []
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


class RateLimitedLog:
    """At most one line per ``interval`` seconds per kind; the rest are counted, and the
    count is logged in a summary line when the interval ends (or with the next line, if
    that comes first). Garbage from the network must not flood the log.

    ``logger`` is where the lines go. Needs a running event loop (for the summary timer).
    Callers escape what a peer controls with :func:`printable` (``PeerInfo.describe`` and
    ``Session.describe`` already do).
    """

    def __init__(self, interval: float = 10.0, logger: logging.Logger | None = None) -> None:
        self.interval = interval
        self.logger = logger or logging.getLogger("asyncipc.transport")
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._summaries: dict[str, asyncio.TimerHandle] = {}

    @property
    def suppressed(self) -> int:
        """Lines counted and not yet told in a summary."""
        return sum(self._suppressed.values())

    def warning(
        self, kind: str, msg: str, *args: object, logger: logging.Logger | None = None
    ) -> None:
        """Log ``msg % args`` at WARNING (to ``logger``, default :attr:`logger`) unless a
        line of ``kind`` went out less than ``interval`` seconds ago; then count it for
        the summary."""
        self.log(logging.WARNING, kind, msg, *args, logger=logger)

    def log(
        self,
        level: int,
        kind: str,
        msg: str,
        *args: object,
        logger: logging.Logger | None = None,
    ) -> None:
        """:meth:`warning` at another ``level`` (its summary is logged at that level)."""
        target = logger or self.logger
        if not target.isEnabledFor(level):
            return  # nothing to limit: nothing would be written
        loop = asyncio.get_running_loop()
        now = loop.time()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            if kind not in self._summaries:
                self._summaries[kind] = loop.call_at(
                    last + self.interval, self._summary, kind, level, target
                )
            return
        self._last[kind] = now
        timer = self._summaries.pop(kind, None)
        if timer is not None:
            timer.cancel()
        more = self._suppressed.pop(kind, 0)
        if more:
            msg += f" ({more} more like it not logged in the last {self.interval:g} s)"
        target.log(level, msg, *args)

    def _summary(self, kind: str, level: int, target: logging.Logger) -> None:
        self._summaries.pop(kind, None)
        more = self._suppressed.pop(kind, 0)
        if more:
            target.log(
                level, "%d more %s lines not logged in the last %g s", more, kind, self.interval
            )


_PER_LOOP: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, RateLimitedLog] = (
    weakref.WeakKeyDictionary()
)


def peer_log() -> RateLimitedLog:
    """The limiter for lines about misbehaving peers of stream transports and broker
    sessions (``closing tcp ...: bad preamble``), one per running event loop: a broker
    process logs at most one such line per kind every 10 s, then a summary."""
    loop = asyncio.get_running_loop()
    limiter = _PER_LOOP.get(loop)
    if limiter is None:
        limiter = _PER_LOOP[loop] = RateLimitedLog(logger=logging.getLogger("asyncipc.broker"))
    return limiter


_ACCEPT_EXHAUSTED = "socket.accept() out of system resource"


def limit_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Rate-limit asyncio's "socket.accept() out of system resource" reports on ``loop``.

    Out of file descriptors, asyncio 3.11 removes a listener for a second but finishes
    its accept loop first, reporting each of up to ``backlog`` failed ``accept()`` calls
    to the loop's exception handler: hundreds of tracebacks a second, from a flood of
    connections the broker already refuses. Installed by a listening broker, and only
    when the loop has no exception handler of its own: those reports go through
    :func:`peer_log` (one line, then a summary); everything else to the default handler.
    """
    if loop.get_exception_handler() is not None:
        return

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == _ACCEPT_EXHAUSTED:
            exc = context.get("exception")
            peer_log().warning("accept exhausted", "cannot accept a connection: %s", exc)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
