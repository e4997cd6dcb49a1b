"""Pagination benchmark for TaskService: seeding, page latency, streaming and search figures.

Run it with `make bench` or `python -m bench --help`; results land in bench/README.md.
"""
