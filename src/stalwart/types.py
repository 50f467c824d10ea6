"""Small shared types: JSON values, ids, time and canonical hashing. Imports nothing of stalwart."""

from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import UTC, datetime
from typing import Any, TypeAlias

JSON: TypeAlias = Any
"""A value that `json.dumps` accepts: dict, list, str, int, float, bool or None."""

JSONObject: TypeAlias = dict[str, Any]


def epoch_now() -> float:
    """Seconds since the epoch, as the store keeps times."""
    return time.time()


def to_datetime(epoch: float | None) -> datetime | None:
    """An aware UTC datetime from stored epoch seconds."""
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def new_id(prefix: str) -> str:
    """A sortable, unique id: prefix, milliseconds since the epoch in base 36, 64 random bits."""
    millis = int(time.time() * 1000)
    return f"{prefix}_{_base36(millis)}{os.urandom(8).hex()}"


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while number:
        number, rem = divmod(number, 36)
        out = digits[rem] + out
    return out.rjust(9, "0")


def dumps(value: JSON) -> str:
    """Encode JSON compactly, once; refuses NaN and anything that is not plain JSON."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_hash(value: JSON) -> str:
    """A stable sha256 of a JSON value (sorted keys), used for plan, template and schema hashes."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def redact_url(url: str) -> str:
    """A database URL fit to print: its password replaced by ***."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    if ":" not in creds:
        return url
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
