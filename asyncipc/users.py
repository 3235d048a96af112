"""Users: who a client is, and what it may do. Pure: no I/O, no asyncio.

A :class:`User` is identified in one of three ways (``docs/security.md``):

- by a secret: the client names itself (``ConnectOptions(user=..., password=...)``) and
  the broker checks the password against :attr:`User.password_hash`, a salted scrypt
  hash (``asyncipc passwd`` prints one; :func:`hash_password` makes one);
- by Unix peer credentials: :attr:`User.uid` (and optionally :attr:`User.gid`) as the
  kernel reports them on ``unix://`` and the channels that set up over one (``shm://``),
  and the FIFO owner on ``fifo://``. No secret travels: this is the identity other
  brokers do not offer;
- by a TLS client certificate: :attr:`User.cert` equal to the certificate's subject
  common name or one of its subject alternative names, on a ``tls://`` listener that
  verifies clients (``?ca=...``).

:func:`identify` decides, from the HELLO's fields and the link's
:class:`~asyncipc.link.PeerInfo`, which user a new client is.

Why scrypt from the standard library: it is memory-hard (what a stolen configuration
file is attacked with is GPUs), needs no dependency, and :func:`hmac.compare_digest`
compares in constant time. The cost is paid off the event loop (``_session.py``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigurationError
from .link import PeerInfo
from .permissions import ALL, Permissions

__all__ = [
    "MAX_PASSWORD",
    "SCRYPT_PARAMS",
    "Identity",
    "User",
    "hash_password",
    "identify",
    "verify_password",
]

SCRYPT_PARAMS = (1 << 14, 8, 1)
"""``(n, r, p)`` of new hashes: 16 MiB and some tens of milliseconds per check."""
_MAX_SCRYPT_MEM = 64 * 1024 * 1024
MAX_PASSWORD = 1024
"""Longest password a HELLO may carry: a longer one is refused before it is hashed."""
_PREFIX = "scrypt"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """A salted scrypt hash of ``password``: ``scrypt$n$r$p$salt$hash`` (base64url).

    What goes in a configuration file's ``password_hash``; never store the password.
    """
    n, r, p = SCRYPT_PARAMS
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"{_PREFIX}${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def _parse_hash(hashed: str) -> tuple[int, int, int, bytes, bytes]:
    parts = hashed.split("$")
    if len(parts) != 6 or parts[0] != _PREFIX:
        raise ConfigurationError(
            "password_hash must be 'scrypt$n$r$p$salt$hash' as `asyncipc passwd` prints it"
        )
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, digest = _unb64(parts[4]), _unb64(parts[5])
    except ValueError:
        raise ConfigurationError("password_hash: malformed numbers or base64") from None
    if n < 2 or n & (n - 1) or r < 1 or p < 1 or 128 * n * r * p > _MAX_SCRYPT_MEM:
        raise ConfigurationError(
            f"password_hash: scrypt parameters n={n} r={r} p={p} are out of range"
        )
    if len(salt) < 8 or len(digest) < 16:
        raise ConfigurationError("password_hash: salt or hash too short")
    return n, r, p, salt, digest


def verify_password(password: str, hashed: str) -> bool:
    """Whether ``password`` matches ``hashed`` (from :func:`hash_password`).

    CPU- and memory-bound for tens of milliseconds on purpose: the broker runs it in a
    worker thread, never on its event loop.
    """
    n, r, p, salt, digest = _parse_hash(hashed)
    try:
        got = hashlib.scrypt(
            password.encode(),
            salt=salt,
            n=n,
            r=r,
            p=p,
            dklen=len(digest),
            maxmem=2 * _MAX_SCRYPT_MEM,
        )
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(got, digest)


@dataclass(frozen=True)
class User:
    """One user of the broker and its permissions.

    Attributes:
        name: what the client names itself with (``ConnectOptions(user=...)``) and what
            the broker's logs show.
        password_hash: a :func:`hash_password` hash; the user proves itself with the
            password.
        uid: the Unix uid that identifies the user through peer credentials.
        gid: with ``uid``, the gid must match as well.
        cert: the TLS client certificate's subject CN or a subject alternative name.
        permissions: what the user may publish and subscribe to.
    """

    name: str
    password_hash: str | None = None
    uid: int | None = None
    gid: int | None = None
    cert: str | None = None
    permissions: Permissions = field(default=ALL)

    def __post_init__(self) -> None:
        if not self.name or any(ch.isspace() or not ch.isprintable() for ch in self.name):
            raise ConfigurationError(f"user name {self.name!r} must be printable, no spaces")
        if self.password_hash is None and self.uid is None and self.cert is None:
            raise ConfigurationError(
                f"user {self.name!r} has no identity: give it a password_hash, a uid or a cert"
            )
        if self.gid is not None and self.uid is None:
            raise ConfigurationError(f"user {self.name!r}: gid needs a uid")
        if self.password_hash is not None:
            _parse_hash(self.password_hash)

    def peer_matches(self, peer: PeerInfo) -> bool:
        """Whether ``peer``'s credentials (uid/gid, TLS certificate) identify this user."""
        if (
            self.uid is not None
            and peer.uid == self.uid
            and (self.gid is None or peer.gid == self.gid)
        ):
            return True
        return self.cert is not None and self.cert in certificate_names(peer)


def certificate_names(peer: PeerInfo) -> tuple[str, ...]:
    """The subject CNs and subject alternative names of ``peer``'s verified TLS
    certificate (``ssl.SSLSocket.getpeercert()`` form), or ``()``."""
    cert = peer.extra.get("peercert") if peer.extra else None
    if not isinstance(cert, Mapping):
        return ()
    names: list[str] = []
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                names.append(value)
    for _kind, value in cert.get("subjectAltName", ()):
        names.append(value)
    return tuple(names)


@dataclass(frozen=True)
class Identity:
    """What :func:`identify` decided: the user (``None``: the shared token or an
    in-process bus, which may do everything), or why the client is refused."""

    user: User | None = None
    refusal: str | None = None
    password: str | None = None
    """Set when the password is still to be checked (off the event loop) against
    ``user.password_hash``."""


def identify(
    users: Iterable[User],
    fields: Mapping[str, Any],
    peer: PeerInfo,
    *,
    token_ok: bool,
    in_process: bool,
) -> Identity:
    """Who the client that sent HELLO ``fields`` over a link with ``peer`` is.

    - ``user`` in HELLO: that user, proven by ``password``, or by the peer's credentials
      when the user has a uid or cert and no password was sent;
    - otherwise the first user the peer's credentials (uid, certificate) identify;
    - otherwise a valid shared token (``token_ok``) or an in-process link: everything;
    - otherwise refused.

    An in-process link whose peer carries a :class:`User` in ``extra["user"]`` is that
    user: an adapter (REST, WebSocket, gRPC) that authenticated its caller attaches a
    bus for it that way, so that the broker enforces the caller's permissions.
    """
    by_name = {u.name: u for u in users}
    vouched = peer.extra.get("user") if in_process and peer.extra else None
    if isinstance(vouched, User):
        current = by_name.get(vouched.name)
        if current is None:
            return Identity(refusal=f"user {vouched.name!r} is not configured")
        return Identity(user=current)
    name = fields.get("user")
    password = fields.get("password")
    if name is not None:
        user = by_name.get(name) if isinstance(name, str) else None
        if user is None:
            return Identity(refusal="unknown user or wrong password")
        if isinstance(password, str) and user.password_hash is not None:
            if len(password) > MAX_PASSWORD:  # scrypt's first pass is linear in it
                return Identity(refusal=f"password longer than {MAX_PASSWORD} characters")
            return Identity(user=user, password=password)
        if password is None and user.peer_matches(peer):
            return Identity(user=user)
        return Identity(refusal="unknown user or wrong password")
    for user in by_name.values():
        if user.peer_matches(peer):
            return Identity(user=user)
    if token_ok or in_process:
        return Identity()
    return Identity(refusal="user required: connect with a user and password")
