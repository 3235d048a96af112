"""The broker configuration file: listeners, users, permissions, limits and streams (TOML).

::

    listen = ["unix:///run/app/asyncipc.sock", "tcp://0.0.0.0:4222"]
    token = "..."                    # optional: the shared token, which may do everything

    [limits]                         # any BrokerOptions field: max_frame, high_water, ...
    max_frame = 1048576

    [[users]]
    name = "billing"
    password_hash = "scrypt$..."     # `asyncipc passwd` prints one; `password` also accepted
    publish = { allow = ["orders.>", "billing.>"], deny = ["orders.secret.>"] }
    subscribe = { allow = ["orders.*", "_INBOX.>"] }

    [[streams]]
    name = "ORDERS"
    subjects = ["orders.>"]

``asyncipc broker --config FILE`` reads it; ``--check-config`` only checks it. Every
mistake is a :class:`~asyncipc.ConfigurationError` naming the file, the key
(``users[2].publish.allow[0]``) and, where it can be found, the line. The whole format is
``docs/security.md``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigurationError, InvalidSubject
from .options import BrokerOptions
from .permissions import Permissions, ResponsePolicy
from .streams.config import StreamConfig
from .subjects import validate_pattern
from .users import User, hash_password

__all__ = ["BrokerConfig", "load_config", "parse_config"]

_TOP = {"listen", "token", "store", "remote_signals", "limits", "users", "streams"}
_USER_KEYS = {
    "name",
    "password",
    "password_hash",
    "uid",
    "gid",
    "cert",
    "publish",
    "subscribe",
    "allow_responses",
}
_NOT_LIMITS = {"users", "ssl", "token", "store", "remote_signals"}
"""BrokerOptions fields that are not ``[limits]``: they have their own keys or no TOML form."""


@dataclass(frozen=True)
class BrokerConfig:
    """A configuration file, read and checked.

    Attributes:
        path: where it was read from.
        listen: the URLs to serve.
        options: the :class:`~asyncipc.BrokerOptions` it sets (users, limits, token...).
        streams: the streams to create at start.
    """

    path: str
    listen: tuple[str, ...]
    options: BrokerOptions
    streams: tuple[StreamConfig, ...]


class _Problem(Exception):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


def load_config(path: str | os.PathLike[str], base: BrokerOptions | None = None) -> BrokerConfig:
    """Read and check the file at ``path``. ``base``: options the file's settings
    override (the command line's). Raises ConfigurationError naming the key and line."""
    where = os.fspath(path)
    try:
        with open(where, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {where}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"{where}: not UTF-8 text ({exc.reason})") from None
    return parse_config(text, where, base)


def parse_config(
    text: str, path: str = "<config>", base: BrokerOptions | None = None
) -> BrokerConfig:
    """:func:`load_config` for text already read."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path}: not valid TOML: {exc}") from None
    try:
        return _build(data, path, base or BrokerOptions())
    except _Problem as problem:
        line = _line_of(text, problem.key)
        at = f"{path}:{line}" if line else path
        raise ConfigurationError(f"{at}: {problem.key}: {problem.message}") from None


def _build(data: dict[str, Any], path: str, base: BrokerOptions) -> BrokerConfig:
    for key in data:
        if key not in _TOP:
            raise _Problem(key, f"unknown key (expected one of {', '.join(sorted(_TOP))})")
    listen = _strings(data.get("listen", []), "listen")
    changes: dict[str, Any] = {}
    if "token" in data:
        changes["token"] = _typed(data["token"], str, "token")
    if "store" in data:
        changes["store"] = _typed(data["store"], str, "store")
    if "remote_signals" in data:
        changes["remote_signals"] = _typed(data["remote_signals"], bool, "remote_signals")
    limits = data.get("limits", {})
    if not isinstance(limits, dict):
        raise _Problem("limits", "must be a table")
    changes.update(_limits(limits, base))
    users_data = data.get("users", [])
    if not isinstance(users_data, list):
        raise _Problem("users", "must be an array of tables: [[users]]")
    users: list[User] = []
    for i, entry in enumerate(users_data):
        user = _user(entry, f"users[{i}]")
        if any(u.name == user.name for u in users):
            raise _Problem(f"users[{i}].name", f"user {user.name!r} is defined twice")
        users.append(user)
    changes["users"] = tuple(users)
    streams_data = data.get("streams", [])
    if not isinstance(streams_data, list):
        raise _Problem("streams", "must be an array of tables: [[streams]]")
    streams = []
    for i, entry in enumerate(streams_data):
        key = f"streams[{i}]"
        if not isinstance(entry, dict):
            raise _Problem(key, "must be a table")
        try:
            streams.append(StreamConfig.from_json(entry))
        except (ConfigurationError, TypeError) as exc:
            raise _Problem(key, str(exc)) from None
    try:
        options = dataclasses.replace(base, **changes)
    except (TypeError, ValueError) as exc:
        raise _Problem("limits", str(exc)) from None
    return BrokerConfig(path, tuple(listen), options, tuple(streams))


def _limits(limits: Mapping[str, Any], base: BrokerOptions) -> dict[str, Any]:
    """``[limits]``: any BrokerOptions field, of the type of its default."""
    known = {f.name: f for f in dataclasses.fields(BrokerOptions) if f.name not in _NOT_LIMITS}
    out: dict[str, Any] = {}
    for name, value in limits.items():
        key = f"limits.{name}"
        if name not in known:
            raise _Problem(key, f"unknown limit (BrokerOptions has: {', '.join(sorted(known))})")
        default = getattr(base, name)
        if isinstance(default, bool):
            _typed(value, bool, key)
        elif isinstance(default, int):
            _typed(value, int, key)
            if value < 0:
                raise _Problem(key, f"must be >= 0, not {value}")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _Problem(key, f"must be a number, not {value!r}")
            if value < 0:
                raise _Problem(key, f"must be >= 0, not {value}")
            value = float(value)
        elif (default is None or isinstance(default, str)) and not isinstance(
            value, (str, int, float)
        ):
            raise _Problem(key, f"must be a string or a number, not {value!r}")
        out[name] = value
    return out


def _user(entry: Any, key: str) -> User:
    if not isinstance(entry, dict):
        raise _Problem(key, "must be a table")
    for name in entry:
        if name not in _USER_KEYS:
            raise _Problem(
                f"{key}.{name}", f"unknown key (expected one of {', '.join(sorted(_USER_KEYS))})"
            )
    if "name" not in entry:
        raise _Problem(f"{key}.name", "every user needs a name")
    name = _typed(entry["name"], str, f"{key}.name")
    password_hash = entry.get("password_hash")
    if password_hash is not None:
        _typed(password_hash, str, f"{key}.password_hash")
    if "password" in entry:
        if password_hash is not None:
            raise _Problem(f"{key}.password", "give password or password_hash, not both")
        password_hash = hash_password(_typed(entry["password"], str, f"{key}.password"))
    uid = entry.get("uid")
    gid = entry.get("gid")
    for field, value in (("uid", uid), ("gid", gid)):
        if value is not None and (_typed(value, int, f"{key}.{field}") < 0):
            raise _Problem(f"{key}.{field}", f"must be >= 0, not {value}")
    cert = entry.get("cert")
    if cert is not None:
        _typed(cert, str, f"{key}.cert")
    publish = _lists(entry.get("publish"), f"{key}.publish")
    subscribe = _lists(entry.get("subscribe"), f"{key}.subscribe")
    responses = _responses(entry.get("allow_responses", True), f"{key}.allow_responses")
    for which, (allow, deny) in (("publish", publish), ("subscribe", subscribe)):
        for kind, patterns in (("allow", allow or []), ("deny", deny)):
            for i, pattern in enumerate(patterns):
                try:
                    validate_pattern(pattern)
                except InvalidSubject as exc:
                    raise _Problem(f"{key}.{which}.{kind}[{i}]", str(exc)) from None
    permissions = Permissions.build(
        publish=publish[0],
        publish_deny=publish[1],
        subscribe=subscribe[0],
        subscribe_deny=subscribe[1],
        responses=responses,
    )
    try:
        return User(name, password_hash, uid, gid, cert, permissions)
    except ConfigurationError as exc:
        field = "password_hash" if str(exc).startswith("password_hash") else "name"
        raise _Problem(f"{key}.{field}", str(exc)) from None


def _lists(value: Any, key: str) -> tuple[list[str] | None, list[str]]:
    """``{ allow = [...], deny = [...] }``, or a bare list meaning ``allow``."""
    if value is None:
        return None, []
    if isinstance(value, list):
        return _strings(value, key), []
    if not isinstance(value, dict):
        raise _Problem(key, "must be a table { allow = [...], deny = [...] } or a list")
    for name in value:
        if name not in ("allow", "deny"):
            raise _Problem(f"{key}.{name}", "unknown key (expected allow or deny)")
    allow = _strings(value["allow"], f"{key}.allow") if "allow" in value else None
    deny = _strings(value.get("deny", []), f"{key}.deny")
    return allow, deny


def _responses(value: Any, key: str) -> ResponsePolicy | None:
    if value is True:
        return ResponsePolicy()
    if value is False:
        return None
    if not isinstance(value, dict):
        raise _Problem(key, "must be true, false or { max_msgs = N, expires = SECONDS }")
    unknown = set(value) - {"max_msgs", "expires"}
    if unknown:
        raise _Problem(f"{key}.{sorted(unknown)[0]}", "unknown key (expected max_msgs, expires)")
    try:
        return ResponsePolicy(
            _typed(value.get("max_msgs", 1), int, f"{key}.max_msgs"),
            float(value.get("expires", 60.0)),
        )
    except (ConfigurationError, TypeError, ValueError) as exc:
        raise _Problem(key, str(exc)) from None


def _typed(value: Any, kind: type, key: str) -> Any:
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise _Problem(key, f"must be a {kind.__name__}, not {value!r}")
    return value


def _strings(value: Any, key: str) -> list[str]:
    if not isinstance(value, list):
        raise _Problem(key, f"must be a list of strings, not {value!r}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise _Problem(f"{key}[{i}]", f"must be a string, not {item!r}")
    return list(value)


_HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\-]+)\s*\]\]?")


def _line_of(text: str, key: str) -> int | None:
    """The line a key path (``users[2].publish``) is written on, found by reading the
    text: tomllib keeps no positions. Best effort; None if not found."""
    match = re.match(r"([A-Za-z_]+)(?:\[(\d+)\])?(?:\.([A-Za-z_]+))?", key)
    if match is None:
        return None
    table, index, name = match.group(1), match.group(2), match.group(3)
    lines = text.splitlines()
    start, end = 0, len(lines)
    if index is not None or table == "limits":
        seen = -1
        start = -1
        for n, line in enumerate(lines):
            header = _HEADER.match(line)
            if header and header.group(1) == table:
                seen += 1
                if index is None or seen == int(index):
                    start = n
                    break
        if start < 0:
            return None
        for n in range(start + 1, len(lines)):
            if _HEADER.match(lines[n]):
                end = n
                break
        if name is None:
            return start + 1
        wanted = name
    else:
        wanted = table
        for n, line in enumerate(lines):  # a top-level key comes before the first table
            if _HEADER.match(line):
                end = n
                break
    pattern = re.compile(rf"^\s*{re.escape(wanted)}\s*=")
    for n in range(start, end):
        if pattern.match(lines[n]):
            return n + 1
    return start + 1 if index is not None else None
