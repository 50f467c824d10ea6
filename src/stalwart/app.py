"""`App`: settings and registries. Tools with `@app.tool`, workflows with `app.workflow(...)`;
`app.client()` and `app.worker()` put them to work on the configured store."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from pydantic import BaseModel

from stalwart.domain.limits import Breaker, LimitSpec, parse_rate, tenant_key, tool_key
from stalwart.domain.plans import Template
from stalwart.domain.retry import RetryPolicy
from stalwart.errors import TemplateError, WorkflowDefinitionError
from stalwart.planning.planner import TemplatePlanner
from stalwart.planning.templates import load_template, template_from_data
from stalwart.planning.validation import PlanLimits
from stalwart.planning.workflows import (
    DEFAULT_MAX_REPLANS,
    ApprovalPolicy,
    Budget,
    Workflow,
)
from stalwart.settings import Settings
from stalwart.store import Store, open_store
from stalwart.tools.registry import ReconcileFunction, RiskLevel, ToolFunction, ToolRegistry

if TYPE_CHECKING:
    from stalwart.client import Client
    from stalwart.engine.executor import Executor
    from stalwart.worker.worker import Worker

TemplateSource = Template | str | Path | dict[str, Any]


class App:
    """Settings plus the tools and workflows of one deployment.

    ```python
    app = App()

    @app.tool(timeout=10, idempotent=True)
    async def fetch_profile(args: ProfileArgs, ctx: ToolContext) -> Profile: ...

    app.workflow("onboarding", input=OnboardingInput, templates=["onboarding.yaml"])
    ```
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        on_review_escalated: Callable[..., Any] | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self.tools = ToolRegistry()
        self.workflows: dict[str, Workflow] = {}
        self.on_review_escalated = on_review_escalated
        self.limits: dict[str, LimitSpec] = {}
        self._store: Store | None = None

    # -- definitions ------------------------------------------------------------------------------

    @overload
    def tool(self, fn: ToolFunction) -> ToolFunction: ...

    @overload
    def tool(
        self,
        fn: None = None,
        *,
        name: str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        risk: RiskLevel = "low",
        idempotent: bool | None = None,
        reconcile: ReconcileFunction | None = None,
        description: str | None = None,
        concurrency: int | None = None,
        rate_limit: str | float | None = None,
        burst: float | None = None,
        breaker: Breaker | None = None,
    ) -> Callable[[ToolFunction], ToolFunction]: ...

    def tool(
        self,
        fn: ToolFunction | None = None,
        *,
        name: str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        risk: RiskLevel = "low",
        idempotent: bool | None = None,
        reconcile: ReconcileFunction | None = None,
        description: str | None = None,
        concurrency: int | None = None,
        rate_limit: str | float | None = None,
        burst: float | None = None,
        breaker: Breaker | None = None,
    ) -> Any:
        """Register an async tool `(args: Model, ctx: ToolContext) -> Model`.

        `idempotent` must be declared: True if running it twice is harmless, or False, with a
        `reconcile(args, ctx) -> Result | None` that finds out whether an interrupted call took
        effect. `risk="high"` tools need approval under the default approval policy.

        Limits shared by every worker: `concurrency` (at most this many of its steps running
        at once, across all workers), `rate_limit` (`"20/s"`, `"600/min"`; a token bucket of
        `burst` tokens, one second's worth by default) and `breaker` (open after N failures in
        a window, one probe after a cool-down). Steps a limit holds back wait, ready; they do
        not fail and use up no attempt.
        """

        def register(func: ToolFunction) -> ToolFunction:
            tool_name = name or func.__name__
            spec = LimitSpec(
                tool_key(tool_name),
                concurrency=concurrency,
                rate=parse_rate(rate_limit) if rate_limit is not None else None,
                burst=burst,
                breaker=breaker,
            )
            self.tools.register(
                func,
                name=name,
                timeout=timeout,
                retry=retry,
                risk=risk,
                idempotent=idempotent,
                reconcile=reconcile,
                description=description,
            )
            self.limits[spec.key] = spec
            return func

        return register(fn) if fn is not None else register

    def tenant_limit(
        self,
        tenant_id: str,
        *,
        concurrency: int | None = None,
        rate_limit: str | float | None = None,
        burst: float | None = None,
    ) -> LimitSpec:
        """Limit one tenant's steps across all workers: at most `concurrency` running at once,
        at most `rate_limit` started (`"10/s"`)."""
        spec = LimitSpec(
            tenant_key(tenant_id),
            concurrency=concurrency,
            rate=parse_rate(rate_limit) if rate_limit is not None else None,
            burst=burst,
        )
        self.limits[spec.key] = spec
        return spec

    def workflow(
        self,
        name: str,
        *,
        input: type[BaseModel],
        templates: Sequence[TemplateSource],
        budget: Budget | None = None,
        max_replans: int = DEFAULT_MAX_REPLANS,
        approval: ApprovalPolicy | None = None,
        allowed_tools: Sequence[str] | None = None,
        description: str = "",
    ) -> Workflow:
        """Register a workflow. `templates` are `Template`s, dicts, or YAML paths (relative paths
        are looked up next to the calling module first)."""
        if name in self.workflows:
            raise WorkflowDefinitionError(f"workflow {name!r} is registered twice")
        if not (isinstance(input, type) and issubclass(input, BaseModel)):
            raise WorkflowDefinitionError(f"workflow {name!r}: input= must be a pydantic model")
        if not templates:
            raise WorkflowDefinitionError(f"workflow {name!r} needs at least one template")
        if max_replans < 0:
            raise WorkflowDefinitionError(f"workflow {name!r}: max_replans must be 0 or more")
        base = _caller_dir()
        loaded = tuple(_load(t, base) for t in templates)
        names = [t.name for t in loaded]
        if len(set(names)) != len(names):
            raise WorkflowDefinitionError(f"workflow {name!r} has two templates of the same name")
        workflow = Workflow(
            name=name,
            input_model=input,
            templates=loaded,
            budget=budget or Budget(),
            max_replans=max_replans,
            approval=approval or ApprovalPolicy(),
            allowed_tools=frozenset(allowed_tools) if allowed_tools is not None else None,
            description=description,
        )
        self.workflows[name] = workflow
        return workflow

    # -- putting it to work -----------------------------------------------------------------------

    def planner(self) -> TemplatePlanner:
        """The template planner over this app's tools, within the settings' limits."""
        s = self.settings
        return TemplatePlanner(
            self.tools,
            PlanLimits(
                max_steps=s.max_plan_steps,
                max_attempts=s.max_retry_attempts,
                max_retry_cap_seconds=s.max_retry_cap_seconds,
            ),
        )

    def store(self) -> Store:
        """The store at `settings.database_url` (opened once)."""
        if self._store is None:
            self._store = open_store(self.settings.database_url, self.settings)
        return self._store

    def client(self, store: Store | None = None) -> Client:
        """A `Client` over this app's store."""
        from stalwart.client import Client

        return Client(store or self.store(), app=self)

    def executor(self, store: Store | None = None) -> Executor:
        """An `Executor` over this app's tools and workflows."""
        from stalwart.engine.executor import Executor

        return Executor(
            store=store or self.store(),
            tools=self.tools,
            workflows=self.workflows,
            planner=self.planner(),
            settings=self.settings,
        )

    def worker(
        self,
        *,
        store: Store | None = None,
        concurrency: int | None = None,
        worker_id: str | None = None,
    ) -> Worker:
        """A `Worker` that runs this app's steps."""
        from stalwart.worker.worker import Worker

        store = store or self.store()
        return Worker(
            store=store,
            executor=self.executor(store),
            settings=self.settings,
            worker_id=worker_id,
            concurrency=concurrency,
            on_review_escalated=self.on_review_escalated,
            limits=list(self.limits.values()),
        )


def _caller_dir() -> Path | None:
    frame = inspect.stack()[2]
    module_file = frame.frame.f_globals.get("__file__")
    return Path(module_file).parent if module_file else None


def _load(source: TemplateSource, base: Path | None) -> Template:
    if isinstance(source, Template):
        return source
    if isinstance(source, dict):
        return template_from_data(source)
    path = Path(source)
    if not path.is_absolute() and base is not None and (base / path).exists():
        path = base / path
    if not path.exists():
        raise TemplateError(f"template file {source} not found", path=str(source))
    return load_template(path)
