"""A client written from ``docs/protocol.md`` alone, speaking to a real broker.

Nothing here imports ``asyncipc.protocol`` or ``asyncipc.client``: frames are built with
``struct`` and ``json`` exactly as the spec lays them out and read from raw asyncio
streams. ``asyncipc`` itself is used only to start the broker under test and, for the
interoperability tests, a normal Python Bus. Section numbers (§n) refer to the spec.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import asyncipc

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
TIMEOUT = 5.0

# --- the encoding, from the spec ----------------------------------------------------------

PREAMBLE = b"AIPC/1\r\n"  # §4
HELLO, WELCOME, PUB, MSG, SUB, UNSUB, PING, PONG, ERR = range(1, 10)  # §7
BLOCK, DROP_OLDEST, DROP_NEW, ERROR = range(4)  # §7.5
DEFAULT_MAX_FRAME = 8 * 1024 * 1024  # §5
DEFAULT_HIGH_WATER = 4 * 1024 * 1024  # §13


def frame(op: int, body: bytes = b"") -> bytes:
    """§5: u32 length (op + body), u8 op, body."""
    return struct.pack(">IB", len(body) + 1, op) + body


def s16(text: str | None) -> bytes:
    """§6.1: u16 length + UTF-8; length 0 = absent."""
    raw = (text or "").encode()
    return struct.pack(">H", len(raw)) + raw


def header_block(headers: dict[str, str] | None) -> bytes:
    """§6.2: u32 block length, u16 count, entries; no headers = 4 zero bytes."""
    if not headers:
        return b"\x00\x00\x00\x00"
    block = struct.pack(">H", len(headers))
    for name, value in headers.items():
        k, v = name.encode(), value.encode()
        block += struct.pack(">H", len(k)) + k + struct.pack(">I", len(v)) + v
    return struct.pack(">I", len(block)) + block


def pub_body(
    subject: str, data: bytes = b"", reply: str | None = None, headers: dict[str, str] | None = None
) -> bytes:
    """§7.3: str subject, str reply, header block, data (the rest of the frame)."""
    return s16(subject) + s16(reply) + header_block(headers) + data


def jsonframe(op: int, fields: dict[str, Any]) -> bytes:
    return frame(op, json.dumps(fields, separators=(",", ":")).encode())


def hello(**fields: Any) -> bytes:
    return jsonframe(HELLO, {"version": 1, **fields})


def pub(
    subject: str, data: bytes = b"", reply: str | None = None, headers: dict[str, str] | None = None
) -> bytes:
    return frame(PUB, pub_body(subject, data, reply, headers))


def msg(
    sid: int,
    subject: str,
    data: bytes = b"",
    reply: str | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    """§7.4: u32 sid + a PUB body."""
    return frame(MSG, struct.pack(">I", sid) + pub_body(subject, data, reply, headers))


def sub(
    sid: int,
    subject: str,
    queue: str | None = None,
    *,
    max_msgs: int = 0,
    max_bytes: int = 0,
    overflow: int = BLOCK,
) -> bytes:
    """§7.5: u32 sid, u32 max_msgs, u64 max_bytes, u8 overflow, str subject, str queue."""
    fixed = struct.pack(">IIQB", sid, max_msgs, max_bytes, overflow)
    return frame(SUB, fixed + s16(subject) + s16(queue))


def unsub(sid: int) -> bytes:
    return frame(UNSUB, struct.pack(">I", sid))


# --- decoding -------------------------------------------------------------------------


@dataclass
class Msg:
    sid: int
    subject: str
    reply: str | None
    headers: dict[str, str]
    data: bytes


def _str(body: bytes, off: int) -> tuple[str | None, int]:
    (n,) = struct.unpack_from(">H", body, off)
    off += 2
    return (body[off : off + n].decode() if n else None), off + n


def parse_msg(body: bytes) -> Msg:
    (sid,) = struct.unpack_from(">I", body, 0)
    subject, off = _str(body, 4)
    assert subject is not None
    reply, off = _str(body, off)
    (block_len,) = struct.unpack_from(">I", body, off)
    off += 4
    end = off + block_len
    headers: dict[str, str] = {}
    if block_len:
        (count,) = struct.unpack_from(">H", body, off)
        off += 2
        for _ in range(count):
            (klen,) = struct.unpack_from(">H", body, off)
            key = body[off + 2 : off + 2 + klen].decode()
            off += 2 + klen
            (vlen,) = struct.unpack_from(">I", body, off)
            headers[key] = body[off + 4 : off + 4 + vlen].decode()
            off += 4 + vlen
        assert off == end, "header block not filled exactly"
    return Msg(sid, subject, reply, headers, body[end:])


def parse_err(body: bytes) -> tuple[int, int, str]:
    code, sid = struct.unpack_from(">HI", body)
    return code, sid, body[6:].decode("utf-8", "replace")


class Raw:
    """One raw connection to the broker."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def send(self, *chunks: bytes) -> None:
        self.writer.write(b"".join(chunks))

    async def _read_frame(self) -> bytes:
        head = await self.reader.readexactly(5)
        (length,) = struct.unpack(">I", head[:4])
        return head + await self.reader.readexactly(length - 1)

    async def raw_frame(self, timeout: float = TIMEOUT) -> bytes:
        """The next frame, length prefix included."""
        return await asyncio.wait_for(self._read_frame(), timeout)

    async def frame(self, timeout: float = TIMEOUT) -> tuple[int, bytes]:
        data = await self.raw_frame(timeout)
        return data[4], data[5:]

    async def expect(self, op: int, timeout: float = TIMEOUT) -> bytes:
        got, body = await self.frame(timeout)
        assert got == op, f"expected op {op}, got op {got} with body {body[:200]!r}"
        return body

    async def expect_err(self, timeout: float = TIMEOUT) -> tuple[int, int, str]:
        return parse_err(await self.expect(ERR, timeout))

    async def expect_eof(self) -> None:
        rest = await asyncio.wait_for(self.reader.read(), TIMEOUT)
        assert rest == b"", f"expected the broker to close, got {rest[:100]!r}"

    async def handshake(self, **fields: Any) -> dict[str, Any]:
        self.send(PREAMBLE, hello(**fields))
        welcome: dict[str, Any] = json.loads(await self.expect(WELCOME))
        return welcome

    async def flush(self) -> None:
        """§14: PING, then the PONG proves every earlier frame was processed."""
        self.send(frame(PING))
        await self.expect(PONG)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def raw(url: str) -> AsyncIterator[Raw]:
    """A raw connection, not yet handshaken."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_unix_connection(url.removeprefix("unix://")), TIMEOUT
    )
    conn = Raw(reader, writer)
    try:
        yield conn
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def client(url: str, **hello_fields: Any) -> AsyncIterator[Raw]:
    """A raw connection after a successful handshake."""
    async with raw(url) as conn:
        await conn.handshake(**hello_fields)
        yield conn


@contextlib.asynccontextmanager
async def serve(tmp_path: Path, **options: Any) -> AsyncIterator[str]:
    """A real broker on a Unix socket; yields its URL."""
    broker = asyncipc.Broker(**options)
    listener = await broker.listen(f"unix://{tmp_path}/b.sock")
    try:
        yield listener.url
    finally:
        await broker.close()


@pytest.fixture
async def url(tmp_path: Path) -> AsyncIterator[str]:
    async with serve(tmp_path) as u:
        yield u


# --- the worked example (§17) -----------------------------------------------------------------

EXAMPLE_HELLO = {"version": 1, "name": "demo", "max_frame": 1048576}
EXAMPLE_SERVER_ID = "5d41402abc4b2a76"
EXAMPLE_WELCOME = {
    "version": 1,
    "server": "asyncipc",
    "server_id": EXAMPLE_SERVER_ID,
    "client_id": 1,
    "max_frame": DEFAULT_MAX_FRAME,
    "client_max_frame": 1048576,  # what EXAMPLE_HELLO asked for
    "high_water": DEFAULT_HIGH_WATER,
    "ping_interval": 20.0,
}
EXAMPLE_PUB = ("orders.created", b'{"id":7}', "reply.7", {"trace": "abc"})


def doc_example() -> dict[str, bytes]:
    """The hex dump between the worked-example markers, item by item."""
    text = DOC.read_text(encoding="utf-8")
    found = re.search(
        r"<!-- worked-example:begin -->\s*```text\n(.*?)```\s*<!-- worked-example:end -->",
        text,
        re.S,
    )
    assert found, "no worked-example block in docs/protocol.md"
    items: dict[str, bytearray] = {}
    sizes: dict[str, int] = {}
    current = ""
    for line in found.group(1).splitlines():
        if line.startswith("# "):
            head = re.fullmatch(r"# (C->B|B->C) (\w+) \((\d+) bytes\)", line)
            assert head, f"bad item line {line!r}"
            current = head.group(2)
            items[current] = bytearray()
            sizes[current] = int(head.group(3))
        elif line.strip():
            offset, rest = line.split(":", 1)
            assert int(offset, 16) == len(items[current]), f"offset out of step: {line!r}"
            for token in rest.split():
                if not re.fullmatch(r"[0-9a-f]{2}", token):
                    break  # the |ascii| column
                items[current].append(int(token, 16))
    for name, data in items.items():
        assert len(data) == sizes[name], f"{name}: {len(data)} bytes, header says {sizes[name]}"
    return {name: bytes(data) for name, data in items.items()}


def test_worked_example_is_what_the_spec_encodes() -> None:
    ex = doc_example()
    assert list(ex) == ["preamble", "HELLO", "WELCOME", "SUB", "PUB", "MSG", "PING", "PONG"]
    assert ex["preamble"] == PREAMBLE
    assert ex["HELLO"] == jsonframe(HELLO, EXAMPLE_HELLO)
    assert ex["WELCOME"] == jsonframe(WELCOME, EXAMPLE_WELCOME)
    assert ex["SUB"] == sub(1, "orders.*")
    assert ex["PUB"] == pub(*EXAMPLE_PUB)
    assert ex["MSG"] == msg(1, *EXAMPLE_PUB)
    assert ex["PING"] == frame(PING) == b"\x00\x00\x00\x01\x07"
    assert ex["PONG"] == frame(PONG) == b"\x00\x00\x00\x01\x08"
    # §7.4: a MSG is u32 sid + the PUB body, so its length is the PUB's + 4.
    assert ex["MSG"][5:9] == struct.pack(">I", 1)
    assert ex["MSG"][9:] == ex["PUB"][5:]
    assert struct.unpack(">I", ex["MSG"][:4])[0] == struct.unpack(">I", ex["PUB"][:4])[0] + 4


async def test_worked_example_session_with_a_real_broker(url: str) -> None:
    """The broker's side of the example, byte for byte (a fresh broker: client_id 1)."""
    ex = doc_example()
    async with raw(url) as c:
        c.send(ex["preamble"], ex["HELLO"])
        welcome = await c.raw_frame()
        server_id = json.loads(welcome[5:])["server_id"]
        assert re.fullmatch(r"[0-9a-f]{16}", server_id)
        assert welcome == ex["WELCOME"].replace(EXAMPLE_SERVER_ID.encode(), server_id.encode())
        c.send(ex["SUB"], ex["PUB"], ex["PING"])
        assert await c.raw_frame() == ex["MSG"]
        assert await c.raw_frame() == ex["PONG"]


# --- handshake (§4, §9, §16) ------------------------------------------------------------------


async def test_welcome_fields(url: str) -> None:
    async with raw(url) as c:
        welcome = await c.handshake(name="raw", lang="spec", max_frame=65536, future_field=[1])
        assert welcome["version"] == 1
        assert welcome["server"] == "asyncipc"
        assert re.fullmatch(r"[0-9a-f]{16}", welcome["server_id"])
        assert isinstance(welcome["client_id"], int)
        assert welcome["client_id"] >= 1
        assert welcome["max_frame"] == DEFAULT_MAX_FRAME
        assert welcome["client_max_frame"] == 65536
        assert welcome["high_water"] == DEFAULT_HIGH_WATER
        assert welcome["ping_interval"] == 20
    async with raw(url) as c:
        assert (await c.handshake())["client_id"] == welcome["client_id"] + 1


async def test_welcome_announces_the_high_water_mark(tmp_path: Path) -> None:
    """§7.2, §13: a client learns how far it may fall behind before its policies apply."""
    async with serve(tmp_path, high_water=12345) as url, raw(url) as c:
        assert (await c.handshake())["high_water"] == 12345


async def test_frames_may_follow_hello_before_welcome(url: str) -> None:
    async with raw(url) as c:
        c.send(PREAMBLE + hello() + sub(1, "pipe.*") + pub("pipe.x", b"1") + frame(PING))
        await c.expect(WELCOME)
        assert parse_msg(await c.expect(MSG)) == Msg(1, "pipe.x", None, {}, b"1")
        await c.expect(PONG)


@pytest.mark.parametrize(
    ("first_bytes", "code", "text"),
    [
        (PREAMBLE + hello(version=2), 3, "unsupported protocol version 2"),
        (PREAMBLE + hello(version=True), 3, "unsupported protocol version True"),
        (PREAMBLE + hello(version=1.0), 3, "unsupported protocol version 1.0"),
        (PREAMBLE + jsonframe(HELLO, {"name": "no version"}), 3, "unsupported protocol version"),
        (PREAMBLE + frame(PING), 1, "expected HELLO as the first frame"),
        (PREAMBLE + frame(HELLO, b"not json"), 1, "not valid JSON"),
        (b"XYZW/1\r\n", 1, "bad preamble"),
        (b"AIPC/2\r\n", 1, "unsupported protocol version in preamble"),
    ],
    ids=[
        "version",
        "version-true",
        "version-float",
        "no-version",
        "ping-first",
        "bad-json",
        "bad-preamble",
        "preamble-v2",
    ],
)
async def test_handshake_refusals_close_the_connection(
    url: str, first_bytes: bytes, code: int, text: str
) -> None:
    async with raw(url) as c:
        c.send(first_bytes)
        got_code, sid, message = await c.expect_err()
        assert (got_code, sid) == (code, 0)
        assert text in message
        await c.expect_eof()


async def test_token(tmp_path: Path) -> None:
    async with serve(tmp_path, token="s3cret") as url:
        for fields, text in (({}, "token required"), ({"token": "nope"}, "invalid token")):
            async with raw(url) as c:
                c.send(PREAMBLE, hello(**fields))
                assert await c.expect_err() == (4, 0, text)
                await c.expect_eof()
        async with raw(url) as c:
            await c.handshake(token="s3cret")
            await c.flush()


async def test_handshake_timeout(tmp_path: Path) -> None:
    async with serve(tmp_path, handshake_timeout=0.2) as url, raw(url) as c:
        c.send(PREAMBLE)  # and then nothing
        code, sid, message = await c.expect_err()
        assert (code, sid) == (5, 0)
        assert "no HELLO" in message
        await c.expect_eof()


async def test_http_request_gets_a_400(url: str) -> None:
    async with raw(url) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        response = await asyncio.wait_for(c.reader.read(), TIMEOUT)
    assert response == (
        b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n"
        b"Content-Length: 55\r\n\r\nthis is an asyncipc broker socket, not an HTTP server.\n"
    )


async def test_http_request_line_split_across_reads_gets_a_400(url: str) -> None:
    async with raw(url) as c:
        c.send(b"GE")
        await c.writer.drain()
        await asyncio.sleep(0.05)  # let the broker see the 2 bytes alone
        c.send(b"T / HTTP/1.1\r\n\r\n")
        response = await asyncio.wait_for(c.reader.read(), TIMEOUT)
    assert response.startswith(b"HTTP/1.1 400 Bad Request\r\n")


async def test_broker_shutdown_sends_err_7(tmp_path: Path) -> None:
    """§15: a closing broker says why with ERR 7, then closes."""
    broker = asyncipc.Broker()
    listener = await broker.listen(f"unix://{tmp_path}/b.sock")
    async with client(listener.url) as c:
        c.send(sub(1, "last"), pub("last", b"words"), frame(PING))
        assert parse_msg(await c.expect(MSG)).data == b"words"
        await c.expect(PONG)
        await broker.close()
        code, sid, message = await c.expect_err()
        assert (code, sid) == (7, 0)
        assert "shutting down" in message
        await c.expect_eof()


# --- publish, subscribe, MSG (§7, §11) ----------------------------------------------------------


async def test_msg_carries_every_field_byte_exactly(url: str) -> None:
    headers = {"trace": "abc", "ünï": "välue ✓", "empty": ""}
    data = bytes(range(256)) * 3  # zeros and every byte value: the payload is opaque
    body = pub_body("shop.eu.created", data, "_INBOX.abc.1", headers)
    async with client(url) as subscriber, client(url) as publisher:
        subscriber.send(sub(7, "shop.>"), sub(8, "shop.*.created"))
        await subscriber.flush()
        publisher.send(frame(PUB, body))
        await publisher.flush()
        got = {}
        for _ in range(2):
            m = await subscriber.expect(MSG)
            got[struct.unpack_from(">I", m)[0]] = m
        assert sorted(got) == [7, 8]
        for sid, m in got.items():
            assert m == struct.pack(">I", sid) + body  # forwarded without re-encoding
            assert parse_msg(m) == Msg(sid, "shop.eu.created", "_INBOX.abc.1", headers, data)
        await subscriber.flush()  # nothing else was queued


async def test_wildcards_and_own_messages(url: str) -> None:
    async with client(url) as c:
        c.send(sub(1, "w.*.x"), sub(2, "w.>"), sub(3, ">"))
        for subject in ("w", "w.a.x", "w.a.b.x", "other"):
            c.send(pub(subject))
        c.send(frame(PING))
        got: list[tuple[int, str]] = []
        while (op := (await c.frame()))[0] == MSG:
            m = parse_msg(op[1])
            got.append((m.sid, m.subject))
        assert op[0] == PONG
    expected = [(3, "w"), (1, "w.a.x"), (2, "w.a.x"), (3, "w.a.x")]
    expected += [(2, "w.a.b.x"), (3, "w.a.b.x"), (3, "other")]
    assert sorted(got) == sorted(expected)


async def test_unsub_stops_delivery(url: str) -> None:
    async with client(url) as c:
        c.send(sub(1, "u.x"), pub("u.x", b"1"))
        assert parse_msg(await c.expect(MSG)).data == b"1"
        c.send(unsub(1), unsub(99), pub("u.x", b"2"))  # an unknown sid is ignored
        await c.flush()  # the PONG comes with no MSG before it


async def test_queue_group_splits_messages(url: str) -> None:
    async with client(url) as a, client(url) as b, client(url) as publisher:
        a.send(sub(1, "jobs.*", "workers"), sub(2, "jobs.run"))  # a group member and a copy
        b.send(sub(1, "jobs.run", "workers"))
        await a.flush()
        await b.flush()
        for i in range(10):
            publisher.send(pub("jobs.run", str(i).encode()))
        await publisher.flush()
        a.send(frame(PING))
        b.send(frame(PING))
        seen: dict[str, list[tuple[int, bytes]]] = {"a": [], "b": []}
        for name, conn in (("a", a), ("b", b)):
            while (op := (await conn.frame()))[0] == MSG:
                m = parse_msg(op[1])
                seen[name].append((m.sid, m.data))
            assert op[0] == PONG
    group = [d for sid, d in seen["a"] if sid == 1] + [d for _, d in seen["b"]]
    assert sorted(group) == sorted(str(i).encode() for i in range(10))
    assert len(seen["b"]) == 5  # round robin
    assert [d for sid, d in seen["a"] if sid == 2] == [str(i).encode() for i in range(10)]


async def test_ping_pong(url: str) -> None:
    async with client(url) as c:
        c.send(frame(PING), frame(PING), frame(PING))
        for _ in range(3):
            assert await c.raw_frame() == b"\x00\x00\x00\x01\x08"


# --- errors (§5, §8) ----------------------------------------------------------------------------


async def test_bad_subjects_are_refused_and_the_connection_stays(url: str) -> None:
    async with client(url) as c:
        c.send(pub("bad subject", b"x"))
        assert (await c.expect_err())[:2] == (100, 0)
        c.send(pub("wild.*"))
        assert (await c.expect_err())[:2] == (100, 0)
        c.send(pub("ok", reply="no..reply"))
        assert (await c.expect_err())[:2] == (100, 0)
        c.send(pub("x" * 1025))
        code, sid, message = await c.expect_err()
        assert (code, sid) == (100, 0)
        assert "1024" in message
        c.send(sub(5, "a..b"))
        assert (await c.expect_err())[:2] == (100, 5)
        c.send(sub(6, "a.>.b"))
        assert (await c.expect_err())[:2] == (100, 6)
        c.send(sub(7, "ok.x", "q q"))
        assert (await c.expect_err())[:2] == (100, 7)
        # Still usable: nothing was subscribed by the refused SUBs, the rest works.
        await c.flush()
        c.send(sub(8, "ok.x"), pub("ok.x", b"fine"))
        assert parse_msg(await c.expect(MSG)) == Msg(8, "ok.x", None, {}, b"fine")


async def test_with_a_request_in_flight_bad_subjects_are_still_refused(url: str) -> None:
    """The broker skips validating a PUB's subject only when it is the reply subject of a
    request in flight (validated when the request came): the answer is delivered, and
    anything else is checked as always."""
    async with client(url) as requester, client(url) as responder:
        responder.send(sub(1, "svc"))
        requester.send(sub(2, "_INBOX.raw.*"))
        await responder.flush()
        await requester.flush()
        requester.send(pub("svc", b"q", reply="_INBOX.raw.1"))
        assert parse_msg(await responder.expect(MSG)) == Msg(1, "svc", "_INBOX.raw.1", {}, b"q")
        for bad in ("bad subject", "_INBOX.raw.1 ", "_INBOX.raw.*", "_INBOX..1"):
            responder.send(pub(bad, b"x"))
            assert (await responder.expect_err())[:2] == (100, 0), bad
        responder.send(pub("_INBOX.raw.1", b"answer"))
        assert parse_msg(await requester.expect(MSG)) == Msg(2, "_INBOX.raw.1", None, {}, b"answer")


def spec_subject_grammar() -> dict[str, re.Pattern[str]]:
    """§11's regular expressions, read from the spec: ``T``, ``subject``, ``pattern``,
    ``queue``, with ``T`` put in place (Python's ``re`` reads ``\\uXXXX`` as the spec means)."""
    text = DOC.read_text(encoding="utf-8")
    found = re.search(r"```text\n(T {7}= .*?)```", text, re.S)
    assert found, "no subject grammar block in §11"
    rules = dict(line.split(" = ", 1) for line in found.group(1).splitlines())
    rules = {name.strip(): rule.strip() for name, rule in rules.items()}
    assert list(rules) == ["T", "subject", "pattern", "queue"]
    token = f"(?:{rules['T']})"
    return {name: re.compile(rule.replace("T", token)) for name, rule in rules.items()}


CODE_POINTS = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]  # UTF-8 only


def test_the_spec_subject_grammar_is_what_the_broker_checks() -> None:
    """§11 writes the whitespace class out; the broker's check (``asyncipc.subjects``,
    which uses Python's ``\\s``) must reject exactly it, code point by code point."""
    from asyncipc.errors import InvalidSubject
    from asyncipc.subjects import validate_pattern, validate_queue, validate_subject

    grammar = spec_subject_grammar()

    def accepts(check: Any, text: str) -> bool:
        try:
            check(text)
        except InvalidSubject:
            return False
        return True

    whitespace = [ch for ch in CODE_POINTS if not grammar["T"].fullmatch(ch) and ch not in ".*>"]
    assert len(whitespace) == 29  # as §11 counts them
    for ch in CODE_POINTS:
        subject = f"a{ch}b"
        assert accepts(validate_subject, subject) == bool(grammar["subject"].fullmatch(subject))
        assert accepts(validate_queue, subject) == bool(grammar["queue"].fullmatch(subject))
    for pattern in (">", "a.>", "*.b.*", "a*", "a.>.b", "a>", "a.\u3000", "a.\ufeff.>", ""):
        assert accepts(validate_pattern, pattern) == bool(grammar["pattern"].fullmatch(pattern))


async def test_subject_whitespace_on_the_wire(url: str) -> None:
    """§11: every whitespace code point of the spec is refused in a PUB; characters other
    languages count as space (U+FEFF, U+180E, U+200B) are ordinary ones."""
    grammar = spec_subject_grammar()
    whitespace = [ch for ch in CODE_POINTS[:0x3001] if not grammar["T"].fullmatch(ch)]
    whitespace = [ch for ch in whitespace if ch not in ".*>"]
    ordinary = ["\ufeff", "\u180e", "\u200b"]
    async with client(url) as c:
        c.send(sub(1, "ws.*"))
        c.send(*(pub(f"ws.a{ch}b") for ch in whitespace))
        c.send(*(pub(f"ws.a{ch}b") for ch in ordinary))
        for _ in whitespace:
            assert (await c.expect_err())[:2] == (100, 0)
        for ch in ordinary:
            assert parse_msg(await c.expect(MSG)).subject == f"ws.a{ch}b"
        await c.flush()


async def test_frame_over_max_frame_gets_err_2_and_close(url: str) -> None:
    async with raw(url) as c:
        max_frame = (await c.handshake())["max_frame"]
        assert max_frame == DEFAULT_MAX_FRAME
        c.send(struct.pack(">IB", max_frame + 1, PUB))  # the length alone is enough
        code, sid, message = await c.expect_err()
        assert (code, sid) == (2, 0)
        assert str(max_frame) in message
        await c.expect_eof()


async def test_max_frame_boundary(tmp_path: Path) -> None:
    async with serve(tmp_path, max_frame=4096) as url, raw(url) as c:
        assert (await c.handshake())["max_frame"] == 4096
        exact = pub("edge", b"x" * (4096 - 1 - 2 - 4 - 2 - 4))
        assert struct.unpack(">I", exact[:4])[0] == 4096
        c.send(exact)
        await c.flush()  # accepted
        c.send(pub("edge", b"x" * (4096 - 1 - 2 - 4 - 2 - 4 + 1)))
        assert (await c.expect_err())[:2] == (2, 0)
        await c.expect_eof()


async def test_malformed_frames_get_err_1_and_close(url: str) -> None:
    bad = [
        struct.pack(">I", 0),  # length 0
        frame(42),  # unknown op
        frame(PUB, s16(None) + s16(None) + header_block(None)),  # absent subject
        frame(UNSUB, b"\x00\x00\x00\x01\x00"),  # trailing byte
        frame(SUB, struct.pack(">IIQB", 1, 0, 0, 9) + s16("a") + s16(None)),  # overflow 9
        frame(PUB, s16("a") + s16(None) + b"\x00\x00\x00\x09\x00\x01"),  # block past the end
        msg(1, "a"),  # MSG is broker-to-client only
        hello(),  # a second HELLO
    ]
    for data in bad:
        async with client(url) as c:
            await c.flush()  # the handshake's frames are out of the way
            c.send(data)
            assert (await c.expect_err())[:2] == (1, 0), data
            await c.expect_eof()


async def test_client_max_frame_is_respected(url: str) -> None:
    """§5: the broker sends a client no frame longer than the max_frame of its HELLO; a
    message too big for it is reported with ERR 104 and the subscription stays."""
    async with client(url, max_frame=1024) as small, client(url) as publisher:
        small.send(sub(1, "big"))
        await small.flush()
        publisher.send(pub("big", b"y" * 2000), pub("big", b"small"))
        await publisher.flush()
        code, sid, message = await small.expect_err()
        assert (code, sid) == (104, 1)
        assert "not delivered" in message
        data = await small.raw_frame()
        assert struct.unpack(">I", data[:4])[0] <= 1024
        assert data[4] == MSG
        assert parse_msg(data[5:]).data == b"small"


async def test_pub_of_exactly_max_frame_is_delivered(tmp_path: Path) -> None:
    """§5: a MSG may be max_frame + 4 long, so every PUB the broker accepts is deliverable
    to a client with the same maximum."""
    async with serve(tmp_path, max_frame=4096) as url, client(url) as s, client(url) as p:
        s.send(sub(1, "edge"))
        await s.flush()
        exact = pub("edge", b"x" * (4096 - 1 - 2 - 4 - 2 - 4))
        p.send(exact)
        data = await s.raw_frame()
        assert struct.unpack(">I", data[:4])[0] == 4096 + 4
        assert parse_msg(data[5:]).data == b"x" * (4096 - 13)


def pub_of_length(subject: str, length: int) -> bytes:
    """A PUB whose `length` field is exactly ``length`` (no reply, no headers)."""
    overhead = 1 + 2 + len(subject.encode()) + 2 + 4
    data = pub(subject, b"x" * (length - overhead))
    assert struct.unpack(">I", data[:4])[0] == length
    return data


async def test_a_client_without_max_frame_is_held_to_the_default(tmp_path: Path) -> None:
    """§5: a client that does not announce max_frame gets the documented 8 MiB, not the
    broker's larger maximum. MSG keeps its 4 bytes of allowance; a message that needs
    more is ERR 104 for that client alone."""
    big = 16 * 1024 * 1024
    async with (
        serve(tmp_path, max_frame=big) as url,
        raw(url) as silent,
        raw(url) as bogus,
        raw(url) as roomy,
        client(url) as publisher,
    ):
        welcome = await silent.handshake()
        assert (welcome["max_frame"], welcome["client_max_frame"]) == (big, DEFAULT_MAX_FRAME)
        welcome = await bogus.handshake(max_frame=1023)  # below 1024: ignored, as absent
        assert welcome["client_max_frame"] == DEFAULT_MAX_FRAME
        assert (await roomy.handshake(max_frame=big))["client_max_frame"] == big
        for c in (silent, bogus, roomy):
            c.send(sub(1, "big"))
            await c.flush()
        publisher.send(
            pub_of_length("big", DEFAULT_MAX_FRAME),  # MSG: exactly the default + 4
            pub_of_length("big", DEFAULT_MAX_FRAME + 1),  # MSG: one byte too many
            pub_of_length("big", DEFAULT_MAX_FRAME + 2 * 1024 * 1024),  # the 10 MiB case
            pub("big", b"small"),
        )

        async def held_to_the_default(c: Raw) -> None:
            data = await c.raw_frame()
            assert (struct.unpack(">I", data[:4])[0], data[4]) == (DEFAULT_MAX_FRAME + 4, MSG)
            for _ in range(2):
                code, sid, message = await c.expect_err()
                assert (code, sid) == (104, 1)
                assert "not delivered" in message
            assert parse_msg(await c.expect(MSG)).data == b"small"

        async def given_what_it_asked_for(c: Raw) -> None:
            lengths = [struct.unpack(">I", (await c.raw_frame())[:4])[0] for _ in range(3)]
            assert lengths == [
                DEFAULT_MAX_FRAME + 4,
                DEFAULT_MAX_FRAME + 5,
                DEFAULT_MAX_FRAME + 2 * 1024 * 1024 + 4,
            ]
            assert parse_msg(await c.expect(MSG)).data == b"small"

        # All at once: the subscriptions are `block`, so one that is not read holds the
        # publisher back for the others too (§13).
        await asyncio.gather(
            held_to_the_default(silent),
            held_to_the_default(bogus),
            given_what_it_asked_for(roomy),
            publisher.flush(),
        )


async def test_duplicate_sid_is_refused_with_103_and_the_connection_stays(url: str) -> None:
    async with client(url) as c:
        c.send(sub(5, "first"), sub(5, "second"))
        code, sid, message = await c.expect_err()
        assert (code, sid) == (103, 5)
        assert "already in use" in message
        c.send(pub("first", b"1"), pub("second", b"2"))
        assert parse_msg(await c.expect(MSG)) == Msg(5, "first", None, {}, b"1")
        await c.flush()  # nothing for "second": the refused SUB did not replace the first


async def test_frames_before_a_malformed_one_are_acted_on(url: str) -> None:
    """§8: the frames that arrived before the bad one in the same read are processed."""
    async with client(url) as watcher, raw(url) as bad:
        watcher.send(sub(1, "before"))
        await watcher.flush()
        bad.send(PREAMBLE + hello() + pub("before", b"kept") + frame(42))
        await bad.expect(WELCOME)
        assert (await bad.expect_err())[:2] == (1, 0)
        await bad.expect_eof()
        assert parse_msg(await watcher.expect(MSG)).data == b"kept"


# --- keep-alive (§10) ---------------------------------------------------------------------------


async def test_broker_pings_and_cuts_off_a_silent_client(tmp_path: Path) -> None:
    async with serve(tmp_path, ping_interval=0.2) as url, raw(url) as c:
        assert (await c.handshake())["ping_interval"] == 0.2
        for _ in range(4):  # answered pings keep the connection alive past 3 intervals
            await c.expect(PING, timeout=2)
            c.send(frame(PONG))
        pings = 0
        while (got := await c.frame(timeout=2))[0] == PING:
            pings += 1  # now silent
        assert pings >= 1
        assert got[0] == ERR
        code, sid, message = parse_err(got[1])
        assert (code, sid) == (6, 0)
        assert "no traffic" in message
        await c.expect_eof()


# --- the client's side: a Python Bus against a broker played from raw bytes (§5, §7) -------------


@contextlib.asynccontextmanager
async def bus_and_fake_broker(tmp_path: Path, **options: Any) -> AsyncIterator[tuple[Any, Raw]]:
    """A Python Bus connected to a socket where the test plays the broker (§9): the Bus,
    and the broker's end of its connection, after the handshake."""
    accepted: asyncio.Queue[Raw] = asyncio.Queue()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.put_nowait(Raw(reader, writer))

    path = str(tmp_path / "fake.sock")
    server = await asyncio.start_unix_server(on_connect, path)
    try:
        connecting = asyncio.ensure_future(
            asyncipc.connect(
                f"unix://{path}",
                # The test plays a broker that dies with the test: never redial it.
                options=asyncipc.ConnectOptions(**{"reconnect": False, **options}),
            )
        )
        broker = await asyncio.wait_for(accepted.get(), TIMEOUT)
        assert await asyncio.wait_for(broker.reader.readexactly(len(PREAMBLE)), TIMEOUT) == PREAMBLE
        await broker.expect(HELLO)
        welcome = {"version": 1, "server": "fake", "server_id": "0" * 16, "client_id": 1}
        broker.send(jsonframe(WELCOME, {**welcome, "max_frame": 65536, "ping_interval": 0}))
        bus = await asyncio.wait_for(connecting, TIMEOUT)
        try:
            yield bus, broker
        finally:
            await broker.close()  # first: the Bus then closes without waiting for a PONG
            await bus.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_a_client_ignores_known_ops_out_of_place(tmp_path: Path) -> None:
    """§7: PUB, HELLO, SUB, UNSUB or a second WELCOME from the broker are ignored."""
    async with bus_and_fake_broker(tmp_path) as (bus, broker):
        broker.send(pub("x", b"1"), hello(), jsonframe(WELCOME, {"version": 1}))
        broker.send(sub(1, "x"), unsub(1))
        flushing = asyncio.ensure_future(bus.flush())
        await broker.expect(PING)  # not an ERR: nothing above was a violation
        broker.send(frame(PONG))
        await asyncio.wait_for(flushing, TIMEOUT)


async def test_an_unknown_op_from_the_broker_is_fatal_for_a_client(tmp_path: Path) -> None:
    """§7, §18: an op the client does not know ends the connection (the Python client
    says why with ERR 1 first); it is not skipped, although its length is known."""
    async with bus_and_fake_broker(tmp_path) as (bus, broker):
        broker.send(frame(42, b"from a later protocol"), frame(PING))
        code, sid, message = await broker.expect_err()
        assert (code, sid) == (1, 0)
        assert "unknown frame op 42" in message
        await broker.expect_eof()  # and no PONG: the PING after it was never read
        with pytest.raises(asyncipc.BrokenLinkError, match="unknown frame op 42"):
            await bus.flush()


@pytest.mark.parametrize(
    ("head", "text"),
    [
        (struct.pack(">I", 1024 + 5), "frame length 1029 exceeds the maximum frame size 1024"),
        (struct.pack(">IB", 1024 + 1, ERR), "only a MSG may exceed it"),
        (struct.pack(">IB", 1024 + 4, PONG), "only a MSG may exceed it"),
    ],
    ids=["any-op-over-max+4", "err-over-max", "pong-over-max"],
)
async def test_a_client_checks_a_frames_length_twice(
    tmp_path: Path, head: bytes, text: str
) -> None:
    """§5: the length against max_frame + 4 as soon as it is in, then against max_frame
    once the op byte shows it is not a MSG; neither waits for the body (none is sent)."""
    async with bus_and_fake_broker(tmp_path, max_frame=1024) as (bus, broker):
        subscription = bus.subscribe("big")
        (sid,) = struct.unpack_from(">I", await broker.expect(SUB))
        data = b"m" * (1024 + 4 - 1 - 4 - 2 - 3 - 2 - 4)
        broker.send(msg(sid, "big", data))  # a MSG of exactly max_frame + 4: accepted
        assert (await subscription.next_msg(timeout=TIMEOUT)).data == data
        broker.send(head)
        code, _, message = await broker.expect_err()
        assert code == 2
        assert text in message
        await broker.expect_eof()


# --- request / reply (§12) ----------------------------------------------------------------------


async def test_request_to_nobody_gets_503_at_once(url: str) -> None:
    inbox = f"_INBOX.{os.urandom(11).hex()}"
    async with client(url) as c:
        c.send(sub(1, inbox + ".*"), pub("nobody.home", b"?", inbox + ".1"), frame(PING))
        loop = asyncio.get_running_loop()
        start = loop.time()
        body = await c.expect(MSG)
        await c.expect(PONG)  # the 503 was ahead of the PONG: sent at once
        assert loop.time() - start < 1.0
    expected = struct.pack(">I", 1) + pub_body(inbox + ".1", b"", None, {"asyncipc-status": "503"})
    assert body == expected
    assert parse_msg(body) == Msg(1, inbox + ".1", None, {"asyncipc-status": "503"}, b"")


async def test_raw_requester_and_bus_responder(url: str) -> None:
    inbox = f"_INBOX.{os.urandom(11).hex()}"
    async with asyncipc.connect(url) as bus, client(url) as c:

        @bus.handler("svc.upper", queue="svc")
        async def upper(m: asyncipc.Message) -> bytes:
            return m.data.upper()

        @bus.handler("svc.fail", expose_errors=True)  # the default sends no exception text
        async def fail(m: asyncipc.Message) -> bytes:
            raise ValueError("boom")

        await bus.flush()
        c.send(sub(1, inbox + ".*"), pub("svc.upper", b"hi", inbox + ".1"))
        assert parse_msg(await c.expect(MSG)) == Msg(1, inbox + ".1", None, {}, b"HI")
        c.send(pub("svc.fail", b"", inbox + ".2"))
        reply = parse_msg(await c.expect(MSG))
    assert reply.subject == inbox + ".2"
    assert reply.data == b""
    assert reply.headers == {"asyncipc-status": "500", "asyncipc-error": "ValueError: boom"}


async def test_bus_requester_and_raw_responder(url: str) -> None:
    async with asyncipc.connect(url) as bus, client(url) as c:
        c.send(sub(1, "svc.echo", "echoers"))
        await c.flush()
        request = asyncio.ensure_future(bus.request("svc.echo", b"ping?", timeout=TIMEOUT))
        m = parse_msg(await c.expect(MSG))
        assert (m.sid, m.subject, m.data) == (1, "svc.echo", b"ping?")
        assert m.reply is not None
        assert m.reply.startswith("_INBOX.")
        c.send(pub(m.reply, b"pong!", headers={"who": "raw"}))
        reply = await asyncio.wait_for(request, TIMEOUT)
        assert reply.data == b"pong!"
        assert reply.headers == {"who": "raw"}
        # A Bus request nobody serves is answered by the broker's 503 at once.
        with pytest.raises(asyncipc.NoResponders):
            await bus.request("svc.nobody", b"", timeout=TIMEOUT)


PLAIN_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?")  # §12, as a writer must send it


@pytest.mark.parametrize(
    ("timeout", "sent"),
    [(0.00001, "0.00001"), (2.5, "2.5"), (30, "30"), (1e16, "10000000000000000")],
)
async def test_the_timeout_header_is_a_plain_decimal(url: str, timeout: float, sent: str) -> None:
    """§12: never exponent form (Python's ``:g`` would write 1e-05 and 1e+16)."""
    async with asyncipc.connect(url) as bus, client(url) as responder:
        responder.send(sub(1, "svc.slow"))
        await responder.flush()
        request = asyncio.ensure_future(bus.request("svc.slow", b"?", timeout=timeout))
        m = parse_msg(await responder.expect(MSG))
        assert m.headers == {"asyncipc-timeout": sent}
        assert PLAIN_DECIMAL.fullmatch(sent)
        assert m.reply is not None
        if timeout < 1:  # 10 µs: nobody could answer in time, so nobody tries
            with pytest.raises(asyncipc.RequestTimeout):
                await request
        else:
            responder.send(pub(m.reply, b"!"))
            assert (await asyncio.wait_for(request, TIMEOUT)).data == b"!"


@pytest.mark.parametrize("value", ["0.00001", "1e-05", ".00001", "1E-5"])
async def test_the_broker_reads_the_timeout_header_leniently(tmp_path: Path, value: str) -> None:
    """§12, §15: a shutdown waits for a request in flight only until its requester's
    time-out, written plainly or, leniently, with an exponent."""
    inbox = f"_INBOX.{os.urandom(11).hex()}"
    broker = asyncipc.Broker(drain_timeout=60)
    listener = await broker.listen(f"unix://{tmp_path}/b.sock")
    async with client(listener.url) as responder, client(listener.url) as requester:
        responder.send(sub(1, "svc.silent"))
        await responder.flush()
        requester.send(pub("svc.silent", b"?", inbox + ".1", {"asyncipc-timeout": value}))
        await responder.expect(MSG)  # routed, never answered: the request is in flight
        # Well under drain_timeout: the request expired 10 µs after it was routed.
        await asyncio.wait_for(broker.close(), 30)


# --- interoperability with a Python Bus ---------------------------------------------------------


async def test_bus_publishes_raw_client_receives(url: str) -> None:
    payload = os.urandom(300_000)
    async with asyncipc.connect(url) as bus, client(url) as c:
        c.send(sub(3, "interop.>"))
        await c.flush()
        await bus.publish("interop.a", b"from bus", headers={"k": "v"}, reply_to="interop.r")
        await bus.publish("interop.big", payload)
        await bus.flush()
        assert parse_msg(await c.expect(MSG)) == Msg(
            3, "interop.a", "interop.r", {"k": "v"}, b"from bus"
        )
        assert parse_msg(await c.expect(MSG)) == Msg(3, "interop.big", None, {}, payload)


async def test_raw_client_publishes_bus_receives(url: str) -> None:
    async with (
        asyncipc.connect(url) as bus,
        bus.subscribe("interop.*") as subscription,
        client(url) as c,
    ):
        await bus.flush()
        c.send(pub("interop.raw", b"from raw", "interop.r", {"h": "1", "h2": "ü"}))
        c.send(pub("interop.bare"))
        got = await subscription.next_msg(timeout=TIMEOUT)
        bare = await subscription.next_msg(timeout=TIMEOUT)
    assert (got.subject, got.data, got.reply_to) == ("interop.raw", b"from raw", "interop.r")
    assert got.headers == {"h": "1", "h2": "ü"}
    assert (bare.subject, bare.data, bare.reply_to) == ("interop.bare", b"", None)
    assert not bare.headers


# --- flow control (§13) -------------------------------------------------------------------------


async def test_overflow_error_cuts_the_subscription_off_with_err_101(tmp_path: Path) -> None:
    async with (
        serve(tmp_path, high_water=16384) as url,
        client(url) as slow,
        client(url) as publisher,
    ):
        slow.send(sub(1, "flood", overflow=ERROR))
        await slow.flush()
        message = pub("flood", b"z" * 1024)
        for _ in range(4000):  # 4 MB while the subscriber does not read
            publisher.send(message)
            await asyncio.wait_for(publisher.writer.drain(), TIMEOUT)
        await publisher.flush()  # `error` never pauses the publisher
        msgs = 0
        while (got := await slow.frame())[0] == MSG:
            msgs += 1
        assert got[0] == ERR
        code, sid, text = parse_err(got[1])
        assert (code, sid) == (101, 1)
        assert "cut off" in text
        assert 0 < msgs < 4000
        # The connection stays; the subscription is gone at the broker.
        publisher.send(message)
        await publisher.flush()
        await slow.flush()


async def test_publishing_to_your_own_block_subscription_is_bounded(tmp_path: Path) -> None:
    """§13: a client that publishes to its own subscription and does not read is paused
    like any other publisher; the broker does not buffer for it without bound."""
    async with serve(tmp_path, high_water=16384) as url, client(url) as c:
        c.send(sub(1, "loop", overflow=BLOCK))
        await c.flush()
        sent = 0
        paused = False
        for i in range(20000):
            c.send(pub("loop", i.to_bytes(4, "big") + b"z" * 1020))
            sent += 1
            try:
                await asyncio.wait_for(c.writer.drain(), 0.5)
            except TimeoutError:
                paused = True
                break
        assert paused, "the broker kept reading a client it could not write to"
        for i in range(sent):
            m = parse_msg(await c.expect(MSG))
            assert int.from_bytes(m.data[:4], "big") == i
        await c.flush()


async def test_overflow_block_pauses_the_publisher_and_loses_nothing(tmp_path: Path) -> None:
    async with (
        serve(tmp_path, high_water=16384) as url,
        client(url) as slow,
        client(url) as publisher,
    ):
        slow.send(sub(1, "flood", overflow=BLOCK))
        await slow.flush()
        sent = 0
        paused = False
        for i in range(20000):  # up to 20 MB
            publisher.send(pub("flood", i.to_bytes(4, "big") + b"z" * 1020))
            sent += 1
            try:
                await asyncio.wait_for(publisher.writer.drain(), 0.5)
            except TimeoutError:
                paused = True  # the broker stopped reading us
                break
        assert paused, "the publisher was never slowed down"
        for i in range(sent):  # reading lets everything through, in order
            m = parse_msg(await slow.expect(MSG))
            assert int.from_bytes(m.data[:4], "big") == i
        await publisher.flush()
        await slow.flush()
