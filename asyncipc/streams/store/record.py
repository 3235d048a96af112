"""The record format of the file store's segment files: pure code, no I/O.

A segment file is a sequence of records, each a 12-byte header and a body::

    offset  size  field
    0       2     magic         A5 1C
    2       4     crc           CRC-32 (zlib) of bytes 6 .. end of the record
    6       1     kind          1 MSG, 2 DEL, 3 PURGE
    7       1     flags         MSG: 1 = headers present (possibly empty); else 0
    8       4     length        bytes of the body that follows (at most MAX_BODY)
    12      ...   body

    MSG body    seq u64, time i64 (ns), subject length u16, headers length u32,
                subject (utf-8), headers, data (the rest of the body)
    headers     count u16, then per pair: key length u16, value length u32, key, value
    DEL body    seq u64                   (one sequence removed)
    PURGE body  below u64, last_seq u64   (every sequence below ``below`` removed; the
                                           high-water mark when it was written)

All integers are little-endian. The CRC covers the kind, flags and length as well as the
body, so a header whose length was damaged fails the check like a damaged body.

:func:`scan` walks a buffer and tells the three outcomes apart: complete valid records
(yielded), a *torn* tail (fewer bytes than the header says, or zeros to the end: the
write that was cut short, raised as :class:`TornRecord`) and *corruption* (a bad magic
number, a bad checksum, an absurd length: :class:`~asyncipc.errors.CorruptStore`). No
length read from a buffer is trusted to size an allocation before it is checked against
the bytes actually present, so garbage never makes the scanner allocate more than the
buffer it was given.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator, Mapping

from ...errors import CorruptStore
from .base import StoredMessage

__all__ = [
    "FLAG_HEADERS",
    "HEADER_SIZE",
    "KIND_DEL",
    "KIND_MSG",
    "KIND_PURGE",
    "MAGIC",
    "MAX_BODY",
    "MAX_DATA",
    "MAX_HEADERS",
    "MAX_SUBJECT",
    "MSG_OVERHEAD",
    "ScannedRecord",
    "TornRecord",
    "append_message",
    "check_message",
    "decode_headers",
    "decode_message",
    "encode_delete",
    "encode_headers",
    "encode_message",
    "encode_purge",
    "record_end",
    "resync",
    "scan",
]

MAGIC = 0x1CA5  # on disk: A5 1C
MAGIC_BYTES = MAGIC.to_bytes(2, "little")
KIND_MSG = 1
KIND_DEL = 2
KIND_PURGE = 3
FLAG_HEADERS = 1

_HEAD = struct.Struct("<HIBBI")  # magic, crc, kind, flags, body length
HEADER_SIZE = _HEAD.size  # 12
_CRC_START = 6  # the CRC covers everything after itself
_MSG_FIXED = struct.Struct("<QqHI")  # seq, time, subject length, headers length
_MSG_PREFIX = struct.Struct("<HIBBIQqHI")  # header + the MSG body's fixed part
_MSG_TAIL = struct.Struct("<BBIQqHI")  # the part of _MSG_PREFIX after the CRC
MSG_OVERHEAD = _MSG_PREFIX.size  # 34: bytes a MSG record adds to subject, headers, data
_DEL = struct.Struct("<HIBBIQ")
_DEL_TAIL = struct.Struct("<BBIQ")
_PURGE = struct.Struct("<HIBBIQQ")
_PURGE_TAIL = struct.Struct("<BBIQQ")
_U16 = struct.Struct("<H")
_Q = struct.Struct("<Q")
_QQ = struct.Struct("<QQ")
_PAIR = struct.Struct("<HI")

MAX_SUBJECT = 0xFFFF
MAX_HEADERS = 1 << 20  # the encoded headers of one record
MAX_DATA = 64 << 20
MAX_BODY = _MSG_FIXED.size + MAX_SUBJECT + MAX_HEADERS + MAX_DATA
_MIN_BODY = {KIND_MSG: _MSG_FIXED.size, KIND_DEL: 8, KIND_PURGE: 16}
_MAX_SEQ = (1 << 63) - 1

ScannedRecord = tuple[int, int, int, int, int, bytes, int]
"""What :func:`scan` yields per record: ``(kind, offset, length, a, b, subject, size)``.

``length`` is the whole record's (header included). MSG: ``a`` = seq, ``b`` = time,
``subject`` = its utf-8 bytes, ``size`` = what
:func:`asyncipc.streams.store.memory.record_size` says of the message. DEL: ``a`` = seq.
PURGE: ``a`` = below, ``b`` = the high-water mark. ``subject``/``size`` are ``b""``/0
for DEL and PURGE."""


class TornRecord(CorruptStore):
    """The buffer ends inside a record (or in zeros): a write that was cut short.

    At the end of a log's last segment this is the torn tail recovery cuts off; anywhere
    else it is damage like any :class:`~asyncipc.errors.CorruptStore`."""


def _stored_size(subject: bytes, headers: bytes | memoryview, count: int, data_len: int) -> int:
    """:attr:`~asyncipc.streams.store.base.IndexEntry.size` from a record's stored parts,
    the same as :func:`asyncipc.streams.store.memory.record_size` of the message: the
    subject's and each header key's and value's length in characters (+2 a pair), and the
    payload's in bytes."""
    size = data_len + (len(subject) if subject.isascii() else len(subject.decode(errors="replace")))
    if count:
        hb = bytes(headers)
        if hb.isascii():
            size += len(hb) - 2 - 4 * count
        else:
            size += sum(len(k) + len(v) + 2 for k, v in decode_headers(hb).items())
    return size


def encode_headers(headers: Mapping[str, str]) -> bytes:
    """Headers as stored: ``count u16``, then ``klen u16, vlen u32, key, value`` per pair.

    Raises ValueError when they do not fit (more than 65535 pairs, a key over 65535
    bytes, more than :data:`MAX_HEADERS` bytes in all) or are not valid Unicode."""
    if len(headers) > 0xFFFF:
        raise ValueError(f"{len(headers)} headers: at most 65535")
    parts = [_U16.pack(len(headers))]
    total = 2
    for k, v in headers.items():
        kb = k.encode()
        vb = v.encode()
        if len(kb) > 0xFFFF:
            raise ValueError(f"header name of {len(kb)} bytes: at most 65535")
        parts.append(_PAIR.pack(len(kb), len(vb)))
        parts.append(kb)
        parts.append(vb)
        total += 6 + len(kb) + len(vb)
        if total > MAX_HEADERS:
            raise ValueError(f"headers over {MAX_HEADERS} bytes")
    return b"".join(parts)


def decode_headers(buf: bytes | memoryview) -> dict[str, str]:
    """The inverse of :func:`encode_headers`; CorruptStore if ``buf`` is not one."""
    n = len(buf)
    if n < 2:
        raise CorruptStore(f"headers of {n} bytes: too short for their count")
    (count,) = _U16.unpack_from(buf, 0)
    pos = 2
    out: dict[str, str] = {}
    try:
        for _ in range(count):
            if pos + 6 > n:
                raise CorruptStore("headers end inside a key/value length")
            kl, vl = _PAIR.unpack_from(buf, pos)
            pos += 6
            if pos + kl + vl > n:
                raise CorruptStore("a header key/value runs past the headers")
            k = bytes(buf[pos : pos + kl]).decode()
            pos += kl
            out[k] = bytes(buf[pos : pos + vl]).decode()
            pos += vl
    except UnicodeDecodeError as e:
        raise CorruptStore(f"a header that is not utf-8: {e}") from None
    if pos != n:
        raise CorruptStore(f"{n - pos} stray bytes after the headers")
    return out


def append_message(
    out: list[bytes],
    seq: int,
    time: int,
    subject: bytes,
    headers: bytes | None,
    data: bytes,
) -> int:
    """Append one MSG record to ``out`` as parts (for one ``b"".join`` per batch) and
    return its length. ``subject`` is utf-8, ``headers`` from :func:`encode_headers`
    (None: the message has none). The caller checked the bounds (:func:`encode_message`
    does)."""
    hl = len(headers) if headers is not None else 0
    sl = len(subject)
    body = _MSG_FIXED.size + sl + hl + len(data)
    flags = FLAG_HEADERS if headers is not None else 0
    crc = zlib.crc32(_MSG_TAIL.pack(KIND_MSG, flags, body, seq, time, sl, hl))
    crc = zlib.crc32(subject, crc)
    if headers is not None:
        crc = zlib.crc32(headers, crc)
    crc = zlib.crc32(data, crc)
    out.append(_MSG_PREFIX.pack(MAGIC, crc, KIND_MSG, flags, body, seq, time, sl, hl))
    out.append(subject)
    if headers is not None:
        out.append(headers)
    out.append(data)
    return HEADER_SIZE + body


def check_message(subject: bytes, headers: bytes | None, data: bytes) -> None:
    """Raise ValueError if a message with these encoded parts cannot be stored."""
    if len(subject) > MAX_SUBJECT:
        raise ValueError(f"subject of {len(subject)} bytes: at most {MAX_SUBJECT}")
    if headers is not None and len(headers) > MAX_HEADERS:
        raise ValueError(f"headers of {len(headers)} bytes: at most {MAX_HEADERS}")
    if len(data) > MAX_DATA:
        raise ValueError(f"payload of {len(data)} bytes: at most {MAX_DATA}")


def encode_message(
    seq: int, time: int, subject: str, headers: Mapping[str, str] | None, data: bytes
) -> bytes:
    """One MSG record (bounds checked: ValueError if it cannot be stored)."""
    sb = subject.encode()
    hb = encode_headers(headers) if headers is not None else None
    check_message(sb, hb, data)
    out: list[bytes] = []
    append_message(out, seq, time, sb, hb, data)
    return b"".join(out)


def encode_delete(seq: int) -> bytes:
    """A DEL record: ``seq`` was removed."""
    crc = zlib.crc32(_DEL_TAIL.pack(KIND_DEL, 0, 8, seq))
    return _DEL.pack(MAGIC, crc, KIND_DEL, 0, 8, seq)


def encode_purge(below: int, last_seq: int) -> bytes:
    """A PURGE record: every sequence below ``below`` was removed, when the highest
    sequence assigned was ``last_seq``."""
    crc = zlib.crc32(_PURGE_TAIL.pack(KIND_PURGE, 0, 16, below, last_seq))
    return _PURGE.pack(MAGIC, crc, KIND_PURGE, 0, 16, below, last_seq)


def _damage(pos: int, path: str | None, what: str, torn: bool = False) -> CorruptStore:
    where = f"{path or 'buffer'} at offset {pos}"
    if torn:
        return TornRecord(f"{where}: {what}", path, pos)
    return CorruptStore(f"{where}: {what}", path, pos)


def _bad_start(
    buf: memoryview, pos: int, end: int, path: str | None, base: int = 0
) -> CorruptStore:
    """Why a record cannot start at ``pos``: zeros to the end or a cut-off header are a
    torn tail, anything else is corruption."""
    if _zeros(buf, pos, end):  # a file extended but never written
        return _damage(base + pos, path, f"{end - pos} zero bytes to the end", True)
    cut = end - pos < HEADER_SIZE
    if cut and bytes(buf[pos : min(pos + 2, end)]) == MAGIC_BYTES[: min(2, end - pos)]:
        return _damage(base + pos, path, f"a record header cut at {end - pos}", True)
    return _damage(base + pos, path, "bad magic number")


_ZERO = bytes(1 << 16)


def _zeros(buf: memoryview, pos: int, end: int) -> bool:
    while pos < end:
        n = min(end - pos, len(_ZERO))
        if buf[pos : pos + n] != _ZERO[:n]:
            return False
        pos += n
    return True


def scan(
    buf: bytes | bytearray | memoryview,
    start: int = 0,
    end: int | None = None,
    *,
    path: str | None = None,
    base: int = 0,
) -> Iterator[ScannedRecord]:
    """Yield every valid record of ``buf[start:end]`` (see :data:`ScannedRecord`).

    Returns normally when the records end exactly at ``end``. Otherwise raises, with
    ``offset`` set to where the damage starts: :class:`TornRecord` for a record cut short
    by the end (or zeros to the end), :class:`~asyncipc.errors.CorruptStore` for a bad
    magic number, kind, length or checksum. ``path`` names the file in messages, and
    ``base`` (where ``buf`` starts in that file) is added to the offsets they report; the
    offsets yielded are ``buf``'s own."""
    mv = memoryview(buf)
    if mv.ndim != 1 or mv.itemsize != 1:
        mv = mv.cast("B")
    if end is None:
        end = len(mv)
    head_unpack = _HEAD.unpack_from
    fixed_unpack = _MSG_FIXED.unpack_from
    u16 = _U16.unpack_from
    crc32 = zlib.crc32
    pos = start
    while pos < end:
        if end - pos < HEADER_SIZE:
            raise _bad_start(mv, pos, end, path, base)
        magic, crc, kind, flags, length = head_unpack(mv, pos)
        if magic != MAGIC:
            raise _bad_start(mv, pos, end, path, base)
        minimum = _MIN_BODY.get(kind)
        if minimum is None:
            raise _damage(base + pos, path, f"unknown record kind {kind}")
        if length > MAX_BODY or length < minimum:
            raise _damage(base + pos, path, f"impossible record length {length}")
        stop = pos + HEADER_SIZE + length
        if stop > end:
            raise _damage(base + pos, path, f"a record of {length} bytes cut at {end - pos}", True)
        if crc32(mv[pos + _CRC_START : stop]) != crc:
            raise _damage(base + pos, path, "checksum mismatch")
        body = pos + HEADER_SIZE
        if kind == KIND_MSG:
            if flags & ~FLAG_HEADERS:
                raise _damage(base + pos, path, f"unknown flags {flags:#x}")
            seq, time, sl, hl = fixed_unpack(mv, body)
            b = body + _MSG_FIXED.size
            dl = length - _MSG_FIXED.size - sl - hl
            if dl < 0 or (flags and hl < 2) or (not flags and hl) or seq > _MAX_SEQ:
                raise _damage(base + pos, path, "inconsistent message lengths")
            subject = bytes(mv[b : b + sl])
            if hl:
                (count,) = u16(mv, b + sl)
                if hl - 2 < 6 * count:
                    raise _damage(base + pos, path, "inconsistent header count")
                try:
                    size = _stored_size(subject, mv[b + sl : b + sl + hl], count, dl)
                except CorruptStore as e:
                    raise _damage(base + pos, path, str(e)) from None
            elif subject.isascii():
                size = sl + dl
            else:
                size = _stored_size(subject, b"", 0, dl)
            yield (KIND_MSG, pos, HEADER_SIZE + length, seq, time, subject, size)
        elif kind == KIND_DEL:
            if flags:
                raise _damage(base + pos, path, f"unknown flags {flags:#x}")
            (seq,) = _Q.unpack_from(mv, body)
            yield (KIND_DEL, pos, HEADER_SIZE + length, seq, 0, b"", 0)
        else:
            if flags:
                raise _damage(base + pos, path, f"unknown flags {flags:#x}")
            below, hw = _QQ.unpack_from(mv, body)
            yield (KIND_PURGE, pos, HEADER_SIZE + length, below, hw, b"", 0)
        pos = stop


def decode_message(
    buf: bytes | bytearray | memoryview,
    offset: int = 0,
    *,
    path: str | None = None,
    base: int = 0,
) -> StoredMessage:
    """The MSG record at ``offset`` of ``buf``, checksum verified.

    Raises :class:`~asyncipc.errors.CorruptStore` (naming ``path`` and the offset, plus
    ``base``: where ``buf`` starts in the file) if there is no valid MSG record there."""
    mv = memoryview(buf)
    if mv.ndim != 1 or mv.itemsize != 1:
        mv = mv.cast("B")
    end = len(mv)
    if end - offset < MSG_OVERHEAD:
        raise _damage(base + offset, path, "too short for a message record")
    magic, crc, kind, flags, length, seq, time, sl, hl = _MSG_PREFIX.unpack_from(mv, offset)
    if magic != MAGIC or kind != KIND_MSG:
        raise _damage(base + offset, path, "not a message record")
    stop = offset + HEADER_SIZE + length
    if length > MAX_BODY or stop > end:
        raise _damage(base + offset, path, f"impossible record length {length}")
    if zlib.crc32(mv[offset + _CRC_START : stop]) != crc:
        raise _damage(base + offset, path, "checksum mismatch")
    b = offset + MSG_OVERHEAD
    if b + sl + hl > stop or (flags & FLAG_HEADERS and hl < 2) or flags & ~FLAG_HEADERS:
        raise _damage(base + offset, path, "inconsistent message lengths")
    try:
        subject = bytes(mv[b : b + sl]).decode()
    except UnicodeDecodeError:
        raise _damage(base + offset, path, "a subject that is not utf-8") from None
    b += sl
    headers: dict[str, str] | None = None
    if flags & FLAG_HEADERS:
        try:
            headers = decode_headers(mv[b : b + hl])
        except CorruptStore as e:
            raise _damage(base + offset, path, str(e)) from None
    b += hl
    return StoredMessage(seq, time, subject, headers, bytes(mv[b:stop]))


def record_end(buf: bytes | bytearray | memoryview, offset: int) -> int | None:
    """Where the record starting at ``offset`` would end by its header (magic, kind and
    length plausible), or None if no record header is there. Its checksum is not checked:
    recovery uses this to tell a damaged *last* record (a torn write that reached the end
    of the file) from damage followed by more data."""
    if len(buf) - offset < HEADER_SIZE:
        return None
    magic, _crc, kind, _flags, length = _HEAD.unpack_from(buf, offset)
    if magic != MAGIC or kind not in _MIN_BODY or not _MIN_BODY[kind] <= length <= MAX_BODY:
        return None
    end: int = offset + HEADER_SIZE + length
    return end


def resync(
    buf: bytes, start: int, end: int | None = None, *, budget: int = 1 << 16
) -> Iterator[ScannedRecord]:
    """Valid records found after damage at ``start``, by searching for the magic number.

    Only for *counting* what damage cost: a payload can hold bytes that look like a valid
    record, so what this finds is never trusted as data. Stops after ``budget`` attempts."""
    if end is None:
        end = len(buf)
    pos = start
    while pos < end and budget > 0:
        pos = buf.find(MAGIC_BYTES, pos, end)
        if pos < 0:
            return
        budget -= 1
        nxt = pos + 1
        try:
            for r in scan(buf, pos, end):
                yield r
                nxt = r[1] + r[2]
        except CorruptStore:
            pass
        pos = nxt
