"""Apps the worker subprocesses load (`--app tests.integration.apps.X:app`)."""
