"""A real headless Chromium (Debian's chromium + chromedriver) driven by Selenium, for the operator page.

Selenium blocks, and the bot and the fake Chatwoot run on the test's event loop: every browser call goes
through a thread so the loop keeps serving the page while the browser waits for it.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
DESKTOP, PHONE = (1280, 1000), (390, 844)  # a phone: iPhone 12–15 CSS pixels


class Browser:
    def __init__(self, driver, shots: Path):
        self.driver, self.shots = driver, shots

    async def call(self, fn, *args):
        return await asyncio.to_thread(fn, *args)

    async def go(self, url: str) -> None:
        await self.call(self.driver.get, url)

    async def find(self, css: str):
        from selenium.webdriver.common.by import By

        return await self.call(self.driver.find_element, By.CSS_SELECTOR, css)

    async def all(self, css: str) -> list:
        from selenium.webdriver.common.by import By

        return await self.call(self.driver.find_elements, By.CSS_SELECTOR, css)

    async def text(self, css: str = "body") -> str:
        element = await self.find(css)
        return await self.call(lambda: element.text)

    async def fill(self, css: str, value: str) -> None:
        element = await self.find(css)
        await self.call(element.clear)
        await self.call(element.send_keys, value)

    async def click(self, css: str) -> None:
        """Click a button that submits a form, and wait until the next page has replaced this one."""
        from selenium.common.exceptions import WebDriverException

        from tests.conftest import wait_for

        old, element = await self.find("html"), await self.find(css)
        await self.call(element.click)

        def replaced() -> bool:
            try:
                _ = old.tag_name  # raises once the page replaced the element
                return False
            except WebDriverException:  # stale, or "does not belong to the document": the page changed
                pass
            try:
                return self.driver.execute_script("return document.readyState") == "complete"
            except WebDriverException:  # still navigating
                return False

        async def gone() -> bool:
            return await self.call(replaced)

        await wait_for(gone, 10, f"the page after clicking {css}")

    async def script(self, js: str, *args):
        return await self.call(self.driver.execute_script, js, *args)

    async def size(self, width: int, height: int) -> None:
        await self.call(self.driver.set_window_size, width, height)

    async def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        await self.call(self.driver.save_screenshot, str(path))
        return path

    async def sign_in(self, url: str, token: str) -> None:
        await self.go(url + "/")
        await self.fill("#token", token)
        await self.click("#signin-button")


@pytest.fixture(scope="session")
def chromium():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail(
            "chromium and chromedriver are not installed "
            "(.ci/run installs them: apt-get install chromium chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


@pytest.fixture
async def browser(chromium, tmp_path):
    """The session's browser, with no cookies and a desktop window; screenshots go to the test's tmp dir."""
    b = Browser(chromium, tmp_path)
    await b.call(chromium.execute_cdp_cmd, "Network.clearBrowserCookies", {})
    await b.size(*DESKTOP)
    yield b
    await b.call(chromium.execute_cdp_cmd, "Network.clearBrowserCookies", {})
