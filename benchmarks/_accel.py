"""The compiled build beside the pure one: ``python -m benchmarks.run --build both``.

``make pytest-accel`` tests a mypyc-compiled copy of the package under ``build/accel``;
this module builds it, under :data:`BUILD_ROOT`, for the tests and the benchmarks: the
package and what ``setup.py`` needs are copied there and ``ASYNCIPC_COMPILE=1 python
setup.py build_ext --inplace`` compiles ``setup.py``'s ``COMPILED`` modules next to
their copied sources.
A hash of the sources, of the interpreter and of mypy's version is kept beside it: the
copy is rebuilt only when one of them changed (a build takes a minute on 2 cores).

A process runs the copy when its working directory is :data:`BUILD_ROOT` and
``PYTHONPATH`` names it before the checkout (``_procs.python_from``): ``python -m`` puts
the working directory first on ``sys.path``, so ``asyncipc`` comes from the copy and
``benchmarks``, which the copy has not, from the checkout. Such processes have
:data:`COMPILED_ENV` set, and ``benchmarks/__init__.py`` calls :func:`check_compiled` in
them: a process that would run the pure sources after all exits at once, saying why.
"""

from __future__ import annotations

import ast
import contextlib
import fcntl
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib import import_module
from pathlib import Path

__all__ = [
    "BUILD_ROOT",
    "COMPILED_ENV",
    "SUFFIX",
    "check_compiled",
    "compiled_env",
    "compiled_error",
    "ensure_compiled",
    "setup_compiled",
]

#: The checkout (``_procs`` starts its processes from here).
REPO_ROOT = Path(__file__).resolve().parent.parent
#: Where the compiled copy lives: the one ``make pytest-accel`` tests (it builds it with
#: ``python -m benchmarks._accel``, then copies the tests beside it), so that a fresh
#: clone's ``make test`` compiles once.
BUILD_ROOT = REPO_ROOT / "build" / "accel"
#: Set, to the copy's directory, in every process that must run the compiled build.
COMPILED_ENV = "ASYNCIPC_BENCH_COMPILED"
#: What the tables add to a column's name when it ran the compiled build.
SUFFIX = " [compiled]"

#: What the build needs from the checkout, as ``make pytest-accel`` copies it.
_COPIED = ("asyncipc", "setup.py", "pyproject.toml", "README.md", "LICENSE")
_STAMP = ".sources-sha256"
_IGNORED = shutil.ignore_patterns("__pycache__", "*.so", "*.pyc")


def setup_compiled(setup: Path = REPO_ROOT / "setup.py") -> list[str]:
    """``setup.py``'s ``COMPILED`` list (module paths such as ``asyncipc/router.py``), read
    from the file rather than repeated here: other work changes it."""
    for node in ast.parse(setup.read_text()).body:
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == "COMPILED"
        ):
            return [str(p) for p in ast.literal_eval(node.value)]
    raise RuntimeError(f"{setup} has no COMPILED list")


def _module(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


def _sources_key(repo: Path) -> str:
    """What the compiled copy depends on: every file of the package and of the build's
    configuration, the interpreter and mypy (mypyc) versions."""
    digest = hashlib.sha256()
    digest.update(f"{sys.version}\n{importlib.metadata.version('mypy')}\n".encode())
    files = [repo / name for name in _COPIED if (repo / name).is_file()]
    files += sorted(
        p
        for p in (repo / "asyncipc").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".so", ".pyc")
    )
    for path in files:
        digest.update(str(path.relative_to(repo)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def compiled_env(root: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a process that runs the copy in ``root`` (with ``root`` as its
    working directory): ``root`` first on ``PYTHONPATH``, then the checkout."""
    env = dict(os.environ if base is None else base)
    path = [str(root), str(REPO_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path))
    env[COMPILED_ENV] = str(root)
    return env


def check_compiled(root: Path) -> None:
    """In a process of the compiled build: exit, saying why, unless ``asyncipc`` comes
    from the copy in ``root`` and every module of its ``setup.py``'s ``COMPILED`` runs
    from its compiled extension (the guard of ``tests/test_build.py``, per process)."""
    import asyncipc
    from asyncipc._build import compiled_modules

    where = Path(asyncipc.__file__).resolve().parent
    if where != (root / "asyncipc").resolve():
        raise SystemExit(f"{COMPILED_ENV}: asyncipc imported from {where}, not from {root}")
    wanted = [_module(p) for p in setup_compiled(root / "setup.py")]
    for name in wanted:  # imported, so that compiled_modules() asks each where it came from
        import_module(name)
    missing = sorted(set(wanted) - set(compiled_modules()))
    if missing:
        raise SystemExit(f"{COMPILED_ENV}: not compiled in {root}: {', '.join(missing)}")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One build at a time (a benchmark run and the test suite may both want one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def compiled_error(root: Path) -> str | None:
    """Why a process started the way the benchmarks start them would not run the compiled
    copy (``benchmarks/__init__.py`` checks it on import), or None."""
    done = subprocess.run(
        [sys.executable, "-c", "import benchmarks"],
        cwd=root,
        env=compiled_env(root),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode == 0:
        return None
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit status {done.returncode}"


def ensure_compiled(root: Path = BUILD_ROOT, repo: Path = REPO_ROOT) -> Path:
    """The compiled copy of ``repo``'s package in ``root``, built unless its sources are
    unchanged since the last build; raises ``RuntimeError`` (with the build's output)
    if it cannot be built or its processes would not run it compiled."""
    with _locked(root.with_name(root.name + ".lock")):
        key = _sources_key(repo)
        stamp = root / _STAMP
        fresh = stamp.is_file() and stamp.read_text() == key
        if not fresh:
            print(f"building the compiled copy in {root} (about a minute)", file=sys.stderr)
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            for name in _COPIED:
                src = repo / name
                if src.is_dir():
                    shutil.copytree(src, root / name, ignore=_IGNORED)
                else:
                    shutil.copy2(src, root / name)
            done = subprocess.run(
                [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                cwd=root,
                env={**os.environ, "ASYNCIPC_COMPILE": "1"},
                capture_output=True,
                text=True,
                check=False,
            )
            (root / "build.log").write_text(done.stdout + done.stderr)
            if done.returncode:
                tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
                raise RuntimeError(f"the compiled build failed in {root}:\n{tail}")
        why = compiled_error(root)
        if why is not None:
            raise RuntimeError(f"the compiled copy in {root} does not run compiled: {why}")
        if not fresh:
            stamp.write_text(key)
        return root


if __name__ == "__main__":  # make pytest-accel
    print(ensure_compiled())
