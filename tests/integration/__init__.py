"""Integration tests: real SQLite files, real worker processes."""
