"""``asyncipc broker`` warns about a missing token only where other hosts can reach it
(issue 13, item 9): a network listener (tcp, tls, udp, http, grpc) on an address that is
not loopback; never for unix://, shm:// or a loopback address alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from asyncipc.cli._broker import exposed

from .test_cli import BrokerProc, cli_env


@pytest.mark.parametrize(
    ("url", "public"),
    [
        ("unix:///run/a.sock", False),
        ("shm://bus", False),
        ("fifo:///tmp/f", False),
        ("mmap:///tmp/m", False),
        ("tcp://127.0.0.1:4222", False),
        ("tcp://127.1.2.3:4222", False),
        ("tls://localhost:4222", False),
        ("http://[::1]:8080", False),
        ("grpc://127.0.0.1:50051", False),
        ("udp://127.0.0.1:4222", False),
        ("tcp://0.0.0.0:4222", True),
        ("http://[::]:8080", True),
        ("grpc://10.0.0.2:50051", True),
        ("udp://192.168.1.5:4222", True),
        ("https://example.org:443", True),
        ("tcp://:4222", True),
    ],
)
def test_which_listeners_are_exposed(url: str, public: bool) -> None:
    assert exposed(url) is public


def test_no_token_warning_for_local_listeners_only(tmp_path: Path) -> None:
    log = tmp_path / "b.log"
    proc = BrokerProc(
        f"unix://{tmp_path}/b.sock",
        f"shm://w{tmp_path.name[-8:]}",
        "tcp://127.0.0.1:0",
        log=log,
        env=cli_env(),
    )
    assert proc.stop() == 0
    text = log.read_text()
    assert "--token" not in text, text


def test_no_token_warning_names_the_exposed_listener(tmp_path: Path) -> None:
    log = tmp_path / "b.log"
    proc = BrokerProc(f"unix://{tmp_path}/b.sock", "tcp://0.0.0.0:0", log=log, env=cli_env())
    url = proc.urls[1]
    assert proc.stop() == 0
    [line] = [x for x in log.read_text().splitlines() if "--token" in x]
    assert f"no --token: any client that can reach {url} is served" in line
