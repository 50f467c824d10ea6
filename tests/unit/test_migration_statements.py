"""Splitting a migration file into statements: `;` ends a statement, `--` lines are dropped,
and a `;` inside a `$$`-quoted function body does not split it."""

from __future__ import annotations

from stalwart.store.migrations import available, statements


def test_plain_statements_split_on_semicolons_and_comments_are_dropped() -> None:
    sql = "-- a comment; with a semicolon\nCREATE TABLE a (x int);\n\nSELECT 1;\n"
    assert statements(sql) == ["CREATE TABLE a (x int)", "SELECT 1"]


def test_a_function_body_is_one_statement() -> None:
    sql = (
        "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$\n"
        "DECLARE x int;\nBEGIN\n  x := 1;\n  RETURN x;\nEND\n$$;\n"
        "SELECT f();"
    )
    body, call = statements(sql)
    assert body.startswith("CREATE FUNCTION f()") and body.endswith("END\n$$")
    assert "x := 1;" in body and "RETURN x;" in body
    assert call == "SELECT f()"


def test_every_shipped_migration_splits_into_statements() -> None:
    for package in ("stalwart.store.sqlite.migrations", "stalwart.store.postgres.migrations"):
        for version, name, sql in available(package):
            found = statements(sql)
            assert found, (version, name)
            assert all(s.count("$$") % 2 == 0 for s in found), (version, name)
    functions = [
        s
        for _, _, sql in available("stalwart.store.postgres.migrations")
        for s in statements(sql)
        if "FUNCTION" in s
    ]
    assert [f.split("(", 1)[0].rsplit(" ", 1)[1] for f in functions] == [
        "stalwart_agent_settle",
        "stalwart_agent_call_end",
    ]
