"""Headless Chromium for the web console's browser tests: Debian's ``/usr/bin/chromium`` driven
through ``/usr/bin/chromedriver`` by Selenium (never a downloaded browser or driver).

`chromium` opens a `Browser` on a running server: explicit waits only (`Browser.wait`, at most
`WAIT` seconds), a screenshot of each page under `SCREENSHOTS`, and a phone-sized pass
(`Browser.phone`). `BackgroundLoop` runs the asyncio side of a test (a simulated device, HTTP
calls) in a thread of its own, so a device keeps answering while the browser blocks.

Without Chromium the tests are skipped, unless ``IOTCLOUD_TEST_REQUIRE_BROWSER`` is set (as
``bin/test`` does): then a missing browser fails them.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
#: Where screenshots go: ``test-output/console-screenshots/`` at the repository root.
SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-output" / "console-screenshots"
DESKTOP = (1280, 900)
PHONE = (375, 740)
#: The longest any wait for the page lasts, in seconds.
WAIT = 20.0
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
T = TypeVar("T")


def require_browser() -> None:
    """Skip the calling test (module, at import) when Chromium or its driver is missing, or fail
    it when ``IOTCLOUD_TEST_REQUIRE_BROWSER`` is set."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if not missing:
        return
    reason = f"{' and '.join(missing)} not installed (Debian packages chromium and chromium-driver)"
    if os.environ.get("IOTCLOUD_TEST_REQUIRE_BROWSER"):
        pytest.fail(f"the browser tests need {reason}", pytrace=False)
    pytest.skip(f"browser tests skipped: {reason}", allow_module_level=True)


class Browser:
    """One Chromium window on one server, with waits and screenshots."""

    def __init__(self, driver: webdriver.Chrome, base_url: str, screenshots: Path) -> None:
        self.driver = driver
        self.base_url = base_url.rstrip("/")
        self.screenshots = screenshots
        self.taken: list[Path] = []

    # -- navigation ---------------------------------------------------------------------------

    def open(self, path: str) -> None:
        """Load ``path`` (relative to the server) and wait until the document is complete."""
        self.driver.get(self.base_url + path)
        self.wait_loaded()

    def wait_loaded(self) -> None:
        self.wait(
            lambda: self.driver.execute_script("return document.readyState") == "complete",
            "the page to finish loading",
        )

    @property
    def path(self) -> str:
        """The path of the current page (no query)."""
        return urlsplit(self.driver.current_url).path

    def wait_path(self, path: str) -> None:
        """Wait until the browser shows ``path`` (after a redirect or a form post)."""
        self.wait(lambda: self.path == path, f"the browser to arrive at {path}")
        self.wait_loaded()

    # -- finding and waiting ------------------------------------------------------------------

    def wait(self, condition: Callable[[], T | None], what: str, timeout: float = WAIT) -> T:
        """Wait until ``condition()`` is truthy (a stale element counts as not yet) and return
        it; fails naming ``what`` and the page after ``timeout`` seconds."""

        def probe(_: Any) -> T | None:
            try:
                return condition()
            except StaleElementReferenceException:
                return None

        try:
            result = WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(probe)
        except TimeoutException:
            raise AssertionError(
                f"waited {timeout:g} s for {what} on {self.driver.current_url}:\n"
                f"{self.text('body')[:2000]}"
            ) from None
        assert result is not None
        return result

    def find(self, css: str, timeout: float = WAIT) -> WebElement:
        """The first element matching ``css``, waiting for it to appear."""
        return self.wait(lambda: self.first(css), f"an element {css!r}", timeout)

    def first(self, css: str) -> WebElement | None:
        found = self.driver.find_elements(By.CSS_SELECTOR, css)
        return found[0] if found else None

    def all(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def text(self, css: str) -> str:
        """The visible text of the first element matching ``css`` ("" when there is none)."""
        element = self.first(css)
        return element.text if element is not None else ""

    def wait_text(self, css: str, expected: str, timeout: float = WAIT) -> WebElement:
        """Wait until an element matching ``css`` has exactly the text ``expected``."""

        def probe() -> WebElement | None:
            element = self.first(css)
            return element if element is not None and element.text.strip() == expected else None

        return self.wait(probe, f"{css!r} to read {expected!r}", timeout)

    def wait_contains(self, css: str, expected: str, timeout: float = WAIT) -> WebElement:
        """Wait until one of the elements matching ``css`` shows text containing ``expected``,
        and return it (a row of a table, say)."""

        def probe() -> WebElement | None:
            return next((found for found in self.all(css) if expected in found.text), None)

        return self.wait(probe, f"{css!r} to show {expected!r}", timeout)

    def wait_error(self, *names: str, timeout: float = WAIT) -> WebElement:
        """Wait until the error message of one of the fields ``names`` (``form``: the form's
        own) shows text, and return it."""

        def probe() -> WebElement | None:
            for name in names:
                element = self.first(f"#error-{name}")
                if element is not None and element.text.strip():
                    return element
            return None

        return self.wait(probe, f"an error message for {' or '.join(names)}", timeout)

    # -- forms --------------------------------------------------------------------------------

    def fill(self, form: str, name: str, value: str) -> WebElement:
        """Type ``value`` into field ``name`` of the form matching ``form`` (cleared first)."""
        field = self.find(f"{form} [name={name!r}]")
        field.clear()
        field.send_keys(value)
        return field

    def choose(self, form: str, name: str, value: str) -> None:
        """Select the option with value (or, failing that, label) ``value`` of select ``name``."""
        select = Select(self.find(f"{form} select[name={name!r}]"))
        try:
            select.select_by_value(value)
        except NoSuchElementException:
            select.select_by_visible_text(value)

    def attach(self, form: str, path: Path, name: str = "file") -> None:
        """Choose the file at ``path`` in file input ``name`` of the form matching ``form``."""
        self.find(f"{form} input[type=file][name={name!r}]").send_keys(str(path))

    def submit(self, form: str) -> None:
        """Click the submit button of the form matching ``form``."""
        self.find(f"{form} [type=submit]").click()

    def without_browser_checks(self, form: str) -> None:
        """Turn off the browser's own validation of ``form`` (min/max/required), so the server's
        messages are what the test sees."""
        self.driver.execute_script("arguments[0].noValidate = true;", self.find(form))

    # -- screenshots --------------------------------------------------------------------------

    def screenshot(self, name: str) -> Path:
        """Save the whole page as ``NAME.png`` under the screenshot directory; the file must not
        be empty."""
        self.screenshots.mkdir(parents=True, exist_ok=True)
        path = self.screenshots / f"{name}.png"
        metrics = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        width, height = self.driver.get_window_size()["width"], size["height"]
        shot = self.driver.execute_cdp_cmd(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
            },
        )
        path.write_bytes(base64.b64decode(shot["data"]))
        assert path.stat().st_size > 0, f"empty screenshot {path}"
        self.taken.append(path)
        print(f"screenshot: {path}")
        return path

    @contextmanager
    def phone(self) -> Iterator[None]:
        """Within the block the window is phone-sized (`PHONE`); then desktop-sized again."""
        self.driver.set_window_size(*PHONE)
        try:
            yield
        finally:
            self.driver.set_window_size(*DESKTOP)

    def page_is_narrow_enough(self) -> bool:
        """True when nothing makes the page wider than the window (no sideways scrolling)."""
        return bool(
            self.driver.execute_script(
                "return document.documentElement.scrollWidth <= window.innerWidth + 1;"
            )
        )


@contextmanager
def chromium(base_url: str, screenshots: Path = SCREENSHOTS) -> Iterator[Browser]:
    """A headless Chromium on ``base_url``, desktop-sized, with a throwaway profile."""
    require_browser()
    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager download anything
    profile = tempfile.mkdtemp(prefix="iotcloud-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={DESKTOP[0]},{DESKTOP[1]}"):
        options.add_argument(flag)
    service = Service(executable_path=str(CHROMEDRIVER))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.set_page_load_timeout(WAIT)
        driver.set_window_size(*DESKTOP)
        yield Browser(driver, base_url, screenshots)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


class BackgroundLoop:
    """An asyncio event loop in a thread of its own: `run` hands it a coroutine and waits for
    the result, while tasks it started (an MQTT device's session) keep running between calls."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="browser-test-loop")

    def __enter__(self) -> BackgroundLoop:
        self.thread.start()
        return self

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``coro`` on the loop and return its result (its exception is raised here)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __exit__(self, *exc: object) -> None:
        async def cancel_rest() -> None:
            rest = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        self.run(cancel_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
