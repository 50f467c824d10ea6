"""The engine: executes one step at a time through the store; evaluation, approvals, replans."""

from stalwart.engine.executor import Executor

__all__ = ["Executor"]
