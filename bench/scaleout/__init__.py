"""The scale-out bench: what PgBouncer and a read replica cost, each against its baseline."""
