"""What both backends' migrations share: finding the shipped SQL files, splitting them into
statements, and comparing what a database has applied with what this Stalwart ships."""

from __future__ import annotations

from importlib import resources

from stalwart.errors import MigrationError
from stalwart.store.base import MigrationStatus


def available(package: str) -> list[tuple[int, str, str]]:
    """(version, name, sql) of every `NNNN_name.sql` in `package`, in order."""
    out = []
    for entry in resources.files(package).iterdir():
        name = entry.name
        if not name.endswith(".sql"):
            continue
        version = int(name.split("_", 1)[0])
        out.append((version, name[:-4], entry.read_text(encoding="utf-8")))
    return sorted(out)


def status(applied: list[tuple[int, str, float]], package: str) -> MigrationStatus:
    """Applied and pending versions; a database newer than this Stalwart is refused."""
    done = {v for v, _, _ in applied}
    known = available(package)
    newest = max((v for v, _, _ in known), default=0)
    if done and max(done) > newest:
        raise MigrationError(
            f"the database schema is at version {max(done)}, newer than this Stalwart knows "
            f"({newest}); upgrade Stalwart",
            database_version=max(done),
        )
    pending = [(v, n) for v, n, _ in known if v not in done]
    return MigrationStatus(applied=applied, pending=pending)


def statements(sql: str) -> list[str]:
    """The statements of a migration file (`;`-separated; `--` comment lines dropped)."""
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
