"""Account rules that depend on time or concurrency, on SQLite and PostgreSQL, with a frozen clock.

The services run in-process against a real database; time moves only when a test advances it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import pytest

from iotcloud.domain.clock import FrozenClock
from iotcloud.errors import (
    CodeExpired,
    CodeInvalid,
    Throttled,
    TokenExpired,
    TokenInvalid,
    UsernameUnavailable,
)
from iotcloud.services.apps import App
from iotcloud.services.registry import Services
from iotcloud.storage.accounts import CodeRepository, UserTokenRepository
from iotcloud.storage.database import Database
from tests.contract.conftest import START


@pytest.fixture
def settings_options() -> dict[str, Any]:
    return {
        "mqtt_port": 0,
        "argon2_time_cost": 1,
        "argon2_memory_kib": 1024,
        "user_tokens_per_user": 3,
    }


@pytest.fixture
async def app(services: Services) -> App:
    creds = await services.apps.create("Contract")
    return await services.apps.get(creds.appid)


def last_code(services: Services, phone: str) -> str:
    lines = (services.settings.outbox_dir / "sms.jsonl").read_text().splitlines()
    return str([json.loads(line) for line in lines if phone in line][-1]["code"])


async def test_user_tokens_expire_after_their_lifetime(
    services: Services, app: App, clock: FrozenClock
) -> None:
    issued = await services.accounts.create_with_username(app, "ttl", "secret1")
    assert issued.expire_at == int(START.timestamp()) + 7 * 86400
    clock.advance(7 * 86400 - 1)
    assert (await services.accounts.authenticate(app, issued.token)).uid == issued.uid
    clock.advance(1)
    with pytest.raises(TokenExpired):
        await services.accounts.authenticate(app, issued.token)


async def test_only_the_newest_tokens_of_a_user_stay_valid(services: Services, app: App) -> None:
    await services.accounts.create_with_username(app, "many", "secret1")
    tokens = []
    for _ in range(5):
        tokens.append((await services.accounts.login(app, "many", "secret1")).token)
    for token in tokens[:2]:
        with pytest.raises(TokenInvalid):
            await services.accounts.authenticate(app, token)
    for token in tokens[2:]:
        await services.accounts.authenticate(app, token)


async def test_app_tokens_expire(services: Services, app: App, clock: FrozenClock) -> None:
    secret = await services.apps.secret(app)
    signature = hashlib.md5((app.appid + secret).encode()).hexdigest()  # noqa: S324
    token, expires = await services.verification.request_app_token(app, signature)
    assert expires == START.replace(hour=14)
    await services.verification.check_app_token(app, token)
    clock.advance(2 * 3600)
    with pytest.raises(TokenExpired):
        await services.verification.check_app_token(app, token)


async def test_sms_codes_expire(services: Services, app: App, clock: FrozenClock) -> None:
    await services.verification.send_code(app, "13800000001")
    code = last_code(services, "13800000001")
    clock.advance(600)
    with pytest.raises(CodeExpired):
        await services.verification.verify_code(app, "13800000001", code)
    await services.verification.send_code(app, "13800000001")
    await services.verification.verify_code(app, "13800000001", last_code(services, "13800000001"))


async def test_hourly_send_limit_is_a_sliding_window(
    services: Services, app: App, clock: FrozenClock
) -> None:
    for _ in range(5):
        await services.verification.send_code(app, "13800000002")
        clock.advance(60)
    with pytest.raises(Throttled):
        await services.verification.send_code(app, "13800000002")
    clock.advance(3600 - 5 * 60 + 1)  # the first send is now more than an hour old
    await services.verification.send_code(app, "13800000002")


async def test_wrong_guesses_are_counted_even_though_the_request_fails(
    services: Services, app: App
) -> None:
    await services.verification.send_code(app, "13800000003")
    code = last_code(services, "13800000003")
    wrong = "000000" if code != "000000" else "111111"
    for _ in range(5):
        with pytest.raises(CodeInvalid, match="wrong"):
            await services.verification.verify_code(app, "13800000003", wrong)
    with pytest.raises(CodeInvalid, match="too many"):
        await services.verification.verify_code(app, "13800000003", code)


async def test_captchas_expire(services: Services, app: App, clock: FrozenClock) -> None:
    captcha_id = await services.verification.new_captcha(app)
    png = await services.verification.captcha_png(captcha_id)
    assert png.startswith(b"\x89PNG")
    clock.advance(300)
    with pytest.raises(CodeInvalid):
        await services.verification.captcha_png(captcha_id)


async def test_password_reset_links_expire(
    services: Services, app: App, clock: FrozenClock
) -> None:
    await services.accounts.create_with_email(app, "reset@example.org", "secret1")
    await services.password_reset.send_reset_link(app, "reset@example.org")
    mails = sorted((services.settings.outbox_dir / "mail").glob("*.eml"))
    text = mails[-1].read_text()
    token = text.split("/account/reset/")[1].split()[0]
    assert await services.password_reset.check_link(token) == "reset@example.org"
    clock.advance(3600)
    with pytest.raises(CodeExpired):
        await services.password_reset.reset_with_link(token, "another1")
    await services.accounts.login(app, "reset@example.org", "secret1")


async def test_housekeeping_purges_only_what_expired(
    services: Services, app: App, clock: FrozenClock
) -> None:
    old = await services.accounts.create_with_username(app, "old", "secret1")
    await services.verification.new_captcha(app)
    clock.advance(7 * 86400)
    fresh = await services.accounts.login(app, "old", "secret1")
    async with services.accounts.db.session() as session:
        removed = await UserTokenRepository(session).purge_expired(clock.now())
        removed += await CodeRepository(session).purge_expired(clock.now())
    assert removed == 2  # the first token and the captcha
    with pytest.raises(TokenInvalid):
        await services.accounts.authenticate(app, old.token)
    await services.accounts.authenticate(app, fresh.token)


async def test_concurrent_anonymous_sign_ups_share_one_user(services: Services, app: App) -> None:
    results = await asyncio.gather(
        *(services.accounts.create_anonymous(app, "phone-xyz") for _ in range(8))
    )
    assert len({r.uid for r in results}) == 1
    assert len({r.token for r in results}) == 8


async def test_concurrent_sign_ups_with_one_username_create_one_user(
    services: Services, app: App
) -> None:
    results = await asyncio.gather(
        *(services.accounts.create_with_username(app, "race", "secret1") for _ in range(6)),
        return_exceptions=True,
    )
    created = [r for r in results if not isinstance(r, BaseException)]
    assert len(created) == 1
    assert all(isinstance(r, UsernameUnavailable) for r in results if r not in created)


async def test_migrations_are_idempotent(database_url: str) -> None:
    async with Database(database_url) as db:
        await db.migrate()
        await db.migrate()
