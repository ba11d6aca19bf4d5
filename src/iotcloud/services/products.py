"""Products: importing Gizwits datapoint definitions, and reading them back."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from iotcloud.codecs.datapoints import ProductDefinition, parse_product_definition
from iotcloud.codecs.errors import ProductDefinitionError
from iotcloud.domain import devices as rules
from iotcloud.domain.clock import Clock
from iotcloud.errors import (
    ProductDefinitionInvalid,
    ProductKeyInvalid,
    ProductKeyTaken,
)
from iotcloud.services.validation import checked
from iotcloud.storage.database import Database
from iotcloud.storage.devices import ProductRepository
from iotcloud.storage.models import ProductRow

log = logging.getLogger(__name__)

PRODUCT_NAME_MAX = 256


@dataclass(frozen=True)
class Product:
    """A product as the rest of the system sees it."""

    id: int
    product_key: str
    product_secret: str
    name: str
    protocol_type: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class ProductCredentials:
    """The keys of an imported product; ``created`` is False when an import replaced it."""

    product_key: str
    product_secret: str
    created: bool = True


class ProductService:
    """Imports datapoint definitions (validated by the codec, all or nothing) and serves them."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    async def import_definition(
        self,
        data: Mapping[str, Any],
        product_secret: str | None = None,
        replace: bool = False,
    ) -> ProductCredentials:
        """Validate and store a Gizwits datapoint JSON object.

        The file's own ``product_key`` is kept when present, else one is generated and written
        into the stored JSON (so ``GET /app/datapoint`` always names its product). The secret is
        generated unless given. Importing an existing product_key raises ``ProductKeyTaken``
        unless ``replace``, which swaps name, protocol and data points and keeps the secret
        (unless one is given). Raises ``ProductDefinitionInvalid`` naming the attr at fault, or
        ``FormInvalid`` for a malformed product_key/secret; nothing is stored then.
        """
        try:
            definition = parse_product_definition(data)
        except ProductDefinitionError as exc:
            raise ProductDefinitionInvalid(str(exc), exc.attr_name) from exc
        if len(definition.name) > PRODUCT_NAME_MAX or not definition.name.strip():
            raise ProductDefinitionInvalid(f"name: must be 1 to {PRODUCT_NAME_MAX} characters")
        if definition.product_key is not None:
            product_key = checked(rules.check_product_key, definition.product_key)
        else:
            product_key = rules.new_product_key()
        secret = (
            checked(rules.check_product_secret, product_secret)
            if product_secret is not None
            else None
        )
        source = dict(definition.source)
        source["product_key"] = product_key
        text = json.dumps(source, ensure_ascii=False)
        now = self.clock.now()
        async with self.db.session(lock=f"product:{product_key}") as session:
            products = ProductRepository(session)
            row = await products.by_key(product_key)
            if row is not None and not replace:
                raise ProductKeyTaken(
                    f"product_key {product_key} already exists; import with replace "
                    "(CLI --replace, API ?replace=true) to swap its data points"
                )
            created = row is None
            if row is None:
                row = await products.add(
                    ProductRow(
                        product_key=product_key,
                        product_secret=secret or rules.new_product_secret(),
                        name=definition.name,
                        protocol_type=definition.protocol_type.value,
                        definition=text,
                        created_at=now,
                        updated_at=now,
                    )
                )
                log.info("product %s imported (%d attrs)", product_key, len(definition.attrs))
            else:
                row.name = definition.name
                row.protocol_type = definition.protocol_type.value
                row.definition = text
                row.updated_at = now
                if secret is not None:
                    row.product_secret = secret
                log.info("product %s replaced (%d attrs)", product_key, len(definition.attrs))
            return ProductCredentials(row.product_key, row.product_secret, created=created)

    async def get(self, product_key: str) -> Product:
        """The product; raises ``ProductKeyInvalid`` (9002) when unknown."""
        return _product(await self._row(product_key))

    async def list(self) -> Sequence[Product]:
        async with self.db.session() as session:
            return [_product(row) for row in await ProductRepository(session).all()]

    async def definition(self, product_key: str) -> ProductDefinition:
        """The product's validated definition (``.source`` is the stored JSON object)."""
        return parse_product_definition(json.loads(await self.definition_json(product_key)))

    async def definition_json(self, product_key: str) -> str:
        """The stored datapoint JSON text, as served by ``GET /app/datapoint``."""
        return (await self._row(product_key)).definition

    async def _row(self, product_key: str) -> ProductRow:
        key = product_key.strip().lower()
        async with self.db.session() as session:
            row = await ProductRepository(session).by_key(key)
        if row is None:
            raise ProductKeyInvalid(f"unknown product_key {product_key!r}")
        return row


def _product(row: ProductRow) -> Product:
    return Product(
        id=row.id,
        product_key=row.product_key,
        product_secret=row.product_secret,
        name=row.name,
        protocol_type=row.protocol_type,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )
