"""``asyncipc stream ...`` and ``asyncipc consumer ...`` against a real broker process with
a store, and a broker that meets a damaged store: the commands of docs/streams.md."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from tests.test_cli import TOKEN, BrokerProc, cli_env, run


def _broker(tmp_path: Path, store: Path) -> BrokerProc:
    return BrokerProc(
        f"unix://{tmp_path}/b.sock",
        log=tmp_path / "broker.log",
        env=cli_env(ASYNCIPC_TOKEN=TOKEN),
        args=["--store", str(store)],
    )


def test_stream_and_consumer_commands_end_to_end(tmp_path: Path) -> None:
    store = tmp_path / "store"
    broker = _broker(tmp_path, store)
    url = ["--url", broker.url]
    try:
        done = run("stream", "add", "ORDERS", "--subjects", "orders.>", "--max-msgs", "100", *url)
        assert done.returncode == 0, done.stderr
        assert "stream ORDERS: subjects orders.>" in done.stdout
        assert "storage file" in done.stdout

        done = run("stream", "pub", "ORDERS", "orders.created", '{"id": 7}', "--msg-id", "o7", *url)
        assert (done.returncode, done.stdout) == (0, "stored in ORDERS as 1\n"), done.stderr
        done = run("stream", "pub", "ORDERS", "orders.created", '{"id": 7}', "--msg-id", "o7", *url)
        assert done.stdout == "stored in ORDERS as 1 (duplicate)\n"
        assert run("pub", "orders.paid", "plain", *url).returncode == 0  # captured too

        listed = json.loads(run("stream", "ls", "--json", *url).stdout)
        assert [(s["config"]["name"], s["messages"]) for s in listed] == [("ORDERS", 2)]

        done = run("consumer", "add", "ORDERS", "billing", "--ack-wait", "30", *url)
        assert done.returncode == 0, done.stderr
        done = run("consumer", "next", "ORDERS", "billing", "--count", "5", *url)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == [
            '#1 [orders.created] {"id": 7}',
            "#2 [orders.paid] plain",
        ]
        # Acknowledged as printed: nothing left for the next one.
        done = run("consumer", "next", "ORDERS", "billing", "--timeout", "0.3", *url)
        assert done.returncode == 1
        assert "no message from ORDERS/billing" in done.stderr

        info = json.loads(run("consumer", "info", "ORDERS", "billing", "--json", *url).stdout)
        assert (info["ack_floor"], info["num_ack_pending"], info["num_pending"]) == (2, 0, 0)
        assert "billing" in run("consumer", "ls", "ORDERS", *url).stdout

        # Unknown names: exit 1 and a line that names what is missing.
        done = run("stream", "info", "NOPE", *url)
        assert done.returncode == 1
        assert "no stream 'NOPE'" in done.stderr
        done = run("consumer", "add", "ORDERS", "bad", "--filter-subject", "other.>", *url)
        assert done.returncode == 1
        assert "outside stream ORDERS" in done.stderr
    finally:
        assert broker.stop() == 0

    # The store outlives the broker: a new one serves the same stream and consumer.
    broker = _broker(tmp_path, store)
    try:
        info = json.loads(run("stream", "info", "ORDERS", "--json", *url).stdout)
        assert (info["messages"], info["last_seq"], info["storage"]) == (2, 2, "file")
        assert run("consumer", "rm", "ORDERS", "billing", *url).returncode == 0
        assert run("stream", "rm", "ORDERS", *url).returncode == 0
        assert json.loads(run("stream", "ls", "--json", *url).stdout) == []
    finally:
        assert broker.stop() == 0
    assert not (store / "streams" / "ORDERS").exists()


def test_a_damaged_store_is_reported_and_the_rest_is_served(tmp_path: Path) -> None:
    store = tmp_path / "store"
    broker = _broker(tmp_path, store)
    url = ["--url", broker.url]
    try:
        for name in ("GOOD", "BAD"):
            subject = f"{name.lower()}.>"
            assert run("stream", "add", name, "--subjects", subject, *url).returncode == 0
            done = run("stream", "pub", name, f"{name.lower()}.x", "hello", *url)
            assert done.returncode == 0, done.stderr
    finally:
        assert broker.stop(signal.SIGKILL) == -signal.SIGKILL

    (store / "streams" / "BAD" / "stream.json").write_text("{not json")
    (store / "streams" / "stray-file").write_text("not a stream")
    broker = _broker(tmp_path, store)
    try:
        listed = json.loads(run("stream", "ls", "--json", *url).stdout)
        assert [s["config"]["name"] for s in listed] == ["GOOD"]
        assert listed[0]["messages"] == 1
        done = run("stream", "info", "BAD", *url)
        assert done.returncode == 1
    finally:
        assert broker.stop() == 0
    log = (tmp_path / "broker.log").read_text()
    assert "stream BAD skipped" in log
    assert "stream.json" in log
