"""Subjects: validation and the wildcard index. Pure: no I/O, no asyncio.

A subject is dot-separated tokens, ``orders.eu.created``. A *pattern* (what a
subscription names) may use ``*`` for exactly one token and ``>`` as its last token for
one or more trailing tokens, the NATS convention. Tokens are non-empty and hold no
whitespace; ``*`` and ``>`` are only ever whole tokens, never part of one.

:class:`SubjectIndex` answers "which patterns match this subject" by walking a trie of
tokens, so the cost of a lookup depends on the subject's depth and on what matches, not on
how many unrelated subscriptions exist.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterator
from typing import Final, Generic, TypeVar

from .errors import InvalidSubject

__all__ = [
    "MAX_SUBJECT_BYTES",
    "ONE_OFF",
    "SubjectIndex",
    "covers",
    "is_literal",
    "known_valid",
    "matches",
    "overlap",
    "validate_pattern",
    "validate_queue",
    "validate_subject",
]

MAX_SUBJECT_BYTES: Final = 1024
"""Longest subject or pattern, in UTF-8 bytes. The wire format could carry 64 KiB; a
kilobyte is already far more than any sane subject needs and keeps the index cheap."""

_TOKEN = r"[^\s.*>]+"
_SUBJECT_RE: Final = re.compile(rf"{_TOKEN}(?:\.{_TOKEN})*")
_PATTERN_RE: Final = re.compile(rf"(?:{_TOKEN}|\*)(?:\.(?:{_TOKEN}|\*))*(?:\.>)?|>")
_QUEUE_RE: Final = re.compile(r"[^\s*>]+")

# Publishing re-validates the same few subjects millions of times; a dict hit is several
# times cheaper than the regex. Bounded so that a stream of unique subjects cannot grow it.
known_valid: Final[dict[str, None]] = {}
_valid_subjects: Final = known_valid
_VALID_CACHE_MAX: Final = 4096
ONE_OFF: Final = ("_INBOX.", "$sys.stream.ack.")
"""Subjects made for one message (a reply inbox, a stream message's ack subject): they are
never cached, here, in the router or in the permission checks, so that a stream of them
leaves the caches to the subjects that come back."""
_inbox_heads: Final[dict[str, None]] = {}
"""What comes before the last token of reply subjects found valid (``_INBOX.<id>.``):
the same few come back with a new last token each, which is checked alone. (Not for ack
subjects: their head holds the message's sequence, new each time.)"""
_INBOX_HEADS_MAX: Final = 1024


def _too_long(text: str) -> bool:
    return len(text) > MAX_SUBJECT_BYTES // 4 and len(text.encode()) > MAX_SUBJECT_BYTES


def _not_utf8(text: str) -> bool:
    r"""A ``str`` that has no UTF-8 form: a lone surrogate, as JSON's ``"\udcff"`` or a
    ``surrogateescape`` decoding make. Off the wire a subject is always valid UTF-8; one
    that comes from JSON or an in-process caller must be too, or a link that encodes it
    fails in the middle of the broker's fan-out."""
    if text.isascii():
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


def _utf8_error(what: str, text: str) -> InvalidSubject:
    return InvalidSubject(f"{what} {text!r} is not valid UTF-8: it holds a lone surrogate")


def validate_subject(subject: object) -> str:
    """Return ``subject`` if it is a valid literal subject (no wildcards), else raise.

    Raises :class:`InvalidSubject` (a ``ValueError``) naming the subject and the rule.
    """
    if not isinstance(subject, str):  # first: a list would not even hash
        raise InvalidSubject(f"subject must be a str, not {type(subject).__name__}")
    if subject in _valid_subjects:
        return subject
    inbox = subject.startswith("_INBOX.")
    cut = subject.rfind(".") + 1
    # A known inbox head and a last token of letters and digits: valid (an alphanumeric
    # token holds no space, dot or wildcard), and short enough in any encoding.
    if (
        inbox
        and subject[:cut] in _inbox_heads
        and subject[cut:].isalnum()
        and len(subject) <= MAX_SUBJECT_BYTES // 4
    ):
        return subject
    if _SUBJECT_RE.fullmatch(subject) is None:
        raise InvalidSubject(_explain(subject, wildcards=False))
    if _not_utf8(subject):
        raise _utf8_error("subject", subject)
    if _too_long(subject):
        raise InvalidSubject(f"subject is longer than {MAX_SUBJECT_BYTES} bytes")
    if inbox:  # used once: caching it would only push the others out; its head comes back
        if len(_inbox_heads) >= _INBOX_HEADS_MAX:
            _inbox_heads.clear()
        _inbox_heads[subject[:cut]] = None
        return subject
    if subject.startswith(ONE_OFF):
        return subject  # used once
    if len(_valid_subjects) >= _VALID_CACHE_MAX:
        _valid_subjects.clear()
    _valid_subjects[subject] = None
    return subject


def validate_pattern(pattern: object) -> str:
    """Return ``pattern`` if it is a valid subscription pattern, else raise InvalidSubject."""
    if not isinstance(pattern, str):
        raise InvalidSubject(f"subject must be a str, not {type(pattern).__name__}")
    if _PATTERN_RE.fullmatch(pattern) is None:
        raise InvalidSubject(_explain(pattern, wildcards=True))
    if _not_utf8(pattern):
        raise _utf8_error("subject", pattern)
    if _too_long(pattern):
        raise InvalidSubject(f"subject is longer than {MAX_SUBJECT_BYTES} bytes")
    return pattern


def validate_queue(queue: object) -> str:
    """Return ``queue`` if it is a valid queue-group name, else raise InvalidSubject."""
    if not isinstance(queue, str) or _QUEUE_RE.fullmatch(queue) is None:
        raise InvalidSubject(
            f"invalid queue group name {queue!r}: must be non-empty, without whitespace, '*' or '>'"
        )
    if _not_utf8(queue):
        raise _utf8_error("queue group name", queue)
    if _too_long(queue):
        raise InvalidSubject(f"queue group name is longer than {MAX_SUBJECT_BYTES} bytes")
    return queue


def is_literal(pattern: str) -> bool:
    """True if ``pattern`` contains no wildcard token."""
    return "*" not in pattern and ">" not in pattern


def matches(pattern: str, subject: str) -> bool:
    """Whether the literal ``subject`` matches ``pattern`` (``*`` one token, ``>`` the rest)."""
    want = pattern.split(".")
    have = subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


def overlap(a: str, b: str) -> bool:
    """Whether some subject matches both patterns (two streams may not capture it)."""
    ta = a.split(".")
    tb = b.split(".")
    for i in range(max(len(ta), len(tb))):
        x = ta[i] if i < len(ta) else None
        y = tb[i] if i < len(tb) else None
        if x == ">" or y == ">":
            # The other still has a token here (or its own ">"): both go on to match.
            return x is not None and y is not None
        if x is None or y is None:
            return False
        if x != "*" and y != "*" and x != y:
            return False
    return True


def covers(outer: str, inner: str) -> bool:
    """Whether every subject ``inner`` matches is matched by ``outer`` too."""
    to = outer.split(".")
    ti = inner.split(".")
    for i, x in enumerate(to):
        if x == ">":
            return len(ti) > i
        if i >= len(ti):
            return False
        y = ti[i]
        if y == ">":
            return False
        if x != "*" and (y == "*" or x != y):
            return False
    return len(to) == len(ti)


def _explain(text: str, *, wildcards: bool) -> str:
    what = "subject pattern" if wildcards else "subject"
    if text == "":
        return f"invalid {what} '': a subject cannot be empty"
    for token in text.split("."):
        if token == "":
            return f"invalid {what} {text!r}: empty token (leading, trailing or double dot)"
        if any(ch.isspace() for ch in token):
            return f"invalid {what} {text!r}: whitespace in token {token!r}"
        if token in ("*", ">"):
            if not wildcards:
                return f"invalid {what} {text!r}: wildcards are only allowed when subscribing"
            if token == ">":
                return f"invalid {what} {text!r}: '>' must be the last token"
        elif "*" in token or ">" in token:
            return f"invalid {what} {text!r}: '*' and '>' must be whole tokens, not in {token!r}"
    return f"invalid {what} {text!r}"


T = TypeVar("T", bound=Hashable)


class _Node(Generic[T]):
    __slots__ = ("children", "full", "items", "star")

    def __init__(self) -> None:
        self.children: dict[str, _Node[T]] = {}
        self.star: _Node[T] | None = None
        self.items: dict[T, None] = {}  # patterns ending here (insertion-ordered set)
        self.full: dict[T, None] = {}  # patterns ending in '>' below this node

    def empty(self) -> bool:
        return not (self.children or self.star or self.items or self.full)


class SubjectIndex(Generic[T]):
    """A trie of subscription patterns mapping each to a set of items.

    ``match(subject)`` returns the items of every pattern that matches, each once per
    pattern it was added under, in a stable order.
    """

    __slots__ = ("_count", "_root")

    def __init__(self) -> None:
        self._root: _Node[T] = _Node()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, pattern: str, item: T) -> None:
        """Add ``item`` under ``pattern`` (already validated with :func:`validate_pattern`)."""
        tokens = pattern.split(".")
        node = self._root
        for i, token in enumerate(tokens):
            if token == ">" and i == len(tokens) - 1:
                if item not in node.full:
                    node.full[item] = None
                    self._count += 1
                return
            if token == "*":
                if node.star is None:
                    node.star = _Node()
                node = node.star
            else:
                child = node.children.get(token)
                if child is None:
                    child = node.children[token] = _Node()
                node = child
        if item not in node.items:
            node.items[item] = None
            self._count += 1

    def remove(self, pattern: str, item: T) -> bool:
        """Remove ``item`` from ``pattern``; prune empty nodes. True if it was there."""
        tokens = pattern.split(".")
        path: list[tuple[_Node[T], str]] = []
        node: _Node[T] | None = self._root
        for i, token in enumerate(tokens):
            assert node is not None
            if token == ">" and i == len(tokens) - 1:
                found = node.full.pop(item, 0) is None
                break
            path.append((node, token))
            node = node.star if token == "*" else node.children.get(token)
            if node is None:
                return False
        else:
            assert node is not None
            found = node.items.pop(item, 0) is None
        if found:
            self._count -= 1
            self._prune(path, node)
        return found

    @staticmethod
    def _prune(path: list[tuple[_Node[T], str]], node: _Node[T] | None) -> None:
        for parent, token in reversed(path):
            child = parent.star if token == "*" else parent.children.get(token)
            if child is None or not child.empty():
                return
            if token == "*":
                parent.star = None
            else:
                del parent.children[token]

    def match(self, subject: str) -> list[T]:
        """Every item whose pattern matches the literal ``subject``."""
        out: list[T] = []
        self._match(self._root, subject.split("."), 0, out)
        return out

    def _match(self, node: _Node[T], tokens: list[str], i: int, out: list[T]) -> None:
        # Iterative along literal children, recursive only where '*' forks the walk.
        last = len(tokens)
        while True:
            if node.full and i < last:
                out.extend(node.full)
            if i == last:
                out.extend(node.items)
                return
            if node.star is not None:
                self._match(node.star, tokens, i + 1, out)
            child = node.children.get(tokens[i])
            if child is None:
                return
            node = child
            i += 1

    def items(self) -> Iterator[tuple[str, T]]:
        """Every ``(pattern, item)`` pair, for diagnostics and tests."""
        stack: list[tuple[_Node[T], list[str]]] = [(self._root, [])]
        while stack:
            node, prefix = stack.pop()
            for item in node.items:
                yield ".".join(prefix), item
            for item in node.full:
                yield ".".join([*prefix, ">"]), item
            if node.star is not None:
                stack.append((node.star, [*prefix, "*"]))
            for token, child in node.children.items():
                stack.append((child, [*prefix, token]))
