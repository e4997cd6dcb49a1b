"""Real infrastructure for tests: server processes, nginx in front of them, ports."""
