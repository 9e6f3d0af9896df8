"""Fixtures shared by the serving tests."""

from __future__ import annotations

import grpc
import pytest

from cluster.shell.proto import flotilla_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def stub(served):
    """A gRPC stub on the module's gateway (each module defines its own ``served`` fixture)."""
    channel = grpc.insecure_channel(served[0].address)
    yield pb_grpc.FlotillaStub(channel)
    channel.close()
