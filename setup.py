"""The optional accelerated build: mypyc compiles the hot modules when asked.

``pyproject.toml`` holds the metadata; this file only adds the extension modules, and only
with ``ASYNCIPC_COMPILE=1`` in the environment (``make accel``; docs/architecture.md,
Accelerated build). Without it the build is pure Python, as before: nothing to compile,
no compiler needed. The compiled modules are the same sources (they pass
``mypy --strict``); where their extension files are absent, the ``.py`` files run.
"""

from __future__ import annotations

import os

from setuptools import setup

# The modules to compile: keep in step with asyncipc/_build.py's COMPILABLE (a test checks).
COMPILED = [
    "asyncipc/protocol/decoder.py",
    "asyncipc/protocol/frames.py",
    "asyncipc/protocol/timeout.py",
    "asyncipc/router.py",
    "asyncipc/subjects.py",
    # the broker's and the clients' per-message path (docs/architecture.md)
    "asyncipc/_session.py",
    "asyncipc/_stats.py",
    "asyncipc/broker.py",
    "asyncipc/_inflight.py",
    "asyncipc/client.py",
    "asyncipc/_workers.py",
    "asyncipc/_responder.py",
    "asyncipc/message.py",
    "asyncipc/subscription.py",
    "asyncipc/transports/_stream/link.py",
    # the direct shm channel's per-record path: the rings, records in place, the port
    "asyncipc/transports/_ring/ring.py",
    "asyncipc/transports/_ring/record.py",
    "asyncipc/transports/_ring/port.py",
    "asyncipc/transports/_ring/channel.py",
    "asyncipc/transports/_ring/link.py",
]

ext_modules = []
if os.environ.get("ASYNCIPC_COMPILE") == "1":
    from mypyc.build import mypycify  # mypy provides mypyc: pip install mypy

    # group_name puts mypyc's shared runtime library inside the package
    # (asyncipc/_mypyc__mypyc.*.so), not at the top of site-packages, so that an editable
    # install, which maps only the asyncipc package, finds it.
    ext_modules = mypycify(COMPILED, opt_level="3", group_name="asyncipc._mypyc")

setup(ext_modules=ext_modules)
