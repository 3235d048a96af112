"""Adapters: servers that bridge other protocols onto a broker, so any language can join.

* :mod:`asyncipc.adapters.grpc`: ``grpc://host:port``, the ``asyncipc.v1.Bus`` gRPC
  service (``protos/asyncipc/v1/bus.proto``); also a client transport.
* :mod:`asyncipc.adapters.rest`: ``http://host:port``, the REST API on aiohttp (publish,
  request, Server-Sent Events, a WebSocket; ``docs/rest.md``); also a client transport.

An adapter registers its scheme with :func:`asyncipc.transports.register`, so that
``Broker.listen(url)`` serves it and, where it has one, ``asyncipc.connect(url)`` uses its
client. What comes in through an adapter is an ordinary participant of the bus. Adapters
are imported on first use of their scheme: ``import asyncipc`` does not load gRPC.
"""
