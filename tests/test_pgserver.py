"""The throwaway PostgreSQL machinery itself (tests/pgserver.py), without Stalwart's store."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import pytest
from tests.pgserver import PgServer, available, started


def _scalar(url: str, sql: str) -> object:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


def _prepare(url: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL)")
        conn.execute("INSERT INTO notes VALUES (1, 'from the template')")


@pytest.fixture(scope="module")
def notes_template(pg_server: PgServer) -> str:
    """A template holding one table with one row."""
    return pg_server.template(f"notes_{uuid.uuid4().hex[:8]}", _prepare)


def test_available_agrees_with_a_running_server(pg_server: PgServer) -> None:
    # Requesting pg_server makes this skip (or fail under CI=true) like the rest where
    # PostgreSQL cannot run; where it runs, available() must have said so.
    assert pg_server.running
    assert available() is None


def test_fresh_databases_are_isolated_clones(pg_server: PgServer, notes_template: str) -> None:
    first = pg_server.fresh_database(notes_template)
    second = pg_server.fresh_database(notes_template)
    try:
        assert first != second
        for url in (first, second):
            assert _scalar(url, "SELECT body FROM notes WHERE id = 1") == "from the template"

        with psycopg.connect(first) as conn:
            conn.execute("INSERT INTO notes VALUES (2, 'only in the first')")
        assert _scalar(first, "SELECT count(*) FROM notes") == 2
        assert _scalar(second, "SELECT count(*) FROM notes") == 1
    finally:
        pg_server.drop_database(first.rsplit("/", 1)[1])
        pg_server.drop_database(second.rsplit("/", 1)[1])


def test_template_is_built_once(pg_server: PgServer, notes_template: str) -> None:
    calls: list[str] = []
    assert pg_server.template(notes_template, calls.append) == notes_template
    assert calls == []


def test_failed_prepare_leaves_no_database(pg_server: PgServer) -> None:
    name = f"broken_{uuid.uuid4().hex[:8]}"

    def prepare(url: str) -> None:
        raise ValueError("migration failed")

    with pytest.raises(ValueError, match="migration failed"):
        pg_server.template(name, prepare)
    query = f"SELECT count(*) FROM pg_database WHERE datname = '{name}'"
    assert _scalar(pg_server.url(), query) == 0


def test_server_runs_fast_and_local(pg_server: PgServer) -> None:
    url = pg_server.url()
    assert _scalar(url, "SHOW fsync") == "off"
    # Kept on, so that a commit survives restart(mode="immediate").
    assert _scalar(url, "SHOW synchronous_commit") == "on"
    assert _scalar(url, "SHOW listen_addresses") == "127.0.0.1"
    assert _scalar(url, "SHOW max_connections") == "200"


def test_restart_keeps_data_and_port(pg_server: PgServer, pg_empty_url: str) -> None:
    with psycopg.connect(pg_empty_url) as conn:
        conn.execute("CREATE TABLE kept (v text)")
        conn.execute("INSERT INTO kept VALUES ('before restart')")
    port = pg_server.port

    pg_server.restart()
    assert pg_server.port == port
    assert _scalar(pg_empty_url, "SELECT v FROM kept") == "before restart"

    # An immediate stop is a crash of PostgreSQL: the committed row must survive recovery.
    with psycopg.connect(pg_empty_url) as conn:
        conn.execute("INSERT INTO kept VALUES ('before crash')")
    pg_server.restart(mode="immediate")
    assert pg_server.port == port
    assert _scalar(pg_empty_url, "SELECT count(*) FROM kept") == 2


def test_pg_empty_url_is_empty(pg_empty_url: str) -> None:
    query = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
    assert _scalar(pg_empty_url, query) == 0


def test_durable_server_and_cleanup(pg_server: PgServer) -> None:
    # A second server of its own; pg_server is requested only to skip where PostgreSQL can't run.
    with started(durable=True) as server:
        assert _scalar(server.url(), "SHOW fsync") == "on"
        assert _scalar(server.url(), "SHOW synchronous_commit") == "on"
        tmpdir = server.tmpdir
        assert tmpdir is not None
        postmaster_pid = int((server.datadir / "postmaster.pid").read_text().split()[0])
    assert not tmpdir.exists()
    status = Path(f"/proc/{postmaster_pid}/status")
    # Gone, or at most a zombie waiting for init to reap it (pg_ctl daemonizes the postmaster).
    assert not status.exists() or "State:\tZ" in status.read_text()
