"""``memory://``'s shortcut (``Link.direct``) and the subscription queue it feeds.

``Link.direct`` lets the Bus and the broker call the other side's receiver themselves: it
must be offered only while that is what ``publish``/``deliver`` would do, and never to a
subclass that does more in them.
"""

from __future__ import annotations

import asyncipc
from asyncipc.protocol import Frame, Headers, Pub
from asyncipc.testing._registry import drain
from asyncipc.transports.memory import MemoryLink, memory_pair


class Recorder:
    """A receiver that keeps what it is handed."""

    def __init__(self) -> None:
        self.got: list[object] = []

    def frame_received(self, frame: Frame) -> None:
        self.got.append(frame)

    def link_lost(self, exc: BaseException | None) -> None:
        self.got.append("lost")

    def writing_resumed(self) -> None:
        pass

    def pub_received(
        self, subject: str, data: bytes, reply: str | None, headers: Headers | None
    ) -> None:
        self.got.append(("pub", subject, data))

    def msg_received(
        self, sid: int, subject: str, data: bytes, reply: str | None, headers: Headers | None
    ) -> None:
        self.got.append(("msg", sid, subject, data))


def publish(link: MemoryLink, subject: str) -> None:
    """What Bus.publish does with a link."""
    direct = link.direct
    if direct is not None:
        direct.pub_received(subject, b"", None, None)
    else:
        link.publish(subject, b"", None, None)


async def test_direct_is_offered_only_while_a_hand_over_would_be_immediate() -> None:
    a, b = memory_pair("t")
    assert a.direct is None  # nobody reads b yet
    receiver = Recorder()
    b.set_receiver(receiver)
    assert a.direct is receiver
    b.pause_reading()
    assert a.direct is None
    publish(a, "x")  # waits in b's inbox
    assert receiver.got == []
    b.resume_reading()
    assert a.direct is receiver
    assert receiver.got == [("pub", "x", b"")]
    a.close()
    assert a.direct is None


async def test_what_is_sent_while_the_inbox_empties_queues_behind_it() -> None:
    a, b = memory_pair("t")
    receiver = Recorder()
    b.set_receiver(receiver)

    class Answering(Recorder):
        def pub_received(
            self, subject: str, data: bytes, reply: str | None, headers: Headers | None
        ) -> None:
            super().pub_received(subject, data, reply, headers)
            if subject == "1":
                publish(a, "3")  # while "2" still waits: must not overtake it

    answering = Answering()
    b.set_receiver(answering)
    b.pause_reading()
    publish(a, "1")
    publish(a, "2")
    b.resume_reading()
    assert [entry[1] for entry in answering.got] == ["1", "2", "3"]  # type: ignore[index]
    assert a.direct is answering


class Refusing(MemoryLink):
    """A subclass that checks what it publishes: its publish() must always run."""

    def publish(
        self, subject: str, data: bytes, reply: str | None, headers: Headers | None
    ) -> None:
        if subject == "no":
            raise ValueError("refused")
        super().publish(subject, data, reply, headers)


async def test_a_subclass_that_overrides_publish_is_never_bypassed() -> None:
    a, b = memory_pair("t", client=Refusing)
    b.set_receiver(Recorder())
    assert a._direct is not None  # its own send() still hands over at once
    assert a.direct is None
    assert b.direct is None  # no receiver on a's side


async def test_a_subclass_that_only_overrides_send_keeps_the_shortcut() -> None:
    class Checking(MemoryLink):
        def send(self, frame: Frame) -> None:
            assert not isinstance(frame, Pub)
            super().send(frame)

    a, b = memory_pair("t", client=Checking)
    receiver = Recorder()
    b.set_receiver(receiver)
    assert a.direct is receiver


async def test_queued_messages_come_out_whole_by_every_way_of_reading() -> None:
    async with asyncipc.connect("memory://q") as bus:
        sub = bus.subscribe("s.>", max_pending=3, overflow="drop_oldest")
        replies = bus.subscribe("r")
        await bus.flush()
        for i in range(5):
            await bus.publish(f"s.{i}", bytes([i]) * (i + 1), headers={"n": str(i)}, reply_to="r")
        await bus.flush()
        assert sub.dropped == 2
        assert sub.pending_bytes == 3 + 4 + 5
        first = await sub.__anext__()
        assert (first.subject, first.data, first.headers, first.reply_to) == (
            "s.2",
            b"\x02" * 3,
            {"n": "2"},
            "r",
        )
        await first.respond(b"ok")  # the Message carries its bus
        assert (await replies.next_msg(timeout=5)).data == b"ok"
        batch = await sub.next_batch(1)
        assert [m.subject for m in batch] == ["s.3"]
        assert sub.pending_bytes == 5
        rest = drain(sub)
        assert [(m.subject, m.data) for m in rest] == [("s.4", b"\x04" * 5)]
        assert sub.pending == 0
        assert sub.pending_bytes == 0
