"""`stalwart serve` as a user runs it: a subprocess that migrates, answers /readyz, runs jobs
with its in-process worker, and on SIGTERM drains that worker and exits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from tests.api.test_cli_keys import REPO, ok, stalwart

from stalwart.api.server import free_port


def wait_for(url: str, timeout: float = 30.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(url, timeout=2.0)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_serve_migrates_runs_jobs_and_drains_on_sigterm(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'serve.db'}"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STALWART_")}
    env["STALWART_POLL_INTERVAL_SECONDS"] = "0.05"
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stalwart.cli.main",
            "--app",
            "tests.api.server_app:app",
            "--database-url",
            db,
            "serve",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        ready = wait_for(f"{base}/readyz")
        assert ready.status_code == 200, ready.text  # it migrated the new database itself
        token = ok(stalwart(db, "keys", "create", "--tenant", "acme", "--role", "submitter"))
        auth = {"Authorization": f"Bearer {token.strip()}"}
        job = httpx.post(
            f"{base}/v1/jobs",
            json={"workflow": "order", "input": {"customer": "c", "amount": 5}},
            headers=auth,
        ).json()
        deadline = time.monotonic() + 30
        while (
            status := httpx.get(f"{base}/v1/jobs/{job['id']}", headers=auth).json()["status"]
        ) != "completed":
            assert time.monotonic() < deadline, status
            time.sleep(0.1)

        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    output = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in output, output
    # The in-process worker drained and recorded its stop.
    workers = json.loads(ok(stalwart(db, "--json", "workers", "list", "--all")))
    assert [w["status"] for w in workers] == ["stopped"], workers
