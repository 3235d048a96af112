"""Instructions per message in each process of a round trip or pub/sub, by callgrind.

Timed runs on a shared 2-core machine move by more than most changes to the hot path;
instruction counts do not. This starts a broker, a responder (or subscriber) and a
requester (or publisher) over ``unix://`` (``--transport shm``: ``shm://``), uvloop,
64 B, keep-alives off, each under ``valgrind --tool=callgrind``, for ``N1`` and then
``N2`` messages, and prints ``(count(N2) - count(N1)) / (N2 - N1)`` for each process,
so that start-up cancels out::

    python -m benchmarks.instructions rr 500 1500    # request/reply, one in flight
    python -m benchmarks.instructions ps 500 1500    # pub/sub 1 -> 1, a flush every 50
    python -m benchmarks.instructions ps 500 1500 --transport shm

The build measured is the one this interpreter imports: run it from a compiled copy with
``PYTHONPATH`` set to it for the accelerated build (as ``make pytest-accel`` does). The
pub/sub counts depend on how many messages a loop turn batches, which timing decides:
repeat them. Needs valgrind; takes a minute or two a run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

import asyncipc

QUIET = asyncipc.ConnectOptions(ping_interval=0)
PAYLOAD = b"x" * 64
WARM = 500  # pub/sub messages sent before the N counted (the subscriber takes them all)


async def _until_term() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


def _url(d: Path) -> str:
    """The broker's address, which it wrote next to its ``ready`` file."""
    return (d / "url").read_text()


async def broker(d: Path, n: int) -> None:
    async with asyncipc.Broker(ping_interval=0) as b:
        where = f"unix://{d / 's.sock'}" if (d / "unix").exists() else f"shm://cg{d.name[-8:]}"
        (d / "url").write_text((await b.listen(where)).url)
        (d / "ready").touch()
        await _until_term()


async def resp(d: Path, n: int) -> None:
    async with asyncipc.connect(_url(d), options=QUIET) as bus:

        @bus.handler("echo")
        async def echo(msg: asyncipc.Message) -> bytes:
            return msg.data

        await bus.flush()
        (d / "peer-ready").touch()
        await _until_term()


async def req(d: Path, n: int) -> None:
    async with asyncipc.connect(_url(d), options=QUIET) as bus:
        for _ in range(n):
            await bus.request("echo", PAYLOAD)


async def sub(d: Path, n: int) -> None:
    async with asyncipc.connect(_url(d), options=QUIET) as bus:
        s = bus.subscribe("bench", overflow="block")
        await bus.flush()
        (d / "peer-ready").touch()
        got = 0
        async for _ in s:
            got += 1
            if got == n + WARM:
                break


async def pub(d: Path, n: int) -> None:
    async with asyncipc.connect(_url(d), options=QUIET) as bus:
        for i in range(n + WARM):
            await bus.publish("bench", PAYLOAD)
            if i % 50 == 49:
                await bus.flush()
        await bus.flush()


ROLES = {"broker": broker, "resp": resp, "req": req, "sub": sub, "pub": pub}
PEERS = {"rr": ("resp", "req"), "ps": ("sub", "pub")}


def _total(path: Path) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"{path}: no callgrind total")


def _wait_for(path: Path) -> None:
    while not path.exists():
        time.sleep(0.1)


def count(mode: str, n: int, keep: Path | None, transport: str = "unix") -> dict[str, int]:
    """One run of ``n`` messages: the instructions each process executed in all."""
    other, main = PEERS[mode]
    with tempfile.TemporaryDirectory(prefix="aipc-cg-") as tmp:
        d = Path(tmp)
        if transport == "unix":
            (d / "unix").touch()

        def start(role: str) -> subprocess.Popen[bytes]:
            argv = [
                "valgrind",
                "--tool=callgrind",
                "--dump-instr=no",
                f"--callgrind-out-file={d / ('cg.' + role)}",
                sys.executable,
                "-m",
                "benchmarks.instructions",
                "--role",
                role,
                "--dir",
                tmp,
                mode,
                str(n),
                str(n),
            ]
            return subprocess.Popen(argv, stderr=subprocess.DEVNULL)

        b = start("broker")
        _wait_for(d / "ready")
        peer = start(other)
        _wait_for(d / "peer-ready")
        if start(main).wait() != 0:
            raise RuntimeError(f"{main} failed")
        if mode == "rr":
            peer.send_signal(signal.SIGTERM)
        if peer.wait() != 0:
            raise RuntimeError(f"{other} failed")
        b.send_signal(signal.SIGTERM)
        if b.wait() != 0:
            raise RuntimeError("broker failed")
        totals = {}
        for role in ("broker", other, main):
            out = d / f"cg.{role}"
            totals[role] = _total(out)
            if keep is not None:  # for callgrind_annotate
                keep.mkdir(parents=True, exist_ok=True)
                os.replace(out, keep / f"{mode}.{transport}.{n}.{role}")
        return totals


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=sorted(PEERS))
    p.add_argument("n1", type=int)
    p.add_argument("n2", type=int)
    p.add_argument("--keep", type=Path, help="keep the callgrind files in this directory")
    p.add_argument("--transport", choices=("unix", "shm"), default="unix")
    p.add_argument("--role", choices=sorted(ROLES), help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.role:
        uvloop.run(ROLES[args.role](Path(args.dir), args.n1))
        return
    a = count(args.mode, args.n1, args.keep, args.transport)
    b = count(args.mode, args.n2, args.keep, args.transport)
    build = "compiled" if asyncipc.compiled else "pure"
    per = "  ".join(f"{k} {(b[k] - a[k]) / (args.n2 - args.n1):,.0f}" for k in a)
    print(f"{args.mode} {args.transport} ({build}): {per} instructions/message")


if __name__ == "__main__":
    main()
