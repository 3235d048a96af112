"""Benchmarks: asyncipc against nats-py, pyzmq and redis-py, in the same run.

``python -m benchmarks.run`` is the entry point; see ``benchmarks/README.md``.

- ``_procs``: starting, probing and stopping processes (servers and client workers).
- ``_systems``: how each system's broker is started and which worker module drives it.
- ``_cases``: the cases (pub/sub, request/reply, fan-out) as process choreographies.
- ``_report``: the printed tables and the JSON file.
- ``workers/``: one client module per system, run as separate processes.
"""

import os as _os

from ._accel import COMPILED_ENV as _COMPILED_ENV

if _os.environ.get(_COMPILED_ENV):
    # A process of the compiled build (``--build compiled|both``): it must run the compiled
    # copy, or exit now rather than measure the pure sources under the compiled name.
    from pathlib import Path as _Path

    from ._accel import check_compiled as _check_compiled

    _check_compiled(_Path(_os.environ[_COMPILED_ENV]))
