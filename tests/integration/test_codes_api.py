"""App tokens, captchas and SMS codes, driven over HTTP the way a phone app uses them.

Covers ``POST /app/request_token``, ``GET/POST/PUT /app/verify/codes``, ``POST /app/sms_code``, the
hourly send cap, and the flows that spend a code: sign-up with a phone, an anonymous user setting
a phone, and changing a phone. The SMS provider is the default outbox
(``<data dir>/outbox/sms.jsonl``), except in the webhook tests at the end.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import unique, unique_phone
from tests.server import DEV_CAPTCHA, RunningServer, serving

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# -- helpers ----------------------------------------------------------------------------------


def signature(appid: str, appsecret: str) -> str:
    return hashlib.md5((appid + appsecret).encode(), usedforsecurity=False).hexdigest()


def assert_error(response: httpx.Response, code: int, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error_code", "error_message", "detail_message"}, body
    assert body["error_code"] == code, body
    assert isinstance(body["error_message"], str)
    assert body["error_message"]
    return dict(body)


def request_app_token(server: RunningServer, app: dict[str, str]) -> str:
    with server.client(app["appid"]) as client:
        response = client.post(
            "/app/request_token",
            headers={"X-Gizwits-Application-Auth": signature(app["appid"], app["appsecret"])},
        )
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


def sent_sms(data_dir: Path, phone: str) -> list[dict[str, str]]:
    """Every SMS the outbox provider wrote for ``phone``, oldest first."""
    path = data_dir / "outbox" / "sms.jsonl"
    if not path.exists():
        return []
    messages = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [message for message in messages if message["phone"] == phone]


def other_code(code: str) -> str:
    """A code of the same shape that is certainly not ``code``."""
    return f"{(int(code) + 1) % 10 ** len(code):0{len(code)}d}"


@pytest.fixture(scope="module")
def other_app(server: RunningServer) -> dict[str, str]:
    """A second app on the same server, to prove tokens and codes do not cross apps."""
    return server.create_app("Other App")


@pytest.fixture
def codes(server: RunningServer, app: dict[str, str]) -> Iterator[httpx.Client]:
    """A client of ``app`` carrying a fresh app token, as the SMS and captcha calls need."""
    token = request_app_token(server, app)
    with server.client(app["appid"], **{"X-Gizwits-Application-Token": token}) as client:
        yield client


def send_code(client: httpx.Client, data_dir: Path, phone: str) -> str:
    """Ask for a code with ``POST /app/sms_code`` and read it from the outbox."""
    before = len(sent_sms(data_dir, phone))
    response = client.post("/app/sms_code", json={"phone": phone})
    assert response.status_code == 200, response.text
    assert response.json() == {}
    messages = sent_sms(data_dir, phone)
    assert len(messages) == before + 1
    return messages[-1]["code"]


def verify(client: httpx.Client, phone: str, code: str) -> httpx.Response:
    return client.put("/app/verify/codes", json={"phone": phone, "sms_code": code})


def at_once(count: int, call: Callable[[int], httpx.Response]) -> list[httpx.Response]:
    """Run ``call(i)`` for ``count`` clients released together, as a burst from many phones."""
    barrier = threading.Barrier(count)

    def run(index: int) -> httpx.Response:
        barrier.wait(30)
        return call(index)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


def token_client(client: httpx.Client) -> httpx.Client:
    """A separate connection with the same app headers."""
    return httpx.Client(base_url=client.base_url, headers=client.headers, timeout=60)


def sign_up_user(server: RunningServer, appid: str) -> tuple[str, str]:
    """A username user; returns (username, token)."""
    name = unique("codes")
    with server.client(appid) as client:
        created = client.post("/app/users", json={"username": name, "password": "secret-1"})
    assert created.status_code == 201, created.text
    return name, str(created.json()["token"])


# -- request_token ----------------------------------------------------------------------------


def test_request_token_with_the_app_signature(server: RunningServer, app: dict[str, str]) -> None:
    sig = signature(app["appid"], app["appsecret"])
    with server.client(app["appid"]) as client:
        issued = []
        for given in (sig, sig.upper()):
            response = client.post(
                "/app/request_token", headers={"X-Gizwits-Application-Auth": given}
            )
            assert response.status_code == 200, response.text
            body = response.json()
            assert set(body) == {"token", "expired_at"}
            assert isinstance(body["token"], str)
            assert body["token"]
            assert isinstance(body["expired_at"], int)
            issued.append(body)
        assert issued[0]["token"] != issued[1]["token"]
        # Both tokens open the SMS calls.
        for body in issued:
            captcha = client.get(
                "/app/verify/codes", headers={"X-Gizwits-Application-Token": body["token"]}
            )
            assert captcha.status_code == 200, captcha.text


def test_request_token_expiry_is_in_the_future(server: RunningServer, app: dict[str, str]) -> None:
    with server.client(app["appid"]) as client:
        response = client.post(
            "/app/request_token",
            headers={"X-Gizwits-Application-Auth": signature(app["appid"], app["appsecret"])},
        )
    assert response.status_code == 200
    expired_at = response.json()["expired_at"]
    now = time.time()
    assert now + 600 < expired_at < now + 2 * 86400


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Gizwits-Application-Auth": ""},
        {"X-Gizwits-Application-Auth": "0" * 32},
        {"X-Gizwits-Application-Auth": "not-a-signature"},
    ],
    ids=["missing", "empty", "wrong", "garbage"],
)
def test_request_token_refuses_a_wrong_signature(
    server: RunningServer, app: dict[str, str], headers: dict[str, str]
) -> None:
    with server.client(app["appid"]) as client:
        body = assert_error(client.post("/app/request_token", headers=headers), 9038)
    assert body["error_message"] == "X-Gizwits-Application-Auth invalid!"


def test_request_token_refuses_the_signature_of_another_app(
    server: RunningServer, app: dict[str, str], other_app: dict[str, str]
) -> None:
    with server.client(app["appid"]) as client:
        for sig in (
            signature(other_app["appid"], other_app["appsecret"]),
            signature(app["appid"], other_app["appsecret"]),
            signature(other_app["appid"], app["appsecret"]),
        ):
            response = client.post(
                "/app/request_token", headers={"X-Gizwits-Application-Auth": sig}
            )
            assert_error(response, 9038)


def test_rotated_secret_replaces_the_old_signature(server: RunningServer) -> None:
    app = server.create_app("Rotating")
    old = signature(app["appid"], app["appsecret"])
    with server.client(app["appid"]) as client:
        before = client.post("/app/request_token", headers={"X-Gizwits-Application-Auth": old})
        assert before.status_code == 200, before.text

        out = server.cli("app", "rotate-secret", app["appid"], "--json").stdout
        rotated = json.loads(out)
        assert rotated["appid"] == app["appid"]
        assert rotated["appsecret"] != app["appsecret"]

        stale = client.post("/app/request_token", headers={"X-Gizwits-Application-Auth": old})
        assert_error(stale, 9038)
        new = signature(app["appid"], rotated["appsecret"])
        fresh = client.post("/app/request_token", headers={"X-Gizwits-Application-Auth": new})
        assert fresh.status_code == 200, fresh.text
        token = fresh.json()["token"]
        captcha = client.get("/app/verify/codes", headers={"X-Gizwits-Application-Token": token})
        assert captcha.status_code == 200, captcha.text


# -- app-token protection ---------------------------------------------------------------------

PROTECTED = [
    ("GET", "/app/verify/codes", None),
    ("POST", "/app/verify/codes", {"captcha_id": "x", "captcha_code": DEV_CAPTCHA, "phone": "1"}),
    ("PUT", "/app/verify/codes", {"phone": "13800000000", "sms_code": "123456"}),
    ("POST", "/app/sms_code", {"phone": "13800000000"}),
]


@pytest.mark.parametrize(
    ("method", "path", "body"), PROTECTED, ids=[f"{m} {p}" for m, p, _ in PROTECTED]
)
def test_sms_calls_need_a_token_of_this_app(
    server: RunningServer,
    app: dict[str, str],
    other_app: dict[str, str],
    method: str,
    path: str,
    body: dict[str, str] | None,
) -> None:
    phone = unique_phone()
    if body is not None and "phone" in body:
        body = {**body, "phone": phone}
    other_token = request_app_token(server, other_app)
    with server.client(app["appid"]) as client:
        created = client.post("/app/users", json={"username": unique(), "password": "secret-1"})
        assert created.status_code == 201
        user_token = created.json()["token"]
        for token in (None, "", "garbage-token", "0" * 64, other_token, user_token):
            headers = {} if token is None else {"X-Gizwits-Application-Token": token}
            response = client.request(method, path, json=body, headers=headers)
            assert_error(response, 9004)
    assert sent_sms(server.data_dir, phone) == []


# -- captchas ---------------------------------------------------------------------------------


def new_captcha(client: httpx.Client) -> dict[str, str]:
    response = client.get("/app/verify/codes")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"captcha_url", "captcha_id"}
    return dict(body)


def test_captcha_image_is_a_png_anyone_can_fetch(
    server: RunningServer, codes: httpx.Client
) -> None:
    captcha = new_captcha(codes)
    assert captcha["captcha_id"]
    assert captcha["captcha_url"].startswith(server.base_url + "/")
    image = httpx.get(captcha["captcha_url"], timeout=30)  # an <img> tag sends no headers
    assert image.status_code == 200
    assert image.headers["content-type"].split(";")[0] == "image/png"
    assert image.content.startswith(PNG_SIGNATURE)
    assert len(image.content) > 200
    other = new_captcha(codes)
    assert other["captcha_id"] != captcha["captcha_id"]


def test_used_captcha_image_is_no_longer_served(codes: httpx.Client) -> None:
    captcha = new_captcha(codes)
    form = {"captcha_id": captcha["captcha_id"], "captcha_code": DEV_CAPTCHA}
    assert (
        codes.post("/app/verify/codes", json={**form, "phone": unique_phone()}).status_code == 201
    )
    image = httpx.get(captcha["captcha_url"], timeout=30)
    assert image.status_code >= 400
    assert not image.content.startswith(PNG_SIGNATURE)


def test_captcha_answer_sends_a_register_code(server: RunningServer, codes: httpx.Client) -> None:
    phone = unique_phone()
    captcha = new_captcha(codes)
    response = codes.post(
        "/app/verify/codes",
        json={"captcha_id": captcha["captcha_id"], "captcha_code": DEV_CAPTCHA, "phone": phone},
    )
    assert response.status_code == 201, response.text
    messages = sent_sms(server.data_dir, phone)
    assert len(messages) == 1
    message = messages[0]
    assert set(message) == {"phone", "code", "purpose", "sent_at"}
    assert re.fullmatch(r"\d{6}", message["code"])
    assert message["purpose"] == "register"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)", message["sent_at"])
    # The code arrived and works.
    assert verify(codes, phone, message["code"]).status_code == 200


def test_captcha_answer_is_case_insensitive(server: RunningServer, codes: httpx.Client) -> None:
    phone = unique_phone()
    captcha = new_captcha(codes)
    response = codes.post(
        "/app/verify/codes",
        json={
            "captcha_id": captcha["captcha_id"],
            "captcha_code": DEV_CAPTCHA.lower(),
            "phone": phone,
        },
    )
    assert response.status_code == 201, response.text
    assert len(sent_sms(server.data_dir, phone)) == 1


def test_wrong_captcha_sends_nothing_and_burns_the_captcha(
    server: RunningServer, codes: httpx.Client
) -> None:
    phone = unique_phone()
    captcha = new_captcha(codes)
    wrong = codes.post(
        "/app/verify/codes",
        json={"captcha_id": captcha["captcha_id"], "captcha_code": "WRNG", "phone": phone},
    )
    assert_error(wrong, 9010)
    assert sent_sms(server.data_dir, phone) == []
    # One guess per captcha: the right answer no longer helps.
    retry = codes.post(
        "/app/verify/codes",
        json={"captcha_id": captcha["captcha_id"], "captcha_code": DEV_CAPTCHA, "phone": phone},
    )
    assert_error(retry, 9010)
    assert sent_sms(server.data_dir, phone) == []


def test_unknown_captcha_id_sends_nothing(server: RunningServer, codes: httpx.Client) -> None:
    phone = unique_phone()
    response = codes.post(
        "/app/verify/codes",
        json={"captcha_id": "no-such-captcha", "captcha_code": DEV_CAPTCHA, "phone": phone},
    )
    assert_error(response, 9010)
    assert sent_sms(server.data_dir, phone) == []


def test_a_captcha_is_used_once(server: RunningServer, codes: httpx.Client) -> None:
    phone = unique_phone()
    captcha = new_captcha(codes)
    form = {"captcha_id": captcha["captcha_id"], "captcha_code": DEV_CAPTCHA, "phone": phone}
    assert codes.post("/app/verify/codes", json=form).status_code == 201
    assert_error(codes.post("/app/verify/codes", json=form), 9010)
    assert len(sent_sms(server.data_dir, phone)) == 1


@pytest.mark.parametrize("phone", ["abc", "123", "1380013800a", "+", "1" * 30, ""])
def test_captcha_send_names_a_bad_phone(codes: httpx.Client, phone: str) -> None:
    captcha = new_captcha(codes)
    response = codes.post(
        "/app/verify/codes",
        json={"captcha_id": captcha["captcha_id"], "captcha_code": DEV_CAPTCHA, "phone": phone},
    )
    body = assert_error(response, 9015)
    assert "phone" in (body["detail_message"] or "")
    # A form error does not burn the captcha: it still sends a code to a good phone.
    good = unique_phone()
    retry = codes.post(
        "/app/verify/codes",
        json={"captcha_id": captcha["captcha_id"], "captcha_code": DEV_CAPTCHA, "phone": good},
    )
    assert retry.status_code == 201, retry.text


def test_captcha_send_needs_every_field(codes: httpx.Client) -> None:
    captcha = new_captcha(codes)
    response = codes.post("/app/verify/codes", json={"captcha_id": captcha["captcha_id"]})
    body = assert_error(response, 9015)
    assert "captcha_code" in (body["detail_message"] or "")


# -- verifying codes --------------------------------------------------------------------------


def test_verify_code_once(server: RunningServer, codes: httpx.Client) -> None:
    phone = unique_phone()
    code = send_code(codes, server.data_dir, phone)
    first = verify(codes, phone, code)
    assert first.status_code == 200, first.text
    assert first.json() == {}
    assert_error(verify(codes, phone, code), 9010)


def test_wrong_code_is_refused_but_the_right_one_still_works(
    server: RunningServer, codes: httpx.Client
) -> None:
    phone = unique_phone()
    code = send_code(codes, server.data_dir, phone)
    assert_error(verify(codes, phone, other_code(code)), 9010)
    assert verify(codes, phone, code).status_code == 200


def test_code_is_bound_to_its_phone(server: RunningServer, codes: httpx.Client) -> None:
    phone = unique_phone()
    code = send_code(codes, server.data_dir, phone)
    assert_error(verify(codes, unique_phone(), code), 9010)
    assert verify(codes, phone, code).status_code == 200


def test_code_is_bound_to_its_app(
    server: RunningServer, codes: httpx.Client, other_app: dict[str, str]
) -> None:
    phone = unique_phone()
    code = send_code(codes, server.data_dir, phone)
    token = request_app_token(server, other_app)
    with server.client(other_app["appid"], **{"X-Gizwits-Application-Token": token}) as client:
        assert_error(verify(client, phone, code), 9010)
    assert verify(codes, phone, code).status_code == 200


def test_five_wrong_guesses_lock_the_code(server: RunningServer, codes: httpx.Client) -> None:
    phone = unique_phone()
    code = send_code(codes, server.data_dir, phone)
    wrong = other_code(code)
    for _ in range(5):
        assert_error(verify(codes, phone, wrong), 9010)
    assert_error(verify(codes, phone, code), 9010)
    # A new code starts over.
    fresh = send_code(codes, server.data_dir, phone)
    assert verify(codes, phone, fresh).status_code == 200


def test_four_wrong_guesses_leave_the_code_usable(
    server: RunningServer, codes: httpx.Client
) -> None:
    phone = unique_phone()
    code = send_code(codes, server.data_dir, phone)
    for _ in range(4):
        assert_error(verify(codes, phone, other_code(code)), 9010)
    assert verify(codes, phone, code).status_code == 200


def test_a_new_code_replaces_the_previous_one(server: RunningServer, codes: httpx.Client) -> None:
    phone = unique_phone()
    first = send_code(codes, server.data_dir, phone)
    second = send_code(codes, server.data_dir, phone)
    if first == second:  # one chance in a million; the test would prove nothing
        pytest.skip("the two random codes happened to be equal")
    assert_error(verify(codes, phone, first), 9010)
    assert verify(codes, phone, second).status_code == 200


def test_verify_without_any_code_sent(codes: httpx.Client) -> None:
    assert_error(verify(codes, unique_phone(), "123456"), 9010)


def test_verify_form_errors(codes: httpx.Client) -> None:
    body = assert_error(codes.put("/app/verify/codes", json={"phone": unique_phone()}), 9015)
    assert "sms_code" in (body["detail_message"] or "")
    body = assert_error(verify(codes, "not-a-phone", "123456"), 9015)
    assert "phone" in (body["detail_message"] or "")


# -- POST /app/sms_code -----------------------------------------------------------------------


def test_sms_code_sends_and_verifies(server: RunningServer, codes: httpx.Client) -> None:
    phone = unique_phone()
    sent = codes.post("/app/sms_code", json={"phone": phone})
    assert sent.status_code == 200, sent.text
    messages = sent_sms(server.data_dir, phone)
    assert len(messages) == 1
    assert messages[0]["purpose"] == "register"
    code = messages[0]["code"]
    assert re.fullmatch(r"\d{6}", code)

    assert_error(codes.post("/app/sms_code", json={"phone": phone, "code": other_code(code)}), 9010)
    checked = codes.post("/app/sms_code", json={"phone": phone, "code": code})
    assert checked.status_code == 200, checked.text
    assert checked.json() == {}
    # Consumed: neither call accepts it again.
    assert_error(codes.post("/app/sms_code", json={"phone": phone, "code": code}), 9010)
    assert_error(verify(codes, phone, code), 9010)
    # Verifying sends nothing.
    assert len(sent_sms(server.data_dir, phone)) == 1


def test_sms_code_names_a_bad_phone(server: RunningServer, codes: httpx.Client) -> None:
    body = assert_error(codes.post("/app/sms_code", json={"phone": "call-me"}), 9015)
    assert "phone" in (body["detail_message"] or "")
    body = assert_error(codes.post("/app/sms_code", json={}), 9015)
    assert "phone" in (body["detail_message"] or "")


def test_hourly_cap_per_phone(server: RunningServer, codes: httpx.Client) -> None:
    phone = unique_phone()
    for _ in range(5):
        assert codes.post("/app/sms_code", json={"phone": phone}).status_code == 200
    sixth = codes.post("/app/sms_code", json={"phone": phone})
    body = assert_error(sixth, 9041, status=429)
    assert body["error_message"] == "request was throttled"
    assert int(sixth.headers["Retry-After"]) > 0
    assert len(sent_sms(server.data_dir, phone)) == 5
    # The captcha path is capped too, and the captcha does not get the code through.
    captcha = new_captcha(codes)
    via_captcha = codes.post(
        "/app/verify/codes",
        json={"captcha_id": captcha["captcha_id"], "captcha_code": DEV_CAPTCHA, "phone": phone},
    )
    assert_error(via_captcha, 9041, status=429)
    assert "Retry-After" in via_captcha.headers
    assert len(sent_sms(server.data_dir, phone)) == 5
    # The last code that did go out still works.
    last = sent_sms(server.data_dir, phone)[-1]["code"]
    assert verify(codes, phone, last).status_code == 200
    # Another phone is not affected.
    other = unique_phone()
    assert codes.post("/app/sms_code", json={"phone": other}).status_code == 200
    assert len(sent_sms(server.data_dir, other)) == 1


def test_concurrent_verifications_accept_a_code_once(
    server: RunningServer, codes: httpx.Client
) -> None:
    """A burst of requests carrying the right code: one of them may spend it, the rest 9010."""
    for _ in range(3):
        phone = unique_phone()
        code = send_code(codes, server.data_dir, phone)

        def spend(_: int, phone: str = phone, code: str = code) -> httpx.Response:
            with token_client(codes) as client:
                return verify(client, phone, code)

        answers = at_once(10, spend)
        accepted = [answer for answer in answers if answer.status_code == 200]
        assert len(accepted) == 1, f"{len(accepted)} of 10 requests spent the same code"
        for answer in answers:
            if answer.status_code != 200:
                assert_error(answer, 9010)


def test_concurrent_wrong_guesses_are_all_counted(
    server: RunningServer, codes: httpx.Client
) -> None:
    """A burst of wrong guesses gets no more than the five checks a code allows."""
    phone = unique_phone()
    code = send_code(codes, server.data_dir, phone)
    wrong = other_code(code)

    def guess(_: int) -> httpx.Response:
        with token_client(codes) as client:
            return verify(client, phone, wrong)

    answers = at_once(20, guess)
    details = [assert_error(answer, 9010)["detail_message"] or "" for answer in answers]
    checked = [detail for detail in details if "too many" not in detail]
    assert len(checked) <= 5, f"{len(checked)} guesses were checked against the code"
    assert_error(verify(codes, phone, code), 9010)


def test_concurrent_sends_respect_the_hourly_cap(
    server: RunningServer, codes: httpx.Client
) -> None:
    """A burst of send requests for one phone delivers at most five codes."""
    phone = unique_phone()

    def send(_: int) -> httpx.Response:
        with token_client(codes) as client:
            return client.post("/app/sms_code", json={"phone": phone})

    answers = at_once(12, send)
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [200] * 5 + [429] * 7, f"{statuses.count(200)} codes sent in one burst"
    assert len(sent_sms(server.data_dir, phone)) == 5


# -- spending codes: sign-up and profile changes ----------------------------------------------


def test_sign_up_with_phone_code_and_password(server: RunningServer, codes: httpx.Client) -> None:
    phone = unique_phone()
    code = send_code(codes, server.data_dir, phone)
    with server.client(codes.headers["X-Gizwits-Application-Id"]) as client:
        created = client.post(
            "/app/users", json={"phone": phone, "code": code, "password": "pw-123456"}
        )
        assert created.status_code == 201, created.text
        body = created.json()
        assert set(body) == {"uid", "token", "expire_at"}
        profile = client.get("/app/users", headers={"X-Gizwits-User-token": body["token"]})
        assert profile.status_code == 200
        assert profile.json()["phone"] == phone
        assert profile.json()["is_anonymous"] is False

        login = client.post("/app/login", json={"username": phone, "password": "pw-123456"})
        assert login.status_code == 200, login.text
        assert login.json()["uid"] == body["uid"]
        assert_error(
            client.post("/app/login", json={"username": phone, "password": "nope-123"}), 9020
        )

        # The code is spent.
        again = client.post(
            "/app/users", json={"phone": phone, "code": code, "password": "x-123456"}
        )
        assert_error(again, 9018)
    assert_error(verify(codes, phone, code), 9010)


def test_sign_up_with_phone_and_code_only(server: RunningServer, codes: httpx.Client) -> None:
    phone = unique_phone()
    code = send_code(codes, server.data_dir, phone)
    with server.client(codes.headers["X-Gizwits-Application-Id"]) as client:
        created = client.post("/app/users", json={"phone": phone, "code": code})
        assert created.status_code == 201, created.text
        token = created.json()["token"]
        profile = client.get("/app/users", headers={"X-Gizwits-User-token": token})
        assert profile.status_code == 200
        assert profile.json()["phone"] == phone
        assert profile.json()["uid"] == created.json()["uid"]
        # No password was set, so no password opens the account.
        assert_error(client.post("/app/login", json={"username": phone, "password": ""}), 9020)
        assert_error(
            client.post("/app/login", json={"username": phone, "password": "anything"}), 9020
        )


def test_consumed_code_cannot_sign_up_again(server: RunningServer, codes: httpx.Client) -> None:
    phone = unique_phone()
    code = send_code(codes, server.data_dir, phone)
    assert verify(codes, phone, code).status_code == 200
    with server.client(codes.headers["X-Gizwits-Application-Id"]) as client:
        response = client.post(
            "/app/users", json={"phone": phone, "code": code, "password": "pw-123456"}
        )
        assert_error(response, 9010)
        assert_error(
            client.post("/app/login", json={"username": phone, "password": "pw-123456"}), 9020
        )


def test_wrong_code_creates_no_user(server: RunningServer, codes: httpx.Client) -> None:
    phone = unique_phone()
    code = send_code(codes, server.data_dir, phone)
    with server.client(codes.headers["X-Gizwits-Application-Id"]) as client:
        wrong = client.post(
            "/app/users", json={"phone": phone, "code": other_code(code), "password": "pw-123456"}
        )
        assert_error(wrong, 9010)
        # No user behind the phone.
        assert_error(
            client.post("/app/login", json={"username": phone, "password": "pw-123456"}), 9020
        )
        # The wrong guess did not burn the right code, and the phone is still free.
        right = client.post(
            "/app/users", json={"phone": phone, "code": code, "password": "pw-123456"}
        )
        assert right.status_code == 201, right.text
        # And a fresh code for another phone after a wrong guess works too.
        other = unique_phone()
        first = send_code(codes, server.data_dir, other)
        assert_error(
            client.post("/app/users", json={"phone": other, "code": other_code(first)}), 9010
        )
        fresh = send_code(codes, server.data_dir, other)
        created = client.post("/app/users", json={"phone": other, "code": fresh})
        assert created.status_code == 201, created.text


def test_sign_up_with_a_short_password_keeps_the_code(
    server: RunningServer, codes: httpx.Client
) -> None:
    phone = unique_phone()
    code = send_code(codes, server.data_dir, phone)
    with server.client(codes.headers["X-Gizwits-Application-Id"]) as client:
        short = client.post("/app/users", json={"phone": phone, "code": code, "password": "123"})
        body = assert_error(short, 9015)
        assert "password" in (body["detail_message"] or "")
        created = client.post(
            "/app/users", json={"phone": phone, "code": code, "password": "pw-123456"}
        )
        assert created.status_code == 201, created.text


def test_registered_phone_is_refused_without_burning_the_code(
    server: RunningServer, codes: httpx.Client
) -> None:
    phone = unique_phone()
    appid = codes.headers["X-Gizwits-Application-Id"]
    first = send_code(codes, server.data_dir, phone)
    with server.client(appid) as client:
        created = client.post(
            "/app/users", json={"phone": phone, "code": first, "password": "pw-123456"}
        )
        assert created.status_code == 201, created.text
        code = send_code(codes, server.data_dir, phone)
        taken = client.post(
            "/app/users", json={"phone": phone, "code": code, "password": "pw-654321"}
        )
        assert_error(taken, 9018)
        # The account is untouched.
        login = client.post("/app/login", json={"username": phone, "password": "pw-123456"})
        assert login.status_code == 200
        assert login.json()["uid"] == created.json()["uid"]
    # The code was not spent by the refused sign-up.
    assert verify(codes, phone, code).status_code == 200


def test_anonymous_user_sets_phone_and_password(server: RunningServer, codes: httpx.Client) -> None:
    phone = unique_phone()
    appid = codes.headers["X-Gizwits-Application-Id"]
    with server.client(appid) as client:
        anon = client.post("/app/users", json={"phone_id": unique("device-")})
        assert anon.status_code == 201, anon.text
        token = anon.json()["token"]
        user = {"X-Gizwits-User-token": token}
        assert client.get("/app/users", headers=user).json()["is_anonymous"] is True

        code = send_code(codes, server.data_dir, phone)
        wrong = client.put(
            "/app/users",
            json={"phone": phone, "password": "pw-123456", "code": other_code(code)},
            headers=user,
        )
        assert_error(wrong, 9010)
        profile = client.get("/app/users", headers=user).json()
        assert profile["is_anonymous"] is True
        assert profile["phone"] is None

        updated = client.put(
            "/app/users", json={"phone": phone, "password": "pw-123456", "code": code}, headers=user
        )
        assert updated.status_code == 200, updated.text
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT.+", updated.json()["updatedAt"])
        profile = client.get("/app/users", headers=user).json()
        assert profile["is_anonymous"] is False
        assert profile["phone"] == phone
        assert profile["uid"] == anon.json()["uid"]

        login = client.post("/app/login", json={"username": phone, "password": "pw-123456"})
        assert login.status_code == 200, login.text
        assert login.json()["uid"] == anon.json()["uid"]
    assert_error(verify(codes, phone, code), 9010)


def test_anonymous_user_cannot_take_a_registered_phone(
    server: RunningServer, codes: httpx.Client
) -> None:
    phone = unique_phone()
    appid = codes.headers["X-Gizwits-Application-Id"]
    with server.client(appid) as client:
        first = send_code(codes, server.data_dir, phone)
        owner = client.post(
            "/app/users", json={"phone": phone, "code": first, "password": "pw-123456"}
        )
        assert owner.status_code == 201
        anon = client.post("/app/users", json={"phone_id": unique("device-")})
        user = {"X-Gizwits-User-token": anon.json()["token"]}
        code = send_code(codes, server.data_dir, phone)
        taken = client.put(
            "/app/users", json={"phone": phone, "password": "pw-999999", "code": code}, headers=user
        )
        assert_error(taken, 9018)
        assert client.get("/app/users", headers=user).json()["is_anonymous"] is True
        login = client.post("/app/login", json={"username": phone, "password": "pw-123456"})
        assert login.json()["uid"] == owner.json()["uid"]


def test_user_changes_phone_with_a_code(server: RunningServer, codes: httpx.Client) -> None:
    appid = codes.headers["X-Gizwits-Application-Id"]
    name, token = sign_up_user(server, appid)
    user = {"X-Gizwits-User-token": token}
    old_phone, new_phone = unique_phone(), unique_phone()
    with server.client(appid) as client:
        code = send_code(codes, server.data_dir, old_phone)
        set_first = client.put("/app/users", json={"phone": old_phone, "code": code}, headers=user)
        assert set_first.status_code == 200, set_first.text
        assert client.get("/app/users", headers=user).json()["phone"] == old_phone

        code = send_code(codes, server.data_dir, new_phone)
        wrong = client.put(
            "/app/users", json={"phone": new_phone, "code": other_code(code)}, headers=user
        )
        assert_error(wrong, 9010)
        assert client.get("/app/users", headers=user).json()["phone"] == old_phone

        changed = client.put("/app/users", json={"phone": new_phone, "code": code}, headers=user)
        assert changed.status_code == 200, changed.text
        profile = client.get("/app/users", headers=user).json()
        assert profile["phone"] == new_phone
        assert profile["username"] == name
        assert profile["is_anonymous"] is False

        login = client.post("/app/login", json={"username": new_phone, "password": "secret-1"})
        assert login.status_code == 200, login.text
        assert_error(
            client.post("/app/login", json={"username": old_phone, "password": "secret-1"}), 9020
        )
    assert_error(verify(codes, new_phone, code), 9010)


def test_phone_with_password_is_only_for_anonymous_users(
    server: RunningServer, codes: httpx.Client
) -> None:
    appid = codes.headers["X-Gizwits-Application-Id"]
    _, token = sign_up_user(server, appid)
    phone = unique_phone()
    code = send_code(codes, server.data_dir, phone)
    with server.client(appid) as client:
        response = client.put(
            "/app/users",
            json={"phone": phone, "password": "pw-123456", "code": code},
            headers={"X-Gizwits-User-token": token},
        )
        assert_error(response, 9026)
        assert (
            client.get("/app/users", headers={"X-Gizwits-User-token": token}).json()["phone"]
            is None
        )


# -- the webhook SMS provider -----------------------------------------------------------------


class FakeSmsGateway:
    """An operator's SMS endpoint: records every POSTed JSON body; answers ``status``."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.content_types: list[str] = []
        self.status = 200
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                gateway.content_types.append(self.headers.get("Content-Type", ""))
                gateway.received.append(json.loads(self.rfile.read(length)))
                payload = b'{"ok": true}' if gateway.status < 400 else b'{"error": "down"}'
                self.send_response(gateway.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/sms"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)

    def sent_to(self, phone: str) -> list[dict[str, Any]]:
        return [message for message in self.received if message.get("phone") == phone]


@pytest.fixture(scope="module")
def gateway() -> Iterator[FakeSmsGateway]:
    fake = FakeSmsGateway()
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture(scope="module")
def webhook_server(
    gateway: FakeSmsGateway, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """A server whose SMS go to the fake gateway.

    SQLite only: the provider choice does not touch the database, and both backends are
    covered by the shared-server tests above.
    """
    with serving(
        tmp_path_factory.mktemp("iotcloud-sms-webhook"),
        None,
        sms_webhook_url=gateway.url,
        rate_limit_per_address=0,
        rate_limit_per_app=0,
    ) as running:
        yield running


@pytest.fixture
def webhook_codes(webhook_server: RunningServer, gateway: FakeSmsGateway) -> Iterator[httpx.Client]:
    gateway.status = 200
    app = webhook_server.create_app("Webhook App")
    token = request_app_token(webhook_server, app)
    with webhook_server.client(app["appid"], **{"X-Gizwits-Application-Token": token}) as client:
        yield client
    gateway.status = 200


def test_webhook_receives_the_code(
    webhook_server: RunningServer, gateway: FakeSmsGateway, webhook_codes: httpx.Client
) -> None:
    """The webhook provider: the code reaches the operator's endpoint, not the outbox."""
    phone = unique_phone()
    sent = webhook_codes.post("/app/sms_code", json={"phone": phone})
    assert sent.status_code == 200, sent.text
    messages = gateway.sent_to(phone)
    assert len(messages) == 1
    message = messages[0]
    assert set(message) == {"phone", "code", "purpose", "sent_at"}
    assert message["phone"] == phone
    assert re.fullmatch(r"\d{6}", message["code"])
    assert message["purpose"] == "register"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)", message["sent_at"])
    assert gateway.content_types[-1].startswith("application/json")
    assert not (webhook_server.data_dir / "outbox" / "sms.jsonl").exists()
    # The delivered code is the stored one.
    assert verify(webhook_codes, phone, message["code"]).status_code == 200

    # The captcha path uses the same provider.
    other = unique_phone()
    captcha = new_captcha(webhook_codes)
    response = webhook_codes.post(
        "/app/verify/codes",
        json={"captcha_id": captcha["captcha_id"], "captcha_code": DEV_CAPTCHA, "phone": other},
    )
    assert response.status_code == 201, response.text
    assert len(gateway.sent_to(other)) == 1


def test_failing_webhook_stores_no_code(
    gateway: FakeSmsGateway, webhook_codes: httpx.Client
) -> None:
    phone = unique_phone()
    assert webhook_codes.post("/app/sms_code", json={"phone": phone}).status_code == 200
    delivered = gateway.sent_to(phone)[-1]["code"]

    gateway.status = 500
    failed = webhook_codes.post("/app/sms_code", json={"phone": phone})
    body = assert_error(failed, 9037)
    assert body["error_message"] == "send sms failed!"
    attempts = gateway.sent_to(phone)
    assert len(attempts) == 2  # the gateway was asked, and refused
    lost = attempts[-1]["code"]
    gateway.status = 200

    if lost != delivered:
        # The refused code was never stored ...
        assert_error(verify(webhook_codes, phone, lost), 9010)
    # ... and did not replace the code that did reach the phone.
    assert verify(webhook_codes, phone, delivered).status_code == 200


def test_failing_webhook_does_not_count_against_the_hourly_cap(
    gateway: FakeSmsGateway, webhook_codes: httpx.Client
) -> None:
    phone = unique_phone()
    gateway.status = 503
    for _ in range(6):
        assert_error(webhook_codes.post("/app/sms_code", json={"phone": phone}), 9037)
    gateway.status = 200
    for _ in range(5):
        assert webhook_codes.post("/app/sms_code", json={"phone": phone}).status_code == 200
    assert_error(webhook_codes.post("/app/sms_code", json={"phone": phone}), 9041, status=429)
    assert len(gateway.sent_to(phone)) == 11


def test_failing_webhook_on_captcha_path(
    gateway: FakeSmsGateway, webhook_codes: httpx.Client
) -> None:
    phone = unique_phone()
    captcha = new_captcha(webhook_codes)
    gateway.status = 500
    response = webhook_codes.post(
        "/app/verify/codes",
        json={"captcha_id": captcha["captcha_id"], "captcha_code": DEV_CAPTCHA, "phone": phone},
    )
    assert_error(response, 9037)
    gateway.status = 200
    lost = gateway.sent_to(phone)[-1]["code"]
    assert_error(verify(webhook_codes, phone, lost), 9010)
