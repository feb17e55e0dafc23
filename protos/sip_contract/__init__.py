"""What the worker, the operator and the tests agree on beyond the gRPC wire: see `status`."""
