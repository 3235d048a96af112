"""Subject rules and the wildcard index, checked against brute-force references.

The references below are written from the rules in ``docs/protocol.md`` §11, not from
``asyncipc/subjects.py``; hypothesis draws from small alphabets so that wildcards, matches
and invalid characters actually occur.
"""

from __future__ import annotations

import gc
import itertools
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncipc.errors import InvalidSubject
from asyncipc.router import Route, Router
from asyncipc.subjects import (
    MAX_SUBJECT_BYTES,
    SubjectIndex,
    is_literal,
    known_valid,
    validate_pattern,
    validate_queue,
    validate_subject,
)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- references -----------------------------------------------------------------------


def _plain_token(t: str) -> bool:
    return t != "" and not any(c.isspace() or c in "*>" for c in t)


def ref_valid_subject(s: str) -> bool:
    if not s or len(s.encode()) > 1024:
        return False
    return all(_plain_token(t) for t in s.split("."))


def ref_valid_pattern(p: str) -> bool:
    if not p or len(p.encode()) > 1024:
        return False
    toks = p.split(".")
    for i, t in enumerate(toks):
        if t == "*":
            continue
        if t == ">":
            if i != len(toks) - 1:
                return False
            continue
        if not _plain_token(t):
            return False
    return True


def ref_valid_queue(q: str) -> bool:
    return q != "" and len(q.encode()) <= 1024 and not any(c.isspace() or c in "*>" for c in q)


def ref_match(pattern: str, subject: str) -> bool:
    ptoks, stoks = pattern.split("."), subject.split(".")
    for i, p in enumerate(ptoks):
        if p == ">" and i == len(ptoks) - 1:
            return len(stoks) > i
        if i >= len(stoks) or (p != "*" and p != stoks[i]):
            return False
    return len(ptoks) == len(stoks)


def accepts(validate: Callable[[str], str], text: str) -> bool:
    try:
        assert validate(text) == text
    except InvalidSubject:
        return False
    return True


def test_reference_matcher_itself() -> None:
    assert ref_match("a.*.c", "a.b.c")
    assert not ref_match("a.*.c", "a.c")
    assert not ref_match("a.*.c", "a.b.x.c")
    assert ref_match("a.>", "a.b")
    assert ref_match("a.>", "a.b.c")
    assert not ref_match("a.>", "a")
    assert ref_match(">", "a")
    assert ref_match(">", "a.b.c")
    assert ref_match("*", "a")
    assert not ref_match("*", "a.b")
    assert ref_match("a", "a")
    assert not ref_match("a", "a.b")
    assert ref_match("*.>", "a.b")
    assert not ref_match("*.>", "a")


# --- validation -----------------------------------------------------------------------

WHITESPACE = [" ", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x85", "\xa0", "\u2028", "\u3000"]


@pytest.mark.parametrize(
    "subject",
    [
        "a",
        "orders.created",
        "Orders.EU.created",
        "a.b.c.d.e.f",
        "_INBOX.abc.1",
        "é.ü.日本",
        "a-b_c:d",
    ],
)
def test_valid_subjects(subject: str) -> None:
    assert validate_subject(subject) == subject
    assert validate_pattern(subject) == subject
    assert is_literal(subject)


@pytest.mark.parametrize(
    ("subject", "reason"),
    [
        ("", "cannot be empty"),
        (".a", "empty token"),
        ("a.", "empty token"),
        ("a..b", "empty token"),
        (".", "empty token"),
        ("a b", "whitespace"),
        ("a.b\t", "whitespace"),
        ("a.*", "wildcards are only allowed when subscribing"),
        ("a.>", "wildcards are only allowed when subscribing"),
        ("a*", "must be whole tokens"),
        ("a.b>c", "must be whole tokens"),
    ],
)
def test_invalid_subjects_say_why(subject: str, reason: str) -> None:
    with pytest.raises(InvalidSubject, match=reason) as info:
        validate_subject(subject)
    assert repr(subject) in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("ws", WHITESPACE)
def test_every_kind_of_whitespace_is_refused(ws: str) -> None:
    with pytest.raises(InvalidSubject, match="whitespace"):
        validate_subject(f"a.b{ws}c")
    with pytest.raises(InvalidSubject, match="whitespace"):
        validate_pattern(f"a.{ws}.>")
    with pytest.raises(InvalidSubject):
        validate_queue(f"q{ws}")


@pytest.mark.parametrize("pattern", ["*", ">", "a.*", "a.>", "*.*.>", "a.*.c", "*.b.>", "a.b"])
def test_valid_patterns(pattern: str) -> None:
    assert validate_pattern(pattern) == pattern
    assert is_literal(pattern) == ("*" not in pattern and ">" not in pattern)


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("", "cannot be empty"),
        ("a.>.b", "'>' must be the last token"),
        (">.a", "'>' must be the last token"),
        ("a*", "must be whole tokens"),
        ("*b", "must be whole tokens"),
        ("a.*x.c", "must be whole tokens"),
        ("a>", "must be whole tokens"),
        ("a..*", "empty token"),
        (".>", "empty token"),
        ("*.", "empty token"),
        ("a. *", "whitespace"),
    ],
)
def test_invalid_patterns_say_why(pattern: str, reason: str) -> None:
    with pytest.raises(InvalidSubject, match=reason):
        validate_pattern(pattern)


def test_length_limit_is_in_utf8_bytes() -> None:
    assert MAX_SUBJECT_BYTES == 1024
    ok = "a" * 1024
    assert validate_subject(ok) == ok
    with pytest.raises(InvalidSubject, match="longer than 1024 bytes"):
        validate_subject("a" * 1025)
    four = "\U0001f600" * 256  # 256 characters, 1024 bytes
    assert validate_subject(four) == four
    with pytest.raises(InvalidSubject, match="longer than 1024 bytes"):
        validate_subject(four + "a")
    with pytest.raises(InvalidSubject, match="longer than 1024 bytes"):
        validate_subject("é" * 513)  # 513 characters, 1026 bytes
    with pytest.raises(InvalidSubject, match="longer than 1024 bytes"):
        validate_pattern("a." * 511 + "*.>")  # 1025 bytes
    with pytest.raises(InvalidSubject, match="longer than 1024 bytes"):
        validate_queue("q" * 1025)
    assert validate_queue("q" * 1024)


@pytest.mark.parametrize("bad", [None, b"a.b", 7, ("a",)])
def test_non_strings_are_invalid_subjects(bad: Any) -> None:
    with pytest.raises(InvalidSubject, match="must be a str"):
        validate_subject(bad)
    with pytest.raises(InvalidSubject, match="must be a str"):
        validate_pattern(bad)
    with pytest.raises(InvalidSubject):
        validate_queue(bad)


@pytest.mark.parametrize("queue", ["workers", "a.b", "a..b", ".", "日本"])
def test_valid_queue_names(queue: str) -> None:
    assert validate_queue(queue) == queue


@pytest.mark.parametrize("queue", ["", "a b", "w*", ">", "a.>"])
def test_invalid_queue_names(queue: str) -> None:
    with pytest.raises(InvalidSubject, match="invalid queue group name"):
        validate_queue(queue)


TRICKY = "ab.*> \t\xa0\u2028é"


@given(st.text(TRICKY, max_size=12))
@SETTINGS
def test_validation_agrees_with_the_reference(text: str) -> None:
    assert accepts(validate_subject, text) == ref_valid_subject(text)
    assert accepts(validate_pattern, text) == ref_valid_pattern(text)
    assert accepts(validate_queue, text) == ref_valid_queue(text)
    # asking twice (the cache of known-valid subjects) gives the same answer
    assert accepts(validate_subject, text) == ref_valid_subject(text)


def test_known_valid_cache_is_bounded() -> None:
    for i in range(10_000):
        validate_subject(f"bound.{i}")
    assert len(known_valid) <= 4096


# --- matching -------------------------------------------------------------------------

SMALL = ["a", "b", "c"]
small_subjects = st.lists(st.sampled_from(SMALL), min_size=1, max_size=4).map(".".join)
small_patterns = st.one_of(
    st.just(">"),
    st.lists(st.sampled_from([*SMALL, "*"]), min_size=1, max_size=4).flatmap(
        lambda toks: st.sampled_from([".".join(toks), ".".join([*toks, ">"])])
    ),
)
ALL_SMALL_SUBJECTS = [".".join(p) for n in range(1, 5) for p in itertools.product(SMALL, repeat=n)]


@given(small_patterns, small_subjects)
@SETTINGS
def test_single_pattern_matches_like_the_reference(pattern: str, subject: str) -> None:
    assert validate_pattern(pattern) == pattern
    idx: SubjectIndex[str] = SubjectIndex()
    idx.add(pattern, "x")
    assert (idx.match(subject) == ["x"]) == ref_match(pattern, subject)


@given(st.lists(st.tuples(small_patterns, st.integers(0, 4)), max_size=25))
@SETTINGS
def test_index_returns_exactly_the_reference_multiset(pairs: list[tuple[str, int]]) -> None:
    """Each item once per distinct pattern it is under that matches."""
    idx: SubjectIndex[int] = SubjectIndex()
    for pattern, item in pairs:
        idx.add(pattern, item)
    distinct = set(pairs)
    assert len(idx) == len(distinct)
    assert set(idx.items()) == distinct
    for subject in ALL_SMALL_SUBJECTS:
        want = Counter(item for pattern, item in distinct if ref_match(pattern, subject))
        assert Counter(idx.match(subject)) == want, subject


@given(st.lists(st.tuples(st.booleans(), small_patterns, st.integers(0, 3)), max_size=40))
@SETTINGS
def test_add_remove_sequences_track_the_reference(ops: list[tuple[bool, str, int]]) -> None:
    idx: SubjectIndex[int] = SubjectIndex()
    ref: set[tuple[str, int]] = set()
    for is_add, pattern, item in ops:
        if is_add:
            idx.add(pattern, item)
            ref.add((pattern, item))
        else:
            assert idx.remove(pattern, item) == ((pattern, item) in ref)
            ref.discard((pattern, item))
        assert len(idx) == len(ref)
    assert set(idx.items()) == ref
    for subject in ALL_SMALL_SUBJECTS:
        want = Counter(item for pattern, item in ref if ref_match(pattern, subject))
        assert Counter(idx.match(subject)) == want, subject


def test_match_order_is_stable() -> None:
    idx: SubjectIndex[str] = SubjectIndex()
    for name, pattern in [("1", "a.b"), ("2", "a.*"), ("3", ">"), ("4", "a.>"), ("5", "*.b")]:
        idx.add(pattern, name)
    first = idx.match("a.b")
    assert sorted(first) == ["1", "2", "3", "4", "5"]
    assert all(idx.match("a.b") == first for _ in range(3))


def test_remove_of_missing_pattern_or_item() -> None:
    idx: SubjectIndex[str] = SubjectIndex()
    idx.add("a.*.c", "x")
    assert not idx.remove("a.*.c", "y")
    assert not idx.remove("a.b.c", "x")
    assert not idx.remove("a.>", "x")
    assert not idx.remove("q.r.s", "x")
    assert idx.remove("a.*.c", "x")
    assert not idx.remove("a.*.c", "x")
    assert len(idx) == 0
    assert idx.match("a.b.c") == []


# --- queue groups (through the router, the structure that knows them) ----------------

small_queues = st.none() | st.sampled_from(["q1", "q2"])


@given(
    st.lists(st.tuples(small_patterns, small_queues), min_size=1, max_size=15),
    st.lists(st.sampled_from(ALL_SMALL_SUBJECTS), min_size=1, max_size=10),
)
@SETTINGS
def test_one_member_per_group_and_every_plain_subscription(
    subs: list[tuple[str, str | None]], published: list[str]
) -> None:
    router: Router[str] = Router()
    routes = [Route(f"owner{i}", i, pattern, queue) for i, (pattern, queue) in enumerate(subs)]
    for r in routes:
        router.add(r)
    for subject in published:
        got = router.route(subject)
        matching = [r for r in routes if ref_match(r.subject, subject)]
        plain = [r for r in matching if r.queue is None]
        assert Counter(id(r) for r in got if r.queue is None) == Counter(id(r) for r in plain)
        for queue in {r.queue for r in matching if r.queue is not None}:
            members = {id(r) for r in matching if r.queue == queue}
            chosen = [r for r in got if r.queue == queue]
            assert len(chosen) == 1, queue
            assert id(chosen[0]) in members
        assert {r.queue for r in got} <= {r.queue for r in matching}


# --- scaling, by counting work rather than timing it ---------------------------------


def count_calls(fn: Callable[[], object]) -> Counter[str]:
    """Python and C calls made while running ``fn`` (sys.setprofile events)."""
    counts: Counter[str] = Counter()

    def profiler(frame: Any, event: str, arg: Any) -> None:
        if event in ("call", "c_call"):
            counts[event] += 1

    # A collection in the window would count the finalizers it runs (objects other
    # tests left behind): collect first, and none while counting.
    gc.collect()
    gc.disable()
    sys.setprofile(profiler)
    try:
        fn()
    finally:
        sys.setprofile(None)
        gc.enable()
    return counts


def unrelated_patterns(n: int) -> list[str]:
    """Distinct subscriptions that never match ``orders.created``, some with wildcards."""
    out = []
    for i in range(n):
        kind = i % 4
        out.append([f"svc{i}.events", f"svc{i}.*", f"svc{i}.>", f"orders.created.x{i}"][kind])
    return out


def build_index(n_unrelated: int) -> SubjectIndex[str]:
    idx: SubjectIndex[str] = SubjectIndex()
    for p in unrelated_patterns(n_unrelated):
        idx.add(p, p)
    for p in ("orders.*", "orders.>", "orders.created", "*.created"):
        idx.add(p, "hit:" + p)
    return idx


def test_match_work_does_not_grow_with_unrelated_subscriptions() -> None:
    small, large = build_index(10), build_index(10_000)
    assert len(large) - len(small) == 9_990
    expected = sorted(["hit:orders.*", "hit:orders.>", "hit:orders.created", "hit:*.created"])
    assert sorted(small.match("orders.created")) == expected
    assert sorted(large.match("orders.created")) == expected
    c_small = count_calls(lambda: small.match("orders.created"))
    c_large = count_calls(lambda: large.match("orders.created"))
    assert c_small["call"] > 0
    assert c_small == c_large


def test_call_counting_does_detect_a_linear_scan() -> None:
    """The measuring method is sensitive: a brute-force matcher's counts do differ."""
    few, many = unrelated_patterns(10), unrelated_patterns(10_000)
    c_few = count_calls(lambda: [p for p in few if ref_match(p, "orders.created")])
    c_many = count_calls(lambda: [p for p in many if ref_match(p, "orders.created")])
    assert c_many["call"] > 100 * c_few["call"]


def test_removed_patterns_leave_no_work_behind() -> None:
    """Removal prunes the trie: a lookup after removing 10,000 patterns costs what it
    costs on an index that never had them."""
    fresh = build_index(0)
    used = build_index(0)
    extra = [*unrelated_patterns(10_000), *(f"orders.{i}.*" for i in range(100)), "*.*"]
    for p in extra:
        used.add(p, p)
    for p in extra:
        assert used.remove(p, p)
    assert len(used) == len(fresh)
    for subject in ("orders.created", "orders.7.x", "svc3.events", "a.b"):
        assert used.match(subject) == fresh.match(subject)
        assert count_calls(lambda s=subject: used.match(s)) == count_calls(
            lambda s=subject: fresh.match(s)
        )


@pytest.mark.parametrize("bad", [["a"], {"a": 1}, None, b"a", 7])
def test_non_string_subjects_are_invalid_subjects(bad: Any) -> None:
    with pytest.raises(InvalidSubject, match="must be a str"):
        validate_subject(bad)
    with pytest.raises(InvalidSubject, match="must be a str"):
        validate_pattern(bad)


# --- one-off subjects: the head checked once, the last token alone --------------------


@pytest.mark.parametrize("head", ["_INBOX.3f2a.", "$sys.stream.ack.orders.worker."])
@pytest.mark.parametrize(
    "tail",
    [
        "",
        " ",
        "a b",
        "*",
        ">",
        "a*",
        "x>",
        "\udcff",
        "a\u2028",
        "\xa0",
        "x" * (MAX_SUBJECT_BYTES + 1),
        "é" * 600,  # 600 characters, 1200 bytes
    ],
)
def test_a_known_one_off_head_does_not_pass_a_bad_last_token(head: str, tail: str) -> None:
    """A one-off subject whose head was found valid before is checked by its last token
    alone; that check must still refuse every bad token."""
    assert validate_subject(head + "1") == head + "1"  # the head is known now
    with pytest.raises(InvalidSubject):
        validate_subject(head + tail)


@pytest.mark.parametrize("tail", ["2", "ff", "a-b", "x_y:z", "日本", "é" * 200])
def test_a_known_one_off_head_passes_every_good_last_token(tail: str) -> None:
    head = "_INBOX.c0ffee."
    validate_subject(head + "1")
    assert validate_subject(head + tail) == head + tail
    assert head + tail not in known_valid  # made for one message: never cached


def test_a_one_off_head_is_no_shortcut_for_a_longer_subject() -> None:
    validate_subject("_INBOX.dead.1")
    with pytest.raises(InvalidSubject):
        validate_subject("_INBOX.dead..1")
    with pytest.raises(InvalidSubject):
        validate_subject("_INBOX.dead.*.1")
    assert validate_subject("_INBOX.dead.1.2") == "_INBOX.dead.1.2"
