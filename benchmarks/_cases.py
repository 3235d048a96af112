"""The cases, each a choreography of processes: broker, subscribers or responder, then
the publisher or requester, every step bounded by a timeout.

One-way cases are timed from the publisher's first timed message to the last arrival at
any subscriber, on the system-wide monotonic clock: the rate at which messages get from
publisher to subscriber. (Timing from the first arrival instead rewarded big socket
buffers: a run that fits in them is read in one burst at the end.) Messages that never
arrive are counted as lost and reported, not hidden: a subscriber gives up after 5 s
without traffic (its ``--idle``) and says what it got.
Request/reply is timed at the requester, one request at a time.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._procs import BenchError, Worker, running_compiled, worker
from ._systems import Endpoints, Pattern, System

__all__ = ["CASES", "Case", "Row", "Scale", "run_cell"]

#: Seconds for a client process to start, connect and subscribe.
STARTUP_TIMEOUT = 20.0


@dataclass(frozen=True)
class Row:
    """One figure of a case, a column of its table: a metric and which way is better."""

    label: str
    metric: str
    higher_is_better: bool


@dataclass(frozen=True)
class Case:
    id: str
    title: str  # the heading of the case's table
    what: str  # one line under it: what is measured, and how
    pattern: Pattern
    size: int
    count: int  # full-run messages per subscriber connection, or timed requests
    subscribers: int  # subscriber connections (pubsub only)
    rows: tuple[Row, ...]

    @property
    def primary(self) -> Row:
        """The metric that picks the median of repeated runs."""
        return self.rows[0]


_RATE = Row("msgs/s", "msgs_per_s", True)

CASES: dict[str, Case] = {
    c.id: c
    for c in (
        Case(
            "pubsub64",
            "pub/sub 64 B, 1 -> 1",
            "publisher, broker, subscriber: 3 processes; messages/s received, from the "
            "first publish to the last arrival",
            "pubsub",
            64,
            200_000,
            1,
            (_RATE,),
        ),
        Case(
            "pubsub16k",
            "pub/sub 16 KiB, 1 -> 1",
            "as pub/sub 64 B, with 16 KiB payloads",
            "pubsub",
            16 * 1024,
            20_000,
            1,
            (_RATE,),
        ),
        Case(
            "reqrep",
            "request/reply 64 B, round trip",
            "requester, broker, echo responder: 3 processes; one request in flight, "
            "each timed at the requester",
            "reqrep",
            64,
            10_000,
            0,
            (Row("p50", "p50_us", False), Row("p99", "p99_us", False)),
        ),
        Case(
            "fanout",
            "fan-out 64 B, 1 -> 10",
            "one publisher, 10 subscriber connections (in --fanout-procs processes, default "
            "2); deliveries/s summed over the 10, from the first publish to the last delivery",
            "pubsub",
            64,
            50_000,
            10,
            (Row("deliveries/s", "msgs_per_s", True),),
        ),
    )
}


@dataclass(frozen=True)
class Scale:
    """How big a run is: ``--quick`` divides the counts by 10."""

    divisor: int = 1
    timeout: float = 120.0  # seconds for one cell, start to finish
    fanout_procs: int = 2  # processes the fan-out case's subscribers are spread over
    request_timeout: float = 2.0

    def count(self, case: Case) -> int:
        return max(1, case.count // self.divisor)

    @property
    def warmup(self) -> int:
        return max(50, 500 // self.divisor)


class _Phase:
    """What the cell was doing, for the message when its timeout strikes."""

    def __init__(self) -> None:
        self.now = "starting the broker"


def _spread(total: int, procs: int) -> list[int]:
    """``total`` connections over at most ``procs`` processes, as evenly as possible."""
    procs = max(1, min(procs, total))
    return [total // procs + (i < total % procs) for i in range(procs)]


def _short_tmp() -> str:
    # Unix socket paths are limited to about 100 bytes: prefer /tmp over a long $TMPDIR.
    return "/tmp" if Path("/tmp").is_dir() else tempfile.gettempdir()


async def run_cell(case: Case, system: System, scale: Scale) -> dict[str, Any]:
    """Run one case on one system; its metrics, or :class:`BenchError`."""
    tmp = Path(tempfile.mkdtemp(prefix="aipcb-", dir=_short_tmp()))
    phase = _Phase()
    try:
        async with asyncio.timeout(scale.timeout):
            with running_compiled(system.compiled_root):
                async with system.serve(tmp, case.pattern) as endpoints:
                    if case.pattern == "pubsub":
                        metrics = await _pubsub(case, system, endpoints, tmp, scale, phase)
                    else:
                        metrics = await _reqrep(case, system, endpoints, tmp, scale, phase)
    except TimeoutError:
        raise BenchError(f"timeout ({phase.now}, {scale.timeout:g} s)") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if system.compiled_root is not None and metrics.get("asyncipc_build") != "compiled":
        # The processes check it themselves (benchmarks/__init__.py); this is the backstop.
        raise BenchError(f"not the compiled build: the workers ran {metrics.get('asyncipc_build')}")
    return metrics


def _build_of(results: list[dict[str, Any]]) -> str | None:
    """Which asyncipc build the workers ran (their results say), "mixed: ..." if they
    disagree, None for a system that does not run asyncipc."""
    builds = sorted({str(r.get("asyncipc_build")) for r in results})
    if builds == ["None"]:
        return None
    return builds[0] if len(builds) == 1 else "mixed: " + ", ".join(builds)


async def _expect(w: Worker, event: str, timeout: float, phase: _Phase) -> dict[str, Any]:
    phase.now = f"waiting for {w.name} {event}"
    return await w.expect(event, timeout)


async def _pubsub(
    case: Case, system: System, ep: Endpoints, tmp: Path, scale: Scale, phase: _Phase
) -> dict[str, Any]:
    count = scale.count(case)
    common = ["--subject", "bench.x", "--count", str(count), "--size", str(case.size)]
    common += system.worker_args
    procs = scale.fanout_procs if case.subscribers > 1 else 1
    async with AsyncExitStack() as stack:
        phase.now = "starting subscribers"
        subs: list[Worker] = []
        for i, n in enumerate(_spread(case.subscribers, procs)):
            args = ["--url", ep.back, *common, "--conns", str(n)]
            subs.append(
                await stack.enter_async_context(worker(f"sub{i}", system.worker, "sub", args, tmp))
            )
        for w in subs:
            await _expect(w, "ready", STARTUP_TIMEOUT, phase)
        pub = await stack.enter_async_context(
            worker("pub", system.worker, "pub", ["--url", ep.front, *common], tmp)
        )
        await _expect(pub, "ready", STARTUP_TIMEOUT, phase)
        for w in subs:
            await _expect(w, "warm", STARTUP_TIMEOUT, phase)
        await pub.send("go")
        sent = await _expect(pub, "result", scale.timeout, phase)
        results = [await _expect(w, "result", scale.timeout, phase) for w in subs]
        phase.now = "stopping"
    return _pubsub_metrics(case, count, sent, results)


def _pubsub_metrics(
    case: Case, count: int, sent: dict[str, Any], results: list[dict[str, Any]]
) -> dict[str, Any]:
    conns = [c for r in results for c in r["conns"]]
    got = [c for c in conns if c["count"]]
    received = sum(c["count"] for c in conns)
    if not got:
        raise BenchError("no message arrived")
    if any(c["size"] != case.size for c in got):
        raise BenchError(f"payload size mismatch: {sorted({c['size'] for c in got})}")
    # From the publisher's first timed message to the last arrival anywhere (one
    # system-wide monotonic clock): messages parked in socket buffers and read in one
    # burst at the end do not shorten the window.
    seconds = (max(c["last_ns"] for c in got) - sent["start_ns"]) / 1e9
    if seconds <= 0:
        raise BenchError("too few messages to time")
    rate = received / seconds
    expected = count * len(conns)
    return {
        "msgs_per_s": rate,
        "mb_per_s": rate * case.size / 1e6,
        "seconds": seconds,
        "received": received,
        "expected": expected,
        "lost": expected - received,
        "subscribers": len(conns),
        "subscriber_processes": len(results),
        "publisher_msgs_per_s": count / sent["seconds"] if sent["seconds"] else None,
        "asyncipc_build": _build_of([sent, *results]),
    }


async def _reqrep(
    case: Case, system: System, ep: Endpoints, tmp: Path, scale: Scale, phase: _Phase
) -> dict[str, Any]:
    async with AsyncExitStack() as stack:
        phase.now = "starting the responder"
        responder = await stack.enter_async_context(
            worker(
                "responder",
                system.worker,
                "responder",
                ["--url", ep.back, *system.worker_args],
                tmp,
            )
        )
        await _expect(responder, "ready", STARTUP_TIMEOUT, phase)
        args = [
            "--url", ep.front,
            "--count", str(scale.count(case)),
            "--warmup", str(scale.warmup),
            "--size", str(case.size),
            "--timeout", str(scale.request_timeout),
            *system.worker_args,
        ]  # fmt: skip
        requester = await stack.enter_async_context(
            worker("requester", system.worker, "requester", args, tmp)
        )
        result = await _expect(requester, "result", scale.timeout, phase)
        phase.now = "stopping"
    result.pop("event", None)
    result["asyncipc_build"] = _build_of([result])
    result["requests_per_s"] = 1e6 / result["mean_us"]
    return result
