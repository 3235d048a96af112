"""The public surface: what ``asyncipc`` exports, its docstrings and its exception tree."""

from __future__ import annotations

import builtins
import importlib
import importlib.metadata
import inspect
import json
import re
import subprocess
import sys

import pytest

import asyncipc
import asyncipc.errors as errors

SUBMODULES = [
    "asyncipc",
    "asyncipc.errors",
    "asyncipc.subjects",
    "asyncipc.router",
    "asyncipc.protocol",
    "asyncipc.protocol.frames",
    "asyncipc.protocol.decoder",
    "asyncipc.protocol.system",
]


@pytest.mark.parametrize("module", SUBMODULES)
def test_every_name_in_all_exists(module: str) -> None:
    mod = importlib.import_module(module)
    names = mod.__all__
    assert len(names) == len(set(names)), "duplicates in __all__"
    missing = [n for n in names if not hasattr(mod, n)]
    assert missing == []
    namespace: dict[str, object] = {}
    exec(f"from {module} import *", namespace)
    assert set(names) <= set(namespace)


def test_the_design_names_are_exported() -> None:
    """DESIGN.md §3: the public face is connect, Broker, Message, Subscription, errors."""
    for name in ("connect", "Broker", "Message", "Subscription", "AsyncIPCError"):
        assert name in asyncipc.__all__


@pytest.mark.parametrize("name", asyncipc.__all__)
def test_every_public_name_has_a_docstring(name: str) -> None:
    obj = getattr(asyncipc, name)
    if name == "__version__":
        assert isinstance(obj, str)
        assert obj == importlib.metadata.version("asyncipc")
        return
    assert inspect.isclass(obj) or inspect.isfunction(obj), f"{name} is {type(obj)}"
    doc = obj.__doc__  # a class's own docstring; not inherited from its bases
    assert doc is not None, f"asyncipc.{name} has no docstring"
    assert doc.strip(), f"asyncipc.{name} has an empty docstring"
    assert not doc.startswith(f"{name}("), f"asyncipc.{name} has only a generated docstring"


# --- the exception tree ---------------------------------------------------------------


def error_classes() -> list[type[BaseException]]:
    return [
        obj
        for obj in vars(errors).values()
        if inspect.isclass(obj)
        and issubclass(obj, BaseException)
        and obj.__module__ == errors.__name__
    ]


def test_every_error_class_is_rooted_at_asyncipc_error() -> None:
    classes = error_classes()
    assert len(classes) >= 18
    for cls in classes:
        assert issubclass(cls, asyncipc.AsyncIPCError), cls
        assert cls.__name__ in errors.__all__
        assert getattr(asyncipc, cls.__name__) is cls, f"asyncipc.{cls.__name__} not exported"
    assert {c.__name__ for c in classes} == set(errors.__all__)


def test_standard_library_bases() -> None:
    """DESIGN.md §1 and the errors module: ``except TimeoutError`` / ``OSError`` /
    ``ValueError`` catch what a user expects them to."""
    assert issubclass(asyncipc.RequestTimeout, TimeoutError)
    assert issubclass(asyncipc.InvalidSubject, ValueError)
    assert issubclass(asyncipc.ConfigurationError, ValueError)
    assert issubclass(asyncipc.ConnectError, OSError)
    assert issubclass(asyncipc.BrokenLinkError, OSError)
    assert issubclass(asyncipc.BrokenLinkError, asyncipc.ConnectionClosed)
    assert not issubclass(asyncipc.ClosedError, OSError)
    with pytest.raises(TimeoutError):
        raise asyncipc.RequestTimeout("no answer")


def parse_tree(doc: str) -> list[tuple[str, str | None, str | None]]:
    """(name, parent, standard base) for each line of the tree in the module docstring."""
    lines = doc.split("::", 1)[1].strip("\n").splitlines()
    out: list[tuple[str, str | None, str | None]] = []
    stack: list[str] = []
    for line in lines:
        if not line.strip():
            break
        m = re.match(r"^ {4}((?:│   | {4})*)(├── |└── )?(\w+)(?: \((\w+)\))?", line)
        assert m, f"unparsed tree line {line!r}"
        depth = len(m.group(1)) // 4 + (1 if m.group(2) else 0)
        name, base = m.group(3), m.group(4)
        del stack[depth:]
        out.append((name, stack[-1] if stack else None, base))
        stack.append(name)
    return out


def test_exception_tree_matches_its_documentation() -> None:
    assert errors.__doc__ is not None
    tree = parse_tree(errors.__doc__)
    assert tree[0] == ("AsyncIPCError", None, None)
    assert {name for name, _, _ in tree} == set(errors.__all__)
    for name, parent, base in tree[1:]:
        cls = getattr(errors, name)
        assert parent is not None
        assert getattr(errors, parent) in cls.__bases__, f"{name} should derive from {parent}"
        if base is not None:
            assert issubclass(cls, getattr(builtins, base)), f"{name} should be a {base}"


def test_broker_error_carries_its_code() -> None:
    exc = asyncipc.BrokerError(101, "slow")
    assert (exc.code, exc.message) == (101, "slow")
    assert "101" in str(exc)
    assert "slow" in str(exc)


# --- what importing costs -------------------------------------------------------------


def test_import_does_not_load_transports_it_does_not_need() -> None:
    """asyncipc/transports/__init__.py: built-in transports are imported on first use, so
    ``import asyncipc`` does not pay for channels a program never touches."""
    code = "import asyncipc, json, sys; print(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(json.loads(proc.stdout))
    assert "asyncipc" in loaded
    for lazy in (
        "asyncipc.transports.tcp",
        "asyncipc.transports.unix",
        "asyncipc.transports._stream",
    ):
        assert lazy not in loaded, f"import asyncipc loaded {lazy}"
    assert proc.stderr == ""
