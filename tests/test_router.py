"""The router on its own: routes, the lookup cache, queue-group rotation and removal.

Pure: no broker, no links. Owners are plain strings standing in for broker sessions.
"""

from __future__ import annotations

import gc
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

from asyncipc.protocol import Overflow
from asyncipc.router import Route, Router
from asyncipc.subjects import matches


def make(*specs: tuple[str, str | None]) -> tuple[Router[str], list[Route[str]]]:
    router: Router[str] = Router()
    routes = []
    for i, (subject, queue) in enumerate(specs):
        r = Route(f"owner{i}", i + 1, subject, queue)
        router.add(r)
        routes.append(r)
    return router, routes


def shares(picks: list[Route[str]]) -> Counter[int]:
    return Counter(r.sid for r in picks)


def group_pick(router: Router[str], subject: str, queue: str) -> Route[str]:
    chosen = [r for r in router.route(subject) if r.queue == queue]
    assert len(chosen) == 1
    return chosen[0]


# --- routes ---------------------------------------------------------------------------


def test_route_carries_the_subscription_fields() -> None:
    r = Route("session", 4, "a.*", "q", Overflow.DROP_OLDEST)
    assert (r.owner, r.sid, r.subject, r.queue) == ("session", 4, "a.*", "q")
    assert (r.overflow, r.dropped) == (Overflow.DROP_OLDEST, 0)
    plain = Route("s", 1, "a")
    assert (plain.queue, plain.overflow) == (None, Overflow.BLOCK)
    assert "a.*" in repr(r)


def test_routes_are_distinct_by_identity() -> None:
    """Two subscriptions with the same fields (two clients, same sid) are two routes."""
    router: Router[str] = Router()
    a, b = Route("c1", 1, "x.y"), Route("c2", 1, "x.y")
    router.add(a)
    router.add(b)
    router.add(a)  # adding the same route again changes nothing
    assert len(router) == 2
    got = router.route("x.y")
    assert len(got) == 2
    assert {id(r) for r in got} == {id(a), id(b)}
    assert router.remove(a)
    assert not router.remove(a)
    assert [id(r) for r in router.route("x.y")] == [id(b)]
    assert len(router) == 1


def test_plain_routes_get_every_matching_message() -> None:
    router, (exact, star, full, other) = make(
        ("a.b", None), ("a.*", None), ("a.>", None), ("z.*", None)
    )
    assert {r.sid for r in router.route("a.b")} == {exact.sid, star.sid, full.sid}
    assert {r.sid for r in router.route("a.c")} == {star.sid, full.sid}
    assert {r.sid for r in router.route("a.b.c")} == {full.sid}
    assert [r.sid for r in router.route("z.q")] == [other.sid]
    assert router.route("nothing") == []
    assert router.route("a") == []


def test_table_changes_are_seen_by_the_next_lookup() -> None:
    """The per-subject cache is dropped on every add and remove."""
    router, (first,) = make(("a.*", None))
    assert [r.sid for r in router.route("a.b")] == [first.sid]
    late = Route("late", 9, "a.b")
    router.add(late)
    assert {r.sid for r in router.route("a.b")} == {first.sid, 9}
    router.remove(first)
    assert [r.sid for r in router.route("a.b")] == [9]
    router.remove(late)
    assert router.route("a.b") == []


# --- queue groups ---------------------------------------------------------------------


def test_round_robin_gives_equal_shares_in_strict_rotation() -> None:
    router, _ = make(("work.*", "q"), ("work.*", "q"), ("work.*", "q"))
    picks = [group_pick(router, "work.x", "q") for _ in range(30)]
    assert shares(picks) == {1: 10, 2: 10, 3: 10}
    # strict rotation: every window of 3 consecutive messages reaches all 3 members
    for i in range(len(picks) - 2):
        assert {r.sid for r in picks[i : i + 3]} == {1, 2, 3}


def test_groups_are_independent_and_plain_routes_get_everything() -> None:
    router, _ = make(
        ("s.*", "g1"),
        ("s.*", "g1"),
        ("s.*", "g2"),
        ("s.*", "g2"),
        ("s.*", "g2"),
        ("s.*", None),
        ("s.>", None),
    )
    per_route: Counter[int] = Counter()
    for _ in range(60):
        got = router.route("s.t")
        assert Counter(r.queue for r in got) == {"g1": 1, "g2": 1, None: 2}
        per_route.update(r.sid for r in got)
    assert per_route == {1: 30, 2: 30, 3: 20, 4: 20, 5: 20, 6: 60, 7: 60}


def test_one_group_across_different_patterns_and_owners() -> None:
    """Members of a queue group share messages whatever pattern each subscribed with."""
    router, _ = make(("o.x", "q"), ("o.*", "q"), ("o.>", "q"), ("*.x", "q"), ("o.y", "q"))
    picks = [group_pick(router, "o.x", "q") for _ in range(40)]
    assert shares(picks) == {1: 10, 2: 10, 3: 10, 4: 10}  # o.y does not match


def test_rotation_spans_subjects() -> None:
    """One turn per queue group, not per subject: a group on ``p.*`` that receives a new
    subject for every message (``p.0``, ``p.1``, ...) still shares them out."""
    router, _ = make(("p.*", "q"), ("p.*", "q"), ("p.*", "q"))
    picks = [group_pick(router, f"p.{n}", "q") for n in range(300)]
    assert shares(picks) == {1: 100, 2: 100, 3: 100}
    mixed = [group_pick(router, "p.x" if n % 2 else "p.y", "q").sid for n in range(30)]
    for i in range(len(mixed) - 2):
        assert set(mixed[i : i + 3]) == {1, 2, 3}


def test_the_turn_goes_with_the_last_member() -> None:
    router, routes = make(("t.*", "q"), ("t.*", "q"))
    for _ in range(3):
        group_pick(router, "t.x", "q")
    for r in routes:
        router.remove(r)
    router.add(Route("new", 9, "t.*", "q"))
    assert group_pick(router, "t.x", "q").sid == 9


def test_rotation_survives_unrelated_table_changes() -> None:
    """docs/decisions.md: a table change must not send the next message to member 0 again."""
    router, _ = make(("r.*", "q"), ("r.*", "q"), ("r.*", "q"))
    seq = []
    for i in range(12):
        seq.append(group_pick(router, "r.x", "q").sid)
        extra = Route("other", 100 + i, f"unrelated.{i}")
        router.add(extra)
        if i % 2:
            router.remove(extra)
        router.clear_cache()
    assert seq == [seq[0], seq[1], seq[2]] * 4
    assert set(seq[:3]) == {1, 2, 3}


def test_rotation_survives_the_cache_filling_up() -> None:
    router, _ = make(("c.*", "q"), ("c.*", "q"))
    before = group_pick(router, "c.0", "q").sid
    for i in range(10_000):  # more distinct subjects than the cache holds
        router.route(f"c.{i + 1}")
    after = group_pick(router, "c.0", "q").sid
    assert after != before


def test_adding_a_member_joins_the_rotation_fairly() -> None:
    router, _ = make(("m.*", "q"), ("m.*", "q"))
    group_pick(router, "m.x", "q")
    router.add(Route("newcomer", 3, "m.*", "q"))
    picks = [group_pick(router, "m.x", "q") for _ in range(30)]
    assert shares(picks) == {1: 10, 2: 10, 3: 10}


def test_removing_a_member_between_messages() -> None:
    router, (m1, m2, m3) = make(("d.*", "q"), ("d.*", "q"), ("d.*", "q"))
    group_pick(router, "d.x", "q")
    group_pick(router, "d.x", "q")
    router.remove(m2)
    picks = [group_pick(router, "d.x", "q") for _ in range(20)]
    assert m2.sid not in shares(picks)
    assert shares(picks) == {m1.sid: 10, m3.sid: 10}
    router.remove(m1)
    router.remove(m3)
    assert [r for r in router.route("d.x") if r.queue == "q"] == []


def test_removal_while_iterating_a_routing_result() -> None:
    """The broker removes routes (slow consumers, closed sessions) while it walks the list
    that route() gave it: the walk must see the list as it was, and later lookups must
    not see the removed routes. Both a cached and an uncached lookup are walked."""
    router, routes = make(("w.*", None), ("w.>", None), ("w.x", None))
    assert len(router.route("w.x")) == 3  # fills the cache
    got = router.route("w.x")  # served from the cache
    visited = []
    for r in got:
        visited.append(r.sid)
        assert router.remove(r)
    assert sorted(visited) == [1, 2, 3]
    assert router.route("w.x") == []
    for r in routes:
        router.add(r)
    got = router.route("w.x")  # uncached: the table just changed
    visited = []
    for r in got:
        visited.append(r.sid)
        router.remove(r)
        router.add(Route("newcomer", 10 + r.sid, "w.*"))
    assert sorted(visited) == [1, 2, 3]
    assert sorted(r.sid for r in router.route("w.x")) == [11, 12, 13]


def test_removal_of_group_members_while_iterating() -> None:
    router, _ = make(("g.*", None), ("g.*", "q"), ("g.*", "q"))
    got = router.route("g.x")
    assert len(got) == 2
    for r in got:
        assert router.remove(r)
    remaining = router.route("g.x")
    assert len(remaining) == 1  # the member that was not chosen
    assert remaining[0].queue == "q"
    assert all(remaining[0] is not r for r in got)
    assert router.remove(remaining[0])
    assert router.route("g.x") == []
    assert len(router) == 0


# --- scaling, by counting calls -------------------------------------------------------


def count_calls(fn: Callable[[], object]) -> Counter[str]:
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


def test_uncached_routing_work_does_not_grow_with_unrelated_routes() -> None:
    def build(n: int) -> Router[str]:
        router: Router[str] = Router()
        for i in range(n):
            router.add(Route(f"o{i}", i, f"svc{i}.>" if i % 2 else f"svc{i}.events"))
        for i, queue in enumerate([None, None, "q", "q"]):
            router.add(Route("hit", 1_000_000 + i, "orders.*", queue))
        return router

    small, large = build(10), build(10_000)
    c_small = count_calls(lambda: small.route("orders.created"))  # cache miss
    c_large = count_calls(lambda: large.route("orders.created"))
    assert c_small["call"] > 0
    assert c_small == c_large
    assert count_calls(lambda: small.route("orders.created")) == count_calls(
        lambda: large.route("orders.created")
    )


# --- reply inboxes: routed by their prefix, outside the caches ------------------------


def reference(routes: list[Route[str]], subject: str) -> set[int]:
    return {id(r) for r in routes if matches(r.subject, subject)}


INBOX_SUBJECTS = [
    "_INBOX.a.1",
    "_INBOX.a.ff",
    "_INBOX.b.1",
    "_INBOX.a",
    "_INBOX.a.1.2",
    "_INBOX.c.1",
    "orders.created",
]


def test_reply_inboxes_get_what_a_full_match_would_give() -> None:
    """Inbox subscriptions (``_INBOX.<id>.*``) are routed by their prefix while nothing
    else could match an inbox; every other pattern that could (``>``, ``*.*.*``,
    ``_INBOX.>``, a queue group on an inbox, a literal inbox) puts the full match back.
    At each step of adding and removing them, every subject gets exactly the routes that
    match it, no more, no fewer."""
    specs: list[tuple[str, str | None]] = [
        ("_INBOX.a.*", None),
        ("_INBOX.b.*", None),
        ("_INBOX.a.*", None),  # a second subscription to the same inbox
        (">", None),
        ("*.a.*", None),
        ("_INBOX.>", None),
        ("_INBOX.a.*", "q"),
        ("_INBOX.a.1", None),
        ("*.*", None),
        ("orders.*", None),
    ]
    router: Router[str] = Router()
    live: list[Route[str]] = []

    def check() -> None:
        for subject in INBOX_SUBJECTS:
            got = router.route(subject)
            picked_groups = [r for r in got if r.queue is not None]
            plain = {id(r) for r in got if r.queue is None}
            want = reference([r for r in live if r.queue is None], subject)
            assert plain == want, subject
            assert len(picked_groups) == (
                1 if any(r.queue and matches(r.subject, subject) for r in live) else 0
            )

    for i, (subject, queue) in enumerate(specs):
        route = Route(f"o{i}", i + 1, subject, queue)
        router.add(route)
        live.append(route)
        check()
    for route in [*live[3:], *live[:3]]:  # the others go first, then the inboxes
        assert router.remove(route)
        live.remove(route)
        check()
    assert len(router) == 0


def test_a_reply_inbox_subject_fills_no_cache() -> None:
    """A stream of reply subjects under one inbox subscription leaves the route cache to
    the subjects that come back."""
    router: Router[str] = Router()
    inbox = Route("requester", 1, "_INBOX.x.*")
    router.add(inbox)
    router.add(inbox)  # adding the same route again changes nothing
    router.add(Route("service", 2, "svc.echo"))
    router.route("svc.echo")
    for n in range(1000):
        assert router.route(f"_INBOX.x.{n:x}") == [inbox]
    assert list(router.cache) == ["svc.echo"]
    assert router.route("_INBOX.y.1") == []
    # Nor a trie walk: a new reply subject is one lookup of its prefix (no call beyond
    # the lambda and route() itself; route() is not seen where the router is compiled).
    assert count_calls(lambda: router.route("_INBOX.x.new"))["call"] <= 2
