"""Routing: which model answers a call. Tiers (`small`, `medium`, `large`) map to chains of model
references (`provider:model`, first choice first); a step names its tier or its purpose, and a
provider error that may pass (an outage, overload, a timeout) moves the call down the chain.

Models are made on first use from settings (`openai:*`, `anthropic:*`, and named OpenAI- or
Anthropic-compatible endpoints) or registered by the app (`app.model("scripted:demo", model)`).
Making one imports its SDK and builds its client: half a second idle, seconds on a loaded machine.
That runs on a thread (`ready`), never on the event loop, where it would hold up every heartbeat
of the worker; a worker also makes its routed models before it claims any work (`Gateway.warm`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from stalwart.errors import ConfigurationError
from stalwart.llm.types import Model
from stalwart.settings import Settings

TIERS: tuple[str, ...] = ("small", "medium", "large")
DEFAULT_TIER_BY_PURPOSE: dict[str, str] = {
    "extraction": "small",
    "classification": "small",
    "formatting": "small",
    "summarization": "small",
    "evaluation": "medium",
    "reasoning": "large",
    "planning": "large",
}
PURPOSES: tuple[str, ...] = tuple(DEFAULT_TIER_BY_PURPOSE)


def split_ref(ref: str) -> tuple[str, str]:
    """`"openai:gpt-4o-mini"` → `("openai", "gpt-4o-mini")`; a model name may hold colons."""
    provider, sep, model = ref.partition(":")
    if not sep or not provider or not model:
        raise ConfigurationError(
            f"model reference {ref!r} must be provider:model, e.g. openai:gpt-4o-mini",
            field="llm_tiers",
        )
    return provider, model


class ModelRegistry:
    """Turns model references into `Model`s: registered instances first, then settings."""

    def __init__(self, settings: Settings, models: Mapping[str, Model] | None = None) -> None:
        self.settings = settings
        self._models: dict[str, Model] = dict(models or {})
        # Concurrent first calls of one reference make it once.
        self._making: dict[str, asyncio.Lock] = {}

    def register(self, ref: str, model: Model) -> None:
        """Answer `ref` with `model`."""
        split_ref(ref)
        self._models[ref] = model

    def known(self, ref: str) -> bool:
        """Whether `ref` can be made (registered, or a provider settings know)."""
        if ref in self._models:
            return True
        provider, _ = split_ref(ref)
        return provider in ("openai", "anthropic") or provider in self.settings.llm_endpoints

    def get(self, ref: str) -> Model:
        """The model for `ref`, made once, on the calling thread (from async code use `ready`:
        making a model blocks for as long as its SDK takes to import)."""
        model = self._models.get(ref)
        if model is None:
            model = self._make(ref)
            self._models[ref] = model
        return model

    async def ready(self, ref: str) -> Model:
        """The model for `ref`, made once, on a worker thread so the event loop keeps running
        (heartbeats, other steps) while the SDK is imported and the client built."""
        model = self._models.get(ref)
        if model is not None:
            return model
        async with self._making.setdefault(ref, asyncio.Lock()):
            model = self._models.get(ref)
            if model is None:
                model = await asyncio.to_thread(self._make, ref)
                self._models[ref] = model
        return model

    def made(self, ref: str) -> bool:
        """Whether the model for `ref` exists already (registered, or made)."""
        return ref in self._models

    def _make(self, ref: str) -> Model:
        provider, name = split_ref(ref)
        s = self.settings
        timeout = s.llm_timeout_seconds
        if provider == "openai":
            return _openai(name, provider, s.openai_base_url, _secret(s.openai_api_key), timeout)
        if provider == "anthropic":
            return _anthropic(
                name,
                provider,
                s.anthropic_base_url,
                _secret(s.anthropic_api_key),
                timeout,
                s.anthropic_open_telemetry,
            )
        endpoint = s.llm_endpoints.get(provider)
        if endpoint is None:
            raise ConfigurationError(
                f"no provider {provider!r} for model {ref!r}: use openai:, anthropic:, an "
                f"endpoint named in STALWART_LLM_ENDPOINTS (known: "
                f"{', '.join(sorted(s.llm_endpoints)) or 'none'}), or app.model({ref!r}, ...)",
                field="llm_endpoints",
            )
        kind = endpoint.get("kind", "openai")
        base_url = endpoint.get("base_url")
        key = endpoint.get("api_key")
        if kind == "openai":
            return _openai(name, provider, base_url, key, timeout)
        if kind == "anthropic":
            return _anthropic(name, provider, base_url, key, timeout, s.anthropic_open_telemetry)
        raise ConfigurationError(
            f"endpoint {provider!r} has kind {kind!r}; use 'openai' or 'anthropic'",
            field="llm_endpoints",
        )

    async def close(self) -> None:
        """Close every model made or registered."""
        for model in self._models.values():
            await model.close()


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None


def _openai(
    name: str, provider: str, base_url: str | None, key: str | None, timeout: float
) -> Model:
    from stalwart.llm.providers.openai import OpenAIChatModel

    return OpenAIChatModel(
        name, base_url=base_url, api_key=key, provider=provider, timeout_seconds=timeout
    )


def _anthropic(
    name: str, provider: str, base_url: str | None, key: str | None, timeout: float, otel: bool
) -> Model:
    from stalwart.llm.providers.anthropic import AnthropicModel

    return AnthropicModel(
        name,
        base_url=base_url,
        api_key=key,
        provider=provider,
        timeout_seconds=timeout,
        open_telemetry=otel,
    )


class Router:
    """Tier → chain of model references. Settings' `llm_tiers` override the app's routes."""

    def __init__(self, routes: Mapping[str, Sequence[str]], settings: Settings) -> None:
        merged = {tier: list(chain) for tier, chain in routes.items()}
        merged.update({tier: list(chain) for tier, chain in settings.llm_tiers.items()})
        for tier, chain in merged.items():
            if tier not in TIERS:
                raise ConfigurationError(
                    f"unknown tier {tier!r}; tiers are {', '.join(TIERS)}", field="llm_tiers"
                )
            for ref in chain:
                split_ref(ref)
        self.routes = merged

    @staticmethod
    def tier_for(purpose: str | None, tier: str | None = None) -> str:
        """The step's tier: its own, else its purpose's default, else `medium`."""
        if tier:
            return tier
        return DEFAULT_TIER_BY_PURPOSE.get(purpose or "", "medium")

    def chain(self, tier: str) -> list[str]:
        """The models of `tier`, first choice first. Raises `ConfigurationError` if none."""
        chain = self.routes.get(tier)
        if not chain:
            raise ConfigurationError(
                f"no model is routed for tier {tier!r}: set STALWART_LLM_TIERS, e.g. "
                f'\'{{"{tier}": ["openai:gpt-4o-mini"]}}\', or call app.route({tier!r}, [...])',
                field="llm_tiers",
            )
        return list(chain)

    def has(self, tier: str) -> bool:
        """Whether `tier` has a model."""
        return bool(self.routes.get(tier))

    def cheaper(self, tier: str) -> str | None:
        """The next cheaper tier that has a model, or None."""
        index = TIERS.index(tier) if tier in TIERS else 0
        for lower in reversed(TIERS[:index]):
            if self.has(lower):
                return lower
        return None
