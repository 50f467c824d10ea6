"""`stalwart keys create|list|revoke` in a subprocess: the token is printed once on stdout and never
again, a listing never shows a secret, revoking works by name, and bad input is one line on
stderr with a non-zero exit. The key it makes works against a live server until revoked."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.api.conftest import Live

from stalwart import Client, Settings
from stalwart.domain.access import Principal, parse_token
from stalwart.errors import AuthenticationError
from stalwart.store import open_store

REPO = Path(__file__).resolve().parents[2]


def stalwart(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STALWART_")}
    return subprocess.run(
        [sys.executable, "-m", "stalwart.cli.main", "--database-url", db_url, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout


def authenticate(db_url: str, token: str) -> Principal:
    async def go() -> Principal:
        store = open_store(db_url, Settings(database_url=db_url))
        try:
            return await Client(store).authenticate(token)
        finally:
            await store.close()

    return asyncio.run(go())


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'keys.db'}"


def test_create_prints_the_token_once_on_stdout(db: str) -> None:
    done = stalwart(db, "keys", "create", "--tenant", "acme", "--role", "reviewer", "--name", "al")

    token = ok(done).strip()
    assert done.stdout == token + "\n", "stdout is the token alone, for scripts"
    parsed = parse_token(token)
    assert parsed is not None
    key_id, secret = parsed
    assert key_id in done.stderr and "not shown again" in done.stderr
    assert secret not in done.stderr
    assert authenticate(db, token) == Principal(key_id, "acme", "reviewer", "al")

    listed = ok(stalwart(db, "keys", "list")) + ok(stalwart(db, "--json", "keys", "list"))
    assert secret not in listed and token not in listed
    assert key_id[:10] in listed


def test_create_as_json_and_the_default_name(db: str) -> None:
    created = json.loads(ok(stalwart(db, "--json", "keys", "create", "--role", "admin")))

    assert (created["tenant_id"], created["role"]) == ("default", "admin")
    assert created["name"].startswith("admin-")
    assert "digest" not in created
    assert created["token"].startswith(created["prefix"])
    principal = authenticate(db, created["token"])
    assert (principal.key_id, principal.name) == (created["id"], created["name"])
    with_tenant = json.loads(
        ok(stalwart(db, "--tenant", "globex", "--json", "keys", "create", "--role", "operator"))
    )
    assert with_tenant["tenant_id"] == "globex"


def test_list_is_per_tenant_and_never_shows_a_secret(db: str) -> None:
    tokens = [
        ok(stalwart(db, "keys", "create", "--tenant", t, "--role", "submitter", "--name", n))
        for t, n in (("acme", "ci"), ("acme", "deploy"), ("globex", "ci"))
    ]

    everything: list[dict[str, Any]] = json.loads(ok(stalwart(db, "--json", "keys", "list")))
    acme = json.loads(ok(stalwart(db, "--tenant", "acme", "--json", "keys", "list")))
    table = ok(stalwart(db, "keys", "list"))

    assert [(k["tenant_id"], k["name"]) for k in everything] == [
        ("acme", "ci"),
        ("acme", "deploy"),
        ("globex", "ci"),
    ]
    assert [k["name"] for k in acme] == ["ci", "deploy"]
    for token in tokens:
        secret = token.strip().split("_", 2)[2]
        assert secret not in json.dumps(everything) and secret not in table
    assert {"token", "digest", "secret"}.isdisjoint(everything[0])


def test_revoke_by_name_and_what_a_revoked_key_answers(db: str) -> None:
    token = ok(
        stalwart(db, "keys", "create", "--tenant", "acme", "--role", "submitter", "--name", "ci")
    )
    ok(stalwart(db, "keys", "create", "--tenant", "globex", "--role", "submitter", "--name", "ci"))

    ambiguous = stalwart(db, "keys", "revoke", "ci")
    assert ambiguous.returncode == 1
    assert "--tenant" in ambiguous.stderr
    revoked = stalwart(db, "--tenant", "acme", "keys", "revoke", "ci")
    assert "revoked key" in ok(revoked) and "'acme'" in revoked.stdout
    with pytest.raises(AuthenticationError):
        authenticate(db, token.strip())

    assert [k["tenant_id"] for k in json.loads(ok(stalwart(db, "--json", "keys", "list")))] == [
        "globex"
    ]
    with_revoked = json.loads(ok(stalwart(db, "--json", "keys", "list", "--revoked")))
    assert [(k["tenant_id"], k["revoked_by"] is not None) for k in with_revoked] == [
        ("acme", True),
        ("globex", False),
    ]
    again = stalwart(db, "--tenant", "acme", "keys", "revoke", "ci")
    assert again.returncode == 1
    assert again.stderr.strip() == "error: no active key 'ci'"
    # Its name is free again.
    ok(stalwart(db, "keys", "create", "--tenant", "acme", "--role", "submitter", "--name", "ci"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--role", "root"],
            "error: role 'root' is not one of submitter, reviewer, operator, admin",
        ),
        (["--role", "admin", "--name", "taken"], "already has an active key named 'taken'"),
        (["--role", "admin", "--tenant", ""], "tenant must not be empty"),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_a_non_zero_exit(
    db: str, args: list[str], message: str
) -> None:
    ok(stalwart(db, "keys", "create", "--tenant", "acme", "--role", "admin", "--name", "taken"))

    done = stalwart(db, "keys", "create", "--tenant", "acme", *args)

    assert done.returncode != 0
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert message in lines[0]


def test_a_missing_role_is_a_usage_error(db: str) -> None:
    done = stalwart(db, "keys", "create", "--tenant", "acme")
    assert done.returncode == 2
    assert "--role" in done.stderr
    assert done.stdout == ""


def test_a_key_made_by_the_cli_works_on_the_server_until_revoked(live: Live) -> None:
    token = ok(
        stalwart(
            live.database_url,
            "keys",
            "create",
            "--tenant",
            "acme",
            "--role",
            "operator",
            "--name",
            "ops-cli",
        )
    ).strip()
    headers = {"Authorization": f"Bearer {token}"}

    assert httpx.get(f"{live.url}/v1/dlq", headers=headers).status_code == 200
    ok(stalwart(live.database_url, "--tenant", "acme", "keys", "revoke", "ops-cli"))
    refused = httpx.get(f"{live.url}/v1/dlq", headers=headers)
    assert refused.status_code == 401
    assert refused.json()["code"] == "unauthenticated"
