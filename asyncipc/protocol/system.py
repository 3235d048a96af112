"""Names the wire reserves: the ``$sys.`` subjects, the signal names, the status headers.

Every module that writes or reads one of these names imports it from here, the lowest layer,
so that the broker core, the client, the adapters and :mod:`asyncipc.signals` cannot drift
apart (``docs/protocol.md`` §11 and §12, ``docs/signals.md``). Pure: no I/O, no event loop.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable
from typing import Final

from ..errors import ConfigurationError

__all__ = [
    "DELIVER_SUBJECT_HEADER",
    "ERROR_HEADER",
    "KILL_PREFIX",
    "MONITOR_PREFIX",
    "NO_RESPONDERS_STATUS",
    "PERMISSION_REASON",
    "REASON_HEADER",
    "REFUSED_STATUS",
    "RESERVED_PREFIX",
    "SENDABLE",
    "SERVICE_ERROR_STATUS",
    "SIGNAL_PREFIX",
    "STATUS_HEADER",
    "STREAM_MSG_ID_HEADER",
    "STREAM_PREFIX",
    "STREAM_SUBJECT_HEADER",
    "TIMEOUT_HEADER",
    "allowed_signals",
    "sendable_names",
    "signal_name",
    "to_signal",
]

# --- reserved subjects ------------------------------------------------------------------

RESERVED_PREFIX: Final = "$sys."
"""Subjects under this prefix belong to the broker (``docs/protocol.md`` §11)."""
SIGNAL_PREFIX: Final = "$sys.signal."
"""``$sys.signal.HUP`` etc.: a connection's own signals, published by ``signals.watch``."""
KILL_PREFIX: Final = "$sys.kill."
"""``$sys.kill.<client id or name>``: a request the broker answers by signalling that client."""

STREAM_PREFIX: Final = "$sys.stream."
"""``$sys.stream.<op>...``: the streams API the broker answers itself (``docs/streams.md``)."""
MONITOR_PREFIX: Final = "$sys.monitor."
"""``$sys.monitor.varz`` etc.: requests for the broker's figures (``docs/monitoring.md``)."""

# --- reserved headers (``docs/protocol.md`` §12) ------------------------------------------

STATUS_HEADER: Final = "asyncipc-status"
"""A reply that is not the responder's payload carries a status: one of the values below."""
ERROR_HEADER: Final = "asyncipc-error"
"""The text that goes with a failure status."""
REASON_HEADER: Final = "asyncipc-reason"
"""A short machine-readable code that goes with a refusal (``403``)."""
TIMEOUT_HEADER: Final = "asyncipc-timeout"
"""On a request: the seconds the requester will wait for the reply."""

STREAM_SUBJECT_HEADER: Final = "asyncipc-stream-subject"
"""On ``$sys.stream.pub.<stream>``: the subject the message is published on."""
STREAM_MSG_ID_HEADER: Final = "asyncipc-msg-id"
"""On ``$sys.stream.pub.<stream>``: the id the stream deduplicates on."""
DELIVER_SUBJECT_HEADER: Final = "asyncipc-deliver-subject"
"""On a delivery a broker hands a relay (``Broker.deliver_to`` with no subscriber of the
inbox here): the subject the message is delivered with at the relay's other end."""

NO_RESPONDERS_STATUS: Final = "503"
"""The broker's answer to a request nobody subscribes to."""
REFUSED_STATUS: Final = "403"
"""The broker refused a ``$sys.`` request (with ``asyncipc-reason`` and ``asyncipc-error``)."""
PERMISSION_REASON: Final = "permission"
"""The ``asyncipc-reason`` of a ``403`` answering a request the user's permissions refuse
(``docs/security.md``): the requester raises :class:`~asyncipc.PermissionDenied`."""
SERVICE_ERROR_STATUS: Final = "500"
"""A handler failed to answer (with ``asyncipc-error``)."""

# --- signals a client may allow -----------------------------------------------------------

SENDABLE: Final = frozenset(
    {"HUP", "INT", "QUIT", "TERM", "USR1", "USR2", "WINCH", "ALRM", "CONT", "TSTP"}
)
"""Signals a client may allow others to send it through the broker. Not KILL or STOP
(nothing can handle them: an "allowed" KILL is a remote kill switch), nor the fault
signals (SEGV, BUS, FPE, ILL, ABRT, TRAP, SYS), which would lie about what happened."""


def to_signal(sig: int | str) -> signal.Signals:
    """``signal.SIGHUP`` for ``1``, ``"HUP"``, ``"SIGHUP"`` or ``"hup"``; raises
    :class:`~asyncipc.ConfigurationError` for anything else."""
    if isinstance(sig, str):
        name = sig.strip().upper()
        name = name if name.startswith("SIG") else "SIG" + name
        try:
            return signal.Signals[name]
        except KeyError:
            raise ConfigurationError(f"unknown signal {sig!r}") from None
    if isinstance(sig, bool) or not isinstance(sig, int):
        raise ConfigurationError(f"a signal is a name or a number, not {type(sig).__name__}")
    try:
        return signal.Signals(sig)
    except ValueError:
        raise ConfigurationError(f"unknown signal number {sig}") from None


def signal_name(sig: int | str) -> str:
    """The name asyncipc uses for a signal: ``"HUP"`` for ``signal.SIGHUP``, ``1``,
    ``"SIGHUP"`` or ``"hup"``. Raises :class:`~asyncipc.ConfigurationError` if unknown."""
    return to_signal(sig).name.removeprefix("SIG")


def sendable_names(signals: Iterable[int | str]) -> list[str]:
    """Names for HELLO's ``signals`` field, each checked against :data:`SENDABLE`."""
    names: list[str] = []
    for sig in signals:
        name = signal_name(sig)
        if name not in SENDABLE:
            raise ConfigurationError(
                f"SIG{name} cannot be allowed: the broker sends only {', '.join(sorted(SENDABLE))}"
            )
        if name not in names:
            names.append(name)
    return names


def allowed_signals(value: object) -> tuple[frozenset[str], list[str]]:
    """HELLO's ``signals`` field: the names accepted, and the entries ignored."""
    if not isinstance(value, list):
        return frozenset(), [repr(value)]
    accepted: set[str] = set()
    ignored: list[str] = []
    for item in value:
        name = item.upper().removeprefix("SIG") if isinstance(item, str) else None
        if name in SENDABLE:
            accepted.add(name)
        else:
            ignored.append(repr(item))
    return frozenset(accepted), ignored
