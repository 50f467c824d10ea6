"""Who may do what: API keys, roles and the permissions each role grants. Plain data and pure
functions; the store keeps the keys (hashed), the API checks the permissions.

A key looks like `stw_<key id>_<secret>`. The key id (public, in lists and logs) finds the row;
the secret (32 random bytes) is stored only as a SHA-256 digest and compared in constant time.
A plain digest suffices for a random 256-bit secret: there is nothing to guess by brute force,
so a slow password hash would only cost time on every request (decision 0024).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from stalwart.domain.records import json_ready

TOKEN_PREFIX = "stw"
KEY_ID_PREFIX = "key"


class Role(StrEnum):
    """What a key is for."""

    SUBMITTER = "submitter"
    REVIEWER = "reviewer"
    OPERATOR = "operator"
    ADMIN = "admin"


class Permission(StrEnum):
    """One thing a caller may do, always within its own tenant."""

    READ = "read"  # jobs, their steps, events, plans and model calls
    SUBMIT = "submit"  # new jobs, through the API or a webhook
    CANCEL = "cancel"
    REVIEW_READ = "review:read"
    REVIEW_DECIDE = "review:decide"
    DLQ_READ = "dlq:read"
    DLQ_REDRIVE = "dlq:redrive"


P = Permission
GRANTS: dict[Role, frozenset[Permission]] = {
    # Services that send work: submit, follow and cancel their jobs; never decide reviews.
    Role.SUBMITTER: frozenset({P.READ, P.SUBMIT, P.CANCEL}),
    # People who approve risky steps: read what they decide on; never submit.
    Role.REVIEWER: frozenset({P.READ, P.REVIEW_READ, P.REVIEW_DECIDE}),
    # People who watch queues: see everything, cancel and redrive; decisions stay with reviewers.
    Role.OPERATOR: frozenset({P.READ, P.CANCEL, P.REVIEW_READ, P.DLQ_READ, P.DLQ_REDRIVE}),
    Role.ADMIN: frozenset(Permission),
}


def grants(role: str, permission: Permission) -> bool:
    """True when `role` carries `permission`."""
    try:
        return permission in GRANTS[Role(role)]
    except ValueError:
        return False


def roles_with(permission: Permission) -> list[str]:
    """The roles that carry `permission`, for error messages."""
    return [r.value for r, perms in GRANTS.items() if permission in perms]


@dataclass(slots=True)
class KeyRecord:
    """An API key as listed: never its secret."""

    id: str
    tenant_id: str
    name: str
    role: str
    created: float
    created_by: str
    last_used: float | None = None
    revoked: float | None = None
    revoked_by: str | None = None

    @property
    def active(self) -> bool:
        """Not revoked."""
        return self.revoked is None

    @property
    def prefix(self) -> str:
        """The public start of the token, enough to recognise a key in a list."""
        return f"{TOKEN_PREFIX}_{self.id.removeprefix(KEY_ID_PREFIX + '_')}_"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with ISO times."""
        out = json_ready(self, ("created", "last_used", "revoked"))
        out["prefix"] = self.prefix
        return out


@dataclass(slots=True)
class NewKey:
    """A key to store: the record and the digest of its secret."""

    record: KeyRecord
    digest: str


@dataclass(slots=True)
class CreatedKey:
    """A key just created: its record and the token, which is shown this once."""

    record: KeyRecord
    token: str


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller an API key authenticated: its tenant, role and name (the audit actor)."""

    key_id: str
    tenant_id: str
    role: str
    name: str

    def can(self, permission: Permission) -> bool:
        """True when this caller's role carries `permission`."""
        return grants(self.role, permission)


def new_key(
    key_id: str, tenant_id: str, name: str, role: Role, *, now: float, created_by: str
) -> tuple[NewKey, str]:
    """A fresh key: what to store, and the token to show once."""
    secret = secrets.token_urlsafe(32)
    token = f"{TOKEN_PREFIX}_{key_id.removeprefix(KEY_ID_PREFIX + '_')}_{secret}"
    record = KeyRecord(
        id=key_id,
        tenant_id=tenant_id,
        name=name,
        role=role.value,
        created=now,
        created_by=created_by,
    )
    return NewKey(record, digest(key_id, secret)), token


def parse_token(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed token, else None."""
    parts = token.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or not parts[1] or not parts[2]:
        return None
    if not parts[1].isalnum():
        return None
    return f"{KEY_ID_PREFIX}_{parts[1]}", parts[2]


def digest(key_id: str, secret: str) -> str:
    """The stored form of a secret: SHA-256 over the key id and the secret."""
    return hashlib.sha256(f"{key_id}:{secret}".encode()).hexdigest()


def matches(stored_digest: str, key_id: str, secret: str) -> bool:
    """Compare a presented secret with the stored digest in constant time."""
    return hmac.compare_digest(stored_digest, digest(key_id, secret))
