"""API keys and roles: the token format, the stored digest and its constant-time check, and what
each role may do."""

from __future__ import annotations

import hmac

import pytest

from stalwart.domain import access
from stalwart.domain.access import (
    GRANTS,
    Permission,
    Principal,
    Role,
    digest,
    grants,
    matches,
    new_key,
    parse_token,
    roles_with,
)

P = Permission


def test_a_new_key_token_parses_back_to_its_id_and_secret() -> None:
    stored, token = new_key("key_0abc123", "acme", "ci", Role.SUBMITTER, now=10.0, created_by="t")

    assert token.startswith("stw_0abc123_")
    parsed = parse_token(token)
    assert parsed is not None
    key_id, secret = parsed
    assert key_id == "key_0abc123"
    assert len(secret) >= 40  # 32 random bytes, URL-safe base64
    assert stored.digest == digest(key_id, secret)
    assert secret not in stored.digest
    record = stored.record
    assert (record.id, record.tenant_id, record.name, record.role) == (
        "key_0abc123",
        "acme",
        "ci",
        "submitter",
    )
    assert (record.created, record.created_by, record.active) == (10.0, "t", True)
    assert token.startswith(record.prefix) and record.prefix == "stw_0abc123_"


def test_every_new_key_has_its_own_secret() -> None:
    tokens = {new_key("key_a1", "t", "n", Role.ADMIN, now=0, created_by="t")[1] for _ in range(20)}
    assert len(tokens) == 20


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("stw_abc_secret", ("key_abc", "secret")),
        ("  stw_abc_secret \n", ("key_abc", "secret")),
        ("stw_abc_sec_ret-_", ("key_abc", "sec_ret-_")),  # URL-safe secrets hold "_" and "-"
    ],
)
def test_parse_token(token: str, expected: tuple[str, str]) -> None:
    assert parse_token(token) == expected


@pytest.mark.parametrize(
    "token",
    [
        "",
        "stw",
        "stw_",
        "stw_abc",
        "stw_abc_",
        "stw__secret",
        "sk_abc_secret",
        "STW_abc_secret",
        "stw_ab-c_secret",
        "stw_ab.c_secret",
        "Bearer stw_abc_secret",
        "key_abc_secret",
    ],
)
def test_a_malformed_token_is_rejected(token: str) -> None:
    assert parse_token(token) is None


def test_the_digest_binds_the_key_id_and_the_secret() -> None:
    value = digest("key_a", "s3cret")
    assert value == digest("key_a", "s3cret")
    assert len(value) == 64 and int(value, 16) >= 0
    assert value != digest("key_b", "s3cret")
    assert value != digest("key_a", "s3creT")
    assert "s3cret" not in value


def test_matches_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    stored = digest("key_a", "right")
    calls: list[tuple[object, object]] = []

    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(access.hmac, "compare_digest", spy)

    assert matches(stored, "key_a", "right")
    assert not matches(stored, "key_a", "wrong")
    assert not matches(stored, "key_b", "right")
    assert len(calls) == 3
    assert calls[0] == (stored, stored)


# Written out, not read from GRANTS: what each role may do.
EXPECTED_GRANTS = {
    "submitter": {"read", "submit", "cancel"},
    "reviewer": {"read", "review:read", "review:decide"},
    "operator": {"read", "cancel", "review:read", "dlq:read", "dlq:redrive"},
    "admin": {
        "read",
        "submit",
        "cancel",
        "review:read",
        "review:decide",
        "dlq:read",
        "dlq:redrive",
    },
}


@pytest.mark.parametrize("role", list(EXPECTED_GRANTS))
@pytest.mark.parametrize("permission", list(Permission))
def test_grants(role: str, permission: Permission) -> None:
    assert grants(role, permission) is (permission.value in EXPECTED_GRANTS[role])


def test_roles_and_permissions_are_the_documented_ones() -> None:
    assert [r.value for r in Role] == ["submitter", "reviewer", "operator", "admin"]
    assert {p.value for p in Permission} == EXPECTED_GRANTS["admin"]
    assert set(GRANTS) == set(Role)


@pytest.mark.parametrize("role", ["", "root", "Admin", "ADMIN", "submitters"])
def test_an_unknown_role_grants_nothing(role: str) -> None:
    assert not any(grants(role, p) for p in Permission)
    assert not Principal("key_a", "acme", role, "x").can(P.READ)


@pytest.mark.parametrize(
    ("permission", "roles"),
    [
        (P.READ, ["submitter", "reviewer", "operator", "admin"]),
        (P.SUBMIT, ["submitter", "admin"]),
        (P.CANCEL, ["submitter", "operator", "admin"]),
        (P.REVIEW_READ, ["reviewer", "operator", "admin"]),
        (P.REVIEW_DECIDE, ["reviewer", "admin"]),
        (P.DLQ_READ, ["operator", "admin"]),
        (P.DLQ_REDRIVE, ["operator", "admin"]),
    ],
)
def test_roles_with(permission: Permission, roles: list[str]) -> None:
    assert roles_with(permission) == roles


def test_a_principal_can_what_its_role_grants() -> None:
    reviewer = Principal("key_a", "acme", "reviewer", "alice")
    submitter = Principal("key_b", "acme", "submitter", "ci")

    assert reviewer.can(P.REVIEW_DECIDE) and not reviewer.can(P.SUBMIT)
    assert submitter.can(P.SUBMIT) and not submitter.can(P.REVIEW_DECIDE)
    assert not submitter.can(P.DLQ_READ)
    with pytest.raises(AttributeError):
        reviewer.role = "admin"  # type: ignore[misc]


def test_a_listed_key_never_shows_its_secret() -> None:
    stored, token = new_key("key_0abc", "acme", "ci", Role.OPERATOR, now=0.0, created_by="t")
    listed = stored.record.to_dict()

    secret = token.split("_", 2)[2]
    assert secret not in str(listed) and stored.digest not in str(listed)
    assert listed["prefix"] == "stw_0abc_"
    assert listed["created_at"] == "1970-01-01T00:00:00+00:00"
    assert listed["last_used_at"] is None and listed["revoked_at"] is None
    assert set(listed) == {
        "id",
        "tenant_id",
        "name",
        "role",
        "prefix",
        "created_at",
        "created_by",
        "last_used_at",
        "revoked_at",
        "revoked_by",
    }
