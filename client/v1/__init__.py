"""Generated protobuf and gRPC stubs for dspy_registry.v1 (`make proto` writes them)."""
