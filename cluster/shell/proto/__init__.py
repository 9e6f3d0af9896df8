"""flotilla's gRPC API: ``flotilla.proto`` and its committed stubs (see :mod:`cluster.shell.proto.build`)."""
