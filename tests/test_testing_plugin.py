"""asyncipc.testing, the pytest plugin: its fixtures against a real broker process, its
helpers' failures (what they say), check_transport on a conformant and a non-conformant
broker, and the plugin as a user gets it: pytest in a subprocess, in a fresh project, under
pytest-asyncio's strict and auto modes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import asyncipc
from asyncipc.testing import (
    CHECKS,
    BrokerProcess,
    capture,
    check_transport,
    conformance_params,
    expect_messages,
    expect_no_message,
    next_message,
    traits_for,
)

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent


# --- the fixtures, as this suite uses them (tests/conftest.py loads the plugin) --------------


async def test_bus_fixture_is_an_embedded_broker_other_buses_reach(
    asyncipc_bus: asyncipc.Bus, asyncipc_memory_broker: asyncipc.Broker
) -> None:
    url = asyncipc_bus.connected_url
    assert url is not None
    assert url.startswith("memory://")
    assert url in asyncipc_memory_broker.urls
    async with asyncipc.connect(url) as other, capture(other, "orders.>") as seen:
        await asyncipc_bus.publish("orders.created", b"7")
        await asyncipc_bus.publish("orders.paid", b"7")
        await seen.wait(2)
    assert seen.subjects == ["orders.created", "orders.paid"]
    assert seen.data == [b"7", b"7"]


async def test_client_fixture_reaches_a_broker_process_on_a_unix_socket(
    asyncipc_broker: BrokerProcess, asyncipc_client: asyncipc.Bus
) -> None:
    assert asyncipc_broker.proc.args[1:4] == ["-m", "asyncipc", "broker"]  # type: ignore[index]
    assert asyncipc_broker.proc.poll() is None
    assert asyncipc_broker.url.startswith("unix://")
    assert Path(asyncipc_broker.url.removeprefix("unix://")).is_socket()
    assert asyncipc_client.connected_url == asyncipc_broker.url

    @asyncipc_client.handler("svc.upper")
    async def upper(msg: asyncipc.Message) -> bytes:
        return msg.data.upper()

    await asyncipc_client.flush()
    # A second connection, so the request crosses the other process twice.
    async with asyncipc.connect(asyncipc_broker.url) as other:
        assert (await other.request("svc.upper", b"sku", timeout=5)).data == b"SKU"


@pytest.mark.asyncipc_broker(args=["--max-frame", "65536"])
async def test_broker_marker_passes_command_line_options(asyncipc_client: asyncipc.Bus) -> None:
    with pytest.raises(asyncipc.FrameTooLarge, match="exceeds"):
        await asyncipc_client.publish("big", bytes(100_000))
    await asyncipc_client.flush()  # refused at the sender: the connection goes on


def test_broker_process_stops_cleanly_and_removes_its_socket() -> None:
    broker = BrokerProcess()
    sock = Path(broker.url.removeprefix("unix://"))
    assert sock.is_socket()
    assert broker.stop() == 0, broker.log()
    assert not sock.exists()
    assert broker.stop() == 0  # idempotent


def test_broker_process_that_cannot_start_says_why() -> None:
    with pytest.raises(
        RuntimeError,
        match=r"(?s)exited with status 2; its log:\n.*argument --max-frame: not a size",
    ):
        BrokerProcess(args=["--max-frame", "not-a-number"])


# --- the helpers: what they return, and what they say when the expectation fails ----------


async def test_next_message_and_expect_messages_return_what_came(
    asyncipc_bus: asyncipc.Bus,
) -> None:
    async with asyncipc_bus.subscribe("h.*") as sub:
        for i in range(3):
            await asyncipc_bus.publish(f"h.{i}", str(i).encode())
        assert (await next_message(sub, timeout=5)).subject == "h.0"
        assert [m.data for m in await expect_messages(sub, 2, timeout=5)] == [b"1", b"2"]
        await expect_no_message(sub, within=0.05)


async def test_next_message_timeout_names_the_subject(asyncipc_bus: asyncipc.Bus) -> None:
    async with asyncipc_bus.subscribe("quiet.>") as sub:
        with pytest.raises(AssertionError) as failed:
            await next_message(sub, timeout=0.05)
    assert str(failed.value) == (
        "no message on 'quiet.>' within 0.05 s (0 pending, 0 dropped, active)"
    )


async def test_expect_messages_timeout_says_what_came(asyncipc_bus: asyncipc.Bus) -> None:
    async with asyncipc_bus.subscribe("few.*") as sub:
        await asyncipc_bus.publish("few.a", b'{"id": 1}')
        await asyncipc_bus.publish("few.b", b"x" * 100)
        with pytest.raises(AssertionError) as failed:
            await expect_messages(sub, 3, timeout=0.1)
    assert str(failed.value) == (
        "expected 3 messages on 'few.*' within 0.1 s, got 2: "
        f"['few.a' b'{{\"id\": 1}}', 'few.b' {b'x' * 40!r}] (0 pending, 0 dropped, active)"
    )


async def test_helpers_fail_clearly_when_the_subscription_ends(
    asyncipc_bus: asyncipc.Bus,
) -> None:
    sub = asyncipc_bus.subscribe("gone")
    await asyncipc_bus.publish("gone", b"1")
    await asyncipc_bus.flush()
    await sub.unsubscribe()
    with pytest.raises(
        AssertionError, match=r"'gone' ended after 1 of 2 messages: \['gone' b'1'\]"
    ):
        await expect_messages(sub, 2, timeout=5)
    with pytest.raises(AssertionError, match="subscription to 'gone' ended before a message"):
        await next_message(sub, timeout=5)


async def test_expect_no_message_fails_on_a_message(asyncipc_bus: asyncipc.Bus) -> None:
    async with asyncipc_bus.subscribe("loud") as sub:
        await asyncipc_bus.publish("loud", b"surprise")
        with pytest.raises(AssertionError, match=r"no message on 'loud', got \['loud' b'sur"):
            await expect_no_message(sub, within=1)


async def test_capture_wait_timeout_lists_what_was_seen(asyncipc_bus: asyncipc.Bus) -> None:
    async with capture(asyncipc_bus, "cap.>") as seen:
        await asyncipc_bus.publish("cap.one", b"1")
        await asyncipc_bus.publish("other", b"not captured")
        with pytest.raises(AssertionError) as failed:
            await seen.wait(2, timeout=0.1)
    assert (
        str(failed.value) == "expected 2 messages on 'cap.>' within 0.1 s, got 1: ['cap.one' b'1']"
    )
    # Unsubscribed on exit: nothing more is captured.
    await asyncipc_bus.publish("cap.two", b"2")
    await asyncipc_bus.flush()
    assert seen.subjects == ["cap.one"]


# --- check_transport -----------------------------------------------------------------------


async def test_check_transport_passes_a_conformant_broker(tmp_path: Path) -> None:
    async with asyncipc.Broker() as broker:
        url = (await broker.listen(f"unix://{tmp_path}/b.sock")).url
        report = await check_transport(url)
    assert report.passed == list(CHECKS)
    assert report.skipped == {}
    print(f"check_transport({url!r}): {len(report.passed)} checks passed")


async def test_check_transport_skips_what_the_traits_exclude(tmp_path: Path) -> None:
    """udp's traits (one datagram per frame) skip the sizes over 65,419 bytes, saying why."""
    async with asyncipc.Broker() as broker:
        url = (await broker.listen("udp://127.0.0.1:0")).url
        report = await check_transport(
            url, exclude=[n for n in CHECKS if not n.startswith("message_sizes")]
        )
    assert report.passed == ["message_sizes_0", "message_sizes_1"]
    assert list(report.skipped) == [
        "message_sizes_65536",
        "message_sizes_1048576",
        "message_sizes_6291456",
    ]
    assert "docs/transports.md, UDP" in report.skipped["message_sizes_1048576"]
    assert traits_for(url).max_payload == 65419


async def test_check_transport_fails_a_broker_that_refuses_large_messages(tmp_path: Path) -> None:
    """A broker whose frames stop at 64 KiB is no conformant asyncipc transport: the
    failure names each check that failed, and the others still run."""
    async with asyncipc.Broker(max_frame=64 * 1024) as broker:
        url = (await broker.listen(f"unix://{tmp_path}/b.sock")).url
        only = {"message_sizes_0", "message_sizes_1048576", "message_sizes_6291456", "wildcards"}
        with pytest.raises(AssertionError) as failed:
            await check_transport(url, exclude=[n for n in CHECKS if n not in only])
    text = str(failed.value)
    assert text.startswith(f"2 of 4 conformance checks failed against {url}:\n")
    assert re.search(r"message_sizes_1048576: FrameTooLarge: .*exceeds", text)
    assert "message_sizes_6291456: FrameTooLarge" in text
    assert isinstance(failed.value.__cause__, asyncipc.FrameTooLarge)


async def test_check_transport_reports_a_hang_as_a_failure(tmp_path: Path) -> None:
    async with asyncipc.Broker() as broker:
        url = (await broker.listen(f"unix://{tmp_path}/b.sock")).url
        with pytest.raises(
            AssertionError, match=r"block_policy_\w+: AssertionError: did not finish"
        ):
            await check_transport(
                url,
                exclude=[n for n in CHECKS if not n.startswith("block_policy")],
                # The block-policy checks wait for 0.2 s without progress from the held
                # publisher at least: a time-out under that is a hang to them.
                timeout=0.05,
            )


def test_conformance_params_refuses_an_unknown_name() -> None:
    with pytest.raises(ValueError, match=r"no conformance check named \['wildcard'\]"):
        conformance_params(exclude=["wildcard"])


# --- the plugin as a user gets it ---------------------------------------------------------


def test_import_asyncipc_does_not_import_pytest() -> None:
    code = "import asyncipc, json, sys; print(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(json.loads(proc.stdout))
    assert not {m for m in loaded if m.split(".")[0] in ("pytest", "_pytest", "pytest_asyncio")}
    assert "asyncipc.testing" not in loaded


USER_TESTS = """
import pytest
import asyncipc
from asyncipc.testing import capture, expect_messages, next_message

{mark}
async def test_embedded(asyncipc_bus):
    async with capture(asyncipc_bus, "orders.*") as seen:
        await asyncipc_bus.publish("orders.created", b"1")
        await seen.wait(1, timeout=5)

{mark}
async def test_process(asyncipc_broker, asyncipc_client):
    async with asyncipc.connect(asyncipc_broker.url) as other, other.subscribe("x") as sub:
        await other.flush()
        await asyncipc_client.publish("x", b"hello")
        assert (await next_message(sub, timeout=5)).data == b"hello"

@pytest.mark.asyncipc_broker(port=4222)
def test_bad_marker(asyncipc_broker):
    pass

def test_kills_its_broker(asyncipc_broker):
    asyncipc_broker.proc.kill()  # the teardown reports a broker that did not drain

{mark}
async def test_fails_clearly(asyncipc_bus):
    async with asyncipc_bus.subscribe("never.*") as sub:
        await expect_messages(sub, 1, timeout=0.05)
"""


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_plugin_in_a_fresh_project(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """Outside this repository (no conftest of ours), with only ``-p asyncipc.testing``
    (what the pytest11 entry point does once installed): the fixtures work in strict mode
    with ``@pytest.mark.asyncio`` and in auto mode without, a failed expectation reads as
    one, and a broker process that did not drain fails its test's teardown."""
    mark = "@pytest.mark.asyncio" if mode == "strict" else ""
    pytester.makepyfile(test_user=USER_TESTS.format(mark=mark))
    for name in [k for k in os.environ if k.startswith("ASYNCIPC_")]:
        monkeypatch.delenv(name)
    result = pytester.runpytest_subprocess(
        "-p", "asyncipc.testing", "-p", "no:cacheprovider", "-o", f"asyncio_mode={mode}"
    )
    result.assert_outcomes(passed=3, failed=1, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*UsageError: @pytest.mark.asyncipc_broker takes only args=*, not port",
            "*ERROR at teardown of test_kills_its_broker*",
            "*Failed: broker process exited -9 on SIGTERM, not 0 (a clean drain)",
            "*AssertionError: expected 1 messages on 'never.*' within 0.05 s, got 0: []*",
        ],
        consecutive=False,
    )


def test_the_docs_example_passes(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/testing.md's first example, as a user's test file, passes as it stands."""
    text = (ROOT / "docs" / "testing.md").read_text()
    (example,) = [
        b for b in re.findall(r"^```python\n(.*?)^```$", text, re.M | re.S) if "def test_quote" in b
    ]
    pytester.makepyfile(test_docs=example)
    for name in [k for k in os.environ if k.startswith("ASYNCIPC_")]:
        monkeypatch.delenv(name)
    result = pytester.runpytest_subprocess(
        "-p", "asyncipc.testing", "-p", "no:cacheprovider", "-o", "asyncio_mode=auto"
    )
    result.assert_outcomes(passed=3)


def test_the_installed_entry_point_loads_the_plugin_once(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The wheel's entry_points.txt registers the plugin under its module's name;
    installed (the wheel unpacked on sys.path, where importlib.metadata finds its
    dist-info first), pytest loads it with no ``-p``, and ``-p asyncipc.testing`` beside it
    is the same plugin, not a second registration. ``testing`` is an extra that brings
    pytest and pytest-asyncio, never a dependency."""
    # Built from a copy: setuptools writes build/ and *.egg-info next to what it builds.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "asyncipc", src / "asyncipc", ignore=shutil.ignore_patterns("__pycache__")
    )
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run(
        [*pip, "-w", str(tmp_path), str(src)], check=True, capture_output=True, timeout=300
    )
    (wheel,) = tmp_path.glob("asyncipc-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        info = next(n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt"))
        entry_points = zf.read(info).decode()
        meta = zf.read(info.replace("entry_points.txt", "METADATA")).decode()
        zf.extractall(site)
    assert "[pytest11]\nasyncipc.testing = asyncipc.testing\n" in entry_points
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    assert 'Requires-Dist: pytest>=8; extra == "testing"' in requires
    assert 'Requires-Dist: pytest-asyncio>=1.4; extra == "testing"' in requires
    assert not [r for r in requires if r.startswith("Requires-Dist: pytest") and "extra" not in r]

    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    pytester.makepyfile(
        test_installed=f"""
        import asyncipc.testing

        def test_it(asyncipc_broker):
            assert asyncipc.testing.__file__.startswith({str(site)!r})
            assert asyncipc_broker.url.startswith("unix://")
        """
    )
    for extra in ([], ["-p", "asyncipc.testing"]):
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *extra)
        result.assert_outcomes(passed=1)


def test_the_plugin_loads_without_pytest_asyncio(pytester: pytest.Pytester) -> None:
    """An environment with pytest and asyncipc but not the ``testing`` extra loads the
    plugin too (the entry point makes that automatic): the run goes on, the synchronous
    fixture works, and only a test asking for an async fixture fails, naming it."""
    pytester.makepyfile(
        test_plain="""
        def test_process(asyncipc_broker):
            assert asyncipc_broker.url.startswith("unix://")

        def test_needs_asyncio(asyncipc_bus):
            pass
        """
    )
    pytester.makepyfile(
        run="""
        import sys
        sys.modules["pytest_asyncio"] = None  # as if not installed
        import pytest
        sys.exit(pytest.main(["-p", "asyncipc.testing", "-p", "no:cacheprovider", "test_plain.py"]))
        """
    )
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    result = subprocess.run(
        [sys.executable, "run.py"],
        cwd=pytester.path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "1 passed, 1 error" in result.stdout, result.stdout + result.stderr
    assert (
        "'test_needs_asyncio' requested an async fixture 'asyncipc_memory_broker', with no "
        "plugin or hook that handled it"
    ) in result.stdout
