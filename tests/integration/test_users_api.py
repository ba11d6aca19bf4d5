"""``/app/users``, ``/app/login`` and ``/app/logout`` driven over HTTP the way an app drives them.

Every test runs against the session's real ``iotcloud serve`` on SQLite and on PostgreSQL.
Phone + SMS-code sign-up is covered by its own test file.
"""

from __future__ import annotations

import email
import email.policy
import re
import time
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.conftest import unique
from tests.server import RunningServer

USER_TOKEN = "X-Gizwits-User-token"
WEEK = 7 * 86400
PROFILE_KEYS = {
    "uid",
    "is_anonymous",
    "username",
    "phone",
    "email",
    "name",
    "gender",
    "birthday",
    "address",
    "lang",
    "remark",
}
ERROR_MESSAGES = {
    9003: "appid invalid",
    9004: "token invalid",
    9015: "form invalid!",
    9019: "username unavailable!",
    9020: "username or password error!",
    9022: "email unavailable!",
    9026: "user invalid!",
    9999: "reserved",
}


# -- helpers -----------------------------------------------------------------------------------


def assert_error(
    response: httpx.Response, code: int, status: int = 400, field: str | None = None
) -> str:
    """The Gizwits error shape with ``code`` and HTTP ``status``; for 9015 the detail names
    ``field``. Returns the detail message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error_code", "error_message", "detail_message"}, body
    assert body["error_code"] == code, body
    assert isinstance(body["error_code"], int)
    if code in ERROR_MESSAGES:
        assert body["error_message"] == ERROR_MESSAGES[code], body
    detail = body["detail_message"]
    assert detail is None or isinstance(detail, str)
    if field is not None:
        assert detail is not None, body
        assert re.search(rf"(?<![\w.]){re.escape(field)}(?!\w)", detail), (
            f"detail_message {detail!r} does not name {field!r}"
        )
    return str(detail)


def assert_issued(response: httpx.Response, status: int) -> dict[str, Any]:
    """A sign-up/sign-in answer: exactly uid, token and expire_at (about a week from now)."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"uid", "token", "expire_at"}, body
    assert isinstance(body["uid"], str)
    assert body["uid"]
    assert isinstance(body["token"], str)
    assert body["token"]
    assert isinstance(body["expire_at"], int)
    assert abs(body["expire_at"] - (time.time() + WEEK)) < 120, body
    return body


def auth(token: str) -> dict[str, str]:
    return {USER_TOKEN: token}


def sign_up(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    return assert_issued(client.post("/app/users", json=fields), 201)


def new_user(client: httpx.Client, password: str = "secret1") -> tuple[str, dict[str, Any]]:
    """A fresh username user: ``(username, {"uid", "token", "expire_at"})``."""
    name = unique("user")
    return name, sign_up(client, username=name, password=password)


def login(client: httpx.Client, username: str, password: str) -> httpx.Response:
    return client.post("/app/login", json={"username": username, "password": password})


def profile(client: httpx.Client, token: str) -> dict[str, Any]:
    response = client.get("/app/users", headers=auth(token))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == PROFILE_KEYS, body
    return body


def update(client: httpx.Client, token: str, **fields: Any) -> httpx.Response:
    return client.put("/app/users", json=fields, headers=auth(token))


def assert_updated(response: httpx.Response) -> datetime:
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"updatedAt"}, body
    stamp = body["updatedAt"]
    assert isinstance(stamp, str), stamp
    assert stamp.endswith("Z"), stamp
    parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert abs(parsed.timestamp() - time.time()) < 120, stamp
    return parsed


def token_works(client: httpx.Client, token: str) -> bool:
    response = client.get("/app/users", headers=auth(token))
    if response.status_code == 200:
        return True
    assert_error(response, 9004)
    return False


# -- POST /app/users ---------------------------------------------------------------------------


def test_anonymous_sign_up_is_idempotent_per_phone_id(
    server: RunningServer, app: dict[str, str]
) -> None:
    phone_id = unique("phone-")
    with server.client(app["appid"]) as client:
        first = sign_up(client, phone_id=phone_id)
        again = sign_up(client, phone_id=phone_id)
        assert again["uid"] == first["uid"]
        assert again["token"] != first["token"]
        for token in (first["token"], again["token"]):
            me = profile(client, token)
            assert me["uid"] == first["uid"]
            assert me["is_anonymous"] is True
            assert me["username"] is None
            assert me["email"] is None
            assert me["phone"] is None
        other = sign_up(client, phone_id=unique("phone-"))
        assert other["uid"] != first["uid"]


def test_username_sign_up(server: RunningServer, app: dict[str, str]) -> None:
    name = unique("alice")
    with server.client(app["appid"]) as client:
        created = sign_up(client, username=name, password="secret1", lang="zh-cn")
        me = profile(client, created["token"])
        assert me["uid"] == created["uid"]
        assert me["username"] == name
        assert me["is_anonymous"] is False
        assert me["lang"] == "zh-cn"
        assert me["email"] is None
        assert me["phone"] is None


def test_email_sign_up_stores_lower_case_and_sends_welcome_mail(
    server: RunningServer, app: dict[str, str]
) -> None:
    local = unique("Carol.")
    typed = f"{local}@Example.COM"
    stored = typed.lower()
    with server.client(app["appid"]) as client:
        created = sign_up(client, email=typed, password="secret1")
        me = profile(client, created["token"])
        assert me["email"] == stored
        assert me["is_anonymous"] is False
        assert me["username"] is None
    outbox = server.data_dir / "outbox" / "mail"
    mails = [
        email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        for path in outbox.glob("*.eml")
    ]
    welcome = [mail for mail in mails if mail["To"] == stored]
    assert len(welcome) == 1, [mail["To"] for mail in mails]
    assert "Welcome" in str(welcome[0]["Subject"])


def test_application_id_is_required_and_must_be_known(
    server: RunningServer, app: dict[str, str]
) -> None:
    body = {"username": unique(), "password": "secret1"}
    with server.client() as client:
        assert_error(client.post("/app/users", json=body), 9003)
        assert_error(client.post("/app/login", json=body), 9003)
    with server.client("no-such-app-0000") as client:
        assert_error(client.post("/app/users", json=body), 9003)
    with server.client() as client:  # nothing was created by the refused calls
        login_body = {"username": body["username"], "password": "secret1"}
        response = client.post(
            "/app/login", json=login_body, headers={"X-Gizwits-Application-Id": app["appid"]}
        )
        assert_error(response, 9020)


def test_header_names_are_case_insensitive(server: RunningServer, app: dict[str, str]) -> None:
    name = unique("case")
    with server.client() as client:
        created = client.post(
            "/app/users",
            json={"username": name, "password": "secret1"},
            headers={"x-gizwits-application-id": app["appid"]},
        )
        token = assert_issued(created, 201)["token"]
        for header in ("X-Gizwits-User-Token", "x-gizwits-user-token", "X-GIZWITS-USER-TOKEN"):
            response = client.get(
                "/app/users",
                headers={"X-GIZWITS-APPLICATION-ID": app["appid"], header: token},
            )
            assert response.status_code == 200, response.text
            assert response.json()["username"] == name


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"username": "x" + "y" * 12, "password": "secret1", "nickname": "bob"}, "nickname"),
        ({"phone_id": "p-1", "extra": 1}, "extra"),
        ({"username": "x" + "y" * 12, "password": 123456}, "password"),
        ({"username": 42, "password": "secret1"}, "username"),
        ({"username": "u" * 65, "password": "secret1"}, "username"),
        ({"username": "bob@home", "password": "secret1"}, "username"),
        ({"username": "1234567890", "password": "secret1"}, "username"),
        ({"username": "two words", "password": "secret1"}, "username"),
        ({"username": "", "password": "secret1"}, "username"),
        ({"username": "x" + "y" * 12}, "password"),
        ({"email": "not-an-email", "password": "secret1"}, "email"),
        ({"email": "a@b", "password": "secret1"}, "email"),
        ({"email": "x@example.com", "password": "12345"}, "password"),
        ({"username": "x" + "y" * 12, "password": "12345"}, "password"),
        ({"username": "x" + "y" * 12, "password": "secret1", "lang": "fr"}, "lang"),
        ({"phone_id": ""}, "phone_id"),
        ({"phone_id": " padded "}, "phone_id"),
        ({"username": "x" + "y" * 12, "password": "p" * 129}, "password"),
        ({"password": "secret1"}, "body"),
        ({}, "body"),
    ],
)
def test_sign_up_rejects_bad_fields(
    server: RunningServer, app: dict[str, str], body: dict[str, Any], field: str
) -> None:
    with server.client(app["appid"]) as client:
        assert_error(client.post("/app/users", json=body), 9015, field=field)


@pytest.mark.parametrize(
    "content",
    [b"", b"   ", b"{not json", b'["username", "password"]', b'"bob"', b"null", b"42"],
)
def test_sign_up_rejects_bodies_that_are_not_json_objects(
    server: RunningServer, app: dict[str, str], content: bytes
) -> None:
    with server.client(app["appid"]) as client:
        response = client.post(
            "/app/users", content=content, headers={"Content-Type": "application/json"}
        )
        assert_error(response, 9015, field="body")


def test_sign_up_accepts_the_limits(server: RunningServer, app: dict[str, str]) -> None:
    longest = unique("l")
    longest += "x" * (64 - len(longest))
    with server.client(app["appid"]) as client:
        created = sign_up(client, username=longest, password="123456")
        assert profile(client, created["token"])["username"] == longest
        assert login(client, longest, "123456").json()["uid"] == created["uid"]
        name = unique("p")
        sign_up(client, username=name, password="p" * 128)
        assert login(client, name, "p" * 128).status_code == 200


def test_rejected_sign_up_does_not_reserve_the_username(
    server: RunningServer, app: dict[str, str]
) -> None:
    name = unique("later")
    with server.client(app["appid"]) as client:
        assert_error(
            client.post("/app/users", json={"username": name, "password": "123"}),
            9015,
            field="password",
        )
        assert_error(login(client, name, "123"), 9020)
        created = sign_up(client, username=name, password="secret1")
        assert login(client, name, "secret1").json()["uid"] == created["uid"]


def test_duplicate_username_is_refused_and_leaves_the_first_user_alone(
    server: RunningServer, app: dict[str, str]
) -> None:
    with server.client(app["appid"]) as client:
        name, first = new_user(client, password="first-pw")
        assert_error(
            client.post("/app/users", json={"username": name, "password": "second-pw"}), 9019
        )
        assert_error(login(client, name, "second-pw"), 9020)
        again = assert_issued(login(client, name, "first-pw"), 200)
        assert again["uid"] == first["uid"]


def test_duplicate_email_is_refused_in_any_case(server: RunningServer, app: dict[str, str]) -> None:
    address = f"{unique('dup')}@example.com"
    with server.client(app["appid"]) as client:
        first = sign_up(client, email=address, password="first-pw")
        for variant in (address, address.upper(), address.capitalize()):
            response = client.post("/app/users", json={"email": variant, "password": "second-pw"})
            assert_error(response, 9022)
        assert_error(login(client, address, "second-pw"), 9020)
        assert assert_issued(login(client, address, "first-pw"), 200)["uid"] == first["uid"]


def test_sign_up_mixing_a_new_username_with_a_taken_email_creates_nobody(
    server: RunningServer, app: dict[str, str]
) -> None:
    address = f"{unique('mix')}@example.com"
    name = unique("mix")
    with server.client(app["appid"]) as client:
        sign_up(client, email=address, password="first-pw")
        response = client.post(
            "/app/users", json={"username": name, "email": address, "password": "second-pw"}
        )
        assert_error(response, 9015, field="username")
        assert_error(login(client, name, "second-pw"), 9020)
        assert_error(login(client, address, "second-pw"), 9020)


def test_usernames_are_per_app_and_tokens_do_not_cross_apps(
    server: RunningServer, app: dict[str, str]
) -> None:
    other = server.create_app("Second App")
    name = unique("twin")
    with server.client(app["appid"]) as a, server.client(other["appid"]) as b:
        in_a = sign_up(a, username=name, password="secret-a")
        in_b = sign_up(b, username=name, password="secret-b")
        assert in_a["uid"] != in_b["uid"]
        assert_error(b.get("/app/users", headers=auth(in_a["token"])), 9004)
        assert_error(a.get("/app/users", headers=auth(in_b["token"])), 9004)
        assert_error(b.put("/app/users", json={"name": "x"}, headers=auth(in_a["token"])), 9004)
        assert_error(b.delete("/app/logout", headers=auth(in_a["token"])), 9004)
        assert profile(a, in_a["token"])["uid"] == in_a["uid"]  # not logged out by app B
        # each app checks its own password
        assert_error(login(a, name, "secret-b"), 9020)
        assert login(b, name, "secret-b").json()["uid"] == in_b["uid"]


# -- POST /app/login ---------------------------------------------------------------------------


def test_login_with_username_issues_a_new_token_each_time(
    server: RunningServer, app: dict[str, str]
) -> None:
    with server.client(app["appid"]) as client:
        name, created = new_user(client)
        tokens = [created["token"]]
        for _ in range(2):
            signed_in = assert_issued(login(client, name, "secret1"), 200)
            assert signed_in["uid"] == created["uid"]
            assert signed_in["token"] not in tokens
            tokens.append(signed_in["token"])
        for token in tokens:
            assert profile(client, token)["uid"] == created["uid"]


def test_login_with_email_in_any_case(server: RunningServer, app: dict[str, str]) -> None:
    address = f"{unique('dave')}@example.com"
    with server.client(app["appid"]) as client:
        created = sign_up(client, email=address, password="secret1")
        for typed in (address, address.upper(), address.title()):
            signed_in = assert_issued(login(client, typed, "secret1"), 200)
            assert signed_in["uid"] == created["uid"]
            assert signed_in["token"] != created["token"]
        assert profile(client, created["token"])["email"] == address


def test_login_failures(server: RunningServer, app: dict[str, str]) -> None:
    with server.client(app["appid"]) as client:
        name, _ = new_user(client)
        assert_error(login(client, name, "wrong-password"), 9020)
        assert_error(login(client, unique("nobody"), "secret1"), 9020)
        assert_error(login(client, f"{unique('nobody')}@example.com", "secret1"), 9020)
        assert_error(client.post("/app/login", json={"username": name}), 9015, field="password")
        assert_error(
            client.post("/app/login", json={"username": name, "password": 123456}),
            9015,
            field="password",
        )


def test_anonymous_user_cannot_log_in_with_its_phone_id(
    server: RunningServer, app: dict[str, str]
) -> None:
    phone_id = unique("anon-")
    with server.client(app["appid"]) as client:
        sign_up(client, phone_id=phone_id)
        assert_error(login(client, phone_id, ""), 9020)
        assert_error(login(client, phone_id, phone_id), 9020)
        assert_error(login(client, phone_id, "secret1"), 9020)
        assert_error(client.post("/app/login", json={"phone_id": phone_id}), 9015)


# -- GET /app/users ----------------------------------------------------------------------------


def test_profile_needs_a_valid_token(server: RunningServer, app: dict[str, str]) -> None:
    with server.client(app["appid"]) as client:
        assert_error(client.get("/app/users"), 9004)
        assert_error(client.get("/app/users", headers=auth("")), 9004)
        assert_error(client.get("/app/users", headers=auth("not-a-token")), 9004)
        assert_error(client.put("/app/users", json={"name": "x"}), 9004)
        assert_error(client.delete("/app/logout"), 9004)
        _, created = new_user(client)
    with server.client() as client:  # a token is no substitute for the app id
        assert_error(client.get("/app/users", headers=auth(created["token"])), 9003)


# -- PUT /app/users ----------------------------------------------------------------------------


def test_anonymous_user_becomes_a_named_user(server: RunningServer, app: dict[str, str]) -> None:
    name = unique("named")
    with server.client(app["appid"]) as client:
        anon = sign_up(client, phone_id=unique("anon-"))
        assert_updated(update(client, anon["token"], username=name, password="secret1"))
        me = profile(client, anon["token"])
        assert me["is_anonymous"] is False
        assert me["username"] == name
        assert me["uid"] == anon["uid"]
        signed_in = assert_issued(login(client, name, "secret1"), 200)
        assert signed_in["uid"] == anon["uid"]
        # once named, it cannot be re-named this way
        assert_error(update(client, anon["token"], username=unique(), password="secret2"), 9026)
        assert profile(client, anon["token"])["username"] == name


def test_anonymous_user_cannot_take_a_taken_username(
    server: RunningServer, app: dict[str, str]
) -> None:
    with server.client(app["appid"]) as client:
        name, _ = new_user(client)
        anon = sign_up(client, phone_id=unique("anon-"))
        assert_error(update(client, anon["token"], username=name, password="other-pw"), 9019)
        assert_error(
            update(client, anon["token"], username="u" * 65, password="secret1"),
            9015,
            field="username",
        )
        assert_error(
            update(client, anon["token"], username=unique(), password="123"),
            9015,
            field="password",
        )
        me = profile(client, anon["token"])
        assert me["is_anonymous"] is True
        assert me["username"] is None
        assert_error(login(client, name, "other-pw"), 9020)


def test_named_user_cannot_use_the_anonymous_upgrade(
    server: RunningServer, app: dict[str, str]
) -> None:
    with server.client(app["appid"]) as client:
        name, created = new_user(client)
        assert_error(update(client, created["token"], username=unique(), password="secret2"), 9026)
        assert profile(client, created["token"])["username"] == name
        assert login(client, name, "secret1").status_code == 200


def test_change_password_revokes_other_sessions(server: RunningServer, app: dict[str, str]) -> None:
    with server.client(app["appid"]) as client:
        name, created = new_user(client, password="old-secret")
        other = assert_issued(login(client, name, "old-secret"), 200)
        third = assert_issued(login(client, name, "old-secret"), 200)

        assert_error(update(client, created["token"], old_pwd="not-it", new_pwd="new-secret"), 9020)
        assert token_works(client, other["token"])  # a refused change revokes nothing
        assert_error(
            update(client, created["token"], old_pwd="old-secret", new_pwd="123"),
            9015,
            field="new_pwd",
        )
        assert token_works(client, third["token"])

        assert_updated(update(client, created["token"], old_pwd="old-secret", new_pwd="new-secret"))
        assert token_works(client, created["token"])  # the session that changed it stays
        assert not token_works(client, other["token"])
        assert not token_works(client, third["token"])
        assert_error(login(client, name, "old-secret"), 9020)
        assert assert_issued(login(client, name, "new-secret"), 200)["uid"] == created["uid"]


def test_same_password_again_is_nothing_changed_and_revokes_nothing(
    server: RunningServer, app: dict[str, str]
) -> None:
    with server.client(app["appid"]) as client:
        name, created = new_user(client)
        other = assert_issued(login(client, name, "secret1"), 200)
        assert_error(update(client, created["token"], old_pwd="secret1", new_pwd="secret1"), 9999)
        assert token_works(client, other["token"])
        assert login(client, name, "secret1").status_code == 200


def test_anonymous_user_has_no_password_to_change(
    server: RunningServer, app: dict[str, str]
) -> None:
    with server.client(app["appid"]) as client:
        anon = sign_up(client, phone_id=unique("anon-"))
        for old in ("", "secret1"):
            assert_error(update(client, anon["token"], old_pwd=old, new_pwd="secret2"), 9020)
        assert profile(client, anon["token"])["is_anonymous"] is True


def test_change_email(server: RunningServer, app: dict[str, str]) -> None:
    taken = f"{unique('taken')}@example.com"
    old = f"{unique('old')}@example.com"
    new = f"{unique('New')}@Example.com"
    with server.client(app["appid"]) as client:
        sign_up(client, email=taken, password="secret1")
        created = sign_up(client, email=old, password="secret1")
        assert_error(update(client, created["token"], email=taken), 9022)
        assert_error(update(client, created["token"], email=taken.upper()), 9022)
        assert_error(update(client, created["token"], email="no-at-sign"), 9015, field="email")
        assert profile(client, created["token"])["email"] == old

        assert_updated(update(client, created["token"], email=new))
        assert profile(client, created["token"])["email"] == new.lower()
        assert login(client, new, "secret1").json()["uid"] == created["uid"]
        assert_error(login(client, old, "secret1"), 9020)
        sign_up(client, email=old, password="secret1")  # the old address is free again


def test_profile_fields_round_trip(server: RunningServer, app: dict[str, str]) -> None:
    fields = {
        "name": "Zoë 张",
        "gender": "F",
        "birthday": "1990-12-31",
        "address": "1 Main St, Guangzhou",
        "lang": "zh-cn",
        "remark": "likes tea",
    }
    with server.client(app["appid"]) as client:
        name, created = new_user(client)
        first = assert_updated(update(client, created["token"], **fields))
        me = profile(client, created["token"])
        assert {key: me[key] for key in fields} == fields
        assert me["username"] == name

        second = assert_updated(update(client, created["token"], birthday="02-29", gender="N"))
        assert second >= first
        me = profile(client, created["token"])
        assert me["birthday"] == "02-29"
        assert me["gender"] == "N"
        assert me["name"] == fields["name"]  # untouched fields keep their values

        # the same values again change nothing: 9999
        assert_error(update(client, created["token"], birthday="02-29", gender="N"), 9999)
        assert_error(update(client, created["token"], name=fields["name"]), 9999)


def test_setting_the_current_email_again_is_nothing_changed(
    server: RunningServer, app: dict[str, str]
) -> None:
    address = f"{unique('same')}@example.com"
    with server.client(app["appid"]) as client:
        created = sign_up(client, email=address, password="secret1")
        assert_error(update(client, created["token"], email=address), 9999)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"gender": "X"}, "gender"),
        ({"gender": "m"}, "gender"),
        ({"lang": "fr"}, "lang"),
        ({"lang": "zh-CN"}, "lang"),
        ({"birthday": "2023-02-30"}, "birthday"),
        ({"birthday": "2023-02-29"}, "birthday"),
        ({"birthday": "13-01"}, "birthday"),
        ({"birthday": "1990/01/01"}, "birthday"),
        ({"name": "n" * 129}, "name"),
        ({"address": "a" * 257}, "address"),
        ({"remark": "r" * 1025}, "remark"),
        ({"gender": 1}, "gender"),
        ({"nickname": "bob"}, "nickname"),
        ({"old_pwd": "secret1"}, "old_pwd"),
        ({"new_pwd": "secret2"}, "new_pwd"),
        ({"password": "secret2"}, "password"),
        ({"username": "someone"}, "username"),
        ({"username": "someone", "old_pwd": "secret1", "new_pwd": "secret2"}, "username"),
        ({"email": "a@example.com", "old_pwd": "secret1", "new_pwd": "secret2"}, "email"),
    ],
)
def test_update_rejects_bad_fields_and_combinations(
    server: RunningServer, app: dict[str, str], fields: dict[str, Any], field: str
) -> None:
    with server.client(app["appid"]) as client:
        name, created = new_user(client)
        assert_error(update(client, created["token"], **fields), 9015, field=field)
        me = profile(client, created["token"])
        assert me["gender"] is None
        assert me["lang"] is None
        assert me["birthday"] is None
        assert login(client, name, "secret1").status_code == 200  # password untouched


def test_update_with_nothing_to_change_is_refused(
    server: RunningServer, app: dict[str, str]
) -> None:
    with server.client(app["appid"]) as client:
        _, created = new_user(client)
        assert_error(update(client, created["token"]), 9015)
        response = client.put("/app/users", content=b"", headers=auth(created["token"]))
        assert_error(response, 9015, field="body")
        response = client.put("/app/users", content=b"[]", headers=auth(created["token"]))
        assert_error(response, 9015, field="body")


# -- DELETE /app/logout ------------------------------------------------------------------------


def test_logout_revokes_only_that_token(server: RunningServer, app: dict[str, str]) -> None:
    with server.client(app["appid"]) as client:
        name, created = new_user(client)
        other = assert_issued(login(client, name, "secret1"), 200)
        response = client.delete("/app/logout", headers=auth(created["token"]))
        assert response.status_code == 204, response.text
        assert response.content == b""
        assert not token_works(client, created["token"])
        assert_error(client.delete("/app/logout", headers=auth(created["token"])), 9004)
        assert token_works(client, other["token"])
        assert profile(client, other["token"])["uid"] == created["uid"]


# -- routing-level errors ----------------------------------------------------------------------


def test_unknown_route_is_404_in_the_gizwits_shape(
    server: RunningServer, app: dict[str, str]
) -> None:
    with server.client(app["appid"]) as client:
        response = client.get("/app/no-such-thing")
        detail = assert_error(response, 9015, status=404)
        assert "/app/no-such-thing" in detail


def test_wrong_method_is_405_in_the_gizwits_shape(
    server: RunningServer, app: dict[str, str]
) -> None:
    with server.client(app["appid"]) as client:
        response = client.patch("/app/login", json={"username": "x", "password": "y"})
        detail = assert_error(response, 9015, status=405)
        assert "PATCH" in detail
        assert "/app/login" in detail
        assert "POST" in response.headers.get("Allow", "")


def test_oversized_body_is_413_in_the_gizwits_shape(
    server: RunningServer, app: dict[str, str]
) -> None:
    name = unique("big")
    big = {"username": name, "password": "secret1", "remark": "r" * (300 * 1024)}
    with server.client(app["appid"]) as client:
        response = client.post("/app/users", json=big)
        detail = assert_error(response, 9015, status=413)
        assert "body" in detail
        assert_error(login(client, name, "secret1"), 9020)
        _, created = new_user(client)  # the server is still fine
        response = client.put(
            "/app/users", json={"remark": "r" * (300 * 1024)}, headers=auth(created["token"])
        )
        assert_error(response, 9015, status=413)
