"""MCP tools: the tools of a Model Context Protocol server, registered as Stalwart tools.

`app.mcp(...)` declares a server (a stdio command or a streamable HTTP URL). Nothing connects
at import: the server's tools are listed the first time the app is put to work (`app.client()`,
`app.worker()`, `app.planner()`), and each worker process calls them over one session per
server and event loop, opened on the first call and opened again after a failure.

Arguments are checked twice (see docs/decisions/0038-mcp-tools.md): a pydantic model built
from the top-level properties of the server's input schema (so plan validation knows the
argument names, the required ones and their simple types), then the whole JSON schema with
`jsonschema`. Results are the server's `structuredContent` when it sends one, else
`{"text": ..., "content": [...]}`.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from stalwart.domain.limits import Breaker
from stalwart.domain.retry import RetryPolicy
from stalwart.errors import (
    ConfigurationError,
    InvalidArgumentsError,
    NonRetriableError,
    TransientError,
)
from stalwart.tools.context import ToolContext
from stalwart.tools.registry import RiskLevel

DISCOVERY_TIMEOUT_SECONDS = 30.0
IDEMPOTENCY_META_KEY = "io.stalwart/idempotency-key"
# A session whose handshake takes longer is given up (and opened again by a later call).
CONNECT_TIMEOUT_SECONDS = 30.0

# An `isError` result is non-retriable unless its text clearly says the failure is passing.
_TRANSIENT_TEXT = re.compile(
    r"\b(429|502|503|504|rate.?limit\w*|too many requests|temporar\w+|timed? ?out|timeout|"
    r"try again|overloaded|unavailable)\b",
    re.IGNORECASE,
)
_INVALID_TEXT = re.compile(r"validation errors? for|invalid (arguments|params)", re.IGNORECASE)


class McpConfigurationError(ConfigurationError):
    """An MCP server is declared wrongly, or its tools could not be listed."""


@dataclass(frozen=True, slots=True)
class McpTool:
    """The operating contract of one MCP tool (or, given to `app.mcp(defaults=...)`, of all a
    server's tools). `None` fields fall back to the server's defaults. MCP servers say nothing
    about idempotency that can be trusted, so it is False unless you declare it."""

    timeout: float | None = None
    retry: RetryPolicy | None = None
    risk: RiskLevel | None = None
    idempotent: bool | None = None
    concurrency: int | None = None
    rate_limit: str | float | None = None
    burst: float | None = None
    breaker: Breaker | None = None
    cost_usd: float | None = None

    def over(self, base: McpTool) -> McpTool:
        """These settings, with `base`'s where these are None."""
        values = {
            name: getattr(self, name) if getattr(self, name) is not None else getattr(base, name)
            for name in self.__dataclass_fields__
        }
        return McpTool(**values)


@dataclass(slots=True)
class McpServer:
    """A declared MCP server: how to reach it and what to register from it."""

    name: str
    command: tuple[str, ...] | None = None
    url: str | None = None
    env: dict[str, str] | None = None
    cwd: str | None = None
    headers: dict[str, str] | None = None
    prefix: str = ""
    include: frozenset[str] | None = None
    defaults: McpTool = field(default_factory=McpTool)
    tools: dict[str, McpTool] = field(default_factory=dict)

    def target(self) -> Any:
        """What `mcp.Client` connects to: stdio parameters or the URL."""
        if self.url is not None:
            if self.headers:
                import httpx2  # the SDK's HTTP client
                from mcp.client.streamable_http import streamable_http_client

                client = httpx2.AsyncClient(
                    headers=self.headers, timeout=httpx2.Timeout(30.0, read=300.0)
                )
                return streamable_http_client(self.url, http_client=client)
            return self.url
        from mcp.client.stdio import StdioServerParameters

        assert self.command is not None
        return StdioServerParameters(
            command=self.command[0], args=list(self.command[1:]), env=self.env, cwd=self.cwd
        )

    def contract(self, tool: str) -> McpTool:
        """The contract of `tool` (its own settings over the server's defaults)."""
        found = self.tools.get(tool, McpTool())
        merged = found.over(self.defaults)
        return replace(
            merged,
            risk=merged.risk or "low",
            idempotent=bool(merged.idempotent),
        )


@dataclass(frozen=True, slots=True)
class ListedTool:
    """One tool as the server lists it."""

    name: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None
    destructive: bool | None = None


def list_tools(server: McpServer, timeout: float = DISCOVERY_TIMEOUT_SECONDS) -> list[ListedTool]:
    """List the server's tools over a short-lived connection, in a thread of its own (with its
    own event loop), so that a caller already on an event loop does not run one inside it."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["tools"] = asyncio.run(asyncio.wait_for(_list(server), timeout))
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=run, name=f"mcp-list-{server.name}", daemon=True)
    thread.start()
    thread.join(timeout + 5)
    if "tools" in box:
        tools: list[ListedTool] = box["tools"]
        return tools
    exc = box.get("error")
    reason = f"{type(exc).__name__}: {exc}" if exc is not None else "no answer"
    raise McpConfigurationError(
        f"MCP server {server.name!r}: its tools could not be listed ({reason}); check that "
        f"{_where(server)} starts and speaks MCP",
        server=server.name,
    ) from exc


def _where(server: McpServer) -> str:
    return (
        f"the URL {server.url}" if server.url else f"the command {' '.join(server.command or ())}"
    )


async def _list(server: McpServer) -> list[ListedTool]:
    from mcp import Client

    out: list[ListedTool] = []
    async with Client(server.target(), cache=None) as client:
        cursor: str | None = None
        for _ in range(100):  # a paginator that never ends cannot hang discovery
            page = await client.list_tools(cursor=cursor)
            for tool in page.tools:
                annotations = tool.annotations
                out.append(
                    ListedTool(
                        name=tool.name,
                        description=tool.description or "",
                        input_schema=dict(tool.input_schema),
                        output_schema=dict(tool.output_schema) if tool.output_schema else None,
                        destructive=annotations.destructive_hint if annotations else None,
                    )
                )
            cursor = page.next_cursor
            if cursor is None:
                break
    return out


# -- schemas --------------------------------------------------------------------------------------

_SIMPLE_TYPES: dict[str, Any] = {
    "string": str,
    "integer": int,
    "number": float,
    "boolean": bool,
    "array": list[Any],
    "object": dict[str, Any],
}


class McpArgs(BaseModel):
    """Base of the argument models built from MCP input schemas."""

    model_config = ConfigDict(extra="allow")
    __mcp_schema__: ClassVar[dict[str, Any]] = {}
    # Built once per tool (the schema is fixed once listed), not on every call.
    __mcp_validator__: ClassVar[Any] = None

    @model_validator(mode="after")
    def _check_schema(self) -> McpArgs:
        """The whole JSON schema, after the top-level fields: nested shapes, enums, bounds."""
        validator = type(self).__mcp_validator__
        if validator is not None:
            data = self.model_dump(mode="json", exclude_unset=True)
            errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
            if errors:
                parts = [
                    f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
                    for e in errors
                ]
                raise ValueError("; ".join(parts))
        return self

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The server's own input schema (what a model is offered)."""
        return dict(cls.__mcp_schema__) or super().model_json_schema(*args, **kwargs)


class McpClosedArgs(McpArgs):
    """Arguments of a schema with `additionalProperties: false`."""

    model_config = ConfigDict(extra="forbid")


class McpResult(BaseModel):
    """Base of the result models: extra fields are kept (structured output is the server's)."""

    model_config = ConfigDict(extra="allow")


class McpText(McpResult):
    """The result of an MCP tool without an output schema: its text, and every content block."""

    text: str = ""
    content: list[dict[str, Any]] = Field(default_factory=list)


def _class_name(tool: str, suffix: str) -> str:
    return "".join(p.capitalize() for p in re.split(r"[^0-9A-Za-z]+", tool) if p) + suffix


def _fields(schema: Mapping[str, Any]) -> dict[str, Any]:
    props = schema.get("properties") or {}
    required = set(schema.get("required") or ())
    fields: dict[str, Any] = {}
    for name, prop in props.items():
        if not isinstance(prop, Mapping) or not name.isidentifier() or name.startswith("_"):
            continue  # kept as an extra field, checked by the JSON schema alone
        annotation = _SIMPLE_TYPES.get(str(prop.get("type")), Any)
        if name in required:
            fields[name] = (annotation, ...)
        else:
            fields[name] = (annotation | None, prop.get("default"))
    return fields


def args_model(tool: str, schema: dict[str, Any]) -> type[BaseModel]:
    """A pydantic model for an MCP tool's arguments (see the module docstring)."""
    base: type[McpArgs] = McpClosedArgs if schema.get("additionalProperties") is False else McpArgs
    model: type[McpArgs] = create_model(_class_name(tool, "Args"), __base__=base, **_fields(schema))
    model.__mcp_schema__ = schema
    if schema:
        import jsonschema  # type: ignore[import-untyped]  # only where MCP tools are used

        model.__mcp_validator__ = jsonschema.Draft202012Validator(schema)
    return model


def result_model(tool: str, schema: dict[str, Any] | None) -> type[BaseModel]:
    """A pydantic model for an MCP tool's result: its output schema's top-level fields, or
    `McpText` when it has none."""
    if schema is None:
        return create_model(_class_name(tool, "Result"), __base__=McpText)
    return create_model(_class_name(tool, "Result"), __base__=McpResult, **_fields(schema))


# -- sessions and calls ---------------------------------------------------------------------------


class _Session:
    """One open MCP client, owned by a task of its own: the SDK's task groups must be entered
    and left by the same task, which a tool call (a task per step) is not."""

    def __init__(self, server: McpServer) -> None:
        self.server = server
        self.client: Any = None
        self.ready = asyncio.Event()
        self.stop = asyncio.Event()
        self.error: BaseException | None = None
        self.connect_by = asyncio.get_running_loop().time() + CONNECT_TIMEOUT_SECONDS
        self.task = asyncio.get_running_loop().create_task(self._own(), name=f"mcp-{server.name}")

    async def _own(self) -> None:
        from mcp import Client

        try:
            async with Client(self.server.target(), cache=None) as client:
                self.client = client
                self.ready.set()
                await self.stop.wait()
        except BaseException as exc:
            self.error = exc
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self.client = None
            self.stop.set()
            self.ready.set()

    @property
    def alive(self) -> bool:
        return not self.stop.is_set() and not self.task.done()

    def close(self) -> None:
        self.stop.set()
        if not self.ready.is_set():  # still connecting: the handshake may never end
            self.task.cancel()


class McpSessions:
    """The open sessions of this process: one per server and event loop."""

    def __init__(self) -> None:
        self._sessions: dict[tuple[int, int], _Session] = {}
        # The lock of each key with its loop: a loop's id may be reused after it is closed
        # (tests run many), and a lock serves one loop only.
        self._locks: dict[tuple[int, int], tuple[asyncio.AbstractEventLoop, asyncio.Lock]] = {}

    async def client(self, server: McpServer) -> Any:
        """An open client for `server`, opened now if there is none (or it broke)."""
        loop = asyncio.get_running_loop()
        key = (id(server), id(loop))
        found = self._locks.get(key)
        if found is None or found[0] is not loop:
            found = self._locks[key] = (loop, asyncio.Lock())
        async with found[1]:
            session = self._sessions.get(key)
            if session is None or not session.alive or session.task.get_loop() is not loop:
                session = self._sessions[key] = _Session(server)
            left = session.connect_by - loop.time()
            try:
                # An absolute deadline: callers cut off by their own timeouts do not restart it.
                await asyncio.wait_for(session.ready.wait(), max(0.0, left))
            except TimeoutError:
                session.close()
                raise ConnectionError(
                    f"MCP server {server.name!r} did not finish its handshake in "
                    f"{CONNECT_TIMEOUT_SECONDS:g}s"
                ) from None
            if session.client is None:
                raise ConnectionError(
                    f"MCP server {server.name!r} could not be reached: {session.error!r}"
                )
            return session.client

    def drop(self, server: McpServer, client: Any) -> None:
        """Close the session of `server` on this loop if `client` is still its client (a
        call that failed on an older session must not close the newer one): the next call
        opens a new one."""
        key = (id(server), id(asyncio.get_running_loop()))
        session = self._sessions.get(key)
        if session is not None and client is not None and session.client is client:
            del self._sessions[key]
            session.close()

    async def aclose(self) -> None:
        """Close every session of the running loop (tests, shutdown)."""
        loop_id = id(asyncio.get_running_loop())
        for key in [k for k in self._sessions if k[1] == loop_id]:
            session = self._sessions.pop(key)
            session.close()
            await asyncio.gather(session.task, return_exceptions=True)


SESSIONS = McpSessions()


def make_tool_function(
    server: McpServer, remote_name: str, sessions: McpSessions = SESSIONS
) -> Any:
    """The async `(args, ctx)` function that calls `remote_name` on `server`."""

    async def call(args: BaseModel, ctx: ToolContext) -> dict[str, Any]:
        from mcp.shared.exceptions import MCPError

        arguments = args.model_dump(mode="json", exclude_unset=True)
        client: Any = None
        try:
            client = await sessions.client(server)
            # The step's idempotency key rides along in `_meta`, for servers that dedupe.
            meta = {IDEMPOTENCY_META_KEY: ctx.idempotency_key}
            result = await client.call_tool(remote_name, arguments, meta=meta)
        except MCPError as exc:
            from mcp_types import CONNECTION_CLOSED

            if exc.code == CONNECTION_CLOSED:  # other protocol errors: the session is fine
                sessions.drop(server, client)
            raise _protocol_error(server, remote_name, exc) from exc
        except (OSError, EOFError, TimeoutError) as exc:
            sessions.drop(server, client)
            raise TransientError(
                f"MCP server {server.name!r} failed during {remote_name!r}: {exc!r}",
                code="connection",
            ) from exc
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A broken stream (anyio's ClosedResourceError/BrokenResourceError), an httpx
            # error: the connection is suspect, so it is dropped and the call is transient.
            sessions.drop(server, client)
            raise TransientError(
                f"MCP server {server.name!r} failed during {remote_name!r}: "
                f"{type(exc).__name__}: {exc}",
                code="connection",
            ) from exc
        return result_output(remote_name, result)

    call.__name__ = remote_name
    return call


def _protocol_error(server: McpServer, tool: str, exc: Any) -> Exception:
    from mcp_types import CONNECTION_CLOSED, INVALID_PARAMS

    message = f"MCP server {server.name!r}, tool {tool!r}: {exc.error.message}"
    if exc.code == INVALID_PARAMS:
        return InvalidArgumentsError(message, code="mcp_invalid_params")
    if exc.code == CONNECTION_CLOSED or _TRANSIENT_TEXT.search(exc.error.message):
        return TransientError(message, code="connection")
    return NonRetriableError(message, code=f"mcp_{exc.code}")


def _text(result: Any) -> str:
    return "\n".join(block.text for block in result.content if getattr(block, "type", "") == "text")


def result_output(tool: str, result: Any) -> dict[str, Any]:
    """A `CallToolResult` as Stalwart output, or the Stalwart error its `isError` means."""
    text = _text(result)
    if result.is_error:
        message = f"MCP tool {tool!r} failed: {text or 'no message'}"
        if _TRANSIENT_TEXT.search(text):
            raise TransientError(message, code="mcp_tool_error")
        if _INVALID_TEXT.search(text):
            raise InvalidArgumentsError(message, code="mcp_tool_error")
        raise NonRetriableError(message, code="mcp_tool_error")
    if result.structured_content is not None:
        return dict(result.structured_content)
    return {
        "text": text,
        "content": [block.model_dump(mode="json", by_alias=True) for block in result.content],
    }


def declare(
    name: str,
    *,
    command: Sequence[str] | str | None,
    url: str | None,
    env: Mapping[str, str] | None,
    cwd: str | None,
    headers: Mapping[str, str] | None,
    prefix: str | None,
    include: Sequence[str] | None,
    defaults: McpTool,
    tools: Mapping[str, McpTool] | None,
) -> McpServer:
    """Check a server declaration; raise `McpConfigurationError` naming the fix."""
    where = f"MCP server {name!r}"
    if not name or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise McpConfigurationError(f"{where}: the name must be letters, digits, '_', '.', '-'")
    if (command is None) == (url is None):
        raise McpConfigurationError(f"{where}: give exactly one of command= (stdio) or url=")
    if isinstance(command, str):
        command = command.split()
    if command is not None and not command:
        raise McpConfigurationError(f"{where}: command= is empty")
    if url is not None and not url.startswith(("http://", "https://")):
        raise McpConfigurationError(f"{where}: url= must be an http(s) URL, got {url!r}")
    for tool, contract in {"(defaults)": defaults, **(tools or {})}.items():
        if not isinstance(contract, McpTool):
            raise McpConfigurationError(f"{where}, tool {tool!r}: give an McpTool(...)")
    return McpServer(
        name=name,
        command=tuple(command) if command is not None else None,
        url=url,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        headers=dict(headers) if headers is not None else None,
        prefix=prefix if prefix is not None else "",
        include=frozenset(include) if include is not None else None,
        defaults=defaults,
        tools=dict(tools or {}),
    )
