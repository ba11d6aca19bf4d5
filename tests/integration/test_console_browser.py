"""The web console in headless Chromium against one real ``iotcloud serve`` (SQLite; the
console's queries run on PostgreSQL in ``test_console.py``).

An operator signs in with the token (a wrong one is refused; an expired or signed-out session
sends the browser back to sign-in, even from a device page left open), imports a product by
uploading its datapoint file, creates devices one by one and from a CSV, watches a simulated
device's reported value change on its page without reloading, disables and enables a device,
sends a device a command from the generated form (and sees the server's message next to a field
holding an out-of-range value), reads a failed schedule run's attempts, finds a user with their
bound devices and signs them out everywhere, and creates an app and rotates its secret.

Every page visited is saved as a screenshot under ``test-output/console-screenshots/`` (the
overview and the device page also at phone size, where nothing may make the page scroll
sideways). The tests share one server and one browser and run in file order; each signs in
again when its session is gone.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By
from sqlalchemy import update

from iotcloud.codecs import AttrType, parse_product_definition
from iotcloud.simulator import VirtualDevice
from iotcloud.storage.database import Database
from iotcloud.storage.models import ConsoleSessionRow, ScheduleRow
from tests.accounts import User, bind, sign_up
from tests.browser import SCREENSHOTS, BackgroundLoop, Browser, chromium, require_browser
from tests.devices import FIXTURES, PASSCODE, Online, Product, import_product, register
from tests.server import ADMIN_TOKEN, RunningServer, serving

require_browser()

SETTINGS: dict[str, Any] = {
    "rate_limit_per_address": 0,
    "rate_limit_per_app": 0,
    # a failed schedule run finishes within seconds: quick retries, nothing claimed ahead
    "scheduler_retry_interval_seconds": 1,
    "scheduler_ack_timeout_seconds": 2,
    "scheduler_lease_seconds": 4,
    "scheduler_max_sleep_seconds": 1,
    "scheduler_prepare_seconds": 0,
}
DID = re.compile(r"[A-Za-z0-9]{22}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with serving(tmp_path_factory.mktemp("console-browser"), None, **SETTINGS) as running:
        yield running


@pytest.fixture(scope="module")
def browser(server: RunningServer) -> Iterator[Browser]:
    """The module's browser; its screenshots replace the last run's and are listed in
    ``index.txt`` beside them."""
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()
    with chromium(server.base_url) as opened:
        yield opened
    index = "".join(f"{path}\n" for path in opened.taken)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    (SCREENSHOTS / "index.txt").write_text(index)
    print(f"console screenshots:\n{index}")


@pytest.fixture(scope="module")
def background() -> Iterator[BackgroundLoop]:
    with BackgroundLoop() as loop:
        yield loop


@pytest.fixture(scope="module")
def product(server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Product:
    """A product imported with the CLI, for the tests that are not about importing."""
    return import_product(server, tmp_path_factory.mktemp("product"), "pet_house.json")


@pytest.fixture(scope="module")
def member(server: RunningServer, product: Product, background: BackgroundLoop) -> Member:
    """An app user with one bound device that never connects."""
    app = server.create_app("Console App")
    user = sign_up(server, app["appid"])
    did, mac = register(server, product)
    background.run(bind(server, user, did))
    return Member(user, did, mac)


@dataclass(frozen=True)
class Member:
    """An app user and the device bound to them."""

    user: User
    did: str
    mac: str


@pytest.fixture
def signed_in(browser: Browser) -> Browser:
    """The browser on the overview, signed in (again, if its session has gone)."""
    browser.open("/console")
    if browser.path != "/console":
        sign_in(browser)
    return browser


def sign_in(browser: Browser, token: str = ADMIN_TOKEN) -> None:
    """Sign in from the sign-in page (opened if the browser is elsewhere) and arrive on the
    overview."""
    if browser.path != "/console/login":
        browser.open("/console/login")
    browser.fill("form#login", "token", token)
    browser.submit("form#login")
    browser.wait_path("/console")
    browser.find("#nav-overview")


def expire_sessions(server: RunningServer, background: BackgroundLoop) -> None:
    """End every console session in the server's database as if its time had run out."""

    async def age() -> None:
        past = datetime.now(UTC) - timedelta(seconds=1)
        async with Database(server.database_url) as db, db.session() as session:
            await session.execute(update(ConsoleSessionRow).values(expires_at=past))

    background.run(age())


def definition_file(directory: Path, name: str = "pet_house.json") -> tuple[Path, str]:
    """A copy of fixture ``name`` under a fresh product_key: ``(path, product_key)``."""
    data = json.loads((FIXTURES / name).read_text())
    data["product_key"] = uuid.uuid4().hex
    path = directory / f"{data['product_key']}.json"
    path.write_text(json.dumps(data))
    return path, data["product_key"]


def no_sideways_scrolling(browser: Browser, page: str) -> None:
    assert browser.page_is_narrow_enough(), f"the {page} page scrolls sideways at 375 px"


# -- 1. signing in ------------------------------------------------------------------------------


def test_a_wrong_token_is_refused_and_the_operator_token_signs_in(browser: Browser) -> None:
    browser.open("/console")
    browser.wait_path("/console/login")  # no session: the console sends the browser to sign in
    browser.find("form#login input[name=token]")
    browser.screenshot("login")

    browser.fill("form#login", "token", "not-the-operator-token")
    browser.submit("form#login")
    browser.wait_error("form", "token")  # the refusal says why
    assert browser.path == "/console/login"
    assert "not-the-operator-token" not in browser.driver.page_source
    browser.screenshot("login-refused")

    sign_in(browser)
    for name in ("overview", "products", "devices", "apps", "users", "schedules"):
        browser.find(f"#nav-{name}")
    browser.find("#logout")
    assert ADMIN_TOKEN not in browser.driver.page_source
    assert ADMIN_TOKEN not in browser.driver.current_url
    browser.screenshot("overview")
    with browser.phone():
        browser.open("/console")
        browser.screenshot("overview-phone")
        no_sideways_scrolling(browser, "overview")


def test_an_expired_session_sends_the_browser_back_to_sign_in(
    signed_in: Browser, server: RunningServer, background: BackgroundLoop
) -> None:
    browser = signed_in
    expire_sessions(server, background)
    browser.find("#nav-products").click()
    browser.wait_path("/console/login")
    browser.find("form#login")


def test_a_device_page_left_open_goes_to_sign_in_when_the_session_expires(
    signed_in: Browser, server: RunningServer, member: Member, background: BackgroundLoop
) -> None:
    browser = signed_in
    browser.open(f"/console/devices/{member.did}")
    browser.find("#online-state")
    expire_sessions(server, background)
    browser.wait_path("/console/login")  # the page's live updates are refused: sign in again


def test_signing_out_in_another_tab_ends_the_session_in_this_one(signed_in: Browser) -> None:
    browser = signed_in
    first = browser.driver.current_window_handle
    browser.driver.switch_to.new_window("tab")
    try:
        browser.open("/console")
        browser.find("#logout").click()
        browser.wait_path("/console/login")
    finally:
        browser.driver.close()
        browser.driver.switch_to.window(first)
    browser.find("#nav-devices").click()
    browser.wait_path("/console/login")


# -- 2. products ---------------------------------------------------------------------------------


def test_a_product_is_imported_by_uploading_its_datapoint_file(
    signed_in: Browser, tmp_path: Path
) -> None:
    browser = signed_in
    browser.find("#nav-products").click()
    browser.wait_path("/console/products")
    browser.find("form#product-import")
    browser.screenshot("products")

    # a file that is not JSON is refused with a message, nothing is imported
    wrong = tmp_path / "notes.txt"
    wrong.write_text("this is not a datapoint file\n")
    browser.attach("form#product-import", wrong)
    browser.submit("form#product-import")
    browser.wait_error("file", "form")

    path, product_key = definition_file(tmp_path)
    browser.attach("form#product-import", path)
    browser.submit("form#product-import")
    browser.wait_text("#product-key", product_key)
    secret = browser.wait(lambda: browser.text("#product-secret").strip(), "the product secret")
    browser.screenshot("product-imported")

    browser.open(f"/console/products/{product_key}")
    page = browser.find("table#datapoints").text
    definition = parse_product_definition(json.loads(path.read_text()))
    for attr in definition.attrs:
        assert attr.name in page, f"data point {attr.name} is listed"
    for label in ("Customize", "Yellow", "Purple", "Pink"):  # LED_Color's enum labels
        assert label in page
    assert secret not in browser.driver.page_source, "the secret is shown only once"
    browser.screenshot("product")

    browser.open("/console/products")
    browser.wait_contains("table#products", product_key)
    assert secret not in browser.driver.page_source


# -- 3. devices ----------------------------------------------------------------------------------


def test_a_device_is_created_from_the_form_and_shown_once_with_its_passcode(
    signed_in: Browser, product: Product
) -> None:
    browser = signed_in
    browser.find("#nav-devices").click()
    browser.wait_path("/console/devices")
    create = "form#device-create"
    mac = "02" + uuid.uuid4().hex[:10]
    browser.choose(create, "product_key", product.product_key)
    browser.fill(create, "mac", mac)
    browser.submit(create)
    did = browser.wait(lambda: browser.text("#device-did").strip(), "the new device's did")
    passcode = browser.wait(lambda: browser.text("#device-passcode").strip(), "its passcode")
    assert DID.fullmatch(did), did
    browser.screenshot("device-created")

    browser.open(f"/console/devices?q={mac}")
    browser.wait_contains("table#devices", did)
    browser.screenshot("devices")
    browser.open(f"/console/devices/{did}")
    browser.wait_text("#online-state", "offline")
    assert mac in browser.text("section#device")
    assert passcode not in browser.driver.page_source, "the passcode is shown only once"


def test_devices_are_imported_from_a_csv_with_a_progress_bar(
    signed_in: Browser, product: Product, tmp_path: Path
) -> None:
    browser = signed_in
    browser.open("/console/devices")
    macs = ["02" + uuid.uuid4().hex[:10] for _ in range(3)]
    csv = tmp_path / "devices.csv"
    csv.write_text("mac\n" + "\n".join(macs) + "\n")
    browser.find("form#device-import progress#import-progress")
    browser.choose("form#device-import", "product_key", product.product_key)
    browser.attach("form#device-import", csv)
    browser.submit("form#device-import")
    browser.wait_contains("#import-result", "3 created")
    progress = browser.first("#import-progress")
    if progress is not None:  # with JS the bar ends full
        value, top = progress.get_attribute("value"), progress.get_attribute("max")
        assert value is not None
        assert top is not None
        assert float(value) == float(top)
    browser.screenshot("devices-imported")
    for mac in macs:
        browser.open(f"/console/devices?q={mac}")
        browser.wait_contains("table#devices", mac)


# -- 4. a value changing live --------------------------------------------------------------------


def test_a_reported_value_changes_live_on_the_device_page(
    signed_in: Browser, server: RunningServer, product: Product, background: BackgroundLoop
) -> None:
    browser = signed_in
    device = VirtualDevice(
        product.product_key, product.definition, "02" + uuid.uuid4().hex[:10], passcode=PASSCODE
    )
    device.status["Temperature"] = 20
    online = Online(server, device)
    background.run(online.__aenter__())
    try:
        assert device.did is not None
        browser.open(f"/console/devices/{device.did}")
        browser.driver.execute_script("window.stillTheSamePage = true;")
        browser.wait_text("#online-state", "online")
        browser.wait_text("[data-dp='Temperature']", "20")

        device.status["Temperature"] = 31
        background.run(device.report(["Temperature"]))
        browser.wait_text("[data-dp='Temperature']", "31")
        device.status["Temperature"] = 42
        background.run(device.report(["Temperature"]))
        browser.wait_text("[data-dp='Temperature']", "42")
        assert browser.driver.execute_script("return window.stillTheSamePage === true;"), (
            "the value changed without the page being reloaded"
        )
        browser.find("svg.chart[data-dp='Temperature']")
        browser.wait(
            lambda: browser.driver.find_elements(
                By.CSS_SELECTOR, "svg.chart[data-dp='Temperature'] polyline"
            ),
            "the Temperature chart to draw the reports, without a reload",
        )
        browser.wait(
            lambda: (
                "Nothing logged" not in browser.text("table#frames tbody")
                and browser.text("table#frames tbody")
            ),
            "the frame log to list the device's frames",
        )
        browser.screenshot("device")
        with browser.phone():
            browser.screenshot("device-phone")
            no_sideways_scrolling(browser, "device")
    finally:
        background.run(online.__aexit__(None, None, None))
    browser.wait_text("#online-state", "offline")


def test_a_device_is_disabled_and_enabled_from_its_page(signed_in: Browser, member: Member) -> None:
    browser = signed_in
    browser.open(f"/console/devices/{member.did}")
    browser.find("form#device-disable [type=submit]").click()
    browser.wait_text("#disabled-state", "disabled")
    browser.screenshot("device-disabled")
    browser.find("form#device-enable [type=submit]").click()
    browser.find("form#device-disable")
    assert browser.first("#disabled-state") is None


# -- 5. commands ---------------------------------------------------------------------------------


def test_a_command_from_the_form_reaches_the_device_and_a_bad_value_is_refused(
    signed_in: Browser, server: RunningServer, product: Product, background: BackgroundLoop
) -> None:
    browser = signed_in
    device = VirtualDevice(
        product.product_key, product.definition, "02" + uuid.uuid4().hex[:10], passcode=PASSCODE
    )
    device.status["LED_R"] = 5
    online = Online(server, device)
    background.run(online.__aenter__())
    try:
        browser.open(f"/console/devices/{device.did}")
        browser.wait_text("#online-state", "online")
        form = "form#command"
        for attr in product.definition.attrs:  # one field per writable data point
            selector = f"{form} [name='{attr.name}']"
            if attr.type is AttrType.STATUS_WRITABLE:
                browser.find(selector)
            else:
                assert browser.first(selector) is None, f"{attr.name} is not writable"

        browser.fill(form, "LED_R", "77")
        browser.submit(form)
        browser.wait(lambda: device.stats.last_control.get("LED_R") == 77, "the device to get 77")
        browser.wait(lambda: browser.text("#command-result").strip(), "the command's result")
        browser.wait_text("[data-dp='LED_R']", "77")  # the device's answer, shown live
        browser.screenshot("device-command")
        controls = device.stats.controls

        browser.without_browser_checks(form)
        browser.fill(form, "LED_R", "300")  # LED_R is 0..254
        browser.submit(form)
        error = browser.wait_error("LED_R")
        assert "LED_R" in error.text or "254" in error.text, error.text
        browser.screenshot("device-command-refused")
        assert device.stats.controls == controls, "the refused command never reached the device"
    finally:
        background.run(online.__aexit__(None, None, None))


# -- 6. a failed schedule run --------------------------------------------------------------------


def test_a_failed_runs_attempts_are_listed_on_the_schedules_page(
    signed_in: Browser,
    server: RunningServer,
    member: Member,
    product: Product,
    background: BackgroundLoop,
) -> None:
    browser = signed_in
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    body = {
        "date": tomorrow.date().isoformat(),
        "time": tomorrow.strftime("%H:%M"),
        "repeat": "none",
        "retry_count": 1,
        "retry_task": "failed",
        "task": [{"did": member.did, "product_key": product.product_key, "attrs": {"LED_R": 9}}],
    }
    with httpx.Client(base_url=server.base_url, headers=member.user.headers()) as http:
        reply = http.post("/app/scheduler", json=body)
        assert reply.status_code == 201, reply.text
        schedule_id: str = reply.json()["id"]
        bring_forward(server, background, schedule_id)  # due now instead of tomorrow

        def failed() -> list[dict[str, Any]] | None:
            runs: list[dict[str, Any]] = http.get(f"/app/scheduler/{schedule_id}/runs").json()
            return runs if runs and runs[0]["status"] == "failed" else None

        [run] = browser.wait(failed, "the run for the offline device to fail")
    assert len(run["attempts"]) == 2  # the first attempt and one retry

    browser.open("/console")
    browser.find("#problems tr.status-failed")  # the overview lists it among the last problems

    browser.find("#nav-schedules").click()
    browser.wait_path("/console/schedules")
    row = browser.wait_contains("table#runs tr.run.status-failed", member.did)
    first = browser.all("table#runs tr.run")[0].get_attribute("class") or ""
    assert "status-failed" in first or "status-missed" in first, "problems come first"
    assert len(row.find_elements(By.CSS_SELECTOR, "li.attempt")) == 2
    browser.screenshot("schedules")

    browser.open(f"/console/schedules/{schedule_id}")
    row = browser.wait_contains("table#runs tr.run.status-failed", member.did)
    attempts = row.find_elements(By.CSS_SELECTOR, "li.attempt")
    assert len(attempts) == 2
    assert all(f"{member.did}: failed" in attempt.text for attempt in attempts)
    browser.screenshot("schedule")


def bring_forward(server: RunningServer, background: BackgroundLoop, schedule_id: str) -> None:
    """Make schedule ``schedule_id`` due now, in the server's database (its engine looks for due
    schedules every second here)."""

    async def now() -> None:
        async with Database(server.database_url) as db, db.session() as session:
            await session.execute(
                update(ScheduleRow)
                .where(ScheduleRow.public_id == schedule_id)
                .values(next_due_at=datetime.now(UTC))
            )

    background.run(now())


# -- 7. users ------------------------------------------------------------------------------------


def test_a_users_page_shows_their_devices_and_signs_them_out_everywhere(
    signed_in: Browser, server: RunningServer, member: Member
) -> None:
    browser = signed_in
    with httpx.Client(base_url=server.base_url, headers=member.user.headers()) as http:
        assert http.get("/app/bindings").status_code == 200

        browser.find("#nav-users").click()
        browser.wait_path("/console/users")
        browser.screenshot("users")
        browser.open(f"/console/users?q={member.user.uid}")
        browser.find(f"table#users a[href$='/{member.user.uid}']").click()
        browser.wait_path(f"/console/users/{member.user.uid}")
        browser.wait_contains("table#user-devices", member.did)
        assert "No live sessions" not in browser.text("table#sessions")
        browser.screenshot("user")

        browser.find("form#sign-out-everywhere [type=submit]").click()
        browser.wait(lambda: browser.first("div.notice"), "the sign-out's notice")
        browser.wait_contains("table#sessions", "No live sessions")
        browser.wait(
            lambda: http.get("/app/bindings").status_code != 200,
            "the user's token to stop working",
        )


# -- apps ----------------------------------------------------------------------------------------


def test_an_app_is_created_and_its_secret_shown_only_once(
    signed_in: Browser, server: RunningServer
) -> None:
    browser = signed_in
    browser.find("#nav-apps").click()
    browser.wait_path("/console/apps")
    browser.screenshot("apps")
    name = "Console " + uuid.uuid4().hex[:6]
    browser.fill("form#app-create", "name", name)
    browser.submit("form#app-create")
    secret = browser.wait(lambda: browser.text("#appsecret").strip(), "the new app's secret")
    appid = browser.text("#appid").strip()
    assert appid
    browser.screenshot("app-created")

    browser.open("/console/apps")
    row = browser.wait_contains("table#apps tr", appid)
    assert name in row.text
    assert secret not in browser.driver.page_source, "the secret is shown only once"
    row.find_element(By.CSS_SELECTOR, "form.rotate [type=submit]").click()

    def rotated_secret() -> str | None:
        shown = browser.text("#appsecret").strip()
        return shown if shown and shown != secret else None

    rotated = browser.wait(rotated_secret, "the rotated secret")
    assert browser.text("#appid").strip() == appid
    browser.screenshot("app-rotated")
    browser.open("/console/apps")
    browser.wait_contains("table#apps", appid)
    assert rotated not in browser.driver.page_source
