"""Who gets a message: subscriptions, queue groups and the match cache. Pure, no I/O.

The broker asks :meth:`Router.route` for the routes of a subject and does the sending.
Subscriptions with no queue each get every matching message; among subscriptions that
share a queue name, each message goes to one member, round robin (NATS semantics).
"""

from __future__ import annotations

from typing import Final, Generic, TypeVar

from .protocol import Overflow
from .subjects import SubjectIndex

__all__ = ["Route", "Router"]

O = TypeVar("O")  # noqa: E741 - the owner of a route: the broker's session object

_CACHE_MAX: Final = 8192
_INBOX_CACHE_MAX: Final = 256


class Route(Generic[O]):
    """One subscription as the broker knows it. Hashed by identity.

    SUB's ``max_msgs``/``max_bytes`` are not kept: the broker decides that a client is
    behind from its connection's output buffer (``docs/protocol.md`` §13), not from the
    bounds of the client's own queues."""

    __slots__ = (
        "dropped",
        "overflow",
        "owner",
        "queue",
        "sid",
        "subject",
    )

    def __init__(
        self,
        owner: O,
        sid: int,
        subject: str,
        queue: str | None = None,
        overflow: Overflow = Overflow.BLOCK,
    ) -> None:
        self.owner = owner
        self.sid = sid
        self.subject = subject
        self.queue = queue
        self.overflow = overflow
        self.dropped = 0

    def __repr__(self) -> str:
        return f"Route(sid={self.sid}, {self.subject!r}, queue={self.queue!r})"


class _Turn:
    """Whose turn it is in one queue group: shared by every subject the group serves,
    so ``orders.1``, ``orders.2``, ... are spread over the members, not all sent to the
    first one."""

    __slots__ = ("n", "routes")

    def __init__(self) -> None:
        self.n = 0
        self.routes = 0  # subscriptions with this queue name; the turn goes with the last


class _Group(Generic[O]):
    __slots__ = ("members", "turn")

    def __init__(self, turn: _Turn) -> None:
        self.members: list[Route[O]] = []
        self.turn = turn


def _inbox_prefix(route: Route[O]) -> str | None:
    """``_INBOX.<id>.`` for a subscription to ``_INBOX.<id>.*`` without a queue group (a
    client's reply inbox), else None."""
    subject = route.subject
    if (
        route.queue is None
        and subject.startswith("_INBOX.")
        and subject.endswith(".*")
        and subject.count(".") == 2
        and len(subject) > 9  # a token between the dots: "_INBOX..*" is no pattern
    ):
        return subject[:-1]
    return None


def _may_match_inbox(pattern: str) -> bool:
    """Whether ``pattern`` could match some ``_INBOX.`` subject."""
    first = pattern.split(".", 1)[0]
    return first == "_INBOX" or first == "*" or first == ">"


class Router(Generic[O]):
    """The subscription table. Lookups are cached per subject until the table changes."""

    def __init__(self) -> None:
        self._index: SubjectIndex[Route[O]] = SubjectIndex()
        # subject -> (routes without queue, queue groups). Cleared on every change:
        # subscriptions change rarely next to publishes, and a stale entry would misroute.
        self._cache: dict[str, tuple[list[Route[O]], list[_Group[O]]]] = {}
        self._inbox_cache: dict[str, tuple[list[Route[O]], list[_Group[O]]]] = {}
        # Reply inboxes without a cache (docs/architecture.md, "Replies"): a client
        # subscribes ``_INBOX.<id>.*`` once and each request gets a reply subject under
        # it. Those subscriptions are also kept here by their prefix ``_INBOX.<id>.``;
        # while no other pattern could match an ``_INBOX.`` subject (counted in
        # ``_inbox_others``: one whose first token is ``_INBOX``, ``*`` or ``>``), the
        # routes of ``_INBOX.<id>.<token>`` are exactly those of its prefix.
        self._inboxes: dict[str, list[Route[O]]] = {}
        self._inbox_others = 0
        # One turn counter per queue name: it survives cache clears (a table change must
        # not send the next message to the first member again) and spans subjects.
        self._turns: dict[str, _Turn] = {}

    @property
    def cache(self) -> dict[str, tuple[list[Route[O]], list[_Group[O]]]]:
        """The lookups cached for subjects other than reply inboxes: subject → (routes
        without queue, queue groups); for reading only. It is the same dict for the
        router's whole life (changes clear it, never replace it), so a hot path may keep
        it and try ``cache.get(subject)`` before :meth:`route`: an entry with no queue
        groups is the answer as it stands."""
        return self._cache

    def __len__(self) -> int:
        return len(self._index)

    def add(self, route: Route[O]) -> None:
        """Register ``route`` (its subject already validated as a pattern)."""
        index = self._index
        known = len(index)
        index.add(route.subject, route)
        if len(index) == known:
            return  # registered already: nothing changes
        prefix = _inbox_prefix(route)
        if prefix is not None:
            self._inboxes[prefix] = [*self._inboxes.get(prefix, ()), route]
        elif _may_match_inbox(route.subject):
            self._inbox_others += 1
        if route.queue is not None:
            turn = self._turns.get(route.queue)
            if turn is None:
                turn = self._turns[route.queue] = _Turn()
            turn.routes += 1
        self.clear_cache()

    def remove(self, route: Route[O]) -> bool:
        """Unregister ``route``; True if it was registered."""
        found = self._index.remove(route.subject, route)
        if found:
            prefix = _inbox_prefix(route)
            if prefix is not None:
                rest = [r for r in self._inboxes[prefix] if r is not route]
                if rest:
                    self._inboxes[prefix] = rest
                else:
                    del self._inboxes[prefix]
            elif _may_match_inbox(route.subject):
                self._inbox_others -= 1
            if route.queue is not None:
                turn = self._turns[route.queue]
                turn.routes -= 1
                if not turn.routes:
                    del self._turns[route.queue]
            self.clear_cache()
        return found

    def route(self, subject: str) -> list[Route[O]]:
        """The routes that receive a message published on the literal ``subject``."""
        entry = self._cache.get(subject)
        if entry is None and subject.startswith("_INBOX."):
            if not self._inbox_others:  # a reply: its inbox's routes, or none
                routes = self._inboxes.get(subject[: subject.rfind(".") + 1])
                return routes if routes is not None else []
            entry = self._inbox_cache.get(subject)
        if entry is not None and not entry[1]:
            return entry[0]  # no queue groups: the cached list is the answer
        if entry is None:
            entry = self._build(subject)
        plain, groups = entry
        if not groups:
            return plain
        out = list(plain)
        for group in groups:
            members = group.members
            turn = group.turn
            out.append(members[turn.n % len(members)])
            turn.n += 1
        return out

    def _build(self, subject: str) -> tuple[list[Route[O]], list[_Group[O]]]:
        plain: list[Route[O]] = []
        by_queue: dict[str, _Group[O]] = {}
        for route in self._index.match(subject):
            if route.queue is None:
                plain.append(route)
            else:
                group = by_queue.get(route.queue)
                if group is None:
                    group = by_queue[route.queue] = _Group(self._turns[route.queue])
                group.members.append(route)
        entry = (plain, list(by_queue.values()))
        cache = self._cache
        if subject.startswith("_INBOX."):
            # Reply inboxes come and go, one per request: they get a small cache of their
            # own, so that a stream of them never pushes the lasting subjects out.
            cache = self._inbox_cache
            if len(cache) >= _INBOX_CACHE_MAX:
                cache.clear()
        elif len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[subject] = entry
        return entry

    def clear_cache(self) -> None:
        """Forget cached lookups (after a change made behind the router's back)."""
        self._cache.clear()
        self._inbox_cache.clear()
