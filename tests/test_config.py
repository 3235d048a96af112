"""The broker configuration file (issue 13, docs/security.md): parsing, mistakes named by
key and line, ``--check-config`` and ``passwd`` through the real CLI, and a SIGHUP reload
of a real broker process that re-applies permissions to a connected client."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import asyncipc
from asyncipc.config import parse_config
from asyncipc.users import verify_password
from tests.test_cli import BrokerProc, cli_env, run

ROOT = Path(__file__).resolve().parent.parent
SECURITY_DOC = ROOT / "docs" / "security.md"
HASH = "scrypt$16384$8$1$uaXST20CUgs2tN6SpwlQuA$ivSqg4YOO205ZWiIZ8bsHs2Ra6w0LkwG0YfMHWvOOWQ"
"""``asyncipc passwd`` of ``billing-secret``."""


def doc_example() -> str:
    text = SECURITY_DOC.read_text()
    found = re.search(r"```toml\n(.*?)```", text, re.DOTALL)
    assert found, "docs/security.md has no TOML example"
    return found.group(1)


def test_the_documented_example_is_a_valid_configuration() -> None:
    config = parse_config(doc_example(), "security.md")
    names = [u.name for u in config.options.users]
    assert names == ["billing", "ops", "robot", "reporting"]
    billing = config.options.users[0]
    assert verify_password("billing-secret", billing.password_hash or "")
    perms = billing.permissions
    assert perms.publish_refusal("orders.new") is None
    assert perms.publish_refusal("orders.secret.x") is not None
    assert perms.subscribe_refusal("_INBOX.abc.1") is None
    assert config.options.users[1].uid == 0
    assert config.options.users[2].cert == "robot.example.com"
    assert config.options.max_frame == 1024 * 1024
    assert [s.name for s in config.streams] == ["ORDERS"]
    assert config.listen[0].startswith("unix://")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('listen = ["unix:///x"]\nlisten_to = 1\n', r"<t>:2: listen_to: unknown key"),
        ('[limits]\nmax_frame = "big"\n', r"<t>:2: limits.max_frame: must be a int"),
        ("[limits]\nmax_fram = 1\n", r"<t>:2: limits.max_fram: unknown limit"),
        (
            '[[users]]\nname = "a"\npassword = "p"\n[[users]]\nname = "b"\nuid = 5\n'
            'publish = { allow = ["ok", "bad..x"] }\n',
            r"<t>:7: users\[1\]\.publish\.allow\[1\]: .*empty token",
        ),
        ('[[users]]\nname = "a"\n', r"<t>:2: users\[0\]\.name: .*no identity"),
        ('[[users]]\nname = "a"\npassword_hash = "md5$x"\n', r"<t>:3: users\[0\]\.password_hash"),
        ('[[users]]\nname = "a"\nuid = 1\n[[users]]\nname = "a"\nuid = 2\n', r"defined twice"),
        ('[[users]]\nname = "a"\nuid = 1\nsudo = true\n', r"<t>:4: users\[0\]\.sudo: unknown"),
        ('[[streams]]\nname = "S"\nsubjects = ["$sys.x"]\n', r"<t>:1: streams\[0\]: .*reserved"),
        ('listen = ["a"]\n[limits\n', r"<t>: not valid TOML: .*line 2"),
    ],
)
def test_mistakes_name_the_key_and_line(text: str, says: str) -> None:
    with pytest.raises(asyncipc.ConfigurationError, match=says):
        parse_config(text, "<t>")


def test_check_config_through_the_cli(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(doc_example())
    done = run("broker", "--config", str(good), "--check-config", env=cli_env())
    assert done.returncode == 0, done.stderr
    assert "ok: 2 listeners, 4 users, 1 streams" in done.stdout
    bad = tmp_path / "broker.toml"
    bad.write_text(doc_example().replace('"orders.secret.>"', '"orders..secret"', 1))
    done = subprocess.run(
        [sys.executable, "-m", "asyncipc", "broker", "--config", "broker.toml", "--check-config"],
        capture_output=True,
        text=True,
        env={**cli_env(), "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
        timeout=30,
    )
    assert done.returncode == 1
    # word for word what docs/security.md shows
    shown = re.search(
        r"\$ asyncipc broker --config broker.toml --check-config\n(.*)\n", SECURITY_DOC.read_text()
    )
    assert shown, "docs/security.md shows no --check-config output"
    assert done.stderr.strip() == shown.group(1)
    done = run("broker", "--check-config", env=cli_env())
    assert done.returncode == 2
    assert "--check-config needs --config FILE" in done.stderr


def test_passwd_prints_a_hash_that_verifies() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "asyncipc", "passwd"],
        input="hunter2\n",
        capture_output=True,
        text=True,
        env=cli_env(),
        cwd=ROOT,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    hashed = done.stdout.strip()
    assert "hunter2" not in hashed
    assert verify_password("hunter2", hashed)


CONFIG = """\
listen = ["unix://{sock}"]

[[users]]
name = "billing"
password_hash = "{hash}"
publish = {{ allow = [{publish}] }}
subscribe = {{ allow = [{subscribe}] }}

[[streams]]
name = "ORDERS"
subjects = ["orders.>"]
"""


async def test_sighup_reloads_permissions_for_connected_clients(tmp_path: Path) -> None:
    """A real `asyncipc broker --config` process: a client subscribed and publishing;
    the file loses those permissions; SIGHUP; the subscription is removed with an ERR the
    client raises as PermissionDenied, its publish is refused, its connection stays. A
    broken file on the next SIGHUP keeps the configuration in effect."""
    sock = tmp_path / "b.sock"
    path = tmp_path / "broker.toml"

    def write(publish: str, subscribe: str) -> None:
        path.write_text(CONFIG.format(sock=sock, hash=HASH, publish=publish, subscribe=subscribe))

    write('"orders.>", "billing.>", "$sys.stream.>"', '"orders.>", "billing.>", "_INBOX.>"')
    broker = BrokerProc(log=tmp_path / "broker.log", args=["--config", str(path)])
    # BrokerProc counts the --listen URLs: wait for the one in the file ourselves
    assert broker.proc.stdout is not None
    line = broker.proc.stdout.readline()
    assert line.startswith("listening on unix://"), (line, (tmp_path / "broker.log").read_text())
    url = f"unix://{sock}"
    try:
        options = asyncipc.ConnectOptions(user="billing", password="billing-secret")
        async with asyncipc.connect(url, options=options) as bus:
            assert [s.config.name for s in await bus.streams()] == ["ORDERS"]
            async with bus.subscribe("orders.*") as orders, bus.subscribe("billing.x") as kept:
                await bus.publish("orders.new", b"before")
                assert (await orders.next_msg(timeout=5)).data == b"before"
                write('"billing.>"', '"billing.>"')
                os.kill(broker.proc.pid, signal.SIGHUP)
                with pytest.raises(asyncipc.PermissionDenied, match="orders"):
                    await orders.next_msg(timeout=10)
                events = bus.events()
                await bus.publish("orders.new", b"after")
                async with asyncio.timeout(5):
                    async for event in events:
                        if event.kind == "error":
                            assert isinstance(event.error, asyncipc.PermissionDenied)
                            break
                # a mistake in the file: logged, the permissions in effect stay
                path.write_text("listen = [\n")
                os.kill(broker.proc.pid, signal.SIGHUP)
                await bus.publish("billing.x", b"still")
                assert (await kept.next_msg(timeout=5)).data == b"still"
            assert bus.is_connected
    finally:
        assert broker.stop() == 0
    log = (tmp_path / "broker.log").read_text()
    assert "SIGHUP: reloaded" in log
    assert "keeping the configuration in effect" in log


def test_cli_clients_connect_as_a_user(tmp_path: Path) -> None:
    """`asyncipc pub/request --user NAME` with $ASYNCIPC_PASSWORD; a refused publish is
    exit 1 naming the subject, not a silent success."""
    sock = tmp_path / "b.sock"
    path = tmp_path / "broker.toml"
    path.write_text(
        CONFIG.format(sock=sock, hash=HASH, publish='"orders.>"', subscribe='"_INBOX.>"')
    )
    broker = BrokerProc(log=tmp_path / "broker.log", args=["--config", str(path)])
    assert broker.proc.stdout is not None
    assert broker.proc.stdout.readline().startswith("listening on ")
    try:
        env = cli_env(ASYNCIPC_URL=f"unix://{sock}", ASYNCIPC_PASSWORD="billing-secret")
        done = run("pub", "--user", "billing", "orders.new", "x", env=env)
        assert done.returncode == 0, done.stderr
        done = run("pub", "--user", "billing", "payroll.run", "x", env=env)
        assert done.returncode == 1
        assert "publish to 'payroll.run' is not allowed" in done.stderr
        done = run("request", "--user", "billing", "payroll.run", "x", env=env)
        assert done.returncode == 1
        assert "'payroll.run'" in done.stderr
        done = run("pub", "orders.new", "x", env=env)  # no user: refused at the handshake
        assert done.returncode == 2
        assert "user required" in done.stderr
    finally:
        assert broker.stop() == 0
