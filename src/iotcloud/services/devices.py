"""Devices: self-registration and provisioning (GAgent's ``/dev/devices``), operator creation,
bulk import, and enabling/disabling.

Identity rules (``domain/devices.py``): one did per (product, MAC). A device that registers again
with the same MAC, e.g. after a factory reset, keeps its did, and the passcode it sends replaces
the stored one, so the firmware's freshly generated passcode is what MQTT accepts from then on.
A disabled device stays disabled when it registers again (9023); only an operator enables it.

A data-template (Tencent) device has no MAC: an operator creates it by name within its
product (``create_named``), and it gets a ``psk`` (the key its MQTT password is signed with)
and a passcode (so Gizwits apps can bind it by did + passcode). Every device has a ``name``
unique in its product; a Gizwits device is named by its MAC. Operations of one protocol asked
of a product of the other raise ``ProductProtocolMismatch`` naming the field at fault.
"""

from __future__ import annotations

import csv
import hmac
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from iotcloud.codecs.template import DATA_TEMPLATE_PROTOCOL
from iotcloud.config import Settings
from iotcloud.domain import devices as rules
from iotcloud.domain import registration
from iotcloud.domain.accounts import FieldInvalid
from iotcloud.domain.clock import Clock
from iotcloud.domain.registration import DeviceOrigin
from iotcloud.errors import (
    DeviceAuthInvalid,
    DeviceDisabled,
    DeviceNotFound,
    EncryptedProvisionRequired,
    EncryptedRegistrationRequired,
    FormInvalid,
    IotCloudError,
    ProductKeyInvalid,
    ProductProtocolMismatch,
    ServerError,
)
from iotcloud.services.bindings import BindingChange
from iotcloud.services.validation import checked
from iotcloud.storage.bindings import BindingRepository
from iotcloud.storage.database import Database
from iotcloud.storage.devices import DeviceRepository, MacTaken, ProductRepository
from iotcloud.storage.models import DeviceRow, ProductRow
from iotcloud.storage.telemetry import FrameEvent, TelemetryRepository

log = logging.getLogger(__name__)

IMPORT_BATCH_SIZE = 500
CSV_COLUMNS = ("product_key", "mac", "name", "passcode", "psk")
_RACE_RETRIES = 3


@dataclass(frozen=True)
class Device:
    """A device as the rest of the system sees it."""

    did: str
    product_key: str
    mac: str
    """The MAC; "" for a data-template device."""
    passcode: str
    is_disabled: bool
    is_online: bool
    last_online_at: datetime | None
    last_offline_at: datetime | None
    mcu_soft_version: str | None
    mcu_hard_version: str | None
    wifi_soft_version: str | None
    wifi_hard_version: str | None
    created_at: datetime
    updated_at: datetime
    name: str = ""
    """The device's name in its product (Tencent ``DeviceName``; the MAC of a Gizwits device)."""
    psk: str | None = None
    """A data-template device's key (base64); None for a Gizwits device."""
    origin: str = "operator"
    """Who created it: ``operator``, or the device itself (``registered`` plain, ``signed``)."""
    owner_since: datetime | None = None
    """When it last registered with a different passcode (a new ownership), if ever."""


@dataclass(frozen=True)
class DeviceCredentials:
    """What a device needs to connect; ``created`` is False when the MAC was already known."""

    did: str
    passcode: str
    mac: str
    created: bool = True


@dataclass(frozen=True)
class NamedDeviceCredentials:
    """What a data-template device needs to connect (``device_name``, ``psk``), and the
    passcode a Gizwits app binds it with; ``created`` is False when the name was known."""

    did: str
    device_name: str
    psk: str
    passcode: str
    created: bool = True


@dataclass(frozen=True)
class Provisioning:
    """Where a device connects over MQTT, and the server's clock (Unix seconds)."""

    host: str
    port: int
    server_ts: int
    port_s: int | None = None
    """The MQTT TLS port, when TLS is served."""


@dataclass(frozen=True)
class DeviceImportRow:
    """One data row of a device CSV; ``line`` is the file line it starts on (header = 1)."""

    line: int
    product_key: str
    mac: str = ""
    passcode: str | None = None
    name: str | None = None
    """Set (and ``mac`` empty) for a data-template device."""
    psk: str | None = None


@dataclass(frozen=True)
class ImportFailure:
    line: int
    error: str


@dataclass
class ImportReport:
    """Outcome of a bulk import: rows stored, rows whose device already existed (left as they
    were), and rows refused with the reason."""

    created: int = 0
    existing: int = 0
    failed: list[ImportFailure] = field(default_factory=list)


def read_device_csv(lines: Iterable[str]) -> tuple[list[DeviceImportRow], list[ImportFailure]]:
    """Parse a device CSV: header ``product_key,mac[,passcode]`` for Gizwits devices, or
    ``product_key,name[,psk][,passcode]`` for data-template devices.

    Blank lines are skipped; a row with the wrong number of fields is reported as a failure of
    its line. Raises ``FormInvalid`` when the header is missing, names unknown columns, names
    both or neither of ``mac`` and ``name``, or names ``psk`` without ``name``.
    """
    reader = csv.reader(lines)
    header: list[str] | None = None
    for candidate in reader:
        if any(cell.strip() for cell in candidate):
            header = [cell.strip().lower() for cell in candidate]
            break
    if header is None:
        raise FormInvalid(
            "header: the file is empty; expected product_key,mac[,passcode] or "
            "product_key,name[,psk]"
        )
    unknown = [name for name in header if name not in CSV_COLUMNS]
    named = "name" in header
    if (
        unknown
        or "product_key" not in header
        or named == ("mac" in header)
        or ("psk" in header and not named)
        or len(set(header)) != len(header)
    ):
        raise FormInvalid(
            f"header (line {reader.line_num}): expected columns product_key,mac and optionally "
            f"passcode, or product_key,name and optionally psk, got {','.join(header)}"
        )
    rows: list[DeviceImportRow] = []
    failures: list[ImportFailure] = []
    previous = reader.line_num
    for cells in reader:
        line, previous = previous + 1, reader.line_num  # a quoted field may span lines
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(header):
            failures.append(ImportFailure(line, f"expected {len(header)} fields, got {len(cells)}"))
            continue
        values = {name: cell.strip() for name, cell in zip(header, cells, strict=True)}
        rows.append(
            DeviceImportRow(
                line=line,
                product_key=values["product_key"],
                mac=values.get("mac", ""),
                passcode=values.get("passcode") or None,
                name=values["name"] if named else None,
                psk=values.get("psk") or None,
            )
        )
    return rows, failures


class DeviceService:
    """Device identities. Every operation is one unit of work; concurrent registrations of one
    MAC serialise on a per-(product, MAC) lock and agree on one did."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        settings: Settings,
        on_change: Callable[[Sequence[str] | None], Awaitable[None]] | None = None,
        on_new_owner: Callable[[str, Sequence[BindingChange]], Awaitable[None]] | None = None,
    ) -> None:
        """``on_change`` hears of every device whose credentials or state may have changed
        (the dids; None after a bulk import), after the change was committed; ``on_new_owner``
        of each new ownership (a device registered with a new passcode): its did and the
        bindings that ended with it."""
        self.db = db
        self.clock = clock
        self.settings = settings
        self.on_change = on_change
        self.on_new_owner = on_new_owner

    # -- the device side (GAgent) --------------------------------------------------------------

    async def register(
        self, product_key: str, mac: str, passcode: str, *, peer: str | None = None
    ) -> str:
        """``POST /dev/devices``: the did of (product, MAC), under the product's registration
        policy (``domain/registration.py``).

        ``open``: created on first registration; registering again with the same passcode
        returns the same did; with another passcode the passcode is replaced and the device's
        bindings end (a new ownership). ``signed`` products refuse this plain call
        (``EncryptedRegistrationRequired``, 9047). ``preprovisioned`` products accept only
        devices an operator created, with their own passcode (``DeviceNotFound`` 9014,
        ``DeviceAuthInvalid`` 9016 otherwise).

        Also raises ``ProductKeyInvalid`` (9002) for an unknown or malformed product_key,
        ``FormInvalid`` (9015) naming ``mac``/``passcode``, ``DeviceDisabled`` (9023) when the
        device was disabled. Refusals of a known device are written to its frame log; ``peer``
        is the caller's address.
        """
        key = _product_key(product_key)
        mac = checked(rules.check_mac, mac)
        passcode = checked(rules.check_passcode, passcode)
        return await self._register(key, mac, passcode, encrypted=False, peer=peer)

    async def register_encrypted(
        self, product_key: str, data: str, *, peer: str | None = None
    ) -> str:
        """``POST /dev/{product_key}/device``: ``data`` is the hex of the AES-encrypted
        ``mac=..&passcode=..&type=normal``; returns the hex of the encrypted ``did=<did>``.

        Any policy accepts it (``preprovisioned`` with its rules). Raises ``ProductKeyInvalid``
        (9002), ``FormInvalid`` (9015) naming ``data`` (not hex, not decryptable with the
        product secret, a field missing) or ``data.mac``/``data.passcode``, and the errors of
        :meth:`register`.
        """
        key = _product_key(product_key)
        secret = await self._secret_of(key)
        fields = checked(
            registration.parse_registration, checked(registration.decrypt, secret, data)
        )
        mac = checked(rules.check_mac, fields.mac, "data.mac")
        passcode = checked(rules.check_passcode, fields.passcode, "data.passcode")
        did = await self._register(key, mac, passcode, encrypted=True, peer=peer)
        return registration.encrypt(secret, f"did={did}")

    async def provision(self, did: str, *, peer: str | None = None) -> Provisioning:
        """``GET /dev/devices/{did}``: the MQTT endpoint. Raises ``DeviceNotFound`` (9014),
        ``DeviceDisabled`` (9023), or ``EncryptedProvisionRequired`` (9048) for a device of a
        ``signed`` product or one that registered encrypted."""
        row, product = await self._device_and_product(did)
        if _encrypted_only(row, product):
            await self._refused(row.id, "plain provision", peer)
            raise EncryptedProvisionRequired(
                f"did: device {did} takes only the encrypted provision "
                f"(GET /dev/{product.product_key}/device?did=<encrypted did>)"
            )
        return self._provisioning(row)

    async def provision_encrypted(self, product_key: str, data: str) -> str:
        """``GET /dev/{product_key}/device?did=<hex(AES(did))>``: the hex of the encrypted
        ``host=..&port=..&server_ts=..&``. The plaintext may be the did or ``did=<did>``.

        Raises ``ProductKeyInvalid`` (9002), ``FormInvalid`` (9015) naming ``did``,
        ``DeviceNotFound`` (9014) for a did that is not a device of this product,
        ``DeviceDisabled`` (9023)."""
        key = _product_key(product_key)
        secret = await self._secret_of(key)
        plain = checked(registration.decrypt, secret, data, "did")
        did = checked(rules.check_did, plain.removeprefix("did="))
        row, product = await self._device_and_product(did)
        if product.product_key != key:
            raise DeviceNotFound(f"did: product {key} has no device {did}")
        where = self._provisioning(row)
        return registration.encrypt(secret, provisioning_body(where))

    async def disable(self, did: str, passcode: str, *, peer: str | None = None) -> None:
        """``DELETE /dev/devices``: the device gives up its did. Idempotent.

        Raises ``DeviceNotFound`` (9014), ``EncryptedRegistrationRequired`` (9047) for a device
        of a ``signed`` product or one that registered encrypted, or ``DeviceAuthInvalid`` (9016)
        when ``passcode`` is not the
        device's current one (which is the case for a reset device deleting its old identity
        after it registered again with a new passcode: its did stays usable).
        """
        row, product = await self._device_and_product(did)
        if _encrypted_only(row, product):
            await self._refused(row.id, "plain delete", peer)
            raise EncryptedRegistrationRequired(
                f"did: device {did} registered encrypted; it cannot be deleted with a plain call"
            )
        if not hmac.compare_digest(row.passcode.encode(), passcode.encode()):
            await self._refused(row.id, "delete: passcode mismatch", peer)
            raise DeviceAuthInvalid(f"passcode does not match did {did}")
        if row.is_disabled:
            return
        async with self.db.session() as session:
            if not await DeviceRepository(session).disable_if_passcode(
                did, passcode, self.clock.now()
            ):
                raise DeviceAuthInvalid(f"passcode does not match did {did}")
        log.info("device %s disabled itself", did)
        await self._changed([did])

    def _provisioning(self, row: DeviceRow) -> Provisioning:
        if row.is_disabled:
            raise DeviceDisabled(f"device {row.did} is disabled")
        return Provisioning(
            host=self.settings.public_host,
            port=self.settings.mqtt_port,
            server_ts=int(self.clock.now().timestamp()),
            port_s=self.settings.mqtts_port if self.settings.tls_enabled else None,
        )

    async def _device_and_product(self, did: str) -> tuple[DeviceRow, ProductRow]:
        async with self.db.session() as session:
            found = await DeviceRepository(session).with_product(did)
        if found is None:
            raise DeviceNotFound(f"no device with did {did!r}")
        return found

    async def _secret_of(self, product_key: str) -> str:
        """The secret of a Gizwits product (the key of its encrypted calls)."""
        async with self.db.session() as session:
            product = await _product(session, product_key)
        if product.protocol_type == DATA_TEMPLATE_PROTOCOL:
            raise ProductProtocolMismatch(
                f"product_key: {product_key} is a data-template product; its devices are "
                "created by name, not registered by MAC"
            )
        return product.product_secret

    async def _register(
        self, product_key: str, mac: str, passcode: str, *, encrypted: bool, peer: str | None
    ) -> str:
        try:
            row, created, ended = await self._ensure(
                product_key, mac, passcode, register="signed" if encrypted else "registered"
            )
        except _Refusal as refusal:
            if refusal.device_id is not None:
                await self._refused(refusal.device_id, refusal.reason, peer)
            log.info("registration refused (product %s, mac %s): %s", product_key, mac, refusal)
            raise refusal.error from None
        if created:
            log.info("device %s registered (product %s, mac %s)", row.did, product_key, mac)
        await self._changed([row.did])
        if ended is not None:
            log.warning(
                "device %s (product %s, mac %s) registered with a new passcode from %s: "
                "a new ownership; %d bindings ended",
                row.did,
                product_key,
                mac,
                peer or "an unknown address",
                len(ended),
            )
            await self._new_owner(row.did, ended)
        return row.did

    async def _refused(self, device_id: int, reason: str, peer: str | None) -> None:
        """Write a refused device call to the device's frame log (``dev_refused``)."""
        try:
            async with self.db.session() as session:
                await TelemetryRepository(session).log_frames(
                    [
                        FrameEvent(
                            device_id,
                            self.clock.now(),
                            "dev_refused",
                            detail=refusal_detail(reason, peer),
                        )
                    ]
                )
        except Exception:  # the refusal stands; only its record is lost
            log.exception("could not log a refused call of device %d", device_id)

    async def _new_owner(self, did: str, ended: Sequence[BindingChange]) -> None:
        if self.on_new_owner is None:
            return
        try:
            await self.on_new_owner(did, ended)
        except Exception:  # the bindings are gone; listeners catch up on their own
            log.exception("new-owner listener failed for device %s", did)

    # -- operators -----------------------------------------------------------------------------

    async def create(
        self, product_key: str, mac: str, passcode: str | None = None
    ) -> DeviceCredentials:
        """Create the device of (product, MAC), or return the existing one unchanged
        (``created=False``). The passcode is generated unless given."""
        key = _product_key(product_key)
        mac = checked(rules.check_mac, mac)
        passcode = checked(rules.check_passcode, passcode) if passcode is not None else None
        row, created, _ = await self._ensure(key, mac, passcode, register=None)
        if created:
            log.info("device %s created (product %s, mac %s)", row.did, key, mac)
            await self._changed([row.did])
        return DeviceCredentials(did=row.did, passcode=row.passcode, mac=mac, created=created)

    async def create_named(
        self,
        product_key: str,
        name: str,
        psk: str | None = None,
        passcode: str | None = None,
    ) -> NamedDeviceCredentials:
        """Create the device called ``name`` of a data-template product, or return the existing
        one unchanged (``created=False``). The psk (base64 of 16 random bytes) and the passcode
        are generated unless given.

        Raises ``ProductKeyInvalid`` (9002) for an unknown or malformed product_key,
        ``ProductProtocolMismatch`` (9015, naming ``name``) for a Gizwits product (whose devices
        are created by MAC), ``FormInvalid`` naming ``name``, ``psk`` or ``passcode``.
        """
        key = _product_key(product_key)
        name = checked(rules.check_device_name, name)
        psk = checked(rules.check_psk, psk) if psk is not None else None
        passcode = checked(rules.check_passcode, passcode) if passcode is not None else None
        row, created = await self._ensure_named(key, name, psk, passcode)
        if created:
            log.info("device %s created (product %s, name %s)", row.did, key, name)
            await self._changed([row.did])
        assert row.psk is not None  # a device of a data-template product always has one
        return NamedDeviceCredentials(
            did=row.did, device_name=row.name, psk=row.psk, passcode=row.passcode, created=created
        )

    async def import_csv(
        self,
        rows: Sequence[DeviceImportRow],
        *,
        batch_size: int = IMPORT_BATCH_SIZE,
        progress: Callable[[int], None] | None = None,
    ) -> ImportReport:
        """Create the devices of ``rows``, ``batch_size`` per transaction.

        Bad rows (malformed or unknown product_key, bad MAC, name, psk or passcode, a MAC for a
        data-template product or a name for a Gizwits one) are reported with their line; good
        rows are stored. A row whose device exists already (in the database or earlier
        in the file) counts as ``existing`` and changes nothing. ``progress`` is called with the
        number of rows handled after each batch.
        """
        report = ImportReport()
        products: dict[str, ProductRow | None] = {}
        seen: set[tuple[int, str]] = set()
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            await self._import_batch(batch, products, seen, report)
            if progress is not None:
                progress(len(batch))
        if report.created:
            log.info("device import stored %d devices", report.created)
            await self._changed(None)
        return report

    async def get(self, did: str) -> Device:
        """The device; raises ``DeviceNotFound`` (9014)."""
        async with self.db.session() as session:
            found = await DeviceRepository(session).with_product(did)
        if found is None:
            raise DeviceNotFound(f"no device with did {did!r}")
        return _device(*found)

    async def set_disabled(self, did: str, disabled: bool) -> Device:
        """Disable or enable a device; raises ``DeviceNotFound`` (9014)."""
        async with self.db.session() as session:
            changed = await DeviceRepository(session).set_disabled(did, disabled, self.clock.now())
        if not changed:
            raise DeviceNotFound(f"no device with did {did!r}")
        log.info("device %s %s by an operator", did, "disabled" if disabled else "enabled")
        await self._changed([did])
        return await self.get(did)

    # -- internals -----------------------------------------------------------------------------

    async def _changed(self, dids: Sequence[str] | None) -> None:
        if self.on_change is None:
            return
        try:
            await self.on_change(dids)
        except Exception:  # the change is committed; listeners catch up on their own
            log.exception("device change listener failed for %s", dids)

    async def _ensure(
        self, product_key: str, mac: str, passcode: str | None, *, register: DeviceOrigin | None
    ) -> tuple[DeviceRow, bool, list[BindingChange] | None]:
        """Find or create the device of (product, MAC): for an operator (``register`` None)
        or the device registering itself (``register`` = how: ``registered`` plain or
        ``signed`` encrypted), under the product's registration policy. Returns the device,
        whether it was created, and, for a new ownership, the bindings it ended (else None).
        Refusals raise ``_Refusal``; nothing is written then."""
        for _ in range(_RACE_RETRIES):
            try:
                async with self.db.session(lock=f"device:{product_key}:{mac}") as session:
                    product = await _product(session, product_key)
                    if product.protocol_type == DATA_TEMPLATE_PROTOCOL:
                        field = "product_key" if register else "mac"
                        raise ProductProtocolMismatch(
                            f"{field}: {product_key} is a data-template product; its devices "
                            "are created by name (iotcloud device create --name), not by MAC"
                        )
                    devices = DeviceRepository(session)
                    row = await devices.by_mac(product.id, mac)
                    if register is None:
                        if row is None:
                            row = await devices.add(self._new_row(product.id, mac, passcode))
                            return row, True, None
                        return row, False, None
                    assert passcode is not None  # a device registers with its passcode
                    policy = product.registration
                    if policy == "preprovisioned":
                        return _preprovisioned(product_key, mac, passcode, row), False, None
                    if register != "signed" and (
                        policy == "signed" or (row is not None and row.origin == "signed")
                    ):
                        # once a device registered encrypted, only that call speaks for it
                        raise _Refusal(
                            row,
                            "plain registration",
                            EncryptedRegistrationRequired(
                                f"product_key: product {product_key} takes only encrypted "
                                f"registration for mac {mac} (POST /dev/{product_key}/device)"
                            ),
                        )
                    if row is None:
                        row = await devices.add(
                            self._new_row(product.id, mac, passcode, origin=register)
                        )
                        return row, True, None
                    if row.is_disabled:
                        raise _Refusal(
                            row,
                            "disabled",
                            DeviceDisabled(f"device {row.did} (mac {mac}) is disabled"),
                        )
                    if register == "signed" and row.origin == "registered":
                        row.origin = "signed"  # from now on its plain calls are refused
                    if hmac.compare_digest(row.passcode.encode(), passcode.encode()):
                        return row, False, None
                    now = self.clock.now()
                    row.passcode = passcode
                    row.owner_since = now
                    row.updated_at = now
                    ended = await BindingRepository(session).remove_all(row.id)
                    return (
                        row,
                        False,
                        [
                            BindingChange(e.user.id, e.user.uid, e.user.app_id, row.did, False)
                            for e in ended
                        ],
                    )
            except MacTaken:  # another process stored it first; read it on the next turn
                continue
        raise ServerError(f"device {mac} of product {product_key} is being written concurrently")

    async def _ensure_named(
        self, product_key: str, name: str, psk: str | None, passcode: str | None
    ) -> tuple[DeviceRow, bool]:
        """Find or create the device called ``name`` of a data-template product."""
        for _ in range(_RACE_RETRIES):
            try:
                async with self.db.session(lock=f"device:{product_key}:{name}") as session:
                    product = await _product(session, product_key)
                    if product.protocol_type != DATA_TEMPLATE_PROTOCOL:
                        raise ProductProtocolMismatch(
                            f"name: {product_key} is a Gizwits product; its devices are created "
                            "by MAC (--mac), not by name"
                        )
                    devices = DeviceRepository(session)
                    row = await devices.by_name(product.id, name)
                    if row is not None:
                        return row, False
                    row = await devices.add(self._new_named_row(product.id, name, psk, passcode))
                    return row, True
            except MacTaken:  # another process stored it first; read it on the next turn
                continue
        raise ServerError(f"device {name} of product {product_key} is being written concurrently")

    def _new_row(
        self, product_id: int, mac: str, passcode: str | None, origin: DeviceOrigin = "operator"
    ) -> DeviceRow:
        now = self.clock.now()
        return DeviceRow(
            did=rules.new_did(),
            product_id=product_id,
            mac=mac,
            name=mac,
            origin=origin,
            passcode=passcode or rules.new_passcode(),
            is_disabled=False,
            is_online=False,
            created_at=now,
            updated_at=now,
        )

    def _new_named_row(
        self, product_id: int, name: str, psk: str | None, passcode: str | None
    ) -> DeviceRow:
        now = self.clock.now()
        return DeviceRow(
            did=rules.new_did(),
            product_id=product_id,
            mac=None,
            name=name,
            origin="operator",
            psk=psk or rules.new_psk(),
            passcode=passcode or rules.new_passcode(),
            is_disabled=False,
            is_online=False,
            created_at=now,
            updated_at=now,
        )

    async def _import_batch(
        self,
        batch: Sequence[DeviceImportRow],
        products: dict[str, ProductRow | None],
        seen: set[tuple[int, str]],
        report: ImportReport,
    ) -> None:
        """Store one batch. Rows are identified by (product, name): a Gizwits device's name is
        its MAC, so one existence check serves both kinds."""
        valid: list[tuple[str, ProductRow, _ImportIdentity]] = []
        for item in batch:
            try:
                key = rules.check_product_key(item.product_key)
                identity = _import_identity(item)
            except FieldInvalid as exc:
                report.failed.append(ImportFailure(item.line, str(exc)))
                continue
            if key not in products:
                async with self.db.session() as session:
                    products[key] = await ProductRepository(session).by_key(key)
            product = products[key]
            if product is None:
                report.failed.append(
                    ImportFailure(item.line, f"product_key: unknown product {key}")
                )
                continue
            is_template = product.protocol_type == DATA_TEMPLATE_PROTOCOL
            if is_template != (identity.mac is None):
                report.failed.append(ImportFailure(item.line, _mismatch(key, is_template)))
                continue
            if (product.id, identity.name) in seen:
                report.existing += 1
                continue
            seen.add((product.id, identity.name))
            valid.append((key, product, identity))
        if not valid:
            return
        try:
            async with self.db.session() as session:
                devices = DeviceRepository(session)
                names: dict[int, list[str]] = defaultdict(list)
                for _, product, identity in valid:
                    names[product.id].append(identity.name)
                known = {
                    (product_id, name)
                    for product_id, group in names.items()
                    for name in await devices.existing_names(product_id, group)
                }
                new = [
                    self._import_row(product.id, identity)
                    for _, product, identity in valid
                    if (product.id, identity.name) not in known
                ]
                await devices.add_all(new)
            report.existing += len(known)
            report.created += len(new)
        except MacTaken:  # a device of the batch registered meanwhile: go one by one
            for key, _, identity in valid:
                if identity.mac is not None:
                    _, created, _ = await self._ensure(
                        key, identity.mac, identity.passcode, register=None
                    )
                else:
                    _, created = await self._ensure_named(
                        key, identity.name, identity.psk, identity.passcode
                    )
                if created:
                    report.created += 1
                else:
                    report.existing += 1

    def _import_row(self, product_id: int, identity: _ImportIdentity) -> DeviceRow:
        if identity.mac is not None:
            return self._new_row(product_id, identity.mac, identity.passcode)
        return self._new_named_row(product_id, identity.name, identity.psk, identity.passcode)


@dataclass(frozen=True)
class _ImportIdentity:
    """A checked CSV row: ``mac`` is None for a data-template device (named by ``name``)."""

    name: str
    mac: str | None
    passcode: str | None
    psk: str | None


def _import_identity(item: DeviceImportRow) -> _ImportIdentity:
    """Check a CSV row's fields; raises ``FieldInvalid`` naming the first bad one."""
    passcode = rules.check_passcode(item.passcode) if item.passcode is not None else None
    if item.name is not None:
        psk = rules.check_psk(item.psk) if item.psk is not None else None
        return _ImportIdentity(rules.check_device_name(item.name), None, passcode, psk)
    mac = rules.check_mac(item.mac)
    return _ImportIdentity(mac, mac, passcode, None)


def _mismatch(product_key: str, is_template: bool) -> str:
    if is_template:
        return f"mac: {product_key} is a data-template product; name its devices instead"
    return f"name: {product_key} is a Gizwits product; give its devices a mac instead"


async def _product(session: AsyncSession, product_key: str) -> ProductRow:
    product = await ProductRepository(session).by_key(product_key)
    if product is None:
        raise ProductKeyInvalid(f"unknown product_key {product_key}")
    return product


def _product_key(value: str) -> str:
    try:
        return rules.check_product_key(value)
    except FieldInvalid as exc:
        raise ProductKeyInvalid(str(exc)) from exc


def _device(row: DeviceRow, product: ProductRow) -> Device:
    return Device(
        did=row.did,
        product_key=product.product_key,
        mac=row.mac or "",
        passcode=row.passcode,
        is_disabled=row.is_disabled,
        is_online=row.is_online,
        last_online_at=row.last_online_at,
        last_offline_at=row.last_offline_at,
        mcu_soft_version=row.mcu_soft_version,
        mcu_hard_version=row.mcu_hard_version,
        wifi_soft_version=row.wifi_soft_version,
        wifi_hard_version=row.wifi_hard_version,
        created_at=row.created_at,
        updated_at=row.updated_at,
        name=row.name,
        psk=row.psk,
        origin=row.origin,
        owner_since=row.owner_since,
    )


class _Refusal(Exception):
    """A registration the policy refuses: ``error`` for the caller, ``reason`` for the frame log
    of ``device`` (None when there is no such device)."""

    def __init__(self, device: DeviceRow | None, reason: str, error: IotCloudError) -> None:
        super().__init__(reason)
        self.device_id = device.id if device is not None else None
        self.reason = reason
        self.error = error


def _preprovisioned(product_key: str, mac: str, passcode: str, row: DeviceRow | None) -> DeviceRow:
    """A ``preprovisioned`` product's rule: the operator's device, with its own passcode."""
    if row is None or row.origin != "operator":
        raise _Refusal(
            row,
            "not provisioned",
            DeviceNotFound(
                f"mac: product {product_key} registers only devices its operator created, and "
                f"has none with mac {mac}"
            ),
        )
    if row.is_disabled:
        raise _Refusal(row, "disabled", DeviceDisabled(f"device {row.did} (mac {mac}) is disabled"))
    if not hmac.compare_digest(row.passcode.encode(), passcode.encode()):
        raise _Refusal(
            row,
            "passcode mismatch",
            DeviceAuthInvalid(
                f"passcode: does not match the one device {row.did} was provisioned with "
                "(a preprovisioned device's passcode cannot be changed by registering)"
            ),
        )
    return row


def _encrypted_only(row: DeviceRow, product: ProductRow) -> bool:
    """Whether the device's plain calls are refused: a ``signed`` product's, or one that
    registered encrypted (spec gizwits.md §3.2: from then on only the encrypted calls)."""
    return product.registration == "signed" or row.origin == "signed"


def provisioning_body(where: Provisioning) -> str:
    """The provisioning answer GAgent parses: ``host=..&port=..&server_ts=..&`` (each value
    followed by ``&``), with ``port_s=..&`` (the MQTT TLS port) when TLS is served."""
    body = f"host={where.host}&port={where.port}&server_ts={where.server_ts}&"
    if where.port_s is not None:
        body += f"port_s={where.port_s}&"
    return body


def refusal_detail(reason: str, peer: str | None) -> str:
    """A ``dev_refused`` frame log detail: the reason and, after ``|``, the caller's address
    (64 characters at most, as the column holds)."""
    return f"{reason}|{peer or ''}"[:64]
