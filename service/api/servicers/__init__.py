"""Thin gRPC servicers: validate, open a unit of work, call repositories, map, return."""
