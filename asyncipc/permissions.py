"""Who may publish and subscribe where: subject allow/deny lists. Pure: no I/O, no asyncio.

A :class:`Permissions` holds, for publishing and for subscribing, an *allow* list and a
*deny* list of subject patterns (``*`` one token, ``>`` the rest, as in
:mod:`asyncipc.subjects`). Deny wins: a subject is allowed when some allow pattern
matches it (or there is no allow list at all) and no deny pattern does.

Subscribing names a pattern, not a subject, so the question there is about every subject
the pattern can match: allowed when one allow pattern *covers* the whole pattern and no
deny pattern *overlaps* it. ``orders.>`` with ``deny = ["orders.secret.>"]`` is refused
rather than granted and filtered message by message: the broker's fan-out stays one route
lookup per message, and a subscriber never believes it sees all of ``orders.>`` when it
does not (``docs/decisions.md``).

The broker asks these questions on every PUB and SUB of a restricted client; its sessions
cache the answers per subject (``asyncipc/_session.py``), so the lists are walked once
per distinct subject, not per message.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .errors import ConfigurationError, InvalidSubject
from .subjects import SubjectIndex, covers, is_literal, overlap, validate_pattern

__all__ = ["ALL", "PatternSet", "Permissions", "ResponsePolicy"]


class PatternSet:
    """A set of subject patterns, matched against a subject in one trie walk."""

    __slots__ = ("_index", "patterns")

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self.patterns: tuple[str, ...] = tuple(dict.fromkeys(patterns))
        """The patterns, in the order given (duplicates dropped)."""
        self._index: SubjectIndex[str] = SubjectIndex()
        for pattern in self.patterns:
            try:
                validate_pattern(pattern)
            except InvalidSubject as exc:
                raise InvalidSubject(f"permission pattern: {exc}") from None
            self._index.add(pattern, pattern)

    def __repr__(self) -> str:
        return f"PatternSet({list(self.patterns)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PatternSet) and other.patterns == self.patterns

    def __hash__(self) -> int:
        return hash(self.patterns)

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def match(self, subject: str) -> str | None:
        """The first pattern that matches the literal ``subject``, or ``None``."""
        found = self._index.match(subject)
        return found[0] if found else None

    def covering(self, pattern: str) -> str | None:
        """A pattern of the set that matches every subject ``pattern`` matches, or None."""
        for mine in self.patterns:
            if covers(mine, pattern):
                return mine
        return None

    def overlapping(self, pattern: str) -> str | None:
        """A pattern of the set that matches some subject ``pattern`` matches, or None."""
        for mine in self.patterns:
            if overlap(mine, pattern):
                return mine
        return None


@dataclass(frozen=True)
class ResponsePolicy:
    """A client may publish to the reply subject of a request delivered to it even when its
    publish allow list does not name it (NATS's ``allow_responses``): ``max_msgs`` replies
    per request, within ``expires`` seconds of the delivery. A publish *deny* still wins."""

    max_msgs: int = 1
    expires: float = 60.0

    def __post_init__(self) -> None:
        if self.max_msgs < 1:
            raise ConfigurationError(f"allow_responses max_msgs must be >= 1, not {self.max_msgs}")
        if not self.expires > 0:
            raise ConfigurationError(f"allow_responses expires must be > 0, not {self.expires}")


_NO_LIST: PatternSet = PatternSet()
_ONE_RESPONSE = ResponsePolicy()


@dataclass(frozen=True)
class Permissions:
    """What one user may do. ``None`` for an allow list: everything not denied.

    Attributes:
        publish_allow: patterns the user may publish to (``None``: any subject).
        publish_deny: patterns the user may never publish to; wins over allow, and over
            ``responses``.
        subscribe_allow: patterns the user may subscribe within (``None``: any).
        subscribe_deny: patterns no subscription of the user may overlap.
        responses: replies to requests delivered to the user are allowed (see
            :class:`ResponsePolicy`); ``None`` to hold them to the publish lists too.
    """

    publish_allow: PatternSet | None = None
    publish_deny: PatternSet = field(default=_NO_LIST)
    subscribe_allow: PatternSet | None = None
    subscribe_deny: PatternSet = field(default=_NO_LIST)
    responses: ResponsePolicy | None = _ONE_RESPONSE

    @classmethod
    def build(
        cls,
        *,
        publish: Iterable[str] | None = None,
        publish_deny: Iterable[str] = (),
        subscribe: Iterable[str] | None = None,
        subscribe_deny: Iterable[str] = (),
        responses: ResponsePolicy | None = _ONE_RESPONSE,
    ) -> Permissions:
        """Permissions from plain pattern lists (``publish=["orders.>"]``)."""
        return cls(
            None if publish is None else PatternSet(publish),
            PatternSet(publish_deny),
            None if subscribe is None else PatternSet(subscribe),
            PatternSet(subscribe_deny),
            responses,
        )

    @property
    def unrestricted(self) -> bool:
        """True when nothing is denied: the broker then skips every check."""
        return (
            self.publish_allow is None
            and not self.publish_deny
            and self.subscribe_allow is None
            and not self.subscribe_deny
        )

    def publish_refusal(self, subject: str) -> str | None:
        """Why publishing to the literal ``subject`` is refused, or ``None`` if allowed."""
        denied = self.publish_deny.match(subject)
        if denied is not None:
            return f"publish to {subject!r} is denied (by {denied!r})"
        allow = self.publish_allow
        if allow is not None and allow.match(subject) is None:
            return f"publish to {subject!r} is not allowed"
        return None

    def publish_denied(self, subject: str) -> bool:
        """Whether the deny list names ``subject`` (what a response cannot get past)."""
        return bool(self.publish_deny) and self.publish_deny.match(subject) is not None

    def subscribe_refusal(self, pattern: str) -> str | None:
        """Why subscribing to ``pattern`` (or to a literal subject) is refused, or None."""
        if is_literal(pattern):  # a reply subject: one trie walk per list
            denied = self.subscribe_deny.match(pattern)
            if denied is not None:
                return f"subscribe to {pattern!r} is denied (by {denied!r})"
            if self.subscribe_allow is not None and self.subscribe_allow.match(pattern) is None:
                return f"subscribe to {pattern!r} is not allowed"
            return None
        denied = self.subscribe_deny.overlapping(pattern)
        if denied is not None:
            return f"subscribe to {pattern!r} is denied (it overlaps {denied!r})"
        allow = self.subscribe_allow
        if allow is not None and allow.covering(pattern) is None:
            return f"subscribe to {pattern!r} is not allowed"
        return None


ALL = Permissions()
"""May do everything: the shared-token client, an in-process bus, a user with no lists."""
