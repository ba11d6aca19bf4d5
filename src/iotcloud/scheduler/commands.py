"""What a batch of attempts sends: every task checked and its command encoded before the
attempts' instant, with one read for the whole batch.

`CommandBuilder.prepare` applies the rules a command from an app meets (`ControlService`): the
device must exist (else 9014), be bound to the schedule's owner (9017) and be enabled (9023);
``attrs`` are checked against the product and encoded in the device's own dialect - the P0
control of a Gizwits device written over its latest reported state, the JSON ``control`` of a
data-template device - and ``raw`` bytes go as they are. A task that fails a check is not sent
and counts as not delivered, as at fire time. The difference is the reads: the devices, their
bindings to the owners and their latest states come from one query per batch
(`ScheduleStore.targets`), and each product's codec or data template is parsed once per
version, instead of three reads per task.

The P0 encoding is `ControlService`'s (`transport_values` on the attrs and on the latest state,
then `P0Codec.encode_control`), so a scheduled command carries the same bytes an app's would.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from iotcloud.codecs import (
    CodecError,
    DatapointError,
    DataTemplate,
    P0Codec,
    parse_product_definition,
)
from iotcloud.codecs.template import DATA_TEMPLATE_PROTOCOL
from iotcloud.errors import (
    AttrInvalid,
    DeviceDisabled,
    DeviceNotBound,
    DeviceNotFound,
    IotCloudError,
)
from iotcloud.scheduler.policy import Task
from iotcloud.scheduler.store import ClaimedAttempt, ScheduleStore, Target
from iotcloud.services.control import encode_template_control, transport_values
from iotcloud.services.products import ProductService

log = logging.getLogger(__name__)

Dialect = P0Codec | DataTemplate


@dataclass(slots=True)
class Prepared:
    """An attempt ready to fire: ``commands`` are the (did, payload) pairs to send; ``sent``
    holds the tasks already decided (not sent: a failed check, False)."""

    attempt: ClaimedAttempt
    commands: list[tuple[str, bytes]] = field(default_factory=list)
    sent: dict[str, bool] = field(default_factory=dict)


class CommandBuilder:
    """Checks and encodes the tasks of claimed attempts (see the module docstring). Keeps each
    product's parsed codec or template until the product changes (``updated_at``)."""

    def __init__(self, store: ScheduleStore, products: ProductService) -> None:
        self.store = store
        self.products = products
        self._dialects: dict[str, tuple[datetime, Dialect | None]] = {}

    async def prepare(self, attempts: Sequence[ClaimedAttempt]) -> list[Prepared]:
        """The commands of ``attempts``, in order. Raises what the database raised."""
        dids = {task.did for attempt in attempts for task in attempt.send}
        users = {attempt.user_id for attempt in attempts}
        targets = await self.store.targets(dids, users)
        await self._load_products(targets.values())
        prepared = []
        for attempt in attempts:
            ready = Prepared(attempt)
            for task in attempt.send:
                try:
                    payload = self._payload(attempt, task, targets.get(task.did))
                except IotCloudError as exc:
                    log.debug(
                        "schedule %s: task for %s not sent: %s", attempt.schedule_id, task.did, exc
                    )
                    ready.sent[task.did] = False
                    continue
                ready.commands.append((task.did, payload))
            prepared.append(ready)
        return prepared

    def _payload(self, attempt: ClaimedAttempt, task: Task, target: Target | None) -> bytes:
        if target is None:
            raise DeviceNotFound(f"no device with did {task.did!r}")
        if attempt.user_id not in target.bound_users:
            raise DeviceNotBound(f"device {task.did} is not bound to this user")
        if target.disabled:
            raise DeviceDisabled(f"device {task.did} is disabled")
        if task.attrs is None:
            assert task.raw is not None  # the service stores exactly one of them
            return task.raw
        cached = self._dialects.get(target.product_key)
        dialect = cached[1] if cached is not None else None
        if dialect is None:
            raise AttrInvalid(f"product {target.product_key} cannot encode commands")
        if isinstance(dialect, DataTemplate):
            return encode_template_control(dialect, task.attrs, gizwits_form=False)
        return encode_p0(dialect, task.attrs, target.latest)

    async def _load_products(self, targets: Collection[Target]) -> None:
        """Parse the products of ``targets`` not parsed at their current version."""
        stale = {
            target.product_key
            for target in targets
            if (cached := self._dialects.get(target.product_key)) is None
            or cached[0] != target.product_updated_at
        }
        for row in await self.store.products(stale):
            dialect: Dialect | None
            try:
                if row.protocol_type == DATA_TEMPLATE_PROTOCOL:
                    dialect = self.products.template_of(row)
                else:
                    dialect = P0Codec(parse_product_definition(json.loads(row.definition)))
            except (ValueError, CodecError, IotCloudError):
                log.exception("product %s: its definition cannot be parsed", row.product_key)
                dialect = None
            self._dialects[row.product_key] = (row.updated_at, dialect)


def encode_p0(codec: P0Codec, attrs: Mapping[str, Any], latest: Mapping[str, Any]) -> bytes:
    """The P0 control writing ``attrs`` (display values) over the device's ``latest`` state,
    as `ControlService.encode_attrs` builds it; `AttrInvalid` naming the attr."""
    if not attrs:
        raise AttrInvalid("attrs: at least one data point is needed")
    try:
        values = transport_values(codec, attrs, strict=True)
        known = transport_values(codec, latest, strict=False)
        return codec.encode_control(values, known)
    except (DatapointError, CodecError) as exc:
        raise AttrInvalid(str(exc)) from exc
