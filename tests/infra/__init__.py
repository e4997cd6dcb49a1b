"""Real infrastructure for tests: PgBouncer, a PostgreSQL primary with a streaming standby."""
