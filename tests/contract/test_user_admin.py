"""The operator's user service on SQLite and PostgreSQL: search, a user's devices and sessions,
disabling (no sign-in, every token revoked) and signing out everywhere."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from iotcloud.domain.clock import FrozenClock
from iotcloud.errors import FormInvalid, LoginFailed, TokenInvalid, UserInvalid, UserNotFound
from iotcloud.services.apps import App
from iotcloud.services.registry import Services
from tests.contract.conftest import START
from tests.devices import FIXTURES

PASSWORD = "secret-pw-1"


@pytest.fixture
def settings_options() -> dict[str, Any]:
    return {"mqtt_port": 0, "argon2_time_cost": 1, "argon2_memory_kib": 1024}


@pytest.fixture
async def app(services: Services) -> App:
    creds = await services.apps.create("Operators")
    return await services.apps.get(creds.appid)


async def test_search_matches_uid_username_email_and_phone_newest_first(
    services: Services, app: App, clock: FrozenClock
) -> None:
    other = await services.apps.get((await services.apps.create("Other")).appid)
    alice = await services.accounts.create_with_username(app, "Alice_Smith", PASSWORD)
    clock.advance(1)
    bob = await services.accounts.create_with_email(app, "Bob@Example.com", PASSWORD)
    clock.advance(1)
    carol = await services.accounts.create_with_username(other, "carol", PASSWORD)
    admin = services.user_admin

    assert [u.uid for u in await admin.search()][:3] == [carol.uid, bob.uid, alice.uid]
    assert [u.uid for u in await admin.search("alice_s")] == [alice.uid]
    assert [u.uid for u in await admin.search("EXAMPLE.COM")] == [bob.uid]
    assert [u.uid for u in await admin.search(carol.uid[3:12].upper())] == [carol.uid]
    # LIKE wildcards in the query match themselves only
    assert [u.uid for u in await admin.search("e_s")] == [alice.uid]
    assert await admin.search("%") == []
    assert {u.uid for u in await admin.search(appid=app.appid)} == {alice.uid, bob.uid}
    assert [u.uid for u in await admin.search(appid=other.appid)] == [carol.uid]
    assert await admin.search(appid="no-such-app") == []
    assert len(await admin.search(limit=1)) == 1
    assert [u.uid for u in await admin.search(appid=app.appid, offset=1)] == [alice.uid]

    found = (await admin.search("bob"))[0]
    assert (found.appid, found.email, found.username, found.is_disabled) == (
        app.appid,
        "bob@example.com",
        None,
        False,
    )
    assert found.created_at == START.replace(second=1)


@pytest.mark.parametrize(
    ("options", "field"),
    [({"limit": 0}, "limit"), ({"limit": 1001}, "limit"), ({"offset": -1}, "offset")],
)
async def test_search_refuses_bad_pages_naming_the_parameter(
    services: Services, options: dict[str, Any], field: str
) -> None:
    with pytest.raises(FormInvalid) as caught:
        await services.user_admin.search(**options)
    assert caught.value.detail is not None
    assert caught.value.detail.startswith(f"{field}:")


async def test_a_user_shows_their_bound_devices_and_live_sessions_never_tokens(
    services: Services, app: App, clock: FrozenClock
) -> None:
    definition = json.loads((FIXTURES / "pet_house.json").read_text())
    definition["product_key"] = uuid.uuid4().hex
    product_key = (await services.products.import_definition(definition)).product_key
    device = await services.devices.create(product_key, "02" + uuid.uuid4().hex[:10])
    issued = await services.accounts.create_with_username(app, "dana", PASSWORD)
    user = await services.accounts.authenticate(app, issued.token)
    await services.bindings.bind(user, device.did)
    clock.advance(60)
    await services.accounts.login(app, "dana", PASSWORD)

    detail = await services.user_admin.get(issued.uid)
    assert detail.user.device_count == 1
    [bound] = detail.devices
    assert (bound.did, bound.mac, bound.product_key, bound.is_online) == (
        device.did,
        device.mac,
        product_key,
        False,
    )
    assert bound.product_name == definition["name"]
    assert [s.created_at for s in detail.sessions] == [START.replace(minute=1), START]
    assert issued.token not in repr(detail)

    with pytest.raises(UserNotFound):
        await services.user_admin.get("no-such-uid")


async def test_a_disabled_user_cannot_sign_in_and_its_tokens_stop_working(
    services: Services, app: App
) -> None:
    issued = await services.accounts.create_with_username(app, "erin", PASSWORD)
    second = await services.accounts.login(app, "erin", PASSWORD)
    await services.accounts.authenticate(app, issued.token)  # checked and cached

    summary = await services.user_admin.set_disabled(issued.uid, True)
    assert summary.is_disabled
    for token in (issued.token, second.token):
        with pytest.raises(TokenInvalid):
            await services.accounts.authenticate(app, token)
    with pytest.raises(UserInvalid):
        await services.accounts.login(app, "erin", PASSWORD)
    with pytest.raises(LoginFailed):  # a wrong password tells nothing about the account
        await services.accounts.login(app, "erin", "wrong-password")
    assert (await services.user_admin.get(issued.uid)).sessions == []
    assert (await services.user_admin.set_disabled(issued.uid, True)).is_disabled  # twice: fine

    assert not (await services.user_admin.set_disabled(issued.uid, False)).is_disabled
    again = await services.accounts.login(app, "erin", PASSWORD)
    assert (await services.accounts.authenticate(app, again.token)).uid == issued.uid
    with pytest.raises(TokenInvalid):  # enabling brings no old session back
        await services.accounts.authenticate(app, issued.token)

    with pytest.raises(UserNotFound):
        await services.user_admin.set_disabled("no-such-uid", True)


async def test_an_anonymous_user_disabled_cannot_sign_in_again_by_phone_id(
    services: Services, app: App
) -> None:
    issued = await services.accounts.create_anonymous(app, "phone-id-1")
    await services.user_admin.set_disabled(issued.uid, True)
    with pytest.raises(UserInvalid):
        await services.accounts.create_anonymous(app, "phone-id-1")


async def test_sign_out_everywhere_revokes_every_live_token(
    services: Services, app: App, clock: FrozenClock
) -> None:
    issued = await services.accounts.create_with_username(app, "frank", PASSWORD)
    other = await services.accounts.login(app, "frank", PASSWORD)
    await services.accounts.authenticate(app, other.token)  # checked and cached
    assert await services.user_admin.sign_out_everywhere(issued.uid) == 2
    for token in (issued.token, other.token):
        with pytest.raises(TokenInvalid):
            await services.accounts.authenticate(app, token)
    assert await services.user_admin.sign_out_everywhere(issued.uid) == 0
    # the user is not disabled: signing in again works
    fresh = await services.accounts.login(app, "frank", PASSWORD)
    assert (await services.accounts.authenticate(app, fresh.token)).uid == issued.uid

    clock.advance(8 * 86400)  # an expired token is not counted as a session
    assert await services.user_admin.sign_out_everywhere(issued.uid) == 0
    with pytest.raises(UserNotFound):
        await services.user_admin.sign_out_everywhere("no-such-uid")
