"""The ``asyncipc`` command, as a user runs it: real processes, a real broker process.

Every command runs as ``python -m asyncipc ...`` in its own process. Most talk to one
broker process per module (on a Unix socket, requiring a token that the clients get from
``$ASYNCIPC_TOKEN``); the tests about the broker's own life start their own.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

import asyncipc
from asyncipc.cli import main

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "asyncipc"]
TOKEN = "s3cret"
GUARD = 30.0  # seconds: only a guard against a hang, never a measurement


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI process: ours without asyncipc's variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCIPC_")}
    env.update(extra)
    return env


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run one CLI command to completion."""
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        env=cli_env(ASYNCIPC_TOKEN=TOKEN) if env is None else env,
        cwd=ROOT,
        timeout=GUARD,
    )


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(ASYNCIPC_TOKEN=TOKEN) if env is None else env,
        cwd=ROOT,
    )


def read_line(stream: IO[str] | None, proc: subprocess.Popen[str]) -> str:
    """The next line a process writes; fails with its stderr if it exits first."""
    assert stream is not None
    line = stream.readline()
    if not line:
        _, err = proc.communicate(timeout=GUARD)
        pytest.fail(f"process exited ({proc.returncode}) before writing a line: {err}")
    return line


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=GUARD)
    return proc.returncode, out, err


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGINT) -> tuple[int, str, str]:
    """Send ``sig``, then wait for the exit; a process that ignores it is killed."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return finish(proc)
    except subprocess.TimeoutExpired:
        proc.kill()
        finish(proc)
        raise


def start_sub(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``asyncipc sub ...``, returned once the broker has registered the subscription."""
    proc = start("sub", *args, env=env)
    line = read_line(proc.stderr, proc)
    assert line.startswith("subscribed to "), line
    return proc


class BrokerProc:
    """``asyncipc broker`` in a subprocess; ``urls`` from its ``listening on`` lines."""

    def __init__(self, *listen: str, log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        with open(log, "w") as err:  # a file, not a pipe that nobody reads could fill
            self.proc = subprocess.Popen(
                [*CLI, "broker", *(a for url in listen for a in ("--listen", url))],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=env or cli_env(),
                cwd=ROOT,
            )
        self.urls: list[str] = []
        for _ in listen:
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline()
            if not line.startswith("listening on "):
                self.stop(signal.SIGKILL)
                pytest.fail(f"broker did not start: {line!r} {log.read_text()!r}")
            self.urls.append(line.removeprefix("listening on ").strip())

    @property
    def url(self) -> str:
        return self.urls[0]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(GUARD)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProc]:
    """One broker process for the module, requiring ``TOKEN``."""
    d = tmp_path_factory.mktemp("cli")
    proc = BrokerProc(
        f"unix://{d}/broker.sock", log=d / "broker.log", env=cli_env(ASYNCIPC_TOKEN=TOKEN)
    )
    yield proc
    assert proc.stop() == 0


# --- help ------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["broker"], ["pub"], ["sub"], ["request"]])
def test_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: asyncipc {' '.join(command)}".rstrip())
    if command and command != ["broker"]:
        assert "--url" in out
        assert "ASYNCIPC_URL" in out


def test_python_dash_m_runs_the_cli() -> None:
    done = run("request", "--help")
    assert done.returncode == 0
    assert "--timeout" in done.stdout


def test_usage_error_exits_2() -> None:
    done = run("sub", "x", "--count", "0")
    assert done.returncode == 2
    assert "--count" in done.stderr


# --- pub, sub, request -----------------------------------------------------------------


def test_pub_sub_round_trip_with_url_from_env(broker: BrokerProc) -> None:
    # No --url anywhere: ASYNCIPC_URL is the broker (and ASYNCIPC_TOKEN its token).
    env = cli_env(ASYNCIPC_URL=broker.url, ASYNCIPC_TOKEN=TOKEN)
    sub = start_sub("cli.orders.*", "--count", "2", env=env)
    first = run("pub", "cli.orders.created", '{"id": 7}', "--header", "trace=abc", env=env)
    assert (first.returncode, first.stderr) == (0, "")
    second = run("pub", "cli.orders.paid", "caf\u00e9\nline two", env=env)
    assert (second.returncode, second.stderr) == (0, "")
    code, out, err = finish(sub)
    assert code == 0, err
    assert out.splitlines() == [
        '[cli.orders.created] {"id": 7}',
        "[cli.orders.paid] caf\u00e9\\nline two",
    ]
    assert "Traceback" not in err


def test_sub_raw_writes_only_the_data(broker: BrokerProc) -> None:
    sub = start_sub("cli.raw", "--url", broker.url, "--count", "1", "--raw")
    assert run("pub", "cli.raw", "just this", "--url", broker.url).returncode == 0
    code, out, _ = finish(sub)
    assert (code, out) == (0, "just this\n")


async def test_request_answered_by_handler(broker: BrokerProc) -> None:
    async with asyncipc.connect(broker.url, token=TOKEN) as bus:

        @bus.handler("cli.quote")
        async def quote(msg: asyncipc.Message) -> bytes:
            return b"price of " + msg.data

        @bus.handler("cli.broken")
        async def broken(msg: asyncipc.Message) -> bytes:
            raise asyncipc.ServiceError("out of stock")  # text meant for the requester

        await bus.flush()
        (ok, ok_out, ok_err), (failed, _, failed_err) = await asyncio.gather(
            arun("request", "cli.quote", "sku-1", "--url", broker.url),
            arun("request", "cli.broken", "sku-2", "--url", broker.url),
        )
    assert (ok, ok_out, ok_err) == (0, "price of sku-1\n", "")
    assert failed == 1
    assert "out of stock" in failed_err
    assert "Traceback" not in failed_err


async def arun(*args: str) -> tuple[int, str, str]:
    """Run a CLI command without blocking the event loop (which serves its request)."""
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(ASYNCIPC_TOKEN=TOKEN),
        cwd=ROOT,
    )
    async with asyncio.timeout(GUARD):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_request_no_responders_exits_1(broker: BrokerProc) -> None:
    done = run("request", "cli.nobody.home", "x", "--url", broker.url, "--timeout", "20")
    assert done.returncode == 1
    assert "no responders" in done.stderr
    assert "cli.nobody.home" in done.stderr
    assert done.stdout == ""


def test_request_timeout_exits_1(broker: BrokerProc) -> None:
    # A subscriber that never answers: the request is delivered, no reply comes.
    silent = start_sub("cli.silent", "--url", broker.url)
    try:
        done = run("request", "cli.silent", "x", "--url", broker.url, "--timeout", "0.3")
    finally:
        stop(silent)
    assert done.returncode == 1
    assert "no reply" in done.stderr
    assert "Traceback" not in done.stderr


def test_sub_sigint_exits_0_without_traceback(broker: BrokerProc) -> None:
    sub = start_sub("cli.forever", "--url", broker.url)
    code, out, err = stop(sub, signal.SIGINT)
    assert code == 0, err
    assert out == ""
    assert "Traceback" not in err
    assert "KeyboardInterrupt" not in err


# --- failures ----------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["wrong", None])
def test_bad_token_exits_2(broker: BrokerProc, token: str | None) -> None:
    args = ["pub", "cli.x", "y", "--url", broker.url]
    done = run(*args, *(["--token", token] if token else []), env=cli_env())
    assert done.returncode == 2
    assert "authentication failed" in done.stderr
    assert ("invalid token" if token else "token required") in done.stderr
    assert "Traceback" not in done.stderr


def test_no_broker_at_env_url_exits_2(tmp_path: Path) -> None:
    url = f"unix://{tmp_path}/nobody.sock"
    done = run("pub", "x", "y", env=cli_env(ASYNCIPC_URL=url))
    assert done.returncode == 2
    assert f"cannot connect to {url}" in done.stderr
    assert "Traceback" not in done.stderr


def test_url_option_wins_over_env(broker: BrokerProc, tmp_path: Path) -> None:
    env = cli_env(ASYNCIPC_URL=f"unix://{tmp_path}/nobody.sock", ASYNCIPC_TOKEN=TOKEN)
    assert run("pub", "x", "y", "--url", broker.url, env=env).returncode == 0


def test_memory_url_is_refused_by_clients() -> None:
    done = run("sub", "x", "--url", "memory://")
    assert done.returncode == 2
    assert "memory://" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("nonsense", "not a channel URL"),
        ("carrier-pigeon://coop", "no transport for scheme 'carrier-pigeon'"),
        ("memory://", "in-process only"),
        ("tcp://127.0.0.1:{busy_port}", "in use"),
        ("unix://{tmp_path}/missing-dir/b.sock", "No such file or directory"),
    ],
)
def test_broker_bad_listen_url_exits_2(url: str, says: str, busy_port: int, tmp_path: Path) -> None:
    url = url.format(busy_port=busy_port, tmp_path=tmp_path)
    done = run("broker", "--listen", f"unix://{tmp_path}/ok.sock", "--listen", url)
    assert done.returncode == 2, done.stderr
    last = done.stderr.splitlines()[-1]  # after the broker's log lines, if any
    assert last.startswith(f"asyncipc broker: cannot listen on {url}: ")
    assert says in last
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "ok.sock").exists(), "a listener bound before the error was left"


def test_broker_refuses_a_live_socket(broker: BrokerProc) -> None:
    done = run("broker", "--listen", broker.url)
    assert done.returncode == 2
    assert f"cannot listen on {broker.url}: " in done.stderr
    assert "in use" in done.stderr


# --- the broker's life -----------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_broker_signal_drains_and_removes_socket(tmp_path: Path, sig: int) -> None:
    path = tmp_path / "b.sock"
    proc = BrokerProc(f"unix://{path}", "tcp://127.0.0.1:0", log=tmp_path / "b.log")
    assert proc.urls[0] == f"unix://{path}"
    assert proc.urls[1].startswith("tcp://127.0.0.1:")
    assert not proc.urls[1].endswith(":0")
    assert path.exists()
    # A subscriber learns that the broker went away: exit 2, no traceback.
    sub = start_sub("cli.any", "--url", proc.url, env=cli_env())
    assert proc.stop(sig) == 0
    assert not path.exists(), "socket file left behind"
    code, _, err = finish(sub)
    assert code == 2
    assert "lost" in err
    assert "Traceback" not in err
    assert "Traceback" not in proc.log.read_text()
