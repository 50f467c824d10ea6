"""Tools: the registry, ToolContext, validation, timeouts and error classes."""

from stalwart.tools.context import StepCancelledError, ToolContext
from stalwart.tools.registry import ToolRegistry, ToolSpec

__all__ = ["StepCancelledError", "ToolContext", "ToolRegistry", "ToolSpec"]
