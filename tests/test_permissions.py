"""Users and permissions (issue 13, DESIGN.md §10, docs/security.md).

The matcher against a reference on random subjects and patterns; then real brokers: who
a client is (password, token, Unix uid, TLS certificate) and what it may do, over every
transport with a link to a broker; refusals as exceptions and events, never silence.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import asyncipc
from asyncipc import Permissions, User, hash_password
from asyncipc.permissions import PatternSet, ResponsePolicy
from asyncipc.protocol import ErrorCode
from asyncipc.subjects import covers, matches, overlap
from asyncipc.users import verify_password
from tests.conftest import Certs
from tests.test_wire_raw import MSG, PING, PONG, PREAMBLE, WELCOME, frame, hello, pub, raw, sub

PASSWORD = "correct horse"
HASH = hash_password(PASSWORD)

# --- the matcher against a reference --------------------------------------------------

TOKENS = ["a", "b", "c"]
literal_tokens = st.sampled_from(TOKENS)
subjects = st.lists(literal_tokens, min_size=1, max_size=4).map(".".join)


@st.composite
def patterns(draw: st.DrawFn) -> str:
    tokens = draw(st.lists(st.sampled_from([*TOKENS, "*"]), min_size=1, max_size=4))
    if draw(st.booleans()):
        tokens = [*tokens[: draw(st.integers(0, len(tokens) - 1))], ">"]
    return ".".join(tokens)


def reference_match(pattern: str, subject: str) -> bool:
    """The NATS rule as a regular expression: nothing shared with the trie."""
    parts = []
    for token in pattern.split("."):
        parts.append(
            r"[^.]+" if token == "*" else r"[^.]+(\.[^.]+)*" if token == ">" else re.escape(token)
        )
    return re.fullmatch(r"\.".join(parts), subject) is not None


def universe(*pats: str) -> list[str]:
    """Every subject over the tokens the patterns use plus a fresh one, one token longer
    than the longest pattern: enough to decide covering and overlap by enumeration."""
    longest = max(len(p.split(".")) for p in pats) + 1
    alphabet = [*TOKENS, "z"]
    return [
        ".".join(t) for n in range(1, longest + 1) for t in itertools.product(alphabet, repeat=n)
    ]


@settings(max_examples=400, deadline=None)
@given(st.lists(patterns(), max_size=5), subjects)
def test_pattern_set_agrees_with_the_reference(pats: list[str], subject: str) -> None:
    found = PatternSet(pats).match(subject)
    expected = [p for p in pats if reference_match(p, subject)]
    assert (found is not None) == bool(expected)
    assert found is None or found in expected
    for p in pats:
        assert matches(p, subject) == reference_match(p, subject)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(patterns(), max_size=3),
    st.lists(patterns(), max_size=3),
    st.one_of(patterns(), subjects),
    st.booleans(),
)
def test_permissions_agree_with_enumeration(
    allow: list[str], deny: list[str], wanted: str, restricted: bool
) -> None:
    """Publish: allowed iff some allow matches and no deny does. Subscribe to a pattern:
    allowed iff every subject it can match is allowed (covered) and none is denied."""
    perms = Permissions.build(
        publish=allow if restricted else None,
        publish_deny=deny,
        subscribe=allow if restricted else None,
        subscribe_deny=deny,
    )
    world = universe(wanted, *allow, *deny)
    reached = [s for s in world if reference_match(wanted, s)]

    def allowed(s: str) -> bool:
        return (not restricted or any(reference_match(a, s) for a in allow)) and not any(
            reference_match(d, s) for d in deny
        )

    if "*" not in wanted and ">" not in wanted:
        assert (perms.publish_refusal(wanted) is None) == allowed(wanted)
    denied_somewhere = any(any(reference_match(d, s) for d in deny) for s in reached)
    covered = not restricted or any(all(reference_match(a, s) for s in reached) for a in allow)
    assert (perms.subscribe_refusal(wanted) is None) == (covered and not denied_somewhere)
    # and the subjects.py helpers the subscribe rule rests on
    for a in allow:
        assert covers(a, wanted) == all(reference_match(a, s) for s in reached)
        assert overlap(a, wanted) == any(reference_match(a, s) for s in reached)


def test_password_hash_round_trip_and_format() -> None:
    assert HASH.startswith("scrypt$16384$8$1$")
    assert verify_password(PASSWORD, HASH)
    assert not verify_password(PASSWORD + "!", HASH)
    assert hash_password(PASSWORD) != HASH  # salted
    with pytest.raises(asyncipc.ConfigurationError, match="password_hash"):
        User("x", password_hash="sha1$abc")
    with pytest.raises(asyncipc.ConfigurationError, match="no identity"):
        User("x")
    with pytest.raises(asyncipc.InvalidSubject, match="permission pattern"):
        Permissions.build(publish=["a..b"])
    with pytest.raises(asyncipc.ConfigurationError, match="max_msgs"):
        ResponsePolicy(max_msgs=0)


# --- real brokers -----------------------------------------------------------------------

BILLING = User(
    "billing",
    password_hash=HASH,
    permissions=Permissions.build(
        publish=["orders.>", "billing.>"],
        publish_deny=["orders.secret.>"],
        subscribe=["orders.>", "billing.>", "_INBOX.>"],
        subscribe_deny=["orders.secret.>"],
    ),
)
SERVICE = User(
    "svc",
    password_hash=HASH,
    permissions=Permissions.build(publish=["svc.log"], subscribe=["svc.>", "billing.>"]),
)
MUTE = User(
    "mute",
    password_hash=HASH,
    permissions=Permissions.build(publish=["svc.>"], subscribe=["svc.>"], responses=None),
)
USERS = (BILLING, SERVICE, MUTE)
LINK_TRANSPORTS = ["memory", "unix", "tcp", "tls", "fifo", "shm", "mmap"]


@pytest.fixture(params=LINK_TRANSPORTS)
async def broker_url(
    request: pytest.FixtureRequest, tmp_path: Path, certs: Certs
) -> AsyncIterator[str]:
    kind: str = request.param
    async with asyncipc.Broker(users=USERS, token="admin-token") as broker:
        if kind == "memory":
            yield (await broker.listen(f"memory://p{os.urandom(4).hex()}")).url
        elif kind == "unix":
            yield (await broker.listen(f"unix://{tmp_path}/b.sock")).url
        elif kind == "tcp":
            yield (await broker.listen("tcp://127.0.0.1:0")).url
        elif kind == "tls":
            listener = await broker.listen("tls://127.0.0.1:0" + certs.server_query())
            yield listener.url + certs.client_query()
        elif kind == "fifo":
            yield (await broker.listen(f"fifo://{tmp_path}/b.fifo")).url
        elif kind == "mmap":
            yield (await broker.listen(f"mmap://{tmp_path}/m")).url
        else:
            yield (await broker.listen(f"shm://p{os.urandom(4).hex()}")).url


def as_user(name: str, password: str = PASSWORD) -> asyncipc.ConnectOptions:
    return asyncipc.ConnectOptions(user=name, password=password, reconnect=False)


async def next_error(events: asyncipc.EventStream) -> BaseException | None:
    async with asyncio.timeout(5):
        async for event in events:
            if event.kind == "error":
                return event.error
    return None


async def test_every_link_transport_refuses_what_is_not_allowed(broker_url: str) -> None:
    """Allowed traffic flows; a refused publish is an error event, a refused request and
    a refused subscription raise PermissionDenied; the connection carries on."""
    async with (
        asyncipc.connect(broker_url, options=as_user("billing")) as bus,
        asyncipc.connect(broker_url, options=as_user("svc")) as svc,
    ):
        async with bus.subscribe("orders.*") as orders:
            await bus.publish("orders.new", b"1")
            assert (await orders.next_msg(timeout=5)).data == b"1"
        events = bus.events()
        await bus.publish("payroll.run", b"x")  # not in the allow list
        error = await next_error(events)
        assert isinstance(error, asyncipc.PermissionDenied)
        assert "'payroll.run'" in str(error)
        assert "'billing'" in str(error)
        await bus.publish("orders.secret.plan", b"x")  # allowed by orders.>, denied wins
        error = await next_error(events)
        assert isinstance(error, asyncipc.PermissionDenied)
        assert "denied" in str(error)
        with pytest.raises(asyncipc.PermissionDenied, match=r"'payroll\.run'"):
            await bus.request("payroll.run", b"", timeout=5)
        with pytest.raises(asyncipc.PermissionDenied, match=r"'payroll\.>'"):
            async with bus.subscribe("payroll.>"):
                pass
        with pytest.raises(asyncipc.PermissionDenied, match="overlaps"):
            async with bus.subscribe("orders.>"):  # would see orders.secret.x: refused whole
                pass
        # svc answers billing's requests though its publish list names only svc.log:
        # a response to a request delivered to it (allow_responses)
        serving = svc.serve("billing.quote", _echo)
        await svc.flush()
        reply = await bus.request("billing.quote", b"q", timeout=5)
        assert reply.data == b"quote:q"
        assert bus.refused == 5
        await serving.unsubscribe()
        assert bus.is_connected
        assert svc.is_connected


async def _echo(msg: asyncipc.Message) -> bytes:
    return b"quote:" + msg.data


async def test_responses_are_bounded_and_checked(tmp_path: Path) -> None:
    async with asyncipc.Broker(users=USERS, token="admin-token") as broker:
        url = (await broker.listen(f"unix://{tmp_path}/b.sock")).url
        async with (
            asyncipc.connect(url, options=as_user("billing")) as bus,
            asyncipc.connect(url, options=as_user("svc")) as svc,
            asyncipc.connect(url, options=as_user("mute")) as mute,
            asyncipc.connect(url, token="admin-token") as admin,
            svc.subscribe("billing.ask") as asks,
            mute.subscribe("svc.ask") as mute_asks,
        ):
            # billing may publish with a reply subject it may subscribe to
            await bus.publish("billing.ask", b"", reply_to="billing.answers")
            asked = await asks.next_msg(timeout=5)
            svc_events = svc.events()
            await svc.publish(asked.reply_to or "", b"first")  # allowed: a response
            await svc.publish(asked.reply_to or "", b"second")  # max_msgs=1: refused
            error = await next_error(svc_events)
            assert isinstance(error, asyncipc.PermissionDenied)
            assert "'billing.answers'" in str(error)
            # a new request with the same reply subject: the refusal was not cached over it
            await bus.publish("billing.ask", b"", reply_to="billing.answers")
            asked = await asks.next_msg(timeout=5)
            async with bus.subscribe("billing.answers") as answers:
                await svc.publish(asked.reply_to or "", b"third")
                assert (await answers.next_msg(timeout=5)).data == b"third"
            # a reply subject the publisher may not subscribe to is refused
            events = bus.events()
            await bus.publish("billing.ask", b"", reply_to="payroll.steal")
            error = await next_error(events)
            assert isinstance(error, asyncipc.PermissionDenied)
            assert "reply subject 'payroll.steal'" in str(error)
            # responses=None: mute may answer only within its own publish list
            asking = asyncio.ensure_future(admin.request("svc.ask", b"", timeout=0.5))
            question = await mute_asks.next_msg(timeout=5)
            mute_events = mute.events()
            await mute.publish(question.reply_to or "", b"no")
            assert isinstance(await next_error(mute_events), asyncipc.PermissionDenied)
            with pytest.raises(asyncipc.RequestTimeout):
                await asking
            assert broker.stats.permission_denied == 3


async def test_identities_by_password_token_and_refusals(tmp_path: Path) -> None:
    async with asyncipc.Broker(users=USERS, token="admin-token") as broker:
        url = (await broker.listen(f"unix://{tmp_path}/b.sock")).url
        with pytest.raises(asyncipc.AuthenticationError, match="wrong password"):
            await asyncipc.connect(url, options=as_user("billing", "nope"))
        with pytest.raises(asyncipc.AuthenticationError, match="wrong password"):
            await asyncipc.connect(url, options=as_user("nobody"))
        with pytest.raises(asyncipc.AuthenticationError, match="user required"):
            await asyncipc.connect(url, options=asyncipc.ConnectOptions(reconnect=False))
        # the shared token stays: it may do everything
        async with asyncipc.connect(url, token="admin-token") as admin:
            async with admin.subscribe("payroll.>") as payroll:
                await admin.publish("payroll.run", b"")
                await payroll.next_msg(timeout=5)
            assert admin.server_info.get("user") is None
        async with asyncipc.connect(url, options=as_user("billing")) as bus:
            assert bus.server_info["user"] == "billing"
        assert broker.stats.permission_denied == 0


async def test_user_and_password_in_a_tcp_url() -> None:
    async with asyncipc.Broker(users=USERS) as broker:
        url = (await broker.listen("tcp://127.0.0.1:0")).url
        with_creds = url.replace("tcp://", "tcp://billing:correct%20horse@")
        async with asyncipc.connect(with_creds) as bus:
            assert bus.server_info["user"] == "billing"
            assert "correct" not in bus.url
            assert "billing@" not in bus.url


async def test_raw_wire_refusals_name_the_subject(tmp_path: Path) -> None:
    """From a raw socket: a refused SUB gets ERR PERMISSION with its sid, a refused PUB
    ERR PERMISSION with sid 0; the connection stays; a wrong password is ERR AUTH."""
    async with asyncipc.Broker(users=USERS) as broker:
        url = (await broker.listen(f"unix://{tmp_path}/b.sock")).url
        async with raw(url) as conn:
            welcome = await conn.handshake(user="billing", password=PASSWORD)
            assert welcome["user"] == "billing"
            conn.send(sub(7, "payroll.*"))
            code, sid, text = await conn.expect_err()
            assert (code, sid) == (ErrorCode.PERMISSION, 7)
            assert "'payroll.*'" in text
            conn.send(pub("payroll.run", b"x"))
            code, sid, text = await conn.expect_err()
            assert (code, sid) == (ErrorCode.PERMISSION, 0)
            assert "'payroll.run'" in text
            await conn.flush()  # still served
        async with raw(url) as conn:
            conn.send(PREAMBLE, hello(user="billing", password="wrong"))
            code, _, text = await conn.expect_err()
            assert code == ErrorCode.AUTH
            assert "wrong password" in text
            await conn.expect_eof()


async def test_frames_pipelined_behind_hello_wait_for_the_password_check(tmp_path: Path) -> None:
    """HELLO, SUB, PUB, PING in one write: the password is checked off the event loop,
    and the frames behind it are then handled in order, with the user's permissions."""
    async with asyncipc.Broker(users=USERS) as broker:
        url = (await broker.listen(f"unix://{tmp_path}/b.sock")).url
        async with raw(url) as conn:
            conn.send(
                PREAMBLE,
                hello(user="billing", password=PASSWORD + "x" * 5),  # not cached: checked
                sub(1, "orders.*"),
            )
            await conn.expect_err()
        async with raw(url) as conn:
            conn.send(
                PREAMBLE,
                hello(user="svc", password=PASSWORD),
                sub(1, "svc.*"),
                sub(2, "payroll.*"),
                pub("svc.log", b"hi"),
                frame(PING),
            )
            await conn.expect(WELCOME)
            code, sid, _ = await conn.expect_err()
            assert (code, sid) == (ErrorCode.PERMISSION, 2)
            body = await conn.expect(MSG)
            assert b"svc.log" in body
            await conn.expect(PONG)


async def test_unix_peer_credentials_identify_a_user(tmp_path: Path) -> None:
    """The test runs as some uid: a user with that uid is who a unix:// client is, with
    no secret; with only a user for another uid, the same client is refused."""
    me = os.getuid()
    local = User("local", uid=me, permissions=Permissions.build(publish=["local.>"]))
    async with asyncipc.Broker(users=(local,)) as broker:
        urls = [
            (await broker.listen(f"unix://{tmp_path}/b.sock")).url,
            (await broker.listen(f"shm://p{os.urandom(4).hex()}")).url,  # set up over unix
            (await broker.listen(f"fifo://{tmp_path}/b.fifo")).url,  # the FIFOs' owner
        ]
        for url in urls:
            options = asyncipc.ConnectOptions(reconnect=False)
            async with asyncipc.connect(url, options=options) as bus:
                assert bus.server_info["user"] == "local", url
                with pytest.raises(asyncipc.PermissionDenied, match="elsewhere"):
                    await bus.request("elsewhere", b"", timeout=5)
        url = urls[0]
        # tcp:// has no peer credentials: the same process is nobody there
        tcp = (await broker.listen("tcp://127.0.0.1:0")).url
        with pytest.raises(asyncipc.AuthenticationError, match="user required"):
            await asyncipc.connect(tcp, options=asyncipc.ConnectOptions(reconnect=False))
    other = User("other", uid=me + 1)
    async with asyncipc.Broker(users=(other,)) as broker:
        url = (await broker.listen(f"unix://{tmp_path}/c.sock")).url
        with pytest.raises(asyncipc.AuthenticationError, match="user required"):
            await asyncipc.connect(url, options=asyncipc.ConnectOptions(reconnect=False))
        with pytest.raises(asyncipc.AuthenticationError):
            await asyncipc.connect(url, options=as_user("other", ""))


async def test_tls_client_certificate_identifies_a_user(certs: Certs) -> None:
    """A tls:// listener that verifies clients (?ca=): the certificate's SAN names the
    user; a client without a certificate is refused."""
    cert_user = User(
        "robot", cert="client@asyncipc.test", permissions=Permissions.build(publish=["robot.>"])
    )
    async with asyncipc.Broker(users=(cert_user,)) as broker:
        listener = await broker.listen(
            "tls://127.0.0.1:0" + certs.server_query() + f"&ca={certs.ca_file}&verify=optional"
        )
        ctx = ssl.create_default_context(cafile=certs.ca_file)
        ctx.load_cert_chain(certs.client_cert, certs.client_key)
        options = asyncipc.ConnectOptions(ssl=ctx, reconnect=False)
        async with asyncipc.connect(listener.url, options=options) as bus:
            assert bus.server_info["user"] == "robot"
            with pytest.raises(asyncipc.PermissionDenied):
                await bus.request("people.x", b"", timeout=5)
        bare = asyncipc.ConnectOptions(
            ssl=ssl.create_default_context(cafile=certs.ca_file), reconnect=False
        )
        # refused (over TLS the broker's ERR may be lost to the reset of its hang-up)
        with pytest.raises(asyncipc.HandshakeError):
            await asyncipc.connect(listener.url, options=bare)


async def test_reconfigure_reapplies_permissions_to_connected_clients(tmp_path: Path) -> None:
    """Broker.reconfigure (what SIGHUP does with --config): a subscription no longer
    allowed is removed with an ERR naming it; a publish no longer allowed is refused;
    a removed user is disconnected. The connections themselves stay."""
    async with asyncipc.Broker(users=USERS) as broker:
        url = (await broker.listen(f"unix://{tmp_path}/b.sock")).url
        async with (
            asyncipc.connect(url, options=as_user("billing")) as bus,
            asyncipc.connect(url, options=as_user("svc")) as svc,
        ):
            async with bus.subscribe("orders.*") as orders, bus.subscribe("billing.x") as kept:
                narrower = User(
                    "billing",
                    password_hash=HASH,
                    permissions=Permissions.build(
                        publish=["billing.>"], subscribe=["billing.>", "_INBOX.>"]
                    ),
                )
                broker.reconfigure(asyncipc.BrokerOptions(users=(narrower,)))
                with pytest.raises(asyncipc.PermissionDenied, match=r"'orders\.\*'"):
                    await orders.next_msg(timeout=5)
                events = bus.events()
                await bus.publish("orders.new", b"")
                assert isinstance(await next_error(events), asyncipc.PermissionDenied)
                await bus.publish("billing.x", b"still")
                assert (await kept.next_msg(timeout=5)).data == b"still"
            await svc.wait_closed()  # svc's user is gone: disconnected
            assert bus.is_connected
