"""Storage: the `Store` protocol and its backends, chosen by `database_url`."""

from __future__ import annotations

from stalwart.errors import ConfigurationError
from stalwart.settings import Settings
from stalwart.store.base import Completion, Heartbeat, MigrationStatus, NewJob, ReplanClaim, Store


def open_store(url: str, settings: Settings | None = None) -> Store:
    """Open the backend for `url`: `sqlite:///path` (embedded, one machine) or
    `postgresql://user:password@host:5432/db` (any number of machines)."""
    if url.startswith("sqlite:///"):
        from stalwart.store.sqlite.store import SqliteStore

        return SqliteStore(url, settings)
    if url.startswith(("postgresql://", "postgres://")):
        from stalwart.store.postgres.store import PostgresStore

        return PostgresStore(url, settings)
    scheme = url.split(":", 1)[0] if ":" in url else url
    raise ConfigurationError(
        f"database_url scheme {scheme!r} is not supported; use sqlite:///path/to/file.db or "
        "postgresql://user:password@host:5432/dbname",
        field="database_url",
    )


__all__ = [
    "Completion",
    "Heartbeat",
    "MigrationStatus",
    "NewJob",
    "ReplanClaim",
    "Store",
    "open_store",
]
