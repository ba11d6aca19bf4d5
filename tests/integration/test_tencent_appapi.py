"""The signed Tencent app API (``POST /api/exploreropen/appapi``) against a real ``iotcloud
serve``: sign-up, sign-in and password reset by phone and by e-mail with codes read from the
SMS and mail outboxes; users of the Gizwits API signing in here, and tokens from here working on
``tokenapi`` and the Gizwits API. Every refusal of the signed tier answers its code and leaves
no user, code or nonce behind. Calls are signed in this file, independently of the server's
code, as Tencent's Node SDK signs them (``tests.tencent``). A second server answers in the
``sdk`` envelope. Malformed calls, refused before any storage, run on the SQLite server only.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from iotcloud.storage.database import Database
from iotcloud.storage.models import ApiNonceRow, AppRow, SmsCodeRow, UserRow
from tests.conftest import unique, unique_phone
from tests.server import RunningServer, serving
from tests.tencent import (
    ABSENT,
    APPAPI,
    TOKENAPI,
    assert_error,
    assert_ok,
    call_tokenapi,
    resign,
    signature,
    without_absent,
)

PASSWORD = "pw-123456"


# -- calling -----------------------------------------------------------------------------------


@dataclass
class AppClient:
    """An app calling appapi with its AppKey/AppSecret."""

    http: httpx.Client
    server: RunningServer
    appid: str
    secret: str

    def body(self, action: str, **params: Any) -> dict[str, Any]:
        """A signed body; ``Signature=...`` among ``params`` replaces the computed one
        (``ABSENT`` leaves it out)."""
        forced = params.pop("Signature", None)
        body: dict[str, Any] = {
            "Action": action,
            "RequestId": "req-" + uuid.uuid4().hex[:10],
            "AppKey": self.appid,
            "Timestamp": int(time.time()),
            "Nonce": secrets.randbelow(10**9) + 1,
            "Platform": "android",  # Tencent's apps sign extra keys too
            **params,
        }
        body = without_absent(body)
        if forced is None:
            body["Signature"] = signature(self.secret, body)
        elif forced is not ABSENT:
            body["Signature"] = forced
        return body

    def post(self, body: Any) -> dict[str, Any]:
        """POST ``body`` (a dict as JSON, or raw bytes); the HTTP 200 JSON answer."""
        if isinstance(body, bytes):
            reply = self.http.post(APPAPI, content=body)
        else:
            reply = self.http.post(APPAPI, json=body)
        assert reply.status_code == 200, reply.text
        answer: dict[str, Any] = reply.json()
        return answer

    def call(self, action: str, **params: Any) -> dict[str, Any]:
        """The ``Response`` of a signed call; its RequestId is the one sent."""
        body = self.body(action, **params)
        answer = self.post(body)
        assert set(answer) == {"Response"}, answer
        response: dict[str, Any] = answer["Response"]
        assert response["RequestId"] == body["RequestId"]
        return response

    def ok(self, action: str, **params: Any) -> dict[str, Any]:
        return assert_ok(self.call(action, **params))


def sms_codes(data_dir: Path, phone: str) -> list[dict[str, str]]:
    path = data_dir / "outbox" / "sms.jsonl"
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [message for message in lines if message["phone"] == phone]


def mailed_codes(data_dir: Path, to: str) -> list[str]:
    """The codes of the verification mails sent to ``to``, oldest first."""
    directory = data_dir / "outbox" / "mail"
    codes = []
    for path in sorted(directory.glob("*.eml")) if directory.exists() else []:
        mail = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
        subject = str(mail["Subject"])
        if mail["To"] == to and "verification code:" in subject:
            codes.append(subject.rsplit(" ", 1)[-1])
    return codes


def other_code(code: str) -> str:
    return f"{(int(code) + 1) % 10 ** len(code):0{len(code)}d}"


@dataclass(frozen=True)
class Stored:
    users: int
    nonces: int
    codes: int


async def stored(server: RunningServer, appid: str) -> Stored:
    """How many users, spent nonces and codes the app has in the server's database."""
    async with Database(server.database_url) as db, db.session() as session:
        app_id = await session.scalar(select(AppRow.id).where(AppRow.appid == appid))

        async def count(model: Any) -> int:
            total = await session.scalar(
                select(func.count()).select_from(model).where(model.app_id == app_id)
            )
            return int(total or 0)

        return Stored(
            users=await count(UserRow),
            nonces=await count(ApiNonceRow),
            codes=await count(SmsCodeRow),
        )


@pytest.fixture(scope="module")
def signed_app(server: RunningServer) -> dict[str, str]:
    """An app of its own, so counts of stored rows are this module's alone."""
    return server.create_app("Tencent App")


@pytest.fixture
def client(server: RunningServer, signed_app: dict[str, str]) -> Iterator[AppClient]:
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        yield AppClient(http, server, signed_app["appid"], signed_app["appsecret"])


def phone_code(client: AppClient, number: str, kind: str) -> str:
    """Ask for an SMS code of ``kind`` for a Chinese ``number``; the code from the outbox."""
    before = len(sms_codes(client.server.data_dir, number))
    client.ok("AppSendVerificationCode", CountryCode="86", PhoneNumber=number, Type=kind)
    messages = sms_codes(client.server.data_dir, number)
    assert len(messages) == before + 1
    return messages[-1]["code"]


def email_code(client: AppClient, email: str, kind: str) -> str:
    before = len(mailed_codes(client.server.data_dir, email))
    client.ok("AppSendEmailVerificationCode", Email=email, Type=kind)
    codes = mailed_codes(client.server.data_dir, email)
    assert len(codes) == before + 1
    return codes[-1]


def gizwits_me(client: AppClient, token: str) -> httpx.Response:
    return client.http.get(
        "/app/users",
        headers={"X-Gizwits-Application-Id": client.appid, "X-Gizwits-User-token": token},
    )


def tokenapi_user(client: AppClient, token: str) -> dict[str, Any]:
    return call_tokenapi(client.http, "AppGetUser", token)


# -- happy paths -------------------------------------------------------------------------------


def test_a_phone_user_signs_up_and_in_with_a_password_or_a_code(client: AppClient) -> None:
    number = unique_phone()
    code = phone_code(client, number, "register")
    phone = dict(CountryCode="86", PhoneNumber=number)
    assert sms_codes(client.server.data_dir, number)[-1]["purpose"] == "register"
    # checking does not use the code up; a wrong one is refused
    wrong = client.call("AppCheckVerificationCode", **phone, VerificationCode=other_code(code))
    assert_error(wrong, "InvalidParameterValue.VerificationCodeInvalid")
    checked = client.ok("AppCheckVerificationCode", **phone, VerificationCode=code)
    assert set(checked) == {"RequestId"}
    created = client.ok("AppCreateCellphoneUser", **phone, Password=PASSWORD, VerificationCode=code)
    uid = created["Data"]["UserID"]
    assert set(created["Data"]) == {"UserID"}

    signed_in = client.ok("AppGetToken", Type="phone", **phone, Password=PASSWORD)
    data = signed_in["Data"]
    assert set(data) == {"Token", "ExpireAt"}
    assert abs(data["ExpireAt"] - time.time() - 7 * 86400) < 120
    me = gizwits_me(client, data["Token"])
    assert me.status_code == 200, me.text
    assert (me.json()["uid"], me.json()["phone"]) == (uid, number)
    user = tokenapi_user(client, data["Token"])
    assert user["Data"]["UserID"] == uid
    assert (user["Data"]["CountryCode"], user["Data"]["PhoneNumber"]) == ("86", number)

    # sign-in with a login code, which is then used up
    login = phone_code(client, number, "login")
    assert sms_codes(client.server.data_dir, number)[-1]["purpose"] == "login"
    by_code = client.ok("AppGetToken", **phone, VerificationCode=login)  # Type inferred
    assert gizwits_me(client, by_code["Data"]["Token"]).json()["uid"] == uid
    again = client.call("AppGetToken", **phone, VerificationCode=login)
    assert_error(again, "InvalidParameterValue.VerificationCodeInvalid")


async def test_an_email_user_signs_up_resets_the_password_and_signs_in(
    client: AppClient,
) -> None:
    email = unique("mail-") + "@Example.com"
    code = email_code(client, email.lower(), "register")
    client.ok("AppCheckEmailVerificationCode", Email=email, VerificationCode=code)
    created = client.ok("AppCreateEmailUser", Email=email, Password=PASSWORD, VerificationCode=code)
    uid = created["Data"]["UserID"]
    first = client.ok("AppGetToken", Type="email", Email=email, Password=PASSWORD)["Data"]["Token"]
    assert gizwits_me(client, first).json()["email"] == email.lower()

    reset = email_code(client, email.lower(), "resetpass")
    client.ok("AppResetPasswordByEmail", Email=email, VerificationCode=reset, Password="new-pw-99")
    # the reset ended every session and replaced the password
    assert gizwits_me(client, first).status_code == 400
    old = client.call("AppGetToken", Email=email, Password=PASSWORD)
    assert_error(old, "InvalidParameterValue.UserLoginFailed")
    token = client.ok("AppGetToken", Email=email, Password="new-pw-99")["Data"]["Token"]
    assert tokenapi_user(client, token)["Data"]["UserID"] == uid

    login = email_code(client, email.lower(), "login")
    client.ok("AppGetToken", Type="email", Email=email, VerificationCode=login)


def test_a_gizwits_phone_user_signs_in_and_resets_here(
    client: AppClient, server: RunningServer
) -> None:
    """One user store: the phone a Gizwits app registered is the Tencent CountryCode 86 one."""
    number = unique_phone()
    auth = hashlib.md5((client.appid + client.secret).encode(), usedforsecurity=False)
    headers = {"X-Gizwits-Application-Id": client.appid}
    app_token = client.http.post(
        "/app/request_token",
        headers={**headers, "X-Gizwits-Application-Auth": auth.hexdigest()},
    ).json()["token"]
    sent = client.http.post(
        "/app/sms_code",
        json={"phone": number},
        headers={**headers, "X-Gizwits-Application-Token": app_token},
    )
    assert sent.status_code == 200, sent.text
    code = sms_codes(server.data_dir, number)[-1]["code"]
    made = client.http.post(
        "/app/users", json={"phone": number, "code": code, "password": PASSWORD}, headers=headers
    )
    assert made.status_code == 201, made.text
    uid = made.json()["uid"]

    phone = dict(CountryCode="86", PhoneNumber=number)
    token = client.ok("AppGetToken", **phone, Password=PASSWORD)["Data"]["Token"]
    assert gizwits_me(client, token).json()["uid"] == uid
    assert tokenapi_user(client, token)["Data"]["UserID"] == uid
    taken = client.call("AppSendVerificationCode", **phone, Type="register")
    assert_error(taken, "InvalidParameterValue.PhoneNumberRegistered")

    reset = phone_code(client, number, "resetpass")
    client.ok("AppResetPasswordByCellphone", **phone, VerificationCode=reset, Password="changed-9")
    login = client.http.post(
        "/app/login", json={"username": number, "password": "changed-9"}, headers=headers
    )
    assert login.status_code == 200, login.text
    assert login.json()["uid"] == uid


def test_a_gizwits_username_user_with_an_email_signs_in_here(client: AppClient) -> None:
    email = unique("giz-") + "@example.com"
    made = client.http.post(
        "/app/users",
        json={"email": email, "password": PASSWORD},
        headers={"X-Gizwits-Application-Id": client.appid},
    )
    assert made.status_code == 201, made.text
    token = client.ok("AppGetToken", Email=email, Password=PASSWORD)["Data"]["Token"]
    assert tokenapi_user(client, token)["Data"]["UserID"] == made.json()["uid"]


# -- refusals ----------------------------------------------------------------------------------


async def test_signature_timestamp_nonce_and_appkey_refusals_store_nothing(
    client: AppClient, server: RunningServer
) -> None:
    number = unique_phone()
    send = dict(CountryCode="86", PhoneNumber=number, Type="register")
    before = await stored(server, client.appid)

    bad = client.call("AppSendVerificationCode", **send, Signature="AAAA" * 7)
    assert_error(bad, "AuthFailure.SignatureFailure", "Signature")
    wrong_key = client.body("AppSendVerificationCode", **send)
    wrong_key["Signature"] = resign("not-the-secret", wrong_key)
    assert_error(client.post(wrong_key)["Response"], "AuthFailure.SignatureFailure")
    tampered = client.body("AppSendVerificationCode", **send)
    tampered["PhoneNumber"] = unique_phone()
    assert_error(client.post(tampered)["Response"], "AuthFailure.SignatureFailure")
    unsigned = client.body("AppSendVerificationCode", **send, Signature=ABSENT)
    assert_error(client.post(unsigned)["Response"], "ErrorRequiredParamNotFound", "Signature")

    for skew in (-301 - 60, 400, -86400):
        stale = client.call("AppSendVerificationCode", **send, Timestamp=int(time.time()) + skew)
        assert_error(stale, "AuthFailure.SignatureExpire", "Timestamp")
    text_time = client.call("AppSendVerificationCode", **send, Timestamp=str(int(time.time())))
    assert_error(text_time, "InvalidParameterValue", "Timestamp")
    no_time = client.call("AppSendVerificationCode", **send, Timestamp=ABSENT)
    assert_error(no_time, "ErrorRequiredParamNotFound", "Timestamp")
    for nonce in (0, -5, "12", 1.5, ABSENT):
        odd = client.call("AppSendVerificationCode", **send, Nonce=nonce)
        expected = "ErrorRequiredParamNotFound" if nonce is ABSENT else "InvalidParameterValue"
        assert_error(odd, expected, "Nonce")

    unknown = dict(client.body("AppSendVerificationCode", **send))
    unknown["AppKey"] = "no-such-app-key"
    assert_error(client.post(unknown)["Response"], "AuthFailure.SecretIdNotFound", "AppKey")
    no_key = client.call("AppSendVerificationCode", **send, AppKey=ABSENT)
    assert_error(no_key, "ErrorRequiredParamNotFound", "AppKey")

    assert await stored(server, client.appid) == before
    assert sms_codes(server.data_dir, number) == []

    # a replayed call is refused: one code sent, one nonce spent
    once = client.body("AppSendVerificationCode", **send)
    assert "Error" not in client.post(once)["Response"]
    replay = client.post(once)["Response"]
    assert_error(replay, "AuthFailure.NonceReplayed", "Nonce")
    assert replay["RequestId"] == once["RequestId"]
    assert len(sms_codes(server.data_dir, number)) == 1
    after = await stored(server, client.appid)
    assert (after.nonces, after.codes) == (before.nonces + 1, before.codes + 1)
    # the same Nonce with another Timestamp is another call
    fresh = client.body("AppCheckVerificationCode", **send, VerificationCode="000000")
    fresh["Nonce"], fresh["Timestamp"] = once["Nonce"], once["Timestamp"] - 1
    fresh["Signature"] = resign(client.secret, fresh)
    checked = client.post(fresh)["Response"]
    assert checked.get("Error", {}).get("Code") != "AuthFailure.NonceReplayed", checked


@pytest.mark.backend("sqlite")
async def test_malformed_calls_are_refused_naming_the_problem(
    client: AppClient, server: RunningServer
) -> None:
    before = await stored(server, client.appid)
    for raw in (b"", b"{", b"Action=AppGetToken"):
        answer = client.post(raw)["Response"]
        assert_error(answer, "InvalidParameterValue.InvalidJSON", "body")
        assert len(answer["RequestId"]) == 36
    assert_error(client.post(b"[1]")["Response"], "InvalidParameterValue", "body")

    unknown = client.call("AppDoSomething")
    assert_error(unknown, "InvalidAction", "AppDoSomething")
    tokenapi_only = client.call("AppGetTimerList")
    assert_error(tokenapi_only, "InvalidAction", "AppGetTimerList")
    no_action = client.post({"RequestId": "r-1"})["Response"]
    assert_error(no_action, "ErrorRequiredParamNotFound", "Action")
    assert no_action["RequestId"] == "r-1"

    number = unique_phone()
    for action, params, named in [
        ("AppCreateCellphoneUser", {"CountryCode": "86", "PhoneNumber": number}, "Password"),
        ("AppCreateCellphoneUser", {"PhoneNumber": number, "Password": PASSWORD}, "CountryCode"),
        (
            "AppCreateEmailUser",
            {"Email": "x@example.com", "Password": PASSWORD},
            "VerificationCode",
        ),
        ("AppSendVerificationCode", {"CountryCode": "86", "PhoneNumber": number}, "Type"),
        ("AppGetToken", {"Type": "phone", "CountryCode": "86"}, "PhoneNumber"),
        ("AppGetToken", {"Email": "x@example.com"}, "Password"),
        ("AppResetPasswordByEmail", {"VerificationCode": "1", "Password": PASSWORD}, "Email"),
    ]:
        assert_error(client.call(action, **params), "ErrorRequiredParamNotFound", named)

    for action, params, code, named in [
        (
            "AppSendVerificationCode",
            {"CountryCode": "86", "PhoneNumber": "12a", "Type": "login"},
            "InvalidParameterValue.PhoneNumberInvalid",
            "PhoneNumber",
        ),
        (
            "AppSendVerificationCode",
            {"CountryCode": "x", "PhoneNumber": number, "Type": "login"},
            "InvalidParameterValue.PhoneNumberInvalid",
            "CountryCode",
        ),
        (
            "AppSendVerificationCode",
            {"CountryCode": "86", "PhoneNumber": number, "Type": "bind"},
            "InvalidParameterValue",
            "Type",
        ),
        (
            "AppSendEmailVerificationCode",
            {"Email": "not-mail", "Type": "register"},
            "InvalidParameterValue",
            "Email",
        ),
        (
            "AppCreateCellphoneUser",
            {
                "CountryCode": "86",
                "PhoneNumber": number,
                "Password": "x",
                "VerificationCode": "123456",
            },
            "InvalidParameterValue",
            "Password",
        ),
        ("AppGetToken", {"Type": "fax", "PhoneNumber": number}, "InvalidParameterValue", "Type"),
        (
            "AppGetToken",
            {"CountryCode": "86", "PhoneNumber": number, "Password": PASSWORD},
            "InvalidParameterValue.ErrorUserNotExists",
            "",
        ),
        (
            "AppSendVerificationCode",
            {"CountryCode": "86", "PhoneNumber": number, "Type": "resetpass"},
            "InvalidParameterValue.ErrorUserNotExists",
            "",
        ),
        (
            "AppResetPasswordByCellphone",
            {
                "CountryCode": "86",
                "PhoneNumber": number,
                "VerificationCode": "123456",
                "Password": PASSWORD,
            },
            "InvalidParameterValue.ErrorUserNotExists",
            "",
        ),
        (
            "AppCreateCellphoneUser",
            {
                "CountryCode": "86",
                "PhoneNumber": number,
                "Password": PASSWORD,
                "VerificationCode": "123456",
            },
            "InvalidParameterValue.VerificationCodeInvalid",
            "",
        ),
    ]:
        assert_error(client.call(action, **params), code, named)

    after = await stored(server, client.appid)
    # every call above passed the signature check: only their nonces were spent
    assert (after.users, after.codes) == (before.users, before.codes)
    assert sms_codes(server.data_dir, number) == []


def test_a_wrong_password_is_told_apart_from_an_unknown_user(client: AppClient) -> None:
    number = unique_phone()
    code = phone_code(client, number, "register")
    phone = dict(CountryCode="86", PhoneNumber=number)
    client.ok("AppCreateCellphoneUser", **phone, Password=PASSWORD, VerificationCode=code)
    wrong = client.call("AppGetToken", **phone, Password="wrong-pass")
    assert_error(wrong, "InvalidParameterValue.UserLoginFailed", "Password")
    duplicate = client.call(
        "AppCreateCellphoneUser", **phone, Password=PASSWORD, VerificationCode=code
    )
    assert_error(duplicate, "InvalidParameterValue.PhoneNumberRegistered")


# -- the sdk envelope --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sdk_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server answering Tencent's app SDKs (SQLite: the envelope touches no storage)."""
    with serving(
        tmp_path_factory.mktemp("iotcloud-sdk-envelope"),
        None,
        tencent_envelope="sdk",
        rate_limit_per_address=0,
        rate_limit_per_app=0,
    ) as running:
        yield running


def test_the_sdk_envelope_on_both_tiers(sdk_server: RunningServer) -> None:
    app = sdk_server.create_app("SDK App")
    with httpx.Client(base_url=sdk_server.base_url, timeout=30) as http:
        client = AppClient(http, sdk_server, app["appid"], app["appsecret"])
        number = unique_phone()
        body = client.body(
            "AppSendVerificationCode", CountryCode="86", PhoneNumber=number, Type="register"
        )
        assert client.post(body) == {"code": 0, "msg": "", "data": {"RequestId": body["RequestId"]}}
        code = sms_codes(sdk_server.data_dir, number)[-1]["code"]
        body = client.body(
            "AppCreateCellphoneUser",
            CountryCode="86",
            PhoneNumber=number,
            Password=PASSWORD,
            VerificationCode=code,
        )
        created = client.post(body)
        assert created["code"] == 0
        assert set(created["data"]) == {"Data", "RequestId"}
        body = client.body("AppGetToken", CountryCode="86", PhoneNumber=number, Password=PASSWORD)
        token = client.post(body)["data"]["Data"]["Token"]

        replay = client.post(body)
        assert replay["code"] != 0
        assert replay["msg"] == replay["data"]["Error"]["Message"]
        assert replay["data"]["Error"]["Code"] == "AuthFailure.NonceReplayed"
        assert replay["data"]["RequestId"] == body["RequestId"]
        assert set(replay) == {"code", "msg", "data"}

        user = http.post(TOKENAPI, json={"Action": "AppGetUser", "AccessToken": token}).json()
        assert user["code"] == 0
        assert (user["data"]["Data"]["PhoneNumber"], user["data"]["Data"]["CountryCode"]) == (
            number,
            "86",
        )
        refused = http.post(
            TOKENAPI, json={"Action": "AppGetUser", "AccessToken": "nope", "RequestId": "r-9"}
        ).json()
        assert refused["code"] != 0
        assert refused["data"] == {
            "Error": {
                "Code": "InvalidParameterValue.InvalidAccessToken",
                "Message": refused["msg"],
            },
            "RequestId": "r-9",
        }
        bad_json = http.post(APPAPI, content=b"{").json()
        assert bad_json["code"] != 0
        assert bad_json["data"]["Error"]["Code"] == "InvalidParameterValue.InvalidJSON"
