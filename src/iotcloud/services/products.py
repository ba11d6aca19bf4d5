"""Products: importing Gizwits datapoint definitions and Tencent data templates, and reading
them back.

A product is either a Gizwits product (``protocol_type`` ``standard``/``var_len``, a 32-hex
product_key, a datapoint JSON) or a data-template product (``protocol_type``
``data_template``, keyed by the template's ``profile.ProductId``, the template JSON stored as
imported). `ProductService.definition` serves the first kind and `ProductService.template` the
second; asking either of the other kind raises `ProductProtocolMismatch`, so no caller decodes
a template as P0 by mistake.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from iotcloud.codecs.datapoints import ProductDefinition, parse_product_definition
from iotcloud.codecs.errors import ProductDefinitionError
from iotcloud.codecs.template import (
    DATA_TEMPLATE_PROTOCOL,
    DataTemplate,
    TemplateDefinitionError,
    is_data_template,
    parse_data_template,
)
from iotcloud.domain import devices as rules
from iotcloud.domain import registration as registration_policy
from iotcloud.domain.clock import Clock
from iotcloud.domain.registration import RegistrationPolicy
from iotcloud.errors import (
    FormInvalid,
    ProductDefinitionInvalid,
    ProductKeyInvalid,
    ProductKeyTaken,
    ProductProtocolMismatch,
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
    registration: RegistrationPolicy = "open"
    """How its devices may register themselves (``domain/registration.py``); a data-template
    product's devices never do: they are always ``preprovisioned``."""

    @property
    def is_data_template(self) -> bool:
        """True for a Tencent data-template product."""
        return self.protocol_type == DATA_TEMPLATE_PROTOCOL


@dataclass(frozen=True)
class ProductCredentials:
    """The keys of an imported product; ``created`` is False when an import replaced it."""

    product_key: str
    product_secret: str
    created: bool = True


class ProductService:
    """Imports datapoint definitions and data templates (validated by the codecs, all or
    nothing) and serves them.

    Parsed templates are cached per product_key together with the row's ``updated_at``: a hit
    costs one indexed read instead of a parse, and a re-import (which bumps ``updated_at``)
    invalidates the entry on the next call, on every process sharing the database.
    """

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock
        self._templates: dict[str, tuple[datetime, DataTemplate]] = {}

    async def import_definition(
        self,
        data: Mapping[str, Any],
        product_secret: str | None = None,
        replace: bool = False,
        registration: str | None = None,
    ) -> ProductCredentials:
        """Validate and store a Gizwits datapoint JSON object or a Tencent data template.

        A data template (top-level ``profile`` and ``properties``) becomes a ``data_template``
        product keyed by its ``profile.ProductId``, named after it, and stored as imported;
        `TemplateDefinitionError` becomes ``ProductDefinitionInvalid`` naming the JSON path.
        For a datapoint JSON: the file's own ``product_key`` is kept when present, else one is
        generated and written into the stored JSON (so ``GET /app/datapoint`` always names its
        product). The secret is generated unless given. Importing an existing product_key
        raises ``ProductKeyTaken`` unless ``replace``, which swaps name, protocol and data
        points and keeps the secret (unless one is given). Raises ``ProductDefinitionInvalid``
        naming the attr (or JSON path) at fault, or ``FormInvalid`` for a malformed
        product_key/secret or registration policy; nothing is stored then.

        ``registration`` sets the registration policy (``open`` for a new product unless
        given; a replaced product keeps its own unless given). A data-template product's is
        always ``preprovisioned``.
        """
        policy = _policy(registration) if registration is not None else None
        if is_data_template(data):
            if policy not in (None, "preprovisioned"):
                raise FormInvalid(
                    "registration: a data-template product's devices never register "
                    "themselves (an operator creates them): it is always preprovisioned"
                )
            return await self._import_template(data, product_secret, replace)
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
        return await self._store(
            product_key,
            definition.name,
            definition.protocol_type.value,
            json.dumps(source, ensure_ascii=False),
            secret,
            replace=replace,
            size=f"{len(definition.attrs)} attrs",
            registration=policy,
        )

    async def _import_template(
        self, data: Mapping[str, Any], product_secret: str | None, replace: bool
    ) -> ProductCredentials:
        try:
            template = parse_data_template(data)
        except TemplateDefinitionError as exc:
            raise ProductDefinitionInvalid(str(exc), exc.path or None) from exc
        secret = (
            checked(rules.check_product_secret, product_secret)
            if product_secret is not None
            else None
        )
        return await self._store(
            template.product_id,
            template.product_id,
            DATA_TEMPLATE_PROTOCOL,
            json.dumps(template.source, ensure_ascii=False),
            secret,
            replace=replace,
            size=f"{len(template.properties)} properties",
            registration="preprovisioned",
        )

    async def _store(
        self,
        product_key: str,
        name: str,
        protocol_type: str,
        text: str,
        secret: str | None,
        *,
        replace: bool,
        size: str,
        registration: RegistrationPolicy | None,
    ) -> ProductCredentials:
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
                        name=name,
                        protocol_type=protocol_type,
                        definition=text,
                        registration=registration or "open",
                        created_at=now,
                        updated_at=now,
                    )
                )
                log.info(
                    "product %s imported (%s, registration %s)", product_key, size, row.registration
                )
            else:
                row.name = name
                row.protocol_type = protocol_type
                row.definition = text
                row.updated_at = now
                if secret is not None:
                    row.product_secret = secret
                if registration is not None:
                    row.registration = registration
                log.info("product %s replaced (%s)", product_key, size)
            return ProductCredentials(row.product_key, row.product_secret, created=created)

    async def set_registration(self, product_key: str, registration: str) -> Product:
        """Change how the product's devices may register themselves (``open``, ``signed``,
        ``preprovisioned``). Devices already registered keep their dids and passcodes; the
        policy applies to their next registration. Raises ``ProductKeyInvalid`` (9002) when
        unknown, ``FormInvalid`` naming ``registration`` for another value or a data-template
        product (always ``preprovisioned``)."""
        policy = _policy(registration)
        row = await self._row(product_key)
        if row.protocol_type == DATA_TEMPLATE_PROTOCOL and policy != "preprovisioned":
            raise FormInvalid(
                f"registration: {row.product_key} is a data-template product; its devices "
                "never register themselves: it is always preprovisioned"
            )
        async with self.db.session(lock=f"product:{row.product_key}") as session:
            stored = await ProductRepository(session).by_key(row.product_key)
            if stored is None:
                raise ProductKeyInvalid(f"unknown product_key {product_key!r}")
            if stored.registration != policy:
                stored.registration = policy
                stored.updated_at = self.clock.now()
                log.info("product %s: registration policy now %s", stored.product_key, policy)
            return _product(stored)

    async def get(self, product_key: str) -> Product:
        """The product; raises ``ProductKeyInvalid`` (9002) when unknown."""
        return _product(await self._row(product_key))

    async def list(self) -> Sequence[Product]:
        async with self.db.session() as session:
            return [_product(row) for row in await ProductRepository(session).all()]

    async def definition(self, product_key: str) -> ProductDefinition:
        """The product's validated datapoint definition (``.source`` is the stored JSON object).

        Raises ``ProductKeyInvalid`` when unknown and ``ProductProtocolMismatch`` for a
        data-template product (use `template`)."""
        row = await self._row(product_key)
        if row.protocol_type == DATA_TEMPLATE_PROTOCOL:
            raise ProductProtocolMismatch(
                f"product_key {row.product_key} is a data-template product: it has no Gizwits "
                "datapoint definition"
            )
        return parse_product_definition(json.loads(row.definition))

    async def template(self, product_key: str) -> DataTemplate:
        """The data template of a data-template product.

        Raises ``ProductKeyInvalid`` when unknown and ``ProductProtocolMismatch`` for a Gizwits
        product (use `definition`)."""
        row = await self._row(product_key)
        return self.template_of(row)

    def template_of(self, row: ProductRow) -> DataTemplate:
        """The parsed template of a product row already read (cached by ``updated_at``)."""
        if row.protocol_type != DATA_TEMPLATE_PROTOCOL:
            raise ProductProtocolMismatch(
                f"product_key {row.product_key} is a Gizwits product: it has no data template"
            )
        cached = self._templates.get(row.product_key)
        if cached is not None and cached[0] == row.updated_at:
            return cached[1]
        template = parse_data_template(json.loads(row.definition))
        self._templates[row.product_key] = (row.updated_at, template)
        return template

    async def definition_json(self, product_key: str) -> str:
        """The stored JSON text as served by ``GET /app/datapoint``: the datapoint JSON of a
        Gizwits product, the data template as imported for a data-template product."""
        return (await self._row(product_key)).definition

    async def _row(self, product_key: str) -> ProductRow:
        key = product_key.strip()
        if not rules.is_product_id(key):
            key = key.lower()  # Gizwits keys are stored lower-case; ProductIds are exact
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
        registration=(
            "preprovisioned"
            if row.protocol_type == DATA_TEMPLATE_PROTOCOL
            else registration_policy.check_policy(row.registration)
        ),
    )


def _policy(value: str) -> RegistrationPolicy:
    return checked(registration_policy.check_policy, value)
