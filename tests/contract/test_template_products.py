"""Data-template (Tencent) products and their named devices, on SQLite and PostgreSQL.

The services run in-process against a real database: a data template imports as a product keyed
by its ProductId, its devices are created by name with a psk, Gizwits-only operations refuse
them clearly, and a device is found by ProductId + DeviceName for the user bound to it.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from iotcloud.codecs import DATA_TEMPLATE_PROTOCOL
from iotcloud.domain.clock import FrozenClock
from iotcloud.errors import (
    DeviceNotBound,
    DeviceNotFound,
    FormInvalid,
    ProductDefinitionInvalid,
    ProductKeyInvalid,
    ProductKeyTaken,
    ProductProtocolMismatch,
)
from iotcloud.services.accounts import CurrentUser
from iotcloud.services.bindings import PasscodeBind
from iotcloud.services.devices import read_device_csv
from iotcloud.services.registry import Services
from iotcloud.services.telemetry import Aggregator, BucketUnit
from iotcloud.storage.devices import DeviceRepository
from iotcloud.storage.models import DeviceRow
from tests.contract.conftest import START

FIXTURES = Path(__file__).parents[1] / "fixtures"
PID = "LIGHT0TPL1"


def light() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / "templates" / "light.json").read_text())
    return data


def pet_house() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / "datapoints" / "pet_house.json").read_text())
    return data


@pytest.fixture
async def gizwits_key(services: Services) -> str:
    return (await services.products.import_definition(pet_house())).product_key


@pytest.fixture
async def template_key(services: Services) -> str:
    return (await services.products.import_definition(light())).product_key


async def device_rows(services: Services) -> int:
    async with services.devices.db.session() as session:
        return int(await session.scalar(select(func.count(DeviceRow.id))) or 0)


async def new_user(services: Services) -> CurrentUser:
    creds = await services.apps.create("Light app")
    app = await services.apps.get(creds.appid)
    issued = await services.accounts.create_with_username(
        app, "u" + uuid.uuid4().hex[:12], "secret-pw-1"
    )
    return await services.accounts.authenticate(app, issued.token)


# --- products ------------------------------------------------------------------------------


async def test_a_template_imports_keyed_by_its_product_id_and_is_served_as_imported(
    services: Services, template_key: str
) -> None:
    assert template_key == PID
    product = await services.products.get(PID)
    assert product.protocol_type == DATA_TEMPLATE_PROTOCOL
    assert product.is_data_template
    assert product.name == PID
    assert len(product.product_secret) == 32
    assert json.loads(await services.products.definition_json(PID)) == light()
    template = await services.products.template(PID)
    assert template.product_id == PID
    assert set(template.properties) >= {"power_switch", "brightness", "color"}
    assert [p.product_key for p in await services.products.list()] == [PID]


async def test_template_product_ids_are_exact_not_lower_cased(
    services: Services, template_key: str
) -> None:
    with pytest.raises(ProductKeyInvalid):
        await services.products.get(PID.lower())
    assert (await services.products.get(f" {PID} ")).product_key == PID


async def test_an_invalid_template_names_the_json_path_and_stores_nothing(
    services: Services,
) -> None:
    doc = light()
    doc["properties"][1]["define"]["max"] = "-5"
    with pytest.raises(ProductDefinitionInvalid) as info:
        await services.products.import_definition(doc)
    assert str(info.value).startswith("properties[1].define.max: ")
    assert info.value.attr == "properties[1].define.max"
    assert await services.products.list() == []


async def test_reimporting_a_template_needs_replace_and_refreshes_the_template(
    services: Services, template_key: str, clock: FrozenClock
) -> None:
    secret = (await services.products.get(PID)).product_secret
    with pytest.raises(ProductKeyTaken):
        await services.products.import_definition(light())
    before = await services.products.template(PID)
    assert await services.products.template(PID) is before  # cached while unchanged
    doc = light()
    doc["properties"] = [p for p in doc["properties"] if p["id"] != "name"]
    clock.advance(5)
    replaced = await services.products.import_definition(doc, replace=True)
    assert (replaced.created, replaced.product_secret) == (False, secret)
    assert "name" not in (await services.products.template(PID)).properties


async def test_each_protocol_refuses_the_others_description(
    services: Services, template_key: str, gizwits_key: str
) -> None:
    with pytest.raises(ProductProtocolMismatch, match=PID):
        await services.products.definition(PID)
    with pytest.raises(ProductProtocolMismatch, match=gizwits_key):
        await services.products.template(gizwits_key)
    assert (await services.products.definition(gizwits_key)).product_key == gizwits_key


# --- devices -------------------------------------------------------------------------------


async def test_named_devices_get_a_psk_and_a_passcode_and_are_idempotent(
    services: Services, template_key: str
) -> None:
    creds = await services.devices.create_named(PID, "lamp-01")
    assert creds.created
    assert creds.device_name == "lamp-01"
    assert len(base64.b64decode(creds.psk, validate=True)) == 16
    assert len(creds.passcode) == 10
    again = await services.devices.create_named(PID, "lamp-01")
    assert (again.created, again.did, again.psk) == (False, creds.did, creds.psk)
    other = await services.devices.create_named(PID, "Lamp-01")  # names are case-sensitive
    assert other.did != creds.did
    given = await services.devices.create_named(PID, "lamp:02@hall", psk="A" * 22 + "==")
    assert given.psk == "A" * 22 + "=="

    device = await services.devices.get(creds.did)
    assert (device.name, device.mac, device.psk) == ("lamp-01", "", creds.psk)
    assert device.product_key == PID
    async with services.devices.db.session() as session:
        found = await DeviceRepository(session).with_product_by_name(PID, "lamp-01")
        missing = await DeviceRepository(session).with_product_by_name(PID, "LAMP-01")
    assert found is not None
    assert (found[0].did, found[1].product_key) == (creds.did, PID)
    assert missing is None


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "x" * 49}, "name"),
        ({"name": "lamp 1"}, "name"),
        ({"name": "lamp/1"}, "name"),
        ({"name": "ok", "psk": "not base64!"}, "psk"),
        ({"name": "ok", "psk": base64.b64encode(b"short").decode()}, "psk"),
        ({"name": "ok", "passcode": "a b"}, "passcode"),
    ],
)
async def test_bad_named_device_input_is_refused_naming_the_field(
    services: Services, template_key: str, kwargs: dict[str, str], field: str
) -> None:
    with pytest.raises(FormInvalid) as info:
        await services.devices.create_named(PID, **kwargs)
    assert str(info.value).startswith(f"{field}: ")
    assert await device_rows(services) == 0


async def test_devices_are_created_the_way_their_product_names_them(
    services: Services, template_key: str, gizwits_key: str
) -> None:
    with pytest.raises(ProductProtocolMismatch) as by_mac:
        await services.devices.create(PID, "aabbccddeeff")
    assert str(by_mac.value).startswith("mac: ")
    with pytest.raises(ProductProtocolMismatch) as by_name:
        await services.devices.create_named(gizwits_key, "lamp")
    assert str(by_name.value).startswith("name: ")
    with pytest.raises(ProductProtocolMismatch) as registered:
        await services.devices.register(PID, "aabbccddeeff", "123456")
    assert str(registered.value).startswith("product_key: ")
    with pytest.raises(ProductKeyInvalid):
        await services.devices.create_named("NOSUCHPID0", "lamp")
    assert await device_rows(services) == 0
    # a Gizwits device is named by its MAC
    mac_device = await services.devices.create(gizwits_key, "AA:BB:CC:DD:EE:FF")
    assert (await services.devices.get(mac_device.did)).name == "aabbccddeeff"


async def test_csv_import_of_named_devices_reports_bad_lines(
    services: Services, template_key: str, gizwits_key: str
) -> None:
    existing = await services.devices.create_named(PID, "lamp-00")
    psk = base64.b64encode(bytes(range(16))).decode()
    lines = [
        "product_key,name,psk\n",
        f"{PID},lamp-01,\n",  # 2: good, generated psk
        f"{PID},lamp-02,{psk}\n",  # 3: good, given psk
        f"{PID},lamp-00,\n",  # 4: exists already
        f"{PID},bad name,\n",  # 5: bad name
        f"{gizwits_key},lamp-03,\n",  # 6: a name for a Gizwits product
        f"{PID},lamp-04,%%%\n",  # 7: bad psk
        f"{PID},lamp-01,\n",  # 8: repeated within the file
        "NOSUCHPID0,lamp-05,\n",  # 9: unknown product
    ]
    rows, failures = read_device_csv(lines)
    assert failures == []
    report = await services.devices.import_csv(rows, batch_size=3)
    assert (report.created, report.existing) == (2, 2)
    assert [(f.line, f.error.split(":")[0]) for f in report.failed] == [
        (5, "name"),
        (6, "name"),
        (7, "psk"),
        (9, "product_key"),
    ]
    assert (await services.devices.create_named(PID, "lamp-02")).psk == psk
    assert (await services.devices.create_named(PID, "lamp-00")).psk == existing.psk
    assert await device_rows(services) == 3


async def test_csv_import_of_macs_refuses_a_template_product(
    services: Services, template_key: str, gizwits_key: str
) -> None:
    rows, _ = read_device_csv(
        ["product_key,mac\n", f"{PID},aabbccddeeff\n", f"{gizwits_key},aabbccddeeff\n"]
    )
    report = await services.devices.import_csv(rows)
    assert report.created == 1
    assert [(f.line, f.error.split(":")[0]) for f in report.failed] == [(2, "mac")]


@pytest.mark.parametrize(
    "header",
    ["product_key,mac,name", "product_key", "product_key,mac,psk", "product_key,name,name"],
)
def test_csv_headers_must_name_one_identity(header: str) -> None:
    with pytest.raises(FormInvalid, match="header"):
        read_device_csv([header + "\n"])


# --- bindings by name ----------------------------------------------------------------------


async def test_find_bound_named_finds_template_and_gizwits_devices_for_their_user(
    services: Services, template_key: str, gizwits_key: str
) -> None:
    user, stranger = await new_user(services), await new_user(services)
    lamp = await services.devices.create_named(PID, "lamp-01")
    house = await services.devices.create(gizwits_key, "aabbccddeeff")
    outcome = await services.bindings.bind_by_passcode(
        user,
        [PasscodeBind(lamp.did, lamp.passcode), PasscodeBind(house.did, house.passcode)],
    )
    assert not outcome.failed

    bound = await services.bindings.find_bound_named(user, PID, "lamp-01")
    assert (bound.did, bound.name, bound.mac, bound.product_key) == (lamp.did, "lamp-01", "", PID)
    by_mac = await services.bindings.find_bound_named(user, gizwits_key, "AA:BB:CC:DD:EE:FF")
    assert (by_mac.did, by_mac.name, by_mac.mac) == (house.did, "aabbccddeeff", "aabbccddeeff")

    with pytest.raises(DeviceNotBound) as not_bound:
        await services.bindings.find_bound_named(stranger, PID, "lamp-01")
    assert lamp.did not in str(not_bound.value)
    with pytest.raises(DeviceNotFound):
        await services.bindings.find_bound_named(user, PID, "LAMP-01")
    with pytest.raises(ProductKeyInvalid):
        await services.bindings.find_bound_named(user, "NOSUCHPID0", "lamp-01")
    with pytest.raises(ProductKeyInvalid):
        await services.bindings.find_bound_named(user, "light0tpl1", "lamp-01")
    with pytest.raises(FormInvalid, match=r"^DeviceName: "):
        await services.bindings.find_bound_named(user, gizwits_key, "lamp-01")
    with pytest.raises(FormInvalid, match=r"^DeviceName: "):
        await services.bindings.find_bound_named(user, PID, "bad name")


# --- telemetry -----------------------------------------------------------------------------


async def test_history_and_aggregation_know_template_properties(
    services: Services, template_key: str
) -> None:
    user = await new_user(services)
    lamp = await services.devices.create_named(PID, "lamp-01")
    await services.bindings.bind_by_passcode(user, [PasscodeBind(lamp.did, lamp.passcode)])
    page = await services.telemetry.history(user, lamp.did, attr="brightness")
    assert page.total == 0
    with pytest.raises(FormInvalid, match=r"^attr: volume"):
        await services.telemetry.history(user, lamp.did, attr="volume")
    window = {"start": START - timedelta(days=1), "end": START}
    aggregation = await services.telemetry.aggregate(
        user,
        lamp.did,
        attrs=["brightness", "temperature"],
        aggregator=Aggregator.AVG,
        unit=BucketUnit.HOURS,
        **window,
    )
    assert aggregation.product_key == PID
    with pytest.raises(FormInvalid, match=r"^attrs: color is not numeric \(enum\)"):
        await services.telemetry.aggregate(
            user,
            lamp.did,
            attrs=["color"],
            aggregator=Aggregator.AVG,
            unit=BucketUnit.HOURS,
            **window,
        )
