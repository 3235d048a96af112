"""The gRPC stubs of ``asyncipc.v1.Bus``: ``bus_pb2`` (messages) and ``bus_pb2_grpc``
(``BusStub``, the servicer), a public import path (``docs/grpc.md``)::

    from asyncipc.adapters.grpc.proto import bus_pb2, bus_pb2_grpc

``asyncipc/v1/bus.proto`` beside them is the service definition, shipped in the package so
that clients in other languages can be generated from an installed asyncipc.

Code generated from ``protos/asyncipc/v1/bus.proto`` by ``make proto``: do not edit.
``tests/test_grpc_proto.py`` fails when these files differ from what the generator
(``protos/generate.py``, with the grpcio-tools version pyproject.toml pins) writes.
"""
