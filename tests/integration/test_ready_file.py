"""`stalwart worker --ready-file`: readiness that does not hang on the log level. A worker run
as the benchmarks run it (`--log-level warning`, stderr a file, so its logs are JSON and carry no
INFO line) still says when it is ready, and takes the signal back when it drains."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from tests.integration.conftest import Workers


def test_a_quiet_worker_says_it_is_ready_in_its_ready_file(
    tmp_path: Path, workers: Workers, db_url: str
) -> None:
    ready = tmp_path / "worker-quiet.ready"
    ready.write_text('{"pid": 1}\n')  # left by an earlier life: not this worker's readiness
    worker = workers.start(db_url, "limits_app", name="quiet", args=["--log-level", "warning"])
    assert worker.ready_file == ready

    assert worker.wait_ready(60), worker.output()
    body = json.loads(ready.read_text())
    assert body["worker"] == "w0-quiet" and body["pid"] == worker.pid
    # The log level really was warning: no start-up line the harness could have waited for.
    assert "worker_ready" not in worker.output() and "worker started" not in worker.output()

    worker.signal(signal.SIGTERM)
    assert worker.stop(60) == 0, worker.output()
    assert not ready.exists()


def test_a_ready_file_in_a_missing_directory_is_refused_before_start(
    tmp_path: Path, workers: Workers, db_url: str
) -> None:
    missing = tmp_path / "nowhere" / "ready"
    worker = workers.start(db_url, "limits_app", args=["--ready-file", str(missing)])
    assert worker.proc.wait(60) != 0
    assert "does not exist" in worker.output() and "nowhere" in worker.output()
    assert not missing.exists()
