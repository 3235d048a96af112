"""Adapters: servers that bridge other protocols onto a broker, so any language can join.

* :mod:`asyncipc.adapters.grpc`: ``grpc://host:port``, the ``asyncipc.v1.Bus`` gRPC
  service (``protos/asyncipc/v1/bus.proto``); also a client transport. Needs the
  ``grpc`` extra: ``pip install 'asyncipc[grpc]'``.
* :mod:`asyncipc.adapters.rest`: ``http://host:port``, the REST API on aiohttp (publish,
  request, Server-Sent Events, a WebSocket; ``docs/rest.md``); also a client transport.
  Needs the ``http`` extra: ``pip install 'asyncipc[http]'``.
* :mod:`asyncipc.adapters.nats`: ``nats://h1:4222,h2:4222``, a client transport only: the
  Bus on a NATS server or cluster through nats-py (``docs/transports.md``, NATS). Needs
  the ``nats`` extra: ``pip install 'asyncipc[nats]'``.

An adapter registers its scheme with :func:`asyncipc.transports.register`, so that
``Broker.listen(url)`` serves it and, where it has one, ``asyncipc.connect(url)`` uses its
client. What comes in through an adapter is an ordinary participant of the bus. Adapters
are imported on first use of their scheme: ``import asyncipc`` does not load gRPC.
"""

from __future__ import annotations

from ..errors import ConfigurationError

__all__ = ["missing_extra"]


def missing_extra(
    schemes: str, adapter: str, extra: str, error: ModuleNotFoundError
) -> ConfigurationError:
    """The error an adapter's import guard raises when ``error`` says a package of its
    extra is not installed: what needs it, and the ``pip install`` line that adds it.

    A plain install leaves the adapters' packages out (pyproject.toml's extras), so this
    is what a user meets first after ``pip install asyncipc`` and a ``grpc://`` URL: it
    says which extra to add rather than which of its modules happened to be missing.
    """
    missing = error.name or str(error)
    return ConfigurationError(
        f"{schemes} needs the {adapter}'s packages: pip install 'asyncipc[{extra}]' "
        f"(missing module {missing!r})"
    )
