"""The error families, the HTTP status table, and the curated public exports."""

from __future__ import annotations

import importlib
import importlib.metadata

import pytest

import stalwart
import stalwart.errors as errors_module
from stalwart.errors import (
    AuthorizationError,
    BudgetExceeded,
    ConfigurationError,
    CriticalError,
    ErrorClass,
    InvalidArgumentsError,
    InvalidTransitionError,
    NonRetriableError,
    NotFoundError,
    PlanValidationError,
    QueueFull,
    RetryStep,
    SemanticError,
    StalwartError,
    StoreError,
    TemplateError,
    ToolError,
    TransientError,
    UsageError,
    error_for_status,
)
from stalwart.llm.gateway import InvalidOutputError
from stalwart.llm.types import ProviderError, class_for_status
from stalwart.tools.context import StepCancelledError


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, InvalidArgumentsError),
        (401, AuthorizationError),
        (403, AuthorizationError),
        (404, NonRetriableError),
        (405, NonRetriableError),
        (408, TransientError),
        (409, NonRetriableError),
        (410, NonRetriableError),
        (418, NonRetriableError),
        (422, InvalidArgumentsError),
        (429, TransientError),
        (500, TransientError),
        (502, TransientError),
        (503, TransientError),
        (504, TransientError),
        (599, TransientError),
    ],
)
def test_error_for_status(status: int, cls: type[ToolError]) -> None:
    error = error_for_status(status)
    assert type(error) is cls
    assert error.code == f"http_{status}"
    assert error.message == f"HTTP {status}"


def test_error_for_status_keeps_the_message_and_retry_after_of_transients() -> None:
    busy = error_for_status(429, "slow down", retry_after=7.5)
    assert (busy.message, busy.retry_after) == ("slow down", 7.5)
    assert error_for_status(503, retry_after=3).retry_after == 3
    assert error_for_status(403, retry_after=3).retry_after is None
    assert error_for_status(404, retry_after=3).retry_after is None


@pytest.mark.parametrize(
    ("cls", "error_class"),
    [
        (ToolError, ErrorClass.NON_RETRIABLE),
        (TransientError, ErrorClass.TRANSIENT),
        (RetryStep, ErrorClass.TRANSIENT),
        (NonRetriableError, ErrorClass.NON_RETRIABLE),
        (AuthorizationError, ErrorClass.AUTHORIZATION),
        (InvalidArgumentsError, ErrorClass.INVALID_ARGUMENTS),
        (SemanticError, ErrorClass.SEMANTIC),
        (CriticalError, ErrorClass.CRITICAL),
        (StepCancelledError, ErrorClass.CANCELLED),
    ],
)
def test_error_class_of_each_tool_error(cls: type[ToolError], error_class: ErrorClass) -> None:
    assert cls.error_class is error_class
    assert cls().error_class is error_class


def test_every_tool_error_subclass_is_covered() -> None:
    def subclasses(cls: type) -> set[type]:
        out = set(cls.__subclasses__())
        for sub in list(out):
            out |= subclasses(sub)
        return out

    covered = {
        TransientError,
        RetryStep,
        NonRetriableError,
        AuthorizationError,
        InvalidArgumentsError,
        SemanticError,
        CriticalError,
        StepCancelledError,
        BudgetExceeded,
        InvalidOutputError,
        ProviderError,
    }
    assert {c for c in subclasses(ToolError) if c.__module__.startswith("stalwart.")} <= covered


def test_error_class_values_are_the_stored_strings() -> None:
    assert [c.value for c in ErrorClass] == [
        "transient",
        "non_retriable",
        "authorization",
        "invalid_arguments",
        "semantic",
        "budget",
        "critical",
        "cancelled",
    ]
    assert ErrorClass.TRANSIENT == "transient"


def test_message_defaults_to_the_first_docstring_line() -> None:
    assert StalwartError().message == "Stalwart failed."
    assert str(QueueFull()) == "The tenant's queue is full; try again later."
    assert RetryStep().message == "Retry this step."
    assert NotFoundError("job j1 not found").message == "job j1 not found"


def test_fields_become_attributes() -> None:
    error = QueueFull("full", retry_after=4.0, depth=100)
    assert (error.retry_after, error.depth) == (4.0, 100)  # type: ignore[attr-defined]
    assert error.fields == {"retry_after": 4.0, "depth": 100}


def test_to_dict() -> None:
    error = InvalidTransitionError("nope", entity="job", current="completed", target="executing")
    assert error.to_dict() == {
        "error": "InvalidTransitionError",
        "message": "nope",
        "entity": "job",
        "current": "completed",
        "target": "executing",
    }
    assert NotFoundError().to_dict() == {"error": "NotFoundError", "message": "Not found."}


def test_tool_error_to_dict_and_attributes() -> None:
    error = TransientError("busy", code="http_503", retry_after=2.0, details={"host": "a"})
    assert (error.code, error.retry_after, error.details) == ("http_503", 2.0, {"host": "a"})
    assert error.to_dict() == {
        "error": "TransientError",
        "message": "busy",
        "code": "http_503",
        "retry_after": 2.0,
        "details": {"host": "a"},
    }
    assert ToolError().details == {}


def test_plan_validation_error_lists_every_problem() -> None:
    problems = [
        {"step": "fetch", "problem": "unknown tool 'x'"},
        {"step": "", "problem": "dependency cycle: a -> b -> a"},
    ]
    error = PlanValidationError(problems)
    assert error.problems == problems
    assert error.message == (
        "plan has 2 problem(s): fetch: unknown tool 'x'; <plan>: dependency cycle: a -> b -> a"
    )
    assert error.to_dict()["problems"] == problems
    assert PlanValidationError(problems, "custom").message == "custom"


def test_families() -> None:
    assert issubclass(TemplateError, ConfigurationError)
    assert issubclass(PlanValidationError, UsageError)
    assert issubclass(InvalidTransitionError, UsageError)
    assert issubclass(RetryStep, TransientError)
    assert issubclass(AuthorizationError, NonRetriableError)
    for family in (ConfigurationError, UsageError, StoreError, ToolError):
        assert issubclass(family, StalwartError)
    assert not issubclass(ToolError, UsageError)
    assert not issubclass(StoreError, (UsageError, ConfigurationError, ToolError))


def test_driver_errors_are_kept_as_cause() -> None:
    try:
        try:
            raise OSError("disk")
        except OSError as exc:
            raise StoreError("write failed") from exc
    except StoreError as err:
        assert isinstance(err.__cause__, OSError)


# -- curated exports, in the spirit of httpx's test_exported_members ------------------------


@pytest.mark.parametrize("module", [stalwart, errors_module], ids=lambda m: m.__name__)
def test_all_is_sorted_and_unique(module: object) -> None:
    names = module.__all__  # type: ignore[attr-defined]
    assert names == sorted(names)
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("module", [stalwart, errors_module], ids=lambda m: m.__name__)
def test_every_exported_name_is_importable(module: object) -> None:
    reloaded = importlib.import_module(module.__name__)  # type: ignore[attr-defined]
    for name in reloaded.__all__:
        assert hasattr(reloaded, name), name
        namespace: dict[str, object] = {}
        exec(f"from {reloaded.__name__} import {name}", namespace)
        assert namespace[name] is getattr(reloaded, name)


def test_exported_members_are_stalwarts_own() -> None:
    for name in stalwart.__all__:
        if name.startswith("__"):
            continue
        member = getattr(stalwart, name)
        assert member.__module__.startswith("stalwart"), name


def test_every_public_error_is_exported_from_errors() -> None:
    public = {
        name
        for name, value in vars(errors_module).items()
        if isinstance(value, type) and issubclass(value, Exception) and not name.startswith("_")
    }
    assert public <= set(errors_module.__all__)


def test_version_matches_the_installed_distribution() -> None:
    assert stalwart.__version__ == importlib.metadata.version("stalwart")


def test_error_classes_of_the_llm_errors() -> None:
    refused = BudgetExceeded("over", budget="job:j1", limit=0.1, spent=0.09, asked=0.02)
    assert refused.error_class is ErrorClass.BUDGET
    assert refused.details["budget"] == "job:j1"
    assert InvalidOutputError("bad json").error_class is ErrorClass.SEMANTIC
    outage = ProviderError("down", error_class="transient", status=503)
    assert outage.error_class is ErrorClass.TRANSIENT and outage.falls_back
    denied = ProviderError("no", error_class=class_for_status(401), status=401)
    assert denied.error_class is ErrorClass.AUTHORIZATION and not denied.falls_back
    assert class_for_status(429) is ErrorClass.TRANSIENT
    assert class_for_status(529) is ErrorClass.TRANSIENT
    assert class_for_status(400) is ErrorClass.NON_RETRIABLE


# -- the one error shape --------------------------------------------------------------------------


def test_error_body_is_the_one_shape_with_code_and_fix() -> None:
    error = QueueFull("full", retry_after=4.0, depth=100, tenant_id="acme")
    assert errors_module.error_body(error) == {
        "code": "queue_full",
        "message": "full",
        "field": None,
        "fix": "retry after `details.retry_after` seconds, or raise max_queue_depth",
        "details": {"retry_after": 4.0, "depth": 100, "tenant_id": "acme"},
    }


def test_error_body_takes_field_and_fix_out_of_the_details() -> None:
    error = UsageError("bad key", field="idempotency_key", fix="send a shorter key", size=(1, 2))
    body = errors_module.error_body(error)
    assert (body["code"], body["field"], body["fix"]) == (
        "bad_request",
        "idempotency_key",
        "send a shorter key",
    )
    assert body["details"] == {"size": [1, 2]}


def test_error_codes_pick_the_most_specific_class() -> None:
    assert errors_module.error_code(errors_module.SchemaTooNewError("x"))[0] == "schema_too_new"
    assert errors_module.error_code(errors_module.MigrationError("x"))[0] == "migration_failed"
    assert errors_module.error_code(errors_module.StoreUnavailableError())[0] == "unavailable"
    assert errors_module.error_code(StoreError())[0] == "store_error"
    assert errors_module.error_code(errors_module.UnknownWorkflowError())[0] == "unknown_workflow"
    assert errors_module.error_code(TemplateError())[0] == "configuration_error"
    assert errors_module.error_code(StalwartError())[0] == "internal"
    for cls, code, fix in errors_module.ERROR_CODES:
        assert errors_module.error_code(cls.__new__(cls))[0] == code, cls
        assert fix and code == code.lower()


def test_every_http_status_row_has_a_code_of_its_own() -> None:
    from stalwart.api.errors import ERROR_TABLE

    for cls, _status in ERROR_TABLE:
        assert errors_module.error_code(cls.__new__(cls))[0] != "internal", cls
