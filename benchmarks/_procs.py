"""Processes: servers and client workers, readiness probes, bounded waits, cleanup.

Every process started here is stopped by the context manager that started it, on success,
failure, timeout or Ctrl-C alike: a benchmark that leaks a broker skews every later cell.
Child output goes to log files rather than pipes (except a worker's stdout, which is its
result channel), so a chatty child can never block on a full pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ctypes
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from ._accel import COMPILED_ENV, REPO_ROOT, compiled_env

__all__ = [
    "REPO_ROOT",
    "BenchError",
    "Server",
    "Worker",
    "free_port",
    "python_from",
    "run_module",
    "running_compiled",
    "server",
    "wait_for_path",
    "wait_for_tcp",
    "wait_for_unix",
    "worker",
]

#: Workers run as ``python -m benchmarks.workers.<x>`` from ``REPO_ROOT`` (the checkout),
#: so they import its ``benchmarks`` and ``asyncipc`` whatever the caller's working
#: directory; or from the compiled copy (``running_compiled``).

#: The compiled copy the Python processes started from here run (``--build compiled|both``,
#: ``_accel.py``), or None for the checkout's ``asyncipc``: set by ``running_compiled``
#: around a cell in the orchestrator; in the processes of a compiled run (a section's, which
#: start processes of their own), it defaults to theirs.
_COMPILED: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "compiled", default=Path(os.environ[COMPILED_ENV]) if os.environ.get(COMPILED_ENV) else None
)


@contextlib.contextmanager
def running_compiled(root: Path | None) -> Iterator[None]:
    """Within this block, the processes started here run the compiled copy in ``root``
    (None: the checkout's ``asyncipc``, the default)."""
    token = _COMPILED.set(root)
    try:
        yield
    finally:
        _COMPILED.reset(token)


def python_from(extra: dict[str, str] | None = None) -> tuple[Path, dict[str, str]]:
    """The working directory and environment of a process started now: the checkout, or
    the compiled copy inside ``running_compiled`` (``python -m`` finds ``asyncipc`` in
    the working directory first); ``extra`` added to the environment."""
    root = _COMPILED.get()
    env = compiled_env(root) if root is not None else dict(os.environ)
    return (root or REPO_ROOT), {**env, **(extra or {})}


#: Seconds a process gets between SIGTERM (or "stop") and SIGKILL.
STOP_GRACE = 5.0

_PROBE_INTERVAL = 0.02


class BenchError(Exception):
    """A cell failed; ``str(exc)`` is the short text the table shows after "error: "."""

    def __init__(self, short: str, detail: str = "") -> None:
        super().__init__(short)
        self.detail = detail


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the race is accepted: the
    servers we start report a bind failure, and the cell fails rather than hangs)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip()[:160] if lines else ""


async def _probe_until(
    probe: Callable[[], Awaitable[bool]],
    what: str,
    timeout: float,
    proc: asyncio.subprocess.Process | None,
    log: Path | None,
) -> None:
    """Poll ``probe`` until it succeeds; fail early if ``proc`` dies meanwhile."""
    try:
        async with asyncio.timeout(timeout):
            while not await probe():
                if proc is not None and proc.returncode is not None:
                    tail = log_tail(log) if log else ""
                    raise BenchError(
                        f"server exited with {proc.returncode} before {what} was ready "
                        f"({_last_line(tail)})",
                        tail,
                    )
                await asyncio.sleep(_PROBE_INTERVAL)
    except TimeoutError:
        tail = log_tail(log) if log else ""
        raise BenchError(f"timeout waiting for {what}", tail) from None


async def _can_connect(family: socket.AddressFamily, address: Any) -> bool:
    loop = asyncio.get_running_loop()
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, address)
    except OSError:
        return False
    finally:
        sock.close()
    return True


async def wait_for_tcp(
    host: str,
    port: int,
    timeout: float,
    proc: asyncio.subprocess.Process | None = None,
    log: Path | None = None,
) -> None:
    async def probe() -> bool:
        return await _can_connect(socket.AF_INET, (host, port))

    await _probe_until(probe, f"tcp://{host}:{port}", timeout, proc, log)


async def wait_for_unix(
    path: Path,
    timeout: float,
    proc: asyncio.subprocess.Process | None = None,
    log: Path | None = None,
) -> None:
    async def probe() -> bool:
        if not path.exists():  # noqa: ASYNC240 (one stat() per probe interval)
            return False
        return await _can_connect(socket.AF_UNIX, str(path))

    await _probe_until(probe, f"unix socket {path}", timeout, proc, log)


async def wait_for_path(
    path: Path,
    timeout: float,
    proc: asyncio.subprocess.Process | None = None,
    log: Path | None = None,
) -> None:
    """For ZeroMQ ``ipc://`` endpoints: a raw connect would speak no ZMTP, so the bound
    socket file appearing is the readiness signal."""

    async def probe() -> bool:
        return path.exists()  # noqa: ASYNC240 (one stat() per probe interval)

    await _probe_until(probe, str(path), timeout, proc, log)


async def _stop(proc: asyncio.subprocess.Process, grace: float = STOP_GRACE) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds, also when we are being cancelled."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):
                await proc.wait()
        except TimeoutError:
            pass
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
    # Reap it: a zombie per cell would pile up over a run.
    await proc.wait()


_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return fn


#: Looked up here, in the parent: the child between fork and exec only calls it.
_PRCTL = _load_prctl()


def _child_setup() -> None:
    """In the forked child, before exec: die with the orchestrator (Linux).

    Children run in their own session (``start_new_session``), so a Ctrl-C at the terminal
    reaches only the orchestrator, which then stops them in order; and should the
    orchestrator itself be killed outright (SIGKILL, a second Ctrl-C), the kernel sends
    them SIGKILL, so that no broker outlives the run.
    """
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


async def _spawn(
    argv: Sequence[str],
    stdin: int,
    stdout: int | IO[bytes],
    stderr: int | IO[bytes],
    env: dict[str, str] | None = None,
) -> asyncio.subprocess.Process:
    cwd, environ = python_from(env)
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        cwd=cwd,
        env=environ,
        start_new_session=True,
        preexec_fn=_child_setup,
    )


class Server:
    """A running server process (broker) and its log file."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.name = name
        self.proc = proc
        self.log = log


@contextlib.asynccontextmanager
async def server(
    name: str,
    argv: Sequence[str],
    log_dir: Path,
    ready: Callable[[Server], Awaitable[None]],
) -> AsyncIterator[Server]:
    """Start ``argv``, await ``ready(server)``, yield; stop it however the body ends."""
    log = log_dir / f"{name}.log"
    with log.open("wb") as out:
        proc = await _spawn(argv, asyncio.subprocess.DEVNULL, out, asyncio.subprocess.STDOUT)
    srv = Server(name, proc, log)
    try:
        await ready(srv)
        yield srv
    finally:
        await _stop(proc)


class Worker:
    """A client process speaking JSON lines on stdout and taking commands on stdin.

    The protocol is small on purpose: the worker prints ``{"event": "ready"}`` and the
    like as it goes and ``{"event": "result", ...}`` at the end; the orchestrator writes
    ``go`` and ``stop`` lines. Anything else on stdout is ignored.
    """

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.name = name
        self.proc = proc
        self.log = log

    def _failure(self, what: str) -> BenchError:
        tail = log_tail(self.log)
        return BenchError(f"{self.name} {what} ({_last_line(tail)})", tail)

    async def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """The next ``event`` line, skipping others; fails on exit or after ``timeout``."""
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    line = await self.proc.stdout.readline()
                    if not line:
                        await self.proc.wait()
                        raise self._failure(f"exited with {self.proc.returncode}")
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(record, dict) and record.get("event") == event:
                        return record
        except TimeoutError:
            raise BenchError(
                f"timeout: {self.name} gave no {event!r} in {timeout:g} s", log_tail(self.log)
            ) from None

    async def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(command.encode() + b"\n")
            await self.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            raise self._failure(f"is gone before {command!r}") from None

    async def close(self, grace: float = STOP_GRACE) -> None:
        """Ask politely (``stop`` and EOF), then SIGTERM, then SIGKILL."""
        try:
            if self.proc.returncode is None and self.proc.stdin is not None:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError, RuntimeError):
                    self.proc.stdin.write(b"stop\n")
                    self.proc.stdin.close()
                try:
                    async with asyncio.timeout(grace):
                        await self.proc.wait()
                except TimeoutError:
                    pass
        finally:
            await _stop(self.proc, grace)


@contextlib.asynccontextmanager
async def worker(
    name: str, module: str, role: str, args: Sequence[str], log_dir: Path
) -> AsyncIterator[Worker]:
    """Run ``python -m benchmarks.workers.<module> <role> <args>`` for the body's span."""
    log = log_dir / f"{name}.log"
    with log.open("wb") as err:
        proc = await _spawn(
            [sys.executable, "-m", f"benchmarks.workers.{module}", role, *args],
            asyncio.subprocess.PIPE,
            asyncio.subprocess.PIPE,
            err,
            env={"PYTHONUNBUFFERED": "1"},
        )
    w = Worker(name, proc, log)
    try:
        yield w
    finally:
        await w.close()


async def run_module(name: str, module: str, args: Sequence[str], log_dir: Path) -> None:
    """Run ``python -m <module> <args>`` to completion (bound it with ``asyncio.timeout``;
    cancelled or not, the process is stopped before this returns)."""
    log = log_dir / f"{name}.log"
    with log.open("wb") as out:
        proc = await _spawn(
            [sys.executable, "-m", module, *args],
            asyncio.subprocess.DEVNULL,
            out,
            asyncio.subprocess.STDOUT,
        )
    try:
        await proc.wait()
    finally:
        await _stop(proc)
    if proc.returncode:
        tail = log_tail(log)
        raise BenchError(f"{name}: exited with {proc.returncode} ({_last_line(tail)})", tail)
