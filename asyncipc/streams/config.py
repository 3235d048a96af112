"""Stream and consumer configuration, the acknowledgements and the info records.

Pure data shared by the broker side (:mod:`.manager`) and the client side
(:mod:`.client`); each travels as JSON in the ``$sys.stream.`` requests
(``docs/streams.md``). Validation lives here so that both sides refuse the same things
with the same words.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Literal

from ..errors import ConfigurationError
from ..subjects import validate_pattern
from .store.base import FsyncPolicy

__all__ = [
    "ConsumerConfig",
    "ConsumerInfo",
    "DeliverPolicy",
    "Discard",
    "PubAck",
    "StreamConfig",
    "StreamInfo",
    "check_name",
]

Discard = Literal["old", "new"]
DeliverPolicy = Literal["all", "new", "last", "last_per_subject", "by_start_seq", "by_start_time"]

MAX_SECONDS = 9_223_372_036
"""The most seconds a time option takes: what fits in int64 nanoseconds."""
MAX_COUNT = (1 << 63) - 1
"""The largest count or size an option takes."""

MAX_REPLICAS = 5
"""JetStream's largest replication factor."""

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_FSYNC = ("always", "interval", "never")


def check_name(kind: str, name: str) -> str:
    """Stream and consumer names are one subject token: letters, digits, ``_``, ``-``."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigurationError(
            f"{kind} name {name!r} is not valid: use 1 to 64 letters, digits, '_' or '-'"
        )
    return name


def _positive(name: str, value: Any, *, allow_zero: bool = False, number: bool = False) -> None:
    kinds: tuple[type, ...] = (int, float) if number else (int,)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ConfigurationError(f"{name} must be a number, not {value!r}")
    assert isinstance(value, (int, float))
    limit = MAX_SECONDS if number else MAX_COUNT
    if value != value or value in (float("inf"), float("-inf")) or value > limit:
        raise ConfigurationError(f"{name} must be a finite number up to {limit}, not {value}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigurationError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, not {value}")


def _check_keys(cls: type, data: Any, kind: str) -> None:
    """A configuration from JSON is an object whose keys are ``cls``'s fields."""
    if not isinstance(data, dict):
        raise ConfigurationError(f"a {kind} configuration is a JSON object")
    unknown = set(data) - {f.name for f in fields(cls)}
    if unknown:
        raise ConfigurationError(f"unknown {kind} option(s): {', '.join(sorted(unknown))}")


@dataclass(frozen=True)
class StreamConfig:
    """What a stream keeps and for how long.

    Attributes:
        name: one token (letters, digits, ``_``, ``-``).
        subjects: the subjects (wildcards allowed) whose messages it captures; no two
            streams may capture the same subject.
        max_msgs, max_bytes, max_age (seconds), max_msgs_per_subject, max_msg_size:
            limits; 0 means none.
        discard: at a limit, ``"old"`` removes the oldest records, ``"new"`` refuses the
            new message (the publisher gets a :class:`~asyncipc.StreamError`).
        duplicate_window: seconds a ``msg_id`` is remembered for deduplication.
        storage: ``"file"`` (the broker's ``--store``) or ``"memory"``. ``None``: file when
            the broker has a store, else memory.
        fsync: ``"always"`` (an acknowledgement follows an fsync that covers the record),
            ``"interval"`` (every ``sync_interval`` seconds) or ``"never"``.
        replicas: copies kept on different servers: 1 on an asyncipc broker (one
            process keeps one copy); up to 5 on ``nats://``, where JetStream replicates
            (``docs/streams.md``, "On NATS").
    """

    name: str
    subjects: tuple[str, ...] = ()
    max_msgs: int = 0
    max_bytes: int = 0
    max_age: float = 0.0
    max_msgs_per_subject: int = 0
    max_msg_size: int = 0
    discard: Discard = "old"
    duplicate_window: float = 120.0
    storage: Literal["file", "memory"] | None = None
    fsync: FsyncPolicy = "always"
    sync_interval: float = 0.1
    replicas: int = 1

    def __post_init__(self) -> None:
        check_name("stream", self.name)
        subjects = tuple(self.subjects) if self.subjects else (self.name,)
        if isinstance(self.subjects, str):
            subjects = (self.subjects,)
        for subject in subjects:
            validate_pattern(subject)
            if subject.startswith("$sys.") or subject.startswith("_INBOX."):
                raise ConfigurationError(
                    f"a stream cannot capture {subject!r}: $sys. and _INBOX. are reserved"
                )
        object.__setattr__(self, "subjects", subjects)
        for name in ("max_msgs", "max_bytes", "max_msgs_per_subject", "max_msg_size"):
            _positive(name, getattr(self, name), allow_zero=True)
        _positive("max_age", self.max_age, allow_zero=True, number=True)
        _positive("duplicate_window", self.duplicate_window, allow_zero=True, number=True)
        _positive("sync_interval", self.sync_interval, number=True)
        _positive("replicas", self.replicas)
        if self.replicas > MAX_REPLICAS:
            raise ConfigurationError(f"replicas must be 1 to {MAX_REPLICAS}, not {self.replicas}")
        if self.discard not in ("old", "new"):
            raise ConfigurationError(f"discard must be 'old' or 'new', not {self.discard!r}")
        if self.storage not in (None, "file", "memory"):
            raise ConfigurationError(f"storage must be 'file' or 'memory', not {self.storage!r}")
        if self.fsync not in _FSYNC:
            raise ConfigurationError(
                f"fsync must be one of {', '.join(_FSYNC)}, not {self.fsync!r}"
            )

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["subjects"] = list(self.subjects)
        return out

    @classmethod
    def from_json(cls, data: Any) -> StreamConfig:
        """From a request's JSON; unknown keys and wrong types are a ConfigurationError."""
        _check_keys(cls, data, "stream")
        if "subjects" in data:
            if not isinstance(data["subjects"], list) or not all(
                isinstance(s, str) for s in data["subjects"]
            ):
                raise ConfigurationError("subjects must be a list of strings")
            data = {**data, "subjects": tuple(data["subjects"])}
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigurationError(f"bad stream configuration: {exc}") from None


@dataclass(frozen=True)
class ConsumerConfig:
    """How a consumer reads its stream.

    Attributes:
        name: one token; ``None`` for an ephemeral consumer (the broker names it, and
            removes it when the connection that made it goes).
        durable: kept across broker restarts (with a store) and across disconnects.
        deliver: ``"all"`` (from the first record), ``"new"`` (only what comes after),
            ``"last"`` (the last record, then new ones), ``"last_per_subject"``,
            ``"by_start_seq"`` (from ``start_seq``) or ``"by_start_time"`` (from
            ``start_time``, seconds since the epoch).
        filter_subject: only records on these subjects (within the stream's).
        ack_wait: seconds a delivered message waits for its ack before redelivery.
        max_deliver: deliveries before the message goes to ``dead_letter`` (0: no limit).
        dead_letter: the subject a message goes to after ``max_deliver`` deliveries or
            ``term()``, with ``asyncipc-dead-*`` headers saying why and from where.
        max_ack_pending: delivered but unacknowledged messages at most; deliveries wait
            beyond it.
    """

    name: str | None = None
    durable: bool = True
    deliver: DeliverPolicy = "all"
    start_seq: int = 0
    start_time: float = 0.0
    filter_subject: str | None = None
    ack_wait: float = 30.0
    max_deliver: int = 0
    dead_letter: str | None = None
    max_ack_pending: int = 1000

    def __post_init__(self) -> None:
        if self.name is not None:
            check_name("consumer", self.name)
        if self.deliver not in (
            "all",
            "new",
            "last",
            "last_per_subject",
            "by_start_seq",
            "by_start_time",
        ):
            raise ConfigurationError(f"unknown deliver policy {self.deliver!r}")
        if self.deliver == "by_start_seq":
            _positive("start_seq", self.start_seq)
        if self.deliver == "by_start_time":
            _positive("start_time", self.start_time, number=True)
        if self.filter_subject is not None:
            validate_pattern(self.filter_subject)
        _positive("ack_wait", self.ack_wait, number=True)
        _positive("max_deliver", self.max_deliver, allow_zero=True)
        _positive("max_ack_pending", self.max_ack_pending)
        if self.dead_letter is not None:
            validate_pattern(self.dead_letter)
            if "*" in self.dead_letter.split(".") or self.dead_letter.endswith(">"):
                raise ConfigurationError("dead_letter must be a literal subject")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> ConsumerConfig:
        _check_keys(cls, data, "consumer")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigurationError(f"bad consumer configuration: {exc}") from None


@dataclass(frozen=True)
class PubAck:
    """The stream's acknowledgement of a publish: stored as ``seq`` (or, when
    ``duplicate``, already stored as ``seq`` within the deduplication window)."""

    stream: str
    seq: int
    duplicate: bool = False


def _time(ns: int) -> datetime | None:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC) if ns else None


@dataclass(frozen=True)
class StreamInfo:
    """A stream's configuration and state (``stream.info()``).

    ``storage`` is ``"memory"`` when nothing survives the broker; ``lost`` counts records
    the store could not recover at start (a corrupt segment), ``torn_bytes`` the bytes of
    a half-written last record that recovery cut off.
    """

    config: StreamConfig
    storage: str
    messages: int
    bytes: int
    first_seq: int
    last_seq: int
    first_time_ns: int
    last_time_ns: int
    consumers: int
    subjects: int
    refused: int = 0
    lost: int = 0
    torn_bytes: int = 0
    created: float = field(default=0.0)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def first_time(self) -> datetime | None:
        return _time(self.first_time_ns)

    @property
    def last_time(self) -> datetime | None:
        return _time(self.last_time_ns)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["config"] = self.config.to_json()
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StreamInfo:
        return cls(**{**data, "config": StreamConfig.from_json(data["config"])})


@dataclass(frozen=True)
class ConsumerInfo:
    """A consumer's configuration and state (``consumer.info()``).

    Attributes:
        num_pending: records after its position that match its filter (not delivered yet).
        num_ack_pending: delivered and not acknowledged yet.
        num_redelivered: of those, delivered more than once.
        num_waiting: pull requests waiting for messages.
        delivered: the last stream sequence delivered.
        ack_floor: every record at or below it is acknowledged (or terminated).
        dead_lettered: messages sent to ``dead_letter`` so far.
    """

    stream: str
    config: ConsumerConfig
    num_pending: int
    num_ack_pending: int
    num_redelivered: int
    num_waiting: int
    delivered: int
    ack_floor: int
    dead_lettered: int = 0

    @property
    def name(self) -> str:
        assert self.config.name is not None
        return self.config.name

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["config"] = self.config.to_json()
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ConsumerInfo:
        return cls(**{**data, "config": ConsumerConfig.from_json(data["config"])})
