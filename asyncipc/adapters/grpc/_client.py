"""The client's side of the gRPC adapter: a Bus over one ``Connect`` stream.

``asyncipc.connect("grpc://host:port")`` opens a grpc.aio channel and a ``Connect`` call
on it and hands the Bus a :class:`ClientLink`, which turns the Bus's frames into the
stream's protobuf messages and back. The Bus is the one every transport has; nothing
above the link knows it is on gRPC.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any

import grpc

from ...errors import BrokenLinkError, ClosedError, ConfigurationError, ConnectError
from ...link import Link, LinkReceiver, PeerInfo
from ...protocol import (
    MSG_EXTRA,
    PING,
    PONG,
    PROTOCOL_VERSION,
    Err,
    ErrorCode,
    Frame,
    Hello,
    Ping,
    Pong,
    Sub,
    Unsub,
    Welcome,
)
from ...transports import URL, TransportOptions
from ._link import SLACK, Entry, GrpcLink, headers_of
from .proto import bus_pb2 as pb
from .proto import bus_pb2_grpc

__all__ = ["ClientLink", "connect", "host_port"]

log = logging.getLogger("asyncipc.grpc")

_pb_grpc: Any = bus_pb2_grpc  # generated without annotations

# Statuses a client turns back into the ERR they stand for (the others: a lost link).
_STATUS_ERRORS = {
    grpc.StatusCode.UNAUTHENTICATED: ErrorCode.AUTH,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ErrorCode.FRAME_TOO_LARGE,
}


def host_port(url: URL) -> str:
    """``host:port`` of a grpc:// URL, IPv6 addresses in brackets."""
    if not url.host or url.port is None:
        raise ConfigurationError(f"{url.raw}: expected grpc://host:port")
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{host}:{url.port}"


class ClientLink(GrpcLink):
    """A Bus's end of a ``Connect`` stream; owns the call and the channel it is on."""

    def __init__(
        self,
        call: Any,
        channel: grpc.aio.Channel,
        options: TransportOptions,
        peer: PeerInfo,
    ) -> None:
        super().__init__(call, options, peer)
        self._call = call
        self._channel = channel
        self._got_error = False
        self._aborted = False
        # The link's own task, which wait_closed() waits for.
        self._main = asyncio.ensure_future(self._run())

    def _batch(self) -> Any:
        return pb.ConnectRequest()

    def _add_message(self, batch: Any, entry: Entry) -> None:
        m = batch.frames.add().publish
        m.subject, m.data = entry[1], entry[2]
        if entry[3] is not None:
            m.reply_to = entry[3]
        if entry[4]:
            m.headers.update(entry[4])

    def _encode(self, frame: Frame) -> Any:
        if type(frame) is Sub:
            return pb.ClientFrame(
                subscribe=pb.SubscribeRequest(
                    sid=frame.sid,
                    subject=frame.subject,
                    queue=frame.queue or "",
                    overflow=pb.Overflow.Value(f"OVERFLOW_{frame.overflow.name}"),
                    max_pending=frame.max_msgs,
                    max_bytes=frame.max_bytes,
                )
            )
        if type(frame) is Unsub:
            return pb.ClientFrame(unsubscribe=pb.Unsubscribe(sid=frame.sid))
        if type(frame) is Ping:
            return pb.ClientFrame(ping=self._ping_frame())
        if type(frame) is Pong:
            return pb.ClientFrame(pong=self._pong_frame())
        if type(frame) is Hello:
            f = frame.fields
            token = f.get("token")
            return pb.ClientFrame(
                hello=pb.Hello(
                    version=f.get("version", PROTOCOL_VERSION),
                    name=f.get("name") or "",
                    token=token if isinstance(token, str) else "",
                    max_frame=f.get("max_frame") or 0,
                    lang=f.get("lang") or "",
                )
            )
        log.debug("not sending %r over gRPC", frame)
        return None

    def _dispatch(self, receiver: LinkReceiver, frame: Any) -> None:
        kind = frame.WhichOneof("frame")
        if kind == "message":
            m = frame.message
            receiver.msg_received(
                m.sid, m.subject, m.data, m.reply_to or None, headers_of(m.headers)
            )
        elif kind == "ping":
            self._ping_ids.append(frame.ping.id)
            receiver.frame_received(PING)
        elif kind == "pong":
            receiver.frame_received(PONG)
        elif kind == "error":
            e = frame.error
            self._got_error = True
            receiver.frame_received(Err(e.code, e.message, e.sid))
        elif kind == "welcome":
            w = frame.welcome
            receiver.frame_received(
                Welcome(
                    {
                        "version": w.version,
                        "server": w.server,
                        "server_id": w.server_id,
                        "client_id": w.client_id,
                        "max_frame": w.max_frame,
                        "ping_interval": w.ping_interval,
                        "client_max_frame": w.client_max_frame,
                        "high_water": w.high_water,
                    }
                )
            )

    async def _run(self) -> None:
        """The link's life: read until the broker ends the stream, then release it all.

        The writer is a task of this call's task group: it is cancelled once reading
        ends, and awaited before the channel is closed."""
        exc: BaseException | None = None
        try:
            async with asyncio.TaskGroup() as group:
                writer = group.create_task(self._writer(), name="asyncipc grpc writer")
                try:
                    exc = await self._read_loop()
                except grpc.aio.AioRpcError as rpc_error:
                    exc = self._status_error(rpc_error)
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        # Our task was cancelled: that is raised, whatever else happened.
                        self._finish(ClosedError("grpc link was cancelled"))
                        raise
                    # abort(): grpc.aio raises CancelledError from the call we cancelled.
                except Exception as other:  # pragma: no cover - defensive: tell the Bus why
                    exc = BrokenLinkError(f"{self.peer.describe()}: {other!r}")
                finally:
                    self._finish(exc)
                    writer.cancel()
        finally:
            await self._channel.close()
            self._set_closed()

    async def _writer(self) -> None:
        try:
            await self._write_loop()
            if not self._ended.is_set():
                await self._call.done_writing()
        except (grpc.aio.AioRpcError, RuntimeError, asyncio.InvalidStateError):
            pass  # the reader sees the same failure and reports it

    def _status_error(self, error: grpc.aio.AioRpcError) -> BaseException:
        """The broker ended the stream with a status: if it sent no ERR first (a refusal
        by the gRPC layer itself), the Bus gets the ERR the status stands for."""
        code = error.code()
        details = error.details() or ""
        if not self._got_error and self._receiver is not None and code in _STATUS_ERRORS:
            self._got_error = True
            self._receiver.frame_received(Err(_STATUS_ERRORS[code], details))
        return BrokenLinkError(f"{self.peer.describe()}: {code.name}: {details}")

    async def wait_closed(self) -> None:
        # The end of _run(): the channel is closed. How it ended, link_lost has told
        # the Bus; a cancellation of the caller is raised (asyncio.wait lets it through).
        await asyncio.wait([self._main])

    def abort(self) -> None:
        if not self._aborted and not self._closed_fut.done():
            self._aborted = True
            self._exc = self._exc or ClosedError("grpc link was aborted")
            self._call.cancel()
            self._finish(None)


async def connect(url: URL, options: TransportOptions) -> Link:
    """Open a channel to the broker at ``url`` and a ``Connect`` stream on it."""
    target = host_port(url)
    limit = options.max_frame + MSG_EXTRA + SLACK
    channel = grpc.aio.insecure_channel(
        target,
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
        ],
    )
    try:
        async with asyncio.timeout(options.connect_timeout):
            await _ready(channel, url.raw)
    except BaseException as exc:
        await channel.close()
        if isinstance(exc, TimeoutError):
            raise ConnectError(
                f"no gRPC server answered at {url.raw} within {options.connect_timeout:g} s"
            ) from None
        raise
    # A user rides in the call's metadata: the Hello message has no field for it, and
    # the adapter puts it in the HELLO it stands for (docs/grpc.md, Authentication).
    user = getattr(options.connect_options, "user", None)
    metadata = None
    if user is not None:
        password = getattr(options.connect_options, "password", None) or ""
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        metadata = (("authorization", f"Basic {basic}"),)
    call = _pb_grpc.BusStub(channel).Connect(metadata=metadata)
    return ClientLink(call, channel, options, PeerInfo("grpc", target))


async def _ready(channel: grpc.aio.Channel, url: str) -> None:
    """Wait until the channel is connected; fail at once on a refused connection
    instead of retrying with back-off until the time-out."""
    state = channel.get_state(try_to_connect=True)
    while state is not grpc.ChannelConnectivity.READY:
        if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            raise ConnectError(f"cannot connect to {url}: no gRPC server there")
        await channel.wait_for_state_change(state)
        state = channel.get_state(try_to_connect=True)
