"""What the stream workers (``asyncipc_stream_w``, ``jetstream_w``) share: their
arguments, the pipelined window, a payload, and running a role on uvloop.

The roles, the same for both systems (the hot loops are each written against its own
library, in its own module):

* ``window``: pipelined acknowledged publishes, at most ``--window`` outstanding; one
  window's worth first, untimed (stream created, connection warm), then ``--count`` timed
  until the last acknowledgement is in;
* ``each``: one acknowledged publish at a time, ``--warmup`` untimed then ``--count``
  timed, each timed from the call to its acknowledgement;
* ``fill``: ``--count`` pipelined publishes, untimed: the messages ``fetch`` consumes;
* ``fetch``: a durable consumer over the stream ``fill`` filled, ``--count`` messages
  fetched ``--batch`` at a time and each acknowledged, timed from the first fetch to the
  last acknowledgement.

Every role prints one ``{"event": "result", ...}`` line (``_common.emit``) and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import uvloop

__all__ = ["StreamArgs", "rate", "run_stream_worker"]

STREAM = "ORDERS"
SUBJECTS = ["orders.>"]
SUBJECT = "orders.created"
CONSUMER = "billing"


@dataclass(frozen=True)
class StreamArgs:
    role: str
    url: str
    count: int
    size: int
    window: int
    warmup: int
    batch: int
    fsync: str
    timeout: float


def parse_args(argv: Sequence[str], roles: Sequence[str]) -> StreamArgs:
    p = argparse.ArgumentParser(prog="benchmarks stream worker")
    p.add_argument("role", choices=list(roles))
    p.add_argument("--url", required=True)
    p.add_argument("--count", type=int, default=1000, help="messages to time")
    p.add_argument("--size", type=int, default=64, help="payload bytes")
    p.add_argument("--window", type=int, default=1000, help="publishes outstanding at most")
    p.add_argument("--warmup", type=int, default=200, help="untimed publishes first (each)")
    p.add_argument("--batch", type=int, default=100, help="messages per fetch")
    p.add_argument(
        "--fsync", default="", help="asyncipc: the stream's fsync policy ('' = its default)"
    )
    p.add_argument("--timeout", type=float, default=10.0, help="per acknowledgement, seconds")
    ns = p.parse_args(argv)
    return StreamArgs(**vars(ns))


def data(size: int) -> bytes:
    return b"d" * size


def rate(count: int, seconds: float) -> dict[str, Any]:
    return {"count": count, "seconds": seconds, "msgs_per_s": count / seconds}


def clock() -> float:
    return time.perf_counter()


Role = Callable[[StreamArgs], Coroutine[Any, Any, None]]


def run_stream_worker(roles: Mapping[str, Role], argv: Sequence[str]) -> None:
    """Parse argv, run the chosen role on uvloop (both systems' clients alike)."""
    args = parse_args(argv, list(roles))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(roles[args.role](args))
