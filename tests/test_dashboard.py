"""``GET /dashboard`` in a real browser: headless Chromium (Debian's ``chromium``) driven by
Playwright, against a live broker with clients publishing, subscribing and falling behind.

Asserts what the page shows, and saves a screenshot in the test's tmp dir; with
``ASYNCIPC_DASHBOARD_SCREENSHOT=docs/dashboard.png`` it also writes it there (how the
picture in docs/monitoring.md is made). Run alone: one event loop, not one per loop
flavour, since the browser is the slow part.

``make test`` installs both (the ``dev`` extra has playwright; the Makefile installs the
``chromium`` package as root). Without them the test skips and says which is missing,
except as root or under CI (``$CI`` set), where it fails: there ``make test`` installs
them, so the test must run.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

import asyncipc
from asyncipc.protocol import Overflow
from tests.test_wire_raw import client as raw_client
from tests.test_wire_raw import sub as raw_sub

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TIMEOUT_MS = 15_000
SHOT_ENV = "ASYNCIPC_DASHBOARD_SCREENSHOT"
# A client name that would run script if the page ever put data in as HTML.
EVIL = '<img src=x onerror="document.body.dataset.pwned=1">'


def _missing() -> str | None:
    try:
        import playwright.async_api  # noqa: F401
    except ModuleNotFoundError:
        return "playwright is not installed (pip install -e '.[dev]')"
    if CHROMIUM is None:
        return "no chromium executable (apt-get install chromium; `make test` does it as root)"
    return None


def test_dashboard_in_a_browser(tmp_path: Path) -> None:
    why = _missing()
    if why is not None:
        if os.environ.get("CI") or os.geteuid() == 0:
            pytest.fail(f"the browser test must run here (run `make chromium`): {why}")
        pytest.skip(why)
    shot = tmp_path / "dashboard.png"
    asyncio.run(_scenario(tmp_path, shot))
    assert shot.stat().st_size > 10_000
    target = os.environ.get(SHOT_ENV)
    if target:
        shutil.copyfile(shot, target)


async def _publish_forever(bus: asyncipc.Bus, subject: str, pause: float) -> None:
    while True:
        await bus.publish(subject, b'{"sku": "a-1", "qty": 2}')
        await asyncio.sleep(pause)


async def _scenario(tmp_path: Path, shot: Path) -> None:
    from playwright.async_api import async_playwright, expect

    async with asyncipc.Broker(high_water=64 * 1024) as broker:
        http = await broker.listen("http://127.0.0.1:0")
        unix = (await broker.listen(f"unix://{tmp_path}/b.sock")).url
        tcp = (await broker.listen("tcp://127.0.0.1:0")).url
        async with (
            asyncipc.connect(unix, name="orders-api") as orders,
            asyncipc.connect(tcp, name="billing") as billing,
            asyncipc.connect(unix, name=EVIL) as evil,
            async_playwright() as pw,
        ):
            got = billing.subscribe("orders.*", queue="billing")
            evil.subscribe("audit.>")
            await billing.flush()
            await evil.flush()
            await orders.stream("ORDERS", subjects=["orders.>"], storage="memory")
            tasks = [
                asyncio.create_task(_publish_forever(orders, "orders.created", 0.01)),
                asyncio.create_task(_publish_forever(evil, "audit.login", 0.05)),
                asyncio.create_task(_drain(got)),
            ]
            browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True)
            try:
                page = await browser.new_page(viewport={"width": 1400, "height": 900})
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await page.goto(f"{http.url}/dashboard?interval=0.3")
                expect.set_options(timeout=TIMEOUT_MS)

                await expect(page.locator("#status")).to_have_text("live")
                conns = page.locator("#connections tbody tr")
                await expect(conns.filter(has_text="orders-api")).to_have_count(1)
                await expect(conns.filter(has_text="billing")).to_have_count(1)
                # The hostile name is shown as the text it is, and nothing of it ran.
                await expect(conns.filter(has_text=EVIL)).to_have_count(1)
                assert await page.locator("#connections img").count() == 0
                assert await page.evaluate("document.body.dataset.pwned") is None

                # A subject's rate becomes non-zero.
                rate = page.locator('#subjects tr[data-subject="orders.created"] td').nth(2)
                await expect(rate).to_have_text(re.compile(r"^(?!0$)[0-9.]+k?$"))
                await expect(page.locator("#v-in-rate")).not_to_have_text("0")

                # The stream is listed, and fills.
                stream = page.locator('#streams tr[data-stream="ORDERS"]')
                await expect(stream).to_contain_text("orders.>")
                await expect(stream.locator("td").nth(3)).not_to_have_text("0")

                # A slow consumer: subscribes, never reads, and the broker drops for it.
                slow_rows = page.locator("#slow tbody tr")
                await expect(slow_rows.filter(has_text="sloth")).to_have_count(0)
                async with raw_client(unix, name="sloth") as sloth:
                    sloth.send(raw_sub(1, "orders.*", overflow=Overflow.DROP_NEW))
                    await sloth.flush()
                    for _ in range(200):
                        await orders.publish("orders.bulk", b"x" * 16384)
                    await orders.flush()
                    row = slow_rows.filter(has_text="sloth")
                    await expect(row).to_have_count(1)
                    await expect(row).to_contain_text("drop_new")
                    await expect(page.locator("#v-dropped")).not_to_have_text("0")
                    await page.screenshot(path=str(shot), full_page=True)
                assert errors == []
            finally:
                await browser.close()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)


async def _drain(sub: Any) -> None:
    async for _ in sub:
        pass
