"""Records read in place from a ring (``_ring.RingReader.read``): zero-copy, and safe.

A :class:`Record` is a payload still in the ring's memory; the writer may reuse those
bytes once it is released. The API is shaped so that the unsafe use is hard:

* one record is held at a time (the reader refuses the next until this one is released);
* :class:`RecordView` slices are views too, and every access checks the record: after
  the release they raise :class:`~asyncipc.RecordReleased` instead of reading what the
  writer put there since;
* a raw ``memoryview`` (:meth:`RecordView.memoryview`, for APIs that need a buffer) is
  released with the record, and a buffer still *exported* from it makes
  :meth:`Record.release` refuse rather than free memory something points to.

See ``docs/shm.md`` (Reading in place).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from ...errors import RecordReleased

__all__ = ["Record", "RecordView"]


class Record:
    """One record read from a ring, still in place in the ring's memory.

    Use it as a context manager, or call :meth:`release` when done: that consumes it,
    and the writer may then overwrite its bytes. After that every access raises
    :class:`~asyncipc.errors.RecordReleased` instead of reading what the writer put there.
    """

    __slots__ = (
        "_consume",
        "_handed",
        "_mv",
        "_on_release",
        "_released",
        "_start",
        "_stop",
        "flags",
    )

    def __init__(
        self,
        buffer: memoryview,
        start: int,
        length: int,
        flags: int,
        consume: Callable[[], None],
        on_release: Callable[[], None] | None = None,
    ) -> None:
        """Made by the reader that found it (``RingReader.read``, ``RingChannel.recv_record``):
        the payload is ``buffer[start : start + length]``; :meth:`release` calls ``consume``
        (the reader's, which frees the bytes), then ``on_release`` if given."""
        self._mv = buffer
        self._consume = consume
        self._start = start
        self._stop = start + length
        self._released = False
        # The memoryviews handed out (RecordView.memoryview), made on the first: most
        # records never hand one out, and a list per record is an allocation per record.
        self._handed: list[memoryview] | None = None
        self._on_release = on_release
        self.flags = flags
        """The record's flags (``FLAG_MORE``, ``FLAG_FIN``: used by the links)."""

    @property
    def released(self) -> bool:
        return self._released

    def __len__(self) -> int:
        return self._stop - self._start

    @property
    def view(self) -> RecordView:
        """A zero-copy view of the payload; its slices are views too, all checked."""
        if self._released:
            raise RecordReleased("the record was released; its bytes belong to the writer now")
        return RecordView(self, self._start, self._stop)

    def tobytes(self) -> bytes:
        """A copy of the payload, yours to keep."""
        return self.view.tobytes()

    def __bytes__(self) -> bytes:
        return self.tobytes()

    def release(self) -> None:
        """Consume the record. Idempotent.

        Raises BufferError (and consumes nothing) if a buffer exported from one of its
        :meth:`RecordView.memoryview` s is still alive (``numpy.frombuffer``, say):
        letting the writer reuse memory something still points to is the bug this
        API is shaped to prevent.
        """
        if self._released:
            return
        if self._handed is None:
            self._released = True  # nothing handed out: nothing to release or refuse
        else:
            self.invalidate()
        self._consume()
        if self._on_release is not None:
            self._on_release()

    def invalidate(self) -> None:
        """End the record *without* consuming it: the memoryviews handed out are released
        and every later access raises :class:`~asyncipc.RecordReleased`, but its bytes
        stay in the ring, so a reader that opens the ring again reads it again.

        Package-internal: what the reader or channel does to a held record when it closes
        under it. Raises BufferError, as :meth:`release` does, while an exported buffer
        is alive.
        """
        handed = self._handed
        if handed is not None:
            for mv in handed:
                try:
                    mv.release()
                except BufferError:
                    raise BufferError(
                        "cannot release the record: a buffer exported from its memoryview "
                        "is still in use; drop it first"
                    ) from None
            handed.clear()
        self._released = True

    def __enter__(self) -> Record:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self._released else f"{len(self)} bytes"
        return f"<Record {state} flags={self.flags}>"


class RecordView:
    """Bytes of a held :class:`Record`, in place. Raises once the record is released.

    Indexing gives ints, slicing gives another :class:`RecordView` (no copy), so no
    derived object can outlive the record unchecked. For APIs that want a real buffer,
    :meth:`memoryview` hands one out that the record releases with itself.
    """

    __slots__ = ("_rec", "_start", "_stop")

    def __init__(self, rec: Record, start: int, stop: int) -> None:
        self._rec = rec
        self._start = start
        self._stop = stop

    def _buf(self) -> memoryview:
        if self._rec._released:
            raise RecordReleased("the record was released; its bytes belong to the writer now")
        return self._rec._mv[self._start : self._stop]

    def __len__(self) -> int:
        if self._rec._released:
            raise RecordReleased("the record was released; its bytes belong to the writer now")
        return self._stop - self._start

    def __getitem__(self, key: int | slice) -> Any:
        n = len(self)
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step != 1:
                raise ValueError("a RecordView slice takes no step")
            return RecordView(self._rec, self._start + start, self._start + max(start, stop))
        if key < 0:
            key += n
        if not 0 <= key < n:
            raise IndexError("RecordView index out of range")
        return self._rec._mv[self._start + key]

    def tobytes(self) -> bytes:
        """A copy of these bytes."""
        return bytes(self._buf())

    def __bytes__(self) -> bytes:
        return self.tobytes()

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return str(self._buf(), encoding, errors)

    def unpack_from(self, fmt: str | struct.Struct, offset: int = 0) -> tuple[Any, ...]:
        """``struct.unpack_from`` within these bytes, without copying them."""
        if isinstance(fmt, struct.Struct):
            return fmt.unpack_from(self._buf(), offset)
        return struct.unpack_from(fmt, self._buf(), offset)

    def memoryview(self) -> memoryview:
        """A read-only memoryview of these bytes, released when the record is.

        Its own slices share its fate in CPython only while it lives: prefer slicing the
        RecordView, and never keep a memoryview past the record.
        """
        mv = self._buf().toreadonly()
        rec = self._rec
        if rec._handed is None:
            rec._handed = []
        rec._handed.append(mv)
        return mv

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RecordView):
            return self._buf() == other._buf()
        if isinstance(other, (bytes, bytearray, memoryview)):
            return self._buf() == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        if self._rec._released:
            return "<RecordView released>"
        return f"<RecordView {self._stop - self._start} bytes>"
