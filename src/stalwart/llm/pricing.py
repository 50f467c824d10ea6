"""What a model call costs, in integer nano-USD (1 USD = 1_000_000_000) so budgets add up exactly.

Prices come from overrides first (`"provider:model"` beats a bare `"model"`), then from the
price table bundled with `genai-prices` (never fetched over the network: nothing here starts its
updater). The `scripted` provider is free unless overridden. A model nobody prices costs `None`,
which callers treat as "unknown", not as free.

Token counts follow the OpenAI convention: `input_tokens` includes `cached_tokens`, and the
cached ones are charged at the cached rate. Amounts are rounded up to the next nano-USD.

`genai-prices` tables hold tiered prices (a higher rate for every token once the prompt passes a
threshold), time-of-day prices and request fees, so costs from the table are computed by its
`calc_price` every time (about 50 µs); what is cached is which price-table provider to ask and
whether the model is known, so unknown models cost almost nothing to look up again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import TYPE_CHECKING, Final

import genai_prices
from genai_prices.data_snapshot import find_provider_by_id, get_snapshot
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stalwart.domain.budgets import MONEY_CONTEXT, NANOS_PER_USD, decimal_to_nanos, nanos, usd
from stalwart.errors import ConfigurationError

if TYPE_CHECKING:
    from stalwart.settings import Settings

FREE_PROVIDERS: Final = frozenset({"scripted"})
"""Providers whose calls cost nothing unless an override prices them."""

_TOKENS_PER_PRICE_UNIT = 1_000_000


class ModelPrice(BaseModel):
    """A price set by configuration: USD per million tokens. Cached input tokens cost
    `cached_input_per_mtok`, or the input price when it is not set."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)
    cached_input_per_mtok: float | None = Field(default=None, ge=0)


@dataclass(frozen=True, slots=True)
class _Rates:
    """An override's prices as exact decimals (USD per million tokens)."""

    input: Decimal
    output: Decimal
    cached: Decimal

    @classmethod
    def of(cls, price: ModelPrice) -> _Rates:
        cached = price.cached_input_per_mtok
        return cls(
            input=Decimal(repr(price.input_per_mtok)),
            output=Decimal(repr(price.output_per_mtok)),
            cached=Decimal(repr(price.input_per_mtok if cached is None else cached)),
        )

    def cost_nanos(self, input_tokens: int, output_tokens: int, cached_tokens: int) -> int:
        micro_usd = (
            (input_tokens - cached_tokens) * self.input
            + cached_tokens * self.cached
            + output_tokens * self.output
        )
        return decimal_to_nanos(
            MONEY_CONTEXT.divide(micro_usd, _TOKENS_PER_PRICE_UNIT), ROUND_CEILING
        )


@dataclass(frozen=True, slots=True)
class _Known:
    """A model the price table knows, and the provider id to ask it with (None: by model)."""

    provider_id: str | None


class Pricing:
    """Costs of model calls in nano-USD, from overrides and the bundled `genai-prices` table.

    Override keys are `"provider:model"` or `"model"`; the provider-qualified one wins.
    Instances are cheap to query repeatedly and safe to share between tasks.
    """

    def __init__(self, overrides: Mapping[str, ModelPrice] | None = None) -> None:
        self._overrides: dict[str, _Rates] = {
            key: _Rates.of(price) for key, price in (overrides or {}).items()
        }
        self._table: dict[tuple[str, str], _Known | None] = {}
        self._provider_ids: dict[str, str | None] = {}

    def cost_nanos(
        self,
        provider: str,
        model: str,
        *,
        input_tokens: int,
        output_tokens: int,
        cached_tokens: int = 0,
    ) -> int | None:
        """What a call cost, rounded up to the nano-USD; None when the model has no price.

        `cached_tokens` are part of `input_tokens` and are charged at the cached rate.
        """
        input_tokens, output_tokens = _count(input_tokens), _count(output_tokens)
        cached_tokens = min(_count(cached_tokens), input_tokens)
        rates = self._override(provider, model)
        if rates is not None:
            return rates.cost_nanos(input_tokens, output_tokens, cached_tokens)
        if provider in FREE_PROVIDERS:
            return 0
        return self._table_cost(provider, model, input_tokens, output_tokens, cached_tokens)

    def worst_case_nanos(
        self, provider: str, model: str, *, input_tokens: int, max_output_tokens: int
    ) -> int | None:
        """The most a call can cost: list price for every input token (no cache discount) and
        `max_output_tokens` output tokens, rounded up; None when the model has no price."""
        input_tokens, output_tokens = _count(input_tokens), _count(max_output_tokens)
        rates = self._override(provider, model)
        if rates is not None:
            return rates.cost_nanos(input_tokens, output_tokens, 0)
        if provider in FREE_PROVIDERS:
            return 0
        return self._table_cost(provider, model, input_tokens, output_tokens, 0)

    def is_priced(self, provider: str, model: str) -> bool:
        """Whether calls to this model have a price (an override, a free provider, the table)."""
        return (
            self._override(provider, model) is not None
            or provider in FREE_PROVIDERS
            or self._known(provider, model) is not None
        )

    # -- internals

    def _override(self, provider: str, model: str) -> _Rates | None:
        if not self._overrides:
            return None
        rates = self._overrides.get(f"{provider}:{model}")
        return rates if rates is not None else self._overrides.get(model)

    def _table_cost(
        self, provider: str, model: str, input_tokens: int, output_tokens: int, cached_tokens: int
    ) -> int | None:
        known = self._known(provider, model)
        if known is None:
            return None
        usage = genai_prices.Usage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_tokens=cached_tokens,
        )
        try:
            price = genai_prices.calc_price(usage, model, provider_id=known.provider_id)
        except (LookupError, ValueError):
            return None
        return decimal_to_nanos(price.total_price, ROUND_CEILING)

    def _known(self, provider: str, model: str) -> _Known | None:
        """The price table's entry for the model (cached, misses included)."""
        key = (provider, model)
        if key in self._table:
            return self._table[key]
        provider_id = self._provider_id(provider)
        try:
            get_snapshot().find_provider_model(model, None, provider_id, None)
        except LookupError:
            known = None
        else:
            known = _Known(provider_id)
        self._table[key] = known
        return known

    def _provider_id(self, provider: str) -> str | None:
        """`provider` when the price table knows it; else None (the table guesses by model)."""
        if provider not in self._provider_ids:
            found = find_provider_by_id(get_snapshot().providers, provider)
            self._provider_ids[provider] = provider if found is not None else None
        return self._provider_ids[provider]


def pricing_from_settings(settings: Settings) -> Pricing:
    """A `Pricing` with the overrides of `settings.llm_prices`
    (`{"provider:model" or "model": {"input_per_mtok": ..., "output_per_mtok": ...}}`)."""
    overrides: dict[str, ModelPrice] = {}
    for key, value in settings.llm_prices.items():
        try:
            overrides[key] = ModelPrice.model_validate(value)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'price'}: {e['msg']}" for e in exc.errors()
            )
            raise ConfigurationError(
                f"llm_prices[{key!r}] is not a valid price: {problems}", field="llm_prices"
            ) from exc
    return Pricing(overrides)


def _count(tokens: int) -> int:
    if tokens < 0:
        raise ValueError(f"token counts cannot be negative (got {tokens})")
    return int(tokens)


__all__ = [
    "FREE_PROVIDERS",
    "NANOS_PER_USD",
    "ModelPrice",
    "Pricing",
    "nanos",
    "pricing_from_settings",
    "usd",
]
