"""Benchmarks: asyncipc against nats-py, pyzmq and redis-py, in the same run.

``python -m benchmarks.run`` is the entry point; see ``benchmarks/README.md``.

- ``_procs``: starting, probing and stopping processes (servers and client workers).
- ``_systems``: how each system's broker is started and which worker module drives it.
- ``_cases``: the cases (pub/sub, request/reply, fan-out) as process choreographies.
- ``_report``: the printed tables and the JSON file.
- ``workers/``: one client module per system, run as separate processes.
"""
