"""The worker process: claim loop, heartbeats, reaper, graceful shutdown."""

from stalwart.worker.worker import Worker, default_worker_id

__all__ = ["Worker", "default_worker_id"]
