"""A worker process's ready file (`stalwart worker --ready-file PATH`): readiness that does not
depend on the log level or format, for probes, supervisors and scripts.

The file appears, whole (written beside it, then renamed), once the worker has migrated its
store, registered and taken back its earlier life's leases, just before it starts claiming. It
holds one JSON object naming the worker (`worker`, `host`, `pid`, `ready_at`). It goes away when
the worker begins to drain and, at the latest, when it exits. A worker killed with SIGKILL
cannot remove it: `pid` says whose it is, and the next start with the same path replaces it.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from stalwart.errors import UsageError


def ready_file_check(path: Path) -> None:
    """Before start-up: clear a file left by an earlier life (so nobody takes it for this one)
    and refuse a path that cannot be written, before anything is registered."""
    if not path.parent.is_dir():
        raise UsageError(
            f"--ready-file {path}: directory {path.parent} does not exist; create it first"
        )
    if path.is_dir():
        raise UsageError(f"--ready-file {path}: is a directory; name a file")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def ready_file_write(path: Path, **fields: Any) -> None:
    """Write the ready file atomically: a reader sees all of it or nothing."""
    body = json.dumps({**fields, "pid": os.getpid(), "ready_at": time.time()}) + "\n"
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        scratch.write_text(body, encoding="utf-8")
        os.replace(scratch, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            scratch.unlink()
        raise UsageError(f"--ready-file {path}: cannot write it: {exc}") from None


def ready_file_remove(path: Path) -> None:
    """Remove the ready file if it is still this process's (another may have replaced it)."""
    try:
        owner = json.loads(path.read_text(encoding="utf-8")).get("pid")
    except (OSError, ValueError, AttributeError):
        return
    if owner == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
