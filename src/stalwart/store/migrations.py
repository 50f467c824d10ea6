"""What both backends' migrations share: finding the shipped SQL files, splitting them into
statements, and comparing what a database has applied with what this Stalwart ships."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from stalwart.errors import SchemaTooNewError
from stalwart.store.base import MigrationStatus
from stalwart.types import redact_url


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


@lru_cache(maxsize=8)
def newest(package: str) -> int:
    """The newest migration version this Stalwart ships in `package` (0 if none)."""
    return max((v for v, _, _ in available(package)), default=0)


def refuse_newer(database_version: int | None, package: str, url: str) -> None:
    """Raise `SchemaTooNewError` when the database at `url` has a migration newer than any this
    Stalwart ships: a newer Stalwart wrote it, and this code does not know what its migrations
    changed, so it must neither read nor write it."""
    code_version = newest(package)
    if database_version is None or database_version <= code_version:
        return
    raise SchemaTooNewError(
        f"the database at {redact_url(url)} is at schema version {database_version}, newer "
        f"than this Stalwart knows (schema version {code_version}): a newer Stalwart migrated "
        f"it, and this one must neither read nor write it. Upgrade Stalwart to a release that "
        f"knows schema version {database_version}, or point --database-url "
        "(STALWART_DATABASE_URL) at another database. Nothing was written",
        database_version=database_version,
        code_version=code_version,
        field="database_url",
        fix=f"upgrade Stalwart to a release that knows schema version {database_version}, "
        "or use another database",
    )


def status(applied: list[tuple[int, str, float]], package: str, url: str) -> MigrationStatus:
    """Applied and pending versions; a database newer than this Stalwart is refused."""
    done = {v for v, _, _ in applied}
    refuse_newer(max(done, default=None), package, url)
    pending = [(v, n) for v, n, _ in available(package) if v not in done]
    return MigrationStatus(applied=applied, pending=pending)


def statements(sql: str) -> list[str]:
    """The statements of a migration file (`;`-separated; `--` comment lines dropped; a `;`
    inside a `$$`-quoted function body does not end its statement)."""
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    out, current, quoted = [], [], False
    for part in "\n".join(lines).split("$$"):
        if quoted:
            current.append(part)
        else:
            pieces = part.split(";")
            current.append(pieces[0])
            for piece in pieces[1:]:
                out.append("".join(current))
                current = [piece]
        current.append("$$")
        quoted = not quoted
    current.pop()  # the marker after the last part
    out.append("".join(current))
    return [s.strip() for s in out if s.strip()]
