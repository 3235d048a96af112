"""Client workers, one module per system, each run as its own process.

``python -m benchmarks.workers.<system>_w <role> --url URL ...`` with roles ``pub``,
``sub``, ``responder`` and ``requester``; ``asyncipc_broker`` and ``zmq_proxy`` are the
broker processes of asyncipc and ZeroMQ (NATS and Redis bring their own servers).
They talk to the orchestrator with JSON lines on stdout and commands on stdin
(see ``_common``).
"""
