"""Repositories: every SQL statement the service runs lives in this package."""
