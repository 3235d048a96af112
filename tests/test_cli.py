"""The ``asyncipc`` command, as a user runs it: real processes, a real broker process.

Every command runs as ``python -m asyncipc ...`` in its own process. Most talk to one
broker process per module (on a Unix socket, requiring a token that the clients get from
``$ASYNCIPC_TOKEN``); the tests about the broker's own life start their own.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import pytest

import asyncipc
from asyncipc._logjson import JsonFormatter
from asyncipc.cli import build_parser, main
from asyncipc.options import BrokerOptions

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

    def __init__(
        self,
        *listen: str,
        log: Path,
        env: dict[str, str] | None = None,
        args: Sequence[str] = (),
    ) -> None:
        self.log = log
        with open(log, "w") as err:  # a file, not a pipe that nobody reads could fill
            self.proc = subprocess.Popen(
                [*CLI, "broker", *(a for url in listen for a in ("--listen", url)), *args],
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


@pytest.mark.parametrize("command", [[], ["broker"], ["pub"], ["sub"], ["request"], ["wait"]])
def test_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: asyncipc {' '.join(command)}".rstrip())
    if command and command != ["broker"]:
        assert "--url" in out
        assert "ASYNCIPC_URL" in out


def test_help_carries_the_essentials_of_the_docs(capsys: pytest.CaptureFixture[str]) -> None:
    # An installed wheel has no docs/: what a user needs first is in --help itself.
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "docs/cli.md" not in out
    for needed in ("$ASYNCIPC_URL", "$ASYNCIPC_TOKEN", "asyncipc wait", "Exit codes", "130"):
        assert needed in out


def test_sizes_with_suffixes() -> None:
    args = build_parser().parse_args(["broker", "--high-water", "64K", "--max-frame", "16M"])
    assert (args.high_water, args.max_frame) == (64 << 10, 16 << 20)
    assert build_parser().parse_args(["broker"]).high_water == BrokerOptions().high_water


@pytest.mark.parametrize("size", ["12", "lots", "2048G"])
def test_bad_high_water_exits_2(size: str) -> None:
    done = run("broker", "--high-water", size)
    assert done.returncode == 2
    assert "--high-water" in done.stderr


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


def test_sub_headers_shows_them_as_json(broker: BrokerProc) -> None:
    sub = start_sub("cli.hdr", "--url", broker.url, "--count", "2", "--headers")
    done = run("pub", "cli.hdr", "one", "-H", "trace=abc", "-H", 'q=a"b', "--url", broker.url)
    assert done.returncode == 0, done.stderr
    assert run("pub", "cli.hdr", "two", "--url", broker.url).returncode == 0
    code, out, err = finish(sub)
    assert code == 0, err
    assert out.splitlines() == ['[cli.hdr] {"trace": "abc", "q": "a\\"b"} one', "[cli.hdr] {} two"]


def test_sub_json_and_pub_from_stdin(broker: BrokerProc) -> None:
    sub = start_sub("cli.json.*", "--url", broker.url, "--count", "2", "--json")
    binary = b"\x00\xff\xfe not UTF-8\n"
    piped = subprocess.run(
        [*CLI, "pub", "cli.json.bin", "-", "--url", broker.url, "-H", "k=v"],
        input=binary,
        capture_output=True,
        env=cli_env(ASYNCIPC_TOKEN=TOKEN),
        cwd=ROOT,
        timeout=GUARD,
    )
    assert piped.returncode == 0, piped.stderr
    text = run("pub", "cli.json.text", "caf\u00e9\nline", "--reply-to", "r.1", "--url", broker.url)
    assert text.returncode == 0, text.stderr
    code, out, err = finish(sub)
    assert code == 0, err
    first, second = (json.loads(line) for line in out.splitlines())
    assert first == {
        "subject": "cli.json.bin",
        "data": base64.b64encode(binary).decode(),
        "base64": True,
        "headers": {"k": "v"},
        "reply_to": None,
    }
    assert second == {
        "subject": "cli.json.text",
        "data": "caf\u00e9\nline",
        "base64": False,
        "headers": {},
        "reply_to": "r.1",
    }


def test_sub_output_formats_exclude_each_other() -> None:
    done = run("sub", "x", "--json", "--raw")
    assert done.returncode == 2
    assert "not allowed with" in done.stderr


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
    assert "is `asyncipc broker` running there?" in done.stderr
    assert "Traceback" not in done.stderr


async def test_tcp_url_at_an_http_listener_exits_2_naming_http() -> None:
    """The hint about a missing broker is the transport's, for nobody-there errors only:
    after "this is an HTTP server" it would mislead."""
    pytest.importorskip("aiohttp")
    async with asyncipc.Broker() as broker:
        rest = await broker.listen("http://127.0.0.1:0")
        tcp_url = rest.url.replace("http://", "tcp://", 1)
        done = await asyncio.to_thread(run, "pub", "--url", tcp_url, "x", "y")
    assert done.returncode == 2
    assert "this is an HTTP server" in done.stderr
    assert f"use {rest.url}" in done.stderr
    assert "running there" not in done.stderr


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
        # after an adapter was bound: its own client logs as it closes, and must not
        ("http://127.0.0.1:0 --listen tcp://127.0.0.1:{busy_port}", "in use"),
        ("unix://{tmp_path}/missing-dir/b.sock", "No such file or directory"),
        ("unix:///{long}/b.sock", "the socket path is 108 bytes long"),
    ],
)
def test_broker_bad_listen_url_exits_2(
    url: str, says: str, busy_port: int, short_tmp: Path
) -> None:
    long = "d" * (108 - len("//b.sock"))
    *first, url = url.format(busy_port=busy_port, tmp_path=short_tmp, long=long).split(" --listen ")
    args = [a for u in [f"unix://{short_tmp}/ok.sock", *first, url] for a in ("--listen", u)]
    done = run("broker", *args)
    assert done.returncode == 2, done.stderr
    # Only the error: no "listening on" or "broker closed" about the listener that was
    # bound and closed again on the way out.
    [line] = done.stderr.splitlines()
    assert line.startswith(f"asyncipc broker: cannot listen on {url}: ")
    assert says in line
    assert done.stdout == ""
    assert not (short_tmp / "ok.sock").exists(), "a listener bound before the error was left"


def test_broker_log_json_error_is_one_json_line() -> None:
    done = run("broker", "--log-json", "--listen", "carrier-pigeon://coop")
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    entry = json.loads(line)
    assert entry["level"] == "ERROR"
    assert entry["message"].startswith("cannot listen on carrier-pigeon://coop: ")
    # extra= fields of the record come out under their own names
    assert (entry["command"], entry["exit_code"]) == ("broker", 2)


def test_broker_refuses_a_live_socket(broker: BrokerProc) -> None:
    done = run("broker", "--listen", broker.url)
    assert done.returncode == 2
    assert f"cannot listen on {broker.url}: " in done.stderr
    assert "in use" in done.stderr


# --- the broker's life -----------------------------------------------------------------


def test_wait_then_pub_sub(tmp_path: Path) -> None:
    # The broker is started and not waited for: `asyncipc wait` is what waits.
    url = f"unix://{tmp_path}/w.sock"
    with open(tmp_path / "b.log", "w") as log:
        proc = subprocess.Popen(
            [*CLI, "broker", "--listen", url],
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=cli_env(),
            cwd=ROOT,
        )
    try:
        done = run("wait", "--url", url, "--timeout", str(GUARD), env=cli_env())
        assert done.returncode == 0, done.stderr
        assert f"broker ready at {url}" in done.stderr
        env = cli_env(ASYNCIPC_URL=url)
        sub = start_sub("cli.waited", "--count", "1", env=env)
        assert run("pub", "cli.waited", "hello", env=env).returncode == 0
        assert finish(sub)[:2] == (0, "[cli.waited] hello\n")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(GUARD) == 0


def test_wait_gives_up_with_exit_2(tmp_path: Path) -> None:
    url = f"unix://{tmp_path}/nobody.sock"
    done = run("wait", "--url", url, "--timeout", "0.2")
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith(f"asyncipc wait: no broker answered at {url} within 0.2 s")
    assert "no socket at" in line


def test_wait_fails_at_once_on_a_refused_token(broker: BrokerProc) -> None:
    # Retrying cannot help: a wait that retried would end on its (long) time-out instead.
    done = run("wait", "--url", broker.url, "--token", "wrong", "--timeout", str(GUARD * 10))
    assert done.returncode == 2
    assert "authentication failed" in done.stderr
    assert "no broker answered" not in done.stderr


def test_ready_file_lists_the_listeners_and_goes_away(tmp_path: Path) -> None:
    ready = tmp_path / "broker.ready"
    ready.write_text("stale\n")  # left by an earlier run: must not count
    proc = BrokerProc(
        f"unix://{tmp_path}/r.sock",
        "tcp://127.0.0.1:0",
        log=tmp_path / "b.log",
        args=["--ready-file", str(ready)],
    )
    # Written before the "listening on" lines, so it is there once they are.
    assert ready.read_text().splitlines() == proc.urls
    assert proc.stop() == 0
    assert not ready.exists()


def test_ready_file_that_cannot_be_written_exits_2(tmp_path: Path) -> None:
    sock = tmp_path / "r.sock"
    ready = tmp_path / "no-such-dir" / "ready"
    done = run("broker", "--listen", f"unix://{sock}", "--ready-file", str(ready))
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith(f"asyncipc broker: cannot write --ready-file {ready}: ")
    assert not sock.exists()


def test_broker_log_json(tmp_path: Path) -> None:
    log = tmp_path / "b.log"
    proc = BrokerProc("tcp://0.0.0.0:0", log=log, args=["--log-json", "--high-water", "64K"])
    # Some lines of each kind: the broker's, the command's warning (no --token on a
    # listener other hosts reach), and the transport's about a peer that sent garbage.
    _, port = proc.url.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection(("127.0.0.1", int(port)), timeout=GUARD) as sock:
        sock.sendall(b"\xff" * 64)
        sock.recv(4096)
    assert proc.stop() == 0
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    for entry in entries:
        assert list(entry)[:4] == ["time", "level", "logger", "message"]
    messages = [e["message"] for e in entries]
    assert f"listening on {proc.url}" in messages
    assert "broker closed" in messages
    assert any(e["level"] == "WARNING" and "--token" in e["message"] for e in entries)
    assert any("bad preamble" in m for m in messages)  # the garbage, from the transport


def test_json_formatter_fields_and_exception() -> None:
    record = logging.LogRecord("asyncipc.test", logging.WARNING, __file__, 1, "x=%d", (7,), None)
    record.__dict__.update(client="c1", level="mine", sizes=b"\x00")
    try:
        raise ValueError("boom\nline two")
    except ValueError:
        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "asyncipc.test"
    assert entry["message"] == "x=7"
    assert entry["time"].endswith("+00:00")
    assert (entry["client"], entry["_level"], entry["sizes"]) == ("c1", "mine", "b'\\x00'")
    assert "ValueError: boom\nline two" in entry["exception"]


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


def test_sub_reconnect_outlives_a_broker_restart(tmp_path: Path) -> None:
    """``sub --reconnect`` waits for its broker to come back and subscribes again; without
    it (test_broker_signal_drains_and_removes_socket) a broker leaving ends it, exit 2."""
    path = tmp_path / "b.sock"
    first = BrokerProc(f"unix://{path}", log=tmp_path / "b1.log", env=cli_env())
    sub = start_sub("cli.back", "--count", "1", "--reconnect", "--url", first.url, env=cli_env())
    try:
        assert first.stop(signal.SIGKILL) != 0
        assert sub.poll() is None, "sub --reconnect exited with its broker"
        second = BrokerProc(f"unix://{path}", log=tmp_path / "b2.log", env=cli_env())
        try:
            # Published until the resubscribed sub takes one: it cannot know when it is back.
            deadline = time.monotonic() + GUARD
            while sub.poll() is None and time.monotonic() < deadline:
                done = run("pub", "--url", second.url, "cli.back", "again", env=cli_env())
                assert done.returncode == 0, done.stderr
                time.sleep(0.05)
            code, out, err = finish(sub)
        finally:
            second.stop()
    finally:
        if sub.poll() is None:
            sub.kill()
            finish(sub)
    assert code == 0, err
    assert out == "[cli.back] again\n"
