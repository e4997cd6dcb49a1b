"""The pagination benchmark: keyset pages against OFFSET, StreamTasks against asyncpg, searches."""
