"""dspy-registry."""
