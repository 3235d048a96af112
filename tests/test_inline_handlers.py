"""Callbacks run at once, in the read that brought their message (``_workers.run_inline``).

A request handler (and any ``max_concurrency > 1`` callback) whose message arrives while
the pool's leader waits runs its first step inside the link's read callback, as the
leader, instead of a loop turn later in the leader's task. What the handler sees must not
change: its task, its context, its time-outs, its errors, its concurrency. Each test runs
over a real unix broker in this process (where messages arrive in read callbacks and run
inline) and over ``memory://`` (delivered inside the publisher's task: queued as before),
and must hold on both.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import asyncipc

_where: contextvars.ContextVar[str] = contextvars.ContextVar("where", default="unset")


@pytest.fixture(params=["unix", "memory"])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with asyncipc.Broker() as broker:
        if request.param == "unix":
            yield (await broker.listen(f"unix://{tmp_path}/b.sock")).url
        else:
            yield (await broker.listen(f"memory://inline-{tmp_path.name}")).url


async def test_a_handler_that_answers_at_once_does_not_wake_its_leader(tmp_path: Path) -> None:
    """Over unix the leader's wait outlives every request: nothing woke it."""
    async with asyncipc.Broker() as broker:
        url = (await broker.listen(f"unix://{tmp_path}/b.sock")).url
        async with asyncipc.connect(url) as service, asyncipc.connect(url) as client:
            sub = service.serve("echo", _echo)
            await service.flush()
            assert (await client.request("echo", b"first", timeout=5)).data == b"first"
            waiter = sub._waiter
            assert waiter is not None
            assert not waiter.done()
            for i in range(20):
                assert (await client.request("echo", b"%d" % i, timeout=5)).data == b"%d" % i
                assert sub._waiter is waiter
            assert sub.pending == 0


async def _echo(msg: asyncipc.Message) -> bytes:
    return msg.data


async def test_a_handler_keeps_its_task_and_context_across_its_awaits(url: str) -> None:
    async with asyncipc.connect(url) as service, asyncipc.connect(url) as client:
        _where.set("subscribed")  # the handlers' context is a copy of this one

        async def handler(msg: asyncipc.Message) -> bytes:
            first = asyncio.current_task()
            seen = _where.get()
            _where.set(msg.data.decode())
            await asyncio.sleep(0)
            await asyncio.sleep(0.001)
            same = asyncio.current_task() is first and first is not None
            return f"{seen} {_where.get()} {same}".encode()

        service.serve("ctx", handler)
        await service.flush()
        for i in range(5):
            reply = await client.request("ctx", b"r%d" % i, timeout=5)
            # The first step's change is still there after the awaits, in the same task;
            # each handler starts from its worker's context (a previous handler's value
            # may show, as it would in a task of the pool).
            seen, mine, same = reply.data.decode().split()
            assert (mine, same) == (f"r{i}", "True")
            assert seen in {"subscribed"} | {f"r{j}" for j in range(i)}


async def test_a_handler_s_own_time_out_cancels_the_handler(url: str) -> None:
    """asyncio.timeout() entered in the step that ran inline cancels the task that goes
    on running the handler. With 0 it fires before that task has even woken."""
    async with asyncipc.connect(url) as service, asyncipc.connect(url) as client:

        async def handler(msg: asyncipc.Message) -> bytes:
            try:
                async with asyncio.timeout(float(msg.data)):
                    await asyncio.sleep(30)
            except TimeoutError:
                return b"timed out " + msg.data
            return b"slept"

        service.serve("t", handler)
        await service.flush()
        for limit in (b"0", b"0.01", b"0"):
            assert (await client.request("t", limit, timeout=10)).data == b"timed out " + limit


async def test_handlers_that_wait_run_at_once_each_in_a_task_of_its_own(url: str) -> None:
    async with asyncipc.connect(url) as service, asyncipc.connect(url) as client:
        tasks: set[asyncio.Task[object] | None] = set()
        all_in = asyncio.Event()

        async def handler(msg: asyncipc.Message) -> bytes:
            tasks.add(asyncio.current_task())
            if len(tasks) == 5:
                all_in.set()
            await all_in.wait()  # none can finish until all five have started
            return msg.data

        service.serve("w", handler)
        await service.flush()
        replies = await asyncio.gather(
            *(client.request("w", b"%d" % i, timeout=10) for i in range(5))
        )
        assert [r.data for r in replies] == [b"%d" % i for i in range(5)]
        assert len(tasks) == 5
        assert None not in tasks


async def test_a_handler_that_fails_before_or_after_waiting_is_answered_and_logged(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A callback starts at once and only gets a task if it waits: it may fail before
    or after waiting, and either way it is logged and the next messages still run."""
    caplog.set_level(logging.ERROR, "asyncipc.client")
    async with asyncipc.connect(url) as service, asyncipc.connect(url) as client:
        seen: list[bytes] = []
        got_two = asyncio.Event()

        async def on_msg(msg: asyncipc.Message) -> None:
            if msg.data == b"now":
                raise RuntimeError("failed before waiting")
            await asyncio.sleep(0)
            if msg.data == b"later":
                raise RuntimeError("failed after waiting")
            seen.append(msg.data)
            if len(seen) == 2:
                got_two.set()

        async def fails(msg: asyncipc.Message) -> bytes:
            raise ValueError("no")

        service.subscribe("c", callback=on_msg, max_concurrency=4)
        service.serve("fails", fails, expose_errors=True)
        await service.flush()
        for data in (b"now", b"a", b"later", b"b"):
            await client.publish("c", data)
        await asyncio.wait_for(got_two.wait(), 5)
        assert sorted(seen) == [b"a", b"b"]
        with pytest.raises(asyncipc.ServiceError, match="ValueError: no"):
            await client.request("fails", timeout=5)
        texts = [r.getMessage() + str(r.exc_info[1]) for r in caplog.records if r.exc_info]
        assert any("failed before waiting" in t for t in texts)
        assert any("failed after waiting" in t for t in texts)
        with pytest.raises(asyncipc.ServiceError, match="ValueError: no"):
            await client.request("fails", timeout=5)  # and again: the pool goes on


async def test_max_concurrency_still_bounds_the_callbacks(url: str) -> None:
    """``max_concurrency=2``: never more than two callbacks at once, however their
    messages arrive, and every message handled."""
    async with asyncipc.connect(url) as service, asyncipc.connect(url) as client:
        running = 0
        most = 0
        done: list[bytes] = []
        finished = asyncio.Event()

        async def on_msg(msg: asyncipc.Message) -> None:
            nonlocal running, most
            running += 1
            most = max(most, running)
            await asyncio.sleep(0.005)
            running -= 1
            done.append(msg.data)
            if len(done) == 10:
                finished.set()

        service.subscribe("m", callback=on_msg, max_concurrency=2)
        await service.flush()
        for i in range(10):
            await client.publish("m", b"%d" % i)
        await asyncio.wait_for(finished.wait(), 10)
        assert most == 2
        assert sorted(done) == sorted(b"%d" % i for i in range(10))


async def test_one_at_a_time_callbacks_run_in_order_in_one_task_and_context(url: str) -> None:
    """``max_concurrency=1`` (not through the pool: its own loop): one at a time, in
    arrival order, every callback in the same task and context (a context variable one
    sets, the next sees), whether they wait or not; beside the pool's tests, what the
    pool must match if it ever runs these too."""
    async with asyncipc.connect(url) as service, asyncipc.connect(url) as client:
        running = 0
        seen: list[tuple[bytes, str, bool]] = []
        tasks: set[asyncio.Task[object] | None] = set()
        finished = asyncio.Event()

        async def on_msg(msg: asyncipc.Message) -> None:
            nonlocal running
            running += 1
            before = _where.get()
            tasks.add(asyncio.current_task())
            if int(msg.data) % 3 == 0:
                await asyncio.sleep(0.002)  # some wait: handed over, the rest queue
            _where.set(msg.data.decode())
            seen.append((msg.data, before, running == 1))
            running -= 1
            if len(seen) == 30:
                finished.set()

        _where.set("subscribed")
        service.subscribe("seq", callback=on_msg)
        await service.flush()
        for i in range(30):
            await client.publish("seq", b"%d" % i)
            if i % 7 == 0:
                await client.flush()
        await asyncio.wait_for(finished.wait(), 10)
        assert [data for data, _, _ in seen] == [b"%d" % i for i in range(30)]
        assert [before for _, before, _ in seen] == ["subscribed", *(str(i) for i in range(29))]
        assert all(alone for _, _, alone in seen)
        assert len(tasks) == 1
        assert None not in tasks


@pytest.mark.parametrize("waits_first", [False, True])
async def test_a_handler_may_close_its_own_bus(url: str, waits_first: bool) -> None:
    """close() from inside a concurrent handler does not wait for that handler (it would
    wait for itself until drain_timeout): in the step run inline, or after a wait, in a
    worker of its own."""
    closed = asyncio.Event()
    async with asyncipc.connect(url) as client:
        service = await asyncipc.connect(url, options=asyncipc.ConnectOptions(drain_timeout=60))

        @service.handler("stop")
        async def stop(msg: asyncipc.Message) -> bytes:
            if waits_first:
                await asyncio.sleep(0)
            await service.close()
            closed.set()
            return b""

        await service.flush()
        await client.publish("stop", b"")
        await asyncio.wait_for(closed.wait(), 20)  # a guard against a hang, not a timing
        assert service.is_closed
