"""`App`: settings and registries. Tools with `@app.tool`, workflows with `app.workflow(...)`;
`app.client()` and `app.worker()` put them to work on the configured store."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

from pydantic import BaseModel

from stalwart.domain.limits import Breaker, LimitSpec, parse_rate, tenant_key, tool_key
from stalwart.domain.plans import Template
from stalwart.domain.retry import RetryPolicy
from stalwart.domain.webhooks import Webhook
from stalwart.errors import TemplateError, WorkflowDefinitionError
from stalwart.llm.gateway import AlertHook, Gateway, TenantBudget
from stalwart.llm.pricing import pricing_from_settings
from stalwart.llm.routing import TIERS, ModelRegistry, Router, split_ref
from stalwart.llm.types import Model
from stalwart.planning.costs import CostEstimator
from stalwart.planning.planner import TemplatePlanner
from stalwart.planning.templates import load_template, template_from_data
from stalwart.planning.validation import PlanLimits, template_problems
from stalwart.planning.workflows import (
    DEFAULT_MAX_REPLANS,
    ApprovalPolicy,
    Budget,
    Workflow,
)
from stalwart.settings import Settings
from stalwart.store import Store, open_store
from stalwart.tools.builtin import MEMORY_SEARCH, memory_search
from stalwart.tools.mcp import McpServer, McpTool
from stalwart.tools.registry import (
    ReconcileFunction,
    RiskLevel,
    ToolFunction,
    ToolRegistry,
    caller_namespace,
    complete_model,
)

if TYPE_CHECKING:
    from stalwart.client import Client
    from stalwart.engine.episodes import EpisodeRecorder
    from stalwart.engine.executor import Executor
    from stalwart.engine.recall import Recall
    from stalwart.llm.embeddings import Embedder
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
        on_alert: AlertHook | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self.tools = ToolRegistry()
        self.workflows: dict[str, Workflow] = {}
        self.on_review_escalated = on_review_escalated
        self.on_alert = on_alert
        self.limits: dict[str, LimitSpec] = {}
        self.schemas: dict[str, type[BaseModel]] = {}
        self.routes: dict[str, list[str]] = {}
        self.models: dict[str, Model] = {}
        self.tenant_budgets: dict[str, TenantBudget] = {}
        self._store: Store | None = None
        self._planner: TemplatePlanner | None = None
        self._embedder: Embedder | None = None
        self._embedder_made = False
        self._recalls: dict[int, Recall] = {}
        self.mcp_servers: dict[str, McpServer] = {}
        self._mcp_pending: list[McpServer] = []
        # Two submissions may list at once (each in a thread): one lists, the other waits.
        self._mcp_lock = threading.Lock()
        self.tools.register(
            memory_search,
            name=MEMORY_SEARCH,
            timeout=30,
            idempotent=True,
            description="Search the tenant's knowledge collections (semantic memory).",
        )

    # -- the LLM side ---------------------------------------------------------------------------

    def schema(self, model: type[BaseModel], *, name: str | None = None) -> type[BaseModel]:
        """Register a pydantic model that llm and agent steps may name as their `output` (by its
        class name unless `name` is given). Usable as a class decorator."""
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise WorkflowDefinitionError("app.schema() takes a pydantic model class")
        key = name or model.__name__
        complete_model(model, caller_namespace(), f"output schema {key!r}", WorkflowDefinitionError)
        if key in self.schemas and self.schemas[key] is not model:
            raise WorkflowDefinitionError(f"two output schemas are named {key!r}")
        self.schemas[key] = model
        return model

    def model(self, ref: str, model: Model) -> Model:
        """Answer the model reference `ref` (`provider:name`) with `model`: a `ScriptedModel`
        for tests and demos, or a provider adapter you built yourself."""
        split_ref(ref)
        self.models[ref] = model
        self._planner = None
        return model

    def route(self, tier: str, models: Sequence[str]) -> None:
        """Route `tier` (`small`, `medium`, `large`) to `models`, first choice first; later
        ones answer when earlier ones fail (outage, overload, timeout). `STALWART_LLM_TIERS`
        overrides these routes per tier."""
        if tier not in TIERS:
            raise WorkflowDefinitionError(f"unknown tier {tier!r}; tiers are {', '.join(TIERS)}")
        for ref in models:
            split_ref(ref)
        self.routes[tier] = list(models)
        self._planner = None

    def tenant_budget(
        self, tenant_id: str, *, daily_usd: float | None = None, monthly_usd: float | None = None
    ) -> TenantBudget:
        """Limit a tenant's LLM spend per UTC day and month (USD), across every worker. The
        gateway refuses a call whose worst case would pass a limit, before the provider sees
        it. Tenants without one get `tenant_daily_usd` / `tenant_monthly_usd` from settings."""
        for name, value in (("daily_usd", daily_usd), ("monthly_usd", monthly_usd)):
            if value is not None and value < 0:
                raise WorkflowDefinitionError(f"tenant_budget {tenant_id!r}: {name} must be >= 0")
        budget = TenantBudget(daily_usd, monthly_usd)
        self.tenant_budgets[tenant_id] = budget
        return budget

    def router(self) -> Router:
        """The tier routes: the app's, overridden per tier by settings."""
        return Router(self.routes, self.settings)

    def gateway(self, store: Store | None = None, *, actor: str = "gateway") -> Gateway:
        """A gateway over this app's routes, models, prices and budgets."""
        return Gateway(
            store=store or self.store(),
            router=self.router(),
            models=ModelRegistry(self.settings, self.models),
            pricing=pricing_from_settings(self.settings),
            settings=self.settings,
            tenant_budgets=self.tenant_budgets,
            on_alert=self.on_alert,
            actor=actor,
        )

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
        cost_usd: float | None = None,
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
        cost_usd: float | None = None,
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

        `cost_usd` is what one call costs (an external API's fee): plans are checked against
        their job's `Budget(max_usd=...)` before they run.
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
                cost_usd=cost_usd,
            )
            self.limits[spec.key] = spec
            return func

        return register(fn) if fn is not None else register

    def mcp(
        self,
        name: str,
        *,
        command: Sequence[str] | str | None = None,
        url: str | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        headers: dict[str, str] | None = None,
        prefix: str | None = None,
        include: Sequence[str] | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        risk: RiskLevel | None = None,
        idempotent: bool | None = None,
        concurrency: int | None = None,
        rate_limit: str | float | None = None,
        burst: float | None = None,
        breaker: Breaker | None = None,
        cost_usd: float | None = None,
        tools: dict[str, McpTool] | None = None,
    ) -> McpServer:
        """Register the tools of a Model Context Protocol server as ordinary tools: `command`
        (launched, spoken to over stdio) or `url` (streamable HTTP).

        Nothing connects here: the tools are listed (with their input and output schemas) the
        first time the app is put to work (`app.planner()`, `app.client()`, `app.worker()`, or
        `await app.load_mcp_async()` from async code), and each worker process calls them over
        one session per server, opened on the first call and again after a failure.

        The keyword arguments after `include` are the contract of every tool of the server,
        as for `@app.tool` (not idempotent unless declared); `tools={"name": McpTool(...)}`
        overrides them per tool. `prefix` is put before each tool's name (`"gh_"`) to avoid
        clashes; `include` registers only the named tools (their names on the server)."""
        from stalwart.tools.mcp import McpConfigurationError, declare

        if name in self.mcp_servers:
            raise McpConfigurationError(f"MCP server {name!r} is registered twice")
        server = declare(
            name,
            command=command,
            url=url,
            env=env,
            cwd=cwd,
            headers=headers,
            prefix=prefix,
            include=include,
            defaults=McpTool(
                timeout=timeout,
                retry=retry,
                risk=risk,
                idempotent=idempotent,
                concurrency=concurrency,
                rate_limit=rate_limit,
                burst=burst,
                breaker=breaker,
                cost_usd=cost_usd,
            ),
            tools=tools,
        )
        self.mcp_servers[name] = server
        self._mcp_pending.append(server)
        self._planner = None
        return server

    def load_mcp(self) -> None:
        """List the tools of the MCP servers not listed yet and register them (blocking: each
        listing runs in a thread of its own; from async code use `load_mcp_async`)."""
        if not self._mcp_pending:
            return
        with self._mcp_lock:
            self._load_mcp_locked()

    def _load_mcp_locked(self) -> None:
        from stalwart.tools.mcp import (
            McpConfigurationError,
            args_model,
            list_tools,
            make_tool_function,
            result_model,
        )

        while self._mcp_pending:
            server = self._mcp_pending[0]
            listed = {t.name: t for t in list_tools(server)}
            wanted = sorted(server.include) if server.include is not None else sorted(listed)
            missing = [t for t in wanted if t not in listed] + [
                t for t in server.tools if t not in listed
            ]
            if missing:
                raise McpConfigurationError(
                    f"MCP server {server.name!r} has no tool named {', '.join(missing)} "
                    f"(it has: {', '.join(sorted(listed)) or 'none'})",
                    server=server.name,
                )
            for remote in wanted:
                tool = listed[remote]
                contract = server.contract(remote)
                tool_name = server.prefix + remote
                limit = LimitSpec(
                    tool_key(tool_name),
                    concurrency=contract.concurrency,
                    rate=parse_rate(contract.rate_limit)
                    if contract.rate_limit is not None
                    else None,
                    burst=contract.burst,
                    breaker=contract.breaker,
                )
                self.tools.register(
                    make_tool_function(server, remote),
                    name=tool_name,
                    timeout=contract.timeout,
                    retry=contract.retry,
                    risk=contract.risk or "low",
                    idempotent=bool(contract.idempotent),
                    description=tool.description or f"MCP tool {remote} of {server.name}",
                    cost_usd=contract.cost_usd,
                    models=(
                        args_model(tool_name, tool.input_schema),
                        result_model(tool_name, tool.output_schema),
                    ),
                )
                self.limits[limit.key] = limit
            self._mcp_pending.pop(0)
            self._planner = None

    async def load_mcp_async(self) -> None:
        """`load_mcp` off the event loop."""
        if self._mcp_pending:
            await asyncio.to_thread(self.load_mcp)

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
        planner: Literal["template", "llm"] = "template",
        llm_replan: bool = False,
        review_confidence: float | None = None,
        webhook: Webhook | None = None,
    ) -> Workflow:
        """Register a workflow. `templates` are `Template`s, dicts, or YAML paths (relative paths
        are looked up next to the calling module first).

        `planner="llm"` lets a model write each job's plan (validated like a template's; the
        templates then only document the shape); `llm_replan=True` keeps templates first and
        lets a model write the next plan after a failure, bounded by `max_replans`. Steps that
        consume an output whose `confidence` is below `review_confidence`, or whose
        `risk_flags` is not empty, wait for a reviewer. `webhook` says how
        `POST /v1/webhooks/{name}` accepts events from another system."""
        if name in self.workflows:
            raise WorkflowDefinitionError(f"workflow {name!r} is registered twice")
        if not (isinstance(input, type) and issubclass(input, BaseModel)):
            raise WorkflowDefinitionError(f"workflow {name!r}: input= must be a pydantic model")
        complete_model(input, caller_namespace(), f"workflow {name!r}", WorkflowDefinitionError)
        if not templates and planner != "llm":
            raise WorkflowDefinitionError(f"workflow {name!r} needs at least one template")
        if review_confidence is not None and not 0 <= review_confidence <= 1:
            raise WorkflowDefinitionError(
                f"workflow {name!r}: review_confidence must be between 0 and 1"
            )
        if max_replans < 0:
            raise WorkflowDefinitionError(f"workflow {name!r}: max_replans must be 0 or more")
        base = _caller_dir()
        loaded = tuple(_load(t, base) for t in templates)
        names = [t.name for t in loaded]
        if len(set(names)) != len(names):
            raise WorkflowDefinitionError(f"workflow {name!r} has two templates of the same name")
        # The input model is known here: a reference to an input field it does not have would
        # fail every submission, so it fails now. Output references are checked when plans are
        # validated (the tools may be registered after the workflow).
        problems = [{**p, "template": t.name} for t in loaded for p in template_problems(t, input)]
        if problems:
            lines = "; ".join(
                f"template {p['template']}, "
                + (f"step {p['step']}" if p["step"] else "when")
                + f": {p['problem']}"
                for p in problems
            )
            raise WorkflowDefinitionError(
                f"workflow {name!r}: {lines}", problems=problems, field="templates"
            )
        workflow = Workflow(
            name=name,
            input_model=input,
            templates=loaded,
            budget=budget or Budget(),
            max_replans=max_replans,
            approval=approval or ApprovalPolicy(),
            allowed_tools=frozenset(allowed_tools) if allowed_tools is not None else None,
            description=description,
            planner=planner,
            llm_replan=llm_replan,
            review_confidence=review_confidence,
            webhook=webhook,
        )
        self.workflows[name] = workflow
        return workflow

    # -- putting it to work -----------------------------------------------------------------------

    def planner(self) -> TemplatePlanner:
        """The template planner over this app's tools and schemas, within the settings'
        limits, checking plans' estimated cost against their budgets."""
        self.load_mcp()
        if self._planner is not None:
            return self._planner
        s = self.settings
        router = self.router()
        self._planner = TemplatePlanner(
            self.tools,
            PlanLimits(
                max_steps=s.max_plan_steps,
                max_attempts=s.max_retry_attempts,
                max_retry_cap_seconds=s.max_retry_cap_seconds,
            ),
            schemas=self.schemas,
            tiers=frozenset(t for t in TIERS if router.has(t)),
            costs=CostEstimator(router, pricing_from_settings(s), tools=self.tools),
        )
        return self._planner

    def store(self) -> Store:
        """The store at `settings.database_url` (opened once)."""
        if self._store is None:
            self._store = open_store(self.settings.database_url, self.settings)
        return self._store

    def client(self, store: Store | None = None) -> Client:
        """A `Client` over this app's store."""
        from stalwart.client import Client

        return Client(store or self.store(), app=self)

    def embedder(self, store: Store | None = None) -> Embedder | None:
        """The embedder of `settings.embedder` (one per app; None: lexical recall). An
        `openai:<model>` embedder goes through this app's gateway over `store`."""
        if not self._embedder_made:
            from stalwart.llm.embeddings import embedder_from_setting

            value = self.settings.embedder
            gateway = self.gateway(store, actor="memory") if value.startswith("openai:") else None
            self._embedder = embedder_from_setting(value, gateway)
            self._embedder_made = True
        return self._embedder

    def recall(self, store: Store | None = None) -> Recall:
        """The memory search of this app over `store` (one per store: it holds the caches)."""
        from stalwart.engine.recall import Recall

        store = store or self.store()
        found = self._recalls.get(id(store))
        if found is None or found.store is not store:
            found = Recall(store, self.embedder(store))
            self._recalls[id(store)] = found
        return found

    def executor(self, store: Store | None = None) -> Executor:
        """An `Executor` over this app's tools and workflows."""
        from stalwart.engine.executor import Executor

        self.load_mcp()
        store = store or self.store()
        return Executor(
            store=store,
            tools=self.tools,
            workflows=self.workflows,
            planner=self.planner(),
            settings=self.settings,
            gateway=self.gateway(store, actor="worker"),
            schemas=self.schemas,
            memory=self.recall(store),
        )

    def worker(
        self,
        *,
        store: Store | None = None,
        concurrency: int | None = None,
        worker_id: str | None = None,
    ) -> Worker:
        """A `Worker` that runs this app's steps. Traces are exported over OTLP when the
        standard `OTEL_*` variables ask for it (see `observability.tracing.setup_tracing`)."""
        from stalwart.observability.tracing import setup_tracing
        from stalwart.worker.worker import Worker

        setup_tracing()
        store = store or self.store()
        return Worker(
            store=store,
            executor=self.executor(store),
            settings=self.settings,
            worker_id=worker_id,
            concurrency=concurrency,
            on_review_escalated=self.on_review_escalated,
            limits=list(self.limits.values()),
            on_alert=self.on_alert,
            episodes=self._episode_recorder(store),
        )

    def _episode_recorder(self, store: Store) -> EpisodeRecorder | None:
        if not self.settings.memory_episodes:
            return None
        from stalwart.engine.episodes import EpisodeRecorder

        return EpisodeRecorder(store, self.embedder(store))


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
