from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Overflow(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OVERFLOW_BLOCK: _ClassVar[Overflow]
    OVERFLOW_DROP_OLDEST: _ClassVar[Overflow]
    OVERFLOW_DROP_NEW: _ClassVar[Overflow]
    OVERFLOW_ERROR: _ClassVar[Overflow]

class Discard(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DISCARD_OLD: _ClassVar[Discard]
    DISCARD_NEW: _ClassVar[Discard]

class Storage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STORAGE_DEFAULT: _ClassVar[Storage]
    STORAGE_FILE: _ClassVar[Storage]
    STORAGE_MEMORY: _ClassVar[Storage]

class Fsync(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FSYNC_ALWAYS: _ClassVar[Fsync]
    FSYNC_INTERVAL: _ClassVar[Fsync]
    FSYNC_NEVER: _ClassVar[Fsync]

class DeliverPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DELIVER_ALL: _ClassVar[DeliverPolicy]
    DELIVER_NEW: _ClassVar[DeliverPolicy]
    DELIVER_LAST: _ClassVar[DeliverPolicy]
    DELIVER_LAST_PER_SUBJECT: _ClassVar[DeliverPolicy]
    DELIVER_BY_START_SEQ: _ClassVar[DeliverPolicy]
    DELIVER_BY_START_TIME: _ClassVar[DeliverPolicy]

class AckKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACK_KIND_ACK: _ClassVar[AckKind]
    ACK_KIND_NAK: _ClassVar[AckKind]
    ACK_KIND_TERM: _ClassVar[AckKind]
    ACK_KIND_IN_PROGRESS: _ClassVar[AckKind]
OVERFLOW_BLOCK: Overflow
OVERFLOW_DROP_OLDEST: Overflow
OVERFLOW_DROP_NEW: Overflow
OVERFLOW_ERROR: Overflow
DISCARD_OLD: Discard
DISCARD_NEW: Discard
STORAGE_DEFAULT: Storage
STORAGE_FILE: Storage
STORAGE_MEMORY: Storage
FSYNC_ALWAYS: Fsync
FSYNC_INTERVAL: Fsync
FSYNC_NEVER: Fsync
DELIVER_ALL: DeliverPolicy
DELIVER_NEW: DeliverPolicy
DELIVER_LAST: DeliverPolicy
DELIVER_LAST_PER_SUBJECT: DeliverPolicy
DELIVER_BY_START_SEQ: DeliverPolicy
DELIVER_BY_START_TIME: DeliverPolicy
ACK_KIND_ACK: AckKind
ACK_KIND_NAK: AckKind
ACK_KIND_TERM: AckKind
ACK_KIND_IN_PROGRESS: AckKind

class Message(_message.Message):
    __slots__ = ("subject", "data", "headers", "reply_to", "sid")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    REPLY_TO_FIELD_NUMBER: _ClassVar[int]
    SID_FIELD_NUMBER: _ClassVar[int]
    subject: str
    data: bytes
    headers: _containers.ScalarMap[str, str]
    reply_to: str
    sid: int
    def __init__(self, subject: _Optional[str] = ..., data: _Optional[bytes] = ..., headers: _Optional[_Mapping[str, str]] = ..., reply_to: _Optional[str] = ..., sid: _Optional[int] = ...) -> None: ...

class PublishResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RequestRequest(_message.Message):
    __slots__ = ("subject", "data", "headers")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    subject: str
    data: bytes
    headers: _containers.ScalarMap[str, str]
    def __init__(self, subject: _Optional[str] = ..., data: _Optional[bytes] = ..., headers: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("subject", "queue", "overflow", "max_pending", "max_bytes", "sid")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    OVERFLOW_FIELD_NUMBER: _ClassVar[int]
    MAX_PENDING_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    SID_FIELD_NUMBER: _ClassVar[int]
    subject: str
    queue: str
    overflow: Overflow
    max_pending: int
    max_bytes: int
    sid: int
    def __init__(self, subject: _Optional[str] = ..., queue: _Optional[str] = ..., overflow: _Optional[_Union[Overflow, str]] = ..., max_pending: _Optional[int] = ..., max_bytes: _Optional[int] = ..., sid: _Optional[int] = ...) -> None: ...

class ConnectRequest(_message.Message):
    __slots__ = ("frames",)
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    frames: _containers.RepeatedCompositeFieldContainer[ClientFrame]
    def __init__(self, frames: _Optional[_Iterable[_Union[ClientFrame, _Mapping]]] = ...) -> None: ...

class ConnectResponse(_message.Message):
    __slots__ = ("frames",)
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    frames: _containers.RepeatedCompositeFieldContainer[ServerFrame]
    def __init__(self, frames: _Optional[_Iterable[_Union[ServerFrame, _Mapping]]] = ...) -> None: ...

class ClientFrame(_message.Message):
    __slots__ = ("hello", "publish", "subscribe", "unsubscribe", "ping", "pong")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    UNSUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    PONG_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    publish: Message
    subscribe: SubscribeRequest
    unsubscribe: Unsubscribe
    ping: Ping
    pong: Ping
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., publish: _Optional[_Union[Message, _Mapping]] = ..., subscribe: _Optional[_Union[SubscribeRequest, _Mapping]] = ..., unsubscribe: _Optional[_Union[Unsubscribe, _Mapping]] = ..., ping: _Optional[_Union[Ping, _Mapping]] = ..., pong: _Optional[_Union[Ping, _Mapping]] = ...) -> None: ...

class ServerFrame(_message.Message):
    __slots__ = ("welcome", "message", "ping", "pong", "error")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    PONG_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    message: Message
    ping: Ping
    pong: Ping
    error: Error
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., message: _Optional[_Union[Message, _Mapping]] = ..., ping: _Optional[_Union[Ping, _Mapping]] = ..., pong: _Optional[_Union[Ping, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("version", "name", "token", "max_frame", "lang")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAME_FIELD_NUMBER: _ClassVar[int]
    LANG_FIELD_NUMBER: _ClassVar[int]
    version: int
    name: str
    token: str
    max_frame: int
    lang: str
    def __init__(self, version: _Optional[int] = ..., name: _Optional[str] = ..., token: _Optional[str] = ..., max_frame: _Optional[int] = ..., lang: _Optional[str] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("version", "server", "server_id", "client_id", "max_frame", "ping_interval", "client_max_frame", "high_water")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAME_FIELD_NUMBER: _ClassVar[int]
    PING_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    CLIENT_MAX_FRAME_FIELD_NUMBER: _ClassVar[int]
    HIGH_WATER_FIELD_NUMBER: _ClassVar[int]
    version: int
    server: str
    server_id: str
    client_id: int
    max_frame: int
    ping_interval: float
    client_max_frame: int
    high_water: int
    def __init__(self, version: _Optional[int] = ..., server: _Optional[str] = ..., server_id: _Optional[str] = ..., client_id: _Optional[int] = ..., max_frame: _Optional[int] = ..., ping_interval: _Optional[float] = ..., client_max_frame: _Optional[int] = ..., high_water: _Optional[int] = ...) -> None: ...

class Unsubscribe(_message.Message):
    __slots__ = ("sid",)
    SID_FIELD_NUMBER: _ClassVar[int]
    sid: int
    def __init__(self, sid: _Optional[int] = ...) -> None: ...

class Ping(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "sid")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SID_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    sid: int
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., sid: _Optional[int] = ...) -> None: ...

class StreamConfig(_message.Message):
    __slots__ = ("name", "subjects", "max_msgs", "max_bytes", "max_age", "max_msgs_per_subject", "max_msg_size", "discard", "duplicate_window", "storage", "fsync", "sync_interval")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    MAX_MSGS_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_AGE_FIELD_NUMBER: _ClassVar[int]
    MAX_MSGS_PER_SUBJECT_FIELD_NUMBER: _ClassVar[int]
    MAX_MSG_SIZE_FIELD_NUMBER: _ClassVar[int]
    DISCARD_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_WINDOW_FIELD_NUMBER: _ClassVar[int]
    STORAGE_FIELD_NUMBER: _ClassVar[int]
    FSYNC_FIELD_NUMBER: _ClassVar[int]
    SYNC_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    name: str
    subjects: _containers.RepeatedScalarFieldContainer[str]
    max_msgs: int
    max_bytes: int
    max_age: float
    max_msgs_per_subject: int
    max_msg_size: int
    discard: Discard
    duplicate_window: float
    storage: Storage
    fsync: Fsync
    sync_interval: float
    def __init__(self, name: _Optional[str] = ..., subjects: _Optional[_Iterable[str]] = ..., max_msgs: _Optional[int] = ..., max_bytes: _Optional[int] = ..., max_age: _Optional[float] = ..., max_msgs_per_subject: _Optional[int] = ..., max_msg_size: _Optional[int] = ..., discard: _Optional[_Union[Discard, str]] = ..., duplicate_window: _Optional[float] = ..., storage: _Optional[_Union[Storage, str]] = ..., fsync: _Optional[_Union[Fsync, str]] = ..., sync_interval: _Optional[float] = ...) -> None: ...

class StreamInfo(_message.Message):
    __slots__ = ("config", "storage", "messages", "bytes", "first_seq", "last_seq", "first_time_ns", "last_time_ns", "consumers", "subjects", "refused", "lost", "torn_bytes", "created")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    STORAGE_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    FIRST_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    LAST_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    CONSUMERS_FIELD_NUMBER: _ClassVar[int]
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    TORN_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    config: StreamConfig
    storage: Storage
    messages: int
    bytes: int
    first_seq: int
    last_seq: int
    first_time_ns: int
    last_time_ns: int
    consumers: int
    subjects: int
    refused: int
    lost: int
    torn_bytes: int
    created: float
    def __init__(self, config: _Optional[_Union[StreamConfig, _Mapping]] = ..., storage: _Optional[_Union[Storage, str]] = ..., messages: _Optional[int] = ..., bytes: _Optional[int] = ..., first_seq: _Optional[int] = ..., last_seq: _Optional[int] = ..., first_time_ns: _Optional[int] = ..., last_time_ns: _Optional[int] = ..., consumers: _Optional[int] = ..., subjects: _Optional[int] = ..., refused: _Optional[int] = ..., lost: _Optional[int] = ..., torn_bytes: _Optional[int] = ..., created: _Optional[float] = ...) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("stream",)
    STREAM_FIELD_NUMBER: _ClassVar[int]
    stream: str
    def __init__(self, stream: _Optional[str] = ...) -> None: ...

class StreamDeleteResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StreamListRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StreamListResponse(_message.Message):
    __slots__ = ("streams",)
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    streams: _containers.RepeatedCompositeFieldContainer[StreamInfo]
    def __init__(self, streams: _Optional[_Iterable[_Union[StreamInfo, _Mapping]]] = ...) -> None: ...

class StreamPurgeRequest(_message.Message):
    __slots__ = ("stream", "subject")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    stream: str
    subject: str
    def __init__(self, stream: _Optional[str] = ..., subject: _Optional[str] = ...) -> None: ...

class StreamPurgeResponse(_message.Message):
    __slots__ = ("purged",)
    PURGED_FIELD_NUMBER: _ClassVar[int]
    purged: int
    def __init__(self, purged: _Optional[int] = ...) -> None: ...

class StreamPublishRequest(_message.Message):
    __slots__ = ("stream", "subject", "data", "headers", "msg_id")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    STREAM_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    MSG_ID_FIELD_NUMBER: _ClassVar[int]
    stream: str
    subject: str
    data: bytes
    headers: _containers.ScalarMap[str, str]
    msg_id: str
    def __init__(self, stream: _Optional[str] = ..., subject: _Optional[str] = ..., data: _Optional[bytes] = ..., headers: _Optional[_Mapping[str, str]] = ..., msg_id: _Optional[str] = ...) -> None: ...

class PubAck(_message.Message):
    __slots__ = ("stream", "seq", "duplicate")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    stream: str
    seq: int
    duplicate: bool
    def __init__(self, stream: _Optional[str] = ..., seq: _Optional[int] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class ConsumerConfig(_message.Message):
    __slots__ = ("name", "durable", "deliver", "start_seq", "start_time", "filter_subject", "ack_wait", "max_deliver", "dead_letter", "max_ack_pending")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DURABLE_FIELD_NUMBER: _ClassVar[int]
    DELIVER_FIELD_NUMBER: _ClassVar[int]
    START_SEQ_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    FILTER_SUBJECT_FIELD_NUMBER: _ClassVar[int]
    ACK_WAIT_FIELD_NUMBER: _ClassVar[int]
    MAX_DELIVER_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTER_FIELD_NUMBER: _ClassVar[int]
    MAX_ACK_PENDING_FIELD_NUMBER: _ClassVar[int]
    name: str
    durable: bool
    deliver: DeliverPolicy
    start_seq: int
    start_time: float
    filter_subject: str
    ack_wait: float
    max_deliver: int
    dead_letter: str
    max_ack_pending: int
    def __init__(self, name: _Optional[str] = ..., durable: _Optional[bool] = ..., deliver: _Optional[_Union[DeliverPolicy, str]] = ..., start_seq: _Optional[int] = ..., start_time: _Optional[float] = ..., filter_subject: _Optional[str] = ..., ack_wait: _Optional[float] = ..., max_deliver: _Optional[int] = ..., dead_letter: _Optional[str] = ..., max_ack_pending: _Optional[int] = ...) -> None: ...

class ConsumerCreateRequest(_message.Message):
    __slots__ = ("stream", "config")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    stream: str
    config: ConsumerConfig
    def __init__(self, stream: _Optional[str] = ..., config: _Optional[_Union[ConsumerConfig, _Mapping]] = ...) -> None: ...

class ConsumerRequest(_message.Message):
    __slots__ = ("stream", "consumer")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    stream: str
    consumer: str
    def __init__(self, stream: _Optional[str] = ..., consumer: _Optional[str] = ...) -> None: ...

class ConsumerInfo(_message.Message):
    __slots__ = ("stream", "config", "num_pending", "num_ack_pending", "num_redelivered", "num_waiting", "delivered", "ack_floor", "dead_lettered")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    NUM_PENDING_FIELD_NUMBER: _ClassVar[int]
    NUM_ACK_PENDING_FIELD_NUMBER: _ClassVar[int]
    NUM_REDELIVERED_FIELD_NUMBER: _ClassVar[int]
    NUM_WAITING_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    ACK_FLOOR_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERED_FIELD_NUMBER: _ClassVar[int]
    stream: str
    config: ConsumerConfig
    num_pending: int
    num_ack_pending: int
    num_redelivered: int
    num_waiting: int
    delivered: int
    ack_floor: int
    dead_lettered: int
    def __init__(self, stream: _Optional[str] = ..., config: _Optional[_Union[ConsumerConfig, _Mapping]] = ..., num_pending: _Optional[int] = ..., num_ack_pending: _Optional[int] = ..., num_redelivered: _Optional[int] = ..., num_waiting: _Optional[int] = ..., delivered: _Optional[int] = ..., ack_floor: _Optional[int] = ..., dead_lettered: _Optional[int] = ...) -> None: ...

class ConsumerDeleteResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ConsumerListResponse(_message.Message):
    __slots__ = ("consumers",)
    CONSUMERS_FIELD_NUMBER: _ClassVar[int]
    consumers: _containers.RepeatedCompositeFieldContainer[ConsumerInfo]
    def __init__(self, consumers: _Optional[_Iterable[_Union[ConsumerInfo, _Mapping]]] = ...) -> None: ...

class FetchRequest(_message.Message):
    __slots__ = ("stream", "consumer", "batch", "timeout")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    stream: str
    consumer: str
    batch: int
    timeout: float
    def __init__(self, stream: _Optional[str] = ..., consumer: _Optional[str] = ..., batch: _Optional[int] = ..., timeout: _Optional[float] = ...) -> None: ...

class StreamMsg(_message.Message):
    __slots__ = ("subject", "data", "headers", "stream", "consumer", "seq", "num_delivered", "time_ns", "ack_token")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    NUM_DELIVERED_FIELD_NUMBER: _ClassVar[int]
    TIME_NS_FIELD_NUMBER: _ClassVar[int]
    ACK_TOKEN_FIELD_NUMBER: _ClassVar[int]
    subject: str
    data: bytes
    headers: _containers.ScalarMap[str, str]
    stream: str
    consumer: str
    seq: int
    num_delivered: int
    time_ns: int
    ack_token: str
    def __init__(self, subject: _Optional[str] = ..., data: _Optional[bytes] = ..., headers: _Optional[_Mapping[str, str]] = ..., stream: _Optional[str] = ..., consumer: _Optional[str] = ..., seq: _Optional[int] = ..., num_delivered: _Optional[int] = ..., time_ns: _Optional[int] = ..., ack_token: _Optional[str] = ...) -> None: ...

class AckRequest(_message.Message):
    __slots__ = ("token", "kind", "delay")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DELAY_FIELD_NUMBER: _ClassVar[int]
    token: str
    kind: AckKind
    delay: float
    def __init__(self, token: _Optional[str] = ..., kind: _Optional[_Union[AckKind, str]] = ..., delay: _Optional[float] = ...) -> None: ...

class AckResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
