"""Real infrastructure for tests: server processes, nginx, PgBouncer, a PostgreSQL primary
with a streaming standby, ports."""
