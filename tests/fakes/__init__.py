"""Local stand-ins for external services, used by the test suite."""
