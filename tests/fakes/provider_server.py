"""A local HTTP server that speaks the OpenAI and Anthropic wire protocols, for provider tests.

`ProviderServer` listens on 127.0.0.1 (a free port) and answers, well enough for the official
SDKs:

- `POST /v1/chat/completions`: an OpenAI `chat.completion` (base URL for `openai`: `url + "/v1"`,
  the SDK appends `/chat/completions`);
- `POST /v1/messages`: an Anthropic `message` (base URL for `anthropic`: `url`, the SDK appends
  `/v1/messages`). A request that forces a tool (`tool_choice {"type": "tool"}`) is answered with
  a `tool_use` block whose `input` is the answer; otherwise with a `text` block.
- Tool calling, in both protocols: an answer that is a `CallTools` is sent as the protocol's tool
  calls (OpenAI `message.tool_calls` with `finish_reason` `tool_calls`, arguments as JSON text, or
  the raw text given, even when it is not JSON; Anthropic `tool_use` blocks with `stop_reason`
  `tool_use`). Call ids are `call_fake{n}_{i}` / `toolu_fake{n}_{i}` (answer `n`, call `i`).
  `RecordedRequest` reads what a request offered (`tools`, `tool_choice`, `parallel_tool_calls`)
  and the transcript it replayed (`assistant_tool_calls`, `tool_results`) in either protocol.
- `POST /v1/embeddings`: an OpenAI embeddings list, one deterministic unit vector per input (see
  `fake_vector`) of the requested `dimensions` (else the model's size in `EMBEDDING_DIMENSIONS`,
  else 1536), as floats or as base64 float32 per `encoding_format`; `prompt_tokens` is the sum of
  `estimate_tokens` of the inputs. Scripted behaviours apply as to chat; a `Reply` overrides only
  `input_tokens` (its body is ignored), and the responder is not consulted.

What a request gets is decided, in order, by the scripted one-shot behaviours queued with
`push()` (the first one whose `model` matches, or that names none): `Reply`, `Fail`,
`Malformed` or `Hang`; then by the responder `server.respond(record) -> str | dict` (a dict is
sent as JSON text, or as the forced tool's input), which answers `{"ok": true}` by default.

Token counts are deterministic (see `estimate_tokens`): a request's input tokens are the sum,
over its messages (the Anthropic `system` counted as one more message), of
`estimate_tokens(text) + MESSAGE_OVERHEAD` (a message's text includes the arguments of its tool
calls and the content of its tool results), plus `estimate_tokens` of the JSON of the requested
schema if any, plus `estimate_tokens` of the JSON of the tools offered if any; output tokens are
`estimate_tokens(answer_text)` capped at `max_tokens`. A `Reply` may override both and name
cached tokens (OpenAI reports them inside `prompt_tokens`; Anthropic reports `input_tokens`
without them, plus `cache_read_input_tokens`, as the real APIs do).

Every request, failed or not, is recorded in `server.requests` (thread-safe).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import math
import struct
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import urlsplit

OPENAI_PATH = "/v1/chat/completions"
ANTHROPIC_PATH = "/v1/messages"
EMBEDDINGS_PATH = "/v1/embeddings"
EMBEDDING_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
MESSAGE_OVERHEAD = 3
"""Tokens added per message (role and framing), on top of its text's estimate."""

Protocol = Literal["openai", "anthropic"]


@dataclass(frozen=True)
class CallTools:
    """An answer that calls tools: `(name, arguments)` pairs, the arguments a dict or raw text
    (OpenAI gets the text as it is, broken JSON included), with optional `text` alongside."""

    calls: tuple[tuple[str, dict[str, Any] | str], ...]
    text: str = ""


Answer = str | dict[str, Any] | CallTools


def estimate_tokens(text: str) -> int:
    """The fake's token count of a text: one token per started group of 4 characters,
    `ceil(len(text) / 4)`; 0 for an empty text."""
    return math.ceil(len(text) / 4)


def count_input_tokens(
    messages: Sequence[str],
    *,
    system: str | None = None,
    schema: Mapping[str, Any] | None = None,
    tools: Sequence[Any] | None = None,
) -> int:
    """Input tokens of a request with these message texts, system text, schema and tools: each
    message (and the system text, when there is one) costs `estimate_tokens(text) +
    MESSAGE_OVERHEAD`, the schema `estimate_tokens(json.dumps(schema))`, the tools
    `estimate_tokens(json.dumps(tools))`."""
    total = sum(estimate_tokens(text) + MESSAGE_OVERHEAD for text in messages)
    if system:
        total += estimate_tokens(system) + MESSAGE_OVERHEAD
    if schema is not None:
        total += estimate_tokens(json.dumps(schema))
    if tools:
        total += estimate_tokens(json.dumps(tools))
    return total


def fake_vector(text: str, dimensions: int) -> list[float]:
    """The fake's embedding of `text`: `dimensions` values drawn from a hash of the text, scaled
    to length 1 (the same text always gives the same vector)."""
    raw = hashlib.shake_256(text.encode()).digest(2 * dimensions)
    values = [v - 32767.5 for v in struct.unpack(f"<{dimensions}H", raw)]
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


# -- scripted behaviours --------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """Answer with `body` (text, or a dict sent as JSON / as the forced tool's input), with
    optional token counts instead of the estimates."""

    body: Answer
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int = 0
    finish_reason: str | None = None


@dataclass(frozen=True)
class Fail:
    """Answer with HTTP `status` and the protocol's error JSON carrying `message`; `retry_after`
    (seconds, or any text such as an HTTP date) is sent as the `Retry-After` header."""

    status: int
    retry_after: float | str | None = None
    message: str = "scripted failure"


@dataclass(frozen=True)
class Malformed:
    """Answer with `status` (200) and a body that is not what the protocol promises (by
    default not JSON at all), under `content_type`."""

    body: str = "<html><body>502 upstream hiccup</body></html>"
    content_type: str = "application/json"
    status: int = 200


@dataclass(frozen=True)
class Hang:
    """Wait `seconds` before answering (with `then`, or the responder), to trigger client
    timeouts. A stopping server drops the request instead."""

    seconds: float
    then: Reply | Fail | Malformed | None = None


Behaviour = Reply | Fail | Malformed | Hang


@dataclass(frozen=True)
class RecordedRequest:
    """One request the server received: its path, model, parsed JSON body (None when it was not
    a JSON object) and headers (lower-case names)."""

    path: str
    model: str | None
    body: dict[str, Any] | None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def protocol(self) -> Protocol | None:
        """`openai` (chat or embeddings) or `anthropic` by path; None for any other path."""
        if self.path in (OPENAI_PATH, EMBEDDINGS_PATH):
            return "openai"
        if self.path == ANTHROPIC_PATH:
            return "anthropic"
        return None

    @property
    def max_tokens(self) -> int | None:
        """The requested output cap (`max_tokens`, or OpenAI's `max_completion_tokens`)."""
        body = self.body or {}
        value = body.get("max_tokens", body.get("max_completion_tokens"))
        return value if isinstance(value, int) else None

    @property
    def forced_tool(self) -> str | None:
        """The tool an Anthropic request forces (`tool_choice {"type": "tool", "name": ...}`)."""
        choice = (self.body or {}).get("tool_choice")
        if isinstance(choice, dict) and choice.get("type") == "tool":
            name = choice.get("name")
            return name if isinstance(name, str) else None
        return None

    @property
    def schema(self) -> dict[str, Any] | None:
        """The JSON schema the answer must follow: OpenAI `response_format.json_schema.schema`,
        or the forced Anthropic tool's `input_schema`."""
        body = self.body or {}
        if self.protocol == "openai":
            fmt = body.get("response_format")
            if isinstance(fmt, dict) and isinstance(fmt.get("json_schema"), dict):
                schema = fmt["json_schema"].get("schema")
                return schema if isinstance(schema, dict) else None
            return None
        name = self.forced_tool
        for tool in body.get("tools") or []:
            if isinstance(tool, dict) and tool.get("name") == name:
                schema = tool.get("input_schema")
                return schema if isinstance(schema, dict) else None
        return None

    @property
    def system(self) -> str | None:
        """The Anthropic `system` text (OpenAI system prompts are ordinary messages)."""
        system = (self.body or {}).get("system")
        return _text_of(system) if system else None

    @property
    def message_texts(self) -> list[str]:
        """The text of each message, in order (with its tool calls' arguments and its tool
        results' content)."""
        messages = (self.body or {}).get("messages") or []
        return [_message_text(m) for m in messages if isinstance(m, dict)]

    @property
    def tools(self) -> list[str]:
        """The names of the tools offered, in order (OpenAI `function.name`, Anthropic `name`;
        the Anthropic tool that a schema forces included)."""
        names = []
        for tool in (self.body or {}).get("tools") or []:
            if not isinstance(tool, dict):
                continue
            spec = tool.get("function") if self.protocol == "openai" else tool
            if isinstance(spec, dict) and isinstance(spec.get("name"), str):
                names.append(spec["name"])
        return names

    def tool_schema(self, name: str) -> dict[str, Any] | None:
        """The arguments schema of the offered tool `name` (OpenAI `parameters`, Anthropic
        `input_schema`)."""
        for tool in (self.body or {}).get("tools") or []:
            if not isinstance(tool, dict):
                continue
            spec = tool.get("function") if self.protocol == "openai" else tool
            if isinstance(spec, dict) and spec.get("name") == name:
                schema = spec.get("parameters" if self.protocol == "openai" else "input_schema")
                return schema if isinstance(schema, dict) else None
        return None

    @property
    def tool_choice(self) -> Any:
        """The request's `tool_choice` as sent (None when absent)."""
        return (self.body or {}).get("tool_choice")

    @property
    def parallel_tool_calls(self) -> bool | None:
        """False when the request asked for one call per turn (OpenAI `parallel_tool_calls`,
        Anthropic `tool_choice.disable_parallel_tool_use`), True when it allowed several
        explicitly (OpenAI), None when it said nothing."""
        body = self.body or {}
        if self.protocol == "openai":
            value = body.get("parallel_tool_calls")
            return value if isinstance(value, bool) else None
        choice = body.get("tool_choice")
        if isinstance(choice, dict) and choice.get("disable_parallel_tool_use") is True:
            return False
        return None

    @property
    def assistant_tool_calls(self) -> list[dict[str, Any]]:
        """The tool calls that the replayed assistant turns made, in order: `{"id", "name",
        "arguments"}` with the arguments as sent (OpenAI text, Anthropic an object)."""
        found = []
        for m in (self.body or {}).get("messages") or []:
            if not isinstance(m, dict) or m.get("role") != "assistant":
                continue
            for call in m.get("tool_calls") or []:
                function = call.get("function") or {}
                found.append(
                    {
                        "id": call.get("id"),
                        "name": function.get("name"),
                        "arguments": function.get("arguments"),
                    }
                )
            content = m.get("content")
            for block in content if isinstance(content, list) else []:
                if isinstance(block, dict) and block.get("type") == "tool_use":
                    found.append(
                        {
                            "id": block.get("id"),
                            "name": block.get("name"),
                            "arguments": block.get("input"),
                        }
                    )
        return found

    @property
    def tool_results(self) -> list[dict[str, Any]]:
        """The tool results sent back, in order: `{"tool_call_id", "content", "is_error",
        "message"}` where `message` is the index of the message that carried it (OpenAI `role:
        tool` messages; Anthropic `tool_result` blocks, several in one user message)."""
        found = []
        for index, m in enumerate((self.body or {}).get("messages") or []):
            if not isinstance(m, dict):
                continue
            if m.get("role") == "tool":
                found.append(
                    {
                        "tool_call_id": m.get("tool_call_id"),
                        "content": _text_of(m.get("content")),
                        "is_error": None,
                        "message": index,
                    }
                )
                continue
            content = m.get("content")
            for block in content if isinstance(content, list) else []:
                if isinstance(block, dict) and block.get("type") == "tool_result":
                    found.append(
                        {
                            "tool_call_id": block.get("tool_use_id"),
                            "content": _text_of(block.get("content")),
                            "is_error": bool(block.get("is_error", False)),
                            "message": index,
                        }
                    )
        return found

    @property
    def inputs(self) -> list[str]:
        """An embeddings request's texts (`input`, a string or a list of strings)."""
        value = (self.body or {}).get("input")
        if isinstance(value, str):
            return [value]
        if isinstance(value, list):
            return [text for text in value if isinstance(text, str)]
        return []

    def input_tokens(self) -> int:
        """This request's input tokens: by `count_input_tokens` for chat, the sum of
        `estimate_tokens` of the inputs for embeddings."""
        if self.path == EMBEDDINGS_PATH:
            return sum(estimate_tokens(text) for text in self.inputs)
        tools = (self.body or {}).get("tools") or None
        if (
            self.protocol == "anthropic"
            and self.forced_tool is not None
            and self.schema is not None
        ):
            # The forced tool is the schema, counted once as such.
            tools = [t for t in tools or [] if t.get("name") != self.forced_tool] or None
        return count_input_tokens(
            self.message_texts, system=self.system, schema=self.schema, tools=tools
        )


Responder = Callable[[RecordedRequest], Answer]


def _default_responder(_: RecordedRequest) -> Answer:
    return {"ok": True}


def _text_of(content: object) -> str:
    """A message content's text: the string itself, or the concatenated text parts (with the
    input of `tool_use` blocks as JSON and the content of `tool_result` blocks)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts = []
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "tool_use":
            parts.append(json.dumps(part.get("input")))
        elif part.get("type") == "tool_result":
            parts.append(_text_of(part.get("content")))
        else:
            parts.append(str(part.get("text", "")))
    return "".join(parts)


def _message_text(message: dict[str, Any]) -> str:
    """A message's text, with the arguments of the OpenAI tool calls it carries."""
    text = _text_of(message.get("content"))
    for call in message.get("tool_calls") or []:
        if isinstance(call, dict) and isinstance(call.get("function"), dict):
            text += str(call["function"].get("arguments") or "")
    return text


# -- the server -----------------------------------------------------------------------------------


class ProviderServer:
    """A fake OpenAI + Anthropic endpoint on 127.0.0.1, served from a daemon thread.

    Use as a context manager, or `start()` / `stop()`. Stopping never waits for a `Hang`.
    """

    def __init__(self, respond: Responder | None = None) -> None:
        self.respond: Responder = respond or _default_responder
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._requests: list[RecordedRequest] = []
        self._queue: list[tuple[str | None, Behaviour]] = []
        self._stopping = threading.Event()
        self._ids = itertools.count(1)
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> Self:
        """Bind a free port and start serving."""
        if self._server is not None:
            raise RuntimeError("the provider server is already running")
        self._stopping.clear()
        server = _HTTPServer(self)
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="provider-server",
            daemon=True,
        )
        self._server, self._thread = server, thread
        thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; requests still hanging are dropped."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """`http://127.0.0.1:<port>`, the Anthropic SDK's base URL."""
        if self._server is None:
            raise RuntimeError("the provider server is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def openai_base_url(self) -> str:
        """`url + "/v1"`, the OpenAI SDK's base URL."""
        return self.url + "/v1"

    # -- scripting and inspection

    def push(self, behaviour: Behaviour, *, model: str | None = None) -> None:
        """Queue a one-shot behaviour, for the next request (of `model`, when given)."""
        with self._lock:
            self._queue.append((model, behaviour))

    @property
    def pending(self) -> int:
        """How many pushed behaviours are not consumed yet."""
        with self._lock:
            return len(self._queue)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of every request received so far, in order."""
        with self._lock:
            return list(self._requests)

    def count(self, model: str | None = None) -> int:
        """How many requests were received (for `model`, when given)."""
        with self._lock:
            return sum(1 for r in self._requests if model is None or r.model == model)

    def wait_for_requests(self, count: int = 1, timeout: float = 5.0) -> None:
        """Block until `count` requests have arrived (TimeoutError after `timeout` seconds); from
        async code, `await asyncio.to_thread(server.wait_for_requests)`."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self._requests) >= count, timeout):
                raise TimeoutError(f"{len(self._requests)} of {count} requests arrived")

    # -- used by the handler

    def _record(self, record: RecordedRequest) -> None:
        with self._arrived:
            self._requests.append(record)
            self._arrived.notify_all()

    def _take(self, model: str | None) -> Behaviour | None:
        with self._lock:
            for index, (wanted, behaviour) in enumerate(self._queue):
                if wanted is None or wanted == model:
                    del self._queue[index]
                    return behaviour
        return None

    def _next_id(self) -> int:
        return next(self._ids)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, owner: ProviderServer) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.owner = owner

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet when a client went away (timed out) before its answer was written."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request log lines."""

    def do_POST(self) -> None:
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        body = parsed if isinstance(parsed, dict) else None
        model = body.get("model") if body is not None else None
        record = RecordedRequest(
            path=urlsplit(self.path).path,
            model=model if isinstance(model, str) else None,
            body=body,
            headers={name.lower(): value for name, value in self.headers.items()},
        )
        owner._record(record)
        protocol = record.protocol
        if protocol is None:
            self._fail("openai", Fail(404, message=f"no route for POST {record.path}"))
            return
        if body is None:
            self._fail(protocol, Fail(400, message="the request body is not a JSON object"))
            return
        self._perform(protocol, record, owner._take(record.model))

    def _perform(self, protocol: Protocol, record: RecordedRequest, what: Behaviour | None) -> None:
        owner = self.server.owner
        if isinstance(what, Hang):
            if owner._stopping.wait(what.seconds):
                self.close_connection = True
                return
            what = what.then
        if isinstance(what, Fail):
            self._fail(protocol, what)
        elif isinstance(what, Malformed):
            self._send(what.status, what.body.encode(), what.content_type)
        elif record.path == EMBEDDINGS_PATH:
            reply = what if isinstance(what, Reply) else None
            self._send_json(200, _openai_embeddings(record, reply))
        else:
            reply = what if isinstance(what, Reply) else None
            try:
                answer = reply.body if reply is not None else owner.respond(record)
            except Exception as exc:
                self._fail(protocol, Fail(500, message=f"responder failed: {exc!r}"))
                return
            build = _openai_completion if protocol == "openai" else _anthropic_message
            self._send_json(200, build(record, answer, reply, owner._next_id()))

    def _fail(self, protocol: Protocol, fail: Fail) -> None:
        headers = {} if fail.retry_after is None else {"Retry-After": _header(fail.retry_after)}
        self._send_json(fail.status, _error_body(protocol, fail), headers)

    def _send_json(
        self, status: int, payload: dict[str, Any], headers: Mapping[str, str] | None = None
    ) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", headers)

    def _send(
        self,
        status: int,
        data: bytes,
        content_type: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (ConnectionError, TimeoutError):
            self.close_connection = True


def _header(value: float | str) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# -- protocol bodies ------------------------------------------------------------------------------

_OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_denied",
    404: "not_found",
    429: "rate_limit_exceeded",
}
_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def _error_body(protocol: Protocol, fail: Fail) -> dict[str, Any]:
    if protocol == "openai":
        kind = _OPENAI_ERROR_TYPES.get(fail.status, "server_error")
        return {"error": {"message": fail.message, "type": kind, "param": None, "code": None}}
    kind = _ANTHROPIC_ERROR_TYPES.get(fail.status, "api_error")
    return {
        "type": "error",
        "error": {"type": kind, "message": fail.message},
        "request_id": f"req_fake_{time.monotonic_ns()}",
    }


def _usage(record: RecordedRequest, answer_text: str, reply: Reply | None) -> tuple[int, int, int]:
    """(input tokens including cached ones, output tokens, cached tokens)."""
    input_tokens = record.input_tokens()
    output_tokens = estimate_tokens(answer_text)
    if record.max_tokens is not None:
        output_tokens = min(output_tokens, record.max_tokens)
    cached = 0
    if reply is not None:
        input_tokens = reply.input_tokens if reply.input_tokens is not None else input_tokens
        output_tokens = reply.output_tokens if reply.output_tokens is not None else output_tokens
        cached = min(reply.cached_tokens, input_tokens)
    return input_tokens, output_tokens, cached


def _openai_completion(
    record: RecordedRequest, answer: Answer, reply: Reply | None, seq: int
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "refusal": None}
    finish_reason = "stop"
    if isinstance(answer, CallTools):
        calls = [
            {
                "id": f"call_fake{seq}_{index}",
                "type": "function",
                "function": {
                    "name": name,
                    "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
                },
            }
            for index, (name, arguments) in enumerate(answer.calls, 1)
        ]
        message["content"] = answer.text or None
        message["tool_calls"] = calls
        finish_reason = "tool_calls"
        text = answer.text + "".join(
            c["function"]["name"] + c["function"]["arguments"] for c in calls
        )
    else:
        text = answer if isinstance(answer, str) else json.dumps(answer)
        message["content"] = text
    input_tokens, output_tokens, cached = _usage(record, text, reply)
    return {
        "id": f"chatcmpl-fake{seq}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": record.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": (reply.finish_reason if reply else None) or finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": input_tokens,
            "completion_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
            "prompt_tokens_details": {"cached_tokens": cached},
        },
    }


def _openai_embeddings(record: RecordedRequest, reply: Reply | None) -> dict[str, Any]:
    body = record.body or {}
    dimensions = body.get("dimensions")
    if not isinstance(dimensions, int) or dimensions < 1:
        dimensions = EMBEDDING_DIMENSIONS.get(record.model or "", 1536)
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, text in enumerate(record.inputs):
        vector = fake_vector(text, dimensions)
        encoded: list[float] | str = vector
        if as_base64:
            encoded = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = record.input_tokens()
    if reply is not None and reply.input_tokens is not None:
        tokens = reply.input_tokens
    return {
        "object": "list",
        "data": data,
        "model": record.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _anthropic_message(
    record: RecordedRequest, answer: Answer, reply: Reply | None, seq: int
) -> dict[str, Any]:
    if isinstance(answer, CallTools):
        blocks: list[dict[str, Any]] = (
            [{"type": "text", "text": answer.text}] if answer.text else []
        )
        for index, (name, arguments) in enumerate(answer.calls, 1):
            try:
                value = json.loads(arguments) if isinstance(arguments, str) else arguments
            except ValueError:
                value = arguments  # not what the API would send: for malformed-answer tests
            blocks.append(
                {"type": "tool_use", "id": f"toolu_fake{seq}_{index}", "name": name, "input": value}
            )
        answer_text = answer.text + "".join(
            str(b["name"]) + json.dumps(b["input"]) for b in blocks if b["type"] == "tool_use"
        )
        input_tokens, output_tokens, cached = _usage(record, answer_text, reply)
        return _anthropic_body(
            record, blocks, "tool_use", reply, seq, (input_tokens, output_tokens, cached)
        )
    tool_input: dict[str, Any] | None = None
    if record.forced_tool is not None:
        if isinstance(answer, dict):
            tool_input = answer
        else:
            try:
                parsed = json.loads(answer)
            except ValueError:
                parsed = None
            tool_input = parsed if isinstance(parsed, dict) else None
    if tool_input is not None:
        answer_text = json.dumps(tool_input)
        block: dict[str, Any] = {
            "type": "tool_use",
            "id": f"toolu_fake{seq}",
            "name": record.forced_tool,
            "input": tool_input,
        }
        stop_reason = "tool_use"
    else:
        answer_text = answer if isinstance(answer, str) else json.dumps(answer)
        block = {"type": "text", "text": answer_text}
        stop_reason = "end_turn"
    usage = _usage(record, answer_text, reply)
    return _anthropic_body(record, [block], stop_reason, reply, seq, usage)


def _anthropic_body(
    record: RecordedRequest,
    blocks: list[dict[str, Any]],
    stop_reason: str,
    reply: Reply | None,
    seq: int,
    usage: tuple[int, int, int],
) -> dict[str, Any]:
    input_tokens, output_tokens, cached = usage
    return {
        "id": f"msg_fake{seq}",
        "type": "message",
        "role": "assistant",
        "model": record.model,
        "content": blocks,
        "stop_reason": (reply.finish_reason if reply else None) or stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens - cached,
            "output_tokens": output_tokens,
            "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": 0,
        },
    }
