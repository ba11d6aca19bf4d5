"""Product and device rules on SQLite and PostgreSQL, with a frozen clock.

The services run in-process against a real database: imports are all or nothing, one MAC has one
did however many registrations race, and a device's passcode guards its did.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from iotcloud.domain.clock import FrozenClock
from iotcloud.errors import (
    DeviceAuthInvalid,
    DeviceDisabled,
    DeviceNotFound,
    FormInvalid,
    ProductDefinitionInvalid,
    ProductKeyInvalid,
    ProductKeyTaken,
)
from iotcloud.services.devices import DeviceImportRow, read_device_csv
from iotcloud.services.registry import Services
from iotcloud.storage.models import DeviceRow
from tests.contract.conftest import START

FIXTURES = Path(__file__).parents[1] / "fixtures" / "datapoints"
PET_HOUSE_KEY = "de9e8d18d9394cce9081b25a531e552b"
OTHER_KEY = "0123456789abcdef0123456789abcdef"


def pet_house() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / "pet_house.json").read_text())
    return data


def var_len() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / "var_len_speaker.json").read_text())
    return data


@pytest.fixture
def settings_options() -> dict[str, Any]:
    return {"public_host": "m2m.example.org"}


@pytest.fixture
async def product_key(services: Services) -> str:
    return (await services.products.import_definition(pet_house())).product_key


async def device_rows(services: Services) -> int:
    async with services.devices.db.session() as session:
        return int(await session.scalar(select(func.count(DeviceRow.id))) or 0)


# -- products --------------------------------------------------------------------------------------


async def test_import_keeps_the_files_product_key_and_serves_the_file_back(
    services: Services,
) -> None:
    creds = await services.products.import_definition(pet_house())
    assert creds.product_key == PET_HOUSE_KEY
    assert re.fullmatch(r"[0-9a-f]{32}", creds.product_secret)
    assert creds.created
    assert json.loads(await services.products.definition_json(PET_HOUSE_KEY)) == pet_house()
    product = await services.products.get(PET_HOUSE_KEY)
    assert (product.name, product.protocol_type) == ("My WeChat Pet House SOC", "standard")
    assert product.product_secret == creds.product_secret
    assert product.created_at == START
    definition = await services.products.definition(PET_HOUSE_KEY)
    assert [attr.name for attr in definition.attrs][:2] == ["LED_OnOff", "LED_Color"]


async def test_a_file_without_product_key_gets_one_and_the_given_secret(
    services: Services,
) -> None:
    secret = "00112233445566778899AABBCCDDEEFF"
    creds = await services.products.import_definition(var_len(), product_secret=secret)
    assert re.fullmatch(r"[0-9a-f]{32}", creds.product_key)
    assert creds.product_secret == secret.lower()
    served = json.loads(await services.products.definition_json(creds.product_key))
    assert served == {**var_len(), "product_key": creds.product_key}
    assert (await services.products.get(creds.product_key)).protocol_type == "var_len"


@pytest.mark.parametrize(
    ("attr_index", "change", "named"),
    [
        (2, {"data_type": "float"}, "LED_R"),
        (3, {"position": {"byte_offset": 1, "bit_offset": 0, "len": 1, "unit": "byte"}}, "LED_G"),
        (
            1,
            {"position": {"byte_offset": 0, "bit_offset": 1, "len": 1, "unit": "bit"}},
            "LED_Color",
        ),
        (4, {"uint_spec": {"min": 0, "max": 256, "ratio": 1, "addition": 0}}, "LED_B"),
    ],
    ids=["unknown-data-type", "overlapping-bytes", "enum-too-narrow", "uint-spec-range"],
)
async def test_invalid_definitions_name_the_attr_and_store_nothing(
    services: Services, attr_index: int, change: dict[str, Any], named: str
) -> None:
    data = pet_house()
    data["entities"][0]["attrs"][attr_index].update(change)
    with pytest.raises(ProductDefinitionInvalid) as caught:
        await services.products.import_definition(data)
    assert caught.value.attr == named
    assert named in (caught.value.detail or "")
    assert caught.value.code == 9015
    assert await services.products.list() == []


async def test_a_malformed_product_key_or_secret_is_refused(services: Services) -> None:
    data = pet_house()
    data["product_key"] = "not-hex"
    with pytest.raises(FormInvalid, match="product_key"):
        await services.products.import_definition(data)
    with pytest.raises(FormInvalid, match="product_secret"):
        await services.products.import_definition(pet_house(), product_secret="short")
    assert await services.products.list() == []


async def test_reimport_is_refused_unless_replacing_which_keeps_the_secret(
    services: Services, clock: FrozenClock
) -> None:
    first = await services.products.import_definition(pet_house())
    changed = pet_house()
    changed["name"] = "Pet House v2"
    del changed["entities"][0]["attrs"][-1]
    with pytest.raises(ProductKeyTaken, match="replace"):
        await services.products.import_definition(changed)
    assert (await services.products.get(PET_HOUSE_KEY)).name == "My WeChat Pet House SOC"

    clock.advance(60)
    replaced = await services.products.import_definition(changed, replace=True)
    assert replaced.product_secret == first.product_secret
    assert not replaced.created
    product = await services.products.get(PET_HOUSE_KEY)
    assert product.name == "Pet House v2"
    assert (product.created_at, product.updated_at) == (START, clock.now())
    definition = await services.products.definition(PET_HOUSE_KEY)
    assert "Fault_IR" not in definition
    assert len(await services.products.list()) == 1

    new_secret = "f" * 32
    again = await services.products.import_definition(
        changed, product_secret=new_secret, replace=True
    )
    assert again.product_secret == new_secret


async def test_unknown_products_answer_9002(services: Services) -> None:
    for call in (
        services.products.get(OTHER_KEY),
        services.products.definition_json(OTHER_KEY),
        services.products.definition("nonsense"),
    ):
        with pytest.raises(ProductKeyInvalid):
            await call


# -- device registration (GAgent) --------------------------------------------------------------


async def test_registering_again_keeps_the_did_and_takes_the_new_passcode(
    services: Services, product_key: str, clock: FrozenClock
) -> None:
    did = await services.devices.register(product_key, "accf2350d446", "AAAAAAAAAA")
    assert re.fullmatch(r"[A-Za-z0-9]{22}", did)
    clock.advance(5)
    again = await services.devices.register(product_key, "AC:CF:23:50:D4:46", "BBBBBBBBBB")
    assert again == did
    device = await services.devices.get(did)
    assert (device.mac, device.passcode, device.product_key) == (
        "accf2350d446",
        "BBBBBBBBBB",
        product_key,
    )
    assert not device.is_disabled
    assert not device.is_online
    assert (device.created_at, device.updated_at) == (START, clock.now())
    # the old passcode no longer controls the did
    with pytest.raises(DeviceAuthInvalid):
        await services.devices.disable(did, "AAAAAAAAAA")
    assert not (await services.devices.get(did)).is_disabled
    assert await device_rows(services) == 1


async def test_one_mac_in_two_products_is_two_devices(services: Services, product_key: str) -> None:
    other = await services.products.import_definition(var_len())
    first = await services.devices.register(product_key, "accf2350d446", "PASSCODEAA")
    second = await services.devices.register(other.product_key, "accf2350d446", "PASSCODEAA")
    assert first != second


async def test_concurrent_registrations_of_one_mac_yield_one_did(
    services: Services, product_key: str
) -> None:
    dids = await asyncio.gather(
        *(
            services.devices.register(product_key, "a0b1c2d3e4f5", f"PASSCODE{i:02d}")
            for i in range(10)
        )
    )
    assert len(set(dids)) == 1
    assert await device_rows(services) == 1
    # whichever registration came last, its passcode is the one stored
    assert (await services.devices.get(dids[0])).passcode in {f"PASSCODE{i:02d}" for i in range(10)}


async def test_registration_refuses_bad_input_naming_it(
    services: Services, product_key: str
) -> None:
    with pytest.raises(ProductKeyInvalid):
        await services.devices.register(OTHER_KEY, "accf2350d446", "PASSCODEAA")
    with pytest.raises(ProductKeyInvalid, match="product_key"):
        await services.devices.register("xyz", "accf2350d446", "PASSCODEAA")
    with pytest.raises(FormInvalid, match=r"^mac: "):
        await services.devices.register(product_key, "accf2350d44", "PASSCODEAA")
    with pytest.raises(FormInvalid, match=r"^passcode: "):
        await services.devices.register(product_key, "accf2350d446", "with space")
    assert await device_rows(services) == 0


async def test_provisioning_hands_out_the_mqtt_endpoint_and_the_clock(
    services: Services, product_key: str
) -> None:
    did = await services.devices.register(product_key, "accf2350d446", "PASSCODEAA")
    where = await services.devices.provision(did)
    assert (where.host, where.port, where.server_ts) == (
        "m2m.example.org",
        1884,
        int(START.timestamp()),
    )
    with pytest.raises(DeviceNotFound):
        await services.devices.provision("x" * 22)


async def test_a_device_disables_its_did_with_its_passcode_only(
    services: Services, product_key: str
) -> None:
    did = await services.devices.register(product_key, "accf2350d446", "PASSCODEAA")
    with pytest.raises(DeviceAuthInvalid):
        await services.devices.disable(did, "PASSCODEAB")
    with pytest.raises(DeviceNotFound):
        await services.devices.disable("y" * 22, "PASSCODEAA")
    await services.devices.provision(did)

    await services.devices.disable(did, "PASSCODEAA")
    await services.devices.disable(did, "PASSCODEAA")  # idempotent
    assert (await services.devices.get(did)).is_disabled
    with pytest.raises(DeviceDisabled):
        await services.devices.provision(did)
    # registering again neither lifts the disable nor replaces the passcode
    with pytest.raises(DeviceDisabled):
        await services.devices.register(product_key, "accf2350d446", "NEWCODEAAA")
    assert (await services.devices.get(did)).passcode == "PASSCODEAA"

    enabled = await services.devices.set_disabled(did, False)
    assert not enabled.is_disabled
    assert await services.devices.register(product_key, "accf2350d446", "NEWCODEAAA") == did
    await services.devices.provision(did)


# -- operators -----------------------------------------------------------------------------------


async def test_operators_create_devices_idempotently(services: Services, product_key: str) -> None:
    made = await services.devices.create(product_key, "AA-BB-CC-DD-EE-01")
    assert made.created
    assert made.mac == "aabbccddee01"
    assert re.fullmatch(r"[A-Z]{10}", made.passcode)
    again = await services.devices.create(product_key.upper(), "aabbccddee01")
    assert (again.did, again.passcode, again.created) == (made.did, made.passcode, False)
    kept = await services.devices.create(product_key, "aabbccddee02", passcode="gokit")
    assert kept.passcode == "gokit"
    with pytest.raises(ProductKeyInvalid):
        await services.devices.create(OTHER_KEY, "aabbccddee03")
    with pytest.raises(DeviceNotFound):
        await services.devices.set_disabled("z" * 22, True)
    with pytest.raises(DeviceNotFound):
        await services.devices.get("z" * 22)
    disabled = await services.devices.set_disabled(made.did, True)
    assert disabled.is_disabled
    assert (await services.devices.get(made.did)).is_disabled


async def test_csv_import_stores_good_rows_and_reports_bad_ones_by_line(
    services: Services, product_key: str
) -> None:
    existing = await services.devices.create(product_key, "000000000001")
    lines = [
        "product_key,mac,passcode\n",
        f"{product_key},00:00:00:00:00:02,\n",  # 2: good, generated passcode
        f"{product_key},000000000003,MYCODE\n",  # 3: good, given passcode
        f"{product_key},000000000001,\n",  # 4: exists already
        "\n",  # 5: blank, skipped
        f"{product_key},not-a-mac,\n",  # 6: bad mac
        f"{OTHER_KEY},000000000004,\n",  # 7: unknown product
        f"{product_key},000000000002,\n",  # 8: repeated within the file
        "short,000000000005,\n",  # 9: malformed product_key
        f"{product_key},000000000006,a b\n",  # 10: bad passcode
        f"{product_key},000000000007\n",  # 11: missing a field
        *(f"{product_key},1000000000{i:02x},\n" for i in range(20)),  # 12-31: good
    ]
    rows, failures = read_device_csv(lines)
    assert [(f.line, f.error) for f in failures] == [(11, "expected 3 fields, got 2")]
    batches: list[int] = []
    report = await services.devices.import_csv(rows, batch_size=7, progress=batches.append)

    assert sum(batches) == len(rows) == 28
    assert batches == [7, 7, 7, 7]
    assert (report.created, report.existing) == (22, 2)
    assert [(f.line, f.error.split(":")[0]) for f in report.failed] == [
        (6, "mac"),
        (7, "product_key"),
        (9, "product_key"),
        (10, "passcode"),
    ]
    assert await device_rows(services) == 23
    # existing devices are left as they were
    assert (await services.devices.create(product_key, "000000000001")).passcode == (
        existing.passcode
    )
    assert (await services.devices.create(product_key, "000000000003")).passcode == "MYCODE"


async def test_csv_import_racing_a_registration_still_counts_every_row(
    services: Services, product_key: str
) -> None:
    rows = [
        DeviceImportRow(line=2 + i, product_key=product_key, mac=f"20000000{i:04x}")
        for i in range(50)
    ]
    report, did = await asyncio.gather(
        services.devices.import_csv(rows, batch_size=10),
        services.devices.register(product_key, "200000000019", "PASSCODEAA"),
    )
    assert report.created + report.existing == 50
    assert not report.failed
    assert await device_rows(services) == 50
    assert (await services.devices.create(product_key, "200000000019")).did == did
