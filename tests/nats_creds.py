"""NATS nkeys and JWTs made in the tests, for nats-server's nkey and operator modes.

A helper module of test_nats.py. Keys come from the ``nkeys`` package (an ed25519 key
pair, encoded as NATS encodes it: a seed ``S...`` and a public key whose first letter
says its role, ``O`` operator, ``A`` account, ``U`` user). A JWT is signed here as the
nats-io/jwt library (v2) signs one: ``base64url(header).base64url(claims).base64url(sig)``,
no padding, header ``{"typ":"JWT","alg":"ed25519-nkey"}``, the signature by the issuer's
key over the first two parts. nats-server checks the chain: the operator JWT it is
configured with signs the accounts, an account signs its users.
"""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys

__all__ = [
    "Key",
    "account_jwt",
    "creds_file",
    "new_key",
    "operator_config",
    "operator_jwt",
    "user_jwt",
]

_NO_LIMIT = -1


@dataclass(frozen=True)
class Key:
    """An nkey pair: ``seed`` (secret, ``S...``) and ``public`` (``O...``/``A...``/``U...``)."""

    seed: str
    public: str

    def sign(self, data: bytes) -> bytes:
        kp = nkeys.from_seed(bytearray(self.seed.encode()))
        signature: bytes = kp.sign(data)
        return signature


def new_key(role: str) -> Key:
    """A fresh key pair for ``role``: "operator", "account" or "user"."""
    prefix = {
        "operator": nkeys.PREFIX_BYTE_OPERATOR,
        "account": nkeys.PREFIX_BYTE_ACCOUNT,
        "user": nkeys.PREFIX_BYTE_USER,
    }[role]
    seed: bytes = nkeys.encode_seed(os.urandom(32), prefix)
    kp = nkeys.from_seed(bytearray(seed))
    return Key(seed.decode(), kp.public_key.decode())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(issuer: Key, subject: str, name: str, nats: dict[str, Any]) -> str:
    """A JWT with the v2 claims ``jti iat iss name sub nats``, signed by ``issuer``."""
    claims = {
        "jti": base64.b32encode(os.urandom(20)).decode(),  # any unique id will do
        "iat": int(time.time()),
        "iss": issuer.public,
        "name": name,
        "sub": subject,
        "nats": {**nats, "version": 2},
    }
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signature = issuer.sign(f"{header}.{body}".encode())
    return f"{header}.{body}.{_b64(signature)}"


def operator_jwt(operator: Key, name: str = "test-operator") -> str:
    """The operator's own JWT (self-signed): nats-server's ``operator:``."""
    return _jwt(operator, operator.public, name, {"type": "operator"})


def account_jwt(operator: Key, account: Key, name: str = "test-account") -> str:
    """An account the operator signs, without limits (jwt v2's zero limits mean none
    allowed, so each is -1, "no limit", as ``nsc add account`` writes it)."""
    limits = {
        "subs": _NO_LIMIT,
        "data": _NO_LIMIT,
        "payload": _NO_LIMIT,
        "imports": _NO_LIMIT,
        "exports": _NO_LIMIT,
        "wildcards": True,
        "conn": _NO_LIMIT,
        "leaf": _NO_LIMIT,
    }
    return _jwt(
        operator,
        account.public,
        name,
        {"type": "account", "limits": limits, "default_permissions": {"pub": {}, "sub": {}}},
    )


def user_jwt(account: Key, user: Key, name: str = "test-user") -> str:
    """A user the account signs, allowed everything."""
    return _jwt(
        account,
        user.public,
        name,
        {
            "type": "user",
            "pub": {},
            "sub": {},
            "subs": _NO_LIMIT,
            "data": _NO_LIMIT,
            "payload": _NO_LIMIT,
        },
    )


def creds_file(path: Path, jwt: str, user: Key) -> Path:
    """Write a ``.creds`` file as ``nsc`` does: the user JWT, then the user's seed."""
    path.write_text(
        "-----BEGIN NATS USER JWT-----\n"
        f"{jwt}\n"
        "------END NATS USER JWT------\n"
        "\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n"
        "\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user.seed}\n"
        "------END USER NKEY SEED------\n"
        "\n"
        "*************************************************************\n"
    )
    path.chmod(0o600)
    return path


def operator_config(operator: Key, *accounts: tuple[Key, str]) -> str:
    """nats-server's configuration for operator mode: the operator's JWT and the account
    JWTs preloaded into a memory resolver (``accounts`` are (key, JWT) pairs)."""
    preload = "\n".join(f"  {key.public}: {jwt}" for key, jwt in accounts)
    return (
        f"operator: {operator_jwt(operator)}\n"
        "resolver: MEMORY\n"
        f"resolver_preload: {{\n{preload}\n}}\n"
    )
