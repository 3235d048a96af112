"""The broker's reserved subjects, ``$sys.``: signal loopback and signal requests.

A session hands over every PUB whose subject (or reply subject) begins with ``$sys.``;
nothing under that prefix is routed like an ordinary message:

``$sys.signal.<NAME>``
    Delivered only to the publishing connection's own subscriptions, so that a process
    watching its signals (:func:`asyncipc.signals.watch`) sees its own and no one else
    can forge them.
``$sys.stream.<op>...``
    The streams API (``docs/streams.md``), answered by the broker's stream manager.
``$sys.monitor.<varz|connz|subsz|streamz|subjectz>``
    A request the broker answers itself with its figures as JSON (``docs/monitoring.md``);
    the payload is empty or a JSON object of options.
``$sys.kill.<client id or name>``
    A request the broker answers itself, by sending the signal named in the payload to
    the target client's process if every rule of :func:`refusal` passes. The reply is
    empty on success; a refusal is a status reply ``asyncipc-status: 403`` with
    ``asyncipc-reason`` (a code) and ``asyncipc-error`` (the text).
anything else under ``$sys.``, and any reply subject under ``$sys.``
    Refused with ERR 102 (a request also gets a 403 reply). A reply subject is refused
    because a service answering it would publish there on the requester's behalf: a
    remote client could make a local service send a signal for it (a confused deputy).

The threat model is in ``docs/signals.md``.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass

from ._session import Session
from .errors import ConnectionClosed, FrameTooLarge
from .link import PeerInfo
from .protocol import ErrorCode, Headers, Pub
from .protocol.system import (
    ERROR_HEADER,
    KILL_PREFIX,
    MONITOR_PREFIX,
    REASON_HEADER,
    REFUSED_STATUS,
    RESERVED_PREFIX,
    SENDABLE,
    SIGNAL_PREFIX,
    STATUS_HEADER,
    STREAM_PREFIX,
)
from .subjects import matches

__all__ = ["Process", "handle", "process_of", "refusal"]

log = logging.getLogger("asyncipc.broker")

REFUSED = {STATUS_HEADER: REFUSED_STATUS}


@dataclass(frozen=True)
class Process:
    """The process at the other end of a link, as far as the broker knows it first-hand."""

    pid: int | None
    uid: int | None

    @property
    def local(self) -> bool:
        """The kernel (or the broker itself) vouches for who this is."""
        return self.pid is not None or self.uid is not None


def process_of(peer: PeerInfo) -> Process:
    """Who is behind ``peer``. Only what the kernel told the transport (Unix sockets:
    ``SO_PEERCRED``; FIFOs: the owner the broker checked) or what the broker did itself
    (a child it spawned over pipes, an in-process bus) counts: nothing a client says."""
    if peer.transport == "memory":
        return Process(os.getpid(), os.geteuid())
    uid = peer.uid
    if uid is None and peer.pid is not None and peer.transport == "pipe":
        uid = os.geteuid()  # a child this broker process started (or itself)
    return Process(peer.pid, uid)


def refusal(
    *,
    sender: Process,
    sender_transport: str,
    remote_signals: bool,
    name: str,
    target: Session | None,
    target_label: str,
    candidates: int = 1,
) -> tuple[str, str] | None:
    """Why the broker will not send SIG``name`` to ``target``: ``(reason, text)``, or
    ``None`` when it may. The rules, in order (``docs/signals.md``)."""
    if not sender.local and not remote_signals:
        return "remote-sender", (
            f"signals may only be requested over a local channel (unix, pipe, fifo); "
            f"this {sender_transport} connection is not one, and the broker does not "
            "enable remote_signals"
        )
    if name not in SENDABLE:
        return "bad-signal", (
            f"cannot send {name!r}: the broker sends only {', '.join(sorted(SENDABLE))}"
        )
    if target is None:
        if candidates > 1:
            return "ambiguous", (
                f"{candidates} connected clients are named {target_label!r}; "
                "address one by its client id"
            )
        return "unknown-client", f"no connected client {target_label!r} (it may have left)"
    who = target.describe()
    if name not in target.allowed_signals:
        allows = ", ".join(sorted(target.allowed_signals)) or "none"
        return "not-allowed", f"{who} did not allow SIG{name} (it allows: {allows})"
    proc = process_of(target.link.peer)
    if proc.pid is None:
        return "no-pid", (
            f"{who} is connected over {target.link.peer.transport}: the broker does not "
            "know its process"
        )
    if sender.uid is not None and sender.uid != 0 and sender.uid != proc.uid:
        return "uid-mismatch", (
            f"{who} runs as uid {proc.uid}, the sender as uid {sender.uid}: only the "
            "same user or root may signal it"
        )
    return None


def handle(
    session: Session,
    subject: str,
    data: bytes | None,
    reply: str | None,
    headers: Headers | None,
    pub: Pub | None,
) -> None:
    """A PUB on a ``$sys.`` subject (or with a ``$sys.`` reply subject) from ``session``."""
    if reply is not None and reply.startswith(RESERVED_PREFIX):
        session.send_error(
            ErrorCode.PERMISSION, f"reply subject {reply!r} is reserved for the broker"
        )
    elif subject.startswith(SIGNAL_PREFIX):
        _loopback(session, subject, data, reply, headers, pub)
    elif subject.startswith(STREAM_PREFIX):
        if data is None:
            assert pub is not None
            data = pub.data
        session.broker.stream_request(session, subject, data, reply, headers)
    elif subject.startswith(MONITOR_PREFIX):
        if reply is None:
            session.send_error(
                ErrorCode.PERMISSION, f"{subject} is a request: send it with a reply subject"
            )
            return
        if data is None:
            assert pub is not None
            data = pub.data
        session.broker.monitor_request(subject, data, reply)
    elif subject.startswith(KILL_PREFIX):
        if data is None:
            assert pub is not None
            data = pub.data
        _kill(session, subject[len(KILL_PREFIX) :], data, reply)
    else:
        text = f"subject {subject!r} is reserved for the broker"
        if reply is not None:
            _answer(session, reply, ("reserved", text))
        else:
            session.send_error(ErrorCode.PERMISSION, text)


def _loopback(
    session: Session,
    subject: str,
    data: bytes | None,
    reply: str | None,
    headers: Headers | None,
    pub: Pub | None,
) -> None:
    broker = session.broker
    link = session.link
    groups: set[str] = set()
    for route in list(session.routes.values()):
        if not matches(route.subject, subject):
            continue
        if route.queue is not None:
            if route.queue in groups:
                continue
            groups.add(route.queue)
        if link.write_blocked and not broker.apply_overflow(route, session):
            continue
        if data is None and link.in_process:
            assert pub is not None
            data = pub.data
        try:
            link.deliver(route.sid, subject, data, reply, headers, pub)
        except ConnectionClosed:
            return
        except FrameTooLarge as exc:
            session.send_error(ErrorCode.NOT_DELIVERED, f"message not delivered: {exc}", route.sid)


def _kill(session: Session, target: str, data: bytes, reply: str | None) -> None:
    if reply is None:
        session.send_error(
            ErrorCode.PERMISSION,
            f"{KILL_PREFIX}{target} is a request: send it with a reply subject",
        )
        return
    name = data.decode("utf-8", "replace").strip().upper().removeprefix("SIG")
    broker = session.broker
    sessions = [s for s in broker.clients() if s.open]
    if target.isdigit():
        found = [s for s in sessions if s.client_id == int(target)]
    else:
        found = [s for s in sessions if s.name == target]
    sender = process_of(session.link.peer)
    why = refusal(
        sender=sender,
        sender_transport=session.link.peer.transport,
        remote_signals=broker.options.remote_signals,
        name=name,
        target=found[0] if len(found) == 1 else None,
        target_label=target,
        candidates=len(found),
    )
    if why is None:
        victim = found[0]
        pid = process_of(victim.link.peer).pid
        assert pid is not None
        try:
            os.kill(pid, signal.Signals["SIG" + name])
        except ProcessLookupError:
            why = "gone", f"{victim.describe()}: its process (pid {pid}) no longer exists"
        except OSError as exc:
            why = "os-error", f"the broker could not signal {victim.describe()}: {exc.strerror}"
        else:
            log.info("%s sent SIG%s to %s", session.describe(), name, victim.describe())
            session.broker.publish(reply, b"", None, None, None, None)
            return
    log.info("refused a signal request from %s: %s", session.describe(), why[1])
    _answer(session, reply, why)


def _answer(session: Session, reply: str, why: tuple[str, str]) -> None:
    reason, text = why
    headers = {**REFUSED, REASON_HEADER: reason, ERROR_HEADER: text[:1000]}
    session.broker.publish(reply, b"", None, headers, None, None)
