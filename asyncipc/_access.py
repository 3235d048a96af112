"""One session's permissions, with the caches that keep checks off the hot path.

A session of a restricted user holds an :class:`Access`; a session that may do
everything (no users configured, the shared token, an in-process bus, a user without
lists) holds none, and its PUBs cost one ``is None`` test. The answers of
:class:`~asyncipc.Permissions` are cached per subject in a bounded dict, so a client
publishing on the same few subjects walks its lists once per subject, not per message.

Also here: the replies a client may publish to although its lists do not name them
(responses to the requests delivered to it, NATS's ``allow_responses``), and the password
check, which runs in a small thread pool of its own: scrypt is tens of milliseconds of
CPU and 16 MiB on purpose, and must neither stall the event loop nor be run by 32
threads at once for 32 strangers.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from .permissions import Permissions
from .subjects import ONE_OFF, is_literal
from .users import User, verify_password

__all__ = [
    "Access",
    "check_password",
    "find_user",
    "password_known",
    "password_pool",
    "publish_refusal",
    "subscribe_refusal",
]

_CACHE_MAX = 1024
"""Subjects whose answer one session remembers; past it, the cache starts over."""
_REPLIES_MAX = 4096
"""Requests delivered to one session that it may still answer; past it, the oldest go."""


class Access:
    """What one connected user may do, remembered per subject."""

    __slots__ = ("_parents", "_replies", "_sub", "perms", "pub_cache", "user")

    def __init__(self, user: User) -> None:
        self.user = user
        self.perms: Permissions = user.permissions
        self.pub_cache: dict[str, str | None] = {}
        """Subject -> why publishing there is refused (``None``: allowed). Sessions read
        it inline for the common case, a PUB without reply on an allowed subject."""
        self._sub: dict[str, str | None] = {}
        self._parents: dict[str, bool] = {}  # reply subject parent -> "parent.*" allowed
        # reply subject -> [responses left, deadline (time.monotonic())]
        self._replies: dict[str, list[float]] = {}

    def explain(self, what: str) -> str:
        return f"permission denied for user {self.user.name!r}: {what}"

    def publish_refusal(self, subject: str, reply: str | None) -> str | None:
        """Why this PUB is refused (naming the subject), or ``None``.

        The subject must be allowed for publishing, or be the reply subject of a request
        delivered to this client (within its :class:`~asyncipc.permissions.ResponsePolicy`);
        a reply subject the PUB asks answers on must be one the client may subscribe to,
        so that nobody can have a service publish where they may not themselves.
        """
        cache = self.pub_cache
        if self._replies and subject in self._replies and self._response(subject):
            why = None  # a response: ahead of the cache, which may hold a refusal for it
        elif subject in cache:
            why = cache[subject]
        else:
            why = self.perms.publish_refusal(subject)
            if not subject.startswith(ONE_OFF):
                if len(cache) >= _CACHE_MAX:
                    cache.clear()
                cache[subject] = why
        if why is None and reply is not None and not self._reply_ok(reply):
            refused = self.subscribe_refusal(reply)
            if refused is not None:
                return self.explain(f"reply subject {reply!r}: {refused}")
        return None if why is None else self.explain(why)

    def _reply_ok(self, reply: str) -> bool:
        """Whether ``reply`` is allowed because every subject one token under its parent
        is: true of a request's inbox ``_INBOX.<id>.<n>``, whose ``n`` is new each time,
        so this is the check that can be cached (by parent) where the literal cannot.
        Exact: if ``parent.*`` may be subscribed to, so may each ``parent.x``."""
        parent, dot, _ = reply.rpartition(".")
        if not dot:
            return False
        known = self._parents
        if parent in known:
            return known[parent]
        ok = self.perms.subscribe_refusal(parent + ".*") is None
        if len(known) >= _CACHE_MAX:
            known.clear()
        known[parent] = ok
        return ok

    def _response(self, subject: str) -> bool:
        entry = self._replies.get(subject)
        if entry is None or self.perms.publish_denied(subject):
            return False
        if entry[1] < time.monotonic():
            del self._replies[subject]
            return False
        entry[0] -= 1
        if entry[0] <= 0:
            del self._replies[subject]
        return True

    def request_delivered(self, reply: str) -> None:
        """A message with reply subject ``reply`` was delivered to this client: it may
        answer it (if its permissions allow responses)."""
        policy = self.perms.responses
        if policy is None:
            return
        replies = self._replies
        if reply in replies:
            return
        if len(replies) >= _REPLIES_MAX:
            del replies[next(iter(replies))]
        replies[reply] = [policy.max_msgs, time.monotonic() + policy.expires]

    def subscribe_refusal(self, pattern: str) -> str | None:
        """Why subscribing to ``pattern`` is refused (naming it), or ``None``."""
        cache = self._sub
        if pattern in cache:
            return cache[pattern]
        why = self.perms.subscribe_refusal(pattern)
        if not pattern.startswith(ONE_OFF) or not is_literal(pattern):
            if len(cache) >= _CACHE_MAX:
                cache.clear()
            cache[pattern] = why
        return why


def publish_refusal(user: User | None, subject: str, reply: str | None = None) -> str | None:
    """For an adapter acting for ``user`` (None: may do everything): why it may not
    publish on ``subject`` with reply subject ``reply``, in the words a session uses."""
    if user is None or user.permissions.unrestricted:
        return None
    return Access(user).publish_refusal(subject, reply)


def subscribe_refusal(user: User | None, pattern: str) -> str | None:
    """For an adapter acting for ``user``: why it may not subscribe to ``pattern``."""
    if user is None or user.permissions.unrestricted:
        return None
    access = Access(user)
    why = access.subscribe_refusal(pattern)
    return None if why is None else access.explain(why)


async def find_user(users: Iterable[User], name: str, password: str) -> User | None:
    """The user ``name`` if ``password`` is its password (for adapters that take a user
    and password per call: HTTP Basic, gRPC metadata). Checked off the event loop."""
    user = next((u for u in users if u.name == name), None)
    hashed = user.password_hash if user is not None else None
    if user is None or hashed is None:
        return None
    if password_known(password, hashed):
        return user
    loop = asyncio.get_running_loop()
    ok = await loop.run_in_executor(password_pool(), check_password, password, hashed)
    return user if ok else None


# --- passwords ----------------------------------------------------------------------------

_pool: ThreadPoolExecutor | None = None
_KEY = os.urandom(32)  # keys the cache below: what it holds is no hash of a password alone
_proven: dict[bytes, None] = {}
_PROVEN_MAX = 1024


def _proof(password: str, hashed: str) -> bytes:
    return hmac.new(_KEY, f"{hashed}\0{password}".encode(), hashlib.sha256).digest()


def password_known(password: str, hashed: str) -> bool:
    """Whether this password was already proven against ``hashed`` in this process: a
    client that reconnects (or a thousand that restart together) is not made to wait for
    scrypt again."""
    return _proof(password, hashed) in _proven


def check_password(password: str, hashed: str) -> bool:
    """:func:`~asyncipc.users.verify_password`, remembering success. Runs in a thread."""
    ok = verify_password(password, hashed)
    if ok:
        if len(_proven) >= _PROVEN_MAX:
            _proven.clear()
        _proven[_proof(password, hashed)] = None
    return ok


def password_pool() -> ThreadPoolExecutor:
    """The two threads passwords are checked in (created on first use)."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="asyncipc-password")
    return _pool
