"""Issue 6's performance benchmark: TaskService against a transport ceiling, a hand-tuned
asyncpg server and a FastAPI + SQLModel peer, at a fixed number of requests in flight.

Run it with `python -m bench perf` (`--help` for options); results land in bench/README.md.
"""
