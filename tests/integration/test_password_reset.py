"""Password reset, the two ways the Gizwits Open API offers it.

* ``POST /app/reset_password {phone, code, new_pwd}``: the code comes from ``POST /app/sms_code``.
* ``POST /app/reset_password {email}``: a one-time link is mailed; the browser opens the small
  HTML page behind it and posts the new password.

Mail goes to the default outbox (``<data dir>/outbox/mail/*.eml``) on the shared servers, and to
a real SMTP server (``aiosmtpd`` in this process) on a dedicated one at the end.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller

from tests.conftest import unique, unique_phone
from tests.pg import free_port
from tests.server import RunningServer, serving

RESET_LINK = re.compile(r"http://127\.0\.0\.1:(\d+)/account/reset/([A-Za-z0-9_\-]+)")


# -- helpers ----------------------------------------------------------------------------------


def assert_error(response: httpx.Response, code: int, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error_code", "error_message", "detail_message"}, body
    assert body["error_code"] == code, body
    return dict(body)


def login(client: httpx.Client, identity: str, password: str) -> httpx.Response:
    return client.post("/app/login", json={"username": identity, "password": password})


def profile(client: httpx.Client, token: str) -> httpx.Response:
    return client.get("/app/users", headers={"X-Gizwits-User-token": token})


def app_token_client(server: RunningServer, app: dict[str, str]) -> httpx.Client:
    sig = hashlib.md5((app["appid"] + app["appsecret"]).encode(), usedforsecurity=False).hexdigest()
    with server.client(app["appid"]) as client:
        response = client.post("/app/request_token", headers={"X-Gizwits-Application-Auth": sig})
    assert response.status_code == 200, response.text
    return server.client(app["appid"], **{"X-Gizwits-Application-Token": response.json()["token"]})


def last_sms_code(data_dir: Path, phone: str) -> str:
    path = data_dir / "outbox" / "sms.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return str([m for m in lines if m["phone"] == phone][-1]["code"])


def send_code(server: RunningServer, app: dict[str, str], phone: str) -> str:
    with app_token_client(server, app) as codes:
        response = codes.post("/app/sms_code", json={"phone": phone})
    assert response.status_code == 200, response.text
    return last_sms_code(server.data_dir, phone)


def other_code(code: str) -> str:
    return f"{(int(code) + 1) % 10 ** len(code):0{len(code)}d}"


def parse_mail(data: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(data)
    assert isinstance(message, EmailMessage)
    return message


def outbox_mails(data_dir: Path, to: str) -> list[EmailMessage]:
    """Mails the outbox provider wrote to ``to``, oldest first."""
    directory = data_dir / "outbox" / "mail"
    if not directory.exists():
        return []
    mails = [parse_mail(path.read_bytes()) for path in sorted(directory.glob("*.eml"))]
    return [mail for mail in mails if mail["To"] == to]


def reset_mails(mails: list[EmailMessage]) -> list[EmailMessage]:
    return [mail for mail in mails if str(mail["Subject"]).startswith("Reset your")]


def link_in(server: RunningServer, mail: EmailMessage) -> str:
    """The reset link in a mail's plain-text part (checked against its HTML part)."""
    plain = mail.get_body(("plain",))
    assert plain is not None
    text = plain.get_content()
    match = RESET_LINK.search(text)
    assert match, text
    assert int(match.group(1)) == server.http_port
    link = match.group(0)
    html = mail.get_body(("html",))
    if html is not None:
        assert link in html.get_content()
    return link


def sign_up_with_email(
    client: httpx.Client, email: str, password: str = "old-pass-1"
) -> dict[str, Any]:
    created = client.post("/app/users", json={"email": email, "password": password})
    assert created.status_code == 201, created.text
    return dict(created.json())


def request_reset_link(server: RunningServer, client: httpx.Client, email: str) -> str:
    before = len(reset_mails(outbox_mails(server.data_dir, email)))
    response = client.post("/app/reset_password", json={"email": email})
    assert response.status_code == 200, response.text
    assert response.json() == {}
    mails = reset_mails(outbox_mails(server.data_dir, email))
    assert len(mails) == before + 1
    return link_in(server, mails[-1])


def at_once(count: int, call: Callable[[int], httpx.Response]) -> list[httpx.Response]:
    """Run ``call(i)`` for ``count`` clients released together."""
    barrier = threading.Barrier(count)

    def run(index: int) -> httpx.Response:
        barrier.wait(30)
        return call(index)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


def assert_invalid_link_page(response: httpx.Response) -> None:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert "Link not valid" in response.text
    assert "Traceback" not in response.text


@pytest.fixture
def client(server: RunningServer, app: dict[str, str]) -> Iterator[httpx.Client]:
    with server.client(app["appid"]) as c:
        yield c


# -- by phone ---------------------------------------------------------------------------------


def phone_user(server: RunningServer, app: dict[str, str], client: httpx.Client) -> str:
    phone = unique_phone()
    code = send_code(server, app, phone)
    created = client.post(
        "/app/users", json={"phone": phone, "code": code, "password": "old-pass-1"}
    )
    assert created.status_code == 201, created.text
    return phone


def test_reset_by_phone(server: RunningServer, app: dict[str, str], client: httpx.Client) -> None:
    phone = phone_user(server, app, client)
    first = login(client, phone, "old-pass-1")
    second = login(client, phone, "old-pass-1")
    assert first.status_code == second.status_code == 200
    tokens = [first.json()["token"], second.json()["token"]]
    for token in tokens:
        assert profile(client, token).status_code == 200

    code = send_code(server, app, phone)
    reset = client.post(
        "/app/reset_password", json={"phone": phone, "code": code, "new_pwd": "new-pass-2"}
    )
    assert reset.status_code == 200, reset.text
    assert reset.json() == {}

    assert_error(login(client, phone, "old-pass-1"), 9020)
    fresh = login(client, phone, "new-pass-2")
    assert fresh.status_code == 200, fresh.text
    assert fresh.json()["uid"] == first.json()["uid"]
    # Every session that existed before the reset ends; the new sign-in works.
    for token in tokens:
        assert_error(profile(client, token), 9004)
    assert profile(client, fresh.json()["token"]).status_code == 200

    # The code is single use.
    again = client.post(
        "/app/reset_password", json={"phone": phone, "code": code, "new_pwd": "third-pass-3"}
    )
    assert_error(again, 9010)
    assert login(client, phone, "new-pass-2").status_code == 200


def test_reset_by_phone_with_a_wrong_code(
    server: RunningServer, app: dict[str, str], client: httpx.Client
) -> None:
    phone = phone_user(server, app, client)
    token = login(client, phone, "old-pass-1").json()["token"]
    code = send_code(server, app, phone)
    wrong = client.post(
        "/app/reset_password",
        json={"phone": phone, "code": other_code(code), "new_pwd": "new-pass-2"},
    )
    assert_error(wrong, 9010)
    assert login(client, phone, "old-pass-1").status_code == 200
    assert_error(login(client, phone, "new-pass-2"), 9020)
    assert profile(client, token).status_code == 200  # nothing was revoked
    # The right code still works after one wrong guess.
    right = client.post(
        "/app/reset_password", json={"phone": phone, "code": code, "new_pwd": "new-pass-2"}
    )
    assert right.status_code == 200, right.text
    assert login(client, phone, "new-pass-2").status_code == 200


def test_reset_by_phone_with_a_superseded_code(
    server: RunningServer, app: dict[str, str], client: httpx.Client
) -> None:
    phone = phone_user(server, app, client)
    first = send_code(server, app, phone)
    second = send_code(server, app, phone)
    if first == second:
        pytest.skip("the two random codes happened to be equal")
    old = client.post(
        "/app/reset_password", json={"phone": phone, "code": first, "new_pwd": "new-pass-2"}
    )
    assert_error(old, 9010)
    assert login(client, phone, "old-pass-1").status_code == 200


def test_concurrent_resets_by_phone_spend_the_code_once(
    server: RunningServer, app: dict[str, str], client: httpx.Client
) -> None:
    """One code, a burst of resets with different passwords: exactly one may succeed."""
    phone = phone_user(server, app, client)
    code = send_code(server, app, phone)

    def reset(index: int) -> httpx.Response:
        with server.client(app["appid"]) as own:
            return own.post(
                "/app/reset_password",
                json={"phone": phone, "code": code, "new_pwd": f"burst-pass-{index}"},
            )

    answers = at_once(6, reset)
    winners = [index for index, answer in enumerate(answers) if answer.status_code == 200]
    assert len(winners) == 1, f"{len(winners)} of 6 resets spent the same code"
    for answer in answers:
        if answer.status_code != 200:
            assert_error(answer, 9010)
    # The password is the one the successful request set.
    assert login(client, phone, f"burst-pass-{winners[0]}").status_code == 200


def test_reset_by_phone_for_an_unknown_phone(
    server: RunningServer, app: dict[str, str], client: httpx.Client
) -> None:
    phone = unique_phone()
    code = send_code(server, app, phone)  # a code, but no account behind the phone
    response = client.post(
        "/app/reset_password", json={"phone": phone, "code": code, "new_pwd": "new-pass-2"}
    )
    assert_error(response, 9005)
    assert_error(login(client, phone, "new-pass-2"), 9020)


def test_reset_by_phone_with_a_short_password(
    server: RunningServer, app: dict[str, str], client: httpx.Client
) -> None:
    phone = phone_user(server, app, client)
    code = send_code(server, app, phone)
    short = client.post(
        "/app/reset_password", json={"phone": phone, "code": code, "new_pwd": "12345"}
    )
    body = assert_error(short, 9015)
    assert "new_pwd" in (body["detail_message"] or "")
    assert login(client, phone, "old-pass-1").status_code == 200
    assert_error(login(client, phone, "12345"), 9020)
    # The refused form did not burn the code.
    ok = client.post(
        "/app/reset_password", json={"phone": phone, "code": code, "new_pwd": "123456"}
    )
    assert ok.status_code == 200, ok.text
    assert login(client, phone, "123456").status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"phone": "not-a-phone", "code": "123456", "new_pwd": "new-pass-2"}, "phone"),
        ({"phone": "13800138000", "new_pwd": "new-pass-2"}, "code"),
        ({"phone": "13800138000", "code": "123456"}, "new_pwd"),
        ({}, "email"),
    ],
    ids=["bad-phone", "no-code", "no-new-pwd", "empty"],
)
def test_reset_password_form_errors(client: httpx.Client, body: dict[str, str], field: str) -> None:
    detail = assert_error(client.post("/app/reset_password", json=body), 9015)["detail_message"]
    assert field in (detail or "")


def test_reset_password_needs_an_app(server: RunningServer) -> None:
    with server.client() as anonymous:
        response = anonymous.post("/app/reset_password", json={"email": "x@example.com"})
    assert_error(response, 9003)


# -- by e-mail, outbox provider ---------------------------------------------------------------


def test_reset_by_email_link(
    server: RunningServer, app: dict[str, str], client: httpx.Client
) -> None:
    email = f"{unique('reset')}@example.com"
    created = sign_up_with_email(client, email)
    signed_in = login(client, email, "old-pass-1")
    assert signed_in.status_code == 200
    old_tokens = [created["token"], signed_in.json()["token"]]

    link = request_reset_link(server, client, email)
    mail = reset_mails(outbox_mails(server.data_dir, email))[-1]
    assert mail["To"] == email
    assert mail["Subject"] == "Reset your Integration password"
    # Asking for the link changes nothing yet.
    assert login(client, email, "old-pass-1").status_code == 200
    assert profile(client, old_tokens[0]).status_code == 200

    page = httpx.get(link, timeout=30)
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "no-store" in page.headers["cache-control"]
    assert email in page.text
    assert 'name="new_pwd"' in page.text or "name=new_pwd" in page.text
    assert 'name="confirm"' in page.text or "name=confirm" in page.text
    assert "<form" in page.text

    done = httpx.post(link, data={"new_pwd": "new-pass-2", "confirm": "new-pass-2"}, timeout=30)
    assert done.status_code == 200, done.text
    assert done.headers["content-type"].startswith("text/html")
    assert done.headers["referrer-policy"] == "no-referrer"
    assert "Password changed" in done.text

    new_login = login(client, email, "new-pass-2")
    assert new_login.status_code == 200, new_login.text
    assert new_login.json()["uid"] == created["uid"]
    assert_error(login(client, email, "old-pass-1"), 9020)
    for token in old_tokens:
        assert_error(profile(client, token), 9004)
    assert profile(client, new_login.json()["token"]).status_code == 200

    # One-time: the page and the form refuse the used link, and nothing changes.
    assert_invalid_link_page(httpx.get(link, timeout=30))
    assert_invalid_link_page(
        httpx.post(link, data={"new_pwd": "third-pass", "confirm": "third-pass"}, timeout=30)
    )
    assert login(client, email, "new-pass-2").status_code == 200
    assert_error(login(client, email, "third-pass"), 9020)


def test_concurrent_uses_of_a_reset_link_succeed_once(
    server: RunningServer, client: httpx.Client
) -> None:
    """A link posted several times at once (double clicks, two tabs) sets one password."""
    email = f"{unique('burst')}@example.com"
    sign_up_with_email(client, email)
    link = request_reset_link(server, client, email)

    def submit(index: int) -> httpx.Response:
        password = f"burst-pass-{index}"
        return httpx.post(link, data={"new_pwd": password, "confirm": password}, timeout=60)

    answers = at_once(8, submit)
    winners = [index for index, answer in enumerate(answers) if answer.status_code == 200]
    assert len(winners) == 1, f"{len(winners)} of 8 submissions were told 'Password changed'"
    for answer in answers:
        if answer.status_code != 200:
            assert answer.status_code == 400, answer.text
            assert "Password changed" not in answer.text
    # Whoever was told "Password changed" can sign in with the password they chose.
    assert login(client, email, f"burst-pass-{winners[0]}").status_code == 200


def test_reset_link_with_mismatching_confirmation(
    server: RunningServer, client: httpx.Client
) -> None:
    email = f"{unique('mismatch')}@example.com"
    created = sign_up_with_email(client, email)
    link = request_reset_link(server, client, email)

    response = httpx.post(link, data={"new_pwd": "new-pass-2", "confirm": "new-pass-3"}, timeout=30)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert "differ" in response.text
    assert "<form" in response.text  # the user can try again on the same page
    assert login(client, email, "old-pass-1").status_code == 200
    assert_error(login(client, email, "new-pass-2"), 9020)
    assert profile(client, created["token"]).status_code == 200

    # The link survived the typo.
    ok = httpx.post(link, data={"new_pwd": "new-pass-2", "confirm": "new-pass-2"}, timeout=30)
    assert ok.status_code == 200, ok.text
    assert login(client, email, "new-pass-2").status_code == 200


def test_reset_link_with_a_short_password(server: RunningServer, client: httpx.Client) -> None:
    email = f"{unique('short')}@example.com"
    sign_up_with_email(client, email)
    link = request_reset_link(server, client, email)
    response = httpx.post(link, data={"new_pwd": "123", "confirm": "123"}, timeout=30)
    assert response.status_code == 400, response.text
    assert "<form" in response.text
    assert login(client, email, "old-pass-1").status_code == 200
    assert_error(login(client, email, "123"), 9020)
    ok = httpx.post(link, data={"new_pwd": "long-enough", "confirm": "long-enough"}, timeout=30)
    assert ok.status_code == 200, ok.text
    assert login(client, email, "long-enough").status_code == 200


def test_each_request_mails_a_new_link(server: RunningServer, client: httpx.Client) -> None:
    email = f"{unique('twice')}@example.com"
    sign_up_with_email(client, email)
    first = request_reset_link(server, client, email)
    second = request_reset_link(server, client, email)
    assert first != second
    ok = httpx.post(second, data={"new_pwd": "new-pass-2", "confirm": "new-pass-2"}, timeout=30)
    assert ok.status_code == 200, ok.text
    assert login(client, email, "new-pass-2").status_code == 200
    assert_invalid_link_page(
        httpx.post(second, data={"new_pwd": "again-pass", "confirm": "again-pass"}, timeout=30)
    )


def test_reset_email_is_case_insensitive(server: RunningServer, client: httpx.Client) -> None:
    email = f"{unique('case')}@example.com"
    sign_up_with_email(client, email)
    response = client.post("/app/reset_password", json={"email": email.upper()})
    assert response.status_code == 200, response.text
    assert len(reset_mails(outbox_mails(server.data_dir, email))) == 1


def test_reset_for_an_unknown_email(server: RunningServer, client: httpx.Client) -> None:
    email = f"{unique('nobody')}@example.com"
    assert_error(client.post("/app/reset_password", json={"email": email}), 9005)
    assert outbox_mails(server.data_dir, email) == []


def test_reset_email_of_another_app_is_unknown(server: RunningServer, client: httpx.Client) -> None:
    email = f"{unique('elsewhere')}@example.com"
    sign_up_with_email(client, email)
    other = server.create_app("Reset Elsewhere")
    with server.client(other["appid"]) as elsewhere:
        assert_error(elsewhere.post("/app/reset_password", json={"email": email}), 9005)
    assert reset_mails(outbox_mails(server.data_dir, email)) == []


@pytest.mark.parametrize("email", ["not-an-email", "a@", "@example.com", ""])
def test_reset_for_a_malformed_email(client: httpx.Client, email: str) -> None:
    body = assert_error(client.post("/app/reset_password", json={"email": email}), 9015)
    assert "email" in (body["detail_message"] or "")


def test_garbage_reset_link(server: RunningServer, client: httpx.Client) -> None:
    for token in ("garbage", "0" * 64, "a" * 200):
        link = f"{server.base_url}/account/reset/{token}"
        page = httpx.get(link, timeout=30)
        assert_invalid_link_page(page)
        assert page.headers["referrer-policy"] == "no-referrer"
        assert_invalid_link_page(
            httpx.post(link, data={"new_pwd": "new-pass-2", "confirm": "new-pass-2"}, timeout=30)
        )


# -- by e-mail, through SMTP ------------------------------------------------------------------


class Inbox:
    """An aiosmtpd handler that keeps every accepted message."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], EmailMessage]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        data = envelope.original_content or envelope.content
        raw = data if isinstance(data, bytes) else data.encode()
        self.messages.append((list(envelope.rcpt_tos), parse_mail(raw)))
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[EmailMessage]:
        return [message for rcpts, message in self.messages if address in rcpts]


class SmtpServer:
    """A real SMTP server on a fixed loopback port that can be stopped and started again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.inbox = Inbox()
        self.controller: Controller | None = None

    def start(self) -> None:
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def smtp_server(
    smtp: SmtpServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """A server that mails through ``smtp``.

    SQLite only: the mail provider does not touch the database differently per backend, and
    both backends are covered by the outbox tests above.
    """
    with serving(
        tmp_path_factory.mktemp("iotcloud-smtp"),
        None,
        smtp_url=f"smtp://127.0.0.1:{smtp.port}",
        mail_from="Reset Test <no-reply@iotcloud.test>",
        rate_limit_per_address=0,
        rate_limit_per_app=0,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def smtp_app(smtp_server: RunningServer) -> dict[str, str]:
    return smtp_server.create_app("Mailing App")


def test_reset_mail_through_smtp(
    smtp: SmtpServer, smtp_server: RunningServer, smtp_app: dict[str, str]
) -> None:
    email = f"{unique('smtp')}@example.com"
    with smtp_server.client(smtp_app["appid"]) as client:
        created = sign_up_with_email(client, email)
        response = client.post("/app/reset_password", json={"email": email})
        assert response.status_code == 200, response.text

        mails = reset_mails(smtp.inbox.to(email))
        assert len(mails) == 1
        mail = mails[0]
        assert mail["To"] == email
        assert mail["Subject"] == "Reset your Mailing App password"
        assert "no-reply@iotcloud.test" in str(mail["From"])
        link = link_in(smtp_server, mail)
        # Delivered by SMTP, not written to the outbox.
        outbox = smtp_server.data_dir / "outbox" / "mail"
        assert not outbox.exists() or not list(outbox.glob("*.eml"))

        page = httpx.get(link, timeout=30)
        assert page.status_code == 200, page.text
        assert page.headers["referrer-policy"] == "no-referrer"
        done = httpx.post(
            link, data={"new_pwd": "smtp-pass-2", "confirm": "smtp-pass-2"}, timeout=30
        )
        assert done.status_code == 200, done.text
        assert "Password changed" in done.text

        new_login = login(client, email, "smtp-pass-2")
        assert new_login.status_code == 200, new_login.text
        assert new_login.json()["uid"] == created["uid"]
        assert_error(login(client, email, "old-pass-1"), 9020)
        assert_error(profile(client, created["token"]), 9004)
        assert_invalid_link_page(httpx.get(link, timeout=30))


def reset_rows(server: RunningServer, email: str) -> int:
    """Reset links stored for ``email`` in a dedicated server's SQLite database."""
    database = server.data_dir / "iotcloud.db"
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        (count,) = connection.execute(
            "SELECT count(*) FROM password_resets JOIN users ON users.id = password_resets.user_id"
            " WHERE users.email = ?",
            (email,),
        ).fetchone()
    return int(count)


def test_reset_mail_with_the_smtp_server_down(
    smtp: SmtpServer, smtp_server: RunningServer, smtp_app: dict[str, str]
) -> None:
    email = f"{unique('down')}@example.com"
    with smtp_server.client(smtp_app["appid"]) as client:
        created = sign_up_with_email(client, email)
        smtp.stop()
        try:
            response = client.post("/app/reset_password", json={"email": email})
        finally:
            smtp.start()
        body = assert_error(response, 9008, status=500)
        assert body["error_message"] == "server error"
        assert body["detail_message"]
        assert "Traceback" not in response.text
        assert response.headers["content-type"].startswith("application/json")

        # No link was stored, so none can be used later.
        assert reset_rows(smtp_server, email) == 0
        assert reset_mails(smtp.inbox.to(email)) == []
        # Nothing about the account changed.
        assert login(client, email, "old-pass-1").status_code == 200
        assert profile(client, created["token"]).status_code == 200

        # With the mail server back, asking again delivers exactly one working link.
        again = client.post("/app/reset_password", json={"email": email})
        assert again.status_code == 200, again.text
        assert reset_rows(smtp_server, email) == 1
        mails = reset_mails(smtp.inbox.to(email))
        assert len(mails) == 1
        link = link_in(smtp_server, mails[0])
        done = httpx.post(
            link, data={"new_pwd": "back-pass-2", "confirm": "back-pass-2"}, timeout=30
        )
        assert done.status_code == 200, done.text
        assert login(client, email, "back-pass-2").status_code == 200
