"""The conformance checks (DESIGN.md §6): what every transport must do, shipped so that
someone writing a transport tests it the way asyncipc's own suite does.

Each check connects its own buses to a broker already listening at ``url``, works under
a subject prefix of its own (so checks may share one broker), and leaves nothing
subscribed behind. ``tests/test_conformance.py`` runs every check over every built-in
transport; :func:`check_transport` runs them all against one URL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pytest

from ._checks_flow import FLOW
from ._checks_messages import MESSAGES
from ._registry import ConformanceCheck, TransportTraits, traits_for

__all__ = ["CHECKS", "ConformanceReport", "check_transport", "conformance_params"]

CHECKS: dict[str, ConformanceCheck] = {**MESSAGES, **FLOW}
"""Every check by name, in the order :func:`check_transport` runs them."""


def conformance_params(exclude: Iterable[str] = ()) -> list[Any]:
    """``pytest.param(check, id=name)`` for each check: for
    ``@pytest.mark.parametrize("check", conformance_params())``."""
    skip = set(exclude)
    unknown = skip - CHECKS.keys()
    if unknown:
        raise ValueError(f"no conformance check named {sorted(unknown)}: see CHECKS")
    return [pytest.param(c, id=name) for name, c in CHECKS.items() if name not in skip]


@dataclass
class ConformanceReport:
    """What :func:`check_transport` ran: the names that passed and those skipped (why)."""

    url: str
    passed: list[str]
    skipped: dict[str, str]


async def check_transport(
    url: str,
    *,
    traits: TransportTraits | None = None,
    exclude: Iterable[str] = (),
    timeout: float = 60.0,
) -> ConformanceReport:
    """Run every conformance check against the broker listening at ``url``.

    Runs them one after another (each under its own subject prefix and time-out), and
    raises one AssertionError listing every check that failed, with what went wrong, if
    any did; otherwise returns what passed and what was skipped for ``traits`` (default:
    those of the URL's built-in scheme, :func:`traits_for`). ``exclude`` names checks
    not to run (:data:`CHECKS` lists them)."""
    traits = traits or traits_for(url)
    report = ConformanceReport(url, [], {})
    failures: list[tuple[str, BaseException]] = []
    for param in conformance_params(exclude):
        check: ConformanceCheck = param.values[0]
        guard = asyncio.timeout(timeout)
        try:
            async with guard:
                await check(url, traits=traits)
        except pytest.skip.Exception as exc:
            report.skipped[check.name] = str(exc.msg)
        except Exception as exc:
            failure: BaseException = exc
            if isinstance(exc, TimeoutError) and guard.expired():
                failure = AssertionError(f"did not finish within {timeout} s")
                failure.__cause__ = exc
            failures.append((check.name, failure))
        else:
            report.passed.append(check.name)
    if failures:
        lines = [f"  {name}: {type(exc).__name__}: {exc}" for name, exc in failures]
        raise AssertionError(
            f"{len(failures)} of {len(failures) + len(report.passed) + len(report.skipped)} "
            f"conformance checks failed against {url}:\n" + "\n".join(lines)
        ) from failures[0][1]
    return report
