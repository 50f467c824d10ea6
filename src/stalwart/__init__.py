"""Stalwart: a durable runtime for production LLM agents.

Define tools and workflows on an `App`, submit jobs with a `Client`, run them with a `Worker`.
"""

from stalwart.app import App
from stalwart.client import Client, Submitted
from stalwart.domain.limits import Breaker
from stalwart.domain.plans import ReviewOption, ReviewSpec, StepSpec, Template
from stalwart.domain.retry import RetryPolicy
from stalwart.domain.states import JobStatus, StepStatus
from stalwart.errors import (
    AuthorizationError,
    CriticalError,
    InvalidArgumentsError,
    NonRetriableError,
    RetryStep,
    SemanticError,
    StalwartError,
    TransientError,
    error_for_status,
)
from stalwart.planning.workflows import ApprovalPolicy, Budget, Workflow
from stalwart.settings import Settings
from stalwart.tools.context import ToolContext
from stalwart.worker.worker import Worker

__version__ = "0.1.0"

__all__ = [
    "App",
    "ApprovalPolicy",
    "AuthorizationError",
    "Breaker",
    "Budget",
    "Client",
    "CriticalError",
    "InvalidArgumentsError",
    "JobStatus",
    "NonRetriableError",
    "RetryPolicy",
    "RetryStep",
    "ReviewOption",
    "ReviewSpec",
    "SemanticError",
    "Settings",
    "StalwartError",
    "StepSpec",
    "StepStatus",
    "Submitted",
    "Template",
    "ToolContext",
    "TransientError",
    "Worker",
    "Workflow",
    "__version__",
    "error_for_status",
]
