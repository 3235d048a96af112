"""The ZeroMQ "broker": ``zmq.proxy`` between two bound ``ipc://`` sockets.

``python -m benchmarks.workers.zmq_proxy pubsub|reqrep FRONT_URL BACK_URL``: pubsub is
XSUB (publishers connect to FRONT) to XPUB (subscribers connect to BACK); reqrep is ROUTER
(requesters) to DEALER (responders). ``zmq.proxy`` runs in C, like nats-server and
redis-server are native code; there is no event loop here, so no uvloop either.
SIGTERM ends it (the default action); the orchestrator removes the socket files.
"""

from __future__ import annotations

import sys

import zmq

PATTERNS = {"pubsub": (zmq.XSUB, zmq.XPUB), "reqrep": (zmq.ROUTER, zmq.DEALER)}


def main(argv: list[str]) -> None:
    pattern, front_url, back_url = argv
    front_kind, back_kind = PATTERNS[pattern]
    ctx = zmq.Context()
    front, back = ctx.socket(front_kind), ctx.socket(back_kind)
    for sock in (front, back):
        # Unbounded, as in the clients: a proxy at its high-water mark drops PUB/SUB
        # traffic instead of slowing the publisher down.
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
    front.bind(front_url)
    back.bind(back_url)
    print("ready", front_url, back_url, flush=True)
    zmq.proxy(front, back)


if __name__ == "__main__":
    main(sys.argv[1:])
