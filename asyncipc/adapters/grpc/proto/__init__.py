"""Code generated from ``protos/asyncipc/v1/bus.proto`` by ``make proto``: do not edit.

``tests/test_grpc_proto.py`` fails when these files differ from what the generator
(``protos/generate.py``, with the grpcio-tools version pyproject.toml pins) writes.
"""
