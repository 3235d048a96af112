"""A broker in a process of its own, started with the ``asyncipc broker`` command."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from .._connect import DEFAULT_URL_ENV, TOKEN_ENV

__all__ = ["BrokerProcess"]


class BrokerProcess:
    """``python -m asyncipc broker`` in a subprocess, ready once it returns.

    ``listen`` is what the broker serves (default: a Unix socket in a private temporary
    directory); ``args`` are further command-line options (``["--max-frame", "65536"]``).
    The constructor waits until every listener is bound (the command's ``--ready-file``),
    so ``url`` answers at once; :meth:`stop` sends SIGTERM (the broker drains and exits 0),
    then SIGKILL if it does not within ``timeout``. Its log (stderr and stdout) is in
    ``log_path``, and quoted when it fails to start.

    The child's environment is this one without ``$ASYNCIPC_URL`` and ``$ASYNCIPC_TOKEN``
    (a token there would make the broker refuse a client given a plain URL); pass
    ``env={"ASYNCIPC_TOKEN": ...}`` or ``args=["--token", ...]`` to ask for one.

    Usable as a context manager, and in any test framework: it blocks, it needs no event
    loop.
    """

    def __init__(
        self,
        listen: Sequence[str] | None = None,
        *,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        timeout: float = 15.0,
    ) -> None:
        # mkdtemp under /tmp, not pytest's tmp_path: a Unix socket path has ~107 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="aipc-"))
        self.log_path = self.dir / "broker.log"
        self.listen = list(listen or [f"unix://{self.dir}/broker.sock"])
        ready = self.dir / "broker.ready"
        command = [sys.executable, "-m", "asyncipc", "broker"]
        for url in self.listen:
            command += ["--listen", url]
        command += ["--ready-file", str(ready), *args]
        child_env = {k: v for k, v in os.environ.items() if k not in (DEFAULT_URL_ENV, TOKEN_ENV)}
        child_env.update(env or {})
        with self.log_path.open("wb") as log:
            self.proc: subprocess.Popen[bytes] = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=child_env
            )
        deadline = time.monotonic() + timeout
        # Polling a file the broker renames into place: no pipe to drain, no thread.
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                what = (
                    f"exited with status {self.proc.returncode}"
                    if self.proc.returncode is not None
                    else f"was not ready within {timeout} s"
                )
                self._terminate()
                log_text = self.log()
                self.stop()
                raise RuntimeError(
                    f"broker process ({' '.join(command[1:])}) {what}; its log:\n{log_text}"
                )
            time.sleep(0.01)
        self.urls: list[str] = ready.read_text(encoding="utf-8").split()
        """The URLs the broker listens on, as it bound them (real ports for ``:0``)."""

    @property
    def url(self) -> str:
        """The first listener's URL: what a client connects to."""
        return self.urls[0]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        """What the broker wrote so far (its start-up line, warnings, errors)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; the exit status (0 when
        the broker drained and exited cleanly, negative for a signal). Idempotent."""
        self._terminate(timeout)
        shutil.rmtree(self.dir, ignore_errors=True)
        return self.proc.returncode

    def _terminate(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> BrokerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.proc.poll() is None else f"exited {self.proc.returncode}"
        return f"<BrokerProcess pid={self.proc.pid} {state} {self.listen}>"
