"""Stalwart: a durable runtime for production LLM agents.

Define tools and workflows on an `App`, submit jobs with a `Client`, run them with a `Worker`.
"""

from stalwart.app import App
from stalwart.client import Client, Submitted
from stalwart.domain.agents import AgentSpec
from stalwart.domain.limits import Breaker
from stalwart.domain.plans import (
    Check,
    Judge,
    LlmSpec,
    ReviewOption,
    ReviewSpec,
    StepSpec,
    Template,
)
from stalwart.domain.retry import RetryPolicy
from stalwart.domain.states import JobStatus, StepStatus
from stalwart.domain.webhooks import Webhook
from stalwart.errors import (
    AuthorizationError,
    BudgetExceeded,
    CriticalError,
    InvalidArgumentsError,
    NonRetriableError,
    RetryStep,
    SemanticError,
    StalwartError,
    TransientError,
    error_for_status,
)
from stalwart.llm.gateway import Gateway, LlmCall, LlmResult
from stalwart.llm.scripted import ScriptedModel
from stalwart.llm.types import Message, Model, ModelRequest, ModelResponse, ProviderError
from stalwart.planning.workflows import ApprovalPolicy, Budget, Workflow
from stalwart.settings import Settings
from stalwart.tools.context import ToolContext
from stalwart.tools.mcp import McpTool
from stalwart.worker.worker import Worker

__version__ = "0.1.0"

__all__ = [
    "AgentSpec",
    "App",
    "ApprovalPolicy",
    "AuthorizationError",
    "Breaker",
    "Budget",
    "BudgetExceeded",
    "Check",
    "Client",
    "CriticalError",
    "Gateway",
    "InvalidArgumentsError",
    "JobStatus",
    "Judge",
    "LlmCall",
    "LlmResult",
    "LlmSpec",
    "McpTool",
    "Message",
    "Model",
    "ModelRequest",
    "ModelResponse",
    "NonRetriableError",
    "ProviderError",
    "RetryPolicy",
    "RetryStep",
    "ReviewOption",
    "ReviewSpec",
    "ScriptedModel",
    "SemanticError",
    "Settings",
    "StalwartError",
    "StepSpec",
    "StepStatus",
    "Submitted",
    "Template",
    "ToolContext",
    "TransientError",
    "Webhook",
    "Worker",
    "Workflow",
    "__version__",
    "error_for_status",
]
