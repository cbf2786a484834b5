"""Built-in unroll plugins."""
