"""What every benchmark shares: configuration, database and seeding, servers, streams, reports."""
