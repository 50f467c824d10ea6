"""Reference paths walked through pydantic models: a path that cannot exist is found with where
it falls off and the field meant; anything that may exist is accepted."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Annotated, Any, Literal

import pytest
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    RootModel,
    computed_field,
    field_serializer,
    model_serializer,
)

from stalwart.planning.paths import PathMiss, path_miss


class Colour(Enum):
    RED = "red"


class Line(BaseModel):
    sku: str
    quantity: int


class Address(BaseModel):
    city: str
    zip_code: str | None = None


class Card(BaseModel):
    kind: Literal["card"] = "card"
    last4: str


class Transfer(BaseModel):
    kind: Literal["transfer"] = "transfer"
    iban: str


class Open(BaseModel):
    model_config = ConfigDict(extra="allow")
    known: str


class Invoice(BaseModel):
    vendor: str
    amount: float
    issued_at: datetime
    colour: Colour
    status: Literal["open", "paid"]
    lines: list[Line]
    pair: tuple[Line, Address]
    billing: Address | None
    payment: Card | Transfer
    meta: dict[str, Any]
    by_sku: dict[str, Line]
    anything: Any
    open: Open
    tagged: Annotated[Address, Field(description="a field with metadata")]
    total_due: float = Field(alias="totalDue")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def line_count(self) -> int:
        return len(self.lines)


def walk(path: str, model: Any = Invoice) -> PathMiss | None:
    return path_miss(model, path.split(".") if path else [])


@pytest.mark.parametrize(
    "path",
    [
        "",
        "vendor",
        "lines",
        "lines.0",
        "lines.12.sku",
        "pair.0.sku",
        "pair.1.city",
        "billing.city",
        "billing.zip_code",
        "payment.last4",  # a union: one arm has it
        "payment.iban",
        "meta.whatever.deeper",  # a dict of Any: anything may be there
        "by_sku.ABC.quantity",
        "anything.at.all",
        "open.known",
        "open.extra_field",  # extra="allow": extra fields are kept in the dump
        "tagged.city",
        "total_due",
        "totalDue",
        "line_count",  # a computed field is in the dump
    ],
)
def test_paths_that_may_exist_are_accepted(path: str) -> None:
    assert walk(path) is None


def test_a_missing_field_names_the_field_meant() -> None:
    miss = walk("vendr")
    assert miss is not None
    assert (miss.segment, miss.at, miss.kind) == ("vendr", (), "field")
    assert "vendor" in miss.known and "line_count" in miss.known
    assert miss.suggestion() == "vendor"
    text = miss.describe("the output of step a (Invoice)")
    assert text.startswith(
        "the output of step a (Invoice) has no field 'vendr'; did you mean `vendor`? (fields: "
    )


def test_a_missing_nested_field_says_where() -> None:
    miss = walk("lines.0.skuu")
    assert miss is not None
    assert (miss.segment, miss.at, miss.suggestion()) == ("skuu", ("lines", "0"), "sku")
    assert miss.describe("the output").startswith(
        "lines.0 of the output has no field 'skuu'; did you mean `sku`?"
    )
    optional = walk("billing.cty")
    assert optional is not None and optional.suggestion() == "city"


def test_a_union_where_no_arm_has_the_field_lists_every_arms_fields() -> None:
    miss = walk("payment.ibna")
    assert miss is not None
    assert miss.at == ("payment",)
    assert set(miss.known) == {"kind", "last4", "iban"}
    assert miss.suggestion() == "iban"


def test_a_list_needs_an_index() -> None:
    miss = walk("lines.sku")
    assert miss is not None and miss.kind == "index"
    assert miss.describe("the output") == (
        "lines of the output is a list: index it with a number (lines.0.sku)"
    )


@pytest.mark.parametrize(
    ("path", "what"),
    [
        ("vendor.name", "a string"),
        ("amount.value", "a number"),
        ("issued_at.year", "a string (a datetime)"),
        ("colour.value", "an enum value (Colour)"),
        ("status.x", "a literal value"),
        ("lines.0.quantity.x", "a number"),
    ],
)
def test_nothing_is_below_a_scalar(path: str, what: str) -> None:
    miss = walk(path)
    assert miss is not None and miss.kind == "leaf"
    assert miss.what == what
    assert f"is {what}: it has no field" in miss.describe("the output")


def test_a_root_model_is_walked_through_its_root() -> None:
    class Lines(RootModel[list[Line]]):
        pass

    assert path_miss(Lines, ["0", "sku"]) is None
    miss = path_miss(Lines, ["0", "sku_"])
    assert miss is not None and miss.suggestion() == "sku"


def test_models_that_write_their_own_json_are_not_checked() -> None:
    class Custom(BaseModel):
        a: int

        @model_serializer
        def dump(self) -> dict[str, Any]:
            return {"b": self.a}

    class FieldCustom(BaseModel):
        a: int

        @field_serializer("a")
        def dump_a(self, value: int) -> dict[str, int]:
            return {"value": value}

    class Plain(BaseModel):
        a: Annotated[int, PlainSerializer(lambda v: {"value": v})]

    assert path_miss(Custom, ["b"]) is None
    assert path_miss(FieldCustom, ["a", "value"]) is None
    assert path_miss(Plain, ["a", "value"]) is None
    assert path_miss(FieldCustom, ["b"]) is not None  # other fields are still known
