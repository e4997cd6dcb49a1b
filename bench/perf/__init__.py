"""The performance benchmark: unary RPC throughput against ceilings and a REST peer, under load."""
