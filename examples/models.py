"""The messages the example services exchange, as msgspec structs.

asyncipc encodes and decodes them (JSON on the wire, with a ``content-type`` header) from
the handlers' annotations and the ``response=`` / ``model=`` arguments: no service here
touches JSON itself. A pydantic ``BaseModel`` or a dataclass would do as well
(docs/services.md).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

Positive = Annotated[int, msgspec.Meta(ge=1)]


class Item(msgspec.Struct):
    sku: str
    qty: Positive


class Order(msgspec.Struct):
    """``orders.created``, and the request to ``pricing.quote`` (without a total yet)."""

    id: int
    items: list[Item]
    total_cents: int = 0


class Quote(msgspec.Struct):
    """The reply of ``pricing.quote``."""

    order: int
    total_cents: int
    currency: str


class Billed(msgspec.Struct):
    """``orders.billed``: which worker billed which order, for how much."""

    order: int
    worker: str
    amount_cents: int
