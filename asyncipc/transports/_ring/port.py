"""The event-loop side of a ring pair: when to look, when to sleep, when to ring.

A :class:`RingPort` owns no data; its *owner* (a link or a channel) reads and writes the
rings. The port decides when the owner is asked to, following the doorbell protocol of
``docs/shm.md``:

* **Busy:** while records keep coming, the port polls the inbound ring once per event-loop
  turn (``call_soon``), so a stream costs no system call per message: the loop's own
  ``epoll_wait`` is the only one, and it is shared by everything in the loop.
* **Spinning:** after the last record it keeps polling for ``spin`` seconds (yielding the
  CPU to other processes between polls), because on a request/reply exchange the answer
  usually comes within that time and catching it by polling saves two system calls and
  a scheduler wake-up.
* **Asleep:** then it publishes "sleeping" in the ring header (an odd sleep counter),
  looks once more (a record may have landed between its last look and the flag), and if
  there is still nothing, waits for its doorbell through ``loop.add_reader``. If nothing
  rings within :data:`FENCE_AFTER`, it issues the cross-process fence and looks once
  more: no CPU at all while idle after that.

The writer side is symmetric: a record that does not fit waits in the owner's queue,
the port publishes "waiting" in the outbound ring and sleeps the same way; the peer's
reader rings when it frees space. A peer rings at most once per sleep (each sleep has its
own counter value).

The control socket, when there is one, is watched too: end-of-file means the peer
process is gone (closed, crashed or killed: the kernel closes its sockets either way),
and anything else arriving on it after set-up is a protocol violation.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Final, Protocol

from ...errors import CorruptRing
from .doorbell import BACKSTOP, FENCE, EventfdBell, FifoBell
from .ring import RingReader, RingWriter

__all__ = ["DEFAULT_SPIN", "PortOwner", "RingPort"]

DEFAULT_SPIN = 0.0002
"""Seconds a port keeps polling after the last record before it goes to sleep."""

_BATCH: Final = 512  # frames handled per poll before the loop gets a turn
FENCE_AFTER = 0.001
"""Seconds a side that went to sleep waits for its doorbell before it issues the fence and
looks once more (docs/shm.md, "The lost wake-up, and the fence"): a side woken before
then needs no fence, so a stream whose reader sleeps between records costs no
``membarrier`` (and no interrupt of the peer's CPU) per record."""
DURABLE_BACKSTOP = 1.0
"""Seconds between looks of a sleeping side that has no control socket to tell it its
peer died (``mmap://`` ring files): once a second, so idle still costs nothing."""


Bell = EventfdBell | FifoBell


class PortOwner(Protocol):
    """What a port asks of the link or channel that owns it.

    Callbacks, as an asyncio protocol's ``data_received`` is: public names because the
    port calls them from this module, but package-internal: :class:`RingPort` is their
    only caller, never a user of a ``RingChannel`` or the broker of a ``RingLink``.
    """

    def port_read(self, limit: int) -> int:
        """Handle up to ``limit`` inbound records; return how many (0 if not reading)."""
        ...

    def port_write(self) -> bool:
        """Move queued writes into the outbound ring; True if any went in."""
        ...

    @property
    def port_reading(self) -> bool:
        """True while inbound records are wanted (a receiver is set, not paused)."""
        ...

    @property
    def port_writes_waiting(self) -> bool:
        """True while writes wait for ring space."""
        ...

    def port_peer_gone(self, problem: str | None) -> None:
        """The control socket ended (``None``) or carried garbage (what was wrong)."""
        ...


class RingPort:
    """See the module docstring."""

    def __init__(
        self,
        owner: PortOwner,
        rx: RingReader | None,
        tx: RingWriter | None,
        bell_in: Bell | None,
        bell_out: Bell | None,
        *,
        ctl: socket.socket | None = None,
        spin: float = DEFAULT_SPIN,
    ) -> None:
        self._owner = owner
        self._rx = rx
        self._tx = tx
        self._bell_in = bell_in
        self._bell_out = bell_out
        self._ctl = ctl
        self._spin = spin
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.Handle | None = None
        self._backstop_handle: asyncio.TimerHandle | None = None
        self._asleep = False
        self._closed = False
        self._active = self._loop.time()
        self._rung = -1  # the peer's sleep counter value we last rang for
        self._rung_writer = -1
        if bell_in is not None:
            self._loop.add_reader(bell_in.fileno(), self._on_bell)
        if ctl is not None:
            ctl.setblocking(False)
            self._loop.add_reader(ctl.fileno(), self._on_ctl)
        self.poke()

    # --- called by the owner -----------------------------------------------------------

    def poke(self) -> None:
        """Look at the rings soon (reading resumed, a receiver arrived, a write queued)."""
        if self._closed:
            return
        if self._backstop_handle is not None:
            self._backstop_handle.cancel()
            self._backstop_handle = None
        if self._asleep:
            self._wake_flags()
        self._active = self._loop.time()
        if self._handle is None:
            self._handle = self._loop.call_soon(self._poll)

    def wrote(self) -> None:
        """Records went into the outbound ring: ring the peer if it sleeps. (Links write
        one record per loop turn for all their small frames, so this is once per turn.)"""
        tx = self._tx
        assert tx is not None
        seq = tx.reader_sleep
        if seq & 1 and seq != self._rung and self._bell_out is not None:
            self._rung = seq
            self._bell_out.ring()
        if self._asleep:
            # We spoke: an answer is likely, and catching it by polling is cheaper.
            self.poke()

    def consumed(self) -> None:
        """Records left the inbound ring: ring the peer's writer if it waits for space
        and at least a quarter of the ring is free now (or when this side stops reading:
        see :meth:`_ring_writer`)."""
        rx = self._rx
        assert rx is not None
        seq = rx.writer_wait
        if seq & 1 and seq != self._rung_writer:
            if rx.capacity - rx.backlog >= rx.capacity >> 2:
                self._ring_writer(seq)
            elif self._handle is None and not self._closed:
                # Not yet: a writer woken for one record's space sleeps again at once,
                # one wake-up (two system calls and a fence) per record on a full ring.
                # A poll is due so that if reading stops here, _sleep rings it anyway.
                self._handle = self._loop.call_soon(self._poll)

    def _ring_writer(self, seq: int) -> None:
        """Wake the peer's writer, once per wait (``seq``, its wait counter, is odd).

        The reader rings when a quarter of the ring is free (:meth:`consumed`), or when it goes
        to sleep with the writer still waiting (:meth:`_sleep`): it has freed what it
        will free for now, so whatever space there is must not wait for more reading.
        """
        if self._bell_out is not None:
            self._rung_writer = seq
            self._bell_out.ring()

    def close(self) -> None:
        """Stop watching; the owner closes rings and bells."""
        if self._closed:
            return
        self._closed = True
        for handle in (self._handle, self._backstop_handle):
            if handle is not None:
                handle.cancel()
        self._handle = self._backstop_handle = None
        if self._bell_in is not None and self._bell_in.fileno() >= 0:
            self._loop.remove_reader(self._bell_in.fileno())
        if self._ctl is not None and self._ctl.fileno() >= 0:
            self._loop.remove_reader(self._ctl.fileno())

    # --- the loop ------------------------------------------------------------------------

    def _poll(self) -> None:
        self._handle = None
        if self._closed:
            return
        owner = self._owner
        n = owner.port_read(_BATCH)
        if self._closed:
            return
        if owner.port_writes_waiting:
            owner.port_write()
            if self._closed:
                return
        if self._scheduled():
            return  # the owner poked us meanwhile: that poll is already scheduled
        now = self._loop.time()
        if n:
            self._active = now
            self._handle = self._loop.call_soon(self._poll)
        elif now - self._active < self._spin and (owner.port_reading or owner.port_writes_waiting):
            os.sched_yield()  # spinning: let the peer's process have this core
            self._handle = self._loop.call_soon(self._poll)
        else:
            self._sleep()

    def _scheduled(self) -> bool:
        """True if a poll is scheduled. A method, not ``self._handle is not None`` in
        :meth:`_poll`: there mypy narrows the handle to None from the poll's first line on,
        across the owner's calls that may schedule one, and the compiled build checks
        that narrowing: a scheduled handle raised ``TypeError`` (tests/test_shm.py)."""
        return self._handle is not None

    def _sleep(self) -> None:
        owner = self._owner
        reading = owner.port_reading and self._rx is not None
        waiting = owner.port_writes_waiting and self._tx is not None
        if self._rx is not None:
            seq = self._rx.writer_wait
            if seq & 1 and seq != self._rung_writer:
                self._ring_writer(seq)  # consumed() was waiting for a quarter free
        if reading:
            assert self._rx is not None
            self._rx.set_sleeping(True)
        if waiting:
            assert self._tx is not None
            self._tx.set_waiting(True)
        self._asleep = True
        # One more look now the flags are stored: a record (or space) that arrived
        # before the peer could see them would otherwise never be rung for. Without a
        # fence this look can still miss one committed in the same instant (each side's
        # store waiting in its CPU's store buffer while it loads the other's word).
        if self._look_again():
            self.poke()
            return
        if FENCE is None or self._bell_in is None:
            self._backstop_handle = self._loop.call_later(BACKSTOP, self._backstop)
        else:
            # The fence, and a look after it, unless the doorbell rings first (poke()
            # cancels this): that ring is the proof the peer saw the flags.
            self._backstop_handle = self._loop.call_later(FENCE_AFTER, self._fenced_look)

    def _look_again(self) -> bool:
        """True if there is something to read, or a queued write went out."""
        owner = self._owner
        return (owner.port_reading and self._rx is not None and self._has_data()) or (
            owner.port_writes_waiting and self._tx is not None and owner.port_write()
        )

    def _fenced_look(self) -> None:
        """Still asleep :data:`FENCE_AFTER` after the flags: the fence, then a last look.
        After the fence, either the peer's commit is visible here or the peer's next
        load of the flags sees them and it rings (docs/shm.md)."""
        self._backstop_handle = None
        if self._closed or not self._asleep:
            return
        fence = FENCE
        assert fence is not None  # scheduled only with one
        fence()
        if self._look_again():
            self.poke()
        elif self._ctl is None:
            # No control socket (a durable ring file): a writer killed between its commit
            # and its ring would leave us asleep on a record with nobody to say so.
            self._backstop_handle = self._loop.call_later(DURABLE_BACKSTOP, self._backstop)

    def _has_data(self) -> bool:
        assert self._rx is not None
        try:
            return self._rx.has_data()
        except CorruptRing:
            return True  # the owner's read meets it and decides (grace, then its error)

    def _backstop(self) -> None:
        self._backstop_handle = None
        self.poke()

    def _wake_flags(self) -> None:
        self._asleep = False
        if self._rx is not None:
            self._rx.set_sleeping(False)
        if self._tx is not None:
            self._tx.set_waiting(False)

    def _on_bell(self) -> None:
        if self._closed or self._bell_in is None:
            return
        self._bell_in.clear()
        self.poke()
        # Look now rather than on the next loop turn: what rang is in the ring already,
        # and a sleeper woken for a reply is on the latency path of a round trip.
        handle = self._handle
        if handle is not None:
            handle.cancel()
        self._poll()

    def _on_ctl(self) -> None:
        ctl = self._ctl
        if self._closed or ctl is None:
            return
        try:
            data = ctl.recv(256)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # ECONNRESET and the like: gone all the same
            self._loop.remove_reader(ctl.fileno())
            self._owner.port_peer_gone(None)
            return
        self._loop.remove_reader(ctl.fileno())
        if data:
            self._owner.port_peer_gone(
                f"unexpected {len(data)} bytes on the control socket after set-up"
            )
        else:
            self._owner.port_peer_gone(None)
