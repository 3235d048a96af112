"""The suite's own markers do what tests/README.md says."""

from __future__ import annotations

import asyncio

import pytest
import uvloop


@pytest.mark.one_loop("the marker itself")
async def test_one_loop_runs_under_the_standard_loop_only(request: pytest.FixtureRequest) -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, asyncio.BaseEventLoop), type(loop)
    assert not isinstance(loop, uvloop.Loop)
    assert request.node.name == "test_one_loop_runs_under_the_standard_loop_only"  # one item


async def test_an_unmarked_test_runs_under_each_loop(request: pytest.FixtureRequest) -> None:
    loop = asyncio.get_running_loop()
    which = request.node.callspec.id
    assert which in ("asyncio", "uvloop")
    assert isinstance(loop, uvloop.Loop) == (which == "uvloop"), (which, type(loop))
